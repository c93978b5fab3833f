//! `backfill`: one-shot bulk copy and linking of a whole entity, resumable.
//!
//! A reader task streams the source in key order through a bounded channel
//! of chunks; the writer links each chunk's rows to existing records (the
//! state's links, the CRM link column, the external CRM id column, then
//! `match_on`), writes the rest in bulk, and commits the chunk together
//! with its links and a checkpoint. A rerun after a crash resumes after
//! the last committed chunk.
//!
//! Linked rows whose fields differ are resolved by the entity's `conflict`
//! policy: `crm_wins` updates the external row; `external_wins` leaves it;
//! `newest_wins` compares both change times in UTC; `manual` rejects the
//! row until someone reconciles it. The shadow is always the CRM's values:
//! the CRM side is then "in sync", and a remaining external difference is
//! an external change that a two-way sync carries into CRM.

use super::mapping::{
    crm_to_canonical, external_to_canonical, map_crm_values, FieldProblem, Layout, Values,
};
use super::{later, Engine, EngineError};
use crate::endpoint::bulk::{
    Bulk, BulkSource, Cell, CheckpointWrite, ChunkWrite, FreshLink, FreshLinks, RawInserts,
    RawRows, Rows, StreamRequest, Turn,
};
use crate::endpoint::{Assign, EndpointError, Scan, Update, WriteBatch};
use crate::plan::{ConflictPolicy, Side, Transform};
use crate::progress::{peak_rss_bytes, Progress};
use crate::schema::{BoundEntity, BoundField};
use crate::state::shadow::{self, digest_int, digest_text, Sealer, Sealing};
use crate::state::{Base, Checkpoint, KeyRef, Link, LinkBatch, LinkWrite, Shadow, Watermark};
use crate::value::{SqlType, Value};
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Rows per chunk when `--chunk-rows` is not given.
pub const DEFAULT_CHUNK_ROWS: usize = 8_000;
/// Chunks read ahead of the writer.
pub const READ_AHEAD: usize = 1;
/// Chunks written at once, each on its own connection and in its own
/// transaction; they commit in order.
pub const WRITERS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillDirection {
    CrmToExternal,
    ExternalToCrm,
}

impl BackfillDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillDirection::CrmToExternal => "crm_to_external",
            BackfillDirection::ExternalToCrm => "external_to_crm",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub direction: BackfillDirection,
    /// Start over even if an interrupted backfill left a checkpoint.
    pub restart: bool,
    pub chunk_rows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(
        "entity {entity:?} does not flow {direction} (its direction is {actual}); \
         backfill it in its own direction"
    )]
    WrongDirection {
        entity: String,
        direction: &'static str,
        actual: String,
    },
}

/// What a backfill did to one entity (the `--report` carries it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    pub entity: String,
    pub direction: String,
    /// Whether this run continued an interrupted backfill.
    pub resumed: bool,
    /// Source rows an earlier, interrupted run had already committed.
    pub rows_done_before: u64,
    /// The target was empty and nothing linked when the backfill began:
    /// rows were inserted without looking for counterparts.
    pub insert_only: bool,
    /// Source rows read by this run.
    pub read: u64,
    /// Rows linked to records that already existed on the target.
    pub linked: u64,
    pub linked_by_link_column: u64,
    pub linked_by_crm_id: u64,
    pub linked_by_match: u64,
    /// Rows that were already linked in the state store.
    pub already_linked: u64,
    /// Linked target rows updated to resolve differing fields.
    pub updated: u64,
    pub inserted: u64,
    pub rejected: u64,
    pub unchanged: u64,
    pub chunks: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub peak_rss_bytes: Option<u64>,
    pub watermark: Option<String>,
}

fn schema_error(msg: String) -> EngineError {
    EngineError::Endpoint(EndpointError::Schema(msg))
}

impl Engine {
    /// Backfills each selected entity.
    pub async fn backfill(
        &self,
        only: Option<&str>,
        opts: &BackfillOptions,
    ) -> Result<Vec<BackfillReport>, anyhow::Error> {
        let (entities, _) = self.bind(only).await?;
        for e in &entities {
            let flows = match opts.direction {
                BackfillDirection::CrmToExternal => e.plan.direction.crm_to_external(),
                BackfillDirection::ExternalToCrm => e.plan.direction.external_to_crm(),
            };
            if !flows {
                return Err(BackfillError::WrongDirection {
                    entity: e.name().to_string(),
                    direction: opts.direction.as_str(),
                    actual: format!("{:?}", e.plan.direction),
                }
                .into());
            }
        }
        self.state.migrate().await?;
        let mut out = Vec::new();
        for e in &entities {
            let lock = self
                .state
                .lock(e.name())
                .await?
                .ok_or_else(|| EngineError::Busy {
                    entity: e.name().to_string(),
                })?;
            let run = self.state.start_run(e.name(), "backfill").await?;
            let mut report = BackfillReport {
                entity: e.name().to_string(),
                direction: opts.direction.as_str().to_string(),
                ..Default::default()
            };
            let result = match opts.direction {
                BackfillDirection::CrmToExternal => {
                    to_external(self, e, opts, run, &mut report).await
                }
                BackfillDirection::ExternalToCrm => {
                    through_sync(self, e, Side::External, opts, run, &mut report)
                        .await
                        .map_err(anyhow::Error::from)
                }
            };
            let outcome = match &result {
                Ok(()) if report.rejected > 0 => "finished with rejects",
                Ok(()) => "ok",
                Err(_) => "failed",
            };
            let summary = serde_json::to_value(&report).unwrap_or_default();
            self.state.finish_run(run, outcome, &summary).await?;
            lock.release().await;
            result?;
            out.push(report);
        }
        Ok(out)
    }
}

/// Positions of the columns the backfill needs in a CRM row.
struct CrmColumns {
    scan: Scan,
    key: usize,
    change: usize,
    link: Option<usize>,
    /// (CRM position, external column) of each `match_on` pair.
    matches: Vec<(usize, String)>,
    /// The fields that flow to the external side, in entity order (the
    /// order of the inserted columns too).
    outgoing: Vec<Outgoing>,
    /// The shadow layout of the outgoing fields.
    layout: Layout,
}

/// A field that flows to the external side.
struct Outgoing {
    /// Index in the entity's fields.
    field: usize,
    /// Position of its CRM column in the scan.
    pos: Option<usize>,
    /// No other field and no later step reads that column: mapping may
    /// move the value out of the row instead of copying it.
    take: bool,
    /// The value passes unchanged, in the same binary form, from the CRM
    /// column to the external one (see [`passes_raw`]).
    raw: bool,
}

/// Whether a value of CRM type `crm` is, unmapped and in the same binary
/// form, the canonical value for external type `ext`: same kind and
/// width, no rounding, no zone shift. Text still has its length checked.
fn passes_raw(crm: &SqlType, ext: &SqlType, same_zone: bool) -> bool {
    match (crm, ext) {
        (SqlType::Bool, SqlType::Bool)
        | (SqlType::Date, SqlType::Date)
        | (SqlType::Uuid, SqlType::Uuid)
        | (SqlType::Bytes, SqlType::Bytes)
        | (SqlType::TimestampTz, SqlType::TimestampTz) => true,
        (SqlType::Int { bytes: a }, SqlType::Int { bytes: b }) => a == b,
        (SqlType::Text { fixed: false, .. }, SqlType::Text { fixed: false, .. }) => true,
        (SqlType::Timestamp { precision: a }, SqlType::Timestamp { precision: b }) => {
            same_zone && a <= b
        }
        _ => false,
    }
}

impl CrmColumns {
    fn fields<'a>(&'a self, e: &'a BoundEntity) -> impl Iterator<Item = &'a BoundField> + Clone {
        self.outgoing.iter().map(move |o| &e.fields[o.field])
    }

    /// The values of a row mapped by [`map_crm_values`], by field.
    fn values_of(&self, e: &BoundEntity, values: &[Value]) -> Values {
        self.outgoing
            .iter()
            .zip(values)
            .map(|(o, v)| (e.fields[o.field].name.clone(), v.clone()))
            .collect()
    }

