//! `verify`: a full comparison of both sides of each entity, page by page
//! in key order (memory stays flat however large the tables), that reports
//! drift, and with `--repair` makes the next incremental run fix it and
//! runs that sync.
//!
//! Drift is anything an incremental sync cannot see by itself: values
//! changed without moving the change column, rows whose change column is
//! NULL, rows that should have been sent but have no link, and links whose
//! rows are gone. Repair never writes field values itself; it clears the
//! drifted fields from the link's shadow (so the merge sees both sides as
//! changed and the entity's policy decides) and moves change columns to the
//! server clock (so the window sees the rows). The sync does the rest, with
//! all of its rules: Sage CRM's write rules, conflict logging, rejects.

use super::mapping::{crm_round_trip, crm_to_canonical, external_to_canonical};
use super::pass::is_deleted;
use super::retry::retrying;
use super::{Engine, EngineError, EntityReport, Mode, StateView, MAX_SAMPLES};
use crate::endpoint::{Assign, Scan, Update};
use crate::engine::crm_write;
use crate::plan::{CrmDelete, Direction, ExternalDelete, PerSide, Side};
use crate::schema::BoundEntity;
use crate::state::{Link, LinkBatch, LinkWrite};
use crate::value::Value;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What a comparison found for one entity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyCounts {
    /// CRM rows read (those passing `crm_filter`, deleted ones included).
    pub crm_rows: u64,
    /// External rows read (those passing `external_filter`).
    pub external_rows: u64,
    /// Live links whose two rows were both found and compared.
    pub pairs: u64,
    /// Compared pairs whose every mapped field agrees.
    pub agree: u64,
    /// Compared pairs with at least one differing field (or a delete
    /// carried on one side only).
    pub differ: u64,
    /// Pairs deleted on both sides (or whose link is marked deleted): not
    /// drift.
    pub deleted_pairs: u64,
    /// Live CRM rows in the filter without a link, where a sync would send
    /// them (the direction includes crm_to_external and inserts are on).
    pub unlinked_crm: u64,
    /// Live external rows in the filter without a link, where a sync would
    /// bring them into CRM.
    pub unlinked_external: u64,
    /// Live links whose CRM row no longer exists.
    pub missing_crm: u64,
    /// Live links whose external row no longer exists.
    pub missing_external: u64,
    /// Live pairs where one row does not name the other: the CRM link
    /// column does not hold the external key, or `external_crm_id_column`
    /// does not hold the CRM id (a run stopped between writing a pair and
    /// naming it). The next sync that reads such a row names it again.
    pub unnamed: u64,
    /// CRM rows in the filter whose change column is NULL.
    pub null_change_crm: u64,
    /// External rows in the filter whose change column is NULL.
    pub null_change_external: u64,
}

impl VerifyCounts {
    /// Whether anything is out of step.
    pub fn drift(&self) -> bool {
        self.differ
            + self.unlinked_crm
            + self.unlinked_external
            + self.missing_crm
            + self.missing_external
            + self.unnamed
            + self.null_change_crm
            + self.null_change_external
            > 0
    }
}

/// One differing field, both values in canonical (external) form.
#[derive(Debug, Clone, Serialize)]
pub struct FieldDiff {
    /// The shadow key: the CRM column in lower case.
    pub field: String,
    pub crm: String,
    pub external: String,
}

/// One sample of drift.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// "differ", "missing external row", "missing CRM row", "unlinked CRM
    /// row", "unlinked external row" or "unnamed pair".
    pub kind: &'static str,
    pub crm_key: Option<String>,
    pub external_key: Option<String>,
    pub fields: Vec<FieldDiff>,
}

/// What `--repair` did, and what a fresh comparison found afterwards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Link shadows from which drifted fields were cleared.
    pub shadows_cleared: u64,
    /// Rows whose change column was moved to the server clock.
    pub crm_touched: u64,
    pub external_touched: u64,
    /// The incremental run that carried the repair.
    pub sync: EntityReport,
    /// The comparison after that run: what is still out of step.
    pub remaining: VerifyCounts,
    pub remaining_samples: Vec<Drift>,
}

/// The outcome of `verify` for one entity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub entity: String,
    #[serde(flatten)]
    pub found: VerifyCounts,
    /// Up to `MAX_SAMPLES` examples of what was found.
    pub samples: Vec<Drift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

