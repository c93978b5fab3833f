//! Incremental CRM → external sync: paging through timestamp ties, runs
//! with nothing to do, late commits, soft deletes, filters, dry runs.

use crate::common::{assert_converged, count, insert_companies, Env, Opts, WORLDWIDE};

/// 10,000 suppliers, 2,000 of which share one Comp_UpdatedDate, in pages
/// of 100: page boundaries fall inside the tie group twenty times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_with_a_2000_row_timestamp_tie_arrive_exactly_once() {
    let env = Env::new(Opts {
        batch_size: 100,
        ..Opts::default()
    })
    .await;
    let n = insert_companies(
        &env.crm,
        10_000,
        "CASE WHEN i BETWEEN 4001 AND 6000 THEN timestamp '2026-01-01 11:00:15' \
              ELSE timestamp '2026-01-01 11:00:00' + i * interval '3 ms' END",
        "Supplier",
    )
    .await;
    assert_eq!(n, 10_000);
    let ties: i64 = env
        .crm
        .query_one(
            "SELECT count(*) FROM company WHERE comp_updateddate = '2026-01-01 11:00:15'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ties, 2_000, "the tie group is in place");
    // Soft-deleted rows never synced before must not arrive.
    env.crm
        .execute(
            "UPDATE company SET comp_deleted = 1 WHERE comp_companyid % 1000 = 7",
            &[],
        )
        .await
        .unwrap();

    let report = env.sync().await;
    assert_eq!(report.read, 10_000);
    assert_eq!(report.inserted, 9_990);
    assert_eq!(report.rejected, 0);
    assert_eq!(assert_converged(&env).await, 9_990);
    assert_eq!(count(&env.erp, "erp.supplier").await, 9_990);
}

/// A second run over unchanged data re-reads the overlap window but
/// writes nothing: no counters move and no external row is rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sync_without_changes_writes_nothing() {
    let env = Env::new(Opts {
        batch_size: 50,
        ..Opts::default()
    })
    .await;
    // Stamped a minute ago: within the overlap of the next read.
    insert_companies(
        &env.crm,
        500,
        "localtimestamp(3) - interval '1 minute' + (i / 10) * interval '7 ms'",
        "Supplier",
    )
    .await;
    let first = env.sync().await;
    assert_eq!(first.inserted, 500);
    let fingerprint =
        "SELECT string_agg(supplier_id || ':' || xmin::text || ':' || updated_at::text, ',' \
                       ORDER BY supplier_id) FROM erp.supplier";
    let before: String = env.erp.query_one(fingerprint, &[]).await.unwrap().get(0);
    let links_before: String = env
        .erp
        .query_one(
            "SELECT string_agg(crmsync.key_text(crm_key) || ':' || xmin::text, ',' ORDER BY crm_key) \
             FROM crmsync.links",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let second = env.sync().await;
    // Every row lies inside the 5 minute overlap, so all are read again.
    assert_eq!(second.read, 500, "the overlap window is re-read");
    assert_eq!(second.unchanged, 500);
    assert_eq!(second.changes(), 0, "{second:?}");
    assert_eq!(
        (
            second.inserted,
            second.updated,
            second.deleted,
            second.adopted
        ),
        (0, 0, 0, 0)
    );
    let after: String = env.erp.query_one(fingerprint, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "erp.supplier rows were rewritten");
    let links_after: String = env
        .erp
        .query_one(
            "SELECT string_agg(crmsync.key_text(crm_key) || ':' || xmin::text, ',' ORDER BY crm_key) \
             FROM crmsync.links",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(links_before, links_after, "links were rewritten");
}

/// The overlap is measured back from when the previous run began reading,
/// not from the last change: rows stamped long before are not read again,
/// however many share the last change's time, and a new change still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_table_is_not_read_again() {
    let env = Env::new(Opts {
        batch_size: 50,
        ..Opts::default()
    })
    .await;
    insert_companies(
        &env.crm,
        300,
        "timestamp '2026-01-01 11:00:00' + (i / 100) * interval '1 s'",
        "Supplier",
    )
    .await;
    assert_eq!(env.sync().await.inserted, 300);
    let second = env.sync().await;
    assert_eq!((second.read, second.changes()), (0, 0), "{second:?}");
    env.crm
        .execute(
            "UPDATE company SET comp_name = 'Renamed', comp_updateddate = localtimestamp(3) \
             WHERE comp_name = 'Company 7'",
            &[],
        )
        .await
        .unwrap();
    let third = env.sync().await;
    assert_eq!((third.read, third.updated), (1, 1), "{third:?}");
    // The new change is within the overlap of the next read: read again,
    // written no more.
    let fourth = env.sync().await;
    assert_eq!((fourth.read, fourth.changes()), (1, 0), "{fourth:?}");
}

