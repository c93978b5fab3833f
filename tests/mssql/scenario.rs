//! Whole deployments with everything on SQL Server: the shipped example
//! mapping (suppliers and contacts, phones, e-mails and addresses, the
//! primary-contact cycle) between a Sage CRM whose clock runs in Berlin
//! and an ERP of erp_schema_mssql.sql with triggers (an AFTER UPDATE stamp,
//! an AFTER INSERT audit) and foreign keys, through backfill both ways,
//! two-way changes, deletes both ways, a second run refused, a killed run,
//! `verify`, `status` and `check`; the state on either side, CRM ids from
//! IDENTITY or from `eware_get_identity_id`, ERP keys of several types.

use super::{exec, go_batches, output_text, scalar_i64, Ids, Server, Tds, CRM_SCHEMA};
use super::{ERP_SCHEMA_MSSQL, WORLDWIDE};
use crmsync::engine::{Engine, EngineError, EntityReport, Mode};
use crmsync::value::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

const EXAMPLE: &str = include_str!("../../crmsync.example.toml");

/// An ERP key column: its definition (type, nullability, how it is drawn)
/// and the type of the columns that refer to it.
#[derive(Clone, Copy)]
struct Key {
    def: &'static str,
    ty: &'static str,
}

/// One deployment's choices.
#[derive(Clone, Copy)]
struct Site {
    ids: Ids,
    state_side: &'static str,
    crm_zone: &'static str,
    erp_zone: &'static str,
    supplier_key: Key,
    contact_key: Key,
    /// The ERP's `updated_at` column: its type and default.
    erp_stamp: &'static str,
}

/// The keys of Sage CRM's tables this mapping writes, which lose their
/// IDENTITY when ids come from `eware_get_identity_id`.
const SAGE_KEYS: [&str; 8] = [
    "Comp_CompanyId",
    "Pers_PersonId",
    "Phon_PhoneId",
    "PLink_LinkID",
    "Emai_EmailId",
    "ELink_LinkID",
    "Addr_AddressId",
    "AdLi_AddressLinkId",
];

/// `text` with `from` replaced by `to`, `from` being there exactly once.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once");
    text.replacen(from, to, 1)
}

/// The ERP's own habits on top of erp_schema_mssql.sql (whose contacts
/// and suppliers reference each other by foreign keys): a supplier code,
/// every insert audited by an AFTER INSERT trigger, and `updated_at`
/// stamped by AFTER UPDATE triggers with its column's default (`$now`),
/// so that the ERP's own updates need not set it.
const ERP_HABITS: &str = "
ALTER TABLE erp.supplier ADD code varchar(12) NULL
GO
CREATE TABLE erp.audit (
    audit_id int IDENTITY(1,1) NOT NULL PRIMARY KEY,
    tbl      nvarchar(20) NOT NULL,
    row_key  nvarchar(40) NOT NULL,
    at       datetime2(3) NOT NULL DEFAULT SYSDATETIME()
)
GO
CREATE TRIGGER erp.supplier_audit ON erp.supplier AFTER INSERT AS
    INSERT INTO erp.audit (tbl, row_key)
    SELECT N'supplier', CONVERT(nvarchar(40), supplier_id) FROM inserted
GO
CREATE TRIGGER erp.contact_audit ON erp.contact AFTER INSERT AS
    INSERT INTO erp.audit (tbl, row_key)
    SELECT N'contact', CONVERT(nvarchar(40), contact_id) FROM inserted
GO
CREATE TRIGGER erp.supplier_touch ON erp.supplier AFTER UPDATE AS
    UPDATE s SET updated_at = $now
      FROM erp.supplier s JOIN inserted i ON i.supplier_id = s.supplier_id
GO
CREATE TRIGGER erp.contact_touch ON erp.contact AFTER UPDATE AS
    UPDATE c SET updated_at = $now
      FROM erp.contact c JOIN inserted i ON i.contact_id = c.contact_id
GO
";

/// A running deployment: both servers, a session on each, the config.
struct Deployment {
    site: Site,
    crm_server: Server,
    erp_server: Server,
    crm: Tds,
    erp: Tds,
    _dir: TempDir,
    config: PathBuf,
}

impl Deployment {
    async fn new(site: Site) -> Deployment {
        let crm_server = Server::start_in(false, site.crm_zone).await;
        let erp_server = Server::start_in(false, site.erp_zone).await;
        let mut crm = crm_server.client().await;
        let mut schema = CRM_SCHEMA.to_string();
        if site.ids == Ids::StoredProcedure {
            for key in SAGE_KEYS {
                schema = swap(
                    &schema,
                    &format!("{key:<24}int IDENTITY(1,1) NOT NULL PRIMARY KEY"),
                    &format!("{key} int NOT NULL PRIMARY KEY"),
                );
            }
        }
        for batch in go_batches(&schema) {
            exec(&mut crm, &batch).await;
        }
        let mut erp = erp_server.client().await;
        let mut schema = ERP_SCHEMA_MSSQL.to_string();
        schema = swap(
            &schema,
            "supplier_id     bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,",
            &format!("supplier_id {} PRIMARY KEY,", site.supplier_key.def),
        );
        schema = swap(
            &schema,
            "contact_id      bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,",
            &format!("contact_id {} PRIMARY KEY,", site.contact_key.def),
        );
        schema = swap(
            &schema,
            "supplier_id     bigint NOT NULL REFERENCES",
            &format!("supplier_id {} NOT NULL REFERENCES", site.supplier_key.ty),
        );
        schema = swap(
            &schema,
            "ADD primary_contact_id bigint NULL",
            &format!("ADD primary_contact_id {} NULL", site.contact_key.ty),
        );
        let stamp = "updated_at      datetime2(3) NOT NULL DEFAULT SYSDATETIME()";
        assert_eq!(
            schema.matches(stamp).count(),
            2,
            "erp_schema_mssql.sql changed"
        );
        schema = schema.replace(stamp, &format!("updated_at {}", site.erp_stamp));
        let (_, now) = site.erp_stamp.split_once("DEFAULT ").unwrap();
        schema.push_str(&ERP_HABITS.replace("$now", now));
        for batch in go_batches(&schema) {
            exec(&mut erp, &batch).await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("crm.pw"), &crm_server.password).unwrap();
        std::fs::write(dir.path().join("erp.pw"), &erp_server.password).unwrap();
        let config = dir.path().join("crmsync.toml");
        std::fs::write(&config, example_config(&site, &crm_server, &erp_server)).unwrap();
        Deployment {
            site,
            crm_server,
            erp_server,
            crm,
            erp,
            _dir: dir,
            config,
        }
    }

