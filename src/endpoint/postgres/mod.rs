//! The PostgreSQL endpoint: pooled connections (bb8, TLS as `tls` says), catalog
//! introspection, keyset change reads, and batched writes in one transaction
//! (with the links, when `[state]` lives here; the state store itself is
//! `state::postgres`, on the same pool).

mod copy;
pub mod types;

use super::children::{self, Dialect, Params};
use super::{Applied, Assign, Endpoint, EndpointError, Lower, Result, Scan, TableInfo, WriteBatch};
use crate::state::LinkBatch;
use crate::value::{floor_to_precision, SqlType, Value};
use async_trait::async_trait;
use futures_util::future::join_all;
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

pub(crate) use crate::db::postgres::{qualified, query_failure, Pooled};
pub use crate::db::postgres::{quote, DbFailure, PgDatabase};
pub use types::sql_type;

/// How the child SQL is spelled here.
pub(crate) const DIALECT: Dialect = Dialect {
    quote,
    param: |n| format!("${n}"),
    top: false,
    greatest: true,
};

/// `values` as statement parameters.
fn all_refs<'a>(
    head: Vec<&'a (dyn ToSql + Sync)>,
    tail: &'a [Value],
) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut out = head;
    out.extend(tail.iter().map(|v| v as &(dyn ToSql + Sync)));
    out
}

/// A PostgreSQL database, as the CRM side or the external side.
pub struct PgEndpoint {
    db: PgDatabase,
}

impl std::fmt::Debug for PgEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEndpoint")
            .field("side", &self.db.side())
            .field("target", &self.db.target())
            .finish()
    }
}

impl PgEndpoint {
    /// The endpoint of a connected database (`PgDatabase::connect`).
    pub fn new(db: PgDatabase) -> PgEndpoint {
        PgEndpoint { db }
    }

    fn query_error(&self, what: impl Into<String>, e: tokio_postgres::Error) -> EndpointError {
        self.db.query_error(what, e)
    }

    /// See [`PgDatabase::query_by_keys`].
    async fn query_by_keys(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.db.query_by_keys(sql, params, what).await
    }

    async fn conn(&self) -> Result<Pooled<'_>> {
        self.db.conn().await
    }

    /// Runs a batch's updates in `tx`: each distinct statement shape is
    /// prepared once, then all are pipelined.
    pub(crate) async fn apply_updates(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        batch: &WriteBatch,
    ) -> Result<()> {
        let table = batch.table.qualified();
        let mut statements: HashMap<String, Statement> = HashMap::new();
        let mut sqls = Vec::with_capacity(batch.updates.len());
        for up in &batch.updates {
            let sql = update_sql(batch, &up.set);
            if !statements.contains_key(&sql) {
                let st = tx
                    .prepare(&sql)
                    .await
                    .map_err(|e| self.query_error(format!("preparing an update of {table}"), e))?;
                statements.insert(sql.clone(), st);
            }
            sqls.push(sql);
        }
        let params: Vec<Vec<Value>> = batch
            .updates
            .iter()
            .map(|u| {
                let mut p = params_of(&u.set);
                p.push(u.key.clone());
                p
            })
            .collect();
        pipelined(sqls.iter().zip(&params).map(|(sql, p)| {
            let st = &statements[sql];
            async move { tx.execute(st, &refs(p)).await }
        }))
        .await
        .map_err(|e| self.query_error(format!("updating {table}"), e))?;
        Ok(())
    }

    /// The columns of `scan`, child values and the change column of a
    /// scan with children computed (their parameters go to `p`).
    fn select_list(scan: &Scan, p: &mut Params) -> String {
        Self::select_list_with(scan, p, None)
    }

    /// [`Self::select_list`] with the change column read from `change`
    /// (an expression computed once per row) when given.
    fn select_list_with(scan: &Scan, p: &mut Params, change: Option<&str>) -> String {
        scan.columns
            .iter()
            .map(|c| {
                if let Some(cc) = scan.child(c) {
                    return children::value_sql(&DIALECT, p, cc);
                }
                if *c == scan.change && !scan.children.is_empty() {
                    let expr = match change {
                        Some(e) => e.to_string(),
                        None => Self::change_expr(scan, p),
                    };
                    return format!("{expr} AS {}", quote(c));
                }
                let ty = scan.table.column(c).map(|ci| ci.ty.clone());
                match ty {
                    Ok(SqlType::Other(_)) => format!("{}::text", quote(c)),
                    _ => quote(c),
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
            children::change_sql(&DIALECT, p, &quote(&scan.change), &scan.children)
        }
    }

    fn filter_sql(scan: &Scan) -> String {
        scan.filter
            .as_ref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default()
    }
}

/// Runs statements pipelined in one transaction and returns their results,
/// or the first error in statement order. Once one statement fails the
/// server refuses every later one ("current transaction is aborted"), and
/// such an error may be the first to come back: waiting for all of them
/// keeps the one that says what was wrong (a refused row, say).
async fn pipelined<T, F>(
    statements: impl IntoIterator<Item = F>,
) -> Result<Vec<T>, tokio_postgres::Error>
where
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    join_all(statements).await.into_iter().collect()
}

