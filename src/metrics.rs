//! The metrics file of `--metrics-file`: Prometheus' text exposition
//! format, for node_exporter's textfile collector. Written after every
//! run that was asked for one, failed runs too, in one rename, so the
//! collector never reads half a file.
//!
//! Monitoring a batch job follows its last success, not each failure:
//! `crmsync_last_success_timestamp_seconds` comes from the state store, so
//! a failed run leaves it where the last good run put it. When the state
//! store cannot be read at all, the values of the file being replaced are
//! kept for what only the store knows.

use crate::endpoint::Endpoint;
use crate::engine::Engine;
use crate::lag::{self, Clock};
use crate::plan::{Plan, Side};
use crate::state::{RunInfo, StateStore, Status, TargetCounts};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

/// The process whose run the file describes.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: &'static str,
    /// The `--entity` it was given.
    pub entity: Option<String>,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub exit_code: i32,
}

/// The families that only the state store knows, kept from the previous
/// file when the store cannot be read.
const FROM_STATE: [&str; 3] = [
    "crmsync_last_success_timestamp_seconds",
    "crmsync_open_rejects",
    "crmsync_open_conflicts",
];

/// One metric family: its samples as (labels, value).
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
    /// Sample lines kept verbatim from the previous file.
    kept: Vec<String>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
            kept: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }
}

/// What the state store and the databases' clocks say, as far as they
/// answer.
#[derive(Default)]
struct Known {
    /// This process's runs, the last one of each entity.
    runs: HashMap<String, RunInfo>,
    successes: Option<HashMap<String, DateTime<Utc>>>,
    status: Option<Status>,
    clocks: HashMap<&'static str, Clock>,
}

/// How long reading the state store and clocks for the file may take: a
/// store that went down with the run would otherwise keep the file (and
/// the process) waiting for a connection once per query.
const GATHER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Reads what the file reports into `known`, as far as the databases
/// answer: from the engine's connections when the command got as far as
/// connecting, else from the state side alone.
async fn gather(plan: Option<&Plan>, engine: Option<&Engine>, known: &mut Known) {
    let mut endpoints: Vec<(Side, Arc<dyn Endpoint>)> = Vec::new();
    let store: Option<Arc<dyn StateStore>> = match (engine, plan) {
        (Some(engine), _) => {
            for side in Side::BOTH {
                endpoints.push((side, engine.endpoints[side].clone()));
            }
            Some(engine.state.clone())
        }
        (None, Some(plan)) => match crate::connect::side(plan, plan.state_side).await {
            Ok(c) => {
                endpoints.push((plan.state_side, c.endpoint.clone()));
                Some(c.state_store(&plan.state_schema))
            }
            Err(_) => None,
        },
        (None, None) => None,
    };
    let Some(store) = store else { return };
    if let Ok(runs) = store.runs_by_id(&store.runs_started()).await {
        for r in runs {
            known.runs.insert(r.entity.clone(), r);
        }
    }
    match store.last_successes().await {
        Ok(s) => known.successes = Some(s),
        // Gone, or never created: nothing more to read.
        Err(_) => return,
    }
    known.status = store.status().await.ok();
    for (side, ep) in endpoints {
        if let Some(c) = Clock::read(&*ep).await {
            known.clocks.insert(side.as_str(), c);
        }
    }
}

/// The file's text for `run`, with what the state store and clocks say;
/// `previous` is the file being replaced, if any.
pub async fn render(
    run: &Invocation,
    plan: Option<&Plan>,
    engine: Option<&Engine>,
    previous: Option<&str>,
) -> String {
    let mut known = Known::default();
    // What was read before the time ran out still counts.
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gather(plan, engine, &mut known)).await;
    let entities: Vec<(String, std::time::Duration)> = plan
        .and_then(|p| crate::schema::selected(p, run.entity.as_deref()).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e.settle))
        .collect();
    // `--entity` as configured, not as typed.
    let run = match (&run.entity, entities.as_slice()) {
        (Some(_), [(name, _)]) => Invocation {
            entity: Some(name.clone()),
            ..run.clone()
        },
        _ => run.clone(),
    };
    text(&run, &entities, &known, previous)
}

