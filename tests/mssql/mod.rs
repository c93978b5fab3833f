//! Sage CRM on SQL Server: sql/mssql/crm_schema.sql loaded through the
//! SQL Server stand-in (or the real server named by
//! CRMSYNC_TEST_MSSQL_URL), synced with an ERP on PostgreSQL.

use crate::common::{external_suppliers, output_text, run_binary, SUPPLIER_FIELDS, WORLDWIDE};
use crmsync::engine::{BackfillDirection, BackfillOptions, Engine, EntityReport, Mode};
use crmsync::value::Value;
use mssql_standin::StandIn;
use std::path::PathBuf;
use tempfile::TempDir;
use tiberius::{AuthMethod, Client, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

const CRM_SCHEMA: &str = include_str!("../../sql/mssql/crm_schema.sql");
const ERP_SCHEMA: &str = include_str!("../../sql/examples/erp_schema.sql");
const STANDIN_USER: &str = "sa";
const STANDIN_PASSWORD: &str = "Str0ng!Passw0rd";

type Tds = Client<Compat<TcpStream>>;

/// Where the CRM database lives: a stand-in started for the test, or a
/// database created for the test on the real server of
/// CRMSYNC_TEST_MSSQL_URL (`mssql://user:password@host:port/database`).
struct Server {
    _standin: Option<StandIn>,
    /// The PostgreSQL database behind the stand-in (none on a real server).
    backing_url: Option<String>,
    /// The server offers TLS (a real server always does).
    offers_tls: bool,
    user: String,
    password: String,
    host: String,
    port: u16,
    database: String,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(false).await
    }

    /// `standin_tls`: the stand-in offers TLS (a self-signed certificate).
    async fn start_with(standin_tls: bool) -> Server {
        Server::start_in(standin_tls, "UTC").await
    }

    /// A stand-in whose `GETDATE()` is the local time of `zone`, as on a
    /// SQL Server machine set to that zone (a real server keeps its own).
    async fn start_in(standin_tls: bool, zone: &str) -> Server {
        match std::env::var("CRMSYNC_TEST_MSSQL_URL") {
            Ok(url) => Server::real(&url).await,
            Err(_) => {
                let pg_url = testkit::fresh_database("crmmssql").await;
                let standin = mssql_standin::start(
                    mssql_standin::Config {
                        pg_url: pg_url.clone(),
                        user: STANDIN_USER.into(),
                        password: STANDIN_PASSWORD.into(),
                        timezone: zone.into(),
                        tls: standin_tls,
                    },
                    "127.0.0.1:0".parse().unwrap(),
                )
                .await
                .expect("start the SQL Server stand-in");
                Server {
                    offers_tls: standin_tls,
                    user: STANDIN_USER.into(),
                    password: STANDIN_PASSWORD.into(),
                    host: "127.0.0.1".into(),
                    port: standin.port(),
                    database: "CRM".into(),
                    _standin: Some(standin),
                    backing_url: Some(pg_url),
                }
            }
        }
    }

    /// A fresh database on the real server.
    async fn real(url: &str) -> Server {
        let rest = url
            .strip_prefix("mssql://")
            .expect("CRMSYNC_TEST_MSSQL_URL starts with mssql://");
        let (auth, hostdb) = rest.rsplit_once('@').expect("user:password@ in the url");
        let (user, password) = auth.split_once(':').expect("user:password in the url");
        let (hostport, database) = hostdb.split_once('/').expect("/database in the url");
        let (host, port) = hostport
            .rsplit_once(':')
            .map(|(h, p)| (h, p.parse().expect("port")))
            .unwrap_or((hostport, 1433));
        let mut s = Server {
            _standin: None,
            backing_url: None,
            offers_tls: true,
            user: user.into(),
            password: password.into(),
            host: host.into(),
            port,
            database: database.into(),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let fresh = format!("crmsync_test_{}_{nanos}", std::process::id());
        let mut c = s.client().await;
        exec(&mut c, &format!("CREATE DATABASE [{fresh}]")).await;
        s.database = fresh;
        s
    }

    async fn client(&self) -> Tds {
        let mut config = tiberius::Config::new();
        config.host(&self.host);
        config.port(self.port);
        config.database(&self.database);
        config.authentication(AuthMethod::sql_server(&self.user, &self.password));
        config.encryption(if self.offers_tls {
            EncryptionLevel::Required
        } else {
            EncryptionLevel::NotSupported
        });
        config.trust_cert();
        let tcp = TcpStream::connect(config.get_addr()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Client::connect(config, tcp.compat_write())
            .await
            .expect("connect to the CRM's SQL Server")
    }

    /// `tls` of the config: the stand-in speaks plain TDS unless started
    /// with TLS; a real server gets `prefer`.
    fn tls(&self) -> String {
        std::env::var("CRMSYNC_TEST_MSSQL_TLS").unwrap_or_else(|_| {
            if self._standin.is_some() {
                "disable"
            } else {
                "prefer"
            }
            .to_string()
        })
    }
}

async fn exec(c: &mut Tds, sql: &str) {
    let short: String = sql.chars().take(200).collect();
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {short}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {short}"));
}

/// Starts `crmsync backfill --chunk-rows 100` with `config` and SIGKILLs
/// it once erp.supplier holds 250 rows, in the middle of the copy; fails
/// if it ends by itself first. `what` names the case in messages.
async fn kill_backfill_mid_way(config: &std::path::Path, erp: &mut Tds, what: &str) {
    let args = ["backfill", "--chunk-rows", "100"];
    let mut child = crate::common::binary(config, &args, &[]).spawn().unwrap();
    let started = std::time::Instant::now();
    loop {
        let n = scalar_i64(erp, "SELECT COUNT(*) FROM erp.supplier").await;
        if n.unwrap_or(0) >= 250 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: the backfill ended before it was killed"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(120));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    let killed = child.wait().unwrap();
    assert!(
        !killed.success(),
        "{what}: killed, not finished: {killed:?}"
    );
}

async fn scalar_i64(c: &mut Tds, sql: &str) -> Option<i64> {
    let row = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_row()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))?;
    let data = row.into_iter().next()?;
    match crmsync::endpoint::mssql::value_of(&data).unwrap() {
        Value::Int(i) => Some(i),
        Value::Null => None,
        other => panic!("{sql}: not an integer: {other:?}"),
    }
}

/// The batches of a T-SQL script, split on lines holding only GO.
fn go_batches(script: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in script.lines() {
        if line.trim().eq_ignore_ascii_case("go") {
            out.push(String::new());
        } else {
            let cur = out.last_mut().unwrap();
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out.into_iter().filter(|b| !b.trim().is_empty()).collect()
}

/// The crmsync binary with `cmd`, run off the test's runtime: the
/// stand-in serves from that runtime, so a blocking wait there would
/// starve it.
async fn run_binary_beside(env: &MsEnv, cmd: &'static str) -> std::process::Output {
    let config = env.config.clone();
    tokio::task::spawn_blocking(move || run_binary(&config, &[cmd], &[]))
        .await
        .unwrap()
}

/// How Sage CRM allocates the Company ids of the test database.
#[derive(Clone, Copy, PartialEq)]
enum Ids {
    Identity,
    /// Comp_CompanyId without IDENTITY, as on older and upgraded installs:
    /// ids come from eware_get_identity_id.
    StoredProcedure,
}

/// A CRM on SQL Server, an ERP on PostgreSQL, and a config between them.
struct MsEnv {
    server: Server,
    crm: Tds,
    erp: tokio_postgres::Client,
    dir: TempDir,
    config: PathBuf,
    erp_url: String,
}

impl MsEnv {
    async fn new(ids: Ids) -> MsEnv {
        MsEnv::on(Server::start().await, ids).await
    }

    async fn on(server: Server, ids: Ids) -> MsEnv {
        MsEnv::with_schema(server, ids, |s| s).await
    }

    /// Like `on`, with crm_schema.sql changed by `tweak` first.
    async fn with_schema(server: Server, ids: Ids, tweak: impl Fn(String) -> String) -> MsEnv {
        let mut crm = server.client().await;
        let schema = match ids {
            Ids::Identity => CRM_SCHEMA.to_string(),
            Ids::StoredProcedure => {
                let identity = "Comp_CompanyId          int IDENTITY(1,1) NOT NULL PRIMARY KEY";
                assert!(CRM_SCHEMA.contains(identity), "crm_schema.sql changed");
                CRM_SCHEMA.replace(identity, "Comp_CompanyId int NOT NULL PRIMARY KEY")
            }
        };
        for batch in go_batches(&tweak(schema)) {
            exec(&mut crm, &batch).await;
        }
        let erp_url = testkit::fresh_database("erp").await;
        let erp = crate::common::connect(&erp_url).await;
        erp.batch_execute(ERP_SCHEMA)
            .await
            .expect("load erp_schema.sql");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crm.pw"), &server.password).unwrap();
        let config = dir.path().join("crmsync.toml");
        MsEnv {
            server,
            crm,
            erp,
            dir,
            config,
            erp_url,
        }
    }

    /// Writes the config: the usual supplier entity with `entity_extra`
    /// keys, `crm_extra` lines in `[crm]`, and `state_side`.
    fn write_config(
        &self,
        batch_size: usize,
        entity_extra: &str,
        crm_extra: &str,
        state_side: &str,
    ) {
        let s = &self.server;
        let text = format!(
            r#"[crm]
url = "mssql://{user}@{host}:{port}/{db}"
password_file = "crm.pw"
user_id = 1
timezone = "UTC"
tls = "{tls}"
{crm_extra}

[external]
url = "{erp}"
timezone = "UTC"

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
external_table = "erp.supplier"
external_key = "supplier_id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
external_deleted_column = "is_deleted"
external_filter = "kind = 'S'"
external_defaults = {{ kind = "S" }}
{entity_extra}
{SUPPLIER_FIELDS}"#,
            user = s.user,
            host = s.host,
            port = s.port,
            db = s.database,
            tls = s.tls(),
            erp = self.erp_url,
        );
        assert!(self.dir.path().exists());
        std::fs::write(&self.config, text).unwrap();
    }

    async fn sync(&self) -> EntityReport {
        let plan = crmsync::cli::load_plan(&self.config).expect("the test config is valid");
        let engine = Engine::connect(plan).await.expect("connect");
        let mut reports = engine.sync(None, Mode::Apply).await.expect("sync");
        reports.remove(0)
    }

    /// Inserts Sage-style supplier companies with `VALUES` rows of
    /// (name, datetime literal).
    async fn insert_companies(&mut self, rows: &[(String, String)]) {
        for chunk in rows.chunks(500) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(name, at)| {
                    format!(
                        "(N'{name}', N'Supplier', N'Active', 1, '{at}', 1, '{at}', '{at}', {WORLDWIDE})"
                    )
                })
                .collect();
            exec(
                &mut self.crm,
                &format!(
                    "INSERT INTO dbo.Company (Comp_Name, Comp_Type, Comp_Status, Comp_CreatedBy, \
                     Comp_CreatedDate, Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, Comp_SecTerr) \
                     VALUES {}",
                    values.join(", ")
                ),
            )
            .await;
        }
    }
}

/// The datetime vs datetime2 pitfall (docs/design.md section 3). Sage
/// CRM's UpdatedDate is `datetime` (1/300 s ticks: .003, .007, .857 are
/// really .00333…, .00666…, .85666…); tiberius sends chrono values as
/// datetime2(7). Compared uncast, `Comp_UpdatedDate = @ts` is false for the
/// row the watermark came from and `> @ts` is false for its whole group, so
/// the 2,000 rows sharing .857 are lost once a page ends inside the group.
/// This test fails if the CAST of the bounds to the column's type is
/// removed from the endpoint's change read (checked by doing so).
#[tokio::test]
async fn datetime_ties_across_small_pages_arrive_exactly_once() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(50, r#"direction = "crm_to_external""#, "", "external");
    let mut rows = Vec::new();
    let millis = ["003", "007", "000", "857", "997"];
    for i in 0..300 {
        rows.push((
            format!("Spread {i}"),
            format!(
                "2024-05-01 08:{:02}:{:02}.{}",
                i / 60,
                i % 60,
                millis[i % 5]
            ),
        ));
    }
    for i in 0..2000 {
        rows.push((format!("Tied {i}"), "2024-05-01 09:00:00.857".to_string()));
    }
    for i in 0..10 {
        rows.push((format!("Late {i}"), "2024-05-01 09:00:01.003".to_string()));
    }
    env.insert_companies(&rows).await;
    let first = env.sync().await;
    assert_eq!(
        first.inserted, 2310,
        "every company inserted once: {first:?}"
    );
    let got = external_suppliers(&env.erp).await;
    assert_eq!(got.len(), 2310);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=2310).collect::<Vec<_>>()
    );
    assert_eq!(got[&301].name.as_deref(), Some("Tied 0"));
    // The watermark sits on the last row, in the column's own precision.
    assert_eq!(
        first
            .watermark
            .as_deref()
            .map(|w| w.contains("09:00:01.003")),
        Some(true),
        "{:?}",
        first.watermark
    );
    let second = env.sync().await;
    assert_eq!(
        second.changes(),
        0,
        "a second run writes nothing: {second:?}"
    );
}

