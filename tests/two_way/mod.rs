//! Two-way sync: rows written into CRM by Sage CRM's rules, both id
//! strategies, field-level merge, each conflict policy, the delete-ratio
//! guard, oversize values, and a property test of random changes on both
//! sides with runs killed at random points.

use crate::common::{Env, Opts};
use crmsync::engine::{Engine, EngineError, EntityReport, Mode};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::Client;

pub mod property;

/// Knobs of the two-way test entity.
#[derive(Debug, Clone)]
pub struct TwoWay {
    pub conflict: &'static str,
    pub id_strategy: &'static str,
    pub max_delete_ratio: f64,
    /// Extra keys of the `[[entity]]` table.
    pub entity_extra: &'static str,
    /// The email field's on_truncate, if mapped.
    pub email: Option<&'static str>,
    /// `[state] side`.
    pub state_side: &'static str,
}

impl Default for TwoWay {
    fn default() -> Self {
        TwoWay {
            conflict: "crm_wins",
            id_strategy: "auto",
            max_delete_ratio: 0.10,
            entity_extra: "",
            email: None,
            state_side: "external",
        }
    }
}

/// Fresh databases and a two-way supplier entity: Company <-> erp.supplier.
pub async fn two_way_env(t: &TwoWay) -> Env {
    let env = Env::new(Opts::default()).await;
    write_two_way_config(&env, t);
    env
}

pub fn write_two_way_config(env: &Env, t: &TwoWay) {
    let email = match t.email {
        Some(policy) => format!(
            "\n[[entity.field]]\ncrm = \"comp_emailaddress\"\nexternal = \"email\"\non_truncate = \"{policy}\"\n"
        ),
        None => String::new(),
    };
    let text = format!(
        r#"[crm]
url = "{crm}"
user_id = 7
timezone = "UTC"
id_strategy = "{ids}"

[external]
url = "{erp}"
timezone = "UTC"

[state]
side = "{state_side}"

[defaults]
batch_size = 50
settle = "0s"
overlap = "5m"
max_delete_ratio = {ratio}

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
crm_defaults = {{ Comp_Type = "Supplier" }}
direction = "both"
delete_into_external = "soft"
delete_into_crm = "soft"
conflict = "{conflict}"
{extra}

[[entity.field]]
crm = "Comp_Name"
external = "name"

[[entity.field]]
crm = "Comp_Status"
external = "status"
values = {{ "Active" = "A", "Inactive" = "I" }}

[[entity.field]]
crm = "comp_phonenumber"
external = "phone"

[[entity.field]]
crm = "comp_promote"
external = "promote"
transform = "checkbox"
{email}"#,
        crm = env.crm_url,
        erp = env.erp_url,
        ids = t.id_strategy,
        ratio = t.max_delete_ratio,
        conflict = t.conflict,
        extra = t.entity_extra,
        state_side = t.state_side,
    );
    std::fs::write(&env.config, text).unwrap();
}

/// One in-process sync; `Err` for a failed run.
pub async fn try_sync(env: &Env) -> Result<EntityReport, EngineError> {
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await?;
    let mut reports = engine.sync(None, Mode::Apply).await?;
    Ok(reports.remove(0))
}