    /// A new session on the side that holds the state.
    async fn state_session(&self) -> Tds {
        match self.site.state_side {
            "crm" => self.crm_server.client().await,
            _ => self.erp_server.client().await,
        }
    }

    /// A Sage-style insert into `table` (whose key is `key`) of `cols` and
    /// `vals`; returns the new id, drawn as the site's Sage CRM draws it.
    async fn sage_insert(&mut self, table: &str, key: &str, cols: &str, vals: &str) -> i64 {
        let sql = match self.site.ids {
            Ids::Identity => format!(
                "INSERT INTO dbo.{table} ({cols}) VALUES ({vals}); \
                 SELECT CAST(SCOPE_IDENTITY() AS int)"
            ),
            Ids::StoredProcedure => format!(
                "DECLARE @id int; EXEC @id = eware_get_identity_id N'{table}'; \
                 INSERT INTO dbo.{table} ({key}, {cols}) VALUES (@id, {vals}); SELECT @id"
            ),
        };
        scalar_i64(&mut self.crm, &sql).await.expect("the new id")
    }

    async fn company(&mut self, name: &str, kind: &str, code: Option<&str>) -> i64 {
        let code = code.map_or("NULL".to_string(), |c| format!("N'{c}'"));
        self.sage_insert(
            "Company",
            "Comp_CompanyId",
            "Comp_Name, Comp_Type, Comp_Status, Comp_IndCode, Comp_CreatedBy, Comp_CreatedDate, \
             Comp_UpdatedBy, Comp_UpdatedDate, Comp_TimeStamp, Comp_SecTerr",
            &format!(
                "N'{name}', N'{kind}', N'Active', {code}, 1, GETDATE(), 1, GETDATE(), GETDATE(), \
                 {WORLDWIDE}"
            ),
        )
        .await
    }

    async fn person(&mut self, company: i64, first: &str, last: &str) -> i64 {
        self.sage_insert(
            "Person",
            "Pers_PersonId",
            "Pers_CompanyId, Pers_FirstName, Pers_LastName, Pers_CreatedBy, Pers_CreatedDate, \
             Pers_UpdatedBy, Pers_UpdatedDate, Pers_TimeStamp, Pers_SecTerr",
            &format!(
                "{company}, N'{first}', N'{last}', 1, GETDATE(), 1, GETDATE(), GETDATE(), \
                 {WORLDWIDE}"
            ),
        )
        .await
    }

    /// A company's Business phone and e-mail and its primary address, as
    /// Sage CRM writes them.
    async fn company_children(&mut self, company: i64, phone: &str, email: &str, city: &str) {
        let ph = self
            .sage_insert(
                "Phone",
                "Phon_PhoneId",
                "Phon_Number, Phon_CreatedDate, Phon_UpdatedDate",
                &format!("N'{phone}', GETDATE(), GETDATE()"),
            )
            .await;
        self.sage_insert(
            "PhoneLink",
            "PLink_LinkID",
            "PLink_EntityID, PLink_RecordID, PLink_Type, PLink_PhoneId, PLink_CreatedDate, \
             PLink_UpdatedDate",
            &format!("5, {company}, N'Business', {ph}, GETDATE(), GETDATE()"),
        )
        .await;
        let em = self
            .sage_insert(
                "Email",
                "Emai_EmailId",
                "Emai_EmailAddress, Emai_CreatedDate, Emai_UpdatedDate",
                &format!("N'{email}', GETDATE(), GETDATE()"),
            )
            .await;
        self.sage_insert(
            "EmailLink",
            "ELink_LinkID",
            "ELink_EntityID, ELink_RecordID, ELink_Type, ELink_EmailId, ELink_CreatedDate, \
             ELink_UpdatedDate",
            &format!("5, {company}, N'Business', {em}, GETDATE(), GETDATE()"),
        )
        .await;
        let ad = self
            .sage_insert(
                "Address",
                "Addr_AddressId",
                "Addr_City, Addr_CreatedDate, Addr_UpdatedDate",
                &format!("N'{city}', GETDATE(), GETDATE()"),
            )
            .await;
        self.sage_insert(
            "Address_Link",
            "AdLi_AddressLinkId",
            "AdLi_AddressId, AdLi_CompanyID, AdLi_Type, AdLi_CreatedDate, AdLi_UpdatedDate",
            &format!("{ad}, {company}, N'Business', GETDATE(), GETDATE()"),
        )
        .await;
        touch(
            &mut self.crm,
            &format!(
                "UPDATE dbo.Company SET Comp_PrimaryAddressId = {ad} WHERE Comp_CompanyId = {company}"
            ),
        )
        .await;
    }

    /// The binary with `args`, off the test's runtime (the stand-ins serve
    /// from it): its exit code, and its output for messages.
    async fn run(&self, args: &[&str]) -> (i32, String) {
        let config = self.config.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = crate::common::run_binary(&config, &argv, &[]);
            let (stdout, stderr) = output_text(&out);
            (
                out.status.code().unwrap_or(-1),
                format!("{args:?}:\n{stdout}\n{stderr}"),
            )
        })
        .await
        .unwrap()
    }

    /// One in-process sync of every entity, waiting for a killed run's
    /// lock to go with its session.
    async fn sync_all(&self) -> Vec<EntityReport> {
        for _ in 0..100 {
            let plan = crmsync::cli::load_plan(&self.config).expect("the config is valid");
            let engine = Engine::connect(plan).await.expect("connect");
            match engine.sync(None, Mode::Apply).await {
                Err(EngineError::Busy { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return other.expect("sync"),
            }
        }
        panic!("the run lock was never released");
    }

    /// Open rejects of every entity, with their reasons.
    async fn open_rejects(&self) -> Vec<Option<String>> {
        let mut state = self.state_session().await;
        state
            .simple_query(
                "SELECT entity + N': ' + reason FROM crmsync.rejects WHERE resolved_at IS NULL",
            )
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                text(
                    crmsync::endpoint::mssql::value_of(r.into_iter().next().as_ref().unwrap())
                        .unwrap(),
                )
            })
            .collect()
    }

    /// Both sides hold the same suppliers and contacts, each naming the
    /// other, every mapped value equal. Returns (suppliers, contacts).
    async fn assert_in_step(&mut self) -> (usize, usize) {
        let cs = rows(&mut self.crm, CRM_SUPPLIERS).await;
        let es = rows(&mut self.erp, ERP_SUPPLIERS).await;
        assert_eq!(cs, es, "suppliers: CRM (left) and ERP (right)");
        let cp = rows(&mut self.crm, CRM_PERSONS).await;
        let ec = rows(&mut self.erp, ERP_CONTACTS).await;
        assert_eq!(cp, ec, "persons (left) and contacts (right)");
        (cs.len(), cp.len())
    }
}

