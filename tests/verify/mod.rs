//! `verify`: a clean sync verifies clean; values changed behind crmsync's
//! back, rows without a change time and rows deleted by hand are reported
//! (writing nothing), and `verify --repair` gets both sides back in step.

use crate::common::{assert_converged, insert_companies, output_text, Env, Opts};
use crate::two_way::{crm_insert, ext_insert, sync, two_way_env, TwoWay};
use std::process::Output;
use tokio_postgres::Client;

/// Runs `verify` with `args` through the binary; returns the exit code,
/// stdout and the JSON report's entry for the one entity.
fn verify(env: &Env, args: &[&str]) -> (i32, String, serde_json::Value) {
    let report = env.dir.path().join("verify.json");
    let report_arg = report.to_str().unwrap().to_string();
    let mut all = vec!["--report", &report_arg, "verify"];
    all.extend_from_slice(args);
    let out: Output = env.run_binary(&all, &[]);
    let (stdout, stderr) = output_text(&out);
    let code = out.status.code().unwrap_or(-1);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("report of verify {args:?}: {e}\n{stdout}\n{stderr}"));
    assert_eq!(json["command"], "verify");
    let entity = json["verify"][0].clone();
    assert_eq!(entity["entity"], "supplier", "{json}\n{stderr}");
    (code, stdout, entity)
}

/// A fingerprint of every row of `tables`, to prove nothing was written.
async fn fingerprint(client: &Client, tables: &[&str]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for t in tables {
        let row = client
            .query_one(
                &format!("SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {t} x"),
                &[],
            )
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}

const STATE_TABLES: &[&str] = &[
    "erp.supplier",
    "crmsync.links",
    "crmsync.link_blocks",
    "crmsync.runs",
    "crmsync.watermarks",
    "crmsync.rejects",
    "crmsync.conflicts",
];

/// Three CRM suppliers and two ERP suppliers, synced.
async fn synced_env(t: &TwoWay) -> (Env, Vec<i32>, Vec<i64>) {
    let env = two_way_env(t).await;
    let mut crm_ids = Vec::new();
    for (name, status, phone) in [
        ("Acme Ltd", Some("Active"), Some("+44 20 1111")),
        ("Brück & Söhne", Some("Inactive"), None),
        ("Contoso", None, Some("555")),
    ] {
        crm_ids.push(crm_insert(&env.crm, name, status, phone).await);
    }
    let mut ext_ids = Vec::new();
    for (name, status) in [("Fabrikam", Some("A")), ("Globex", None)] {
        ext_ids.push(ext_insert(&env.erp, name, status, Some("1")).await);
    }
    let r = sync(&env).await;
    assert_eq!((r.inserted, r.crm_inserted), (3, 2), "{r:?}");
    (env, crm_ids, ext_ids)
}

/// Moves every row's change time an hour back, below the sync's overlap
/// window, so that a later change that does not move it stays unseen.
async fn age_rows(env: &Env) {
    env.crm
        .execute(
            "UPDATE company SET comp_updateddate = comp_updateddate - interval '1 hour', \
             comp_timestamp = comp_timestamp - interval '1 hour'",
            &[],
        )
        .await
        .unwrap();
    without_stamping(
        env,
        "UPDATE erp.supplier SET updated_at = updated_at - interval '1 hour'",
    )
    .await;
}

/// Runs `sql` on the ERP with the trigger that stamps updated_at off.
async fn without_stamping(env: &Env, sql: &str) {
    env.erp
        .batch_execute(&format!(
            "ALTER TABLE erp.supplier DISABLE TRIGGER supplier_touch_updated_at; {sql}; \
             ALTER TABLE erp.supplier ENABLE TRIGGER supplier_touch_updated_at"
        ))
        .await
        .unwrap();
}

async fn ext_name_of_crm(erp: &Client, crm_id: i32) -> String {
    erp.query_one(
        "SELECT name FROM erp.supplier WHERE crm_company_id = $1",
        &[&crm_id],
    )
    .await
    .unwrap()
    .get(0)
}

async fn crm_name(crm: &Client, id: i32) -> String {
    crm.query_one(
        "SELECT comp_name FROM company WHERE comp_companyid = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn verify_after_a_clean_sync_reports_every_pair_in_agreement() {
    let (env, _, _) = synced_env(&TwoWay::default()).await;
    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("supplier: in step"), "{stdout}");
    assert_eq!(v["pairs"], 5, "{v}");
    assert_eq!(v["agree"], 5, "{v}");
    assert_eq!(v["differ"], 0, "{v}");
    assert_eq!(v["crm_rows"], 5, "{v}");
    assert_eq!(v["external_rows"], 5, "{v}");
    for k in [
        "unlinked_crm",
        "unlinked_external",
        "missing_crm",
        "missing_external",
        "null_change_crm",
        "null_change_external",
    ] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
    assert!(v.get("repair").is_none(), "{v}");
}

#[tokio::test]
async fn verify_without_a_state_schema_writes_nothing_and_reports_unlinked_rows() {
    let env = two_way_env(&TwoWay::default()).await;
    crm_insert(&env.crm, "Acme Ltd", None, None).await;
    ext_insert(&env.erp, "Fabrikam", None, None).await;
    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["unlinked_crm"], 1, "{v}");
    assert_eq!(v["unlinked_external"], 1, "{v}");
    let schema: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'crmsync'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, 0, "verify must not create the state schema");
}

