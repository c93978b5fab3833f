//! Property test: random inserts, updates and deletes on both sides,
//! interleaved with sync runs, some of them killed at a random point.
//!
//! Without kills, a model predicts every run exactly: the values on both
//! sides and the number of same-field clashes (conflict = crm_wins). With
//! kills, the model cannot know what a killed run did, so the case checks
//! convergence: after a final clean run both sides agree on every mapped
//! field of every linked row, and nothing is duplicated or lost.

use super::{sync, try_sync, two_way_env, TwoWay};
use crate::common::Env;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
enum Field {
    Name,
    Status,
    Phone,
}

#[derive(Debug, Clone)]
enum Op {
    CrmInsert(u8),
    CrmUpdate(usize, Field, u8),
    CrmDelete(usize),
    ExtInsert(u8),
    ExtUpdate(usize, Field, u8),
    ExtDelete(usize),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![Just(Field::Name), Just(Field::Status), Just(Field::Phone)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<u8>().prop_map(Op::CrmInsert),
        4 => (any::<usize>(), field(), any::<u8>()).prop_map(|(r, f, v)| Op::CrmUpdate(r, f, v)),
        1 => any::<usize>().prop_map(Op::CrmDelete),
        2 => any::<u8>().prop_map(Op::ExtInsert),
        4 => (any::<usize>(), field(), any::<u8>()).prop_map(|(r, f, v)| Op::ExtUpdate(r, f, v)),
        1 => any::<usize>().prop_map(Op::ExtDelete),
    ]
}

/// The mapped values of a pair, in the external form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Vals {
    name: String,
    status: Option<&'static str>,
    phone: Option<String>,
}

impl Vals {
    fn from_seed(v: u8) -> Vals {
        let mut out = Vals {
            name: String::new(),
            status: None,
            phone: None,
        };
        for f in [Field::Name, Field::Status, Field::Phone] {
            out.set(f, v);
        }
        out
    }

    fn set(&mut self, f: Field, v: u8) {
        match f {
            Field::Name => self.name = format!("n{}", v % 6),
            Field::Status => self.status = [Some("A"), Some("I"), None][usize::from(v % 3)],
            Field::Phone => self.phone = (v % 4 != 0).then(|| format!("p{}", v % 4)),
        }
    }
}

