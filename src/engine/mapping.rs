//! Field mapping between a CRM row and the canonical form kept in shadows
//! (the external column's type and representation).

use crate::plan::{OnTruncate, Side, Transform};
use crate::schema::BoundEntity;
use crate::schema::BoundField;
use crate::state::shadow::{self, Sealer, Sealing};
use crate::state::Shadow;
use crate::value::{CoerceError, Value};
use std::collections::BTreeMap;

/// Canonical values of a row, by field (the CRM column name in lower
/// case).
pub type Values = BTreeMap<String, Value>;

/// A shadow layout: its id in the state store, and the fields it holds in
/// order (as indexes of the entity's fields, and by name).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub id: i32,
    pub fields: Vec<usize>,
    pub names: Vec<String>,
    /// Per field: the CRM reads every canonical value back unchanged (no
    /// transform, no `values`, one type on both sides), so sealing need
    /// not map it there and back.
    exact: Vec<bool>,
}

impl Layout {
    pub fn new(e: &BoundEntity, id: i32, fields: Vec<usize>) -> Layout {
        let same_zone = e.to_crm.from == e.to_crm.to;
        let exact = fields
            .iter()
            .map(|&i| {
                let f = &e.fields[i];
                f.plan.transform == Transform::None
                    && f.plan.values.is_empty()
                    && f.crm.ty == f.external.ty
                    && (same_zone || !f.crm.ty.is_timestamp())
            })
            .collect();
        let names = fields.iter().map(|&i| e.fields[i].name.clone()).collect();
        Layout {
            id,
            fields,
            names,
            exact,
        }
    }

    /// Seals `shadow` for the state store, with the CRM's reading of each
    /// value beside it where that differs.
    pub fn seal(&self, e: &BoundEntity, shadow: &Shadow) -> Vec<u8> {
        shadow::seal(self.id, &self.names, shadow, |i, v| self.sealing(e, i, v))
    }

    /// Seals the canonical values of the layout's fields, in order.
    pub fn seal_values(&self, e: &BoundEntity, values: &[Value]) -> Vec<u8> {
        let mut s = Sealer::new(self.id, self.names.len());
        for (i, v) in values.iter().enumerate() {
            s.push(self.sealing(e, i, v));
        }
        s.finish()
    }

    /// How value `v` of the layout's `i`-th field is sealed.
    pub fn sealing(&self, e: &BoundEntity, i: usize, v: &Value) -> Sealing {
        if self.exact[i] {
            shadow::sealing(v, v)
        } else {
            shadow::sealing(v, &crm_round_trip(&e.fields[self.fields[i]], v, e))
        }
    }
}

/// Why one value could not be mapped.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldProblem {
    /// The row is set aside (recorded in rejects) and retried later.
    Reject(String),
    /// The whole batch must not be applied (`on_truncate = "fail"`).
    Fail(String),
}

/// A mapped row: canonical values by field, and how many were truncated.
#[derive(Debug, Clone, Default)]
pub struct Mapped {
    pub values: Values,
    pub truncated: usize,
}

fn coerce_problem(field: &BoundField, target: &str, e: CoerceError) -> FieldProblem {
    let msg = format!("field {}: {e} ({target})", field.plan.crm);
    match (&e, field.plan.on_truncate) {
        (CoerceError::TooLong { .. }, OnTruncate::Fail) => FieldProblem::Fail(msg),
        _ => FieldProblem::Reject(msg),
    }
}

/// The canonical form of a CRM value of `field`.
pub fn crm_to_canonical(
    field: &BoundField,
    v: Value,
    zones: crate::value::Zones,
) -> Result<(Value, bool), FieldProblem> {
    let v = match field.plan.transform {
        Transform::Checkbox => match v {
            Value::Text(s) => Value::Bool(s.trim().eq_ignore_ascii_case("y")),
            Value::Null => Value::Bool(false),
            other => other,
        },
        Transform::Trim => match v {
            Value::Text(s) => Value::Text(s.trim().to_string()),
            other => other,
        },
        Transform::None => v,
    };
    let v = listed(field, v, Side::Crm)?;
    fit(field, v, &field.external, "external", zones)
}

/// `v`, a value of side `from`, through the field's `values` list to the
/// other side's value; unchanged when the field has no list or `v` is NULL.
fn listed(field: &BoundField, v: Value, from: Side) -> Result<Value, FieldProblem> {
    if field.plan.values.is_empty() || v.is_null() {
        return Ok(v);
    }
    let key = v.key_string();
    let found = field.plan.values.iter().find_map(|(crm, ext)| match from {
        Side::Crm => (*crm == key).then_some(ext),
        Side::External => (*ext == key).then_some(crm),
    });
    match found {
        Some(other) => Ok(Value::Text(other.clone())),
        None => Err(FieldProblem::Reject(format!(
            "field {}: {}value {key:?} has no entry in values; add it to the mapping",
            field.plan.crm,
            if from == Side::External {
                "external "
            } else {
                ""
            }
        ))),
    }
}

