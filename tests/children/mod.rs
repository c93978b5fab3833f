//! Sage CRM's phones, e-mails and addresses as columns of the ERP row:
//! `Phone[Business].Phon_Number`, `Email[Business].Emai_EmailAddress` and
//! `Address[primary].Addr_City` read through the link tables, changes of a
//! child alone carried across, and ERP values written back into Phone,
//! PhoneLink, Email, EmailLink, Address and Address_Link by Sage's rules.

mod property;

use crate::common::{Env, Opts};
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// The sync user of these tests.
const USER: i32 = 7;

/// A two-way supplier entity whose phone, e-mail and city live in child
/// tables.
async fn child_env() -> Env {
    let env = Env::new(Opts::default()).await;
    std::fs::write(&env.config, config(&env.crm_url, &env.erp_url)).unwrap();
    env
}

/// The config of the child tests, between `crm` and `erp`.
pub fn config(crm: &str, erp: &str) -> String {
    format!(
        r#"[crm]
url = "{crm}"
user_id = {USER}
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
conflict = "crm_wins"

[[entity.field]]
crm = "Comp_Name"
external = "name"

[[entity.field]]
crm = "Phone[Business].Phon_Number"
external = "phone"

[[entity.field]]
crm = "Email[Business].Emai_EmailAddress"
external = "email"

[[entity.field]]
crm = "Address[primary].Addr_City"
external = "city"
"#
    )
}

/// 200 suppliers the way Sage CRM holds them: each with a Business phone
/// and a primary address; every 4th with a Fax too, every 5th with an
/// older Business phone whose link is deleted, every 7th with an older
/// Business link to a deleted phone, every 9th with a second live
/// Business phone linked after the first; the even ones with a Business
/// e-mail. Everything is stamped a minute ago.
async fn seed(crm: &Client) {
    crm.batch_execute(
        "DO $$
         DECLARE c int; ch int; ts timestamp(3) := localtimestamp(3) - interval '1 minute';
         BEGIN
         FOR i IN 1..200 LOOP
           INSERT INTO company (comp_name, comp_type, comp_createdby, comp_createddate,
                  comp_updatedby, comp_updateddate, comp_timestamp, comp_secterr)
           VALUES ('Company ' || i, 'Supplier', 1, ts, 1, ts, ts, -2147483640)
           RETURNING comp_companyid INTO c;
           IF i % 5 = 0 THEN
             INSERT INTO phone (phon_number, phon_createddate, phon_updateddate)
             VALUES ('old ' || i, ts, ts) RETURNING phon_phoneid INTO ch;
             INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                    plink_createddate, plink_updateddate, plink_deleted)
             VALUES (5, c, 'Business', ch, ts, ts, 1);
           END IF;
           IF i % 7 = 0 THEN
             INSERT INTO phone (phon_number, phon_createddate, phon_updateddate, phon_deleted)
             VALUES ('gone ' || i, ts, ts, 1) RETURNING phon_phoneid INTO ch;
             INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                    plink_createddate, plink_updateddate)
             VALUES (5, c, 'Business', ch, ts, ts);
           END IF;
           IF i % 4 = 0 THEN
             INSERT INTO phone (phon_number, phon_createddate, phon_updateddate)
             VALUES ('fax ' || i, ts, ts) RETURNING phon_phoneid INTO ch;
             INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                    plink_createddate, plink_updateddate)
             VALUES (5, c, 'Fax', ch, ts, ts);
           END IF;
           INSERT INTO phone (phon_number, phon_createddate, phon_updateddate)
           VALUES ('+44 20 7946 ' || i, ts, ts) RETURNING phon_phoneid INTO ch;
           INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                  plink_createddate, plink_updateddate)
           VALUES (5, c, 'Business', ch, ts, ts);
           IF i % 9 = 0 THEN
             INSERT INTO phone (phon_number, phon_createddate, phon_updateddate)
             VALUES ('second ' || i, ts, ts) RETURNING phon_phoneid INTO ch;
             INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                    plink_createddate, plink_updateddate)
             VALUES (5, c, 'Business', ch, ts, ts);
           END IF;
           IF i % 2 = 0 THEN
             INSERT INTO email (emai_emailaddress, emai_createddate, emai_updateddate)
             VALUES ('c' || i || '@example.com', ts, ts) RETURNING emai_emailid INTO ch;
             INSERT INTO emaillink (elink_entityid, elink_recordid, elink_type, elink_emailid,
                    elink_createddate, elink_updateddate)
             VALUES (5, c, 'Business', ch, ts, ts);
           END IF;
           INSERT INTO address (addr_city, addr_createddate, addr_updateddate)
           VALUES ('City ' || i, ts, ts) RETURNING addr_addressid INTO ch;
           INSERT INTO address_link (adli_addressid, adli_companyid, adli_createddate,
                  adli_updateddate)
           VALUES (ch, c, ts, ts);
           UPDATE company SET comp_primaryaddressid = ch WHERE comp_companyid = c;
         END LOOP;
         END $$",
    )
    .await
    .unwrap();
}

