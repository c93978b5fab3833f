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

mod chunk;
mod columns;
mod raw;

use super::mapping::{FieldProblem, Layout};
use super::retry::retrying;
use super::{later, Engine, EngineError, Mode};
use crate::endpoint::bulk::{
    Bulk, BulkSource, CheckpointWrite, ChunkWrite, FreshLinks, RawRows, Rows, StreamRequest, Turn,
};
use crate::endpoint::{EndpointError, Scan};
use crate::plan::{BackfillDirection, Side, Transform};
use crate::progress::{peak_rss_bytes, Progress};
use crate::schema::{BoundEntity, BoundField};
use crate::state::{Checkpoint, LinkBatch, Watermark};
use crate::value::Value;
use chunk::{commit_chunk, prepare_chunk};
use columns::{crm_columns, external_scan, insert_shape, CrmColumns, InsertShape};
use futures_util::stream::{FuturesOrdered, StreamExt};
use raw::{passes_raw, prepare_raw};
use serde::Serialize;
use std::time::Instant;

/// Rows per chunk when `--chunk-rows` is not given.
pub const DEFAULT_CHUNK_ROWS: usize = 8_000;
/// Chunks read ahead of the writer.
pub const READ_AHEAD: usize = 1;
/// Chunks written at once, each on its own connection and in its own
/// transaction; they commit in order.
pub const WRITERS: usize = 2;

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
    #[error(
        "entity {entity:?}: the external database refused every one of the {rows} rows of a \
         chunk ({reason}), so the cause is not in the rows (a NOT NULL column nothing fills, a \
         constraint no row meets); fix the table or the mapping and run backfill again. Those \
         rows are rejects that every sync retries"
    )]
    EveryRowRefused {
        entity: String,
        rows: u64,
        reason: String,
    },
}

impl BackfillError {
    /// A wrong direction is bad usage; a table that refuses every row
    /// fails the run.
    pub fn exit_code(&self) -> i32 {
        match self {
            BackfillError::WrongDirection { .. } => crate::exit::BAD_CONFIG,
            BackfillError::EveryRowRefused { .. } => crate::exit::FAILED,
        }
    }
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
    /// Source rows written with a reference NULL because its parent (in
    /// the same cycle) was not linked yet: revisited once the cycle's
    /// other entities are backfilled.
    #[serde(skip)]
    pub deferred: Vec<(Side, String)>,
}

impl BackfillReport {
    /// Adds the counts of a committed chunk; returns its rows read.
    fn absorb(&mut self, chunk: BackfillReport) -> u64 {
        self.read += chunk.read;
        self.linked_by_link_column += chunk.linked_by_link_column;
        self.linked_by_crm_id += chunk.linked_by_crm_id;
        self.linked_by_match += chunk.linked_by_match;
        self.already_linked += chunk.already_linked;
        self.updated += chunk.updated;
        self.inserted += chunk.inserted;
        self.rejected += chunk.rejected;
        self.unchanged += chunk.unchanged;
        self.chunks += chunk.chunks;
        chunk.read
    }
}

