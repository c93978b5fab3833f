//! The state store on SQL Server: schema `[state] schema` in the state
//! side's database, on the pool its endpoint uses, created on first use
//! (see `migrate`) and locked per entity by a session-owned application
//! lock on a connection of its own for the length of a run (see `lock`).
//! The SQL Server endpoint writes links inside its data transactions
//! through [`write_links_in`].

mod conflicts;
mod links;
mod lock;
mod migrate;
mod runs;
mod status;

pub(crate) use links::{positive_int_key_sql, write_links_in};

use crate::db::mssql::types::from_column as value_of;
use crate::db::mssql::{quote, MssqlDatabase, TdsClient};
use crate::db::EndpointError;
use crate::plan::Side;
use crate::state::{
    Checkpoint, ConflictInfo, ConflictRecord, GoneLinks, Link, LinkBatch, LockGuard, RejectInfo,
    RunInfo, StateStore, Status, Watermark,
};
use crate::value::Value;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tiberius::{ColumnData, ToSql};

/// SQL Server takes at most 2,100 parameters a request; lists are sent in
/// chunks of at most this many.
const MAX_PARAMS: usize = 2000;

/// Field lists of positional shadows, by (entity, layout).
type Layouts = HashMap<(String, i32), Arc<Vec<String>>>;

/// crmsync's state in a schema of a SQL Server database.
pub struct MsStore {
    db: MssqlDatabase,
    /// The state schema's name, unquoted.
    schema: String,
    layouts: Mutex<Layouts>,
    /// The runs `start_run` began through this store, oldest first.
    started: Mutex<Vec<i64>>,
}

impl std::fmt::Debug for MsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsStore")
            .field("db", &self.db)
            .field("schema", &self.schema)
            .finish()
    }
}

/// A statement parameter.
#[derive(Debug, Clone)]
enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bytes(Vec<u8>),
    Bool(bool),
    /// A UTC time, as `datetime2`.
    Time(Option<NaiveDateTime>),
}

impl Arg {
    fn text(s: &str) -> Arg {
        Arg::Text(Some(s.to_string()))
    }
}

impl ToSql for Arg {
    fn to_sql(&self) -> ColumnData<'_> {
        match self {
            Arg::Text(s) => ColumnData::String(s.as_deref().map(Cow::Borrowed)),
            Arg::Int(i) => ColumnData::I64(*i),
            Arg::Bytes(b) => ColumnData::Binary(Some(Cow::Borrowed(b.as_slice()))),
            Arg::Bool(b) => ColumnData::Bit(Some(*b)),
            Arg::Time(Some(t)) => t.to_sql(),
            Arg::Time(None) => ColumnData::DateTime2(None),
        }
    }
}

/// The rows of every result of `sql`, decoded.
async fn query(
    c: &mut TdsClient,
    sql: &str,
    args: &[Arg],
) -> Result<Vec<Vec<Value>>, tiberius::error::Error> {
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a as &dyn ToSql).collect();
    let results = c.query(sql, &refs).await?.into_results().await?;
    results
        .into_iter()
        .flatten()
        .map(|r| r.into_iter().map(|d| value_of(&d)).collect())
        .collect()
}

/// Runs `sql`; the rows it touched.
async fn exec(c: &mut TdsClient, sql: &str, args: &[Arg]) -> Result<u64, tiberius::error::Error> {
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a as &dyn ToSql).collect();
    Ok(c.execute(sql, &refs).await?.total())
}

/// Runs a batch without parameters.
async fn batch(c: &mut TdsClient, sql: &str) -> Result<(), tiberius::error::Error> {
    c.simple_query(sql).await?.into_results().await?;
    Ok(())
}

