//! Writing a page's decisions to both sides and the state store, with the
//! keys of new rows resolved into the links and the columns that name them.

use super::{Ctx, Writes};
use crate::endpoint::{Assign, Update};
use crate::engine::EngineError;
use crate::plan::Side;
use crate::schema::BoundEntity;
use crate::state::{KeyRef, LinkBatch};
use crate::value::Value;

impl Ctx<'_> {
    /// Writes a page's decisions: the non-state side first, then the state
    /// side with the links in one transaction.
    pub(super) async fn write(&self, w: Writes) -> Result<(), EngineError> {
        let engine = self.engine;
        let e = self.e;
        let store = self.state.store();
        let mut links = LinkBatch {
            schema: engine.plan.state_schema.clone(),
            entity: e.name().to_string(),
            links: w.links,
        };
        let Writes {
            crm: mut crm_batch,
            ext: mut ext_batch,
            link_column_after_insert,
            crm_id_after_insert,
            rejects,
            cleared,
            conflicts,
            settled,
            ..
        } = w;
        let state_side = engine.plan.state_side;
        match state_side {
            Side::External => {
                // CRM first; resolve CRM inserts' keys into the links.
                if !crm_batch.is_empty() {
                    let applied = engine.endpoints.crm.apply(&crm_batch, None).await?;
                    resolve(&mut links, Side::Crm, &applied.inserted_keys);
                    // The external rows name their new CRM rows in the
                    // transaction that writes the links.
                    ext_batch.updates.extend(crm_id_updates(
                        e,
                        crm_id_after_insert,
                        &applied.inserted_keys,
                    )?);
                }
                let applied = if !ext_batch.is_empty() || !links.links.is_empty() {
                    let a = engine
                        .endpoints
                        .external
                        .apply(&ext_batch, Some(&links))
                        .await?;
                    a.inserted_keys
                } else {
                    Vec::new()
                };
                if !link_column_after_insert.is_empty() {
                    let mut after = e.write_batch(Side::Crm);
                    if let Some(lc) = &e.crm_link {
                        for (crm_key, i) in link_column_after_insert {
                            after.updates.push(Update {
                                key: crm_key,
                                set: vec![(
                                    lc.name.clone(),
                                    Assign::Value(link_of(e, &applied[i])?),
                                )],
                            });
                        }
                    }
                    engine.endpoints.crm.apply(&after, None).await?;
                }
            }
            Side::Crm => {
                let applied = if !ext_batch.is_empty() {
                    engine
                        .endpoints
                        .external
                        .apply(&ext_batch, None)
                        .await?
                        .inserted_keys
                } else {
                    Vec::new()
                };
                resolve(&mut links, Side::External, &applied);
                if let Some(lc) = &e.crm_link {
                    for (crm_key, i) in link_column_after_insert {
                        crm_batch.updates.push(Update {
                            key: crm_key,
                            set: vec![(lc.name.clone(), Assign::Value(link_of(e, &applied[i])?))],
                        });
                    }
                }
                if !crm_batch.is_empty() || !links.links.is_empty() {
                    let applied = engine.endpoints.crm.apply(&crm_batch, Some(&links)).await?;
                    // The external rows name their new CRM rows after the
                    // links commit; a crash in between is finished by the
                    // next run, which reads the new CRM rows as changes.
                    let named = crm_id_updates(e, crm_id_after_insert, &applied.inserted_keys)?;
                    if !named.is_empty() {
                        let mut after = e.write_batch(Side::External);
                        after.updates = named;
                        engine.endpoints.external.apply(&after, None).await?;
                    }
                }
            }
        }
        // A row may be set aside twice in one page (written with a deferred
        // reference, then refused for another reason): the last reason
        // stands.
        let mut seen = std::collections::HashSet::new();
        let mut rejects: Vec<(String, String)> = rejects
            .into_iter()
            .rev()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect();
        rejects.reverse();
        store
            .record_rejects(e.name(), self.run, self.source, &rejects)
            .await?;
        store.clear_rejects(e.name(), self.source, &cleared).await?;
        store
            .record_conflicts(e.name(), self.run, &conflicts)
            .await?;
        if !settled.is_empty() {
            let keys: Vec<String> = settled.iter().map(|(k, _)| k.clone()).collect();
            for c in store.open_conflicts(e.name(), Some(&keys)).await? {
                if settled
                    .iter()
                    .any(|(k, f)| *k == c.record.crm_key && *f == c.record.field)
                {
                    store.close_conflict(c.id, "both sides now agree").await?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces `KeyRef::Inserted` on `side` with the keys its inserts got.
fn resolve(links: &mut LinkBatch, side: Side, inserted: &[Value]) {
    for l in &mut links.links {
        let k = l.key_mut(side);
        if let KeyRef::Inserted(i) = *k {
            *k = KeyRef::Known(inserted[i].key_string());
        }
    }
}

/// The CRM link column's value naming a just-inserted external row.
fn link_of(e: &BoundEntity, inserted: &Value) -> Result<Value, EngineError> {
    let ks = inserted.key_string();
    match e.link_value(&ks) {
        Some(Ok(v)) => Ok(v),
        Some(Err(err)) => Err(EngineError::KeyDoesNotFit {
            entity: e.name().to_string(),
            column: "the CRM link column".to_string(),
            key: format!("the new external key {ks:?}"),
            reason: err.to_string(),
            widen: true,
        }),
        None => Ok(Value::Null),
    }
}

/// Updates giving each external row the id of the CRM row inserted for
/// it (`(external key, index of the CRM insert)`).
fn crm_id_updates(
    e: &BoundEntity,
    pending: Vec<(Value, usize)>,
    inserted: &[Value],
) -> Result<Vec<Update>, EngineError> {
    let Some(id) = &e.external_crm_id else {
        return Ok(Vec::new());
    };
    pending
        .into_iter()
        .map(|(key, i)| {
            let ks = inserted[i].key_string();
            let v =
                Value::from_key_string(&ks, &id.ty).map_err(|err| EngineError::KeyDoesNotFit {
                    entity: e.name().to_string(),
                    column: format!("external_crm_id_column {}", id.name),
                    key: format!("CRM id {ks}"),
                    reason: err.to_string(),
                    widen: true,
                })?;
            Ok(Update {
                key,
                set: vec![(id.name.clone(), Assign::Value(v))],
            })
        })
        .collect()
}
