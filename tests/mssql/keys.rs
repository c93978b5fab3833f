//! Bulk loads into an ERP table on SQL Server whose key another default
//! than IDENTITY draws (a `uniqueidentifier` by `NEWID()`, a text code):
//! each backfill chunk, and each sync page of many new rows, goes in by one
//! `MERGE … OUTPUT INSERTED.key, s.place INTO …` that pairs every drawn key
//! with its row ("MERGE (Transact-SQL)": a MERGE's OUTPUT may name the
//! source's columns; "OUTPUT Clause (Transact-SQL)": an INSERT's may not),
//! on a table with a trigger, with the links and the checkpoint in the
//! chunk's transaction.

use super::*;
use std::collections::HashMap;

const IDENTITY: &str = "supplier_id     bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,";

/// The keys under test: a uuid and a text code, each drawn by a default.
const DEFAULT_KEYS: [&str; 2] = [
    "supplier_id uniqueidentifier NOT NULL DEFAULT NEWID() PRIMARY KEY,",
    "supplier_id nvarchar(40) NOT NULL DEFAULT (N'SUP-' + CONVERT(nvarchar(36), NEWID())) PRIMARY KEY,",
];

/// An AFTER INSERT trigger that records each inserted row with the number
/// of rows its statement inserted: 1 for row-by-row inserts, the chunk's
/// size for a set-based one.
const AUDIT_TRIGGER: &str =
    "\nGO\nCREATE TABLE erp.supplier_audit (supplier_id nvarchar(40) NULL, \
    crm_company_id int NULL, statement_rows int NULL)\nGO\n\
    CREATE TRIGGER erp.supplier_audit_insert ON erp.supplier AFTER INSERT AS \
    INSERT INTO erp.supplier_audit (supplier_id, crm_company_id, statement_rows) \
    SELECT CONVERT(nvarchar(40), supplier_id), crm_company_id, (SELECT COUNT(*) FROM inserted) \
    FROM inserted\nGO\n";

/// The ERP of erp_schema_mssql.sql keyed by `key`, with the audit trigger,
/// and crmsync's state in the ERP's database.
async fn erp_keyed_by(key: &str) -> (Server, Tds, crate::common::Env) {
    let (server, erp, env) = erp_on_sql_server_with(|s| {
        assert!(s.contains(IDENTITY), "erp_schema_mssql.sql changed");
        format!(
            "{}{AUDIT_TRIGGER}",
            suppliers_only(s).replace(IDENTITY, key)
        )
    })
    .await;
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("side = \"crm\"", "side = \"external\"");
    std::fs::write(&env.config, config).unwrap();
    (server, erp, env)
}

