//! T-SQL DDL: CREATE TABLE and CREATE INDEX become PostgreSQL DDL plus rows in
//! the side catalog, and a per-table trigger that applies SQL Server's storage
//! rules (datetime rounding, nvarchar(n) length in UTF-16 units, nchar
//! padding, tinyint and bit ranges).

use crate::catalog::parse_decl;
use crate::error::SqlError;
use crate::sqltype::SqlType;
use crate::translate::{map_object_name, object_base_name, pg_ident, Env, Translator};
use sqlparser::ast::{
    ColumnOption, CreateIndex, CreateTable, Expr, ObjectName, TableConstraint, VisitMut,
};
use tokio_postgres::Client;

/// Translates a standalone expression (defaults, CHECK, index filters).
fn expr_sql(e: &Expr, env: &Env<'_>) -> Result<String, SqlError> {
    let mut e = e.clone();
    let mut t = Translator::new(env);
    let _ = e.visit(&mut t);
    if !t.binds.is_empty() {
        return Err(SqlError::new(
            1054,
            15,
            "Variables are not allowed in this DDL expression.",
        ));
    }
    Ok(e.to_string())
}

fn pg_name(n: &ObjectName) -> String {
    let mut n = n.clone();
    map_object_name(&mut n);
    let s = n.to_string();
    if s.contains('.') || s.starts_with("\"#") || s.starts_with("\"@") {
        s
    } else {
        format!("\"dbo\".{s}")
    }
}

struct Col {
    name: String,
    ty: SqlType,
    nullable: bool,
    identity: Option<(i64, i64)>,
    default: Option<String>,
}

fn identity_params(text: &str) -> (i64, i64) {
    let nums: Vec<i64> = text
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [seed, inc, ..] => (*seed, *inc),
        _ => (1, 1),
    }
}

