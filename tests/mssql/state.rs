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

    assert_status_shows(&env.config, 5).await;

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

/// The binary with `args` and `config`, off the test's runtime (the
/// stand-in serves from it).
async fn binary_beside(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_binary(&config, &args, &[])
    })
    .await
    .unwrap()
}

/// `status` reads the state where it lives: the watermarks, the links
/// and the last runs.
async fn assert_status_shows(config: &std::path::Path, links: i64) {
    let out = binary_beside(config, &["status"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("supplier crm: "), "{stdout}");
    assert!(stdout.contains("supplier external: "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "supplier: {links} links, 0 open rejects, 0 open conflicts"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("supplier sync: started"), "{stdout}");
    assert!(!stdout.contains("did not finish"), "{stdout}");
    // The run history and the metrics file read the same store.
    let out = binary_beside(config, &["runs", "--last", "2"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains("supplier")).count(),
        2,
        "{stdout}"
    );
    let metrics = config.with_file_name("crmsync.prom");
    let out = binary_beside(
        config,
        &["sync", "--metrics-file", metrics.to_str().unwrap()],
    )
    .await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("crmsync_last_success_timestamp_seconds{entity=\"supplier\"}")),
        "{prom}"
    );
}

/// The Sage CRM on PostgreSQL, the ERP on SQL Server holding the state
/// (`[state] side = "external"`): inserts both ways, a change each way,
/// quiet runs, deletes both ways (the ERP's hard delete found by comparing
/// the links with the ERP table), `status`, `verify`, and a rerun after a
/// crash that lost the links and watermarks.
#[tokio::test]
async fn state_on_the_erp_side_on_sql_server_syncs_both_ways() {
    use crate::two_way::{crm_insert, crm_set, sync};
    let (_server, mut erp, env) = erp_on_sql_server().await;
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("side = \"crm\"", "side = \"external\"")
        .replace(
            "direction = \"both\"",
            "direction = \"both\"\nmax_delete_ratio = 1.0",
        );
    assert!(config.contains("side = \"external\""));
    std::fs::write(&env.config, config).unwrap();
    // Before the first run there is no state schema: status says so.
    let out = binary_beside(&env.config, &["status"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("no runs yet"), "{stdout}");
    // `plan` reads a state that is not there yet as empty, and creates
    // nothing.
    let out = binary_beside(&env.config, &["plan"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        count_where(&mut erp, "sys.schemas", "name = 'crmsync'").await,
        0,
        "plan wrote nothing"
    );

    let mut crm_ids = Vec::new();
    for name in ["Alpha", "Bravo", "Charlie"] {
        crm_ids.push(crm_insert(&env.crm, name, Some("Active"), None).await);
    }
    exec(
        &mut erp,
        "INSERT INTO erp.supplier (name, status, kind) VALUES (N'Delta', N'A', N'S'), \
         (N'Echo', N'A', N'S')",
    )
    .await;
    let first = sync(&env).await;
    assert_eq!((first.inserted, first.crm_inserted), (3, 2), "{first:?}");
    assert_eq!(first.rejected, 0, "{first:?}");
    assert_eq!(
        count_where(&mut erp, "crmsync.links", "deleted = 0").await,
        5,
        "the links live on SQL Server"
    );
    assert!(!pg_has_state(&env.crm).await, "nothing of crmsync's in CRM");
    for _ in 0..2 {
        let quiet = sync(&env).await;
        assert_eq!(quiet.changes(), 0, "{quiet:?}");
    }

    // A change each way.
    crm_set(
        &env.crm,
        crm_ids[0],
        "comp_website",
        Some("https://alpha.example"),
    )
    .await;
    exec(
        &mut erp,
        "UPDATE erp.supplier SET phone = N'+1 555 0100', updated_at = SYSDATETIME() \
         WHERE name = N'Delta'",
    )
    .await;
    let changed = sync(&env).await;
    assert_eq!(
        (changed.updated, changed.crm_updated),
        (1, 1),
        "{changed:?}"
    );
    assert_eq!(sync(&env).await.changes(), 0);

    // Deletes: the ERP deletes Echo for real; CRM soft-deletes Bravo.
    exec(&mut erp, "DELETE FROM erp.supplier WHERE name = N'Echo'").await;
    env.crm
        .execute(
            "UPDATE company SET comp_deleted = 1, comp_updateddate = localtimestamp(3), \
             comp_timestamp = localtimestamp(3) WHERE comp_companyid = $1",
            &[&crm_ids[1]],
        )
        .await
        .unwrap();
    let deleted = sync(&env).await;
    assert_eq!(
        (deleted.deleted, deleted.crm_deleted),
        (1, 1),
        "{deleted:?}"
    );
    assert!(deleted.hard_delete_check, "{deleted:?}");
    let echo: Option<i16> = env
        .crm
        .query_one(
            "SELECT comp_deleted FROM company WHERE comp_name = 'Echo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(echo, Some(1));
    assert_eq!(
        count_where(
            &mut erp,
            "erp.supplier",
            "name = N'Bravo' AND is_deleted = 0"
        )
        .await,
        0
    );
    // With no row deleted since, a run does not compare every link: SQL
    // Server's statistics say so.
    let quiet = sync(&env).await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
    assert!(!quiet.hard_delete_check, "{quiet:?}");
    assert_status_shows(&env.config, 3).await;
    let out = binary_beside(&env.config, &["verify"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");

    // A crash that lost the links and the watermarks: every pair is found
    // again by the keys both sides hold, nothing is inserted twice.
    let erp_rows = count_where(&mut erp, "erp.supplier", "1 = 1").await;
    exec(
        &mut erp,
        "DELETE FROM crmsync.links; DELETE FROM crmsync.watermarks",
    )
    .await;
    let rerun = sync(&env).await;
    assert_eq!((rerun.inserted, rerun.crm_inserted), (0, 0), "{rerun:?}");
    assert_eq!(
        count_where(&mut erp, "erp.supplier", "1 = 1").await,
        erp_rows
    );
    assert_eq!(crate::common::count(&env.crm, "company").await, 5);
    assert_eq!(
        count_where(&mut erp, "crmsync.links", "deleted = 0").await,
        3
    );
    assert_eq!(sync(&env).await.changes(), 0);
}

/// A second run of the same entity while another holds the run lock (an
/// application lock on the SQL Server holding the state) exits 1 with the
/// message a PostgreSQL state store gives, and writes nothing; once the
/// lock is free, the same command works.
#[tokio::test]
async fn second_run_exits_1_while_the_sql_server_run_lock_is_held() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, TWO_WAY, "", "crm");
    env.insert_companies(&[("Initech".into(), "2024-05-01 08:00:00.003".into())])
        .await;
    // The state schema first (a run creates it), then the lock as a run
    // holds it: on a session of its own.
    assert_eq!(env.sync().await.inserted, 1);
    env.insert_companies(&[("Globex".into(), "2024-05-01 08:00:01.003".into())])
        .await;
    let mut holder = env.server.client().await;
    let got = scalar_i64(
        &mut holder,
        "DECLARE @r int; EXEC @r = sp_getapplock @Resource = N'crmsync:crmsync:supplier', \
         @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; SELECT @r",
    )
    .await;
    assert_eq!(got, Some(0));
    let out = run_binary_beside(&env, "sync").await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("another crmsync run"), "{stderr}");
    assert!(stderr.contains("supplier"), "{stderr}");
    assert_eq!(
        crate::common::count(&env.erp, "erp.supplier").await,
        1,
        "the second run wrote rows"
    );
    drop(holder);
    let mut done = None;
    for _ in 0..50 {
        let out = run_binary_beside(&env, "sync").await;
        if out.status.code() == Some(0) {
            done = Some(out);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(done.is_some(), "the lock went with its session");
    assert_eq!(crate::common::count(&env.erp, "erp.supplier").await, 2);
}

/// Two runs of the engine at once, each taking the lock: one gets it,
/// the other is told the entity is busy.
#[tokio::test]
async fn the_run_lock_on_sql_server_admits_one_run() {
    let env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, TWO_WAY, "", "crm");
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    engine.state.migrate().await.unwrap();
    let first = engine.state.lock("supplier").await.unwrap();
    assert!(first.is_some());
    assert!(engine.state.lock("supplier").await.unwrap().is_none());
    // Another entity's lock is another resource.
    let other = engine.state.lock("contact").await.unwrap();
    assert!(other.is_some());
    first.unwrap().release().await;
    let again = engine.state.lock("supplier").await.unwrap();
    assert!(again.is_some(), "released at once");
}

/// A CRM → ERP backfill into SQL Server with the state there too: every
/// chunk commits its rows and their links together, so a SIGKILL leaves
/// exactly as many links as copied rows; the rerun resumes after the last
/// checkpoint and every CRM row ends up in the ERP once, linked.
#[tokio::test]
async fn killed_backfill_into_sql_server_with_the_state_there_resumes() {
    use crate::common::insert_companies;
    let (_server, mut erp, env) = erp_on_sql_server().await;
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("side = \"crm\"", "side = \"external\"");
    std::fs::write(&env.config, config).unwrap();
    insert_companies(&env.crm, 1_500, "now() - interval '1 hour'", "Supplier").await;
    super::kill_backfill_mid_way(&env.config, &mut erp, "state on the ERP").await;
    let rows = count_where(&mut erp, "erp.supplier", "1 = 1").await;
    assert!(rows < 1_500, "killed in the middle: {rows} rows");
    assert_eq!(
        count_where(&mut erp, "crmsync.links", "1 = 1").await,
        rows,
        "every copied row has its link, and no link its row missing"
    );

    let r = &backfill_binary(&env.config, &["--chunk-rows", "100"]).await;
    assert_eq!(r["resumed"], serde_json::json!(true), "{r}");
    let done_before = r["rows_done_before"].as_u64().unwrap();
    assert!(done_before >= 100, "{r}");
    assert_eq!(r["read"].as_u64().unwrap(), 1_500 - done_before, "{r}");
    assert_eq!(count_where(&mut erp, "erp.supplier", "1 = 1").await, 1_500);
    assert_eq!(
        scalar_i64(
            &mut erp,
            "SELECT COUNT(DISTINCT crm_company_id) FROM erp.supplier"
        )
        .await,
        Some(1_500),
        "one ERP row per CRM row"
    );
    assert_eq!(
        count_where(&mut erp, "crmsync.links", "deleted = 0").await,
        1_500
    );
    assert!(!pg_has_state(&env.crm).await);
    assert_eq!(crate::two_way::sync(&env).await.changes(), 0);
}

/// The hard-delete comparison with the state on SQL Server finds exactly
/// the links whose row is gone, for keys of every kind: integers of every
/// length and sign, in `bigint` and `int` columns (compared in the
/// database), uuids and text (compared in their canonical text: a key
/// differing only in case is another key, whatever the collation).
#[tokio::test]
async fn links_gone_from_finds_exactly_the_missing_keys_on_sql_server() {
    use crmsync::state::{LinkBatch, LinkWrite};
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, TWO_WAY, "", "crm");
    exec(
        &mut env.crm,
        "CREATE TABLE dbo.k_big (id bigint NOT NULL PRIMARY KEY); \
         CREATE TABLE dbo.k_int (id int NOT NULL PRIMARY KEY); \
         CREATE TABLE dbo.k_uuid (id uniqueidentifier NOT NULL PRIMARY KEY); \
         CREATE TABLE dbo.k_text (id nvarchar(40) NOT NULL PRIMARY KEY)",
    )
    .await;
    let big_present: Vec<i64> = vec![
        0,
        1,
        -1,
        7,
        255,
        256,
        -255,
        -256,
        65_535,
        65_536,
        -65_536,
        i64::from(i32::MAX),
        i64::from(i32::MIN),
        1 << 40,
        -(1 << 40),
        (1 << 56) - 1,
        -(1 << 56),
        i64::MAX,
        i64::MIN,
    ];
    let big_missing: Vec<i64> = vec![2, -2, 300, -300, (1 << 40) + 1, i64::MAX - 1, i64::MIN + 1];
    let int_present: Vec<i64> = vec![0, 1, -1, i64::from(i32::MAX), i64::from(i32::MIN)];
    let int_missing: Vec<i64> = vec![5, -5];
    let u1 = "550e8400-e29b-41d4-a716-446655440000";
    let u2 = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
    let u_missing = "00000000-0000-0000-0000-000000000001";
    let text_present = ["A", "a b", "é", "SUP-0001"];
    let text_missing = ["B", "a", "É", "SUP-0002"];
    let list = |v: &[i64]| {
        v.iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join("), (")
    };
    exec(
        &mut env.crm,
        &format!("INSERT INTO dbo.k_big VALUES ({})", list(&big_present)),
    )
    .await;
    exec(
        &mut env.crm,
        &format!("INSERT INTO dbo.k_int VALUES ({})", list(&int_present)),
    )
    .await;
    exec(
        &mut env.crm,
        &format!(
            "INSERT INTO dbo.k_uuid VALUES ('{u1}'), ('{}')",
            u2.to_uppercase()
        ),
    )
    .await;
    let texts: Vec<String> = text_present.iter().map(|t| format!("N'{t}'")).collect();
    exec(
        &mut env.crm,
        &format!("INSERT INTO dbo.k_text VALUES ({})", texts.join("), (")),
    )
    .await;

    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    engine.state.migrate().await.unwrap();
    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "k_big",
            big_present.iter().map(i64::to_string).collect(),
            big_missing.iter().map(i64::to_string).collect(),
        ),
        (
            "k_int",
            int_present.iter().map(i64::to_string).collect(),
            int_missing.iter().map(i64::to_string).collect(),
        ),
        (
            "k_uuid",
            vec![u1.to_string(), u2.to_string()],
            vec![u_missing.to_string()],
        ),
        (
            "k_text",
            text_present.iter().map(|t| t.to_string()).collect(),
            text_missing.iter().map(|t| t.to_string()).collect(),
        ),
    ];
    for (table, present, missing) in cases {
        let links: Vec<LinkWrite> = present
            .iter()
            .chain(&missing)
            .enumerate()
            .map(|(i, k)| LinkWrite::pair(&i.to_string(), k, vec![0], false))
            .collect();
        let all = links.len() as u64;
        engine
            .state
            .write_links(&LinkBatch {
                schema: "crmsync".into(),
                entity: table.into(),
                links,
            })
            .await
            .unwrap();
        let info = engine
            .endpoints
            .crm
            .table(Some("dbo"), table)
            .await
            .unwrap()
            .unwrap();
        let found = engine
            .state
            .links_gone_from(table, &info, "id")
            .await
            .unwrap();
        let mut gone: Vec<String> = found.gone.into_iter().map(|(_, x)| x).collect();
        gone.sort();
        let mut want = missing.clone();
        want.sort();
        assert_eq!(gone, want, "{table}");
        assert_eq!(found.live, all, "{table}");
    }
}

