//! The SQL Server endpoint (Sage CRM's home): pooled tiberius connections
//! (bb8), catalog introspection, keyset change reads with every bound cast
//! to the change column's own type, and batched writes in one transaction
//! by Sage CRM's rules.
//!
//! When crmsync's state lives in this database (`state::mssql`), the
//! batches it writes carry their links, written in the same transaction.
//!
//! Here: the endpoint type, the read side and the catalog. Alongside:
//! `connect` (the url, TLS, the SQL Server Browser and the pool),
//! `database` (the pool shared with a state store), `error`
//! (how errors are classified and kept free of row data), `write` (batched
//! writes), `bulk` (backfill reads and chunk writes), `load` (bulk loads
//! through a staging table) and `types` (values both ways).

mod bulk;
mod children;
mod connect;
mod load;
mod write;

use super::children::{self as child_sql, Dialect, Params};
use super::{
    Applied, ColumnInfo, Endpoint, EndpointError, Lower, Result, Scan, TableInfo, WriteBatch,
};
use crate::db::mssql::error::{self, pool_failure, query_failure};
use crate::db::mssql::types;
use crate::state::LinkBatch;
use crate::value::{floor_to_precision, SqlType, Value};
use async_trait::async_trait;
use bb8::Pool;
use bb8_tiberius::ConnectionManager;
use std::collections::HashMap;
use std::sync::Mutex;
use tiberius::{Row, ToSql};
use types::{from_column, NativeType, Param};

pub use crate::db::mssql::error::DbFailure;
pub use crate::db::mssql::quote;
pub use crate::db::mssql::types::from_column as value_of;
pub use crate::db::mssql::{MssqlDatabase, TdsClient};

/// SQL Server's parameter limit is 2,100 per request; key lists are sent
/// in chunks well below it.
const MAX_PARAMS: usize = 2000;

/// How the child SQL is spelled here: no GREATEST before SQL Server 2022.
pub(crate) const DIALECT: Dialect = Dialect {
    quote,
    param: |n| format!("@P{n}"),
    top: true,
    greatest: false,
};

/// The child SQL's parameters, after a statement's own.
fn child_params(p: Params) -> impl Iterator<Item = Param> {
    p.values.into_iter().map(|v| Param::new(v, None))
}

/// A SQL Server database, as the CRM side or the external side.
pub struct MssqlEndpoint {
    side: &'static str,
    pool: Pool<ConnectionManager>,
    target: String,
    /// Declared types by table (`schema.name`, lower case), from `table`:
    /// casts need `datetime` told apart from `datetime2(3)`.
    natives: Mutex<HashMap<String, Vec<(String, NativeType)>>>,
    /// Whether a table's IDENTITY counts down, by qualified name: read
    /// once, as an IDENTITY's increment never changes.
    identity_descends: Mutex<HashMap<String, bool>>,
}

impl std::fmt::Debug for MssqlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlEndpoint")
            .field("side", &self.side)
            .field("target", &self.target)
            .finish()
    }
}

impl MssqlEndpoint {
    /// The database behind this endpoint, for a state store kept in it.
    pub fn database(&self) -> MssqlDatabase {
        MssqlDatabase::new(self.side, self.pool.clone(), self.target.clone())
    }
}

fn qualified(t: &TableInfo) -> String {
    format!("{}.{}", quote(&t.schema), quote(&t.name))
}

fn cache_key(schema: &str, name: &str) -> String {
    format!("{}.{}", schema.to_lowercase(), name.to_lowercase())
}