/// Runs CREATE TABLE.
pub async fn create_table(
    pg: &Client,
    ct: &CreateTable,
    env: &Env<'_>,
    database: &str,
) -> Result<(), SqlError> {
    let table = pg_name(&ct.name);
    let declared = object_base_name(&ct.name);
    let schema = if ct.name.0.len() >= 2 {
        ct.name.0[ct.name.0.len() - 2]
            .to_string()
            .trim_matches(['[', ']', '"'])
            .to_string()
    } else {
        "dbo".to_string()
    };
    let mut cols = Vec::new();
    let mut constraints: Vec<String> = Vec::new();
    let mut pk_cols: Vec<String> = Vec::new();
    let mut key_names: Vec<(String, String)> = Vec::new(); // (pg constraint name, declared)
    for (i, c) in ct.columns.iter().enumerate() {
        let decl = c.data_type.to_string();
        let ty = parse_decl(&decl).ok_or_else(|| {
            SqlError::new(
                2715,
                16,
                format!(
                    "Column, parameter, or variable #{}: Cannot find data type {decl}.",
                    i + 1
                ),
            )
        })?;
        let mut col = Col {
            name: c.name.value.clone(),
            ty,
            nullable: true,
            identity: None,
            default: None,
        };
        for o in &c.options {
            match &o.option {
                ColumnOption::Null => col.nullable = true,
                ColumnOption::NotNull => col.nullable = false,
                ColumnOption::Default(e) => col.default = Some(expr_sql(e, env)?),
                ColumnOption::Identity(_) => {
                    col.identity = Some(identity_params(&o.option.to_string()));
                    col.nullable = false;
                }
                ColumnOption::PrimaryKey(_) => {
                    pk_cols.push(pg_ident(&col.name));
                    col.nullable = false;
                    if let Some(n) = &o.name {
                        key_names.push((n.value.to_lowercase(), n.value.clone()));
                    }
                }
                ColumnOption::Unique(_) => {
                    let name = o
                        .name
                        .as_ref()
                        .map(|n| n.value.clone())
                        .unwrap_or_else(|| format!("UQ__{declared}__{}", col.name));
                    key_names.push((name.to_lowercase(), name.clone()));
                    constraints.push(format!(
                        "CONSTRAINT {} UNIQUE NULLS NOT DISTINCT ({})",
                        pg_ident(&name),
                        pg_ident(&col.name)
                    ));
                }
                ColumnOption::ForeignKey(fk) => {
                    let cols = if fk.referred_columns.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "({})",
                            fk.referred_columns
                                .iter()
                                .map(|c| pg_ident(&c.value))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    let name = o
                        .name
                        .as_ref()
                        .map(|n| format!("CONSTRAINT {} ", pg_ident(&n.value)))
                        .unwrap_or_default();
                    constraints.push(format!(
                        "{name}FOREIGN KEY ({}) REFERENCES {}{cols}",
                        pg_ident(&col.name),
                        pg_name(&fk.foreign_table)
                    ));
                }
                ColumnOption::Check(ck) => {
                    constraints.push(format!("CHECK ({})", expr_sql(&ck.expr, env)?));
                }
                ColumnOption::Collation(_) => {}
                other => {
                    return Err(SqlError::unsupported(format!("column option {other}")));
                }
            }
        }
        cols.push(col);
    }
    for tc in &ct.constraints {
        match tc {
            TableConstraint::PrimaryKey(pk) => {
                for c in &pk.columns {
                    pk_cols.push(pg_ident(
                        c.column.expr.to_string().trim_matches(['[', ']', '"']),
                    ));
                }
                if let Some(n) = &pk.name {
                    key_names.push((n.value.to_lowercase(), n.value.clone()));
                }
            }
            TableConstraint::Unique(u) => {
                let list: Vec<String> = u
                    .columns
                    .iter()
                    .map(|c| pg_ident(c.column.expr.to_string().trim_matches(['[', ']', '"'])))
                    .collect();
                let name = u
                    .name
                    .as_ref()
                    .map(|n| n.value.clone())
                    .unwrap_or_else(|| format!("UQ__{declared}__{}", constraints.len()));
                key_names.push((name.to_lowercase(), name.clone()));
                constraints.push(format!(
                    "CONSTRAINT {} UNIQUE NULLS NOT DISTINCT ({})",
                    pg_ident(&name),
                    list.join(", ")
                ));
            }
            TableConstraint::ForeignKey(fk) => {
                let name = fk
                    .name
                    .as_ref()
                    .map(|n| format!("CONSTRAINT {} ", pg_ident(&n.value)))
                    .unwrap_or_default();
                constraints.push(format!(
                    "{name}FOREIGN KEY ({}) REFERENCES {} ({})",
                    fk.columns
                        .iter()
                        .map(|c| pg_ident(&c.value))
                        .collect::<Vec<_>>()
                        .join(", "),
                    pg_name(&fk.foreign_table),
                    fk.referred_columns
                        .iter()
                        .map(|c| pg_ident(&c.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            TableConstraint::Check(ck) => {
                let name = ck
                    .name
                    .as_ref()
                    .map(|n| format!("CONSTRAINT {} ", pg_ident(&n.value)))
                    .unwrap_or_default();
                constraints.push(format!("{name}CHECK ({})", expr_sql(&ck.expr, env)?));
            }
            other => return Err(SqlError::unsupported(format!("table constraint {other}"))),
        }
    }
    if !pk_cols.is_empty() {
        let declared_pk = key_names
            .iter()
            .find(|(_, d)| d.to_uppercase().starts_with("PK"))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| format!("PK__{declared}"));
        if !key_names.iter().any(|(_, d)| *d == declared_pk) {
            key_names.push((declared_pk.to_lowercase(), declared_pk.clone()));
        }
        constraints.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            pg_ident(&declared_pk),
            pk_cols.join(", ")
        ));
    }
    let mut defs: Vec<String> = cols.iter().map(column_sql).collect();
    defs.extend(constraints);
    // #temp tables and table variables are the session's own.
    let temp = declared.starts_with('#') || declared.starts_with('@');
    let create = format!(
        "CREATE {}TABLE {table} ({})",
        if temp { "TEMP " } else { "" },
        defs.join(", ")
    );
    let trigger = trigger_sql(&table, &declared, &schema, database, &cols);
    let txn = format!("{create};\n{trigger}");
    pg.batch_execute(&txn)
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))?;
    // Record the declared types.
    for (i, c) in cols.iter().enumerate() {
        record_column(pg, &table, &schema, &declared, c, (i + 1) as i32).await?;
    }
    for (pgname, declared_name) in key_names {
        pg.execute(
            "INSERT INTO mssql_standin.indexes (index_oid, table_oid, name, is_primary_key, is_unique_constraint) \
             SELECT i.indexrelid, i.indrelid, $2, i.indisprimary, NOT i.indisprimary \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1::text::regclass AND c.relname = $3 ON CONFLICT DO NOTHING",
            &[&table, &declared_name, &pgname],
        )
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))?;
    }
    Ok(())
}

