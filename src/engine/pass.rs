//! One pass over one side's change window: read it page by page, merge
//! each changed row with its linked counterpart against the shadow, link or
//! insert unlinked rows, carry deletes, and write both sides.
//!
//! Write order per page: first the side that does not hold the state
//! store, then the state side together with the links in one transaction.
//! A crash in between leaves shadows behind the data, which the next run
//! merges as "both sides changed to the same value": nothing is lost or
//! duplicated.

use super::mapping::{
    canonical_to_crm, external_to_canonical, map_crm_row, FieldProblem, Layout, Values,
};
use super::merge::{merge, Merged, View};
use super::{later, window, Engine, EngineError, EntityReport, Mode, Sample, StateView};
use crate::crm::write as crm_write;
use crate::endpoint::{Assign, EndpointError, Insert, Lower, Scan, Update, WriteBatch};
use crate::plan::{CrmDelete, ExternalDelete, Side};
use crate::schema::BoundEntity;
use crate::state::{Base, ConflictRecord, KeyRef, Link, LinkBatch, LinkWrite, Shadow, Watermark};
use crate::value::{SqlType, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One incremental pass of entity `e` over the change window of `source`.
pub(super) async fn run(
    engine: &Engine,
    e: &BoundEntity,
    state: &StateView<'_>,
    run: i64,
    mode: Mode,
    source: Side,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    let (scan, ep) = match source {
        Side::Crm => (e.crm_scan(), &*engine.crm),
        Side::External => (e.external_scan(), &*engine.external),
    };
    let key_ty = match source {
        Side::Crm => &e.crm_key.ty,
        Side::External => &e.external_key.ty,
    };
    let ctx = Ctx {
        engine,
        e,
        state,
        run,
        mode,
        source,
        layout: engine.layout(e, state.writes()).await?,
    };
    // Rows rejected earlier are retried first, by key.
    let open = state.open_rejects(e.name(), source).await?;
    if !open.is_empty() {
        let keys: Vec<Value> = open
            .iter()
            .filter_map(|r| Value::from_key_string(&r.key, key_ty).ok())
            .collect();
        let rows = ep.fetch(&scan, &scan.key, &keys).await?;
        let retried: HashSet<String> = open.iter().map(|r| r.key.clone()).collect();
        ctx.page(&scan, &rows, &retried, report).await?;
    }
    let mark = state.watermark(e.name(), source).await?;
    let (lower, upto, read_at) =
        window(ep, &scan, mark.as_ref(), e.plan.settle, e.plan.overlap).await?;
    let mut current = mark.clone();
    let batch = e.plan.batch_size;
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
        report.watermark = current.map(|m| format!("{} / {}", m.ts.display(), m.key.display()));
    }
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
    ) -> Self {
        BackfillPages(Ctx {
            engine,
            e,
            state,
            run,
            mode: Mode::Apply,
            source,
            layout,
        })
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

/// One value of a `match_on` tuple as compared: text without trailing
/// spaces, as both databases' `=` compares it (and as a `char(n)` column
/// returns it padded).
pub(super) fn match_part(v: &Value) -> String {
    match v {
        Value::Text(s) => s.trim_end_matches(' ').to_string(),
        other => other.key_string(),
    }
}

/// What `match_on` finds for an unlinked row.
enum Matched {
    None,
    One(Vec<Value>),
    /// Why the row is a reject.
    Ambiguous(String),
}

/// What a page's `match_on` lookups found (see [`Ctx::match_index`]),
/// by the tuple of match values in the other side's types.
#[derive(Default)]
struct MatchIndex {
    /// Unclaimed rows of the other side.
    other: HashMap<String, Vec<Vec<Value>>>,
    /// Keys of unclaimed source-side rows.
    own: HashMap<String, Vec<String>>,
}

/// How often a page is written again after a retryable failure, and the
/// first wait (doubled each time).
const RETRIES: u32 = 3;
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The value that marks a row deleted in a flag column of type `ty`.
pub(super) fn deleted_flag(ty: &SqlType, deleted: bool) -> Value {
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

/// Whether an external row (`values`, with the fields' columns at
/// `positions`) is the echo of what was last synced: equal to its live
/// link's shadow in every field. An echo has nothing to give, so it is not
/// merged and its CRM row is not fetched; what changed in CRM since, the
/// CRM pass reads by CRM's own change column. (A CRM row is always merged:
/// that is where a link column left empty by a crash gets repaired.) A row
/// whose CRM-id column (`crm_id` its position, where the entity writes it)
/// does not name the linked CRM row is no echo: it is merged, and named.
fn is_echo(
    e: &BoundEntity,
    values: &[Value],
    positions: &[Option<usize>],
    crm_id: Option<usize>,
    link: &Link,
) -> bool {
    !link.deleted
        && crm_id.is_none_or(|p| !values[p].is_null() && values[p].key_string() == link.crm_key)
        && e.fields.iter().zip(positions).all(|(f, p)| {
            let read = p.map_or(&Value::Null, |p| &values[p]);
            // A shadow is canonical already: a value read equal to it needs
            // no converting to tell.
            link.shadow
                .get(&f.name)
                .is_some_and(|s| s.is(read) || s.is(&external_to_canonical(f, read.clone())))
        })
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

/// The CRM link column's value naming a just-inserted external row.
fn link_of(e: &BoundEntity, inserted: &Value) -> Result<Value, EngineError> {
    let ks = inserted.key_string();
    match e.link_value(&ks) {
        Some(Ok(v)) => Ok(v),
        Some(Err(err)) => Err(EngineError::Endpoint(EndpointError::Schema(format!(
            "entity {:?}: the new external key {ks:?} does not fit the CRM link column: {err}; \
             widen the column (crmsync check compares the two types)",
            e.name()
        )))),
        None => Ok(Value::Null),
    }
}

/// Updates giving each external row the id of the CRM row inserted for
/// it (`(external key, index of the CRM insert)`).
fn crm_id_updates(
    e: &BoundEntity,
    pending: Vec<(Value, usize)>,
    inserted: &[Value],
) -> Result<Vec<Update>, EngineError> {
    let Some(id) = &e.external_crm_id else {
        return Ok(Vec::new());
    };
    pending
        .into_iter()
        .map(|(key, i)| {
            let ks = inserted[i].key_string();
            let v = Value::from_key_string(&ks, &id.ty).map_err(|err| {
                EngineError::Endpoint(EndpointError::Schema(format!(
                    "entity {:?}: CRM id {ks} does not fit external_crm_id_column {}: {err}; \
                     widen the column (crmsync check compares the two types)",
                    e.name(),
                    id.name
                )))
            })?;
            Ok(Update {
                key,
                set: vec![(id.name.clone(), Assign::Value(v))],
            })
        })
        .collect()
}

fn bad_link(e: &BoundEntity, key: &str, err: impl std::fmt::Display) -> EngineError {
    EngineError::Endpoint(EndpointError::Schema(format!(
        "entity {:?}: a link holds key {key:?}, which does not fit the key column: {err}",
        e.name()
    )))
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
}

struct Ctx<'a> {
    engine: &'a Engine,
    e: &'a BoundEntity,
    state: &'a StateView<'a>,
    run: i64,
    mode: Mode,
    source: Side,
    /// The layout shadows are sealed in.
    layout: Layout,
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
                    .get(&e.crm_change.name)
                    .to_utc(self.engine.plan.crm.timezone),
            },
            mapped.truncated,
        ))
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
                .get(&e.external_change.name)
                .to_utc(self.engine.plan.external.timezone),
        }
    }

    /// Whether any field can flow from `side` (so its rows must be read to
    /// merge).
    fn flows_from(&self, side: Side) -> bool {
        self.e.fields.iter().any(|f| match side {
            Side::Crm => f.plan.direction.crm_to_external(),
            Side::External => f.plan.direction.external_to_crm(),
        })
    }

    fn other_scan(&self) -> Scan {
        let mut s = self.e.scan(self.source.other());
        // The link, not the filter, decides what belongs to a pair.
        s.filter = None;
        s
    }

    /// Diffs one page of source rows and writes the result. When a
    /// database refuses a row (a constraint, a value it cannot take), the
    /// page is written again row by row and only the refused rows are set
    /// aside as rejects, to be retried on later runs.
    async fn page(
        &self,
        scan: &Scan,
        rows: &[Vec<Value>],
        retried: &HashSet<String>,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let before = report.clone();
        let mut attempt = 0;
        let result = loop {
            match self.page_once(scan, rows, retried, report).await {
                Err(EngineError::Endpoint(err)) if err.is_retryable() && attempt < RETRIES => {
                    // A deadlock, serialization failure or dropped
                    // connection: the page is idempotent, so write it again.
                    attempt += 1;
                    *report = before.clone();
                    let wait = RETRY_WAIT * 2u32.pow(attempt - 1);
                    tracing::warn!(
                        "entity {:?}: {}; retrying the page in {wait:?} (attempt {attempt} of {RETRIES})",
                        self.e.name(),
                        crate::report::with_causes(&err)
                    );
                    tokio::time::sleep(wait).await;
                }
                other => break other,
            }
        };
        match result {
            Err(EngineError::Endpoint(err)) if err.refused_row() && self.mode == Mode::Apply => {
                *report = before;
                if let [row] = rows {
                    let key = row[0].key_string();
                    let reason = crate::report::with_causes(&err);
                    tracing::warn!("entity {:?}: row {key} set aside: {reason}", self.e.name());
                    report.read += 1;
                    report.rejected += 1;
                    self.state
                        .store()
                        .record_rejects(self.e.name(), self.run, self.source, &[(key, reason)])
                        .await?;
                    return Ok(());
                }
                for row in rows {
                    Box::pin(self.page(scan, std::slice::from_ref(row), retried, report)).await?;
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
        let links = match self.source {
            Side::Crm => self.state.links_by_crm(e.name(), &keys).await?,
            Side::External => self.state.links_by_external(e.name(), &keys).await?,
        };
        let other = self.other_scan();
        let other_side = self.source.other();
        let other_ep = match other_side {
            Side::Crm => &*self.engine.crm,
            Side::External => &*self.engine.external,
        };
        let other_key_ty = match other_side {
            Side::Crm => &e.crm_key.ty,
            Side::External => &e.external_key.ty,
        };
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
                let k = match other_side {
                    Side::Crm => &l.crm_key,
                    Side::External => &l.external_key,
                };
                wanted.push(
                    Value::from_key_string(k, other_key_ty).map_err(|err| bad_link(e, k, err))?,
                );
            }
            for r in other_ep.fetch(&other, &other.key, &wanted).await? {
                counterparts.insert(r[0].key_string(), r);
            }
        }
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
            crm: WriteBatch::new(e.crm_table.clone(), e.crm_key.name.clone()),
            ext: WriteBatch::new(e.external_table.clone(), e.external_key.name.clone()),
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
            let deleted = match self.source {
                Side::Crm => e
                    .crm_deleted
                    .as_ref()
                    .is_some_and(|d| is_deleted(Some(&row.get(&d.name)))),
                Side::External => e
                    .external_deleted
                    .as_ref()
                    .is_some_and(|d| is_deleted(Some(&row.get(&d.name)))),
            };
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
                    let other_key = match other_side {
                        Side::Crm => &l.crm_key,
                        Side::External => &l.external_key,
                    };
                    let counterpart = counterparts.get(other_key);
                    if counterpart.is_none() {
                        if self.source == Side::Crm && !self.flows_from(Side::External) {
                            // The external copy of a CRM-owned row vanished:
                            // send the row again instead of updating nothing.
                            unlinked.push(values);
                        } else {
                            // Gone on the other side: delete detection decides.
                            report.unchanged += 1;
                        }
                        continue;
                    }
                    let other_row = counterpart.map(|v| Row {
                        values: v,
                        scan: &other,
                    });
                    let (crm_row, ext_row) = match self.source {
                        Side::Crm => (Some(row), other_row),
                        Side::External => (other_row, Some(row)),
                    };
                    if let Some(r) = &crm_row {
                        if self.source == Side::External
                            && e.crm_deleted
                                .as_ref()
                                .is_some_and(|d| is_deleted(Some(&r.get(&d.name))))
                        {
                            report.unchanged += 1;
                            continue;
                        }
                    }
                    if let Some(r) = &ext_row {
                        if self.source == Side::Crm
                            && e.external_deleted
                                .as_ref()
                                .is_some_and(|d| is_deleted(Some(&r.get(&d.name))))
                        {
                            report.unchanged += 1;
                            continue;
                        }
                    }
                    let (crm_view, truncated) =
                        match crm_row.as_ref().map(|r| self.crm_view(r)).transpose() {
                            Ok(Some((v, t))) => (Some(v), t),
                            Ok(None) => (None, 0),
                            Err(p) => {
                                self.problem(&ks, p, &mut w, report)?;
                                continue;
                            }
                        };
                    let ext_view = ext_row.as_ref().map(|r| self.ext_view(r));
                    // A crash between the write of one side and the other
                    // leaves a side not naming its counterpart: finish it.
                    let named = self.name_each_other(
                        &l.crm_key,
                        &l.external_key,
                        crm_row.as_ref(),
                        ext_row.as_ref(),
                        &mut w,
                    );
                    if let Err(p) = named {
                        self.problem(&ks, p, &mut w, report)?;
                        continue;
                    }
                    let held_fields = held.get(&l.crm_key);
                    let held_names: HashSet<String> = held_fields
                        .map(|h| h.keys().cloned().collect())
                        .unwrap_or_default();
                    let m = merge(
                        e,
                        &l.crm_key,
                        &l.external_key,
                        &l.shadow,
                        crm_view.as_ref(),
                        ext_view.as_ref(),
                        &held_names,
                    );
                    for f in &m.settled {
                        w.settled.push((l.crm_key.clone(), f.clone()));
                    }
                    if !m.to_external.is_empty() {
                        report.truncated += truncated as u64;
                    }
                    if let Err(p) = self.apply_merge(l, m, "update", &mut w, report) {
                        self.problem(&ks, p, &mut w, report)?;
                    }
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

    /// Queues the writes a merge decided, and the new shadow.
    fn apply_merge(
        &self,
        l: &Link,
        m: Merged,
        action: &'static str,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), FieldProblem> {
        let e = self.e;
        let user = self.engine.plan.crm_user_id;
        let mut fields = BTreeMap::new();
        if !m.to_crm.is_empty() {
            let mut set = Vec::new();
            for (i, v) in &m.to_crm {
                let f = &e.fields[*i];
                let (crm_v, truncated) = canonical_to_crm(f, v.clone(), e.to_crm)?;
                report.truncated += u64::from(truncated);
                fields.insert(f.crm.name.clone(), crm_v.display());
                set.push((f.crm.name.clone(), Assign::Value(crm_v)));
            }
            crm_write::touch(e, user, &mut set);
            let key = Value::from_key_string(&l.crm_key, &e.crm_key.ty)
                .map_err(|err| FieldProblem::Reject(format!("CRM key {}: {err}", l.crm_key)))?;
            w.crm.updates.push(Update { key, set });
            report.crm_updated += 1;
        }
        if !m.to_external.is_empty() {
            let mut set = Vec::new();
            for (i, v) in &m.to_external {
                let f = &e.fields[*i];
                fields.insert(f.external.name.clone(), v.display());
                set.push((f.external.name.clone(), Assign::Value(v.clone())));
            }
            set.push((e.external_change.name.clone(), Assign::Now));
            let key =
                Value::from_key_string(&l.external_key, &e.external_key.ty).map_err(|err| {
                    FieldProblem::Reject(format!("external key {}: {err}", l.external_key))
                })?;
            w.ext.updates.push(Update { key, set });
            report.updated += 1;
        }
        if m.writes() {
            report.sample(Sample {
                action,
                crm_key: l.crm_key.clone(),
                external_key: Some(l.external_key.clone()),
                fields,
            });
        } else {
            report.unchanged += 1;
        }
        report.conflicts += m.conflicts.len() as u64;
        w.conflicts.extend(m.conflicts);
        if m.shadow != l.shadow || l.deleted {
            w.links.push(LinkWrite::pair(
                &l.crm_key,
                &l.external_key,
                self.layout.seal(e, &m.shadow),
                false,
            ));
        }
        Ok(())
    }

    /// The source row of a live pair was deleted: carry it across.
    fn delete_pair(
        &self,
        l: &Link,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        let carried = match self.source {
            Side::Crm => {
                let key = Value::from_key_string(&l.external_key, &e.external_key.ty)
                    .map_err(|err| bad_link(e, &l.external_key, err))?;
                match e.plan.delete_into_external {
                    ExternalDelete::Hard => {
                        w.ext.deletes.push(key);
                        true
                    }
                    ExternalDelete::Soft => match &e.external_deleted {
                        Some(d) => {
                            w.ext.updates.push(Update {
                                key,
                                set: vec![
                                    (d.name.clone(), Assign::Value(deleted_flag(&d.ty, true))),
                                    (e.external_change.name.clone(), Assign::Now),
                                ],
                            });
                            true
                        }
                        None => false,
                    },
                    ExternalDelete::Ignore => false,
                }
            }
            Side::External => match e.plan.delete_into_crm {
                CrmDelete::Soft if e.plan.direction.external_to_crm() => {
                    let key = Value::from_key_string(&l.crm_key, &e.crm_key.ty)
                        .map_err(|err| bad_link(e, &l.crm_key, err))?;
                    w.crm.updates.push(Update {
                        key,
                        set: crm_write::soft_delete(e, self.engine.plan.crm_user_id),
                    });
                    true
                }
                _ => false,
            },
        };
        if carried {
            match self.source {
                Side::Crm => report.deleted += 1,
                Side::External => report.crm_deleted += 1,
            }
            report.sample(Sample {
                action: "delete",
                crm_key: l.crm_key.clone(),
                external_key: Some(l.external_key.clone()),
                fields: BTreeMap::new(),
            });
        } else {
            report.unchanged += 1;
        }
        w.links.push(LinkWrite::pair(
            &l.crm_key,
            &l.external_key,
            self.layout.seal(e, &l.shadow),
            true,
        ));
        Ok(())
    }

    /// A CRM row live again after its pair was soft-deleted outside.
    fn revive(
        &self,
        l: &Link,
        row: &Row<'_>,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        let view = match self.crm_view(row) {
            Ok((v, t)) => {
                report.truncated += t as u64;
                v
            }
            Err(p) => return self.problem(&l.crm_key, p, w, report),
        };
        let key = Value::from_key_string(&l.external_key, &e.external_key.ty)
            .map_err(|err| bad_link(e, &l.external_key, err))?;
        let mut set: Vec<(String, Assign)> = e
            .fields
            .iter()
            .filter(|f| f.plan.direction.crm_to_external())
            .map(|f| {
                (
                    f.external.name.clone(),
                    Assign::Value(view.values[&f.name].clone()),
                )
            })
            .collect();
        if let Some(d) = &e.external_deleted {
            set.push((d.name.clone(), Assign::Value(deleted_flag(&d.ty, false))));
        }
        set.push((e.external_change.name.clone(), Assign::Now));
        w.ext.updates.push(Update { key, set });
        report.updated += 1;
        let shadow: Shadow = view
            .values
            .into_iter()
            .map(|(f, v)| (f, Base::Value(v)))
            .collect();
        w.links.push(LinkWrite::pair(
            &l.crm_key,
            &l.external_key,
            self.layout.seal(e, &shadow),
            false,
        ));
        Ok(())
    }

    /// Links a source row to an existing counterpart (no shadow yet: every
    /// difference is merged by policy).
    fn adopt(
        &self,
        crm_key: &str,
        ext_key: &str,
        crm: &View,
        ext: &View,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), FieldProblem> {
        let link = Link {
            crm_key: crm_key.to_string(),
            external_key: ext_key.to_string(),
            shadow: Shadow::new(),
            // Not stored yet: marked so that `apply_merge` writes it.
            deleted: true,
        };
        let m = merge(
            self.e,
            crm_key,
            ext_key,
            &Shadow::new(),
            Some(crm),
            Some(ext),
            &HashSet::new(),
        );
        report.adopted += 1;
        self.apply_merge(&link, m, "link", w, report)
    }

    /// An unlinked live CRM row: a link column naming an external row
    /// links to it; an external row carrying its CRM id (an insert whose
    /// link was lost) is adopted; otherwise it is inserted.
    async fn unlinked_crm(
        &self,
        row: &Row<'_>,
        matches: &MatchIndex,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        let crm_key = row.values[0].clone();
        let ks = crm_key.key_string();
        let (view, truncated) = match self.crm_view(row) {
            Ok(v) => v,
            Err(p) => return self.problem(&ks, p, w, report),
        };
        let ext_scan = self.other_scan();
        // 1. The CRM row names its external row.
        if let Some(lc) = &e.crm_link {
            let claimed = row.get(&lc.name);
            if !claimed.is_null() && e.plan.direction.external_to_crm() {
                let claim = claimed.key_string();
                let taken = self
                    .state
                    .links_by_external(e.name(), std::slice::from_ref(&claim))
                    .await?;
                if let Some(other) = taken.get(&claim).filter(|l| l.crm_key != ks && !l.deleted) {
                    return self.problem(
                        &ks,
                        FieldProblem::Reject(format!(
                            "{} = {claim:?}, but that external row is already linked to CRM row {}; \
                             the link column must be unique among live rows",
                            lc.name, other.crm_key
                        )),
                        w,
                        report,
                    );
                }
                let key = Value::from_key_string(&claim, &e.external_key.ty).ok();
                let found = match key {
                    Some(k) => {
                        self.engine
                            .external
                            .fetch(&ext_scan, &ext_scan.key, &[k])
                            .await?
                    }
                    None => Vec::new(),
                };
                return match found.first() {
                    Some(x) => {
                        let ext_row = Row {
                            values: x,
                            scan: &ext_scan,
                        };
                        let ext_view = self.ext_view(&ext_row);
                        let ext_key = x[0].key_string();
                        let r = self
                            .adopt(&ks, &ext_key, &view, &ext_view, w, report)
                            .and_then(|()| {
                                self.name_each_other(&ks, &ext_key, Some(row), Some(&ext_row), w)
                            });
                        r.or_else(|p| self.problem(&ks, p, w, report))
                    }
                    None => self.problem(
                        &ks,
                        FieldProblem::Reject(format!(
                            "{} = {claim:?}, but the external table has no row with that key; \
                             clear the column or correct it",
                            lc.name
                        )),
                        w,
                        report,
                    ),
                };
            }
        }
        // 2. An earlier insert whose link was lost carries the CRM id.
        if let Some(id_col) = &e.external_crm_id {
            if let Ok(id) = crm_key.clone().coerce(&id_col.ty, None, false) {
                let found = self
                    .engine
                    .external
                    .find(&ext_scan, &[(id_col.name.clone(), id)], 2)
                    .await?;
                if let Some(x) = found.first() {
                    let ext_row = Row {
                        values: x,
                        scan: &ext_scan,
                    };
                    let ext_view = self.ext_view(&ext_row);
                    let ext_key = x[0].key_string();
                    let r = self
                        .adopt(&ks, &ext_key, &view, &ext_view, w, report)
                        .and_then(|()| {
                            self.name_each_other(&ks, &ext_key, Some(row), Some(&ext_row), w)
                        });
                    return r.or_else(|p| self.problem(&ks, p, w, report));
                }
            }
        }
        // 3. `match_on`: exactly one unlinked live external row holds the
        // same values, and no other unlinked live CRM row does.
        if !e.plan.match_on.is_empty() {
            match self.match_other(row, matches, w) {
                Matched::One(x) => {
                    let ext_key = x[0].key_string();
                    let x_scan = e.external_scan();
                    let ext_row = Row {
                        values: &x,
                        scan: &x_scan,
                    };
                    let ext_view = self.ext_view(&ext_row);
                    let r = self
                        .adopt(&ks, &ext_key, &view, &ext_view, w, report)
                        .and_then(|()| {
                            self.name_each_other(&ks, &ext_key, Some(row), Some(&ext_row), w)
                        });
                    return r.or_else(|p| self.problem(&ks, p, w, report));
                }
                Matched::Ambiguous(why) => {
                    return self.problem(&ks, FieldProblem::Reject(why), w, report)
                }
                Matched::None => {}
            }
        }
        if !(e.plan.insert_into_external && e.plan.direction.crm_to_external()) {
            report.unchanged += 1;
            return Ok(());
        }
        // 4. Insert.
        let mut columns: Vec<(String, Assign)> = Vec::new();
        let mut fields = BTreeMap::new();
        let mut shadow = Shadow::new();
        for f in e
            .fields
            .iter()
            .filter(|f| f.plan.direction.crm_to_external())
        {
            let v = view.values[&f.name].clone();
            fields.insert(f.external.name.clone(), v.display());
            shadow.insert(f.name.clone(), Base::Value(v.clone()));
            columns.push((f.external.name.clone(), Assign::Value(v)));
        }
        if let Some(id_col) = &e.external_crm_id {
            let id = crm_key
                .clone()
                .coerce(&id_col.ty, None, false)
                .map_err(|err| {
                    EngineError::Endpoint(EndpointError::Schema(format!(
                        "entity {:?}: CRM id {ks} does not fit external_crm_id_column {}: {err}",
                        e.name(),
                        id_col.name
                    )))
                })?;
            columns.push((id_col.name.clone(), Assign::Value(id)));
        }
        for (c, v) in &e.external_defaults {
            if !columns.iter().any(|(n, _)| n == c) {
                columns.push((c.clone(), Assign::Value(v.clone())));
            }
        }
        if let Some(d) = &e.external_deleted {
            if !columns.iter().any(|(n, _)| *n == d.name) && !d.has_default {
                columns.push((d.name.clone(), Assign::Value(deleted_flag(&d.ty, false))));
            }
        }
        if !columns.iter().any(|(n, _)| *n == e.external_change.name) {
            columns.push((e.external_change.name.clone(), Assign::Now));
        }
        let index = w.ext.inserts.len();
        w.ext.inserts.push(Insert { columns });
        report.inserted += 1;
        report.truncated += truncated as u64;
        report.sample(Sample {
            action: "insert",
            crm_key: ks.clone(),
            external_key: None,
            fields,
        });
        w.links.push(LinkWrite {
            crm_key: KeyRef::Known(ks),
            external_key: KeyRef::Inserted(index),
            shadow: self.layout.seal(e, &shadow),
            deleted: false,
        });
        if e.crm_link.is_some() && self.writes_crm() {
            w.link_column_after_insert.push((crm_key.clone(), index));
        }
        Ok(())
    }

    /// The `match_on` values of a `side` row, in the other side's types
    /// where `side` is the source (the form both sides' rows are grouped
    /// by), as (own values, the tuple's text). None when a value is NULL
    /// or does not fit the other side's column.
    fn match_tuple(&self, side: Side, row: &Row<'_>) -> Option<(Vec<Value>, String)> {
        let e = self.e;
        let mut own = Vec::new();
        let mut parts = Vec::new();
        for (c, x) in &e.plan.match_on {
            let (cc, xc) = (
                e.crm_table.column(c).ok()?,
                e.external_table.column(x).ok()?,
            );
            let (mine, theirs, zones) = match side {
                Side::Crm => (cc, xc, e.to_external),
                Side::External => (xc, cc, e.to_crm),
            };
            let v = row.get(&mine.name);
            if v.is_null() {
                return None;
            }
            // A row of the other side is grouped by its values as read;
            // a source-side row by its values converted to that side.
            let t = if side == self.source {
                v.clone().coerce(&theirs.ty, Some(zones), false).ok()?
            } else {
                v.clone()
            };
            parts.push(match_part(&t));
            own.push(v);
        }
        Some((own, parts.join("\u{1f}")))
    }

    /// The rows `match_on` may link this page's unlinked rows to, and the
    /// source-side rows that hold the same values, looked up once for the
    /// page (by the first match column, then grouped by exact values) in
    /// the rows each side's filter admits. Claimed rows are left out:
    /// flagged deleted, naming a counterpart (the CRM link column, the
    /// external CRM id column) or linked in the state store.
    async fn match_index(
        &self,
        unlinked: &[&Vec<Value>],
        scan: &Scan,
    ) -> Result<MatchIndex, EngineError> {
        let e = self.e;
        let mut index = MatchIndex::default();
        if e.plan.match_on.is_empty() || unlinked.is_empty() {
            return Ok(index);
        }
        let other_side = self.source.other();
        let mut own_firsts = Vec::new();
        let mut seen = HashSet::new();
        for values in unlinked {
            let row = Row { values, scan };
            if let Some((own, _)) = self.match_tuple(self.source, &row) {
                if seen.insert(own[0].key_string()) {
                    own_firsts.push(own[0].clone());
                }
            }
        }
        let (c, x) = &e.plan.match_on[0];
        let (Ok(cc), Ok(xc)) = (e.crm_table.column(c), e.external_table.column(x)) else {
            return Ok(index);
        };
        if own_firsts.is_empty() {
            return Ok(index);
        }
        let (own_col, other_col, zones) = match self.source {
            Side::Crm => (cc, xc, e.to_external),
            Side::External => (xc, cc, e.to_crm),
        };
        // Every first value converted, or its row would have no tuple.
        let other_values: Vec<Value> = own_firsts
            .iter()
            .filter_map(|v| v.clone().coerce(&other_col.ty, Some(zones), false).ok())
            .collect();
        for (side, column, values) in [
            (other_side, &other_col.name, other_values),
            (self.source, &own_col.name, own_firsts),
        ] {
            let rows = self.unclaimed(side, column, &values).await?;
            let scan = self.e.scan(side);
            for r in rows {
                let Some((_, tuple)) = self.match_tuple(
                    side,
                    &Row {
                        values: &r,
                        scan: &scan,
                    },
                ) else {
                    continue;
                };
                if side == self.source {
                    index.own.entry(tuple).or_default().push(r[0].key_string());
                } else {
                    index.other.entry(tuple).or_default().push(r);
                }
            }
        }
        Ok(index)
    }

    /// The rows of `side` (its filter applied) whose `column` holds one of
    /// `values`, less the claimed ones: flagged deleted, naming a
    /// counterpart, or linked in the state store.
    async fn unclaimed(
        &self,
        side: Side,
        column: &str,
        values: &[Value],
    ) -> Result<Vec<Vec<Value>>, EngineError> {
        let e = self.e;
        let scan = self.e.scan(side);
        let (endpoint, deleted, claim) = match side {
            Side::Crm => (&self.engine.crm, &e.crm_deleted, &e.crm_link),
            Side::External => (
                &self.engine.external,
                &e.external_deleted,
                &e.external_crm_id,
            ),
        };
        let deleted = deleted.as_ref().and_then(|c| scan.position(&c.name));
        let claim = claim.as_ref().and_then(|c| scan.position(&c.name));
        let mut rows: Vec<Vec<Value>> = endpoint
            .fetch(&scan, column, values)
            .await?
            .into_iter()
            .filter(|r| deleted.is_none_or(|p| !is_deleted(Some(&r[p]))))
            .filter(|r| claim.is_none_or(|p| r[p].is_null()))
            .collect();
        let keys: Vec<String> = rows.iter().map(|r| r[0].key_string()).collect();
        let linked = match side {
            Side::Crm => self.state.links_by_crm(e.name(), &keys).await?,
            Side::External => self.state.links_by_external(e.name(), &keys).await?,
        };
        rows.retain(|r| linked.get(&r[0].key_string()).is_none_or(|l| l.deleted));
        Ok(rows)
    }

    /// The row on the other side that an unlinked source row's `match_on`
    /// values find in `index`, unless linked earlier in this page. One
    /// candidate is a match only when no other unlinked source row holds
    /// the same values: anything else is ambiguous, and nothing is
    /// guessed.
    fn match_other(&self, row: &Row<'_>, index: &MatchIndex, w: &Writes) -> Matched {
        let Some((_, tuple)) = self.match_tuple(self.source, row) else {
            return Matched::None;
        };
        let in_page = |side: Side, k: &str| {
            w.links.iter().any(|l| {
                let key = match side {
                    Side::Crm => &l.crm_key,
                    Side::External => &l.external_key,
                };
                matches!(key, KeyRef::Known(o) if o == k)
            })
        };
        let other_side = self.source.other();
        let candidates: Vec<&Vec<Value>> = index
            .other
            .get(&tuple)
            .into_iter()
            .flatten()
            .filter(|r| !in_page(other_side, &r[0].key_string()))
            .collect();
        match candidates.as_slice() {
            [] => Matched::None,
            [one] => {
                let own_key = row.values[0].key_string();
                let twins = index
                    .own
                    .get(&tuple)
                    .into_iter()
                    .flatten()
                    .any(|k| *k != own_key && !in_page(self.source, k));
                if twins {
                    Matched::Ambiguous(
                        "match_on is ambiguous: other unlinked rows on this side hold the same \
                         values; link the rows by hand (the CRM link column or the external CRM \
                         id column) or make the match stricter"
                            .into(),
                    )
                } else {
                    Matched::One((*one).clone())
                }
            }
            more => Matched::Ambiguous(format!(
                "match_on is ambiguous: it finds {} unlinked rows on the other side; link the \
                 row by hand (the CRM link column or the external CRM id column) or make the \
                 match stricter",
                more.len()
            )),
        }
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

    /// Queues what a linked pair needs so that each side names the other:
    /// the CRM link column gets the external key, the external CRM-id
    /// column the CRM id, each in its own column's type, wherever the
    /// column exists, the entity writes into that side and the row read
    /// (when there is one) does not hold it already.
    fn name_each_other(
        &self,
        crm_key: &str,
        ext_key: &str,
        crm_row: Option<&Row<'_>>,
        ext_row: Option<&Row<'_>>,
        w: &mut Writes,
    ) -> Result<(), FieldProblem> {
        let e = self.e;
        let holds = |row: Option<&Row<'_>>, column: &str, key: &str| {
            row.is_some_and(|r| {
                let v = r.get(column);
                !v.is_null() && v.key_string() == key
            })
        };
        if let Some(lc) = e.crm_link.as_ref().filter(|_| self.writes_crm()) {
            if !holds(crm_row, &lc.name, ext_key) {
                let v = Value::from_key_string(ext_key, &lc.ty).map_err(|err| {
                    FieldProblem::Reject(format!(
                        "external key {ext_key:?} does not fit the CRM link column {}: {err}; \
                         widen the column",
                        lc.name
                    ))
                })?;
                let key = Value::from_key_string(crm_key, &e.crm_key.ty)
                    .map_err(|err| FieldProblem::Reject(format!("CRM key {crm_key}: {err}")))?;
                w.crm.updates.push(Update {
                    key,
                    set: vec![(lc.name.clone(), Assign::Value(v))],
                });
            }
        }
        if let Some(id) = e
            .external_crm_id
            .as_ref()
            .filter(|_| self.writes_external())
        {
            if !holds(ext_row, &id.name, crm_key) {
                let v = Value::from_key_string(crm_key, &id.ty).map_err(|err| {
                    FieldProblem::Reject(format!(
                        "CRM id {crm_key} does not fit the external CRM-id column {}: {err}; \
                         widen the column",
                        id.name
                    ))
                })?;
                let key = Value::from_key_string(ext_key, &e.external_key.ty).map_err(|err| {
                    FieldProblem::Reject(format!("external key {ext_key:?}: {err}"))
                })?;
                w.ext.updates.push(Update {
                    key,
                    set: vec![(id.name.clone(), Assign::Value(v))],
                });
            }
        }
        Ok(())
    }

    /// An unlinked live external row: a CRM row whose link column holds
    /// its key, or exactly one `match_on` match, is linked; otherwise it is
    /// inserted into CRM.
    /// The live CRM rows whose link column names one of these unlinked
    /// external rows, by external key: one lookup for the page, not one
    /// per row. Empty without a link column.
    async fn crm_rows_naming(
        &self,
        unlinked: &[&Vec<Value>],
    ) -> Result<HashMap<String, Vec<Vec<Value>>>, EngineError> {
        let e = self.e;
        let mut named: HashMap<String, Vec<Vec<Value>>> = HashMap::new();
        let Some(lc) = e.crm_link.as_ref().filter(|_| !unlinked.is_empty()) else {
            return Ok(named);
        };
        let crm_scan = self.other_scan();
        // A key the link column cannot hold is named by no CRM row.
        let keys: Vec<Value> = unlinked
            .iter()
            .filter_map(|v| Value::from_key_string(&v[0].key_string(), &lc.ty).ok())
            .collect();
        if keys.is_empty() {
            return Ok(named);
        }
        for r in self.engine.crm.fetch(&crm_scan, &lc.name, &keys).await? {
            let row = Row {
                values: &r,
                scan: &crm_scan,
            };
            // Live: the deleted flag is NULL.
            if e.crm_deleted
                .as_ref()
                .is_some_and(|d| !row.get(&d.name).is_null())
            {
                continue;
            }
            let named_key = row.get(&lc.name).key_string();
            named.entry(named_key).or_default().push(r);
        }
        Ok(named)
    }

    async fn unlinked_external(
        &self,
        row: &Row<'_>,
        named: &HashMap<String, Vec<Vec<Value>>>,
        matches: &MatchIndex,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        let ks = row.values[0].key_string();
        let ext_view = self.ext_view(row);
        let crm_scan = self.other_scan();
        if let Some(lc) = &e.crm_link {
            let found: &[Vec<Value>] = named.get(&ks).map_or(&[], Vec::as_slice);
            match found {
                [one] => {
                    let crm_key = one[0].key_string();
                    let taken = self.state.links_by_crm(e.name(), std::slice::from_ref(&crm_key)).await?;
                    if taken.get(&crm_key).is_some_and(|l| !l.deleted) {
                        return self.problem(
                            &ks,
                            FieldProblem::Reject(format!(
                                "CRM row {crm_key} names this row in {} but is linked to another external row",
                                lc.name
                            )),
                            w,
                            report,
                        );
                    }
                    let crm_row = Row { values: one, scan: &crm_scan };
                    let crm_view = match self.crm_view(&crm_row) {
                        Ok((v, _)) => v,
                        Err(p) => return self.problem(&ks, p, w, report),
                    };
                    let r = self
                        .adopt(&crm_key, &ks, &crm_view, &ext_view, w, report)
                        .and_then(|()| self.name_each_other(&crm_key, &ks, Some(&crm_row), Some(row), w));
                    return r.or_else(|p| self.problem(&ks, p, w, report));
                }
                [] => {}
                _ => {
                    return self.problem(
                        &ks,
                        FieldProblem::Reject(format!(
                            "several live CRM rows hold {ks:?} in {}; it must be unique among live rows",
                            lc.name
                        )),
                        w,
                        report,
                    )
                }
            }
        }
        if !e.plan.match_on.is_empty() {
            match self.match_other(row, matches, w) {
                Matched::One(one) => {
                    let crm_key = one[0].key_string();
                    let one_scan = e.crm_scan();
                    let crm_row = Row {
                        values: &one,
                        scan: &one_scan,
                    };
                    let crm_view = match self.crm_view(&crm_row) {
                        Ok((v, _)) => v,
                        Err(p) => return self.problem(&ks, p, w, report),
                    };
                    let r = self
                        .adopt(&crm_key, &ks, &crm_view, &ext_view, w, report)
                        .and_then(|()| {
                            self.name_each_other(&crm_key, &ks, Some(&crm_row), Some(row), w)
                        });
                    return r.or_else(|p| self.problem(&ks, p, w, report));
                }
                Matched::Ambiguous(why) => {
                    return self.problem(&ks, FieldProblem::Reject(why), w, report)
                }
                Matched::None => {}
            }
        }
        if !(e.plan.insert_into_crm && e.plan.direction.external_to_crm()) {
            report.unchanged += 1;
            return Ok(());
        }
        let user = self.engine.plan.crm_user_id;
        let mut columns: Vec<(String, Assign)> = Vec::new();
        let mut fields = BTreeMap::new();
        let mut shadow = Shadow::new();
        for f in e
            .fields
            .iter()
            .filter(|f| f.plan.direction.external_to_crm())
        {
            let v = ext_view.values[&f.name].clone();
            let (crm_v, truncated) = match canonical_to_crm(f, v.clone(), e.to_crm) {
                Ok(x) => x,
                Err(p) => return self.problem(&ks, p, w, report),
            };
            report.truncated += u64::from(truncated);
            fields.insert(f.crm.name.clone(), crm_v.display());
            shadow.insert(f.name.clone(), Base::Value(v));
            columns.push((f.crm.name.clone(), Assign::Value(crm_v)));
        }
        if let Some(lc) = &e.crm_link {
            match Value::from_key_string(&ks, &lc.ty) {
                Ok(v) => columns.push((lc.name.clone(), Assign::Value(v))),
                Err(err) => {
                    let p = FieldProblem::Reject(format!(
                        "external key {ks:?} does not fit the CRM link column {}: {err}; \
                         widen the column",
                        lc.name
                    ));
                    return self.problem(&ks, p, w, report);
                }
            }
        }
        crm_write::complete_insert(e, user, self.engine.plan.id_strategy, &mut columns);
        let index = w.crm.inserts.len();
        w.crm.inserts.push(Insert { columns });
        report.crm_inserted += 1;
        report.sample(Sample {
            action: "insert into CRM",
            crm_key: String::new(),
            external_key: Some(ks.clone()),
            fields,
        });
        if e.external_crm_id.is_some() && self.writes_external() {
            w.crm_id_after_insert.push((row.values[0].clone(), index));
        }
        w.links.push(LinkWrite {
            crm_key: KeyRef::Inserted(index),
            external_key: KeyRef::Known(ks),
            shadow: self.layout.seal(e, &shadow),
            deleted: false,
        });
        Ok(())
    }

    /// Writes a page's decisions: the non-state side first, then the state
    /// side with the links in one transaction.
    async fn write(&self, w: Writes) -> Result<(), EngineError> {
        let engine = self.engine;
        let e = self.e;
        let store = self.state.store();
        let mut links = LinkBatch {
            schema: engine.plan.state_schema.clone(),
            entity: e.name().to_string(),
            links: w.links,
        };
        let Writes {
            crm: mut crm_batch,
            ext: mut ext_batch,
            link_column_after_insert,
            crm_id_after_insert,
            rejects,
            cleared,
            conflicts,
            settled,
            ..
        } = w;
        let state_side = engine.plan.state_side;
        match state_side {
            Side::External => {
                // CRM first; resolve CRM inserts' keys into the links.
                if !crm_batch.is_empty() {
                    let applied = engine.crm.apply(&crm_batch, None).await?;
                    resolve(&mut links, Side::Crm, &applied.inserted_keys);
                    // The external rows name their new CRM rows in the
                    // transaction that writes the links.
                    ext_batch.updates.extend(crm_id_updates(
                        e,
                        crm_id_after_insert,
                        &applied.inserted_keys,
                    )?);
                }
                let applied = if !ext_batch.is_empty() || !links.links.is_empty() {
                    let a = engine.external.apply(&ext_batch, Some(&links)).await?;
                    a.inserted_keys
                } else {
                    Vec::new()
                };
                if !link_column_after_insert.is_empty() {
                    let mut after = WriteBatch::new(e.crm_table.clone(), e.crm_key.name.clone());
                    if let Some(lc) = &e.crm_link {
                        for (crm_key, i) in link_column_after_insert {
                            after.updates.push(Update {
                                key: crm_key,
                                set: vec![(
                                    lc.name.clone(),
                                    Assign::Value(link_of(e, &applied[i])?),
                                )],
                            });
                        }
                    }
                    engine.crm.apply(&after, None).await?;
                }
            }
            Side::Crm => {
                let applied = if !ext_batch.is_empty() {
                    engine.external.apply(&ext_batch, None).await?.inserted_keys
                } else {
                    Vec::new()
                };
                resolve(&mut links, Side::External, &applied);
                if let Some(lc) = &e.crm_link {
                    for (crm_key, i) in link_column_after_insert {
                        crm_batch.updates.push(Update {
                            key: crm_key,
                            set: vec![(lc.name.clone(), Assign::Value(link_of(e, &applied[i])?))],
                        });
                    }
                }
                if !crm_batch.is_empty() || !links.links.is_empty() {
                    let applied = engine.crm.apply(&crm_batch, Some(&links)).await?;
                    // The external rows name their new CRM rows after the
                    // links commit; a crash in between is finished by the
                    // next run, which reads the new CRM rows as changes.
                    let named = crm_id_updates(e, crm_id_after_insert, &applied.inserted_keys)?;
                    if !named.is_empty() {
                        let mut after =
                            WriteBatch::new(e.external_table.clone(), e.external_key.name.clone());
                        after.updates = named;
                        engine.external.apply(&after, None).await?;
                    }
                }
            }
        }
        store
            .record_rejects(e.name(), self.run, self.source, &rejects)
            .await?;
        store.clear_rejects(e.name(), self.source, &cleared).await?;
        store
            .record_conflicts(e.name(), self.run, &conflicts)
            .await?;
        if !settled.is_empty() {
            let keys: Vec<String> = settled.iter().map(|(k, _)| k.clone()).collect();
            for c in store.open_conflicts(e.name(), Some(&keys)).await? {
                if settled
                    .iter()
                    .any(|(k, f)| *k == c.record.crm_key && *f == c.record.field)
                {
                    store.close_conflict(c.id, "both sides now agree").await?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces `KeyRef::Inserted` on `side` with the keys its inserts got.
fn resolve(links: &mut LinkBatch, side: Side, inserted: &[Value]) {
    for l in &mut links.links {
        let k = match side {
            Side::Crm => &mut l.crm_key,
            Side::External => &mut l.external_key,
        };
        if let KeyRef::Inserted(i) = *k {
            *k = KeyRef::Known(inserted[i].key_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_values_compare_without_trailing_spaces() {
        assert_eq!(
            match_part(&Value::Text("Acme    ".into())),
            match_part(&Value::Text("Acme".into()))
        );
        assert_ne!(
            match_part(&Value::Text(" Acme".into())),
            match_part(&Value::Text("Acme".into())),
            "leading spaces count, as in SQL"
        );
        assert_ne!(
            match_part(&Value::Text("ACME".into())),
            match_part(&Value::Text("Acme".into())),
            "exact, whatever the collation"
        );
        assert_eq!(match_part(&Value::Int(7)), "7");
    }
}