/// The example config between the deployment's servers: the CRM in its
/// zone, small pages, no settle delay, the supplier code mapped, contacts
/// deleted outright in the ERP.
fn example_config(site: &Site, crm: &Server, erp: &Server) -> String {
    let url = |s: &Server| format!("mssql://{}@{}:{}/{}", s.user, s.host, s.port, s.database);
    let mut t = EXAMPLE.to_string();
    t = swap(
        &t,
        "url = \"postgres://crmsync@crm-db.example.com:5432/crm\"",
        &format!("url = \"{}\"\ntls = \"{}\"", url(crm), crm.tls()),
    );
    t = swap(
        &t,
        "url = \"postgres://crmsync@erp-db.example.com:5432/erp\"",
        &format!("url = \"{}\"\ntls = \"{}\"", url(erp), erp.tls()),
    );
    t = swap(
        &t,
        "password_env = \"CRM_PASSWORD\"",
        "password_file = \"crm.pw\"",
    );
    t = swap(
        &t,
        "password_env = \"EXT_PASSWORD\"",
        "password_file = \"erp.pw\"",
    );
    t = swap(
        &t,
        "timezone = \"Europe/London\"",
        &format!("timezone = {:?}", site.crm_zone),
    );
    t = swap(
        &t,
        "timezone = \"UTC\"",
        &format!("timezone = {:?}", site.erp_zone),
    );
    t = swap(
        &t,
        "side = \"external\"",
        &format!("side = {:?}", site.state_side),
    );
    t = swap(&t, "batch_size = 1000", "batch_size = 20");
    t = swap(&t, "settle = \"2s\"", "settle = \"0s\"");
    t = swap(&t, "max_delete_ratio = 0.10", "max_delete_ratio = 0.6");
    t = swap(
        &t,
        "delete_into_external = \"ignore\"",
        "delete_into_external = \"hard\"",
    );
    swap(
        &t,
        "[[entity.field]]\ncrm = \"Comp_WebSite\"",
        "[[entity.field]]\ncrm = \"Comp_IndCode\"\nexternal = \"code\"\n\n\
         [[entity.field]]\ncrm = \"Comp_WebSite\"",
    )
}

/// The CRM's live suppliers in the ERP's terms, by CRM id: (link, name,
/// status, code, website, phone, email, city, promote, primary contact's
/// link). Keys are compared as lower-case trimmed text, as SQL Server
/// compares them.
const CRM_SUPPLIERS: &str = "
SELECT c.Comp_CompanyId, LOWER(RTRIM(c.comp_supplierid)), c.Comp_Name,
       CASE c.Comp_Status WHEN N'Active' THEN N'A' WHEN N'Inactive' THEN N'I' END,
       c.Comp_IndCode, c.Comp_WebSite,
       (SELECT TOP (1) p.Phon_Number FROM dbo.PhoneLink l
          JOIN dbo.Phone p ON p.Phon_PhoneId = l.PLink_PhoneId
         WHERE l.PLink_EntityID = 5 AND l.PLink_RecordID = c.Comp_CompanyId
           AND l.PLink_Type = N'Business' AND l.PLink_Deleted IS NULL
           AND p.Phon_Deleted IS NULL ORDER BY l.PLink_LinkID),
       (SELECT TOP (1) e.Emai_EmailAddress FROM dbo.EmailLink l
          JOIN dbo.Email e ON e.Emai_EmailId = l.ELink_EmailId
         WHERE l.ELink_EntityID = 5 AND l.ELink_RecordID = c.Comp_CompanyId
           AND l.ELink_Type = N'Business' AND l.ELink_Deleted IS NULL
           AND e.Emai_Deleted IS NULL ORDER BY l.ELink_LinkID),
       (SELECT a.Addr_City FROM dbo.Address a WHERE a.Addr_AddressId = c.Comp_PrimaryAddressId),
       CASE WHEN c.comp_promote = N'Y' THEN N'Y' END,
       (SELECT LOWER(RTRIM(p.pers_intforeignid)) FROM dbo.Person p
         WHERE p.Pers_PersonId = c.Comp_PrimaryPersonId)
  FROM dbo.Company c WHERE c.Comp_Type = N'Supplier' AND c.Comp_Deleted IS NULL";

/// The ERP's live suppliers, in the same shape.
const ERP_SUPPLIERS: &str = "
SELECT s.crm_company_id, LOWER(RTRIM(CONVERT(nvarchar(40), s.supplier_id))), s.name, s.status,
       s.code, s.website, s.phone, s.email, s.city, CASE WHEN s.promote = 1 THEN N'Y' END,
       LOWER(RTRIM(CONVERT(nvarchar(40), s.primary_contact_id)))
  FROM erp.supplier s WHERE s.is_deleted = 0 AND s.kind = N'S'";

/// The CRM's live persons in the ERP's terms: (link, company's link,
/// first, last, email).
const CRM_PERSONS: &str = "
SELECT p.Pers_PersonId, LOWER(RTRIM(p.pers_intforeignid)), LOWER(RTRIM(c.comp_supplierid)),
       p.Pers_FirstName, p.Pers_LastName, p.Pers_EmailAddress
  FROM dbo.Person p LEFT JOIN dbo.Company c ON c.Comp_CompanyId = p.Pers_CompanyId
 WHERE p.Pers_Deleted IS NULL";

