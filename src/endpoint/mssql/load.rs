//! Bulk loads into SQL Server, for a backfill's chunks and a write batch's
//! many inserts: the rows go into a `#crmsync_stage` table by TDS bulk load
//! (`INSERT BULK`, tiberius `bulk_insert`), then into the target by one
//! set-based `INSERT … SELECT` whose `OUTPUT INSERTED.key INTO
//! #crmsync_keys` hands the assigned keys back (an `OUTPUT` without `INTO`
//! is refused on tables with triggers). A chunk's updates, links and
//! checkpoint commit in the same transaction.
//!
//! Which key goes with which row: a key the chunk gives is known; an
//! IDENTITY key is paired by order, because SQL Server computes the
//! identity values of an `INSERT … SELECT … ORDER BY` in that order ("ORDER
//! BY Clause (Transact-SQL)", Limitations and Restrictions). A key drawn by
//! another default (`NEWID()`, `NEWSEQUENTIALID()`, a code) has no such
//! guarantee, and an `INSERT`'s `OUTPUT` may name only the inserted row,
//! so those rows go in by `MERGE INTO target USING #crmsync_stage ON 1 = 0
//! WHEN NOT MATCHED THEN INSERT … OUTPUT INSERTED.key, s.crmsync_ord INTO
//! #crmsync_keys`: a MERGE's `OUTPUT` may name the source's columns too
//! ("MERGE (Transact-SQL)", `<output_clause>`; "OUTPUT Clause
//! (Transact-SQL)", `from_table_name`), so every key comes back beside its
//! row's place.
//!
//! The staging and key tables are the session's own (`#crmsync_stage_…`,
//! `#crmsync_keys_…`, named by a digest of their columns): created on a
//! connection's first use and emptied by `TRUNCATE TABLE` on each later
//! one, not created and dropped per chunk.
//!
//! Links of new rows whose keys are positive integers (IDENTITY keys, in
//! practice) do not travel twice: their CRM keys and shadows ride in the
//! staging table beside the rows, and one `INSERT INTO links … SELECT`
//! pairs them with the keys the insert handed out, encoding each key in
//! T-SQL as `state::keys` does. Other keys' links are bulk loaded.
//!
//! The staging columns carry the neutral type of each target column in
//! the wire type tiberius sends it as (integers as `bigint`, text as
//! `nvarchar(max)`, timestamps as `datetime2(7)`), and the `INSERT … SELECT`
//! converts them to the target's own types as SQL Server converts
//! parameters: a bulk load needs each cell in its column's exact wire type.

use super::{qualified, quote, MssqlEndpoint, TdsClient};
use crate::endpoint::bulk::{ChunkWrite, FreshLinks};
use crate::endpoint::{Assign, ColumnInfo, EndpointError, Insert, Result, TableInfo, WriteBatch};
use crate::value::{SqlType, Value};
use std::borrow::Cow;
use tiberius::numeric::Numeric;
use tiberius::{ColumnData, IntoSql, TokenRow};

/// A session's scratch table of one shape: `#crmsync_{what}_{digest of
/// its columns}`. It is created on first use and emptied, not dropped,
/// after each: a pooled connection keeps it, so later chunks of the run
/// neither create nor drop a table (DDL that SQL Server would log in
/// tempdb and that recompiles every batch naming it). An entity of
/// another shape on the same connection gets its own table.
fn scratch(what: &str, columns: &str) -> String {
    format!(
        "#crmsync_{what}_{:016x}",
        xxhash_rust::xxh3::xxh3_64(columns.as_bytes())
    )
}

/// The statement that readies scratch table `name` for a use: created
/// when the session has none, emptied otherwise. Emptying at the start
/// too matters: a transaction that rolled back after emptying it at the
/// end brings the old rows back.
fn ready(name: &str, columns: &str) -> String {
    format!(
        "IF OBJECT_ID('tempdb..{name}') IS NULL CREATE TABLE {name} ({columns}) \
         ELSE TRUNCATE TABLE {name}"
    )
}

