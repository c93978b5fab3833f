//! Property test of related records: random inserts, moves, primary
//! changes and deletes of parents (CRM companies, ERP suppliers) and
//! children (CRM persons, ERP contacts) on both sides, interleaved with
//! runs of both entities, some killed at a random point. After two clean
//! runs every reference is consistent through the links: each contact
//! under the ERP row of its person's company, each supplier's primary
//! contact the ERP row of its company's primary person; nothing
//! duplicated, no orphan, no open reject.
//!
//! The operations keep to what the two databases allow and a person does:
//! a row is deleted only once nothing names it on either side, and a
//! primary contact is chosen only among rows live on both sides, so that
//! every case can converge (a primary contact deleted on the other side
//! would be held by the ERP's foreign key, as it should be).

use super::{related_env_with, PRIMARY_CONTACT};
use crate::common::Env;
use crmsync::engine::{Engine, EngineError, EntityReport, Mode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    CrmCompany(u8),
    CrmPerson(usize, u8),
    CrmMove(usize, usize),
    CrmPrimary(usize, usize),
    CrmDeletePerson(usize),
    CrmDeleteCompany(usize),
    ExtSupplier(u8),
    ExtContact(usize, u8),
    ExtMove(usize, usize),
    ExtPrimary(usize, usize),
    ExtDeleteContact(usize),
    ExtDeleteSupplier(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let i = || any::<usize>();
    prop_oneof![
        2 => any::<u8>().prop_map(Op::CrmCompany),
        3 => (i(), any::<u8>()).prop_map(|(c, v)| Op::CrmPerson(c, v)),
        2 => (i(), i()).prop_map(|(p, c)| Op::CrmMove(p, c)),
        2 => (i(), i()).prop_map(|(c, p)| Op::CrmPrimary(c, p)),
        1 => i().prop_map(Op::CrmDeletePerson),
        1 => i().prop_map(Op::CrmDeleteCompany),
        2 => any::<u8>().prop_map(Op::ExtSupplier),
        3 => (i(), any::<u8>()).prop_map(|(s, v)| Op::ExtContact(s, v)),
        2 => (i(), i()).prop_map(|(k, s)| Op::ExtMove(k, s)),
        2 => (i(), i()).prop_map(|(s, k)| Op::ExtPrimary(s, k)),
        1 => i().prop_map(Op::ExtDeleteContact),
        1 => i().prop_map(Op::ExtDeleteSupplier),
    ]
}

fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

async fn ints(c: &tokio_postgres::Client, sql: &str) -> Vec<i64> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

const CRM_TOUCH: &str = "updateddate = localtimestamp(3)";

/// Live CRM companies whose ERP supplier (if any) still exists.
async fn crm_companies(env: &Env) -> Vec<i64> {
    let gone: HashSet<i64> = gone_suppliers(env).await;
    ints(
        &env.crm,
        "SELECT comp_companyid::bigint FROM company WHERE comp_deleted IS NULL ORDER BY 1",
    )
    .await
    .into_iter()
    .filter(|c| !gone.contains(c))
    .collect()
}

/// CRM companies linked to an ERP supplier that is gone.
async fn gone_suppliers(env: &Env) -> HashSet<i64> {
    let erp: HashSet<i64> = ints(
        &env.erp,
        "SELECT supplier_id FROM erp.supplier WHERE NOT is_deleted",
    )
    .await
    .into_iter()
    .collect();
    env.crm
        .query(
            "SELECT comp_companyid::bigint, comp_supplierid FROM company \
             WHERE comp_supplierid IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            let x: String = r.get(1);
            !erp.contains(&x.trim().parse::<i64>().unwrap_or(-1))
        })
        .map(|r| r.get(0))
        .collect()
}

