//! `crmsync backfill` end to end: the binary against a Sage CRM database
//! and an ERP database on a throwaway PostgreSQL.

use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const CRM_SCHEMA: &str = include_str!("../../sql/postgres/crm_schema.sql");
const ERP_SCHEMA: &str = include_str!("../../sql/examples/erp_schema.sql");

struct Setup {
    crm: Client,
    erp: Client,
    dir: tempfile::TempDir,
    config: PathBuf,
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// A CRM with `n` live suppliers (and a few soft-deleted ones), an empty
/// erp.supplier, and a config with `conflict` and optional `match_on`.
async fn setup(n: i64, conflict: &str, match_on: bool) -> Setup {
    let crm_url = testkit::fresh_database("bf_crm").await;
    let erp_url = testkit::fresh_database("bf_erp").await;
    let crm = connect(&crm_url).await;
    let erp = connect(&erp_url).await;
    crm.batch_execute(CRM_SCHEMA).await.expect("crm schema");
    erp.batch_execute(ERP_SCHEMA).await.expect("erp schema");
    crm.execute(
        "INSERT INTO company (comp_name, comp_type, comp_status, comp_website, comp_phonenumber, \
           comp_emailaddress, comp_promote, comp_createddate, comp_updateddate, comp_timestamp, \
           comp_deleted, comp_secterr) \
         SELECT 'Supplier ' || i, 'Supplier', CASE WHEN i % 9 = 0 THEN 'Inactive' ELSE 'Active' END, \
           'www.s' || i || '.example.com', '555 ' || i, 's' || i || '@example.com', \
           CASE WHEN i % 3 = 0 THEN 'Y' END, t, t, t, NULL, -2147483640 \
         FROM generate_series(1, $1::bigint) i, \
              LATERAL (SELECT localtimestamp(3) - interval '1 hour' + i * interval '1 millisecond' AS t) x",
        &[&n],
    )
    .await
    .expect("seed");
    crm.batch_execute(
        "INSERT INTO company (comp_name, comp_type, comp_status, comp_updateddate, comp_deleted) \
         SELECT 'Deleted ' || i, 'Supplier', 'Active', localtimestamp(3) - interval '1 hour', 1 \
         FROM generate_series(1, 5) i; ANALYZE company",
    )
    .await
    .expect("deleted rows");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("crmsync.toml");
    let match_line = if match_on {
        "match_on = [{ crm = \"Comp_Name\", external = \"name\" }]"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            r#"[crm]
url = "{crm_url}"
user_id = 1
timezone = "UTC"

[external]
url = "{erp_url}"
timezone = "UTC"

[state]
side = "external"
schema = "crmsync"

[defaults]
batch_size = 1000
settle = "1s"
overlap = "5m"

[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
crm_filter = "Comp_Type = 'Supplier'"
external_table = "erp.supplier"
external_key = "supplier_id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
external_deleted_column = "is_deleted"
external_filter = "kind = 'S'"
external_defaults = {{ kind = "S" }}
direction = "crm_to_external"
delete_into_external = "soft"
conflict = "{conflict}"
{match_line}

[[entity.field]]
crm = "Comp_Name"
external = "name"

[[entity.field]]
crm = "Comp_Status"
external = "status"
values = {{ "Active" = "A", "Inactive" = "I" }}

[[entity.field]]
crm = "Comp_WebSite"
external = "website"

[[entity.field]]
crm = "comp_phonenumber"
external = "phone"

[[entity.field]]
crm = "comp_emailaddress"
external = "email"

[[entity.field]]
crm = "comp_promote"
external = "promote"
transform = "checkbox"
"#
        ),
    )
    .expect("config");
    Setup {
        crm,
        erp,
        dir,
        config,
    }
}

fn crmsync(config: &Path, report: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmsync"));
    cmd.arg("--config")
        .arg(config)
        .arg("--report")
        .arg(report)
        .args(args)
        .env("CRMSYNC_LOG", "info");
    cmd
}

/// Runs crmsync to completion; returns its output and the JSON report.
fn run(s: &Setup, name: &str, args: &[&str]) -> (Output, Json) {
    let report = s.dir.path().join(format!("{name}.json"));
    let out = crmsync(&s.config, &report, args)
        .output()
        .expect("run crmsync");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "no report from crmsync {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, serde_json::from_str(&text).expect("report json"))
}

/// Starts crmsync with `args` and SIGKILLs it once the checkpoint of its
/// backfill in `direction` has committed at least `rows`; returns the rows
/// the checkpoint held then.
async fn kill_after(s: &Setup, args: &[&str], direction: &str, rows: i64) -> i64 {
    let report = s.dir.path().join("killed.json");
    let mut child = crmsync(&s.config, &report, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let done = s
            .erp
            .query_opt(
                "SELECT rows_done FROM crmsync.backfill_checkpoints \
                 WHERE entity = 'supplier' AND direction = $1",
                &[&direction],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if done >= rows {
            child.kill().expect("SIGKILL");
            break done;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "backfill ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "backfill made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    child.wait().unwrap();
    done
}

/// The run ended with exit code `code`; its stderr says why if not.
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn num(j: &Json, path: &str) -> i64 {
    j.pointer(path)
        .and_then(|v| v.as_i64())
        .unwrap_or_else(|| panic!("{path} missing in {j:#}"))
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_into_empty_table_then_sync_has_nothing_to_do() {
    let n = 50_000;
    let s = setup(n, "crm_wins", false).await;
    let (out, rep) = run(&s, "backfill", &["backfill"]);
    assert_exit(&out, 0);
    assert_eq!(
        num(&rep, "/backfill/0/read"),
        n,
        "soft-deleted rows are skipped"
    );
    assert_eq!(num(&rep, "/backfill/0/inserted"), n);
    assert_eq!(num(&rep, "/backfill/0/linked"), 0);
    assert_eq!(
        rep.pointer("/backfill/0/insert_only"),
        Some(&Json::Bool(true)),
        "an empty target needs no lookups"
    );
    assert!(num(&rep, "/backfill/0/peak_rss_bytes") > 0);
    assert_eq!(count(&s.erp, "SELECT count(*) FROM erp.supplier").await, n);
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(DISTINCT crm_company_id) FROM erp.supplier"
        )
        .await,
        n
    );
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM crmsync.all_links WHERE entity = 'supplier'"
        )
        .await,
        n
    );
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM crmsync.all_links WHERE get_byte(shadow, 0) = 1"
        )
        .await,
        n,
        "backfilled shadows are sealed"
    );
    // Keys from the identity ascend with the CRM's: the links went in as
    // blocks, not a row each.
    let in_blocks = count(
        &s.erp,
        "SELECT coalesce(sum(cardinality(crm_keys)), 0)::bigint FROM crmsync.link_blocks",
    )
    .await;
    assert!(in_blocks > n * 9 / 10, "{in_blocks} of {n} links in blocks");
    // The values arrived mapped.
    let row = s
        .erp
        .query_one(
            "SELECT name, status, promote, kind FROM erp.supplier WHERE crm_company_id = 9",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Supplier 9");
    assert_eq!(row.get::<_, String>(1), "I");
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, String>(3), "S");

    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_exit(&out, 0);
    for field in ["inserted", "updated", "deleted", "adopted", "rejected"] {
        assert_eq!(
            num(&rep, &format!("/entities/0/{field}")),
            0,
            "{field} after backfill"
        );
    }
    assert_eq!(count(&s.erp, "SELECT count(*) FROM erp.supplier").await, n);

    // Changes to rows whose links sit in blocks: each is written once,
    // its link moves to a row of its own, and the next run is quiet.
    s.crm
        .batch_execute(
            "UPDATE company SET comp_name = 'Renamed ' || comp_companyid, \
                    comp_updateddate = localtimestamp(3), comp_timestamp = localtimestamp(3) \
              WHERE comp_companyid IN (2, 17, 25000, 49999)",
        )
        .await
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_exit(&out, 0);
    assert_eq!(num(&rep, "/entities/0/updated"), 4);
    assert_eq!(num(&rep, "/entities/0/inserted"), 0);
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM erp.supplier WHERE name LIKE 'Renamed %'"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM crmsync.all_links WHERE entity = 'supplier'"
        )
        .await,
        n,
        "one link a pair still"
    );
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM crmsync.links WHERE crmsync.key_text(crm_key) IN ('2', '17', '25000', '49999')"
        )
        .await,
        4
    );
    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_exit(&out, 0);
    assert_eq!(num(&rep, "/entities/0/updated"), 0);
}