/// An external row inserted into CRM gets Sage CRM's system columns.
async fn external_insert_gets_sage_system_columns(ids: Ids) {
    let mut env = MsEnv::new(ids).await;
    let strategy = match ids {
        Ids::Identity => "auto",
        Ids::StoredProcedure => "stored_procedure",
    };
    env.write_config(
        20,
        r#"direction = "both"
insert_into_crm = true
secterr = -2147483640"#,
        &format!("id_strategy = \"{strategy}\""),
        "external",
    );
    if ids == Ids::StoredProcedure {
        exec(
            &mut env.crm,
            "UPDATE dbo.SQL_Identity SET Id_NextId = 5000 WHERE Id_TableId = 5",
        )
        .await;
    }
    match ids {
        Ids::Identity => {
            env.insert_companies(&[("Initech".into(), "2024-05-01 08:00:00.003".into())])
                .await
        }
        // Sage CRM's own rows of an install without IDENTITY carry ids
        // from the procedure too.
        Ids::StoredProcedure => {
            exec(
                &mut env.crm,
                &format!(
                    "DECLARE @id int; EXEC @id = eware_get_identity_id 'Company'; \
                     INSERT INTO dbo.Company (Comp_CompanyId, Comp_Name, Comp_Type, Comp_CreatedBy, \
                     Comp_CreatedDate, Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, Comp_SecTerr) \
                     VALUES (@id, N'Initech', N'Supplier', 1, '2024-05-01 08:00:00.003', 1, \
                     '2024-05-01 08:00:00.003', '2024-05-01 08:00:00.003', {WORLDWIDE})"
                ),
            )
            .await
        }
    }
    env.erp
        .execute(
            "INSERT INTO erp.supplier (name, status, kind, phone) VALUES ('Globex', 'A', 'S', '+1 555 0100')",
            &[],
        )
        .await
        .unwrap();
    let report = env.sync().await;
    assert_eq!((report.inserted, report.crm_inserted), (1, 1), "{report:?}");
    let supplier_id: i64 = env
        .erp
        .query_one(
            "SELECT supplier_id FROM erp.supplier WHERE name = 'Globex'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let crm_id = scalar_i64(
        &mut env.crm,
        "SELECT Comp_CompanyId FROM dbo.Company WHERE Comp_Name = N'Globex'",
    )
    .await
    .expect("Globex arrived in CRM");
    let check = |sql: &str| {
        format!("SELECT COUNT(*) FROM dbo.Company WHERE Comp_CompanyId = {crm_id} AND {sql}")
    };
    for cond in [
        "Comp_CreatedBy = 1 AND Comp_UpdatedBy = 1".to_string(),
        "Comp_CreatedDate IS NOT NULL AND Comp_CreatedDate = Comp_UpdatedDate AND Comp_UpdatedDate = Comp_TimeStamp".into(),
        format!("Comp_SecTerr = {WORLDWIDE}"),
        "Comp_Deleted IS NULL".into(),
        "Comp_Type = N'Supplier' AND Comp_Status = N'Active' AND comp_phonenumber = N'+1 555 0100'".into(),
        format!("comp_supplierid = N'{supplier_id}'"),
        // GETDATE() of the server, not a time sent by crmsync.
        "ABS(DATEDIFF(second, Comp_CreatedDate, GETDATE())) < 300".into(),
    ] {
        assert_eq!(scalar_i64(&mut env.crm, &check(&cond)).await, Some(1), "{cond}");
    }
    match ids {
        Ids::Identity => assert_eq!(crm_id, 2),
        Ids::StoredProcedure => {
            // Initech took 5000.
            assert_eq!(crm_id, 5001, "the id came from eware_get_identity_id");
            assert_eq!(
                scalar_i64(
                    &mut env.crm,
                    "SELECT Id_NextId FROM dbo.SQL_Identity WHERE Id_TableId = 5"
                )
                .await,
                Some(5002)
            );
        }
    }
    let again = env.sync().await;
    assert_eq!(again.changes(), 0, "no ping-pong: {again:?}");
}