fn crm_status(s: Option<&str>) -> Option<&'static str> {
    match s {
        Some("A") => Some("Active"),
        Some("I") => Some("Inactive"),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Pair {
    /// Created by the test in CRM (else in the external table).
    from_crm: bool,
    crm: Option<i32>,
    ext: Option<i64>,
    crm_vals: Vals,
    ext_vals: Vals,
    /// What both sides agreed on at the last clean run.
    base: Option<Vals>,
    crm_deleted: bool,
    ext_deleted: bool,
}

impl Pair {
    fn live(&self) -> bool {
        !self.crm_deleted && !self.ext_deleted
    }
}

/// Empties both tables and starts each case with fresh state: the ERP's
/// state schema dropped, or, with the state on a SQL Server CRM (whose
/// stand-in keeps it in its PostgreSQL database), its tables emptied.
async fn reset(env: &Env) {
    env.crm
        .batch_execute(
            "TRUNCATE company RESTART IDENTITY;
             DO $$ DECLARE t text; BEGIN
               FOR t IN SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
                        WHERE schemaname = 'crmsync' AND tablename <> 'schema_version' LOOP
                 EXECUTE 'TRUNCATE ' || t || ' RESTART IDENTITY CASCADE';
               END LOOP;
             END $$",
        )
        .await
        .unwrap();
    env.erp
        .batch_execute(
            "TRUNCATE erp.supplier, erp.contact RESTART IDENTITY; DROP SCHEMA IF EXISTS crmsync CASCADE",
        )
        .await
        .unwrap();
}

async fn apply(env: &Env, pairs: &mut Vec<Pair>, op: &Op) {
    let live: Vec<usize> = (0..pairs.len()).filter(|i| pairs[*i].live()).collect();
    let pick = |r: usize| live.get(r % live.len().max(1)).copied();
    match *op {
        Op::CrmInsert(v) => {
            let vals = Vals::from_seed(v);
            let id = super::crm_insert(
                &env.crm,
                &vals.name,
                crm_status(vals.status),
                vals.phone.as_deref(),
            )
            .await;
            pairs.push(Pair {
                from_crm: true,
                crm: Some(id),
                ext: None,
                crm_vals: vals.clone(),
                ext_vals: vals,
                base: None,
                crm_deleted: false,
                ext_deleted: false,
            });
        }
        Op::ExtInsert(v) => {
            let vals = Vals::from_seed(v);
            let id =
                super::ext_insert(&env.erp, &vals.name, vals.status, vals.phone.as_deref()).await;
            pairs.push(Pair {
                from_crm: false,
                crm: None,
                ext: Some(id),
                crm_vals: vals.clone(),
                ext_vals: vals,
                base: None,
                crm_deleted: false,
                ext_deleted: false,
            });
        }
        Op::CrmUpdate(r, f, v) => {
            let Some(i) = pick(r) else { return };
            let Some(id) = pairs[i].crm else { return };
            pairs[i].crm_vals.set(f, v);
            let vals = &pairs[i].crm_vals;
            let (col, value) = match f {
                Field::Name => ("comp_name", Some(vals.name.clone())),
                Field::Status => ("comp_status", crm_status(vals.status).map(str::to_string)),
                Field::Phone => ("comp_phonenumber", vals.phone.clone()),
            };
            super::crm_set(&env.crm, id, col, value.as_deref()).await;
        }
        Op::ExtUpdate(r, f, v) => {
            let Some(i) = pick(r) else { return };
            let Some(id) = pairs[i].ext else { return };
            pairs[i].ext_vals.set(f, v);
            let vals = &pairs[i].ext_vals;
            let (col, value) = match f {
                Field::Name => ("name", Some(vals.name.clone())),
                Field::Status => ("status", vals.status.map(str::to_string)),
                Field::Phone => ("phone", vals.phone.clone()),
            };
            super::ext_set(&env.erp, id, col, value.as_deref()).await;
        }
        Op::CrmDelete(r) => {
            let Some(i) = pick(r) else { return };
            let Some(id) = pairs[i].crm else { return };
            pairs[i].crm_deleted = true;
            env.crm
                .execute(
                    "UPDATE company SET comp_deleted = 1, comp_updateddate = localtimestamp(3), \
                     comp_timestamp = localtimestamp(3) WHERE comp_companyid = $1",
                    &[&id],
                )
                .await
                .unwrap();
        }
        Op::ExtDelete(r) => {
            let Some(i) = pick(r) else { return };
            let Some(id) = pairs[i].ext else { return };
            pairs[i].ext_deleted = true;
            env.erp
                .execute(
                    "UPDATE erp.supplier SET is_deleted = true WHERE supplier_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
        }
    }
}

/// What a clean run does to the model; returns the clashes it predicts.
fn model_run(pairs: &mut [Pair]) -> u64 {
    let mut clashes = 0;
    for p in pairs.iter_mut() {
        if !p.live() {
            p.crm_deleted = true;
            p.ext_deleted = true;
            continue;
        }
        match &p.base {
            None => {
                let v = if p.crm.is_some() {
                    p.crm_vals.clone()
                } else {
                    p.ext_vals.clone()
                };
                p.crm_vals = v.clone();
                p.ext_vals = v.clone();
                p.base = Some(v);
            }
            Some(b) => {
                let mut agreed = b.clone();
                let (c, x) = (&p.crm_vals, &p.ext_vals);
                macro_rules! merge_field {
                    ($f:ident) => {
                        agreed.$f = if c.$f != b.$f && x.$f != b.$f && c.$f != x.$f {
                            clashes += 1;
                            c.$f.clone()
                        } else if c.$f != b.$f {
                            c.$f.clone()
                        } else {
                            x.$f.clone()
                        };
                    };
                }
                merge_field!(name);
                merge_field!(status);
                merge_field!(phone);
                p.crm_vals = agreed.clone();
                p.ext_vals = agreed.clone();
                p.base = Some(agreed);
            }
        }
    }
    clashes
}

/// Learns the keys crmsync gave to rows it created.
async fn learn_keys(env: &Env, pairs: &mut [Pair]) {
    for p in pairs.iter_mut() {
        match (p.crm, p.ext) {
            (Some(c), None) => {
                let row = env
                    .crm
                    .query_one(
                        "SELECT comp_supplierid FROM company WHERE comp_companyid = $1",
                        &[&c],
                    )
                    .await
                    .unwrap();
                let link: Option<String> = row.get(0);
                p.ext = link.and_then(|l| l.parse().ok());
            }
            (None, Some(x)) => {
                let row = env
                    .crm
                    .query_opt(
                        "SELECT comp_companyid FROM company WHERE comp_supplierid = $1",
                        &[&x.to_string()],
                    )
                    .await
                    .unwrap();
                p.crm = row.map(|r| r.get(0));
            }
            _ => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone)]
struct Seen {
    vals: Vals,
    deleted: bool,
}

async fn crm_rows(env: &Env) -> BTreeMap<i32, (Seen, Option<String>)> {
    env.crm
        .query(
            "SELECT comp_companyid, comp_name, CASE comp_status WHEN 'Active' THEN 'A' WHEN 'Inactive' THEN 'I' END, \
             comp_phonenumber, comp_deleted IS NOT NULL, comp_supplierid FROM company",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let status: Option<String> = r.get(2);
            (
                r.get(0),
                (
                    Seen {
                        vals: Vals {
                            name: r.get(1),
                            status: status.map(|s| if s == "A" { "A" } else { "I" }),
                            phone: r.get(3),
                        },
                        deleted: r.get(4),
                    },
                    r.get(5),
                ),
            )
        })
        .collect()
}

async fn ext_rows(env: &Env) -> BTreeMap<i64, Seen> {
    env.erp
        .query(
            "SELECT supplier_id, name, status::text, phone, is_deleted FROM erp.supplier",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let status: Option<String> = r.get(2);
            (
                r.get(0),
                Seen {
                    vals: Vals {
                        name: r.get(1),
                        status: status.map(|s| if s == "A" { "A" } else { "I" }),
                        phone: r.get(3),
                    },
                    deleted: r.get(4),
                },
            )
        })
        .collect()
}

/// Both sides agree, one to one, with nothing duplicated or lost.
async fn check_converged(env: &Env, pairs: &[Pair]) -> Result<(), TestCaseError> {
    let crm = crm_rows(env).await;
    let ext = ext_rows(env).await;
    let mut claimed = BTreeMap::new();
    for (id, (seen, link)) in &crm {
        let Some(link) = link else {
            // Only rows deleted before they were ever synced stay unlinked.
            prop_assert!(seen.deleted, "live CRM row {id} is not linked");
            continue;
        };
        let x: i64 = link.parse().unwrap();
        prop_assert!(
            claimed.insert(x, *id).is_none(),
            "two CRM rows claim external {x}"
        );
        let other = ext.get(&x);
        prop_assert!(
            other.is_some(),
            "CRM row {id} names missing external row {x}"
        );
        let other = other.unwrap();
        prop_assert_eq!(
            seen.deleted,
            other.deleted,
            "pair {} / {} deleted on one side only",
            id,
            x
        );
        if !seen.deleted {
            prop_assert_eq!(&seen.vals, &other.vals, "pair {} / {} disagrees", id, x);
        }
    }
    for (x, seen) in &ext {
        prop_assert!(
            seen.deleted || claimed.contains_key(x),
            "live external row {x} has no CRM row"
        );
    }
    // Every row is either one the test created, or crmsync's one copy of
    // a row the test created on the other side: nothing duplicated.
    let crm_origin: HashSet<i32> = pairs
        .iter()
        .filter(|p| p.from_crm)
        .filter_map(|p| p.crm)
        .collect();
    let ext_origin: HashSet<i64> = pairs
        .iter()
        .filter(|p| !p.from_crm)
        .filter_map(|p| p.ext)
        .collect();
    let mut copies_of_crm = HashSet::new();
    for r in env
        .erp
        .query("SELECT supplier_id, crm_company_id FROM erp.supplier", &[])
        .await
        .unwrap()
    {
        let (x, crm_id): (i64, Option<i32>) = (r.get(0), r.get(1));
        if ext_origin.contains(&x) {
            continue;
        }
        prop_assert!(
            crm_id.is_some_and(|c| crm_origin.contains(&c)),
            "external row {x} was created neither by the test nor as a copy of a CRM row"
        );
        prop_assert!(
            copies_of_crm.insert(crm_id),
            "CRM row {crm_id:?} was copied out twice"
        );
    }
    for (id, (_, link)) in &crm {
        if crm_origin.contains(id) {
            continue;
        }
        prop_assert!(
            link.as_ref()
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|x| ext_origin.contains(&x)),
            "CRM row {id} was created neither by the test nor as a copy of an external row"
        );
    }
    // Nothing lost: every live pair is live on both sides.
    for p in pairs.iter().filter(|p| p.live()) {
        let (Some(c), Some(x)) = (p.crm, p.ext) else {
            return Err(TestCaseError::fail(format!("pair never completed: {p:?}")));
        };
        prop_assert!(
            crm.get(&c).is_some_and(|(s, _)| !s.deleted),
            "CRM row {c} lost"
        );
        prop_assert!(
            ext.get(&x).is_some_and(|s| !s.deleted),
            "external row {x} lost"
        );
    }
    Ok(())
}

