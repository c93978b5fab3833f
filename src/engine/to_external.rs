//! CRM → external: read the CRM's change window page by page, diff each
//! row against its shadow, and write inserts, updates and deletes to the
//! external table.

use super::mapping::{map_crm_row, FieldProblem, Mapped};
use super::{later, window, Engine, EngineError, EntityReport, Mode, Sample, StateView};
use crate::endpoint::{Assign, Insert, Lower, Scan, Update, WriteBatch};
use crate::plan::{ExternalDelete, Side};
use crate::schema::BoundEntity;
use crate::state::{KeyRef, Link, LinkBatch, LinkWrite, Shadow, Watermark};
use crate::value::{SqlType, Value};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One incremental CRM → external pass of entity `e`.
pub(super) async fn run(
    engine: &Engine,
    e: &BoundEntity,
    state: &StateView<'_>,
    run: i64,
    mode: Mode,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    let scan = e.crm_scan();
    let crm = &*engine.crm;
    // Rows rejected earlier are retried first, by key.
    let open = state.open_rejects(e.name(), Side::Crm).await?;
    if !open.is_empty() {
        let keys: Vec<Value> = open
            .iter()
            .filter_map(|r| Value::from_key_string(&r.key, &e.crm_key.ty).ok())
            .collect();
        let rows = crm.fetch(&scan, &scan.key, &keys).await?;
        let retried: HashSet<String> = open.iter().map(|r| r.key.clone()).collect();
        process_page(engine, e, &scan, state, run, mode, rows, &retried, report).await?;
    }
    let mark = state.watermark(e.name(), Side::Crm).await?;
    let (mut lower, upto) =
        window(crm, &scan, mark.as_ref(), e.plan.settle, e.plan.overlap).await?;
    let mut current = mark.clone();
    loop {
        let rows = crm
            .read_changes(&scan, &lower, &upto, e.plan.batch_size)
            .await?;
        let n = rows.len();
        let Some(last) = rows.last() else { break };
        let next = Watermark {
            ts: last[1].clone(),
            key: last[0].clone(),
        };
        process_page(
            engine,
            e,
            &scan,
            state,
            run,
            mode,
            rows,
            &HashSet::new(),
            report,
        )
        .await?;
        let advanced = later(current.as_ref(), next.clone());
        if state.writes() && Some(&advanced) != current.as_ref() {
            state
                .store()
                .set_watermark(e.name(), Side::Crm, &advanced)
                .await?;
        }
        current = Some(advanced);
        lower = Lower::After {
            ts: next.ts,
            key: next.key,
        };
        if n < e.plan.batch_size {
            break;
        }
    }
    report.watermark = current.map(|m| format!("{} / {}", m.ts.display(), m.key.display()));
    Ok(())
}

/// The value that marks a row deleted in a flag column of type `ty`.
fn deleted_flag(ty: &SqlType, deleted: bool) -> Value {
    match ty {
        SqlType::Bool => Value::Bool(deleted),
        SqlType::Int { .. } | SqlType::Decimal { .. } => Value::Int(i64::from(deleted)),
        _ => {
            if deleted {
                Value::Text("Y".into())
            } else {
                Value::Null
            }
        }
    }
}

fn is_deleted(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Int(0)) | Some(Value::Bool(false)) => false,
        Some(_) => true,
    }
}

struct Pending {
    crm_key: Value,
    mapped: Mapped,
}