    /// The sealed shadow of a row mapped by [`map_crm_values`].
    fn shadow_of(&self, e: &BoundEntity, values: &[Value]) -> Vec<u8> {
        self.layout.seal_values(e, values)
    }

    /// The names of the outgoing fields: the shadow layout of fresh links.
    fn layout(&self, e: &BoundEntity) -> Vec<String> {
        self.fields(e).map(|f| f.name.clone()).collect()
    }
}

fn crm_columns(e: &BoundEntity) -> Result<CrmColumns, EngineError> {
    let mut scan = e.crm_scan();
    let add = |scan: &mut Scan, name: &str| -> usize {
        match scan.position(name) {
            Some(p) => p,
            None => {
                scan.columns.push(name.to_string());
                scan.columns.len() - 1
            }
        }
    };
    let link = e.crm_link.as_ref().map(|c| add(&mut scan, &c.name));
    let mut matches = Vec::new();
    for (c, x) in &e.plan.match_on {
        let crm = e.crm_table.column(c).map_err(|_| {
            schema_error(format!(
                "entity {:?}: match_on column {c} is gone",
                e.name()
            ))
        })?;
        let ext = e.external_table.column(x).map_err(|_| {
            schema_error(format!(
                "entity {:?}: match_on column {x} is gone",
                e.name()
            ))
        })?;
        let pos = add(&mut scan, &crm.name.clone());
        matches.push((pos, ext.name.clone()));
    }
    let mut outgoing: Vec<Outgoing> = e
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.plan.direction.crm_to_external())
        .map(|(i, f)| Outgoing {
            field: i,
            pos: scan.position(&f.crm.name),
            take: false,
            raw: false,
        })
        .collect();
    let mut kept: Vec<usize> = vec![0, 1];
    kept.extend(link);
    kept.extend(matches.iter().map(|(p, _)| *p));
    let positions: Vec<Option<usize>> = outgoing.iter().map(|o| o.pos).collect();
    for o in &mut outgoing {
        o.take = o.pos.is_some_and(|p| {
            !kept.contains(&p) && positions.iter().filter(|q| **q == Some(p)).count() == 1
        });
    }
    Ok(CrmColumns {
        key: 0,
        change: 1,
        scan,
        link,
        matches,
        outgoing,
        layout: Layout::default(),
    })
}

/// The external read used to find existing rows: every mapped column plus
/// the `match_on` columns, without the external filter (a row outside it
/// still holds its key and CRM id).
fn external_scan(e: &BoundEntity, cols: &CrmColumns) -> Scan {
    let mut s = e.external_scan();
    s.filter = None;
    for (_, x) in &cols.matches {
        if s.position(x).is_none() {
            s.columns.push(x.clone());
        }
    }
    s
}

fn deleted_flag_false(ty: &SqlType) -> Value {
    match ty {
        SqlType::Bool => Value::Bool(false),
        SqlType::Int { .. } | SqlType::Decimal { .. } => Value::Int(0),
        _ => Value::Null,
    }
}

/// The columns of inserted rows, and the constant tail of every row.
struct InsertShape {
    columns: Vec<String>,
    constants: Vec<Value>,
    with_crm_id: bool,
}

impl InsertShape {
    /// The value of the external CRM id column for CRM key `key`, when the
    /// inserted columns carry it.
    fn crm_id(&self, e: &BoundEntity, key: &Value) -> Result<Option<Value>, EngineError> {
        match (&e.external_crm_id, self.with_crm_id) {
            (Some(id), true) => key
                .clone()
                .coerce(&id.ty, None, false)
                .map(Some)
                .map_err(|err| {
                    schema_error(format!(
                        "entity {:?}: CRM id {} does not fit external_crm_id_column {}: {err}",
                        e.name(),
                        key.display(),
                        id.name
                    ))
                }),
            _ => Ok(None),
        }
    }
}

async fn insert_shape(engine: &Engine, e: &BoundEntity) -> Result<InsertShape, EngineError> {
    let mut columns: Vec<String> = e
        .fields
        .iter()
        .filter(|f| f.plan.direction.crm_to_external())
        .map(|f| f.external.name.clone())
        .collect();
    let with_crm_id = match &e.external_crm_id {
        Some(c) if !columns.contains(&c.name) => {
            columns.push(c.name.clone());
            true
        }
        _ => false,
    };
    let mut constants = Vec::new();
    for (c, v) in &e.external_defaults {
        if !columns.contains(c) {
            columns.push(c.clone());
            constants.push(v.clone());
        }
    }
    if let Some(d) = &e.external_deleted {
        if !columns.contains(&d.name) && !d.has_default {
            columns.push(d.name.clone());
            constants.push(deleted_flag_false(&d.ty));
        }
    }
    let chg = &e.external_change;
    if !columns.contains(&chg.name) && !chg.has_default {
        columns.push(chg.name.clone());
        constants.push(engine.external.clock(&chg.ty).await?);
    }
    Ok(InsertShape {
        columns,
        constants,
        with_crm_id,
    })
}

/// A CRM row of the chunk that is not linked yet.
struct Candidate {
    row: usize,
    key: String,
    /// Canonical values of the outgoing fields, in order.
    values: Vec<Value>,
}

/// The checkpoint of an interrupted backfill in `opts`' direction, to
/// resume from (`--restart` forgets it first); `None` to start afresh.
async fn interrupted(
    engine: &Engine,
    e: &BoundEntity,
    opts: &BackfillOptions,
    report: &mut BackfillReport,
) -> Result<Option<Checkpoint>, EngineError> {
    let state = &*engine.state;
    let direction = opts.direction.as_str();
    if opts.restart {
        state.clear_checkpoint(e.name(), direction).await?;
    }
    let cp = state
        .checkpoint(e.name(), direction)
        .await?
        .filter(|cp| !cp.finished);
    if let Some(cp) = &cp {
        report.resumed = true;
        report.rows_done_before = cp.rows_done as u64;
        tracing::info!(
            "entity {:?}: resuming the interrupted backfill after {} rows",
            e.name(),
            cp.rows_done
        );
    }
    Ok(cp)
}

/// Ends a backfill: the source side's watermark moves to (snapshot time,
/// last key) unless it is already later, the checkpoint is marked
/// finished, and the report gets its watermark and timings.
async fn finish(
    engine: &Engine,
    e: &BoundEntity,
    source: Side,
    opts: &BackfillOptions,
    mut checkpoint: Checkpoint,
    started: Instant,
    report: &mut BackfillReport,
) -> Result<(), EngineError> {
    let state = &*engine.state;
    let old = state.watermark(e.name(), source).await?;
    let max_key = checkpoint
        .last_key
        .clone()
        .or_else(|| old.as_ref().map(|m| m.key.clone()))
        .unwrap_or(Value::Int(0));
    let mark = later(
        old.as_ref(),
        Watermark {
            ts: checkpoint.snapshot_ts.clone(),
            key: max_key,
            // Rows may have committed late anywhere during the backfill:
            // the next sync re-reads the overlap below the snapshot time.
            read_at: None,
        },
    );
    if Some(&mark) != old.as_ref() {
        state.set_watermark(e.name(), source, &mark).await?;
    }
    report.watermark = Some(format!("{} / {}", mark.ts.display(), mark.key.display()));
    checkpoint.finished = true;
    state
        .save_checkpoint(e.name(), opts.direction.as_str(), &checkpoint)
        .await?;
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_second = report.read as f64 / report.seconds.max(1e-6);
    report.peak_rss_bytes = peak_rss_bytes();
    Ok(())
}

