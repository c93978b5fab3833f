//! One chunk of a CRM → external bulk backfill: its rows are linked to
//! existing external rows (the state's links, the CRM link column, the
//! external CRM id column, then `match_on`), their differences resolved,
//! the rest inserted, and the chunk committed with its links and checkpoint.

use super::raw::{lookup_rows, raw_row, raw_values, RawRow};
use super::{settle, BackfillReport, Chunk, ChunkCtx, Prepared};
use crate::endpoint::bulk::{
    Cell, CheckpointWrite, ChunkWrite, FreshLink, FreshLinks, RawInserts, Rows, Turn,
};
use crate::endpoint::{Assign, EndpointError, Scan, Update, WriteBatch};
use crate::engine::mapping::{external_to_canonical, map_crm_values, FieldProblem, Values};
use crate::engine::references::Refs;
use crate::engine::retry::retrying;
use crate::engine::{Engine, EngineError};
use crate::plan::{ConflictPolicy, Side};
use crate::schema::{BoundEntity, BoundField};
use crate::state::{keys, Base, Checkpoint, KeyRef, Link, LinkBatch, LinkWrite, Shadow};
use crate::value::Value;
use std::collections::HashMap;
use std::time::Instant;
use tokio_util::task::AbortOnDropHandle;

/// A CRM row of the chunk that is not linked yet.
struct Candidate {
    row: usize,
    key: String,
    /// Canonical values of the outgoing fields, in order.
    values: Vec<Value>,
}