/// The model's exact expectation after a clean run.
async fn check_model(env: &Env, pairs: &[Pair]) -> Result<(), TestCaseError> {
    let crm = crm_rows(env).await;
    let ext = ext_rows(env).await;
    for p in pairs {
        if let Some(c) = p.crm {
            let (seen, _) = &crm[&c];
            prop_assert_eq!(seen.deleted, p.crm_deleted, "CRM row {} deleted state", c);
            if p.live() {
                prop_assert_eq!(&seen.vals, &p.crm_vals, "CRM row {}", c);
            }
        }
        if let Some(x) = p.ext {
            let seen = &ext[&x];
            if p.live() {
                prop_assert_eq!(&seen.vals, &p.ext_vals, "external row {}", x);
                prop_assert!(!seen.deleted);
            }
        }
    }
    Ok(())
}

/// A backfill of CRM rows `seeds` into the empty external table, as the
/// first load before the syncs: the model sees it as a first run.
async fn backfill(env: &Env, pairs: &mut Vec<Pair>, seeds: &[u8]) -> Result<(), TestCaseError> {
    if seeds.is_empty() {
        return Ok(());
    }
    for v in seeds {
        apply(env, pairs, &Op::CrmInsert(*v)).await;
    }
    let plan = crmsync::cli::load_plan(&env.config).expect("the test config is valid");
    let engine = crmsync::engine::Engine::connect(plan)
        .await
        .expect("connect");
    let opts = crmsync::engine::BackfillOptions {
        direction: crmsync::engine::BackfillDirection::CrmToExternal,
        restart: false,
        chunk_rows: 2,
    };
    let reports = engine.backfill(None, &opts).await.expect("backfill");
    prop_assert_eq!(reports[0].inserted, seeds.len() as u64, "{:?}", reports);
    model_run(pairs);
    learn_keys(env, pairs).await;
    check_model(env, pairs).await
}