/// Rows to insert through the staging table.
pub(super) struct Staged<'a> {
    pub table: &'a TableInfo,
    pub key: &'a str,
    /// The target's columns, in order.
    pub columns: &'a [String],
    /// Per column: a server-side expression (`GETDATE()`) for every row,
    /// or `None` for a value each row carries.
    pub exprs: Vec<Option<String>>,
    /// Per row, the values of the columns without an expression, in order.
    pub rows: &'a [Vec<Value>],
    /// Links of the new rows (`FreshLink::insert` indexes `rows`) for the
    /// links table of this same database; see [`StagedKeys`].
    pub links: Option<&'a FreshLinks>,
}

/// What a staged insert did.
pub(super) struct StagedKeys {
    /// The keys of the new rows, in row order.
    pub keys: Vec<Value>,
    /// Whether `Staged::links` are written too: when every new key is a
    /// positive integer (and every CRM key and shadow fits
    /// `LINK_CELL_MAX`), the links go from the staging table (which
    /// carried their CRM keys and shadows) into the links table in one
    /// statement, the external keys encoded by SQL Server itself; other
    /// links are for the caller to load.
    pub links_written: bool,
}

/// The longest value, in bytes, that tiberius' bulk load sends into a
/// `(max)` column: it takes the 65,535 of the column's metadata for the
/// limit and refuses anything longer, in the middle of the load. Longer
/// texts and binaries go row by row, as parameters.
const BULK_MAX_BYTES: usize = 0xFFFF;

/// The longest CRM key or shadow, in bytes, that rides in the staging
/// table's `varbinary(8000)` link columns.
const LINK_CELL_MAX: usize = 8000;

/// How a column travels through the staging table.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    Bit,
    BigInt,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Float,
    /// nvarchar(max).
    Text,
    DateTime2,
    DateTimeOffset,
    Date,
    Guid,
    Binary,
}

impl Wire {
    fn of(ty: &SqlType) -> Wire {
        match ty {
            SqlType::Bool => Wire::Bit,
            SqlType::Int { .. } => Wire::BigInt,
            SqlType::Decimal { precision, scale } => {
                let precision = (*precision).clamp(1, 38) as u8;
                Wire::Decimal {
                    precision,
                    scale: (*scale as u8).min(precision),
                }
            }
            SqlType::Float => Wire::Float,
            // Unbounded: a value too long for the target is refused by the
            // INSERT into it (2628, naming the table and column, a refused
            // row), not by the bulk load into the staging table.
            SqlType::Text { .. } => Wire::Text,
            SqlType::Timestamp { .. } => Wire::DateTime2,
            SqlType::TimestampTz => Wire::DateTimeOffset,
            SqlType::Date => Wire::Date,
            SqlType::Uuid => Wire::Guid,
            SqlType::Bytes => Wire::Binary,
            SqlType::Other(_) => Wire::Text,
        }
    }

    /// The staging column's T-SQL type.
    fn declaration(self) -> String {
        match self {
            Wire::Bit => "bit".into(),
            Wire::BigInt => "bigint".into(),
            Wire::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            Wire::Float => "float".into(),
            Wire::Text => "nvarchar(max)".into(),
            Wire::DateTime2 => "datetime2(7)".into(),
            Wire::DateTimeOffset => "datetimeoffset(7)".into(),
            Wire::Date => "date".into(),
            Wire::Guid => "uniqueidentifier".into(),
            Wire::Binary => "varbinary(max)".into(),
        }
    }

