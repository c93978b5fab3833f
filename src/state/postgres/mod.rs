//! The state store on PostgreSQL: schema `[state] schema` in the state
//! side's database, on the pool its endpoint uses, with versioned
//! migrations and an advisory lock per entity held on a connection of its
//! own for the length of a run.

pub(crate) mod blocks;
mod conflicts;
mod links;
mod lock;
mod migrate;
mod runs;
mod status;

pub(crate) use links::{save_checkpoint_in, write_links_in};

use crate::db::postgres::{quote, PgDatabase};
use crate::db::EndpointError;
use crate::plan::Side;
use crate::state::{
    Checkpoint, ConflictInfo, ConflictRecord, GoneLinks, Link, LinkBatch, LockGuard, RejectInfo,
    RunInfo, StateStore, Status, Watermark,
};
use crate::value::Value;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Field lists of positional shadows, by (entity, layout).
type Layouts = HashMap<(String, i32), Arc<Vec<String>>>;

/// crmsync's state in a schema of a PostgreSQL database.
pub struct PgStore {
    db: PgDatabase,
    /// The state schema's name, unquoted.
    schema: String,
    /// Field lists of positional shadows, by (entity, layout).
    layouts: Mutex<Layouts>,
    /// The runs started through this store, oldest first.
    started: Mutex<Vec<i64>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("db", &self.db)
            .field("schema", &self.schema)
            .finish()
    }
}

