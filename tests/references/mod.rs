//! Related records: CRM persons under their companies and ERP contacts
//! under their suppliers, with a real foreign key in the ERP. The
//! person's `Pers_CompanyId` (a CRM company id) and the contact's
//! `supplier_id` (an ERP supplier key) are translated through the supplier
//! entity's links, both ways, in one run of both entities, parents first.

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
"#,
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
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE entity = 'contact' AND resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
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
    let open: i64 = env
        .erp
        .query_one(
            "SELECT count(*) FROM crmsync.rejects WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
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
    let reason: String = env
        .erp
        .query_one(
            "SELECT reason FROM crmsync.rejects WHERE entity = 'supplier' AND resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("contact"), "{reason}");
}