#[tokio::test]
async fn external_insert_into_crm_with_identity_ids() {
    external_insert_gets_sage_system_columns(Ids::Identity).await;
}

#[tokio::test]
async fn external_insert_into_crm_with_eware_get_identity_id() {
    external_insert_gets_sage_system_columns(Ids::StoredProcedure).await;
}

/// Comp_Name is nvarchar(60): 60 UTF-16 code units, so 31 emoji (62
/// units, but only 31 characters and fine in the ERP's varchar(60)) do
/// not fit and are rejected; 30 emoji (60 units) do.
#[tokio::test]
async fn nvarchar_lengths_count_utf16_units() {
    let env = MsEnv::new(Ids::Identity).await;
    env.write_config(
        20,
        r#"direction = "external_to_crm"
insert_into_crm = true
on_truncate = "reject""#,
        "",
        "external",
    );
    let fits = "😀".repeat(30);
    let too_long = "😀".repeat(31);
    for name in [&fits, &too_long] {
        env.erp
            .execute(
                "INSERT INTO erp.supplier (name, kind) VALUES ($1, 'S')",
                &[name],
            )
            .await
            .unwrap();
    }
    let report = env.sync().await;
    assert_eq!(report.crm_inserted, 1, "{report:?}");
    assert_eq!(report.rejected, 1, "{report:?}");
    let mut c = env.server.client().await;
    let row = c
        .query(
            "SELECT Comp_Name FROM dbo.Company WHERE Comp_Type = N'Supplier'",
            &[],
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    assert_eq!(row.len(), 1);
    assert_eq!(row[0].get::<&str, _>(0), Some(fits.as_str()));
}

/// Updates both ways and an external hard delete (a soft delete in CRM),
/// then `check` and `verify` against the live SQL Server catalog.
#[tokio::test]
async fn updates_deletes_check_and_verify_on_sql_server() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(
        20,
        r#"direction = "both"
insert_into_crm = true
delete_into_crm = "soft"
max_delete_ratio = 1.0"#,
        "",
        "external",
    );
    let rows: Vec<(String, String)> = (0..5)
        .map(|i| (format!("Company {i}"), format!("2024-05-01 08:00:0{i}.007")))
        .collect();
    env.insert_companies(&rows).await;
    let first = env.sync().await;
    assert_eq!(first.inserted, 5, "{first:?}");

    // CRM renames company 1 the way Sage does (UpdatedDate moves); the ERP
    // changes company 2's phone and deletes company 3 for real.
    exec(
        &mut env.crm,
        "UPDATE dbo.Company SET Comp_Name = N'Renamed', Comp_UpdatedDate = GETDATE(), \
         Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId = 1",
    )
    .await;
    env.erp
        .execute(
            "UPDATE erp.supplier SET phone = '+44 1' WHERE crm_company_id = 2",
            &[],
        )
        .await
        .unwrap();
    env.erp
        .execute("DELETE FROM erp.supplier WHERE crm_company_id = 3", &[])
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
    let second = env.sync().await;
    assert_eq!(
        (second.updated, second.crm_updated, second.crm_deleted),
        (1, 1, 1),
        "{second:?}"
    );
    let name: String = env
        .erp
        .query_one(
            "SELECT name FROM erp.supplier WHERE crm_company_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Renamed");
    let check = |sql: &str| format!("SELECT COUNT(*) FROM dbo.Company WHERE {sql}");
    for cond in [
        "Comp_CompanyId = 2 AND comp_phonenumber = N'+44 1' AND Comp_UpdatedBy = 1 \
         AND Comp_UpdatedDate = Comp_TimeStamp AND Comp_UpdatedDate > '2025-01-01'",
        "Comp_CompanyId = 3 AND Comp_Deleted = 1 AND Comp_UpdatedDate > '2025-01-01'",
        "Comp_Deleted IS NULL",
    ] {
        let want = if cond == "Comp_Deleted IS NULL" { 4 } else { 1 };
        assert_eq!(
            scalar_i64(&mut env.crm, &check(cond)).await,
            Some(want),
            "{cond}"
        );
    }
    let third = env.sync().await;
    assert_eq!(
        third.changes(),
        0,
        "no echo of crmsync's own writes: {third:?}"
    );

    // The filter runs on SQL Server against a row of only the given values.
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    let (bound, _) = engine.bind(None).await.unwrap();
    let scan = bound[0].crm_scan();
    let ty = |t: &str| vec![("Comp_Type".to_string(), Value::Text(t.into()))];
    // The stand-in passes bracketed aliases inside a derived table
    // (`FROM (SELECT … AS [Comp_Type]) AS [Company]`) to PostgreSQL
    // unconverted (error 102); until it learns them the answer there is
    // "cannot tell". A real server must answer.
    let supplier = engine
        .endpoints
        .crm
        .filter_accepts(&scan, &ty("Supplier"))
        .await
        .unwrap();
    let customer = engine
        .endpoints
        .crm
        .filter_accepts(&scan, &ty("Customer"))
        .await
        .unwrap();
    if env.server._standin.is_some() && supplier.is_none() {
        assert_eq!(customer, None);
    } else {
        assert_eq!((supplier, customer), (Some(true), Some(false)));
    }
    assert_eq!(
        engine
            .endpoints
            .crm
            .count_null_changes(&scan)
            .await
            .unwrap(),
        0
    );
    engine.endpoints.crm.check_filter(&scan).await.unwrap();
    let mut bad = scan.clone();
    bad.filter = Some("Comp_Typo = 'Supplier'".into());
    let err = engine
        .endpoints
        .crm
        .check_filter(&bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("207"), "{err}");

    for cmd in ["check", "plan", "verify", "status"] {
        let out = run_binary_beside(&env, cmd).await;
        let (stdout, stderr) = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{cmd}:\n{stdout}\n{stderr}");
    }
}