impl PgStore {
    /// The store in `schema` of `db`, on `db`'s pool (a clone shares it).
    pub fn new(db: PgDatabase, schema: &str) -> PgStore {
        PgStore {
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

    async fn conn(&self) -> Result<crate::db::postgres::Pooled<'_>, EndpointError> {
        self.db.conn().await
    }

    fn state_error(&self, what: &str, e: tokio_postgres::Error) -> EndpointError {
        self.db
            .query_error(format!("{what} (state store {})", self.schema), e)
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn from_json(j: serde_json::Value) -> Result<Value, EndpointError> {
    serde_json::from_value(j).map_err(|e| {
        EndpointError::Schema(format!(
            "the state store holds a value crmsync cannot read: {e}"
        ))
    })
}

#[async_trait]
impl StateStore for PgStore {
    async fn migrate(&self) -> Result<(), EndpointError> {
        migrate::run(self).await
    }

    async fn lock(&self, entity: &str) -> Result<Option<LockGuard>, EndpointError> {
        lock::take(self, entity).await
    }

    async fn start_run(&self, entity: &str, command: &str) -> Result<i64, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                &format!(
                    "INSERT INTO {}.runs (entity, command) VALUES ($1, $2) RETURNING run_id",
                    self.s()
                ),
                &[&entity, &command],
            )
            .await
            .map_err(|e| self.state_error("recording the run", e))?;
        let run = row.get(0);
        if let Ok(mut started) = self.started.lock() {
            started.push(run);
        }
        Ok(run)
    }

    async fn finish_run(
        &self,
        run: i64,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "UPDATE {}.runs SET finished_at = now(), outcome = $2, summary = $3 WHERE run_id = $1",
                self.s()
            ),
            &[&run, &outcome, summary],
        )
        .await
        .map_err(|e| self.state_error("recording the end of the run", e))?;
        Ok(())
    }

    async fn watermark(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Option<Watermark>, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT ts, key, read_at FROM {}.watermarks WHERE entity = $1 AND side = $2",
                    self.s()
                ),
                &[&entity, &side.as_str()],
            )
            .await
            .map_err(|e| self.state_error("reading the watermark", e))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(Watermark {
                ts: from_json(r.get(0))?,
                key: from_json(r.get(1))?,
                read_at: r
                    .get::<_, Option<serde_json::Value>>(2)
                    .map(from_json)
                    .transpose()?,
            })),
        }
    }

    async fn set_watermark(
        &self,
        entity: &str,
        side: Side,
        mark: &Watermark,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "INSERT INTO {}.watermarks (entity, side, ts, key, read_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (entity, side) DO UPDATE SET ts = excluded.ts, key = excluded.key, \
                 read_at = excluded.read_at, updated_at = now()",
                self.s()
            ),
            &[
                &entity,
                &side.as_str(),
                &to_json(&mark.ts),
                &to_json(&mark.key),
                &mark.read_at.as_ref().map(to_json),
            ],
        )
        .await
        .map_err(|e| self.state_error("saving the watermark", e))?;
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
        let conn = self.conn().await?;
        links::write_links_in(&*conn, batch)
            .await
            .map_err(|e| self.state_error("writing links", e))
    }

    async fn open_rejects(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Vec<RejectInfo>, EndpointError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT side, key, reason FROM {}.rejects \
                     WHERE entity = $1 AND side = $2 AND resolved_at IS NULL ORDER BY key",
                    self.s()
                ),
                &[&entity, &side.as_str()],
            )
            .await
            .map_err(|e| self.state_error("reading rejects", e))?;
        Ok(rows
            .into_iter()
            .map(|r| RejectInfo {
                side: r.get(0),
                key: r.get(1),
                reason: r.get(2),
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
        if rejects.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = rejects.iter().map(|(k, _)| k.as_str()).collect();
        let reasons: Vec<&str> = rejects.iter().map(|(_, r)| r.as_str()).collect();
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "INSERT INTO {}.rejects AS r (entity, side, key, reason, first_run, last_run) \
                 SELECT $1, $2, k, why, $3, $3 FROM unnest($4::text[], $5::text[]) AS u(k, why) \
                 ON CONFLICT (entity, side, key) DO UPDATE SET reason = excluded.reason, \
                   last_run = excluded.last_run, last_seen = now(), resolved_at = NULL",
                self.s()
            ),
            &[&entity, &side.as_str(), &run, &keys, &reasons],
        )
        .await
        .map_err(|e| self.state_error("recording rejects", e))?;
        Ok(())
    }

    async fn clear_rejects(
        &self,
        entity: &str,
        side: Side,
        keys: &[String],
    ) -> Result<(), EndpointError> {
        if keys.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "UPDATE {}.rejects SET resolved_at = now() \
                 WHERE entity = $1 AND side = $2 AND key = ANY($3) AND resolved_at IS NULL",
                self.s()
            ),
            &[&entity, &side.as_str(), &keys],
        )
        .await
        .map_err(|e| self.state_error("closing rejects", e))?;
        Ok(())
    }

    async fn status(&self) -> Result<Status, EndpointError> {
        status::read(self).await
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
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {s}.links WHERE entity = $1) \
                 OR EXISTS (SELECT 1 FROM {s}.link_blocks WHERE entity = $1)",
            s = self.s()
        );
        conn.query_one(&sql, &[&entity])
            .await
            .map(|r| r.get(0))
            .map_err(|e| self.state_error("looking for links", e))
    }

    async fn deletes_checked(
        &self,
        entity: &str,
        within: std::time::Duration,
    ) -> Result<Option<String>, EndpointError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT fingerprint FROM {}.deletes_checked \
             WHERE entity = $1 AND checked_at > now() - make_interval(secs => $2)",
            self.s()
        );
        conn.query_opt(&sql, &[&entity, &within.as_secs_f64()])
            .await
            .map(|r| r.map(|r| r.get(0)))
            .map_err(|e| self.state_error("reading the last hard-delete check", e))
    }

    async fn set_deletes_checked(
        &self,
        entity: &str,
        fingerprint: &str,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        let sql = format!(
            "INSERT INTO {}.deletes_checked (entity, fingerprint) VALUES ($1, $2) \
             ON CONFLICT (entity) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                 checked_at = now()",
            self.s()
        );
        conn.execute(&sql, &[&entity, &fingerprint])
            .await
            .map(|_| ())
            .map_err(|e| self.state_error("recording the hard-delete check", e))
    }

    async fn forget_deletes_checked(&self, entity: &str) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        let sql = format!("DELETE FROM {}.deletes_checked WHERE entity = $1", self.s());
        conn.execute(&sql, &[&entity])
            .await
            .map(|_| ())
            .map_err(|e| self.state_error("forgetting the hard-delete check", e))
    }

    async fn live_links(&self, entity: &str) -> Result<Vec<(String, String)>, EndpointError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT crm_key, external_key FROM {}.all_links \
                     WHERE entity = $1 AND NOT deleted",
                    self.s()
                ),
                &[&entity],
            )
            .await
            .map_err(|e| self.state_error("reading links", e))?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    links::stored_key(entity, r.get(0))?,
                    links::stored_key(entity, r.get(1))?,
                ))
            })
            .collect()
    }

    async fn links_gone_from(
        &self,
        entity: &str,
        table: &crate::db::TableInfo,
        key: &str,
    ) -> Result<GoneLinks, EndpointError> {
        links::gone_from(self, entity, table, key).await
    }

    async fn checkpoint(
        &self,
        entity: &str,
        direction: &str,
    ) -> Result<Option<Checkpoint>, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT snapshot_ts, last_key, rows_done, finished_at IS NOT NULL, insert_only \
                     FROM {}.backfill_checkpoints WHERE entity = $1 AND direction = $2",
                    self.s()
                ),
                &[&entity, &direction],
            )
            .await
            .map_err(|e| self.state_error("reading the backfill checkpoint", e))?;
        let Some(r) = row else { return Ok(None) };
        let last_key: Option<serde_json::Value> = r.get(1);
        Ok(Some(Checkpoint {
            snapshot_ts: from_json(r.get(0))?,
            last_key: last_key.map(from_json).transpose()?,
            rows_done: r.get(2),
            finished: r.get(3),
            insert_only: r.get(4),
        }))
    }

    async fn save_checkpoint(
        &self,
        entity: &str,
        direction: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        links::save_checkpoint_in(&*conn, &self.schema, entity, direction, checkpoint)
            .await
            .map_err(|e| self.state_error("saving the backfill checkpoint", e))
    }

    async fn clear_checkpoint(&self, entity: &str, direction: &str) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "DELETE FROM {}.backfill_checkpoints WHERE entity = $1 AND direction = $2",
                self.s()
            ),
            &[&entity, &direction],
        )
        .await
        .map_err(|e| self.state_error("forgetting the backfill checkpoint", e))?;
        Ok(())
    }
}