/// Links and resolves one chunk: what is linked, updated and inserted.
pub(super) async fn prepare_chunk(
    ctx: &ChunkCtx<'_>,
    chunk: Chunk,
    checkpoint: &Checkpoint,
    report: &mut BackfillReport,
) -> Result<Prepared, EngineError> {
    let ChunkCtx {
        engine,
        e,
        cols,
        ext_scan,
        shape,
        links_before,
        direction,
        state_here,
        ref_fields,
        ..
    } = *ctx;
    let state = &*engine.state;
    let t = Instant::now();
    // A raw chunk is decoded only where the lookups read it (key, change
    // time, link column, match_on columns); a row that turns out to be new
    // is inserted raw, and only rows with a counterpart are decoded whole.
    let (mut rows, raw) = match chunk {
        Chunk::Values(rows) => (rows, None),
        Chunk::Raw(raw) => (lookup_rows(cols, &raw)?, Some(raw)),
    };
    let keys: Vec<String> = rows.iter().map(|r| r[cols.key].key_string()).collect();
    // References become the parents' external keys; a row whose parent is
    // not linked is held as a reject naming it, as a sync holds it.
    let mut held: HashMap<usize, String> = HashMap::new();
    if !ref_fields.is_empty() {
        let view = crate::engine::StateView::Store(state);
        let read: Vec<(&Scan, &[Value])> =
            rows.iter().map(|r| (&cols.scan, r.as_slice())).collect();
        let refs = Refs::load(&view, ref_fields, &read, &[]).await?;
        for (i, r) in rows.iter_mut().enumerate() {
            if let Some(why) = refs
                .translate_crm_row(ref_fields, &cols.scan, r, |v| v)
                .held
            {
                held.insert(i, why);
            }
        }
    }
    // In an insert-only backfill nothing on the target can be this row's
    // counterpart: there is nothing to look up. Without links from before
    // the run, none of this chunk's rows has one yet.
    let insert_only = checkpoint.insert_only;
    let links = if insert_only || !links_before {
        HashMap::new()
    } else {
        state.links_by_crm(e.name(), &keys).await?
    };
    let mut rejects: Vec<(String, String)> = Vec::new();
    let mut updates: Vec<Update> = Vec::new();
    let mut link_writes: Vec<LinkWrite> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    let outgoing: Vec<&BoundField> = cols.fields(e).collect();
    // Raw rows prepared for insertion, by row; rows with a link go on
    // decoded instead.
    let mut ready: Vec<Option<RawRow>> = (0..rows.len()).map(|_| None).collect();
    for (i, row) in rows.iter_mut().enumerate() {
        let ks = &keys[i];
        if let Some(why) = held.remove(&i) {
            rejects.push((ks.clone(), why));
            continue;
        }
        let linked = links.get(ks).filter(|l| !l.deleted);
        let mapped = match &raw {
            None => map_crm_values(outgoing.iter().copied(), e.to_external, |n, _| {
                let o = &cols.outgoing[n];
                match o.pos {
                    Some(p) if o.take => std::mem::replace(&mut row[p], Value::Null),
                    Some(p) => row[p].clone(),
                    None => Value::Null,
                }
            })
            .map(|(values, _)| values),
            Some(raw) if linked.is_some() => raw_values(e, cols, &outgoing, raw, i)?,
            // Decoded whole only if a lookup finds a counterpart.
            Some(raw) => match raw_row(e, cols, &outgoing, raw, i, &row[cols.key])? {
                Err(why) => Err(FieldProblem::Reject(why)),
                Ok(r) => {
                    ready[i] = Some(r);
                    Ok(Vec::new())
                }
            },
        };
        let values = match settle(e, ks, mapped)? {
            Ok(values) => values,
            Err(why) => {
                rejects.push((ks.clone(), why));
                continue;
            }
        };
        match linked {
            Some(l) => {
                report.already_linked += 1;
                let set = diff(e, &l.shadow, &cols.values_of(e, &values));
                if set.is_empty() || !e.plan.update_into_external {
                    report.unchanged += 1;
                    continue;
                }
                let key = Value::from_key_string(&l.external_key, &e.side.external.key.ty)
                    .map_err(|err| EngineError::BadLinkOfRow {
                        entity: e.name().to_string(),
                        crm_key: ks.to_string(),
                        reason: err.to_string(),
                    })?;
                push_update(e, &mut updates, key, set);
                report.updated += 1;
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(ks.clone()),
                    external_key: KeyRef::Known(l.external_key.clone()),
                    shadow: cols.shadow_of(e, &values),
                    deleted: false,
                });
            }
            None => candidates.push(Candidate {
                row: i,
                key: ks.clone(),
                values,
            }),
        }
    }

    let mut found: Vec<(Candidate, Vec<Value>, &'static str)> = Vec::new();
    let mut rest = candidates;
    // 1. Rows already carrying a link in the CRM link column.
    if let Some(lp) = cols.link.filter(|_| !insert_only) {
        let wanted: Vec<Value> = rest
            .iter()
            .filter_map(|c| {
                let v = &rows[c.row][lp];
                (!v.is_null())
                    .then(|| Value::from_key_string(&v.key_string(), &e.side.external.key.ty).ok())
                    .flatten()
            })
            .collect();
        let by_key = fetch_by(engine, ext_scan, &ext_scan.key, &wanted, 0).await?;
        let (hit, miss): (Vec<_>, Vec<_>) = rest.into_iter().partition(|c| {
            let v = &rows[c.row][lp];
            !v.is_null() && by_key.contains_key(&v.key_string())
        });
        for c in hit {
            let row = by_key[&rows[c.row][lp].key_string()].clone();
            found.push((c, row, "link_column"));
        }
        rest = miss;
    }
    // 2. Rows whose insert committed earlier but whose link did not.
    if let Some(id) = e.external_crm_id.as_ref().filter(|_| !insert_only) {
        let wanted: Vec<Value> = rest
            .iter()
            .filter_map(|c| {
                rows[c.row][cols.key]
                    .clone()
                    .coerce(&id.ty, None, false)
                    .ok()
            })
            .collect();
        let pos = ext_scan.position(&id.name).unwrap_or(0);
        let by_id = fetch_by(engine, ext_scan, &id.name, &wanted, pos).await?;
        let (hit, miss): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|c| by_id.contains_key(&c.key));
        for c in hit {
            let row = by_id[&c.key].clone();
            found.push((c, row, "crm_id"));
        }
        rest = miss;
    }
    // 3. match_on: exactly one row on each side.
    if !cols.matches.is_empty() && !rest.is_empty() && !insert_only {
        rest = match_rows(ctx, &rows, rest, &mut found, &mut rejects).await?;
    }
    // An external row linked to another CRM row is not this row's.
    let ext_keys: Vec<String> = found.iter().map(|(_, r, _)| r[0].key_string()).collect();
    let taken = state.links_by_external(e.name(), &ext_keys).await?;
    for (mut c, ext_row, how) in found {
        let ext_key = ext_row[0].key_string();
        if let Some(raw) = &raw {
            match settle(e, &c.key, raw_values(e, cols, &outgoing, raw, c.row)?)? {
                Ok(values) => c.values = values,
                Err(why) => {
                    rejects.push((c.key.clone(), why));
                    continue;
                }
            }
        }
        if let Some(other) = taken
            .get(&ext_key)
            .filter(|l| l.crm_key != c.key && !l.deleted)
        {
            rejects.push((
                c.key.clone(),
                format!(
                    "external row {ext_key} (found by {how}) is already linked to CRM row {}",
                    other.crm_key
                ),
            ));
            continue;
        }
        let current: Shadow = outgoing
            .iter()
            .filter_map(|f| {
                ext_scan.position(&f.external.name).map(|p| {
                    let v = external_to_canonical(f, ext_row[p].clone());
                    (f.name.clone(), Base::Value(v))
                })
            })
            .collect();
        let set = diff(e, &current, &cols.values_of(e, &c.values));
        let crm_wins = match e.plan.conflict {
            _ if set.is_empty() => false,
            ConflictPolicy::CrmWins => true,
            ConflictPolicy::ExternalWins => false,
            ConflictPolicy::NewestWins => crm_is_newer(
                &rows[c.row][cols.change],
                engine.plan.crm.timezone,
                &ext_row[1],
                engine.plan.external.timezone,
            ),
            ConflictPolicy::Manual => {
                let fields: Vec<String> = set.iter().map(|(c, _)| c.clone()).collect();
                rejects.push((
                    c.key.clone(),
                    format!(
                        "matches external row {ext_key} (by {how}) but {} differ and conflict = \
                         \"manual\"; make them equal on one side and rerun",
                        fields.join(", ")
                    ),
                ));
                continue;
            }
        };
        match how {
            "link_column" => report.linked_by_link_column += 1,
            "crm_id" => report.linked_by_crm_id += 1,
            _ => report.linked_by_match += 1,
        }
        // The external row names its CRM row from now on.
        let name = e.external_crm_id.as_ref().and_then(|id| {
            let held = ext_scan.position(&id.name).map(|p| &ext_row[p]);
            let named = held.is_some_and(|v| !v.is_null() && v.key_string() == c.key);
            (!named).then(|| Value::from_key_string(&c.key, &id.ty).map(|v| (id.name.clone(), v)))
        });
        let name = match name.transpose() {
            Ok(name) => name,
            Err(err) => {
                rejects.push((
                    c.key.clone(),
                    format!("the CRM id does not fit external_crm_id_column: {err}"),
                ));
                continue;
            }
        };
        if crm_wins && e.plan.update_into_external {
            push_update(
                e,
                &mut updates,
                ext_row[0].clone(),
                set.into_iter().chain(name).collect(),
            );
            report.updated += 1;
        } else {
            if let Some(name) = name {
                push_update(e, &mut updates, ext_row[0].clone(), vec![name]);
            }
            report.unchanged += 1;
        }
        link_writes.push(LinkWrite {
            shadow: cols.shadow_of(e, &c.values),
            crm_key: KeyRef::Known(c.key),
            external_key: KeyRef::Known(ext_key),
            deleted: false,
        });
    }

    // The rest is inserted. Links of inserted rows whose CRM key has no
    // link row at all (not even a deleted one) are new for certain: they
    // are copied, not upserted, with the shadow written straight to JSON.
    let mut inserts: Rows = Vec::with_capacity(rest.len());
    let mut raw_inserts: Vec<Vec<Cell>> = Vec::new();
    let mut fresh: Vec<FreshLink> = Vec::with_capacity(rest.len());
    if let (Some(raw), true) = (&raw, e.plan.insert_into_external) {
        for c in rest {
            // Every candidate went through raw_row (a reject is none).
            let RawRow { mut cells, shadow } =
                ready.get_mut(c.row).and_then(Option::take).ok_or_else(|| {
                    EngineError::Internal(format!(
                        "internal error: CRM row {} of a raw chunk was not prepared",
                        c.key
                    ))
                })?;
            let insert = raw_inserts.len();
            if links.contains_key(&c.key) {
                // A deleted link: rewritten, from the decoded values.
                let values = match settle(e, &c.key, raw_values(e, cols, &outgoing, raw, c.row)?)? {
                    Ok(values) => values,
                    Err(why) => {
                        rejects.push((c.key.clone(), why));
                        continue;
                    }
                };
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(c.key),
                    external_key: KeyRef::Inserted(insert),
                    shadow: cols.shadow_of(e, &values),
                    deleted: false,
                });
            } else {
                fresh.push(FreshLink {
                    crm_key: keys::to_bytes(&c.key),
                    insert,
                    shadow,
                });
            }
            cells.extend(shape.crm_id(e, &rows[c.row][cols.key])?.map(Cell::Value));
            cells.extend((0..shape.constants.len()).map(Cell::Const));
            raw_inserts.push(cells);
        }
    } else if e.plan.insert_into_external {
        for c in rest {
            let crm_id = shape.crm_id(e, &rows[c.row][cols.key])?;
            let insert = inserts.len();
            if links.contains_key(&c.key) {
                link_writes.push(LinkWrite {
                    crm_key: KeyRef::Known(c.key),
                    external_key: KeyRef::Inserted(insert),
                    shadow: cols.shadow_of(e, &c.values),
                    deleted: false,
                });
            } else {
                fresh.push(FreshLink {
                    crm_key: keys::to_bytes(&c.key),
                    insert,
                    shadow: cols.shadow_of(e, &c.values),
                });
            }
            // The outgoing fields lead the inserted columns, in order.
            let mut values = c.values;
            values.reserve(shape.columns.len() - values.len());
            values.extend(crm_id);
            values.extend(shape.constants.iter().cloned());
            inserts.push(values);
        }
    } else {
        report.unchanged += rest.len() as u64;
    }
    report.inserted += (inserts.len() + raw_inserts.len()) as u64;
    report.rejected += rejects.len() as u64;

    let upsert = LinkBatch {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        links: link_writes,
    };
    let fresh = FreshLinks {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        links: fresh,
    };
    let cp = CheckpointWrite {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        direction: direction.to_string(),
        checkpoint: checkpoint.clone(),
    };
    let mut chunk = ChunkWrite {
        table: e.side.external.table.clone(),
        key: e.side.external.key.name.clone(),
        columns: shape.columns.clone(),
        inserts,
        raw_inserts: raw.as_ref().map(|raw| RawInserts {
            data: raw.data.clone(),
            constants: shape.constants.clone(),
            rows: raw_inserts,
        }),
        updates,
        links: Some(upsert),
        fresh_links: Some(fresh),
        checkpoint: Some(cp),
    };
    let deferred = if state_here {
        None
    } else {
        Some((
            chunk.links.take(),
            chunk.fresh_links.take(),
            chunk.checkpoint.take(),
        ))
    };
    tracing::debug!("chunk prepared in {:?}", t.elapsed());
    Ok(Prepared {
        chunk,
        deferred,
        rejects,
        counts: BackfillReport::default(),
    })
}

