//! The run history reads back the summaries the engine's reports leave in
//! the state store (`state::runs`). Tested here, above both, from the
//! report types themselves.

use super::{BackfillReport, EntityReport};
use crate::plan::BackfillDirection;
use crate::state::{RunCounts, TargetCounts};

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
