//! Whole deployments end to end: the shipped example mapping
//! (crmsync.example.toml: suppliers and contacts, phones, e-mails and
//! addresses, the primary-contact cycle) against a CRM whose clock runs
//! in another zone than the ERP's, an ERP with triggers (a BEFORE UPDATE
//! stamp, an AFTER INSERT audit, a value rewritten) and foreign keys,
//! through backfill, two-way changes, deletes both ways, a killed run,
//! `verify`, `status` and `check`.

use crate::common::{binary, connect, output_text, Env, Opts};
use crmsync::engine::{Engine, EngineError, EntityReport, Mode};
use std::time::Duration;
use tokio_postgres::Client;

const EXAMPLE: &str = include_str!("../../crmsync.example.toml");

/// The ERP's own habits: rows stamped by a BEFORE UPDATE trigger with
/// `now()` (the transaction's start) and on insert by the column default,
/// every insert audited into a table of its own by an AFTER INSERT
/// trigger, a supplier code upper-cased by a trigger, and the contact's
/// supplier a foreign key that refuses the supplier's delete.
const ERP_HABITS: &str = "
DROP TRIGGER supplier_touch_updated_at ON erp.supplier;
DROP TRIGGER contact_touch_updated_at ON erp.contact;
CREATE FUNCTION erp.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER supplier_touch BEFORE UPDATE ON erp.supplier
    FOR EACH ROW EXECUTE FUNCTION erp.touch();
CREATE TRIGGER contact_touch BEFORE UPDATE ON erp.contact
    FOR EACH ROW EXECUTE FUNCTION erp.touch();

CREATE TABLE erp.audit (
    audit_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tbl       text NOT NULL,
    row_key   bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION erp.audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO erp.audit (tbl, row_key)
    VALUES (TG_TABLE_NAME, (to_jsonb(NEW) ->> TG_ARGV[0])::bigint);
    RETURN NULL;
END $$;
CREATE TRIGGER supplier_audit AFTER INSERT ON erp.supplier
    FOR EACH ROW EXECUTE FUNCTION erp.audit_insert('supplier_id');
CREATE TRIGGER contact_audit AFTER INSERT ON erp.contact
    FOR EACH ROW EXECUTE FUNCTION erp.audit_insert('contact_id');

ALTER TABLE erp.supplier ADD COLUMN code varchar(12);
CREATE FUNCTION erp.upper_code() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.code := upper(NEW.code); RETURN NEW; END $$;
CREATE TRIGGER supplier_upper_code BEFORE INSERT OR UPDATE ON erp.supplier
    FOR EACH ROW EXECUTE FUNCTION erp.upper_code();

ALTER TABLE erp.contact DROP CONSTRAINT contact_supplier_id_fkey,
    ADD FOREIGN KEY (supplier_id) REFERENCES erp.supplier ON DELETE RESTRICT;
ALTER TABLE erp.supplier ALTER COLUMN supplier_id RESTART WITH 7000;
ALTER TABLE erp.contact ALTER COLUMN contact_id RESTART WITH 9000;
";

/// `text` with `from` replaced by `to` exactly once (the example file
/// must still say what the test expects it to say).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "crmsync.example.toml should hold {from:?} once"
    );
    text.replacen(from, to, 1)
}

/// The example config pointed at `env`, the CRM in `zone`, runs without a
/// settle delay in small pages, the supplier code mapped, contacts
/// deleted outright in the ERP.
fn example_config(env: &Env, zone: &str) -> String {
    let mut t = EXAMPLE.to_string();
    t = swap(
        &t,
        "postgres://crmsync@crm-db.example.com:5432/crm",
        &env.crm_url,
    );
    t = swap(
        &t,
        "postgres://crmsync@erp-db.example.com:5432/erp",
        &env.erp_url,
    );
    t = swap(&t, "password_env = \"CRM_PASSWORD\"\n", "");
    t = swap(&t, "password_env = \"EXT_PASSWORD\"\n", "");
    t = swap(
        &t,
        "timezone = \"Europe/London\"",
        &format!("timezone = {zone:?}"),
    );
    t = swap(&t, "batch_size = 1000", "batch_size = 20");
    t = swap(&t, "settle = \"2s\"", "settle = \"0s\"");
    t = swap(&t, "max_delete_ratio = 0.10", "max_delete_ratio = 0.5");
    t = swap(
        &t,
        "delete_into_external = \"ignore\"",
        "delete_into_external = \"hard\"",
    );
    t = swap(
        &t,
        "[[entity.field]]\ncrm = \"Comp_WebSite\"",
        "[[entity.field]]\ncrm = \"Comp_IndCode\"\nexternal = \"code\"\n\n\
         [[entity.field]]\ncrm = \"Comp_WebSite\"",
    );
    t
}

/// Fresh databases: the CRM's clock and dates in `zone`, the ERP in UTC
/// with its habits, and the example config.
async fn scenario_env(zone: &str) -> Env {
    let mut env = Env::new(Opts::default()).await;
    let db = env.crm_url.rsplit('/').next().unwrap().to_string();
    env.crm
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" SET timezone TO '{zone}'; SET timezone TO '{zone}'"
        ))
        .await
        .unwrap();
    env.erp.batch_execute(ERP_HABITS).await.unwrap();
    // A session that started before the zone moved keeps its own.
    env.crm = connect(&env.crm_url).await;
    std::fs::write(&env.config, example_config(&env, zone)).unwrap();
    env
}