/// Live CRM persons whose ERP contact (if any) still exists.
async fn crm_persons(env: &Env) -> Vec<i64> {
    let erp: HashSet<i64> = ints(&env.erp, "SELECT contact_id FROM erp.contact")
        .await
        .into_iter()
        .collect();
    env.crm
        .query(
            "SELECT pers_personid::bigint, pers_intforeignid::bigint FROM person \
             WHERE pers_deleted IS NULL ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(1).is_none_or(|k| erp.contains(&k)))
        .map(|r| r.get(0))
        .collect()
}

/// ERP suppliers whose CRM company (if any) is live.
async fn erp_suppliers(env: &Env) -> Vec<i64> {
    let dead: HashSet<i64> = ints(
        &env.crm,
        "SELECT comp_companyid::bigint FROM company WHERE comp_deleted IS NOT NULL",
    )
    .await
    .into_iter()
    .collect();
    env.erp
        .query(
            "SELECT supplier_id, crm_company_id::bigint FROM erp.supplier \
             WHERE NOT is_deleted ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.get::<_, Option<i64>>(1)
                .is_none_or(|c| !dead.contains(&c))
        })
        .map(|r| r.get(0))
        .collect()
}

/// ERP contacts whose CRM person (if any) is live.
async fn erp_contacts(env: &Env) -> Vec<i64> {
    let dead: HashSet<i64> = ints(
        &env.crm,
        "SELECT pers_personid::bigint FROM person WHERE pers_deleted IS NOT NULL",
    )
    .await
    .into_iter()
    .collect();
    env.erp
        .query(
            "SELECT contact_id, crm_person_id::bigint FROM erp.contact ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.get::<_, Option<i64>>(1)
                .is_none_or(|p| !dead.contains(&p))
        })
        .map(|r| r.get(0))
        .collect()
}

