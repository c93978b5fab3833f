//! The sync engine: change windows, diff against shadows, and writes,
//! entity by entity. Watermarks and shadows advance only after the writes
//! they describe have committed.

mod backfill;
mod conflicts;
mod crm_write;
mod deletes;
#[cfg(test)]
mod fixture;
mod mapping;
mod merge;
mod pass;
mod references;
mod retry;
#[cfg(test)]
mod run_summary_tests;
mod verify;

pub use crate::plan::BackfillDirection;
pub use backfill::{BackfillError, BackfillOptions, BackfillReport, DEFAULT_CHUNK_ROWS};
pub use conflicts::ResolveError;
pub use mapping::{canonical_to_crm, crm_to_canonical, FieldProblem};
pub use merge::{merge, winner, Merged, View};
pub use verify::{Drift, FieldDiff, RepairReport, VerifyCounts, VerifyReport};

use crate::endpoint::{Endpoint, EndpointError, Lower};
use crate::plan::{PerSide, Plan, Side};
use crate::schema::{self, BindError, BoundEntity, Findings};
use crate::state::{Link, RejectInfo, StateStore, Watermark};
use crate::value::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Whether a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    /// `plan`: compute everything, write nothing (not even state).
    DryRun,
}

/// Runtime failures of a run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Resolve(#[from] conflicts::ResolveError),
    #[error(
        "entity {entity:?}: another crmsync run of this entity is in progress (it holds the run lock); \
         this run did nothing. Wait for it to finish, or schedule runs further apart"
    )]
    Busy { entity: String },
    #[error("entity {entity:?}: row {key}: {message}; nothing from this batch was applied (on_truncate = \"fail\")")]
    Fail {
        entity: String,
        key: String,
        message: String,
    },
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    /// A link in the state store holds a key its entity's key column
    /// cannot take.
    #[error(
        "entity {entity:?}: a link holds key {key:?}, which does not fit the key column: {reason}"
    )]
    BadLink {
        entity: String,
        key: String,
        reason: String,
    },
    /// The link of a CRM row holds an external key the external key
    /// column cannot take.
    #[error("entity {entity:?}: link of CRM row {crm_key}: {reason}")]
    BadLinkOfRow {
        entity: String,
        crm_key: String,
        reason: String,
    },
    /// A key does not fit the column that is to hold it (the CRM link
    /// column, or external_crm_id_column); `key` and `column` say which.
    #[error(
        "entity {entity:?}: {key} does not fit {column}: {reason}{}",
        widen_hint(.widen)
    )]
    KeyDoesNotFit {
        entity: String,
        column: String,
        key: String,
        reason: String,
        /// Whether the message ends with the advice to widen the column.
        widen: bool,
    },
    /// A `match_on` column of the bound entity is not in its table.
    #[error("entity {entity:?}: match_on column {column} is gone")]
    MatchColumnGone { entity: String, column: String },
    /// An invariant of the engine itself does not hold.
    #[error("{0}")]
    Internal(String),
}

fn widen_hint(widen: &bool) -> &'static str {
    if *widen {
        "; widen the column (crmsync check compares the two types)"
    } else {
        ""
    }
}

impl EngineError {
    /// The exit code of a run that ends with this error: bad usage,
    /// configuration or schema, or a runtime failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Endpoint(e) => e.exit_code(),
            EngineError::Bind(e) => e.exit_code(),
            EngineError::Resolve(e) => e.exit_code(),
            EngineError::Backfill(e) => e.exit_code(),
            EngineError::Busy { .. }
            | EngineError::Fail { .. }
            | EngineError::BadLink { .. }
            | EngineError::BadLinkOfRow { .. }
            | EngineError::KeyDoesNotFit { .. }
            | EngineError::MatchColumnGone { .. }
            | EngineError::Internal(_) => crate::exit::FAILED,
        }
    }
}

/// One sample action, shown by `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub action: &'static str,
    pub crm_key: String,
    pub external_key: Option<String>,
    pub fields: BTreeMap<String, String>,
}

pub const MAX_SAMPLES: usize = 10;