/// The ERP's contacts, in the same shape.
const ERP_CONTACTS: &str = "
SELECT crm_person_id, LOWER(RTRIM(CONVERT(nvarchar(40), contact_id))),
       LOWER(RTRIM(CONVERT(nvarchar(40), supplier_id))), first_name, last_name, email
  FROM erp.contact";

/// One side's rows as text, by the id of the CRM row they stand for.
type Rows = BTreeMap<i64, Vec<Option<String>>>;

fn text(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s),
        Value::Int(i) => Some(i.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Uuid(u) => Some(u.to_string()),
        Value::Decimal(d) => Some(d.to_string()),
        other => panic!("not a value these queries return: {other:?}"),
    }
}

/// Rows of `sql` by their first column (which every row must have, once).
async fn rows(c: &mut Tds, sql: &str) -> Rows {
    let got = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {sql}"))
        .into_first_result()
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {sql}"));
    let mut out = Rows::new();
    for row in got {
        let mut cells = row
            .into_iter()
            .map(|d| text(crmsync::endpoint::mssql::value_of(&d).unwrap()));
        let key = cells.next().unwrap();
        let key: i64 = key
            .unwrap_or_else(|| panic!("a row that names no CRM row in: {sql}"))
            .parse()
            .unwrap();
        let vals: Vec<_> = cells.collect();
        if let Some(old) = out.insert(key, vals.clone()) {
            panic!("CRM row {key} twice: {old:?} and {vals:?} in: {sql}");
        }
    }
    out
}

/// Every table `eware_get_identity_id` serves has its next id above the
/// largest one in use: rows crmsync inserted took their ids from it.
async fn assert_identities_ahead(crm: &mut Tds) {
    for (table, key) in [
        ("Company", "Comp_CompanyId"),
        ("Person", "Pers_PersonId"),
        ("Phone", "Phon_PhoneId"),
        ("PhoneLink", "PLink_LinkID"),
        ("Email", "Emai_EmailId"),
        ("EmailLink", "ELink_LinkID"),
        ("Address", "Addr_AddressId"),
        ("Address_Link", "AdLi_AddressLinkId"),
    ] {
        assert_eq!(
            count(
                crm,
                &format!(
                    "SELECT COUNT(*) FROM dbo.SQL_Identity i JOIN dbo.Custom_Tables t \
                       ON t.Bord_TableId = i.Id_TableId \
                     WHERE t.Bord_Name = N'{table}' \
                       AND i.Id_NextId > (SELECT ISNULL(MAX({key}), 0) FROM dbo.{table})"
                )
            )
            .await,
            1,
            "{table}: eware_get_identity_id would hand out an id in use"
        );
    }
}

async fn count(c: &mut Tds, sql: &str) -> i64 {
    scalar_i64(c, sql).await.unwrap_or(0)
}

async fn one_text(c: &mut Tds, sql: &str) -> Option<String> {
    rows(c, &format!("SELECT 1, ({sql})"))
        .await
        .remove(&1)
        .and_then(|mut v| v.remove(0))
}

