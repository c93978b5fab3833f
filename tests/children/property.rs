//! Property test of child values both ways: random changes of phones,
//! e-mails and cities on both sides (set, changed, cleared, new ERP
//! suppliers), some runs dropped at a random point, then clean runs. After
//! every clean run without an earlier dropped one a model predicts both
//! sides exactly (conflict = crm_wins); at the end both sides agree, no
//! company has two live children of a kind, and no child or link row was
//! ever deleted for real.

use super::{child_env, config};
use crate::common::Env;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::time::Duration;

/// The three child fields, in the order of `Vals`.
const FIELDS: usize = 3;

type Vals = [Option<String>; FIELDS];

fn value(field: usize, v: u8) -> Option<String> {
    let prefix = ["p", "e", "c"][field];
    (v % 4 != 0).then(|| format!("{prefix}{}", v % 4))
}

#[derive(Debug, Clone)]
enum Op {
    Crm(usize, usize, u8),
    Ext(usize, usize, u8),
    ExtInsert(u8, u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), 0..FIELDS, any::<u8>()).prop_map(|(r, f, v)| Op::Crm(r, f, v)),
        4 => (any::<usize>(), 0..FIELDS, any::<u8>()).prop_map(|(r, f, v)| Op::Ext(r, f, v)),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| Op::ExtInsert(a, b, c)),
    ]
}

#[derive(Debug, Clone)]
struct Pair {
    crm: Option<i32>,
    ext: i64,
    crm_vals: Vals,
    ext_vals: Vals,
    base: Vals,
}

/// The ERP column of field `f`.
fn ext_col(f: usize) -> &'static str {
    ["phone", "email", "city"][f]
}

/// Changes field `f` of company `id` the way Sage CRM's UI does: the live
/// child row in place, a new child and link row, or the link (and child)
/// soft-deleted, moving their own dates and not the company's.
async fn crm_set(env: &Env, id: i32, f: usize, v: Option<&str>) {
    let (child, key, col, link, lkey, lchild, live) = match f {
        0 => (
            "phone",
            "phon_phoneid",
            "phon_number",
            "phonelink",
            "plink_linkid",
            "plink_phoneid",
            "l.plink_entityid = 5 AND l.plink_recordid = $1 AND l.plink_type = 'Business' \
             AND l.plink_deleted IS NULL AND c.phon_deleted IS NULL",
        ),
        1 => (
            "email",
            "emai_emailid",
            "emai_emailaddress",
            "emaillink",
            "elink_linkid",
            "elink_emailid",
            "l.elink_entityid = 5 AND l.elink_recordid = $1 AND l.elink_type = 'Business' \
             AND l.elink_deleted IS NULL AND c.emai_deleted IS NULL",
        ),
        _ => (
            "address",
            "addr_addressid",
            "addr_city",
            "address_link",
            "adli_addresslinkid",
            "adli_addressid",
            "l.adli_companyid = $1 AND l.adli_personid IS NULL AND l.adli_deleted IS NULL \
             AND c.addr_deleted IS NULL AND c.addr_addressid = \
             (SELECT comp_primaryaddressid FROM company WHERE comp_companyid = $1)",
        ),
    };
    let p = &key[..5];
    let lp = &lkey[..lkey.find('_').unwrap() + 1];
    let found = env
        .crm
        .query_opt(
            &format!(
                "SELECT l.{lkey}, c.{key} FROM {link} l JOIN {child} c ON c.{key} = l.{lchild} \
                 WHERE {live} ORDER BY l.{lkey} LIMIT 1"
            ),
            &[&id],
        )
        .await
        .unwrap();
    let now = "localtimestamp(3)";
    match (found, v) {
        (Some(r), Some(v)) => {
            let cid: i32 = r.get(1);
            env.crm
                .execute(
                    &format!(
                        "UPDATE {child} SET {col} = $1, {p}updateddate = {now}, {p}timestamp = {now} \
                         WHERE {key} = $2"
                    ),
                    &[&v, &cid],
                )
                .await
                .unwrap();
        }
        (Some(r), None) => {
            let (lid, cid): (i32, i32) = (r.get(0), r.get(1));
            env.crm
                .batch_execute(&format!(
                    "UPDATE {link} SET {lp}deleted = 1, {lp}updateddate = {now} WHERE {lkey} = {lid};
                     UPDATE {child} SET {p}deleted = 1, {p}updateddate = {now} WHERE {key} = {cid};"
                ))
                .await
                .unwrap();
            if f == 2 {
                env.crm
                    .execute(
                        "UPDATE company SET comp_primaryaddressid = NULL WHERE comp_companyid = $1",
                        &[&id],
                    )
                    .await
                    .unwrap();
            }
        }
        (None, Some(v)) => {
            let cid: i32 = env
                .crm
                .query_one(
                    &format!(
                        "INSERT INTO {child} ({col}, {p}createddate, {p}updateddate, {p}timestamp) \
                         VALUES ($1, {now}, {now}, {now}) RETURNING {key}"
                    ),
                    &[&v],
                )
                .await
                .unwrap()
                .get(0);
            let (cols, vals) = match f {
                0 => (
                    "plink_entityid, plink_recordid, plink_type",
                    "5, $1, 'Business'",
                ),
                1 => (
                    "elink_entityid, elink_recordid, elink_type",
                    "5, $1, 'Business'",
                ),
                _ => ("adli_companyid", "$1"),
            };
            env.crm
                .execute(
                    &format!(
                        "INSERT INTO {link} ({cols}, {lchild}, {lp}createddate, {lp}updateddate) \
                         VALUES ({vals}, $2, {now}, {now})"
                    ),
                    &[&id, &cid],
                )
                .await
                .unwrap();
            if f == 2 {
                env.crm
                    .execute(
                        "UPDATE company SET comp_primaryaddressid = $2 WHERE comp_companyid = $1",
                        &[&id, &cid],
                    )
                    .await
                    .unwrap();
            }
        }
        (None, None) => {}
    }
}