/// What a run did (or, for `plan`, would do) to one entity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EntityReport {
    pub entity: String,
    pub read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Rows found already present on the target (a retry after a crash)
    /// and linked instead of inserted again.
    pub adopted: u64,
    pub unchanged: u64,
    pub crm_inserted: u64,
    pub crm_updated: u64,
    pub crm_deleted: u64,
    /// Same-field clashes met in this run (each is in the conflict log).
    pub conflicts: u64,
    /// External rows gone that were not carried into CRM because they
    /// were more than `max_delete_ratio` of the links.
    pub deletes_refused: u64,
    /// Whether the links were compared with the external table for hard
    /// deletes; false when the entity does not carry them, or when the
    /// table's statistics show no delete since the last check.
    pub hard_delete_check: bool,
    pub rejected: u64,
    pub truncated: u64,
    pub open_rejects: u64,
    pub open_conflicts: u64,
    pub watermark: Option<String>,
    /// Rows written with a reference NULL because its parent was not
    /// linked yet, by side and key: revisited once the rest of their
    /// cycle has run.
    #[serde(skip)]
    pub deferred: Vec<(Side, String)>,
    pub samples: Vec<Sample>,
}

impl EntityReport {
    pub fn changes(&self) -> u64 {
        self.inserted
            + self.updated
            + self.deleted
            + self.adopted
            + self.crm_inserted
            + self.crm_updated
            + self.crm_deleted
    }

    /// Whether the run leaves something for a person to look at.
    pub fn unfinished(&self) -> bool {
        self.open_rejects > 0 || self.open_conflicts > 0 || self.deletes_refused > 0
    }

    fn sample(&mut self, s: Sample) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(s);
        }
    }
}

/// Everything a run needs: the plan, both databases and the state store.
pub struct Engine {
    pub plan: Plan,
    /// The CRM database and the external one.
    pub endpoints: PerSide<Arc<dyn Endpoint>>,
    pub state: Arc<dyn StateStore>,
    /// Shadow layout ids registered by this process, by entity: looked
    /// up once, however many passes and pages write links.
    layouts: std::sync::Mutex<HashMap<String, i32>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("crm", &self.endpoints.crm.describe())
            .field("external", &self.endpoints.external.describe())
            .finish()
    }
}

impl Engine {
    /// Connects to both databases; the state store lives in the database
    /// of `[state] side`, whichever kind it is.
    pub async fn connect(plan: Plan) -> Result<Engine, EngineError> {
        let (crm, external) = tokio::try_join!(
            crate::connect::side(&plan, Side::Crm),
            crate::connect::side(&plan, Side::External)
        )?;
        let connected = PerSide::new(crm, external);
        let state = connected[plan.state_side].state_store(&plan.state_schema);
        Ok(Engine {
            plan,
            endpoints: connected.map(|_, c| c.endpoint),
            state,
            layouts: Default::default(),
        })
    }

    /// The run lock of `e`, or `Busy` when another run holds it.
    async fn lock(&self, e: &BoundEntity) -> Result<crate::state::LockGuard, EngineError> {
        self.state
            .lock(e.name())
            .await?
            .ok_or_else(|| EngineError::Busy {
                entity: e.name().to_string(),
            })
    }

    /// The shadow layout of every field of `e`, registered in the state
    /// store; one that writes nothing (a dry run) gets an unregistered one.
    async fn layout(
        &self,
        e: &BoundEntity,
        writes: bool,
    ) -> Result<mapping::Layout, EndpointError> {
        let names: Vec<String> = e.fields.iter().map(|f| f.name.clone()).collect();
        let known = || self.layouts.lock().ok()?.get(e.name()).copied();
        let id = match known() {
            Some(id) => id,
            None if writes => {
                let id = self.state.shadow_layout(e.name(), &names).await?;
                if let Ok(mut m) = self.layouts.lock() {
                    m.insert(e.name().to_string(), id);
                }
                id
            }
            None => 0,
        };
        Ok(mapping::Layout::new(e, id, (0..names.len()).collect()))
    }

    pub async fn bind(
        &self,
        only: Option<&str>,
    ) -> Result<(Vec<BoundEntity>, Findings), EngineError> {
        Ok(schema::bind(
            &self.plan,
            only,
            &*self.endpoints.crm,
            &*self.endpoints.external,
        )
        .await?)
    }