pub async fn sync(env: &Env) -> EntityReport {
    // A run killed a moment ago may still hold its lock until the server
    // notices the closed connection.
    for _ in 0..50 {
        match try_sync(env).await {
            Err(EngineError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other.expect("sync"),
        }
    }
    panic!("the run lock was never released");
}

/// Inserts a supplier into the external table; returns its key.
pub async fn ext_insert(
    erp: &Client,
    name: &str,
    status: Option<&str>,
    phone: Option<&str>,
) -> i64 {
    erp.query_one(
        "INSERT INTO erp.supplier (name, status, phone) VALUES ($1, $2, $3) RETURNING supplier_id",
        &[&name, &status, &phone],
    )
    .await
    .unwrap()
    .get(0)
}

/// Inserts a supplier into CRM as Sage CRM would; returns its id.
pub async fn crm_insert(
    crm: &Client,
    name: &str,
    status: Option<&str>,
    phone: Option<&str>,
) -> i32 {
    crm.query_one(
        "INSERT INTO company (comp_name, comp_type, comp_status, comp_phonenumber, comp_createdby, \
           comp_createddate, comp_updatedby, comp_updateddate, comp_timestamp, comp_secterr) \
         VALUES ($1, 'Supplier', $2, $3, 1, localtimestamp(3), 1, localtimestamp(3), localtimestamp(3), -2147483640) \
         RETURNING comp_companyid",
        &[&name, &status, &phone],
    )
    .await
    .unwrap()
    .get(0)
}

/// Sets a CRM column as the Sage CRM UI would (moving the dates).
pub async fn crm_set(crm: &Client, id: i32, column: &str, value: Option<&str>) {
    crm.execute(
        &format!(
            "UPDATE company SET {column} = $1, comp_updatedby = 1, comp_updateddate = localtimestamp(3), \
             comp_timestamp = localtimestamp(3) WHERE comp_companyid = $2"
        ),
        &[&value, &id],
    )
    .await
    .unwrap();
}

pub async fn ext_set(erp: &Client, id: i64, column: &str, value: Option<&str>) {
    erp.execute(
        &format!("UPDATE erp.supplier SET {column} = $1 WHERE supplier_id = $2"),
        &[&value, &id],
    )
    .await
    .unwrap();
}

/// A CRM company row by id, as (column -> text) for the columns asked.
async fn crm_row(crm: &Client, id: i32, columns: &[&str]) -> BTreeMap<String, Option<String>> {
    let list: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
    let row = crm
        .query_one(
            &format!(
                "SELECT {} FROM company WHERE comp_companyid = $1",
                list.join(", ")
            ),
            &[&id],
        )
        .await
        .unwrap();
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), row.get(i)))
        .collect()
}

