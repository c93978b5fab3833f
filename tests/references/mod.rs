//! Related records: CRM persons under their companies and ERP contacts
//! under their suppliers, with a real foreign key in the ERP. The
//! person's `Pers_CompanyId` (a CRM company id) and the contact's
//! `supplier_id` (an ERP supplier key) are translated through the supplier
//! entity's links, both ways, in one run of both entities, parents first.

mod keys;
mod property;

use crate::common::{Env, Opts};
use crate::two_way::crm_insert;
use crmsync::engine::{Engine, EntityReport, Mode};
use tokio_postgres::Client;

/// The contact entity: persons under their companies, ERP contacts under
/// their suppliers, `Pers_CompanyId` referencing the supplier entity.
pub const CONTACT_ENTITY: &str = r#"[[entity]]
name = "contact"
crm_table = "Person"
crm_link_column = "pers_intforeignid"
external_table = "erp.contact"
external_key = "contact_id"
external_crm_id_column = "crm_person_id"
external_updated_column = "updated_at"
direction = "both"
delete_into_external = "ignore"
delete_into_crm = "ignore"

[[entity.field]]
crm = "Pers_LastName"
external = "last_name"

[[entity.field]]
crm = "Pers_CompanyId"
external = "supplier_id"
references = "supplier"
"#;

/// Fresh databases with an ERP contact table under `erp.supplier`, and a
/// config of both entities (the child listed first).
async fn related_env() -> Env {
    related_env_with("").await
}

/// The supplier's primary contact, referencing the contact entity: with
/// the contact's company, a cycle (as in Sage CRM's own model).
pub const PRIMARY_CONTACT: &str = r#"
[[entity.field]]
crm = "Comp_PrimaryPersonId"
external = "primary_contact_id"
references = "contact"
"#;