impl VerifyReport {
    /// Whether a person needs to look: drift not repaired, or a repair
    /// that left drift, rejects or conflicts behind.
    pub fn unfinished(&self) -> bool {
        match &self.repair {
            Some(r) => r.remaining.drift() || r.sync.unfinished(),
            None => self.found.drift(),
        }
    }
}

/// Writes that make the next sync see the drift, queued per page.
#[derive(Default)]
struct Repairs {
    /// Links whose shadow lost fields, with what is left of it.
    links: Vec<(Link, crate::state::Shadow)>,
    /// Keys of the rows to touch, per side.
    touch: PerSide<Vec<Value>>,
    shadows_cleared: u64,
    /// Rows touched so far, per side.
    touched: PerSide<u64>,
}

/// How one linked pair compares.
enum Pair {
    Agree,
    Deleted,
    MissingExternal,
    /// Differing fields, and the side whose row to touch so that the
    /// sync merges the pair.
    Differ(Vec<FieldDiff>, Side),
}

/// One entity's comparison; with `repair` it also queues and writes the
/// repairs page by page.
struct Compare<'a> {
    engine: &'a Engine,
    e: &'a BoundEntity,
    state: &'a StateView<'a>,
    counts: VerifyCounts,
    samples: Vec<Drift>,
    repair: Option<Repairs>,
}

impl Engine {
    /// Compares both sides of each selected entity; with `repair`, makes
    /// the next incremental run fix what differs and runs it. Without
    /// `repair` nothing is written anywhere, not even the state schema.
    pub async fn verify(
        &self,
        only: Option<&str>,
        repair: bool,
    ) -> Result<Vec<VerifyReport>, EngineError> {
        let (entities, findings) = self.bind(only).await?;
        for w in &findings.warnings {
            tracing::debug!("{w}");
        }
        let state = if repair {
            self.state.migrate().await?;
            StateView::Store(&*self.state)
        } else {
            StateView::ReadOnly(&*self.state)
        };
        let mut reports = Vec::new();
        for e in &entities {
            reports.push(self.verify_entity(e, &state, repair).await?);
        }
        Ok(reports)
    }

    async fn verify_entity(
        &self,
        e: &BoundEntity,
        state: &StateView<'_>,
        repair: bool,
    ) -> Result<VerifyReport, EngineError> {
        // Held while repairs are written, so no sync runs in between.
        let lock = if repair {
            Some(self.lock(e).await?)
        } else {
            None
        };
        let mut first = Compare::new(self, e, state, repair).run().await?;
        let mut report = VerifyReport {
            entity: e.name().to_string(),
            found: first.counts,
            samples: first.samples,
            repair: None,
        };
        if !repair || !report.found.drift() {
            return Ok(report);
        }
        let mut repairs = first.repair.take().unwrap_or_default();
        for side in Side::BOTH {
            repairs.touched[side] += self.touch_null_changes(e, side).await?;
        }
        if let Some(lock) = lock {
            lock.release().await;
        }
        if repairs.touched.crm + repairs.touched.external > 0 {
            // The window ends `settle` before the source clock: wait until
            // the touched rows are inside it.
            tokio::time::sleep(e.plan.settle + std::time::Duration::from_millis(20)).await;
        }
        if report.found.missing_external > 0 {
            // Found gone by this comparison: the sync compares the links
            // for hard deletes whatever the table's statistics say yet.
            self.state.forget_deletes_checked(e.name()).await?;
        }
        let sync = self
            .sync_group(std::slice::from_ref(e), state, Mode::Apply)
            .await?
            .pop()
            .unwrap_or_default();
        let after = Compare::new(self, e, state, false).run().await?;
        report.repair = Some(RepairReport {
            shadows_cleared: repairs.shadows_cleared,
            crm_touched: repairs.touched.crm,
            external_touched: repairs.touched.external,
            sync,
            remaining: after.counts,
            remaining_samples: after.samples,
        });
        Ok(report)
    }

