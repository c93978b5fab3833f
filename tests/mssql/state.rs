//! crmsync's own state on SQL Server: the store in the CRM's database or
//! in the ERP's, created on first use; links written with the rows they
//! describe; the run lock as a session-owned application lock; `status`
//! and a resumable backfill reading it there.

use super::*;

/// `SELECT COUNT(*)` of `table` on SQL Server where `cond` holds.
async fn count_where(c: &mut Tds, table: &str, cond: &str) -> i64 {
    scalar_i64(c, &format!("SELECT COUNT(*) FROM {table} WHERE {cond}"))
        .await
        .unwrap_or(0)
}

/// Whether the PostgreSQL database holds a `crmsync` schema.
async fn pg_has_state(pg: &tokio_postgres::Client) -> bool {
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'crmsync'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    n > 0
}

const TWO_WAY: &str = r#"direction = "both"
insert_into_crm = true
delete_into_crm = "soft"
max_delete_ratio = 1.0"#;

/// Sage CRM on SQL Server holding the state (`[state] side = "crm"`), the
/// ERP on PostgreSQL: inserts both ways, a change each way, quiet runs
/// that write nothing, deletes both ways, and a rerun after a crash that
/// lost the links and watermarks: every pair is found again, none is
/// copied twice.
#[tokio::test]
async fn state_on_the_crm_side_on_sql_server_syncs_both_ways() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, TWO_WAY, "", "crm");
    let rows: Vec<(String, String)> = (0..5)
        .map(|i| (format!("Company {i}"), format!("2024-05-01 08:00:0{i}.007")))
        .collect();
    env.insert_companies(&rows).await;
    for name in ["Erp A", "Erp B"] {
        env.erp
            .execute(
                "INSERT INTO erp.supplier (name, status, kind) VALUES ($1, 'A', 'S')",
                &[&name],
            )
            .await
            .unwrap();
    }
    let first = env.sync().await;
    assert_eq!((first.inserted, first.crm_inserted), (5, 2), "{first:?}");
    assert_eq!(first.rejected, 0, "{first:?}");
    assert_eq!(
        count_where(&mut env.crm, "crmsync.links", "deleted = 0").await,
        7,
        "the links live on SQL Server"
    );
    assert!(
        !pg_has_state(&env.erp).await,
        "nothing of crmsync's on the ERP"
    );
    for _ in 0..2 {
        let quiet = env.sync().await;
        assert_eq!(quiet.changes(), 0, "{quiet:?}");
    }

    // A change each way.
    exec(
        &mut env.crm,
        "UPDATE dbo.Company SET Comp_Name = N'Renamed', Comp_UpdatedDate = GETDATE(), \
         Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId = 1",
    )
    .await;
    env.erp
        .execute(
            "UPDATE erp.supplier SET phone = '+44 1', updated_at = now() WHERE crm_company_id = 2",
            &[],
        )
        .await
        .unwrap();
    let changed = env.sync().await;
    assert_eq!(
        (changed.updated, changed.crm_updated),
        (1, 1),
        "{changed:?}"
    );
    assert_eq!(env.sync().await.changes(), 0);

    // Deletes: an ERP hard delete (a soft delete in CRM) and a CRM soft
    // delete (the ERP's flag).
    env.erp
        .execute("DELETE FROM erp.supplier WHERE crm_company_id = 3", &[])
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
    exec(
        &mut env.crm,
        "UPDATE dbo.Company SET Comp_Deleted = 1, Comp_UpdatedDate = GETDATE(), \
         Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId = 4",
    )
    .await;
    let deleted = env.sync().await;
    assert_eq!(
        (deleted.deleted, deleted.crm_deleted),
        (1, 1),
        "{deleted:?}"
    );
    assert_eq!(
        count_where(
            &mut env.crm,
            "dbo.Company",
            "Comp_CompanyId = 3 AND Comp_Deleted = 1"
        )
        .await,
        1
    );
    let live: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE crm_company_id = 4 AND NOT is_deleted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 0, "the CRM delete reached the ERP");
    assert_eq!(env.sync().await.changes(), 0);

    // What a crash between the ERP's commit and the links' leaves, at its
    // worst: no links and no watermarks. Every pair is found again by the
    // keys both sides hold; nothing is inserted twice.
    let erp_rows = crate::common::count(&env.erp, "erp.supplier").await;
    let crm_rows = count_where(&mut env.crm, "dbo.Company", "1 = 1").await;
    exec(
        &mut env.crm,
        "DELETE FROM crmsync.links; DELETE FROM crmsync.watermarks",
    )
    .await;
    let rerun = env.sync().await;
    assert_eq!((rerun.inserted, rerun.crm_inserted), (0, 0), "{rerun:?}");
    assert!(rerun.adopted > 0, "{rerun:?}");
    assert_eq!(
        crate::common::count(&env.erp, "erp.supplier").await,
        erp_rows
    );
    assert_eq!(
        count_where(&mut env.crm, "dbo.Company", "1 = 1").await,
        crm_rows
    );
    assert_eq!(
        count_where(&mut env.crm, "crmsync.links", "deleted = 0").await,
        5,
        "the live pairs are linked again"
    );
    assert_eq!(env.sync().await.changes(), 0);
}
