//! Linked rows: merging a pair against its shadow, carrying a delete
//! across, reviving a pair, adopting a counterpart, and making each side
//! name the other.

use super::{bad_link, deleted_flag, Ctx, Row, Writes};
use crate::endpoint::{Assign, Update};
use crate::engine::crm_write;
use crate::engine::mapping::{external_to_canonical, FieldProblem};
use crate::engine::merge::{merge, Merged, View};
use crate::engine::{EngineError, EntityReport, Sample};
use crate::plan::{CrmDelete, ExternalDelete, PerSide, Side};
use crate::schema::BoundEntity;
use crate::state::{Base, Link, LinkWrite, Shadow};
use crate::value::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Whether an external row (`values`, with the fields' columns at
/// `positions`) is the echo of what was last synced: equal to its live
/// link's shadow in every field. An echo has nothing to give, so it is not
/// merged and its CRM row is not fetched; what changed in CRM since, the
/// CRM pass reads by CRM's own change column. (A CRM row is always merged:
/// that is where a link column left empty by a crash gets repaired.) A row
/// whose CRM-id column (`crm_id` its position, where the entity writes it)
/// does not name the linked CRM row is no echo: it is merged, and named.
pub(super) fn is_echo(
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

impl Ctx<'_> {
    /// A live linked source row and its counterpart as read: unless the
    /// counterpart is flagged deleted, the two are merged against the
    /// pair's shadow (`held` the open conflicts of the pair, by field) and
    /// the writes queued.
    pub(super) fn merge_linked(
        &self,
        l: &Link,
        row: Row<'_>,
        other_row: Row<'_>,
        held: Option<&HashMap<String, i64>>,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        let ks = row.values[0].key_string();
        if other_row.deleted(e, self.source.other()) {
            report.unchanged += 1;
            return Ok(());
        }
        let PerSide {
            crm: crm_row,
            external: ext_row,
        } = PerSide::from_side(self.source, row, other_row);
        let (crm_view, truncated) = match self.crm_view(&crm_row) {
            Ok(v) => v,
            Err(p) => return self.problem(&ks, p, w, report),
        };
        let ext_view = self.ext_view(&ext_row);
        // A crash between the write of one side and the other leaves a
        // side not naming its counterpart: finish it.
        let named = self.name_each_other(&l.crm_key, &l.external_key, &crm_row, &ext_row, w);
        if let Err(p) = named {
            return self.problem(&ks, p, w, report);
        }
        let held_names: HashSet<String> = held
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default();
        let m = merge(e, l, Some(&crm_view), Some(&ext_view), &held_names);
        for f in &m.settled {
            w.settled.push((l.crm_key.clone(), f.clone()));
        }
        if !m.to_external.is_empty() {
            report.truncated += truncated as u64;
        }
        if let Err(p) = self.apply_merge(l, m, "update", w, report) {
            self.problem(&ks, p, w, report)?;
        }
        Ok(())
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
                let (crm_v, truncated) = self.to_crm(f, v.clone())?;
                report.truncated += u64::from(truncated);
                fields.insert(f.crm.name.clone(), crm_v.display());
                set.push((f.crm.name.clone(), Assign::Value(crm_v)));
            }
            crm_write::touch(e, user, &mut set);
            let key = Value::from_key_string(&l.crm_key, &e.side.crm.key.ty)
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
            set.push((e.side.external.change.name.clone(), Assign::Now));
            let key = Value::from_key_string(&l.external_key, &e.side.external.key.ty).map_err(
                |err| FieldProblem::Reject(format!("external key {}: {err}", l.external_key)),
            )?;
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
    pub(super) fn delete_pair(
        &self,
        l: &Link,
        w: &mut Writes,
        report: &mut EntityReport,
    ) -> Result<(), EngineError> {
        let e = self.e;
        // Deletes into the external table follow its delete policy; into
        // CRM they are Sage CRM soft deletes.
        let carried = match self.source {
            Side::Crm => {
                let key = e
                    .key_value(Side::External, &l.external_key)
                    .map_err(|err| bad_link(e, &l.external_key, err))?;
                let carried = match e.plan.delete_into_external {
                    ExternalDelete::Hard => {
                        w.ext.deletes.push(key);
                        true
                    }
                    ExternalDelete::Soft => match &e.side.external.deleted {
                        Some(d) => {
                            w.ext.updates.push(Update {
                                key,
                                set: vec![
                                    (d.name.clone(), Assign::Value(deleted_flag(&d.ty, true))),
                                    (e.side.external.change.name.clone(), Assign::Now),
                                ],
                            });
                            true
                        }
                        None => false,
                    },
                    ExternalDelete::Ignore => false,
                };
                report.deleted += u64::from(carried);
                carried
            }
            Side::External => match e.plan.delete_into_crm {
                CrmDelete::Soft if e.plan.direction.external_to_crm() => {
                    let key = e
                        .key_value(Side::Crm, &l.crm_key)
                        .map_err(|err| bad_link(e, &l.crm_key, err))?;
                    w.crm.updates.push(Update {
                        key,
                        set: crm_write::soft_delete(e, self.engine.plan.crm_user_id),
                    });
                    report.crm_deleted += 1;
                    true
                }
                _ => false,
            },
        };
        if carried {
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
    pub(super) fn revive(
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
        let key = Value::from_key_string(&l.external_key, &e.side.external.key.ty)
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
        if let Some(d) = &e.side.external.deleted {
            set.push((d.name.clone(), Assign::Value(deleted_flag(&d.ty, false))));
        }
        set.push((e.side.external.change.name.clone(), Assign::Now));
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
    pub(super) fn adopt(
        &self,
        crm_key: &str,
        ext_key: &str,
        (crm_row, crm): (&Row<'_>, &View),
        (ext_row, ext): (&Row<'_>, &View),
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
        let m = merge(self.e, &link, Some(crm), Some(ext), &HashSet::new());
        report.adopted += 1;
        self.apply_merge(&link, m, "link", w, report)?;
        self.name_each_other(crm_key, ext_key, crm_row, ext_row, w)
    }

    /// Queues what a linked pair needs so that each side names the other:
    /// the CRM link column gets the external key, the external CRM-id
    /// column the CRM id, each in its own column's type, wherever the
    /// column exists, the entity writes into that side and the row read
    /// does not hold it already.
    pub(super) fn name_each_other(
        &self,
        crm_key: &str,
        ext_key: &str,
        crm_row: &Row<'_>,
        ext_row: &Row<'_>,
        w: &mut Writes,
    ) -> Result<(), FieldProblem> {
        let e = self.e;
        let holds = |row: &Row<'_>, column: &str, key: &str| {
            let v = row.get(column);
            !v.is_null() && v.key_string() == key
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
                let key = Value::from_key_string(crm_key, &e.side.crm.key.ty)
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
                let key =
                    Value::from_key_string(ext_key, &e.side.external.key.ty).map_err(|err| {
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
}
