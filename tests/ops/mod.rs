//! Running unattended: the metrics file of `--metrics-file` (read back
//! with a Prometheus text-format parser), the last success kept across a
//! failed run, `status --max-lag`, `runs`, and `conflicts list --all`.

use crate::common::{insert_companies, output_text, Env, Opts};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// The families every metrics file has, each with HELP and TYPE gauge.
const FAMILIES: [&str; 10] = [
    "crmsync_last_run_timestamp_seconds",
    "crmsync_last_run_duration_seconds",
    "crmsync_last_success_timestamp_seconds",
    "crmsync_last_run_exit_code",
    "crmsync_last_run_rows",
    "crmsync_last_run_conflicts",
    "crmsync_last_run_rejected",
    "crmsync_lag_seconds",
    "crmsync_open_rejects",
    "crmsync_open_conflicts",
];

/// A metrics file, parsed: each sample's value by its name and labels
/// written as `name{k=v,...}` with the labels in name order.
#[derive(Debug)]
struct Metrics {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses `path`, checking that every line is understood, every
    /// family documented, and every sample a gauge.
    fn read(path: &Path) -> Metrics {
        let text = std::fs::read_to_string(path).expect("the metrics file is written");
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("the metrics file parses");
        let sample_lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count();
        assert_eq!(
            scrape.samples.len(),
            sample_lines,
            "every sample line parses:\n{text}"
        );
        for family in FAMILIES {
            assert!(
                scrape.docs.contains_key(family),
                "HELP of {family}:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} gauge\n")),
                "TYPE of {family}:\n{text}"
            );
        }
        let mut samples = BTreeMap::new();
        for s in scrape.samples {
            let prometheus_parse::Value::Gauge(v) = s.value else {
                panic!("{} is not a gauge: {:?}", s.metric, s.value);
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                s.metric.clone()
            } else {
                let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}}", s.metric, inner.join(","))
            };
            assert!(samples.insert(key, v).is_none(), "a series twice:\n{text}");
        }
        Metrics { text, samples }
    }

    /// The value of `key` (`name{k=v,...}`, labels in name order).
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in:\n{}", self.text))
    }

    /// Rows the supplier's last run wrote into `target` by `op`.
    fn rows(&self, target: &str, op: &str) -> f64 {
        self.get(&format!(
            "crmsync_last_run_rows{{entity=supplier,op={op},target={target}}}"
        ))
    }
}