async fn apply(env: &Env, op: &Op) {
    let (crm, erp) = (&env.crm, &env.erp);
    match *op {
        Op::CrmCompany(v) => {
            crate::two_way::crm_insert(crm, &format!("c{v}"), None, None).await;
        }
        Op::CrmPerson(c, v) => {
            if let Some(c) = pick(&crm_companies(env).await, c) {
                super::person(crm, Some(c as i32), &format!("p{v}")).await;
            }
        }
        Op::CrmMove(p, c) => {
            let (persons, companies) = (crm_persons(env).await, crm_companies(env).await);
            if let (Some(p), Some(c)) = (pick(&persons, p), pick(&companies, c)) {
                crm.execute(
                    &format!(
                        "UPDATE person SET pers_companyid = $1, pers_{CRM_TOUCH} \
                         WHERE pers_personid = $2"
                    ),
                    &[&(c as i32), &(p as i32)],
                )
                .await
                .unwrap();
            }
        }
        Op::CrmPrimary(c, p) => {
            let (persons, companies) = (crm_persons(env).await, crm_companies(env).await);
            if let (Some(c), Some(p)) = (pick(&companies, c), pick(&persons, p)) {
                super::set_primary_person(crm, c as i32, p as i32).await;
            }
        }
        Op::CrmDeletePerson(p) => {
            let named: HashSet<i64> = ints(
                erp,
                "SELECT c.crm_person_id::bigint FROM erp.supplier s \
                 JOIN erp.contact c ON c.contact_id = s.primary_contact_id \
                 WHERE c.crm_person_id IS NOT NULL",
            )
            .await
            .into_iter()
            .collect();
            let primary: HashSet<i64> = ints(
                crm,
                "SELECT comp_primarypersonid::bigint FROM company \
                 WHERE comp_primarypersonid IS NOT NULL",
            )
            .await
            .into_iter()
            .collect();
            let free: Vec<i64> = crm_persons(env)
                .await
                .into_iter()
                .filter(|p| !named.contains(p) && !primary.contains(p))
                .collect();
            if let Some(p) = pick(&free, p) {
                crm.execute(
                    &format!(
                        "UPDATE person SET pers_deleted = 1, pers_{CRM_TOUCH} \
                         WHERE pers_personid = $1"
                    ),
                    &[&(p as i32)],
                )
                .await
                .unwrap();
            }
        }
        Op::CrmDeleteCompany(c) => {
            // Only a company nothing names, on either side.
            let used: HashSet<i64> = ints(
                crm,
                "SELECT pers_companyid::bigint FROM person WHERE pers_companyid IS NOT NULL \
                 AND pers_deleted IS NULL",
            )
            .await
            .into_iter()
            .chain(
                ints(
                    erp,
                    "SELECT s.crm_company_id::bigint FROM erp.contact c \
                     JOIN erp.supplier s ON s.supplier_id = c.supplier_id \
                     WHERE s.crm_company_id IS NOT NULL",
                )
                .await,
            )
            .collect();
            let free: Vec<i64> = crm_companies(env)
                .await
                .into_iter()
                .filter(|c| !used.contains(c))
                .collect();
            if let Some(c) = pick(&free, c) {
                crm.execute(
                    &format!(
                        "UPDATE company SET comp_deleted = 1, comp_{CRM_TOUCH} \
                         WHERE comp_companyid = $1"
                    ),
                    &[&(c as i32)],
                )
                .await
                .unwrap();
            }
        }
        Op::ExtSupplier(v) => {
            erp.execute(
                "INSERT INTO erp.supplier (name) VALUES ($1)",
                &[&format!("s{v}")],
            )
            .await
            .unwrap();
        }
        Op::ExtContact(s, v) => {
            if let Some(s) = pick(&erp_suppliers(env).await, s) {
                erp.execute(
                    "INSERT INTO erp.contact (supplier_id, last_name) VALUES ($1, $2)",
                    &[&s, &format!("k{v}")],
                )
                .await
                .unwrap();
            }
        }
        Op::ExtMove(k, s) => {
            let (contacts, suppliers) = (erp_contacts(env).await, erp_suppliers(env).await);
            if let (Some(k), Some(s)) = (pick(&contacts, k), pick(&suppliers, s)) {
                erp.execute(
                    "UPDATE erp.contact SET supplier_id = $1 WHERE contact_id = $2",
                    &[&s, &k],
                )
                .await
                .unwrap();
            }
        }
        Op::ExtPrimary(s, k) => {
            let (contacts, suppliers) = (erp_contacts(env).await, erp_suppliers(env).await);
            if let (Some(s), Some(k)) = (pick(&suppliers, s), pick(&contacts, k)) {
                erp.execute(
                    "UPDATE erp.supplier SET primary_contact_id = $1 WHERE supplier_id = $2",
                    &[&k, &s],
                )
                .await
                .unwrap();
            }
        }
        Op::ExtDeleteContact(k) => {
            let primary: HashSet<i64> = ints(
                erp,
                "SELECT primary_contact_id FROM erp.supplier WHERE primary_contact_id IS NOT NULL",
            )
            .await
            .into_iter()
            .collect();
            let named: HashSet<i64> = ints(
                crm,
                "SELECT p.pers_intforeignid::bigint FROM company c \
                 JOIN person p ON p.pers_personid = c.comp_primarypersonid \
                 WHERE p.pers_intforeignid IS NOT NULL",
            )
            .await
            .into_iter()
            .collect();
            let free: Vec<i64> = erp_contacts(env)
                .await
                .into_iter()
                .filter(|k| !primary.contains(k) && !named.contains(k))
                .collect();
            if let Some(k) = pick(&free, k) {
                erp.execute("DELETE FROM erp.contact WHERE contact_id = $1", &[&k])
                    .await
                    .unwrap();
                // Deletes are looked for once the statistics show one.
                crate::common::flush_statistics(erp).await;
            }
        }
        Op::ExtDeleteSupplier(s) => {
            let used: HashSet<i64> = ints(&env.erp, "SELECT supplier_id FROM erp.contact")
                .await
                .into_iter()
                .chain(
                    ints(
                        crm,
                        "SELECT c.comp_supplierid::bigint FROM person p \
                         JOIN company c ON c.comp_companyid = p.pers_companyid \
                         WHERE p.pers_deleted IS NULL AND c.comp_supplierid IS NOT NULL",
                    )
                    .await,
                )
                .collect();
            let free: Vec<i64> = erp_suppliers(env)
                .await
                .into_iter()
                .filter(|s| !used.contains(s))
                .collect();
            if let Some(s) = pick(&free, s) {
                erp.execute("DELETE FROM erp.supplier WHERE supplier_id = $1", &[&s])
                    .await
                    .unwrap();
                // Deletes are looked for once the statistics show one.
                crate::common::flush_statistics(erp).await;
            }
        }
    }
}