/// Every live link names an ERP row that carries the link's CRM id and the
/// CRM row's name, no two links name one row, and every ERP row has its
/// link; the number of links.
async fn assert_links_name_their_rows(
    erp: &mut Tds,
    crm: &tokio_postgres::Client,
    what: &str,
) -> usize {
    let links = erp
        .simple_query("SELECT crm_key, external_key FROM crmsync.links WHERE deleted = 0")
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let erp_rows: HashMap<String, (Option<i32>, String)> = erp
        .simple_query(
            "SELECT CONVERT(nvarchar(40), supplier_id), crm_company_id, name FROM erp.supplier",
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.get::<&str, _>(0).unwrap().to_lowercase(),
                (r.get::<i32, _>(1), r.get::<&str, _>(2).unwrap().to_string()),
            )
        })
        .collect();
    let names: HashMap<i32, String> = crm
        .query("SELECT comp_companyid, comp_name FROM company", &[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut named = std::collections::HashSet::new();
    for l in &links {
        let decode =
            |i: usize| crmsync::state::keys::from_bytes(l.get::<&[u8], _>(i).unwrap()).unwrap();
        let (crm_key, external_key) = (decode(0), decode(1).to_lowercase());
        let crm_id: i32 = crm_key.parse().unwrap();
        let Some((carried, name)) = erp_rows.get(&external_key) else {
            panic!("{what}: the link of CRM row {crm_id} names no ERP row ({external_key})");
        };
        assert_eq!(
            (*carried, name.as_str()),
            (Some(crm_id), names[&crm_id].as_str()),
            "{what}: the link of CRM row {crm_id} names ERP row {external_key}"
        );
        assert!(
            named.insert(external_key.clone()),
            "{what}: two links name {external_key}"
        );
    }
    assert_eq!(
        links.len(),
        erp_rows.len(),
        "{what}: an ERP row without its link"
    );
    links.len()
}

/// The smallest and largest statement sizes the trigger saw.
async fn statement_sizes(erp: &mut Tds) -> (Option<i64>, Option<i64>) {
    (
        scalar_i64(erp, "SELECT MIN(statement_rows) FROM erp.supplier_audit").await,
        scalar_i64(erp, "SELECT MAX(statement_rows) FROM erp.supplier_audit").await,
    )
}

/// The ERP keyed by `key` (see `erp_keyed_by`), 450 CRM companies
/// backfilled into it in chunks of 100: every row read and inserted,
/// none refused, and every link naming its row.
async fn backfill_450_into(key: &str) -> (Server, Tds, crate::common::Env) {
    use crate::common::insert_companies;
    let (server, mut erp, env) = erp_keyed_by(key).await;
    insert_companies(&env.crm, 450, "now() - interval '1 hour'", "Supplier").await;
    let r = &backfill_binary(&env.config, &["--chunk-rows", "100"]).await;
    assert_eq!(
        (&r["read"], &r["inserted"], &r["rejected"]),
        (
            &serde_json::json!(450),
            &serde_json::json!(450),
            &serde_json::json!(0)
        ),
        "{key}: {r}"
    );
    assert_eq!(
        assert_links_name_their_rows(&mut erp, &env.crm, key).await,
        450
    );
    (server, erp, env)
}

/// A backfill of 450 CRM rows in chunks of 100 into a table keyed by a
/// uuid or a text code its default draws: five set-based inserts (the
/// trigger sees statements of 100 and 50 rows, never one), every row
/// copied once, every link naming the ERP row that carries its CRM id and
/// name, and nothing left for the next sync.
#[tokio::test]
async fn backfill_into_a_default_keyed_table_pairs_every_key_with_its_row() {
    for key in DEFAULT_KEYS {
        let (_server, mut erp, env) = backfill_450_into(key).await;
        assert_eq!(
            scalar_i64(
                &mut erp,
                "SELECT COUNT(DISTINCT crm_company_id) FROM erp.supplier_audit"
            )
            .await,
            Some(450),
            "{key}: the trigger ran for every row"
        );
        assert_eq!(
            statement_sizes(&mut erp).await,
            (Some(50), Some(100)),
            "{key}: one insert per chunk"
        );
        if key.contains("SUP-") {
            assert_eq!(
                scalar_i64(
                    &mut erp,
                    "SELECT COUNT(*) FROM erp.supplier WHERE supplier_id NOT LIKE N'SUP-%'"
                )
                .await,
                Some(0),
                "the default drew every code"
            );
        }
        assert_eq!(crate::two_way::sync(&env).await.changes(), 0, "{key}");
    }
}

/// SIGKILL in the middle of a backfill into a default-keyed table, then a
/// rerun: every chunk that committed did so with its links and checkpoint
/// (as many links as rows at the kill), the rerun resumes after the
/// checkpoint, and every CRM row ends up in the ERP exactly once, named by
/// its link.
#[tokio::test]
async fn killed_backfill_into_a_default_keyed_table_resumes_with_one_copy_each() {
    use crate::common::insert_companies;
    for key in DEFAULT_KEYS {
        let (_server, mut erp, env) = erp_keyed_by(key).await;
        insert_companies(&env.crm, 1_500, "now() - interval '1 hour'", "Supplier").await;
        super::kill_backfill_mid_way(&env.config, &mut erp, key).await;
        let copied = assert_links_name_their_rows(&mut erp, &env.crm, key).await;
        assert!(copied < 1_500, "{key}: killed in the middle: {copied} rows");

        let r = &backfill_binary(&env.config, &["--chunk-rows", "100"]).await;
        assert_eq!(r["resumed"], serde_json::json!(true), "{key}: {r}");
        let done_before = r["rows_done_before"].as_u64().unwrap();
        assert_eq!(done_before as usize, copied, "{key}: {r}");
        assert_eq!(
            r["read"].as_u64().unwrap(),
            1_500 - done_before,
            "{key}: {r}"
        );
        assert_eq!(
            assert_links_name_their_rows(&mut erp, &env.crm, key).await,
            1_500
        );
        assert_eq!(
            scalar_i64(
                &mut erp,
                "SELECT COUNT(DISTINCT crm_company_id) FROM erp.supplier"
            )
            .await,
            Some(1_500),
            "{key}: one ERP row per CRM row"
        );
        // The killed chunk's trigger rows went with its rollback.
        assert_eq!(
            statement_sizes(&mut erp).await,
            (Some(100), Some(100)),
            "{key}: one insert per chunk"
        );
        assert_eq!(crate::two_way::sync(&env).await.changes(), 0, "{key}");
    }
}

/// A sync page of 60 new CRM rows into a default-keyed table goes in by
/// one set-based insert (the trigger sees one statement of 60 rows), and
/// each new row's link names it.
#[tokio::test]
async fn a_sync_page_of_new_rows_into_a_default_keyed_table_is_one_insert() {
    use crate::common::insert_companies;
    for key in DEFAULT_KEYS {
        let (_server, mut erp, env) = erp_keyed_by(key).await;
        insert_companies(&env.crm, 60, "now() - interval '1 minute'", "Supplier").await;
        let r = crate::two_way::sync(&env).await;
        assert_eq!((r.inserted, r.rejected), (60, 0), "{key}: {r:?}");
        assert_eq!(
            assert_links_name_their_rows(&mut erp, &env.crm, key).await,
            60
        );
        assert_eq!(
            statement_sizes(&mut erp).await,
            (Some(60), Some(60)),
            "{key}: one insert for the page"
        );
        assert_eq!(crate::two_way::sync(&env).await.changes(), 0, "{key}");
    }
}

/// A backfill into an IDENTITY-keyed table with the state beside it
/// writes the links from the staging table in SQL, each key encoded by
/// SQL Server itself: keys that cross each byte length the stored form
/// counts (255 to 256, 65,535 to 65,536, 2^32), a descending IDENTITY,
/// and one that passes zero into negative keys (those links are loaded
/// as the client encodes them) all name their rows.
#[tokio::test]
async fn backfill_into_an_identity_table_links_every_key_it_drew() {
    for key in [
        "supplier_id bigint IDENTITY(100,1) NOT NULL PRIMARY KEY,",
        "supplier_id int IDENTITY(65300,1) NOT NULL PRIMARY KEY,",
        "supplier_id bigint IDENTITY(4294967100,1) NOT NULL PRIMARY KEY,",
        "supplier_id int IDENTITY(1000,-1) NOT NULL PRIMARY KEY,",
        "supplier_id bigint IDENTITY(150,-1) NOT NULL PRIMARY KEY,",
    ] {
        let (_server, _erp, env) = backfill_450_into(key).await;
        assert_eq!(crate::two_way::sync(&env).await.changes(), 0, "{key}");
    }
}

/// Rows SQL Server refuses in a bulk-loaded chunk (a CHECK constraint,
/// error 547) are set aside as rejects naming them: the refused chunk goes
/// through the sync's writes, the other chunks in bulk, and every other
/// row is copied and linked.
#[tokio::test]
async fn rows_sql_server_refuses_in_a_bulk_chunk_are_set_aside() {
    use crate::common::insert_companies;
    // CRM ids are drawn from 1 in a fresh database: rows 121 and 334 are
    // in the second and fourth chunks of 100.
    let refused = [121, 334];
    let key = format!(
        "{IDENTITY}\n    CONSTRAINT no_such_id CHECK (crm_company_id NOT IN ({}, {})),",
        refused[0], refused[1]
    );
    let (_server, mut erp, env) = erp_keyed_by(&key).await;
    insert_companies(&env.crm, 450, "now() - interval '1 hour'", "Supplier").await;
    for id in refused {
        let n: i64 = env
            .crm
            .query_one(
                "SELECT count(*) FROM company WHERE comp_companyid = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "CRM row {id}");
    }
    let report = env.config.with_file_name("refused.json");
    let config = env.config.clone();
    let report_arg = report.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_binary(
            &config,
            &["--report", &report_arg, "backfill", "--chunk-rows", "100"],
            &[],
        )
    })
    .await
    .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let r = &json["backfill"][0];
    assert_eq!(
        (&r["read"], &r["inserted"], &r["rejected"]),
        (
            &serde_json::json!(450),
            &serde_json::json!(448),
            &serde_json::json!(2)
        ),
        "{r}"
    );
    assert_eq!(
        assert_links_name_their_rows(&mut erp, &env.crm, "refused rows").await,
        448
    );
    let mut rejected: Vec<String> = erp
        .simple_query("SELECT [key] FROM crmsync.rejects WHERE resolved_at IS NULL")
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<&str, _>(0).unwrap().to_string())
        .collect();
    rejected.sort();
    let mut expected: Vec<String> = refused.iter().map(i32::to_string).collect();
    expected.sort();
    assert_eq!(rejected, expected);
}
