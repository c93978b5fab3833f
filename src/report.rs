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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backfill: Vec<crate::engine::BackfillReport>,
}

impl RunReport {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }
}

/// One line per entity, for people.
pub fn human(e: &EntityReport, dry_run: bool) -> String {
    let verb = if dry_run { "would write" } else { "wrote" };
    let mut out = format!(
        "{}: read {}, {verb} {} (inserted {}, updated {}, deleted {}, linked existing {}), unchanged {}, rejected {}",
        e.entity, e.read, e.changes(), e.inserted, e.updated, e.deleted, e.adopted, e.unchanged, e.rejected
    );
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

/// One line per backfilled entity, for people.
pub fn backfill_human(b: &crate::engine::BackfillReport) -> String {
    let mut out = format!(
        "{}: backfill {}{}: read {}, linked existing {} (link column {}, CRM id {}, match_on {}), \
         already linked {}, updated {}, inserted {}, rejected {}; {:.1}s, {:.0} rows/s",
        b.entity,
        b.direction,
        if b.resumed {
            format!(" (resumed after {} rows)", b.rows_done_before)
        } else {
            String::new()
        },
        b.read,
        b.linked,
        b.linked_by_link_column,
        b.linked_by_crm_id,
        b.linked_by_match,
        b.already_linked,
        b.updated,
        b.inserted,
        b.rejected,
        b.seconds,
        b.rows_per_second
    );
    if let Some(rss) = b.peak_rss_bytes {
        out.push_str(&format!(", peak RSS {} MB", rss / (1024 * 1024)));
    }
    if b.rejected > 0 {
        out.push_str("; rejected rows are listed by `crmsync status`");
    }
    out
}
