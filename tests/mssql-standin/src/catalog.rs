//! The stand-in's catalog: each column's declared SQL Server type, kept in
//! the side table `mssql_standin.columns` of the PostgreSQL database and
//! cached in memory, so results carry the real SQL Server types.

use crate::sqltype::SqlType;
use std::collections::{HashMap, HashSet};
use tokio_postgres::Client;

/// One column as declared in T-SQL DDL.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    pub attnum: i16,
    pub ty: SqlType,
    pub nullable: bool,
    pub identity: bool,
}

/// One table as declared in T-SQL DDL.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    /// A catalog view (sys, INFORMATION_SCHEMA), not a user table.
    pub system: bool,
}

impl TableInfo {
    pub fn identity_column(&self) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.identity)
    }
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

/// What a unique index enforces, for error 2627 versus 2601.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    PrimaryKey,
    UniqueConstraint,
    Index,
}

/// Every declared table of one database.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub tables: Vec<TableInfo>,
    by_oid: HashMap<u32, usize>,
    by_name: HashMap<String, usize>,
    /// PostgreSQL index (and key constraint) name -> declared name.
    index_names: HashMap<String, (String, IndexKind)>,
    /// Tables with an enabled trigger made by CREATE TRIGGER.
    triggered: HashSet<u32>,
}

/// PostgreSQL name prefix of the triggers CREATE TRIGGER makes.
pub const USER_TRIGGER_PREFIX: &str = "standin_user_";

/// DDL of the side tables, functions and collation the stand-in needs.
pub const BOOTSTRAP: &str = include_str!("bootstrap.sql");

impl Catalog {
    /// Reads the side table.
    pub async fn load(client: &Client) -> Result<Catalog, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT c.table_oid, c.table_schema, c.table_name, c.column_name, c.attnum, \
                 c.type_decl, c.is_nullable, c.is_identity \
                 FROM mssql_standin.columns c JOIN pg_class k ON k.oid = c.table_oid \
                 ORDER BY c.table_oid, c.ordinal",
                &[],
            )
            .await?;
        let mut cat = Catalog::tables_of(rows);
        Self::load_rest(client, &mut cat).await?;
        Ok(cat)
    }

    /// The tables of `oids` alone, as `client` sees them: a session's own
    /// tables created in its open transaction (a #temp staging table) are
    /// invisible to the shared catalog, which other sessions reload.
    pub async fn load_oids(
        client: &Client,
        oids: &[u32],
    ) -> Result<Catalog, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT c.table_oid, c.table_schema, c.table_name, c.column_name, c.attnum, \
                 c.type_decl, c.is_nullable, c.is_identity \
                 FROM mssql_standin.columns c WHERE c.table_oid = ANY($1) \
                 ORDER BY c.table_oid, c.ordinal",
                &[&oids],
            )
            .await?;
        Ok(Catalog::tables_of(rows))
    }

    fn tables_of(rows: Vec<tokio_postgres::Row>) -> Catalog {
        let mut cat = Catalog::default();
        for r in rows {
            let oid: u32 = r.get(0);
            let decl: String = r.get(5);
            let ty = parse_decl(&decl).unwrap_or(SqlType::NVarChar(None));
            let col = ColumnInfo {
                name: r.get(3),
                attnum: r.get(4),
                ty,
                nullable: r.get(6),
                identity: r.get(7),
            };
            let idx = match cat.by_oid.get(&oid) {
                Some(i) => *i,
                None => {
                    let schema: String = r.get(1);
                    let name: String = r.get(2);
                    let system = schema == "sys" || schema == "INFORMATION_SCHEMA";
                    cat.tables.push(TableInfo {
                        oid,
                        schema: schema.clone(),
                        name: name.clone(),
                        columns: Vec::new(),
                        system,
                    });
                    let i = cat.tables.len() - 1;
                    cat.by_oid.insert(oid, i);
                    if !system {
                        cat.by_name.insert(name.to_lowercase(), i);
                    }
                    i
                }
            };
            cat.tables[idx].columns.push(col);
        }
        cat
    }

    async fn load_rest(client: &Client, cat: &mut Catalog) -> Result<(), tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT k.relname::text, x.name, x.is_primary_key, x.is_unique_constraint \
                 FROM mssql_standin.indexes x JOIN pg_class k ON k.oid = x.index_oid",
                &[],
            )
            .await?;
        for r in rows {
            let kind = match (r.get::<_, bool>(2), r.get::<_, bool>(3)) {
                (true, _) => IndexKind::PrimaryKey,
                (false, true) => IndexKind::UniqueConstraint,
                _ => IndexKind::Index,
            };
            cat.index_names.insert(r.get(0), (r.get(1), kind));
        }
        let rows = client
            .query(
                "SELECT DISTINCT tgrelid FROM pg_trigger \
                 WHERE starts_with(tgname::text, $1) AND tgenabled <> 'D'",
                &[&USER_TRIGGER_PREFIX],
            )
            .await?;
        cat.triggered = rows.iter().map(|r| r.get(0)).collect();
        Ok(())
    }

    /// The declared name of an index or key constraint, by PostgreSQL name.
    pub fn index_name(&self, pg_name: &str) -> Option<(&str, IndexKind)> {
        self.index_names.get(pg_name).map(|(n, k)| (n.as_str(), *k))
    }

    /// Whether the table has an enabled trigger of its own (not the
    /// stand-in's storage trigger).
    pub fn has_triggers(&self, oid: u32) -> bool {
        self.triggered.contains(&oid)
    }

    pub fn table_by_oid(&self, oid: u32) -> Option<&TableInfo> {
        self.by_oid.get(&oid).map(|i| &self.tables[*i])
    }

    /// Looks a table up by its (case-insensitive) name, schema ignored.
    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.by_name
            .get(&name.to_lowercase())
            .map(|i| &self.tables[*i])
    }

    pub fn column_by_attnum(&self, oid: u32, attnum: i16) -> Option<(&TableInfo, &ColumnInfo)> {
        let t = self.table_by_oid(oid)?;
        t.columns
            .iter()
            .find(|c| c.attnum == attnum)
            .map(|c| (t, c))
    }

    /// True if some table has a character column of this name and none has a
    /// non-character column of it.
    pub fn is_character_column(&self, name: &str) -> bool {
        let mut any = false;
        for t in self.tables.iter().filter(|t| !t.system) {
            if let Some(c) = t.column(name) {
                if !c.ty.is_character() {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    /// The declared type of a column name if every table agrees on it.
    pub fn column_type_by_name(&self, name: &str) -> Option<SqlType> {
        let mut found = None;
        for t in self.tables.iter().filter(|t| !t.system) {
            if let Some(c) = t.column(name) {
                match found {
                    None => found = Some(c.ty),
                    Some(ty) if ty == c.ty => {}
                    Some(_) => return None,
                }
            }
        }
        found
    }
}

/// Parses a declaration such as `nvarchar(60)` or `decimal(24,6)`.
pub fn parse_decl(decl: &str) -> Option<SqlType> {
    let decl = decl.trim();
    match decl.find('(') {
        Some(i) => {
            let name = decl[..i].trim();
            let args: Vec<String> = decl[i + 1..]
                .trim_end_matches(')')
                .split(',')
                .map(|s| s.trim().to_string())
                .collect();
            SqlType::parse(name, &args)
        }
        None => SqlType::parse(decl, &[]),
    }
}