/// Diffs one page of CRM rows and writes the result in one transaction.
#[allow(clippy::too_many_arguments)]
async fn process_page(
    engine: &Engine,
    e: &BoundEntity,
    scan: &Scan,
    state: &StateView<'_>,
    run: i64,
    mode: Mode,
    rows: Vec<Vec<Value>>,
    retried: &HashSet<String>,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    report.read += rows.len() as u64;
    let key_pos = 0;
    let deleted_pos = e.crm_deleted.as_ref().and_then(|d| scan.position(&d.name));
    let outgoing: Vec<_> = e
        .fields
        .iter()
        .filter(|f| f.plan.direction.crm_to_external())
        .collect();
    let positions: HashMap<String, usize> = outgoing
        .iter()
        .filter_map(|f| scan.position(&f.crm.name).map(|p| (f.name.clone(), p)))
        .collect();
    let keys: Vec<String> = rows.iter().map(|r| r[key_pos].key_string()).collect();
    let links = state.links_by_crm(e.name(), &keys).await?;

    let mut batch = WriteBatch::new(e.external_table.clone(), e.external_key.name.clone());
    let mut link_writes = Vec::new();
    let mut rejects: Vec<(String, String)> = Vec::new();
    let mut cleared: Vec<String> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let ext_key_ty = &e.external_key.ty;
    let touch = (e.external_change.name.clone(), Assign::Now);

    for row in rows {
        let crm_key = row[key_pos].clone();
        let ks = crm_key.key_string();
        let deleted = is_deleted(deleted_pos.map(|p| &row[p]));
        let link = links.get(&ks);
        if deleted {
            if let Some(l) = link.filter(|l| !l.deleted) {
                let ext_key =
                    Value::from_key_string(&l.external_key, ext_key_ty).map_err(|err| {
                        EngineError::Endpoint(crate::endpoint::EndpointError::Schema(format!(
                            "entity {:?}: link of CRM row {ks} holds external key {:?}: {err}",
                            e.name(),
                            l.external_key
                        )))
                    })?;
                match e.plan.delete_into_external {
                    ExternalDelete::Hard => batch.deletes.push(ext_key),
                    ExternalDelete::Soft => {
                        if let Some(d) = &e.external_deleted {
                            batch.updates.push(Update {
                                key: ext_key,
                                set: vec![
                                    (d.name.clone(), Assign::Value(deleted_flag(&d.ty, true))),
                                    touch.clone(),
                                ],
                            });
                        }
                    }
                    ExternalDelete::Ignore => {}
                }
                if e.plan.delete_into_external != ExternalDelete::Ignore {
                    report.deleted += 1;
                    report.sample(Sample {
                        action: "delete",
                        crm_key: ks.clone(),
                        external_key: Some(l.external_key.clone()),
                        fields: BTreeMap::new(),
                    });
                }
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(ks.clone()),
                    external_key: KeyRef::Known(l.external_key.clone()),
                    shadow: l.shadow.clone(),
                    deleted: true,
                });
            } else {
                report.unchanged += 1;
            }
            if retried.contains(&ks) {
                cleared.push(ks);
            }
            continue;
        }
        let mapped = match map_crm_row(outgoing.iter().copied(), e.to_external, |f| {
            positions
                .get(&f.name)
                .map(|p| row[*p].clone())
                .unwrap_or(Value::Null)
        }) {
            Ok(m) => m,
            Err(FieldProblem::Reject(why)) => {
                report.rejected += 1;
                rejects.push((ks, why));
                continue;
            }
            Err(FieldProblem::Fail(message)) => {
                return Err(EngineError::Fail {
                    entity: e.name().to_string(),
                    key: ks,
                    message,
                })
            }
        };
        report.truncated += mapped.truncated as u64;
        if retried.contains(&ks) {
            cleared.push(ks.clone());
        }
        match link {
            Some(l) if !(l.deleted && e.plan.delete_into_external == ExternalDelete::Hard) => {
                if update_linked(
                    e,
                    l,
                    &mapped,
                    "update",
                    &mut batch,
                    &mut link_writes,
                    report,
                )? {
                    report.updated += 1;
                } else {
                    report.unchanged += 1;
                }
            }
            _ => pending.push(Pending { crm_key, mapped }),
        }
    }

    if !pending.is_empty() {
        adopt_or_insert(engine, e, pending, &mut batch, &mut link_writes, report).await?;
    }

    if mode == Mode::DryRun {
        return Ok(());
    }
    let links = LinkBatch {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        links: link_writes,
    };
    let state_here = engine.plan.state_side == Side::External;
    if !batch.is_empty() || (!links.links.is_empty() && state_here) {
        let applied = engine
            .external
            .apply(&batch, state_here.then_some(&links))
            .await?;
        if !state_here && !links.links.is_empty() {
            let resolved = crate::endpoint::postgres::resolve_links(&links, &applied.inserted_keys);
            state.store().write_links(&resolved).await?;
        }
    } else if !links.links.is_empty() {
        state.store().write_links(&links).await?;
    }
    state
        .store()
        .record_rejects(e.name(), run, Side::Crm, &rejects)
        .await?;
    state
        .store()
        .clear_rejects(e.name(), Side::Crm, &cleared)
        .await?;
    Ok(())
}

/// A linked row: send the fields whose canonical value moved away from
/// the shadow. Returns whether an update was queued.
fn update_linked(
    e: &BoundEntity,
    l: &Link,
    mapped: &Mapped,
    action: &'static str,
    batch: &mut WriteBatch,
    link_writes: &mut Vec<LinkWrite>,
    report: &mut EntityReport,
) -> Result<bool, EngineError> {
    let mut set = Vec::new();
    let mut fields = BTreeMap::new();
    let mut shadow: Shadow = l.shadow.clone();
    for f in e
        .fields
        .iter()
        .filter(|f| f.plan.direction.crm_to_external())
    {
        let new = &mapped.values[&f.name];
        if l.shadow.get(&f.name) != Some(new) {
            set.push((f.external.name.clone(), Assign::Value(new.clone())));
            fields.insert(f.external.name.clone(), new.display());
            shadow.insert(f.name.clone(), new.clone());
        }
    }
    let revive = l.deleted;
    if revive {
        if let Some(d) = &e.external_deleted {
            set.push((d.name.clone(), Assign::Value(deleted_flag(&d.ty, false))));
        }
    }
    if set.is_empty() || !e.plan.update_into_external {
        return Ok(false);
    }
    let ext_key = Value::from_key_string(&l.external_key, &e.external_key.ty).map_err(|err| {
        EngineError::Endpoint(crate::endpoint::EndpointError::Schema(format!(
            "entity {:?}: link of CRM row {} holds external key {:?}: {err}",
            e.name(),
            l.crm_key,
            l.external_key
        )))
    })?;
    set.push((e.external_change.name.clone(), Assign::Now));
    batch.updates.push(Update { key: ext_key, set });
    report.sample(Sample {
        action,
        crm_key: l.crm_key.clone(),
        external_key: Some(l.external_key.clone()),
        fields,
    });
    link_writes.push(LinkWrite {
        crm_key: KeyRef::Known(l.crm_key.clone()),
        external_key: KeyRef::Known(l.external_key.clone()),
        shadow,
        deleted: false,
    });
    Ok(true)
}