async fn crm_id_for(crm: &Client, ext_id: i64) -> i32 {
    crm.query_one(
        "SELECT comp_companyid FROM company WHERE comp_supplierid = $1",
        &[&ext_id.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

async fn inserted_into_crm_by_sage_rules(id_strategy: &'static str) {
    let env = two_way_env(&TwoWay {
        id_strategy,
        ..Default::default()
    })
    .await;
    if id_strategy == "stored_procedure" {
        // Ids come from SQL_Identity, far from anything IDENTITY would give.
        env.crm
            .execute(
                "UPDATE sql_identity SET id_nextid = 5000 WHERE id_tableid = 5",
                &[],
            )
            .await
            .unwrap();
    }
    let before: chrono::NaiveDateTime = env
        .crm
        .query_one("SELECT localtimestamp(3)", &[])
        .await
        .unwrap()
        .get(0);
    let ext_id = ext_insert(
        &env.erp,
        "Nordwind Ölmühle 🚜",
        Some("A"),
        Some("+49 30 1234"),
    )
    .await;
    let report = sync(&env).await;
    assert_eq!(report.crm_inserted, 1, "{report:?}");
    let id = crm_id_for(&env.crm, ext_id).await;
    if id_strategy == "stored_procedure" {
        assert_eq!(id, 5000, "the id comes from eware_get_identity_id");
        let next: i32 = env
            .crm
            .query_one(
                "SELECT id_nextid FROM sql_identity WHERE id_tableid = 5",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(next, 5001);
    } else {
        assert!(id < 5000, "the id comes from the IDENTITY column");
    }
    let r = crm_row(
        &env.crm,
        id,
        &[
            "comp_name",
            "comp_status",
            "comp_phonenumber",
            "comp_type",
            "comp_secterr",
            "comp_createdby",
            "comp_updatedby",
            "comp_deleted",
            "comp_supplierid",
        ],
    )
    .await;
    assert_eq!(r["comp_name"].as_deref(), Some("Nordwind Ölmühle 🚜"));
    assert_eq!(r["comp_status"].as_deref(), Some("Active"));
    assert_eq!(r["comp_phonenumber"].as_deref(), Some("+49 30 1234"));
    assert_eq!(
        r["comp_type"].as_deref(),
        Some("Supplier"),
        "crm_defaults applied"
    );
    assert_eq!(
        r["comp_secterr"].as_deref(),
        Some("-2147483640"),
        "default territory"
    );
    assert_eq!(r["comp_createdby"].as_deref(), Some("7"), "the sync user");
    assert_eq!(r["comp_updatedby"].as_deref(), Some("7"), "the sync user");
    assert_eq!(r["comp_deleted"], None);
    assert_eq!(r["comp_supplierid"], Some(ext_id.to_string()));
    let dates = env
        .crm
        .query_one(
            "SELECT comp_createddate, comp_updateddate, comp_timestamp FROM company WHERE comp_companyid = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (c, u, t): (
        chrono::NaiveDateTime,
        chrono::NaiveDateTime,
        chrono::NaiveDateTime,
    ) = (dates.get(0), dates.get(1), dates.get(2));
    assert!(c == u && u == t, "three equal dates: {c} {u} {t}");
    assert!(c >= before, "dates come from the CRM server's clock");
    // The second run writes nothing back: no echo.
    let again = sync(&env).await;
    assert_eq!(again.changes(), 0, "{again:?}");
}

#[tokio::test]
async fn external_insert_lands_in_crm_by_sage_rules_with_identity_ids() {
    inserted_into_crm_by_sage_rules("auto").await;
}

#[tokio::test]
async fn external_insert_lands_in_crm_by_sage_rules_with_eware_get_identity_id() {
    inserted_into_crm_by_sage_rules("stored_procedure").await;
}

#[tokio::test]
async fn second_run_after_changes_on_both_sides_writes_nothing() {
    let env = two_way_env(&TwoWay::default()).await;
    let a = crm_insert(&env.crm, "Alpha", Some("Active"), None).await;
    let x = ext_insert(&env.erp, "Beta", Some("I"), Some("1")).await;
    let first = sync(&env).await;
    assert_eq!((first.inserted, first.crm_inserted), (1, 1), "{first:?}");
    crm_set(&env.crm, a, "comp_phonenumber", Some("+1 555 0100")).await;
    ext_set(&env.erp, x, "name", Some("Beta GmbH")).await;
    let second = sync(&env).await;
    assert_eq!((second.updated, second.crm_updated), (1, 1), "{second:?}");
    let third = sync(&env).await;
    assert_eq!(third.changes(), 0, "{third:?}");
    assert_eq!(third.conflicts, 0);
    let b = crm_id_for(&env.crm, x).await;
    assert_eq!(
        crm_row(&env.crm, b, &["comp_name"]).await["comp_name"].as_deref(),
        Some("Beta GmbH")
    );
    let phone: Option<String> = env
        .erp
        .query_one(
            "SELECT phone FROM erp.supplier WHERE crm_company_id = $1",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phone.as_deref(), Some("+1 555 0100"));
}

async fn linked_pairs(env: &Env, n: usize) -> Vec<(i32, i64)> {
    let mut out = Vec::new();
    for i in 0..n {
        let x = ext_insert(&env.erp, &format!("Supplier {i}"), Some("A"), None).await;
        out.push((0, x));
    }
    sync(env).await;
    for p in &mut out {
        p.0 = crm_id_for(&env.crm, p.1).await;
    }
    out
}

#[tokio::test]
async fn deleting_half_the_external_table_is_refused_by_the_ratio_guard() {
    let env = two_way_env(&TwoWay::default()).await;
    let pairs = linked_pairs(&env, 50).await;
    env.erp
        .execute("DELETE FROM erp.supplier WHERE supplier_id % 2 = 0", &[])
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
    let out = env.run_binary(&["sync"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("max_delete_ratio"), "{stdout}");
    let deleted: i64 = env
        .crm
        .query_one("SELECT count(*) FROM company WHERE comp_deleted = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 0, "no delete reached CRM");
    assert_eq!(pairs.len(), 50);
}

/// With the state store in the external database the gone rows are found
/// by one anti-join there; with it on the CRM side, by comparing both key
/// sets in memory.
#[tokio::test]
async fn deleting_two_percent_is_applied_as_crm_soft_deletes() {
    two_percent_deleted("external").await;
}

#[tokio::test]
async fn deleting_two_percent_is_applied_with_the_state_store_in_crm() {
    two_percent_deleted("crm").await;
}

async fn two_percent_deleted(state_side: &'static str) {
    let env = two_way_env(&TwoWay {
        state_side,
        ..TwoWay::default()
    })
    .await;
    let pairs = linked_pairs(&env, 50).await;
    let (gone_crm, gone_ext) = pairs[7];
    hard_delete(&env, gone_ext).await;
    let report = sync(&env).await;
    assert_eq!(report.crm_deleted, 1, "{report:?}");
    assert_eq!(report.deletes_refused, 0);
    let r = crm_row(&env.crm, gone_crm, &["comp_deleted", "comp_updatedby"]).await;
    assert_eq!(
        r["comp_deleted"].as_deref(),
        Some("1"),
        "soft delete, the row stays"
    );
    assert_eq!(r["comp_updatedby"].as_deref(), Some("7"));
    let live: i64 = env
        .crm
        .query_one(
            "SELECT count(*) FROM company WHERE comp_deleted IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 49);
    assert!(report.hard_delete_check, "{report:?}");

    // A table PostgreSQL estimates at a million rows: no longer compared
    // on every run, but only when its statistics show a delete.
    pretend_large(&env).await;
    // No delete since that check: the links are not compared again, also
    // while rows are inserted and updated.
    env.erp
        .batch_execute(
            "INSERT INTO erp.supplier (name) VALUES ('New one'); \
             UPDATE erp.supplier SET phone = '+1 555 0199' WHERE name = 'New one'",
        )
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
    let quiet = sync(&env).await;
    assert_eq!(quiet.crm_inserted, 1, "{quiet:?}");
    assert!(!quiet.hard_delete_check, "{quiet:?}");

    // The next delete is found by the next run.
    let (gone_crm, gone_ext) = pairs[8];
    hard_delete(&env, gone_ext).await;
    let again = sync(&env).await;
    assert!(again.hard_delete_check, "{again:?}");
    assert_eq!(again.crm_deleted, 1, "{again:?}");
    let r = crm_row(&env.crm, gone_crm, &["comp_deleted"]).await;
    assert_eq!(r["comp_deleted"].as_deref(), Some("1"));
    let status = env.run_binary(&["status"], &[]);
    let (stdout, stderr) = crate::common::output_text(&status);
    assert_eq!(status.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("links last found all present in the external table 20"),
        "{stdout}"
    );
    let check = env.run_binary(&["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&check);
    assert_eq!(check.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("check passed") && !stdout.contains("for hard deletes"),
        "PostgreSQL tells when nothing was deleted: {stdout}"
    );

    // TRUNCATE counts no deleted row, but gives the table a new file: the
    // links are compared, and the delete-ratio guard holds the deletes.
    env.erp
        .batch_execute("TRUNCATE erp.supplier, erp.contact")
        .await
        .unwrap();
    let truncated = sync(&env).await;
    assert!(truncated.hard_delete_check, "{truncated:?}");
    assert_eq!(truncated.crm_deleted, 0);
    assert!(truncated.deletes_refused > 0, "{truncated:?}");
    let still = sync(&env).await;
    assert!(
        still.hard_delete_check && still.deletes_refused > 0,
        "refused deletes are looked at again: {still:?}"
    );
}

/// Makes the catalog estimate erp.supplier at a million rows, as if it
/// were large (read by each run when it binds the mapping).
async fn pretend_large(env: &Env) {
    env.erp
        .batch_execute(
            "UPDATE pg_class SET reltuples = 1000000 WHERE oid = 'erp.supplier'::regclass",
        )
        .await
        .unwrap();
}

/// PostgreSQL counts a session's deletes in its statistics a second or so
/// after they commit. A small table is compared with the links on every
/// run, so a row deleted just before a run is carried by that run.
#[tokio::test]
async fn a_row_deleted_just_before_the_run_is_carried_by_it() {
    let env = two_way_env(&TwoWay::default()).await;
    let pairs = linked_pairs(&env, 20).await;
    // A first comparison records the fingerprint.
    let first = sync(&env).await;
    assert!(first.hard_delete_check, "{first:?}");
    for (n, &(crm, ext)) in pairs.iter().take(3).enumerate() {
        // No flush of the statistics: the delete is not counted yet.
        env.erp
            .execute("DELETE FROM erp.supplier WHERE supplier_id = $1", &[&ext])
            .await
            .unwrap();
        let run = sync(&env).await;
        assert_eq!(run.crm_deleted, 1, "delete {n}: {run:?}");
        let r = crm_row(&env.crm, crm, &["comp_deleted"]).await;
        assert_eq!(r["comp_deleted"].as_deref(), Some("1"), "delete {n}");
    }
}

/// Deletes ERP row `id` for real, and makes the server count it now.
async fn hard_delete(env: &Env, id: i64) {
    env.erp
        .execute("DELETE FROM erp.supplier WHERE supplier_id = $1", &[&id])
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
}

/// A pair whose name changed on both sides, plus a phone changed in CRM
/// and a status changed outside.
pub(crate) async fn clash(
    conflict: &'static str,
    ext_later: bool,
) -> (Env, i32, i64, EntityReport) {
    let env = two_way_env(&TwoWay {
        conflict,
        ..Default::default()
    })
    .await;
    let a = crm_insert(&env.crm, "Original", Some("Active"), Some("1")).await;
    sync(&env).await;
    let x: i64 = env
        .erp
        .query_one(
            "SELECT supplier_id FROM erp.supplier WHERE crm_company_id = $1",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    // Row-level change times (all Sage CRM records): the other fields
    // change first, so the names' order decides which row is newer.
    crm_set(&env.crm, a, "comp_phonenumber", Some("2")).await;
    ext_set(&env.erp, x, "status", Some("I")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    if ext_later {
        crm_set(&env.crm, a, "comp_name", Some("CRM name")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        ext_set(&env.erp, x, "name", Some("ERP name")).await;
    } else {
        ext_set(&env.erp, x, "name", Some("ERP name")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        crm_set(&env.crm, a, "comp_name", Some("CRM name")).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = sync(&env).await;
    (env, a, x, report)
}

async fn both_names(env: &Env, a: i32, x: i64) -> (String, String) {
    let crm: String = env
        .crm
        .query_one(
            "SELECT comp_name FROM company WHERE comp_companyid = $1",
            &[&a],
        )
        .await
        .unwrap()
        .get(0);
    let ext: String = env
        .erp
        .query_one(
            "SELECT name FROM erp.supplier WHERE supplier_id = $1",
            &[&x],
        )
        .await
        .unwrap()
        .get(0);
    (crm, ext)
}

/// The other fields merged without a conflict.
async fn assert_other_fields_merged(env: &Env, a: i32, x: i64) {
    let r = crm_row(&env.crm, a, &["comp_status", "comp_phonenumber"]).await;
    assert_eq!(
        r["comp_status"].as_deref(),
        Some("Inactive"),
        "external status change kept"
    );
    let (phone, status): (Option<String>, Option<String>) = {
        let row = env
            .erp
            .query_one(
                "SELECT phone, status::text FROM erp.supplier WHERE supplier_id = $1",
                &[&x],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(phone.as_deref(), Some("2"), "CRM phone change kept");
    assert_eq!(status.as_deref(), Some("I"));
}

async fn logged_conflicts(env: &Env) -> Vec<(String, Option<String>, Option<String>)> {
    env.erp
        .query(
            "SELECT field, winner, resolution FROM crmsync.conflicts ORDER BY conflict_id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn crm_wins_takes_the_crm_value_and_logs_the_clash() {
    let (env, a, x, report) = clash("crm_wins", true).await;
    assert_eq!(
        report.conflicts, 1,
        "only the same-field clash is a conflict: {report:?}"
    );
    assert_eq!(
        both_names(&env, a, x).await,
        ("CRM name".into(), "CRM name".into())
    );
    assert_other_fields_merged(&env, a, x).await;
    let log = logged_conflicts(&env).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].0, "comp_name");
    assert_eq!(log[0].1.as_deref(), Some("crm"));
    // Both values that clashed are logged; the base is not, because the
    // shadow keeps it as a digest.
    let (base, crm, ext): (
        Option<serde_json::Value>,
        serde_json::Value,
        serde_json::Value,
    ) = env
        .erp
        .query_one(
            "SELECT base_value, crm_value, external_value FROM crmsync.conflicts",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (crm.as_str(), ext.as_str()),
        (Some("CRM name"), Some("ERP name"))
    );
    assert_eq!(base, None);
    assert_eq!(sync(&env).await.changes(), 0);
}

/// Pairs a backfill linked in blocks, changed on both sides in the first
/// window after it: fields changed on one side each merge, a field
/// changed on both is a conflict logged with both values, each changed
/// link becomes a row of its own, and the next run writes nothing.
#[tokio::test]
async fn pairs_in_link_blocks_changed_on_both_sides_merge_field_by_field() {
    let env = two_way_env(&TwoWay::default()).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            crm_insert(
                &env.crm,
                &format!("Supplier {i}"),
                Some("Active"),
                Some("1"),
            )
            .await,
        );
    }
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    let opts = crmsync::engine::BackfillOptions {
        direction: crmsync::engine::BackfillDirection::CrmToExternal,
        restart: false,
        chunk_rows: 100,
    };
    let reports = engine.backfill(None, &opts).await.expect("backfill");
    assert_eq!(reports[0].inserted, 40);
    let count = |sql: &'static str| {
        let erp = &env.erp;
        async move { erp.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM crmsync.links").await, 0);
    assert_eq!(
        count("SELECT sum(cardinality(crm_keys))::bigint FROM crmsync.link_blocks").await,
        40,
        "the identity's keys ascend with the CRM's: every link is in a block"
    );
    let ext = |a: i32| {
        let erp = &env.erp;
        async move {
            erp.query_one(
                "SELECT supplier_id FROM erp.supplier WHERE crm_company_id = $1",
                &[&a],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let (a, b) = (ids[3], ids[17]);
    let (xa, xb) = (ext(a).await, ext(b).await);
    crm_set(&env.crm, a, "comp_phonenumber", Some("2")).await;
    ext_set(&env.erp, xa, "status", Some("I")).await;
    ext_set(&env.erp, xb, "name", Some("ERP name")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    crm_set(&env.crm, b, "comp_name", Some("CRM name")).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = sync(&env).await;
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert_eq!((report.inserted, report.crm_inserted), (0, 0), "{report:?}");
    assert_other_fields_merged(&env, a, xa).await;
    assert_eq!(
        both_names(&env, b, xb).await,
        ("CRM name".into(), "CRM name".into())
    );
    let log = logged_conflicts(&env).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].0.as_str(), log[0].1.as_deref()),
        ("comp_name", Some("crm"))
    );
    let (crm, ext_value): (serde_json::Value, serde_json::Value) = env
        .erp
        .query_one(
            "SELECT crm_value, external_value FROM crmsync.conflicts",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (crm.as_str(), ext_value.as_str()),
        (Some("CRM name"), Some("ERP name"))
    );
    assert_eq!(count("SELECT count(*) FROM crmsync.links").await, 2);
    assert_eq!(count("SELECT count(*) FROM crmsync.all_links").await, 40);
    assert_eq!(sync(&env).await.changes(), 0);
    // Both sides still name each other, block and row alike.
    assert_eq!(
        count(
            "SELECT count(*) FROM crmsync.all_links l JOIN erp.supplier s \
               ON crmsync.key_text(l.external_key) = s.supplier_id::text \
              AND crmsync.key_text(l.crm_key) = s.crm_company_id::text"
        )
        .await,
        40
    );
}

#[tokio::test]
async fn external_wins_takes_the_external_value() {
    let (env, a, x, report) = clash("external_wins", false).await;
    assert_eq!(report.conflicts, 1);
    assert_eq!(
        both_names(&env, a, x).await,
        ("ERP name".into(), "ERP name".into())
    );
    assert_other_fields_merged(&env, a, x).await;
    assert_eq!(
        logged_conflicts(&env).await[0].1.as_deref(),
        Some("external")
    );
}

#[tokio::test]
async fn newest_wins_takes_the_later_change_either_way() {
    let (env, a, x, _) = clash("newest_wins", true).await;
    assert_eq!(
        both_names(&env, a, x).await,
        ("ERP name".into(), "ERP name".into())
    );
    assert_other_fields_merged(&env, a, x).await;
    let (env, a, x, _) = clash("newest_wins", false).await;
    assert_eq!(
        both_names(&env, a, x).await,
        ("CRM name".into(), "CRM name".into())
    );
    assert_other_fields_merged(&env, a, x).await;
}

#[tokio::test]
async fn manual_leaves_both_sides_until_resolved_with_the_cli() {
    let (env, a, x, report) = clash("manual", true).await;
    assert_eq!(report.open_conflicts, 1, "{report:?}");
    assert_eq!(
        both_names(&env, a, x).await,
        ("CRM name".into(), "ERP name".into())
    );
    assert_other_fields_merged(&env, a, x).await;
    // Held: later runs neither write the field nor log it again, and exit 3.
    let out = env.run_binary(&["sync"], &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{:?}",
        crate::common::output_text(&out)
    );
    assert_eq!(logged_conflicts(&env).await.len(), 1);
    let list = env.run_binary(&["conflicts", "list"], &[]);
    let (stdout, _) = crate::common::output_text(&list);
    assert!(
        stdout.contains("comp_name") && stdout.contains("ERP name"),
        "{stdout}"
    );
    let id: i64 = env
        .erp
        .query_one("SELECT conflict_id FROM crmsync.conflicts", &[])
        .await
        .unwrap()
        .get(0);
    let out = env.run_binary(
        &[
            "conflicts",
            "resolve",
            &id.to_string(),
            "--take",
            "external",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    assert_eq!(
        both_names(&env, a, x).await,
        ("ERP name".into(), "ERP name".into())
    );
    let out = env.run_binary(&["sync"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    let resolved: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM crmsync.conflicts WHERE resolved_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(resolved, 1);
}

async fn oversize(policy: &'static str) -> (Env, i64, i64, std::process::Output) {
    let env = two_way_env(&TwoWay {
        email: Some(policy),
        ..Default::default()
    })
    .await;
    env.erp
        .batch_execute("ALTER TABLE erp.supplier ALTER COLUMN email TYPE varchar(400)")
        .await
        .unwrap();
    let long = "x".repeat(300) + "@example.com";
    let big: i64 = env
        .erp
        .query_one(
            "INSERT INTO erp.supplier (name, email) VALUES ('Too long', $1) RETURNING supplier_id",
            &[&long],
        )
        .await
        .unwrap()
        .get(0);
    let fine = ext_insert(&env.erp, "Fits", None, None).await;
    let out = env.run_binary(&["sync"], &[]);
    (env, big, fine, out)
}

async fn crm_has(env: &Env, ext_id: i64) -> bool {
    env.crm
        .query_opt(
            "SELECT 1 FROM company WHERE comp_supplierid = $1",
            &[&ext_id.to_string()],
        )
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn oversize_value_is_rejected_and_listed_while_others_apply() {
    let (env, big, fine, out) = oversize("reject").await;
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(crm_has(&env, fine).await, "the other row is applied");
    assert!(!crm_has(&env, big).await, "the oversize row is not");
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE key = $1 AND resolved_at IS NULL",
            &[&big.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.contains("comp_emailaddress") && reason.contains("255"),
        "{reason}"
    );
    // Fixed at the source, the rejected row goes through on the next run.
    ext_set(&env.erp, big, "email", Some("short@example.com")).await;
    let out = env.run_binary(&["sync"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    assert!(crm_has(&env, big).await);
}

#[tokio::test]
async fn oversize_value_is_truncated_with_a_count() {
    let (env, big, _, out) = oversize("truncate").await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        crate::common::output_text(&out)
    );
    let email: String = env
        .crm
        .query_one(
            "SELECT comp_emailaddress FROM company WHERE comp_supplierid = $1",
            &[&big.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(email.chars().count(), 255);
    let (stdout, _) = crate::common::output_text(&out);
    assert!(stdout.contains("truncated 1"), "{stdout}");
    // The cut value is not mistaken for a CRM change and sent back.
    let again = sync(&env).await;
    assert_eq!(again.changes(), 0, "{again:?}");
    let ext_email: String = env
        .erp
        .query_one(
            "SELECT email FROM erp.supplier WHERE supplier_id = $1",
            &[&big],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ext_email.len(),
        312,
        "the external value keeps its full length"
    );
}

#[tokio::test]
async fn oversize_value_with_fail_stops_the_batch() {
    let (env, big, fine, out) = oversize("fail").await;
    let (_, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("comp_emailaddress"), "{stderr}");
    assert!(!crm_has(&env, big).await);
    assert!(
        !crm_has(&env, fine).await,
        "nothing from that batch is applied"
    );
}

#[tokio::test]
async fn check_warns_when_rows_created_in_crm_would_fall_outside_crm_filter() {
    let env = two_way_env(&TwoWay::default()).await;
    let out = env.run_binary(&["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("would not match"), "{stdout}");
    // Without Comp_Type in crm_defaults a new CRM row is no supplier.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("crm_defaults = { Comp_Type = \"Supplier\" }\n", ""),
    )
    .unwrap();
    let out = env.run_binary(&["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("would not match crm_filter") && stdout.contains("crm_defaults"),
        "{stdout}"
    );
}

/// `match_on` both ways in one two-way sync, within each side's filter:
/// a CRM supplier and an ERP supplier of the same name are linked; a name
/// held twice on either side is a reject on both sides, not a guess; an
/// ERP supplier whose only namesake in CRM is a customer (outside the CRM
/// filter) is inserted into CRM, and the customer is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_on_links_within_the_filters_and_never_guesses() {
    let env = two_way_env(&TwoWay {
        entity_extra: r#"match_on = [{ crm = "Comp_Name", external = "name" }]"#,
        ..TwoWay::default()
    })
    .await;
    env.crm
        .batch_execute(&format!(
            "INSERT INTO company (comp_name, comp_type, comp_createdby, comp_createddate, \
                 comp_updatedby, comp_updateddate, comp_timestamp, comp_secterr) \
             SELECT n, t, 1, localtimestamp(3), 1, localtimestamp(3), localtimestamp(3), {} \
             FROM (VALUES ('Alpha', 'Supplier'), ('Beta', 'Supplier'), ('Beta', 'Supplier'), \
                          ('Gamma', 'Customer'), ('Delta', 'Supplier')) AS v(n, t)",
            crate::common::WORLDWIDE
        ))
        .await
        .unwrap();
    env.erp
        .batch_execute(
            "INSERT INTO erp.supplier (name) VALUES ('Alpha'), ('Beta'), ('Gamma'), \
             ('Delta'), ('Delta')",
        )
        .await
        .unwrap();

    let r = env.sync().await;
    assert_eq!((r.adopted, r.crm_inserted, r.inserted), (1, 1, 0), "{r:?}");
    let rejects: Vec<(String, String)> = env
        .erp
        .query(
            "SELECT side, left(reason, 60) FROM crmsync.rejects ORDER BY side, key",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // Beta: two CRM rows and the ERP row; Delta: the CRM row and two ERP rows.
    assert_eq!(r.rejected, 6, "{r:?}\n{rejects:?}");
    let crm_count = |sql: &'static str| {
        let crm = &env.crm;
        async move { crm.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let erp_count = |sql: &'static str| {
        let erp = &env.erp;
        async move { erp.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        crm_count(
            "SELECT count(*) FROM company WHERE comp_name = 'Gamma' AND comp_type = 'Supplier' \
             AND comp_supplierid IS NOT NULL"
        )
        .await,
        1,
        "the ERP's Gamma came into CRM as a supplier"
    );
    assert_eq!(
        crm_count(
            "SELECT count(*) FROM company WHERE comp_name = 'Gamma' AND comp_type = 'Customer' \
             AND comp_supplierid IS NULL"
        )
        .await,
        1,
        "the customer Gamma is not linked"
    );
    let alpha: i64 = erp_count("SELECT supplier_id FROM erp.supplier WHERE name = 'Alpha'").await;
    let alpha_link: Option<String> = env
        .crm
        .query_one(
            "SELECT comp_supplierid::text FROM company WHERE comp_name = 'Alpha'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        alpha_link,
        Some(alpha.to_string()),
        "CRM's Alpha names the ERP's"
    );
    assert_eq!(
        erp_count("SELECT count(*) FROM erp.supplier").await,
        5,
        "nothing copied into the ERP"
    );
    assert_eq!(
        erp_count("SELECT count(*) FROM crmsync.all_links").await,
        2,
        "Alpha and Gamma"
    );
    let again = env.sync().await;
    assert_eq!(again.changes(), 0, "{again:?}");
}

/// Regression: a run that created a CRM row from an external row and died
/// before linking them, and the external row deleted outright before the
/// next run, left the CRM row live and a reject for ever ("the external
/// table has no row with that key"). crmsync made that row (CreatedBy is
/// the sync user): the delete is carried. A row someone else made, naming
/// a key that does not exist, is still a reject.
#[tokio::test]
async fn an_external_delete_reaches_a_crm_row_whose_link_a_crash_lost() {
    let env = two_way_env(&TwoWay::default()).await;
    let x = ext_insert(&env.erp, "Orphan", Some("A"), None).await;
    let first = sync(&env).await;
    assert_eq!(first.crm_inserted, 1, "{first:?}");
    // What a run that died between the CRM insert and the links leaves.
    env.erp
        .batch_execute("DELETE FROM crmsync.links; DELETE FROM crmsync.link_blocks; UPDATE erp.supplier SET crm_company_id = NULL")
        .await
        .unwrap();
    env.erp
        .execute("DELETE FROM erp.supplier WHERE supplier_id = $1", &[&x])
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
    // Someone else's row naming a key the ERP never had.
    let typo = crm_insert(&env.crm, "Typo", None, None).await;
    env.crm
        .execute(
            "UPDATE company SET comp_supplierid = '999999' WHERE comp_companyid = $1",
            &[&typo],
        )
        .await
        .unwrap();
    let run = sync(&env).await;
    assert_eq!(run.crm_deleted, 1, "{run:?}");
    assert_eq!(run.open_rejects, 1, "only the typo: {run:?}");
    let orphan: Option<i16> = env
        .crm
        .query_one(
            "SELECT comp_deleted FROM company WHERE comp_name = 'Orphan'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphan, Some(1));
    let again = sync(&env).await;
    assert_eq!(again.changes(), 0, "{again:?}");
}
