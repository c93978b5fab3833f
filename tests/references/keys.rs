//! References whose parent keys are not integers: an ERP vendor keyed by a
//! uuid or a blank-padded coded `char(n)`, its contacts keyed by yet
//! another kind and pointing at the vendor through a real foreign key. The
//! person's `Pers_CompanyId` (a CRM id) is translated to the vendor's key
//! and back, both ways, whichever side holds the state.

use crate::common::{Env, Opts};
use crate::two_way::crm_insert;
use crmsync::engine::{Engine, EntityReport, Mode};

/// The ERP vendor key, the contact key, and which side holds the state.
async fn typed_env(vendor_key: &str, contact_key: &str, state_side: &str) -> Env {
    let env = Env::new(Opts {
        state_side: if state_side == "crm" {
            "crm"
        } else {
            "external"
        },
        ..Opts::default()
    })
    .await;
    env.erp
        .batch_execute(&format!(
            "CREATE SEQUENCE erp.vendor_code;
             CREATE SEQUENCE erp.contact_code;
             CREATE TABLE erp.vendor (
                 vendor_id      {vendor_key},
                 crm_company_id int UNIQUE,
                 name           varchar(60) NOT NULL,
                 updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
             );
             CREATE TABLE erp.vendor_contact (
                 contact_id     {contact_key},
                 vendor_id      {vendor_type} NOT NULL REFERENCES erp.vendor,
                 crm_person_id  int UNIQUE,
                 last_name      varchar(40) NOT NULL,
                 updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
             );
             CREATE FUNCTION erp.touch() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
             CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON erp.vendor
               FOR EACH ROW EXECUTE FUNCTION erp.touch();
             CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON erp.vendor_contact
               FOR EACH ROW EXECUTE FUNCTION erp.touch();",
            vendor_type = vendor_key.split(' ').next().unwrap(),
        ))
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
side = "{state_side}"

[defaults]
batch_size = 50
settle = "0s"
overlap = "5m"

[[entity]]
name = "vcontact"
crm_table = "Person"
crm_link_column = "pers_intforeignid"
external_table = "erp.vendor_contact"
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
external = "vendor_id"
references = "vendor"

[[entity]]
name = "vendor"
crm_table = "Company"
crm_link_column = "comp_supplierid"
external_table = "erp.vendor"
external_key = "vendor_id"
external_crm_id_column = "crm_company_id"
external_updated_column = "updated_at"
direction = "both"
delete_into_external = "ignore"
delete_into_crm = "ignore"
crm_defaults = {{ Comp_Type = "Supplier" }}

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

async fn sync_all(env: &Env) -> Vec<EntityReport> {
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = Engine::connect(plan).await.expect("connect");
    engine.sync(None, Mode::Apply).await.expect("sync")
}

/// Each ERP contact's vendor, as the CRM company id the vendor names.
async fn contacts_by_company(env: &Env) -> Vec<(Option<i32>, String)> {
    env.erp
        .query(
            "SELECT v.crm_company_id, k.last_name FROM erp.vendor_contact k \
             JOIN erp.vendor v ON v.vendor_id = k.vendor_id ORDER BY k.last_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn round_trip(vendor_key: &str, contact_key: &str, state_side: &str) {
    let env = typed_env(vendor_key, contact_key, state_side).await;
    let acme = crm_insert(&env.crm, "Acme", None, None).await;
    let globex = crm_insert(&env.crm, "Globex", None, None).await;
    for (company, last) in [(acme, "Ann"), (globex, "Bob")] {
        env.crm
            .execute(
                "INSERT INTO person (pers_companyid, pers_lastname, pers_updateddate, \
                 pers_timestamp) VALUES ($1, $2, localtimestamp(3), localtimestamp(3))",
                &[&company, &last],
            )
            .await
            .unwrap();
    }
    let first = sync_all(&env).await;
    assert_eq!(
        (first[1].inserted, first[1].rejected),
        (2, 0),
        "{:?}",
        first[1]
    );
    assert_eq!(
        contacts_by_company(&env).await,
        [
            (Some(acme), "Ann".to_string()),
            (Some(globex), "Bob".to_string())
        ]
    );

    // A contact added in the ERP under Globex's vendor (its key as the ERP
    // stores it, padded or not) arrives under Globex; Ann moves to Globex
    // in CRM.
    env.erp
        .execute(
            "INSERT INTO erp.vendor_contact (vendor_id, last_name) \
             SELECT vendor_id, 'Cid' FROM erp.vendor WHERE crm_company_id = $1",
            &[&globex],
        )
        .await
        .unwrap();
    env.crm
        .execute(
            "UPDATE person SET pers_companyid = $1, pers_updateddate = localtimestamp(3), \
             pers_timestamp = localtimestamp(3) WHERE pers_lastname = 'Ann'",
            &[&globex],
        )
        .await
        .unwrap();
    let second = sync_all(&env).await;
    assert_eq!(second[1].crm_inserted, 1, "{:?}", second[1]);
    let cid_company: Option<i32> = env
        .crm
        .query_one(
            "SELECT pers_companyid FROM person WHERE pers_lastname = 'Cid'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cid_company, Some(globex));
    assert_eq!(
        contacts_by_company(&env).await,
        [
            (Some(globex), "Ann".to_string()),
            (Some(globex), "Bob".to_string()),
            (Some(globex), "Cid".to_string())
        ]
    );
    for r in &sync_all(&env).await {
        assert_eq!(r.changes(), 0, "{r:?}");
    }
}

#[tokio::test]
async fn a_uuid_parent_key_under_a_coded_contact_key() {
    round_trip(
        "uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        "varchar(12) PRIMARY KEY DEFAULT 'C-' || nextval('erp.contact_code')",
        "external",
    )
    .await;
}

#[tokio::test]
async fn a_blank_padded_char_parent_key_with_the_state_in_crm() {
    round_trip(
        "char(12) PRIMARY KEY DEFAULT 'V-' || nextval('erp.vendor_code')",
        "uuid PRIMARY KEY DEFAULT gen_random_uuid()",
        "crm",
    )
    .await;
}
