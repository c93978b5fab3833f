//! Fields that hold another entity's keys (`references = "ENTITY"`),
//! translated through that entity's links.
//!
//! The canonical value of such a field is the referenced (parent) row's
//! external key: an external row's value is already one, a CRM row's value
//! (the parent's CRM key) is translated when the row is read, and a value
//! written into CRM is translated back. Each page of a pass looks up, in
//! the parents' links, every key its rows hold, once. A key whose parent
//! row is not linked cannot be translated: the row is held as a reject
//! naming the parent, and retried on every run until the parent is linked.

use super::mapping::FieldProblem;
use super::{EngineError, StateView};
use crate::endpoint::Scan;
use crate::plan::{PerSide, Side};
use crate::schema::{BoundEntity, BoundField};
use crate::value::Value;
use std::collections::{HashMap, HashSet};

/// The parents' keys a page needs, translated both ways.
#[derive(Debug, Default)]
pub(super) struct Refs {
    /// By the side a key is on, then by parent entity: that side's key →
    /// the other side's key.
    keys: PerSide<HashMap<String, HashMap<String, String>>>,
}

/// The fields of `e` that reference another entity, with that entity's
/// configured name.
pub(super) fn reference_fields<'e>(
    engine_entities: &[crate::plan::EntityPlan],
    e: &'e BoundEntity,
) -> Vec<(&'e BoundField, String)> {
    e.fields
        .iter()
        .filter_map(|f| {
            let r = f.plan.references.as_deref()?;
            let parent = engine_entities
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(r))
                .map(|p| p.name.clone())
                .unwrap_or_else(|| r.to_string());
            Some((f, parent))
        })
        .collect()
}

impl Refs {
    /// Looks up the parents' links of every reference value of `crm_rows`
    /// (CRM keys) and `ext_rows` (external keys).
    pub(super) async fn load(
        state: &StateView<'_>,
        fields: &[(&BoundField, String)],
        crm_rows: &[(&Scan, &[Value])],
        ext_rows: &[(&Scan, &[Value])],
    ) -> Result<Refs, EngineError> {
        let mut out = Refs::default();
        if fields.is_empty() {
            return Ok(out);
        }
        let mut wanted: HashMap<(&str, Side), HashSet<String>> = HashMap::new();
        for (f, parent) in fields {
            for (side, rows, column) in [
                (Side::Crm, crm_rows, &f.crm.name),
                (Side::External, ext_rows, &f.external.name),
            ] {
                for (scan, row) in rows {
                    let Some(p) = scan.position(column) else {
                        continue;
                    };
                    if !row[p].is_null() {
                        wanted
                            .entry((parent.as_str(), side))
                            .or_default()
                            .insert(row[p].key_string());
                    }
                }
            }
        }
        for ((parent, side), keys) in wanted {
            let keys: Vec<String> = keys.into_iter().collect();
            // A deleted pair still names the same two rows (a key is in one
            // link at most): a child left under a deleted parent keeps it.
            for l in state.links_by(side, parent, &keys).await?.into_values() {
                out.keys
                    .crm
                    .entry(parent.to_string())
                    .or_default()
                    .insert(l.crm_key.clone(), l.external_key.clone());
                out.keys
                    .external
                    .entry(parent.to_string())
                    .or_default()
                    .insert(l.external_key, l.crm_key);
            }
        }
        Ok(out)
    }

    /// Value `v` of reference field `f` on side `from` (a key of
    /// `parent` there) as the other side's key of the same parent row, in
    /// the type of `f`'s column on that side: a CRM value becomes the
    /// canonical one, a canonical value the CRM one.
    pub(super) fn translate(
        &self,
        from: Side,
        f: &BoundField,
        parent: &str,
        v: &Value,
    ) -> Result<Value, FieldProblem> {
        if v.is_null() {
            return Ok(Value::Null);
        }
        let name = |side: Side| match side {
            Side::Crm => "CRM",
            Side::External => "external",
        };
        let k = v.key_string();
        let other = self.keys[from]
            .get(parent)
            .and_then(|m| m.get(&k))
            .ok_or_else(|| {
                FieldProblem::Reject(format!(
                    "field {}: parent {parent:?} {} key {k} is not linked; \
                     it goes through once its {parent:?} row is linked",
                    f.plan.crm,
                    name(from)
                ))
            })?;
        let column = f.column(from.other());
        Value::from_key_string(other, &column.ty).map_err(|err| {
            FieldProblem::Reject(format!(
                "field {}: parent {parent:?} {} key {other} does not fit {}: {err}",
                f.plan.crm,
                name(from.other()),
                column.name
            ))
        })
    }

    /// Translates the reference values of a CRM row in place. A value
    /// whose parent row is not linked becomes NULL when its field is
    /// deferrable (written NULL first, filled in once the parent is
    /// linked), else `unlinked(value)`; the reasons of the first of each
    /// are returned.
    pub(super) fn translate_crm_row(
        &self,
        fields: &[(&BoundField, String)],
        scan: &Scan,
        row: &mut [Value],
        unlinked: impl Fn(Value) -> Value,
    ) -> Untranslated {
        let mut out = Untranslated::default();
        for (f, parent) in fields {
            let Some(p) = scan.position(&f.crm.name) else {
                continue;
            };
            match self.translate(Side::Crm, f, parent, &row[p]) {
                Ok(v) => row[p] = v,
                Err(FieldProblem::Reject(why) | FieldProblem::Fail(why)) => {
                    let v = std::mem::replace(&mut row[p], Value::Null);
                    if f.deferrable {
                        out.deferred.get_or_insert(why);
                    } else {
                        row[p] = unlinked(v);
                        out.held.get_or_insert(why);
                    }
                }
            }
        }
        out
    }

    /// Sets the deferrable reference values of an external row whose parent
    /// row is not linked to NULL; the reason of the first is returned.
    /// (Other values are translated when written, and a value that cannot
    /// be makes its row a reject then.)
    pub(super) fn defer_external_row(
        &self,
        fields: &[(&BoundField, String)],
        scan: &Scan,
        row: &mut [Value],
    ) -> Option<String> {
        let mut reason = None;
        for (f, parent) in fields.iter().filter(|(f, _)| f.deferrable) {
            let Some(p) = scan.position(&f.external.name) else {
                continue;
            };
            if let Err(FieldProblem::Reject(why) | FieldProblem::Fail(why)) =
                self.translate(Side::External, f, parent, &row[p])
            {
                row[p] = Value::Null;
                reason.get_or_insert(why);
            }
        }
        reason
    }
}

/// The reference values of a row whose parent rows are not linked.
#[derive(Debug, Default)]
pub(super) struct Untranslated {
    /// Why the row is held (a reference that cannot be written NULL).
    pub held: Option<String>,
    /// Why deferrable references were set to NULL, to be filled in later.
    pub deferred: Option<String>,
}
