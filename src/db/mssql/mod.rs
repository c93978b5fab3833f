//! A SQL Server database as its endpoint and a state store in it share it:
//! the pool, a dedicated connection for a session-owned lock, the one way
//! errors are reported, identifier quoting and the wire types.

pub mod error;
pub mod types;

use crate::db::EndpointError;
use bb8::Pool;
use bb8_tiberius::ConnectionManager;
use error::{pool_failure, query_failure};
use tokio::net::TcpStream;
use tokio_util::compat::Compat;

/// A tiberius client over TCP, as the pool hands them out.
pub type TdsClient = tiberius::Client<Compat<TcpStream>>;

/// The pool of a SQL Server database (a clone shares it).
#[derive(Clone)]
pub struct MssqlDatabase {
    side: &'static str,
    pool: Pool<ConnectionManager>,
    target: String,
}

impl std::fmt::Debug for MssqlDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlDatabase")
            .field("side", &self.side)
            .field("target", &self.target)
            .finish()
    }
}

type Result<T> = std::result::Result<T, EndpointError>;

/// Opens a transaction in which any error rolls everything back
/// (`XACT_ABORT`). A transaction still open on the pooled connection (left
/// by a request that was dropped half-way) is rolled back first: nested
/// under it, this one's `COMMIT` would only lower `@@TRANCOUNT` ("COMMIT
/// TRANSACTION (Transact-SQL)"), and its writes would be lost with the
/// connection; its `#` tables go with it.
pub const BEGIN: &str =
    "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; SET XACT_ABORT ON; BEGIN TRANSACTION";

/// `ident` as a T-SQL identifier: in brackets, a `]` doubled.
pub fn quote(ident: &str) -> String {
    format!("[{}]", ident.replace(']', "]]"))
}

impl MssqlDatabase {
    /// The database of `side` behind `pool` (`target` names it in
    /// messages, without secrets).
    pub fn new(side: &'static str, pool: Pool<ConnectionManager>, target: String) -> Self {
        MssqlDatabase { side, pool, target }
    }

    /// A pooled connection.
    pub async fn conn(&self) -> Result<bb8::PooledConnection<'_, ConnectionManager>> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_failure(self.side, e))
    }

    /// A connection of its own, outside the pool: a session-owned
    /// application lock lives as long as it does, and closing it releases
    /// the lock whatever happened.
    pub async fn session(&self, what: &str) -> Result<TdsClient> {
        self.pool.dedicated_connection().await.map_err(|e| {
            let e = match e {
                bb8_tiberius::Error::Tiberius(e) => e,
                bb8_tiberius::Error::Io(e) => tiberius::error::Error::from(e),
            };
            query_failure(self.side, what.to_string(), e)
        })
    }

    /// A failed statement, reported the endpoint's way (no row data).
    pub fn query_error(&self, what: impl Into<String>, e: tiberius::error::Error) -> EndpointError {
        query_failure(self.side, what.into(), e)
    }
}