/// [`related_env`] with `supplier_fields` added to the supplier entity.
async fn related_env_with(supplier_fields: &str) -> Env {
    let env = Env::new(Opts::default()).await;
    env.erp
        .batch_execute(
            "-- ERP keys unlike CRM ids, so that an untranslated key shows.
             ALTER TABLE erp.supplier ALTER COLUMN supplier_id RESTART WITH 5000;",
        )
        .await
        .unwrap();
    let text = format!(
        r#"[crm]
url = "{crm}"
user_id = 7
timezone = "UTC"

[external]
url = "{erp}"
timezone = "UTC"

[state]
side = "external"

[defaults]
batch_size = 50
settle = "0s"
overlap = "5m"

{CONTACT_ENTITY}
[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
crm_filter = "Comp_Type = 'Supplier'"
external_table = "erp.supplier"
external_key = "supplier_id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
external_filter = "kind = 'S'"
external_defaults = {{ kind = "S" }}
crm_defaults = {{ Comp_Type = "Supplier" }}
direction = "both"
delete_into_external = "ignore"
delete_into_crm = "ignore"

[[entity.field]]
crm = "Comp_Name"
external = "name"
{supplier_fields}"#,
        crm = env.crm_url,
        erp = env.erp_url,
    );
    std::fs::write(&env.config, text).unwrap();
    env
}

/// One run of both entities; their reports by entity, in run order.
async fn sync_all(env: &Env) -> Vec<EntityReport> {
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    engine.sync(None, Mode::Apply).await.expect("sync")
}

/// The reasons of the open rejects of `entity`.
async fn open_reasons(erp: &Client, entity: &str) -> Vec<String> {
    erp.query(
        "SELECT reason FROM crmsync.rejects WHERE entity = $1 AND resolved_at IS NULL",
        &[&entity],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// How many rejects are open, of every entity.
pub(super) async fn open_rejects(erp: &Client) -> i64 {
    erp.query_one(
        "SELECT count(*) FROM crmsync.rejects WHERE resolved_at IS NULL",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn person(crm: &Client, company: Option<i32>, last: &str) -> i32 {
    crm.query_one(
        "INSERT INTO person (pers_companyid, pers_lastname, pers_createdby, pers_createddate, \
           pers_updatedby, pers_updateddate, pers_timestamp, pers_secterr) \
         VALUES ($1, $2, 1, localtimestamp(3), 1, localtimestamp(3), localtimestamp(3), -2147483640) \
         RETURNING pers_personid",
        &[&company, &last],
    )
    .await
    .unwrap()
    .get(0)
}

/// The ERP supplier key of CRM company `company`.
async fn erp_supplier(erp: &Client, company: i32) -> i64 {
    erp.query_one(
        "SELECT supplier_id FROM erp.supplier WHERE crm_company_id = $1",
        &[&company],
    )
    .await
    .unwrap()
    .get(0)
}

/// The ERP contact of CRM person `id`: its supplier key.
async fn contact_supplier(erp: &Client, id: i32) -> Option<i64> {
    erp.query_opt(
        "SELECT supplier_id FROM erp.contact WHERE crm_person_id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

#[tokio::test]
async fn persons_follow_their_companies_both_ways_and_unlinked_parents_hold_the_child() {
    let env = related_env().await;
    let acme = crm_insert(&env.crm, "Acme", None, None).await;
    let globex = crm_insert(&env.crm, "Globex", None, None).await;
    // A customer: outside the supplier entity's filter, never linked.
    let customer: i32 = env
        .crm
        .query_one(
            "INSERT INTO company (comp_name, comp_type, comp_updateddate, comp_timestamp) \
             VALUES ('Initech', 'Customer', localtimestamp(3), localtimestamp(3)) \
             RETURNING comp_companyid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let ann = person(&env.crm, Some(acme), "Ann").await;
    let bob = person(&env.crm, Some(globex), "Bob").await;
    let cid = person(&env.crm, Some(customer), "Cid").await;

    let first = sync_all(&env).await;
    let order: Vec<&str> = first.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(order, ["supplier", "contact"], "parents run first");
    assert_eq!(first[1].inserted, 2, "{:?}", first[1]);
    assert_eq!(first[1].rejected, 1, "{:?}", first[1]);
    assert_eq!(
        contact_supplier(&env.erp, ann).await,
        Some(erp_supplier(&env.erp, acme).await)
    );
    assert_eq!(
        contact_supplier(&env.erp, bob).await,
        Some(erp_supplier(&env.erp, globex).await)
    );
    assert_eq!(
        contact_supplier(&env.erp, cid).await,
        None,
        "held, not written"
    );
    let [reason] = open_reasons(&env.erp, "contact").await.try_into().unwrap();
    assert!(
        reason.contains(&format!(
            "parent \"supplier\" CRM key {customer} is not linked"
        )),
        "{reason}"
    );

    // A new ERP supplier with a contact under it arrives in CRM in one
    // run, the person under the new company.
    let new_supplier: i64 = env
        .erp
        .query_one(
            "INSERT INTO erp.supplier (name) VALUES ('Umbrella') RETURNING supplier_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    env.erp
        .execute(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Dee')",
            &[&new_supplier],
        )
        .await
        .unwrap();
    // Ann moves to Globex in CRM.
    env.crm
        .execute(
            "UPDATE person SET pers_companyid = $1, pers_updateddate = localtimestamp(3), \
             pers_timestamp = localtimestamp(3) WHERE pers_personid = $2",
            &[&globex, &ann],
        )
        .await
        .unwrap();
    let second = sync_all(&env).await;
    assert_eq!(second[0].crm_inserted, 1, "{:?}", second[0]);
    assert_eq!(second[1].crm_inserted, 1, "{:?}", second[1]);
    let (dee_company, umbrella): (Option<i32>, i32) = env
        .crm
        .query_one(
            "SELECT p.pers_companyid, c.comp_companyid FROM person p, company c \
             WHERE p.pers_lastname = 'Dee' AND c.comp_name = 'Umbrella'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        dee_company,
        Some(umbrella),
        "the person sits under its company"
    );
    assert_eq!(
        contact_supplier(&env.erp, ann).await,
        Some(erp_supplier(&env.erp, globex).await),
        "the move in CRM moved the ERP contact"
    );

    // A contact moved in the ERP moves the person in CRM.
    env.erp
        .execute(
            "UPDATE erp.contact SET supplier_id = $1, updated_at = clock_timestamp() \
             WHERE crm_person_id = $2",
            &[&new_supplier, &bob],
        )
        .await
        .unwrap();
    let third = sync_all(&env).await;
    assert_eq!(third[1].crm_updated, 1, "{:?}", third[1]);
    let bob_company: Option<i32> = env
        .crm
        .query_one(
            "SELECT pers_companyid FROM person WHERE pers_personid = $1",
            &[&bob],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bob_company, Some(umbrella));

    // The customer becomes a supplier: its person goes through and the
    // reject closes.
    env.crm
        .execute(
            "UPDATE company SET comp_type = 'Supplier', comp_updateddate = localtimestamp(3), \
             comp_timestamp = localtimestamp(3) WHERE comp_companyid = $1",
            &[&customer],
        )
        .await
        .unwrap();
    let fourth = sync_all(&env).await;
    assert_eq!(fourth[1].rejected, 0, "{:?}", fourth[1]);
    assert_eq!(
        contact_supplier(&env.erp, cid).await,
        Some(erp_supplier(&env.erp, customer).await)
    );
    let open = open_rejects(&env.erp).await;
    assert_eq!(open, 0);

    // Quiet runs write nothing on either side.
    for _ in 0..2 {
        let quiet = sync_all(&env).await;
        for r in &quiet {
            assert_eq!(r.changes(), 0, "{r:?}");
        }
    }
    // verify compares translated values: in step.
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    for v in engine.verify(None, false).await.unwrap() {
        assert!(!v.found.drift(), "{v:?}");
    }
}

async fn customer(crm: &Client, name: &str) -> i32 {
    crm.query_one(
        "INSERT INTO company (comp_name, comp_type, comp_updateddate, comp_timestamp) \
         VALUES ($1, 'Customer', localtimestamp(3), localtimestamp(3)) RETURNING comp_companyid",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

async fn set_primary_person(crm: &Client, company: i32, person: i32) {
    crm.execute(
        "UPDATE company SET comp_primarypersonid = $1, comp_updateddate = localtimestamp(3), \
         comp_timestamp = localtimestamp(3) WHERE comp_companyid = $2",
        &[&person, &company],
    )
    .await
    .unwrap();
}

/// Each ERP supplier's primary contact, as (CRM company id of the
/// supplier, CRM person id of its primary contact), for every supplier
/// that has one.
async fn erp_primaries(erp: &Client) -> Vec<(i32, Option<i32>)> {
    erp.query(
        "SELECT s.crm_company_id, c.crm_person_id FROM erp.supplier s \
         LEFT JOIN erp.contact c ON c.contact_id = s.primary_contact_id \
         ORDER BY s.crm_company_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The Sage model's cycle: a company names its primary person, a person
/// its company; in the ERP a supplier names its primary contact (NULL
/// allowed) and a contact its supplier (NOT NULL, a real foreign key).
/// One run writes both sides complete: suppliers first with the primary
/// contact NULL, then the contacts, then the suppliers' primary contacts.
#[tokio::test]
async fn a_cycle_of_references_is_written_complete_in_one_run_both_ways() {
    let env = related_env_with(PRIMARY_CONTACT).await;
    let mut companies = Vec::new();
    for i in 0..300 {
        let c = crm_insert(&env.crm, &format!("Supplier {i}"), None, None).await;
        let first = person(&env.crm, Some(c), &format!("First {i}")).await;
        person(&env.crm, Some(c), &format!("Second {i}")).await;
        set_primary_person(&env.crm, c, first).await;
        companies.push((c, Some(first)));
    }
    // A customer (outside the supplier filter) with five persons: held.
    let initech = customer(&env.crm, "Initech").await;
    let cid = person(&env.crm, Some(initech), "Cid").await;
    for name in ["Cal", "Cob", "Cyd", "Cyr"] {
        person(&env.crm, Some(initech), name).await;
    }
    set_primary_person(&env.crm, initech, cid).await;

    // plan counts no reject for the primary contacts a run fills in.
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let dry = Engine::connect(plan)
        .await
        .unwrap()
        .sync(None, Mode::DryRun)
        .await
        .unwrap();
    assert_eq!((dry[0].inserted, dry[0].rejected), (300, 0), "{:?}", dry[0]);

    let first = sync_all(&env).await;
    let order: Vec<&str> = first.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(
        order,
        ["supplier", "contact"],
        "the reference that takes NULL is written first"
    );
    assert_eq!(first[0].inserted, 300, "{:?}", first[0]);
    assert_eq!(first[0].rejected, 0, "{:?}", first[0]);
    assert_eq!(first[0].open_rejects, 0, "{:?}", first[0]);
    assert_eq!(first[1].inserted, 600, "{:?}", first[1]);
    assert_eq!(
        first[1].open_rejects, 5,
        "the customer's five: {:?}",
        first[1]
    );
    assert!(first[1].unfinished(), "the run exits 3");
    let reasons = open_reasons(&env.erp, "contact").await;
    assert_eq!(reasons.len(), 5);
    for r in &reasons {
        assert!(
            r.contains(&format!(
                "parent \"supplier\" CRM key {initech} is not linked"
            )),
            "{r}"
        );
    }
    assert_eq!(erp_primaries(&env.erp).await, companies);
    for (c, _) in &companies {
        let persons: Vec<i32> = env
            .crm
            .query(
                "SELECT pers_personid FROM person WHERE pers_companyid = $1",
                &[c],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let supplier = erp_supplier(&env.erp, *c).await;
        for p in persons {
            assert_eq!(contact_supplier(&env.erp, p).await, Some(supplier));
        }
    }

    // A new ERP supplier with two contacts, the first its primary contact
    // (the foreign keys want the supplier first, then its contacts, then
    // the primary contact named).
    let umbrella: i64 = env
        .erp
        .query_one(
            "INSERT INTO erp.supplier (name) VALUES ('Umbrella') RETURNING supplier_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let dee: i64 = env
        .erp
        .query_one(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Dee') \
             RETURNING contact_id",
            &[&umbrella],
        )
        .await
        .unwrap()
        .get(0);
    env.erp
        .execute(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Eve')",
            &[&umbrella],
        )
        .await
        .unwrap();
    env.erp
        .execute(
            "UPDATE erp.supplier SET primary_contact_id = $1 WHERE supplier_id = $2",
            &[&dee, &umbrella],
        )
        .await
        .unwrap();
    let second = sync_all(&env).await;
    assert_eq!(second[0].crm_inserted, 1, "{:?}", second[0]);
    assert_eq!(second[0].open_rejects, 0, "{:?}", second[0]);
    assert_eq!(second[1].crm_inserted, 2, "{:?}", second[1]);
    let row = env
        .crm
        .query_one(
            "SELECT c.comp_companyid, c.comp_primarypersonid, p.pers_personid, \
                    p.pers_companyid, c.comp_secterr, p.pers_createdby \
             FROM company c JOIN person p ON p.pers_lastname = 'Dee' \
             WHERE c.comp_name = 'Umbrella'",
            &[],
        )
        .await
        .unwrap();
    let (company, primary, dee_person, dee_company): (i32, Option<i32>, i32, Option<i32>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(primary, Some(dee_person), "the primary person is named");
    assert_eq!(dee_company, Some(company), "the person sits under it");
    let secterr: Option<i32> = row.get(4);
    let created_by: Option<i32> = row.get(5);
    assert!(secterr.is_some(), "Sage's write rules on the company");
    assert_eq!(created_by, Some(7), "Sage's write rules on the person");

    // A primary person changed in CRM follows into the ERP.
    let (c0, _) = companies[0];
    let second_person: i32 = env
        .crm
        .query_one(
            "SELECT pers_personid FROM person WHERE pers_lastname = 'Second 0'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    set_primary_person(&env.crm, c0, second_person).await;
    let third = sync_all(&env).await;
    assert_eq!(third[0].updated, 1, "{:?}", third[0]);
    let primaries = erp_primaries(&env.erp).await;
    assert!(
        primaries.contains(&(c0, Some(second_person))),
        "{primaries:?}"
    );

    // Quiet runs write nothing on either side.
    for _ in 0..2 {
        for r in &sync_all(&env).await {
            assert_eq!(r.changes(), 0, "{r:?}");
        }
    }
    // verify finds both sides in step, but for the held persons.
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    for v in engine.verify(None, false).await.unwrap() {
        let f = &v.found;
        assert_eq!(
            f.differ + f.missing_crm + f.missing_external + f.unnamed,
            0,
            "{v:?}"
        );
        let held = if v.entity == "contact" { 5 } else { 0 };
        assert_eq!(f.unlinked_crm, held, "{v:?}");
    }

    // The customer becomes a supplier: its persons are released, its
    // primary person named in the ERP, and the run exits 0.
    env.crm
        .execute(
            "UPDATE company SET comp_type = 'Supplier', comp_updateddate = localtimestamp(3), \
             comp_timestamp = localtimestamp(3) WHERE comp_companyid = $1",
            &[&initech],
        )
        .await
        .unwrap();
    let released = sync_all(&env).await;
    for r in &released {
        assert_eq!(r.open_rejects, 0, "{r:?}");
        assert!(!r.unfinished(), "{r:?}");
    }
    assert_eq!(released[1].inserted, 5, "{:?}", released[1]);
    let initech_supplier = erp_supplier(&env.erp, initech).await;
    assert_eq!(
        contact_supplier(&env.erp, cid).await,
        Some(initech_supplier)
    );
    assert!(
        erp_primaries(&env.erp)
            .await
            .contains(&(initech, Some(cid))),
        "the new supplier names its primary contact"
    );
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

/// A run that wrote the suppliers of a cycle and stopped (here: the
/// supplier entity run alone) leaves their primary contacts NULL and open
/// as rejects naming the contacts; the next full run fills them in.
#[tokio::test]
async fn a_cycle_left_half_written_is_completed_by_the_next_run() {
    let env = related_env_with(PRIMARY_CONTACT).await;
    let mut companies = Vec::new();
    for i in 0..4 {
        let c = crm_insert(&env.crm, &format!("Supplier {i}"), None, None).await;
        let p = person(&env.crm, Some(c), &format!("Primary {i}")).await;
        set_primary_person(&env.crm, c, p).await;
        companies.push((c, Some(p)));
    }
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    let alone = engine.sync(Some("supplier"), Mode::Apply).await.unwrap();
    assert_eq!(alone[0].inserted, 4, "{:?}", alone[0]);
    assert_eq!(alone[0].rejected, 4, "{:?}", alone[0]);
    assert_eq!(alone[0].open_rejects, 4, "{:?}", alone[0]);
    let unnamed: Vec<(i32, Option<i32>)> = companies.iter().map(|(c, _)| (*c, None)).collect();
    assert_eq!(erp_primaries(&env.erp).await, unnamed);
    let reason: String = env
        .erp
        .query_one(
            "SELECT min(reason) FROM crmsync.rejects WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("parent \"contact\" CRM key"), "{reason}");
    assert!(reason.contains("written NULL until then"), "{reason}");

    let full = sync_all(&env).await;
    assert_eq!(full[0].open_rejects, 0, "{:?}", full[0]);
    assert_eq!(full[0].updated, 4, "{:?}", full[0]);
    assert_eq!(full[1].inserted, 4, "{:?}", full[1]);
    assert_eq!(erp_primaries(&env.erp).await, companies);
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

/// A backfill of a cycle, both directions: the suppliers go first with
/// their primary contacts NULL, then the contacts, then the suppliers'
/// primary contacts are filled in, in the same command.
#[tokio::test]
async fn a_backfill_of_a_cycle_leaves_every_reference_complete() {
    use crmsync::engine::{BackfillDirection, BackfillOptions};
    let env = related_env_with(PRIMARY_CONTACT).await;
    let mut companies = Vec::new();
    for i in 0..5 {
        let c = crm_insert(&env.crm, &format!("Supplier {i}"), None, None).await;
        person(&env.crm, Some(c), &format!("Other {i}")).await;
        let p = person(&env.crm, Some(c), &format!("Primary {i}")).await;
        set_primary_person(&env.crm, c, p).await;
        companies.push((c, Some(p)));
    }
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    let opts = BackfillOptions {
        direction: BackfillDirection::CrmToExternal,
        restart: false,
        chunk_rows: 2,
    };
    let reports = engine.backfill(None, &opts).await.expect("backfill");
    let order: Vec<&str> = reports.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(order, ["supplier", "contact"]);
    assert_eq!(
        (reports[0].inserted, reports[0].rejected),
        (5, 0),
        "{:?}",
        reports[0]
    );
    assert_eq!(
        reports[0].updated, 5,
        "primary contacts filled in: {:?}",
        reports[0]
    );
    assert_eq!(
        (reports[1].inserted, reports[1].rejected),
        (10, 0),
        "{:?}",
        reports[1]
    );
    assert_eq!(erp_primaries(&env.erp).await, companies);
    let open = open_rejects(&env.erp).await;
    assert_eq!(open, 0);
    // The sync that follows has nothing to do.
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

/// A backfill of a child entity copies it in bulk, its references
/// translated chunk by chunk through the parent's links (run for all
/// entities, parents first); a child whose parent is not linked is held
/// as a reject naming the parent.
#[tokio::test]
async fn a_backfill_of_children_translates_their_references_in_bulk() {
    use crmsync::engine::{BackfillDirection, BackfillOptions};
    let env = related_env().await;
    let mut expected = Vec::new();
    for i in 0..7 {
        let c = crm_insert(&env.crm, &format!("Supplier {i}"), None, None).await;
        for n in 0..2 {
            expected.push((person(&env.crm, Some(c), &format!("P{i}.{n}")).await, c));
        }
    }
    let initech = customer(&env.crm, "Initech").await;
    let cid = person(&env.crm, Some(initech), "Cid").await;
    let loner = person(&env.crm, None, "Loner").await;
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    let opts = BackfillOptions {
        direction: BackfillDirection::CrmToExternal,
        restart: false,
        chunk_rows: 4,
    };
    let reports = engine.backfill(None, &opts).await.expect("backfill");
    let order: Vec<&str> = reports.iter().map(|r| r.entity.as_str()).collect();
    assert_eq!(order, ["supplier", "contact"]);
    assert_eq!(
        (reports[1].inserted, reports[1].rejected),
        (14, 2),
        "Cid held, the person without a company refused: {:?}",
        reports[1]
    );
    assert!(reports[1].chunks >= 4, "{:?}", reports[1]);
    for (p, c) in expected {
        assert_eq!(
            contact_supplier(&env.erp, p).await,
            Some(erp_supplier(&env.erp, c).await),
            "person {p}"
        );
    }
    assert_eq!(contact_supplier(&env.erp, cid).await, None, "held");
    assert_eq!(
        contact_supplier(&env.erp, loner).await,
        None,
        "refused by NOT NULL"
    );
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE entity = 'contact' AND key = $1 \
             AND resolved_at IS NULL",
            &[&cid.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.contains(&format!(
            "parent \"supplier\" CRM key {initech} is not linked"
        )),
        "{reason}"
    );
    // The sync that follows finds both sides in step.
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

/// Suppliers matched by name and contacts by (company, last name), with
/// the contact entity flowing `direction`; an ERP that already holds the
/// suppliers and their contacts, and a CRM that holds the same companies
/// and persons, two companies each with a "Smith". Returns each CRM
/// person with the ERP supplier it belongs under.
async fn matching_env(direction: &str) -> (Env, Vec<(i32, i64)>) {
    let env = related_env().await;
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replacen(
            "name = \"contact\"\n",
            "name = \"contact\"\nmatch_on = [{ crm = \"Pers_CompanyId\", external = \"supplier_id\" }, \
             { crm = \"Pers_LastName\", external = \"last_name\" }]\n",
            1,
        )
        .replacen(
            "direction = \"both\"\n",
            &format!("direction = \"{direction}\"\n"),
            1,
        )
        .replacen(
            "crm_defaults = { Comp_Type = \"Supplier\" }\n",
            "crm_defaults = { Comp_Type = \"Supplier\" }\n\
             match_on = [{ crm = \"Comp_Name\", external = \"name\" }]\n",
            1,
        );
    std::fs::write(&env.config, config).unwrap();
    let mut persons = Vec::new();
    for company in ["Acme", "Globex"] {
        let c = crm_insert(&env.crm, company, None, None).await;
        let s: i64 = env
            .erp
            .query_one(
                "INSERT INTO erp.supplier (name) VALUES ($1) RETURNING supplier_id",
                &[&company],
            )
            .await
            .unwrap()
            .get(0);
        for last in ["Smith", &format!("{company} Only")] {
            persons.push((person(&env.crm, Some(c), last).await, s));
            env.erp
                .execute(
                    "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, $2)",
                    &[&s, &last],
                )
                .await
                .unwrap();
        }
    }
    (env, persons)
}

/// Each CRM person is linked (its link column names an ERP contact) to a
/// contact under its own supplier.
async fn assert_linked_under_own_supplier(env: &Env, persons: &[(i32, i64)]) {
    for (p, s) in persons {
        let contact: Option<String> = env
            .crm
            .query_one(
                "SELECT pers_intforeignid FROM person WHERE pers_personid = $1",
                &[p],
            )
            .await
            .unwrap()
            .get(0);
        let contact: Option<i64> = contact.and_then(|c| c.trim().parse().ok());
        let linked: Option<i64> = match contact {
            Some(k) => env
                .erp
                .query_opt(
                    "SELECT supplier_id FROM erp.contact WHERE contact_id = $1",
                    &[&k],
                )
                .await
                .unwrap()
                .map(|r| r.get(0)),
            None => None,
        };
        assert_eq!(linked, Some(*s), "person {p} linked under its own supplier");
    }
}

/// `match_on` compares a reference in its translated form, from the CRM
/// side: each CRM "Smith" finds the "Smith" of its own supplier, and two
/// unlinked "Twin"s under one company are ambiguous (rejected), not one
/// linked and the other copied.
#[tokio::test]
async fn match_on_a_reference_links_each_crm_child_under_its_own_parent() {
    let (env, persons) = matching_env("both").await;
    let acme: i32 = persons[0].0;
    let acme_company: i32 = env
        .crm
        .query_one(
            "SELECT pers_companyid FROM person WHERE pers_personid = $1",
            &[&acme],
        )
        .await
        .unwrap()
        .get::<_, Option<i32>>(0)
        .unwrap();
    person(&env.crm, Some(acme_company), "Twin").await;
    person(&env.crm, Some(acme_company), "Twin").await;
    env.erp
        .execute(
            "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, 'Twin')",
            &[&persons[0].1],
        )
        .await
        .unwrap();
    let first = sync_all(&env).await;
    assert_eq!(first[0].adopted, 2, "{:?}", first[0]);
    assert_eq!(first[1].adopted, 4, "{:?}", first[1]);
    assert_eq!(
        (first[1].inserted, first[1].crm_inserted),
        (0, 0),
        "{:?}",
        first[1]
    );
    assert!(first[1].rejected >= 2, "the twins: {:?}", first[1]);
    assert_linked_under_own_supplier(&env, &persons).await;
    let contacts: i64 = env
        .erp
        .query_one("SELECT count(*) FROM erp.contact", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(contacts, 5, "no duplicate");
}

/// The same from the ERP side: ERP contacts find the CRM persons under
/// the companies their suppliers are linked to, none inserted again.
#[tokio::test]
async fn match_on_a_reference_links_each_erp_child_under_its_own_parent() {
    let (env, persons) = matching_env("external_to_crm").await;
    let first = sync_all(&env).await;
    assert_eq!(first[0].adopted, 2, "{:?}", first[0]);
    assert_eq!(
        (first[1].adopted, first[1].crm_inserted, first[1].rejected),
        (4, 0, 0),
        "{:?}",
        first[1]
    );
    assert_linked_under_own_supplier(&env, &persons).await;
    let crm_persons: i64 = env
        .crm
        .query_one("SELECT count(*) FROM person", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(crm_persons, 4, "no duplicate");
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

/// A person moved to one company in CRM while its ERP contact moved to
/// another supplier in the same window: a conflict like any other, logged
/// with both values in the ERP's form, and settled by the policy (here
/// crm_wins) on both sides.
#[tokio::test]
async fn a_clash_on_a_reference_is_a_conflict_settled_by_the_policy() {
    let env = related_env().await;
    let config = std::fs::read_to_string(&env.config).unwrap().replacen(
        "name = \"contact\"\n",
        "name = \"contact\"\nconflict = \"crm_wins\"\n",
        1,
    );
    std::fs::write(&env.config, config).unwrap();
    let acme = crm_insert(&env.crm, "Acme", None, None).await;
    let globex = crm_insert(&env.crm, "Globex", None, None).await;
    let umbrella = crm_insert(&env.crm, "Umbrella", None, None).await;
    let ann = person(&env.crm, Some(acme), "Ann").await;
    sync_all(&env).await;
    let (globex_erp, umbrella_erp) = (
        erp_supplier(&env.erp, globex).await,
        erp_supplier(&env.erp, umbrella).await,
    );
    env.crm
        .execute(
            "UPDATE person SET pers_companyid = $1, pers_updateddate = localtimestamp(3), \
             pers_timestamp = localtimestamp(3) WHERE pers_personid = $2",
            &[&globex, &ann],
        )
        .await
        .unwrap();
    env.erp
        .execute(
            "UPDATE erp.contact SET supplier_id = $1 WHERE crm_person_id = $2",
            &[&umbrella_erp, &ann],
        )
        .await
        .unwrap();
    let run = sync_all(&env).await;
    assert_eq!(run[1].conflicts, 1, "{:?}", run[1]);
    assert_eq!(
        contact_supplier(&env.erp, ann).await,
        Some(globex_erp),
        "CRM wins"
    );
    let row = env
        .erp
        .query_one(
            "SELECT field, crm_value::text, external_value::text, winner FROM crmsync.conflicts",
            &[],
        )
        .await
        .unwrap();
    let (field, crm_value, ext_value, winner): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(field, "pers_companyid");
    assert!(crm_value.contains(&globex_erp.to_string()), "{crm_value}");
    assert!(ext_value.contains(&umbrella_erp.to_string()), "{ext_value}");
    assert_eq!(winner, "crm");
    let company: Option<i32> = env
        .crm
        .query_one(
            "SELECT pers_companyid FROM person WHERE pers_personid = $1",
            &[&ann],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(company, Some(globex));
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

/// Regression: a row set aside twice in one page (its deferred reference
/// written NULL, then refused for naming an external row that does not
/// exist) made recording the page's rejects fail ("ON CONFLICT DO UPDATE
/// command cannot affect row a second time") and the whole run with it.
#[tokio::test]
async fn a_row_set_aside_twice_in_one_page_is_one_reject() {
    let env = related_env_with(PRIMARY_CONTACT).await;
    let c = crm_insert(&env.crm, "Typo", None, None).await;
    let p = person(&env.crm, Some(c), "Ann").await;
    set_primary_person(&env.crm, c, p).await;
    env.crm
        .execute(
            "UPDATE company SET comp_supplierid = '999999' WHERE comp_companyid = $1",
            &[&c],
        )
        .await
        .unwrap();
    let run = sync_all(&env).await;
    assert_eq!(run[0].open_rejects, 1, "{:?}", run[0]);
    let [reason] = open_reasons(&env.erp, "supplier").await.try_into().unwrap();
    assert!(reason.contains("no row with that key"), "{reason}");
}

/// A cycle whose every reference refuses NULL can never be written: the
/// run refuses it before writing anything, naming the entities (exit 2).
#[tokio::test]
async fn a_cycle_of_not_null_references_is_a_configuration_error() {
    let env = related_env_with(PRIMARY_CONTACT).await;
    env.erp
        .batch_execute("ALTER TABLE erp.supplier ALTER COLUMN primary_contact_id SET NOT NULL")
        .await
        .unwrap();
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    let err = engine.sync(None, Mode::Apply).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("supplier, contact") || text.contains("contact, supplier"),
        "{text}"
    );
    assert!(text.contains("refuses NULL"), "{text}");
    // One entity alone translates through the links that exist.
    assert!(engine.sync(Some("contact"), Mode::Apply).await.is_ok());
}

/// `check` refuses a reference column that cannot hold its parent's keys
/// (here a supplier key of 5000 in a varchar(2)), naming the field, the
/// parent and a type that would fit.
#[tokio::test]
async fn check_refuses_a_reference_column_too_narrow_for_the_parents_keys() {
    let env = related_env().await;
    env.erp
        .batch_execute(
            "ALTER TABLE erp.contact DROP CONSTRAINT contact_supplier_id_fkey,
                 ALTER COLUMN supplier_id TYPE varchar(2);
             INSERT INTO erp.supplier (name) VALUES ('Acme');",
        )
        .await
        .unwrap();
    let out = env.run_binary(&["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("field Pers_CompanyId (references \"supplier\")")
            && stderr.contains("the external column supplier_id")
            && stderr.contains("the parent's external key supplier_id")
            && stderr.contains("change it to bigint"),
        "{stderr}"
    );
}

/// `check` warns when a child's rows reference parent rows that the parent
/// entity's filter leaves out (persons of a customer, under a supplier
/// entity filtered on `Comp_Type`), counting them.
#[tokio::test]
async fn check_warns_of_children_whose_parents_the_parent_filter_leaves_out() {
    let env = related_env().await;
    let acme = crm_insert(&env.crm, "Acme", None, None).await;
    person(&env.crm, Some(acme), "Ann").await;
    let initech = customer(&env.crm, "Initech").await;
    for name in ["Cid", "Dan", "Eve"] {
        person(&env.crm, Some(initech), name).await;
    }
    person(&env.crm, None, "Nobody").await;
    let out = env.run_binary(&["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let warning = stdout
        .lines()
        .find(|l| l.contains("leaves out"))
        .unwrap_or_else(|| panic!("no warning: {stdout}"));
    assert!(
        warning.contains("entity \"contact\": 3 CRM rows name in pers_companyid a")
            && warning.contains("crm_filter \"Comp_Type = 'Supplier'\" of entity \"supplier\""),
        "{warning}"
    );
    // Once the customer is a supplier nothing is left out.
    env.crm
        .execute(
            "UPDATE company SET comp_type = 'Supplier' WHERE comp_companyid = $1",
            &[&initech],
        )
        .await
        .unwrap();
    let out = env.run_binary(&["check"], &[]);
    let (stdout, _) = crate::common::output_text(&out);
    assert!(!stdout.contains("leaves out"), "{stdout}");
}

/// A supplier deleted in CRM whose ERP row still has contacts: the ERP's
/// foreign key refuses the delete, the supplier is held as a reject whose
/// reason names the contact table, nothing is lost, and the rest of the
/// run goes on.
#[tokio::test]
async fn a_parent_delete_refused_by_a_foreign_key_is_held_naming_the_children() {
    let env = related_env().await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let (contact, supplier) = text.split_at(text.find("name = \"supplier\"").unwrap());
    let supplier = supplier.replacen(
        "delete_into_external = \"ignore\"",
        "delete_into_external = \"hard\"",
        1,
    );
    std::fs::write(&env.config, format!("{contact}{supplier}")).unwrap();
    let acme = crm_insert(&env.crm, "Acme", None, None).await;
    let globex = crm_insert(&env.crm, "Globex", None, None).await;
    person(&env.crm, Some(acme), "Ann").await;
    sync_all(&env).await;
    for id in [acme, globex] {
        env.crm
            .execute(
                "UPDATE company SET comp_deleted = 1, comp_updateddate = localtimestamp(3), \
                 comp_timestamp = localtimestamp(3) WHERE comp_companyid = $1",
                &[&id],
            )
            .await
            .unwrap();
    }
    let run = sync_all(&env).await;
    assert_eq!((run[0].deleted, run[0].rejected), (1, 1), "{:?}", run[0]);
    let left: Vec<String> = env
        .erp
        .query("SELECT name FROM erp.supplier", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["Acme"], "Globex went, Acme kept its contact");
    let [reason] = open_reasons(&env.erp, "supplier").await.try_into().unwrap();
    assert!(reason.contains("contact"), "{reason}");
}

/// Regression: a person whose company was deleted in CRM (the ERP
/// supplier flagged deleted, its contacts kept) was held for ever as a
/// reject ("parent \"supplier\" CRM key 1 is not linked") whenever it was
/// read again: a deleted pair still names the same two rows, and the
/// person's company translates through it.
#[tokio::test]
async fn a_person_left_under_a_deleted_company_keeps_its_supplier() {
    let env = related_env().await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let (contact, supplier) = text.split_at(text.find("name = \"supplier\"").unwrap());
    let supplier = supplier.replacen(
        "delete_into_external = \"ignore\"",
        "delete_into_external = \"soft\"\nexternal_deleted_column = \"is_deleted\"",
        1,
    );
    std::fs::write(&env.config, format!("{contact}{supplier}")).unwrap();
    let acme = crm_insert(&env.crm, "Acme", None, None).await;
    let ann = person(&env.crm, Some(acme), "Ann").await;
    sync_all(&env).await;
    let key = erp_supplier(&env.erp, acme).await;
    env.crm
        .execute(
            "UPDATE company SET comp_deleted = 1, comp_updateddate = localtimestamp(3), \
             comp_timestamp = localtimestamp(3) WHERE comp_companyid = $1",
            &[&acme],
        )
        .await
        .unwrap();
    let run = sync_all(&env).await;
    let deleted: bool = env
        .erp
        .query_one(
            "SELECT is_deleted FROM erp.supplier WHERE supplier_id = $1",
            &[&key],
        )
        .await
        .unwrap()
        .get(0);
    assert!(deleted, "{run:?}");
    assert_eq!(open_rejects(&env.erp).await, 0, "{run:?}");
    // A change of the person still reaches its contact, under the same
    // (deleted) supplier.
    env.crm
        .execute(
            "UPDATE person SET pers_lastname = 'Ann-Marie', pers_updateddate = localtimestamp(3), \
             pers_timestamp = localtimestamp(3) WHERE pers_personid = $1",
            &[&ann],
        )
        .await
        .unwrap();
    let run = sync_all(&env).await;
    assert_eq!(open_rejects(&env.erp).await, 0, "{run:?}");
    let row = env
        .erp
        .query_one(
            "SELECT supplier_id, last_name FROM erp.contact WHERE crm_person_id = $1",
            &[&ann],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (key, "Ann-Marie".to_string())
    );
}
