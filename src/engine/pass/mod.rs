//! One pass over one side's change window: read it page by page, merge
//! each changed row with its linked counterpart against the shadow, link or
//! insert unlinked rows, carry deletes, and write both sides.
//!
//! Write order per page: first the side that does not hold the state
//! store, then the state side together with the links in one transaction.
//! A crash in between leaves shadows behind the data, which the next run
//! merges as "both sides changed to the same value": nothing is lost or
//! duplicated.

mod linked;
mod matching;
mod unlinked;
mod write;

use super::mapping::{
    canonical_to_crm, external_to_canonical, map_crm_row, FieldProblem, Layout, Values,
};
use super::merge::View;
use super::references::{reference_fields, Refs};
use super::retry::Retry;
use super::{later, window, Engine, EngineError, EntityReport, Mode, StateView};
use crate::endpoint::{Lower, Scan, WriteBatch};
use crate::plan::{ExternalDelete, Side};
use crate::schema::BoundEntity;
use crate::state::{ConflictRecord, LinkWrite, Watermark};
use crate::value::{SqlType, Value};
use linked::is_echo;
use std::collections::{HashMap, HashSet};

pub(super) use matching::match_part;

/// One incremental pass of entity `e` over the change window of `source`.
/// With `defer`, rows written with a deferred reference NULL are left in
/// `report.deferred` for [`revisit`], not counted as rejected.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    engine: &Engine,
    e: &BoundEntity,
    state: &StateView<'_>,
    run: i64,
    mode: Mode,
    source: Side,
    defer: bool,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    let scan = e.scan(source);
    let ep = &*engine.endpoints[source];
    let layout = engine.layout(e, state.writes()).await?;
    let ctx = Ctx::new(engine, e, state, run, mode, source, layout, defer);
    // Rows rejected earlier are retried first, by key.
    let open = state.open_rejects(e.name(), source).await?;
    let keys: Vec<String> = open.into_iter().map(|r| r.key).collect();
    ctx.retry_keys(&scan, &keys, report).await?;
    let mark = state.watermark(e.name(), source).await?;
    let zone = engine.plan.connection(source).timezone;
    let (lower, upto, read_at) = window(
        ep,
        &scan,
        mark.as_ref(),
        e.plan.settle,
        e.plan.overlap,
        zone,
    )
    .await?;
    let batch = e.plan.batch_size;
    // A first read sorts by change time only where an index has that order.
    let sorts = !scan.children.is_empty() || !scan.table.has_index_starting_with(&scan.change);
    if matches!(lower, Lower::Start) && sorts {
        let first = read_all(&ctx, ep, &scan, &upto, batch, report).await?;
        if let (Some(m), true) = (&first, state.writes()) {
            state.store().set_watermark(e.name(), source, m).await?;
        }
        if source == Side::Crm {
            report.watermark = first.as_ref().map(shown);
        }
        return Ok(());
    }
    let mut current = mark.clone();
    let mut rows = ep.read_changes(&scan, &lower, &upto, batch).await?;
    loop {
        let n = rows.len();
        let Some(last) = rows.last() else { break };
        let next = Watermark {
            ts: last[1].clone(),
            key: last[0].clone(),
            read_at: Some(read_at.clone()),
        };
        // The next page is read while this one is processed. Its rows
        // cannot be among this page's writes: those are stamped after
        // `upto`, outside the window.
        let after = Lower::After {
            ts: next.ts.clone(),
            key: next.key.clone(),
        };
        let ahead = async {
            if n < batch {
                Ok(None)
            } else {
                ep.read_changes(&scan, &after, &upto, batch).await.map(Some)
            }
        };
        let none = HashSet::new();
        let (done, ahead) = tokio::join!(ctx.page(&scan, &rows, &none, report), ahead);
        done?;
        let advanced = later(current.as_ref(), next);
        if state.writes() && Some(&advanced) != current.as_ref() {
            state
                .store()
                .set_watermark(e.name(), source, &advanced)
                .await?;
        }
        current = Some(advanced);
        match ahead? {
            Some(more) => rows = more,
            None => break,
        }
    }
    // Every row of the window has been processed: the position holds for
    // what had committed when this read began, even if no row moved it (a
    // re-read page below the old watermark keeps the old read time until
    // then).
    if let Some(mut done) = current.clone() {
        done.read_at = Some(read_at);
        if state.writes() && Some(&done) != current.as_ref() {
            state.store().set_watermark(e.name(), source, &done).await?;
        }
        current = Some(done);
    }
    if source == Side::Crm {
        report.watermark = current.as_ref().map(shown);
    }
    Ok(())
}

