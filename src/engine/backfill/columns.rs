//! The columns of a CRM → external bulk backfill: what it reads from the
//! CRM, what it looks existing external rows up by, and what it inserts.

use crate::endpoint::Scan;
use crate::engine::mapping::{Layout, Values};
use crate::engine::{Engine, EngineError};
use crate::schema::{BoundEntity, BoundField};
use crate::value::{SqlType, Value};

/// Positions of the columns the backfill needs in a CRM row.
pub(super) struct CrmColumns {
    pub(super) scan: Scan,
    pub(super) key: usize,
    pub(super) change: usize,
    pub(super) link: Option<usize>,
    /// (CRM position, external column) of each `match_on` pair.
    pub(super) matches: Vec<(usize, String)>,
    /// The fields that flow to the external side, in entity order (the
    /// order of the inserted columns too).
    pub(super) outgoing: Vec<Outgoing>,
    /// The shadow layout of the outgoing fields.
    pub(super) layout: Layout,
}

/// A field that flows to the external side.
pub(super) struct Outgoing {
    /// Index in the entity's fields.
    pub(super) field: usize,
    /// Position of its CRM column in the scan.
    pub(super) pos: Option<usize>,
    /// No other field and no later step reads that column: mapping may
    /// move the value out of the row instead of copying it.
    pub(super) take: bool,
    /// The value passes unchanged, in the same binary form, from the CRM
    /// column to the external one (see [`passes_raw`](super::raw::passes_raw)).
    pub(super) raw: bool,
}
impl CrmColumns {
    pub(super) fn fields<'a>(
        &'a self,
        e: &'a BoundEntity,
    ) -> impl Iterator<Item = &'a BoundField> + Clone {
        self.outgoing.iter().map(move |o| &e.fields[o.field])
    }

    /// The values of a row mapped by
    /// [`map_crm_values`](crate::engine::mapping::map_crm_values), by field.
    pub(super) fn values_of(&self, e: &BoundEntity, values: &[Value]) -> Values {
        self.outgoing
            .iter()
            .zip(values)
            .map(|(o, v)| (e.fields[o.field].name.clone(), v.clone()))
            .collect()
    }

    /// The sealed shadow of a row mapped by
    /// [`map_crm_values`](crate::engine::mapping::map_crm_values).
    pub(super) fn shadow_of(&self, e: &BoundEntity, values: &[Value]) -> Vec<u8> {
        self.layout.seal_values(e, values)
    }

    /// The names of the outgoing fields: the shadow layout of fresh links.
    pub(super) fn layout(&self, e: &BoundEntity) -> Vec<String> {
        self.fields(e).map(|f| f.name.clone()).collect()
    }
}

pub(super) fn crm_columns(e: &BoundEntity) -> Result<CrmColumns, EngineError> {
    let mut scan = e.crm_scan();
    let add = |scan: &mut Scan, name: &str| -> usize {
        match scan.position(name) {
            Some(p) => p,
            None => {
                scan.columns.push(name.to_string());
                scan.columns.len() - 1
            }
        }
    };
    let link = e.crm_link.as_ref().map(|c| add(&mut scan, &c.name));
    let mut matches = Vec::new();
    for (c, x) in &e.plan.match_on {
        let crm = e
            .side
            .crm
            .table
            .column(c)
            .map_err(|_| EngineError::MatchColumnGone {
                entity: e.name().to_string(),
                column: c.to_string(),
            })?;
        let ext = e
            .side
            .external
            .table
            .column(x)
            .map_err(|_| EngineError::MatchColumnGone {
                entity: e.name().to_string(),
                column: x.to_string(),
            })?;
        let pos = add(&mut scan, &crm.name.clone());
        matches.push((pos, ext.name.clone()));
    }
    let mut outgoing: Vec<Outgoing> = e
        .fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.plan.direction.crm_to_external())
        .map(|(i, f)| Outgoing {
            field: i,
            pos: scan.position(&f.crm.name),
            take: false,
            raw: false,
        })
        .collect();
    let mut kept: Vec<usize> = vec![0, 1];
    kept.extend(link);
    kept.extend(matches.iter().map(|(p, _)| *p));
    let positions: Vec<Option<usize>> = outgoing.iter().map(|o| o.pos).collect();
    for o in &mut outgoing {
        o.take = o.pos.is_some_and(|p| {
            !kept.contains(&p) && positions.iter().filter(|q| **q == Some(p)).count() == 1
        });
    }
    Ok(CrmColumns {
        key: 0,
        change: 1,
        scan,
        link,
        matches,
        outgoing,
        layout: Layout::default(),
    })
}

/// The external read used to find existing rows: every mapped column plus
/// the `match_on` columns, without the external filter (a row outside it
/// still holds its key and CRM id).
pub(super) fn external_scan(e: &BoundEntity, cols: &CrmColumns) -> Scan {
    let mut s = e.external_scan();
    s.filter = None;
    for (_, x) in &cols.matches {
        if s.position(x).is_none() {
            s.columns.push(x.clone());
        }
    }
    s
}

fn deleted_flag_false(ty: &SqlType) -> Value {
    match ty {
        SqlType::Bool => Value::Bool(false),
        SqlType::Int { .. } | SqlType::Decimal { .. } => Value::Int(0),
        _ => Value::Null,
    }
}

/// The columns of inserted rows, and the constant tail of every row.
pub(super) struct InsertShape {
    pub(super) columns: Vec<String>,
    pub(super) constants: Vec<Value>,
    with_crm_id: bool,
}

impl InsertShape {
    /// The value of the external CRM id column for CRM key `key`, when the
    /// inserted columns carry it.
    pub(super) fn crm_id(
        &self,
        e: &BoundEntity,
        key: &Value,
    ) -> Result<Option<Value>, EngineError> {
        match (&e.external_crm_id, self.with_crm_id) {
            (Some(id), true) => key
                .clone()
                .coerce(&id.ty, None, false)
                .map(Some)
                .map_err(|err| EngineError::KeyDoesNotFit {
                    entity: e.name().to_string(),
                    column: format!("external_crm_id_column {}", id.name),
                    key: format!("CRM id {}", key.display()),
                    reason: err.to_string(),
                    widen: false,
                }),
            _ => Ok(None),
        }
    }
}

pub(super) async fn insert_shape(
    engine: &Engine,
    e: &BoundEntity,
) -> Result<InsertShape, EngineError> {
    let mut columns: Vec<String> = e
        .fields
        .iter()
        .filter(|f| f.plan.direction.crm_to_external())
        .map(|f| f.external.name.clone())
        .collect();
    let with_crm_id = match &e.external_crm_id {
        Some(c) if !columns.contains(&c.name) => {
            columns.push(c.name.clone());
            true
        }
        _ => false,
    };
    let mut constants = Vec::new();
    for (c, v) in &e.side.external.defaults {
        if !columns.contains(c) {
            columns.push(c.clone());
            constants.push(v.clone());
        }
    }
    if let Some(d) = &e.side.external.deleted {
        if !columns.contains(&d.name) && !d.has_default {
            columns.push(d.name.clone());
            constants.push(deleted_flag_false(&d.ty));
        }
    }
    let chg = &e.side.external.change;
    if !columns.contains(&chg.name) && !chg.has_default {
        columns.push(chg.name.clone());
        constants.push(engine.endpoints.external.clock(&chg.ty).await?);
    }
    Ok(InsertShape {
        columns,
        constants,
        with_crm_id,
    })
}