impl Engine {
    /// Backfills each selected entity.
    pub async fn backfill(
        &self,
        only: Option<&str>,
        opts: &BackfillOptions,
    ) -> Result<Vec<BackfillReport>, EngineError> {
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
            let lock = self.lock(e).await?;
            let run = self.state.start_run(e.name(), "backfill").await?;
            let mut report = BackfillReport {
                entity: e.name().to_string(),
                direction: opts.direction.as_str().to_string(),
                ..Default::default()
            };
            // Keys of referenced entities are translated chunk by chunk;
            // a reference of a cycle that is written NULL first and
            // revisited goes through the sync's writes, which know how.
            let defers = e.fields.iter().any(|f| f.deferrable);
            let result = match opts.direction {
                BackfillDirection::CrmToExternal if defers => {
                    through_sync(self, e, Side::Crm, opts, run, &mut report, None).await
                }
                BackfillDirection::CrmToExternal => {
                    to_external_setting_aside(self, e, opts, run, &mut report).await
                }
                BackfillDirection::ExternalToCrm => {
                    through_sync(self, e, Side::External, opts, run, &mut report, None).await
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
        // Rows of a cycle written with a reference NULL get it now that
        // every entity of the cycle is backfilled.
        for (e, report) in entities.iter().zip(out.iter_mut()) {
            if report.deferred.is_empty() {
                continue;
            }
            let lock = self.lock(e).await?;
            let run = self.state.start_run(e.name(), "backfill").await?;
            let view = super::StateView::Store(&*self.state);
            let mut done = super::EntityReport {
                deferred: std::mem::take(&mut report.deferred),
                ..Default::default()
            };
            let result =
                super::pass::revisit_deferred(self, e, &view, run, Mode::Apply, &mut done).await;
            report.updated += done.updated + done.crm_updated;
            report.rejected += done.rejected;
            let outcome = match &result {
                Ok(()) if done.rejected > 0 => "finished with rejects",
                Ok(()) => "ok",
                Err(_) => "failed",
            };
            let summary = serde_json::to_value(&*report).unwrap_or_default();
            self.state.finish_run(run, outcome, &summary).await?;
            lock.release().await;
            result?;
        }
        Ok(out)
    }
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
/// serves every external → CRM backfill, a CRM → external one whose
/// target has no bulk interface, and one whose fields translate references. Each chunk writes the target
/// first, then the links; its checkpoint follows. A crash in between is
/// repaired on rerun: the rows a lost chunk inserted carry their source key
/// (the CRM link column, or the external CRM id column) and are linked, not
/// inserted again.
///
/// With `chunks`, it writes at most that many chunks and returns with the
/// checkpoint saved and the backfill not finished, even when no rows were
/// left.
async fn through_sync(
    engine: &Engine,
    e: &BoundEntity,
    source: Side,
    opts: &BackfillOptions,
    run: i64,
    report: &mut BackfillReport,
    chunks: Option<u64>,
) -> Result<(), EngineError> {
    let started = Instant::now();
    let direction = opts.direction.as_str();
    let state = &*engine.state;
    let scan = e.scan(source);
    let (endpoint, table) = (&engine.endpoints[source], &e.side[source].table);
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
    let defer = e.cycle.is_some();
    let pages = super::pass::BackfillPages::new(engine, e, &view, run, source, layout, defer);
    let chunk = opts.chunk_rows.max(1);
    let estimate = (table.row_estimate.max(0) as u64).saturating_sub(report.rows_done_before);
    let mut progress = Progress::start(&format!("backfill {}", e.name()), estimate);
    let mut done = super::EntityReport {
        entity: e.name().to_string(),
        ..Default::default()
    };
    let mut written = 0u64;
    loop {
        let after = checkpoint.last_key.as_ref();
        let rows = retrying((e.name(), "the read"), || {
            endpoint.read_page(&scan, after, chunk)
        })
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
        written += 1;
        progress.add(rows.len() as u64);
        if rows.len() < chunk || chunks.is_some_and(|n| written >= n) {
            break;
        }
    }
    progress.finish();
    report.read += done.read;
    report.linked += done.adopted;
    report.rejected += done.rejected;
    report.unchanged += done.unchanged;
    report.deferred.append(&mut done.deferred);
    match source {
        Side::External => {
            report.inserted += done.crm_inserted;
            report.updated += done.crm_updated;
        }
        Side::Crm => {
            report.inserted += done.inserted;
            report.updated += done.updated;
        }
    }
    // A bounded run leaves the backfill unfinished, for its caller to go on.
    if chunks.is_some() {
        return Ok(());
    }
    // The next sync reads the source's changes from the snapshot on.
    finish(engine, e, source, opts, checkpoint, started, report).await
}

/// What every chunk of one CRM → external backfill shares, built once by
/// [`to_external`] and lent to each step that prepares or commits a chunk.
struct ChunkCtx<'a> {
    engine: &'a Engine,
    e: &'a BoundEntity,
    cols: &'a CrmColumns,
    /// The external read used to find existing rows (see [`external_scan`]).
    ext_scan: &'a Scan,
    shape: &'a InsertShape,
    crm_bulk: &'a dyn BulkSource,
    /// The CRM deleted-flag column, if any.
    deleted: Option<&'a str>,
    /// Whether links of this entity may exist for rows this run has not
    /// written (see [`to_external`]).
    links_before: bool,
    /// The backfill direction, as the checkpoint names it.
    direction: &'a str,
    /// Whether the state store lives in the external database.
    state_here: bool,
    /// The run whose rejects the chunks record.
    run: i64,
    /// The fields holding another entity's keys, with that entity: their
    /// CRM values are translated to its external keys chunk by chunk.
    ref_fields: &'a [(&'a BoundField, String)],
}