/// Writes one column's declared type into the side catalog.
async fn record_column(
    pg: &Client,
    table: &str,
    schema: &str,
    declared: &str,
    c: &Col,
    ordinal: i32,
) -> Result<(), SqlError> {
    let attnum: i16 = pg
        .query_opt(
            "SELECT attnum FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
            &[&table, &c.name.to_lowercase()],
        )
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let (seed, inc) = match c.identity {
        Some((s, i)) => (Some(s), Some(i)),
        None => (None, None),
    };
    let decl = c.ty.declaration();
    let (precision, scale) = c.ty.precision_scale();
    pg.execute(
        "INSERT INTO mssql_standin.columns (table_oid, attnum, table_schema, table_name, column_name, ordinal, type_decl, is_nullable, is_identity, seed, increment, default_text, \
         data_type, char_length, max_length, num_precision, num_scale, system_type_id) \
         VALUES ($1::text::regclass::oid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (table_oid, attnum) DO UPDATE SET type_decl = excluded.type_decl, is_nullable = excluded.is_nullable, \
         data_type = excluded.data_type, char_length = excluded.char_length, max_length = excluded.max_length, \
         num_precision = excluded.num_precision, num_scale = excluded.num_scale, system_type_id = excluded.system_type_id",
        &[
            &table, &attnum, &schema, &declared, &c.name, &ordinal, &decl, &c.nullable, &c.identity.is_some(), &seed, &inc, &c.default,
            &c.ty.name(), &c.ty.char_length(), &c.ty.max_length(), &precision, &scale, &c.ty.system_type_id(),
        ],
    )
    .await
    .map_err(|e| crate::session::map_pg_error(&e, None))?;
    Ok(())
}

/// The column definition part of PostgreSQL DDL for a declared column.
fn column_sql(c: &Col) -> String {
    let mut s = format!("{} {}", pg_ident(&c.name), c.ty.pg_type());
    if let Some((seed, inc)) = c.identity {
        // A descending IDENTITY counts down from its seed to the type's
        // smallest value ("CREATE TABLE (Transact-SQL) IDENTITY (Property)":
        // the increment may be negative).
        let bound = if inc < 0 {
            format!("MAXVALUE {seed}")
        } else {
            format!("MINVALUE {}", seed.min(1))
        };
        s.push_str(&format!(
            " GENERATED BY DEFAULT AS IDENTITY (START WITH {seed} INCREMENT BY {inc} {bound})"
        ));
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {d}"));
    }
    s.push_str(if c.nullable { " NULL" } else { " NOT NULL" });
    s
}

/// Recreates a table's storage trigger from the catalog (after ALTER TABLE).
async fn refresh_trigger(
    pg: &Client,
    table: &str,
    schema: &str,
    declared: &str,
    database: &str,
) -> Result<(), SqlError> {
    let rows = pg
        .query(
            "SELECT column_name, type_decl, is_nullable FROM mssql_standin.columns \
             WHERE table_oid = $1::text::regclass::oid ORDER BY ordinal",
            &[&table],
        )
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))?;
    let cols: Vec<Col> = rows
        .iter()
        .map(|r| Col {
            name: r.get(0),
            ty: parse_decl(&r.get::<_, String>(1)).unwrap_or(SqlType::NVarChar(None)),
            nullable: r.get(2),
            identity: None,
            default: None,
        })
        .collect();
    pg.batch_execute(&trigger_sql(table, declared, schema, database, &cols))
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))
}