/// A watermark as the report shows it.
fn shown(m: &Watermark) -> String {
    format!("{} / {}", m.ts.display(), m.key.display())
}

/// A side's first read, with no watermark yet, when no index gives the
/// change time's order (no index starts with the change column, or child
/// rows make the change time a computed one): the whole table in key
/// order, a page at a time. Each page is a range of the key's index, where
/// an order by change time would sort the whole table for every page.
/// Rows the window leaves out (no change time, or stamped after `upto`)
/// are left out here too.
///
/// The watermark it returns holds `upto` and the largest key, without a
/// read time, as a backfill leaves it: the next read starts `overlap`
/// before `upto`, so a row changed or committed while this one ran is
/// read then. A run that dies before the end reads from the start again;
/// the rows it wrote are then equal to their shadows.
async fn read_all(
    ctx: &Ctx<'_>,
    ep: &dyn crate::endpoint::Endpoint,
    scan: &Scan,
    upto: &Value,
    batch: usize,
    report: &mut EntityReport,
) -> Result<Option<Watermark>, EngineError> {
    let in_window = |r: &Vec<Value>| {
        !r[1].is_null() && r[1].cmp_same(upto) != Some(std::cmp::Ordering::Greater)
    };
    let none = HashSet::new();
    let mut rows = ep.read_page(scan, None, batch).await?;
    let mut last = None;
    loop {
        let n = rows.len();
        let Some(tail) = rows.last() else { break };
        let after = tail[0].clone();
        last = Some(after.clone());
        // The next page is read while this one is processed.
        let ahead = async {
            if n < batch {
                Ok(None)
            } else {
                ep.read_page(scan, Some(&after), batch).await.map(Some)
            }
        };
        rows.retain(in_window);
        let work = async {
            if rows.is_empty() {
                Ok(())
            } else {
                ctx.page(scan, &rows, &none, report).await
            }
        };
        let (done, ahead) = tokio::join!(work, ahead);
        done?;
        match ahead? {
            Some(more) => rows = more,
            None => break,
        }
    }
    Ok(last.map(|key| Watermark {
        ts: upto.clone(),
        key,
        read_at: None,
    }))
}

/// The rows of `e` a run wrote with a deferred reference NULL
/// (`report.deferred`, taken), read again by key once the parents they
/// wait for may be linked: each goes through like a retried reject, its
/// reference filled in, or stays a reject when its parent is still not
/// linked. Their second read is not counted.
pub(super) async fn revisit_deferred(
    engine: &Engine,
    e: &BoundEntity,
    state: &StateView<'_>,
    run: i64,
    mode: Mode,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    let deferred = std::mem::take(&mut report.deferred);
    if deferred.is_empty() {
        return Ok(());
    }
    let layout = engine.layout(e, state.writes()).await?;
    let read = report.read;
    for source in Side::BOTH {
        let keys: Vec<String> = deferred
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, k)| k.clone())
            .collect();
        let ctx = Ctx::new(engine, e, state, run, mode, source, layout.clone(), false);
        ctx.retry_keys(&e.scan(source), &keys, report).await?;
    }
    report.read = read;
    Ok(())
}

/// One page of a backfill through the sync's writes: `source` rows read in
/// key order, merged with their linked rows, linked to existing ones, or
/// inserted by the target's rules, exactly as a sync pass handles a page
/// of changed rows of that side.
pub(super) struct BackfillPages<'a>(Ctx<'a>);

impl<'a> BackfillPages<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        e: &'a BoundEntity,
        state: &'a StateView<'a>,
        run: i64,
        source: Side,
        layout: Layout,
        defer: bool,
    ) -> Self {
        BackfillPages(Ctx::new(
            engine,
            e,
            state,
            run,
            Mode::Apply,
            source,
            layout,
            defer,
        ))
    }

    pub(super) async fn page(
        &self,
        rows: &[Vec<Value>],
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let ctx = &self.0;
        ctx.page(&ctx.e.scan(ctx.source), rows, &HashSet::new(), report)
            .await
    }
}