/// Saves a backfill checkpoint inside the caller's transaction (a bulk
/// chunk's, so that it commits with the rows it counts), or as a statement
/// of its own when there is none.
pub(crate) async fn save_checkpoint_in(
    c: &mut TdsClient,
    schema: &str,
    entity: &str,
    direction: &str,
    cp: &Checkpoint,
) -> Result<(), tiberius::error::Error> {
    exec(
        c,
        &format!(
            "MERGE {}.backfill_checkpoints WITH (HOLDLOCK) AS c \
             USING (SELECT @P1 AS entity, @P2 AS direction) AS u \
             ON c.entity = u.entity AND c.direction = u.direction \
             WHEN MATCHED THEN UPDATE SET snapshot_ts = @P3, last_key = @P4, rows_done = @P5, \
               finished_at = CASE WHEN @P6 = 1 THEN SYSUTCDATETIME() END, \
               insert_only = @P7, updated_at = SYSUTCDATETIME() \
             WHEN NOT MATCHED THEN INSERT \
               (entity, direction, snapshot_ts, last_key, rows_done, finished_at, insert_only) \
               VALUES (@P1, @P2, @P3, @P4, @P5, \
                 CASE WHEN @P6 = 1 THEN SYSUTCDATETIME() END, @P7);",
            quote(schema)
        ),
        &[
            Arg::text(entity),
            Arg::text(direction),
            Arg::Text(Some(to_json(&cp.snapshot_ts))),
            Arg::Text(cp.last_key.as_ref().map(to_json)),
            Arg::Int(Some(cp.rows_done)),
            Arg::Bool(cp.finished),
            Arg::Bool(cp.insert_only),
        ],
    )
    .await?;
    Ok(())
}

/// The integer in column `i` of the first row.
fn int_at(rows: &[Vec<Value>], i: usize) -> Option<i64> {
    int(rows.first()?.get(i)?)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Decimal(d) => i64::try_from(d.trunc()).ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: &Value) -> &[u8] {
    match v {
        Value::Bytes(b) => b,
        _ => &[],
    }
}

/// A `datetime2` the store wrote in UTC.
fn utc(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::Timestamp(t) => Some(t.and_utc()),
        Value::TimestampTz(t) => Some(*t),
        _ => None,
    }
}

fn to_json(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn from_json(v: &Value) -> Result<Value, EndpointError> {
    let t = text(v).unwrap_or_default();
    serde_json::from_str(&t).map_err(|e| {
        EndpointError::Schema(format!(
            "the state store holds a value crmsync cannot read: {e}"
        ))
    })
}

fn opt_json(v: &Value) -> Result<Option<Value>, EndpointError> {
    match v {
        Value::Null => Ok(None),
        v => from_json(v).map(Some),
    }
}

/// `@P{start}, @P{start + 1}, …`, `n` of them.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MsStore {
    /// The store in `schema` of `db`, on `db`'s pool.
    pub fn new(db: MssqlDatabase, schema: &str) -> MsStore {
        MsStore {
            db,
            schema: schema.to_string(),
            layouts: Default::default(),
            started: Default::default(),
        }
    }

    /// The quoted schema name.
    fn s(&self) -> String {
        quote(&self.schema)
    }

    fn state_error(&self, what: &str, e: tiberius::error::Error) -> EndpointError {
        self.db
            .query_error(format!("{what} (state store {})", self.schema), e)
    }

    async fn rows(
        &self,
        sql: &str,
        args: &[Arg],
        what: &str,
    ) -> Result<Vec<Vec<Value>>, EndpointError> {
        let mut c = self.db.conn().await?;
        query(&mut c, sql, args)
            .await
            .map_err(|e| self.state_error(what, e))
    }

    async fn exec(&self, sql: &str, args: &[Arg], what: &str) -> Result<u64, EndpointError> {
        let mut c = self.db.conn().await?;
        exec(&mut c, sql, args)
            .await
            .map_err(|e| self.state_error(what, e))
    }
}

#[async_trait]
impl StateStore for MsStore {
    async fn migrate(&self) -> Result<(), EndpointError> {
        migrate::run(self).await
    }

    async fn lock(&self, entity: &str) -> Result<Option<LockGuard>, EndpointError> {
        lock::take(self, entity).await
    }