/// Runs `sql`, which must change exactly one row.
async fn touch(c: &mut Tds, sql: &str) {
    let done = c
        .execute(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {sql}"));
    assert_eq!(done.total(), 1, "{sql}");
}

/// Writes of a run into either side.
fn writes(reports: &[EntityReport]) -> u64 {
    reports.iter().map(|r| r.changes()).sum()
}

/// The whole life of a deployment on SQL Server alone.
async fn deployment(site: Site) {
    let mut d = Deployment::new(site).await;
    let (code, out) = d.run(&["check"]).await;
    assert_eq!(code, 0, "{out}");
    // Both sides have the indexes the change reads use.
    assert!(out.contains("check passed"), "{out}");
    assert!(!out.contains("no index on"), "{out}");

    // What each side holds before crmsync first runs.
    let acme = d.company("Acme", "Supplier", Some("ac-1")).await;
    d.company_children(acme, "+1 212 555 0100", "sales@acme.example", "Boston")
        .await;
    let globex = d.company("Globex", "Supplier", None).await;
    d.company("Initech", "Customer", None).await;
    let alice = d.person(acme, "Alice", "Archer").await;
    let bob = d.person(acme, "Bob", "Baker").await;
    let carol = d.person(globex, "Carol", "Cole").await;
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Company SET Comp_PrimaryPersonId = {alice}, Comp_UpdatedDate = GETDATE(), \
             Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId = {acme}"
        ),
    )
    .await;
    exec(
        &mut d.erp,
        "INSERT INTO erp.supplier (name, status, code, phone, city)
         VALUES (N'Umbrella', N'A', 'um-9', N'+49 30 1234', N'Raccoon City');
         INSERT INTO erp.contact (supplier_id, first_name, last_name)
         SELECT supplier_id, N'Eve', N'Ewing' FROM erp.supplier WHERE name = N'Umbrella';
         INSERT INTO erp.contact (supplier_id, first_name, last_name)
         SELECT supplier_id, N'Frank', N'Fox' FROM erp.supplier WHERE name = N'Umbrella';
         UPDATE erp.supplier SET primary_contact_id =
             (SELECT contact_id FROM erp.contact WHERE first_name = N'Eve')
          WHERE name = N'Umbrella'",
    )
    .await;

    // Backfill both ways, then a sync that completes what backfill leaves.
    let (code, out) = d.run(&["backfill"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = d.run(&["backfill", "--direction", "external_to_crm"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        count(
            &mut d.crm,
            "SELECT COUNT(*) FROM dbo.Person p JOIN dbo.Company c \
               ON c.Comp_CompanyId = p.Pers_CompanyId \
             WHERE c.Comp_Name = N'Umbrella' AND p.pers_intforeignid IS NOT NULL"
        )
        .await,
        2,
        "the ERP's supplier and contacts are in CRM, linked, before any sync"
    );
    let first = d.sync_all().await;
    let open = d.open_rejects().await;
    assert!(open.is_empty(), "{open:?}\n{first:?}");
    assert_eq!(d.assert_in_step().await, (3, 5), "{first:?}");
    assert_eq!(
        count(
            &mut d.crm,
            &format!(
                "SELECT COUNT(*) FROM dbo.Company WHERE Comp_Name = N'Umbrella' \
                 AND Comp_CreatedBy = 2 AND Comp_UpdatedBy = 2 AND Comp_SecTerr = {WORLDWIDE} \
                 AND Comp_CreatedDate IS NOT NULL AND Comp_Status = N'Active'"
            )
        )
        .await,
        1,
        "the ERP's supplier written by Sage's rules"
    );
    let quiet = d.sync_all().await;
    assert_eq!(writes(&quiet), 0, "a run with nothing to do: {quiet:?}");

    // Changes on both sides, children included, a clash either way round,
    // new rows both ways.
    let umbrella = count(
        &mut d.crm,
        "SELECT Comp_CompanyId FROM dbo.Company WHERE Comp_Name = N'Umbrella'",
    )
    .await;
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Company SET Comp_Name = N'Globex Corp', Comp_IndCode = N'gx-2', \
             Comp_UpdatedDate = GETDATE(), Comp_TimeStamp = GETDATE() \
             WHERE Comp_CompanyId = {globex}"
        ),
    )
    .await;
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Phone SET Phon_Number = N'+1 212 555 0199', Phon_UpdatedDate = GETDATE() \
             WHERE Phon_PhoneId = (SELECT PLink_PhoneId FROM dbo.PhoneLink \
               WHERE PLink_RecordID = {acme} AND PLink_EntityID = 5)"
        ),
    )
    .await;
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Email SET Emai_EmailAddress = N'buy@acme.example', \
             Emai_UpdatedDate = GETDATE() \
             WHERE Emai_EmailId = (SELECT ELink_EmailId FROM dbo.EmailLink \
               WHERE ELink_RecordID = {acme} AND ELink_EntityID = 5)"
        ),
    )
    .await;
    // Eve: CRM first, the ERP later; Bob: the ERP first, CRM later. The
    // later change wins, compared in UTC whatever the zones.
    touch(
        &mut d.crm,
        "UPDATE dbo.Person SET Pers_FirstName = N'Evelyn', Pers_UpdatedDate = GETDATE(), \
         Pers_TimeStamp = GETDATE() WHERE Pers_FirstName = N'Eve'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    exec(
        &mut d.erp,
        &format!(
            "UPDATE erp.contact SET last_name = N'Cole-Smith' WHERE crm_person_id = {carol};
             UPDATE erp.supplier SET code = 'um-10', city = N'Gotham', phone = N'+49 30 9999',
                    email = N'info@umbrella.example' WHERE name = N'Umbrella';
             UPDATE erp.contact SET first_name = N'Robert' WHERE crm_person_id = {bob};
             UPDATE erp.contact SET first_name = N'Eva' WHERE first_name = N'Eve';
             INSERT INTO erp.supplier (name, status) VALUES (N'Hooli', N'I');"
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Person SET Pers_FirstName = N'Bobby', Pers_UpdatedDate = GETDATE(), \
             Pers_TimeStamp = GETDATE() WHERE Pers_PersonId = {bob}"
        ),
    )
    .await;
    let grace = d.person(umbrella, "Grace", "Grant").await;
    exec(
        &mut d.erp,
        &format!(
            "INSERT INTO erp.contact (supplier_id, first_name, last_name)
             SELECT supplier_id, N'Heidi', N'O''Hill-Ødegård 🙂' FROM erp.supplier WHERE crm_company_id = {acme}"
        ),
    )
    .await;
    let second = d.sync_all().await;
    let open = d.open_rejects().await;
    assert!(open.is_empty(), "{open:?}\n{second:?}");
    assert_eq!(d.assert_in_step().await, (4, 7), "{second:?}");
    let names = |id: i64| {
        format!("SELECT Pers_FirstName + N' ' + Pers_LastName FROM dbo.Person WHERE Pers_PersonId = {id}")
    };
    assert_eq!(
        one_text(&mut d.crm, &names(bob)).await.as_deref(),
        Some("Bobby Baker"),
        "the later change (CRM's) wins"
    );
    assert_eq!(
        one_text(&mut d.crm, &names(carol)).await.as_deref(),
        Some("Carol Cole-Smith")
    );
    assert_eq!(
        count(
            &mut d.crm,
            "SELECT COUNT(*) FROM dbo.Person WHERE Pers_FirstName = N'Eva'"
        )
        .await,
        1,
        "the later change (the ERP's) wins"
    );
    assert_eq!(
        one_text(
            &mut d.erp,
            &format!("SELECT phone + N' ' + email FROM erp.supplier WHERE crm_company_id = {acme}")
        )
        .await
        .as_deref(),
        Some("+1 212 555 0199 buy@acme.example"),
        "CRM's child changes reach the ERP"
    );
    assert_eq!(
        count(
            &mut d.crm,
            &format!(
                "SELECT COUNT(*) FROM dbo.EmailLink l JOIN dbo.Email e \
                   ON e.Emai_EmailId = l.ELink_EmailId \
                 WHERE l.ELink_EntityID = 5 AND l.ELink_RecordID = {umbrella} \
                   AND l.ELink_Type = N'Business' AND e.Emai_EmailAddress = N'info@umbrella.example' \
                   AND l.ELink_Deleted IS NULL AND e.Emai_Deleted IS NULL"
            )
        )
        .await,
        1,
        "the ERP's new e-mail is a Business e-mail of Umbrella's in CRM"
    );
    let quiet = d.sync_all().await;
    assert_eq!(
        writes(&quiet),
        0,
        "no ping-pong after two-way changes: {quiet:?}"
    );

    // Deletes both ways: a CRM person (its contact deleted outright), an
    // ERP contact deleted outright (its person soft-deleted), a CRM
    // supplier (flagged in the ERP), an ERP supplier flagged (soft-deleted
    // in CRM).
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Person SET Pers_Deleted = 1, Pers_UpdatedDate = GETDATE(), \
             Pers_TimeStamp = GETDATE() WHERE Pers_PersonId = {grace}"
        ),
    )
    .await;
    exec(
        &mut d.erp,
        "UPDATE erp.supplier SET primary_contact_id = NULL
          WHERE primary_contact_id IN (SELECT contact_id FROM erp.contact WHERE first_name = N'Frank');
         DELETE FROM erp.contact WHERE first_name = N'Frank';
         UPDATE erp.supplier SET is_deleted = 1 WHERE name = N'Hooli';
         UPDATE erp.supplier SET phone = NULL WHERE name = N'Umbrella';
         UPDATE erp.contact SET supplier_id =
             (SELECT supplier_id FROM erp.supplier WHERE name = N'Umbrella')
          WHERE first_name = N'Heidi'",
    )
    .await;
    // Bob moves to Umbrella in CRM, Heidi in the ERP.
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Person SET Pers_CompanyId = {umbrella}, Pers_UpdatedDate = GETDATE(), \
             Pers_TimeStamp = GETDATE() WHERE Pers_PersonId = {bob}"
        ),
    )
    .await;
    // Sage deletes Acme's e-mail: the link and the e-mail flagged.
    exec(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Email SET Emai_Deleted = 1, Emai_UpdatedDate = GETDATE() \
             WHERE Emai_EmailId = (SELECT ELink_EmailId FROM dbo.EmailLink \
               WHERE ELink_RecordID = {acme} AND ELink_EntityID = 5); \
             UPDATE dbo.EmailLink SET ELink_Deleted = 1, ELink_UpdatedDate = GETDATE() \
             WHERE ELink_RecordID = {acme} AND ELink_EntityID = 5"
        ),
    )
    .await;
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Company SET Comp_Deleted = 1, Comp_UpdatedDate = GETDATE(), \
             Comp_TimeStamp = GETDATE() WHERE Comp_CompanyId = {globex}"
        ),
    )
    .await;
    let third = d.sync_all().await;
    let open = d.open_rejects().await;
    assert!(open.is_empty(), "{open:?}\n{third:?}");
    assert_eq!(d.assert_in_step().await, (2, 5), "{third:?}");
    // Carol still works for the deleted Globex: her contact stays under
    // the flagged supplier.
    assert_eq!(
        count(
            &mut d.erp,
            &format!(
                "SELECT COUNT(*) FROM erp.contact c JOIN erp.supplier s \
                   ON s.supplier_id = c.supplier_id \
                 WHERE c.crm_person_id = {carol} AND s.crm_company_id = {globex} \
                   AND s.is_deleted = 1"
            )
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &mut d.erp,
            "SELECT COUNT(*) FROM erp.contact WHERE first_name = N'Grace'"
        )
        .await,
        0,
        "the CRM delete removed the contact"
    );
    assert_eq!(
        count(
            &mut d.crm,
            "SELECT COUNT(*) FROM dbo.Person WHERE Pers_FirstName = N'Frank' AND Pers_Deleted = 1"
        )
        .await,
        1,
        "the ERP delete soft-deleted the person"
    );
    assert_eq!(
        count(
            &mut d.crm,
            "SELECT COUNT(*) FROM dbo.Company WHERE Comp_Name = N'Hooli' AND Comp_Deleted = 1"
        )
        .await,
        1,
        "the ERP's flag soft-deleted the company"
    );
    assert_eq!(
        count(
            &mut d.erp,
            &format!(
                "SELECT COUNT(*) FROM erp.contact c JOIN erp.supplier s \
                   ON s.supplier_id = c.supplier_id \
                 WHERE s.crm_company_id = {umbrella} AND c.first_name IN (N'Bobby', N'Heidi') \
                   AND c.last_name IN (N'Baker', N'O''Hill-Ødegård 🙂')"
            )
        )
        .await,
        2,
        "Bob and Heidi work for Umbrella on both sides"
    );
    assert_eq!(
        one_text(
            &mut d.erp,
            &format!(
                "SELECT ISNULL(email, N'none') FROM erp.supplier WHERE crm_company_id = {acme}"
            )
        )
        .await
        .as_deref(),
        Some("none"),
        "Sage's e-mail delete empties the ERP's column"
    );
    assert_eq!(
        count(
            &mut d.crm,
            &format!(
                "SELECT COUNT(*) FROM dbo.PhoneLink WHERE PLink_RecordID = {umbrella} \
                 AND PLink_EntityID = 5 AND PLink_Deleted IS NULL"
            )
        )
        .await,
        0,
        "the ERP's emptied phone ends the CRM phone link"
    );

    // A run while another holds the entity's lock exits 1 and writes
    // nothing.
    touch(
        &mut d.crm,
        &format!(
            "UPDATE dbo.Company SET Comp_WebSite = N'https://acme.example', \
             Comp_UpdatedDate = GETDATE(), Comp_TimeStamp = GETDATE() \
             WHERE Comp_CompanyId = {acme}"
        ),
    )
    .await;
    let mut holder = d.state_session().await;
    assert_eq!(
        scalar_i64(
            &mut holder,
            "DECLARE @r int; EXEC @r = sp_getapplock @Resource = N'crmsync:crmsync:supplier', \
             @LockMode = 'Exclusive', @LockOwner = 'Session', @LockTimeout = 0; SELECT @r",
        )
        .await,
        Some(0)
    );
    let (code, out) = d.run(&["sync"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another crmsync run"), "{out}");
    assert_eq!(
        count(
            &mut d.erp,
            "SELECT COUNT(*) FROM erp.supplier WHERE website IS NOT NULL"
        )
        .await,
        0,
        "the refused run wrote nothing"
    );
    exec(
        &mut holder,
        "EXEC sp_releaseapplock @Resource = N'crmsync:crmsync:supplier', @LockOwner = 'Session'",
    )
    .await;
    drop(holder);

    // A run killed while it writes contacts, then run again.
    let temps: Vec<String> = (1..=100)
        .map(|i| format!("(N'Temp', N'Worker {i}')"))
        .collect();
    for chunk in temps.chunks(50) {
        match d.site.ids {
            Ids::Identity => {
                exec(
                    &mut d.crm,
                    &format!(
                        "INSERT INTO dbo.Person (Pers_CompanyId, Pers_FirstName, Pers_LastName, \
                         Pers_CreatedBy, Pers_CreatedDate, Pers_UpdatedBy, Pers_UpdatedDate, \
                         Pers_TimeStamp, Pers_SecTerr) \
                         SELECT {acme}, f, l, 1, GETDATE(), 1, GETDATE(), GETDATE(), {WORLDWIDE} \
                           FROM (VALUES {}) v (f, l)",
                        chunk.join(", ")
                    ),
                )
                .await;
            }
            Ids::StoredProcedure => {
                for row in chunk {
                    let (f, l) = row[1..row.len() - 1].split_once(", ").unwrap();
                    let f = f.trim_start_matches("N'").trim_end_matches('\'');
                    let l = l.trim_start_matches("N'").trim_end_matches('\'');
                    d.person(acme, f, l).await;
                }
            }
        }
    }
    let blocked = count(
        &mut d.crm,
        "SELECT Pers_PersonId FROM dbo.Person WHERE Pers_LastName = N'Worker 60'",
    )
    .await;
    // An ERP session holds an uncommitted contact for Worker 60: the run
    // waits on it in the middle of the contacts.
    let mut blocker = d.erp_server.client().await;
    exec(
        &mut blocker,
        &format!(
            "BEGIN TRANSACTION; INSERT INTO erp.contact (crm_person_id, supplier_id, last_name) \
             SELECT {blocked}, supplier_id, N'blocker' FROM erp.supplier \
              WHERE crm_company_id = {acme}"
        ),
    )
    .await;
    let mut child = crate::common::binary(&d.config, &["sync"], &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let temp_contacts =
        "SELECT COUNT(*) FROM erp.contact WITH (READPAST) WHERE first_name = N'Temp'";
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        if count(&mut d.erp, temp_contacts).await >= 40 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second run while this one works: refused, exit 1.
    let (code, out) = d.run(&["sync", "--entity", "contact"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another crmsync run"), "{out}");
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
    let partial = count(&mut d.erp, temp_contacts).await;
    assert!(partial < 100, "{partial} contacts at the kill");
    exec(&mut blocker, "ROLLBACK").await;
    drop(blocker);

    let mut rerun = None;
    for _ in 0..50 {
        let (code, out) = d.run(&["sync"]).await;
        if code == 1 && out.contains("another crmsync run") {
            // The killed run's session has not gone yet.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        rerun = Some((code, out));
        break;
    }
    let (code, out) = rerun.expect("the killed run's lock went with its session");
    assert_eq!(code, 0, "{out}");
    assert_eq!(d.assert_in_step().await, (2, 105));
    // Every row was inserted once: one audit row each, none for the
    // rolled-back blocker.
    for (tbl, key, n) in [
        ("contact", "contact_id", 107),
        ("supplier", "supplier_id", 4),
    ] {
        assert_eq!(
            count(
                &mut d.erp,
                &format!("SELECT COUNT(*) FROM erp.audit WHERE tbl = N'{tbl}'")
            )
            .await,
            n,
            "{tbl}: one insert each"
        );
        assert_eq!(
            count(
                &mut d.erp,
                &format!("SELECT COUNT(DISTINCT row_key) FROM erp.audit WHERE tbl = N'{tbl}'")
            )
            .await,
            n,
            "{tbl}: no key inserted twice"
        );
        assert_eq!(
            count(
                &mut d.erp,
                &format!(
                    "SELECT COUNT(*) FROM erp.audit a WHERE a.tbl = N'{tbl}' AND NOT EXISTS \
                     (SELECT 1 FROM erp.{tbl} t \
                       WHERE CONVERT(nvarchar(40), t.{key}) = a.row_key)"
                )
            )
            .await,
            if tbl == "contact" { 2 } else { 0 },
            "{tbl}: only Frank's and Grace's contacts are gone"
        );
    }
    assert_eq!(
        count(
            &mut d.crm,
            "SELECT COUNT(*) FROM (SELECT pers_intforeignid FROM dbo.Person \
              WHERE Pers_Deleted IS NULL AND pers_intforeignid IS NOT NULL \
              GROUP BY pers_intforeignid HAVING COUNT(*) > 1) d"
        )
        .await,
        0,
        "no ERP contact named by two persons"
    );
    assert_eq!(
        count(&mut d.crm, "SELECT COUNT(*) FROM dbo.Person").await,
        107,
        "no person inserted twice"
    );
    assert_eq!(
        count(&mut d.crm, "SELECT COUNT(*) FROM dbo.Company").await,
        5,
        "no company inserted twice"
    );

    if d.site.ids == Ids::StoredProcedure {
        assert_identities_ahead(&mut d.crm).await;
    }
    for args in [&["verify"][..], &["status", "--max-lag", "10m"], &["check"]] {
        let (code, out) = d.run(args).await;
        assert_eq!(code, 0, "{out}");
        if args[0] == "verify" {
            assert!(out.contains("0 differ"), "{out}");
        }
        if args[0] == "status" {
            for entity in ["supplier", "contact"] {
                assert!(
                    out.lines()
                        .any(|l| l.trim_start().starts_with(&format!("{entity}: "))
                            && l.contains(" links, 0 open rejects, 0 open conflicts")),
                    "{out}"
                );
            }
            assert!(!out.contains("did not finish"), "{out}");
            // Each side's lag by its own clock: seconds, whatever the zones.
            let lags: Vec<f64> = out
                .split(", lag ")
                .skip(1)
                .map(|l| l.split(' ').next().unwrap().parse().unwrap())
                .collect();
            assert!(!lags.is_empty(), "{out}");
            assert!(lags.iter().all(|l| (0.0..120.0).contains(l)), "{out}");
        }
    }
    let quiet = d.sync_all().await;
    assert_eq!(writes(&quiet), 0, "{quiet:?}");
}

/// IDENTITY ids in CRM, the state on the ERP, ERP keys int and bigint
/// identities (seeded apart from the CRM's ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mapping_all_on_sql_server_with_the_state_on_the_erp() {
    deployment(Site {
        ids: Ids::Identity,
        state_side: "external",
        crm_zone: "Europe/Berlin",
        erp_zone: "UTC",
        supplier_key: Key {
            def: "int IDENTITY(7000,1) NOT NULL",
            ty: "int",
        },
        contact_key: Key {
            def: "bigint IDENTITY(9000,1) NOT NULL",
            ty: "bigint",
        },
        erp_stamp: "datetime2(3) NOT NULL DEFAULT SYSDATETIME()",
    })
    .await;
}

/// `eware_get_identity_id` ids in CRM, the state in the CRM's database,
/// the ERP in New York keyed by a `uniqueidentifier` NEWID() draws and a
/// char code its default makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mapping_all_on_sql_server_with_the_state_in_the_crm() {
    deployment(Site {
        ids: Ids::StoredProcedure,
        state_side: "crm",
        crm_zone: "Europe/Berlin",
        erp_zone: "America/New_York",
        supplier_key: Key {
            def: "uniqueidentifier NOT NULL DEFAULT NEWID()",
            ty: "uniqueidentifier",
        },
        contact_key: Key {
            def: "char(10) NOT NULL \
                  DEFAULT ('K' + LEFT(REPLACE(CONVERT(varchar(36), NEWID()), '-', ''), 9))",
            ty: "char(10)",
        },
        erp_stamp: "datetimeoffset(3) NOT NULL DEFAULT SYSDATETIMEOFFSET()",
    })
    .await;
}

/// IDENTITY ids in CRM, the state in the CRM's database, the ERP keyed by
/// a varchar code its default makes and a `uniqueidentifier`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mapping_all_on_sql_server_with_varchar_and_uuid_erp_keys() {
    deployment(Site {
        ids: Ids::Identity,
        state_side: "crm",
        crm_zone: "Europe/Berlin",
        erp_zone: "UTC",
        supplier_key: Key {
            def: "varchar(12) NOT NULL \
                  DEFAULT ('S-' + LEFT(REPLACE(CONVERT(varchar(36), NEWID()), '-', ''), 10))",
            ty: "varchar(12)",
        },
        contact_key: Key {
            def: "uniqueidentifier NOT NULL DEFAULT NEWID()",
            ty: "uniqueidentifier",
        },
        erp_stamp: "datetime NOT NULL DEFAULT GETDATE()",
    })
    .await;
}

/// Many new ERP suppliers, each with a phone, an e-mail, a city and two
/// contacts, the first its primary one, arriving in a Sage CRM on SQL
/// Server in pages large enough to be inserted set-based: every company,
/// child row and person once, by Sage's rules, the cycle complete, ids
/// that `eware_get_identity_id` will not hand out again.
async fn many_from_the_erp(site: Site, backfill: bool) {
    let mut d = Deployment::new(site).await;
    let rows: Vec<String> = (1..=45)
        .map(|i| {
            format!(
                "(N'Erp {i}', N'A', 'e-{i}', N'+49 30 {i}', N'erp{i}@example.com', N'City {i}')"
            )
        })
        .collect();
    exec(
        &mut d.erp,
        &format!(
            "INSERT INTO erp.supplier (name, status, code, phone, email, city) VALUES {};
             INSERT INTO erp.contact (supplier_id, first_name, last_name)
             SELECT supplier_id, N'First', name FROM erp.supplier;
             INSERT INTO erp.contact (supplier_id, first_name, last_name)
             SELECT supplier_id, N'Second', name FROM erp.supplier;
             UPDATE s SET primary_contact_id = c.contact_id
               FROM erp.supplier s JOIN erp.contact c
                 ON c.supplier_id = s.supplier_id AND c.first_name = N'First'",
            rows.join(", ")
        ),
    )
    .await;
    if backfill {
        let (code, out) = d.run(&["backfill", "--direction", "external_to_crm"]).await;
        assert_eq!(code, 0, "{out}");
    }
    let first = d.sync_all().await;
    let open = d.open_rejects().await;
    assert!(open.is_empty(), "{open:?}\n{first:?}");
    assert_eq!(d.assert_in_step().await, (45, 90), "{first:?}");
    for (table, n) in [
        ("Company", 45),
        ("Person", 90),
        ("Phone", 45),
        ("PhoneLink", 45),
        ("Email", 45),
        ("EmailLink", 45),
        ("Address", 45),
        ("Address_Link", 45),
    ] {
        assert_eq!(
            count(&mut d.crm, &format!("SELECT COUNT(*) FROM dbo.{table}")).await,
            n,
            "{table}: each row once"
        );
    }
    let prefix = ["Comp", "Pers"];
    for (table, p) in ["Company", "Person"].into_iter().zip(prefix) {
        assert_eq!(
            count(
                &mut d.crm,
                &format!(
                    "SELECT COUNT(*) FROM dbo.{table} WHERE {p}_CreatedBy = 2 \
                     AND {p}_UpdatedBy = 2 AND {p}_SecTerr = {WORLDWIDE} \
                     AND {p}_CreatedDate <= {p}_UpdatedDate AND {p}_TimeStamp IS NOT NULL \
                     AND {p}_Deleted IS NULL"
                )
            )
            .await,
            if table == "Company" { 45 } else { 90 },
            "{table}: written by Sage's rules"
        );
    }
    if site.ids == Ids::StoredProcedure {
        assert_identities_ahead(&mut d.crm).await;
    }
    let quiet = d.sync_all().await;
    assert_eq!(writes(&quiet), 0, "{quiet:?}");
    let (code, out) = d.run(&["verify"]).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_erp_suppliers_with_children_sync_into_a_crm_with_eware_ids() {
    many_from_the_erp(
        Site {
            ids: Ids::StoredProcedure,
            state_side: "external",
            crm_zone: "Europe/Berlin",
            erp_zone: "UTC",
            supplier_key: Key {
                def: "bigint IDENTITY(1,1) NOT NULL",
                ty: "bigint",
            },
            contact_key: Key {
                def: "bigint IDENTITY(1,1) NOT NULL",
                ty: "bigint",
            },
            erp_stamp: "datetime NOT NULL DEFAULT GETDATE()",
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_erp_suppliers_with_children_backfill_into_a_crm_with_eware_ids() {
    many_from_the_erp(
        Site {
            ids: Ids::StoredProcedure,
            state_side: "crm",
            crm_zone: "Europe/Berlin",
            erp_zone: "UTC",
            supplier_key: Key {
                def: "uniqueidentifier NOT NULL DEFAULT NEWID()",
                ty: "uniqueidentifier",
            },
            contact_key: Key {
                def: "int IDENTITY(1,1) NOT NULL",
                ty: "int",
            },
            erp_stamp: "datetime2(7) NOT NULL DEFAULT SYSDATETIME()",
        },
        true,
    )
    .await;
}