/// The value that marks a row deleted in a flag column of type `ty`.
fn deleted_flag(ty: &SqlType, deleted: bool) -> Value {
    match ty {
        SqlType::Bool => Value::Bool(deleted),
        SqlType::Int { .. } | SqlType::Decimal { .. } => Value::Int(i64::from(deleted)),
        _ => {
            if deleted {
                Value::Text("Y".into())
            } else {
                Value::Null
            }
        }
    }
}

pub(super) fn is_deleted(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Int(0)) | Some(Value::Bool(false)) => false,
        Some(Value::Text(s)) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "y" | "1" | "t" | "true"
        ),
        Some(_) => true,
    }
}

fn bad_link(e: &BoundEntity, key: &str, err: impl std::fmt::Display) -> EngineError {
    EngineError::BadLink {
        entity: e.name().to_string(),
        key: key.to_string(),
        reason: err.to_string(),
    }
}

/// Everything one page decided, to be written at the end.
struct Writes {
    crm: WriteBatch,
    ext: WriteBatch,
    links: Vec<LinkWrite>,
    /// CRM rows whose link column gets the key of the n-th external insert.
    link_column_after_insert: Vec<(Value, usize)>,
    /// External rows whose CRM-id column gets the key of the n-th CRM
    /// insert.
    crm_id_after_insert: Vec<(Value, usize)>,
    rejects: Vec<(String, String)>,
    cleared: Vec<String>,
    conflicts: Vec<ConflictRecord>,
    settled: Vec<(String, String)>,
}

/// A row read from one side, with what the pass needs of it.
struct Row<'r> {
    values: &'r [Value],
    scan: &'r Scan,
}

impl Row<'_> {
    fn get(&self, column: &str) -> Value {
        self.scan
            .position(column)
            .map(|p| self.values[p].clone())
            .unwrap_or(Value::Null)
    }

    /// Whether this row of `side` is flagged deleted.
    fn deleted(&self, e: &BoundEntity, side: Side) -> bool {
        e.side[side]
            .deleted
            .as_ref()
            .is_some_and(|d| is_deleted(Some(&self.get(&d.name))))
    }
}

/// What a pass over one side's window works with.
struct Ctx<'a> {
    engine: &'a Engine,
    e: &'a BoundEntity,
    state: &'a StateView<'a>,
    run: i64,
    mode: Mode,
    source: Side,
    /// The layout shadows are sealed in.
    layout: Layout,
    /// The fields holding another entity's keys, with that entity.
    ref_fields: Vec<(&'a crate::schema::BoundField, String)>,
    /// Their keys on the page being processed, translated both ways.
    refs: std::sync::Mutex<Refs>,
    /// Whether rows written with a deferred reference NULL are revisited
    /// later in this run (a full run of the entity's cycle): they are
    /// counted as deferred then, not rejected.
    defer: bool,
}

impl<'a> Ctx<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        engine: &'a Engine,
        e: &'a BoundEntity,
        state: &'a StateView<'a>,
        run: i64,
        mode: Mode,
        source: Side,
        layout: Layout,
        defer: bool,
    ) -> Self {
        Ctx {
            engine,
            e,
            state,
            run,
            mode,
            source,
            layout,
            ref_fields: reference_fields(&engine.plan.entities, e),
            refs: Default::default(),
            defer,
        }
    }

    /// The source rows with keys `keys` read again and processed as
    /// retried rejects (a reject that goes through is closed), a batch at
    /// a time.
    async fn retry_keys(
        &self,
        scan: &Scan,
        keys: &[String],
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        if keys.is_empty() {
            return Ok(());
        }
        let values: Vec<Value> = keys
            .iter()
            .filter_map(|k| self.e.key_value(self.source, k).ok())
            .collect();
        let retried: HashSet<String> = keys.iter().cloned().collect();
        for chunk in values.chunks(self.e.plan.batch_size.max(1)) {
            let rows = self.engine.endpoints[self.source]
                .fetch(scan, &scan.key, chunk)
                .await?;
            self.page(scan, &rows, &retried, report).await?;
        }
        Ok(())
    }
}