/// A backfill of entity `e` from `source` through the sync's own writes:
/// the source table is read in key order, `--chunk-rows` at a time, and
/// each chunk is handled as a sync pass handles changed rows of that side
/// (merged with linked rows, linked by the CRM link column, the external
/// CRM id column or `match_on`, or inserted by the target's rules). It
/// serves every external → CRM backfill, and a CRM → external one whose
/// target has no bulk interface (SQL Server). Each chunk writes the target
/// first, then the links; its checkpoint follows. A crash in between is
/// repaired on rerun: the rows a lost chunk inserted carry their source key
/// (the CRM link column, or the external CRM id column) and are linked, not
/// inserted again.
async fn through_sync(
    engine: &Engine,
    e: &BoundEntity,
    source: Side,
    opts: &BackfillOptions,
    run: i64,
    report: &mut BackfillReport,
) -> Result<(), EngineError> {
    let started = Instant::now();
    let direction = opts.direction.as_str();
    let state = &*engine.state;
    let scan = e.scan(source);
    let (endpoint, table) = match source {
        Side::Crm => (&engine.crm, &e.crm_table),
        Side::External => (&engine.external, &e.external_table),
    };
    let mut checkpoint = match interrupted(engine, e, opts, report).await? {
        Some(cp) => cp,
        None => {
            // The snapshot starts now, on the source's clock: what changes
            // from here on is the next sync's to carry.
            let now = endpoint.clock(&scan.change_ty).await?;
            let cp = Checkpoint {
                snapshot_ts: now.minus(e.plan.settle),
                last_key: None,
                rows_done: 0,
                finished: false,
                insert_only: false,
            };
            state.save_checkpoint(e.name(), direction, &cp).await?;
            cp
        }
    };
    let view = super::StateView::Store(state);
    let layout = engine.layout(e, true).await?;
    let pages = super::pass::BackfillPages::new(engine, e, &view, run, source, layout);
    let chunk = opts.chunk_rows.max(1);
    let estimate = (table.row_estimate.max(0) as u64).saturating_sub(report.rows_done_before);
    let mut progress = Progress::start(&format!("backfill {}", e.name()), estimate);
    let mut done = super::EntityReport {
        entity: e.name().to_string(),
        ..Default::default()
    };
    loop {
        let rows = endpoint
            .read_page(&scan, checkpoint.last_key.as_ref(), chunk)
            .await?;
        let Some(last) = rows.last() else { break };
        let last = last[0].clone();
        pages.page(&rows, &mut done).await?;
        checkpoint.last_key = Some(last);
        checkpoint.rows_done += rows.len() as i64;
        state
            .save_checkpoint(e.name(), direction, &checkpoint)
            .await?;
        report.chunks += 1;
        progress.add(rows.len() as u64);
        if rows.len() < chunk {
            break;
        }
    }
    progress.finish();
    report.read = done.read;
    report.linked = done.adopted;
    report.rejected = done.rejected;
    report.unchanged = done.unchanged;
    match source {
        Side::External => {
            report.inserted = done.crm_inserted;
            report.updated = done.crm_updated;
        }
        Side::Crm => {
            report.inserted = done.inserted;
            report.updated = done.updated;
        }
    }
    // The next sync reads the source's changes from the snapshot on.
    finish(engine, e, source, opts, checkpoint, started, report).await
}

/// One CRM → external backfill of entity `e`.
async fn to_external(
    engine: &Engine,
    e: &BoundEntity,
    opts: &BackfillOptions,
    run: i64,
    report: &mut BackfillReport,
) -> Result<(), anyhow::Error> {
    let started = Instant::now();
    let direction = opts.direction.as_str();
    let Some(ext_bulk) = engine.external.bulk() else {
        tracing::info!(
            "entity {:?}: the external database has no bulk interface (SQL Server): \
             the rows are written through the sync's batched writes",
            e.name()
        );
        return Ok(through_sync(engine, e, Side::Crm, opts, run, report).await?);
    };
    let ext_bulk: &dyn Bulk = ext_bulk;
    let crm_bulk = engine.crm.bulk_source();
    let state = &*engine.state;
    let state_here = engine.plan.state_side == Side::External;
    // Whether links of this entity may exist for rows this run has not
    // written: unknown for a resumed run (another command may have run in
    // between), known for a fresh one. While the run holds the entity's
    // lock, only its own chunks add links, for keys before the next chunk.
    let mut links_before = true;
    let mut checkpoint = match interrupted(engine, e, opts, report).await? {
        Some(cp) => cp,
        None => {
            // The snapshot starts now: what changes from here on is the
            // next sync's to carry.
            let now = engine.crm.clock(&e.crm_change.ty).await?;
            links_before = state.has_links(e.name()).await?;
            let insert_only =
                state_here && !links_before && !ext_bulk.has_rows(&e.external_table).await?;
            if insert_only {
                tracing::info!(
                    "entity {:?}: {} is empty and nothing is linked yet: every row is inserted \
                     without looking for a counterpart",
                    e.name(),
                    e.external_table.qualified()
                );
            }
            let cp = Checkpoint {
                snapshot_ts: now.minus(e.plan.settle),
                last_key: None,
                rows_done: 0,
                finished: false,
                insert_only,
            };
            state.save_checkpoint(e.name(), direction, &cp).await?;
            cp
        }
    };
    // Insert-only needs the links to commit with the data; a resumed run
    // whose state store has since moved falls back to looking things up.
    checkpoint.insert_only &= state_here;
    report.insert_only = checkpoint.insert_only;
    let mut cols = crm_columns(e)?;
    let fields = cols.layout(e);
    let layout = state.shadow_layout(e.name(), &fields).await?;
    cols.layout = Layout::new(e, layout, cols.outgoing.iter().map(|o| o.field).collect());
    let ext_scan = external_scan(e, &cols);
    let shape = insert_shape(engine, e).await?;
    let deleted = e.crm_deleted.as_ref().map(|d| d.name.clone());
    let req = StreamRequest {
        scan: cols.scan.clone(),
        after: checkpoint.last_key.clone(),
        deleted: deleted.clone(),
        chunk_rows: opts.chunk_rows.max(1),
        depth: READ_AHEAD,
    };
    // Between databases of one kind, cells that need no mapping move as
    // they are, without decoding them, into rows that are new to the
    // target: every row of an insert-only backfill, and those a lookup
    // finds no counterpart for when the links commit with the data.
    let crm_raw = engine
        .crm
        .bulk()
        .filter(|b| state_here && e.plan.insert_into_external && b.kind() == ext_bulk.kind());
    let raw = crm_raw.is_some();
    if raw {
        let same_zone = e.to_external.from == e.to_external.to;
        for o in &mut cols.outgoing {
            let f = &e.fields[o.field];
            o.raw = o.pos.is_some()
                && f.plan.transform == Transform::None
                && f.plan.values.is_empty()
                && passes_raw(&f.crm.ty, &f.external.ty, same_zone);
        }
    }
    let cols = cols;
    let mut rx = match crm_raw {
        Some(b) => Source::Raw(b.stream_raw(req)),
        None => Source::Values(crm_bulk.stream(req)),
    };
    let estimate = (e.crm_table.row_estimate.max(0) as u64).saturating_sub(report.rows_done_before);
    let mut progress = Progress::start(&format!("backfill {}", e.name()), estimate);
    // Up to WRITERS chunks are written at once while the next one is
    // linked and resolved. A chunk commits only after the one before it
    // (its `turn`), so the checkpoint only moves forward and a crash never
    // leaves a gap behind it. With the state store in the CRM database the
    // links follow the data in separate writes, and one writer keeps them
    // in order too.
    let writers = if state_here { WRITERS } else { 1 };
    let mut inflight = FuturesOrdered::new();
    let mut prev: Option<Turn> = None;
    loop {
        if inflight.len() >= writers {
            if let Some(w) = inflight.next().await {
                progress.add(w?);
            }
            continue;
        }
        let prepared = {
            let next = async {
                match rx.recv().await? {
                    None => Ok(None),
                    Some(chunk) => {
                        let (n, last) = chunk.extent(cols.key)?;
                        checkpoint.last_key = last;
                        checkpoint.rows_done += n as i64;
                        let p = match chunk {
                            Chunk::Raw(rows) if checkpoint.insert_only => prepare_raw(
                                engine,
                                e,
                                &cols,
                                &shape,
                                &rows,
                                &checkpoint,
                                direction,
                                report,
                            )?,
                            chunk => {
                                prepare_chunk(
                                    engine,
                                    e,
                                    &cols,
                                    &ext_scan,
                                    &shape,
                                    crm_bulk,
                                    deleted.as_deref(),
                                    chunk,
                                    links_before,
                                    &checkpoint,
                                    direction,
                                    state_here,
                                    report,
                                )
                                .await?
                            }
                        };
                        report.read += n as u64;
                        Ok::<_, EngineError>(Some(p))
                    }
                }
            };
            let mut next = std::pin::pin!(next);
            loop {
                tokio::select! {
                    r = &mut next => break r?,
                    Some(w) = inflight.next(), if !inflight.is_empty() => progress.add(w?),
                }
            }
        };
        let Some(p) = prepared else { break };
        report.chunks += 1;
        let (done, turn) = tokio::sync::oneshot::channel();
        inflight.push_back(commit_chunk(
            engine,
            e,
            ext_bulk,
            p,
            direction,
            run,
            prev.replace(turn),
            done,
        ));
    }
    while let Some(w) = inflight.next().await {
        progress.add(w?);
    }
    progress.finish();
    // Fresh statistics after the bulk load: without them the planner takes
    // the new links table for empty and the next sync scans it whole.
    analyze(engine, e, ext_bulk, state_here).await?;
    report.linked = report.linked_by_link_column + report.linked_by_crm_id + report.linked_by_match;
    // The next sync starts where the snapshot began (minus its overlap).
    finish(engine, e, Side::Crm, opts, checkpoint, started, report)
        .await
        .map_err(anyhow::Error::from)
}