/// Inserts 30% of the CRM rows into erp.supplier by hand (no CRM id), every
/// tenth of them with a different phone; returns how many.
async fn preexisting(s: &Setup, n: i64) -> i64 {
    s.erp
        .execute(
            "INSERT INTO erp.supplier (name, status, website, phone, email, promote, kind) \
             SELECT 'Supplier ' || i, CASE WHEN i % 9 = 0 THEN 'I' ELSE 'A' END, \
                    'www.s' || i || '.example.com', \
                    CASE WHEN i % 10 = 0 THEN 'ERP phone' ELSE '555 ' || i END, \
                    's' || i || '@example.com', i % 3 = 0, 'S' \
             FROM generate_series(1, $1::bigint) i WHERE i % 10 < 3",
            &[&n],
        )
        .await
        .expect("preexisting rows");
    count(&s.erp, "SELECT count(*) FROM erp.supplier").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_links_existing_rows_by_match_on_and_applies_the_conflict_policy() {
    let n = 5_000;
    // The external rows are written after the CRM rows (an hour older), so
    // newest_wins keeps them as external_wins does.
    for policy in ["crm_wins", "external_wins", "newest_wins"] {
        let s = setup(n, policy, true).await;
        let existing = preexisting(&s, n).await;
        assert_eq!(existing, n * 3 / 10);
        let differing = count(
            &s.erp,
            "SELECT count(*) FROM erp.supplier WHERE phone = 'ERP phone'",
        )
        .await;
        assert!(differing > 0);
        let (out, rep) = run(&s, "backfill", &["backfill"]);
        assert_exit(&out, 0);
        assert_eq!(
            num(&rep, "/backfill/0/linked_by_match"),
            existing,
            "{policy}"
        );
        assert_eq!(num(&rep, "/backfill/0/inserted"), n - existing, "{policy}");
        assert_eq!(
            count(&s.erp, "SELECT count(*) FROM erp.supplier").await,
            n,
            "{policy}: no duplicates"
        );
        assert_eq!(
            count(&s.erp, "SELECT count(*) FROM (SELECT name FROM erp.supplier GROUP BY name HAVING count(*) > 1) d").await,
            0
        );
        let still_erp = count(
            &s.erp,
            "SELECT count(*) FROM erp.supplier WHERE phone = 'ERP phone'",
        )
        .await;
        match policy {
            "crm_wins" => {
                assert_eq!(still_erp, 0, "crm_wins updates the external row");
                assert_eq!(num(&rep, "/backfill/0/updated"), differing);
            }
            _ => {
                assert_eq!(
                    still_erp, differing,
                    "{policy} leaves the newer external row"
                );
                assert_eq!(num(&rep, "/backfill/0/updated"), 0);
            }
        }
        // A sync afterwards has nothing to redo (and keeps external_wins).
        let (out, rep) = run(&s, "sync", &["sync"]);
        assert_exit(&out, 0);
        assert_eq!(
            num(&rep, "/entities/0/inserted") + num(&rep, "/entities/0/updated"),
            0
        );
        assert_eq!(
            count(
                &s.erp,
                "SELECT count(*) FROM erp.supplier WHERE phone = 'ERP phone'"
            )
            .await,
            still_erp
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_match_on_is_a_reject_not_a_guess() {
    let s = setup(100, "crm_wins", true).await;
    s.erp
        .batch_execute(
            "INSERT INTO erp.supplier (name, kind) VALUES ('Supplier 7', 'S'), ('Supplier 7', 'S')",
        )
        .await
        .unwrap();
    s.crm
        .batch_execute(
            "INSERT INTO company (comp_name, comp_type, comp_status, comp_updateddate) \
             VALUES ('Supplier 8', 'Supplier', 'Active', localtimestamp(3) - interval '1 hour')",
        )
        .await
        .unwrap();
    s.erp
        .batch_execute("INSERT INTO erp.supplier (name, kind) VALUES ('Supplier 8', 'S')")
        .await
        .unwrap();
    let (out, rep) = run(&s, "backfill", &["backfill"]);
    assert_eq!(out.status.code(), Some(3), "rejects end with exit code 3");
    // Supplier 7: two external rows; Supplier 8: two CRM rows.
    assert_eq!(num(&rep, "/backfill/0/rejected"), 3);
    assert_eq!(num(&rep, "/backfill/0/linked_by_match"), 0);
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM erp.supplier WHERE name = 'Supplier 7'"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_backfill_then_rerun_resumes_with_exactly_one_copy() {
    let n = 60_000;
    let s = setup(n, "crm_wins", false).await;
    let done_at_kill = kill_after(
        &s,
        &["backfill", "--chunk-rows", "500"],
        "crm_to_external",
        5_000,
    )
    .await;
    assert!(done_at_kill < n, "killed mid-run");
    let (out, rep) = run(&s, "resume", &["backfill"]);
    assert_exit(&out, 0);
    assert_eq!(rep.pointer("/backfill/0/resumed"), Some(&Json::Bool(true)));
    assert_eq!(
        rep.pointer("/backfill/0/insert_only"),
        Some(&Json::Bool(true)),
        "the resumed run keeps the mode the interrupted one began in"
    );
    let before = num(&rep, "/backfill/0/rows_done_before");
    assert!(before >= done_at_kill, "resumed from the checkpoint");
    assert_eq!(
        num(&rep, "/backfill/0/read"),
        n - before,
        "did not start over"
    );
    assert_eq!(count(&s.erp, "SELECT count(*) FROM erp.supplier").await, n);
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(DISTINCT crm_company_id) FROM erp.supplier"
        )
        .await,
        n
    );
    assert_eq!(
        count(&s.erp, "SELECT count(*) FROM crmsync.all_links").await,
        n
    );
    // --restart starts over, and finds everything linked already.
    let (out, rep) = run(&s, "restart", &["backfill", "--restart"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(num(&rep, "/backfill/0/read"), n);
    assert_eq!(
        rep.pointer("/backfill/0/insert_only"),
        Some(&Json::Bool(false)),
        "the target is not empty any more"
    );
    assert_eq!(num(&rep, "/backfill/0/already_linked"), n);
    assert_eq!(num(&rep, "/backfill/0/inserted"), 0);
    assert_eq!(count(&s.erp, "SELECT count(*) FROM erp.supplier").await, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_a_bar_on_a_terminal_and_log_lines_when_redirected() {
    let s = setup(3_000, "crm_wins", false).await;
    // Redirected stderr: plain log lines, no terminal escapes.
    let (out, _) = run(&s, "plain", &["backfill", "--chunk-rows", "500"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backfill supplier: starting"), "{err}");
    assert!(err.contains("rows/s"), "{err}");
    assert!(!err.contains("backfill supplier ["), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");

    // On a terminal (a pty from script(1)): the bar, and no log lines.
    let report = s.dir.path().join("tty.json");
    let cmd = format!(
        "{} --config {} --report {} backfill --restart --chunk-rows 500",
        env!("CARGO_BIN_EXE_crmsync"),
        s.config.display(),
        report.display()
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("CRMSYNC_LOG", "info")
        .output()
        .expect("script(1) from util-linux");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("backfill supplier ["), "{tty}");
    assert!(!tty.contains("backfill supplier: starting"), "{tty}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_with_the_state_in_the_crm_database() {
    let n = 3_000;
    let s = setup(n, "crm_wins", false).await;
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("side = \"external\"", "side = \"crm\""),
    )
    .unwrap();
    let (out, rep) = run(&s, "backfill", &["backfill", "--chunk-rows", "1000"]);
    assert_exit(&out, 0);
    assert_eq!(num(&rep, "/backfill/0/inserted"), n);
    assert_eq!(
        rep.pointer("/backfill/0/insert_only"),
        Some(&Json::Bool(false)),
        "links do not commit with the data here"
    );
    assert_eq!(count(&s.erp, "SELECT count(*) FROM erp.supplier").await, n);
    assert_eq!(
        count(&s.crm, "SELECT count(*) FROM crmsync.all_links").await,
        n
    );
    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_exit(&out, 0);
    assert_eq!(
        num(&rep, "/entities/0/inserted") + num(&rep, "/entities/0/updated"),
        0
    );
}

/// Backfill external → CRM: ERP rows go into CRM by its rules (sync user,
/// dates, the configured defaults, the external key in the link column),
/// those that match a CRM row by `match_on` are linked instead of copied,
/// a SIGKILL half-way and a rerun leave exactly one CRM row per ERP row,
/// and the sync that follows has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_external_to_crm_follows_crm_rules_links_matches_and_resumes() {
    let n: i64 = 3_000;
    let shared: i64 = 30;
    let s = setup(0, "crm_wins", true).await;
    let text = std::fs::read_to_string(&s.config).unwrap();
    let one_way = "direction = \"crm_to_external\"\n";
    assert!(text.contains(one_way));
    std::fs::write(
        &s.config,
        text.replace(
            one_way,
            "direction = \"both\"\ncrm_defaults = { Comp_Type = \"Supplier\" }\n",
        ),
    )
    .unwrap();
    s.crm
        .execute(
            "INSERT INTO company (comp_name, comp_type, comp_status, comp_website, \
               comp_phonenumber, comp_emailaddress, comp_updateddate, comp_secterr) \
             SELECT 'Shared ' || i, 'Supplier', 'Active', 'www.shared' || i || '.example.com', \
               '555 ' || i, 'shared' || i || '@example.com', \
               localtimestamp(3) - interval '1 hour', -2147483640 \
             FROM generate_series(1, $1::bigint) i",
            &[&shared],
        )
        .await
        .expect("shared CRM rows");
    s.erp
        .execute(
            "INSERT INTO erp.supplier (name, status, website, phone, email, updated_at) \
             SELECT p || i, 'A', 'www.' || lower(p) || i || '.example.com', '555 ' || i, \
               lower(p) || i || '@example.com', now() - interval '1 hour' \
             FROM generate_series(1, $1::bigint) i, \
                  LATERAL (SELECT CASE WHEN i <= $2 THEN 'Shared ' ELSE 'Erp ' END AS p) x",
            &[&n, &shared],
        )
        .await
        .expect("ERP rows");
    let args = [
        "backfill",
        "--direction",
        "external_to_crm",
        "--chunk-rows",
        "100",
    ];
    kill_after(&s, &args, "external_to_crm", 500).await;
    let (out, rep) = run(&s, "resume", &args);
    assert_exit(&out, 0);
    assert_eq!(rep.pointer("/backfill/0/resumed"), Some(&Json::Bool(true)));
    let before = num(&rep, "/backfill/0/rows_done_before");
    assert!(before >= 500 && before < n, "resumed from the checkpoint");
    assert_eq!(
        num(&rep, "/backfill/0/read"),
        n - before,
        "did not start over"
    );

    // Exactly one CRM row per ERP row; the shared ones linked, not copied.
    let linked = count(
        &s.crm,
        "SELECT count(*) FROM company WHERE comp_supplierid IS NOT NULL",
    )
    .await;
    let distinct = count(
        &s.crm,
        "SELECT count(DISTINCT comp_supplierid) FROM company WHERE comp_supplierid IS NOT NULL",
    )
    .await;
    assert_eq!((linked, distinct), (n, n));
    assert_eq!(
        count(
            &s.crm,
            "SELECT count(*) FROM company WHERE comp_name LIKE 'Shared %'"
        )
        .await,
        shared
    );
    assert_eq!(
        count(&s.erp, "SELECT count(*) FROM crmsync.all_links").await,
        n
    );
    // Inserted by the CRM's rules.
    let broken = count(
        &s.crm,
        "SELECT count(*) FROM company WHERE comp_name LIKE 'Erp %' AND NOT ( \
           comp_createdby = 1 AND comp_updatedby = 1 AND comp_createddate IS NOT NULL \
           AND comp_updateddate IS NOT NULL AND comp_timestamp IS NOT NULL \
           AND comp_deleted IS NULL AND comp_type = 'Supplier' AND comp_status = 'Active' \
           AND comp_supplierid IS NOT NULL)",
    )
    .await;
    assert_eq!(broken, 0);
    assert_eq!(
        count(
            &s.crm,
            "SELECT count(*) FROM company WHERE comp_name LIKE 'Erp %'"
        )
        .await,
        n - shared
    );

    // The next sync, both ways, has nothing to write.
    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_exit(&out, 0);
    for field in [
        "inserted",
        "updated",
        "crm_inserted",
        "crm_updated",
        "deleted",
        "crm_deleted",
    ] {
        assert_eq!(
            num(&rep, &format!("/entities/0/{field}")),
            0,
            "{field}: {rep:#}"
        );
    }
}

/// Backfilling an entity in a direction it does not flow is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_against_the_entitys_direction_is_a_usage_error() {
    let s = setup(1, "crm_wins", false).await;
    let (out, rep) = run(&s, "e2c", &["backfill", "--direction", "external_to_crm"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not flow external_to_crm"), "{stderr}");
    assert_eq!(num(&rep, "/exit_code"), 2);
}

/// Cells that need no mapping move as they are into rows new to the target:
/// every row of an insert-only backfill ("raw"), and the rows without a
/// counterpart when the target is not empty ("mapped", whose rows with a
/// counterpart are decoded). With the state store in the CRM database
/// every value is decoded and mapped ("decoded"). All three must write the
/// same rows, the same shadows and the same rejects,
/// for text near its length limit in bytes and in characters, characters
/// JSON must escape, NULLs, integers and timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_mapped_backfills_write_the_same_rows_and_shadows() {
    let s = setup(400, "crm_wins", false).await;
    s.crm
        .batch_execute(
            r#"UPDATE company SET comp_primaryuserid = comp_companyid * 7 - 1000,
                 comp_createddate = timestamp '2026-03-29 01:30:00.123' + comp_companyid * interval '1 day';
               UPDATE company SET comp_name = repeat('é', 40) WHERE comp_companyid = 3;
               UPDATE company SET comp_name = repeat('é', 39) || '€😀' WHERE comp_companyid = 4;
               UPDATE company SET comp_name = repeat('x', 40) WHERE comp_companyid = 5;
               UPDATE company SET comp_website = NULL, comp_phonenumber = NULL WHERE comp_companyid % 5 = 0;
               UPDATE company SET comp_phonenumber = E'quote " back \\ tab \t nl \n ctl \x01' WHERE comp_companyid = 6;
               UPDATE company SET comp_primaryuserid = NULL WHERE comp_companyid = 7;
               UPDATE company SET comp_name = NULL WHERE comp_companyid = 8;"#,
        )
        .await
        .expect("edge values");
    let table = |name: &str| {
        format!(
            "CREATE TABLE erp.{name} (
               id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
               crm_company_id int UNIQUE,
               name varchar(40) NOT NULL, website varchar(100), phone text,
               userid int, created timestamp(3),
               updated_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ON erp.{name} (updated_at, id);"
        )
    };
    s.erp
        .batch_execute(&format!(
            "{} {} {} INSERT INTO erp.mapped (name) VALUES ('already here');",
            table("raw"),
            table("mapped"),
            table("decoded")
        ))
        .await
        .expect("tables");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let head = &text[..text.find("[[entity]]").unwrap()];
    let entity = |name: &str| {
        format!(
            r#"
[[entity]]
name = "{name}"
crm_table = "Company"
external_table = "erp.{name}"
external_key = "id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
direction = "crm_to_external"

[[entity.field]]
crm = "Comp_Name"
external = "name"

[[entity.field]]
crm = "Comp_WebSite"
external = "website"

[[entity.field]]
crm = "comp_phonenumber"
external = "phone"

[[entity.field]]
crm = "comp_primaryuserid"
external = "userid"

[[entity.field]]
crm = "comp_createddate"
external = "created"
"#
        )
    };
    std::fs::write(
        &s.config,
        format!("{head}{}{}", entity("raw"), entity("mapped")),
    )
    .unwrap();
    let (out, rep) = run(&s, "both", &["backfill", "--chunk-rows", "64"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "rejects leave the run unfinished: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        rep.pointer("/backfill/0/insert_only"),
        Some(&Json::Bool(true))
    );
    assert_eq!(
        rep.pointer("/backfill/1/insert_only"),
        Some(&Json::Bool(false))
    );
    let live = count(
        &s.crm,
        "SELECT count(*) FROM company WHERE comp_deleted IS NULL",
    )
    .await;
    for i in 0..2 {
        assert_eq!(num(&rep, &format!("/backfill/{i}/read")), live);
        // 4 (41 characters) and 8 (NULL name) are refused.
        assert_eq!(num(&rep, &format!("/backfill/{i}/rejected")), 2, "{rep:#}");
        assert_eq!(num(&rep, &format!("/backfill/{i}/inserted")), live - 2);
    }
    let rows = |t: &str| {
        format!(
            "SELECT string_agg(concat_ws('|', crm_company_id, name, website, phone, userid, \
                    created), E'\\n' ORDER BY crm_company_id) \
             FROM erp.{t} WHERE crm_company_id IS NOT NULL"
        )
    };
    let raw: String = s.erp.query_one(&rows("raw"), &[]).await.unwrap().get(0);
    let mapped: String = s.erp.query_one(&rows("mapped"), &[]).await.unwrap().get(0);
    assert_eq!(raw, mapped);
    assert!(raw.contains(&"é".repeat(40)), "the 80-byte name arrived");
    // The sealed shadows, without their layout id (each entity has its
    // own): the same digests of the same values, field by field.
    let shadows = |entity: &str| {
        format!(
            "SELECT string_agg(crmsync.key_text(crm_key) || ' ' || encode(substr(shadow, 6), 'hex'), \
                               E'\\n' ORDER BY crm_key) \
             FROM crmsync.all_links WHERE entity = '{entity}'"
        )
    };
    let raw: String = s.erp.query_one(&shadows("raw"), &[]).await.unwrap().get(0);
    let mapped: String = s
        .erp
        .query_one(&shadows("mapped"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(raw, mapped);
    assert_eq!(raw.lines().count() as i64, live - 2, "{raw}");
    // And the next sync of either finds nothing to send.
    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_eq!(out.status.code(), Some(3), "the rejects are still open");
    for i in 0..2 {
        assert_eq!(num(&rep, &format!("/entities/{i}/inserted")), 0, "{rep:#}");
        assert_eq!(num(&rep, &format!("/entities/{i}/updated")), 0, "{rep:#}");
    }

    // The decoded path: links in the CRM database, written after the data.
    assert!(head.contains(r#"side = "external""#), "{head}");
    std::fs::write(
        &s.config,
        format!(
            "{}{}",
            head.replace(r#"side = "external""#, r#"side = "crm""#),
            entity("decoded")
        ),
    )
    .unwrap();
    let (out, rep) = run(&s, "decoded", &["backfill", "--chunk-rows", "64"]);
    assert_exit(&out, 3);
    assert_eq!(num(&rep, "/backfill/0/rejected"), 2, "{rep:#}");
    assert_eq!(num(&rep, "/backfill/0/inserted"), live - 2);
    let decoded: String = s.erp.query_one(&rows("decoded"), &[]).await.unwrap().get(0);
    let raw_rows: String = s.erp.query_one(&rows("raw"), &[]).await.unwrap().get(0);
    assert_eq!(decoded, raw_rows);
    let decoded: String = s
        .crm
        .query_one(&shadows("decoded"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(decoded, raw);
}

/// A backfill into a table that already holds rows looks every chunk's rows
/// up in the target (and, when something was linked before, in the links
/// table) as both grow. Without fresh statistics PostgreSQL would plan
/// those lookups as scans of the whole table, chunk after chunk: they run
/// with sequential scans ruled out instead, and the statistics are
/// refreshed once, at the end, for the next sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_into_a_filled_table_looks_chunks_up_by_index() {
    let n = 2_000;
    let s = setup(n, "crm_wins", false).await;
    s.erp
        .batch_execute("INSERT INTO erp.supplier (name) VALUES ('already here')")
        .await
        .expect("unrelated row");
    let (out, rep) = run(&s, "backfill", &["backfill", "--chunk-rows", "50"]);
    assert_exit(&out, 0);
    assert_eq!(
        rep.pointer("/backfill/0/insert_only"),
        Some(&Json::Bool(false))
    );
    assert_eq!(num(&rep, "/backfill/0/inserted"), n);
    // 40 chunks, analyzed once at the end.
    for table in ["supplier", "links"] {
        let analyzed = count(
            &s.erp,
            &format!(
                "SELECT (analyze_count + autoanalyze_count)::int8 FROM pg_stat_user_tables \
                 WHERE relname = '{table}'"
            ),
        )
        .await;
        assert!(analyzed >= 1, "{table} analyzed {analyzed} times");
        // Each chunk's lookups go through the indexes, whatever the
        // statistics say. The few whole-table scans left come before the
        // first chunk (creating and migrating the state schema, is the
        // table empty, has the entity links; the migration that rewrites
        // the links' keys reads the table once and once per index): as many
        // with 80 chunks as with 40.
        let scanned = count(
            &s.erp,
            &format!("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = '{table}'"),
        )
        .await;
        assert!(scanned <= 12, "{table} scanned whole {scanned} times");
    }
    // Nothing was linked before this run: no chunk looks its keys up in
    // the links table (one probe per key of every chunk before).
    let probed = count(
        &s.erp,
        "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'links'",
    )
    .await;
    assert!(probed <= 2, "links probed {probed} times");
}

/// A value longer than its external column follows the field's
/// `on_truncate` in a backfill too, whether the row goes in raw (an empty
/// target) or among lookups (a filled one): the raw copy hands such a
/// value to the mapping. `truncate` writes the cut value to the row and
/// its shadow, so a later sync of the unchanged row writes nothing;
/// `fail` stops the run with exit code 1 before its chunk commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_values_in_a_backfill_follow_on_truncate() {
    // The CRM column holds 100 characters, the external one 40 here.
    let long = format!("www.{}.example.com", "w".repeat(50));
    for filled in [false, true] {
        for policy in ["truncate", "fail"] {
            let s = setup(300, "crm_wins", false).await;
            let text = std::fs::read_to_string(&s.config).unwrap();
            let website = "crm = \"Comp_WebSite\"\nexternal = \"website\"\n";
            assert!(text.contains(website));
            std::fs::write(
                &s.config,
                text.replace(website, &format!("{website}on_truncate = \"{policy}\"\n")),
            )
            .unwrap();
            s.crm
                .execute(
                    "UPDATE company SET comp_website = $1 WHERE comp_companyid = 7",
                    &[&long],
                )
                .await
                .unwrap();
            s.erp
                .batch_execute("ALTER TABLE erp.supplier ALTER COLUMN website TYPE varchar(40)")
                .await
                .unwrap();
            if filled {
                s.erp
                    .batch_execute("INSERT INTO erp.supplier (name) VALUES ('already here')")
                    .await
                    .unwrap();
            }
            let name = format!("{policy}-{filled}");
            let (out, rep) = run(&s, &name, &["backfill", "--chunk-rows", "50"]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let website_of_7 = "SELECT website FROM erp.supplier WHERE crm_company_id = 7";
            if policy == "fail" {
                assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
                assert!(
                    stderr.contains("row 7") && stderr.contains("Comp_WebSite"),
                    "{name}: {stderr}"
                );
                assert!(
                    s.erp.query_opt(website_of_7, &[]).await.unwrap().is_none(),
                    "{name}: the chunk of row 7 did not commit"
                );
                continue;
            }
            assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
            assert_eq!(
                rep.pointer("/backfill/0/insert_only"),
                Some(&Json::Bool(!filled)),
                "{name}"
            );
            assert_eq!(num(&rep, "/backfill/0/inserted"), 300, "{name}");
            assert_eq!(num(&rep, "/backfill/0/rejected"), 0, "{name}");
            let website: String = s.erp.query_one(website_of_7, &[]).await.unwrap().get(0);
            assert_eq!(website, long.chars().take(40).collect::<String>(), "{name}");
            // Row 7 is read again, unchanged: its shadow holds the cut value.
            s.crm
                .execute(
                    "UPDATE company SET comp_updateddate = localtimestamp(3), \
                       comp_timestamp = localtimestamp(3) WHERE comp_companyid = 7",
                    &[],
                )
                .await
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let (out, rep) = run(&s, &format!("{name}-sync"), &["sync"]);
            assert_eq!(out.status.code(), Some(0), "{name}");
            assert!(num(&rep, "/entities/0/read") >= 1, "{name}: {rep:#}");
            assert_eq!(num(&rep, "/entities/0/updated"), 0, "{name}: {rep:#}");
            assert_eq!(num(&rep, "/entities/0/inserted"), 0, "{name}: {rep:#}");
        }
    }
}

/// Rows the ERP refuses (a CHECK constraint, a validation trigger's
/// exception) are set aside as rejects naming them, and every other row
/// is copied: the refused chunk goes through the sync's writes, then the
/// bulk copy goes on. Once the ERP accepts them, a sync retries the
/// rejects and writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_erp_refuses_are_set_aside_and_the_rest_is_copied() {
    for side in ["external", "crm"] {
        refused_rows_with_the_state_on(side).await;
    }
}

async fn refused_rows_with_the_state_on(side: &str) {
    let s = setup(2000, "crm_wins", false).await;
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace("side = \"external\"", &format!("side = \"{side}\"")),
    )
    .unwrap();
    // Where crmsync keeps its links and rejects.
    let state = if side == "crm" { &s.crm } else { &s.erp };
    s.erp
        .batch_execute(
            "ALTER TABLE erp.supplier ADD CONSTRAINT no_such_name \
             CHECK (name NOT IN ('Supplier 777', 'Supplier 1500'));
             CREATE FUNCTION erp.supplier_valid() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN
                    IF NEW.name = 'Supplier 1999' THEN
                        RAISE EXCEPTION 'supplier % is on hold', NEW.name;
                    END IF;
                    RETURN NEW;
                 END $$;
             CREATE TRIGGER supplier_valid BEFORE INSERT ON erp.supplier
                 FOR EACH ROW EXECUTE FUNCTION erp.supplier_valid();",
        )
        .await
        .unwrap();
    let (out, rep) = run(&s, "backfill", &["backfill", "--chunk-rows", "300"]);
    assert_exit(&out, 3);
    assert_eq!(num(&rep, "/backfill/0/rejected"), 3, "{side}: {rep:#}");
    assert_eq!(num(&rep, "/backfill/0/inserted"), 1997, "{side}: {rep:#}");
    // Counted once (a refused chunk is read twice); the sync's read of the
    // last chunk also meets the five soft-deleted rows after it.
    assert!(
        (2000..=2005).contains(&num(&rep, "/backfill/0/read")),
        "{side}: {rep:#}"
    );
    assert_eq!(
        rep.pointer("/backfill/0/resumed"),
        Some(&Json::Bool(false)),
        "{side}: {rep:#}"
    );
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM erp.supplier WHERE crm_company_id IS NOT NULL"
        )
        .await,
        1997
    );
    assert_eq!(
        count(state, "SELECT count(*) FROM crmsync.all_links").await,
        1997
    );
    let rejected: Vec<String> = state
        .query(
            "SELECT key FROM crmsync.rejects WHERE entity = 'supplier' \
             AND resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids: Vec<String> = s
        .crm
        .query(
            "SELECT comp_companyid::text FROM company \
             WHERE comp_name IN ('Supplier 777', 'Supplier 1500', 'Supplier 1999')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut rejected, mut ids) = (rejected, ids);
    rejected.sort();
    ids.sort();
    assert_eq!(rejected, ids);
    // The trigger's own words say why its row was set aside.
    assert_eq!(
        count(
            state,
            "SELECT count(*) FROM crmsync.rejects WHERE reason LIKE '%Supplier 1999 is on hold%'"
        )
        .await,
        1
    );
    // The ERP takes them now: the next sync writes them, and only them.
    s.erp
        .batch_execute(
            "ALTER TABLE erp.supplier DROP CONSTRAINT no_such_name;
             DROP TRIGGER supplier_valid ON erp.supplier",
        )
        .await
        .unwrap();
    let (out, rep) = run(&s, "sync", &["sync"]);
    assert_exit(&out, 0);
    assert_eq!(num(&rep, "/entities/0/inserted"), 3, "{side}: {rep:#}");
    assert_eq!(
        count(&s.erp, "SELECT count(*) FROM erp.supplier").await,
        2000
    );
}

/// A BEFORE INSERT trigger that skips a row (returns NULL) would shift
/// every key after it: the backfill stops at that chunk, saying why, and
/// what it committed before pairs each ERP row with its own CRM row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_that_skips_rows_stops_the_backfill_before_a_wrong_link() {
    let s = setup(500, "crm_wins", false).await;
    s.erp
        .batch_execute(
            "CREATE FUNCTION erp.supplier_skip() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN
                    IF NEW.name = 'Supplier 250' THEN RETURN NULL; END IF;
                    RETURN NEW;
                 END $$;
             CREATE TRIGGER supplier_skip BEFORE INSERT ON erp.supplier
                 FOR EACH ROW EXECUTE FUNCTION erp.supplier_skip();",
        )
        .await
        .unwrap();
    let (out, _) = run(&s, "backfill", &["backfill", "--chunk-rows", "100"]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a BEFORE INSERT trigger skipped some"),
        "{stderr}"
    );
    let copied = count(&s.erp, "SELECT count(*) FROM erp.supplier").await;
    assert!(copied < 500, "the chunk of the skipped row did not commit");
    let names: std::collections::HashMap<i32, String> = s
        .crm
        .query("SELECT comp_companyid, comp_name FROM company", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for r in s
        .erp
        .query("SELECT crm_company_id, name FROM erp.supplier", &[])
        .await
        .unwrap()
    {
        let (id, name): (i32, String) = (r.get(0), r.get(1));
        assert_eq!(names[&id], name, "ERP row {name} names CRM row {id}");
    }
    // Every link pairs an ERP row with the CRM row it carries.
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM crmsync.all_links l JOIN erp.supplier x \
               ON crmsync.key_bytes(x.supplier_id::bigint) = l.external_key \
             WHERE crmsync.key_text(l.crm_key) = x.crm_company_id::text"
        )
        .await,
        copied
    );
    assert_eq!(
        count(&s.erp, "SELECT count(*) FROM crmsync.all_links").await,
        copied
    );
}

/// A table that refuses every row (here a NOT NULL column nothing fills)
/// stops the backfill after one chunk, saying where the cause is, rather
/// than setting a million rows aside one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_refuses_every_row_stops_the_backfill() {
    let s = setup(600, "crm_wins", false).await;
    s.erp
        .batch_execute("ALTER TABLE erp.supplier ADD COLUMN region text NOT NULL")
        .await
        .unwrap();
    let (out, _) = run(&s, "backfill", &["backfill", "--chunk-rows", "100"]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused every one of the 100 rows of a chunk")
            && stderr.contains("region"),
        "{stderr}"
    );
    assert_eq!(count(&s.erp, "SELECT count(*) FROM erp.supplier").await, 0);
    assert_eq!(
        count(
            &s.erp,
            "SELECT count(*) FROM crmsync.rejects WHERE resolved_at IS NULL"
        )
        .await,
        100
    );
}
