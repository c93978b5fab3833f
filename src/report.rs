//! The JSON summary written by `--report FILE`, and the human summary
//! printed on stdout.

use crate::engine::EntityReport;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub command: String,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub warnings: Vec<String>,
    pub entities: Vec<EntityReport>,
}

impl RunReport {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }
}

/// An error followed by its causes, on one line.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// One line per entity, for people.
pub fn human(e: &EntityReport, dry_run: bool) -> String {
    let verb = if dry_run { "would write" } else { "wrote" };
    let mut out = format!(
        "{}: read {}, {verb} {} (external: inserted {}, updated {}, deleted {}; CRM: inserted {}, updated {}, deleted {}; linked existing {}), unchanged {}, rejected {}",
        e.entity,
        e.read,
        e.changes(),
        e.inserted,
        e.updated,
        e.deleted,
        e.crm_inserted,
        e.crm_updated,
        e.crm_deleted,
        e.adopted,
        e.unchanged,
        e.rejected
    );
    if e.conflicts > 0 {
        out.push_str(&format!(", conflicts {}", e.conflicts));
    }
    if e.open_conflicts > 0 {
        out.push_str(&format!(
            "; {} conflicts wait for `crmsync conflicts resolve`",
            e.open_conflicts
        ));
    }
    if e.deletes_refused > 0 {
        out.push_str(&format!(
            "; {} external rows are gone, more than max_delete_ratio allows: their deletes were NOT carried into CRM (check the external table, then raise max_delete_ratio for one run if they are real)",
            e.deletes_refused
        ));
    }
    if e.truncated > 0 {
        out.push_str(&format!(", truncated {} values", e.truncated));
    }
    if e.open_rejects > 0 {
        out.push_str(&format!(
            "; {} rows are rejected and will be retried (see `crmsync status`)",
            e.open_rejects
        ));
    }
    out
}