/// `tls = "prefer"` (the default): TLS without verification where the
/// server offers it, plain TDS where it does not.
#[tokio::test]
async fn tls_prefer_uses_tls_when_offered_and_falls_back_when_not() {
    if std::env::var("CRMSYNC_TEST_MSSQL_URL").is_ok() {
        return;
    }
    for standin_tls in [true, false] {
        let mut env = MsEnv::on(Server::start_with(standin_tls).await, Ids::Identity).await;
        env.write_config(20, "", "", "external");
        let text = std::fs::read_to_string(&env.config)
            .unwrap()
            .replace("tls = \"disable\"", "tls = \"prefer\"");
        std::fs::write(&env.config, text).unwrap();
        env.insert_companies(&[("Acme".into(), "2024-05-01 08:00:00.003".into())])
            .await;
        let report = env.sync().await;
        assert_eq!(report.inserted, 1, "stand-in tls {standin_tls}: {report:?}");
    }
}

/// A row SQL Server refuses (547: a CHECK constraint) is rejected on its
/// own while the rest of its batch arrives; the reason names the error
/// number, and neither it nor the binary's output quotes the row's value.
#[tokio::test]
async fn refused_rows_are_rejected_without_their_values_in_messages() {
    let env = MsEnv::with_schema(Server::start().await, Ids::Identity, |s| {
        let col = "    Comp_Name               nvarchar(60),";
        assert!(s.contains(col), "crm_schema.sql changed");
        s.replace(
            col,
            "    Comp_Name               nvarchar(60) CHECK (Comp_Name <> N'Forbidden Corp'),",
        )
    })
    .await;
    env.write_config(
        20,
        r#"direction = "external_to_crm"
insert_into_crm = true"#,
        "",
        "external",
    );
    env.erp
        .execute(
            "INSERT INTO erp.supplier (name, kind) VALUES ('Forbidden Corp', 'S'), ('Fine', 'S')",
            &[],
        )
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let config = env.config.clone();
        move || run_binary(&config, &["sync"], &[])
    })
    .await
    .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("Forbidden Corp") && !stdout.contains("Forbidden Corp"),
        "{stdout}\n{stderr}"
    );
    let reason: String = env
        .erp
        .query_one("SELECT reason FROM crmsync.rejects", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("547"), "{reason}");
    assert!(!reason.contains("Forbidden Corp"), "{reason}");
    let mut crm = env.server.client().await;
    assert_eq!(
        scalar_i64(
            &mut crm,
            "SELECT COUNT(*) FROM dbo.Company WHERE Comp_Name = N'Fine'"
        )
        .await,
        Some(1),
        "the other row of the batch arrived"
    );
}

/// `tls = "require"` verifies the certificate: the stand-in's self-signed
/// one is refused, with a reason that points at tls_ca_file.
#[tokio::test]
async fn tls_require_refuses_an_unverified_certificate() {
    if std::env::var("CRMSYNC_TEST_MSSQL_URL").is_ok() {
        return;
    }
    let env = MsEnv::on(Server::start_with(true).await, Ids::Identity).await;
    env.write_config(20, "", "", "external");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("tls = \"disable\"", "tls = \"require\"");
    std::fs::write(&env.config, text).unwrap();
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let err = format!(
        "{:#}",
        anyhow::Error::from(Engine::connect(plan).await.unwrap_err())
    );
    assert!(
        err.contains("TLS") && err.contains("tls_ca_file") && err.contains("certificate"),
        "{err}"
    );
    assert!(!err.contains(&env.server.password), "{err}");
}

/// Backfill external → CRM with the CRM on SQL Server: it writes through
/// the sync's CRM writes, so every row gets Sage's system columns and an id
/// from eware_get_identity_id, and the next sync has nothing to do.
#[tokio::test]
async fn backfill_external_to_crm_on_sql_server() {
    backfill_external_to_crm_on_sql_server_with_state("external").await;
}

/// The same with the state in the CRM's SQL Server database: the links
/// commit there with the CRM rows they describe.
#[tokio::test]
async fn backfill_external_to_crm_on_sql_server_with_the_state_there() {
    backfill_external_to_crm_on_sql_server_with_state("crm").await;
}

async fn backfill_external_to_crm_on_sql_server_with_state(state_side: &str) {
    let mut env = MsEnv::new(Ids::StoredProcedure).await;
    env.write_config(
        50,
        r#"direction = "both"
insert_into_crm = true
secterr = -2147483640"#,
        "id_strategy = \"stored_procedure\"",
        state_side,
    );
    exec(
        &mut env.crm,
        "UPDATE dbo.SQL_Identity SET Id_NextId = 7000 WHERE Id_TableId = 5",
    )
    .await;
    env.erp
        .execute(
            "INSERT INTO erp.supplier (name, status, kind, updated_at) \
             SELECT 'Erp ' || i, 'A', 'S', now() - interval '1 hour' \
             FROM generate_series(1, 250) i",
            &[],
        )
        .await
        .unwrap();
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    let opts = BackfillOptions {
        direction: BackfillDirection::ExternalToCrm,
        restart: false,
        chunk_rows: 100,
    };
    let reports = engine.backfill(None, &opts).await.expect("backfill");
    assert_eq!(
        (reports[0].read, reports[0].inserted),
        (250, 250),
        "{reports:?}"
    );
    assert_eq!(reports[0].chunks, 3);
    let all = |cond: &str| {
        format!("SELECT COUNT(*) FROM dbo.Company WHERE Comp_Name LIKE N'Erp %' AND {cond}")
    };
    for cond in [
        "1 = 1".to_string(),
        "Comp_CreatedBy = 1 AND Comp_UpdatedBy = 1".into(),
        "Comp_CreatedDate IS NOT NULL AND Comp_UpdatedDate IS NOT NULL AND Comp_TimeStamp IS NOT NULL".into(),
        format!("Comp_SecTerr = {WORLDWIDE}"),
        "Comp_Deleted IS NULL AND Comp_Type = N'Supplier'".into(),
        "comp_supplierid IS NOT NULL".into(),
        "Comp_CompanyId >= 7000 AND Comp_CompanyId < 7250".into(),
    ] {
        assert_eq!(scalar_i64(&mut env.crm, &all(&cond)).await, Some(250), "{cond}");
    }
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            "SELECT COUNT(DISTINCT comp_supplierid) FROM dbo.Company"
        )
        .await,
        Some(250)
    );
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            "SELECT Id_NextId FROM dbo.SQL_Identity WHERE Id_TableId = 5"
        )
        .await,
        Some(7250)
    );
    if state_side == "crm" {
        assert_eq!(
            scalar_i64(&mut env.crm, "SELECT COUNT(*) FROM crmsync.links").await,
            Some(250),
            "the links live with the CRM rows"
        );
    }
    let again = env.sync().await;
    assert_eq!(again.changes(), 0, "{again:?}");
}

