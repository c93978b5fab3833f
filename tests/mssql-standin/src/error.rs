//! Errors: SQL Server-style errors sent to clients, and the server's own failures.

use std::fmt;

/// An error as SQL Server reports it in an ERROR token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub number: u32,
    pub state: u8,
    pub class: u8,
    pub message: String,
}

impl SqlError {
    pub fn new(number: u32, class: u8, message: impl Into<String>) -> Self {
        SqlError {
            number,
            state: 1,
            class,
            message: message.into(),
        }
    }

    /// A statement the stand-in does not support (reported as SQL Server's
    /// generic syntax error class so clients fail loudly).
    pub fn unsupported(what: impl fmt::Display) -> Self {
        SqlError::new(
            40000,
            16,
            format!("mssql-standin does not support this yet: {what}"),
        )
    }

    pub fn syntax(near: impl fmt::Display) -> Self {
        SqlError::new(102, 15, format!("Incorrect syntax near '{near}'."))
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Msg {}, Level {}, State {}: {}",
            self.number, self.class, self.state, self.message
        )
    }
}

impl std::error::Error for SqlError {}

/// Failures of the server itself (the connection is closed after them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network I/O failed")]
    Io(#[from] std::io::Error),
    #[error("malformed TDS from client: {0}")]
    Protocol(String),
    #[error("PostgreSQL failed")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("TLS failed: {0}")]
    Tls(String),
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Shorthand for a protocol error.
pub fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}