impl MssqlEndpoint {
    fn query_error(&self, what: impl Into<String>, e: tiberius::error::Error) -> EndpointError {
        query_failure(self.side, what.into(), e)
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, ConnectionManager>> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_failure(self.side, e))
    }

    /// The declared type of `column` of `table`, when `table` was read
    /// through this endpoint.
    fn native(&self, table: &TableInfo, column: &str) -> Option<NativeType> {
        let natives = self.natives.lock().ok()?;
        natives
            .get(&cache_key(&table.schema, &table.name))?
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(column))
            .map(|(_, n)| n.clone())
    }

    /// The T-SQL type of `column`, for casts: the declared type, or one
    /// derived from the neutral type.
    fn declaration(&self, table: &TableInfo, column: &str) -> String {
        if let Some(n) = self.native(table, column) {
            return n.declaration();
        }
        match table.column(column).map(|c| c.ty.clone()) {
            Ok(SqlType::Timestamp { precision: 3 }) => "datetime".into(),
            Ok(SqlType::Timestamp { precision }) => format!("datetime2({precision})"),
            Ok(SqlType::TimestampTz) => "datetimeoffset".into(),
            Ok(SqlType::Date) => "date".into(),
            Ok(SqlType::Int { bytes: 8 }) => "bigint".into(),
            Ok(SqlType::Int { .. }) => "int".into(),
            _ => "sql_variant".into(),
        }
    }

    /// The columns of `scan`, child values and the change column of a
    /// scan with children computed (their parameters go to `p`).
    fn select_list(&self, scan: &Scan, p: &mut Params) -> String {
        self.select_list_with(scan, p, None)
    }

    /// [`Self::select_list`] with the change column read from `change`
    /// (an expression computed once per row) when given.
    fn select_list_with(&self, scan: &Scan, p: &mut Params, change: Option<&str>) -> String {
        scan.columns
            .iter()
            .map(|c| {
                // Unnamed: rows are read by position, and the field's name
                // may be longer than an identifier can be.
                if let Some(cc) = scan.child(c) {
                    return child_sql::value_sql(&DIALECT, p, cc);
                }
                if *c == scan.change && !scan.children.is_empty() {
                    let expr = match change {
                        Some(e) => e.to_string(),
                        None => Self::change_expr(scan, p),
                    };
                    return format!("{expr} AS {}", quote(c));
                }
                match self.native(&scan.table, c).and_then(|n| n.select_cast()) {
                    Some(ty) => format!("CAST({} AS {ty}) AS {}", quote(c), quote(c)),
                    None => quote(c),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The change time of a scanned row: its change column, or with
    /// children the latest of it and theirs.
    fn change_expr(scan: &Scan, p: &mut Params) -> String {
        if scan.children.is_empty() {
            quote(&scan.change)
        } else {
            child_sql::change_sql(&DIALECT, p, &quote(&scan.change), &scan.children)
        }
    }

    fn filter_sql(scan: &Scan) -> String {
        scan.filter
            .as_ref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default()
    }

    /// `@P{n}` as a value compared with `column`: cast to the column's own
    /// type where SQL Server would otherwise convert the column to the
    /// parameter's (see [`NativeType::param_cast`]).
    fn placeholder(&self, table: &TableInfo, column: &str, n: usize) -> String {
        cast_placeholder(self.param_cast(table, column).as_deref(), n)
    }

    /// The type a parameter compared with `column` is cast to, if any.
    fn param_cast(&self, table: &TableInfo, column: &str) -> Option<String> {
        self.native(table, column).and_then(|t| t.param_cast())
    }

    /// [`Self::placeholder`] for `count` values compared with `column`,
    /// from `@P{start}`.
    fn placeholders_for(
        &self,
        table: &TableInfo,
        column: &str,
        start: usize,
        count: usize,
    ) -> String {
        // The column's type is looked up once, not for each of the list's
        // (up to two thousand) values.
        let cast = self.param_cast(table, column);
        (start..start + count)
            .map(|n| cast_placeholder(cast.as_deref(), n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn param(&self, table: &TableInfo, column: &str, v: &Value) -> Param {
        Param::new(v.clone(), table.column(column).ok().map(|c| c.ty.clone()))
    }

    async fn rows(&self, sql: &str, params: &[Param], what: &str) -> Result<Vec<Vec<Value>>> {
        let mut conn = self.conn().await?;
        let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
        let rows = conn
            .query(sql, &refs)
            .await
            .map_err(|e| self.query_error(what, e))?
            .into_first_result()
            .await
            .map_err(|e| self.query_error(what, e))?;
        decode_rows(rows).map_err(|e| self.query_error(format!("decoding {what}"), e))
    }
}

fn decode_rows(rows: Vec<Row>) -> tiberius::Result<Vec<Vec<Value>>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(|d| from_column(&d)).collect())
        .collect()
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Decimal(d) => i64::try_from(d.trunc()).ok(),
        _ => None,
    }
}

/// `@P{n}`, cast to `ty` when given.
fn cast_placeholder(ty: Option<&str>, n: usize) -> String {
    match ty {
        Some(ty) => format!("CAST(@P{n} AS {ty})"),
        None => format!("@P{n}"),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        other => other.key_string(),
    }
}

#[async_trait]
impl Endpoint for MssqlEndpoint {
    fn describe(&self) -> String {
        self.target.clone()
    }

    async fn table(&self, schema: Option<&str>, name: &str) -> Result<Option<TableInfo>> {
        // Unqualified names are looked up in dbo, as Sage CRM's tables are.
        let schema = schema.unwrap_or("dbo");
        let found = self
            .rows(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM INFORMATION_SCHEMA.TABLES \
                 WHERE LOWER(TABLE_NAME) = LOWER(@P1) AND LOWER(TABLE_SCHEMA) = LOWER(@P2)",
                &[
                    Param::new(Value::Text(name.into()), None),
                    Param::new(Value::Text(schema.into()), None),
                ],
                &format!("looking up table {name}"),
            )
            .await?;
        let (schema, name) = match found.as_slice() {
            [] => return Ok(None),
            [one] => (text_of(&one[0]), text_of(&one[1])),
            many => {
                let names: Vec<String> = many
                    .iter()
                    .map(|r| format!("{}.{}", text_of(&r[0]), text_of(&r[1])))
                    .collect();
                return Err(EndpointError::Schema(format!(
                    "table name {name} matches {} tables ({}); name it exactly as the catalog spells it",
                    names.len(),
                    names.join(", ")
                )));
            }
        };
        let object = format!("{}.{}", quote(&schema), quote(&name));
        let cols = self
            .rows(
                "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, \
                        NUMERIC_SCALE, DATETIME_PRECISION, IS_NULLABLE, COLUMN_DEFAULT \
                 FROM INFORMATION_SCHEMA.COLUMNS \
                 WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2 ORDER BY ORDINAL_POSITION",
                &[
                    Param::new(Value::Text(schema.clone()), None),
                    Param::new(Value::Text(name.clone()), None),
                ],
                &format!("reading the columns of {name}"),
            )
            .await?;
        // Identity and computed columns, by name.
        let special: Vec<(String, bool, bool)> = self
            .rows(
                "SELECT name, CONVERT(int, is_identity), CONVERT(int, is_computed) FROM sys.columns \
                 WHERE object_id = OBJECT_ID(@P1) AND (is_identity = 1 OR is_computed = 1)",
                &[Param::new(Value::Text(object.clone()), None)],
                &format!("reading the identity and computed columns of {name}"),
            )
            .await?
            .iter()
            .map(|r| (text_of(&r[0]), int_of(&r[1]) == Some(1), int_of(&r[2]) == Some(1)))
            .collect();
        let special_of = |col: &str| special.iter().find(|s| s.0.eq_ignore_ascii_case(col));
        let mut info = TableInfo {
            schema: schema.clone(),
            name: name.clone(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            indexes: Vec::new(),
            unique: Vec::new(),
            row_estimate: 0,
        };
        let mut natives = Vec::new();
        for c in cols {
            let col = text_of(&c[0]);
            let native = NativeType {
                name: text_of(&c[1]).to_lowercase(),
                char_len: int_of(&c[2]).map(|n| n as i32),
                precision: int_of(&c[3]).map(|n| n as u8),
                scale: int_of(&c[4]).map(|n| n as i32),
                datetime_precision: int_of(&c[5]).map(|n| n as i16),
            };
            info.columns.push(ColumnInfo {
                name: col.clone(),
                ty: native.sql_type(),
                nullable: text_of(&c[6]).eq_ignore_ascii_case("YES"),
                has_default: !c[7].is_null(),
                identity: special_of(&col).is_some_and(|s| s.1),
                // A rowversion is written by the server alone.
                generated: special_of(&col).is_some_and(|s| s.2)
                    || matches!(native.name.as_str(), "timestamp" | "rowversion"),
            });
            natives.push((col, native));
        }
        let ixs = self
            .rows(
                "SELECT i.index_id, i.is_primary_key, c.name, i.is_unique \
                 FROM sys.indexes i \
                 JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
                 JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
                 WHERE i.object_id = OBJECT_ID(@P1) AND ic.is_included_column = 0 \
                 ORDER BY i.index_id, ic.key_ordinal",
                &[Param::new(Value::Text(object.clone()), None)],
                &format!("reading the indexes of {name}"),
            )
            .await?;
        // (index id, primary key, unique, columns)
        let mut current: Option<(i64, bool, bool, Vec<String>)> = None;
        let finish = |ix: Option<(i64, bool, bool, Vec<String>)>, info: &mut TableInfo| {
            if let Some((_, pk, unique, cols)) = ix {
                if pk {
                    info.primary_key = cols.clone();
                }
                if unique || pk {
                    info.unique.push(cols.clone());
                }
                info.indexes.push(cols);
            }
        };
        for r in ixs {
            let id = int_of(&r[0]).unwrap_or(-1);
            let pk = int_of(&r[1]) == Some(1);
            let col = text_of(&r[2]);
            let unique = int_of(&r[3]) == Some(1);
            match &mut current {
                Some((cur, _, _, cols)) if *cur == id => cols.push(col),
                _ => {
                    finish(current.take(), &mut info);
                    current = Some((id, pk, unique, vec![col]));
                }
            }
        }
        finish(current.take(), &mut info);
        // The estimate is advisory: a login that cannot read sys.partitions
        // (or a server without it) gets 0 rather than a failed lookup.
        match self
            .rows(
                "SELECT SUM(p.rows) FROM sys.partitions p \
                 WHERE p.object_id = OBJECT_ID(@P1) AND p.index_id IN (0, 1)",
                &[Param::new(Value::Text(object), None)],
                "estimating rows",
            )
            .await
        {
            Ok(r) => info.row_estimate = r.first().and_then(|r| int_of(&r[0])).unwrap_or(0),
            Err(e) => tracing::debug!("no row estimate for {name}: {e}"),
        }
        if let Ok(mut cache) = self.natives.lock() {
            cache.insert(cache_key(&schema, &name), natives);
        }
        Ok(Some(info))
    }

    async fn clock(&self, ty: &SqlType) -> Result<Value> {
        let row = self
            .rows(
                "SELECT GETDATE(), SYSDATETIME(), SYSDATETIMEOFFSET()",
                &[],
                "reading the server clock",
            )
            .await?;
        let row = row.into_iter().next().unwrap_or_default();
        let pick = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
        Ok(match ty {
            SqlType::TimestampTz => pick(2),
            // datetime (and smalldatetime) columns are stamped by GETDATE().
            SqlType::Timestamp { precision } if *precision <= 3 => match pick(0) {
                Value::Timestamp(t) => Value::Timestamp(floor_to_precision(t, *precision)),
                v => v,
            },
            SqlType::Timestamp { precision } => match pick(1) {
                Value::Timestamp(t) => Value::Timestamp(floor_to_precision(t, *precision)),
                v => v,
            },
            _ => pick(0),
        })
    }

    async fn read_changes(
        &self,
        scan: &Scan,
        lower: &Lower,
        upto: &Value,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let raw_chg = quote(&scan.change);
        let key = quote(&scan.key);
        // Every bound is cast to the change column's own type: tiberius
        // sends chrono values as datetime2(7), and a datetime column
        // compared with a datetime2 is converted exactly (.857 becomes
        // .8566667), so an uncast `>=` misses or repeats rows.
        let ty = self.declaration(&scan.table, &scan.change);
        let bound = |n: usize| format!("CAST(@P{n} AS {ty})");
        let t = &scan.table;
        let mut params = vec![self.param(t, &scan.change, upto)];
        match lower {
            Lower::Start => {}
            Lower::From(ts) => params.push(self.param(t, &scan.change, ts)),
            Lower::After { ts, key: k } => {
                params.push(self.param(t, &scan.change, ts));
                params.push(self.param(t, &scan.key, k));
            }
        }
        let mut p = Params::from(params.len() + 1);
        // With children the change time is computed once per row, by
        // CROSS APPLY, rather than wherever the query names it.
        let (from, chg) = if scan.children.is_empty() {
            (qualified(t), raw_chg.clone())
        } else {
            let eff = Self::change_expr(scan, &mut p);
            (
                format!(
                    "{} CROSS APPLY (SELECT {eff} AS crmsync_eff) AS crmsync_e",
                    qualified(t)
                ),
                "crmsync_e.crmsync_eff".to_string(),
            )
        };
        let list = self.select_list_with(scan, &mut p, Some(&chg));
        let mut cond = match lower {
            Lower::Start => String::new(),
            Lower::From(_) => format!(" AND {chg} >= {}", bound(2)),
            Lower::After { .. } => format!(
                " AND ({chg} > {b} OR ({chg} = {b} AND {key} > {k}))",
                b = bound(2),
                k = self.placeholder(t, &scan.key, 3),
            ),
        };
        if !scan.children.is_empty() && !matches!(lower, Lower::Start) {
            cond.push_str(" AND ");
            cond.push_str(&child_sql::candidates_sql(
                &DIALECT,
                &mut p,
                (t, &scan.key, &scan.change),
                &bound(2),
                &bound(1),
                &scan.children,
            ));
        }
        let sql = format!(
            "SELECT TOP ({limit}) {list} FROM {from} WHERE {raw_chg} IS NOT NULL AND {chg} <= {}{cond}{} \
             ORDER BY {chg}, {key}",
            bound(1),
            Self::filter_sql(scan),
        );
        params.extend(child_params(p));
        self.rows(
            &sql,
            &params,
            &format!("reading changes of {}", t.qualified()),
        )
        .await
    }

    async fn fetch(&self, scan: &Scan, column: &str, keys: &[Value]) -> Result<Vec<Vec<Value>>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(MAX_PARAMS) {
            let mut p = Params::from(chunk.len() + 1);
            let sql = format!(
                "SELECT {} FROM {} WHERE {} IN ({}){}",
                self.select_list(scan, &mut p),
                qualified(&scan.table),
                quote(column),
                self.placeholders_for(&scan.table, column, 1, chunk.len()),
                Self::filter_sql(scan),
            );
            let mut params: Vec<Param> = chunk
                .iter()
                .map(|k| self.param(&scan.table, column, k))
                .collect();
            params.extend(child_params(p));
            out.extend(
                self.rows(
                    &sql,
                    &params,
                    &format!("fetching rows of {}", scan.table.qualified()),
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn read_page(
        &self,
        scan: &Scan,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let key = quote(&scan.key);
        let (cond, mut params) = match after {
            Some(k) => (
                format!("{key} > {}", self.placeholder(&scan.table, &scan.key, 1)),
                vec![self.param(&scan.table, &scan.key, k)],
            ),
            None => ("1 = 1".to_string(), Vec::new()),
        };
        let mut p = Params::from(params.len() + 1);
        let sql = format!(
            "SELECT TOP ({limit}) {} FROM {} WHERE {cond}{} ORDER BY {key}",
            self.select_list(scan, &mut p),
            qualified(&scan.table),
            Self::filter_sql(scan),
        );
        params.extend(child_params(p));
        self.rows(
            &sql,
            &params,
            &format!("reading {} in key order", scan.table.qualified()),
        )
        .await
    }

    async fn find(
        &self,
        scan: &Scan,
        conditions: &[(String, Value)],
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        for (c, v) in conditions {
            if v.is_null() {
                conds.push(format!("{} IS NULL", quote(c)));
            } else {
                params.push(self.param(&scan.table, c, v));
                conds.push(format!(
                    "{} = {}",
                    quote(c),
                    self.placeholder(&scan.table, c, params.len())
                ));
            }
        }
        let mut p = Params::from(params.len() + 1);
        let sql = format!(
            "SELECT TOP ({limit}) {} FROM {} WHERE {}{} ORDER BY {}",
            self.select_list(scan, &mut p),
            qualified(&scan.table),
            if conds.is_empty() {
                "1 = 1".to_string()
            } else {
                conds.join(" AND ")
            },
            Self::filter_sql(scan),
            quote(&scan.key),
        );
        params.extend(child_params(p));
        self.rows(
            &sql,
            &params,
            &format!("searching {}", scan.table.qualified()),
        )
        .await
    }

    async fn keys(&self, scan: &Scan) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT {} FROM {}",
            quote(&scan.key),
            qualified(&scan.table)
        );
        let rows = self
            .rows(
                &sql,
                &[],
                &format!("reading the keys of {}", scan.table.qualified()),
            )
            .await?;
        Ok(rows.iter().map(|r| r[0].key_string()).collect())
    }

    /// The table's object id, its row count (`sys.dm_db_partition_stats`)
    /// and its leaf-level deletes, ghosted or not
    /// (`sys.dm_db_index_operational_stats`), of the heap or clustered
    /// index. A DELETE moves the delete count; a table dropped and made
    /// again moves the object id. The delete counts start again when the
    /// table's metadata leaves the server's cache (a restart, memory
    /// pressure): the value changes then too, and the next run compares
    /// the links in full. Not seen: a TRUNCATE TABLE followed by as many
    /// inserts, which the hourly full comparison finds. Without the
    /// VIEW DATABASE STATE permission the statistics cannot be read, and
    /// every run compares in full.
    async fn deletes_fingerprint(&self, table: &TableInfo) -> Result<Option<String>> {
        let sql = "SELECT OBJECT_ID(@P1), \
                   (SELECT SUM(ps.row_count) FROM sys.dm_db_partition_stats ps \
                     WHERE ps.object_id = OBJECT_ID(@P1) AND ps.index_id IN (0, 1)), \
                   (SELECT SUM(os.leaf_delete_count + os.leaf_ghost_count) \
                      FROM sys.dm_db_index_operational_stats(DB_ID(), OBJECT_ID(@P1), NULL, NULL) os \
                     WHERE os.index_id IN (0, 1))";
        let params = [Param::new(Value::Text(qualified(table)), None)];
        let rows = match self
            .rows(
                sql,
                &params,
                &format!("reading the statistics of {}", table.qualified()),
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("no delete statistics: {}", crate::causes::with_causes(&e));
                return Ok(None);
            }
        };
        let Some(row) = rows.first().filter(|r| r.iter().all(|v| !v.is_null())) else {
            return Ok(None);
        };
        Ok(Some(
            row.iter()
                .map(|v| v.key_string())
                .collect::<Vec<_>>()
                .join("/"),
        ))
    }

    async fn count_null_changes(&self, scan: &Scan) -> Result<i64> {
        let sql = format!(
            "SELECT COUNT_BIG(*) FROM {} WHERE {} IS NULL{}",
            qualified(&scan.table),
            quote(&scan.change),
            Self::filter_sql(scan)
        );
        let rows = self
            .rows(&sql, &[], "counting rows without a change time")
            .await?;
        Ok(rows.first().and_then(|r| int_of(&r[0])).unwrap_or(0))
    }

    async fn count_dangling(&self, child: &Scan, column: &str, parent: &Scan) -> Result<i64> {
        // The parent's filter names the parent's columns: inside the
        // subquery they resolve to the parent table first.
        let sql = format!(
            "SELECT COUNT_BIG(*) FROM {} AS c WHERE c.{col} IS NOT NULL{} AND NOT EXISTS \
             (SELECT 1 FROM {} AS p WHERE p.{} = c.{col}{})",
            qualified(&child.table),
            Self::filter_sql(child),
            qualified(&parent.table),
            quote(&parent.key),
            Self::filter_sql(parent),
            col = quote(column),
        );
        let rows = self
            .rows(&sql, &[], "counting references to filtered-out rows")
            .await?;
        Ok(rows.first().and_then(|r| int_of(&r[0])).unwrap_or(0))
    }

    async fn column_range(
        &self,
        table: &TableInfo,
        column: &str,
    ) -> Result<Option<(Value, Value)>> {
        let c = quote(column);
        let sql = format!("SELECT MIN({c}), MAX({c}) FROM {}", qualified(table));
        let rows = self
            .rows(&sql, &[], &format!("reading the range of {column}"))
            .await?;
        Ok(crate::endpoint::min_max(rows))
    }

    async fn filter_accepts(
        &self,
        scan: &Scan,
        values: &[(String, Value)],
    ) -> Result<Option<bool>> {
        let Some(filter) = &scan.filter else {
            return Ok(Some(true));
        };
        // A one-row derived table named like the table, every column NULL
        // except the given ones, run through the filter.
        let mut params = Vec::new();
        let mut cols = Vec::new();
        for c in &scan.table.columns {
            let ty = self.declaration(&scan.table, &c.name);
            match values.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c.name)) {
                Some((_, v)) if !v.is_null() => {
                    params.push(self.param(&scan.table, &c.name, v));
                    cols.push(format!(
                        "CAST(@P{} AS {ty}) AS {}",
                        params.len(),
                        quote(&c.name)
                    ));
                }
                _ => cols.push(format!("CAST(NULL AS {ty}) AS {}", quote(&c.name))),
            }
        }
        let sql = format!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM (SELECT {}) AS {} WHERE {filter}) \
             THEN 1 ELSE 0 END",
            cols.join(", "),
            quote(&scan.table.name)
        );
        match self.rows(&sql, &params, "testing the filter").await {
            Ok(r) => Ok(r.first().and_then(|r| int_of(&r[0])).map(|i| i == 1)),
            Err(e) => {
                tracing::debug!("cannot test the filter on a row of defaults: {e:?}");
                Ok(None)
            }
        }
    }

    async fn check_filter(&self, scan: &Scan) -> Result<()> {
        let sql = format!(
            "SELECT TOP (0) 1 FROM {} WHERE 1 = 1{}",
            qualified(&scan.table),
            Self::filter_sql(scan)
        );
        let mut conn = self.conn().await?;
        let res = match conn.simple_query(&sql).await {
            Ok(s) => s.into_results().await.map(|_| ()),
            Err(e) => Err(e),
        };
        res.map_err(|e| {
            EndpointError::Schema(format!(
                "the filter {:?} is not valid for {}: {}",
                scan.filter.as_deref().unwrap_or(""),
                scan.table.qualified(),
                DbFailure::from(&e)
            ))
        })
    }

    fn bulk(&self) -> Option<&dyn super::bulk::Bulk> {
        Some(self)
    }

    fn bulk_source(&self) -> &dyn super::bulk::BulkSource {
        self
    }

    async fn apply(&self, batch: &WriteBatch, links: Option<&LinkBatch>) -> Result<Applied> {
        self.apply_batch(batch, links).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_bracketed() {
        assert_eq!(quote("Comp_Name"), "[Comp_Name]");
        assert_eq!(quote("a]b"), "[a]]b]");
    }
}