/// With no index starting with the change column, a first run reads the
/// table in key order (no sort of the whole table for each page): every
/// row of the window once, across pages, leaving out rows without a
/// change time and rows stamped after the window; the next run reads only
/// what changed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_without_a_change_index_reads_in_key_order() {
    let env = Env::new(Opts {
        batch_size: 40,
        ..Opts::default()
    })
    .await;
    env.crm
        .batch_execute("DROP INDEX idx_comp_updateddate_companyid")
        .await
        .unwrap();
    insert_companies(
        &env.crm,
        250,
        "timestamp '2026-01-01 11:00:00' + ((i * 37) % 250) * interval '1 s'",
        "Supplier",
    )
    .await;
    // Ten rows without a change time, five stamped a day ahead.
    env.crm
        .batch_execute(
            "UPDATE company SET comp_updateddate = NULL WHERE comp_companyid % 25 = 0;
             UPDATE company SET comp_updateddate = localtimestamp + interval '1 day'
              WHERE comp_companyid % 50 = 1",
        )
        .await
        .unwrap();
    let first = env.sync().await;
    assert_eq!((first.read, first.inserted), (235, 235), "{first:?}");
    let got = crate::common::external_suppliers(&env.erp).await;
    assert_eq!(got.len(), 235);
    assert!(got.keys().all(|id| id % 25 != 0 && id % 50 != 1));
    // Quiet: nothing read again but what the overlap holds (none here).
    let second = env.sync().await;
    assert_eq!((second.read, second.changes()), (0, 0), "{second:?}");
    env.crm
        .batch_execute(
            "UPDATE company SET comp_name = 'Renamed', comp_updateddate = localtimestamp(3) \
             WHERE comp_companyid = 7",
        )
        .await
        .unwrap();
    let third = env.sync().await;
    assert_eq!((third.read, third.updated), (1, 1), "{third:?}");
}

/// Sage CRM stamps local time. When daylight saving time ends, the hour
/// from 02:00 to 03:00 repeats: a row changed at 02:10 in its second pass
/// carries a time below a watermark taken at 02:50 in its first. The next
/// read reaches back by the hour the clock was set back, and finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_the_hour_that_repeats_when_clocks_go_back_is_not_lost() {
    let env = Env::new(Opts::default()).await;
    let text = env.config_text(&Opts::default()).replacen(
        "timezone = \"UTC\"",
        "timezone = \"Europe/Berlin\"",
        1,
    );
    std::fs::write(&env.config, text).unwrap();
    insert_companies(&env.crm, 3, "timestamp '2026-10-25 02:40:00'", "Supplier").await;
    assert_eq!(env.sync().await.inserted, 3);
    // As if that run had read at 02:58, in the first pass of the hour,
    // after a last change at 02:50 (25 October 2026, Europe/Berlin: at
    // 03:00 CEST the clocks went back to 02:00 CET).
    env.erp
        .execute(
            r#"UPDATE crmsync.watermarks
                  SET ts = '{"t": "Timestamp", "v": "2026-10-25T02:50:00"}',
                      read_at = '{"t": "Timestamp", "v": "2026-10-25T02:58:00"}'
                WHERE entity = 'supplier' AND side = 'crm'"#,
            &[],
        )
        .await
        .unwrap();
    // Changed in the second pass, an hour later by the sun.
    env.crm
        .execute(
            "UPDATE company SET comp_name = 'Second pass', \
             comp_updateddate = timestamp '2026-10-25 02:10:00' WHERE comp_name = 'Company 2'",
            &[],
        )
        .await
        .unwrap();
    let run = env.sync().await;
    assert_eq!(run.updated, 1, "{run:?}");
    let names: Vec<String> = env
        .erp
        .query(
            "SELECT name FROM erp.supplier WHERE name = 'Second pass'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["Second pass"]);
    // The first-pass rows read again are equal to their shadows.
    assert_eq!(run.changes(), 1, "{run:?}");
}