/// Commits a prepared chunk with its links and checkpoint, after `turn`.
/// Writes `chunk` into the external database (the backfill's `ext_bulk`)
/// on a task of its own: the write then goes on between its statements
/// while the backfill's task prepares the next chunk, CPU work that would
/// otherwise hold up every write in flight. A write whose backfill gave
/// up is aborted, which rolls its transaction back.
async fn write_apart(
    engine: &Engine,
    chunk: ChunkWrite,
    turn: Option<Turn>,
) -> Result<Vec<Value>, EngineError> {
    let endpoint = engine.endpoints.external.clone();
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        match endpoint.bulk() {
            Some(bulk) => bulk.write_chunk(&chunk, turn).await,
            None => Err(EndpointError::Schema(
                "the external database has no bulk interface".into(),
            )),
        }
    }));
    match task.await {
        Ok(written) => Ok(written?),
        Err(e) => {
            Err(EndpointError::Schema(format!("a backfill chunk's write failed: {e}")).into())
        }
    }
}

pub(super) async fn commit_chunk(
    ctx: &ChunkCtx<'_>,
    p: Prepared,
    turn: Option<Turn>,
    done: tokio::sync::oneshot::Sender<()>,
) -> Result<BackfillReport, EngineError> {
    let ChunkCtx {
        engine,
        e,
        direction,
        run,
        ..
    } = *ctx;
    let state = &*engine.state;
    let t = Instant::now();
    // The pairs this chunk links, when CRM rows name their external rows.
    let names = (e.crm_link.is_some() && e.plan.direction.external_to_crm()).then(|| {
        let (links, fresh) = match &p.deferred {
            Some((links, fresh, _)) => (links.as_ref(), fresh.as_ref()),
            None => (p.chunk.links.as_ref(), p.chunk.fresh_links.as_ref()),
        };
        let mut pairs: Vec<(String, KeyRef)> = Vec::new();
        for l in links.into_iter().flat_map(|b| &b.links) {
            if let KeyRef::Known(c) = &l.crm_key {
                pairs.push((c.clone(), l.external_key.clone()));
            }
        }
        for l in fresh.into_iter().flat_map(|f| &f.links) {
            pairs.push((fresh_key(l)?, KeyRef::Inserted(l.insert)));
        }
        Ok::<_, EngineError>(pairs)
    });
    let names = names.transpose()?;
    let keys = write_apart(engine, p.chunk, turn).await?;
    // The next chunk may commit now.
    let _ = done.send(());
    tracing::debug!("chunk written in {:?}", t.elapsed());
    if let Some((upsert, fresh, cp)) = p.deferred {
        // Not atomic with the data: a crash here is repaired on rerun by
        // finding the inserted rows by external_crm_id_column.
        let fresh = match fresh {
            Some(f) => Some(LinkBatch {
                links: f
                    .links
                    .into_iter()
                    .map(|l| {
                        Ok(LinkWrite {
                            crm_key: KeyRef::Known(fresh_key(&l)?),
                            external_key: KeyRef::Inserted(l.insert),
                            shadow: l.shadow,
                            deleted: false,
                        })
                    })
                    .collect::<Result<_, EngineError>>()?,
                schema: f.schema,
                entity: f.entity,
            }),
            None => None,
        };
        // Links and checkpoint are upserts: safe to write again.
        let what = (e.name(), "the chunk's links");
        for b in [upsert, fresh].into_iter().flatten() {
            let resolved = b.resolved(&keys);
            retrying(what, || state.write_links(&resolved)).await?;
        }
        if let Some(cp) = cp {
            let cp = &cp.checkpoint;
            retrying(what, || state.save_checkpoint(e.name(), direction, cp)).await?;
        }
    }
    if let Some(pairs) = names {
        let pairs = pairs
            .into_iter()
            .map(|(c, x)| match x {
                KeyRef::Known(x) => (c, x),
                KeyRef::Inserted(i) => (c, keys[i].key_string()),
            })
            .collect();
        name_crm_rows(engine, e, pairs).await?;
    }
    state
        .record_rejects(e.name(), run, Side::Crm, &p.rejects)
        .await?;
    Ok(p.counts)
}