#[tokio::test]
async fn values_changed_behind_crmsyncs_back_are_drift_until_verify_repair() {
    let (env, crm_ids, _) = synced_env(&TwoWay::default()).await;
    age_rows(&env).await;
    // The ERP name changes with the stamping trigger off; a CRM phone
    // changes without moving Comp_UpdatedDate. No sync can see either.
    without_stamping(
        &env,
        &format!(
            "UPDATE erp.supplier SET name = 'x' WHERE crm_company_id = {}",
            crm_ids[0]
        ),
    )
    .await;
    env.crm
        .execute(
            "UPDATE company SET comp_phonenumber = '999' WHERE comp_companyid = $1",
            &[&crm_ids[1]],
        )
        .await
        .unwrap();
    let r = sync(&env).await;
    assert_eq!(r.changes(), 0, "a sync cannot see this drift: {r:?}");

    let crm_before = fingerprint(&env.crm, &["company"]).await;
    let erp_before = fingerprint(&env.erp, STATE_TABLES).await;
    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["differ"], 2, "{v}");
    assert_eq!(v["agree"], 3, "{v}");
    assert!(stdout.contains("DRIFT"), "{stdout}");
    assert!(
        stdout.contains(r#"comp_name: CRM "Acme Ltd" / external "x""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"comp_phonenumber: CRM "999" / external NULL"#),
        "{stdout}"
    );
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{v}");
    assert!(samples.iter().all(|s| s["kind"] == "differ"), "{v}");
    assert_eq!(fingerprint(&env.crm, &["company"]).await, crm_before);
    assert_eq!(
        fingerprint(&env.erp, STATE_TABLES).await,
        erp_before,
        "verify without --repair wrote something"
    );

    let (code, stdout, v) = verify(&env, &["--repair"]);
    assert_eq!(code, 0, "{stdout}");
    let repair = &v["repair"];
    assert_eq!(repair["shadows_cleared"], 2, "{v}");
    assert_eq!(repair["remaining"]["differ"], 0, "{v}");
    assert_eq!(repair["remaining"]["agree"], 5, "{v}");
    assert!(stdout.contains("after repair: in step"), "{stdout}");
    // crm_wins: each pair now holds one value on both sides.
    assert_eq!(
        crm_name(&env.crm, crm_ids[0]).await,
        ext_name_of_crm(&env.erp, crm_ids[0]).await
    );
    let phone: Option<String> = env
        .erp
        .query_one(
            "SELECT phone FROM erp.supplier WHERE crm_company_id = $1",
            &[&crm_ids[1]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phone.as_deref(), Some("999"), "the CRM's drifted phone won");

    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(v["agree"], 5, "{v}");
    let r = sync(&env).await;
    assert_eq!(r.changes(), 0, "the repair leaves nothing to echo: {r:?}");
}

#[tokio::test]
async fn crm_rows_without_an_updated_date_are_reported_and_repaired() {
    let (env, _, _) = synced_env(&TwoWay::default()).await;
    let id = crm_insert(&env.crm, "Initech", Some("Active"), None).await;
    env.crm
        .execute(
            "UPDATE company SET comp_updateddate = NULL, comp_timestamp = NULL \
             WHERE comp_companyid = $1",
            &[&id],
        )
        .await
        .unwrap();
    sync(&env).await;
    let sent: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE crm_company_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sent, 0, "a row without a change time never enters a window");

    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["null_change_crm"], 1, "{v}");
    assert_eq!(v["unlinked_crm"], 1, "{v}");
    assert!(
        stdout.contains("rows without a change time: 1 CRM"),
        "{stdout}"
    );

    let (code, stdout, v) = verify(&env, &["--repair"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(v["repair"]["sync"]["inserted"], 1, "{v}");
    assert_eq!(v["repair"]["remaining"]["null_change_crm"], 0, "{v}");
    assert_eq!(v["repair"]["remaining"]["pairs"], 6, "{v}");
    assert_eq!(ext_name_of_crm(&env.erp, id).await, "Initech");
    let touched: Option<chrono::NaiveDateTime> = env
        .crm
        .query_one(
            "SELECT comp_updateddate FROM company WHERE comp_companyid = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(touched.is_some(), "the repair sets the change time");
    let (code, stdout, _) = verify(&env, &[]);
    assert_eq!(code, 0, "{stdout}");
}

#[tokio::test]
async fn an_external_row_deleted_by_hand_is_a_link_without_its_row() {
    let (env, crm_ids, _) = synced_env(&TwoWay {
        max_delete_ratio: 1.0,
        ..Default::default()
    })
    .await;
    let ext_id: i64 = env
        .erp
        .query_one(
            "SELECT supplier_id FROM erp.supplier WHERE crm_company_id = $1",
            &[&crm_ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    env.erp
        .execute(
            "DELETE FROM erp.supplier WHERE supplier_id = $1",
            &[&ext_id],
        )
        .await
        .unwrap();

    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["missing_external"], 1, "{v}");
    assert_eq!(v["pairs"], 4, "{v}");
    assert_eq!(v["agree"], 4, "{v}");
    assert!(
        stdout.contains(&format!(
            "missing external row CRM {} / external {ext_id}",
            crm_ids[2]
        )),
        "{stdout}"
    );

    // Two-way with soft deletes into CRM: the sync carries the delete.
    let (code, stdout, v) = verify(&env, &["--repair"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(v["repair"]["sync"]["crm_deleted"], 1, "{v}");
    assert_eq!(v["repair"]["remaining"]["missing_external"], 0, "{v}");
    assert_eq!(v["repair"]["remaining"]["deleted_pairs"], 1, "{v}");
    let deleted: Option<i16> = env
        .crm
        .query_one(
            "SELECT comp_deleted::smallint FROM company WHERE comp_companyid = $1",
            &[&crm_ids[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, Some(1));
}

#[tokio::test]
async fn one_way_drift_is_repaired_from_the_owning_side_across_pages() {
    // 20 rows in pages of 7: the comparison pages both tables.
    let env = Env::new(Opts {
        batch_size: 7,
        ..Default::default()
    })
    .await;
    insert_companies(
        &env.crm,
        20,
        "localtimestamp(3) - interval '1 hour'",
        "Supplier",
    )
    .await;
    let r = env.sync().await;
    assert_eq!(r.inserted, 20, "{r:?}");
    assert_converged(&env).await;
    // Edited in the ERP, where nothing flows back from; one row deleted.
    env.erp
        .batch_execute(
            "UPDATE erp.supplier SET website = 'https://elsewhere.example' WHERE crm_company_id IN (3, 17); \
             DELETE FROM erp.supplier WHERE crm_company_id = 9",
        )
        .await
        .unwrap();

    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["crm_rows"], 20, "{v}");
    assert_eq!(v["external_rows"], 19, "{v}");
    assert_eq!(v["differ"], 2, "{v}");
    assert_eq!(v["agree"], 17, "{v}");
    assert_eq!(v["missing_external"], 1, "{v}");

    let (code, stdout, v) = verify(&env, &["--repair"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(v["repair"]["crm_touched"], 3, "{v}");
    assert_eq!(v["repair"]["external_touched"], 0, "{v}");
    assert_eq!(v["repair"]["remaining"]["agree"], 20, "{v}");
    assert_converged(&env).await;
    let (code, stdout, _) = verify(&env, &[]);
    assert_eq!(code, 0, "{stdout}");
}

#[tokio::test]
async fn a_repair_that_meets_a_manual_conflict_exits_3_and_leaves_it_open() {
    let (env, crm_ids, _) = synced_env(&TwoWay {
        conflict: "manual",
        ..Default::default()
    })
    .await;
    age_rows(&env).await;
    without_stamping(
        &env,
        &format!(
            "UPDATE erp.supplier SET name = 'x' WHERE crm_company_id = {}",
            crm_ids[0]
        ),
    )
    .await;
    let (code, stdout, v) = verify(&env, &["--repair"]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["differ"], 1, "{v}");
    assert_eq!(v["repair"]["sync"]["open_conflicts"], 1, "{v}");
    assert_eq!(v["repair"]["remaining"]["differ"], 1, "{v}");
    assert!(stdout.contains("STILL DRIFTING"), "{stdout}");
    // The open conflict explains the drift: no talk of rewriting triggers.
    assert!(
        !stdout.contains("rewritten where it is written"),
        "{stdout}"
    );
    // Neither side was overwritten: the conflict waits for a person.
    assert_eq!(crm_name(&env.crm, crm_ids[0]).await, "Acme Ltd");
    assert_eq!(ext_name_of_crm(&env.erp, crm_ids[0]).await, "x");
}

#[tokio::test]
async fn pairs_whose_crm_row_left_the_filter_are_compared_and_vanished_crm_rows_reported() {
    let (env, crm_ids, _) = synced_env(&TwoWay::default()).await;
    env.crm
        .batch_execute(&format!(
            "UPDATE company SET comp_type = 'Customer', comp_name = 'Renamed' WHERE comp_companyid = {}; \
             DELETE FROM company WHERE comp_companyid = {}",
            crm_ids[0], crm_ids[1]
        ))
        .await
        .unwrap();
    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["crm_rows"], 3, "{v}");
    assert_eq!(
        v["pairs"], 4,
        "the pair outside crm_filter is compared too: {v}"
    );
    assert_eq!(v["differ"], 1, "{v}");
    assert_eq!(v["missing_crm"], 1, "{v}");
    assert!(
        stdout.contains(&format!("missing CRM row CRM {} /", crm_ids[1])),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"comp_name: CRM "Renamed" / external "Acme Ltd""#),
        "{stdout}"
    );
}

/// A run stopped between writing a pair and naming it (a backfill killed
/// after a chunk committed, say) leaves rows that do not name each other
/// and that no sync reads again: `verify` reports them, and `--repair`
/// gets the sync to name them.
#[tokio::test]
async fn pairs_that_do_not_name_each_other_are_drift_until_verify_repair() {
    let (env, crm_ids, ext_ids) = synced_env(&TwoWay::default()).await;
    age_rows(&env).await;
    // One CRM row loses its ERP key, one ERP row its CRM id, neither
    // moving its change time.
    env.crm
        .execute(
            "UPDATE company SET comp_supplierid = NULL WHERE comp_companyid = $1",
            &[&crm_ids[0]],
        )
        .await
        .unwrap();
    without_stamping(
        &env,
        &format!(
            "UPDATE erp.supplier SET crm_company_id = NULL WHERE supplier_id = {}",
            ext_ids[1]
        ),
    )
    .await;
    let r = sync(&env).await;
    assert_eq!(r.changes(), 0, "a sync does not read these rows: {r:?}");

    let (code, stdout, v) = verify(&env, &[]);
    assert_eq!(code, 3, "{stdout}");
    assert_eq!(v["unnamed"], 2, "{v}");
    assert_eq!(
        (v["agree"].as_u64(), v["differ"].as_u64()),
        (Some(5), Some(0)),
        "{v}"
    );
    assert!(
        stdout.contains("unnamed pair") && stdout.contains("(CRM link column comp_supplierid)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(external CRM-id column crm_company_id)"),
        "{stdout}"
    );

    let (code, stdout, v) = verify(&env, &["--repair"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(v["repair"]["remaining"]["unnamed"], 0, "{v}");
    let named: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM erp.supplier WHERE crm_company_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(named, 5);
    let link: Option<String> = env
        .crm
        .query_one(
            "SELECT comp_supplierid::text FROM company WHERE comp_companyid = $1",
            &[&crm_ids[0]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(link.is_some(), "the CRM row names its ERP row again");
    let (code, stdout, _) = verify(&env, &[]);
    assert_eq!(code, 0, "{stdout}");
}