/// Converts `v` for `column` (of `side`): a NULL for a NOT NULL column is a
/// reject (left to the database, one such row would fail its whole batch
/// on every run); an oversize value follows the field's `on_truncate`.
fn fit(
    field: &BoundField,
    v: Value,
    column: &crate::endpoint::ColumnInfo,
    side: &str,
    zones: crate::value::Zones,
) -> Result<(Value, bool), FieldProblem> {
    let target = || format!("{side} column {}", column.name);
    if v.is_null() && !column.nullable {
        return Err(FieldProblem::Reject(format!(
            "field {}: the value is empty (NULL) but {} is NOT NULL; \
             fill it in at the source or map a column that allows NULL",
            field.plan.crm,
            target()
        )));
    }
    if field.plan.on_truncate != OnTruncate::Truncate {
        return v
            .coerce(&column.ty, Some(zones), false)
            .map(|out| (out, false))
            .map_err(|e| coerce_problem(field, &target(), e));
    }
    match v.clone().coerce(&column.ty, Some(zones), false) {
        Ok(out) => Ok((out, false)),
        Err(CoerceError::TooLong { .. }) => {
            let out = v
                .coerce(&column.ty, Some(zones), true)
                .map_err(|e| coerce_problem(field, &target(), e))?;
            Ok((out, true))
        }
        Err(e) => Err(coerce_problem(field, &target(), e)),
    }
}

/// Maps the fields of a CRM row that flow towards the external side.
/// `get` returns the row's value of a CRM column.
pub fn map_crm_row<'a>(
    fields: impl Iterator<Item = &'a BoundField> + Clone,
    zones: crate::value::Zones,
    mut get: impl FnMut(&BoundField) -> Value,
) -> Result<Mapped, FieldProblem> {
    let (values, truncated) = map_crm_values(fields.clone(), zones, |_, f| get(f))?;
    Ok(Mapped {
        values: fields.map(|f| f.name.clone()).zip(values).collect(),
        truncated,
    })
}

/// [`map_crm_row`] in field order, without the field names: the canonical
/// values and how many were truncated. `get` is given the field's index.
pub fn map_crm_values<'a>(
    fields: impl Iterator<Item = &'a BoundField>,
    zones: crate::value::Zones,
    mut get: impl FnMut(usize, &BoundField) -> Value,
) -> Result<(Vec<Value>, usize), FieldProblem> {
    let mut values = Vec::with_capacity(fields.size_hint().0);
    let mut truncated = 0;
    for (i, f) in fields.enumerate() {
        let (v, t) = crm_to_canonical(f, get(i, f), zones)?;
        truncated += usize::from(t);
        values.push(v);
    }
    Ok((values, truncated))
}

/// The canonical form of a value read from the external side.
pub fn external_to_canonical(field: &BoundField, v: Value) -> Value {
    // A reference holds a key: compared as keys are (a blank-padded
    // `char(n)` key names the same row as its trimmed text, which is what
    // a key translated from CRM holds).
    if field.plan.references.is_some() && !v.is_null() {
        if let Ok(k) = Value::from_key_string(&v.key_string(), &field.external.ty) {
            return k;
        }
    }
    v.clone()
        .coerce(&field.external.ty, None, true)
        .unwrap_or(v)
}

/// The CRM value for a canonical value of `field` (the reverse mapping).
pub fn canonical_to_crm(
    field: &BoundField,
    v: Value,
    zones: crate::value::Zones,
) -> Result<(Value, bool), FieldProblem> {
    let v = match field.plan.transform {
        Transform::Checkbox => match v {
            Value::Bool(true) => Value::Text("Y".into()),
            Value::Int(i) if i != 0 => Value::Text("Y".into()),
            Value::Text(ref s)
                if matches!(
                    s.trim().to_ascii_lowercase().as_str(),
                    "y" | "t" | "true" | "1"
                ) =>
            {
                Value::Text("Y".into())
            }
            _ => Value::Null,
        },
        _ => v,
    };
    let v = listed(field, v, Side::External)?;
    fit(field, v, &field.crm, "CRM", zones)
}

/// What the CRM side would read back, in canonical form, after being
/// written `canonical`: equal to `canonical` unless the mapping is lossy
/// (truncation, checkbox), so lossy fields are not mistaken for changes.
pub fn crm_round_trip(field: &BoundField, canonical: &Value, e: &BoundEntity) -> Value {
    canonical_to_crm(field, canonical.clone(), e.to_crm)
        .and_then(|(crm, _)| crm_to_canonical(field, crm, e.to_external))
        .map(|(v, _)| v)
        .unwrap_or_else(|_| canonical.clone())
}
