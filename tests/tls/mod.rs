//! TLS to PostgreSQL against real servers: the tests' plain cluster and a
//! second private cluster with `ssl = on` whose certificate is signed by a
//! throwaway CA. The server itself says whether a session is encrypted
//! (`pg_stat_ssl`).

use crate::common::{assert_converged, insert_companies, output_text, Env, Opts};
use crmsync::engine::{Engine, Mode};
use std::process::Output;
use tokio_postgres::Client;

fn assert_exit(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = output_text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// `[crm]`/`[external]` lines for `require` with the test CA, which
/// `ca_into` writes next to the config as ca.pem (a relative path, as a
/// DBA would write it).
const REQUIRE_WITH_CA: &str = "tls = \"require\"\ntls_ca_file = \"ca.pem\"";

fn ca_into(env: &Env) {
    std::fs::write(env.dir.path().join("ca.pem"), &testkit::tls_server().ca_pem).unwrap();
}

/// Whether each of crmsync's sessions in `url`'s database is encrypted,
/// as the server reports it. `client` is any superuser session on the same
/// server.
async fn crmsync_sessions_encrypted(client: &Client, url: &str) -> Vec<bool> {
    let db = url.rsplit('/').next().unwrap();
    client
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid \
             WHERE a.application_name = 'crmsync' AND a.datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Connects in-process, syncs, and takes a run lock (the lock has a
/// connection of its own), then returns what the servers say about the
/// CRM and the external sessions while they are all open.
async fn sessions_during_a_run(env: &Env) -> (Vec<bool>, Vec<bool>) {
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    engine.sync(None, Mode::Apply).await.expect("sync");
    let _lock = engine
        .state
        .lock("tls-probe")
        .await
        .expect("lock")
        .expect("nobody else holds it");
    let crm = crmsync_sessions_encrypted(&env.crm, &env.crm_url).await;
    let erp = crmsync_sessions_encrypted(&env.erp, &env.erp_url).await;
    (crm, erp)
}

/// `require` with the CA in `tls_ca_file`: check and a full sync work, and
/// every session, pooled or the lock's own, is encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_with_tls_ca_file_syncs_over_verified_tls() {
    let tls = &testkit::tls_server().server;
    let env = Env::on_servers(
        tls,
        tls,
        Opts {
            crm_extra: REQUIRE_WITH_CA.into(),
            external_extra: REQUIRE_WITH_CA.into(),
            ..Opts::default()
        },
    )
    .await;
    ca_into(&env);
    insert_companies(
        &env.crm,
        250,
        "timestamp '2026-01-01 11:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    let (stdout, _) = assert_exit(&env.run_binary(&["check"], &[]), 0);
    assert!(stdout.contains("connected"), "{stdout}");
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    assert!(assert_converged(&env).await > 0, "suppliers synced");

    let (crm, erp) = sessions_during_a_run(&env).await;
    assert!(!crm.is_empty(), "the CRM pool holds a session");
    // The state store is on the external side: pool plus lock connection.
    assert!(erp.len() >= 2, "pool and lock sessions: {erp:?}");
    assert!(
        crm.iter().chain(&erp).all(|&ssl| ssl),
        "crm {crm:?}, external {erp:?}"
    );
}

/// The self-signed CA is in no system store: `require` without
/// `tls_ca_file` must refuse the server and say which key fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_without_tls_ca_file_rejects_an_unknown_ca() {
    let tls = &testkit::tls_server().server;
    let env = Env::on_servers(
        tls,
        tls,
        Opts {
            external_extra: "tls = \"require\"".into(),
            ..Opts::default()
        },
    )
    .await;
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 1);
    assert!(stderr.contains("external"), "names the side: {stderr}");
    assert!(
        stderr.contains("certificate"),
        "names the problem: {stderr}"
    );
    assert!(stderr.contains("tls_ca_file"), "names the key: {stderr}");
}

/// `require` checks the host name too: the right CA is not enough when the
/// certificate was issued for another name. The url names a host the
/// certificate does not; `hostaddr` still reaches the test server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_rejects_a_certificate_for_another_host_name() {
    let tls = &testkit::tls_server().server;
    let env = Env::on_servers(
        tls,
        tls,
        Opts {
            external_extra: REQUIRE_WITH_CA.into(),
            ..Opts::default()
        },
    )
    .await;
    ca_into(&env);
    let renamed = format!(
        "{}?hostaddr=127.0.0.1",
        env.erp_url
            .replace("@127.0.0.1:", "@db.wrong-name.invalid:")
    );
    let text = env
        .config_text(&Opts {
            external_extra: REQUIRE_WITH_CA.into(),
            ..Opts::default()
        })
        .replace(&env.erp_url, &renamed);
    std::fs::write(&env.config, text).unwrap();
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 1);
    assert!(
        stderr.contains("db.wrong-name.invalid"),
        "names the host: {stderr}"
    );
    assert!(
        stderr.contains("does not name the host"),
        "says what is wrong: {stderr}"
    );
}

/// `require` never falls back to clear text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_plain_server_fails_saying_it_offers_no_tls() {
    let env = Env::new(Opts {
        external_extra: REQUIRE_WITH_CA.into(),
        ..Opts::default()
    })
    .await;
    ca_into(&env);
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 1);
    assert!(stderr.contains("external"), "names the side: {stderr}");
    assert!(stderr.contains("does not offer TLS"), "{stderr}");
}