/// Unlinked live CRM rows: if the external table already holds a row
/// carrying the CRM id (an insert whose link was lost in a crash), link
/// to it; otherwise insert.
async fn adopt_or_insert(
    engine: &Engine,
    e: &BoundEntity,
    pending: Vec<Pending>,
    batch: &mut WriteBatch,
    link_writes: &mut Vec<LinkWrite>,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    let mut existing: HashMap<String, Vec<Value>> = HashMap::new();
    let ext_scan = {
        let mut s = e.external_scan();
        s.filter = None;
        s
    };
    if let Some(id_col) = &e.external_crm_id {
        let ids: Vec<Value> = pending
            .iter()
            .filter_map(|p| p.crm_key.clone().coerce(&id_col.ty, None, false).ok())
            .collect();
        let rows = engine.external.fetch(&ext_scan, &id_col.name, &ids).await?;
        if let Some(pos) = ext_scan.position(&id_col.name) {
            for r in rows {
                existing.insert(r[pos].key_string(), r);
            }
        }
    }
    for p in pending {
        let ks = p.crm_key.key_string();
        if let Some(row) = existing.get(&ks) {
            // Compare with what the external row holds now.
            let ext_key = row[0].key_string();
            let mut current = Shadow::new();
            for f in e
                .fields
                .iter()
                .filter(|f| f.plan.direction.crm_to_external())
            {
                if let Some(pos) = ext_scan.position(&f.external.name) {
                    current.insert(
                        f.name.clone(),
                        super::mapping::external_to_canonical(f, row[pos].clone()),
                    );
                }
            }
            let link = Link {
                crm_key: ks.clone(),
                external_key: ext_key,
                shadow: current,
                deleted: false,
            };
            report.adopted += 1;
            if !update_linked(e, &link, &p.mapped, "adopt", batch, link_writes, report)? {
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(ks),
                    external_key: KeyRef::Known(link.external_key),
                    shadow: link.shadow,
                    deleted: false,
                });
            }
            continue;
        }
        if !e.plan.insert_into_external {
            report.unchanged += 1;
            continue;
        }
        let mut columns: Vec<(String, Assign)> = Vec::new();
        let mut fields = BTreeMap::new();
        for f in e
            .fields
            .iter()
            .filter(|f| f.plan.direction.crm_to_external())
        {
            let v = p.mapped.values[&f.name].clone();
            fields.insert(f.external.name.clone(), v.display());
            columns.push((f.external.name.clone(), Assign::Value(v)));
        }
        if let Some(id_col) = &e.external_crm_id {
            let id = p
                .crm_key
                .clone()
                .coerce(&id_col.ty, None, false)
                .map_err(|err| {
                    EngineError::Endpoint(crate::endpoint::EndpointError::Schema(format!(
                        "entity {:?}: CRM id {ks} does not fit external_crm_id_column {}: {err}",
                        e.name(),
                        id_col.name
                    )))
                })?;
            columns.push((id_col.name.clone(), Assign::Value(id)));
        }
        for (c, v) in &e.external_defaults {
            if !columns.iter().any(|(n, _)| n == c) {
                columns.push((c.clone(), Assign::Value(v.clone())));
            }
        }
        if let Some(d) = &e.external_deleted {
            if !columns.iter().any(|(n, _)| *n == d.name) && !d.has_default {
                columns.push((d.name.clone(), Assign::Value(deleted_flag(&d.ty, false))));
            }
        }
        if !columns.iter().any(|(n, _)| *n == e.external_change.name) {
            columns.push((e.external_change.name.clone(), Assign::Now));
        }
        let index = batch.inserts.len();
        batch.inserts.push(Insert { columns });
        report.inserted += 1;
        report.sample(Sample {
            action: "insert",
            crm_key: ks.clone(),
            external_key: None,
            fields,
        });
        link_writes.push(LinkWrite {
            crm_key: KeyRef::Known(ks),
            external_key: KeyRef::Inserted(index),
            shadow: p.mapped.values,
            deleted: false,
        });
    }
    Ok(())
}