/// A conflict with the state on SQL Server (`conflict = "manual"`): logged
/// there, listed by `conflicts list`, resolved by `conflicts resolve`, and
/// the next run writes nothing.
#[tokio::test]
async fn conflicts_are_logged_listed_and_resolved_on_sql_server() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, &format!("{TWO_WAY}\nconflict = \"manual\""), "", "crm");
    env.insert_companies(&[("Acme".into(), "2024-05-01 08:00:00.003".into())])
        .await;
    assert_eq!(env.sync().await.inserted, 1);
    exec(
        &mut env.crm,
        "UPDATE dbo.Company SET Comp_Name = N'Acme CRM', Comp_UpdatedDate = GETDATE(), \
         Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId = 1",
    )
    .await;
    env.erp
        .execute(
            "UPDATE erp.supplier SET name = 'Acme ERP', updated_at = now() \
             WHERE crm_company_id = 1",
            &[],
        )
        .await
        .unwrap();
    let clash = env.sync().await;
    assert_eq!((clash.conflicts, clash.open_conflicts), (1, 1), "{clash:?}");
    assert_eq!(
        count_where(&mut env.crm, "crmsync.conflicts", "resolved_at IS NULL").await,
        1
    );
    let out = binary_beside(&env.config, &["conflicts", "list"]).await;
    let (stdout, stderr) = output_text(&out);
    assert!(
        stdout.contains("Acme CRM") && stdout.contains("Acme ERP"),
        "{stdout}\n{stderr}"
    );
    let id = scalar_i64(
        &mut env.crm,
        "SELECT MAX(conflict_id) FROM crmsync.conflicts",
    )
    .await
    .unwrap();
    let out = binary_beside(
        &env.config,
        &["conflicts", "resolve", &id.to_string(), "--take", "crm"],
    )
    .await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let name: String = env
        .erp
        .query_one(
            "SELECT name FROM erp.supplier WHERE crm_company_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Acme CRM");
    let after = env.sync().await;
    assert_eq!((after.changes(), after.open_conflicts), (0, 0), "{after:?}");
}

