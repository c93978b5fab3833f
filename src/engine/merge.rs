//! Field-level three-way merge of a linked pair against its shadow.
//!
//! For each field: a side "changed" when its canonical value differs from
//! the shadow (for the CRM side: from what the CRM would hold had it been
//! written the shadow, so lossy mappings are not mistaken for changes).
//! One side changed: its value goes to the other side. Both changed to the
//! same value: nothing to write. Both changed to different values: a
//! conflict, resolved by the entity's policy and always logged.

use super::mapping::{crm_round_trip, Values};
use crate::plan::{ConflictPolicy, Side};
use crate::schema::{BoundEntity, BoundField};
use crate::state::{Base, ConflictRecord, Link, Shadow};
use crate::value::Value;
use chrono::{DateTime, Utc};
use std::collections::HashSet;

/// One side of a pair in canonical form.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub values: Values,
    pub changed_at: Option<DateTime<Utc>>,
}

/// What merging one pair decided.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// Canonical values to write to the external row, by field index.
    pub to_external: Vec<(usize, Value)>,
    /// Canonical values to write to the CRM row, by field index.
    pub to_crm: Vec<(usize, Value)>,
    pub shadow: Shadow,
    pub conflicts: Vec<ConflictRecord>,
    /// Fields under an open (manual) conflict whose two sides now agree.
    pub settled: Vec<String>,
}

impl Merged {
    pub fn writes(&self) -> bool {
        !self.to_external.is_empty() || !self.to_crm.is_empty()
    }
}

fn crm_changed(f: &BoundField, e: &BoundEntity, c: &Value, base: Option<&Base>) -> bool {
    base.is_none_or(|b| !b.held_by_crm(c, |b| crm_round_trip(f, b, e)))
}

/// The winner of a same-field clash under `policy`; `None` for manual.
/// `newest_wins` compares the two change times in UTC; a tie, or a side
/// without a change time, goes to the CRM.
pub fn winner(policy: ConflictPolicy, crm: &View, ext: &View) -> Option<Side> {
    match policy {
        ConflictPolicy::CrmWins => Some(Side::Crm),
        ConflictPolicy::ExternalWins => Some(Side::External),
        ConflictPolicy::Manual => None,
        ConflictPolicy::NewestWins => match (crm.changed_at, ext.changed_at) {
            (Some(c), Some(x)) if x > c => Some(Side::External),
            (None, Some(_)) => Some(Side::External),
            _ => Some(Side::Crm),
        },
    }
}

/// Merges a pair: `pair` holds its two keys (which conflicts are recorded
/// under) and its shadow, the base of the merge. `crm` / `ext` are `None`
/// when that side was not read (no field can flow from it); `held` names
/// fields under an open conflict.
pub fn merge(
    e: &BoundEntity,
    pair: &Link,
    crm: Option<&View>,
    ext: Option<&View>,
    held: &HashSet<String>,
) -> Merged {
    let base = &pair.shadow;
    let mut out = Merged {
        shadow: base.clone(),
        ..Default::default()
    };
    for (i, f) in e.fields.iter().enumerate() {
        let b = base.get(&f.name);
        let c = crm.and_then(|v| v.values.get(&f.name));
        let x = ext.and_then(|v| v.values.get(&f.name));
        let c_changed = c.is_some_and(|c| crm_changed(f, e, c, b));
        let x_changed = x.is_some_and(|x| b.is_none_or(|b| !b.is(x)));
        let to_ext = f.plan.direction.crm_to_external() && e.plan.update_into_external;
        let to_crm = f.plan.direction.external_to_crm() && e.plan.update_into_crm;
        let agree = |c: &Value, x: &Value| c == x || crm_round_trip(f, x, e) == *c;
        if held.contains(&f.name) {
            if let (Some(c), Some(x)) = (c, x) {
                if agree(c, x) {
                    out.settled.push(f.name.clone());
                    out.shadow.insert(f.name.clone(), x.clone().into());
                }
            }
            continue;
        }
        match (c_changed, x_changed) {
            (false, false) => {}
            (true, false) => {
                let c = c.cloned().unwrap_or(Value::Null);
                if to_ext {
                    if x != Some(&c) {
                        out.to_external.push((i, c.clone()));
                    }
                    out.shadow.insert(f.name.clone(), c.into());
                } else if x.is_none() && b.is_none() {
                    // First sight of a field that only flows into CRM.
                    out.shadow.insert(f.name.clone(), c.into());
                }
            }
            (false, true) => {
                let x = x.cloned().unwrap_or(Value::Null);
                if to_crm {
                    if !c.is_some_and(|c| agree(c, &x)) {
                        out.to_crm.push((i, x.clone()));
                    }
                    out.shadow.insert(f.name.clone(), x.into());
                }
            }
            (true, true) => {
                let (c, x) = (
                    c.cloned().unwrap_or(Value::Null),
                    x.cloned().unwrap_or(Value::Null),
                );
                if agree(&c, &x) {
                    out.shadow.insert(f.name.clone(), x.into());
                    continue;
                }
                // A field that flows one way only has an owner: no clash.
                let win = match (to_ext, to_crm) {
                    (true, false) => Some(Side::Crm),
                    (false, true) => Some(Side::External),
                    (false, false) => continue,
                    (true, true) => {
                        let w = winner(
                            e.plan.conflict,
                            crm.unwrap_or(&View::default()),
                            ext.unwrap_or(&View::default()),
                        );
                        out.conflicts.push(ConflictRecord {
                            crm_key: pair.crm_key.clone(),
                            external_key: pair.external_key.clone(),
                            field: f.name.clone(),
                            base: b.and_then(|b| b.value().cloned()),
                            crm: c.clone(),
                            external: x.clone(),
                            crm_changed_at: crm.and_then(|v| v.changed_at),
                            external_changed_at: ext.and_then(|v| v.changed_at),
                            winner: w,
                        });
                        w
                    }
                };
                match win {
                    Some(Side::Crm) => {
                        out.to_external.push((i, c.clone()));
                        out.shadow.insert(f.name.clone(), c.into());
                    }
                    Some(Side::External) => {
                        out.to_crm.push((i, x.clone()));
                        out.shadow.insert(f.name.clone(), x.into());
                    }
                    None => {}
                }
            }
        }
    }
    out
}