/// A transaction stamps rows with a time below what the first run reads
/// past, and commits only after that run: the next run, re-reading the
/// overlap, picks both the insert and the update up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_below_the_watermark_is_picked_up_by_the_next_run() {
    let env = Env::new(Opts::default()).await;
    // 200 rows a second apart up to 10 s ago; the late rows are stamped a
    // minute before the first run reads past them, and commit after it.
    let start: chrono::NaiveDateTime = env
        .crm
        .query_one(
            "SELECT date_trunc('second', localtimestamp) - interval '210 s'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    insert_companies(
        &env.crm,
        200,
        &format!("timestamp '{start}' + i * interval '1 s'"),
        "Supplier",
    )
    .await;
    let stamp = start + chrono::Duration::seconds(60);
    let late = crate::common::connect(&env.crm_url).await;
    late.batch_execute(&format!(
        "BEGIN;
         INSERT INTO company (comp_name, comp_type, comp_status, comp_createddate,
             comp_updateddate, comp_timestamp, comp_secterr)
         VALUES ('Late Supplier', 'Supplier', 'Active', timestamp '{stamp}',
             timestamp '{stamp}', timestamp '{stamp}', {WORLDWIDE});
         UPDATE company SET comp_name = 'Renamed Late', comp_updateddate = timestamp '{stamp}'
          WHERE comp_name = 'Company 10';"
    ))
    .await
    .unwrap();

    let first = env.sync().await;
    assert_eq!(first.inserted, 200);
    let mark = first
        .watermark
        .clone()
        .expect("a watermark after reading rows");
    let last = (start + chrono::Duration::seconds(200)).to_string();
    assert!(
        mark.starts_with(&last),
        "the first run read past the late rows' stamp: {mark}, expected {last}"
    );
    let late_rows: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE name IN ('Late Supplier', 'Renamed Late')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        late_rows, 0,
        "uncommitted rows are invisible to the first run"
    );

    late.batch_execute("COMMIT").await.unwrap();
    let second = env.sync().await;
    assert_eq!((second.inserted, second.updated), (1, 1), "{second:?}");
    assert_converged(&env).await;
}

