//! The JSON summary written by `--report FILE`, and the human summary
//! printed on stdout.

use crate::engine::{Drift, EntityReport, VerifyCounts, VerifyReport};
use crate::state::{ConflictInfo, RunCounts, RunInfo, TargetCounts};
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
    /// `verify` only: per entity, what the comparison found and, with
    /// `--repair`, what the repair did and what remains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify: Vec<VerifyReport>,
    /// `runs` only: the runs listed, newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
}

/// A past run with the counts read from its summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub run: RunInfo,
    pub counts: RunCounts,
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

/// The comparison counts of `verify` on one line.
fn verify_counts(c: &VerifyCounts) -> String {
    format!(
        "compared {} CRM and {} external rows; {} pairs: {} agree, {} differ; {} deleted on both sides; \
         not linked: {} CRM, {} external rows; links without their row: {} CRM, {} external; \
         pairs not naming each other: {}; rows without a change time: {} CRM, {} external",
        c.crm_rows,
        c.external_rows,
        c.pairs,
        c.agree,
        c.differ,
        c.deleted_pairs,
        c.unlinked_crm,
        c.unlinked_external,
        c.missing_crm,
        c.missing_external,
        c.unnamed,
        c.null_change_crm,
        c.null_change_external
    )
}

fn drift_line(d: &Drift) -> String {
    let mut out = format!(
        "  {} CRM {} / external {}",
        d.kind,
        d.crm_key.as_deref().unwrap_or("-"),
        d.external_key.as_deref().unwrap_or("-")
    );
    let fields: Vec<String> = d
        .fields
        .iter()
        .map(|f| format!("{}: CRM {} / external {}", f.field, f.crm, f.external))
        .collect();
    if !fields.is_empty() {
        out.push_str(": ");
        out.push_str(&fields.join("; "));
    }
    out
}

/// The lines `verify` prints for one entity: what it found with samples,
/// and with `--repair` what it did and what remains.
pub fn human_verify(v: &VerifyReport) -> Vec<String> {
    let verdict = if v.found.drift() { "DRIFT" } else { "in step" };
    let mut out = vec![format!(
        "{}: {verdict}: {}",
        v.entity,
        verify_counts(&v.found)
    )];
    out.extend(v.samples.iter().map(drift_line));
    if let Some(r) = &v.repair {
        out.push(format!(
            "{}: repair: cleared {} link shadows, touched {} CRM and {} external rows, then synced",
            v.entity, r.shadows_cleared, r.crm_touched, r.external_touched
        ));
        out.push(human(&r.sync, false));
        let verdict = if r.remaining.drift() {
            "STILL DRIFTING"
        } else {
            "in step"
        };
        out.push(format!(
            "{}: after repair: {verdict}: {}",
            v.entity,
            verify_counts(&r.remaining)
        ));
        out.extend(r.remaining_samples.iter().map(drift_line));
        // Drift that no conflict, reject or refused delete of the repair's
        // sync explains comes back each time it is written.
        let held = r.sync.open_conflicts + r.sync.rejected + r.sync.deletes_refused;
        if r.remaining.drift() && held == 0 {
            out.push(format!(
                "{}: what a repair leaves is rewritten where it is written: a trigger, rule or \
                 default of the target changing the value crmsync writes; map that field the \
                 other way, or not at all",
                v.entity
            ));
        }
    } else if v.found.drift() {
        out.push(format!(
            "{}: run `crmsync verify --entity {} --repair` to have the next sync fix this",
            v.entity, v.entity
        ));
    }
    out
}

/// One line per backfilled entity, for people.
pub fn backfill_human(b: &crate::engine::BackfillReport) -> String {
    // The external → CRM backfill counts its links without their ways.
    let ways = b.linked_by_link_column + b.linked_by_crm_id + b.linked_by_match;
    let how = if ways == b.linked {
        format!(
            " (link column {}, CRM id {}, match_on {}), already linked {}",
            b.linked_by_link_column, b.linked_by_crm_id, b.linked_by_match, b.already_linked
        )
    } else {
        String::new()
    };
    let mut out = format!(
        "{}: backfill {}{}: read {}, linked existing {}{how}, updated {}, inserted {}, \
         rejected {}; {:.1}s, {:.0} rows/s",
        b.entity,
        b.direction,
        if b.resumed {
            format!(" (resumed after {} rows)", b.rows_done_before)
        } else {
            String::new()
        },
        b.read,
        b.linked,
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

/// One past run on one line, for `crmsync runs`.
pub fn run_line(r: &RunInfo) -> String {
    let head = format!(
        "#{} {} {} {}",
        r.id,
        r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        r.entity,
        r.command
    );
    let outcome = match (&r.finished_at, &r.outcome) {
        (Some(_), Some(o)) => format!("{o} after {:.1} s", r.seconds),
        _ => format!(
            "did not finish (crashed or still running; started {:.0} s ago)",
            r.seconds
        ),
    };
    let c = r.counts();
    let side = |t: &TargetCounts| {
        format!(
            "inserted {}, updated {}, deleted {}",
            t.inserted, t.updated, t.deleted
        )
    };
    format!(
        "{head}: {outcome}; read {}; external {}; CRM {}; conflicts {}, rejected {}",
        c.read,
        side(&c.external),
        side(&c.crm),
        c.conflicts,
        c.rejected
    )
}

/// One logged conflict, open or settled, for `crmsync conflicts list --all`.
pub fn conflict_line(c: &ConflictInfo) -> String {
    let r = &c.record;
    let how = c.resolution.as_deref().unwrap_or("resolved");
    let settled = match (&c.resolved_at, &r.winner) {
        (None, _) => "open".to_string(),
        (Some(at), Some(winner)) => format!(
            "winner {winner} ({how}), settled {}",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        (Some(at), None) => format!("settled {} ({how})", at.format("%Y-%m-%d %H:%M:%S UTC")),
    };
    format!(
        "#{} {} CRM {} / external {}: field {}: base {}, CRM {}, external {}; {settled} (run {}, logged {})",
        c.id,
        c.entity,
        r.crm_key,
        r.external_key,
        r.field,
        r.base.as_ref().map(|v| v.display()).unwrap_or_else(|| "-".into()),
        r.crm.display(),
        r.external.display(),
        c.run.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
        c.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}