/// Writes the external key into the link column of each CRM row of
/// `pairs` (CRM key, external key) that does not hold it yet, so that the
/// CRM row names its external row. After the chunk's data: a run killed
/// in between leaves those CRM rows unnamed (the pairs themselves are
/// linked and complete); `verify` reports them and `verify --repair` has
/// the sync name them.
async fn name_crm_rows(
    engine: &Engine,
    e: &BoundEntity,
    pairs: Vec<(String, String)>,
) -> Result<(), EngineError> {
    let Some(lc) = &e.crm_link else {
        return Ok(());
    };
    if pairs.is_empty() {
        return Ok(());
    }
    let mut scan = e.crm_scan();
    scan.filter = None;
    let keys: Vec<Value> = pairs
        .iter()
        .filter_map(|(c, _)| Value::from_key_string(c, &e.side.crm.key.ty).ok())
        .collect();
    let pos = scan.position(&lc.name);
    let holds: HashMap<String, String> = engine
        .endpoints
        .crm
        .fetch(&scan, &scan.key, &keys)
        .await?
        .into_iter()
        .filter_map(|r| {
            let v = &r[pos?];
            (!v.is_null()).then(|| (r[0].key_string(), v.key_string()))
        })
        .collect();
    let mut batch = WriteBatch::new(e.side.crm.table.clone(), e.side.crm.key.name.clone());
    for (c, x) in pairs {
        if holds.get(&c) == Some(&x) {
            continue;
        }
        let (Ok(key), Some(v)) = (
            Value::from_key_string(&c, &e.side.crm.key.ty),
            e.link_value(&x),
        ) else {
            continue;
        };
        let v = v.map_err(|err| EngineError::KeyDoesNotFit {
            entity: e.name().to_string(),
            column: format!("the CRM link column {}", lc.name),
            key: format!("external key {x:?}"),
            reason: err.to_string(),
            widen: true,
        })?;
        batch.updates.push(Update {
            key,
            set: vec![(lc.name.clone(), Assign::Value(v))],
        });
    }
    if !batch.is_empty() {
        engine.endpoints.crm.apply(&batch, None).await?;
    }
    Ok(())
}