/// What erp.supplier holds, by CRM id: (name, phone, email, city).
type Row = (String, Option<String>, Option<String>, Option<String>);

async fn erp_rows(erp: &Client) -> BTreeMap<i32, Row> {
    erp.query(
        "SELECT crm_company_id, name, phone, email, city FROM erp.supplier WHERE NOT is_deleted",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
    .collect()
}

/// The company id of "Company i".
async fn company(crm: &Client, i: i32) -> i32 {
    crm.query_one(
        "SELECT comp_companyid FROM company WHERE comp_name = $1",
        &[&format!("Company {i}")],
    )
    .await
    .unwrap()
    .get(0)
}

/// A text fingerprint of every row of `tables` with its row version.
async fn fingerprint(client: &Client, tables: &[&str]) -> String {
    let mut out = String::new();
    for t in tables {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(string_agg(xmin::text, ',' ORDER BY xmin::text), '') FROM {t}"
                ),
                &[],
            )
            .await
            .unwrap();
        out.push_str(t);
        out.push(':');
        out.push_str(&row.get::<_, String>(0));
        out.push('\n');
    }
    out
}

const CRM_TABLES: &[&str] = &[
    "company",
    "phone",
    "phonelink",
    "email",
    "emaillink",
    "address",
    "address_link",
];

/// 200 Business phones changed in one statement share one change time;
/// read in pages of 50 they all arrive, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_changed_at_one_time_arrive_once_across_pages() {
    let env = child_env().await;
    seed(&env.crm).await;
    assert_eq!(env.sync().await.inserted, 200);
    let n = env
        .crm
        .execute(
            "UPDATE phone p SET phon_number = 'tied ' || l.plink_recordid, \
                    phon_updateddate = date_trunc('second', localtimestamp(3)) \
             FROM phonelink l WHERE l.plink_phoneid = p.phon_phoneid \
               AND l.plink_type = 'Business' AND l.plink_deleted IS NULL AND p.phon_deleted IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert!(n >= 200, "{n}");
    let report = env.sync().await;
    assert_eq!(report.updated, 200, "{report:?}");
    let rows = erp_rows(&env.erp).await;
    for (id, row) in &rows {
        assert_eq!(row.1, Some(format!("tied {id}")), "company {id}");
    }
    let again = env.sync().await;
    assert_eq!(again.changes(), 0, "{again:?}");
}

