//! Shared set-up for the integration tests: a CRM and an ERP database with
//! the project's schema files loaded, a config written into a temp dir,
//! in-process and binary runners, and comparisons of both sides.

use crmsync::engine::{Engine, EntityReport, Mode};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

const CRM_SCHEMA: &str = include_str!("../../sql/postgres/crm_schema.sql");
const ERP_SCHEMA: &str = include_str!("../../sql/examples/erp_schema.sql");

/// The territory Sage CRM calls "Worldwide".
pub const WORLDWIDE: i32 = -2147483640;

/// A connected client; the connection task runs in the background.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs a schema file. The project's files are plain SQL; a psql
/// meta-command (a line starting with a backslash) would not run through
/// the protocol, so it is refused here rather than silently skipped.
async fn load_sql(client: &Client, name: &str, sql: &str) {
    if let Some(line) = sql.lines().find(|l| l.trim_start().starts_with('\\')) {
        panic!("{name} uses a psql meta-command ({line}); the tests run plain SQL");
    }
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
}

/// Knobs of the test config; `Default` is the usual supplier entity.
#[derive(Debug, Clone)]
pub struct Opts {
    pub batch_size: usize,
    pub overlap: &'static str,
    pub delete_into_external: &'static str,
    pub state_side: &'static str,
    /// Lines appended to `[crm]`.
    pub crm_extra: String,
    /// Lines appended to `[external]`.
    pub external_extra: String,
    /// Replaces the external table, key and column names (for
    /// test-specific tables); `None` keeps erp.supplier.
    pub entity_override: Option<String>,
    /// Extra `[[entity.field]]` tables.
    pub extra_fields: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            batch_size: 100,
            overlap: "5m",
            delete_into_external: "hard",
            state_side: "external",
            crm_extra: String::new(),
            external_extra: String::new(),
            entity_override: None,
            extra_fields: String::new(),
        }
    }
}

/// The usual field mapping of the supplier entity.
pub const SUPPLIER_FIELDS: &str = r#"
[[entity.field]]
crm = "Comp_Name"
external = "name"

[[entity.field]]
crm = "Comp_Status"
external = "status"
values = { "Active" = "A", "Inactive" = "I" }

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
"#;

/// The usual supplier entity's external keys, then `extra` entity keys,
/// then its fields: an `Opts::entity_override` with a few keys more.
pub fn supplier_entity(extra: &str) -> String {
    format!(
        r#"external_table = "erp.supplier"
external_key = "supplier_id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
external_deleted_column = "is_deleted"
external_filter = "kind = 'S'"
external_defaults = {{ kind = "S" }}
{extra}
{SUPPLIER_FIELDS}"#
    )
}

/// A CRM database and an ERP database, both loaded, and a config dir.
pub struct Env {
    pub dir: TempDir,
    pub crm_url: String,
    pub erp_url: String,
    pub crm: Client,
    pub erp: Client,
    pub config: PathBuf,
}

impl Env {
    /// Fresh databases with sql/postgres/crm_schema.sql and
    /// sql/examples/erp_schema.sql loaded, and a config with `opts`.
    pub async fn new(opts: Opts) -> Env {
        let server = testkit::server();
        Env::on_servers(server, server, opts).await
    }

    /// Like `new`, with the CRM database on `crm_server` and the ERP
    /// database on `erp_server`.
    pub async fn on_servers(
        crm_server: &testkit::Server,
        erp_server: &testkit::Server,
        opts: Opts,
    ) -> Env {
        let crm_url = testkit::fresh_database_on(crm_server, "crm").await;
        let erp_url = testkit::fresh_database_on(erp_server, "erp").await;
        let crm = connect(&crm_url).await;
        let erp = connect(&erp_url).await;
        // Sage CRM dates are local time; the tests use UTC on both sides.
        for (c, url) in [(&crm, &crm_url), (&erp, &erp_url)] {
            let db = url.rsplit('/').next().unwrap();
            c.batch_execute(&format!(
                "ALTER DATABASE \"{db}\" SET timezone TO 'UTC'; SET timezone TO 'UTC'"
            ))
            .await
            .unwrap();
        }
        load_sql(&crm, "crm_schema.sql", CRM_SCHEMA).await;
        load_sql(&erp, "erp_schema.sql", ERP_SCHEMA).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("crmsync.toml");
        let env = Env {
            dir,
            crm_url,
            erp_url,
            crm,
            erp,
            config,
        };
        env.write_config(&opts);
        env
    }