/// `prefer` (the default) encrypts where the server offers TLS and
/// connects in clear text where it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_encrypts_when_offered_and_falls_back_to_plain() {
    let env = Env::on_servers(
        &testkit::tls_server().server,
        testkit::server(),
        Opts::default(),
    )
    .await;
    insert_companies(
        &env.crm,
        30,
        "timestamp '2026-01-01 11:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    assert_converged(&env).await;

    let (crm, erp) = sessions_during_a_run(&env).await;
    assert!(
        !crm.is_empty() && crm.iter().all(|&ssl| ssl),
        "CRM (TLS server): {crm:?}"
    );
    assert!(
        !erp.is_empty() && erp.iter().all(|&ssl| !ssl),
        "external (plain server): {erp:?}"
    );
}

/// `tls_ca_file` is checked with the rest of the config: a missing or
/// unreadable file, one with no certificate, and a CA file that would be
/// ignored (not `require`) are config errors naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_ca_file_is_a_config_error_naming_the_key() {
    let env = Env::new(Opts::default()).await;
    let not_pem = env.dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (extra, says) in [
        (
            "tls = \"require\"\ntls_ca_file = \"no-such-ca.pem\"",
            "no-such-ca.pem",
        ),
        (
            "tls = \"require\"\ntls_ca_file = \"not-a-cert.pem\"",
            "no certificate",
        ),
        (
            "tls_ca_file = \"not-a-cert.pem\"",
            r#"only tls = "require""#,
        ),
    ] {
        env.write_config(&Opts {
            external_extra: extra.into(),
            ..Opts::default()
        });
        let (_, stderr) = assert_exit(&env.run_binary(&["check"], &[]), 2);
        assert!(stderr.contains("[external]"), "names the section: {stderr}");
        assert!(stderr.contains("tls_ca_file"), "names the key: {stderr}");
        assert!(stderr.contains(says), "says {says:?}: {stderr}");
    }
}

/// Client certificates: the TLS cluster admits `testkit::CERT_USER` over
/// TCP only with a certificate naming it (`hostssl ... cert`). With
/// `tls_cert_file` and `tls_key_file` both sides connect and sync; without
/// them the server refuses the login, and the error says so. A key that
/// others may read, a key that is not the certificate's, and half of the
/// pair are config errors naming the key, and no key material is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_logs_in_where_the_server_requires_one() {
    use std::os::unix::fs::PermissionsExt;
    let tls = testkit::tls_server();
    let env = Env::on_servers(&tls.server, &tls.server, Opts::default()).await;
    ca_into(&env);
    let dir = env.dir.path();
    std::fs::write(dir.join("client.crt"), &tls.client_cert_pem).unwrap();
    std::fs::write(dir.join("client.key"), &tls.client_key_pem).unwrap();
    std::fs::set_permissions(
        dir.join("client.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let crm_url = testkit::as_cert_user(&env.crm_url).await;
    let erp_url = testkit::as_cert_user(&env.erp_url).await;
    let with_cert = "tls = \"require\"\ntls_ca_file = \"ca.pem\"\n\
                     tls_cert_file = \"client.crt\"\ntls_key_file = \"client.key\"";
    let config = |extra: &str| {
        env.config_text(&Opts {
            crm_extra: extra.into(),
            external_extra: extra.into(),
            ..Opts::default()
        })
        .replace(&format!("\"{}\"", env.crm_url), &format!("\"{crm_url}\""))
        .replace(&format!("\"{}\"", env.erp_url), &format!("\"{erp_url}\""))
    };
    insert_companies(
        &env.crm,
        40,
        "timestamp '2026-01-01 11:00:00' + i * interval '1 s'",
        "Supplier",
    )
    .await;

    std::fs::write(&env.config, config(with_cert)).unwrap();
    assert_exit(&env.run_binary(&["sync"], &[]), 0);
    assert_eq!(assert_converged(&env).await, 40);

    // Without a certificate the server refuses the role.
    std::fs::write(
        &env.config,
        config("tls = \"require\"\ntls_ca_file = \"ca.pem\""),
    )
    .unwrap();
    let (_, stderr) = assert_exit(&env.run_binary(&["sync"], &[]), 1);
    assert!(
        stderr.contains("set tls_cert_file and tls_key_file"),
        "{stderr}"
    );

    // Config errors, each naming its key.
    let other_key = testkit::unrelated_key_pem();
    std::fs::write(dir.join("other.key"), &other_key).unwrap();
    std::fs::set_permissions(
        dir.join("other.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("open.key"), &tls.client_key_pem).unwrap();
    std::fs::set_permissions(dir.join("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    for (extra, says) in [
        (
            "tls = \"require\"\ntls_ca_file = \"ca.pem\"\ntls_cert_file = \"client.crt\"",
            "together",
        ),
        (
            "tls = \"require\"\ntls_ca_file = \"ca.pem\"\ntls_cert_file = \"client.crt\"\n\
             tls_key_file = \"open.key\"",
            "chmod 600",
        ),
        (
            "tls = \"require\"\ntls_ca_file = \"ca.pem\"\ntls_cert_file = \"client.crt\"\n\
             tls_key_file = \"other.key\"",
            "the certificate's own",
        ),
        (
            "tls = \"disable\"\ntls_cert_file = \"client.crt\"\ntls_key_file = \"client.key\"",
            "sends no certificate",
        ),
    ] {
        std::fs::write(&env.config, config(extra)).unwrap();
        let (stdout, stderr) = assert_exit(&env.run_binary(&["check"], &[]), 2);
        assert!(stderr.contains("tls_"), "names the key: {stderr}");
        assert!(stderr.contains(says), "says {says:?}: {stderr}");
        for secret in [&tls.client_key_pem, &other_key] {
            let body = secret.lines().nth(1).unwrap();
            assert!(
                !stderr.contains(body) && !stdout.contains(body),
                "no key material is printed"
            );
        }
    }
}
