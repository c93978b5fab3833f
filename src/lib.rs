//! crmsync keeps a Sage CRM database and an external business database in
//! step. The binary is a thin shell over this library: `cli::run` does one
//! job and `exit_code` says how it ended.

pub mod cli;
pub mod config;
pub mod connect;
pub mod crm;
pub mod endpoint;
pub mod engine;
pub mod plan;
pub mod progress;
pub mod report;
pub mod schema;
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

/// The exit code for a failed command.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let config_error = err.chain().any(|c| {
        c.is::<config::LoadError>()
            || c.is::<plan::ConfigErrors>()
            || c.is::<schema::SchemaMismatch>()
            || c.is::<engine::BackfillError>()
            || matches!(
                c.downcast_ref::<engine::EngineError>(),
                Some(engine::EngineError::Bind(schema::BindError::Mismatch(_)))
                    | Some(engine::EngineError::StateNotPostgres { .. })
                    | Some(engine::EngineError::Resolve(
                        engine::ResolveError::Unknown(_) | engine::ResolveError::Closed(..)
                    ))
            )
    });
    if config_error {
        exit::BAD_CONFIG
    } else {
        exit::FAILED
    }
}