/// Refreshes the statistics of the target table and of the links table,
/// at once, each on its own connection.
async fn analyze(
    engine: &Engine,
    e: &BoundEntity,
    ext_bulk: &dyn Bulk,
    state_here: bool,
) -> Result<(), EndpointError> {
    let schema = engine.plan.state_schema.as_str();
    // The state store is on PostgreSQL, so it has the bulk interface.
    let links_side = if state_here {
        Some(ext_bulk)
    } else {
        engine.crm.bulk()
    };
    // The columns the sync and the backfill's lookups search by.
    let mut cols: Vec<String> = [Some(&e.external_key), e.external_crm_id.as_ref()]
        .into_iter()
        .flatten()
        .chain([&e.external_change])
        .chain(e.external_deleted.as_ref())
        .map(|c| c.name.clone())
        .collect();
    for (_, x) in &e.plan.match_on {
        if let Ok(x) = e.external_table.column(x) {
            if !cols.contains(&x.name) {
                cols.push(x.name.clone());
            }
        }
    }
    let links = async {
        match links_side {
            Some(b) => b.analyze(None, Some(schema)).await,
            None => Ok(()),
        }
    };
    tokio::try_join!(
        ext_bulk.analyze(Some((&e.external_table, &cols)), None),
        links,
    )?;
    Ok(())
}

type Deferred = (
    Option<LinkBatch>,
    Option<FreshLinks>,
    Option<CheckpointWrite>,
);

/// A chunk ready to commit.
struct Prepared {
    chunk: ChunkWrite,
    /// Links and checkpoint written after the data when the state store
    /// lives in the other database.
    deferred: Option<Deferred>,
    rejects: Vec<(String, String)>,
    rows: u64,
}

/// The source of chunks: decoded rows, or raw ones.
enum Source {
    Values(tokio::sync::mpsc::Receiver<Result<Rows, EndpointError>>),
    Raw(tokio::sync::mpsc::Receiver<Result<RawRows, EndpointError>>),
}

enum Chunk {
    Values(Rows),
    Raw(RawRows),
}

impl Chunk {
    /// The number of rows and the key of the last one.
    fn extent(&self, key: usize) -> Result<(usize, Option<Value>), EndpointError> {
        Ok(match self {
            Chunk::Values(rows) => (rows.len(), rows.last().map(|r| r[key].clone())),
            Chunk::Raw(rows) => match rows.len() {
                0 => (0, None),
                n => (n, Some(rows.value(n - 1, key)?)),
            },
        })
    }
}

impl Source {
    async fn recv(&mut self) -> Result<Option<Chunk>, EndpointError> {
        Ok(match self {
            Source::Values(rx) => rx.recv().await.transpose()?.map(Chunk::Values),
            Source::Raw(rx) => rx.recv().await.transpose()?.map(Chunk::Raw),
        })
    }
}

/// The cell of a field that passes raw, when this value may: a NULL only
/// into a nullable column, text only when its bytes fit the column (else
/// the value is mapped, and rejected if it does not fit).
fn raw_cell(rows: &RawRows, row: usize, pos: usize, f: &BoundField) -> Option<Cell> {
    match rows.range(row, pos) {
        None => f.external.nullable.then_some(Cell::Null),
        Some((a, b)) => match f.external.ty {
            SqlType::Text {
                max_len: Some(m), ..
            } if (b - a) as usize > m as usize => None,
            _ => Some(Cell::Raw(a, b)),
        },
    }
}

/// How a raw cell of CRM type `ty` is sealed into a shadow, as its
/// decoded value would be (a raw cell's CRM reading is the value itself),
/// decoding only what is not text, integer or boolean.
fn raw_sealing(
    ty: &SqlType,
    cell: Option<&[u8]>,
    decode: impl FnOnce() -> Result<Value, EndpointError>,
) -> Result<Sealing, EngineError> {
    let int = |i: i64| shadow::inline_int(i).unwrap_or(Sealing::Digest(digest_int(i), None));
    Ok(match (ty, cell) {
        (_, None) => Sealing::Null,
        (SqlType::Text { .. }, Some(b)) if std::str::from_utf8(b).is_ok() => {
            shadow::inline_text(b).unwrap_or(Sealing::Digest(digest_text(b), None))
        }
        (SqlType::Int { bytes: 2 }, Some(&[a, b])) => int(i16::from_be_bytes([a, b]).into()),
        (SqlType::Int { bytes: 4 }, Some(b)) if b.len() == 4 => {
            int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into())
        }
        (SqlType::Int { bytes: 8 }, Some(b)) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            int(i64::from_be_bytes(a))
        }
        (SqlType::Bool, Some(&[x])) => {
            let v = Value::Bool(x != 0);
            shadow::sealing(&v, &v)
        }
        _ => {
            let v = decode()?;
            shadow::sealing(&v, &v)
        }
    })
}

/// A raw row ready to insert: its outgoing cells, in order, and its
/// sealed shadow.
struct RawRow {
    cells: Vec<Cell>,
    shadow: Vec<u8>,
}

/// Prepares raw row `r` for insertion: cells that pass raw are copied as
/// they are, the others are decoded and mapped as in [`prepare_chunk`].
/// `Ok(Err(why))`: the row is rejected.
fn raw_row(
    e: &BoundEntity,
    cols: &CrmColumns,
    outgoing: &[&BoundField],
    rows: &RawRows,
    r: usize,
    key: &str,
) -> Result<Result<RawRow, String>, EngineError> {
    let mut cells: Vec<Cell> = Vec::with_capacity(outgoing.len() + 2);
    let mut shadow = Sealer::new(cols.layout.id, outgoing.len());
    for (n, (o, f)) in cols.outgoing.iter().zip(outgoing).enumerate() {
        if let Some(p) = o.pos.filter(|_| o.raw) {
            if let Some(cell) = raw_cell(rows, r, p, f) {
                shadow.push(raw_sealing(&f.crm.ty, rows.cell(r, p), || {
                    rows.value(r, p)
                })?);
                cells.push(cell);
                continue;
            }
        }
        let v = match o.pos {
            Some(p) => rows.value(r, p)?,
            None => Value::Null,
        };
        let (v, _) = match settle(e, key, crm_to_canonical(f, v, e.to_external))? {
            Ok(mapped) => mapped,
            Err(why) => return Ok(Err(why)),
        };
        shadow.push(cols.layout.sealing(e, n, &v));
        cells.push(Cell::Value(v));
    }
    Ok(Ok(RawRow {
        cells,
        shadow: shadow.finish(),
    }))
}

