//! The conflict log on PostgreSQL: same-field clashes as met, and their
//! resolution.

use super::{from_json, to_json, PgStore};
use crate::db::EndpointError;
use crate::plan::Side;
use crate::state::{ConflictInfo, ConflictRecord};
use crate::value::Value;
use chrono::{DateTime, Utc};

const CONFLICT_COLUMNS: &str = "conflict_id, entity, crm_key, external_key, field, base_value, \
     crm_value, external_value, crm_changed_at, external_changed_at, winner, run_id, created_at, \
     resolved_at, resolution";

fn conflict_from_row(r: &tokio_postgres::Row) -> Result<ConflictInfo, EndpointError> {
    let opt = |j: Option<serde_json::Value>| j.map(from_json).transpose();
    let winner: Option<String> = r.get(10);
    Ok(ConflictInfo {
        id: r.get(0),
        entity: r.get(1),
        record: ConflictRecord {
            crm_key: r.get(2),
            external_key: r.get(3),
            field: r.get(4),
            base: opt(r.get(5))?,
            crm: opt(r.get(6))?.unwrap_or(Value::Null),
            external: opt(r.get(7))?.unwrap_or(Value::Null),
            crm_changed_at: r.get(8),
            external_changed_at: r.get(9),
            winner: match winner.as_deref() {
                Some("crm") => Some(Side::Crm),
                Some("external") => Some(Side::External),
                _ => None,
            },
        },
        run: r.get(11),
        created_at: r.get(12),
        resolved_at: r.get(13),
        resolution: r.get(14),
    })
}

/// Logs conflicts; those with a winner are logged as already resolved.
pub(super) async fn record(
    store: &PgStore,
    entity: &str,
    run: i64,
    conflicts: &[ConflictRecord],
) -> Result<(), EndpointError> {
    if conflicts.is_empty() {
        return Ok(());
    }
    let mut conn = store.conn().await?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| store.state_error("logging conflicts", e))?;
    let st = tx
        .prepare(&format!(
            "INSERT INTO {}.conflicts (entity, crm_key, external_key, field, base_value, \
               crm_value, external_value, crm_changed_at, external_changed_at, winner, run_id, \
               resolved_at, resolution) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
               CASE WHEN $10::text IS NULL THEN NULL ELSE now() END, \
               CASE WHEN $10::text IS NULL THEN NULL ELSE 'policy: ' || $10::text || ' wins' END)",
            store.s()
        ))
        .await
        .map_err(|e| store.state_error("logging conflicts", e))?;
    for c in conflicts {
        let winner = c.winner.map(|w| w.as_str());
        tx.execute(
            &st,
            &[
                &entity,
                &c.crm_key,
                &c.external_key,
                &c.field,
                &c.base.as_ref().map(to_json),
                &to_json(&c.crm),
                &to_json(&c.external),
                &c.crm_changed_at,
                &c.external_changed_at,
                &winner,
                &run,
            ],
        )
        .await
        .map_err(|e| store.state_error("logging conflicts", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| store.state_error("logging conflicts", e))
}

/// Open conflicts of `entity` by CRM key (all of them when `crm_keys` is
/// `None`).
pub(super) async fn open(
    store: &PgStore,
    entity: &str,
    crm_keys: Option<&[String]>,
) -> Result<Vec<ConflictInfo>, EndpointError> {
    let conn = store.conn().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts \
                 WHERE entity = $1 AND resolved_at IS NULL \
                   AND ($2::text[] IS NULL OR crm_key = ANY($2)) ORDER BY conflict_id",
                store.s()
            ),
            &[&entity, &crm_keys],
        )
        .await
        .map_err(|e| store.state_error("reading open conflicts", e))?;
    rows.iter().map(conflict_from_row).collect()
}

/// Every conflict of `entity`, open or settled, logged at or after
/// `since` if given, oldest first.
pub(super) async fn all(
    store: &PgStore,
    entity: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<ConflictInfo>, EndpointError> {
    let conn = store.conn().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts \
                 WHERE entity = $1 AND ($2::timestamptz IS NULL OR created_at >= $2) \
                 ORDER BY conflict_id",
                store.s()
            ),
            &[&entity, &since],
        )
        .await
        .map_err(|e| store.state_error("reading conflicts", e))?;
    rows.iter().map(conflict_from_row).collect()
}

/// One conflict by id.
pub(super) async fn one(store: &PgStore, id: i64) -> Result<Option<ConflictInfo>, EndpointError> {
    let conn = store.conn().await?;
    let row = conn
        .query_opt(
            &format!(
                "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts WHERE conflict_id = $1",
                store.s()
            ),
            &[&id],
        )
        .await
        .map_err(|e| store.state_error("reading a conflict", e))?;
    row.as_ref().map(conflict_from_row).transpose()
}

/// Closes an open conflict with `resolution`.
pub(super) async fn close(store: &PgStore, id: i64, resolution: &str) -> Result<(), EndpointError> {
    let conn = store.conn().await?;
    conn.execute(
        &format!(
            "UPDATE {}.conflicts SET resolved_at = now(), resolution = $2 \
             WHERE conflict_id = $1 AND resolved_at IS NULL",
            store.s()
        ),
        &[&id, &resolution],
    )
    .await
    .map_err(|e| store.state_error("closing a conflict", e))?;
    Ok(())
}