/// A phone change stamped below what a run reads past, committed after
/// that run, is picked up by the next run (the overlap), as a change of
/// the company row would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_committed_child_change_is_picked_up_by_the_next_run() {
    let env = child_env().await;
    seed(&env.crm).await;
    assert_eq!(env.sync().await.inserted, 200);
    let late = crate::common::connect(&env.crm_url).await;
    late.batch_execute(
        "BEGIN; UPDATE phone SET phon_number = 'late', \
             phon_updateddate = localtimestamp(3) - interval '20 seconds' \
         WHERE phon_number = '+44 20 7946 11'",
    )
    .await
    .unwrap();
    env.crm
        .execute(
            "UPDATE phone SET phon_number = 'early', phon_updateddate = localtimestamp(3) \
             WHERE phon_number = '+44 20 7946 12'",
            &[],
        )
        .await
        .unwrap();
    let second = env.sync().await;
    assert_eq!(second.updated, 1, "{second:?}");
    late.batch_execute("COMMIT").await.unwrap();
    let third = env.sync().await;
    assert_eq!(third.updated, 1, "{third:?}");
    let rows = erp_rows(&env.erp).await;
    assert_eq!(
        rows[&company(&env.crm, 11).await].1.as_deref(),
        Some("late")
    );
    assert_eq!(
        rows[&company(&env.crm, 12).await].1.as_deref(),
        Some("early")
    );
}

/// The first sync writes exactly the live Business values (not the fax,
/// not the deleted phone or link, the lowest live link when two are live).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_writes_the_live_business_values() {
    let env = child_env().await;
    seed(&env.crm).await;
    let report = env.sync().await;
    assert_eq!(report.inserted, 200, "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");
    let rows = erp_rows(&env.erp).await;
    assert_eq!(rows.len(), 200);
    for i in 1..=200 {
        let id = company(&env.crm, i).await;
        let want = (
            format!("Company {i}"),
            Some(format!("+44 20 7946 {i}")),
            (i % 2 == 0).then(|| format!("c{i}@example.com")),
            Some(format!("City {i}")),
        );
        assert_eq!(rows[&id], want, "Company {i}");
    }
    // Nothing was written into CRM: the values came from there.
    assert_eq!(report.crm_updated + report.crm_inserted, 0, "{report:?}");
}

/// A phone or an address changed in CRM, its company row untouched,
/// reaches the ERP on the next run; the run after writes nothing on
/// either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_changed_alone_reaches_the_erp_and_quiet_runs_write_nothing() {
    let env = child_env().await;
    seed(&env.crm).await;
    assert_eq!(env.sync().await.inserted, 200);
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");

    let c3 = company(&env.crm, 3).await;
    let c8 = company(&env.crm, 8).await;
    let c10 = company(&env.crm, 10).await;
    let company_before = fingerprint(&env.crm, &["company"]).await;
    env.crm
        .execute(
            "UPDATE phone SET phon_number = '+44 1632 960003', phon_updateddate = localtimestamp(3) \
             WHERE phon_number = '+44 20 7946 3'",
            &[],
        )
        .await
        .unwrap();
    env.crm
        .execute(
            "UPDATE address SET addr_city = 'Leeds', addr_updateddate = localtimestamp(3) \
             WHERE addr_city = 'City 8'",
            &[],
        )
        .await
        .unwrap();
    // Ending a link is a change too: company 10's e-mail goes.
    env.crm
        .execute(
            "UPDATE emaillink SET elink_deleted = 1, elink_updateddate = localtimestamp(3) \
             WHERE elink_recordid = $1",
            &[&c10],
        )
        .await
        .unwrap();
    let report = env.sync().await;
    assert_eq!(report.updated, 3, "{report:?}");
    let rows = erp_rows(&env.erp).await;
    assert_eq!(rows[&c3].1.as_deref(), Some("+44 1632 960003"));
    assert_eq!(rows[&c8].3.as_deref(), Some("Leeds"));
    assert_eq!(rows[&c10].2, None);
    assert_eq!(
        company_before,
        fingerprint(&env.crm, &["company"]).await,
        "the company rows were not written"
    );

    let crm_before = fingerprint(&env.crm, CRM_TABLES).await;
    let erp_before = fingerprint(&env.erp, &["erp.supplier"]).await;
    for _ in 0..2 {
        let quiet = env.sync().await;
        assert_eq!(quiet.changes(), 0, "{quiet:?}");
    }
    assert_eq!(crm_before, fingerprint(&env.crm, CRM_TABLES).await);
    assert_eq!(erp_before, fingerprint(&env.erp, &["erp.supplier"]).await);
}

