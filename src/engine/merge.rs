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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixture;
    use chrono::TimeZone;

    const TWO_FIELDS: &str = r#"
direction = "both"
conflict = "newest_wins"
[[entity.field]]
crm = "Comp_Name"
external = "name"
[[entity.field]]
crm = "Comp_City"
external = "city"
"#;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn at(sec: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, sec).unwrap())
    }

    /// A side's view: (field, value) pairs changed at second `sec`.
    fn view(values: &[(&str, &str)], sec: u32) -> View {
        View {
            values: values
                .iter()
                .map(|(f, v)| (f.to_string(), text(v)))
                .collect(),
            changed_at: at(sec),
        }
    }

    /// The pair 1 / 10 whose shadow holds `base`.
    fn pair(base: &[(&str, &str)]) -> Link {
        Link {
            crm_key: "1".into(),
            external_key: "10".into(),
            shadow: base
                .iter()
                .map(|(f, v)| (f.to_string(), Base::from(text(v))))
                .collect(),
            deleted: false,
        }
    }

    fn names(e: &BoundEntity, writes: &[(usize, Value)]) -> Vec<(String, Value)> {
        writes
            .iter()
            .map(|(i, v)| (e.fields[*i].name.clone(), v.clone()))
            .collect()
    }

    const BASE: [(&str, &str); 2] = [("comp_name", "Acme"), ("comp_city", "Leeds")];

    #[test]
    fn changes_to_different_fields_on_both_sides_both_survive() {
        let e = fixture::entity(TWO_FIELDS);
        let crm = view(&[("comp_name", "Acme Ltd"), ("comp_city", "Leeds")], 1);
        let ext = view(&[("comp_name", "Acme"), ("comp_city", "York")], 2);
        let m = merge(&e, &pair(&BASE), Some(&crm), Some(&ext), &HashSet::new());
        assert_eq!(
            names(&e, &m.to_external),
            [("comp_name".into(), text("Acme Ltd"))]
        );
        assert_eq!(names(&e, &m.to_crm), [("comp_city".into(), text("York"))]);
        assert!(m.conflicts.is_empty());
        assert!(m.shadow["comp_name"].is(&text("Acme Ltd")));
        assert!(m.shadow["comp_city"].is(&text("York")));
    }

    #[test]
    fn a_row_equal_to_its_shadow_is_an_echo_and_writes_nothing() {
        let e = fixture::entity(TWO_FIELDS);
        let same = view(&BASE, 5);
        let m = merge(&e, &pair(&BASE), Some(&same), Some(&same), &HashSet::new());
        assert!(!m.writes());
        assert!(m.conflicts.is_empty());
        assert_eq!(m.shadow, pair(&BASE).shadow);
    }

    #[test]
    fn the_same_change_on_both_sides_is_no_conflict() {
        let e = fixture::entity(TWO_FIELDS);
        let both = view(&[("comp_name", "Acme Ltd"), ("comp_city", "Leeds")], 3);
        let m = merge(&e, &pair(&BASE), Some(&both), Some(&both), &HashSet::new());
        assert!(!m.writes());
        assert!(m.conflicts.is_empty());
        assert!(m.shadow["comp_name"].is(&text("Acme Ltd")));
    }

    #[test]
    fn a_clash_is_logged_and_the_newer_side_wins() {
        let e = fixture::entity(TWO_FIELDS);
        let crm = view(&[("comp_name", "Acme CRM"), ("comp_city", "Leeds")], 9);
        let ext = view(&[("comp_name", "Acme ERP"), ("comp_city", "Leeds")], 4);
        let m = merge(&e, &pair(&BASE), Some(&crm), Some(&ext), &HashSet::new());
        assert_eq!(
            names(&e, &m.to_external),
            [("comp_name".into(), text("Acme CRM"))]
        );
        assert!(m.to_crm.is_empty());
        let [c] = m.conflicts.as_slice() else {
            panic!("one conflict expected: {:?}", m.conflicts)
        };
        assert_eq!(
            (c.field.as_str(), c.winner, c.base.clone()),
            ("comp_name", Some(Side::Crm), Some(text("Acme")))
        );
        assert_eq!(
            (c.crm.clone(), c.external.clone()),
            (text("Acme CRM"), text("Acme ERP"))
        );

        // The external side newer: it wins.
        let ext = view(&[("comp_name", "Acme ERP"), ("comp_city", "Leeds")], 20);
        let m = merge(&e, &pair(&BASE), Some(&crm), Some(&ext), &HashSet::new());
        assert_eq!(
            names(&e, &m.to_crm),
            [("comp_name".into(), text("Acme ERP"))]
        );
        assert_eq!(m.conflicts[0].winner, Some(Side::External));
    }

    #[test]
    fn manual_leaves_a_clash_alone_until_both_sides_agree() {
        let e = fixture::entity(&TWO_FIELDS.replace("newest_wins", "manual"));
        let crm = view(&[("comp_name", "Acme CRM"), ("comp_city", "Leeds")], 9);
        let ext = view(&[("comp_name", "Acme ERP"), ("comp_city", "Leeds")], 4);
        let m = merge(&e, &pair(&BASE), Some(&crm), Some(&ext), &HashSet::new());
        assert!(!m.writes());
        assert_eq!(m.conflicts[0].winner, None);
        assert!(m.shadow["comp_name"].is(&text("Acme")), "the base stays");

        // Held by that open conflict: nothing moves while the sides differ,
        // and the field settles once they agree.
        let held: HashSet<String> = ["comp_name".to_string()].into();
        let m = merge(&e, &pair(&BASE), Some(&crm), Some(&ext), &held);
        assert!(!m.writes() && m.conflicts.is_empty() && m.settled.is_empty());
        let agreed = view(&[("comp_name", "Acme ERP"), ("comp_city", "Leeds")], 30);
        let m = merge(&e, &pair(&BASE), Some(&agreed), Some(&ext), &held);
        assert_eq!(m.settled, ["comp_name"]);
        assert!(m.shadow["comp_name"].is(&text("Acme ERP")));
    }

    #[test]
    fn a_field_that_flows_one_way_has_an_owner_and_never_clashes() {
        let one_way = TWO_FIELDS.replace(
            "crm = \"Comp_City\"\nexternal = \"city\"",
            "crm = \"Comp_City\"\nexternal = \"city\"\ndirection = \"external_to_crm\"",
        );
        let e = fixture::entity(&one_way);
        let crm = view(&[("comp_name", "Acme"), ("comp_city", "Hull")], 9);
        let ext = view(&[("comp_name", "Acme"), ("comp_city", "York")], 4);
        let m = merge(&e, &pair(&BASE), Some(&crm), Some(&ext), &HashSet::new());
        assert!(m.conflicts.is_empty());
        assert!(m.to_external.is_empty());
        assert_eq!(names(&e, &m.to_crm), [("comp_city".into(), text("York"))]);
    }

    #[test]
    fn winner_ties_and_missing_times_go_to_crm() {
        let (crm, ext) = (view(&[], 5), view(&[], 5));
        assert_eq!(
            winner(ConflictPolicy::NewestWins, &crm, &ext),
            Some(Side::Crm)
        );
        let undated = View::default();
        assert_eq!(
            winner(ConflictPolicy::NewestWins, &undated, &ext),
            Some(Side::External)
        );
        assert_eq!(
            winner(ConflictPolicy::NewestWins, &crm, &undated),
            Some(Side::Crm)
        );
        assert_eq!(winner(ConflictPolicy::Manual, &crm, &ext), None);
    }
}