    /// The config text for `opts`.
    pub fn config_text(&self, opts: &Opts) -> String {
        let entity = opts
            .entity_override
            .clone()
            .unwrap_or_else(|| supplier_entity(""));
        // The entity's own keys must come before its [[entity.field]]
        // tables, so the override text carries the fields itself.
        let (entity_keys, entity_fields) = match entity.find("[[entity.field]]") {
            Some(i) => (&entity[..i], &entity[i..]),
            None => (entity.as_str(), ""),
        };
        format!(
            r#"# written by crmsync's integration tests
[crm]
url = "{crm}"
user_id = 1
timezone = "UTC"
{crm_extra}

[external]
url = "{erp}"
timezone = "UTC"
{external_extra}

[state]
side = "{state_side}"

[defaults]
batch_size = {batch}
settle = "0s"
overlap = "{overlap}"

[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
crm_filter = "Comp_Type = 'Supplier'"
direction = "crm_to_external"
delete_into_external = "{delete}"
{entity_keys}
{entity_fields}
{extra_fields}
"#,
            crm = self.crm_url,
            erp = self.erp_url,
            crm_extra = opts.crm_extra,
            external_extra = opts.external_extra,
            state_side = opts.state_side,
            batch = opts.batch_size,
            overlap = opts.overlap,
            delete = opts.delete_into_external,
            extra_fields = opts.extra_fields,
        )
    }

    /// Writes the config for `opts` to `self.config`.
    pub fn write_config(&self, opts: &Opts) {
        std::fs::write(&self.config, self.config_text(opts)).unwrap();
    }

    /// One `sync` of every entity, in-process through the library.
    pub async fn sync(&self) -> EntityReport {
        let plan = crmsync::cli::load_plan(&self.config).expect("the test config is valid");
        let engine = Engine::connect(plan).await.expect("connect");
        let mut reports = engine.sync(None, Mode::Apply).await.expect("sync");
        assert_eq!(reports.len(), 1, "one entity is configured");
        reports.remove(0)
    }

    /// The real binary with `args`, the test config and `envs`.
    pub fn run_binary(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        run_binary(&self.config, args, envs)
    }
}

/// Runs the crmsync binary with `--config config` and `args`.
pub fn run_binary(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    binary(config, args, envs)
        .output()
        .expect("run the crmsync binary")
}

/// The crmsync binary, ready to run.
pub fn binary(config: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmsync"));
    cmd.arg("--config").arg(config).args(args);
    cmd.env_remove("CRMSYNC_CONFIG").env_remove("CRMSYNC_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// stdout and stderr of a finished run, for messages.
pub fn output_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Inserts `n` supplier companies named "Company i" the way Sage CRM
/// writes them; row i is stamped `ts(i)` (an SQL expression of `i`).
/// Statuses cycle Active / Inactive / NULL, every fifth phone is NULL,
/// every other row is promoted. Returns the number inserted.
pub async fn insert_companies(crm: &Client, n: i64, ts: &str, comp_type: &str) -> u64 {
    crm.execute(
        &format!(
            "INSERT INTO company (comp_name, comp_type, comp_status, comp_website, \
                 comp_phonenumber, comp_emailaddress, comp_promote, \
                 comp_createdby, comp_createddate, comp_updatedby, comp_updateddate, \
                 comp_timestamp, comp_deleted, comp_secterr) \
             SELECT 'Company ' || i, $2, (ARRAY['Active', 'Inactive', NULL])[1 + i % 3], \
                 'https://c' || i || '.example.com', \
                 CASE WHEN i % 5 = 0 THEN NULL ELSE '+44 20 7946 ' || i END, \
                 'c' || i || '@example.com', CASE WHEN i % 2 = 0 THEN 'Y' END, \
                 1, t.ts, 1, t.ts, t.ts, NULL, {WORLDWIDE} \
             FROM generate_series(1::bigint, $1::bigint) AS i, \
                  LATERAL (SELECT ({ts})::timestamp(3) AS ts) AS t \
             ORDER BY i"
        ),
        &[&n, &comp_type],
    )
    .await
    .unwrap()
}

/// A supplier as the external table should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supplier {
    pub name: Option<String>,
    pub status: Option<String>,
    pub website: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub promote: bool,
}

/// What erp.supplier must hold for the CRM's live suppliers, by CRM id.
pub async fn expected_suppliers(crm: &Client) -> BTreeMap<i32, Supplier> {
    crm.query(
        "SELECT comp_companyid, comp_name, \
             CASE comp_status WHEN 'Active' THEN 'A' WHEN 'Inactive' THEN 'I' END, \
             comp_website, comp_phonenumber, comp_emailaddress, comp_promote = 'Y' \
         FROM company WHERE comp_type = 'Supplier' AND comp_deleted IS NULL",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.get(0),
            Supplier {
                name: r.get(1),
                status: r.get(2),
                website: r.get(3),
                phone: r.get(4),
                email: r.get(5),
                promote: r.get::<_, Option<bool>>(6).unwrap_or(false),
            },
        )
    })
    .collect()
}

/// The live rows of erp.supplier by CRM id; panics on a row without a
/// CRM id and on two rows with the same one.
pub async fn external_suppliers(erp: &Client) -> BTreeMap<i32, Supplier> {
    let rows = erp
        .query(
            "SELECT crm_company_id, name, status::text, website, phone, email, promote \
             FROM erp.supplier WHERE NOT is_deleted ORDER BY supplier_id",
            &[],
        )
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for r in rows {
        let id: Option<i32> = r.get(0);
        let id = id.expect("every row written by crmsync carries its CRM id");
        let s = Supplier {
            name: r.get(1),
            status: r.get(2),
            website: r.get(3),
            phone: r.get(4),
            email: r.get(5),
            promote: r.get(6),
        };
        assert!(
            out.insert(id, s).is_none(),
            "CRM company {id} arrived twice in erp.supplier"
        );
    }
    out
}

/// Asserts that erp.supplier holds exactly the CRM's live suppliers, each
/// once, every mapped field equal. Returns how many there are.
pub async fn assert_converged(env: &Env) -> usize {
    let want = expected_suppliers(&env.crm).await;
    let got = external_suppliers(&env.erp).await;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} CRM suppliers missing from erp.supplier (first {:?}), {} rows there that should not be (first {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
    for (id, w) in &want {
        assert_eq!(&got[id], w, "CRM company {id} differs in erp.supplier");
    }
    want.len()
}

/// Count of rows in `table` of `client`.
pub async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Makes the statistics of this session's writes visible to others now,
/// not within the next seconds (PostgreSQL 15 and later; older servers get
/// a pause instead).
pub async fn flush_statistics(client: &Client) {
    client
        .batch_execute(
            "DO $$ BEGIN PERFORM pg_stat_force_next_flush(); \
             EXCEPTION WHEN undefined_function THEN PERFORM pg_sleep(2); END $$",
        )
        .await
        .unwrap();
}
