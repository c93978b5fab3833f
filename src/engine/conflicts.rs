//! Resolving a conflict by hand (`crmsync conflicts resolve ID --take`):
//! the chosen side's current value is written to the other side, the
//! shadow follows, and the conflict is closed.

use super::mapping::{canonical_to_crm, crm_to_canonical, external_to_canonical};
use super::{Engine, EngineError};
use crate::endpoint::{Assign, Update, WriteBatch};
use crate::engine::crm_write;
use crate::plan::Side;
use crate::state::{ConflictInfo, LinkBatch, LinkWrite};
use crate::value::Value;

/// Why a conflict could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("there is no conflict {0}; `crmsync conflicts list` shows the open ones")]
    Unknown(i64),
    #[error("conflict {0} is already resolved ({1})")]
    Closed(i64, String),
    #[error("conflict {id}: {what}")]
    Gone { id: i64, what: String },
    /// A key of the conflict's link does not fit its entity's key column.
    #[error("conflict {id}: key {key:?}: {reason}")]
    BadKey {
        id: i64,
        key: String,
        reason: String,
    },
}

impl ResolveError {
    /// Asking for a conflict that does not exist or is already resolved
    /// is bad usage; the rest are runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ResolveError::Unknown(_) | ResolveError::Closed(..) => crate::exit::BAD_CONFIG,
            ResolveError::Gone { .. } | ResolveError::BadKey { .. } => crate::exit::FAILED,
        }
    }
}

impl Engine {
    /// Takes `take`'s current value of the conflicting field.
    pub async fn resolve_conflict(&self, id: i64, take: Side) -> Result<ConflictInfo, EngineError> {
        self.state.migrate().await?;
        let c = self
            .state
            .conflict(id)
            .await?
            .ok_or(ResolveError::Unknown(id))?;
        if let Some(r) = &c.resolution {
            return Err(ResolveError::Closed(id, r.clone()).into());
        }
        let gone = |what: String| ResolveError::Gone { id, what };
        let (bound, _) = self.bind(Some(&c.entity)).await?;
        let e = bound
            .first()
            .ok_or_else(|| gone(format!("entity {:?} is no longer configured", c.entity)))?;
        let lock = self.lock(e).await?;
        let (fi, f) = e
            .fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == c.record.field)
            .ok_or_else(|| gone(format!("field {} is no longer mapped", c.record.field)))?;
        let link = self
            .state
            .links_by_crm(e.name(), std::slice::from_ref(&c.record.crm_key))
            .await?
            .remove(&c.record.crm_key)
            .ok_or_else(|| gone("the pair is no longer linked".into()))?;
        let key_err = |k: &str, err: crate::value::CoerceError| ResolveError::BadKey {
            id,
            key: k.to_string(),
            reason: err.to_string(),
        };
        let crm_key = Value::from_key_string(&link.crm_key, &e.side.crm.key.ty)
            .map_err(|x| key_err(&link.crm_key, x))?;
        let ext_key = Value::from_key_string(&link.external_key, &e.side.external.key.ty)
            .map_err(|x| key_err(&link.external_key, x))?;
        let mut value = None;
        match take {
            Side::Crm => {
                let mut scan = e.crm_scan();
                scan.filter = None;
                let rows = self
                    .endpoints
                    .crm
                    .fetch(&scan, &scan.key, &[crm_key])
                    .await?;
                let row = rows
                    .first()
                    .ok_or_else(|| gone("the CRM row is gone".into()))?;
                let pos = scan.position(&f.crm.name).unwrap_or(0);
                let (canonical, _) = crm_to_canonical(f, row[pos].clone(), e.to_external)
                    .map_err(|p| gone(format!("{p:?}")))?;
                let mut batch = WriteBatch::new(
                    e.side.external.table.clone(),
                    e.side.external.key.name.clone(),
                );
                batch.updates.push(Update {
                    key: ext_key,
                    set: vec![
                        (f.external.name.clone(), Assign::Value(canonical.clone())),
                        (e.side.external.change.name.clone(), Assign::Now),
                    ],
                });
                self.endpoints.external.apply(&batch, None).await?;
                value = Some(canonical);
            }
            Side::External => {
                let mut scan = e.external_scan();
                scan.filter = None;
                let rows = self
                    .endpoints
                    .external
                    .fetch(&scan, &scan.key, &[ext_key])
                    .await?;
                let row = rows
                    .first()
                    .ok_or_else(|| gone("the external row is gone".into()))?;
                let pos = scan.position(&f.external.name).unwrap_or(0);
                let canonical = external_to_canonical(f, row[pos].clone());
                let (crm_value, _) = canonical_to_crm(f, canonical.clone(), e.to_crm)
                    .map_err(|p| gone(format!("{p:?}")))?;
                let mut set = vec![(f.crm.name.clone(), Assign::Value(crm_value))];
                crm_write::touch(e, self.plan.crm_user_id, &mut set);
                let mut batch = e.write_batch(crate::plan::Side::Crm);
                batch.updates.push(Update { key: crm_key, set });
                self.endpoints.crm.apply(&batch, None).await?;
                value = value.or(Some(canonical));
            }
        }
        let mut shadow = link.shadow.clone();
        if let Some(v) = value {
            shadow.insert(e.fields[fi].name.clone(), v.into());
        }
        let shadow = self.layout(e, true).await?.seal(e, &shadow);
        self.state
            .write_links(&LinkBatch {
                schema: self.plan.state_schema.clone(),
                entity: e.name().to_string(),
                links: vec![LinkWrite::pair(
                    &link.crm_key,
                    &link.external_key,
                    shadow,
                    link.deleted,
                )],
            })
            .await?;
        self.state
            .close_conflict(id, &format!("resolved by hand: took the {take} value"))
            .await?;
        lock.release().await;
        Ok(c)
    }
}
