//! A run killed mid-way (SIGKILL) and run again converges: no duplicate,
//! no missing row.

use crate::common::{
    assert_converged, binary, connect, count, insert_companies, output_text, Env, Opts,
};
use std::time::Duration;

const ROWS: i64 = 30_000;
const BATCH: usize = 200;
/// Position (in sync order) of the row the test blocks the run on.
const BLOCK_AT: i64 = 7_777;

/// Kills the binary while it is provably in the middle of the run: the
/// test holds an uncommitted erp.supplier row carrying the CRM id of row
/// BLOCK_AT, so the page that inserts it waits on the unique index while
/// the pages before it have committed. SIGKILL then lands inside an open
/// write transaction, with the run lock held and the run record open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_large_sync_then_rerun_converges() {
    let env = Env::new(Opts {
        batch_size: BATCH,
        ..Opts::default()
    })
    .await;
    insert_companies(
        &env.crm,
        ROWS,
        "timestamp '2026-01-01 10:00:00' + (i / 3) * interval '10 ms'",
        "Supplier",
    )
    .await;
    let blocked_id: i32 = env
        .crm
        .query_one(
            "SELECT comp_companyid FROM company ORDER BY comp_updateddate, comp_companyid OFFSET $1 LIMIT 1",
            &[&(BLOCK_AT - 1)],
        )
        .await
        .unwrap()
        .get(0);
    let blocker = connect(&env.erp_url).await;
    blocker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO erp.supplier (crm_company_id, name) VALUES ({blocked_id}, 'blocker')"
        ))
        .await
        .unwrap();

    let mut child = binary(&env.config, &["sync"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run has committed every page before the blocked one
    // and sits waiting on the blocker's row lock.
    let committed_before = (BLOCK_AT - 1) / BATCH as i64 * BATCH as i64;
    let watcher = connect(&env.erp_url).await;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "crmsync exited ({status}) before it reached the blocked row: {:?}",
                output_text(&out)
            );
        }
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'crmsync'
                    AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = count(&env.erp, "erp.supplier").await;
    assert_eq!(
        arrived, committed_before,
        "pages before the blocked one committed"
    );
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "crmsync was killed by a signal");
    blocker.batch_execute("ROLLBACK").await.unwrap();

    let partial = count(&env.erp, "erp.supplier").await;
    assert!(
        partial > 0 && partial < ROWS,
        "the kill left a partial copy ({partial} of {ROWS} rows)"
    );
    let links: i64 = count(&env.erp, "crmsync.all_links").await;
    assert_eq!(links, partial, "every committed row has its link");

    // The killed run is recorded as unfinished and holds no lock.
    let out = binary(&env.config, &["status"], &[]).output().unwrap();
    let (stdout, _) = output_text(&out);
    assert!(
        stdout.contains("did not finish"),
        "status shows the killed run: {stdout}"
    );

    let out = binary(&env.config, &["sync"], &[]).output().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "rerun: {stdout}\n{stderr}");
    assert_eq!(assert_converged(&env).await, ROWS as usize);
    assert_eq!(count(&env.erp, "erp.supplier").await, ROWS);
    let dupes: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM (SELECT crm_company_id FROM erp.supplier
              GROUP BY crm_company_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0);
    assert_eq!(count(&env.erp, "crmsync.all_links").await, ROWS);
}

/// With the state on the CRM side, links are written after the external
/// transaction commits; a crash between the two loses links. The next run
/// must find the rows by their CRM id and link them, not insert them
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_links_after_a_crash_are_adopted_not_duplicated() {
    let env = Env::new(Opts {
        state_side: "crm",
        batch_size: 50,
        ..Opts::default()
    })
    .await;
    insert_companies(
        &env.crm,
        300,
        "timestamp '2026-01-01 10:00:00' + i * interval '10 ms'",
        "Supplier",
    )
    .await;
    let first = env.sync().await;
    assert_eq!(first.inserted, 300);
    // What a crash between the external commit and the link write
    // leaves: rows without links, and a watermark that never moved. One
    // of the orphans has also changed in CRM since.
    env.crm
        .batch_execute(
            "DELETE FROM crmsync.links WHERE crmsync.key_text(crm_key)::int % 3 = 0;
             DELETE FROM crmsync.watermarks;
             UPDATE company SET comp_name = 'Changed after the crash' WHERE comp_companyid = 30;",
        )
        .await
        .unwrap();
    let second = env.sync().await;
    assert_eq!(second.inserted, 0, "{second:?}");
    assert_eq!(second.adopted, 100, "{second:?}");
    assert_eq!(count(&env.erp, "erp.supplier").await, 300);
    assert_eq!(assert_converged(&env).await, 300);
    assert_eq!(count(&env.crm, "crmsync.all_links").await, 300);
}

/// A deadlock with another writer of the external table aborts crmsync's
/// transaction (PostgreSQL picks the session whose deadlock_timeout runs
/// out first as the victim; the test's own is long). The page is written
/// again after a short wait and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_victim_page_is_retried_and_the_run_succeeds() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 2, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    env.sync().await;
    env.crm
        .batch_execute(
            "UPDATE company SET comp_name = comp_name || ' renamed', \
             comp_updateddate = timestamp '2026-01-01 10:05:00' + comp_companyid * interval '1 second'",
        )
        .await
        .unwrap();
    // Another writer locks row 2, which crmsync will update after row 1.
    let other = connect(&env.erp_url).await;
    other
        .batch_execute(
            "SET deadlock_timeout = '60s'; BEGIN; \
             UPDATE erp.supplier SET kind = kind WHERE crm_company_id = 2",
        )
        .await
        .unwrap();
    let child = binary(&env.config, &["sync"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until crmsync holds row 1 and waits for row 2.
    let mut waiting = false;
    for _ in 0..200 {
        let n: i64 = env
            .erp
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'crmsync' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "crmsync never waited for the locked row");
    // Now close the cycle: this waits for row 1 until crmsync is aborted.
    other
        .batch_execute("UPDATE erp.supplier SET kind = kind WHERE crm_company_id = 1; COMMIT")
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("retrying the page"), "{stderr}");
    assert!(stderr.contains("40P01"), "the deadlock is named: {stderr}");
    assert_eq!(assert_converged(&env).await, 2);
}