/// What the CRM holds, by company: each field read by crmsync's rule.
async fn crm_vals(env: &Env) -> BTreeMap<i32, Vals> {
    env.crm
        .query(
            "SELECT c.comp_companyid,
               (SELECT p.phon_number FROM phonelink l JOIN phone p ON p.phon_phoneid = l.plink_phoneid
                 WHERE l.plink_entityid = 5 AND l.plink_recordid = c.comp_companyid
                   AND l.plink_type = 'Business' AND l.plink_deleted IS NULL
                   AND p.phon_deleted IS NULL ORDER BY l.plink_linkid LIMIT 1),
               (SELECT e.emai_emailaddress FROM emaillink l JOIN email e ON e.emai_emailid = l.elink_emailid
                 WHERE l.elink_entityid = 5 AND l.elink_recordid = c.comp_companyid
                   AND l.elink_type = 'Business' AND l.elink_deleted IS NULL
                   AND e.emai_deleted IS NULL ORDER BY l.elink_linkid LIMIT 1),
               (SELECT a.addr_city FROM address_link l JOIN address a ON a.addr_addressid = l.adli_addressid
                 WHERE l.adli_companyid = c.comp_companyid AND l.adli_personid IS NULL
                   AND a.addr_addressid = c.comp_primaryaddressid
                   AND l.adli_deleted IS NULL AND a.addr_deleted IS NULL
                 ORDER BY l.adli_addresslinkid LIMIT 1)
             FROM company c",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3)]))
        .collect()
}

async fn ext_vals(env: &Env) -> BTreeMap<i64, (Option<i32>, Vals)> {
    env.erp
        .query(
            "SELECT supplier_id, crm_company_id, phone, email, city FROM erp.supplier",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), [r.get(2), r.get(3), r.get(4)])))
        .collect()
}

