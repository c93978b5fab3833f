//! Command-line interface: argument types and one function per command.

use crate::config::{self, CONFIG_ENV, DEFAULT_CONFIG_FILE};
use crate::engine::{Engine, EntityReport, Mode};
use crate::plan::{DbKind, Plan, Side};
use crate::report::{self, RunReport};
use crate::value::Value;
use crate::{exit, exit_code};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;

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
    },
    /// Watermarks, last runs, open rejects and conflicts.
    Status,
    /// List open conflicts, or resolve one by taking a side's value.
    Conflicts {
        #[command(subcommand)]
        action: ConflictsAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// Open conflicts with their base, CRM and external values.
    List {
        #[arg(long)]
        entity: Option<String>,
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
            Command::Status => "status",
            Command::Conflicts { .. } => "conflicts",
        }
    }
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
    let result = runtime.block_on(dispatch(
        &cli,
        &mut warnings,
        &mut entities,
        &mut verified,
        &mut backfills,
    ));
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
        };
        report
            .write(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    result
}

async fn dispatch(
    cli: &Cli,
    warnings: &mut Vec<String>,
    entities: &mut Vec<EntityReport>,
    verified: &mut Vec<crate::engine::VerifyReport>,
    backfills: &mut Vec<crate::engine::BackfillReport>,
) -> anyhow::Result<i32> {
    let plan = load_plan(&cli.config)?;
    match &cli.command {
        Command::Check => check(plan, warnings).await,
        Command::Plan { entity } => sync(plan, entity.as_deref(), Mode::DryRun, entities).await,
        Command::Sync { entity } => sync(plan, entity.as_deref(), Mode::Apply, entities).await,
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
            backfill(plan, entity.as_deref(), &opts, backfills).await
        }
        Command::Verify { entity, repair } => {
            verify(plan, entity.as_deref(), *repair, verified).await
        }
        Command::Status => status(plan).await,
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
    println!("CRM database {}: connected", engine.crm.describe());
    println!(
        "external database {}: connected",
        engine.external.describe()
    );
    let (bound, findings) = engine.bind(None).await?;
    for b in &bound {
        println!(
            "entity {:?}: {} -> {}, {} fields mapped, direction {:?}",
            b.name(),
            b.crm_table.qualified(),
            b.external_table.qualified(),
            b.fields.len(),
            b.plan.direction
        );
        // Rows crmsync creates must stay inside the filters, or the next
        // run would not see them.
        if b.plan.direction.external_to_crm() && b.plan.insert_into_crm {
            let mut values = b.crm_defaults.clone();
            if let Some(t) = &b.crm_system.secterr {
                values.push((t.clone(), crate::value::Value::Int(b.plan.secterr)));
            }
            if engine.crm.filter_accepts(&b.crm_scan(), &values).await? == Some(false) {
                warnings.push(format!(
                    "entity {:?}: rows crmsync creates in CRM would not match crm_filter {:?}; \
                     set the columns it tests in crm_defaults (e.g. crm_defaults = {{ Comp_Type = \"Supplier\" }})",
                    b.name(),
                    b.plan.crm_filter.as_deref().unwrap_or("")
                ));
            }
        }
        if b.plan.direction.crm_to_external() && b.plan.insert_into_external {
            let values = b.external_defaults.clone();
            if engine
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
                .external
                .deletes_fingerprint(&b.external_table)
                .await?
                .is_none()
        {
            warnings.push(format!(
                "entity {:?}: every run compares all its links with {} for hard deletes, a cost \
                 that grows with the table: its database cannot tell when no row was deleted \
                 (SQL Server, a partitioned or foreign table, or track_counts off); flag deletes \
                 in external_deleted_column instead where the application can",
                b.name(),
                b.external_table.qualified()
            ));
        }
        let crm_nulls = engine.crm.count_null_changes(&b.crm_scan()).await?;
        let ext_nulls = engine
            .external
            .count_null_changes(&b.external_scan())
            .await?;
        for (n, side, col) in [
            (crm_nulls, "CRM", &b.crm_change.name),
            (ext_nulls, "external", &b.external_change.name),
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

async fn sync(
    plan: Plan,
    entity: Option<&str>,
    mode: Mode,
    out: &mut Vec<EntityReport>,
) -> anyhow::Result<i32> {
    let engine = Engine::connect(plan).await?;
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
    plan: Plan,
    entity: Option<&str>,
    repair: bool,
    out: &mut Vec<crate::engine::VerifyReport>,
) -> anyhow::Result<i32> {
    let engine = Engine::connect(plan).await?;
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
    plan: Plan,
    entity: Option<&str>,
    opts: &crate::engine::BackfillOptions,
    out: &mut Vec<crate::engine::BackfillReport>,
) -> anyhow::Result<i32> {
    let engine = Engine::connect(plan).await?;
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

async fn status(plan: Plan) -> anyhow::Result<i32> {
    // The plan refuses such a side already; a plan built by hand gets the
    // engine's own error (and exit code).
    let not_postgres = || crate::engine::EngineError::StateNotPostgres {
        side: plan.state_side.as_str(),
    };
    if plan.connection(plan.state_side).kind != DbKind::Postgres {
        return Err(not_postgres().into());
    }
    let state_side = crate::connect::side(&plan, plan.state_side).await?;
    let store = state_side
        .state_store(&plan.state_schema)
        .ok_or_else(not_postgres)?;
    let status = match store.status().await {
        Ok(s) => s,
        Err(_) => {
            println!(
                "no runs yet (the state schema {} does not exist)",
                plan.state_schema
            );
            return Ok(exit::OK);
        }
    };
    // Lag: each side's own clock minus its watermark, where the side
    // answers (status works without them). The state side is connected
    // already.
    let mut clocks = std::collections::HashMap::new();
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
            // SQL Server's datetime columns follow GETDATE(); the lag is
            // the same to the millisecond either way.
            let naive = ep
                .clock(&crate::value::SqlType::Timestamp { precision: 6 })
                .await;
            let tz = ep.clock(&crate::value::SqlType::TimestampTz).await;
            if let (Ok(n), Ok(t)) = (naive, tz) {
                clocks.insert(side.as_str(), (n, t));
            }
        }
    }
    let lag = |w: &crate::state::WatermarkInfo| -> String {
        let Some((naive, tz)) = clocks.get(w.side.as_str()) else {
            return String::new();
        };
        let secs = match (&w.ts_value, naive, tz) {
            (Value::Timestamp(m), Value::Timestamp(now), _) => (*now - *m).num_milliseconds(),
            (Value::TimestampTz(m), _, Value::TimestampTz(now)) => (*now - *m).num_milliseconds(),
            _ => return String::new(),
        } as f64
            / 1000.0;
        format!(", {secs:.1} s behind the {} clock", w.side)
    };
    println!("watermarks:");
    for w in &status.watermarks {
        println!(
            "  {} {}: {} / key {}{} (saved {})",
            w.entity,
            w.side,
            w.ts,
            w.key,
            lag(w),
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
    Ok(code)
}

async fn conflicts(plan: Plan, action: &ConflictsAction) -> anyhow::Result<i32> {
    match action {
        ConflictsAction::List { entity } => {
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
