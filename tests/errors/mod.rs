//! Bad inputs, run through the real binary: each gives exit code 2 (bad
//! config) or 1 (the run failed) and a message naming the problem; no
//! password ever reaches the output.

use crate::common::{connect, count, insert_companies, output_text, Env, Opts};
use std::process::Output;

fn assert_exit(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = output_text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_a_config_error_naming_the_key_and_file() {
    let env = Env::new(Opts::default()).await;
    let text = env
        .config_text(&Opts::default())
        .replace("batch_size = 100", "batch_sise = 100");
    std::fs::write(&env.config, text).unwrap();
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 2);
    assert!(stderr.contains("batch_sise"), "{stderr}");
    assert!(
        stderr.contains(&env.config.display().to_string()),
        "names the file: {stderr}"
    );
}

/// Validation reports every problem at once, before connecting: the URLs
/// point at a closed port and still the answer is the config's problems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_problem_is_reported_at_once_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let config = dir.path().join("crmsync.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[crm]
url = "postgres://sync@127.0.0.1:{port}/crm"
user_id = 1
[external]
url = "postgres://sync@127.0.0.1:{port}/erp"
password_env = "CRMSYNC_TEST_SURELY_UNSET_VARIABLE"
[[entity]]
name = "supplier"
crm_table = "Company"
external_table = "erp.supplier"
external_key = "supplier_id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
direction = "crm_to_external"
delete_into_external = "shred"
batch_size = 0
settle = "soon"
[[entity.field]]
crm = "Comp_Name"
external = "name"
"#
        ),
    )
    .unwrap();
    let out = crate::common::run_binary(&config, &["sync"], &[]);
    let (_, stderr) = assert_exit(&out, 2);
    for needle in [
        "CRMSYNC_TEST_SURELY_UNSET_VARIABLE",
        "delete_into_external = \"shred\"",
        "batch_size = 0",
        "settle = \"soon\"",
        "entity \"supplier\"",
        "4 problems",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_column_names_it_and_suggests_the_near_miss() {
    let env = Env::new(Opts::default()).await;
    let text = env
        .config_text(&Opts::default())
        .replace("crm = \"Comp_WebSite\"", "crm = \"Comp_WebSit\"");
    std::fs::write(&env.config, text).unwrap();
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 2);
    assert!(stderr.contains("\"Comp_WebSit\""), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("did you mean comp_website"),
        "{stderr}"
    );
    assert!(stderr.contains("entity \"supplier\""), "{stderr}");
    // `check` says the same.
    let (_, stderr) = assert_exit(&env.run_binary(&["check"], &[]), 2);
    assert!(stderr.contains("\"Comp_WebSit\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_mapped_to_an_integer_column_is_a_config_error() {
    let env = Env::new(Opts {
        extra_fields: "[[entity.field]]\ncrm = \"Comp_Type\"\nexternal = \"rating\"\n".into(),
        ..Opts::default()
    })
    .await;
    env.erp
        .batch_execute("ALTER TABLE erp.supplier ADD COLUMN rating integer")
        .await
        .unwrap();
    insert_companies(&env.crm, 3, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 2);
    assert!(stderr.contains("cannot map"), "{stderr}");
    assert!(stderr.to_lowercase().contains("comp_type"), "{stderr}");
    assert!(stderr.contains("rating"), "{stderr}");
    assert_eq!(
        count(&env.erp, "erp.supplier").await,
        0,
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_runtime_error_naming_it() {
    let env = Env::new(Opts::default()).await;
    let port = closed_port();
    let text = env.config_text(&Opts::default()).replace(
        &env.crm_url,
        &format!("postgres://postgres@127.0.0.1:{port}/crm"),
    );
    std::fs::write(&env.config, text).unwrap();
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 1);
    assert!(
        stderr.contains("cannot connect to the CRM database"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&port.to_string()),
        "names the target: {stderr}"
    );
    assert!(stderr.contains("reachable"), "says what to check: {stderr}");
}

/// A role that must log in with a password. On the tests' private cluster
/// (trust authentication) a pg_hba.conf line is put in front for this role
/// only; on a server given by CRMSYNC_TEST_PG_URL that file is not ours to
/// edit, and `None` comes back.
pub(crate) async fn password_role(admin: &tokio_postgres::Client) -> Option<String> {
    let role = format!("crmsync_pw_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN PASSWORD 'the-right-one';
               END IF;
             END $$;"
        ))
        .await
        .unwrap();
    let data = testkit::server().data_dir.as_ref()?;
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    let line = format!("host all {role} 127.0.0.1/32 scram-sha-256\n");
    if !old.contains(&line) {
        std::fs::write(&hba, format!("{line}{old}")).unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    Some(role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_and_no_password_appears_in_any_output() {
    const SECRET: &str = "wrong-Secret-4711-xyzzy";
    let env = Env::new(Opts::default()).await;
    let admin = connect(&testkit::server().admin_url).await;
    let role = password_role(&admin).await;
    let user = role.clone().unwrap_or_else(|| "postgres".into());
    let crm_url = env.crm_url.replacen("postgres@", &format!("{user}@"), 1);
    let text = env
        .config_text(&Opts {
            crm_extra: "password_env = \"CRMSYNC_TEST_CRM_PASSWORD\"".into(),
            ..Opts::default()
        })
        .replace(&env.crm_url, &crm_url);
    std::fs::write(&env.config, text).unwrap();
    let report = env.dir.path().join("report.json");
    let report_arg = report.to_str().unwrap();
    let envs = [
        ("CRMSYNC_TEST_CRM_PASSWORD", SECRET),
        ("CRMSYNC_LOG", "trace"),
    ];

    if role.is_some() {
        // The reload is asynchronous: wait until the server asks this
        // role for a password.
        for _ in 0..100 {
            let probe = tokio_postgres::connect(
                &format!("{crm_url}?password={SECRET}"),
                tokio_postgres::NoTls,
            )
            .await;
            if probe.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let mut outputs = Vec::new();
    for format in ["human", "json"] {
        let out = env.run_binary(
            &["--report", report_arg, "--log-format", format, "sync"],
            &envs,
        );
        let (stdout, stderr) = output_text(&out);
        if role.is_some() {
            assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
            assert!(stderr.contains("login failed"), "{stderr}");
            assert!(
                stderr.contains("password_env"),
                "says where the password comes from: {stderr}"
            );
        }
        let json =
            std::fs::read_to_string(&report).expect("--report writes the summary even on failure");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["command"], "sync");
        assert_eq!(parsed["exit_code"], out.status.code().unwrap());
        outputs.push((stdout, stderr, json));
    }
    // `check` too, which prints the most about its connections.
    let out = env.run_binary(&["check"], &envs);
    let (stdout, stderr) = output_text(&out);
    outputs.push((stdout, stderr, String::new()));
    for (stdout, stderr, json) in outputs {
        for text in [&stdout, &stderr, &json] {
            assert!(!text.contains(SECRET), "the password leaked:\n{text}");
        }
    }
}

/// A second run of the same entity while the run lock is held exits 1,
/// says so, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_concurrent_run_exits_1_saying_another_run_holds_the_lock() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 5, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    let holder = connect(&env.erp_url).await;
    let got: bool = holder
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('crmsync'), hashtext('crmsync:supplier'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(got);
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 1);
    assert!(stderr.contains("another crmsync run"), "{stderr}");
    assert!(stderr.contains("supplier"), "{stderr}");
    assert_eq!(
        count(&env.erp, "erp.supplier").await,
        0,
        "the second run wrote rows"
    );
    // Once the lock is free, the same command works.
    holder
        .query_one(
            "SELECT pg_advisory_unlock(hashtext('crmsync'), hashtext('crmsync:supplier'))",
            &[],
        )
        .await
        .unwrap();
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    assert_eq!(count(&env.erp, "erp.supplier").await, 5);
}

/// `--entity` naming no configured entity is a usage error that lists the
/// configured ones; the `--report` file is written for it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_entity_is_exit_2_listing_the_configured_ones_and_reported() {
    let env = Env::new(Opts::default()).await;
    let report = env.dir.path().join("report.json");
    let out = env.run_binary(
        &[
            "--report",
            report.to_str().unwrap(),
            "sync",
            "--entity",
            "suplier",
        ],
        &[],
    );
    let (_, stderr) = assert_exit(&out, 2);
    assert!(stderr.contains("\"suplier\""), "{stderr}");
    assert!(stderr.contains("entities: supplier"), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["exit_code"], 2);
    assert!(
        json["error"].as_str().unwrap().contains("suplier"),
        "{json}"
    );
    assert_eq!(count(&env.erp, "erp.supplier").await, 0);
}

/// A row the database refuses (here a unique index outside crmsync's
/// knowledge) is set aside as a reject with the database's reason, the
/// other rows of its page still go through, and the run exits 3. Nothing
/// quotes the row: PostgreSQL's DETAIL ("Key (email)=(...) already
/// exists") would put customer data into logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_row_is_rejected_without_quoting_row_data_and_others_apply() {
    let env = Env::new(Opts::default()).await;
    env.erp
        .batch_execute("CREATE UNIQUE INDEX ON erp.supplier (email)")
        .await
        .unwrap();
    insert_companies(&env.crm, 5, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    env.crm
        .batch_execute(
            "UPDATE company SET comp_emailaddress = 'private.person@example.com' WHERE comp_companyid IN (2, 4)",
        )
        .await
        .unwrap();
    let out = env.run_binary(&["sync"], &[]);
    let (stdout, stderr) = assert_exit(&out, 3);
    assert!(stdout.contains("rejected 1"), "{stdout}");
    assert_eq!(
        count(&env.erp, "erp.supplier").await,
        4,
        "the other rows are applied"
    );
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("23505"), "{reason}");
    for text in [&stdout, &stderr, &reason] {
        assert!(!text.contains("private.person"), "row data leaked: {text}");
    }
    // Fixed at the source, the row goes through on the next run.
    env.crm
        .batch_execute(
            "UPDATE company SET comp_emailaddress = 'other@example.com', \
             comp_updateddate = timestamp '2026-01-01 10:01:00' WHERE comp_companyid = 4",
        )
        .await
        .unwrap();
    let out = env.run_binary(&["sync"], &[]);
    assert_exit(&out, 0);
    assert_eq!(count(&env.erp, "erp.supplier").await, 5);
}

/// Regression: a run's lock was released only when the server noticed its
/// closed connection, so a run started right after the previous one could
/// find the lock still held and exit 1. Runs now release it explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_runs_never_find_the_previous_runs_lock() {
    let env = Env::new(Opts::default()).await;
    insert_companies(&env.crm, 3, "timestamp '2026-01-01 10:00:00'", "Supplier").await;
    for i in 0..40 {
        let plan = crmsync::cli::load_plan(&env.config).unwrap();
        let engine = crmsync::engine::Engine::connect(plan).await.unwrap();
        let r = engine.sync(None, crmsync::engine::Mode::Apply).await;
        assert!(r.is_ok(), "run {i}: {:?}", r.err());
    }
    assert_eq!(count(&env.erp, "erp.supplier").await, 3);
}
