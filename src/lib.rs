//! crmsync keeps a Sage CRM database and an external business database in
//! step. The binary is a thin shell over this library: `cli::run` does one
//! job and `exit_code` says how it ended.

pub mod causes;
pub mod cli;
pub mod config;
pub mod connect;
pub mod crm;
pub mod db;
pub mod endpoint;
pub mod engine;
pub mod lag;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod report;
pub mod schema;
pub mod side;
pub mod state;
pub mod value;

/// Exit codes of the contract (docs/design.md section 9).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The run failed; nothing is lost and a rerun is safe.
    pub const FAILED: i32 = 1;
    /// Bad usage or bad configuration.
    pub const BAD_CONFIG: i32 = 2;
    /// Finished, but rejected rows or unresolved conflicts remain.
    pub const UNFINISHED: i32 = 3;
}

/// The exit code for a failed command: that of the first error in its
/// chain that knows its own, else a runtime failure.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(known_exit_code)
        .unwrap_or(exit::FAILED)
}

/// The exit code `e` gives, if it is one of crmsync's error types.
fn known_exit_code(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    if let Some(e) = e.downcast_ref::<engine::EngineError>() {
        Some(e.exit_code())
    } else if let Some(e) = e.downcast_ref::<endpoint::EndpointError>() {
        Some(e.exit_code())
    } else if let Some(e) = e.downcast_ref::<config::LoadError>() {
        Some(e.exit_code())
    } else if let Some(e) = e.downcast_ref::<plan::ConfigErrors>() {
        Some(e.exit_code())
    } else if let Some(e) = e.downcast_ref::<schema::SchemaMismatch>() {
        Some(e.exit_code())
    } else if let Some(e) = e.downcast_ref::<schema::BindError>() {
        Some(e.exit_code())
    } else if let Some(e) = e.downcast_ref::<engine::ResolveError>() {
        Some(e.exit_code())
    } else {
        e.downcast_ref::<engine::BackfillError>()
            .map(engine::BackfillError::exit_code)
    }
}
