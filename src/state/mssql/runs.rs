//! Run history on SQL Server: past runs, each entity's last success.

use super::{int, placeholders, text, utc, Arg, MsStore, MAX_PARAMS};
use crate::db::EndpointError;
use crate::state::RunInfo;
use crate::value::Value;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The columns `run_from_row` reads (`{s}` is the schema).
pub(super) const RUN_COLUMNS: &str = "run_id, entity, command, started_at, finished_at, \
     DATEDIFF_BIG(millisecond, started_at, COALESCE(finished_at, SYSUTCDATETIME())), \
     outcome, summary";

pub(super) fn run_from_row(r: &[Value]) -> RunInfo {
    RunInfo {
        id: int(&r[0]).unwrap_or(0),
        entity: text(&r[1]).unwrap_or_default(),
        command: text(&r[2]).unwrap_or_default(),
        started_at: utc(&r[3]).unwrap_or_default(),
        finished_at: utc(&r[4]),
        seconds: int(&r[5]).unwrap_or(0) as f64 / 1e3,
        outcome: text(&r[6]),
        summary: text(&r[7]).and_then(|t| serde_json::from_str(&t).ok()),
    }
}

/// The newest `last` runs, of `entity` or of all, newest first.
pub(super) async fn newest(
    store: &MsStore,
    entity: Option<&str>,
    last: i64,
) -> Result<Vec<RunInfo>, EndpointError> {
    let rows = store
        .rows(
            &format!(
                "SELECT TOP (@P2) {RUN_COLUMNS} FROM {}.runs \
                 WHERE @P1 IS NULL OR entity = @P1 ORDER BY run_id DESC",
                store.s()
            ),
            &[Arg::Text(entity.map(str::to_string)), Arg::Int(Some(last))],
            "reading the run history",
        )
        .await?;
    Ok(rows.iter().map(|r| run_from_row(r)).collect())
}

/// The runs with these ids, oldest first.
pub(super) async fn by_id(store: &MsStore, ids: &[i64]) -> Result<Vec<RunInfo>, EndpointError> {
    let mut out = Vec::new();
    for chunk in ids.chunks(MAX_PARAMS) {
        let list = placeholders(1, chunk.len());
        let args: Vec<Arg> = chunk.iter().map(|i| Arg::Int(Some(*i))).collect();
        let rows = store
            .rows(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM {}.runs WHERE run_id IN ({list})",
                    store.s()
                ),
                &args,
                "reading runs",
            )
            .await?;
        out.extend(rows.iter().map(|r| run_from_row(r)));
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// When each entity's last run that finished without failing ended.
pub(super) async fn last_successes(
    store: &MsStore,
) -> Result<HashMap<String, DateTime<Utc>>, EndpointError> {
    let none: &[Arg] = &[];
    let rows = store
        .rows(
            &format!(
                "SELECT entity, MAX(finished_at) FROM {}.runs \
                 WHERE finished_at IS NOT NULL AND outcome <> N'failed' GROUP BY entity",
                store.s()
            ),
            none,
            "reading the last successful runs",
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((text(&r[0])?, utc(&r[1])?)))
        .collect())
}