/// A mapping outcome for row `key`: `Ok(Err(why))` rejects the row, a
/// `fail` policy's refusal stops the run.
fn settle<T>(
    e: &BoundEntity,
    key: &str,
    mapped: Result<T, FieldProblem>,
) -> Result<Result<T, String>, EngineError> {
    match mapped {
        Ok(v) => Ok(Ok(v)),
        Err(FieldProblem::Reject(why)) => Ok(Err(why)),
        Err(FieldProblem::Fail(message)) => Err(EngineError::Fail {
            entity: e.name().to_string(),
            key: key.to_string(),
            message,
        }),
    }
}

/// The canonical values of raw row `r`'s outgoing fields, decoded and
/// mapped as [`prepare_chunk`] maps decoded rows.
fn raw_values(
    e: &BoundEntity,
    cols: &CrmColumns,
    outgoing: &[&BoundField],
    rows: &RawRows,
    r: usize,
) -> Result<Result<Vec<Value>, FieldProblem>, EngineError> {
    let mut decoded = cols
        .outgoing
        .iter()
        .map(|o| match o.pos {
            Some(p) => rows.value(r, p),
            None => Ok(Value::Null),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        map_crm_values(outgoing.iter().copied(), e.to_external, |n, _| {
            std::mem::replace(&mut decoded[n], Value::Null)
        })
        .map(|(values, _)| values),
    )
}

/// Rows of a raw chunk with only the columns the lookups read decoded
/// (key, change time, link column, match_on columns); NULL elsewhere.
fn lookup_rows(cols: &CrmColumns, raw: &RawRows) -> Result<Rows, EngineError> {
    let mut wanted = vec![cols.key, cols.change];
    wanted.extend(cols.link);
    wanted.extend(cols.matches.iter().map(|(p, _)| *p));
    let width = cols.scan.columns.len();
    (0..raw.len())
        .map(|r| {
            let mut row = vec![Value::Null; width];
            for &p in &wanted {
                row[p] = raw.value(r, p)?;
            }
            Ok(row)
        })
        .collect()
}

/// Prepares a chunk of an insert-only backfill read raw: every row is
/// inserted (see [`raw_row`]).
#[allow(clippy::too_many_arguments)]
fn prepare_raw(
    engine: &Engine,
    e: &BoundEntity,
    cols: &CrmColumns,
    shape: &InsertShape,
    rows: &RawRows,
    checkpoint: &Checkpoint,
    direction: &str,
    report: &mut BackfillReport,
) -> Result<Prepared, EngineError> {
    let outgoing: Vec<&BoundField> = cols.fields(e).collect();
    let mut rejects: Vec<(String, String)> = Vec::new();
    let mut inserts: Vec<Vec<Cell>> = Vec::with_capacity(rows.len());
    let mut fresh: Vec<FreshLink> = Vec::with_capacity(rows.len());
    for r in 0..rows.len() {
        let key = rows.value(r, cols.key)?;
        let ks = key.key_string();
        let RawRow { mut cells, shadow } = match raw_row(e, cols, &outgoing, rows, r, &ks)? {
            Ok(row) => row,
            Err(why) => {
                rejects.push((ks, why));
                continue;
            }
        };
        cells.extend(shape.crm_id(e, &key)?.map(Cell::Value));
        cells.extend((0..shape.constants.len()).map(Cell::Const));
        fresh.push(FreshLink {
            crm_key: ks,
            insert: inserts.len(),
            shadow,
        });
        inserts.push(cells);
    }
    report.inserted += inserts.len() as u64;
    report.rejected += rejects.len() as u64;
    let schema = engine.plan.state_schema.clone();
    let chunk = ChunkWrite {
        table: e.external_table.clone(),
        key: e.external_key.name.clone(),
        columns: shape.columns.clone(),
        inserts: Vec::new(),
        raw_inserts: Some(RawInserts {
            data: rows.data.clone(),
            constants: shape.constants.clone(),
            rows: inserts,
        }),
        updates: Vec::new(),
        links: None,
        fresh_links: Some(FreshLinks {
            schema: schema.clone(),
            entity: e.name().to_string(),
            links: fresh,
        }),
        checkpoint: Some(CheckpointWrite {
            schema,
            entity: e.name().to_string(),
            direction: direction.to_string(),
            checkpoint: checkpoint.clone(),
        }),
    };
    Ok(Prepared {
        chunk,
        deferred: None,
        rejects,
        rows: rows.len() as u64,
    })
}

/// Links and resolves one chunk: what is linked, updated and inserted.
#[allow(clippy::too_many_arguments)]
async fn prepare_chunk(
    engine: &Engine,
    e: &BoundEntity,
    cols: &CrmColumns,
    ext_scan: &Scan,
    shape: &InsertShape,
    crm_bulk: &dyn BulkSource,
    deleted: Option<&str>,
    chunk: Chunk,
    links_before: bool,
    checkpoint: &Checkpoint,
    direction: &str,
    state_here: bool,
    report: &mut BackfillReport,
) -> Result<Prepared, EngineError> {
    let state = &*engine.state;
    let t = Instant::now();
    // A raw chunk is decoded only where the lookups read it (key, change
    // time, link column, match_on columns); a row that turns out to be new
    // is inserted raw, and only rows with a counterpart are decoded whole.
    let (mut rows, raw) = match chunk {
        Chunk::Values(rows) => (rows, None),
        Chunk::Raw(raw) => (lookup_rows(cols, &raw)?, Some(raw)),
    };
    let keys: Vec<String> = rows.iter().map(|r| r[cols.key].key_string()).collect();
    // In an insert-only backfill nothing on the target can be this row's
    // counterpart: there is nothing to look up. Without links from before
    // the run, none of this chunk's rows has one yet.
    let insert_only = checkpoint.insert_only;
    let links = if insert_only || !links_before {
        HashMap::new()
    } else {
        state.links_by_crm(e.name(), &keys).await?
    };
    let mut rejects: Vec<(String, String)> = Vec::new();
    let mut updates: Vec<Update> = Vec::new();
    let mut link_writes: Vec<LinkWrite> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let outgoing: Vec<&BoundField> = cols.fields(e).collect();
    // Raw rows prepared for insertion, by row; rows with a link go on
    // decoded instead.
    let mut ready: Vec<Option<RawRow>> = (0..rows.len()).map(|_| None).collect();
    for (i, row) in rows.iter_mut().enumerate() {
        let ks = &keys[i];
        let linked = links.get(ks).filter(|l| !l.deleted);
        let mapped = match &raw {
            None => map_crm_values(outgoing.iter().copied(), e.to_external, |n, _| {
                let o = &cols.outgoing[n];
                match o.pos {
                    Some(p) if o.take => std::mem::replace(&mut row[p], Value::Null),
                    Some(p) => row[p].clone(),
                    None => Value::Null,
                }
            })
            .map(|(values, _)| values),
            Some(raw) if linked.is_some() => raw_values(e, cols, &outgoing, raw, i)?,
            // Decoded whole only if a lookup finds a counterpart.
            Some(raw) => match raw_row(e, cols, &outgoing, raw, i, ks)? {
                Err(why) => Err(FieldProblem::Reject(why)),
                Ok(r) => {
                    ready[i] = Some(r);
                    Ok(Vec::new())
                }
            },
        };
        let values = match settle(e, ks, mapped)? {
            Ok(values) => values,
            Err(why) => {
                rejects.push((ks.clone(), why));
                continue;
            }
        };
        match linked {
            Some(l) => {
                report.already_linked += 1;
                let set = diff(e, &l.shadow, &cols.values_of(e, &values));
                if set.is_empty() || !e.plan.update_into_external {
                    report.unchanged += 1;
                    continue;
                }
                let key =
                    Value::from_key_string(&l.external_key, &e.external_key.ty).map_err(|err| {
                        schema_error(format!(
                            "entity {:?}: link of CRM row {ks}: {err}",
                            e.name()
                        ))
                    })?;
                push_update(e, &mut updates, key, set);
                report.updated += 1;
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(ks.clone()),
                    external_key: KeyRef::Known(l.external_key.clone()),
                    shadow: cols.shadow_of(e, &values),
                    deleted: false,
                });
            }
            None => candidates.push(Candidate {
                row: i,
                key: ks.clone(),
                values,
            }),
        }
    }

    let mut found: Vec<(Candidate, Vec<Value>, &'static str)> = Vec::new();
    let mut rest = candidates;
    // 1. Rows already carrying a link in the CRM link column.
    if let Some(lp) = cols.link.filter(|_| !insert_only) {
        let wanted: Vec<Value> = rest
            .iter()
            .filter_map(|c| {
                let v = &rows[c.row][lp];
                (!v.is_null())
                    .then(|| Value::from_key_string(&v.key_string(), &e.external_key.ty).ok())
                    .flatten()
            })
            .collect();
        let by_key = fetch_by(engine, ext_scan, &ext_scan.key, &wanted, 0).await?;
        let (hit, miss): (Vec<_>, Vec<_>) = rest.into_iter().partition(|c| {
            let v = &rows[c.row][lp];
            !v.is_null() && by_key.contains_key(&v.key_string())
        });
        for c in hit {
            let row = by_key[&rows[c.row][lp].key_string()].clone();
            found.push((c, row, "link_column"));
        }
        rest = miss;
    }
    // 2. Rows whose insert committed earlier but whose link did not.
    if let Some(id) = e.external_crm_id.as_ref().filter(|_| !insert_only) {
        let wanted: Vec<Value> = rest
            .iter()
            .filter_map(|c| {
                rows[c.row][cols.key]
                    .clone()
                    .coerce(&id.ty, None, false)
                    .ok()
            })
            .collect();
        let pos = ext_scan.position(&id.name).unwrap_or(0);
        let by_id = fetch_by(engine, ext_scan, &id.name, &wanted, pos).await?;
        let (hit, miss): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|c| by_id.contains_key(&c.key));
        for c in hit {
            let row = by_id[&c.key].clone();
            found.push((c, row, "crm_id"));
        }
        rest = miss;
    }
    // 3. match_on: exactly one row on each side.
    if !cols.matches.is_empty() && !rest.is_empty() && !insert_only {
        rest = match_rows(
            engine,
            e,
            cols,
            ext_scan,
            crm_bulk,
            deleted,
            &rows,
            rest,
            &mut found,
            &mut rejects,
        )
        .await?;
    }
    // An external row linked to another CRM row is not this row's.
    let ext_keys: Vec<String> = found.iter().map(|(_, r, _)| r[0].key_string()).collect();
    let taken = state.links_by_external(e.name(), &ext_keys).await?;
    for (mut c, ext_row, how) in found {
        let ext_key = ext_row[0].key_string();
        if let Some(raw) = &raw {
            match settle(e, &c.key, raw_values(e, cols, &outgoing, raw, c.row)?)? {
                Ok(values) => c.values = values,
                Err(why) => {
                    rejects.push((c.key.clone(), why));
                    continue;
                }
            }
        }
        if let Some(other) = taken
            .get(&ext_key)
            .filter(|l| l.crm_key != c.key && !l.deleted)
        {
            rejects.push((
                c.key.clone(),
                format!(
                    "external row {ext_key} (found by {how}) is already linked to CRM row {}",
                    other.crm_key
                ),
            ));
            continue;
        }
        let current: Shadow = outgoing
            .iter()
            .filter_map(|f| {
                ext_scan.position(&f.external.name).map(|p| {
                    let v = external_to_canonical(f, ext_row[p].clone());
                    (f.name.clone(), Base::Value(v))
                })
            })
            .collect();
        let set = diff(e, &current, &cols.values_of(e, &c.values));
        let crm_wins = match e.plan.conflict {
            _ if set.is_empty() => false,
            ConflictPolicy::CrmWins => true,
            ConflictPolicy::ExternalWins => false,
            ConflictPolicy::NewestWins => crm_is_newer(
                &rows[c.row][cols.change],
                engine.plan.crm.timezone,
                &ext_row[1],
                engine.plan.external.timezone,
            ),
            ConflictPolicy::Manual => {
                let fields: Vec<String> = set.iter().map(|(c, _)| c.clone()).collect();
                rejects.push((
                    c.key.clone(),
                    format!(
                        "matches external row {ext_key} (by {how}) but {} differ and conflict = \
                         \"manual\"; make them equal on one side and rerun",
                        fields.join(", ")
                    ),
                ));
                continue;
            }
        };
        match how {
            "link_column" => report.linked_by_link_column += 1,
            "crm_id" => report.linked_by_crm_id += 1,
            _ => report.linked_by_match += 1,
        }
        // The external row names its CRM row from now on.
        let name = e.external_crm_id.as_ref().and_then(|id| {
            let held = ext_scan.position(&id.name).map(|p| &ext_row[p]);
            let named = held.is_some_and(|v| !v.is_null() && v.key_string() == c.key);
            (!named).then(|| Value::from_key_string(&c.key, &id.ty).map(|v| (id.name.clone(), v)))
        });
        let name = match name.transpose() {
            Ok(name) => name,
            Err(err) => {
                rejects.push((
                    c.key.clone(),
                    format!("the CRM id does not fit external_crm_id_column: {err}"),
                ));
                continue;
            }
        };
        if crm_wins && e.plan.update_into_external {
            push_update(
                e,
                &mut updates,
                ext_row[0].clone(),
                set.into_iter().chain(name).collect(),
            );
            report.updated += 1;
        } else {
            if let Some(name) = name {
                push_update(e, &mut updates, ext_row[0].clone(), vec![name]);
            }
            report.unchanged += 1;
        }
        link_writes.push(LinkWrite {
            shadow: cols.shadow_of(e, &c.values),
            crm_key: KeyRef::Known(c.key),
            external_key: KeyRef::Known(ext_key),
            deleted: false,
        });
    }

    // The rest is inserted. Links of inserted rows whose CRM key has no
    // link row at all (not even a deleted one) are new for certain: they
    // are copied, not upserted, with the shadow written straight to JSON.
    let mut inserts: Rows = Vec::with_capacity(rest.len());
    let mut raw_inserts: Vec<Vec<Cell>> = Vec::new();
    let mut fresh: Vec<FreshLink> = Vec::with_capacity(rest.len());
    if let (Some(raw), true) = (&raw, e.plan.insert_into_external) {
        for c in rest {
            // Every candidate went through raw_row (a reject is none).
            let RawRow { mut cells, shadow } =
                ready.get_mut(c.row).and_then(Option::take).ok_or_else(|| {
                    schema_error(format!(
                        "internal error: CRM row {} of a raw chunk was not prepared",
                        c.key
                    ))
                })?;
            let insert = raw_inserts.len();
            if links.contains_key(&c.key) {
                // A deleted link: rewritten, from the decoded values.
                let values = match settle(e, &c.key, raw_values(e, cols, &outgoing, raw, c.row)?)? {
                    Ok(values) => values,
                    Err(why) => {
                        rejects.push((c.key.clone(), why));
                        continue;
                    }
                };
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(c.key),
                    external_key: KeyRef::Inserted(insert),
                    shadow: cols.shadow_of(e, &values),
                    deleted: false,
                });
            } else {
                fresh.push(FreshLink {
                    crm_key: c.key,
                    insert,
                    shadow,
                });
            }
            cells.extend(shape.crm_id(e, &rows[c.row][cols.key])?.map(Cell::Value));
            cells.extend((0..shape.constants.len()).map(Cell::Const));
            raw_inserts.push(cells);
        }
    } else if e.plan.insert_into_external {
        for c in rest {
            let crm_id = shape.crm_id(e, &rows[c.row][cols.key])?;
            let insert = inserts.len();
            if links.contains_key(&c.key) {
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(c.key),
                    external_key: KeyRef::Inserted(insert),
                    shadow: cols.shadow_of(e, &c.values),
                    deleted: false,
                });
            } else {
                fresh.push(FreshLink {
                    crm_key: c.key,
                    insert,
                    shadow: cols.shadow_of(e, &c.values),
                });
            }
            // The outgoing fields lead the inserted columns, in order.
            let mut values = c.values;
            values.reserve(shape.columns.len() - values.len());
            values.extend(crm_id);
            values.extend(shape.constants.iter().cloned());
            inserts.push(values);
        }
    } else {
        report.unchanged += rest.len() as u64;
    }
    report.inserted += (inserts.len() + raw_inserts.len()) as u64;
    report.rejected += rejects.len() as u64;

    let upsert = LinkBatch {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        links: link_writes,
    };
    let fresh = FreshLinks {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        links: fresh,
    };
    let cp = CheckpointWrite {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        direction: direction.to_string(),
        checkpoint: checkpoint.clone(),
    };
    let mut chunk = ChunkWrite {
        table: e.external_table.clone(),
        key: e.external_key.name.clone(),
        columns: shape.columns.clone(),
        inserts,
        raw_inserts: raw.as_ref().map(|raw| RawInserts {
            data: raw.data.clone(),
            constants: shape.constants.clone(),
            rows: raw_inserts,
        }),
        updates,
        links: Some(upsert),
        fresh_links: Some(fresh),
        checkpoint: Some(cp),
    };
    let deferred = if state_here {
        None
    } else {
        Some((
            chunk.links.take(),
            chunk.fresh_links.take(),
            chunk.checkpoint.take(),
        ))
    };
    tracing::debug!("chunk prepared in {:?}", t.elapsed());
    Ok(Prepared {
        chunk,
        deferred,
        rejects,
        rows: rows.len() as u64,
    })
}