    /// A cell in this wire type; `Err` names what did not fit.
    fn cell(self, v: &Value) -> std::result::Result<ColumnData<'static>, String> {
        Ok(match (self, v) {
            (Wire::Bit, Value::Null) => ColumnData::Bit(None),
            (Wire::BigInt, Value::Null) => ColumnData::I64(None),
            (Wire::Decimal { .. }, Value::Null) => ColumnData::Numeric(None),
            (Wire::Float, Value::Null) => ColumnData::F64(None),
            (Wire::Text, Value::Null) => ColumnData::String(None),
            (Wire::DateTime2, Value::Null) => ColumnData::DateTime2(None),
            (Wire::DateTimeOffset, Value::Null) => ColumnData::DateTimeOffset(None),
            (Wire::Date, Value::Null) => ColumnData::Date(None),
            (Wire::Guid, Value::Null) => ColumnData::Guid(None),
            (Wire::Binary, Value::Null) => ColumnData::Binary(None),
            (Wire::Bit, Value::Bool(b)) => ColumnData::Bit(Some(*b)),
            (Wire::Bit, Value::Int(i)) => ColumnData::Bit(Some(*i != 0)),
            (Wire::BigInt, Value::Int(i)) => ColumnData::I64(Some(*i)),
            (Wire::BigInt, Value::Bool(b)) => ColumnData::I64(Some(i64::from(*b))),
            (Wire::Decimal { scale, .. }, v) => {
                let mut d = match v {
                    Value::Decimal(d) => *d,
                    Value::Int(i) => rust_decimal::Decimal::from(*i),
                    other => return Err(format!("{} is not a number", kind(other))),
                };
                // The wire value's scale must be the column's.
                d.rescale(u32::from(scale));
                ColumnData::Numeric(Some(Numeric::new_with_scale(d.mantissa(), scale)))
            }
            (Wire::Float, Value::Float(f)) => ColumnData::F64(Some(*f)),
            (Wire::Float, Value::Int(i)) => ColumnData::F64(Some(*i as f64)),
            (Wire::Text, Value::Text(s)) if s.encode_utf16().count() * 2 > BULK_MAX_BYTES => {
                return Err(format!(
                    "a text of {} UTF-16 code units, longer than a bulk load carries",
                    s.encode_utf16().count()
                ))
            }
            (Wire::Binary, Value::Bytes(b)) if b.len() > BULK_MAX_BYTES => {
                return Err(format!("{} bytes, more than a bulk load carries", b.len()))
            }
            (Wire::Text, Value::Text(s)) => ColumnData::String(Some(Cow::Owned(s.clone()))),
            (Wire::DateTime2, Value::Timestamp(t)) => t.into_sql(),
            (Wire::DateTimeOffset, Value::TimestampTz(t)) => t.fixed_offset().into_sql(),
            (Wire::Date, Value::Date(d)) => d.into_sql(),
            (Wire::Guid, Value::Uuid(u)) => ColumnData::Guid(Some(*u)),
            (Wire::Binary, Value::Bytes(b)) => ColumnData::Binary(Some(Cow::Owned(b.clone()))),
            // Anything else (a number into a text column, say) goes row by
            // row, where SQL Server converts it as it converts parameters.
            (w, other) => {
                return Err(format!(
                    "a {} value where {} is expected",
                    kind(other),
                    w.declaration()
                ))
            }
        })
    }
}