    /// Sets the change column of every row of `side` (in the filter) whose
    /// change column is NULL to the server clock; returns how many.
    async fn touch_null_changes(&self, e: &BoundEntity, side: Side) -> Result<u64, EngineError> {
        let (scan, ep) = (e.scan(side), &*self.endpoints[side]);
        let total = ep.count_null_changes(&scan).await?.max(0) as u64;
        let mut done = 0;
        // Touched rows leave the NULL set, so each round reads the next
        // ones; the bound guards against a trigger that keeps them NULL.
        let rounds = total / e.plan.batch_size as u64 + 2;
        for _ in 0..rounds {
            let rows = ep
                .find(
                    &scan,
                    &[(scan.change.clone(), Value::Null)],
                    e.plan.batch_size,
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            let keys: Vec<Value> = rows.into_iter().map(|r| r[0].clone()).collect();
            done += keys.len() as u64;
            self.touch(e, side, keys).await?;
        }
        Ok(done)
    }

    /// Moves the change column of rows `keys` of `side` to the server
    /// clock (on CRM by Sage CRM's update rules).
    async fn touch(
        &self,
        e: &BoundEntity,
        side: Side,
        keys: Vec<Value>,
    ) -> Result<(), EngineError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut set = vec![(e.side[side].change.name.clone(), Assign::Now)];
        if side == Side::Crm {
            // Sage CRM's update rules: who and when.
            crm_write::touch(e, self.plan.crm_user_id, &mut set);
        }
        let mut batch = e.write_batch(side);
        for k in keys {
            batch.updates.push(Update {
                key: k,
                set: set.clone(),
            });
        }
        let ep = &self.endpoints[side];
        retrying((e.name(), "the repair"), || ep.apply(&batch, None)).await?;
        Ok(())
    }
}

/// The value of `column` in a row read with `scan`.
fn get(scan: &Scan, row: &[Value], column: &str) -> Value {
    scan.position(column)
        .map(|p| row[p].clone())
        .unwrap_or(Value::Null)
}

impl<'a> Compare<'a> {
    fn new(engine: &'a Engine, e: &'a BoundEntity, state: &'a StateView<'a>, repair: bool) -> Self {
        Compare {
            engine,
            e,
            state,
            counts: VerifyCounts::default(),
            samples: Vec::new(),
            repair: repair.then(Repairs::default),
        }
    }