fn text(
    run: &Invocation,
    entities: &[(String, std::time::Duration)],
    known: &Known,
    previous: Option<&str>,
) -> String {
    let unix = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    let entity = |name: &str| vec![("entity", name.to_string())];
    let mut started = Family::new(
        "crmsync_last_run_timestamp_seconds",
        "When the entity's last run started (that of this process, or the process itself if it never began one).",
    );
    let mut duration = Family::new(
        "crmsync_last_run_duration_seconds",
        "How long the entity's last run took.",
    );
    let mut success = Family::new(
        "crmsync_last_success_timestamp_seconds",
        "When the entity's last run that finished (with or without rejects and conflicts left) ended.",
    );
    let mut exit_code = Family::new(
        "crmsync_last_run_exit_code",
        "The exit code of the last crmsync process (labelled with the entity it was given with --entity): 0 ok, 1 failed, 2 bad usage or config, 3 rejects or conflicts left.",
    );
    let mut rows = Family::new(
        "crmsync_last_run_rows",
        "Rows the entity's last run wrote, by target side and operation.",
    );
    let mut conflicts = Family::new(
        "crmsync_last_run_conflicts",
        "Same-field clashes the entity's last run met.",
    );
    let mut rejected = Family::new(
        "crmsync_last_run_rejected",
        "Rows the entity's last run rejected.",
    );
    let mut lag_family = Family::new(
        "crmsync_lag_seconds",
        "How stale the other side's copy of a side's rows can be: the side's clock now minus the end of the last change window read in full.",
    );
    let mut open_rejects = Family::new(
        "crmsync_open_rejects",
        "Rejected rows waiting to be retried.",
    );
    let mut open_conflicts = Family::new(
        "crmsync_open_conflicts",
        "Conflicts waiting for `crmsync conflicts resolve`.",
    );
    // The process's own; a process of one entity names it, so that the
    // files of entities run as separate processes never hold the same
    // series (the textfile collector refuses that).
    let process = match &run.entity {
        Some(name) => entity(name),
        None => Vec::new(),
    };
    exit_code.add(process, run.exit_code as f64);
    for (name, settle) in entities {
        let own = known.runs.get(name);
        match own {
            Some(r) => {
                started.add(entity(name), unix(r.started_at));
                duration.add(entity(name), r.seconds);
            }
            None => {
                started.add(entity(name), unix(run.started_at));
                duration.add(entity(name), run.seconds);
            }
        }
        let counts = own.map(RunInfo::counts).unwrap_or_default();
        for (target, c) in [("crm", counts.crm), ("external", counts.external)] {
            let TargetCounts {
                inserted,
                updated,
                deleted,
            } = c;
            for (op, n) in [
                ("insert", inserted),
                ("update", updated),
                ("delete", deleted),
            ] {
                let labels = vec![
                    ("entity", name.clone()),
                    ("target", target.to_string()),
                    ("op", op.to_string()),
                ];
                rows.add(labels, n as f64);
            }
        }
        conflicts.add(entity(name), counts.conflicts as f64);
        rejected.add(entity(name), counts.rejected as f64);
        if let Some(t) = known.successes.as_ref().and_then(|s| s.get(name)) {
            success.add(entity(name), unix(*t));
        }
        if let Some(status) = &known.status {
            let c = status.counts.iter().find(|c| &c.entity == name);
            let (r, k) = c.map_or((0, 0), |c| (c.open_rejects, c.open_conflicts));
            open_rejects.add(entity(name), r as f64);
            open_conflicts.add(entity(name), k as f64);
        }
        if let Some(status) = &known.status {
            for w in status.watermarks.iter().filter(|w| &w.entity == name) {
                let Some(side) = lag::side_of(w) else {
                    continue;
                };
                let Some(clock) = known.clocks.get(side.as_str()) else {
                    continue;
                };
                if let Some(secs) = lag::lag_seconds(w, *settle, clock) {
                    let labels = vec![("entity", name.clone()), ("side", side.to_string())];
                    lag_family.add(labels, secs);
                }
            }
        }
    }
    let mut families = [
        started,
        duration,
        success,
        exit_code,
        rows,
        conflicts,
        rejected,
        lag_family,
        open_rejects,
        open_conflicts,
    ];
    // What the store could not tell, the previous file still does.
    if let Some(previous) = previous {
        let kept = previous_samples(previous);
        for f in families.iter_mut() {
            let from_store = match f.name {
                "crmsync_last_success_timestamp_seconds" => known.successes.is_some(),
                _ => known.status.is_some(),
            };
            if FROM_STATE.contains(&f.name) && !from_store {
                f.kept = kept.get(f.name).cloned().unwrap_or_default();
            }
        }
    }
    let mut out = String::new();
    for f in &families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (labels, value) in &f.samples {
            out.push_str(f.name);
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
        for line in &f.kept {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// A label value as the text format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The sample lines of a previous file, by family.
fn previous_samples(text: &str) -> HashMap<&'static str, Vec<String>> {
    let mut out: HashMap<&'static str, Vec<String>> = HashMap::new();
    for line in text.lines() {
        for name in FROM_STATE {
            let rest = line.strip_prefix(name);
            if rest.is_some_and(|r| r.starts_with('{') || r.starts_with(' ')) {
                out.entry(name).or_default().push(line.to_string());
            }
        }
    }
    out
}

/// Writes `text` to `path` through a temporary file in the same
/// directory and a rename: readers see the old file or the new one,
/// never a part. The temporary name does not end in `.prom`, so the
/// textfile collector never reads it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Renders and writes the metrics file of `run`.
pub async fn write(
    path: &Path,
    run: &Invocation,
    plan: Option<&Plan>,
    engine: Option<&Engine>,
) -> std::io::Result<()> {
    let previous = std::fs::read_to_string(path).ok();
    let text = render(run, plan, engine, previous.as_deref()).await;
    write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EntityCounts;

    fn run(exit_code: i32) -> Invocation {
        Invocation {
            command: "sync",
            entity: None,
            started_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            seconds: 1.5,
            exit_code,
        }
    }

    #[test]
    fn every_family_has_help_and_type_and_labels_are_escaped() {
        let known = Known::default();
        let text = text(
            &run(1),
            &[("we\"ird".into(), std::time::Duration::ZERO)],
            &known,
            None,
        );
        for name in [
            "crmsync_last_run_timestamp_seconds",
            "crmsync_last_run_duration_seconds",
            "crmsync_last_success_timestamp_seconds",
            "crmsync_last_run_exit_code",
            "crmsync_last_run_rows",
            "crmsync_last_run_conflicts",
            "crmsync_last_run_rejected",
            "crmsync_lag_seconds",
            "crmsync_open_rejects",
            "crmsync_open_conflicts",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}\n{text}");
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
        }
        assert!(text.contains("crmsync_last_run_exit_code 1\n"), "{text}");
        assert!(
            text.contains("crmsync_last_run_timestamp_seconds{entity=\"we\\\"ird\"} 1700000000\n"),
            "{text}"
        );
        assert!(text.contains(
            "crmsync_last_run_rows{entity=\"we\\\"ird\",target=\"crm\",op=\"delete\"} 0\n"
        ));
    }

    #[test]
    fn without_the_state_store_the_previous_files_state_values_stay() {
        let previous = "# HELP crmsync_last_success_timestamp_seconds x\n\
            crmsync_last_success_timestamp_seconds{entity=\"supplier\"} 1699999000\n\
            crmsync_open_rejects{entity=\"supplier\"} 2\n\
            crmsync_last_run_exit_code 0\n";
        let text = text(&run(1), &[], &Known::default(), Some(previous));
        assert!(text
            .contains("crmsync_last_success_timestamp_seconds{entity=\"supplier\"} 1699999000\n"));
        assert!(text.contains("crmsync_open_rejects{entity=\"supplier\"} 2\n"));
        assert!(text.contains("crmsync_last_run_exit_code 1\n"));
        assert!(!text.contains("crmsync_last_run_exit_code 0"));
        // The store's word replaces the previous file's.
        let known = Known {
            successes: Some(HashMap::from([(
                "supplier".to_string(),
                DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
            )])),
            status: Some(Status {
                watermarks: Vec::new(),
                counts: vec![EntityCounts {
                    entity: "supplier".into(),
                    links: 1,
                    open_rejects: 0,
                    open_conflicts: 0,
                    deletes_checked_at: None,
                }],
                last_runs: Vec::new(),
            }),
            ..Default::default()
        };
        let supplier = [("supplier".to_string(), std::time::Duration::ZERO)];
        let text = super::text(&run(0), &supplier, &known, Some(previous));
        assert!(text
            .contains("crmsync_last_success_timestamp_seconds{entity=\"supplier\"} 1700000100\n"));
        assert!(!text.contains("1699999000"));
        assert!(text.contains("crmsync_open_rejects{entity=\"supplier\"} 0\n"));
    }

    #[test]
    fn a_process_of_one_entity_names_it_and_reports_on_it_alone() {
        let known = Known {
            successes: Some(HashMap::from([
                (
                    "supplier".to_string(),
                    DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
                ),
                (
                    "contact".to_string(),
                    DateTime::from_timestamp(1_700_000_200, 0).unwrap(),
                ),
            ])),
            ..Default::default()
        };
        let one = Invocation {
            entity: Some("supplier".into()),
            ..run(0)
        };
        let supplier = [("supplier".to_string(), std::time::Duration::ZERO)];
        let text = text(&one, &supplier, &known, None);
        assert!(text.contains("crmsync_last_run_exit_code{entity=\"supplier\"} 0\n"));
        assert!(text.contains("crmsync_last_success_timestamp_seconds{entity=\"supplier\"}"));
        assert!(!text.contains("contact"), "{text}");
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crmsync.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("crmsync.prom")]);
    }
}