fn rows_to_values(
    rows: Vec<tokio_postgres::Row>,
) -> Result<Vec<Vec<Value>>, tokio_postgres::Error> {
    rows.into_iter()
        .map(|r| (0..r.len()).map(|i| r.try_get::<_, Value>(i)).collect())
        .collect()
}

fn insert_sql(batch: &WriteBatch, cols: &[(String, Assign)]) -> String {
    let mut names = Vec::new();
    let mut exprs = Vec::new();
    let mut n = 0;
    for (c, a) in cols {
        names.push(quote(c));
        exprs.push(assign_expr(&batch.table, c, a, &mut n));
    }
    format!(
        "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
        qualified(&batch.table),
        names.join(", "),
        exprs.join(", "),
        quote(&batch.key)
    )
}

fn update_sql(batch: &WriteBatch, set: &[(String, Assign)]) -> String {
    let mut n = 0;
    let sets: Vec<String> = set
        .iter()
        .map(|(c, a)| format!("{} = {}", quote(c), assign_expr(&batch.table, c, a, &mut n)))
        .collect();
    format!(
        "UPDATE {} SET {} WHERE {} = ${}",
        qualified(&batch.table),
        sets.join(", "),
        quote(&batch.key),
        n + 1
    )
}

fn assign_expr(table: &TableInfo, column: &str, a: &Assign, n: &mut usize) -> String {
    match a {
        Assign::Value(_) => {
            *n += 1;
            format!("${n}")
        }
        Assign::Now => match table.column(column).map(|c| &c.ty) {
            Ok(SqlType::TimestampTz) => "CURRENT_TIMESTAMP".into(),
            Ok(SqlType::Date) => "CURRENT_DATE".into(),
            _ => "LOCALTIMESTAMP".into(),
        },
        Assign::AllocateId { .. } => {
            *n += 1;
            format!("eware_get_identity_id(${n})")
        }
    }
}

fn params_of(cols: &[(String, Assign)]) -> Vec<Value> {
    cols.iter()
        .filter_map(|(_, a)| match a {
            Assign::Value(v) => Some(v.clone()),
            Assign::AllocateId { table } => Some(Value::Text(table.clone())),
            Assign::Now => None,
        })
        .collect()
}