/// Commits a prepared chunk with its links and checkpoint, after `turn`.
#[allow(clippy::too_many_arguments)]
async fn commit_chunk(
    engine: &Engine,
    e: &BoundEntity,
    ext_bulk: &dyn Bulk,
    p: Prepared,
    direction: &str,
    run: i64,
    turn: Option<Turn>,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<u64, EngineError> {
    let state = &*engine.state;
    let t = Instant::now();
    // The pairs this chunk links, when CRM rows name their external rows.
    let names = (e.crm_link.is_some() && e.plan.direction.external_to_crm()).then(|| {
        let (links, fresh) = match &p.deferred {
            Some((links, fresh, _)) => (links.as_ref(), fresh.as_ref()),
            None => (p.chunk.links.as_ref(), p.chunk.fresh_links.as_ref()),
        };
        let mut pairs: Vec<(String, KeyRef)> = Vec::new();
        for l in links.into_iter().flat_map(|b| &b.links) {
            if let KeyRef::Known(c) = &l.crm_key {
                pairs.push((c.clone(), l.external_key.clone()));
            }
        }
        for l in fresh.into_iter().flat_map(|f| &f.links) {
            pairs.push((l.crm_key.clone(), KeyRef::Inserted(l.insert)));
        }
        pairs
    });
    let keys = ext_bulk.write_chunk(&p.chunk, turn).await?;
    // The next chunk may commit now.
    let _ = done.send(());
    tracing::debug!("chunk written in {:?}", t.elapsed());
    drop(p.chunk);
    if let Some((upsert, fresh, cp)) = p.deferred {
        // Not atomic with the data: a crash here is repaired on rerun by
        // finding the inserted rows by external_crm_id_column.
        let fresh = match fresh {
            Some(f) => Some(LinkBatch {
                links: f
                    .links
                    .into_iter()
                    .map(|l| LinkWrite {
                        crm_key: KeyRef::Known(l.crm_key),
                        external_key: KeyRef::Inserted(l.insert),
                        shadow: l.shadow,
                        deleted: false,
                    })
                    .collect(),
                schema: f.schema,
                entity: f.entity,
            }),
            None => None,
        };
        for b in [upsert, fresh].into_iter().flatten() {
            let resolved = crate::endpoint::postgres::resolve_links(&b, &keys);
            state.write_links(&resolved).await?;
        }
        if let Some(cp) = cp {
            state
                .save_checkpoint(e.name(), direction, &cp.checkpoint)
                .await?;
        }
    }
    if let Some(pairs) = names {
        let pairs = pairs
            .into_iter()
            .map(|(c, x)| match x {
                KeyRef::Known(x) => (c, x),
                KeyRef::Inserted(i) => (c, keys[i].key_string()),
            })
            .collect();
        name_crm_rows(engine, e, pairs).await?;
    }
    state
        .record_rejects(e.name(), run, Side::Crm, &p.rejects)
        .await?;
    Ok(p.rows)
}

/// Writes the external key into the link column of each CRM row of
/// `pairs` (CRM key, external key) that does not hold it yet, so that the
/// CRM row names its external row. After the chunk's data: a run killed
/// in between leaves those CRM rows unnamed until the sync next reads
/// them (the pairs themselves are linked and complete).
async fn name_crm_rows(
    engine: &Engine,
    e: &BoundEntity,
    pairs: Vec<(String, String)>,
) -> Result<(), EngineError> {
    let Some(lc) = &e.crm_link else {
        return Ok(());
    };
    if pairs.is_empty() {
        return Ok(());
    }
    let mut scan = e.crm_scan();
    scan.filter = None;
    let keys: Vec<Value> = pairs
        .iter()
        .filter_map(|(c, _)| Value::from_key_string(c, &e.crm_key.ty).ok())
        .collect();
    let pos = scan.position(&lc.name);
    let holds: HashMap<String, String> = engine
        .crm
        .fetch(&scan, &scan.key, &keys)
        .await?
        .into_iter()
        .filter_map(|r| {
            let v = &r[pos?];
            (!v.is_null()).then(|| (r[0].key_string(), v.key_string()))
        })
        .collect();
    let mut batch = WriteBatch::new(e.crm_table.clone(), e.crm_key.name.clone());
    for (c, x) in pairs {
        if holds.get(&c) == Some(&x) {
            continue;
        }
        let (Ok(key), Some(v)) = (Value::from_key_string(&c, &e.crm_key.ty), e.link_value(&x))
        else {
            continue;
        };
        let v = v.map_err(|err| {
            schema_error(format!(
                "entity {:?}: external key {x:?} does not fit the CRM link column {}: {err}; \
                 widen the column (crmsync check compares the two types)",
                e.name(),
                lc.name
            ))
        })?;
        batch.updates.push(Update {
            key,
            set: vec![(lc.name.clone(), Assign::Value(v))],
        });
    }
    if !batch.is_empty() {
        engine.crm.apply(&batch, None).await?;
    }
    Ok(())
}

/// `newest_wins`: whether the CRM row changed after the external row,
/// comparing in UTC. A row without a change time is never the newer one.
fn crm_is_newer(
    crm: &Value,
    crm_zone: chrono_tz::Tz,
    ext: &Value,
    ext_zone: chrono_tz::Tz,
) -> bool {
    match (crm.to_utc(crm_zone), ext.to_utc(ext_zone)) {
        (Some(c), Some(x)) => c > x,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The external columns whose canonical value in `target` differs from
/// `base`, with `target`'s value.
fn diff(e: &BoundEntity, base: &Shadow, target: &Values) -> Vec<(String, Value)> {
    e.fields
        .iter()
        .filter(|f| f.plan.direction.crm_to_external())
        .filter_map(|f| {
            let new = target.get(&f.name)?;
            (!base.get(&f.name).is_some_and(|b| b.is(new)))
                .then(|| (f.external.name.clone(), new.clone()))
        })
        .collect()
}

fn push_update(e: &BoundEntity, updates: &mut Vec<Update>, key: Value, set: Vec<(String, Value)>) {
    let mut set: Vec<(String, Assign)> = set
        .into_iter()
        .map(|(c, v)| (c, Assign::Value(v)))
        .collect();
    set.push((e.external_change.name.clone(), Assign::Now));
    updates.push(Update { key, set });
}

/// External rows whose `column` is one of `values`, by the key string of
/// the value at `pos`.
async fn fetch_by(
    engine: &Engine,
    scan: &Scan,
    column: &str,
    values: &[Value],
    pos: usize,
) -> Result<HashMap<String, Vec<Value>>, EngineError> {
    if values.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = engine.external.fetch(scan, column, values).await?;
    Ok(rows.into_iter().map(|r| (r[pos].key_string(), r)).collect())
}

/// Links candidates that match exactly one unlinked external row, and that
/// row matches no other live CRM row; an ambiguous match is a reject.
/// Returns the candidates left for insert.
#[allow(clippy::too_many_arguments)]
async fn match_rows(
    engine: &Engine,
    e: &BoundEntity,
    cols: &CrmColumns,
    ext_scan: &Scan,
    crm_bulk: &dyn BulkSource,
    deleted: Option<&str>,
    rows: &Rows,
    rest: Vec<Candidate>,
    found: &mut Vec<(Candidate, Vec<Value>, &'static str)>,
    rejects: &mut Vec<(String, String)>,
) -> Result<Vec<Candidate>, EngineError> {
    let tuple_of = |r: &Vec<Value>, positions: &[usize]| -> Option<String> {
        let parts: Vec<String> = positions
            .iter()
            .map(|p| super::pass::match_part(&r[*p]))
            .collect();
        (!positions.iter().any(|p| r[*p].is_null())).then(|| parts.join("\u{1f}"))
    };
    let crm_pos: Vec<usize> = cols.matches.iter().map(|(p, _)| *p).collect();
    let ext_pos: Vec<usize> = cols
        .matches
        .iter()
        .filter_map(|(_, x)| ext_scan.position(x))
        .collect();
    let first_ext = &cols.matches[0].1;
    let first_ty = e
        .external_table
        .column(first_ext)
        .map(|c| c.ty.clone())
        .map_err(|_| schema_error(format!("match_on column {first_ext} is gone")))?;
    let firsts: Vec<Value> = rest
        .iter()
        .filter(|c| !rows[c.row][crm_pos[0]].is_null())
        .filter_map(|c| {
            rows[c.row][crm_pos[0]]
                .clone()
                .coerce(&first_ty, None, true)
                .ok()
        })
        .collect();
    // Candidates, as a sync finds them: admitted by the external filter,
    // not flagged deleted, carrying no CRM id (a row that does was looked
    // up by it already).
    let mut candidates = ext_scan.clone();
    candidates.filter = e.plan.external_filter.clone();
    let deleted_pos = e
        .external_deleted
        .as_ref()
        .and_then(|c| ext_scan.position(&c.name));
    let crm_id_pos = e
        .external_crm_id
        .as_ref()
        .and_then(|c| ext_scan.position(&c.name));
    let mut by_tuple: HashMap<String, Vec<Vec<Value>>> = HashMap::new();
    if !firsts.is_empty() {
        for r in engine
            .external
            .fetch(&candidates, first_ext, &firsts)
            .await?
        {
            if deleted_pos.is_some_and(|p| super::pass::is_deleted(Some(&r[p])))
                || crm_id_pos.is_some_and(|p| !r[p].is_null())
            {
                continue;
            }
            if let Some(t) = tuple_of(&r, &ext_pos) {
                by_tuple.entry(t).or_default().push(r);
            }
        }
    }
    // External rows already linked are not candidates.
    let ext_keys: Vec<String> = by_tuple
        .values()
        .flatten()
        .map(|r| r[0].key_string())
        .collect();
    let linked = engine.state.links_by_external(e.name(), &ext_keys).await?;
    for list in by_tuple.values_mut() {
        list.retain(|r| {
            linked
                .get(&r[0].key_string())
                .is_none_or(|l: &Link| l.deleted)
        });
    }
    // CRM rows sharing a match value with another live CRM row.
    let crm_names: Vec<String> = crm_pos
        .iter()
        .map(|p| cols.scan.columns[*p].clone())
        .collect();
    let crm_firsts: Vec<Value> = rest
        .iter()
        .map(|c| rows[c.row][crm_pos[0]].clone())
        .collect();
    let dup_rows = crm_bulk
        .duplicates(&cols.scan, &crm_names, &crm_firsts, deleted)
        .await?;
    let all: Vec<usize> = (0..crm_names.len()).collect();
    let dups: std::collections::HashSet<String> =
        dup_rows.iter().filter_map(|r| tuple_of(r, &all)).collect();
    let mut left = Vec::new();
    for c in rest {
        let Some(t) = tuple_of(&rows[c.row], &crm_pos) else {
            left.push(c);
            continue;
        };
        match by_tuple.get(&t).map(|v| v.as_slice()) {
            None | Some([]) => left.push(c),
            Some([one]) if !dups.contains(&t) => {
                let one = one.clone();
                found.push((c, one, "match_on"));
            }
            Some(list) => rejects.push((
                c.key.clone(),
                format!(
                    "match_on is ambiguous: it finds {} external row(s){}; link the row by hand \
                     (set the link column or remove the duplicate) and rerun",
                    list.len(),
                    if dups.contains(&t) {
                        " and other CRM rows share the same values"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn wall(h: u32, m: u32) -> Value {
        Value::Timestamp(
            NaiveDate::from_ymd_opt(2026, 7, 1)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap(),
        )
    }

    proptest::proptest! {
        /// A raw cell (PostgreSQL's binary form) seals as its decoded
        /// value does, or the shadows of a raw backfill would all look
        /// changed to the next sync.
        #[test]
        fn raw_cells_seal_as_their_decoded_values(
            text in "\\PC*",
            int in proptest::num::i64::ANY,
            flag in proptest::bool::ANY,
        ) {
            let text_ty = SqlType::Text { max_len: None, unit: crate::value::LengthUnit::Chars, fixed: false };
            let cases: Vec<(SqlType, Vec<u8>, Value)> = vec![
                (text_ty, text.as_bytes().to_vec(), Value::Text(text.clone())),
                (SqlType::Int { bytes: 8 }, int.to_be_bytes().to_vec(), Value::Int(int)),
                (SqlType::Int { bytes: 4 }, (int as i32).to_be_bytes().to_vec(), Value::Int((int as i32).into())),
                (SqlType::Int { bytes: 2 }, (int as i16).to_be_bytes().to_vec(), Value::Int((int as i16).into())),
                (SqlType::Bool, vec![u8::from(flag)], Value::Bool(flag)),
            ];
            for (ty, cell, v) in cases {
                let raw = raw_sealing(&ty, Some(&cell), || unreachable!("decoded")).unwrap();
                proptest::prop_assert_eq!(raw, shadow::sealing(&v, &v));
            }
            proptest::prop_assert_eq!(
                raw_sealing(&SqlType::Bool, None, || unreachable!()).unwrap(),
                Sealing::Null
            );
        }
    }

    #[test]
    fn newest_wins_compares_both_sides_in_utc() {
        let london = chrono_tz::Europe::London; // UTC+1 in July
        let utc = chrono_tz::UTC;
        // 12:30 London is 11:30 UTC: older than 12:00 UTC.
        assert!(!crm_is_newer(&wall(12, 30), london, &wall(12, 0), utc));
        // 13:30 London is 12:30 UTC: newer.
        assert!(crm_is_newer(&wall(13, 30), london, &wall(12, 0), utc));
        let tz = Value::TimestampTz(
            chrono::DateTime::parse_from_rfc3339("2026-07-01T11:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
        );
        assert!(crm_is_newer(&wall(12, 30), london, &tz, utc));
        assert!(!crm_is_newer(&Value::Null, london, &tz, utc));
        assert!(crm_is_newer(&wall(0, 0), london, &Value::Null, utc));
    }
}