impl MssqlEndpoint {
    /// Inserts a chunk's rows inside the caller's transaction; the keys of
    /// the new rows, in chunk order.
    pub(super) async fn load_inserts(
        &self,
        conn: &mut TdsClient,
        chunk: &ChunkWrite,
        links: Option<&FreshLinks>,
    ) -> Result<StagedKeys> {
        let target = chunk.table.qualified();
        if chunk.raw_inserts.is_some() {
            return Err(EndpointError::Schema(format!(
                "raw rows reached {target}: only PostgreSQL moves rows without decoding them"
            )));
        }
        if chunk.inserts.is_empty() {
            return Ok(StagedKeys {
                keys: Vec::new(),
                links_written: false,
            });
        }
        let staged = Staged {
            table: &chunk.table,
            key: &chunk.key,
            columns: &chunk.columns,
            exprs: vec![None; chunk.columns.len()],
            rows: &chunk.inserts,
            links,
        };
        if let Some(done) = self.insert_staged(conn, &staged).await? {
            return Ok(done);
        }
        // A value the staging table cannot carry: row by row.
        let mut batch = WriteBatch::new(chunk.table.clone(), chunk.key.clone());
        batch.inserts = chunk
            .inserts
            .iter()
            .map(|row| Insert {
                columns: chunk
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned().map(Assign::Value))
                    .collect(),
            })
            .collect();
        Ok(StagedKeys {
            keys: self.apply_rows(conn, &batch, &target).await?.inserted_keys,
            links_written: false,
        })
    }

    /// Inserts `s.rows` by a bulk load into a staging table and one
    /// `INSERT … SELECT`, inside the caller's transaction; the keys of the
    /// new rows in row order, or `None` (nothing written) when a value does
    /// not fit its staging column.
    pub(super) async fn insert_staged(
        &self,
        conn: &mut TdsClient,
        s: &Staged<'_>,
    ) -> Result<Option<StagedKeys>> {
        let target = s.table.qualified();
        let given = s
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(s.key))
            .filter(|i| s.exprs[*i].is_none());
        let key_col = column(s.table, s.key)?;
        // The staged columns: those whose values travel.
        let staged: Vec<usize> = (0..s.columns.len())
            .filter(|i| s.exprs[*i].is_none())
            .collect();
        let mut wires = Vec::with_capacity(staged.len());
        for i in &staged {
            wires.push(Wire::of(&column(s.table, &s.columns[*i])?.ty));
        }
        // The links that travel with the rows: not those with a CRM key or
        // shadow longer than the staging table's varbinary(8000) columns
        // (the caller bulk loads them).
        let carried = s.links.filter(|f| {
            f.links
                .iter()
                .all(|l| l.crm_key.len() <= LINK_CELL_MAX && l.shadow.len() <= LINK_CELL_MAX)
        });
        // Each row's link, if they travel.
        let mut link_of: Vec<Option<&crate::endpoint::bulk::FreshLink>> = Vec::new();
        if let Some(fresh) = carried {
            link_of.resize(s.rows.len(), None);
            for l in &fresh.links {
                if let Some(slot) = link_of.get_mut(l.insert) {
                    *slot = Some(l);
                }
            }
        }
        let mut cells = Vec::with_capacity(s.rows.len());
        for (r, row) in s.rows.iter().enumerate() {
            let mut tr = TokenRow::with_capacity(staged.len() + 1);
            for (j, w) in wires.iter().enumerate() {
                match w.cell(&row[j]) {
                    Ok(c) => tr.push(c),
                    Err(why) => {
                        tracing::debug!(
                            "column {} of {target}: {why}; inserting row by row",
                            s.columns[staged[j]]
                        );
                        return Ok(None);
                    }
                }
            }
            tr.push(ColumnData::I32(Some(cells.len() as i32)));
            if carried.is_some() {
                let link = link_of[r];
                tr.push(ColumnData::Binary(
                    link.map(|l| Cow::Owned(l.crm_key.clone())),
                ));
                tr.push(ColumnData::Binary(
                    link.map(|l| Cow::Owned(l.shadow.clone())),
                ));
            }
            cells.push(tr);
        }
        let t = std::time::Instant::now();
        let stage = self.stage(conn, &wires, carried.is_some()).await?;
        tracing::debug!("staging table for {target} ready in {:?}", t.elapsed());
        let loaded = self.bulk_rows(conn, &stage, &target, cells).await?;
        tracing::debug!("{loaded} rows bulk loaded at {:?}", t.elapsed());
        if loaded != s.rows.len() as u64 {
            return Err(EndpointError::Schema(format!(
                "the bulk load of {} rows for {target} stored {loaded}",
                s.rows.len()
            )));
        }
        let table = qualified(s.table);
        let names: Vec<String> = s.columns.iter().map(|c| quote(c)).collect();
        let mut next = 0;
        let select: Vec<String> = s
            .exprs
            .iter()
            .map(|e| match e {
                Some(expr) => expr.clone(),
                None => {
                    next += 1;
                    format!("c{}", next - 1)
                }
            })
            .collect();
        // The keys, with the SQL of a new row's key as a bigint and the
        // FROM clause that pairs it with its staged row, for the links.
        let (keys, key_sql, from) = match given {
            Some(pos) => {
                let sql = format!(
                    "INSERT INTO {table} ({}) SELECT {} FROM {stage} ORDER BY crmsync_ord",
                    names.join(", "),
                    select.join(", ")
                );
                self.batch_in(conn, &sql, &format!("inserting into {target}"))
                    .await?;
                let at = staged.iter().position(|i| *i == pos).unwrap_or(0);
                let keys = s
                    .rows
                    .iter()
                    .map(|r| {
                        let v = r[at].clone();
                        v.clone().coerce(&key_col.ty, None, false).unwrap_or(v)
                    })
                    .collect();
                (
                    keys,
                    format!("CAST(s.c{at} AS bigint)"),
                    format!("{stage} AS s"),
                )
            }
            None if !key_col.identity => {
                // A key another default draws: MERGE pairs each with its
                // row's place. OUTPUT … INTO, because SQL Server refuses a
                // bare OUTPUT on a table with triggers (error 334).
                let values: Vec<String> = s
                    .exprs
                    .iter()
                    .zip(&select)
                    .map(|(e, sel)| match e {
                        Some(_) => sel.clone(),
                        None => format!("s.{sel}"),
                    })
                    .collect();
                let columns = format!(
                    "k {}, crmsync_ord int NOT NULL",
                    self.declaration(s.table, s.key)
                );
                let keys = scratch("keys", &columns);
                let sql = format!(
                    "{}; \
                     MERGE INTO {table} AS t USING {stage} AS s ON 1 = 0 \
                     WHEN NOT MATCHED THEN INSERT ({}) VALUES ({}) \
                     OUTPUT INSERTED.{}, s.crmsync_ord INTO {keys} (k, crmsync_ord); \
                     SELECT k FROM {keys} ORDER BY crmsync_ord",
                    ready(&keys, &columns),
                    names.join(", "),
                    values.join(", "),
                    quote(s.key),
                );
                let got = self
                    .inserted_keys(conn, sql, &target, s.rows.len(), t)
                    .await?;
                (
                    got,
                    "CAST(k.k AS bigint)".to_string(),
                    format!("{keys} AS k JOIN {stage} AS s ON s.crmsync_ord = k.crmsync_ord"),
                )
            }
            None => {
                // IDENTITY values follow the ORDER BY: sorted in the
                // direction of the increment, the n-th key is the n-th row's.
                let descending = self.identity_descends(conn, s.table).await?;
                let order = if descending { " DESC" } else { "" };
                let columns = format!("k {}", self.declaration(s.table, s.key));
                let keys = scratch("keys", &columns);
                let sql = format!(
                    "{}; \
                     INSERT INTO {table} ({}) OUTPUT INSERTED.{} INTO {keys} (k) \
                     SELECT {} FROM {stage} ORDER BY crmsync_ord; \
                     SELECT k FROM {keys} ORDER BY k{order}",
                    ready(&keys, &columns),
                    names.join(", "),
                    quote(s.key),
                    select.join(", "),
                );
                let got = self
                    .inserted_keys(conn, sql, &target, s.rows.len(), t)
                    .await?;
                (
                    got,
                    "CAST(k.k AS bigint)".to_string(),
                    format!(
                        "(SELECT k, ROW_NUMBER() OVER (ORDER BY k{order}) - 1 AS crmsync_ord \
                         FROM {keys}) AS k JOIN {stage} AS s ON s.crmsync_ord = k.crmsync_ord"
                    ),
                )
            }
        };
        let links_written = match carried {
            Some(fresh) if !fresh.links.is_empty() && keys.iter().all(positive_int) => {
                self.insert_links(conn, fresh, &key_sql, &from).await?;
                true
            }
            _ => false,
        };
        Ok(Some(StagedKeys {
            keys,
            links_written,
        }))
    }

    /// Writes `fresh` from the staging table into the links table: the
    /// CRM key and shadow each row carried, the external key its new row
    /// got (`key_sql`, a positive `bigint` expression over `from`),
    /// encoded in SQL as `state::keys` encodes it.
    async fn insert_links(
        &self,
        conn: &mut TdsClient,
        fresh: &FreshLinks,
        key_sql: &str,
        from: &str,
    ) -> Result<()> {
        let table = format!("{}.[links]", quote(&fresh.schema));
        let sql = format!(
            "INSERT INTO {table} (entity, crm_key, external_key, shadow, deleted) \
             SELECT @P1, s.crmsync_crm_key, {}, s.crmsync_shadow, 0 FROM {from} \
             WHERE s.crmsync_crm_key IS NOT NULL",
            crate::state::mssql::positive_int_key_sql(key_sql)
        );
        let what = format!("writing links into {table}");
        let done = conn
            .execute(sql, &[&fresh.entity.as_str()])
            .await
            .map_err(|e| self.query_error(what.clone(), e))?;
        let stored: u64 = done.rows_affected().iter().sum();
        if stored != fresh.links.len() as u64 {
            return Err(EndpointError::Schema(format!(
                "{what}: {} links were due, {stored} were stored",
                fresh.links.len()
            )));
        }
        Ok(())
    }

    /// Runs the batch that inserts the staged rows and selects their keys
    /// in row order; the keys, one per row.
    async fn inserted_keys(
        &self,
        conn: &mut TdsClient,
        sql: String,
        target: &str,
        expected: usize,
        since: std::time::Instant,
    ) -> Result<Vec<Value>> {
        let what = format!("inserting into {target}");
        let rows = conn
            .simple_query(sql)
            .await
            .map_err(|e| self.query_error(what.clone(), e))?
            .into_results()
            .await
            .map_err(|e| self.query_error(what.clone(), e))?;
        let keys = rows
            .into_iter()
            .flatten()
            .map(|r| {
                r.into_iter()
                    .next()
                    .map(|d| super::from_column(&d))
                    .transpose()
                    .map(|v| v.unwrap_or(Value::Null))
            })
            .collect::<tiberius::Result<Vec<Value>>>()
            .map_err(|e| self.query_error("decoding inserted keys", e))?;
        tracing::debug!("{} rows inserted at {:?}", keys.len(), since.elapsed());
        if keys.len() != expected {
            return Err(EndpointError::Schema(format!(
                "inserting {expected} rows into {target} returned {} keys",
                keys.len()
            )));
        }
        Ok(keys)
    }

    /// Readies the staging table of `wires` (a column per wire type, then
    /// the row's place), empty; its name.
    async fn stage(&self, conn: &mut TdsClient, wires: &[Wire], links: bool) -> Result<String> {
        let mut defs: Vec<String> = wires
            .iter()
            .enumerate()
            .map(|(i, w)| format!("c{i} {} NULL", w.declaration()))
            .collect();
        defs.push("crmsync_ord int NOT NULL".into());
        if links {
            defs.push(format!("crmsync_crm_key varbinary({LINK_CELL_MAX}) NULL"));
            defs.push(format!("crmsync_shadow varbinary({LINK_CELL_MAX}) NULL"));
        }
        let columns = defs.join(", ");
        let stage = scratch("stage", &columns);
        self.batch_in(conn, &ready(&stage, &columns), "readying the staging table")
            .await?;
        Ok(stage)
    }

    /// Sends rows into the staging table by bulk load; the rows the server
    /// stored.
    async fn bulk_rows(
        &self,
        conn: &mut TdsClient,
        stage: &str,
        target: &str,
        rows: Vec<TokenRow<'static>>,
    ) -> Result<u64> {
        let what = format!("bulk loading rows for {target}");
        let mut req = conn
            .bulk_insert(stage)
            .await
            .map_err(|e| self.query_error(what.clone(), e))?;
        for tr in rows {
            req.send(tr)
                .await
                .map_err(|e| self.query_error(what.clone(), e))?;
        }
        let done = req
            .finalize()
            .await
            .map_err(|e| self.query_error(what.clone(), e))?;
        Ok(done.total())
    }

    /// Whether `table`'s IDENTITY counts down.
    async fn identity_descends(&self, conn: &mut TdsClient, table: &TableInfo) -> Result<bool> {
        let name = qualified(table);
        if let Some(known) = self
            .identity_descends
            .lock()
            .ok()
            .and_then(|c| c.get(&name).copied())
        {
            return Ok(known);
        }
        let sql = "SELECT CAST(increment_value AS bigint) FROM sys.identity_columns \
                   WHERE object_id = OBJECT_ID(@P1)";
        let rows = conn
            .query(sql, &[&name.as_str()])
            .await
            .map_err(|e| self.query_error("reading the identity increment", e))?
            .into_first_result()
            .await
            .map_err(|e| self.query_error("reading the identity increment", e))?;
        let descends = rows
            .first()
            .and_then(|r| r.get::<i64, _>(0))
            .is_some_and(|inc| inc < 0);
        if let Ok(mut cache) = self.identity_descends.lock() {
            cache.insert(name, descends);
        }
        Ok(descends)
    }

    /// Bulk loads links that are new for certain into the links table.
    pub(super) async fn load_links(
        &self,
        conn: &mut TdsClient,
        fresh: &FreshLinks,
        inserted: &[Value],
    ) -> Result<()> {
        let table = format!("{}.[links]", quote(&fresh.schema));
        let what = format!("bulk loading links into {table}");
        let mut req = conn
            .bulk_insert(&table)
            .await
            .map_err(|e| self.query_error(what.clone(), e))?;
        for l in &fresh.links {
            let mut tr = TokenRow::with_capacity(5);
            tr.push(ColumnData::String(Some(Cow::Owned(fresh.entity.clone()))));
            tr.push(ColumnData::Binary(Some(Cow::Owned(l.crm_key.clone()))));
            tr.push(ColumnData::Binary(Some(Cow::Owned(
                crate::state::keys::value_bytes(&inserted[l.insert]),
            ))));
            tr.push(ColumnData::Binary(Some(Cow::Owned(l.shadow.clone()))));
            tr.push(ColumnData::Bit(Some(false)));
            req.send(tr)
                .await
                .map_err(|e| self.query_error(what.clone(), e))?;
        }
        let stored = req
            .finalize()
            .await
            .map_err(|e| self.query_error(what.clone(), e))?
            .total();
        if stored != fresh.links.len() as u64 {
            return Err(EndpointError::Schema(format!(
                "the bulk load of {} links stored {stored}",
                fresh.links.len(),
            )));
        }
        Ok(())
    }

    async fn batch_in(&self, conn: &mut TdsClient, sql: &str, what: &str) -> Result<()> {
        conn.simple_query(sql)
            .await
            .map_err(|e| self.query_error(what, e))?
            .into_results()
            .await
            .map_err(|e| self.query_error(what, e))?;
        Ok(())
    }
}