impl Ctx<'_> {
    /// The canonical form of a CRM row, and how many values were cut to
    /// fit the external columns.
    fn crm_view(&self, row: &Row<'_>) -> Result<(View, usize), FieldProblem> {
        let e = self.e;
        let mapped = map_crm_row(e.fields.iter(), e.to_external, |f| row.get(&f.crm.name))?;
        Ok((
            View {
                values: mapped.values,
                changed_at: row
                    .get(&e.side.crm.change.name)
                    .to_utc(self.engine.plan.crm.timezone),
            },
            mapped.truncated,
        ))
    }

    /// The canonical view of a `side` row.
    fn view(&self, side: Side, row: &Row<'_>) -> Result<View, FieldProblem> {
        match side {
            Side::Crm => self.crm_view(row).map(|(v, _)| v),
            Side::External => Ok(self.ext_view(row)),
        }
    }

    fn ext_view(&self, row: &Row<'_>) -> View {
        let e = self.e;
        let mut values = Values::new();
        for f in &e.fields {
            values.insert(
                f.name.clone(),
                external_to_canonical(f, row.get(&f.external.name)),
            );
        }
        View {
            values,
            changed_at: row
                .get(&e.side.external.change.name)
                .to_utc(self.engine.plan.external.timezone),
        }
    }

    /// Whether any field can flow from `side` (so its rows must be read to
    /// merge).
    fn flows_from(&self, side: Side) -> bool {
        self.e.fields.iter().any(|f| f.plan.direction.from(side))
    }

    fn other_scan(&self) -> Scan {
        let mut s = self.e.scan(self.source.other());
        // The link, not the filter, decides what belongs to a pair.
        s.filter = None;
        s
    }

    /// Whether the entity writes into CRM (so the CRM link column can
    /// name the external row).
    fn writes_crm(&self) -> bool {
        self.e.plan.direction.external_to_crm()
    }

    /// Whether the entity writes into the external table (so its CRM-id
    /// column can name the CRM row).
    fn writes_external(&self) -> bool {
        self.e.plan.direction.crm_to_external()
    }

    /// Diffs one page of source rows and writes the result. When a
    /// database refuses a row (a constraint, a value it cannot take), the
    /// page is written again in halves, down to single rows, and only the
    /// refused rows are set aside as rejects, to be retried on later runs.
    async fn page(
        &self,
        scan: &Scan,
        rows: &[Vec<Value>],
        retried: &HashSet<String>,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let before = report.clone();
        // The page is idempotent: after a deadlock, serialization failure
        // or dropped connection it is written again from the start.
        let mut retry = Retry::new();
        let result = loop {
            let r = self.page_once(scan, rows, retried, report).await;
            if !retry.again(&r, (self.e.name(), "the page")).await {
                break r;
            }
            *report = before.clone();
        };
        match result {
            Err(EngineError::Endpoint(err)) if err.refused_row() && self.mode == Mode::Apply => {
                *report = before;
                if let [row] = rows {
                    let key = row[0].key_string();
                    let reason = crate::causes::with_causes(&err);
                    tracing::warn!("entity {:?}: row {key} set aside: {reason}", self.e.name());
                    report.read += 1;
                    report.rejected += 1;
                    self.state
                        .store()
                        .record_rejects(self.e.name(), self.run, self.source, &[(key, reason)])
                        .await?;
                    return Ok(());
                }
                // Halves, down to the refused rows: a few rows among
                // thousands cost a few transactions each, not one per row.
                let (left, right) = rows.split_at(rows.len() / 2);
                for half in [left, right] {
                    Box::pin(self.page(scan, half, retried, report)).await?;
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn page_once(
        &self,
        scan: &Scan,
        rows: &[Vec<Value>],
        retried: &HashSet<String>,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        report.read += rows.len() as u64;
        let keys: Vec<String> = rows.iter().map(|r| r[0].key_string()).collect();
        let links = self.state.links_by(self.source, e.name(), &keys).await?;
        let other = self.other_scan();
        let other_side = self.source.other();
        let other_ep = &*self.engine.endpoints[other_side];
        let mut echoes: HashSet<&str> = HashSet::new();
        if self.source == Side::External {
            let positions: Vec<Option<usize>> = e
                .fields
                .iter()
                .map(|f| scan.position(&f.external.name))
                .collect();
            let crm_id = e
                .external_crm_id
                .as_ref()
                .filter(|_| self.writes_external())
                .and_then(|c| scan.position(&c.name));
            for (values, ks) in rows.iter().zip(&keys) {
                if let Some(l) = links
                    .get(ks)
                    .filter(|l| is_echo(e, values, &positions, crm_id, l))
                {
                    echoes.insert(&l.crm_key);
                }
            }
        }
        // Counterparts of linked rows: to merge with, and to notice a row
        // that vanished on the other side.
        let mut counterparts: HashMap<String, Vec<Value>> = HashMap::new();
        let merged = || {
            links
                .values()
                .filter(|l| !l.deleted && !echoes.contains(l.crm_key.as_str()))
        };
        if merged().next().is_some() {
            let mut wanted = Vec::new();
            for l in merged() {
                let k = l.key(other_side);
                wanted.push(
                    e.key_value(other_side, k)
                        .map_err(|err| bad_link(e, k, err))?,
                );
            }
            for r in other_ep.fetch(&other, &other.key, &wanted).await? {
                counterparts.insert(r[0].key_string(), r);
            }
        }
        // Fields holding another entity's keys: translated through its
        // links, the CRM rows' values to the parents' external keys. A row
        // whose parent is not linked is held as a reject.
        let mut held_back: HashMap<String, String> = HashMap::new();
        // Rows whose deferrable references were set to NULL (their parents
        // are not linked yet): written so, and revisited.
        let mut deferred: HashMap<String, String> = HashMap::new();
        let mut translated = None;
        if !self.ref_fields.is_empty() {
            let source_rows: Vec<(&Scan, &[Value])> =
                rows.iter().map(|r| (scan, r.as_slice())).collect();
            let other_rows: Vec<(&Scan, &[Value])> = counterparts
                .values()
                .map(|r| (&other, r.as_slice()))
                .collect();
            let (crm_rows, ext_rows) = match self.source {
                Side::Crm => (&source_rows, &other_rows),
                Side::External => (&other_rows, &source_rows),
            };
            let refs = Refs::load(self.state, &self.ref_fields, crm_rows, ext_rows).await?;
            match self.source {
                Side::Crm => {
                    let mut t = rows.to_vec();
                    for r in t.iter_mut() {
                        let u = refs.translate_crm_row(&self.ref_fields, scan, r, |v| v);
                        let k = r[0].key_string();
                        if let Some(why) = u.held {
                            held_back.insert(k.clone(), why);
                        }
                        if let Some(why) = u.deferred {
                            deferred.insert(k, why);
                        }
                    }
                    translated = Some(t);
                }
                Side::External => {
                    let by_crm: HashMap<&str, &str> = links
                        .values()
                        .map(|l| (l.crm_key.as_str(), l.external_key.as_str()))
                        .collect();
                    for (k, r) in counterparts.iter_mut() {
                        let u = refs.translate_crm_row(&self.ref_fields, &other, r, |v| v);
                        if let Some(x) = by_crm.get(k.as_str()) {
                            if let Some(why) = u.held {
                                held_back.insert(x.to_string(), why);
                            }
                            if let Some(why) = u.deferred {
                                deferred.insert(x.to_string(), why);
                            }
                        }
                    }
                    if self.ref_fields.iter().any(|(f, _)| f.deferrable) {
                        let mut t = rows.to_vec();
                        for r in t.iter_mut() {
                            if let Some(why) = refs.defer_external_row(&self.ref_fields, scan, r) {
                                deferred.entry(r[0].key_string()).or_insert(why);
                            }
                        }
                        translated = Some(t);
                    }
                }
            }
            *self.refs.lock().unwrap_or_else(|p| p.into_inner()) = refs;
        }
        let rows: &[Vec<Value>] = translated.as_deref().unwrap_or(rows);
        // Open manual conflicts hold their fields.
        let crm_keys: Vec<String> = match self.source {
            Side::Crm => keys.clone(),
            Side::External => links.values().map(|l| l.crm_key.clone()).collect(),
        };
        let mut held: HashMap<String, HashMap<String, i64>> = HashMap::new();
        if !crm_keys.is_empty() {
            for c in self.state.open_conflicts(e.name(), &crm_keys).await? {
                held.entry(c.record.crm_key.clone())
                    .or_default()
                    .insert(c.record.field.clone(), c.id);
            }
        }

        let mut w = Writes {
            crm: e.write_batch(Side::Crm),
            ext: e.write_batch(Side::External),
            links: Vec::new(),
            link_column_after_insert: Vec::new(),
            crm_id_after_insert: Vec::new(),
            rejects: Vec::new(),
            cleared: Vec::new(),
            conflicts: Vec::new(),
            settled: Vec::new(),
        };
        let mut unlinked = Vec::new();
        for values in rows {
            let row = Row { values, scan };
            let ks = values[0].key_string();
            if retried.contains(&ks) {
                w.cleared.push(ks.clone());
            }
            // A deleted row needs no reference translated to be deleted.
            let deleted = row.deleted(e, self.source);
            if let Some(why) = held_back.get(&ks).filter(|_| !deleted) {
                self.problem(&ks, FieldProblem::Reject(why.clone()), &mut w, report)?;
                continue;
            }
            if let Some(why) = deferred.get(&ks).filter(|_| !deleted) {
                // Written with NULL for now; kept open as a reject, so that
                // a rerun after a crash fills it in too.
                w.cleared.retain(|k| *k != ks);
                w.rejects
                    .push((ks.clone(), format!("{why} (written NULL until then)")));
                if self.defer {
                    report.deferred.push((self.source, ks.clone()));
                } else {
                    report.rejected += 1;
                }
            }
            let link = links.get(&ks);
            if deleted {
                match link.filter(|l| !l.deleted) {
                    Some(l) => self.delete_pair(l, &mut w, report)?,
                    None => report.unchanged += 1,
                }
                continue;
            }
            match link {
                Some(l) if echoes.contains(l.crm_key.as_str()) => {
                    report.unchanged += 1;
                }
                Some(l) if !l.deleted => {
                    let Some(counterpart) = counterparts.get(l.key(other_side)) else {
                        if self.source == Side::Crm && !self.flows_from(Side::External) {
                            // The external copy of a CRM-owned row vanished:
                            // send the row again instead of updating nothing.
                            unlinked.push(values);
                        } else {
                            // Gone on the other side: delete detection decides.
                            report.unchanged += 1;
                        }
                        continue;
                    };
                    let other_row = Row {
                        values: counterpart,
                        scan: &other,
                    };
                    let held_fields = held.get(&l.crm_key);
                    self.merge_linked(l, row, other_row, held_fields, &mut w, report)?;
                }
                Some(l)
                    if self.source == Side::Crm
                        && e.plan.delete_into_external != ExternalDelete::Hard =>
                {
                    // A CRM row brought back after a delete whose external
                    // row was flagged or left alone: write it again in place
                    // (after a hard delete it is inserted anew, below).
                    self.revive(l, &row, &mut w, report)?;
                }
                Some(_) if self.source == Side::External => {
                    // Deleted pairs are not brought back from outside.
                    report.unchanged += 1;
                }
                _ => unlinked.push(values),
            }
        }
        let named = match self.source {
            Side::External => self.crm_rows_naming(&unlinked).await?,
            Side::Crm => HashMap::new(),
        };
        let matches = self.match_index(&unlinked, scan).await?;
        for values in unlinked {
            let row = Row { values, scan };
            match self.source {
                Side::Crm => self.unlinked_crm(&row, &matches, &mut w, report).await?,
                Side::External => {
                    self.unlinked_external(&row, &named, &matches, &mut w, report)
                        .await?
                }
            }
        }
        if self.mode == Mode::DryRun {
            report.conflicts += w.conflicts.len() as u64;
            return Ok(());
        }
        self.write(w).await
    }

    /// The CRM value of canonical value `v` of field `f`: a reference
    /// translated back to the parent's CRM key first.
    fn to_crm(
        &self,
        f: &crate::schema::BoundField,
        v: Value,
    ) -> Result<(Value, bool), FieldProblem> {
        let v = match self.ref_fields.iter().find(|(r, _)| r.name == f.name) {
            Some((_, parent)) => self
                .refs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .translate(Side::External, f, parent, &v)?,
            None => v,
        };
        canonical_to_crm(f, v, self.e.to_crm)
    }

    /// A row that cannot be mapped: reject it, or stop the batch.
    fn problem(
        &self,
        key: &str,
        p: FieldProblem,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        match p {
            FieldProblem::Reject(why) => {
                report.rejected += 1;
                w.cleared.retain(|k| k != key);
                w.rejects.push((key.to_string(), why));
                Ok(())
            }
            FieldProblem::Fail(message) => Err(EngineError::Fail {
                entity: self.e.name().to_string(),
                key: key.to_string(),
                message,
            }),
        }
    }
}