/// A site on SQL Server alone: the Sage CRM and the ERP each on a SQL
/// Server of its own, and the config between them.
struct AllSqlServer {
    _crm_server: Server,
    _erp_server: Server,
    crm: Tds,
    erp: Tds,
    /// Where the state lives.
    state: Tds,
    _dir: TempDir,
    config: PathBuf,
}

impl AllSqlServer {
    async fn new(state_side: &str, batch_size: usize) -> AllSqlServer {
        let crm_server = Server::start().await;
        let erp_server = Server::start().await;
        let mut crm = crm_server.client().await;
        for batch in go_batches(CRM_SCHEMA) {
            exec(&mut crm, &batch).await;
        }
        let mut erp = erp_server.client().await;
        for batch in go_batches(ERP_SCHEMA_MSSQL) {
            exec(&mut erp, &batch).await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crm.pw"), &crm_server.password).unwrap();
        std::fs::write(dir.path().join("erp.pw"), &erp_server.password).unwrap();
        let url = |s: &Server| format!("mssql://{}@{}:{}/{}", s.user, s.host, s.port, s.database);
        let config = dir.path().join("crmsync.toml");
        std::fs::write(
            &config,
            format!(
                r#"[crm]
url = "{crm}"
password_file = "crm.pw"
user_id = 1
timezone = "UTC"
tls = "{crm_tls}"

[external]
url = "{erp}"
password_file = "erp.pw"
timezone = "UTC"
tls = "{erp_tls}"

[state]
side = "{state_side}"

[defaults]
batch_size = {batch_size}
settle = "0s"
overlap = "5m"

[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
crm_filter = "Comp_Type = 'Supplier'"
crm_defaults = {{ Comp_Type = "Supplier" }}
secterr = {WORLDWIDE}
direction = "both"
insert_into_crm = true
delete_into_crm = "soft"
max_delete_ratio = 1.0
{entity}"#,
                crm = url(&crm_server),
                crm_tls = crm_server.tls(),
                erp = url(&erp_server),
                erp_tls = erp_server.tls(),
                entity = crate::common::supplier_entity(""),
            ),
        )
        .unwrap();
        let state = match state_side {
            "crm" => crm_server.client().await,
            _ => erp_server.client().await,
        };
        AllSqlServer {
            _crm_server: crm_server,
            _erp_server: erp_server,
            crm,
            erp,
            state,
            _dir: dir,
            config,
        }
    }

    /// `n` Sage-style suppliers in CRM, `Crm 0` … .
    async fn crm_suppliers(&mut self, n: usize) {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "(N'Crm {i}', N'Supplier', N'Active', 1, DATEADD(hour, -1, GETDATE()), 1, \
                     DATEADD(hour, -1, GETDATE()), DATEADD(hour, -1, GETDATE()), {WORLDWIDE})"
                )
            })
            .collect();
        for chunk in rows.chunks(500) {
            exec(
                &mut self.crm,
                &format!(
                    "INSERT INTO dbo.Company (Comp_Name, Comp_Type, Comp_Status, Comp_CreatedBy, \
                     Comp_CreatedDate, Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, \
                     Comp_SecTerr) VALUES {}",
                    chunk.join(", ")
                ),
            )
            .await;
        }
    }

    /// `n` suppliers in the ERP, `Erp 0` … .
    async fn erp_suppliers(&mut self, n: usize) {
        let rows: Vec<String> = (0..n)
            .map(|i| format!("(N'Erp {i}', N'A', N'S', DATEADD(hour, -1, SYSDATETIME()))"))
            .collect();
        for chunk in rows.chunks(500) {
            exec(
                &mut self.erp,
                &format!(
                    "INSERT INTO erp.supplier (name, status, kind, updated_at) VALUES {}",
                    chunk.join(", ")
                ),
            )
            .await;
        }
    }

    async fn sync(&self) -> EntityReport {
        let plan = crmsync::cli::load_plan(&self.config).expect("the test config is valid");
        let engine = Engine::connect(plan).await.expect("connect");
        engine
            .sync(None, Mode::Apply)
            .await
            .expect("sync")
            .remove(0)
    }
}

