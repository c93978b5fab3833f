//! Command-line interface: argument types and one function per command.

use crate::config::{self, CONFIG_ENV, DEFAULT_CONFIG_FILE};
use crate::engine::{Engine, EntityReport, Mode};
use crate::lag;
use crate::plan::{Plan, Side};
use crate::report::{self, RunReport};
use crate::state::StateStore;
use crate::{exit, exit_code};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "crmsync",
    version,
    about = "Keeps a Sage CRM database and an external business database in step"
)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, env = CONFIG_ENV, default_value = DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    /// Write a JSON summary of the run to this file.
    #[arg(long, global = true)]
    pub report: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, connect to both databases and compare the
    /// mapping with both live schemas.
    Check,
    /// Show what a sync would do, writing nothing.
    Plan {
        #[arg(long)]
        entity: Option<String>,
    },
    /// One incremental run.
    Sync {
        #[arg(long)]
        entity: Option<String>,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Compare both sides in full and report drift; with --repair, make
    /// the next sync fix it and run that sync.
    Verify {
        #[arg(long)]
        entity: Option<String>,
        /// Clear drifted fields from the shadows, set missing change times,
        /// touch rows that were missed, then sync.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// One-shot bulk copy and linking of whole tables, resumable.
    Backfill {
        #[arg(long)]
        entity: Option<String>,
        #[arg(long, value_enum, default_value_t = BackfillDirectionArg::CrmToExternal)]
        direction: BackfillDirectionArg,
        /// Continue an interrupted backfill from its checkpoint (the default).
        #[arg(long, conflicts_with = "restart")]
        resume: bool,
        /// Forget an interrupted backfill's checkpoint and start over.
        #[arg(long)]
        restart: bool,
        /// Source rows per chunk (one transaction each).
        #[arg(long, default_value_t = crate::engine::DEFAULT_CHUNK_ROWS)]
        chunk_rows: usize,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Watermarks with each side's lag, last runs, open rejects and
    /// conflicts.
    Status {
        /// Exit 3 naming each entity whose lag is longer than this (e.g.
        /// "15m"); overrides the entities' max_lag.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_lag: Option<std::time::Duration>,
    },
    /// Run history: command, entity, start, duration, outcome and counts.
    Runs {
        #[arg(long)]
        entity: Option<String>,
        /// How many of the newest runs to show.
        #[arg(long, default_value_t = 20)]
        last: u32,
    },
    /// List open conflicts (or all, settled ones too), or resolve one by
    /// taking a side's value.
    Conflicts {
        #[command(subcommand)]
        action: ConflictsAction,
    },
}

/// `--metrics-file` of the commands that run entities.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArg {
    /// Write Prometheus metrics of the run to this file (text format, for
    /// node_exporter's textfile collector), also when the run fails.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// Open conflicts with their base, CRM and external values.
    List {
        #[arg(long)]
        entity: Option<String>,
        /// Settled conflicts too, with the winner and how it was settled.
        #[arg(long)]
        all: bool,
        /// Only conflicts logged at or after TIME: a date, an RFC 3339
        /// time, "YYYY-MM-DD HH:MM:SS" (UTC), or a duration ago ("24h").
        #[arg(long, requires = "all", value_name = "TIME", value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Resolve conflict ID: write the chosen side's current value to the
    /// other side.
    Resolve {
        id: i64,
        #[arg(long, value_enum)]
        take: Take,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Take {
    Crm,
    External,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum BackfillDirectionArg {
    CrmToExternal,
    ExternalToCrm,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Backfill { .. } => "backfill",
            Command::Check => "check",
            Command::Plan { .. } => "plan",
            Command::Sync { .. } => "sync",
            Command::Verify { .. } => "verify",
            Command::Status { .. } => "status",
            Command::Runs { .. } => "runs",
            Command::Conflicts { .. } => "conflicts",
        }
    }

    /// The `--metrics-file` and `--entity` of a command that runs
    /// entities and was asked for metrics.
    fn metrics(&self) -> Option<(&std::path::Path, Option<&str>)> {
        let (m, entity) = match self {
            Command::Sync { metrics, entity }
            | Command::Verify {
                metrics, entity, ..
            }
            | Command::Backfill {
                metrics, entity, ..
            } => (metrics, entity),
            _ => return None,
        };
        m.metrics_file.as_deref().map(|p| (p, entity.as_deref()))
    }
}

/// A point in time for `--since`: a date (midnight UTC), an RFC 3339
/// time, "YYYY-MM-DD HH:MM:SS" in UTC, or a duration ago.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use chrono::{NaiveDate, NaiveDateTime, Utc};
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    if let Ok(d) = humantime::parse_duration(text) {
        let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
        return Ok(Utc::now() - d);
    }
    Err(format!(
        "{text:?} is not a time: write a date (2026-12-01), a UTC time \
         (\"2026-12-01 06:00:00\" or RFC 3339), or a duration ago (24h)"
    ))
}

fn init_logging(format: LogFormat) {
    // tiberius logs every server error message, and SQL Server's messages
    // for refused rows quote the row's values: it stays silent whatever
    // CRMSYNC_LOG says (the endpoint reports errors without the values).
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRMSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"))
        .add_directive("tiberius=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Loads and validates the config file.
pub fn load_plan(file: &std::path::Path) -> anyhow::Result<Plan> {
    let raw = config::load(file)?;
    Ok(Plan::build(file, raw)?)
}

/// How far a command got: the plan it loaded and the engine it
/// connected, for the metrics file to read the state store through.
#[derive(Default)]
struct Reached {
    plan: Option<Plan>,
    engine: Option<Engine>,
}

impl Reached {
    /// Connects the engine for `plan` and keeps it.
    async fn connect(&mut self, plan: Plan) -> anyhow::Result<&Engine> {
        Ok(self.engine.insert(Engine::connect(plan).await?))
    }
}

/// Runs one command and returns its exit code (errors are the caller's to
/// print).
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut warnings = Vec::new();
    let mut entities = Vec::new();
    let mut verified = Vec::new();
    let mut backfills = Vec::new();
    let mut runs = Vec::new();
    let result = runtime.block_on(async {
        let mut reached = Reached::default();
        let result = dispatch(
            &cli,
            &mut reached,
            &mut warnings,
            &mut entities,
            &mut verified,
            &mut backfills,
            &mut runs,
        )
        .await;
        match cli.command.metrics() {
            Some((path, entity)) => {
                let run = crate::metrics::Invocation {
                    command: cli.command.name(),
                    entity: entity.map(str::to_string),
                    started_at,
                    seconds: started.elapsed().as_secs_f64(),
                    exit_code: match &result {
                        Ok(c) => *c,
                        Err(e) => exit_code(e),
                    },
                };
                let written = crate::metrics::write(
                    path,
                    &run,
                    reached.plan.as_ref(),
                    reached.engine.as_ref(),
                )
                .await
                .with_context(|| format!("cannot write the metrics to {}", path.display()));
                match (result, written) {
                    (Ok(_), Err(e)) => Err(e),
                    (Err(e), Err(w)) => {
                        tracing::error!("{w:#}");
                        Err(e)
                    }
                    (result, Ok(())) => result,
                }
            }
            None => result,
        }
    });
    if let Some(path) = &cli.report {
        let report = RunReport {
            command: cli.command.name().to_string(),
            started_at,
            seconds: started.elapsed().as_secs_f64(),
            exit_code: match &result {
                Ok(c) => *c,
                Err(e) => exit_code(e),
            },
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            warnings,
            backfill: backfills,
            entities,
            verify: verified,
            runs,
        };
        report
            .write(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    result
}

async fn dispatch(
    cli: &Cli,
    reached: &mut Reached,
    warnings: &mut Vec<String>,
    entities: &mut Vec<EntityReport>,
    verified: &mut Vec<crate::engine::VerifyReport>,
    backfills: &mut Vec<crate::engine::BackfillReport>,
    runs: &mut Vec<report::RunRecord>,
) -> anyhow::Result<i32> {
    let plan = load_plan(&cli.config)?;
    reached.plan = Some(plan.clone());
    match &cli.command {
        Command::Check => check(plan, warnings).await,
        Command::Plan { entity } => {
            let engine = reached.connect(plan).await?;
            sync(engine, entity.as_deref(), Mode::DryRun, entities).await
        }
        Command::Sync { entity, .. } => {
            let engine = reached.connect(plan).await?;
            sync(engine, entity.as_deref(), Mode::Apply, entities).await
        }
        Command::Backfill {
            entity,
            direction,
            restart,
            chunk_rows,
            ..
        } => {
            let opts = crate::engine::BackfillOptions {
                direction: match direction {
                    BackfillDirectionArg::CrmToExternal => {
                        crate::engine::BackfillDirection::CrmToExternal
                    }
                    BackfillDirectionArg::ExternalToCrm => {
                        crate::engine::BackfillDirection::ExternalToCrm
                    }
                },
                restart: *restart,
                chunk_rows: *chunk_rows,
            };
            let engine = reached.connect(plan).await?;
            backfill(engine, entity.as_deref(), &opts, backfills).await
        }
        Command::Verify { entity, repair, .. } => {
            let engine = reached.connect(plan).await?;
            verify(engine, entity.as_deref(), *repair, verified).await
        }
        Command::Status { max_lag } => status(plan, *max_lag).await,
        Command::Runs { entity, last } => history(plan, entity.as_deref(), *last, runs).await,
        Command::Conflicts { action } => conflicts(plan, action).await,
    }
}

async fn check(plan: Plan, warnings: &mut Vec<String>) -> anyhow::Result<i32> {
    let n = plan.entities.len();
    println!(
        "config {}: valid ({n} entit{})",
        plan.file.display(),
        if n == 1 { "y" } else { "ies" }
    );
    let engine = Engine::connect(plan).await?;
    println!(
        "CRM database {}: connected",
        engine.endpoints.crm.describe()
    );
    println!(
        "external database {}: connected",
        engine.endpoints.external.describe()
    );
    let (bound, findings) = engine.bind(None).await?;
    for b in &bound {
        println!(
            "entity {:?}: {} -> {}, {} fields mapped, direction {:?}",
            b.name(),
            b.side.crm.table.qualified(),
            b.side.external.table.qualified(),
            b.fields.len(),
            b.plan.direction
        );
        // Rows crmsync creates must stay inside the filters, or the next
        // run would not see them.
        if b.plan.direction.external_to_crm() && b.plan.insert_into_crm {
            let mut values = b.side.crm.defaults.clone();
            if let Some(t) = &b.crm_system.secterr {
                values.push((t.clone(), crate::value::Value::Int(b.plan.secterr)));
            }
            if engine
                .endpoints
                .crm
                .filter_accepts(&b.crm_scan(), &values)
                .await?
                == Some(false)
            {
                warnings.push(format!(
                    "entity {:?}: rows crmsync creates in CRM would not match crm_filter {:?}; \
                     set the columns it tests in crm_defaults (e.g. crm_defaults = {{ Comp_Type = \"Supplier\" }})",
                    b.name(),
                    b.plan.crm_filter.as_deref().unwrap_or("")
                ));
            }
        }
        if b.plan.direction.crm_to_external() && b.plan.insert_into_external {
            let values = b.side.external.defaults.clone();
            if engine
                .endpoints
                .external
                .filter_accepts(&b.external_scan(), &values)
                .await?
                == Some(false)
            {
                warnings.push(format!(
                    "entity {:?}: rows crmsync creates in the external table would not match external_filter {:?}; \
                     set the columns it tests in external_defaults",
                    b.name(),
                    b.plan.external_filter.as_deref().unwrap_or("")
                ));
            }
        }
        // Hard deletes are compared link by link only when the table's
        // statistics show one; where they cannot, on every run.
        if b.plan.direction.external_to_crm()
            && b.plan.delete_into_crm == crate::plan::CrmDelete::Soft
            && engine
                .endpoints
                .external
                .deletes_fingerprint(&b.side.external.table)
                .await?
                .is_none()
        {
            warnings.push(format!(
                "entity {:?}: every run compares all its links with {} for hard deletes, a cost \
                 that grows with the table: its database cannot tell when no row was deleted \
                 (a partitioned or foreign PostgreSQL table, track_counts off, or on SQL Server \
                 no VIEW DATABASE STATE permission); flag deletes in external_deleted_column \
                 instead where the application can, or grant the permission",
                b.name(),
                b.side.external.table.qualified()
            ));
        }
        warnings.extend(dangling_references(&engine, b, &bound).await?);
        let crm_nulls = engine
            .endpoints
            .crm
            .count_null_changes(&b.crm_scan())
            .await?;
        let ext_nulls = engine
            .endpoints
            .external
            .count_null_changes(&b.external_scan())
            .await?;
        for (n, side, col) in [
            (crm_nulls, "CRM", &b.side.crm.change.name),
            (ext_nulls, "external", &b.side.external.change.name),
        ] {
            if n > 0 {
                let w = format!(
                    "entity {:?}: {n} {side} rows have no {col} and are never seen by an incremental \
                     sync; set {col} on them (or run verify --repair)",
                    b.name()
                );
                warnings.push(w);
            }
        }
    }
    warnings.extend(findings.warnings);
    for w in warnings.iter() {
        println!("warning: {w}");
    }
    println!("check passed");
    Ok(exit::OK)
}

/// Warnings for rows of `b` whose references name parent rows that the
/// parent entity's filter leaves out: they cannot be translated and are
/// held as rejects until the parent passes it.
async fn dangling_references(
    engine: &Engine,
    b: &crate::schema::BoundEntity,
    bound: &[crate::schema::BoundEntity],
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for f in &b.fields {
        let Some(r) = &f.plan.references else {
            continue;
        };
        let Some(parent) = bound.iter().find(|p| p.name().eq_ignore_ascii_case(r)) else {
            continue;
        };
        for side in Side::BOTH {
            let parent_scan = parent.scan(side);
            let Some(filter) = parent_scan.filter.clone() else {
                continue;
            };
            let n = match engine.endpoints[side]
                .count_dangling(&b.scan(side), &f.column(side).name, &parent_scan)
                .await
            {
                Ok(n) => n,
                // Columns of kinds that do not compare: the bind has
                // already checked that the keys fit, so say nothing.
                Err(crate::endpoint::EndpointError::Query { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if n > 0 {
                out.push(format!(
                    "entity {:?}: {n} {} rows name in {} a {} row that {}_filter {:?} of \
                     entity {:?} leaves out; they are held as rejects until their parent \
                     passes it: widen that filter, or narrow this entity's to leave them out",
                    b.name(),
                    side_name(side),
                    f.column(side).name,
                    parent.side[side].table.qualified(),
                    side.as_str(),
                    filter,
                    parent.name(),
                ));
            }
        }
    }
    Ok(out)
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Crm => "CRM",
        Side::External => "external",
    }
}

async fn sync(
    engine: &Engine,
    entity: Option<&str>,
    mode: Mode,
    out: &mut Vec<EntityReport>,
) -> anyhow::Result<i32> {
    let reports = engine.sync(entity, mode).await?;
    let dry = mode == Mode::DryRun;
    let mut code = exit::OK;
    for r in &reports {
        println!("{}", report::human(r, dry));
        if dry {
            for s in &r.samples {
                let fields: Vec<String> =
                    s.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "  {} CRM {}{}: {}",
                    s.action,
                    s.crm_key,
                    s.external_key
                        .as_ref()
                        .map(|k| format!(" -> external {k}"))
                        .unwrap_or_default(),
                    fields.join(", ")
                );
            }
        }
        if r.unfinished() {
            code = exit::UNFINISHED;
        }
    }
    *out = reports;
    Ok(code)
}

async fn verify(
    engine: &Engine,
    entity: Option<&str>,
    repair: bool,
    out: &mut Vec<crate::engine::VerifyReport>,
) -> anyhow::Result<i32> {
    let reports = engine.verify(entity, repair).await?;
    let mut code = exit::OK;
    for r in &reports {
        for line in report::human_verify(r) {
            println!("{line}");
        }
        if r.unfinished() {
            code = exit::UNFINISHED;
        }
    }
    *out = reports;
    Ok(code)
}

async fn backfill(
    engine: &Engine,
    entity: Option<&str>,
    opts: &crate::engine::BackfillOptions,
    out: &mut Vec<crate::engine::BackfillReport>,
) -> anyhow::Result<i32> {
    let reports = engine.backfill(entity, opts).await?;
    let mut code = exit::OK;
    for r in &reports {
        println!("{}", crate::report::backfill_human(r));
        if r.rejected > 0 {
            code = exit::UNFINISHED;
        }
    }
    *out = reports;
    Ok(code)
}

/// The state side, connected, and the state store in it.
async fn state_store(
    plan: &Plan,
) -> anyhow::Result<(crate::connect::Connected, Arc<dyn StateStore>)> {
    let state_side = crate::connect::side(plan, plan.state_side).await?;
    let store = state_side.state_store(&plan.state_schema);
    Ok((state_side, store))
}

/// Whether `e` says the state schema (or a table of it) does not exist.
fn no_state_yet(e: &crate::endpoint::EndpointError) -> bool {
    matches!(
        e,
        crate::endpoint::EndpointError::Query {
            missing_object: true,
            ..
        }
    )
}

async fn status(plan: Plan, max_lag: Option<Duration>) -> anyhow::Result<i32> {
    let (state_side, store) = state_store(&plan).await?;
    let limits: Vec<(&str, Duration)> = plan
        .entities
        .iter()
        .filter_map(|e| Some((e.name.as_str(), max_lag.or(e.max_lag)?)))
        .collect();
    let status = match store.status().await {
        Ok(s) => s,
        Err(_) => {
            println!(
                "no runs yet (the state schema {} does not exist)",
                plan.state_schema
            );
            if limits.is_empty() {
                return Ok(exit::OK);
            }
            println!("stale (lag over max_lag):");
            for (name, _) in &limits {
                println!("  {name}: has never finished a run");
            }
            return Ok(exit::UNFINISHED);
        }
    };
    // Lag: each side's own clock minus the end of its last window read
    // in full, where the side answers (status works without them). The
    // state side is connected already.
    let mut clocks = HashMap::new();
    for side in [Side::Crm, Side::External] {
        let ep = if side == plan.state_side {
            Some(state_side.endpoint.clone())
        } else {
            crate::connect::side(&plan, side)
                .await
                .ok()
                .map(|c| c.endpoint)
        };
        if let Some(ep) = ep {
            if let Some(clock) = lag::Clock::read(&*ep).await {
                clocks.insert(side.as_str(), clock);
            }
        }
    }
    let lag_of = |w: &crate::state::WatermarkInfo| -> Option<(Side, f64)> {
        let side = lag::side_of(w)?;
        let settle = plan.entity(&w.entity).map(|e| e.settle).unwrap_or_default();
        Some((
            side,
            lag::lag_seconds(w, settle, clocks.get(side.as_str())?)?,
        ))
    };
    println!("watermarks:");
    for w in &status.watermarks {
        println!(
            "  {} {}: {} / key {}{} (saved {})",
            w.entity,
            w.side,
            w.ts,
            w.key,
            lag_of(w)
                .map(|(side, secs)| format!(", lag {secs:.1} s by the {side} clock"))
                .unwrap_or_default(),
            w.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    println!("entities:");
    let mut code = exit::OK;
    for c in &status.counts {
        println!(
            "  {}: {} links, {} open rejects, {} open conflicts{}",
            c.entity,
            c.links,
            c.open_rejects,
            c.open_conflicts,
            c.deletes_checked_at
                .map(|t| format!(
                    "; links last found all present in the external table {}",
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                ))
                .unwrap_or_default()
        );
        if c.open_rejects > 0 || c.open_conflicts > 0 {
            code = exit::UNFINISHED;
        }
    }
    println!("last runs:");
    for r in &status.last_runs {
        println!(
            "  #{} {} {}: started {}, {}",
            r.id,
            r.entity,
            r.command,
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            match (&r.finished_at, &r.outcome) {
                (Some(f), Some(o)) => format!("{o} at {}", f.format("%H:%M:%S")),
                _ => "did not finish (crashed or still running)".into(),
            }
        );
    }
    if limits.is_empty() {
        return Ok(code);
    }
    // An entity is stale when a side's lag is over its limit; without a
    // lag to go by (no watermark, or no clock), when its last successful
    // run ended longer ago than that.
    let successes = store.last_successes().await.unwrap_or_default();
    let mut stale = Vec::new();
    for (name, limit) in &limits {
        let worst = status
            .watermarks
            .iter()
            .filter(|w| w.entity == *name)
            .filter_map(lag_of)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let over = |secs: f64| secs > limit.as_secs_f64();
        let limit = humantime::format_duration(*limit);
        match (worst, successes.get(*name)) {
            (Some((side, secs)), _) if over(secs) => stale.push(format!(
                "  {name}: lag {secs:.1} s on the {side} side, over max_lag {limit}"
            )),
            (Some(_), _) => {}
            (None, Some(t)) => {
                let age = (chrono::Utc::now() - *t).num_milliseconds() as f64 / 1000.0;
                if over(age) {
                    stale.push(format!(
                        "  {name}: last successful run ended {age:.1} s ago, over max_lag {limit}"
                    ));
                }
            }
            (None, None) => stale.push(format!("  {name}: has never finished a run")),
        }
    }
    if !stale.is_empty() {
        println!("stale (lag over max_lag):");
        for line in stale {
            println!("{line}");
        }
        code = exit::UNFINISHED;
    }
    Ok(code)
}

/// `crmsync runs`: the newest runs from the state store.
async fn history(
    plan: Plan,
    entity: Option<&str>,
    last: u32,
    out: &mut Vec<report::RunRecord>,
) -> anyhow::Result<i32> {
    let entity = match entity {
        Some(name) => Some(crate::schema::selected(&plan, Some(name))?[0].name.clone()),
        None => None,
    };
    let (_side, store) = state_store(&plan).await?;
    let runs = match store.runs(entity.as_deref(), i64::from(last)).await {
        Ok(r) => r,
        Err(e) if no_state_yet(&e) => {
            println!(
                "no runs yet (the state schema {} does not exist)",
                plan.state_schema
            );
            return Ok(exit::OK);
        }
        Err(e) => return Err(e.into()),
    };
    if runs.is_empty() {
        println!("no runs yet");
    }
    for r in runs {
        println!("{}", report::run_line(&r));
        out.push(report::RunRecord {
            counts: r.counts(),
            run: r,
        });
    }
    Ok(exit::OK)
}

async fn conflicts(plan: Plan, action: &ConflictsAction) -> anyhow::Result<i32> {
    match action {
        ConflictsAction::List {
            entity,
            all: true,
            since,
        } => {
            let names: Vec<String> = crate::schema::selected(&plan, entity.as_deref())?
                .iter()
                .map(|e| e.name.clone())
                .collect();
            let (_side, store) = state_store(&plan).await?;
            let mut n = 0;
            for name in names {
                let logged = match store.all_conflicts(&name, *since).await {
                    Ok(c) => c,
                    Err(e) if no_state_yet(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                for c in logged {
                    n += 1;
                    println!("{}", report::conflict_line(&c));
                }
            }
            if n == 0 {
                println!("no conflicts");
            }
            Ok(exit::OK)
        }
        ConflictsAction::List { entity, .. } => {
            let names: Vec<String> = crate::schema::selected(&plan, entity.as_deref())?
                .iter()
                .map(|e| e.name.clone())
                .collect();
            let engine = Engine::connect(plan).await?;
            let mut n = 0;
            for name in names {
                let open = match engine.state.open_conflicts(&name, None).await {
                    Ok(o) => o,
                    Err(_) => continue,
                };
                for c in open {
                    n += 1;
                    let r = &c.record;
                    println!(
                        "#{} {} CRM {} / external {}: field {}: base {}, CRM {}, external {} (run {}, {})",
                        c.id,
                        c.entity,
                        r.crm_key,
                        r.external_key,
                        r.field,
                        r.base.as_ref().map(|v| v.display()).unwrap_or_else(|| "-".into()),
                        r.crm.display(),
                        r.external.display(),
                        c.run.unwrap_or(0),
                        c.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                    );
                }
            }
            if n == 0 {
                println!("no open conflicts");
            } else {
                println!("resolve one with: crmsync conflicts resolve ID --take crm|external");
            }
            Ok(exit::OK)
        }
        ConflictsAction::Resolve { id, take } => {
            let side = match take {
                Take::Crm => Side::Crm,
                Take::External => Side::External,
            };
            let engine = Engine::connect(plan).await?;
            let c = engine.resolve_conflict(*id, side).await?;
            println!(
                "conflict #{id} resolved: {} of CRM {} / external {} now holds the {side} value on both sides",
                c.record.field, c.record.crm_key, c.record.external_key
            );
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_durations_ago() {
        let at = |s: &str| parse_since(s).map(|t| t.to_rfc3339());
        assert_eq!(at("2026-12-01"), Ok("2026-12-01T00:00:00+00:00".into()));
        assert_eq!(
            at("2026-12-01 06:30:00"),
            Ok("2026-12-01T06:30:00+00:00".into())
        );
        assert_eq!(
            at("2026-12-01T06:30:00+01:00"),
            Ok("2026-12-01T05:30:00+00:00".into())
        );
        let ago = parse_since("24h").unwrap();
        let expected = chrono::Utc::now() - chrono::Duration::hours(24);
        assert!((ago - expected).num_seconds().abs() < 5);
        let err = parse_since("yesterday").unwrap_err();
        assert!(err.contains("\"yesterday\" is not a time"), "{err}");
    }
}