/// A column of ALTER TABLE … ADD, and the PostgreSQL text of its
/// `REFERENCES` clause (empty without one).
fn col_from_def(c: &sqlparser::ast::ColumnDef, env: &Env<'_>) -> Result<(Col, String), SqlError> {
    let decl = c.data_type.to_string();
    let ty = parse_decl(&decl).ok_or_else(|| {
        SqlError::new(
            2715,
            16,
            format!("Column, parameter, or variable #1: Cannot find data type {decl}."),
        )
    })?;
    let mut col = Col {
        name: c.name.value.clone(),
        ty,
        nullable: true,
        identity: None,
        default: None,
    };
    let mut references = String::new();
    for o in &c.options {
        match &o.option {
            ColumnOption::Null => col.nullable = true,
            ColumnOption::NotNull => col.nullable = false,
            ColumnOption::Default(e) => col.default = Some(expr_sql(e, env)?),
            ColumnOption::Identity(_) => {
                col.identity = Some(identity_params(&o.option.to_string()));
                col.nullable = false;
            }
            ColumnOption::ForeignKey(fk) => {
                let name = o
                    .name
                    .as_ref()
                    .map(|n| format!(" CONSTRAINT {}", pg_ident(&n.value)))
                    .unwrap_or_default();
                let cols = if fk.referred_columns.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        fk.referred_columns
                            .iter()
                            .map(|c| pg_ident(&c.value))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                references = format!("{name} REFERENCES {}{cols}", pg_name(&fk.foreign_table));
            }
            other => {
                return Err(SqlError::unsupported(format!(
                    "ALTER TABLE … ADD column option {other}"
                )))
            }
        }
    }
    Ok((col, references))
}

/// ALTER TABLE t ADD c type …, DROP COLUMN c.
pub async fn alter_table(
    pg: &Client,
    at: &sqlparser::ast::AlterTable,
    env: &Env<'_>,
    database: &str,
) -> Result<(), SqlError> {
    use sqlparser::ast::AlterTableOperation as Op;
    let table = pg_name(&at.name);
    let declared = object_base_name(&at.name);
    let info = env
        .catalog
        .table(&declared)
        .ok_or_else(|| SqlError::new(4902, 16, format!("Cannot find the object \"{declared}\" because it does not exist or you do not have permissions.")))?;
    let (schema, declared) = (info.schema.clone(), info.name.clone());
    let mut ordinal = info.columns.len() as i32;
    for op in &at.operations {
        match op {
            Op::AddColumn { column_def, .. } => {
                let (col, references) = col_from_def(column_def, env)?;
                pg.batch_execute(&format!(
                    "ALTER TABLE {table} ADD COLUMN {}{references}",
                    column_sql(&col)
                ))
                .await
                .map_err(|e| crate::session::map_pg_error(&e, None))?;
                ordinal += 1;
                record_column(pg, &table, &schema, &declared, &col, ordinal).await?;
            }
            Op::DropColumn {
                column_names,
                if_exists,
                ..
            } => {
                for c in column_names {
                    pg.batch_execute(&format!(
                        "ALTER TABLE {table} DROP COLUMN {}{}",
                        if *if_exists { "IF EXISTS " } else { "" },
                        pg_ident(&c.value)
                    ))
                    .await
                    .map_err(|e| crate::session::map_pg_error(&e, None))?;
                    pg.execute(
                        "DELETE FROM mssql_standin.columns WHERE table_oid = $1::text::regclass::oid AND lower(column_name) = lower($2)",
                        &[&table, &c.value],
                    )
                    .await
                    .map_err(|e| crate::session::map_pg_error(&e, None))?;
                }
            }
            other => return Err(SqlError::unsupported(format!("ALTER TABLE … {other}"))),
        }
    }
    refresh_trigger(pg, &table, &schema, &declared, database).await
}

