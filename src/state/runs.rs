//! Run history: the counts of a run, read back from the summary its run
//! record keeps (the JSON of the run's report, whichever version of
//! crmsync wrote it), for `crmsync runs` and the metrics file.

use super::RunInfo;
use crate::plan::BackfillDirection;
use serde::Serialize;
use serde_json::Value as Json;

/// Rows written into one side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TargetCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// What a run did, whatever the command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub read: u64,
    /// Rows written into CRM.
    pub crm: TargetCounts,
    /// Rows written into the external table.
    pub external: TargetCounts,
    pub conflicts: u64,
    pub rejected: u64,
}

impl RunInfo {
    /// The counts in this run's summary; zeros for a run without one (it
    /// did not finish) or for counts its summary does not hold.
    pub fn counts(&self) -> RunCounts {
        match &self.summary {
            Some(s) => RunCounts::from_summary(&self.command, s),
            None => RunCounts::default(),
        }
    }
}

impl RunCounts {
    /// The counts in the summary of a `command` run: a sync's entity
    /// report (also what `verify --repair` records), or a backfill's,
    /// whose rows went into the side its direction names.
    pub fn from_summary(command: &str, summary: &Json) -> RunCounts {
        let n = |key: &str| summary.get(key).and_then(Json::as_u64).unwrap_or(0);
        if command == "backfill" {
            let written = TargetCounts {
                inserted: n("inserted"),
                updated: n("updated"),
                deleted: 0,
            };
            let into_crm = summary.get("direction").and_then(Json::as_str)
                == Some(BackfillDirection::ExternalToCrm.as_str());
            return RunCounts {
                read: n("read"),
                crm: if into_crm {
                    written
                } else {
                    TargetCounts::default()
                },
                external: if into_crm {
                    TargetCounts::default()
                } else {
                    written
                },
                conflicts: 0,
                rejected: n("rejected"),
            };
        }
        RunCounts {
            read: n("read"),
            crm: TargetCounts {
                inserted: n("crm_inserted"),
                updated: n("crm_updated"),
                deleted: n("crm_deleted"),
            },
            external: TargetCounts {
                inserted: n("inserted"),
                updated: n("updated"),
                deleted: n("deleted"),
            },
            conflicts: n("conflicts"),
            rejected: n("rejected"),
        }
    }
}