/// The production case: Sage CRM on SQL Server copied out by `backfill`
/// into an ERP on PostgreSQL. Deleted CRM rows stay behind, an external
/// row with the same name is linked rather than copied, two CRM rows that
/// differ only in case are told apart (crmsync matches exactly, whatever
/// the collation), and the sync that follows, re-reading every row in its
/// overlap, finds the shadows equal to what it reads: nothing to do.
#[tokio::test]
async fn backfill_crm_to_external_from_sql_server() {
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(
        50,
        r#"direction = "crm_to_external"
match_on = [{ crm = "Comp_Name", external = "name" }]"#,
        "",
        "external",
    );
    // Stamped in the last minutes, with datetime's odd milliseconds.
    let now = chrono::Utc::now().naive_utc();
    let rows: Vec<(String, String)> = (0..1_200)
        .map(|i| {
            let at = now - chrono::Duration::milliseconds(150 * i64::from(i) + 3);
            let ms = [".003", ".007", ".857"][i as usize % 3];
            (
                format!("Company {i}"),
                format!("{}{ms}", at.format("%Y-%m-%d %H:%M:%S")),
            )
        })
        .chain([
            ("Acme".to_string(), "2024-05-01 08:00:00.003".to_string()),
            ("ACME".to_string(), "2024-05-01 08:00:00.007".to_string()),
        ])
        .collect();
    env.insert_companies(&rows).await;
    exec(
        &mut env.crm,
        "UPDATE dbo.Company SET Comp_Deleted = 1 WHERE Comp_Name IN (N'Company 3', N'Company 4')",
    )
    .await;
    let existing = |name: &str| {
        format!("INSERT INTO erp.supplier (name, status, kind) VALUES ('{name}', 'A', 'S')")
    };
    env.erp.execute(&existing("Company 7"), &[]).await.unwrap();
    env.erp.execute(&existing("Acme"), &[]).await.unwrap();

    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    let opts = BackfillOptions {
        direction: BackfillDirection::CrmToExternal,
        restart: false,
        chunk_rows: 100,
    };
    let reports = engine.backfill(None, &opts).await.expect("backfill");
    let r = &reports[0];
    assert_eq!(
        (r.read, r.linked_by_match, r.inserted, r.rejected),
        (1_200, 2, 1_198, 0),
        "{r:?}"
    );
    assert!(!r.insert_only, "the ERP table was not empty");
    let count = |sql: &'static str| {
        let erp = &env.erp;
        async move { erp.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM erp.supplier").await, 1_200);
    assert_eq!(
        count("SELECT count(DISTINCT crm_company_id) FROM erp.supplier").await,
        1_200,
        "every copied row carries its CRM id, and so do the two matched ones"
    );
    assert_eq!(
        count("SELECT count(DISTINCT external_key) FROM crmsync.all_links").await,
        1_200,
        "every row is linked"
    );
    assert_eq!(
        count("SELECT count(*) FROM erp.supplier WHERE name IN ('Company 3', 'Company 4')").await,
        0,
        "deleted CRM rows are not copied"
    );
    assert_eq!(
        count("SELECT count(*) FROM erp.supplier WHERE name IN ('Acme', 'ACME')").await,
        2,
        "'ACME' is not 'Acme': one linked, one copied"
    );
    let linked_acme: i64 = scalar_i64(
        &mut env.crm,
        // 'Acme' went in first: the lower id, whatever the collation.
        "SELECT MIN(Comp_CompanyId) FROM dbo.Company WHERE Comp_Name = N'Acme'",
    )
    .await
    .unwrap();
    let acme_link: String = env
        .erp
        .query_one(
            "SELECT crmsync.key_text(l.crm_key) FROM crmsync.all_links l JOIN erp.supplier s \
               ON s.supplier_id::text = crmsync.key_text(l.external_key) WHERE s.name = 'Acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acme_link, linked_acme.to_string());

    let again = env.sync().await;
    assert!(
        again.read >= 1_000,
        "the sync re-read the overlap: {again:?}"
    );
    assert_eq!(again.changes(), 0, "{again:?}");
}

/// crmsync's state on SQL Server, on either side.
mod children;
mod keys;
mod property;
mod references;
/// Whole deployments with the CRM and the ERP both on SQL Server.
mod scenario;
mod state;

const ERP_SCHEMA_MSSQL: &str = include_str!("../../sql/examples/erp_schema_mssql.sql");

/// erp_schema_mssql.sql without its contact table, for tests that change
/// the supplier's key type (the contact's foreign key names it).
fn suppliers_only(schema: &str) -> &str {
    schema
        .split("\n-- A supplier's contacts")
        .next()
        .unwrap_or(schema)
}

/// The suppliers of the ERP on SQL Server, sorted, as `Supplier`s.
async fn erp_suppliers_on(erp: &mut Tds) -> Vec<crate::common::Supplier> {
    let rows = erp
        .simple_query(
            "SELECT name, status, website, phone, email, promote FROM erp.supplier \
             WHERE kind = 'S' AND is_deleted = 0",
        )
        .await
        .unwrap()
        .into_first_result()
        .await
        .unwrap();
    let text = |v: Value| match v {
        Value::Text(s) => Some(s),
        Value::Null => None,
        other => panic!("not text: {other:?}"),
    };
    let mut out: Vec<_> = rows
        .into_iter()
        .map(|row| {
            let mut cells = row
                .into_iter()
                .map(|d| crmsync::endpoint::mssql::value_of(&d).unwrap());
            let mut next = || cells.next().unwrap();
            crate::common::Supplier {
                name: text(next()),
                status: text(next()),
                website: text(next()),
                phone: text(next()),
                email: text(next()),
                promote: next() == Value::Bool(true),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The Sage CRM on PostgreSQL (holding the state store), the ERP of
/// erp_schema_mssql.sql on SQL Server, and the two-way supplier entity with
/// `match_on` by name between them.
async fn erp_on_sql_server() -> (Server, Tds, crate::common::Env) {
    erp_on_sql_server_with(|s| s.to_string()).await
}

/// Like [`erp_on_sql_server`], with erp_schema_mssql.sql changed by
/// `tweak` first.
async fn erp_on_sql_server_with(
    tweak: impl Fn(&str) -> String,
) -> (Server, Tds, crate::common::Env) {
    use crate::common::{Env, Opts};
    let server = Server::start().await;
    let mut erp = server.client().await;
    for batch in go_batches(&tweak(ERP_SCHEMA_MSSQL)) {
        exec(&mut erp, &batch).await;
    }
    let env = Env::new(Opts {
        state_side: "crm",
        ..Default::default()
    })
    .await;
    std::fs::write(env.dir.path().join("erp.pw"), &server.password).unwrap();
    let config = env
        .config_text(&Opts::default())
        .replace(
            &format!("url = \"{}\"", env.erp_url),
            &format!(
                "url = \"mssql://{}@{}:{}/{}\"\npassword_file = \"erp.pw\"\ntls = \"{}\"",
                server.user,
                server.host,
                server.port,
                server.database,
                server.tls()
            ),
        )
        .replace("side = \"external\"", "side = \"crm\"")
        .replace(
            "direction = \"crm_to_external\"",
            "direction = \"both\"\nmatch_on = [{ crm = \"comp_name\", external = \"name\" }]",
        );
    assert!(config.contains("mssql://") && config.contains("\"both\""));
    std::fs::write(&env.config, config).unwrap();
    (server, erp, env)
}

/// `crmsync --report FILE backfill ARGS...` with `config`, off the test's
/// runtime (the stand-in serves from it); asserts exit code 0 and returns
/// the report's backfill entry.
async fn backfill_binary(config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let report = config.with_file_name("report.json");
    let mut full = vec![
        "--report".to_string(),
        report.to_str().unwrap().to_string(),
        "backfill".to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        run_binary(&config, &args, &[])
    })
    .await
    .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    json["backfill"][0].clone()
}

/// SIGKILL in the middle of a backfill into SQL Server, then a rerun: the
/// rerun resumes after the last checkpoint (its report says so), rows a
/// killed chunk wrote are found by their CRM id and linked, not copied
/// again, and every CRM row ends up in the ERP exactly once.
#[tokio::test]
async fn killed_backfill_into_sql_server_resumes_without_duplicates() {
    use crate::common::insert_companies;
    let (_server, mut erp, env) = erp_on_sql_server().await;
    insert_companies(&env.crm, 1_500, "now() - interval '1 hour'", "Supplier").await;
    kill_backfill_mid_way(&env.config, &mut erp, "state on the CRM").await;
    let before = scalar_i64(&mut erp, "SELECT COUNT(*) FROM erp.supplier")
        .await
        .unwrap();
    assert!(before < 1_500, "killed in the middle: {before} rows");

    let r = &backfill_binary(&env.config, &["--chunk-rows", "100"]).await;
    assert_eq!(r["resumed"], serde_json::json!(true), "{r}");
    let done_before = r["rows_done_before"].as_u64().unwrap();
    assert!(done_before >= 100, "{r}");
    assert_eq!(r["read"].as_u64().unwrap(), 1_500 - done_before, "{r}");
    assert_eq!(
        scalar_i64(&mut erp, "SELECT COUNT(*) FROM erp.supplier").await,
        Some(1_500)
    );
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
        crate::common::count(&env.crm, "crmsync.all_links").await,
        1_500
    );
    assert_eq!(env.sync().await.changes(), 0);
}

/// An ERP on SQL Server and the Sage CRM on PostgreSQL, which then holds
/// the state store. A CRM → external `backfill` bulk loads the ERP: it
/// reads the live CRM rows only (soft-deleted ones stay behind), links the
/// row `match_on` finds (taking the CRM values, `crm_wins`), inserts the
/// rest with their CRM ids, and leaves nothing for the next sync. Changes then flow both ways, and an ERP hard delete becomes a
/// CRM soft delete.
#[tokio::test]
async fn erp_on_sql_server_backfills_and_syncs_both_ways() {
    use crate::common::{expected_suppliers, insert_companies};
    let (_server, mut erp, env) = erp_on_sql_server().await;
    insert_companies(&env.crm, 1_200, "now() - interval '1 hour'", "Supplier").await;
    env.crm
        .execute(
            "UPDATE company SET comp_deleted = 1 WHERE comp_name IN ('Company 3', 'Company 4')",
            &[],
        )
        .await
        .unwrap();
    // 'Company 7' is there already, with another status; 'Other' is not a
    // supplier (outside the external filter).
    exec(
        &mut erp,
        "INSERT INTO erp.supplier (name, status, kind, updated_at) VALUES \
         (N'Company 7', N'A', N'S', '2026-01-01T00:00:00'), \
         (N'Other', N'A', N'X', '2026-01-01T00:00:00')",
    )
    .await;

    let r = &backfill_binary(&env.config, &[]).await;
    assert_eq!(
        (&r["read"], &r["linked"], &r["inserted"], &r["rejected"]),
        (
            &serde_json::json!(1_198),
            &serde_json::json!(1),
            &serde_json::json!(1_197),
            &serde_json::json!(0)
        ),
        "{r}"
    );

    let want = |m: std::collections::BTreeMap<i32, crate::common::Supplier>| {
        let mut v: Vec<_> = m.into_values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    assert_eq!(
        erp_suppliers_on(&mut erp).await,
        want(expected_suppliers(&env.crm).await),
        "the ERP holds every live CRM supplier once, with the CRM's values"
    );
    assert_eq!(
        scalar_i64(
            &mut erp,
            "SELECT COUNT(*) FROM erp.supplier WHERE crm_company_id IS NOT NULL"
        )
        .await,
        Some(1_198),
        "every inserted row carries its CRM id, and so does the matched one"
    );

    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");

    exec(
        &mut erp,
        "UPDATE erp.supplier SET phone = N'+1 555 0100', updated_at = SYSDATETIME() \
         WHERE name = N'Company 10'",
    )
    .await;
    exec(
        &mut erp,
        "DELETE FROM erp.supplier WHERE name = N'Company 11'",
    )
    .await;
    env.crm
        .execute(
            "UPDATE company SET comp_website = 'https://new.example.com', \
             comp_updateddate = now() WHERE comp_name = 'Company 12'",
            &[],
        )
        .await
        .unwrap();
    let moved = env.sync().await;
    assert_eq!(
        (moved.updated, moved.crm_updated, moved.crm_deleted),
        (1, 1, 1),
        "{moved:?}"
    );
    let crm_row = env
        .crm
        .query_one(
            "SELECT comp_phonenumber FROM company WHERE comp_name = 'Company 10'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        crm_row.get::<_, Option<String>>(0).as_deref(),
        Some("+1 555 0100")
    );
    let gone = env
        .crm
        .query_one(
            "SELECT comp_deleted FROM company WHERE comp_name = 'Company 11'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(gone.get::<_, Option<i16>>(0), Some(1));
    assert_eq!(
        erp_suppliers_on(&mut erp).await,
        want(expected_suppliers(&env.crm).await),
        "both sides agree after the changes"
    );
    assert_eq!(env.sync().await.changes(), 0);
    // SQL Server's statistics tell when no row was deleted: check has no
    // warning about comparing every link on every run.
    let config = env.config.clone();
    let out = tokio::task::spawn_blocking(move || run_binary(&config, &["check"], &[]))
        .await
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("every run compares all its links"),
        "{stdout}"
    );
    // verify reads both sides in full and finds them in step.
    let config = env.config.clone();
    let out = tokio::task::spawn_blocking(move || run_binary(&config, &["verify"], &[]))
        .await
        .unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("in step") && stdout.contains("0 differ"),
        "{stdout}"
    );
}

/// A named instance (`host\INSTANCE` in the url, as Sage CRM installs
/// often are): its TCP port comes from the SQL Server Browser on UDP 1434.
/// A stand-in Browser answers for instance CRMSYNC with the stand-in's
/// port: `check` connects through it. An instance it does not know gets no
/// answer, as from the real service, and the error says what to check.
#[tokio::test]
async fn named_instance_port_comes_from_the_sql_server_browser() {
    let env = MsEnv::new(Ids::Identity).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:1434")
        .await
        .expect("bind UDP 127.0.0.1:1434 for the stand-in SQL Server Browser");
    let port = env.server.port;
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let browser = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let request = buf[..n].to_vec();
            let _ = asked_tx.send(request.clone());
            // CLNT_UCAST_INST: 0x04, the instance name (matched without
            // regard to case, as the Browser does), a NUL.
            if request.first() == Some(&0x04)
                && request[1..].to_ascii_uppercase().starts_with(b"CRMSYNC\0")
            {
                let text = format!(
                    "ServerName;TEST;InstanceName;CRMSYNC;IsClustered;No;Version;16.0.1000.6;tcp;{port};;"
                );
                let mut reply = vec![0x05];
                reply.extend_from_slice(&(text.len() as u16).to_le_bytes());
                reply.extend_from_slice(text.as_bytes());
                let _ = socket.send_to(&reply, from).await;
            }
        }
    });
    env.write_config(20, "", "", "external");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let direct = format!("@{}:{}/", env.server.host, port);
    assert!(text.contains(&direct), "{text}");
    let named =
        |instance: &str| text.replace(&direct, &format!("@{}\\\\{instance}/", env.server.host));

    std::fs::write(&env.config, named("crmsync")).unwrap();
    let out = run_binary_beside(&env, "check").await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("connected"), "{stdout}");
    let first = asked.recv().await.unwrap();
    assert_eq!(
        first, b"\x04crmsync\x00",
        "the url's instance name, as written"
    );

    std::fs::write(&env.config, named("NOSUCH")).unwrap();
    let out = run_binary_beside(&env, "check").await;
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("instance NOSUCH") && stderr.contains("SQL Server Browser"),
        "{stderr}"
    );
    browser.abort();
}