async fn try_sync(env: &Env) -> Result<Vec<EntityReport>, EngineError> {
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    Engine::connect(plan).await?.sync(None, Mode::Apply).await
}

async fn sync(env: &Env) -> Vec<EntityReport> {
    // A run killed a moment ago may still hold a lock until the server
    // notices the closed connection.
    for _ in 0..50 {
        match try_sync(env).await {
            Err(EngineError::Busy { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other.expect("sync"),
        }
    }
    panic!("the run lock was never released");
}

async fn reset(env: &Env) {
    env.crm
        .batch_execute("TRUNCATE company, person RESTART IDENTITY")
        .await
        .unwrap();
    env.erp
        .batch_execute(
            "TRUNCATE erp.supplier, erp.contact RESTART IDENTITY CASCADE; \
             DROP SCHEMA IF EXISTS crmsync CASCADE",
        )
        .await
        .unwrap();
}

/// Rows of one side by key: (link to the other side, reference, primary).
type Side = BTreeMap<i64, (Option<i64>, Option<i64>)>;

async fn pairs(c: &tokio_postgres::Client, sql: &str) -> Side {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Every live row linked one to one, every reference the translation of
/// the other side's, no open reject.
async fn check_converged(env: &Env) -> Result<(), TestCaseError> {
    let (crm, erp) = (&env.crm, &env.erp);
    // CRM company -> (its ERP supplier, its primary person)
    let companies = pairs(
        crm,
        "SELECT comp_companyid::bigint, comp_supplierid::bigint, comp_primarypersonid::bigint \
         FROM company WHERE comp_deleted IS NULL",
    )
    .await;
    // ERP supplier -> (its CRM company, its primary contact)
    let suppliers = pairs(
        erp,
        "SELECT supplier_id, crm_company_id::bigint, primary_contact_id FROM erp.supplier \
         WHERE NOT is_deleted",
    )
    .await;
    // CRM person -> (its ERP contact, its company)
    let persons = pairs(
        crm,
        "SELECT pers_personid::bigint, pers_intforeignid::bigint, pers_companyid::bigint \
         FROM person WHERE pers_deleted IS NULL",
    )
    .await;
    // ERP contact -> (its CRM person, its supplier)
    let contacts = pairs(
        erp,
        "SELECT contact_id, crm_person_id::bigint, supplier_id FROM erp.contact",
    )
    .await;
    prop_assert_eq!(
        companies.len(),
        suppliers.len(),
        "{:?} / {:?}",
        companies,
        suppliers
    );
    prop_assert_eq!(
        persons.len(),
        contacts.len(),
        "{:?} / {:?}",
        persons,
        contacts
    );
    let supplier_of = |c: Option<i64>| c.and_then(|c| companies.get(&c)).and_then(|x| x.0);
    let contact_of = |p: Option<i64>| p.and_then(|p| persons.get(&p)).and_then(|x| x.0);
    for (c, (s, primary)) in &companies {
        let s = s.ok_or_else(|| TestCaseError::fail(format!("company {c} is not linked")))?;
        let erp_row = suppliers.get(&s);
        prop_assert!(
            erp_row.is_some(),
            "company {} names missing supplier {}",
            c,
            s
        );
        let (back, erp_primary) = erp_row.unwrap();
        prop_assert_eq!(*back, Some(*c), "supplier {} names company {:?}", s, back);
        prop_assert_eq!(
            *erp_primary,
            contact_of(*primary),
            "supplier {}: primary contact vs company {}'s primary person {:?}",
            s,
            c,
            primary
        );
    }
    for (p, (k, company)) in &persons {
        let k = k.ok_or_else(|| TestCaseError::fail(format!("person {p} is not linked")))?;
        let erp_row = contacts.get(&k);
        prop_assert!(
            erp_row.is_some(),
            "person {} names missing contact {}",
            p,
            k
        );
        let (back, supplier) = erp_row.unwrap();
        prop_assert_eq!(*back, Some(*p), "contact {} names person {:?}", k, back);
        prop_assert_eq!(
            *supplier,
            supplier_of(*company),
            "contact {} under supplier {:?}, person {} under company {:?}",
            k,
            supplier,
            p,
            company
        );
    }
    let open = super::open_rejects(erp).await;
    prop_assert_eq!(open, 0, "open rejects");
    Ok(())
}

async fn run_case(env: &Env, rounds: &[(Vec<Op>, Option<u64>)]) -> Result<(), TestCaseError> {
    reset(env).await;
    for (ops, kill) in rounds {
        for op in ops {
            apply(env, op).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        match kill {
            Some(ms) => {
                // A crash at a random point: the run is dropped mid-way.
                let _ = tokio::time::timeout(Duration::from_millis(*ms), try_sync(env)).await;
            }
            None => {
                sync(env).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    sync(env).await;
    let last = sync(env).await;
    for r in &last {
        prop_assert_eq!(
            r.changes(),
            0,
            "a run after a clean run writes nothing: {:?}",
            r
        );
    }
    check_converged(env).await
}

#[test]
fn random_related_changes_on_both_sides_with_killed_runs_converge() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = runtime.block_on(async {
        let env = related_env_with(PRIMARY_CONTACT).await;
        // Deletes travel: a CRM delete removes the ERP row, an ERP row
        // removed is a CRM soft delete.
        let config = std::fs::read_to_string(&env.config)
            .unwrap()
            .replace(
                "delete_into_external = \"ignore\"",
                "delete_into_external = \"hard\"",
            )
            .replace("delete_into_crm = \"ignore\"", "delete_into_crm = \"soft\"")
            .replace(
                "overlap = \"5m\"",
                "overlap = \"5m\"\nmax_delete_ratio = 1.0",
            );
        std::fs::write(&env.config, config).unwrap();
        env
    });
    let cases = std::env::var("CRMSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let round = (
        prop::collection::vec(op(), 0..8),
        prop::option::weighted(0.25, 0u64..60),
    );
    runner
        .run(&prop::collection::vec(round, 1..5), |rounds| {
            runtime.block_on(run_case(&env, &rounds))
        })
        .unwrap();
}

/// Regression: a person deleted in CRM before it was ever synced, whose
/// company is deleted later, was held for ever as a reject ("parent not
/// linked"): a deleted row needs no reference translated.
#[tokio::test]
async fn a_deleted_child_whose_parent_is_gone_is_not_held() {
    let env = related_env_with(PRIMARY_CONTACT).await;
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        "delete_into_external = \"ignore\"",
        "delete_into_external = \"hard\"",
    );
    std::fs::write(&env.config, config).unwrap();
    for op in [
        Op::CrmCompany(0),
        Op::CrmPerson(0, 0),
        Op::CrmDeletePerson(0),
    ] {
        apply(&env, &op).await;
    }
    sync(&env).await;
    apply(&env, &Op::CrmDeleteCompany(0)).await;
    let reports = sync(&env).await;
    assert_eq!(reports[0].deleted, 1, "{reports:?}");
    for r in &reports {
        assert_eq!((r.rejected, r.open_rejects), (0, 0), "{r:?}");
    }
}