fn assert_exit(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = output_text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One sync through the binary with `--metrics-file`, expecting `code`;
/// the file read back.
fn sync_with_metrics(env: &Env, path: &Path, code: i32) -> Metrics {
    let out = env.run_binary(&["sync", "--metrics-file", path.to_str().unwrap()], &[]);
    assert_exit(&out, code);
    Metrics::read(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_file_holds_every_family_with_the_counts_of_the_run() {
    let env = Env::new(Opts::default()).await;
    // Stamped long ago: the lag is measured from the window, not from
    // the last change.
    insert_companies(
        &env.crm,
        5,
        "timestamp '2026-01-01 10:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    let path = env.dir.path().join("crmsync.prom");
    let before = unix_now();
    let m = sync_with_metrics(&env, &path, 0);
    let after = unix_now();
    assert_eq!(m.get("crmsync_last_run_exit_code"), 0.0);
    assert_eq!(m.rows("external", "insert"), 5.0);
    for (target, op) in [
        ("external", "update"),
        ("external", "delete"),
        ("crm", "insert"),
        ("crm", "update"),
        ("crm", "delete"),
    ] {
        assert_eq!(m.rows(target, op), 0.0, "{target} {op}");
    }
    let started = m.get("crmsync_last_run_timestamp_seconds{entity=supplier}");
    let success = m.get("crmsync_last_success_timestamp_seconds{entity=supplier}");
    let duration = m.get("crmsync_last_run_duration_seconds{entity=supplier}");
    // One clock for the tests and the database: a second's slack.
    assert!(
        before - 1.0 <= started && started <= success && success <= after + 1.0,
        "{before} <= {started} <= {success} <= {after}"
    );
    assert!(
        (0.0..after - before + 1.0).contains(&duration),
        "{duration}"
    );
    let lag = m.get("crmsync_lag_seconds{entity=supplier,side=crm}");
    assert!(
        (0.0..60.0).contains(&lag),
        "lag from the window, not from rows stamped in January: {lag}"
    );
    assert!(
        !m.samples
            .contains_key("crmsync_lag_seconds{entity=supplier,side=external}"),
        "one way: no external window:\n{}",
        m.text
    );
    assert_eq!(m.get("crmsync_open_rejects{entity=supplier}"), 0.0);
    assert_eq!(m.get("crmsync_open_conflicts{entity=supplier}"), 0.0);
    assert_eq!(m.get("crmsync_last_run_conflicts{entity=supplier}"), 0.0);
    assert_eq!(m.get("crmsync_last_run_rejected{entity=supplier}"), 0.0);

    // Two updated, one of them to a value the mapping cannot carry: the
    // next file counts this run only, the reject and the exit code.
    env.crm
        .batch_execute(
            "UPDATE company SET comp_name = 'Renamed', comp_updateddate = localtimestamp(3) \
               WHERE comp_name = 'Company 1'; \
             UPDATE company SET comp_status = 'Prospect', comp_updateddate = localtimestamp(3) \
               WHERE comp_name = 'Company 2';",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let m = sync_with_metrics(&env, &path, 3);
    assert_eq!(m.get("crmsync_last_run_exit_code"), 3.0);
    assert_eq!(m.rows("external", "insert"), 0.0);
    assert_eq!(m.rows("external", "update"), 1.0);
    assert_eq!(m.get("crmsync_last_run_rejected{entity=supplier}"), 1.0);
    assert_eq!(m.get("crmsync_open_rejects{entity=supplier}"), 1.0);
    // A run that leaves rejects behind still succeeded: its end is the
    // last success.
    let again = m.get("crmsync_last_success_timestamp_seconds{entity=supplier}");
    assert!(again > success, "{again} > {success}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_verify_write_metrics_files_too() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 7, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    let path = env.dir.path().join("backfill.prom");
    let out = env.run_binary(
        &[
            "backfill",
            "--entity",
            "Supplier",
            "--metrics-file",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_exit(&out, 0);
    let m = Metrics::read(&path);
    // A process of one entity names it on its exit code (as configured),
    // so that entities run as separate processes never export the same
    // series twice.
    assert_eq!(m.get("crmsync_last_run_exit_code{entity=supplier}"), 0.0);
    assert!(!m.samples.contains_key("crmsync_last_run_exit_code"));
    assert_eq!(m.rows("external", "insert"), 7.0);
    assert_eq!(m.rows("crm", "insert"), 0.0);
    assert!(m.get("crmsync_last_success_timestamp_seconds{entity=supplier}") > 0.0);

    let path = env.dir.path().join("verify.prom");
    let out = env.run_binary(&["verify", "--metrics-file", path.to_str().unwrap()], &[]);
    assert_exit(&out, 0);
    let m = Metrics::read(&path);
    assert_eq!(m.get("crmsync_last_run_exit_code"), 0.0);
    // verify wrote nothing; the backfill is still the last success.
    assert_eq!(m.rows("external", "insert"), 0.0);
    assert!(m.get("crmsync_last_success_timestamp_seconds{entity=supplier}") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_writes_exit_code_1_and_keeps_the_last_success() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 3, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    let path = env.dir.path().join("crmsync.prom");
    let good = sync_with_metrics(&env, &path, 0);
    let success = good.get("crmsync_last_success_timestamp_seconds{entity=supplier}");
    let first_start = good.get("crmsync_last_run_timestamp_seconds{entity=supplier}");

    // The CRM server is unreachable; the state store (external) answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let good_text = env.config_text(&Opts::default());
    let crm_down = good_text.replace(
        &env.crm_url,
        &format!("postgres://postgres@127.0.0.1:{}/crm", closed_port()),
    );
    std::fs::write(&env.config, &crm_down).unwrap();
    let failed = sync_with_metrics(&env, &path, 1);
    assert_eq!(failed.get("crmsync_last_run_exit_code"), 1.0);
    assert_eq!(
        failed.get("crmsync_last_success_timestamp_seconds{entity=supplier}"),
        success
    );
    assert!(failed.get("crmsync_last_run_timestamp_seconds{entity=supplier}") > first_start);
    assert_eq!(failed.rows("external", "insert"), 0.0);

    // Both servers unreachable: the store cannot be read, and the file
    // keeps what the previous one said.
    let port = closed_port();
    let all_down = crm_down.replace(
        &env.erp_url,
        &format!("postgres://postgres@127.0.0.1:{port}/erp"),
    );
    std::fs::write(&env.config, all_down).unwrap();
    let blind = sync_with_metrics(&env, &path, 1);
    assert_eq!(blind.get("crmsync_last_run_exit_code"), 1.0);
    assert_eq!(
        blind.get("crmsync_last_success_timestamp_seconds{entity=supplier}"),
        success
    );
    assert_eq!(blind.get("crmsync_open_rejects{entity=supplier}"), 0.0);

    // A config that does not load still gets its exit code written.
    std::fs::write(&env.config, good_text.replace("batch_size", "batch_sise")).unwrap();
    let bad = sync_with_metrics(&env, &path, 2);
    assert_eq!(bad.get("crmsync_last_run_exit_code"), 2.0);
    assert_eq!(
        bad.get("crmsync_last_success_timestamp_seconds{entity=supplier}"),
        success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_never_reaches_the_metrics_file() {
    const SECRET: &str = "wrong-Metrics-Secret-0815";
    let env = Env::new(Opts::default()).await;
    let admin = crate::common::connect(&testkit::server().admin_url).await;
    let role = crate::errors::password_role(&admin).await;
    let user = role.clone().unwrap_or_else(|| "postgres".into());
    // The state side (external) logs in with the wrong password.
    let erp_url = env.erp_url.replacen("postgres@", &format!("{user}@"), 1);
    let text = env
        .config_text(&Opts {
            external_extra: "password_env = \"CRMSYNC_TEST_ERP_PASSWORD\"".into(),
            ..Opts::default()
        })
        .replace(&env.erp_url, &erp_url);
    std::fs::write(&env.config, text).unwrap();
    let path = env.dir.path().join("crmsync.prom");
    let out = env.run_binary(
        &["sync", "--metrics-file", path.to_str().unwrap()],
        &[
            ("CRMSYNC_TEST_ERP_PASSWORD", SECRET),
            ("CRMSYNC_LOG", "trace"),
        ],
    );
    let (stdout, stderr) = output_text(&out);
    let m = Metrics::read(&path);
    if role.is_some() {
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert_eq!(m.get("crmsync_last_run_exit_code"), 1.0);
    }
    for text in [&m.text, &stdout, &stderr] {
        assert!(!text.contains(SECRET), "the password leaked:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_max_lag_names_the_stale_entity_with_exit_3() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 3, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    let (stdout, _) = assert_exit(&env.run_binary(&["status", "--max-lag", "1h"], &[]), 0);
    assert!(stdout.contains("lag "), "status shows the lag: {stdout}");
    assert!(!stdout.contains("stale"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (stdout, _) = assert_exit(&env.run_binary(&["status", "--max-lag", "2s"], &[]), 3);
    assert!(
        stdout.contains("stale") && stdout.contains("supplier: lag "),
        "names the stale entity: {stdout}"
    );
    assert_exit(&env.run_binary(&["status", "--max-lag", "1h"], &[]), 0);
    // max_lag in the config does the same without the flag, and the flag
    // overrides it.
    let text = env
        .config_text(&Opts::default())
        .replace("[defaults]\n", "[defaults]\nmax_lag = \"1s\"\n");
    std::fs::write(&env.config, text).unwrap();
    let (stdout, _) = assert_exit(&env.run_binary(&["status"], &[]), 3);
    assert!(stdout.contains("supplier: lag "), "{stdout}");
    assert_exit(&env.run_binary(&["status", "--max-lag", "1h"], &[]), 0);
    // A run brings it back under.
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    assert_exit(&env.run_binary(&["status"], &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_lists_the_newest_runs_with_outcomes_and_counts() {
    let env = Env::new(Opts::default()).await;
    let (stdout, _) = assert_exit(&env.run_binary(&["runs"], &[]), 0);
    assert!(stdout.contains("no runs yet"), "{stdout}");
    insert_companies(&env.crm, 4, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    env.crm
        .execute(
            "UPDATE company SET comp_status = 'Prospect', comp_updateddate = localtimestamp(3) \
             WHERE comp_name = 'Company 3'",
            &[],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_exit(&env.run_binary(&["sync"], &[]), 3);
    for _ in 0..4 {
        assert_exit(&env.run_binary(&["sync"], &[]), 3);
    }
    let report = env.dir.path().join("runs.json");
    let (stdout, _) = assert_exit(
        &env.run_binary(
            &["--report", report.to_str().unwrap(), "runs", "--last", "5"],
            &[],
        ),
        0,
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    // Newest first; the first run (4 inserted) is the sixth, not shown.
    assert!(lines[0].starts_with("#6 "), "{stdout}");
    assert!(lines[4].starts_with("#2 "), "{stdout}");
    assert!(!stdout.contains("inserted 4"), "{stdout}");
    for line in &lines {
        assert!(
            line.contains(" supplier sync: finished with rejects"),
            "{line}"
        );
    }
    assert!(
        lines[4].contains("rejected 1") && lines[4].contains("read 1"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let runs = json["runs"].as_array().expect("runs in the report");
    assert_eq!(runs.len(), 5);
    assert_eq!(runs[0]["id"], 6);
    assert_eq!(runs[4]["counts"]["rejected"], 1);
    assert!(runs[4]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("finished with rejects"));

    let (stdout, _) = assert_exit(
        &env.run_binary(&["runs", "--entity", "SUPPLIER", "--last", "10"], &[]),
        0,
    );
    let oldest = stdout.lines().last().unwrap();
    assert!(
        oldest.starts_with("#1 ")
            && oldest.contains(": ok after ")
            && oldest.contains("external inserted 4, updated 0, deleted 0"),
        "{stdout}"
    );
    let (_, stderr) = assert_exit(&env.run_binary(&["runs", "--entity", "nope"], &[]), 2);
    assert!(stderr.contains("supplier"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clash_settled_by_newest_wins_is_listed_by_conflicts_list_all() {
    let (env, _, _, report) = crate::two_way::clash("newest_wins", true).await;
    assert_eq!(report.conflicts, 1, "{report:?}");
    let (stdout, _) = assert_exit(&env.run_binary(&["conflicts", "list"], &[]), 0);
    assert!(stdout.contains("no open conflicts"), "{stdout}");
    let (stdout, _) = assert_exit(&env.run_binary(&["conflicts", "list", "--all"], &[]), 0);
    let line = stdout
        .lines()
        .find(|l| l.contains("field comp_name"))
        .unwrap_or_else(|| panic!("the settled clash is listed: {stdout}"));
    assert!(
        line.contains("CRM \"CRM name\"") && line.contains("external \"ERP name\""),
        "both values: {line}"
    );
    assert!(line.contains("winner external"), "the winner: {line}");
    assert!(line.contains("(run 2,"), "the run: {line}");
    let (stdout, _) = assert_exit(
        &env.run_binary(&["conflicts", "list", "--all", "--since", "1h"], &[]),
        0,
    );
    assert!(stdout.contains("field comp_name"), "{stdout}");
    let (stdout, _) = assert_exit(
        &env.run_binary(
            &["conflicts", "list", "--all", "--since", "2999-01-01"],
            &[],
        ),
        0,
    );
    assert!(stdout.contains("no conflicts"), "{stdout}");
    let (_, stderr) = assert_exit(
        &env.run_binary(&["conflicts", "list", "--since", "1h"], &[]),
        2,
    );
    assert!(stderr.contains("--all"), "{stderr}");
}