async fn run_case(
    env: &Env,
    seeds: &[u8],
    rounds: &[(Vec<Op>, Option<u64>)],
) -> Result<(), TestCaseError> {
    reset(env).await;
    let mut pairs: Vec<Pair> = Vec::new();
    backfill(env, &mut pairs, seeds).await?;
    let mut exact = true;
    for (ops, kill) in rounds {
        for op in ops {
            apply(env, &mut pairs, op).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        match kill {
            Some(ms) => {
                // A crash at a random point: the run is dropped mid-way.
                let _ = tokio::time::timeout(Duration::from_millis(*ms), try_sync(env)).await;
                exact = false;
            }
            None => {
                let report = sync(env).await;
                if exact {
                    let clashes = model_run(&mut pairs);
                    prop_assert_eq!(
                        report.conflicts,
                        clashes,
                        "conflicts of this run: {:?}",
                        report
                    );
                }
            }
        }
        learn_keys(env, &mut pairs).await;
        if exact && kill.is_none() {
            check_model(env, &pairs).await?;
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
    if exact {
        model_run(&mut pairs);
        check_model(env, &pairs).await?;
    }
    for p in pairs.iter_mut() {
        if !p.live() {
            p.crm_deleted = true;
            p.ext_deleted = true;
        }
    }
    check_converged(env, &pairs).await
}

#[test]
fn random_changes_on_both_sides_with_killed_runs_converge() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = runtime.block_on(two_way_env(&TwoWay::default()));
    run_property(&runtime, &env, 200);
}

/// Runs the property's cases on `env` (`CRMSYNC_PROPTEST_CASES` of them,
/// else `default_cases`).
pub fn run_property(runtime: &tokio::runtime::Runtime, env: &Env, default_cases: u32) {
    let cases = std::env::var("CRMSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let round = (
        prop::collection::vec(op(), 0..7),
        prop::option::weighted(0.25, 0u64..60),
    );
    // Some cases start with a backfill: their pairs are changed on both
    // sides in the first window after it.
    let seeds = prop::collection::vec(any::<u8>(), 0..4);
    let strategy = (seeds, prop::collection::vec(round, 1..5));
    runner
        .run(&strategy, |(seeds, rounds)| {
            runtime.block_on(run_case(env, &seeds, &rounds))
        })
        .unwrap();
}
