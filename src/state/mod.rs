//! crmsync's own state: runs, watermarks, links with their shadows,
//! rejected rows and conflicts. Kept in one of the two databases (the
//! `[state] side`), in its own schema, created and migrated automatically.
//! The store is the `StateStore` trait; `postgres` and `mssql` implement
//! it, each in the database kind it is named for.

use crate::db::EndpointError;
use crate::plan::Side;
use crate::value::Value;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;

/// The state schema's version; `migrate` brings older schemas up to it.
pub const SCHEMA_VERSION: i32 = 9;

/// Where change reading stopped: a `(change time, key)` position.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub ts: Value,
    pub key: Value,
    /// The source's clock when the run that reached this position began
    /// reading, in the change column's form; every row that had committed
    /// by then at or before `(ts, key)` has been processed. `None` when
    /// unknown (a backfill, or a state schema older than 4).
    pub read_at: Option<Value>,
}

pub mod keys;
pub mod mssql;
pub mod postgres;
pub mod runs;
pub mod shadow;

pub use runs::{RunCounts, TargetCounts};
pub use shadow::{Base, Shadow};

/// A linked pair of rows and what was last synced between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub crm_key: String,
    pub external_key: String,
    pub shadow: Shadow,
    /// The pair has been deleted (on whichever side deletes propagate to).
    pub deleted: bool,
}

/// A key known now, or the key the n-th insert of the same batch gets.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyRef {
    Known(String),
    Inserted(usize),
}

#[derive(Debug, Clone)]
pub struct LinkWrite {
    pub crm_key: KeyRef,
    pub external_key: KeyRef,
    /// The shadow, sealed (`shadow::seal`).
    pub shadow: Vec<u8>,
    pub deleted: bool,
}

impl Link {
    /// The key of the pair's `side` row.
    pub fn key(&self, side: Side) -> &str {
        match side {
            Side::Crm => &self.crm_key,
            Side::External => &self.external_key,
        }
    }
}

impl LinkWrite {
    /// The key of the pair's `side` row, known or to come.
    pub fn key(&self, side: Side) -> &KeyRef {
        match side {
            Side::Crm => &self.crm_key,
            Side::External => &self.external_key,
        }
    }

    pub fn key_mut(&mut self, side: Side) -> &mut KeyRef {
        match side {
            Side::Crm => &mut self.crm_key,
            Side::External => &mut self.external_key,
        }
    }

    /// A write of a pair whose two keys are known.
    pub fn pair(crm_key: &str, external_key: &str, shadow: Vec<u8>, deleted: bool) -> LinkWrite {
        LinkWrite {
            crm_key: KeyRef::Known(crm_key.to_string()),
            external_key: KeyRef::Known(external_key.to_string()),
            shadow,
            deleted,
        }
    }
}

/// Links to write for one entity, possibly inside a data transaction.
#[derive(Debug, Clone)]
pub struct LinkBatch {
    pub schema: String,
    pub entity: String,
    pub links: Vec<LinkWrite>,
}

impl LinkBatch {
    /// These links with `KeyRef::Inserted(i)` replaced by the key the i-th
    /// insert got.
    pub fn resolved(&self, inserted: &[Value]) -> LinkBatch {
        let fix = |k: &KeyRef| match k {
            KeyRef::Inserted(i) => KeyRef::Known(inserted[*i].key_string()),
            known => known.clone(),
        };
        LinkBatch {
            schema: self.schema.clone(),
            entity: self.entity.clone(),
            links: self
                .links
                .iter()
                .map(|l| LinkWrite {
                    crm_key: fix(&l.crm_key),
                    external_key: fix(&l.external_key),
                    shadow: l.shadow.clone(),
                    deleted: l.deleted,
                })
                .collect(),
        }
    }
}

/// Held for the whole run; dropping it releases the lock.
pub struct LockGuard(pub Box<dyn HeldLock>);

/// A held run lock. Dropping it releases the lock once the server notices
/// the closed connection; `release` does it at once, so that the next run
/// started right after this one finds it free.
#[async_trait]
pub trait HeldLock: Send + Sync {
    async fn release(self: Box<Self>);
}

