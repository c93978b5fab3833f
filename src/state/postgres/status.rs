//! What `crmsync status` shows, read from the state schema.

use super::{from_json, PgStore};
use crate::db::EndpointError;
use crate::state::{EntityCounts, Status, WatermarkInfo};
use std::collections::HashMap;

/// Watermarks, counts by entity and each command's last run.
pub(super) async fn read(store: &PgStore) -> Result<Status, EndpointError> {
    let conn = store.conn().await?;
    let s = store.s();
    let wms = conn
        .query(
            // read_at by name through the row's JSON: a schema older than
            // 4 has no such column, and its watermarks none.
            &format!(
                "SELECT entity, side, ts, key, updated_at, to_jsonb(w) -> 'read_at' \
                 FROM {s}.watermarks w ORDER BY entity, side"
            ),
            &[],
        )
        .await
        .map_err(|e| store.state_error("reading watermarks", e))?;
    let mut watermarks = Vec::new();
    for r in wms {
        let ts = from_json(r.get(2))?;
        watermarks.push(WatermarkInfo {
            entity: r.get(0),
            side: r.get(1),
            ts: ts.display(),
            ts_value: ts,
            key: from_json(r.get(3))?.display(),
            read_at: match r.get::<_, Option<serde_json::Value>>(5) {
                None | Some(serde_json::Value::Null) => None,
                Some(j) => Some(from_json(j)?),
            },
            updated_at: r.get(4),
        });
    }
    let counts = conn
        .query(
            &format!(
                "WITH e AS (SELECT entity FROM {s}.runs UNION SELECT entity FROM {s}.links \
                            UNION SELECT entity FROM {s}.link_blocks) \
                 SELECT e.entity, \
                   (SELECT count(*) FROM {s}.all_links l WHERE l.entity = e.entity AND NOT l.deleted), \
                   (SELECT count(*) FROM {s}.rejects r WHERE r.entity = e.entity AND r.resolved_at IS NULL), \
                   (SELECT count(*) FROM {s}.conflicts c WHERE c.entity = e.entity AND c.resolved_at IS NULL) \
                 FROM e ORDER BY e.entity"
            ),
            &[],
        )
        .await
        .map_err(|e| store.state_error("counting links", e))?
        .into_iter()
        .map(|r| EntityCounts {
            entity: r.get(0),
            links: r.get(1),
            open_rejects: r.get(2),
            open_conflicts: r.get(3),
            deletes_checked_at: None,
        })
        .collect::<Vec<_>>();
    // A state schema older than 5 has no such table: none is shown.
    let checked: HashMap<String, chrono::DateTime<chrono::Utc>> = conn
        .query(
            &format!("SELECT entity, checked_at FROM {s}.deletes_checked"),
            &[],
        )
        .await
        .map(|rows| rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
    let counts = counts
        .into_iter()
        .map(|c| EntityCounts {
            deletes_checked_at: checked.get(&c.entity).copied(),
            ..c
        })
        .collect();
    let last_runs = conn
        .query(
            &format!(
                "SELECT DISTINCT ON (entity, command) {} \
                 FROM {s}.runs ORDER BY entity, command, run_id DESC",
                super::runs::RUN_COLUMNS
            ),
            &[],
        )
        .await
        .map_err(|e| store.state_error("reading runs", e))?
        .iter()
        .map(super::runs::run_from_row)
        .collect();
    Ok(Status {
        watermarks,
        counts,
        last_runs,
    })
}
