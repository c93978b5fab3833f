//! Run history: the counts of a run, read back from the summary its run
//! record keeps (the JSON of the run's report, whichever version of
//! crmsync wrote it), for `crmsync runs` and the metrics file.

use super::RunInfo;
use crate::engine::BackfillDirection;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{BackfillReport, EntityReport};

    // Built from the engine's own report types, so that a renamed count
    // breaks here rather than reading as zero in the history.
    #[test]
    fn a_sync_summary_gives_each_count_its_side() {
        let report = EntityReport {
            read: 1,
            inserted: 2,
            updated: 3,
            deleted: 4,
            crm_inserted: 5,
            crm_updated: 6,
            crm_deleted: 7,
            conflicts: 8,
            rejected: 9,
            ..Default::default()
        };
        let summary = serde_json::to_value(&report).unwrap();
        assert_eq!(
            RunCounts::from_summary("sync", &summary),
            RunCounts {
                read: 1,
                crm: TargetCounts {
                    inserted: 5,
                    updated: 6,
                    deleted: 7
                },
                external: TargetCounts {
                    inserted: 2,
                    updated: 3,
                    deleted: 4
                },
                conflicts: 8,
                rejected: 9,
            }
        );
    }

    #[test]
    fn a_backfill_summary_counts_on_the_side_it_wrote() {
        let report = BackfillReport {
            direction: BackfillDirection::ExternalToCrm.as_str().into(),
            read: 10,
            inserted: 6,
            updated: 3,
            rejected: 1,
            ..Default::default()
        };
        let summary = serde_json::to_value(&report).unwrap();
        let c = RunCounts::from_summary("backfill", &summary);
        assert_eq!((c.read, c.rejected), (10, 1));
        assert_eq!(c.external, TargetCounts::default());
        assert_eq!(
            c.crm,
            TargetCounts {
                inserted: 6,
                updated: 3,
                deleted: 0
            }
        );
        let report = BackfillReport {
            direction: BackfillDirection::CrmToExternal.as_str().into(),
            ..report
        };
        let c = RunCounts::from_summary("backfill", &serde_json::to_value(&report).unwrap());
        assert_eq!(c.crm, TargetCounts::default());
        assert_eq!(c.external.inserted, 6);
    }
}