    /// One incremental run (or its dry run) of each selected entity.
    pub async fn sync(
        &self,
        only: Option<&str>,
        mode: Mode,
    ) -> Result<Vec<EntityReport>, EngineError> {
        let (entities, findings) = self.bind(only).await?;
        // `check` prints these; a scheduled run keeps its log quiet.
        for w in &findings.warnings {
            tracing::debug!("{w}");
        }
        let state = match mode {
            Mode::Apply => {
                self.state.migrate().await?;
                StateView::Store(&*self.state)
            }
            Mode::DryRun => StateView::ReadOnly(&*self.state),
        };
        let mut reports = Vec::new();
        // A cycle of references runs as one group (its entities are next to
        // each other); every other entity is a group of its own.
        let mut rest = &entities[..];
        while let Some(first) = rest.first() {
            let n = match first.cycle {
                Some(c) => rest.iter().take_while(|e| e.cycle == Some(c)).count(),
                None => 1,
            };
            let (group, after) = rest.split_at(n);
            reports.extend(self.sync_group(group, &state, mode).await?);
            rest = after;
        }
        Ok(reports)
    }

    /// One run of each entity of `group`, each under its own lock and in
    /// its own run record. In a cycle the rows written with a reference
    /// NULL (their parent was not linked yet) are revisited once every
    /// entity of the cycle has run, and the locks are held until then.
    async fn sync_group(
        &self,
        group: &[BoundEntity],
        state: &StateView<'_>,
        mode: Mode,
    ) -> Result<Vec<EntityReport>, EngineError> {
        struct Open {
            lock: Option<crate::state::LockGuard>,
            run: i64,
            report: EntityReport,
            failed: bool,
        }
        let defer = group.first().is_some_and(|e| e.cycle.is_some());
        let mut open: Vec<Open> = Vec::new();
        let mut error = None;
        for e in group {
            let lock = match mode {
                Mode::Apply => match self.lock(e).await {
                    Ok(l) => Some(l),
                    Err(err) => {
                        error = Some(err);
                        break;
                    }
                },
                Mode::DryRun => None,
            };
            let run = match state.start_run(e.name(), mode).await {
                Ok(run) => run,
                Err(err) => {
                    if let Some(lock) = lock {
                        lock.release().await;
                    }
                    error = Some(err.into());
                    break;
                }
            };
            let mut o = Open {
                lock,
                run,
                report: EntityReport {
                    entity: e.name().to_string(),
                    ..Default::default()
                },
                failed: false,
            };
            let r = self
                .passes(e, state, o.run, mode, defer, &mut o.report)
                .await;
            o.failed = r.is_err();
            open.push(o);
            if let Err(err) = r {
                error = Some(err);
                break;
            }
        }
        // A dry run links nothing, so a revisit would find the same
        // parents missing: the rows it would fill in are left uncounted.
        if error.is_none() && defer && mode == Mode::Apply {
            for (e, o) in group.iter().zip(open.iter_mut()) {
                if let Err(err) =
                    pass::revisit_deferred(self, e, state, o.run, mode, &mut o.report).await
                {
                    o.failed = true;
                    error = Some(err);
                    break;
                }
            }
        }
        let mut reports = Vec::new();
        for (e, mut o) in group.iter().zip(open) {
            if !o.failed {
                if let Err(err) = self.count_open(e, state, &mut o.report).await {
                    o.failed = true;
                    error.get_or_insert(err);
                }
            }
            let outcome = if o.failed {
                "failed"
            } else if o.report.unfinished() {
                "finished with rejects, conflicts or refused deletes"
            } else {
                "ok"
            };
            let summary = serde_json::to_value(&o.report).unwrap_or_default();
            let finished = state.finish_run(o.run, outcome, &summary).await;
            if let Some(lock) = o.lock {
                lock.release().await;
            }
            if let Err(err) = finished {
                error.get_or_insert(err.into());
            }
            reports.push(o.report);
        }
        match error {
            Some(err) => Err(err),
            None => Ok(reports),
        }
    }