/// One CRM → external backfill of entity `e`.
/// A CRM → external backfill in bulk ([`to_external`]) that goes on when
/// the database refuses a chunk for one of its rows (a constraint, a
/// value out of range): the chunk is rolled back whole, so it is written
/// again through the sync's writes, which set each refused row aside as a
/// reject naming it and write the others; then the bulk copy resumes
/// from the checkpoint after it.
async fn to_external_setting_aside(
    engine: &Engine,
    e: &BoundEntity,
    opts: &BackfillOptions,
    run: i64,
    report: &mut BackfillReport,
) -> Result<(), EngineError> {
    let started = Instant::now();
    let mut opts = opts.clone();
    let mut first: Option<(bool, u64)> = None;
    loop {
        let r = to_external(engine, e, &opts, run, report, started).await;
        // Whether this run resumed an interrupted one is as it first found.
        let (resumed, before) = *first.get_or_insert((report.resumed, report.rows_done_before));
        (report.resumed, report.rows_done_before) = (resumed, before);
        match r {
            Err(EngineError::Endpoint(err)) if err.refused_row() => {
                let reason = crate::causes::with_causes(&err);
                tracing::warn!(
                    "entity {:?}: the external database refused a chunk ({reason}); its rows are \
                     written in halves and refused rows set aside",
                    e.name(),
                );
                // From here on the checkpoint is resumed, never restarted.
                opts.restart = false;
                let (read, rejected) = (report.read, report.rejected);
                through_sync(engine, e, Side::Crm, &opts, run, report, Some(1)).await?;
                // Every row refused: the cause is the table or the
                // mapping, and setting each row aside would take hours.
                let rows = report.read - read;
                if rows > 1 && report.rejected - rejected == rows {
                    return Err(BackfillError::EveryRowRefused {
                        entity: e.name().to_string(),
                        rows,
                        reason,
                    }
                    .into());
                }
            }
            other => return other,
        }
    }
}