/// The CRM link column on SQL Server as an integer, a numeric or a
/// blank-padded nchar: the ERP key arrives in the column's own type, the
/// ERP row gets the CRM id, and quiet runs write nothing.
async fn link_column_typed_on_sql_server(link_type: &'static str, state_side: &str) {
    let declared = "comp_supplierid         nvarchar(40),";
    assert!(CRM_SCHEMA.contains(declared), "crm_schema.sql changed");
    let mut env = MsEnv::with_schema(Server::start().await, Ids::Identity, |s| {
        s.replace(declared, &format!("comp_supplierid {link_type},"))
    })
    .await;
    env.write_config(20, r#"direction = "both""#, "", state_side);
    env.insert_companies(&[("Initech".into(), "2024-05-01 08:00:00.003".into())])
        .await;
    env.erp
        .execute(
            "INSERT INTO erp.supplier (name, status, kind) VALUES ('Globex', 'A', 'S')",
            &[],
        )
        .await
        .unwrap();
    let report = env.sync().await;
    assert_eq!((report.inserted, report.crm_inserted), (1, 1), "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");
    let pairs = env
        .erp
        .query(
            "SELECT supplier_id, crm_company_id FROM erp.supplier ORDER BY supplier_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(pairs.len(), 2);
    for p in pairs {
        let (key, id): (i64, Option<i32>) = (p.get(0), p.get(1));
        let id = id.unwrap_or_else(|| panic!("ERP row {key} names no CRM row"));
        // The comparison runs in the column's own type: an integer, or a
        // padded nchar equal to the unpadded text.
        let cond = format!(
            "SELECT COUNT(*) FROM dbo.Company WHERE Comp_CompanyId = {id} \
             AND comp_supplierid = CAST(N'{key}' AS {link_type})"
        );
        assert_eq!(scalar_i64(&mut env.crm, &cond).await, Some(1), "{cond}");
    }
    for _ in 0..2 {
        let again = env.sync().await;
        assert_eq!(again.changes(), 0, "no ping-pong: {again:?}");
        assert_eq!(again.rejected, 0, "{again:?}");
    }
}

#[tokio::test]
async fn int_link_column_on_sql_server() {
    link_column_typed_on_sql_server("int", "external").await;
}

#[tokio::test]
async fn numeric_link_column_on_sql_server() {
    link_column_typed_on_sql_server("numeric(18,0)", "external").await;
}

#[tokio::test]
async fn nchar_link_column_on_sql_server() {
    link_column_typed_on_sql_server("nchar(12)", "external").await;
}

/// An ERP on SQL Server keyed by a `uniqueidentifier` its default draws:
/// the key reaches the CRM's varchar link column as text, the CRM id the
/// ERP row, both ways, and quiet runs write nothing.
#[tokio::test]
async fn uuid_keyed_erp_on_sql_server_names_both_sides() {
    let identity = "supplier_id     bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,";
    assert!(
        ERP_SCHEMA_MSSQL.contains(identity),
        "erp_schema_mssql.sql changed"
    );
    let (_server, mut erp, env) = erp_on_sql_server_with(|s| {
        suppliers_only(s).replace(
            identity,
            "supplier_id uniqueidentifier NOT NULL DEFAULT NEWID() PRIMARY KEY,",
        )
    })
    .await;
    let alpha = crate::two_way::crm_insert(&env.crm, "Alpha", Some("Active"), None).await;
    exec(
        &mut erp,
        "INSERT INTO erp.supplier (name, status, kind) VALUES (N'Beta', N'A', N'S')",
    )
    .await;
    let first = crate::two_way::sync(&env).await;
    assert_eq!((first.inserted, first.crm_inserted), (1, 1), "{first:?}");
    assert_eq!(first.rejected, 0, "{first:?}");
    for (name, id) in [("Alpha", Some(alpha)), ("Beta", None)] {
        let row = env
            .crm
            .query_one(
                "SELECT comp_companyid, comp_supplierid FROM company WHERE comp_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        let (crm_id, link): (i32, Option<String>) = (row.get(0), row.get(1));
        if let Some(id) = id {
            assert_eq!(crm_id, id);
        }
        let link = link.unwrap_or_else(|| panic!("CRM row {name} names no ERP row"));
        let key: uuid::Uuid = link.parse().expect("the link column holds the uuid");
        let named = scalar_i64(
            &mut erp,
            &format!(
                "SELECT COUNT(*) FROM erp.supplier WHERE supplier_id = '{key}' \
                 AND crm_company_id = {crm_id} AND name = N'{name}'"
            ),
        )
        .await;
        assert_eq!(
            named,
            Some(1),
            "ERP row {key} names CRM row {crm_id} ({name})"
        );
    }
    for _ in 0..2 {
        let quiet = crate::two_way::sync(&env).await;
        assert_eq!(quiet.changes(), 0, "{quiet:?}");
    }
}

/// Regression: a CRM → external insert into an ERP table whose key a
/// default draws (a `uniqueidentifier`, or a text code) read the new key
/// with `OUTPUT INSERTED` without `INTO`, which SQL Server refuses on a
/// table with an enabled trigger (error 334), and real ERP tables have
/// triggers. Both rows land, the trigger runs for each, and each side names
/// the other.
#[tokio::test]
async fn insert_into_a_triggered_erp_table_with_a_default_key() {
    let identity = "supplier_id     bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,";
    assert!(
        ERP_SCHEMA_MSSQL.contains(identity),
        "erp_schema_mssql.sql changed"
    );
    let trigger = "\nGO\nCREATE TABLE erp.supplier_audit (supplier_id nvarchar(40) NULL)\nGO\n\
        CREATE TRIGGER erp.supplier_audit_insert ON erp.supplier AFTER INSERT AS \
        INSERT INTO erp.supplier_audit (supplier_id) SELECT CONVERT(nvarchar(40), supplier_id) FROM inserted\nGO\n";
    for key in [
        "supplier_id uniqueidentifier NOT NULL DEFAULT NEWID() PRIMARY KEY,",
        "supplier_id nvarchar(40) NOT NULL DEFAULT ('S-' + CONVERT(nvarchar(36), NEWID())) PRIMARY KEY,",
    ] {
        let (_server, mut erp, env) = erp_on_sql_server_with(|s| {
            format!("{}{trigger}", suppliers_only(s).replace(identity, key))
        })
        .await;
        let alpha = crate::two_way::crm_insert(&env.crm, "Alpha", Some("Active"), None).await;
        let beta = crate::two_way::crm_insert(&env.crm, "Beta", None, None).await;
        let first = crate::two_way::sync(&env).await;
        assert_eq!(first.inserted, 2, "{key}: {first:?}");
        assert_eq!(first.rejected, 0, "{key}: {first:?}");
        for (name, crm_id) in [("Alpha", alpha), ("Beta", beta)] {
            let link: Option<String> = env
                .crm
                .query_one(
                    "SELECT comp_supplierid FROM company WHERE comp_companyid = $1",
                    &[&crm_id],
                )
                .await
                .unwrap()
                .get(0);
            let link = link.unwrap_or_else(|| panic!("{key}: CRM row {name} names no ERP row"));
            let named = scalar_i64(
                &mut erp,
                &format!(
                    "SELECT COUNT(*) FROM erp.supplier s JOIN erp.supplier_audit a \
                     ON a.supplier_id = CONVERT(nvarchar(40), s.supplier_id) \
                     WHERE CONVERT(nvarchar(40), s.supplier_id) = '{link}' \
                     AND s.crm_company_id = {crm_id} AND s.name = N'{name}'"
                ),
            )
            .await;
            assert_eq!(
                named,
                Some(1),
                "{key}: ERP row {link} names CRM row {crm_id} ({name}) and its trigger ran"
            );
        }
        let quiet = crate::two_way::sync(&env).await;
        assert_eq!(quiet.changes(), 0, "{key}: {quiet:?}");
    }
}

/// The example ERP schema on SQL Server holds contacts under suppliers, by a
/// real foreign key: a contact of a supplier that does not exist is
/// refused (error 547).
#[tokio::test]
async fn erp_example_schema_on_sql_server_has_contacts_under_suppliers() {
    let (_server, mut erp, _env) = erp_on_sql_server().await;
    exec(
        &mut erp,
        "INSERT INTO erp.supplier (name, kind) VALUES (N'Acme', N'S'); \
         INSERT INTO erp.contact (supplier_id, last_name) \
         SELECT supplier_id, N'Ann' FROM erp.supplier WHERE name = N'Acme'",
    )
    .await;
    assert_eq!(
        scalar_i64(&mut erp, "SELECT COUNT(*) FROM erp.contact").await,
        Some(1)
    );
    let refused = match erp
        .simple_query("INSERT INTO erp.contact (supplier_id, last_name) VALUES (424242, N'Bob')")
        .await
    {
        Ok(s) => s.into_results().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match refused {
        Err(tiberius::error::Error::Server(e)) => assert_eq!(e.code(), 547, "{e}"),
        other => panic!("an orphan contact was not refused: {other:?}"),
    }
}

/// A page of many inserts goes into SQL Server as one staged statement; a
/// row the table refuses (here a unique index on email) fails it, and the
/// page is written again row by row: that row alone becomes a reject, the
/// others land once.
#[tokio::test]
async fn a_refused_row_in_a_staged_insert_is_the_only_reject() {
    use crate::common::insert_companies;
    let (_server, mut erp, env) = erp_on_sql_server_with(|s| {
        format!(
            "{s}\nGO\nCREATE UNIQUE INDEX supplier_email ON erp.supplier (email) WHERE email IS NOT NULL\nGO\n"
        )
    })
    .await;
    exec(
        &mut erp,
        "INSERT INTO erp.supplier (name, email, kind, updated_at) \
         VALUES (N'Someone else', N'c7@example.com', N'S', '2026-01-01T00:00:00')",
    )
    .await;
    insert_companies(&env.crm, 30, "now() - interval '1 minute'", "Supplier").await;
    let r = crate::two_way::sync(&env).await;
    assert_eq!((r.inserted, r.rejected), (29, 1), "{r:?}");
    assert_eq!(
        scalar_i64(
            &mut erp,
            "SELECT COUNT(DISTINCT crm_company_id) FROM erp.supplier WHERE name LIKE N'Company %'"
        )
        .await,
        Some(29)
    );
    assert_eq!(
        scalar_i64(
            &mut erp,
            "SELECT COUNT(*) FROM erp.supplier WHERE name = N'Company 7'"
        )
        .await,
        Some(0)
    );
}

/// A page of many inserts in which one text is longer than a bulk load
/// carries into the staging table's `nvarchar(max)` (tiberius refuses
/// more than 65,535 bytes there, in the middle of the load): the page goes
/// row by row instead, and every row lands with its whole text.
#[tokio::test]
async fn a_text_too_long_for_a_bulk_load_is_inserted_row_by_row() {
    use crate::common::insert_companies;
    let declared = "website         nvarchar(100) NULL,";
    let (_server, mut erp, env) = erp_on_sql_server_with(|s| {
        assert!(s.contains(declared), "erp_schema_mssql.sql changed");
        s.replace(declared, "website nvarchar(max) NULL,")
    })
    .await;
    env.crm
        .execute(
            "ALTER TABLE company ALTER COLUMN comp_website TYPE text",
            &[],
        )
        .await
        .unwrap();
    insert_companies(&env.crm, 30, "now() - interval '1 minute'", "Supplier").await;
    env.crm
        .execute(
            "UPDATE company SET comp_website = repeat('w', 40000) WHERE comp_name = 'Company 9'",
            &[],
        )
        .await
        .unwrap();
    let r = crate::two_way::sync(&env).await;
    assert_eq!((r.inserted, r.rejected), (30, 0), "{r:?}");
    assert_eq!(
        scalar_i64(
            &mut erp,
            "SELECT CAST(LEN(website) AS bigint) FROM erp.supplier WHERE name = N'Company 9'"
        )
        .await,
        Some(40_000)
    );
}

/// A transaction left open on a pooled connection (by a request dropped
/// half-way, as an in-flight backfill chunk is when another chunk fails)
/// does not swallow the next batch written on that connection. Nested under
/// it, the batch's COMMIT would only lower @@TRANCOUNT ("COMMIT TRANSACTION
/// (Transact-SQL)"), and its rows would go when the connection closed.
#[tokio::test]
async fn a_transaction_left_open_on_a_pooled_connection_is_rolled_back_first() {
    use crmsync::endpoint::mssql::MssqlEndpoint;
    use crmsync::endpoint::{Assign, Endpoint, Insert, WriteBatch};
    let mut env = MsEnv::new(Ids::Identity).await;
    env.write_config(20, "", "", "external");
    exec(
        &mut env.crm,
        "CREATE TABLE dbo.Pool_Probe (Prob_Id int IDENTITY(1,1) NOT NULL PRIMARY KEY, \
         Prob_Text nvarchar(40) NULL)",
    )
    .await;
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let ep = MssqlEndpoint::connect("crm", &plan.crm).await.unwrap();
    let table = ep.table(None, "Pool_Probe").await.unwrap().unwrap();
    {
        // The pool's one connection, left inside a transaction.
        let db = ep.database();
        let mut c = db.conn().await.unwrap();
        c.simple_query(
            "BEGIN TRANSACTION; INSERT INTO dbo.Pool_Probe (Prob_Text) VALUES (N'lost')",
        )
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();
    }
    let mut batch = WriteBatch::new(std::sync::Arc::new(table), "Prob_Id".into());
    batch.inserts.push(Insert {
        columns: vec![(
            "Prob_Text".into(),
            Assign::Value(Value::Text("kept".into())),
        )],
    });
    ep.apply(&batch, None).await.unwrap();
    assert_eq!(
        scalar_i64(
            &mut env.crm,
            "SELECT COUNT(*) FROM dbo.Pool_Probe WHERE Prob_Text = N'kept'"
        )
        .await,
        Some(1),
        "the batch committed"
    );
    assert_eq!(
        scalar_i64(&mut env.crm, "SELECT COUNT(*) FROM dbo.Pool_Probe").await,
        Some(1),
        "the abandoned transaction was rolled back"
    );
}