/// ALTER TABLE t ALTER COLUMN c type [NULL | NOT NULL], parsed by hand (the
/// T-SQL form puts nullability after the type).
pub async fn alter_column(
    pg: &Client,
    table_name: &str,
    column: &str,
    type_text: &str,
    nullable: bool,
    env: &Env<'_>,
    database: &str,
) -> Result<(), SqlError> {
    let info = env.catalog.table(table_name).ok_or_else(|| {
        SqlError::new(4902, 16, format!("Cannot find the object \"{table_name}\" because it does not exist or you do not have permissions."))
    })?;
    let existing = info
        .column(column)
        .ok_or_else(|| SqlError::new(4924, 16, format!("ALTER TABLE ALTER COLUMN failed because column '{column}' does not exist in table '{table_name}'.")))?;
    let ty = parse_decl(type_text).ok_or_else(|| {
        SqlError::new(
            2715,
            16,
            format!("Column, parameter, or variable #1: Cannot find data type {type_text}."),
        )
    })?;
    let table = format!("{}.{}", pg_ident(&info.schema), pg_ident(&info.name));
    let col_ident = pg_ident(&existing.name);
    let pg_type = ty.pg_type();
    let base_type = pg_type
        .split(" COLLATE")
        .next()
        .unwrap_or(&pg_type)
        .to_string();
    pg.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN {col_ident} TYPE {pg_type} USING {col_ident}::{base_type}, \
         ALTER COLUMN {col_ident} {} NOT NULL",
        if nullable { "DROP" } else { "SET" }
    ))
    .await
    .map_err(|e| crate::session::map_pg_error(&e, None))?;
    let col = Col {
        name: existing.name.clone(),
        ty,
        nullable,
        identity: None,
        default: None,
    };
    let ordinal = info
        .columns
        .iter()
        .position(|c| c.name == existing.name)
        .map(|p| p as i32 + 1)
        .unwrap_or(1);
    record_column(pg, &table, &info.schema, &info.name, &col, ordinal).await?;
    refresh_trigger(pg, &table, &info.schema, &info.name, database).await
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The BEFORE INSERT OR UPDATE trigger that stores values as SQL Server would.
fn trigger_sql(table: &str, declared: &str, schema: &str, database: &str, cols: &[Col]) -> String {
    let mut body = String::new();
    let qualified = format!("{database}.{schema}.{declared}");
    for c in cols {
        let f = format!("NEW.{}", pg_ident(&c.name));
        let overflow = |ty: &str, min: i64, max: i64| {
            format!(
                "IF {f} < {min} OR {f} > {max} THEN RAISE EXCEPTION USING ERRCODE = 'M0220', MESSAGE = format('Arithmetic overflow error for data type {ty}, value = %s.', {f}); END IF;\n"
            )
        };
        match c.ty {
            SqlType::DateTime => body.push_str(&format!("{f} := mssql_standin.dt({f});\n")),
            SqlType::SmallDateTime => body.push_str(&format!("{f} := mssql_standin.sdt({f});\n")),
            SqlType::TinyInt => body.push_str(&overflow("tinyint", 0, 255)),
            SqlType::Bit => body.push_str(&format!("{f} := sign(abs({f}));\n")),
            SqlType::NVarChar(Some(n))
            | SqlType::VarChar(Some(n))
            | SqlType::NChar(n)
            | SqlType::Char(n) => {
                // A value of at most n UTF-8 bytes has at most n UTF-16
                // units: only longer ones need counting.
                body.push_str(&format!("IF octet_length({f}) > {n} THEN\n"));
                body.push_str(&format!(
                    "IF mssql_standin.utf16_len(rtrim({f}, ' ')) > {n} THEN RAISE EXCEPTION USING ERRCODE = 'M2628', MESSAGE = format('String or binary data would be truncated in table ''%s'', column ''%s''. Truncated value: ''%s''.', {}, {}, left({f}, {n})); END IF;\n",
                    sql_str(&qualified),
                    sql_str(&c.name)
                ));
                // SQL Server trims trailing spaces that do not fit, and pads nchar.
                body.push_str(&format!(
                    "IF mssql_standin.utf16_len({f}) > {n} THEN {f} := rtrim({f}, ' '); END IF;\n"
                ));
                body.push_str("END IF;\n");
                if matches!(c.ty, SqlType::NChar(_) | SqlType::Char(_)) {
                    body.push_str(&format!("{f} := rpad({f}, {n});\n"));
                }
            }
            _ => {}
        }
    }
    // A #temp table's trigger function is the session's own, too.
    let fname = format!(
        "{}.{}",
        if declared.starts_with('#') || declared.starts_with('@') {
            "pg_temp"
        } else {
            "mssql_standin"
        },
        pg_ident(&format!("trg_{schema}_{declared}"))
    );
    format!(
        "CREATE OR REPLACE FUNCTION {fname}() RETURNS trigger LANGUAGE plpgsql AS $trg$\nBEGIN\n{body}RETURN NEW;\nEND\n$trg$;\n\
         DROP TRIGGER IF EXISTS standin_storage ON {table};\n\
         CREATE TRIGGER standin_storage BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {fname}();"
    )
}