/// `newest_wins`: whether the CRM row changed after the external row,
/// comparing in UTC. A row without a change time is never the newer one.
fn crm_is_newer(
    crm: &Value,
    crm_zone: chrono_tz::Tz,
    ext: &Value,
    ext_zone: chrono_tz::Tz,
) -> bool {
    match (crm.to_utc(crm_zone), ext.to_utc(ext_zone)) {
        (Some(c), Some(x)) => c > x,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The external columns whose canonical value in `target` differs from
/// `base`, with `target`'s value.
fn diff(e: &BoundEntity, base: &Shadow, target: &Values) -> Vec<(String, Value)> {
    e.fields
        .iter()
        .filter(|f| f.plan.direction.crm_to_external())
        .filter_map(|f| {
            let new = target.get(&f.name)?;
            (!base.get(&f.name).is_some_and(|b| b.is(new)))
                .then(|| (f.external.name.clone(), new.clone()))
        })
        .collect()
}

fn push_update(e: &BoundEntity, updates: &mut Vec<Update>, key: Value, set: Vec<(String, Value)>) {
    let mut set: Vec<(String, Assign)> = set
        .into_iter()
        .map(|(c, v)| (c, Assign::Value(v)))
        .collect();
    set.push((e.side.external.change.name.clone(), Assign::Now));
    updates.push(Update { key, set });
}

/// External rows whose `column` is one of `values`, by the key string of
/// the value at `pos`.
async fn fetch_by(
    engine: &Engine,
    scan: &Scan,
    column: &str,
    values: &[Value],
    pos: usize,
) -> Result<HashMap<String, Vec<Value>>, EngineError> {
    if values.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = engine
        .endpoints
        .external
        .fetch(scan, column, values)
        .await?;
    Ok(rows.into_iter().map(|r| (r[pos].key_string(), r)).collect())
}

/// Links candidates that match exactly one unlinked external row, and that
/// row matches no other live CRM row; an ambiguous match is a reject.
/// Returns the candidates left for insert.
async fn match_rows(
    ctx: &ChunkCtx<'_>,
    rows: &Rows,
    rest: Vec<Candidate>,
    found: &mut Vec<(Candidate, Vec<Value>, &'static str)>,
    rejects: &mut Vec<(String, String)>,
) -> Result<Vec<Candidate>, EngineError> {
    let ChunkCtx {
        engine,
        e,
        cols,
        ext_scan,
        crm_bulk,
        deleted,
        ..
    } = *ctx;
    let tuple_of = |r: &Vec<Value>, positions: &[usize]| -> Option<String> {
        let parts: Vec<String> = positions
            .iter()
            .map(|p| crate::engine::pass::match_part(&r[*p]))
            .collect();
        (!positions.iter().any(|p| r[*p].is_null())).then(|| parts.join("\u{1f}"))
    };
    let crm_pos: Vec<usize> = cols.matches.iter().map(|(p, _)| *p).collect();
    let ext_pos: Vec<usize> = cols
        .matches
        .iter()
        .filter_map(|(_, x)| ext_scan.position(x))
        .collect();
    let first_ext = &cols.matches[0].1;
    let first_ty = e
        .side
        .external
        .table
        .column(first_ext)
        .map(|c| c.ty.clone())
        .map_err(|_| EngineError::Internal(format!("match_on column {first_ext} is gone")))?;
    let firsts: Vec<Value> = rest
        .iter()
        .filter(|c| !rows[c.row][crm_pos[0]].is_null())
        .filter_map(|c| {
            rows[c.row][crm_pos[0]]
                .clone()
                .coerce(&first_ty, None, true)
                .ok()
        })
        .collect();
    // Candidates, as a sync finds them: admitted by the external filter,
    // not flagged deleted, carrying no CRM id (a row that does was looked
    // up by it already).
    let mut candidates = ext_scan.clone();
    candidates.filter = e.plan.external_filter.clone();
    let deleted_pos = e
        .side
        .external
        .deleted
        .as_ref()
        .and_then(|c| ext_scan.position(&c.name));
    let crm_id_pos = e
        .external_crm_id
        .as_ref()
        .and_then(|c| ext_scan.position(&c.name));
    let mut by_tuple: HashMap<String, Vec<Vec<Value>>> = HashMap::new();
    if !firsts.is_empty() {
        for r in engine
            .endpoints
            .external
            .fetch(&candidates, first_ext, &firsts)
            .await?
        {
            if deleted_pos.is_some_and(|p| crate::engine::pass::is_deleted(Some(&r[p])))
                || crm_id_pos.is_some_and(|p| !r[p].is_null())
            {
                continue;
            }
            if let Some(t) = tuple_of(&r, &ext_pos) {
                by_tuple.entry(t).or_default().push(r);
            }
        }
    }
    // External rows already linked are not candidates.
    let ext_keys: Vec<String> = by_tuple
        .values()
        .flatten()
        .map(|r| r[0].key_string())
        .collect();
    let linked = engine.state.links_by_external(e.name(), &ext_keys).await?;
    for list in by_tuple.values_mut() {
        list.retain(|r| {
            linked
                .get(&r[0].key_string())
                .is_none_or(|l: &Link| l.deleted)
        });
    }
    // CRM rows sharing a match value with another live CRM row.
    let crm_names: Vec<String> = crm_pos
        .iter()
        .map(|p| cols.scan.columns[*p].clone())
        .collect();
    let crm_firsts: Vec<Value> = rest
        .iter()
        .map(|c| rows[c.row][crm_pos[0]].clone())
        .collect();
    let dup_rows = crm_bulk
        .duplicates(&cols.scan, &crm_names, &crm_firsts, deleted)
        .await?;
    let all: Vec<usize> = (0..crm_names.len()).collect();
    let dups: std::collections::HashSet<String> =
        dup_rows.iter().filter_map(|r| tuple_of(r, &all)).collect();
    let mut left = Vec::new();
    for c in rest {
        let Some(t) = tuple_of(&rows[c.row], &crm_pos) else {
            left.push(c);
            continue;
        };
        match by_tuple.get(&t).map(|v| v.as_slice()) {
            None | Some([]) => left.push(c),
            Some([one]) if !dups.contains(&t) => {
                let one = one.clone();
                found.push((c, one, "match_on"));
            }
            Some(list) => rejects.push((
                c.key.clone(),
                format!(
                    "match_on is ambiguous: it finds {} external row(s){}; link the row by hand \
                     (set the link column or remove the duplicate) and rerun",
                    list.len(),
                    if dups.contains(&t) {
                        " and other CRM rows share the same values"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
    Ok(left)
}

/// The CRM key of a fresh link, back in its canonical text.
fn fresh_key(l: &FreshLink) -> Result<String, EngineError> {
    keys::from_bytes(&l.crm_key).map_err(EngineError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn wall(h: u32, m: u32) -> Value {
        Value::Timestamp(
            NaiveDate::from_ymd_opt(2026, 7, 1)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap(),
        )
    }

    #[test]
    fn newest_wins_compares_both_sides_in_utc() {
        let london = chrono_tz::Europe::London; // UTC+1 in July
        let utc = chrono_tz::UTC;
        // 12:30 London is 11:30 UTC: older than 12:00 UTC.
        assert!(!crm_is_newer(&wall(12, 30), london, &wall(12, 0), utc));
        // 13:30 London is 12:30 UTC: newer.
        assert!(crm_is_newer(&wall(13, 30), london, &wall(12, 0), utc));
        let tz = Value::TimestampTz(
            chrono::DateTime::parse_from_rfc3339("2026-07-01T11:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
        );
        assert!(crm_is_newer(&wall(12, 30), london, &tz, utc));
        assert!(!crm_is_newer(&Value::Null, london, &tz, utc));
        assert!(crm_is_newer(&wall(0, 0), london, &Value::Null, utc));
    }
}
