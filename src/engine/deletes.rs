//! External hard deletes: invisible to a timestamp scan, found by
//! comparing the external key set with the live links, and guarded by
//! `max_delete_ratio` so that a partial read never looks like a mass delete.

use super::{Engine, EngineError, EntityReport, Mode, Sample, StateView};
use crate::endpoint::{Update, WriteBatch};
use crate::engine::crm_write;
use crate::plan::{CrmDelete, Side};
use crate::schema::BoundEntity;
use crate::state::{GoneLinks, LinkBatch, LinkWrite};
use crate::value::Value;
use std::collections::{BTreeMap, HashSet};

/// The longest time between two comparisons of the links with the
/// external table, whatever its statistics say: a bound on what a reset of
/// one table's statistics counters could hide.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Below this many rows (the catalog's estimate) an external table whose
/// deletes fingerprint lags behind its commits is compared with the links
/// on every run: that costs milliseconds, and a row deleted just before
/// the run is carried by that run, not the next.
pub const COMPARE_ALWAYS_BELOW: i64 = 100_000;

/// Carries external hard deletes into CRM as soft deletes. The links are
/// compared with the external table (every link, a cost that follows the
/// table's size) only when the table's deletes fingerprint moved since the
/// last comparison that left nothing undone, or that one is an hour old,
/// or the table is small and its fingerprint may not show a delete yet.
pub(super) async fn external_hard_deletes(
    engine: &Engine,
    e: &BoundEntity,
    state: &StateView<'_>,
    mode: Mode,
    report: &mut EntityReport,
) -> Result<(), EngineError> {
    if e.plan.delete_into_crm != CrmDelete::Soft {
        return Ok(());
    }
    // Read before the comparison: a delete after this read changes the
    // fingerprint the next run reads, so it is compared then.
    let ext = &*engine.endpoints.external;
    let fingerprint = ext.deletes_fingerprint(&e.side.external.table).await?;
    let small = e.side.external.table.row_estimate < COMPARE_ALWAYS_BELOW;
    if let Some(fp) = fingerprint
        .as_ref()
        .filter(|_| !(small && ext.deletes_fingerprint_lags()))
    {
        if state
            .deletes_checked(e.name(), RECHECK_EVERY)
            .await?
            .as_ref()
            == Some(fp)
        {
            tracing::debug!(
                "entity {:?}: no row of {} deleted since the last check; links not compared",
                e.name(),
                e.side.external.table.qualified()
            );
            return Ok(());
        }
    }
    report.hard_delete_check = true;
    // Recorded once every finding is carried out, never after a refusal:
    // a refused delete is looked at again by every run until it is done.
    let checked = |fp: Option<String>| async move {
        match fp {
            Some(fp) if mode == Mode::Apply => {
                state.store().set_deletes_checked(e.name(), &fp).await
            }
            _ => Ok(()),
        }
    };
    let GoneLinks { gone, live } = gone_links(engine, e, state).await?;
    if gone.is_empty() {
        checked(fingerprint).await?;
        return Ok(());
    }
    let ratio = gone.len() as f64 / live as f64;
    if ratio > e.plan.max_delete_ratio {
        report.deletes_refused += gone.len() as u64;
        tracing::warn!(
            "entity {:?}: {} of {} linked external rows are gone ({:.1}%), more than max_delete_ratio \
             ({:.1}%); no delete was carried into CRM",
            e.name(),
            gone.len(),
            live,
            ratio * 100.0,
            e.plan.max_delete_ratio * 100.0
        );
        return Ok(());
    }
    let crm_keys: Vec<String> = gone.iter().map(|(c, _)| c.clone()).collect();
    let shadows = state.links_by_crm(e.name(), &crm_keys).await?;
    let mut batch = WriteBatch::new(e.side.crm.table.clone(), e.side.crm.key.name.clone());
    let mut link_writes = Vec::new();
    let layout = engine.layout(e, mode == Mode::Apply).await?;
    for (crm_key, ext_key) in &gone {
        let Ok(key) = Value::from_key_string(crm_key, &e.side.crm.key.ty) else {
            continue;
        };
        batch.updates.push(Update {
            key,
            set: crm_write::soft_delete(e, engine.plan.crm_user_id),
        });
        report.crm_deleted += 1;
        report.sample(Sample {
            action: "delete in CRM (external row gone)",
            crm_key: crm_key.to_string(),
            external_key: Some(ext_key.clone()),
            fields: BTreeMap::new(),
        });
        link_writes.push(LinkWrite::pair(
            crm_key,
            ext_key,
            layout.seal(
                e,
                &shadows
                    .get(crm_key)
                    .map(|l| l.shadow.clone())
                    .unwrap_or_default(),
            ),
            true,
        ));
    }
    if mode == Mode::DryRun {
        return Ok(());
    }
    let links = LinkBatch {
        schema: engine.plan.state_schema.clone(),
        entity: e.name().to_string(),
        links: link_writes,
    };
    match engine.plan.state_side {
        Side::Crm => {
            engine.endpoints.crm.apply(&batch, Some(&links)).await?;
        }
        Side::External => {
            engine.endpoints.crm.apply(&batch, None).await?;
            state.store().write_links(&links).await?;
        }
    }
    checked(fingerprint).await?;
    Ok(())
}

/// The live links whose external row is gone. With the state store in the
/// external database, one anti-join there; otherwise both key sets are
/// read and compared here.
async fn gone_links(
    engine: &Engine,
    e: &BoundEntity,
    state: &StateView<'_>,
) -> Result<GoneLinks, EngineError> {
    if engine.plan.state_side == Side::External {
        return Ok(state
            .links_gone_from(e.name(), &e.side.external.table, &e.side.external.key.name)
            .await?);
    }
    let links = state.live_links(e.name()).await?;
    if links.is_empty() {
        return Ok(GoneLinks::default());
    }
    let present: HashSet<String> = engine
        .endpoints
        .external
        .keys(&e.external_scan())
        .await?
        .into_iter()
        .collect();
    let live = links.len() as u64;
    let gone = links
        .into_iter()
        .filter(|(_, x)| !present.contains(x))
        .collect();
    Ok(GoneLinks { gone, live })
}