/// ERP changes reach the child rows by Sage CRM's rules: a changed phone
/// updates its Phone row in place, an e-mail where CRM had none becomes an
/// Email and an EmailLink, a cleared phone ends the Business phone by soft
/// deletes only; then quiet runs write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erp_changes_update_create_and_end_child_rows_by_sages_rules() {
    let env = child_env().await;
    seed(&env.crm).await;
    assert_eq!(env.sync().await.inserted, 200);
    let counts = |t: &'static str| {
        let crm = &env.crm;
        async move {
            crm.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let phones_before = counts("phone").await;
    let links_before = counts("phonelink").await;
    let emails_before = counts("email").await;
    let c1 = company(&env.crm, 1).await;
    let c3 = company(&env.crm, 3).await;
    let c6 = company(&env.crm, 6).await;
    let phone1: i32 = env
        .crm
        .query_one(
            "SELECT phon_phoneid FROM phone WHERE phon_number = '+44 20 7946 1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    env.erp
        .batch_execute(&format!(
            "UPDATE erp.supplier SET phone = '+44 113 496 0001' WHERE crm_company_id = {c1};
             UPDATE erp.supplier SET email = 'three@example.com' WHERE crm_company_id = {c3};
             UPDATE erp.supplier SET phone = NULL WHERE crm_company_id = {c6};"
        ))
        .await
        .unwrap();
    // `plan` tells what the sync will do, and writes nothing.
    let crm_before = fingerprint(&env.crm, CRM_TABLES).await;
    let out = crate::common::run_binary(&env.config, &["plan"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for change in [
        "Phone[Business].phon_number=\"+44 113 496 0001\"",
        "Email[Business].emai_emailaddress=\"three@example.com\"",
        "Phone[Business].phon_number=NULL",
    ] {
        assert!(stdout.contains(change), "{change}: {stdout}");
    }
    assert_eq!(crm_before, fingerprint(&env.crm, CRM_TABLES).await);
    let report = env.sync().await;
    assert_eq!(report.crm_updated, 3, "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");

    // In place: the same Phone row, no new one.
    let r = env
        .crm
        .query_one(
            "SELECT phon_number, phon_updatedby, phon_updateddate > phon_createddate \
             FROM phone WHERE phon_phoneid = $1",
            &[&phone1],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "+44 113 496 0001");
    assert_eq!(r.get::<_, i32>(1), USER);
    assert!(r.get::<_, bool>(2), "UpdatedDate moved");
    assert_eq!(
        counts("phone").await,
        phones_before,
        "no phone row was added"
    );
    assert_eq!(counts("phonelink").await, links_before);

    // A new Email and EmailLink, by Sage's rules.
    assert_eq!(counts("email").await, emails_before + 1);
    let r = env
        .crm
        .query_one(
            "SELECT e.emai_emailaddress, e.emai_createdby, e.emai_updatedby, \
                    e.emai_createddate = e.emai_updateddate AND e.emai_updateddate = e.emai_timestamp, \
                    e.emai_deleted IS NULL, l.elink_entityid, l.elink_type, l.elink_createdby, \
                    l.elink_createddate IS NOT NULL AND l.elink_timestamp IS NOT NULL, \
                    l.elink_deleted IS NULL \
             FROM emaillink l JOIN email e ON e.emai_emailid = l.elink_emailid \
             WHERE l.elink_recordid = $1",
            &[&c3],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "three@example.com");
    assert_eq!((r.get::<_, i32>(1), r.get::<_, i32>(2)), (USER, USER));
    assert!(r.get::<_, bool>(3), "the three dates are one");
    assert!(r.get::<_, bool>(4));
    assert_eq!(r.get::<_, i32>(5), 5, "Company's entity id");
    assert_eq!(r.get::<_, String>(6), "Business");
    assert_eq!(r.get::<_, i32>(7), USER);
    assert!(r.get::<_, bool>(8));
    assert!(r.get::<_, bool>(9));

    // Cleared: the Business link and its phone soft-deleted, nothing
    // removed; the fax is left alone.
    let ended = env
        .crm
        .query(
            "SELECT l.plink_deleted, p.phon_deleted, l.plink_updatedby \
             FROM phonelink l JOIN phone p ON p.phon_phoneid = l.plink_phoneid \
             WHERE l.plink_recordid = $1 AND l.plink_type = 'Business'",
            &[&c6],
        )
        .await
        .unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].get::<_, Option<i16>>(0), Some(1));
    assert_eq!(ended[0].get::<_, Option<i16>>(1), Some(1));
    assert_eq!(ended[0].get::<_, Option<i32>>(2), Some(USER));
    assert_eq!(counts("phone").await, phones_before, "nothing hard-deleted");

    // The writes into CRM are read back as echoes: nothing more to do.
    let crm_before = fingerprint(&env.crm, CRM_TABLES).await;
    let erp_before = fingerprint(&env.erp, &["erp.supplier"]).await;
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
    assert_eq!(crm_before, fingerprint(&env.crm, CRM_TABLES).await);
    assert_eq!(erp_before, fingerprint(&env.erp, &["erp.supplier"]).await);
    let rows = erp_rows(&env.erp).await;
    assert_eq!(rows[&c6].1, None);
    assert_eq!(rows[&c3].2.as_deref(), Some("three@example.com"));
}

/// A new ERP supplier with a phone, an e-mail and a city arrives as a
/// company with its Phone, PhoneLink, Email, EmailLink, Address and
/// Address_Link rows, and Comp_PrimaryAddressId naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_erp_supplier_arrives_with_all_its_child_rows() {
    let env = child_env().await;
    env.erp
        .batch_execute(
            "INSERT INTO erp.supplier (name, phone, email, city) \
             VALUES ('Northwind', '+44 161 496 0000', 'orders@northwind.example', 'Manchester'), \
                    ('No Phone Ltd', NULL, NULL, NULL)",
        )
        .await
        .unwrap();
    let report = env.sync().await;
    assert_eq!(report.crm_inserted, 2, "{report:?}");
    let r = env
        .crm
        .query_one(
            "SELECT c.comp_companyid, c.comp_primaryaddressid, a.addr_city, a.addr_createdby, \
                    l.adli_companyid, l.adli_personid IS NULL, l.adli_deleted IS NULL \
             FROM company c \
             JOIN address a ON a.addr_addressid = c.comp_primaryaddressid \
             JOIN address_link l ON l.adli_addressid = a.addr_addressid \
             WHERE c.comp_name = 'Northwind'",
            &[],
        )
        .await
        .unwrap();
    let id: i32 = r.get(0);
    assert_eq!(r.get::<_, String>(2), "Manchester");
    assert_eq!(r.get::<_, i32>(3), USER);
    assert_eq!(r.get::<_, i32>(4), id);
    assert!(r.get::<_, bool>(5) && r.get::<_, bool>(6));
    let phone: String = env
        .crm
        .query_one(
            "SELECT p.phon_number FROM phonelink l JOIN phone p ON p.phon_phoneid = l.plink_phoneid \
             WHERE l.plink_entityid = 5 AND l.plink_recordid = $1 AND l.plink_type = 'Business' \
               AND l.plink_deleted IS NULL AND p.phon_deleted IS NULL",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(phone, "+44 161 496 0000");
    let email: String = env
        .crm
        .query_one(
            "SELECT e.emai_emailaddress FROM emaillink l JOIN email e ON e.emai_emailid = l.elink_emailid \
             WHERE l.elink_entityid = 5 AND l.elink_recordid = $1 AND l.elink_type = 'Business'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, "orders@northwind.example");
    // A supplier without any gets no child rows at all.
    let (phones, emails, addresses): (i64, i64, i64) = {
        let r = env
            .crm
            .query_one(
                "SELECT (SELECT count(*) FROM phone), (SELECT count(*) FROM email), \
                        (SELECT count(*) FROM address)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((phones, emails, addresses), (1, 1, 1));
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
}

/// The child field lines of the config replaced by `field`.
fn with_field(env: &Env, field: &str) {
    let text = config(&env.crm_url, &env.erp_url);
    let text = text.replace(
        "crm = \"Phone[Business].Phon_Number\"",
        &format!("crm = \"{field}\""),
    );
    std::fs::write(&env.config, text).unwrap();
}

/// `check` refuses a child table, a column or a syntax it does not know,
/// saying what was meant, with exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_unknown_child_tables_and_columns_with_a_suggestion() {
    let env = child_env().await;
    for (field, says) in [
        ("Phon[Business].Phon_Number", "did you mean Phone?"),
        ("Phone[Business].Phon_Numbr", "did you mean phon_number?"),
        ("Phone[Business.Phon_Number", "no closing ']'"),
        ("Phone[ Business].Phon_Number", "without surrounding blanks"),
        (
            "Phone[Business].Phon_UpdatedDate",
            "kept by Sage CRM's rules",
        ),
    ] {
        with_field(&env, field);
        let out = crate::common::run_binary(&env.config, &["check"], &[]);
        let (stdout, stderr) = crate::common::output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{field}\n{stdout}\n{stderr}");
        assert!(
            stderr.to_lowercase().contains(&says.to_lowercase()),
            "{field}: {stderr}"
        );
        assert!(stderr.contains("entity \"supplier\""), "{stderr}");
    }
    // The types must fit: a phone number cannot go into a boolean.
    let text = config(&env.crm_url, &env.erp_url)
        .replace("external = \"phone\"", "external = \"promote\"");
    std::fs::write(&env.config, text).unwrap();
    let out = crate::common::run_binary(&env.config, &["check"], &[]);
    let (_, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot map"), "{stderr}");
    assert!(stderr.contains("Phone[Business]"), "{stderr}");
    // Only Company and Person rows own phones.
    let text = config(&env.crm_url, &env.erp_url)
        .replace("crm_table = \"Company\"", "crm_table = \"Opportunity\"");
    std::fs::write(&env.config, text).unwrap();
    let out = crate::common::run_binary(&env.config, &["check"], &[]);
    let (_, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("belong to Company and Person"), "{stderr}");
}

/// `check` passes the child fields and warns about each index the child
/// reads need that is missing, printing the CREATE INDEX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_missing_child_indexes_with_the_index_to_add() {
    let env = child_env().await;
    let out = crate::common::run_binary(&env.config, &["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("phonelink"), "{stdout}");
    env.crm
        .batch_execute(
            "DROP INDEX idx_plink_updateddate_linkid; DROP INDEX idx_plink_entityid_recordid_type;",
        )
        .await
        .unwrap();
    let out = crate::common::run_binary(&env.config, &["check"], &[]);
    let (stdout, stderr) = crate::common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("CREATE INDEX ON public.phonelink (plink_updateddate)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "CREATE INDEX ON public.phonelink (plink_entityid, plink_recordid, plink_type)"
        ),
        "{stdout}"
    );
}

/// A backfill copies the live Business values as the sync would; verify
/// then finds both sides in step, sees a phone changed in CRM alone as
/// drift, and `--repair` brings it across.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_verify_carry_child_values() {
    use crmsync::engine::{BackfillDirection, BackfillOptions, Engine};
    let env = child_env().await;
    seed(&env.crm).await;
    let plan = crmsync::cli::load_plan(&env.config).unwrap();
    let engine = Engine::connect(plan).await.unwrap();
    let reports = engine
        .backfill(
            None,
            &BackfillOptions {
                direction: BackfillDirection::CrmToExternal,
                restart: false,
                chunk_rows: 64,
            },
        )
        .await
        .unwrap();
    assert_eq!(reports[0].inserted, 200, "{:?}", reports[0]);
    let rows = erp_rows(&env.erp).await;
    for i in [1, 5, 7, 9, 12, 200] {
        let id = company(&env.crm, i).await;
        assert_eq!(rows[&id].1, Some(format!("+44 20 7946 {i}")), "Company {i}");
        assert_eq!(rows[&id].3, Some(format!("City {i}")), "Company {i}");
    }
    let v = engine.verify(None, false).await.unwrap();
    assert_eq!((v[0].found.pairs, v[0].found.differ), (200, 0), "{v:?}");

    // Changed in CRM only, and not synced: drift, then repaired.
    env.crm
        .execute(
            "UPDATE phone SET phon_number = 'drifted' WHERE phon_number = '+44 20 7946 12'",
            &[],
        )
        .await
        .unwrap();
    let v = engine.verify(None, false).await.unwrap();
    assert_eq!(v[0].found.differ, 1, "{v:?}");
    let v = engine.verify(None, true).await.unwrap();
    assert!(v[0].repair.is_some(), "{v:?}");
    let id = company(&env.crm, 12).await;
    assert_eq!(erp_rows(&env.erp).await[&id].1.as_deref(), Some("drifted"));
    let v = engine.verify(None, false).await.unwrap();
    assert_eq!(v[0].found.differ, 0, "{v:?}");
}

/// A run killed while it writes a new company's child rows leaves nothing
/// behind (the company and its children share one transaction); the next
/// run creates each company once with one of each child row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_inside_the_child_writes_converges_without_duplicates() {
    use crate::common::{binary, connect, output_text};
    let env = child_env().await;
    env.erp
        .batch_execute(
            "INSERT INTO erp.supplier (name, phone, email, city) \
             SELECT 'Supplier ' || i, '+44 161 496 ' || i, 's' || i || '@example.com', 'Town ' || i \
             FROM generate_series(1, 3) AS i",
        )
        .await
        .unwrap();
    // The run blocks on its first EmailLink insert, after the company, its
    // phone and the e-mail row are written but not committed.
    let blocker = connect(&env.crm_url).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE emaillink IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut child = binary(&env.config, &["sync"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watcher = connect(&env.crm_url).await;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("crmsync exited ({status}) early: {:?}", output_text(&out));
        }
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query ILIKE '%emaillink%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let counts = "SELECT (SELECT count(*) FROM company), (SELECT count(*) FROM phone), \
                  (SELECT count(*) FROM phonelink), (SELECT count(*) FROM email), \
                  (SELECT count(*) FROM emaillink), (SELECT count(*) FROM address), \
                  (SELECT count(*) FROM address_link), \
                  (SELECT count(*) FROM company WHERE comp_primaryaddressid IS NOT NULL)";
    let read = |r: tokio_postgres::Row| -> Vec<i64> { (0..8).map(|i| r.get(i)).collect() };
    // The killed transaction left nothing.
    let after_kill = read(env.crm.query_one(counts, &[]).await.unwrap());
    assert_eq!(after_kill, vec![0; 8]);

    let out = binary(&env.config, &["sync"], &[]).output().unwrap();
    let (stdout, stderr) = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "rerun: {stdout}\n{stderr}");
    let after = read(env.crm.query_one(counts, &[]).await.unwrap());
    assert_eq!(
        after,
        vec![3; 8],
        "one company and one of each child row per supplier"
    );
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
    assert_eq!(
        read(env.crm.query_one(counts, &[]).await.unwrap()),
        vec![3; 8]
    );
}

/// On Person rows the links name the person: entity id 13 (a company's
/// phone with the same record id is not the person's), an address link by
/// `AdLi_PersonID` that also names the person's company, and
/// `Pers_PrimaryAddressId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_children_are_the_persons_own() {
    let env = Env::new(Opts::default()).await;
    env.erp
        .batch_execute(
            "CREATE TABLE erp.person (
                 person_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 crm_person_id int UNIQUE,
                 last_name varchar(40),
                 phone varchar(34),
                 city varchar(30),
                 updated_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX ON erp.person (updated_at, person_id);
             CREATE TRIGGER person_touch BEFORE INSERT OR UPDATE ON erp.person
                 FOR EACH ROW EXECUTE FUNCTION erp.supplier_touch_updated_at();",
        )
        .await
        .unwrap();
    std::fs::write(
        &env.config,
        format!(
            r#"[crm]
url = "{crm}"
user_id = {USER}
timezone = "UTC"

[external]
url = "{erp}"
timezone = "UTC"

[defaults]
settle = "0s"

[[entity]]
name = "person"
crm_table = "Person"
crm_link_column = "pers_intforeignid"
external_table = "erp.person"
external_key = "person_id"
external_crm_id_column = "crm_person_id"
external_updated_column = "updated_at"
direction = "both"

[[entity.field]]
crm = "Pers_LastName"
external = "last_name"

[[entity.field]]
crm = "Phone[Business].Phon_Number"
external = "phone"

[[entity.field]]
crm = "Address[primary].Addr_City"
external = "city"
"#,
            crm = env.crm_url,
            erp = env.erp_url
        ),
    )
    .unwrap();
    env.crm
        .batch_execute(
            "INSERT INTO company (comp_companyid, comp_name, comp_updateddate)
                 VALUES (1, 'Acme', localtimestamp(3));
             INSERT INTO person (pers_personid, pers_companyid, pers_lastname, pers_updateddate)
                 VALUES (1, 1, 'Smith', localtimestamp(3));
             INSERT INTO phone (phon_phoneid, phon_number, phon_updateddate)
                 VALUES (1, 'company phone', localtimestamp(3)),
                        (2, 'person phone', localtimestamp(3));
             INSERT INTO phonelink (plink_entityid, plink_recordid, plink_type, plink_phoneid,
                                    plink_updateddate)
                 VALUES (5, 1, 'Business', 1, localtimestamp(3)),
                        (13, 1, 'Business', 2, localtimestamp(3));",
        )
        .await
        .unwrap();
    let first = env.sync().await;
    assert_eq!(first.inserted, 1, "{first:?}");
    let r = env
        .erp
        .query_one(
            "SELECT phone, city FROM erp.person WHERE crm_person_id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, Option<String>>(0).as_deref(),
        Some("person phone")
    );
    assert_eq!(r.get::<_, Option<String>>(1), None);

    env.erp
        .batch_execute("UPDATE erp.person SET city = 'York' WHERE crm_person_id = 1")
        .await
        .unwrap();
    let second = env.sync().await;
    assert_eq!(second.crm_updated, 1, "{second:?}");
    let r = env
        .crm
        .query_one(
            "SELECT a.addr_city, l.adli_personid, l.adli_companyid \
             FROM person p JOIN address a ON a.addr_addressid = p.pers_primaryaddressid \
             JOIN address_link l ON l.adli_addressid = a.addr_addressid \
             WHERE p.pers_personid = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "York");
    assert_eq!(r.get::<_, Option<i32>>(1), Some(1));
    assert_eq!(r.get::<_, Option<i32>>(2), Some(1), "the person's company");
    let quiet = env.sync().await;
    assert_eq!(quiet.changes(), 0, "{quiet:?}");
}
