//! `match_on`: the page's index of unclaimed rows by their match values,
//! and the one counterpart (or the ambiguity) an unlinked row finds there.

use super::{is_deleted, Ctx, Row, Writes};
use crate::endpoint::ColumnInfo;
use crate::endpoint::Scan;
use crate::engine::EngineError;
use crate::plan::{PerSide, Side};
use crate::schema::BoundField;
use crate::state::KeyRef;
use crate::value::Value;
use std::collections::{HashMap, HashSet};

/// One value of a `match_on` tuple as compared: text without trailing
/// spaces, as both databases' `=` compares it (and as a `char(n)` column
/// returns it padded).
pub(in crate::engine) fn match_part(v: &Value) -> String {
    match v {
        Value::Text(s) => s.trim_end_matches(' ').to_string(),
        other => other.key_string(),
    }
}

/// What `match_on` finds for an unlinked row.
pub(super) enum Matched {
    None,
    One(Vec<Value>),
    /// Why the row is a reject.
    Ambiguous(String),
}

/// What a page's `match_on` lookups found (see [`Ctx::match_index`]),
/// by the tuple of match values in the other side's types.
#[derive(Default)]
pub(super) struct MatchIndex {
    /// Unclaimed rows of the other side.
    other: HashMap<String, Vec<Vec<Value>>>,
    /// Keys of unclaimed source-side rows.
    own: HashMap<String, Vec<String>>,
}

impl Ctx<'_> {
    /// The columns of a `match_on` pair (CRM column, external column) on
    /// `side` and on the other side; None when either is gone.
    fn match_columns(
        &self,
        side: Side,
        (c, x): &(String, String),
    ) -> Option<(&ColumnInfo, &ColumnInfo)> {
        let t = &self.e.side;
        let cols = PerSide::new(
            t.crm.table.column(c).ok()?,
            t.external.table.column(x).ok()?,
        );
        Some((cols[side], cols[side.other()]))
    }

    /// The reference field (with its parent) whose CRM column is `crm`.
    fn reference_of(&self, crm: &str) -> Option<&(&BoundField, String)> {
        self.ref_fields
            .iter()
            .find(|(f, _)| f.crm.name.eq_ignore_ascii_case(crm))
    }

    /// Whether any `match_on` pair holds a reference.
    fn matches_references(&self) -> bool {
        self.e
            .plan
            .match_on
            .iter()
            .any(|(c, _)| self.reference_of(c).is_some())
    }

    /// The values of the first `match_on` pair's column on `side` to look
    /// rows up by, from the source rows' `own` values: converted to the
    /// other side's type, and a reference's canonical value (the parent's
    /// external key) to the parent's CRM key on CRM.
    fn lookup_values(&self, side: Side, other_ty: &ColumnInfo, own: &[Value]) -> Vec<Value> {
        let pair = &self.e.plan.match_on[0];
        match self.reference_of(&pair.0) {
            Some((f, parent)) if side == Side::Crm => {
                let refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
                own.iter()
                    .filter_map(|v| refs.translate(Side::External, f, parent, v).ok())
                    .collect()
            }
            Some(_) => own.to_vec(),
            None if side == self.source => own.to_vec(),
            None => {
                let zones = self.e.zones_from(self.source);
                own.iter()
                    .filter_map(|v| v.clone().coerce(&other_ty.ty, Some(zones), false).ok())
                    .collect()
            }
        }
    }

    /// The `match_on` values of a `side` row, in the other side's types
    /// where `side` is the source (the form both sides' rows are grouped
    /// by), as (own values, the tuple's text). None when a value is NULL
    /// or does not fit the other side's column.
    fn match_tuple(&self, side: Side, row: &Row<'_>) -> Option<(Vec<Value>, String)> {
        let e = self.e;
        let mut own = Vec::new();
        let mut parts = Vec::new();
        for pair in &e.plan.match_on {
            let (mine, theirs) = self.match_columns(side, pair)?;
            let zones = e.zones_from(side);
            let v = row.get(&mine.name);
            if v.is_null() {
                return None;
            }
            // A row of the other side is grouped by its values as read;
            // a source-side row by its values converted to that side. A
            // reference is compared in its canonical form, which every
            // row handed here holds.
            let t = if self.reference_of(&pair.0).is_some() {
                v.clone()
            } else if side == self.source {
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
    pub(super) async fn match_index(
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
        let Some((own_col, other_col)) = self.match_columns(self.source, &e.plan.match_on[0])
        else {
            return Ok(index);
        };
        if own_firsts.is_empty() {
            return Ok(index);
        }
        // Every first value converted, or its row would have no tuple.
        let other_values = self.lookup_values(other_side, other_col, &own_firsts);
        let own_values = self.lookup_values(self.source, own_col, &own_firsts);
        for (side, column, values) in [
            (other_side, &other_col.name, other_values),
            (self.source, &own_col.name, own_values),
        ] {
            let mut rows = self.unclaimed(side, column, &values).await?;
            let scan = self.e.scan(side);
            if side == Side::Crm && self.matches_references() {
                // CRM rows as read hold their parents' CRM keys.
                let refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
                for r in rows.iter_mut() {
                    refs.translate_crm_row(&self.ref_fields, &scan, r, |_| Value::Null);
                }
            }
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
        let deleted = e.side[side].deleted.as_ref();
        let deleted = deleted.and_then(|c| scan.position(&c.name));
        let claim = e.naming_column(side).and_then(|c| scan.position(&c.name));
        let mut rows: Vec<Vec<Value>> = self.engine.endpoints[side]
            .fetch(&scan, column, values)
            .await?
            .into_iter()
            .filter(|r| deleted.is_none_or(|p| !is_deleted(Some(&r[p]))))
            .filter(|r| claim.is_none_or(|p| r[p].is_null()))
            .collect();
        let keys: Vec<String> = rows.iter().map(|r| r[0].key_string()).collect();
        let linked = self.state.links_by(side, e.name(), &keys).await?;
        rows.retain(|r| linked.get(&r[0].key_string()).is_none_or(|l| l.deleted));
        Ok(rows)
    }

    /// The row on the other side that an unlinked source row's `match_on`
    /// values find in `index`, unless linked earlier in this page. One
    /// candidate is a match only when no other unlinked source row holds
    /// the same values: anything else is ambiguous, and nothing is
    /// guessed.
    pub(super) fn match_other(&self, row: &Row<'_>, index: &MatchIndex, w: &Writes) -> Matched {
        let Some((_, tuple)) = self.match_tuple(self.source, row) else {
            return Matched::None;
        };
        let in_page = |side: Side, k: &str| {
            w.links
                .iter()
                .any(|l| matches!(l.key(side), KeyRef::Known(o) if o == k))
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