    /// The passes of one entity's run: each direction it flows in, then
    /// (when it writes into CRM) external rows deleted outright.
    async fn passes(
        &self,
        e: &BoundEntity,
        state: &StateView<'_>,
        run: i64,
        mode: Mode,
        defer: bool,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        if e.plan.direction.crm_to_external() {
            pass::run(self, e, state, run, mode, Side::Crm, defer, report).await?;
        }
        if e.plan.direction.external_to_crm() {
            pass::run(self, e, state, run, mode, Side::External, defer, report).await?;
            deletes::external_hard_deletes(self, e, state, mode, report).await?;
        }
        Ok(())
    }

    /// What the run leaves open for a person: rejects and conflicts.
    async fn count_open(
        &self,
        e: &BoundEntity,
        state: &StateView<'_>,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        report.open_rejects = (state.open_rejects(e.name(), Side::Crm).await?.len()
            + state.open_rejects(e.name(), Side::External).await?.len())
            as u64;
        report.open_conflicts = state.open_conflicts(e.name(), &[]).await?.len() as u64;
        Ok(())
    }
}

/// The state store as a run sees it: read-only (and empty if never
/// created) for a dry run.
enum StateView<'a> {
    Store(&'a dyn StateStore),
    ReadOnly(&'a dyn StateStore),
}

impl StateView<'_> {
    fn store(&self) -> &dyn StateStore {
        match self {
            StateView::Store(s) | StateView::ReadOnly(s) => *s,
        }
    }

    fn writes(&self) -> bool {
        matches!(self, StateView::Store(_))
    }

    /// Reads from a state schema that may not exist yet (dry run before the
    /// first sync) count as empty.
    fn empty_if_missing<T: Default>(
        &self,
        r: Result<T, EndpointError>,
    ) -> Result<T, EndpointError> {
        match (self, r) {
            (
                StateView::ReadOnly(_),
                Err(EndpointError::Query {
                    missing_object: true,
                    ..
                }),
            ) => Ok(T::default()),
            (_, r) => r,
        }
    }

    async fn start_run(&self, entity: &str, mode: Mode) -> Result<i64, EndpointError> {
        match (self, mode) {
            (StateView::Store(s), Mode::Apply) => s.start_run(entity, "sync").await,
            _ => Ok(0),
        }
    }

    async fn finish_run(
        &self,
        run: i64,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), EndpointError> {
        match self {
            StateView::Store(s) => s.finish_run(run, outcome, summary).await,
            StateView::ReadOnly(_) => Ok(()),
        }
    }

    async fn watermark(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Option<Watermark>, EndpointError> {
        let r = self.store().watermark(entity, side).await;
        self.empty_if_missing(r)
    }

    async fn links_by_crm(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        let r = self.store().links_by_crm(entity, keys).await;
        self.empty_if_missing(r)
    }

    /// The links of these `side` keys, by that key.
    async fn links_by(
        &self,
        side: Side,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        let r = self.store().links_by(side, entity, keys).await;
        self.empty_if_missing(r)
    }

    async fn open_rejects(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Vec<RejectInfo>, EndpointError> {
        let r = self.store().open_rejects(entity, side).await;
        self.empty_if_missing(r)
    }

    async fn links_by_external(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        let r = self.store().links_by_external(entity, keys).await;
        self.empty_if_missing(r)
    }

    /// Open conflicts of these CRM keys (of every key when `crm_keys` is
    /// empty).
    async fn open_conflicts(
        &self,
        entity: &str,
        crm_keys: &[String],
    ) -> Result<Vec<crate::state::ConflictInfo>, EndpointError> {
        let keys = (!crm_keys.is_empty()).then_some(crm_keys);
        let r = self.store().open_conflicts(entity, keys).await;
        self.empty_if_missing(r)
    }

    async fn live_links(&self, entity: &str) -> Result<Vec<(String, String)>, EndpointError> {
        let r = self.store().live_links(entity).await;
        self.empty_if_missing(r)
    }

    async fn deletes_checked(
        &self,
        entity: &str,
        within: std::time::Duration,
    ) -> Result<Option<String>, EndpointError> {
        let r = self.store().deletes_checked(entity, within).await;
        self.empty_if_missing(r)
    }

    async fn links_gone_from(
        &self,
        entity: &str,
        table: &crate::endpoint::TableInfo,
        key: &str,
    ) -> Result<crate::state::GoneLinks, EndpointError> {
        let r = self.store().links_gone_from(entity, table, key).await;
        self.empty_if_missing(r)
    }
}

/// The window of one change read, up to the source clock minus the settle
/// delay, with that clock (the read's start, for the next watermark).
/// `zone` is the side's configured time zone: a local clock set back since
/// the previous read widens the overlap by as much ([`clock_set_back`]).
async fn window(
    ep: &dyn Endpoint,
    scan: &crate::endpoint::Scan,
    mark: Option<&Watermark>,
    settle: std::time::Duration,
    overlap: std::time::Duration,
    zone: chrono_tz::Tz,
) -> Result<(Lower, Value, Value), EndpointError> {
    let now = ep.clock(&scan.change_ty).await?;
    let overlap = overlap + clock_set_back(mark, &now, zone);
    Ok(bounds(now, mark, settle, overlap))
}

/// How far the side's local clock was set back between the previous read
/// (or the watermark, when no read time is kept) and `now`: the hour that
/// repeats when daylight saving time ends. A row stamped in the repeated
/// hour carries a local time below a watermark taken in its first pass,
/// so the read reaches back that much further; rows it reads again are
/// equal to their shadows and left alone. Zero for zone-aware change
/// columns, zones without such a change, and clocks set forward.
///
/// A local time that occurs twice is taken at its first occurrence for the
/// previous read and at its second for `now`: when in doubt, read more.
fn clock_set_back(
    mark: Option<&Watermark>,
    now: &Value,
    zone: chrono_tz::Tz,
) -> std::time::Duration {
    use chrono::{Offset, TimeZone};
    let (Some(m), Value::Timestamp(now)) = (mark, now) else {
        return std::time::Duration::ZERO;
    };
    let Value::Timestamp(before) = m.read_at.as_ref().unwrap_or(&m.ts) else {
        return std::time::Duration::ZERO;
    };
    let offset = |local: &chrono::NaiveDateTime, first: bool| {
        let at = zone.from_local_datetime(local);
        let at = if first { at.earliest() } else { at.latest() };
        // A local time the clock skipped (never read off a real clock):
        // the offset of the same reading taken as UTC.
        let off = match at {
            Some(t) => t.offset().fix(),
            None => zone.offset_from_utc_datetime(local).fix(),
        };
        i64::from(off.local_minus_utc())
    };
    let back = offset(before, true) - offset(now, false);
    std::time::Duration::from_secs(back.max(0) as u64)
}

/// The window of a change read whose source clock reads `now`: from
/// [`lower_bound`] up to `now` minus the settle delay, and `now` itself
/// (the next watermark's read time).
fn bounds(
    now: Value,
    mark: Option<&Watermark>,
    settle: std::time::Duration,
    overlap: std::time::Duration,
) -> (Lower, Value, Value) {
    let upto = now.minus(settle);
    (lower_bound(mark, overlap), upto, now)
}

/// Where a change read starts. A row that commits late was stamped at
/// most `overlap` before it committed, so after the previous read began
/// (`read_at`), or else it was read then. The read therefore starts at the
/// earlier of the watermark and `read_at - overlap`: a table that has been
/// quiet for longer than the overlap is not read again, however many rows
/// its last change stamped. Without `read_at` (after a backfill, or from
/// an older state schema), the overlap is measured from the watermark.
fn lower_bound(mark: Option<&Watermark>, overlap: std::time::Duration) -> Lower {
    let Some(m) = mark else {
        return Lower::Start;
    };
    let band = m
        .read_at
        .as_ref()
        .map(|r| r.minus(overlap))
        .filter(|b| b.cmp_same(&m.ts).is_some());
    match band {
        Some(b) if b.cmp_same(&m.ts) == Some(std::cmp::Ordering::Greater) => Lower::After {
            ts: m.ts.clone(),
            key: m.key.clone(),
        },
        Some(b) => Lower::From(b),
        None => Lower::From(m.ts.minus(overlap)),
    }
}

/// The later of two watermarks (a re-read of the overlap never moves a
/// watermark back).
fn later(old: Option<&Watermark>, new: Watermark) -> Watermark {
    match old {
        Some(o) => {
            let ord = o.ts.cmp_same(&new.ts).map(|c| {
                c.then(
                    o.key
                        .cmp_same(&new.key)
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
            });
            if ord == Some(std::cmp::Ordering::Greater) {
                o.clone()
            } else {
                new
            }
        }
        None => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn wm(sec: u32, key: i64) -> Watermark {
        Watermark {
            ts: Value::Timestamp(
                NaiveDate::from_ymd_opt(2026, 1, 1)
                    .unwrap()
                    .and_hms_opt(0, 0, sec)
                    .unwrap(),
            ),
            key: Value::Int(key),
            read_at: None,
        }
    }

    #[test]
    fn engine_errors_keep_their_messages_and_codes() {
        let fit = |widen| EngineError::KeyDoesNotFit {
            entity: "company".into(),
            column: "external_crm_id_column crm_id".into(),
            key: "CRM id 7".into(),
            reason: "out of range".into(),
            widen,
        };
        assert_eq!(
            fit(false).to_string(),
            "entity \"company\": CRM id 7 does not fit external_crm_id_column crm_id: out of range"
        );
        assert_eq!(
            fit(true).to_string(),
            "entity \"company\": CRM id 7 does not fit external_crm_id_column crm_id: out of range; \
             widen the column (crmsync check compares the two types)"
        );
        assert_eq!(fit(true).exit_code(), crate::exit::FAILED);
        let wrong = EngineError::from(BackfillError::WrongDirection {
            entity: "company".into(),
            direction: "crm_to_external",
            actual: "ExternalToCrm".into(),
        });
        assert_eq!(wrong.exit_code(), crate::exit::BAD_CONFIG);
        assert_eq!(
            crate::exit_code(&anyhow::Error::from(wrong)),
            crate::exit::BAD_CONFIG
        );
        let unknown = EngineError::from(ResolveError::Unknown(3));
        assert_eq!(crate::exit_code(&unknown.into()), crate::exit::BAD_CONFIG);
        let bad_key = EngineError::from(ResolveError::BadKey {
            id: 3,
            key: "x".into(),
            reason: "not a number".into(),
        });
        assert_eq!(bad_key.to_string(), "conflict 3: key \"x\": not a number");
        assert_eq!(crate::exit_code(&bad_key.into()), crate::exit::FAILED);
    }

    #[test]
    fn watermarks_never_move_back() {
        assert_eq!(later(Some(&wm(5, 1)), wm(4, 9)), wm(5, 1));
        assert_eq!(later(Some(&wm(5, 1)), wm(5, 2)), wm(5, 2));
        assert_eq!(later(Some(&wm(5, 3)), wm(5, 2)), wm(5, 3));
        assert_eq!(later(None, wm(1, 1)), wm(1, 1));
    }

    fn at(sec: u32) -> Value {
        wm(sec, 0).ts
    }

    fn lower_ts(l: &Lower) -> (&'static str, Value) {
        match l {
            Lower::Start => ("start", Value::Null),
            Lower::From(ts) => ("from", ts.clone()),
            Lower::After { ts, .. } => ("after", ts.clone()),
        }
    }

    #[test]
    fn the_window_ends_settle_before_the_source_clock() {
        let (settle, overlap) = (
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(10),
        );
        let (lower, upto, read_at) = bounds(at(50), None, settle, overlap);
        assert!(matches!(lower, Lower::Start));
        assert_eq!((upto, read_at), (at(48), at(50)));
        // The next read, 8 s later, after a page that ended at 45 s: it
        // starts 10 s before this read began, and ends 2 s before its own.
        let mark = Watermark {
            read_at: Some(at(50)),
            ..wm(45, 3)
        };
        let (lower, upto, read_at) = bounds(at(58), Some(&mark), settle, overlap);
        assert_eq!(lower_ts(&lower), ("from", at(40)));
        assert_eq!((upto, read_at), (at(56), at(58)));
    }

    #[test]
    fn the_overlap_is_measured_back_from_the_previous_read() {
        let overlap = std::time::Duration::from_secs(10);
        assert!(matches!(lower_bound(None, overlap), Lower::Start));
        // Unknown read time: back from the watermark.
        assert_eq!(
            lower_ts(&lower_bound(Some(&wm(30, 1)), overlap)),
            ("from", at(20))
        );
        // The previous read began 5 s after the last change: the overlap
        // reaches below the watermark, to 10 s before that read.
        let recent = Watermark {
            read_at: Some(at(35)),
            ..wm(30, 1)
        };
        assert_eq!(
            lower_ts(&lower_bound(Some(&recent), overlap)),
            ("from", at(25))
        );
        // Quiet for longer than the overlap: strictly after the watermark,
        // so the rows of the last change are not read again.
        let quiet = Watermark {
            read_at: Some(at(50)),
            ..wm(30, 7)
        };
        match lower_bound(Some(&quiet), overlap) {
            Lower::After { ts, key } => {
                assert_eq!(ts, at(30));
                assert_eq!(key, Value::Int(7));
            }
            other => panic!("expected After, got {other:?}"),
        }
        // Exactly the overlap: still inclusive of the watermark's time.
        let edge = Watermark {
            read_at: Some(at(40)),
            ..wm(30, 7)
        };
        assert_eq!(
            lower_ts(&lower_bound(Some(&edge), overlap)),
            ("from", at(30))
        );
    }

    fn berlin(month: u32, day: u32, h: u32, m: u32) -> Value {
        Value::Timestamp(
            NaiveDate::from_ymd_opt(2026, month, day)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap(),
        )
    }

    fn read_at(ts: Value, read: Value) -> Watermark {
        Watermark {
            ts,
            key: Value::Int(1),
            read_at: Some(read),
        }
    }

    #[test]
    fn a_clock_set_back_widens_the_read_by_the_repeated_hour() {
        let zone = chrono_tz::Europe::Berlin;
        let hour = std::time::Duration::from_secs(3600);
        // 25 October 2026: at 03:00 CEST the clocks go back to 02:00 CET.
        // Read at 02:58 in the hour's first pass, now 02:20 in its second.
        let mark = read_at(berlin(10, 25, 2, 50), berlin(10, 25, 2, 58));
        assert_eq!(
            clock_set_back(Some(&mark), &berlin(10, 25, 2, 20), zone),
            hour
        );
        // Read before the change, now after it.
        let mark = read_at(berlin(10, 25, 1, 20), berlin(10, 25, 1, 30));
        assert_eq!(
            clock_set_back(Some(&mark), &berlin(10, 25, 3, 10), zone),
            hour
        );
        // Both after it, both in summer, or the spring change (clocks set
        // forward): nothing to add.
        let zero = std::time::Duration::ZERO;
        let mark = read_at(berlin(10, 25, 3, 5), berlin(10, 25, 3, 10));
        assert_eq!(
            clock_set_back(Some(&mark), &berlin(10, 25, 3, 20), zone),
            zero
        );
        let mark = read_at(berlin(7, 1, 9, 0), berlin(7, 1, 9, 5));
        assert_eq!(
            clock_set_back(Some(&mark), &berlin(7, 1, 9, 10), zone),
            zero
        );
        let mark = read_at(berlin(3, 29, 1, 40), berlin(3, 29, 1, 50));
        assert_eq!(
            clock_set_back(Some(&mark), &berlin(3, 29, 3, 10), zone),
            zero
        );
        // UTC never repeats an hour; a zone-aware clock has no local time.
        let mark = read_at(berlin(10, 25, 2, 50), berlin(10, 25, 2, 58));
        assert_eq!(
            clock_set_back(Some(&mark), &berlin(10, 25, 2, 20), chrono_tz::UTC),
            zero
        );
        let aware = Value::TimestampTz(chrono::Utc::now());
        assert_eq!(clock_set_back(Some(&mark), &aware, zone), zero);
        assert_eq!(clock_set_back(None, &berlin(10, 25, 2, 20), zone), zero);
        // Without the widening the read would start after 02:50 (first
        // pass) and miss rows stamped 02:00 to 02:50 in the second pass;
        // with it, it starts at 01:53.
        let overlap = std::time::Duration::from_secs(300);
        let now = berlin(10, 25, 3, 10);
        let mark = read_at(berlin(10, 25, 2, 50), berlin(10, 25, 2, 58));
        let widened = overlap + clock_set_back(Some(&mark), &now, zone);
        assert_eq!(
            lower_ts(&lower_bound(Some(&mark), widened)),
            ("from", berlin(10, 25, 1, 53))
        );
    }
}