    fn sample(&mut self, d: Drift) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(d);
        }
    }

    async fn run(mut self) -> Result<Self, EngineError> {
        let e = self.e;
        let nulls = |side| async move {
            let n = self.engine.endpoints[side]
                .count_null_changes(&e.scan(side))
                .await?;
            Ok::<_, EngineError>(n.max(0) as u64)
        };
        self.counts.null_change_crm = nulls(Side::Crm).await?;
        self.counts.null_change_external = nulls(Side::External).await?;
        self.pages(Side::Crm).await?;
        self.pages(Side::External).await?;
        Ok(self)
    }

    /// Every row of `side` (in its filter) in key order, a page at a time;
    /// the next page is read while one is compared. CRM pages compare each
    /// row with its link's external counterpart, field by field; external
    /// pages find unlinked live rows, links whose CRM row is gone, and
    /// pairs whose CRM row lies outside the CRM filter (so the CRM pages
    /// did not compare them).
    async fn pages(&mut self, side: Side) -> Result<(), EngineError> {
        let e = self.e;
        let ep = &*self.engine.endpoints[side];
        let scan = e.scan(side);
        // What each page reads of the other side: the link, not the
        // filter, decides what belongs to a pair.
        let mut other = e.scan(side.other());
        other.filter = None;
        // Which linked CRM rows are in the filter: their keys are enough.
        let mut crm_keys_only = e.crm_scan();
        crm_keys_only.columns.truncate(1);
        let batch = e.plan.batch_size;
        let mut rows = ep.read_page(&scan, None, batch).await?;
        while let Some(last) = rows.last() {
            let after = last[0].clone();
            let ahead = async {
                if rows.len() < batch {
                    Ok(None)
                } else {
                    ep.read_page(&scan, Some(&after), batch).await.map(Some)
                }
            };
            let page = async {
                match side {
                    Side::Crm => self.crm_page(&scan, &other, &rows).await,
                    Side::External => {
                        self.external_page(&scan, &crm_keys_only, &other, &rows)
                            .await
                    }
                }
            };
            let (done, ahead) = tokio::join!(page, ahead);
            done?;
            match ahead? {
                Some(more) => rows = more,
                None => break,
            }
        }
        Ok(())
    }

    /// One CRM page of [`Compare::pages`].
    async fn crm_page(
        &mut self,
        scan: &Scan,
        ext_scan: &Scan,
        rows: &[Vec<Value>],
    ) -> Result<(), EngineError> {
        let e = self.e;
        let send_unlinked = e.plan.direction.crm_to_external() && e.plan.insert_into_external;
        self.counts.crm_rows += rows.len() as u64;
        let keys: Vec<String> = rows.iter().map(|r| r[0].key_string()).collect();
        let links = self.state.links_by_crm(e.name(), &keys).await?;
        let mut wanted = Vec::new();
        for l in links.values().filter(|l| !l.deleted) {
            if let Ok(k) = Value::from_key_string(&l.external_key, &e.side.external.key.ty) {
                wanted.push(k);
            }
        }
        let counterparts: HashMap<String, Vec<Value>> = self
            .engine
            .endpoints
            .external
            .fetch(ext_scan, &ext_scan.key, &wanted)
            .await?
            .into_iter()
            .map(|r| (r[0].key_string(), r))
            .collect();
        let ext_rows: Vec<&Vec<Value>> = counterparts.values().collect();
        let translated = self.translated(scan, rows, ext_scan, &ext_rows).await?;
        let rows: &[Vec<Value>] = translated.as_deref().unwrap_or(rows);
        for row in rows {
            let ks = row[0].key_string();
            let crm_deleted = e
                .side
                .crm
                .deleted
                .as_ref()
                .is_some_and(|d| is_deleted(Some(&get(scan, row, &d.name))));
            match links.get(&ks) {
                Some(l) if l.deleted => self.counts.deleted_pairs += 1,
                Some(l) => {
                    let ext_row = counterparts.get(&l.external_key);
                    let outcome = self.compare(scan, row, ext_scan, ext_row.map(|r| r.as_slice()));
                    if let (Some(x), Pair::Agree | Pair::Differ(..)) = (ext_row, &outcome) {
                        self.check_names(l, scan, row, ext_scan, x);
                    }
                    self.record(l, outcome);
                }
                None if !crm_deleted && send_unlinked => {
                    self.counts.unlinked_crm += 1;
                    self.sample(Drift {
                        kind: "unlinked CRM row",
                        crm_key: Some(ks),
                        external_key: None,
                        fields: Vec::new(),
                    });
                    if let Some(r) = &mut self.repair {
                        r.touch.crm.push(row[0].clone());
                    }
                }
                None => {}
            }
        }
        self.flush().await?;
        Ok(())
    }

    /// One external page of [`Compare::pages`].
    async fn external_page(
        &mut self,
        scan: &Scan,
        crm_keys_only: &Scan,
        crm_any: &Scan,
        rows: &[Vec<Value>],
    ) -> Result<(), EngineError> {
        let e = self.e;
        let send_unlinked = e.plan.direction.external_to_crm() && e.plan.insert_into_crm;
        self.counts.external_rows += rows.len() as u64;
        let keys: Vec<String> = rows.iter().map(|r| r[0].key_string()).collect();
        let links = self.state.links_by_external(e.name(), &keys).await?;
        let live: Vec<&Link> = links.values().filter(|l| !l.deleted).collect();
        let crm_keys: Vec<Value> = live
            .iter()
            .filter_map(|l| Value::from_key_string(&l.crm_key, &e.side.crm.key.ty).ok())
            .collect();
        // Those in the CRM filter were compared by the CRM pages.
        let seen: HashSet<String> = self
            .engine
            .endpoints
            .crm
            .fetch(crm_keys_only, &crm_keys_only.key, &crm_keys)
            .await?
            .into_iter()
            .map(|r| r[0].key_string())
            .collect();
        let outside: Vec<Value> = crm_keys
            .into_iter()
            .filter(|k| !seen.contains(&k.key_string()))
            .collect();
        let outside: Vec<Vec<Value>> = self
            .engine
            .endpoints
            .crm
            .fetch(crm_any, &crm_any.key, &outside)
            .await?;
        let ext_rows: Vec<&Vec<Value>> = rows.iter().collect();
        let outside = match self.translated(crm_any, &outside, scan, &ext_rows).await? {
            Some(t) => t,
            None => outside,
        };
        let outside: HashMap<String, Vec<Value>> = outside
            .into_iter()
            .map(|r| (r[0].key_string(), r))
            .collect();
        for row in rows {
            let ks = row[0].key_string();
            let ext_deleted = e
                .side
                .external
                .deleted
                .as_ref()
                .is_some_and(|d| is_deleted(Some(&get(scan, row, &d.name))));
            match links.get(&ks) {
                Some(l) if l.deleted => {}
                Some(l) if seen.contains(&l.crm_key) => {}
                Some(l) => match outside.get(&l.crm_key) {
                    Some(crm_row) => {
                        let outcome = self.compare(crm_any, crm_row, scan, Some(row));
                        if let Pair::Agree | Pair::Differ(..) = &outcome {
                            self.check_names(l, crm_any, crm_row, scan, row);
                        }
                        self.record(l, outcome);
                    }
                    None if ext_deleted => self.counts.deleted_pairs += 1,
                    None => {
                        self.counts.missing_crm += 1;
                        self.sample(Drift {
                            kind: "missing CRM row",
                            crm_key: Some(l.crm_key.clone()),
                            external_key: Some(ks),
                            fields: Vec::new(),
                        });
                    }
                },
                None if !ext_deleted && send_unlinked => {
                    self.counts.unlinked_external += 1;
                    self.sample(Drift {
                        kind: "unlinked external row",
                        crm_key: None,
                        external_key: Some(ks),
                        fields: Vec::new(),
                    });
                    if let Some(r) = &mut self.repair {
                        r.touch.external.push(row[0].clone());
                    }
                }
                None => {}
            }
        }
        self.flush().await?;
        Ok(())
    }

    /// CRM rows with the keys of referenced entities translated to those
    /// entities' external keys, as a sync compares them; `None` when the
    /// entity references none. A key whose parent is not linked stays as
    /// it is, and the pair shows it as a difference.
    async fn translated(
        &self,
        crm_scan: &Scan,
        crm_rows: &[Vec<Value>],
        ext_scan: &Scan,
        ext_rows: &[&Vec<Value>],
    ) -> Result<Option<Vec<Vec<Value>>>, EngineError> {
        let fields = super::references::reference_fields(&self.engine.plan.entities, self.e);
        if fields.is_empty() {
            return Ok(None);
        }
        let crm: Vec<(&Scan, &[Value])> =
            crm_rows.iter().map(|r| (crm_scan, r.as_slice())).collect();
        let ext: Vec<(&Scan, &[Value])> =
            ext_rows.iter().map(|r| (ext_scan, r.as_slice())).collect();
        let refs = super::references::Refs::load(self.state, &fields, &crm, &ext).await?;
        let mut out = crm_rows.to_vec();
        for r in out.iter_mut() {
            refs.translate_crm_row(&fields, crm_scan, r, |v| v);
        }
        Ok(Some(out))
    }

    /// Counts a live pair whose rows do not name each other, the way a
    /// sync names them: the CRM link column holds the external key where
    /// the entity writes into CRM, `external_crm_id_column` the CRM id
    /// where it writes into the external table. The repair touches the
    /// CRM row: the sync that reads it names both sides.
    fn check_names(
        &mut self,
        l: &Link,
        crm_scan: &Scan,
        crm_row: &[Value],
        ext_scan: &Scan,
        ext_row: &[Value],
    ) {
        let e = self.e;
        let mut wrong = Vec::new();
        let mut check = |column: &str, scan: &Scan, row: &[Value], want: &str, what: &str| {
            if scan.position(column).is_none() {
                return;
            }
            let v = get(scan, row, column);
            if v.is_null() || v.key_string() != want {
                wrong.push(FieldDiff {
                    field: format!("({what} {column})"),
                    crm: if what == "CRM link column" {
                        v.display()
                    } else {
                        want.to_string()
                    },
                    external: if what == "CRM link column" {
                        want.to_string()
                    } else {
                        v.display()
                    },
                });
            }
        };
        if let Some(lc) = e
            .crm_link
            .as_ref()
            .filter(|_| e.plan.direction.external_to_crm())
        {
            check(
                &lc.name,
                crm_scan,
                crm_row,
                &l.external_key,
                "CRM link column",
            );
        }
        if let Some(id) = e
            .external_crm_id
            .as_ref()
            .filter(|_| e.plan.direction.crm_to_external())
        {
            check(
                &id.name,
                ext_scan,
                ext_row,
                &l.crm_key,
                "external CRM-id column",
            );
        }
        if wrong.is_empty() {
            return;
        }
        self.counts.unnamed += 1;
        if let (Some(r), Ok(k)) = (&mut self.repair, e.key_value(Side::Crm, &l.crm_key)) {
            if !r.touch.crm.contains(&k) {
                r.touch.crm.push(k);
            }
        }
        self.sample(Drift {
            kind: "unnamed pair",
            crm_key: Some(l.crm_key.clone()),
            external_key: Some(l.external_key.clone()),
            fields: wrong,
        });
    }

    /// Counts a compared pair and queues its repair.
    fn record(&mut self, l: &Link, outcome: Pair) {
        let e = self.e;
        match outcome {
            Pair::Agree => {
                self.counts.pairs += 1;
                self.counts.agree += 1;
            }
            Pair::Deleted => self.counts.deleted_pairs += 1,
            Pair::MissingExternal => {
                self.counts.missing_external += 1;
                self.sample(Drift {
                    kind: "missing external row",
                    crm_key: Some(l.crm_key.clone()),
                    external_key: Some(l.external_key.clone()),
                    fields: Vec::new(),
                });
                // A CRM-owned row is sent again when the sync sees it; for
                // two-way entities the sync's delete detection decides.
                if let (Some(r), Ok(k)) = (&mut self.repair, e.key_value(Side::Crm, &l.crm_key)) {
                    r.touch.crm.push(k);
                }
            }
            Pair::Differ(fields, side) => {
                self.counts.pairs += 1;
                self.counts.differ += 1;
                if let Some(r) = &mut self.repair {
                    let mut shadow = l.shadow.clone();
                    for f in &fields {
                        shadow.remove(&f.field);
                    }
                    if shadow != l.shadow {
                        r.shadows_cleared += 1;
                        r.links.push((l.clone(), shadow));
                    }
                    if let Ok(k) = e.key_value(side, l.key(side)) {
                        r.touch[side].push(k);
                    }
                }
                self.sample(Drift {
                    kind: "differ",
                    crm_key: Some(l.crm_key.clone()),
                    external_key: Some(l.external_key.clone()),
                    fields,
                });
            }
        }
    }

    /// Compares a linked pair field by field in canonical form.
    fn compare(
        &self,
        crm_scan: &Scan,
        crm_row: &[Value],
        ext_scan: &Scan,
        ext_row: Option<&[Value]>,
    ) -> Pair {
        let e = self.e;
        let crm_deleted = e
            .side
            .crm
            .deleted
            .as_ref()
            .is_some_and(|d| is_deleted(Some(&get(crm_scan, crm_row, &d.name))));
        let Some(ext_row) = ext_row else {
            return if crm_deleted {
                Pair::Deleted
            } else {
                Pair::MissingExternal
            };
        };
        let ext_deleted = e
            .side
            .external
            .deleted
            .as_ref()
            .is_some_and(|d| is_deleted(Some(&get(ext_scan, ext_row, &d.name))));
        let state = |deleted: bool| if deleted { "deleted" } else { "live" }.to_string();
        match (crm_deleted, ext_deleted) {
            (true, true) => return Pair::Deleted,
            (true, false) | (false, true) => {
                // A delete the sync would carry but has not: drift on the
                // deleted side. One it would not carry is the configuration.
                let carried = if crm_deleted {
                    e.plan.direction.crm_to_external()
                        && e.plan.delete_into_external != ExternalDelete::Ignore
                } else {
                    e.plan.direction.external_to_crm() && e.plan.delete_into_crm == CrmDelete::Soft
                };
                if !carried {
                    return Pair::Deleted;
                }
                let side = if crm_deleted {
                    Side::Crm
                } else {
                    Side::External
                };
                return Pair::Differ(
                    vec![FieldDiff {
                        field: "(deleted)".into(),
                        crm: state(crm_deleted),
                        external: state(ext_deleted),
                    }],
                    side,
                );
            }
            (false, false) => {}
        }
        let mut diffs = Vec::new();
        let mut owners = Vec::new();
        for f in &e.fields {
            let x = external_to_canonical(f, get(ext_scan, ext_row, &f.external.name));
            let raw = get(crm_scan, crm_row, &f.crm.name);
            let c = match crm_to_canonical(f, raw.clone(), e.to_external) {
                Ok((c, _)) => c,
                Err(p) => {
                    let why = match p {
                        super::FieldProblem::Reject(m) | super::FieldProblem::Fail(m) => m,
                    };
                    diffs.push(FieldDiff {
                        field: f.name.clone(),
                        crm: format!("{} (cannot be mapped: {why})", raw.display()),
                        external: x.display(),
                    });
                    if !owners.contains(&f.plan.direction) {
                        owners.push(f.plan.direction);
                    }
                    continue;
                }
            };
            if c == x || crm_round_trip(f, &x, e) == c {
                continue;
            }
            diffs.push(FieldDiff {
                field: f.name.clone(),
                crm: c.display(),
                external: x.display(),
            });
            if !owners.contains(&f.plan.direction) {
                owners.push(f.plan.direction);
            }
        }
        if diffs.is_empty() {
            return Pair::Agree;
        }
        Pair::Differ(
            diffs,
            self.side_to_touch(&owners, crm_scan, crm_row, ext_scan, ext_row),
        )
    }

    /// The side whose row a drifted pair's repair touches: the only side
    /// the entity reads from, or the owner of one-way fields, or else the
    /// side that changed last (so `newest_wins` keeps its meaning; a tie
    /// goes to CRM, as in the merge).
    fn side_to_touch(
        &self,
        owners: &[Direction],
        crm_scan: &Scan,
        crm_row: &[Value],
        ext_scan: &Scan,
        ext_row: &[Value],
    ) -> Side {
        let e = self.e;
        if !e.plan.direction.external_to_crm() {
            return Side::Crm;
        }
        if !e.plan.direction.crm_to_external() {
            return Side::External;
        }
        match owners {
            [Direction::CrmToExternal] => return Side::Crm,
            [Direction::ExternalToCrm] => return Side::External,
            _ => {}
        }
        let crm_at =
            get(crm_scan, crm_row, &e.side.crm.change.name).to_utc(self.engine.plan.crm.timezone);
        let ext_at = get(ext_scan, ext_row, &e.side.external.change.name)
            .to_utc(self.engine.plan.external.timezone);
        match (crm_at, ext_at) {
            (Some(c), Some(x)) if x > c => Side::External,
            (None, Some(_)) => Side::External,
            _ => Side::Crm,
        }
    }

    /// Writes the repairs queued by one page: shadows first, then the
    /// touches (a crash in between only leaves drift the next verify finds
    /// again).
    async fn flush(&mut self) -> Result<(), EngineError> {
        let Some(r) = &mut self.repair else {
            return Ok(());
        };
        let e = self.e;
        if !r.links.is_empty() {
            let layout = self.engine.layout(e, true).await?;
            let batch = LinkBatch {
                schema: self.engine.plan.state_schema.clone(),
                entity: e.name().to_string(),
                links: std::mem::take(&mut r.links)
                    .into_iter()
                    .map(|(l, shadow)| {
                        let sealed = layout.seal(e, &shadow);
                        LinkWrite::pair(&l.crm_key, &l.external_key, sealed, false)
                    })
                    .collect(),
            };
            let store = self.state.store();
            retrying((e.name(), "the repair"), || store.write_links(&batch)).await?;
        }
        for side in Side::BOTH {
            let keys = std::mem::take(&mut r.touch[side]);
            r.touched[side] += keys.len() as u64;
            self.engine.touch(e, side, keys).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_pairs_are_not_drift_and_a_repair_is_judged_by_what_remains() {
        let mut found = VerifyCounts {
            pairs: 3,
            agree: 3,
            deleted_pairs: 2,
            ..Default::default()
        };
        assert!(!found.drift());
        found.null_change_external = 1;
        assert!(found.drift());
        let mut report = VerifyReport {
            entity: "supplier".into(),
            found,
            ..Default::default()
        };
        assert!(report.unfinished());
        report.repair = Some(RepairReport::default());
        assert!(!report.unfinished(), "the repair left nothing open");
        if let Some(r) = &mut report.repair {
            r.sync.open_conflicts = 1;
        }
        assert!(report.unfinished(), "a conflict the repair met stays open");
    }
}
