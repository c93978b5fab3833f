//! What `crmsync status` shows, read from the state schema on SQL Server.

use super::{from_json, int, opt_json, text, utc, Arg, MsStore};
use crate::db::EndpointError;
use crate::state::{EntityCounts, Status, WatermarkInfo};
use std::collections::HashMap;

/// Watermarks, counts by entity and each command's last run.
pub(super) async fn read(store: &MsStore) -> Result<Status, EndpointError> {
    let s = store.s();
    let none: &[Arg] = &[];
    let mut watermarks = Vec::new();
    for r in store
        .rows(
            &format!(
                "SELECT entity, side, ts, [key], updated_at, read_at FROM {s}.watermarks \
                 ORDER BY entity, side"
            ),
            none,
            "reading watermarks",
        )
        .await?
    {
        let ts = from_json(&r[2])?;
        watermarks.push(WatermarkInfo {
            entity: text(&r[0]).unwrap_or_default(),
            side: text(&r[1]).unwrap_or_default(),
            ts: ts.display(),
            ts_value: ts,
            key: from_json(&r[3])?.display(),
            read_at: opt_json(&r[5])?,
            updated_at: utc(&r[4]).unwrap_or_default(),
        });
    }
    let checked: HashMap<String, chrono::DateTime<chrono::Utc>> = store
        .rows(
            &format!("SELECT entity, checked_at FROM {s}.deletes_checked"),
            none,
            "reading the hard-delete checks",
        )
        .await?
        .iter()
        .filter_map(|r| Some((text(&r[0])?, utc(&r[1])?)))
        .collect();
    let counts = store
        .rows(
            &format!(
                "SELECT e.entity, \
                   (SELECT COUNT_BIG(*) FROM {s}.links l WHERE l.entity = e.entity AND l.deleted = 0), \
                   (SELECT COUNT_BIG(*) FROM {s}.rejects r \
                     WHERE r.entity = e.entity AND r.resolved_at IS NULL), \
                   (SELECT COUNT_BIG(*) FROM {s}.conflicts c \
                     WHERE c.entity = e.entity AND c.resolved_at IS NULL) \
                 FROM (SELECT entity FROM {s}.runs UNION SELECT entity FROM {s}.links) AS e \
                 ORDER BY e.entity"
            ),
            none,
            "counting links",
        )
        .await?
        .iter()
        .map(|r| {
            let entity = text(&r[0]).unwrap_or_default();
            EntityCounts {
                deletes_checked_at: checked.get(&entity).copied(),
                entity,
                links: int(&r[1]).unwrap_or(0),
                open_rejects: int(&r[2]).unwrap_or(0),
                open_conflicts: int(&r[3]).unwrap_or(0),
            }
        })
        .collect();
    let last_runs = store
        .rows(
            &format!(
                "SELECT {} FROM {s}.runs WHERE run_id IN \
                   (SELECT MAX(run_id) FROM {s}.runs GROUP BY entity, command) \
                 ORDER BY entity, command",
                super::runs::RUN_COLUMNS
            ),
            none,
            "reading runs",
        )
        .await?
        .iter()
        .map(|r| super::runs::run_from_row(r))
        .collect();
    Ok(Status {
        watermarks,
        counts,
        last_runs,
    })
}