impl LockGuard {
    pub async fn release(self) {
        self.0.release().await
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub id: i64,
    pub entity: String,
    pub command: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From start to finish, or to now for a run that has not finished.
    pub seconds: f64,
    pub outcome: Option<String>,
    pub summary: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatermarkInfo {
    pub entity: String,
    pub side: String,
    pub ts: String,
    #[serde(skip)]
    pub ts_value: Value,
    pub key: String,
    /// The source clock when the run that saved it began reading (see
    /// `Watermark::read_at`).
    #[serde(skip)]
    pub read_at: Option<Value>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntityCounts {
    pub entity: String,
    pub links: i64,
    pub open_rejects: i64,
    pub open_conflicts: i64,
    /// When the links were last found all present in the external table
    /// (the hard-delete comparison), if ever.
    pub deletes_checked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub watermarks: Vec<WatermarkInfo>,
    pub counts: Vec<EntityCounts>,
    pub last_runs: Vec<RunInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectInfo {
    pub side: String,
    pub key: String,
    pub reason: String,
}

/// One same-field clash, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictRecord {
    pub crm_key: String,
    pub external_key: String,
    pub field: String,
    pub base: Option<Value>,
    pub crm: Value,
    pub external: Value,
    pub crm_changed_at: Option<DateTime<Utc>>,
    pub external_changed_at: Option<DateTime<Utc>>,
    /// `None`: left open for `crmsync conflicts resolve` (policy manual).
    pub winner: Option<Side>,
}

/// A logged conflict with its id and state.
#[derive(Debug, Clone, Serialize)]
pub struct ConflictInfo {
    pub id: i64,
    pub entity: String,
    pub record: ConflictRecord,
    pub run: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
}

/// Where a backfill of one entity in one direction stands: the source
/// clock its snapshot began at, and the last source key whose chunk has
/// committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub snapshot_ts: Value,
    pub last_key: Option<Value>,
    pub rows_done: i64,
    pub finished: bool,
    /// The target held none of the entity's rows and the state store had
    /// no link of it when the backfill began, and links commit with the
    /// data: every source row past `last_key` is new to the target.
    pub insert_only: bool,
}

/// The state store. Every method is a short transaction of its own;
/// `lock` holds a database lock until the guard is dropped.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Creates or upgrades the state schema.
    async fn migrate(&self) -> Result<(), EndpointError>;

    /// Takes the run lock of `entity`, or `None` if another run holds it.
    async fn lock(&self, entity: &str) -> Result<Option<LockGuard>, EndpointError>;

    async fn start_run(&self, entity: &str, command: &str) -> Result<i64, EndpointError>;

    async fn finish_run(
        &self,
        run: i64,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), EndpointError>;

    async fn watermark(&self, entity: &str, side: Side)
        -> Result<Option<Watermark>, EndpointError>;

    async fn set_watermark(
        &self,
        entity: &str,
        side: Side,
        mark: &Watermark,
    ) -> Result<(), EndpointError>;

    async fn links_by_crm(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError>;

    async fn links_by_external(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError>;

    /// The links of these `side` keys, by that key.
    async fn links_by(
        &self,
        side: Side,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        match side {
            Side::Crm => self.links_by_crm(entity, keys).await,
            Side::External => self.links_by_external(entity, keys).await,
        }
    }

    /// Writes links whose keys are all `KeyRef::Known`.
    async fn write_links(&self, batch: &LinkBatch) -> Result<(), EndpointError>;

    async fn open_rejects(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Vec<RejectInfo>, EndpointError>;

    /// Records rejected rows (or refreshes their reason) for a run.
    async fn record_rejects(
        &self,
        entity: &str,
        run: i64,
        side: Side,
        rejects: &[(String, String)],
    ) -> Result<(), EndpointError>;

    /// Closes rejects for rows that have now gone through.
    async fn clear_rejects(
        &self,
        entity: &str,
        side: Side,
        keys: &[String],
    ) -> Result<(), EndpointError>;

    async fn status(&self) -> Result<Status, EndpointError>;

    /// The backfill checkpoint of `entity` in `direction`, if any.
    async fn checkpoint(
        &self,
        entity: &str,
        direction: &str,
    ) -> Result<Option<Checkpoint>, EndpointError>;

    /// Saves a checkpoint outside any data transaction (the start of a
    /// backfill, or its chunks when the state lives on the other side).
    async fn save_checkpoint(
        &self,
        entity: &str,
        direction: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), EndpointError>;

    /// Forgets the checkpoint (`backfill --restart`).
    async fn clear_checkpoint(&self, entity: &str, direction: &str) -> Result<(), EndpointError>;

    /// Logs conflicts; those with a winner are logged as already resolved.
    async fn record_conflicts(
        &self,
        entity: &str,
        run: i64,
        conflicts: &[ConflictRecord],
    ) -> Result<(), EndpointError>;

    /// Open conflicts of `entity` by CRM key (all of them when `crm_keys`
    /// is `None`).
    async fn open_conflicts(
        &self,
        entity: &str,
        crm_keys: Option<&[String]>,
    ) -> Result<Vec<ConflictInfo>, EndpointError>;

    async fn conflict(&self, id: i64) -> Result<Option<ConflictInfo>, EndpointError>;

    /// Every conflict of `entity`, open or settled, logged at or after
    /// `since` if given, oldest first.
    async fn all_conflicts(
        &self,
        entity: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<ConflictInfo>, EndpointError>;

    /// The newest `last` runs, of `entity` or of all entities, newest
    /// first.
    async fn runs(&self, entity: Option<&str>, last: i64) -> Result<Vec<RunInfo>, EndpointError>;

    /// The runs with these ids.
    async fn runs_by_id(&self, ids: &[i64]) -> Result<Vec<RunInfo>, EndpointError>;

    /// When each entity's last successful run (one that finished, with
    /// or without rejects or conflicts left) ended.
    async fn last_successes(&self) -> Result<HashMap<String, DateTime<Utc>>, EndpointError>;

    /// The ids of the runs `start_run` began through this store, oldest
    /// first: a process's own runs, told apart from others' running at
    /// the same time.
    fn runs_started(&self) -> Vec<i64>;

    async fn close_conflict(&self, id: i64, resolution: &str) -> Result<(), EndpointError>;

    /// The id of the positional shadow layout of `fields` (in this order)
    /// for the entity, registered on first use.
    async fn shadow_layout(&self, entity: &str, fields: &[String]) -> Result<i32, EndpointError>;

    /// Whether the entity has any link row, deleted ones included.
    async fn has_links(&self, entity: &str) -> Result<bool, EndpointError>;

    /// Every live link of `entity` as (CRM key, external key).
    async fn live_links(&self, entity: &str) -> Result<Vec<(String, String)>, EndpointError>;

    /// The external table's deletes fingerprint (see
    /// `Endpoint::deletes_fingerprint`) when `entity`'s links were last
    /// found all present, if that was less than `within` ago.
    async fn deletes_checked(
        &self,
        entity: &str,
        within: std::time::Duration,
    ) -> Result<Option<String>, EndpointError>;

    /// Records `fingerprint`, read before a hard-delete check whose
    /// findings have all been carried out.
    async fn set_deletes_checked(
        &self,
        entity: &str,
        fingerprint: &str,
    ) -> Result<(), EndpointError>;

    /// Forgets the last hard-delete check: the next run compares the
    /// links whatever the fingerprint.
    async fn forget_deletes_checked(&self, entity: &str) -> Result<(), EndpointError>;

    /// The live links of `entity` whose external key names no row of
    /// `table` (keyed by `key`), a table in the state store's own
    /// database, with the number of live links, both read in one snapshot.
    /// One anti-join in the database, instead of both key sets in memory.
    async fn links_gone_from(
        &self,
        entity: &str,
        table: &crate::db::TableInfo,
        key: &str,
    ) -> Result<GoneLinks, EndpointError>;
}

/// Live links whose external row is gone, out of `live` live links.
#[derive(Debug, Default)]
pub struct GoneLinks {
    /// (CRM key, external key) of each link whose external row is gone.
    pub gone: Vec<(String, String)>,
    /// Live links in all; counted only when some are gone (0 otherwise).
    pub live: u64,
}