/// Runs CREATE [UNIQUE] INDEX.
pub async fn create_index(pg: &Client, ci: &CreateIndex, env: &Env<'_>) -> Result<(), SqlError> {
    let table = pg_name(&ci.table_name);
    let name = ci
        .name
        .as_ref()
        .map(object_base_name)
        .ok_or_else(|| SqlError::syntax("INDEX"))?;
    let cols: Vec<String> = ci
        .columns
        .iter()
        .map(|c| {
            let base = pg_ident(c.column.expr.to_string().trim_matches(['[', ']', '"']));
            if c.column.options.to_string().contains("DESC") {
                format!("{base} DESC")
            } else {
                base
            }
        })
        .collect();
    let schema = table.split('.').next().unwrap_or("\"dbo\"").to_string();
    // Index names are per table in SQL Server; PostgreSQL needs them unique
    // per schema, so the table's name is prefixed.
    let pg_index = pg_ident(&format!("{}__{}", object_base_name(&ci.table_name), name));
    let mut sql = format!(
        "CREATE {}INDEX {pg_index} ON {table} ({})",
        if ci.unique { "UNIQUE " } else { "" },
        cols.join(", ")
    );
    if ci.unique {
        sql.push_str(" NULLS NOT DISTINCT");
    }
    let filter = match &ci.predicate {
        Some(p) => Some(expr_sql(p, env)?),
        None => None,
    };
    if let Some(f) = &filter {
        sql.push_str(&format!(" WHERE {f}"));
    }
    pg.batch_execute(&sql)
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))?;
    let qualified = format!("{schema}.{pg_index}");
    let filter_text = ci.predicate.as_ref().map(|p| format!("({p})"));
    pg.execute(
        "INSERT INTO mssql_standin.indexes (index_oid, table_oid, name, is_primary_key, is_unique_constraint, filter) \
         VALUES ($1::text::regclass::oid, $2::text::regclass::oid, $3, false, false, $4)",
        &[&qualified, &table, &name, &filter_text],
    )
    .await
    .map_err(|e| crate::session::map_pg_error(&e, None))?;
    Ok(())
}