/// Counts of every child and link row, live or not.
async fn child_rows(env: &Env) -> Vec<i64> {
    let r = env
        .crm
        .query_one(
            "SELECT (SELECT count(*) FROM phone), (SELECT count(*) FROM phonelink),
                    (SELECT count(*) FROM email), (SELECT count(*) FROM emaillink),
                    (SELECT count(*) FROM address), (SELECT count(*) FROM address_link)",
            &[],
        )
        .await
        .unwrap();
    (0..6).map(|i| r.get(i)).collect()
}

async fn reset(env: &Env) {
    env.crm
        .batch_execute(
            "TRUNCATE company, phone, phonelink, email, emaillink, address, address_link \
             RESTART IDENTITY",
        )
        .await
        .unwrap();
    env.erp
        .batch_execute(
            "TRUNCATE erp.supplier, erp.contact RESTART IDENTITY; \
             DROP SCHEMA IF EXISTS crmsync CASCADE",
        )
        .await
        .unwrap();
}

async fn sync(env: &Env) -> crmsync::engine::EntityReport {
    for _ in 0..50 {
        match try_sync(env).await {
            Err(crmsync::engine::EngineError::Busy { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other.expect("sync"),
        }
    }
    panic!("the run lock was never released");
}

async fn try_sync(
    env: &Env,
) -> Result<crmsync::engine::EntityReport, crmsync::engine::EngineError> {
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = crmsync::engine::Engine::connect(plan).await?;
    Ok(engine
        .sync(None, crmsync::engine::Mode::Apply)
        .await?
        .remove(0))
}

/// The merge of one clean run, field by field (crm_wins on a clash).
fn model_run(pairs: &mut [Pair]) {
    for p in pairs.iter_mut() {
        for f in 0..FIELDS {
            let (b, c, x) = (&p.base[f], &p.crm_vals[f], &p.ext_vals[f]);
            let v = if c != b { c.clone() } else { x.clone() };
            p.base[f] = v.clone();
            p.crm_vals[f] = v.clone();
            p.ext_vals[f] = v;
        }
    }
}

async fn learn_keys(env: &Env, pairs: &mut [Pair]) {
    let ext = ext_vals(env).await;
    for p in pairs.iter_mut() {
        if p.crm.is_none() {
            p.crm = ext.get(&p.ext).and_then(|(c, _)| *c);
        }
    }
}

async fn run_case(
    env: &Env,
    seeds: &[(u8, u8, u8)],
    rounds: &[(Vec<Op>, Option<u64>)],
) -> Result<(), TestCaseError> {
    reset(env).await;
    let mut pairs: Vec<Pair> = Vec::new();
    // Suppliers that start in the ERP and arrive in CRM with their children.
    for (a, b, c) in seeds {
        let vals = [value(0, *a), value(1, *b), value(2, *c)];
        let ext: i64 = env
            .erp
            .query_one(
                "INSERT INTO erp.supplier (name, phone, email, city) \
                 VALUES ('s', $1, $2, $3) RETURNING supplier_id",
                &[&vals[0], &vals[1], &vals[2]],
            )
            .await
            .unwrap()
            .get(0);
        pairs.push(Pair {
            crm: None,
            ext,
            crm_vals: vals.clone(),
            ext_vals: vals.clone(),
            base: vals,
        });
    }
    sync(env).await;
    learn_keys(env, &mut pairs).await;
    let mut exact = true;
    let mut rows = child_rows(env).await;
    for (ops, kill) in rounds {
        for op in ops {
            let live: Vec<usize> = (0..pairs.len())
                .filter(|i| pairs[*i].crm.is_some())
                .collect();
            match *op {
                Op::Crm(r, f, v) if !live.is_empty() => {
                    let i = live[r % live.len()];
                    let val = value(f, v);
                    crm_set(env, pairs[i].crm.unwrap(), f, val.as_deref()).await;
                    pairs[i].crm_vals[f] = val;
                }
                Op::Ext(r, f, v) if !live.is_empty() => {
                    let i = live[r % live.len()];
                    let val = value(f, v);
                    env.erp
                        .execute(
                            &format!(
                                "UPDATE erp.supplier SET {} = $1 WHERE supplier_id = $2",
                                ext_col(f)
                            ),
                            &[&val, &pairs[i].ext],
                        )
                        .await
                        .unwrap();
                    pairs[i].ext_vals[f] = val;
                }
                Op::ExtInsert(a, b, c) => {
                    let vals = [value(0, a), value(1, b), value(2, c)];
                    let ext: i64 = env
                        .erp
                        .query_one(
                            "INSERT INTO erp.supplier (name, phone, email, city) \
                             VALUES ('s', $1, $2, $3) RETURNING supplier_id",
                            &[&vals[0], &vals[1], &vals[2]],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    // Nothing on the CRM side yet: the ERP's values win.
                    pairs.push(Pair {
                        crm: None,
                        ext,
                        crm_vals: vals.clone(),
                        ext_vals: vals.clone(),
                        base: vals,
                    });
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        match kill {
            Some(ms) => {
                let _ = tokio::time::timeout(Duration::from_millis(*ms), try_sync(env)).await;
                exact = false;
            }
            None => {
                let report = sync(env).await;
                prop_assert_eq!(report.rejected, 0, "{:?}", report);
                if exact {
                    model_run(&mut pairs);
                }
            }
        }
        learn_keys(env, &mut pairs).await;
        let now = child_rows(env).await;
        prop_assert!(
            now.iter().zip(&rows).all(|(n, b)| n >= b),
            "child or link rows were deleted: {:?} -> {:?}",
            rows,
            now
        );
        rows = now;
        if exact && kill.is_none() {
            let crm = crm_vals(env).await;
            let ext = ext_vals(env).await;
            for p in &pairs {
                let c = p.crm.expect("every supplier reached CRM");
                prop_assert_eq!(&crm[&c], &p.crm_vals, "CRM company {}", c);
                prop_assert_eq!(&ext[&p.ext].1, &p.ext_vals, "supplier {}", p.ext);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    sync(env).await;
    let last = sync(env).await;
    prop_assert_eq!(
        last.changes(),
        0,
        "a run after a clean run writes nothing: {:?}",
        last
    );
    learn_keys(env, &mut pairs).await;
    let crm = crm_vals(env).await;
    let ext = ext_vals(env).await;
    prop_assert_eq!(crm.len(), pairs.len(), "one company per supplier");
    for p in &pairs {
        let c = p.crm.expect("every supplier reached CRM");
        prop_assert_eq!(
            &crm[&c],
            &ext[&p.ext].1,
            "company {} / supplier {}",
            c,
            p.ext
        );
    }
    // Never two live children of a kind for one company.
    let doubled: i64 = env
        .crm
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT plink_recordid FROM phonelink
                       WHERE plink_deleted IS NULL GROUP BY plink_recordid HAVING count(*) > 1) a)
                  + (SELECT count(*) FROM (SELECT elink_recordid FROM emaillink
                       WHERE elink_deleted IS NULL GROUP BY elink_recordid HAVING count(*) > 1) b)
                  + (SELECT count(*) FROM (SELECT adli_companyid FROM address_link
                       WHERE adli_deleted IS NULL GROUP BY adli_companyid HAVING count(*) > 1) c)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    prop_assert_eq!(doubled, 0, "a company has two live children of a kind");
    Ok(())
}

#[test]
fn random_child_changes_on_both_sides_converge() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = runtime.block_on(child_env());
    std::fs::write(&env.config, config(&env.crm_url, &env.erp_url)).unwrap();
    let cases = std::env::var("CRMSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let round = (
        prop::collection::vec(op(), 0..7),
        prop::option::weighted(0.2, 0u64..60),
    );
    let seeds = prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..4);
    let strategy = (seeds, prop::collection::vec(round, 1..5));
    runner
        .run(&strategy, |(seeds, rounds)| {
            runtime.block_on(run_case(&env, &seeds, &rounds))
        })
        .unwrap();
}