async fn soft_delete_case(delete: &'static str) -> Env {
    let env = Env::new(Opts {
        delete_into_external: delete,
        ..Opts::default()
    })
    .await;
    insert_companies(
        &env.crm,
        30,
        "timestamp '2026-01-01 11:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    // Customers are outside crm_filter.
    env.crm
        .execute(
            "UPDATE company SET comp_type = 'Customer' WHERE comp_name IN ('Company 1', 'Company 2')",
            &[],
        )
        .await
        .unwrap();
    let first = env.sync().await;
    assert_eq!(first.inserted, 28);
    assert_converged(&env).await;
    // Sage CRM's soft delete: the flag and a new UpdatedDate. A customer
    // is touched too; it must stay out.
    env.crm
        .batch_execute(
            "UPDATE company SET comp_deleted = 1, comp_updateddate = timestamp '2026-01-01 11:02:00'
              WHERE comp_name IN ('Company 5', 'Company 6');
             UPDATE company SET comp_status = 'Inactive', comp_updateddate = timestamp '2026-01-01 11:02:00'
              WHERE comp_name = 'Company 1';",
        )
        .await
        .unwrap();
    let second = env.sync().await;
    assert_eq!(second.deleted, 2, "{second:?}");
    assert_eq!((second.inserted, second.updated), (0, 0), "{second:?}");
    assert_converged(&env).await;
    let customers: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE name IN ('Company 1', 'Company 2')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(customers, 0, "rows outside crm_filter arrived");
    // A third run must not delete again.
    let third = env.sync().await;
    assert_eq!(third.changes(), 0, "{third:?}");
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_soft_delete_becomes_a_hard_delete() {
    let env = soft_delete_case("hard").await;
    let rows: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE name IN ('Company 5', 'Company 6')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "hard delete leaves no row");
    assert_eq!(count(&env.erp, "erp.supplier").await, 26);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_soft_delete_sets_the_external_deleted_flag() {
    let env = soft_delete_case("soft").await;
    let flagged: Vec<String> = env
        .erp
        .query(
            "SELECT name FROM erp.supplier WHERE is_deleted ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(flagged, ["Company 5", "Company 6"]);
    assert_eq!(count(&env.erp, "erp.supplier").await, 28);
}

/// A deleted row that comes back to life in CRM (Deleted back to NULL)
/// is written again: re-inserted after a hard delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeleted_crm_row_comes_back_after_a_hard_delete() {
    let env = soft_delete_case("hard").await;
    env.crm
        .execute(
            "UPDATE company SET comp_deleted = NULL, comp_updateddate = timestamp '2026-01-01 11:03:00'
              WHERE comp_name = 'Company 5'",
            &[],
        )
        .await
        .unwrap();
    let r = env.sync().await;
    assert_eq!(r.inserted, 1, "{r:?}");
    assert_eq!(assert_converged(&env).await, 27);
}

/// `plan` computes the changes but writes nothing, not even crmsync's own
/// state schema; `sync` afterwards writes what `plan` announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_writes_nothing_not_even_state() {
    let env = Env::new(Opts::default()).await;
    insert_companies(
        &env.crm,
        12,
        "timestamp '2026-01-01 11:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    let out = env.run_binary(&["plan"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("would write 12"), "{stdout}");
    assert_eq!(count(&env.erp, "erp.supplier").await, 0);
    let schemas: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'crmsync'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "plan created the state schema");

    let out = env.run_binary(&["sync"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    assert_eq!(assert_converged(&env).await, 12);
    let out = env.run_binary(&["status"], &[]);
    let (stdout, _) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("supplier: 12 links"), "{stdout}");
    // The lag is the CRM clock minus the end of the last window read, not
    // minus the last change (rows stamped in 2026-01): seconds, not months.
    let lag: f64 = stdout
        .split(", lag ")
        .nth(1)
        .and_then(|rest| rest.split(" s by the crm clock").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("status shows the crm lag: {stdout}"));
    assert!((0.0..60.0).contains(&lag), "{stdout}");
}

/// A value outside the field's `values` map rejects that row only: the run
/// finishes with exit 3, `status` lists the reject, and once the value is
/// fixed in CRM the row is retried by key (no new UpdatedDate needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_row_gives_exit_3_and_is_retried_once_fixed() {
    let env = Env::new(Opts::default()).await;
    insert_companies(
        &env.crm,
        5,
        "timestamp '2026-01-01 10:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    env.crm
        .execute(
            "UPDATE company SET comp_status = 'Prospect' WHERE comp_name = 'Company 3'",
            &[],
        )
        .await
        .unwrap();
    let out = env.run_binary(&["sync"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("rejected 1"), "{stdout}");
    assert_eq!(count(&env.erp, "erp.supplier").await, 4);
    let out = env.run_binary(&["status"], &[]);
    let (stdout, _) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("1 open rejects"), "{stdout}");
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("Prospect"), "{reason}");

    env.crm
        .execute(
            "UPDATE company SET comp_status = 'Active' WHERE comp_name = 'Company 3'",
            &[],
        )
        .await
        .unwrap();
    let out = env.run_binary(&["sync"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    assert_eq!(assert_converged(&env).await, 5);
}

/// Regression: a CRM NULL headed for a NOT NULL external column failed
/// the whole batch on every run (exit 1 forever, nothing after that row
/// ever synced). It is now a reject of that row alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_into_a_not_null_external_column_rejects_the_row_instead_of_failing_every_run() {
    let env = Env::new(Opts::default()).await;
    insert_companies(
        &env.crm,
        5,
        "timestamp '2026-01-01 10:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    env.crm
        .execute(
            "UPDATE company SET comp_name = NULL WHERE comp_name = 'Company 3'",
            &[],
        )
        .await
        .unwrap();
    let out = env.run_binary(&["sync"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert_eq!(count(&env.erp, "erp.supplier").await, 4);
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.contains("NOT NULL") && reason.contains("name"),
        "{reason}"
    );

    env.crm
        .execute(
            "UPDATE company SET comp_name = 'Company 3' WHERE comp_name IS NULL",
            &[],
        )
        .await
        .unwrap();
    let out = env.run_binary(&["sync"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    assert_eq!(assert_converged(&env).await, 5);
}

/// Regression: a CRM change to a row whose external copy was deleted
/// outside crmsync was counted as an update that updated nothing, and the
/// row never came back. The CRM owns the row, so it is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_to_a_row_deleted_outside_crmsync_sends_it_again() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 5, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    env.sync().await;
    env.erp
        .execute("DELETE FROM erp.supplier WHERE crm_company_id = 3", &[])
        .await
        .unwrap();
    env.crm
        .execute(
            "UPDATE company SET comp_name = 'Company 3 renamed', comp_updateddate = timestamp '2026-01-01 10:05:00'
              WHERE comp_companyid = 3",
            &[],
        )
        .await
        .unwrap();
    let r = env.sync().await;
    assert_eq!((r.inserted, r.updated), (1, 0), "{r:?}");
    assert_eq!(assert_converged(&env).await, 5);
    assert_eq!(env.sync().await.changes(), 0);
}

/// Regression: with delete_into_external = "ignore" the external row stays
/// when its CRM row is deleted; when the CRM row came back it was taken
/// for a new row and inserted a second time (without an
/// external_crm_id_column to find the first). It is now written in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeleted_crm_row_with_ignored_delete_is_not_inserted_twice() {
    let opts = Opts {
        delete_into_external: "ignore",
        entity_override: Some(format!(
            "external_table = \"erp.supplier\"\nexternal_key = \"supplier_id\"\n\
             external_updated_column = \"updated_at\"\n{}",
            crate::common::SUPPLIER_FIELDS
        )),
        ..Opts::default()
    };
    let env = Env::new(opts).await;
    insert_companies(&env.crm, 3, "timestamp '2026-01-01 11:00:00'", "Supplier").await;
    env.sync().await;
    for (deleted, at) in [("1", "11:01:00"), ("NULL", "11:02:00")] {
        env.crm
            .batch_execute(&format!(
                "UPDATE company SET comp_deleted = {deleted}, comp_name = 'Back ' || comp_companyid, \
                 comp_updateddate = timestamp '2026-01-01 {at}' WHERE comp_companyid = 2"
            ))
            .await
            .unwrap();
        env.sync().await;
    }
    assert_eq!(count(&env.erp, "erp.supplier").await, 3, "no second copy");
    let names: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE name = 'Back 2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(names, 1, "the row came back with its new values");
    assert_eq!(env.sync().await.changes(), 0);
}

/// A state store written by an earlier version (schema 2: shadows as jsonb
/// in the tagged form) is migrated in place, and its shadows still say
/// what was synced: an unchanged run writes nothing, and one changed field
/// is sent alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_from_schema_version_2_migrate_and_keep_their_shadows() {
    let env = Env::new(Opts::default()).await;
    insert_companies(
        &env.crm,
        50,
        "timestamp '2026-01-01 11:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    assert_eq!(env.sync().await.inserted, 50);
    // Turn the store back into what version 2 wrote: keys as text,
    // shadows as tagged jsonb objects by field, holding the values synced.
    env.erp
        .batch_execute(
            r#"CREATE FUNCTION pg_temp.t(v text) RETURNS jsonb LANGUAGE sql AS $$
                 SELECT CASE WHEN v IS NULL THEN '{"t": "Null"}'::jsonb
                             ELSE jsonb_build_object('t', 'Text', 'v', v) END $$;
               DROP VIEW crmsync.all_links;
               DROP TABLE crmsync.link_blocks;
               ALTER TABLE crmsync.links
                 ALTER COLUMN crm_key TYPE text COLLATE "C" USING crmsync.key_text(crm_key),
                 ALTER COLUMN external_key TYPE text COLLATE "C" USING crmsync.key_text(external_key);
               ALTER TABLE crmsync.links ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
                 ALTER COLUMN shadow TYPE jsonb USING '{}'::jsonb;
               UPDATE crmsync.links l SET shadow = jsonb_build_object(
                   'comp_name', pg_temp.t(s.name), 'comp_status', pg_temp.t(s.status::text),
                   'comp_website', pg_temp.t(s.website), 'comp_phonenumber', pg_temp.t(s.phone),
                   'comp_emailaddress', pg_temp.t(s.email),
                   'comp_promote', jsonb_build_object('t', 'Bool', 'v', s.promote))
                 FROM erp.supplier s WHERE s.supplier_id::text = l.external_key;
               ALTER TABLE crmsync.backfill_checkpoints DROP COLUMN insert_only;
               DROP TABLE crmsync.shadow_layouts;
               ALTER TABLE crmsync.watermarks DROP COLUMN read_at;
               DROP TABLE crmsync.deletes_checked;
               UPDATE crmsync.schema_version SET version = 2;"#,
        )
        .await
        .unwrap();
    let tagged: String = env
        .erp
        .query_one("SELECT shadow::text FROM crmsync.links LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(tagged.contains(r#""t": "Text""#), "{tagged}");

    let again = env.sync().await;
    assert_eq!((again.unchanged, again.changes()), (50, 0), "{again:?}");
    let (version, ty): (i32, String) = env
        .erp
        .query_one(
            "SELECT (SELECT version FROM crmsync.schema_version), \
                    (SELECT data_type FROM information_schema.columns \
                      WHERE table_schema = 'crmsync' AND table_name = 'links' \
                        AND column_name = 'shadow')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (version, ty.as_str()),
        (crmsync::state::SCHEMA_VERSION, "bytea")
    );

    env.crm
        .execute(
            "UPDATE company SET comp_name = 'Renamed', comp_updateddate = localtimestamp(3) \
             WHERE comp_companyid = (SELECT min(comp_companyid) FROM company)",
            &[],
        )
        .await
        .unwrap();
    let changed = env.sync().await;
    assert_eq!((changed.updated, changed.inserted), (1, 0), "{changed:?}");
    // The changed pair's shadow is sealed now; the others are still read
    // as they were written.
    let (sealed, legacy): (i64, i64) = env
        .erp
        .query_one(
            "SELECT count(*) FILTER (WHERE get_byte(shadow, 0) = 1), \
                    count(*) FILTER (WHERE get_byte(shadow, 0) = ascii('{')) FROM crmsync.links",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((sealed, legacy), (1, 49));
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
}

/// `match_on` guards CRM → external inserts too: a new CRM row whose name
/// is held by exactly one unlinked live supplier in the ERP is linked to
/// it (and the conflict policy settles their differences), not copied a
/// second time. Two ERP rows with the name, or another unlinked CRM row
/// with it, make a reject, not a guess; rows outside the external filter
/// or flagged deleted are no candidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_crm_rows_are_linked_by_match_on_not_copied_twice() {
    let entity = crate::common::supplier_entity(
        r#"conflict = "crm_wins"
match_on = [{ crm = "comp_name", external = "name" }]"#,
    );
    let env = Env::new(Opts {
        entity_override: Some(entity),
        ..Opts::default()
    })
    .await;
    insert_companies(
        &env.crm,
        60,
        "localtimestamp(3) - interval '1 hour'",
        "Supplier",
    )
    .await;
    // A second CRM 'Company 5'.
    env.crm
        .execute(
            "INSERT INTO company (comp_name, comp_type, comp_createdby, comp_createddate, \
                 comp_updatedby, comp_updateddate, comp_timestamp, comp_secterr) \
             VALUES ('Company 5', 'Supplier', 1, localtimestamp(3), 1, localtimestamp(3), \
                 localtimestamp(3), $1)",
            &[&WORLDWIDE],
        )
        .await
        .unwrap();
    env.erp
        .batch_execute(
            "INSERT INTO erp.supplier (name, status, kind, is_deleted) VALUES \
             ('Company 1', 'A', 'S', false), \
             ('Company 2', 'A', 'S', false), ('Company 2', 'I', 'S', false), \
             ('Company 3', 'A', 'X', false), \
             ('Company 4', 'A', 'S', true), \
             ('Company 5', 'A', 'S', false)",
        )
        .await
        .unwrap();

    let r = env.sync().await;
    assert_eq!(
        (r.adopted, r.inserted, r.rejected),
        (1, 57, 3),
        "Company 1 linked; Company 2 and both Company 5 rejected: {r:?}"
    );
    let named = |name: &'static str| {
        let erp = &env.erp;
        async move {
            erp.query(
                "SELECT status, kind, is_deleted, crm_company_id IS NOT NULL FROM erp.supplier \
                 WHERE name = $1 ORDER BY supplier_id",
                &[&name],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row.get::<_, Option<String>>(0),
                    row.get::<_, String>(1),
                    row.get::<_, bool>(2),
                    row.get::<_, bool>(3),
                )
            })
            .collect::<Vec<_>>()
        }
    };
    // 'Company 1' is Inactive in CRM, and crm_wins; once linked, the ERP
    // row names its CRM row.
    assert_eq!(
        named("Company 1").await,
        vec![(Some("I".into()), "S".into(), false, true)]
    );
    assert_eq!(
        named("Company 2").await.len(),
        2,
        "nothing added to the two"
    );
    assert_eq!(
        named("Company 3").await.len(),
        2,
        "the non-supplier is no match"
    );
    assert_eq!(
        named("Company 4").await.len(),
        2,
        "the deleted row is no match"
    );
    assert_eq!(
        named("Company 5").await.len(),
        1,
        "two CRM rows, one ERP row"
    );
    let again = env.sync().await;
    assert_eq!(again.changes(), 0, "{again:?}");
}