/// A site on SQL Server alone, the state on `state_side`: 2,000 CRM and
/// 300 ERP suppliers synced both ways, the first run killed (SIGKILL) in
/// the middle, a second run refused while a run holds the lock, the rerun
/// converging without a duplicate, ERP rows in CRM by Sage's rules, quiet
/// runs writing nothing, and `verify` finding both sides in step.
async fn all_on_sql_server(state_side: &str) {
    let mut site = AllSqlServer::new(state_side, 50).await;
    site.crm_suppliers(2_000).await;
    site.erp_suppliers(300).await;
    let mut child = crate::common::binary(&site.config, &["sync"], &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let n = count_where(&mut site.erp, "erp.supplier", "crm_company_id IS NOT NULL").await;
        if n >= 400 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sync ended before it was killed"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(120));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    let copied = count_where(&mut site.erp, "erp.supplier", "crm_company_id IS NOT NULL").await;
    assert!(copied < 2_000, "killed in the middle: {copied} rows");

    // A run holding the lock: a second one exits 1 and writes nothing.
    let got = scalar_i64(
        &mut site.state,
        "DECLARE @r int; EXEC @r = sp_getapplock @Resource = N'crmsync:crmsync:supplier', \
         @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 10000; SELECT @r",
    )
    .await;
    assert!(matches!(got, Some(0 | 1)), "{got:?}");
    let out = binary_beside(&site.config, &["sync"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("another crmsync run"), "{stderr}");
    exec(
        &mut site.state,
        "EXEC sp_releaseapplock @Resource = N'crmsync:crmsync:supplier', @LockOwner = 'Session'",
    )
    .await;

    let rerun = site.sync().await;
    assert_eq!(rerun.rejected, 0, "{rerun:?}");
    assert_eq!(rerun.crm_inserted, 300, "{rerun:?}");
    assert_eq!(
        count_where(&mut site.erp, "erp.supplier", "1 = 1").await,
        2_300
    );
    assert_eq!(
        scalar_i64(
            &mut site.erp,
            "SELECT COUNT(DISTINCT crm_company_id) FROM erp.supplier"
        )
        .await,
        Some(2_300),
        "one ERP row per CRM row"
    );
    assert_eq!(
        count_where(&mut site.crm, "dbo.Company", "1 = 1").await,
        2_300
    );
    assert_eq!(
        count_where(
            &mut site.crm,
            "dbo.Company",
            &format!(
                "Comp_Name LIKE N'Erp %' AND Comp_CreatedBy = 1 AND Comp_UpdatedBy = 1 \
                 AND Comp_SecTerr = {WORLDWIDE} AND Comp_Deleted IS NULL \
                 AND Comp_Type = N'Supplier' AND comp_supplierid IS NOT NULL \
                 AND Comp_CreatedDate = Comp_UpdatedDate AND Comp_TimeStamp IS NOT NULL"
            )
        )
        .await,
        300,
        "ERP rows land in CRM by Sage's rules"
    );
    assert_eq!(
        count_where(&mut site.state, "crmsync.links", "deleted = 0").await,
        2_300
    );
    for _ in 0..2 {
        let quiet = site.sync().await;
        assert_eq!(quiet.changes(), 0, "{quiet:?}");
    }
    let out = binary_beside(&site.config, &["verify"]).await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("0 differ"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_on_sql_server_with_the_state_on_the_erp() {
    all_on_sql_server("external").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_on_sql_server_with_the_state_on_the_crm() {
    all_on_sql_server("crm").await;
}

/// Two processes creating the state schema at once: the application lock
/// lets one build it and the other find it built; a schema newer than this
/// crmsync is refused with a message that says so.
#[tokio::test]
async fn the_state_schema_is_created_once_under_its_lock() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, TWO_WAY, "", "crm");
    let connect = || async {
        let plan = crmsync::cli::load_plan(&env.config).unwrap();
        Engine::connect(plan).await.unwrap()
    };
    let (a, b) = (connect().await, connect().await);
    let (ra, rb) = tokio::join!(a.state.migrate(), b.state.migrate());
    ra.unwrap();
    rb.unwrap();
    assert_eq!(
        scalar_i64(&mut env.crm, "SELECT version FROM crmsync.schema_version").await,
        Some(i64::from(crmsync::state::SCHEMA_VERSION))
    );
    assert_eq!(
        count_where(&mut env.crm, "crmsync.schema_version", "1 = 1").await,
        1
    );
    a.state.migrate().await.unwrap();
    exec(
        &mut env.crm,
        "UPDATE crmsync.schema_version SET version = 99",
    )
    .await;
    let err = a.state.migrate().await.unwrap_err().to_string();
    assert!(
        err.contains("version 99") && err.contains("upgrade crmsync"),
        "{err}"
    );
}

/// A bulk backfill into an ERP table on SQL Server with a trigger and the
/// state there: every CRM row lands once, in one set-based insert per
/// chunk that fires the trigger for each row (an `OUTPUT` without `INTO`
/// would be refused, error 334), with its link committed beside it; the
/// next sync has nothing to do. Keyed by an IDENTITY (keys paired by
/// order) and by a uuid default (keys paired with rows by a MERGE's
/// OUTPUT; see `keys`).
#[tokio::test]
async fn bulk_backfill_into_a_triggered_table_with_the_state_there() {
    use crate::common::insert_companies;
    let identity = "supplier_id     bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,";
    let trigger = "\nGO\nCREATE TABLE erp.supplier_audit (crm_company_id int NULL)\nGO\n\
        CREATE TRIGGER erp.supplier_audit_insert ON erp.supplier AFTER INSERT AS \
        INSERT INTO erp.supplier_audit (crm_company_id) SELECT crm_company_id FROM inserted\nGO\n";
    for key in [
        identity,
        "supplier_id uniqueidentifier NOT NULL DEFAULT NEWID() PRIMARY KEY,",
    ] {
        let (_server, mut erp, env) = super::erp_on_sql_server_with(|s| {
            assert!(s.contains(identity), "erp_schema_mssql.sql changed");
            format!(
                "{}{trigger}",
                super::suppliers_only(s).replace(identity, key)
            )
        })
        .await;
        let config = std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("side = \"crm\"", "side = \"external\"");
        std::fs::write(&env.config, config).unwrap();
        insert_companies(&env.crm, 700, "now() - interval '1 hour'", "Supplier").await;
        let r = &backfill_binary(&env.config, &["--chunk-rows", "300"]).await;
        assert_eq!(
            (&r["read"], &r["inserted"], &r["rejected"]),
            (
                &serde_json::json!(700),
                &serde_json::json!(700),
                &serde_json::json!(0)
            ),
            "{key}: {r}"
        );
        assert_eq!(
            scalar_i64(
                &mut erp,
                "SELECT COUNT(DISTINCT s.crm_company_id) FROM erp.supplier s \
                 JOIN erp.supplier_audit a ON a.crm_company_id = s.crm_company_id"
            )
            .await,
            Some(700),
            "{key}: every CRM row once, the trigger run for each"
        );
        assert_eq!(
            count_where(&mut erp, "erp.supplier_audit", "1 = 1").await,
            700,
            "{key}"
        );
        assert_eq!(
            count_where(&mut erp, "crmsync.links", "deleted = 0").await,
            700,
            "{key}"
        );
        assert_eq!(crate::two_way::sync(&env).await.changes(), 0, "{key}");
    }
}
