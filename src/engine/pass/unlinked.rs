//! Unlinked rows: linking each to the counterpart that names it, carries
//! its id or matches it by `match_on`, or else inserting it on the other
//! side.

use super::matching::{MatchIndex, Matched};
use super::{deleted_flag, Ctx, Row, Writes};
use crate::endpoint::{Assign, Insert, Scan, Update};
use crate::engine::crm_write;
use crate::engine::mapping::FieldProblem;
use crate::engine::merge::View;
use crate::engine::references::Refs;
use crate::engine::{EngineError, EntityReport, Sample};
use crate::plan::{CrmDelete, PerSide};
use crate::state::{Base, KeyRef, LinkWrite, Shadow};
use crate::value::Value;
use std::collections::{BTreeMap, HashMap};

impl Ctx<'_> {
    /// Links the unlinked source `row` (its canonical view `own`) to
    /// `other`, a row of the other side read with `other_scan`: the pair is
    /// merged by the entity's policy and each side made to name the other.
    /// A row that cannot be mapped is a reject.
    fn link_to(
        &self,
        row: &Row<'_>,
        own: &View,
        other: &[Value],
        other_scan: &Scan,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let ks = row.values[0].key_string();
        let other_row = Row {
            values: other,
            scan: other_scan,
        };
        let theirs = match self.view(self.source.other(), &other_row) {
            Ok(v) => v,
            Err(p) => return self.problem(&ks, p, w, report),
        };
        let keys = PerSide::from_side(self.source, ks.clone(), other[0].key_string());
        let rows = PerSide::from_side(self.source, row, &other_row);
        let views = PerSide::from_side(self.source, own, &theirs);
        self.adopt(
            &keys.crm,
            &keys.external,
            (rows.crm, views.crm),
            (rows.external, views.external),
            w,
            report,
        )
        .or_else(|p| self.problem(&ks, p, w, report))
    }

    /// `match_on` for an unlinked source row: linked to its one match, or a
    /// reject when the match is ambiguous; `None` when nothing matched
    /// (or the entity has no `match_on`).
    fn link_by_match(
        &self,
        row: &Row<'_>,
        own: &View,
        matches: &MatchIndex,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Option<Result<(), EngineError>> {
        if self.e.plan.match_on.is_empty() {
            return None;
        }
        match self.match_other(row, matches, w) {
            Matched::One(other) => {
                let other_scan = self.e.scan(self.source.other());
                Some(self.link_to(row, own, &other, &other_scan, w, report))
            }
            Matched::Ambiguous(why) => {
                let ks = row.values[0].key_string();
                Some(self.problem(&ks, FieldProblem::Reject(why), w, report))
            }
            Matched::None => None,
        }
    }

    /// An unlinked live CRM row: a link column naming an external row
    /// links to it; an external row carrying its CRM id (an insert whose
    /// link was lost) is adopted; exactly one `match_on` match is linked;
    /// otherwise it is inserted. Either way both sides end up naming each
    /// other.
    pub(super) async fn unlinked_crm(
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
                let key = Value::from_key_string(&claim, &e.side.external.key.ty).ok();
                let found = match key {
                    Some(k) => {
                        self.engine
                            .endpoints
                            .external
                            .fetch(&ext_scan, &ext_scan.key, &[k])
                            .await?
                    }
                    None => Vec::new(),
                };
                if found.is_empty() && self.orphan_of_a_lost_link(&crm_key).await? {
                    // crmsync created this row from that external row and
                    // the run died before linking them; the external row
                    // has been deleted since: carry the delete.
                    w.crm.updates.push(Update {
                        key: crm_key.clone(),
                        set: crm_write::soft_delete(e, self.engine.plan.crm_user_id),
                    });
                    w.links.push(LinkWrite {
                        crm_key: KeyRef::Known(ks.clone()),
                        external_key: KeyRef::Known(claim.clone()),
                        shadow: self.layout.seal(e, &Shadow::new()),
                        deleted: true,
                    });
                    report.crm_deleted += 1;
                    return Ok(());
                }
                return match found.first() {
                    Some(x) => self.link_to(row, &view, x, &ext_scan, w, report),
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
                    .endpoints
                    .external
                    .find(&ext_scan, &[(id_col.name.clone(), id)], 2)
                    .await?;
                if let Some(x) = found.first() {
                    return self.link_to(row, &view, x, &ext_scan, w, report);
                }
            }
        }
        // 3. `match_on`: exactly one unlinked live external row holds the
        // same values, and no other unlinked live CRM row does.
        if let Some(linked) = self.link_by_match(row, &view, matches, w, report) {
            return linked;
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
                .map_err(|err| EngineError::KeyDoesNotFit {
                    entity: e.name().to_string(),
                    column: format!("external_crm_id_column {}", id_col.name),
                    key: format!("CRM id {ks}"),
                    reason: err.to_string(),
                    widen: false,
                })?;
            columns.push((id_col.name.clone(), Assign::Value(id)));
        }
        for (c, v) in &e.side.external.defaults {
            if !columns.iter().any(|(n, _)| n == c) {
                columns.push((c.clone(), Assign::Value(v.clone())));
            }
        }
        if let Some(d) = &e.side.external.deleted {
            if !columns.iter().any(|(n, _)| *n == d.name) && !d.has_default {
                columns.push((d.name.clone(), Assign::Value(deleted_flag(&d.ty, false))));
            }
        }
        if !columns
            .iter()
            .any(|(n, _)| *n == e.side.external.change.name)
        {
            columns.push((e.side.external.change.name.clone(), Assign::Now));
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

    /// The live CRM rows whose link column names one of these unlinked
    /// external rows, by external key: one lookup for the page, not one
    /// per row. Empty without a link column.
    pub(super) async fn crm_rows_naming(
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
        for r in self
            .engine
            .endpoints
            .crm
            .fetch(&crm_scan, &lc.name, &keys)
            .await?
        {
            let row = Row {
                values: &r,
                scan: &crm_scan,
            };
            // Live: the deleted flag is NULL.
            if e.side
                .crm
                .deleted
                .as_ref()
                .is_some_and(|d| !row.get(&d.name).is_null())
            {
                continue;
            }
            let named_key = row.get(&lc.name).key_string();
            named.entry(named_key).or_default().push(r);
        }
        if !self.ref_fields.is_empty() && !named.is_empty() {
            // Their references are translated like any CRM row's; one
            // whose parent is not linked reads as NULL there, which a NOT
            // NULL column then refuses rather than take a wrong key.
            let all: Vec<(&crate::endpoint::Scan, &[Value])> = named
                .values()
                .flatten()
                .map(|r| (&crm_scan, r.as_slice()))
                .collect();
            let refs = Refs::load(self.state, &self.ref_fields, &all, &[]).await?;
            for r in named.values_mut().flatten() {
                refs.translate_crm_row(&self.ref_fields, &crm_scan, r, |_| Value::Null);
            }
        }
        Ok(named)
    }

    /// Whether CRM row `crm_key`, unlinked though its link column names an
    /// external row that is gone, is one crmsync created from that row
    /// (its CreatedBy is the sync user) in a run that died before linking
    /// them, in an entity that carries external deletes into CRM. A row
    /// created by someone else names a wrong key and stays a reject.
    async fn orphan_of_a_lost_link(&self, crm_key: &Value) -> Result<bool, EngineError> {
        let e = self.e;
        let Some(created_by) = &e.crm_system.created_by else {
            return Ok(false);
        };
        if e.plan.delete_into_crm != CrmDelete::Soft {
            return Ok(false);
        }
        let mut scan = e.crm_scan();
        scan.columns = vec![e.side.crm.key.name.clone(), created_by.clone()];
        scan.filter = None;
        let rows = self
            .engine
            .endpoints
            .crm
            .fetch(&scan, &scan.key, std::slice::from_ref(crm_key))
            .await?;
        let user = Value::Int(self.engine.plan.crm_user_id);
        Ok(rows
            .first()
            .is_some_and(|r| r[1].key_string() == user.key_string()))
    }

    /// An unlinked live external row: a CRM row whose link column holds
    /// its key, or exactly one `match_on` match, is linked; otherwise it is
    /// inserted into CRM.
    pub(super) async fn unlinked_external(
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
                    return self.link_to(row, &ext_view, one, &crm_scan, w, report);
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
        if let Some(linked) = self.link_by_match(row, &ext_view, matches, w, report) {
            return linked;
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
            let (crm_v, truncated) = match self.to_crm(f, v.clone()) {
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
}