/// Whether a new row's key is one whose stored form SQL Server can make
/// (`state::mssql::positive_int_key_sql`).
fn positive_int(key: &Value) -> bool {
    matches!(key, Value::Int(k) if *k > 0)
}

fn column<'t>(table: &'t TableInfo, name: &str) -> Result<&'t ColumnInfo> {
    table.column(name).map_err(|_| {
        EndpointError::Schema(format!("{} has no single column {name}", table.qualified()))
    })
}

/// What kind of value `v` is, for messages (never the value itself).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Bool(_) => "boolean",
        Value::Int(_) => "integer",
        Value::Decimal(_) => "decimal",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamp with zone",
        Value::Date(_) => "date",
        Value::Uuid(_) => "uuid",
        Value::Bytes(_) => "binary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_longer_than_a_bulk_load_carries_go_row_by_row() {
        let text = |n: usize| Value::Text("x".repeat(n));
        assert!(Wire::Text.cell(&text(BULK_MAX_BYTES / 2)).is_ok());
        assert!(Wire::Text.cell(&text(BULK_MAX_BYTES / 2 + 1)).is_err());
        // Two UTF-16 code units for a character outside the BMP.
        assert!(Wire::Text
            .cell(&Value::Text("😀".repeat(BULK_MAX_BYTES / 4 + 1)))
            .is_err());
        let bytes = |n: usize| Value::Bytes(vec![7; n]);
        assert!(Wire::Binary.cell(&bytes(BULK_MAX_BYTES)).is_ok());
        assert!(Wire::Binary.cell(&bytes(BULK_MAX_BYTES + 1)).is_err());
    }
}
