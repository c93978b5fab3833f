//! Run history on PostgreSQL: past runs, each entity's last success.

use super::PgStore;
use crate::db::EndpointError;
use crate::state::RunInfo;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The columns `run_from_row` reads.
pub(super) const RUN_COLUMNS: &str = "run_id, entity, command, started_at, finished_at, \
     extract(epoch FROM coalesce(finished_at, now()) - started_at)::float8, outcome, summary";

pub(super) fn run_from_row(r: &tokio_postgres::Row) -> RunInfo {
    RunInfo {
        id: r.get(0),
        entity: r.get(1),
        command: r.get(2),
        started_at: r.get(3),
        finished_at: r.get(4),
        seconds: r.get(5),
        outcome: r.get(6),
        summary: r.get(7),
    }
}

/// The newest `last` runs, of `entity` or of all, newest first.
pub(super) async fn newest(
    store: &PgStore,
    entity: Option<&str>,
    last: i64,
) -> Result<Vec<RunInfo>, EndpointError> {
    let conn = store.conn().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM {}.runs \
                 WHERE $1::text IS NULL OR entity = $1 ORDER BY run_id DESC LIMIT $2",
                store.s()
            ),
            &[&entity, &last],
        )
        .await
        .map_err(|e| store.state_error("reading the run history", e))?;
    Ok(rows.iter().map(run_from_row).collect())
}

/// The runs with these ids, oldest first.
pub(super) async fn by_id(store: &PgStore, ids: &[i64]) -> Result<Vec<RunInfo>, EndpointError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let conn = store.conn().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM {}.runs WHERE run_id = ANY($1) ORDER BY run_id",
                store.s()
            ),
            &[&ids],
        )
        .await
        .map_err(|e| store.state_error("reading runs", e))?;
    Ok(rows.iter().map(run_from_row).collect())
}

/// When each entity's last run that finished without failing ended.
pub(super) async fn last_successes(
    store: &PgStore,
) -> Result<HashMap<String, DateTime<Utc>>, EndpointError> {
    let conn = store.conn().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT entity, max(finished_at) FROM {}.runs \
                 WHERE finished_at IS NOT NULL AND outcome <> 'failed' GROUP BY entity",
                store.s()
            ),
            &[],
        )
        .await
        .map_err(|e| store.state_error("reading the last successful runs", e))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