async fn to_external(
    engine: &Engine,
    e: &BoundEntity,
    opts: &BackfillOptions,
    run: i64,
    report: &mut BackfillReport,
    started: Instant,
) -> Result<(), EngineError> {
    let direction = opts.direction.as_str();
    let Some(ext_bulk) = engine.endpoints.external.bulk() else {
        tracing::info!(
            "entity {:?}: the external database has no bulk interface: \
             the rows are written through the sync's batched writes",
            e.name()
        );
        return through_sync(engine, e, Side::Crm, opts, run, report, None).await;
    };
    let ext_bulk: &dyn Bulk = ext_bulk;
    let crm_bulk = engine.endpoints.crm.bulk_source();
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
            let now = engine.endpoints.crm.clock(&e.side.crm.change.ty).await?;
            links_before = state.has_links(e.name()).await?;
            let insert_only =
                state_here && !links_before && !ext_bulk.has_rows(&e.side.external.table).await?;
            if insert_only {
                tracing::info!(
                    "entity {:?}: {} is empty and nothing is linked yet: every row is inserted \
                     without looking for a counterpart",
                    e.name(),
                    e.side.external.table.qualified()
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
    let deleted = e.side.crm.deleted.as_ref().map(|d| d.name.clone());
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
    // Keys of referenced entities are decoded to be translated.
    let ref_fields = super::references::reference_fields(&engine.plan.entities, e);
    let crm_raw = engine.endpoints.crm.bulk().filter(|b| {
        state_here
            && e.plan.insert_into_external
            && b.kind() == ext_bulk.kind()
            && b.moves_raw()
            && ref_fields.is_empty()
    });
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
    let ctx = ChunkCtx {
        engine,
        e,
        cols: &cols,
        ext_scan: &ext_scan,
        shape: &shape,
        crm_bulk,
        deleted: deleted.as_deref(),
        links_before,
        direction,
        state_here,
        run,
        ref_fields: &ref_fields,
    };
    let mut rx = match crm_raw {
        Some(b) => Source::Raw(b.stream_raw(req)),
        None => Source::Values(crm_bulk.stream(req)),
    };
    let estimate =
        (e.side.crm.table.row_estimate.max(0) as u64).saturating_sub(report.rows_done_before);
    let mut progress = Progress::start(&format!("backfill {}", e.name()), estimate);
    // Up to WRITERS chunks are written at once while the next one is
    // linked and resolved. A chunk commits only after the one before it
    // (its `turn`), so the checkpoint only moves forward and a crash never
    // leaves a gap behind it. With the state store in the CRM database the
    // links follow the data in separate writes, and one writer keeps them
    // in order too.
    // The next chunk is read and prepared while the writers are busy, and
    // handed to the first writer that frees up.
    let writers = if state_here { WRITERS } else { 1 };
    let mut inflight = FuturesOrdered::new();
    let mut prev: Option<Turn> = None;
    let written = async {
        loop {
            let prepared = {
                let next = async {
                    match rx.recv().await? {
                        None => Ok(None),
                        Some(chunk) => {
                            let (n, last) = chunk.extent(cols.key)?;
                            checkpoint.last_key = last;
                            checkpoint.rows_done += n as i64;
                            // Counted when the chunk commits: a chunk rolled
                            // back is written again, and counted then.
                            let mut counts = BackfillReport::default();
                            let mut p = match chunk {
                                Chunk::Raw(rows) if checkpoint.insert_only => {
                                    prepare_raw(&ctx, &rows, &checkpoint, &mut counts)?
                                }
                                chunk => {
                                    prepare_chunk(&ctx, chunk, &checkpoint, &mut counts).await?
                                }
                            };
                            counts.read = n as u64;
                            counts.chunks = 1;
                            p.counts = counts;
                            Ok::<_, EngineError>(Some(p))
                        }
                    }
                };
                let mut next = std::pin::pin!(next);
                loop {
                    tokio::select! {
                        r = &mut next => break r?,
                        Some(w) = inflight.next(), if !inflight.is_empty() => {
                            progress.add(report.absorb(w?));
                        }
                    }
                }
            };
            let Some(p) = prepared else { break };
            while inflight.len() >= writers {
                if let Some(w) = inflight.next().await {
                    progress.add(report.absorb(w?));
                }
            }
            let (done, turn) = tokio::sync::oneshot::channel();
            inflight.push_back(commit_chunk(&ctx, p, prev.replace(turn), done));
        }
        while let Some(w) = inflight.next().await {
            progress.add(report.absorb(w?));
        }
        Ok::<(), EngineError>(())
    }
    .await;
    if let Err(err) = written {
        // The chunks still in flight finish on their own: one whose turn
        // never comes rolls back, one that may still commit does. Dropping
        // them instead would abort their writes mid-statement and hand
        // their connections back to the pool mid-protocol, which the
        // writes after a refused chunk would then meet.
        while let Some(w) = inflight.next().await {
            if let Ok(counts) = w {
                progress.add(report.absorb(counts));
            }
        }
        return Err(err);
    }
    progress.finish();
    // Fresh statistics after the bulk load: without them the planner takes
    // the new links table for empty and the next sync scans it whole.
    analyze(engine, e, ext_bulk, state_here).await?;
    report.linked = report.linked_by_link_column + report.linked_by_crm_id + report.linked_by_match;
    // The next sync starts where the snapshot began (minus its overlap).
    finish(engine, e, Side::Crm, opts, checkpoint, started, report).await
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
        engine.endpoints.crm.bulk()
    };
    // The columns the sync and the backfill's lookups search by.
    let mut cols: Vec<String> = [Some(&e.side.external.key), e.external_crm_id.as_ref()]
        .into_iter()
        .flatten()
        .chain([&e.side.external.change])
        .chain(e.side.external.deleted.as_ref())
        .map(|c| c.name.clone())
        .collect();
    for (_, x) in &e.plan.match_on {
        if let Ok(x) = e.side.external.table.column(x) {
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
        ext_bulk.analyze(Some((&e.side.external.table, &cols)), None),
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
    /// What the chunk counts for the report once it has committed.
    counts: BackfillReport,
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