    async fn start_run(&self, entity: &str, command: &str) -> Result<i64, EndpointError> {
        let rows = self
            .rows(
                &format!(
                    "INSERT INTO {}.runs (entity, command) OUTPUT INSERTED.run_id VALUES (@P1, @P2)",
                    self.s()
                ),
                &[Arg::text(entity), Arg::text(command)],
                "recording the run",
            )
            .await?;
        let id = int_at(&rows, 0)
            .ok_or_else(|| EndpointError::Schema("recording the run gave no id".into()))?;
        if let Ok(mut s) = self.started.lock() {
            s.push(id);
        }
        Ok(id)
    }

    async fn finish_run(
        &self,
        run: i64,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), EndpointError> {
        self.exec(
            &format!(
                "UPDATE {}.runs SET finished_at = SYSUTCDATETIME(), outcome = @P2, summary = @P3 \
                 WHERE run_id = @P1",
                self.s()
            ),
            &[
                Arg::Int(Some(run)),
                Arg::text(outcome),
                Arg::Text(Some(summary.to_string())),
            ],
            "recording the end of the run",
        )
        .await?;
        Ok(())
    }

    async fn watermark(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Option<Watermark>, EndpointError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT ts, [key], read_at FROM {}.watermarks WHERE entity = @P1 AND side = @P2",
                    self.s()
                ),
                &[Arg::text(entity), Arg::text(side.as_str())],
                "reading the watermark",
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Watermark {
            ts: from_json(&r[0])?,
            key: from_json(&r[1])?,
            read_at: opt_json(&r[2])?,
        }))
    }

    async fn set_watermark(
        &self,
        entity: &str,
        side: Side,
        mark: &Watermark,
    ) -> Result<(), EndpointError> {
        self.exec(
            &format!(
                "MERGE {}.watermarks WITH (HOLDLOCK) AS w \
                 USING (SELECT @P1 AS entity, @P2 AS side) AS u \
                 ON w.entity = u.entity AND w.side = u.side \
                 WHEN MATCHED THEN UPDATE SET ts = @P3, [key] = @P4, read_at = @P5, \
                   updated_at = SYSUTCDATETIME() \
                 WHEN NOT MATCHED THEN INSERT (entity, side, ts, [key], read_at) \
                   VALUES (@P1, @P2, @P3, @P4, @P5);",
                self.s()
            ),
            &[
                Arg::text(entity),
                Arg::text(side.as_str()),
                Arg::Text(Some(to_json(&mark.ts))),
                Arg::Text(Some(to_json(&mark.key))),
                Arg::Text(mark.read_at.as_ref().map(to_json)),
            ],
            "saving the watermark",
        )
        .await?;
        Ok(())
    }

    async fn links_by_crm(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        links::by_column(self, "crm_key", entity, keys).await
    }

    async fn links_by_external(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        links::by_column(self, "external_key", entity, keys).await
    }

    async fn write_links(&self, batch: &LinkBatch) -> Result<(), EndpointError> {
        let mut c = self.db.conn().await?;
        links::write_links_in(&mut c, batch)
            .await
            .map_err(|e| self.state_error("writing links", e))
    }

    async fn open_rejects(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Vec<RejectInfo>, EndpointError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT side, [key], reason FROM {}.rejects \
                     WHERE entity = @P1 AND side = @P2 AND resolved_at IS NULL ORDER BY [key]",
                    self.s()
                ),
                &[Arg::text(entity), Arg::text(side.as_str())],
                "reading rejects",
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RejectInfo {
                side: text(&r[0]).unwrap_or_default(),
                key: text(&r[1]).unwrap_or_default(),
                reason: text(&r[2]).unwrap_or_default(),
            })
            .collect())
    }

    async fn record_rejects(
        &self,
        entity: &str,
        run: i64,
        side: Side,
        rejects: &[(String, String)],
    ) -> Result<(), EndpointError> {
        for chunk in rejects.chunks(MAX_PARAMS / 2) {
            let mut args = vec![
                Arg::text(entity),
                Arg::text(side.as_str()),
                Arg::Int(Some(run)),
            ];
            let rows: Vec<String> = chunk
                .iter()
                .map(|(k, why)| {
                    args.push(Arg::text(k));
                    args.push(Arg::text(why));
                    format!("(@P{}, @P{})", args.len() - 1, args.len())
                })
                .collect();
            self.exec(
                &format!(
                    "MERGE {}.rejects WITH (HOLDLOCK) AS r \
                     USING (VALUES {}) AS u ([key], reason) \
                     ON r.entity = @P1 AND r.side = @P2 AND r.[key] = u.[key] \
                     WHEN MATCHED THEN UPDATE SET reason = u.reason, last_run = @P3, \
                       last_seen = SYSUTCDATETIME(), resolved_at = NULL \
                     WHEN NOT MATCHED THEN INSERT (entity, side, [key], reason, first_run, last_run) \
                       VALUES (@P1, @P2, u.[key], u.reason, @P3, @P3);",
                    self.s(),
                    rows.join(", ")
                ),
                &args,
                "recording rejects",
            )
            .await?;
        }
        Ok(())
    }

    async fn clear_rejects(
        &self,
        entity: &str,
        side: Side,
        keys: &[String],
    ) -> Result<(), EndpointError> {
        for chunk in keys.chunks(MAX_PARAMS) {
            let mut args = vec![Arg::text(entity), Arg::text(side.as_str())];
            args.extend(chunk.iter().map(|k| Arg::text(k)));
            self.exec(
                &format!(
                    "UPDATE {}.rejects SET resolved_at = SYSUTCDATETIME() \
                     WHERE entity = @P1 AND side = @P2 AND [key] IN ({}) AND resolved_at IS NULL",
                    self.s(),
                    placeholders(3, chunk.len())
                ),
                &args,
                "closing rejects",
            )
            .await?;
        }
        Ok(())
    }

    async fn status(&self) -> Result<Status, EndpointError> {
        status::read(self).await
    }

    async fn checkpoint(
        &self,
        entity: &str,
        direction: &str,
    ) -> Result<Option<Checkpoint>, EndpointError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT snapshot_ts, last_key, rows_done, \
                       CASE WHEN finished_at IS NULL THEN 0 ELSE 1 END, insert_only \
                     FROM {}.backfill_checkpoints WHERE entity = @P1 AND direction = @P2",
                    self.s()
                ),
                &[Arg::text(entity), Arg::text(direction)],
                "reading the backfill checkpoint",
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Checkpoint {
            snapshot_ts: from_json(&r[0])?,
            last_key: opt_json(&r[1])?,
            rows_done: int(&r[2]).unwrap_or(0),
            finished: int(&r[3]) == Some(1),
            insert_only: int(&r[4]) == Some(1),
        }))
    }

    async fn save_checkpoint(
        &self,
        entity: &str,
        direction: &str,
        cp: &Checkpoint,
    ) -> Result<(), EndpointError> {
        let mut c = self.db.conn().await?;
        save_checkpoint_in(&mut c, &self.schema, entity, direction, cp)
            .await
            .map_err(|e| self.state_error("saving the backfill checkpoint", e))
    }

    async fn clear_checkpoint(&self, entity: &str, direction: &str) -> Result<(), EndpointError> {
        self.exec(
            &format!(
                "DELETE FROM {}.backfill_checkpoints WHERE entity = @P1 AND direction = @P2",
                self.s()
            ),
            &[Arg::text(entity), Arg::text(direction)],
            "forgetting the backfill checkpoint",
        )
        .await?;
        Ok(())
    }

    async fn record_conflicts(
        &self,
        entity: &str,
        run: i64,
        conflicts: &[ConflictRecord],
    ) -> Result<(), EndpointError> {
        conflicts::record(self, entity, run, conflicts).await
    }

    async fn open_conflicts(
        &self,
        entity: &str,
        crm_keys: Option<&[String]>,
    ) -> Result<Vec<ConflictInfo>, EndpointError> {
        conflicts::open(self, entity, crm_keys).await
    }

    async fn conflict(&self, id: i64) -> Result<Option<ConflictInfo>, EndpointError> {
        conflicts::one(self, id).await
    }

    async fn close_conflict(&self, id: i64, resolution: &str) -> Result<(), EndpointError> {
        conflicts::close(self, id, resolution).await
    }

    async fn all_conflicts(
        &self,
        entity: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ConflictInfo>, EndpointError> {
        conflicts::all(self, entity, since).await
    }

    async fn runs(&self, entity: Option<&str>, last: i64) -> Result<Vec<RunInfo>, EndpointError> {
        runs::newest(self, entity, last).await
    }

    async fn runs_by_id(&self, ids: &[i64]) -> Result<Vec<RunInfo>, EndpointError> {
        runs::by_id(self, ids).await
    }

    async fn last_successes(&self) -> Result<HashMap<String, DateTime<Utc>>, EndpointError> {
        runs::last_successes(self).await
    }

    fn runs_started(&self) -> Vec<i64> {
        self.started.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn shadow_layout(&self, entity: &str, fields: &[String]) -> Result<i32, EndpointError> {
        links::register_layout(self, entity, fields).await
    }

    async fn has_links(&self, entity: &str) -> Result<bool, EndpointError> {
        let rows = self
            .rows(
                &format!(
                    "SELECT CASE WHEN EXISTS (SELECT 1 FROM {}.links WHERE entity = @P1) \
                     THEN 1 ELSE 0 END",
                    self.s()
                ),
                &[Arg::text(entity)],
                "looking for links",
            )
            .await?;
        Ok(int_at(&rows, 0) == Some(1))
    }

    async fn live_links(&self, entity: &str) -> Result<Vec<(String, String)>, EndpointError> {
        links::live(self, entity).await
    }

    async fn deletes_checked(
        &self,
        entity: &str,
        within: std::time::Duration,
    ) -> Result<Option<String>, EndpointError> {
        // DATEADD takes an int, not a bigint.
        let secs = i64::try_from(within.as_secs())
            .unwrap_or(i64::MAX)
            .min(i64::from(i32::MAX));
        let rows = self
            .rows(
                &format!(
                    "SELECT fingerprint FROM {}.deletes_checked \
                     WHERE entity = @P1 \
                       AND checked_at > DATEADD(second, -CAST(@P2 AS int), SYSUTCDATETIME())",
                    self.s()
                ),
                &[Arg::text(entity), Arg::Int(Some(secs))],
                "reading the last hard-delete check",
            )
            .await?;
        Ok(rows.first().and_then(|r| text(&r[0])))
    }

    async fn set_deletes_checked(
        &self,
        entity: &str,
        fingerprint: &str,
    ) -> Result<(), EndpointError> {
        self.exec(
            &format!(
                "MERGE {}.deletes_checked WITH (HOLDLOCK) AS d \
                 USING (SELECT @P1 AS entity) AS u ON d.entity = u.entity \
                 WHEN MATCHED THEN UPDATE SET fingerprint = @P2, checked_at = SYSUTCDATETIME() \
                 WHEN NOT MATCHED THEN INSERT (entity, fingerprint) VALUES (@P1, @P2);",
                self.s()
            ),
            &[Arg::text(entity), Arg::text(fingerprint)],
            "recording the hard-delete check",
        )
        .await?;
        Ok(())
    }

    async fn forget_deletes_checked(&self, entity: &str) -> Result<(), EndpointError> {
        self.exec(
            &format!(
                "DELETE FROM {}.deletes_checked WHERE entity = @P1",
                self.s()
            ),
            &[Arg::text(entity)],
            "forgetting the hard-delete check",
        )
        .await?;
        Ok(())
    }

    async fn links_gone_from(
        &self,
        entity: &str,
        table: &crate::db::TableInfo,
        key: &str,
    ) -> Result<GoneLinks, EndpointError> {
        links::gone_from(self, entity, table, key).await
    }
}