fn refs(values: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl Endpoint for PgEndpoint {
    fn describe(&self) -> String {
        self.db.target().to_string()
    }

    fn bulk(&self) -> Option<&dyn super::bulk::Bulk> {
        Some(self)
    }

    fn bulk_source(&self) -> &dyn super::bulk::BulkSource {
        self
    }

    async fn table(&self, schema: Option<&str>, name: &str) -> Result<Option<TableInfo>> {
        let conn = self.conn().await?;
        let found = conn
            .query(
                "SELECT c.oid, n.nspname::text, c.relname::text, \
                        greatest(c.reltuples, 0)::bigint \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'f', 'm') \
                   AND lower(c.relname) = lower($1) \
                   AND (CASE WHEN $2::text IS NULL \
                             THEN n.nspname = ANY (current_schemas(false)) \
                             ELSE lower(n.nspname) = lower($2::text) END)",
                &[&name, &schema],
            )
            .await
            .map_err(|e| self.query_error(format!("looking up table {name}"), e))?;
        let row = match found.as_slice() {
            [] => return Ok(None),
            [one] => one,
            many => {
                let names: Vec<String> = many
                    .iter()
                    .map(|r| format!("{}.{}", r.get::<_, String>(1), r.get::<_, String>(2)))
                    .collect();
                return Err(EndpointError::Schema(format!(
                    "table name {name} matches {} tables ({}); name it exactly with its schema",
                    names.len(),
                    names.join(", ")
                )));
            }
        };
        let oid: u32 = row.get(0);
        let mut info = TableInfo {
            schema: row.get(1),
            name: row.get(2),
            columns: Vec::new(),
            primary_key: Vec::new(),
            indexes: Vec::new(),
            unique: Vec::new(),
            row_estimate: row.get(3),
        };
        let cols = conn
            .query(
                "SELECT a.attname::text, t.typname::text, a.atttypmod, NOT a.attnotnull, \
                        a.atthasdef, a.attidentity <> '', a.attgenerated <> '' \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| self.query_error(format!("reading the columns of {name}"), e))?;
        for c in cols {
            let typname: String = c.get(1);
            info.columns.push(super::ColumnInfo {
                name: c.get(0),
                ty: sql_type(&typname, c.get(2)),
                nullable: c.get(3),
                has_default: c.get(4),
                identity: c.get(5),
                generated: c.get(6),
            });
        }
        let ixs = conn
            .query(
                "SELECT i.indisprimary, i.indisunique, \
                        array(SELECT a.attname::text \
                              FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                              ORDER BY k.ord) \
                 FROM pg_index i WHERE i.indrelid = $1 ORDER BY i.indexrelid",
                &[&oid],
            )
            .await
            .map_err(|e| self.query_error(format!("reading the indexes of {name}"), e))?;
        for ix in ixs {
            let cols: Vec<String> = ix.get(2);
            if ix.get::<_, bool>(0) {
                info.primary_key = cols.clone();
            }
            if ix.get::<_, bool>(1) {
                info.unique.push(cols.clone());
            }
            info.indexes.push(cols);
        }
        Ok(Some(info))
    }

    async fn clock(&self, ty: &SqlType) -> Result<Value> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT LOCALTIMESTAMP, CURRENT_TIMESTAMP", &[])
            .await
            .map_err(|e| self.query_error("reading the server clock", e))?;
        Ok(match ty {
            SqlType::TimestampTz => Value::TimestampTz(row.get(1)),
            SqlType::Timestamp { precision } => {
                Value::Timestamp(floor_to_precision(row.get(0), *precision))
            }
            _ => Value::Timestamp(row.get(0)),
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
        let (base, params): (usize, Vec<&(dyn ToSql + Sync)>) = match lower {
            Lower::Start => (1, vec![upto]),
            Lower::From(ts) => (2, vec![upto, ts]),
            Lower::After { ts, key: k } => (3, vec![upto, ts, k]),
        };
        let mut p = Params::from(base + 1);
        // With children the change time is computed once per row, in a
        // lateral subquery that OFFSET 0 keeps from being inlined into
        // each place that names it.
        let (from, chg) = if scan.children.is_empty() {
            (qualified(&scan.table), raw_chg.clone())
        } else {
            let eff = Self::change_expr(scan, &mut p);
            (
                format!(
                    "{} CROSS JOIN LATERAL (SELECT {eff} AS crmsync_eff OFFSET 0) AS crmsync_e",
                    qualified(&scan.table)
                ),
                "crmsync_e.crmsync_eff".to_string(),
            )
        };
        let list = Self::select_list_with(scan, &mut p, Some(&chg));
        let mut cond = match lower {
            Lower::Start => String::new(),
            Lower::From(_) => format!(" AND {chg} >= $2"),
            Lower::After { .. } => format!(" AND ({chg}, {key}) > ($2, $3)"),
        };
        if !scan.children.is_empty() && !matches!(lower, Lower::Start) {
            cond.push_str(" AND ");
            cond.push_str(&children::candidates_sql(
                &DIALECT,
                &mut p,
                (&scan.table, &scan.key, &scan.change),
                "$2",
                "$1",
                &scan.children,
            ));
        }
        let sql = format!(
            "SELECT {list} FROM {from} WHERE {raw_chg} IS NOT NULL AND {chg} <= $1{cond}{} \
             ORDER BY {chg}, {key} LIMIT {limit}",
            Self::filter_sql(scan),
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &all_refs(params, &p.values))
            .await
            .map_err(|e| {
                self.query_error(format!("reading changes of {}", scan.table.qualified()), e)
            })?;
        rows_to_values(rows).map_err(|e| self.query_error("decoding changed rows", e))
    }

    async fn fetch(&self, scan: &Scan, column: &str, keys: &[Value]) -> Result<Vec<Vec<Value>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = Params::from(2);
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = ANY($1){}",
            Self::select_list(scan, &mut p),
            qualified(&scan.table),
            quote(column),
            Self::filter_sql(scan),
        );
        let keys: Vec<Value> = keys.to_vec();
        let what = format!("fetching rows of {}", scan.table.qualified());
        let rows = self
            .query_by_keys(&sql, &all_refs(vec![&keys], &p.values), &what)
            .await?;
        rows_to_values(rows).map_err(|e| self.query_error("decoding rows", e))
    }

    async fn read_page(
        &self,
        scan: &Scan,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let key = quote(&scan.key);
        let cond = match after {
            Some(_) => format!("{key} > $1"),
            None => "true".into(),
        };
        let params: Vec<&(dyn ToSql + Sync)> = after
            .into_iter()
            .map(|k| k as &(dyn ToSql + Sync))
            .collect();
        let mut p = Params::from(params.len() + 1);
        let sql = format!(
            "SELECT {} FROM {} WHERE {cond}{} ORDER BY {key} LIMIT {limit}",
            Self::select_list(scan, &mut p),
            qualified(&scan.table),
            Self::filter_sql(scan),
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &all_refs(params, &p.values))
            .await
            .map_err(|e| {
                self.query_error(
                    format!("reading {} in key order", scan.table.qualified()),
                    e,
                )
            })?;
        rows_to_values(rows).map_err(|e| self.query_error("decoding rows", e))
    }

    async fn find(
        &self,
        scan: &Scan,
        conditions: &[(String, Value)],
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let mut conds = Vec::new();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (c, v) in conditions {
            if v.is_null() {
                conds.push(format!("{} IS NULL", quote(c)));
            } else {
                params.push(v);
                conds.push(format!("{} = ${}", quote(c), params.len()));
            }
        }
        let mut p = Params::from(params.len() + 1);
        let sql = format!(
            "SELECT {} FROM {} WHERE {}{} ORDER BY {} LIMIT {limit}",
            Self::select_list(scan, &mut p),
            qualified(&scan.table),
            if conds.is_empty() {
                "true".to_string()
            } else {
                conds.join(" AND ")
            },
            Self::filter_sql(scan),
            quote(&scan.key),
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &all_refs(params, &p.values))
            .await
            .map_err(|e| self.query_error(format!("searching {}", scan.table.qualified()), e))?;
        rows_to_values(rows).map_err(|e| self.query_error("decoding rows", e))
    }

    async fn keys(&self, scan: &Scan) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT {}::text FROM {}",
            quote(&scan.key),
            qualified(&scan.table)
        );
        let conn = self.conn().await?;
        let rows = conn.query(&sql, &[]).await.map_err(|e| {
            self.query_error(format!("reading the keys of {}", scan.table.qualified()), e)
        })?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The table's oid and file (TRUNCATE, a rewrite or a new table
    /// change them), its cumulative count of deleted rows, and when the
    /// database's statistics were last reset (by `pg_stat_reset()` or a
    /// crash). Inserts and updates leave it alone. Only for an ordinary
    /// table with `track_counts` on: a partitioned table counts in its
    /// partitions, and without `track_counts` nothing is counted.
    fn deletes_fingerprint_lags(&self) -> bool {
        true
    }

    async fn deletes_fingerprint(&self, table: &TableInfo) -> Result<Option<String>> {
        let sql = "SELECT c.oid::text || '/' || c.relfilenode::text || '/' \
                       || s.n_tup_del::text || '/' || coalesce(d.stats_reset::text, '') \
                   FROM pg_class c \
                   JOIN pg_stat_all_tables s ON s.relid = c.oid \
                   JOIN pg_stat_database d ON d.datname = current_database() \
                   WHERE c.oid = $1::text::regclass AND c.relkind = 'r' \
                     AND current_setting('track_counts')::boolean";
        let conn = self.conn().await?;
        let row = conn
            .query_opt(sql, &[&qualified(table)])
            .await
            .map_err(|e| {
                self.query_error(
                    format!("reading the statistics of {}", table.qualified()),
                    e,
                )
            })?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn count_null_changes(&self, scan: &Scan) -> Result<i64> {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {} IS NULL{}",
            qualified(&scan.table),
            quote(&scan.change),
            Self::filter_sql(scan)
        );
        let conn = self.conn().await?;
        let row = conn
            .query_one(&sql, &[])
            .await
            .map_err(|e| self.query_error("counting rows without a change time", e))?;
        Ok(row.get(0))
    }

    async fn count_dangling(&self, child: &Scan, column: &str, parent: &Scan) -> Result<i64> {
        // The parent's filter names the parent's columns: inside the
        // subquery they resolve to the parent table first.
        let sql = format!(
            "SELECT count(*) FROM {} AS c WHERE c.{col} IS NOT NULL{} AND NOT EXISTS \
             (SELECT 1 FROM {} AS p WHERE p.{} = c.{col}{})",
            qualified(&child.table),
            Self::filter_sql(child),
            qualified(&parent.table),
            quote(&parent.key),
            Self::filter_sql(parent),
            col = quote(column),
        );
        let conn = self.conn().await?;
        let row = conn
            .query_one(&sql, &[])
            .await
            .map_err(|e| self.query_error("counting references to filtered-out rows", e))?;
        Ok(row.get(0))
    }

    async fn column_range(
        &self,
        table: &TableInfo,
        column: &str,
    ) -> Result<Option<(Value, Value)>> {
        let c = quote(column);
        let sql = format!("SELECT min({c}), max({c}) FROM {}", qualified(table));
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &[])
            .await
            .map_err(|e| self.query_error(format!("reading the range of {column}"), e))?;
        let rows = rows_to_values(rows).map_err(|e| self.query_error("decoding the range", e))?;
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
        let mut row = serde_json::Map::new();
        for (c, v) in values {
            let j = match v {
                Value::Null => serde_json::Value::Null,
                Value::Bool(b) => serde_json::Value::Bool(*b),
                Value::Int(i) => serde_json::Value::from(*i),
                other => serde_json::Value::String(other.key_string()),
            };
            row.insert(c.clone(), j);
        }
        let sql = format!(
            "SELECT coalesce(({filter}), false) FROM jsonb_populate_record(NULL::{}, $1) AS {}",
            qualified(&scan.table),
            quote(&scan.table.name)
        );
        let conn = self.conn().await?;
        let row = serde_json::Value::Object(row);
        Ok(conn.query_one(&sql, &[&row]).await.ok().map(|r| r.get(0)))
    }

    async fn check_filter(&self, scan: &Scan) -> Result<()> {
        let sql = format!(
            "EXPLAIN SELECT 1 FROM {} WHERE true{}",
            qualified(&scan.table),
            Self::filter_sql(scan)
        );
        let conn = self.conn().await?;
        conn.query(&sql, &[]).await.map(|_| ()).map_err(|e| {
            EndpointError::Schema(format!(
                "the filter {:?} is not valid for {}: {}",
                scan.filter.as_deref().unwrap_or(""),
                scan.table.qualified(),
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            ))
        })
    }

    async fn apply(&self, batch: &WriteBatch, links: Option<&LinkBatch>) -> Result<Applied> {
        // Child values go to their own rows after the entity rows.
        let split = children::split(batch);
        let (batch, pending) = match &split {
            Some((own, pending)) => (own, Some(pending)),
            None => (batch, None),
        };
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?;
        let table = batch.table.qualified();
        let mut statements: HashMap<String, Statement> = HashMap::new();
        // Prepare each distinct statement shape once, then pipeline.
        let mut insert_sqls = Vec::with_capacity(batch.inserts.len());
        for ins in &batch.inserts {
            let sql = insert_sql(batch, &ins.columns);
            if !statements.contains_key(&sql) {
                let st = tx.prepare(&sql).await.map_err(|e| {
                    self.query_error(format!("preparing an insert into {table}"), e)
                })?;
                statements.insert(sql.clone(), st);
            }
            insert_sqls.push(sql);
        }
        let insert_params: Vec<Vec<Value>> = batch
            .inserts
            .iter()
            .map(|i| params_of(&i.columns))
            .collect();
        let inserted = pipelined(insert_sqls.iter().zip(&insert_params).map(|(sql, p)| {
            let st = &statements[sql];
            let tx = &tx;
            async move { tx.query_one(st, &refs(p)).await }
        }))
        .await
        .map_err(|e| self.query_error(format!("inserting into {table}"), e))?;
        let inserted_keys: Vec<Value> = inserted
            .into_iter()
            .map(|r| r.try_get::<_, Value>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.query_error("decoding inserted keys", e))?;
        self.apply_updates(&tx, batch).await?;
        if let Some(pending) = pending.filter(|p| !p.is_empty()) {
            let mut ctx = ChildTx { ep: self, tx: &tx };
            children::write_pending(&mut ctx, pending, &inserted_keys).await?;
        }
        if !batch.deletes.is_empty() {
            let sql = format!(
                "DELETE FROM {} WHERE {} = ANY($1)",
                qualified(&batch.table),
                quote(&batch.key)
            );
            tx.execute(&sql, &[&batch.deletes])
                .await
                .map_err(|e| self.query_error(format!("deleting from {table}"), e))?;
        }
        if let Some(links) = links {
            let resolved = links.resolved(&inserted_keys);
            crate::state::postgres::write_links_in(&tx, &resolved)
                .await
                .map_err(|e| self.query_error("writing links", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?;
        Ok(Applied { inserted_keys })
    }
}

/// The child writes' view of a transaction.
struct ChildTx<'a, 't> {
    ep: &'a PgEndpoint,
    tx: &'a tokio_postgres::Transaction<'t>,
}

#[async_trait]
impl children::ChildTx for ChildTx<'_, '_> {
    fn dialect(&self) -> Dialect {
        DIALECT
    }

    async fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        let rows = self
            .tx
            .query(sql, &refs(params))
            .await
            .map_err(|e| self.ep.query_error("writing a phone, e-mail or address", e))?;
        rows_to_values(rows).map_err(|e| self.ep.query_error("decoding a child row", e))
    }

    async fn apply(&mut self, batch: &WriteBatch) -> Result<Vec<Value>> {
        let table = batch.table.qualified();
        let mut keys = Vec::with_capacity(batch.inserts.len());
        for ins in &batch.inserts {
            let sql = insert_sql(batch, &ins.columns);
            let row = self
                .tx
                .query_one(&sql, &refs(&params_of(&ins.columns)))
                .await
                .map_err(|e| self.ep.query_error(format!("inserting into {table}"), e))?;
            keys.push(
                row.try_get::<_, Value>(0)
                    .map_err(|e| self.ep.query_error("decoding an inserted key", e))?,
            );
        }
        self.ep.apply_updates(self.tx, batch).await?;
        Ok(keys)
    }
}