/// One in-process sync of every entity, waiting for a killed run's lock.
async fn sync_all(env: &Env) -> Vec<EntityReport> {
    for _ in 0..100 {
        let plan = crmsync::cli::load_plan(&env.config).expect("the config is valid");
        let engine = Engine::connect(plan).await.expect("connect");
        match engine.sync(None, Mode::Apply).await {
            Err(EngineError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other.expect("sync"),
        }
    }
    panic!("the run lock was never released");
}

/// Writes of a run into either side.
fn writes(reports: &[EntityReport]) -> u64 {
    reports.iter().map(|r| r.changes()).sum()
}

/// Open rejects, with their reasons.
async fn open_rejects(erp: &Client) -> Vec<String> {
    erp.query(
        "SELECT entity || ': ' || reason FROM crmsync.rejects WHERE resolved_at IS NULL",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A company as Sage CRM writes it, stamped by the CRM's clock.
async fn company(crm: &Client, name: &str, kind: &str, code: Option<&str>) -> i32 {
    crm.query_one(
        "INSERT INTO company (comp_name, comp_type, comp_status, comp_indcode, comp_createdby, \
           comp_createddate, comp_updatedby, comp_updateddate, comp_timestamp, comp_secterr) \
         VALUES ($1, $2, 'Active', $3, 1, localtimestamp(3), 1, localtimestamp(3), \
           localtimestamp(3), -2147483640) RETURNING comp_companyid",
        &[&name, &kind, &code],
    )
    .await
    .unwrap()
    .get(0)
}

/// A person under `company`, as Sage CRM writes it.
async fn person(crm: &Client, company: i32, first: &str, last: &str) -> i32 {
    crm.query_one(
        "INSERT INTO person (pers_companyid, pers_firstname, pers_lastname, pers_createdby, \
           pers_createddate, pers_updatedby, pers_updateddate, pers_timestamp, pers_secterr) \
         VALUES ($1, $2, $3, 1, localtimestamp(3), 1, localtimestamp(3), localtimestamp(3), \
           -2147483640) RETURNING pers_personid",
        &[&company, &first, &last],
    )
    .await
    .unwrap()
    .get(0)
}

/// Runs `sql` against the CRM as the Sage UI would: the row's dates move
/// to the CRM's clock. `sql` names `$stamp` where the date goes.
async fn crm_touch(crm: &Client, sql: &str) {
    let n = crm
        .execute(&sql.replace("$stamp", "localtimestamp(3)"), &[])
        .await
        .unwrap();
    assert_eq!(n, 1, "{sql}");
}

/// A company's Business phone, Business e-mail and primary address, as
/// Sage CRM writes them.
async fn company_children(crm: &Client, id: i32, phone: &str, email: &str, city: &str) {
    crm.batch_execute(&format!(
        "DO $$ DECLARE ch int; ts timestamp(3) := localtimestamp(3); BEGIN
           INSERT INTO phone (phon_number, phon_createddate, phon_updateddate)
           VALUES ('{phone}', ts, ts) RETURNING phon_phoneid INTO ch;
           INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                  plink_createddate, plink_updateddate)
           VALUES (5, {id}, 'Business', ch, ts, ts);
           INSERT INTO email (emai_emailaddress, emai_createddate, emai_updateddate)
           VALUES ('{email}', ts, ts) RETURNING emai_emailid INTO ch;
           INSERT INTO emaillink (elink_entityid, elink_recordid, elink_type, elink_emailid,
                  elink_createddate, elink_updateddate)
           VALUES (5, {id}, 'Business', ch, ts, ts);
           INSERT INTO address (addr_city, addr_createddate, addr_updateddate)
           VALUES ('{city}', ts, ts) RETURNING addr_addressid INTO ch;
           INSERT INTO address_link (adli_addressid, adli_companyid, adli_type,
                  adli_createddate, adli_updateddate)
           VALUES (ch, {id}, 'Business', ts, ts);
           UPDATE company SET comp_primaryaddressid = ch WHERE comp_companyid = {id};
         END $$"
    ))
    .await
    .unwrap();
}

/// One side's rows as text, by the key of the CRM row they stand for.
type Rows = std::collections::BTreeMap<i32, Vec<Option<String>>>;

/// The CRM's live suppliers in the ERP's terms: (link, name, status,
/// code, website, phone, email, city, promote, primary contact's link).
async fn crm_suppliers(crm: &Client) -> Rows {
    rows(
        crm,
        "SELECT c.comp_companyid, c.comp_supplierid, c.comp_name,
                CASE c.comp_status WHEN 'Active' THEN 'A' WHEN 'Inactive' THEN 'I' END,
                c.comp_indcode, c.comp_website,
                (SELECT p.phon_number FROM phonelink l JOIN phone p ON p.phon_phoneid = l.plink_phoneid
                  WHERE l.plink_entityid = 5 AND l.plink_recordid = c.comp_companyid
                    AND l.plink_type = 'Business' AND l.plink_deleted IS NULL
                    AND p.phon_deleted IS NULL ORDER BY l.plink_linkid LIMIT 1),
                (SELECT e.emai_emailaddress FROM emaillink l JOIN email e ON e.emai_emailid = l.elink_emailid
                  WHERE l.elink_entityid = 5 AND l.elink_recordid = c.comp_companyid
                    AND l.elink_type = 'Business' AND l.elink_deleted IS NULL
                    AND e.emai_deleted IS NULL ORDER BY l.elink_linkid LIMIT 1),
                (SELECT a.addr_city FROM address a WHERE a.addr_addressid = c.comp_primaryaddressid),
                (c.comp_promote = 'Y')::text,
                (SELECT p.pers_intforeignid FROM person p WHERE p.pers_personid = c.comp_primarypersonid)
           FROM company c WHERE c.comp_type = 'Supplier' AND c.comp_deleted IS NULL",
    )
    .await
}

/// The ERP's live suppliers, in the same shape.
async fn erp_suppliers(erp: &Client) -> Rows {
    rows(
        erp,
        "SELECT s.crm_company_id, s.supplier_id::text, s.name, s.status, s.code, s.website,
                s.phone, s.email, s.city, CASE WHEN s.promote THEN 'true' END,
                s.primary_contact_id::text
           FROM erp.supplier s WHERE NOT s.is_deleted AND s.kind = 'S'",
    )
    .await
}

/// The CRM's live persons in the ERP's terms: (link, supplier link,
/// first, last, email).
async fn crm_persons(crm: &Client) -> Rows {
    rows(
        crm,
        "SELECT p.pers_personid, p.pers_intforeignid, c.comp_supplierid, p.pers_firstname,
                p.pers_lastname, p.pers_emailaddress
           FROM person p LEFT JOIN company c ON c.comp_companyid = p.pers_companyid
          WHERE p.pers_deleted IS NULL",
    )
    .await
}

/// The ERP's contacts, in the same shape.
async fn erp_contacts(erp: &Client) -> Rows {
    rows(
        erp,
        "SELECT crm_person_id, contact_id::text, supplier_id::text, first_name, last_name, email
           FROM erp.contact",
    )
    .await
}

/// Rows of `sql` by their first column (which every row must have, once).
async fn rows(c: &Client, sql: &str) -> Rows {
    let mut out = Rows::new();
    for r in c.query(sql, &[]).await.unwrap() {
        let key: Option<i32> = r.get(0);
        let key = key.unwrap_or_else(|| panic!("a row that names no CRM row: {r:?} of {sql}"));
        let vals = (1..r.len()).map(|i| r.get(i)).collect();
        assert!(
            out.insert(key, vals).is_none(),
            "CRM row {key} twice: {sql}"
        );
    }
    out
}

/// Both sides hold the same suppliers and contacts, each naming the
/// other, every mapped value equal. Returns (suppliers, contacts).
async fn assert_in_step(env: &Env) -> (usize, usize) {
    let (cs, es) = (crm_suppliers(&env.crm).await, erp_suppliers(&env.erp).await);
    assert_eq!(cs, es, "suppliers: CRM (left) and ERP (right)");
    let (cp, ec) = (crm_persons(&env.crm).await, erp_contacts(&env.erp).await);
    assert_eq!(cp, ec, "persons (left) and contacts (right)");
    (cs.len(), cp.len())
}

/// The real binary's exit code, with its output for the message.
fn run(env: &Env, args: &[&str]) -> (i32, String) {
    let out = binary(&env.config, args, &[]).output().unwrap();
    let (stdout, stderr) = output_text(&out);
    (
        out.status.code().unwrap_or(-1),
        format!("{args:?}:\n{stdout}\n{stderr}"),
    )
}

async fn one_text(c: &Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

async fn one_int(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Starts the binary with `args` and returns it once it waits on a lock
/// in the ERP (a row the test holds uncommitted).
async fn start_until_blocked(env: &Env, args: &[&str]) -> std::process::Child {
    let mut child = binary(&env.config, args, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            panic!("{args:?} ended before it reached the blocked row");
        }
        let waiting = one_int(
            &env.erp,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name = 'crmsync' AND wait_event_type = 'Lock'",
        )
        .await;
        if waiting > 0 {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL, and wait for the process to be gone.
fn kill(mut child: std::process::Child) {
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
}

/// The whole life of a deployment with the CRM in `zone`.
async fn deployment(zone: &str) {
    let env = scenario_env(zone).await;
    let (code, out) = run(&env, &["check"]);
    assert_eq!(code, 0, "{out}");

    // What each side holds before crmsync first runs.
    let acme = company(&env.crm, "Acme", "Supplier", Some("ac-1")).await;
    company_children(
        &env.crm,
        acme,
        "+1 212 555 0100",
        "sales@acme.example",
        "Boston",
    )
    .await;
    let globex = company(&env.crm, "Globex", "Supplier", None).await;
    company(&env.crm, "Initech", "Customer", None).await;
    let alice = person(&env.crm, acme, "Alice", "Archer").await;
    let bob = person(&env.crm, acme, "Bob", "Baker").await;
    let carol = person(&env.crm, globex, "Carol", "Cole").await;
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE company SET comp_primarypersonid = {alice}, comp_updateddate = $stamp, \
             comp_timestamp = $stamp WHERE comp_companyid = {acme}"
        ),
    )
    .await;
    env.erp
        .batch_execute(
            "WITH s AS (INSERT INTO erp.supplier (name, status, code, phone, city)
                        VALUES ('Umbrella', 'A', 'um-9', '+49 30 1234', 'Raccoon City')
                        RETURNING supplier_id),
                  c AS (INSERT INTO erp.contact (supplier_id, first_name, last_name)
                        SELECT supplier_id, f, l FROM s,
                               (VALUES ('Eve', 'Ewing'), ('Frank', 'Fox')) v(f, l)
                        RETURNING contact_id, first_name)
             UPDATE erp.supplier SET primary_contact_id =
                 (SELECT contact_id FROM c WHERE first_name = 'Eve')
              WHERE supplier_id = (SELECT supplier_id FROM s)",
        )
        .await
        .unwrap();

    // Backfill both ways, then a sync that only settles the ERP's
    // rewritten code back into CRM.
    let (code, out) = run(&env, &["backfill"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&env, &["backfill", "--direction", "external_to_crm"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        one_int(
            &env.crm,
            "SELECT count(*) FROM person p JOIN company c ON c.comp_companyid = p.pers_companyid \
              WHERE c.comp_name = 'Umbrella' AND p.pers_intforeignid IS NOT NULL"
        )
        .await,
        2,
        "the ERP's supplier and contacts are in CRM, linked, before any sync"
    );
    let first = sync_all(&env).await;
    let open = open_rejects(&env.erp).await;
    assert!(open.is_empty(), "{open:?}\n{first:?}");
    assert_eq!(assert_in_step(&env).await, (3, 5));
    assert_eq!(
        one_text(
            &env.crm,
            &format!("SELECT comp_indcode FROM company WHERE comp_companyid = {acme}")
        )
        .await
        .as_deref(),
        Some("AC-1"),
        "the ERP's trigger upper-cased the code, and CRM follows"
    );
    let quiet = sync_all(&env).await;
    assert_eq!(writes(&quiet), 0, "a run with nothing to do: {quiet:?}");

    // Changes on both sides, a clash either way round, new rows both ways.
    let umbrella: i32 = env
        .crm
        .query_one(
            "SELECT comp_companyid FROM company WHERE comp_name = 'Umbrella'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE company SET comp_name = 'Globex Corp', comp_indcode = 'gx-2', \
             comp_updateddate = $stamp, \
             comp_timestamp = $stamp WHERE comp_companyid = {globex}"
        ),
    )
    .await;
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE phone SET phon_number = '+1 212 555 0199', phon_updateddate = $stamp \
             WHERE phon_phoneid = (SELECT plink_phoneid FROM phonelink \
               WHERE plink_recordid = {acme} AND plink_entityid = 5)"
        ),
    )
    .await;
    // Eve: CRM first, the ERP later; Bob: the ERP first, CRM later. The
    // later change wins, compared in UTC whatever the zones.
    crm_touch(
        &env.crm,
        "UPDATE person SET pers_firstname = 'Evelyn', pers_updateddate = $stamp, \
         pers_timestamp = $stamp WHERE pers_firstname = 'Eve'",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.erp
        .batch_execute(&format!(
            "UPDATE erp.contact SET last_name = 'Cole-Smith' WHERE crm_person_id = {carol};
             UPDATE erp.supplier SET code = 'um-10', city = 'Gotham' WHERE name = 'Umbrella';
             UPDATE erp.contact SET first_name = 'Robert' WHERE crm_person_id = {bob};
             UPDATE erp.contact SET first_name = 'Eva' WHERE first_name = 'Eve';"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE person SET pers_firstname = 'Bobby', pers_updateddate = $stamp, \
             pers_timestamp = $stamp WHERE pers_personid = {bob}"
        ),
    )
    .await;
    let grace = person(&env.crm, umbrella, "Grace", "Grant").await;
    let acme_key: i64 = env
        .erp
        .query_one(
            "SELECT supplier_id FROM erp.supplier WHERE crm_company_id = $1",
            &[&acme],
        )
        .await
        .unwrap()
        .get(0);
    env.erp
        .execute(
            "INSERT INTO erp.contact (supplier_id, first_name, last_name) VALUES ($1, 'Heidi', 'Hill')",
            &[&acme_key],
        )
        .await
        .unwrap();
    let second = sync_all(&env).await;
    let open = open_rejects(&env.erp).await;
    assert!(open.is_empty(), "{open:?}\n{second:?}");
    assert_eq!(assert_in_step(&env).await, (3, 7));
    let names = |id: i32| {
        format!(
            "SELECT pers_firstname || ' ' || pers_lastname FROM person WHERE pers_personid = {id}"
        )
    };
    assert_eq!(
        one_text(&env.crm, &names(bob)).await.as_deref(),
        Some("Bobby Baker"),
        "the later change (CRM's) wins"
    );
    assert_eq!(
        one_text(&env.crm, &names(carol)).await.as_deref(),
        Some("Carol Cole-Smith")
    );
    assert_eq!(
        one_int(
            &env.crm,
            "SELECT count(*) FROM person WHERE pers_firstname = 'Eva'"
        )
        .await,
        1,
        "the later change (the ERP's) wins"
    );
    assert_eq!(
        one_text(
            &env.crm,
            &format!("SELECT comp_indcode FROM company WHERE comp_companyid = {umbrella}")
        )
        .await
        .as_deref(),
        Some("UM-10")
    );
    assert!(grace > 0);
    let quiet = sync_all(&env).await;
    assert_eq!(
        writes(&quiet),
        0,
        "no ping-pong after two-way changes: {quiet:?}"
    );

    // Deletes both ways: a CRM person (its contact deleted outright), an
    // ERP contact (its person soft-deleted), a CRM supplier (flagged).
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE person SET pers_deleted = 1, pers_updateddate = $stamp, \
             pers_timestamp = $stamp WHERE pers_personid = {grace}"
        ),
    )
    .await;
    env.erp
        .batch_execute("DELETE FROM erp.contact WHERE first_name = 'Frank'")
        .await
        .unwrap();
    // (PostgreSQL counts the delete in its statistics a moment later.)
    crate::common::flush_statistics(&env.erp).await;
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE company SET comp_deleted = 1, comp_updateddate = $stamp, \
             comp_timestamp = $stamp WHERE comp_companyid = {globex}"
        ),
    )
    .await;
    let third = sync_all(&env).await;
    let open = open_rejects(&env.erp).await;
    assert!(open.is_empty(), "{open:?}\n{third:?}");
    // Carol still works for the deleted Globex: her contact stays under
    // the flagged supplier.
    assert_eq!(crm_suppliers(&env.crm).await.len(), 2);
    assert_eq!(erp_suppliers(&env.erp).await.len(), 2);
    assert_eq!(
        one_int(
            &env.erp,
            &format!(
                "SELECT count(*) FROM erp.contact c JOIN erp.supplier s USING (supplier_id) \
                 WHERE c.crm_person_id = {carol} AND s.crm_company_id = {globex} AND s.is_deleted"
            )
        )
        .await,
        1
    );
    assert_eq!(
        one_int(
            &env.erp,
            "SELECT count(*) FROM erp.contact WHERE first_name = 'Grace'"
        )
        .await,
        0
    );
    assert_eq!(
        one_int(
            &env.crm,
            "SELECT count(*) FROM person WHERE pers_firstname = 'Frank' AND pers_deleted = 1"
        )
        .await,
        1
    );
    let (cp, ec) = (crm_persons(&env.crm).await, erp_contacts(&env.erp).await);
    assert_eq!(cp.len(), 5, "{cp:?}");
    assert_eq!(cp, ec);

    // A run killed while it writes contacts, then run again.
    env.crm
        .batch_execute(&format!(
            "INSERT INTO person (pers_companyid, pers_firstname, pers_lastname, pers_createdby,
                 pers_createddate, pers_updatedby, pers_updateddate, pers_timestamp, pers_secterr)
             SELECT {acme}, 'Temp', 'Worker ' || i, 1, localtimestamp(3), 1,
                    localtimestamp(3), localtimestamp(3), -2147483640
               FROM generate_series(1, 100) i"
        ))
        .await
        .unwrap();
    let blocked: i32 = env
        .crm
        .query_one(
            "SELECT pers_personid FROM person WHERE pers_lastname = 'Worker 70'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let blocker = connect(&env.erp_url).await;
    blocker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO erp.contact (crm_person_id, supplier_id, last_name) \
             VALUES ({blocked}, {acme_key}, 'blocker')"
        ))
        .await
        .unwrap();
    let child = start_until_blocked(&env, &["sync"]).await;
    let partial = one_int(
        &env.erp,
        "SELECT count(*) FROM erp.contact WHERE first_name = 'Temp'",
    )
    .await;
    assert!(
        partial > 0 && partial < 100,
        "{partial} contacts before the kill"
    );
    kill(child);
    blocker.batch_execute("ROLLBACK").await.unwrap();

    let (code, out) = run(&env, &["sync"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(assert_in_step(&env).await, (2, 105));
    // Every contact was inserted once: one audit row each.
    assert_eq!(
        one_int(
            &env.erp,
            "SELECT count(*) FROM erp.audit a WHERE tbl = 'contact' AND NOT EXISTS \
               (SELECT 1 FROM erp.contact c WHERE c.contact_id = a.row_key)"
        )
        .await,
        2,
        "only Frank and Grace's contacts are gone"
    );
    assert_eq!(
        one_int(
            &env.erp,
            "SELECT count(*) FROM erp.audit WHERE tbl = 'contact'"
        )
        .await,
        107
    );
    assert_eq!(
        one_int(
            &env.erp,
            "SELECT count(*) FROM erp.audit WHERE tbl = 'supplier'"
        )
        .await,
        3
    );
    assert_eq!(
        one_int(
            &env.crm,
            "SELECT count(*) FROM (SELECT pers_intforeignid FROM person WHERE pers_deleted IS NULL \
               AND pers_intforeignid IS NOT NULL GROUP BY 1 HAVING count(*) > 1) d"
        )
        .await,
        0
    );

    for args in [&["verify"][..], &["status", "--max-lag", "10m"], &["check"]] {
        let (code, out) = run(&env, args);
        assert_eq!(code, 0, "{out}");
    }
    let quiet = sync_all(&env).await;
    assert_eq!(writes(&quiet), 0, "{quiet:?}");
}

/// A first backfill of the example mapping killed while it writes the
/// contacts (the suppliers and part of the contacts committed, the
/// primary contacts not yet filled in), then run again: every row once on
/// each side, each naming the other, the cycle complete, verify clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_first_backfill_of_the_example_mapping_converges_on_rerun() {
    let env = scenario_env("America/New_York").await;
    let mut companies = Vec::new();
    for i in 0..4 {
        let id = company(&env.crm, &format!("Supplier {i}"), "Supplier", Some("s-1")).await;
        companies.push(id);
    }
    company_children(
        &env.crm,
        companies[0],
        "+1 212 555 0100",
        "a@example.com",
        "Albany",
    )
    .await;
    env.crm
        .batch_execute(&format!(
            "INSERT INTO person (pers_companyid, pers_firstname, pers_lastname, pers_createdby,
                 pers_createddate, pers_updatedby, pers_updateddate, pers_timestamp, pers_secterr)
             SELECT (ARRAY[{}])[1 + i % 4], 'P', 'Person ' || i, 1, localtimestamp(3), 1,
                    localtimestamp(3), localtimestamp(3), -2147483640
               FROM generate_series(1, 120) i;
             UPDATE company c SET comp_primarypersonid =
                 (SELECT min(pers_personid) FROM person p WHERE p.pers_companyid = c.comp_companyid)",
            companies
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .unwrap();
    env.erp
        .batch_execute(
            "WITH s AS (INSERT INTO erp.supplier (name, code) VALUES ('Umbrella', 'u-1')
                        RETURNING supplier_id)
             INSERT INTO erp.contact (supplier_id, last_name)
             SELECT supplier_id, 'Contact ' || i FROM s, generate_series(1, 30) i",
        )
        .await
        .unwrap();
    let blocked: i32 = env
        .crm
        .query_one(
            "SELECT pers_personid FROM person WHERE pers_lastname = 'Person 90'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let blocker = connect(&env.erp_url).await;
    blocker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO erp.contact (crm_person_id, supplier_id, last_name) \
             SELECT {blocked}, min(supplier_id), 'blocker' FROM erp.supplier"
        ))
        .await
        .unwrap();
    let child = start_until_blocked(&env, &["backfill", "--chunk-rows", "20"]).await;
    kill(child);
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let partial = one_int(&env.erp, "SELECT count(*) FROM erp.contact").await;
    assert!(
        partial > 30 && partial < 150,
        "{partial} contacts at the kill"
    );

    let (code, out) = run(&env, &["backfill"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&env, &["sync"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(assert_in_step(&env).await, (5, 150));
    assert_eq!(
        one_int(
            &env.erp,
            "SELECT count(*) FROM erp.audit WHERE tbl = 'contact'"
        )
        .await,
        150,
        "every contact inserted once"
    );
    assert_eq!(
        one_int(
            &env.crm,
            "SELECT count(*) FROM company WHERE comp_type = 'Supplier' \
               AND comp_primarypersonid IS NULL"
        )
        .await,
        1,
        "only Umbrella, which has no primary contact, names none"
    );
    for args in [&["verify"][..], &["status", "--max-lag", "10m"]] {
        let (code, out) = run(&env, args);
        assert_eq!(code, 0, "{out}");
    }
    let quiet = sync_all(&env).await;
    assert_eq!(writes(&quiet), 0, "{quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mapping_with_the_crm_in_new_york_and_erp_triggers() {
    deployment("America/New_York").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mapping_with_the_crm_in_berlin_and_erp_triggers() {
    deployment("Europe/Berlin").await;
}

/// A Sage CRM created with quoted mixed-case names ("Company",
/// "Comp_Name"), an ERP schema likewise ("Sales"."Vendor"), and a config
/// that names everything in lower case; the ERP's keys a uuid and a
/// blank-padded code, its change column a `timestamp` holding UTC on a
/// server whose own zone is New York; the CRM in Berlin.
const QUOTED_CRM: &str = r#"
DROP TABLE company, person CASCADE;
CREATE TABLE "Company" (
    "Comp_CompanyId"       int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "Comp_Name"            varchar(60),
    "Comp_Type"            varchar(40),
    "Comp_PrimaryPersonId" int,
    "comp_SupplierId"      uuid,
    "Comp_CreatedBy"       int,
    "Comp_CreatedDate"     timestamp(3),
    "Comp_UpdatedBy"       int,
    "Comp_UpdatedDate"     timestamp(3),
    "Comp_TimeStamp"       timestamp(3),
    "Comp_Deleted"         smallint,
    "Comp_SecTerr"         int
);
CREATE UNIQUE INDEX "IDX_comp_SupplierId" ON "Company" ("comp_SupplierId")
    WHERE "Comp_Deleted" IS NULL AND "comp_SupplierId" IS NOT NULL;
CREATE INDEX ON "Company" ("Comp_UpdatedDate", "Comp_CompanyId");
CREATE TABLE "Person" (
    "Pers_PersonId"        int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "Pers_CompanyId"       int,
    "Pers_LastName"        varchar(40),
    "pers_ContactCode"     char(12),
    "Pers_CreatedBy"       int,
    "Pers_CreatedDate"     timestamp(3),
    "Pers_UpdatedBy"       int,
    "Pers_UpdatedDate"     timestamp(3),
    "Pers_TimeStamp"       timestamp(3),
    "Pers_Deleted"         smallint,
    "Pers_SecTerr"         int
);
CREATE INDEX ON "Person" ("Pers_UpdatedDate", "Pers_PersonId");
"#;

const QUOTED_ERP: &str = r#"
CREATE SCHEMA "Sales";
CREATE SEQUENCE "Sales"."ContactNo";
CREATE TABLE "Sales"."Vendor" (
    "VendorId"     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    "CrmCompanyId" bigint UNIQUE,
    "Name"         varchar(60) NOT NULL,
    "PrimaryContact" char(10),
    "UpdatedAt"    timestamp(6) NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE TABLE "Sales"."VendorContact" (
    "ContactCode"  char(10) PRIMARY KEY
                   DEFAULT ('K' || lpad(nextval('"Sales"."ContactNo"')::text, 5, '0')),
    "VendorId"     uuid NOT NULL REFERENCES "Sales"."Vendor" ON DELETE RESTRICT,
    "CrmPersonId"  int UNIQUE,
    "LastName"     varchar(40) NOT NULL,
    "UpdatedAt"    timestamp(6) NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
ALTER TABLE "Sales"."Vendor" ADD FOREIGN KEY ("PrimaryContact")
    REFERENCES "Sales"."VendorContact";
CREATE FUNCTION "Sales".touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW."UpdatedAt" := now() AT TIME ZONE 'UTC'; RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON "Sales"."Vendor"
    FOR EACH ROW EXECUTE FUNCTION "Sales".touch();
CREATE TRIGGER touch BEFORE UPDATE ON "Sales"."VendorContact"
    FOR EACH ROW EXECUTE FUNCTION "Sales".touch();
"#;

/// The config of [`QUOTED_CRM`] and [`QUOTED_ERP`], every name in lower
/// case, the state in `state_side`.
fn quoted_config(env: &Env, state_side: &str) -> String {
    format!(
        r#"[crm]
url = "{crm}"
user_id = 7
timezone = "Europe/Berlin"

[external]
url = "{erp}"
timezone = "UTC"

[state]
side = "{state_side}"

[defaults]
batch_size = 3
settle = "0s"
max_delete_ratio = 0.5

[[entity]]
name = "vendor"
crm_table = "company"
crm_link_column = "comp_supplierid"
# A filter is SQL: quoted names stay quoted.
crm_filter = "\"Comp_Type\" = 'Supplier'"
external_table = "sales.vendor"
external_key = "vendorid"
external_crm_id_column = "crmcompanyid"
external_updated_column = "updatedat"
crm_defaults = {{ comp_type = "Supplier" }}
delete_into_external = "ignore"

[[entity.field]]
crm = "comp_name"
external = "name"

[[entity.field]]
crm = "comp_primarypersonid"
external = "primarycontact"
references = "contact"

[[entity]]
name = "contact"
crm_table = "person"
crm_link_column = "pers_contactcode"
external_table = "sales.vendorcontact"
external_key = "contactcode"
external_crm_id_column = "crmpersonid"
external_updated_column = "updatedat"
delete_into_external = "hard"

[[entity.field]]
crm = "pers_companyid"
external = "vendorid"
references = "vendor"

[[entity.field]]
crm = "pers_lastname"
external = "lastname"
"#,
        crm = env.crm_url,
        erp = env.erp_url,
    )
}

/// Live CRM companies as (CRM id, link, name, primary person's link).
async fn quoted_crm_vendors(crm: &Client) -> Rows {
    rows(
        crm,
        r#"SELECT c."Comp_CompanyId", c."comp_SupplierId"::text, c."Comp_Name",
                  rtrim(p."pers_ContactCode")
             FROM "Company" c LEFT JOIN "Person" p ON p."Pers_PersonId" = c."Comp_PrimaryPersonId"
            WHERE c."Comp_Deleted" IS NULL AND c."Comp_Type" = 'Supplier'"#,
    )
    .await
}

async fn quoted_erp_vendors(erp: &Client) -> Rows {
    rows(
        erp,
        r#"SELECT "CrmCompanyId"::int, "VendorId"::text, "Name", rtrim("PrimaryContact")
             FROM "Sales"."Vendor""#,
    )
    .await
}

/// Live CRM persons as (CRM id, link, company's link, last name).
async fn quoted_crm_persons(crm: &Client) -> Rows {
    rows(
        crm,
        r#"SELECT p."Pers_PersonId", rtrim(p."pers_ContactCode"), c."comp_SupplierId"::text,
                  p."Pers_LastName"
             FROM "Person" p LEFT JOIN "Company" c ON c."Comp_CompanyId" = p."Pers_CompanyId"
            WHERE p."Pers_Deleted" IS NULL"#,
    )
    .await
}

async fn quoted_erp_contacts(erp: &Client) -> Rows {
    rows(
        erp,
        r#"SELECT "CrmPersonId", rtrim("ContactCode"), "VendorId"::text, "LastName"
             FROM "Sales"."VendorContact""#,
    )
    .await
}

async fn assert_quoted_in_step(env: &Env) -> (usize, usize) {
    let (cv, ev) = (
        quoted_crm_vendors(&env.crm).await,
        quoted_erp_vendors(&env.erp).await,
    );
    assert_eq!(cv, ev, "vendors: CRM (left) and ERP (right)");
    let (cp, ec) = (
        quoted_crm_persons(&env.crm).await,
        quoted_erp_contacts(&env.erp).await,
    );
    assert_eq!(cp, ec, "persons (left) and contacts (right)");
    (cv.len(), cp.len())
}

async fn quoted_case(state_side: &str) {
    let mut env = Env::new(Opts::default()).await;
    let crm_db = env.crm_url.rsplit('/').next().unwrap().to_string();
    let erp_db = env.erp_url.rsplit('/').next().unwrap().to_string();
    env.crm
        .batch_execute(&format!(
            "{QUOTED_CRM} ALTER DATABASE \"{crm_db}\" SET timezone TO 'Europe/Berlin';"
        ))
        .await
        .unwrap();
    env.erp
        .batch_execute(&format!(
            "{QUOTED_ERP} ALTER DATABASE \"{erp_db}\" SET timezone TO 'America/New_York';"
        ))
        .await
        .unwrap();
    env.crm = connect(&env.crm_url).await;
    env.erp = connect(&env.erp_url).await;
    std::fs::write(&env.config, quoted_config(&env, state_side)).unwrap();
    let (code, out) = run(&env, &["check"]);
    assert_eq!(code, 0, "{out}");

    let stamp = "localtimestamp(3)";
    let acme: i32 = env
        .crm
        .query_one(
            &format!(
                r#"INSERT INTO "Company" ("Comp_Name", "Comp_Type", "Comp_CreatedBy",
                     "Comp_CreatedDate", "Comp_UpdatedBy", "Comp_UpdatedDate", "Comp_TimeStamp",
                     "Comp_SecTerr")
                   VALUES ('Acme', 'Supplier', 1, {stamp}, 1, {stamp}, {stamp}, -2147483640)
                   RETURNING "Comp_CompanyId""#
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let add_person = |last: &'static str, company: i32| {
        let crm = &env.crm;
        async move {
            crm.query_one(
                &format!(
                    r#"INSERT INTO "Person" ("Pers_CompanyId", "Pers_LastName", "Pers_CreatedBy",
                         "Pers_CreatedDate", "Pers_UpdatedBy", "Pers_UpdatedDate",
                         "Pers_TimeStamp", "Pers_SecTerr")
                       VALUES ($1, $2, 1, {stamp}, 1, {stamp}, {stamp}, -2147483640)
                       RETURNING "Pers_PersonId""#
                ),
                &[&company, &last],
            )
            .await
            .unwrap()
            .get::<_, i32>(0)
        }
    };
    let ann = add_person("Archer", acme).await;
    for last in ["Baker", "Cole", "Dunn"] {
        add_person(last, acme).await;
    }
    env.crm
        .execute(
            &format!(
                r#"UPDATE "Company" SET "Comp_PrimaryPersonId" = $1, "Comp_UpdatedDate" = {stamp}
                   WHERE "Comp_CompanyId" = $2"#
            ),
            &[&ann, &acme],
        )
        .await
        .unwrap();
    env.erp
        .batch_execute(
            r#"WITH v AS (INSERT INTO "Sales"."Vendor" ("Name") VALUES ('Umbrella')
                          RETURNING "VendorId")
               INSERT INTO "Sales"."VendorContact" ("VendorId", "LastName")
               SELECT "VendorId", l FROM v, (VALUES ('Ewing'), ('Fox')) x(l)"#,
        )
        .await
        .unwrap();

    let (code, out) = run(&env, &["backfill"]);
    assert_eq!(code, 0, "{out}");
    let first = sync_all(&env).await;
    assert_eq!(assert_quoted_in_step(&env).await, (2, 6), "{first:?}");
    let quiet = sync_all(&env).await;
    assert_eq!(writes(&quiet), 0, "{quiet:?}");

    // Changes both ways, a person deleted in CRM, a contact deleted in
    // the ERP.
    env.crm
        .execute(
            &format!(
                r#"UPDATE "Person" SET "Pers_LastName" = 'Archer-Hill', "Pers_UpdatedDate" = {stamp}
                   WHERE "Pers_PersonId" = $1"#
            ),
            &[&ann],
        )
        .await
        .unwrap();
    env.crm
        .execute(
            &format!(
                r#"UPDATE "Person" SET "Pers_Deleted" = 1, "Pers_UpdatedDate" = {stamp}
                   WHERE "Pers_LastName" = 'Dunn'"#
            ),
            &[],
        )
        .await
        .unwrap();
    env.erp
        .batch_execute(
            r#"UPDATE "Sales"."Vendor" SET "Name" = 'Umbrella Corp' WHERE "Name" = 'Umbrella';
               DELETE FROM "Sales"."VendorContact" WHERE "LastName" = 'Fox';
               INSERT INTO "Sales"."VendorContact" ("VendorId", "LastName")
               SELECT "VendorId", 'Grant' FROM "Sales"."Vendor" WHERE "Name" = 'Umbrella Corp';"#,
        )
        .await
        .unwrap();
    crate::common::flush_statistics(&env.erp).await;
    let second = sync_all(&env).await;
    let open = if state_side == "crm" {
        one_int(
            &env.crm,
            "SELECT count(*) FROM crmsync.rejects WHERE resolved_at IS NULL",
        )
        .await
    } else {
        one_int(
            &env.erp,
            "SELECT count(*) FROM crmsync.rejects WHERE resolved_at IS NULL",
        )
        .await
    };
    assert_eq!(open, 0, "{second:?}");
    assert_eq!(assert_quoted_in_step(&env).await, (2, 5), "{second:?}");
    assert_eq!(
        one_int(
            &env.crm,
            r#"SELECT count(*) FROM "Person" WHERE "Pers_LastName" IN ('Fox', 'Dunn')
                 AND "Pers_Deleted" = 1"#
        )
        .await,
        2
    );
    let quiet = sync_all(&env).await;
    assert_eq!(writes(&quiet), 0, "{quiet:?}");
    for args in [&["verify"][..], &["status", "--max-lag", "10m"], &["check"]] {
        let (code, out) = run(&env, args);
        assert_eq!(code, 0, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_mixed_case_schemas_named_in_lower_case_with_uuid_and_char_keys() {
    quoted_case("external").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_mixed_case_schemas_with_the_state_in_the_crm() {
    quoted_case("crm").await;
}

/// A one-way field whose value an ERP trigger rewrites (the code
/// upper-cased): written once per CRM change, not again on every run
/// that reads the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_value_an_erp_trigger_rewrites_is_written_once() {
    let env = scenario_env("Europe/Berlin").await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = swap(
        &text,
        "crm = \"Comp_IndCode\"\nexternal = \"code\"\n",
        "crm = \"Comp_IndCode\"\nexternal = \"code\"\ndirection = \"crm_to_external\"\n",
    );
    std::fs::write(&env.config, text).unwrap();
    let acme = company(&env.crm, "Acme", "Supplier", Some("ac-1")).await;
    let first = sync_all(&env).await;
    assert_eq!(first[0].inserted, 1, "{first:?}");
    for _ in 0..2 {
        let again = sync_all(&env).await;
        assert_eq!(writes(&again), 0, "{again:?}");
    }
    crm_touch(
        &env.crm,
        &format!(
            "UPDATE company SET comp_name = 'Acme Ltd', comp_updateddate = $stamp, \
             comp_timestamp = $stamp WHERE comp_companyid = {acme}"
        ),
    )
    .await;
    let renamed = sync_all(&env).await;
    assert_eq!(writes(&renamed), 1, "{renamed:?}");
    let again = sync_all(&env).await;
    assert_eq!(writes(&again), 0, "{again:?}");
    assert_eq!(
        one_text(&env.erp, "SELECT name || ' ' || code FROM erp.supplier")
            .await
            .as_deref(),
        Some("Acme Ltd AC-1")
    );
    // The sides do differ in that field, and verify says so.
    let (code, out) = run(&env, &["verify"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("comp_indcode: CRM \"ac-1\" / external \"AC-1\""),
        "{out}"
    );
    // A repair writes the value again and the trigger rewrites it: verify
    // says where such a difference comes from, and nothing is held.
    let (code, out) = run(&env, &["verify", "--repair"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("STILL DRIFTING"), "{out}");
    assert!(out.contains("rewritten where it is written"), "{out}");
}