/// Runs `CREATE [OR ALTER] TRIGGER name ON table {AFTER | FOR} events AS
/// body` ("CREATE TRIGGER (Transact-SQL)"): one PostgreSQL statement-level
/// AFTER trigger per event, whose transition tables are the `inserted`
/// and `deleted` tables the body reads. The body is DML statements (SET
/// NOCOUNT and BEGIN … END are accepted); INSTEAD OF triggers, IF and
/// variables are not emulated.
pub async fn create_trigger(pg: &Client, text: &str, env: &Env<'_>) -> Result<(), SqlError> {
    let upper = text.to_uppercase();
    let find = |word: &str, from: usize| -> Option<usize> {
        let pat = format!(" {word} ");
        let spaced: String = upper[from..]
            .chars()
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect();
        spaced.find(&pat).map(|i| from + i)
    };
    let start = upper
        .find("TRIGGER")
        .ok_or_else(|| SqlError::syntax("TRIGGER"))?
        + "TRIGGER".len();
    let on = find("ON", start).ok_or_else(|| SqlError::syntax("ON"))?;
    let name = text[start..on].trim();
    let (timing, after_at) = match (find("AFTER", on), find("FOR", on), find("INSTEAD", on)) {
        (_, _, Some(_)) => return Err(SqlError::unsupported("INSTEAD OF triggers")),
        (Some(a), _, _) => (a, a + " AFTER ".len()),
        (None, Some(f), _) => (f, f + " FOR ".len()),
        _ => return Err(SqlError::syntax("ON")),
    };
    let table_text = text[on + " ON ".len()..timing].trim();
    let as_at = find("AS", after_at).ok_or_else(|| SqlError::syntax("AS"))?;
    let events: Vec<String> = upper[after_at..as_at]
        .split(',')
        .map(|e| e.trim().to_string())
        .collect();
    let body = &text[as_at + " AS ".len()..];
    let table_name = crate::session::parse_one(&format!("SELECT 1 FROM {table_text}"))
        .ok()
        .and_then(|s| match s {
            sqlparser::ast::Statement::Query(q) => match *q.body {
                sqlparser::ast::SetExpr::Select(s) => {
                    s.from.first().and_then(|t| match &t.relation {
                        sqlparser::ast::TableFactor::Table { name, .. } => Some(name.clone()),
                        _ => None,
                    })
                }
                _ => None,
            },
            _ => None,
        })
        .ok_or_else(|| SqlError::syntax(table_text))?;
    let table = pg_name(&table_name);
    let declared_table = object_base_name(&table_name);
    if env.catalog.table(&declared_table).is_none() {
        return Err(SqlError::new(
            8197,
            16,
            format!("The object '{table_text}' does not exist or is invalid for this operation."),
        ));
    }
    let trigger_name = name
        .rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches(['[', ']', '"'])
        .to_lowercase();
    // The body's statements, translated once.
    let nodes = crate::batch::build(&crate::batch::split(body)).map_err(SqlError::syntax)?;
    let mut stmts = Vec::new();
    fn collect<'n>(
        nodes: &'n [crate::batch::Node],
        out: &mut Vec<&'n str>,
    ) -> Result<(), SqlError> {
        for n in nodes {
            match n {
                crate::batch::Node::Stmt(s) => out.push(s),
                crate::batch::Node::Block(b) => collect(b, out)?,
                crate::batch::Node::If { .. } => {
                    return Err(SqlError::unsupported("IF in a trigger body"))
                }
            }
        }
        Ok(())
    }
    let mut texts = Vec::new();
    collect(&nodes, &mut texts)?;
    for s in texts {
        let words: Vec<String> = s
            .split_whitespace()
            .take(2)
            .map(str::to_uppercase)
            .collect();
        if words.first().map(String::as_str) == Some("SET")
            && words.get(1).map(String::as_str) == Some("NOCOUNT")
        {
            continue;
        }
        let stmt = crate::session::parse_one(s)?;
        let tr = crate::translate::translate_statement(stmt, env)?;
        if !tr.binds.is_empty() || tr.output_into.is_some() {
            return Err(SqlError::unsupported(
                "variables or OUTPUT … INTO in a trigger body",
            ));
        }
        stmts.push(tr.sql);
    }
    let mut sql = String::new();
    for event in &events {
        let referencing = match event.as_str() {
            "INSERT" => "REFERENCING NEW TABLE AS inserted",
            "UPDATE" => "REFERENCING OLD TABLE AS deleted NEW TABLE AS inserted",
            "DELETE" => "REFERENCING OLD TABLE AS deleted",
            other => return Err(SqlError::syntax(other)),
        };
        let pg_trigger = pg_ident(&format!(
            "{}{trigger_name}_{}",
            crate::catalog::USER_TRIGGER_PREFIX,
            event.to_lowercase()
        ));
        let func = format!(
            "mssql_standin.{}",
            pg_ident(&format!(
                "trg_user_{declared_table}_{trigger_name}_{}",
                event.to_lowercase()
            ))
        );
        let body: String = stmts.iter().map(|s| format!("{s};\n")).collect();
        // RECURSIVE_TRIGGERS is OFF by default ("ALTER DATABASE SET
        // Options"): a trigger's own writes to its table do not fire it
        // again, while other tables' triggers do fire (nested triggers).
        let guard: String = format!("{declared_table}_{trigger_name}_{}", event.to_lowercase())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let guard = format!("'mssql_standin_trg.{guard}'");
        let body = format!(
            "IF coalesce(current_setting({guard}, true), '') = 'on' THEN RETURN NULL; END IF;\n\
             PERFORM set_config({guard}, 'on', true);\n{body}PERFORM set_config({guard}, '', true);\n"
        );
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $trg$\nBEGIN\n{body}RETURN NULL;\nEND\n$trg$;\n\
             DROP TRIGGER IF EXISTS {pg_trigger} ON {table};\n\
             CREATE TRIGGER {pg_trigger} AFTER {event} ON {table} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {func}();\n"
        ));
    }
    pg.batch_execute(&sql)
        .await
        .map_err(|e| crate::session::map_pg_error(&e, None))
}
