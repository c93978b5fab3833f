//! Sage CRM's write rules (docs/design.md section 7) as column
//! assignments: what every insert, update and soft delete the engine
//! writes into CRM carries besides the mapped fields.

use crate::endpoint::Assign;
use crate::plan::IdStrategy;
use crate::schema::BoundEntity;
use crate::value::Value;

fn push(out: &mut Vec<(String, Assign)>, col: &Option<String>, a: Assign) {
    if let Some(c) = col {
        if !out.iter().any(|(n, _)| n == c) {
            out.push((c.clone(), a));
        }
    }
}

/// UpdatedBy = the sync user; UpdatedDate = TimeStamp = the server's
/// clock. Added to every update and soft delete.
pub(super) fn touch(e: &BoundEntity, user_id: i64, out: &mut Vec<(String, Assign)>) {
    push(
        out,
        &e.crm_system.updated_by,
        Assign::Value(Value::Int(user_id)),
    );
    push(out, &e.crm_system.updated_date, Assign::Now);
    push(out, &e.crm_system.timestamp, Assign::Now);
}

/// A soft delete: Deleted = 1 plus the update columns.
pub(super) fn soft_delete(e: &BoundEntity, user_id: i64) -> Vec<(String, Assign)> {
    let mut out = Vec::new();
    if let Some(d) = &e.side.crm.deleted {
        out.push((
            d.name.clone(),
            Assign::Value(Value::Int(crate::crm::DELETED)),
        ));
    }
    touch(e, user_id, &mut out);
    out
}

/// Completes an insert's `columns` (mapped fields already in): the
/// constant defaults, the territory, the system columns, Deleted NULL
/// and the id.
pub(super) fn complete_insert(
    e: &BoundEntity,
    user_id: i64,
    strategy: IdStrategy,
    out: &mut Vec<(String, Assign)>,
) {
    for (c, v) in &e.side.crm.defaults {
        push(out, &Some(c.clone()), Assign::Value(v.clone()));
    }
    push(
        out,
        &e.crm_system.secterr,
        Assign::Value(Value::Int(e.plan.secterr)),
    );
    push(
        out,
        &e.crm_system.created_by,
        Assign::Value(Value::Int(user_id)),
    );
    push(out, &e.crm_system.created_date, Assign::Now);
    touch(e, user_id, out);
    if let Some(d) = &e.side.crm.deleted {
        push(out, &Some(d.name.clone()), Assign::Value(Value::Null));
    }
    if id_strategy(e, strategy) == IdStrategy::StoredProcedure {
        push(
            out,
            &Some(e.side.crm.key.name.clone()),
            Assign::AllocateId {
                table: e.plan.crm_table.name.clone(),
            },
        );
    }
}

/// `auto` resolved: IDENTITY (or a default) on the key column means
/// the database assigns ids; otherwise `eware_get_identity_id`.
pub(super) fn id_strategy(e: &BoundEntity, strategy: IdStrategy) -> IdStrategy {
    match strategy {
        IdStrategy::Auto if e.side.crm.key.identity || e.side.crm.key.has_default => {
            IdStrategy::Identity
        }
        IdStrategy::Auto => IdStrategy::StoredProcedure,
        s => s,
    }
}
