//! Connecting to PostgreSQL: the url and login checked by one direct
//! connection, the bb8 pool, sessions of their own (the run lock's),
//! errors as crmsync reports them, and identifier quoting. [`PgDatabase`]
//! is shared by the endpoint and, when `[state]` lives in the same
//! database, the state store, so that both use one pool.

mod tls;

use super::{EndpointError, Result, TableInfo};
use crate::plan::Connection;
use bb8::Pool;
use bb8_postgres::PostgresConnectionManager;
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Config;

pub(crate) type PgPool = Pool<PostgresConnectionManager<tls::Connector>>;

/// A connection taken from the pool.
pub(crate) type Pooled<'a> = bb8::PooledConnection<'a, PostgresConnectionManager<tls::Connector>>;

/// A PostgreSQL error as crmsync reports it: severity, message, SQLSTATE
/// and hint, but never the server's DETAIL, which can quote row data
/// ("Failing row contains ...") into logs.
#[derive(Debug)]
pub struct DbFailure(String);

impl std::fmt::Display for DbFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbFailure {}

impl From<&tokio_postgres::Error> for DbFailure {
    fn from(e: &tokio_postgres::Error) -> DbFailure {
        match e.as_db_error() {
            Some(db) => DbFailure(format!(
                "{}: {} (SQLSTATE {}){}",
                db.severity(),
                db.message(),
                db.code().code(),
                db.hint()
                    .map(|h| format!("; hint: {h}"))
                    .unwrap_or_default()
            )),
            None => {
                let cause = std::error::Error::source(e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                DbFailure(format!("{e}{cause}"))
            }
        }
    }
}

/// A failed statement as crmsync reports it, with what the engine needs to
/// know about it.
pub(crate) fn query_failure(
    side: &'static str,
    what: String,
    e: tokio_postgres::Error,
) -> EndpointError {
    let missing_object = e
        .code()
        .is_some_and(|c| *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME);
    EndpointError::Query {
        side,
        what,
        retryable: is_retryable(&e),
        missing_object,
        // SQLSTATE classes 22 (data exception) and 23 (integrity
        // constraint violation), and an exception a trigger raises
        // (P0001: how a validation trigger refuses a row).
        refused_row: e.code().is_some_and(|c| {
            c.code().starts_with("22") || c.code().starts_with("23") || c.code() == "P0001"
        }),
        source: Box::new(DbFailure::from(&e)),
    }
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        None => e.is_closed(),
    }
}

/// One PostgreSQL database as crmsync connects to it: the pool, and what
/// opening a session of its own takes. Clones share the pool.
#[derive(Clone)]
pub struct PgDatabase {
    /// The side's name in messages ("CRM", "external").
    side: &'static str,
    config: Config,
    /// The connector of the pool, reused for sessions of their own.
    tls: tls::Connector,
    pool: PgPool,
    target: String,
}

impl std::fmt::Debug for PgDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDatabase")
            .field("side", &self.side)
            .field("target", &self.target)
            .finish()
    }
}

impl PgDatabase {
    /// Connects (checking the server answers and the login works) and
    /// builds the pool.
    pub async fn connect(side: &'static str, conn: &Connection) -> Result<PgDatabase> {
        let mut config: Config = conn.url.parse().map_err(|e| EndpointError::Connect {
            side,
            target: conn.url.clone(),
            reason: "the url is not a valid PostgreSQL url".into(),
            source: Some(Box::new(DbFailure::from(&e))),
        })?;
        if let Some(pw) = &conn.password {
            config.password(pw.expose_secret());
        }
        config.application_name("crmsync");
        // No JIT compilation: crmsync's statements are key lookups, bulk
        // copies and one-pass scans, whose estimated costs still cross
        // jit_above_cost. Compiling them cost more than it saved every
        // time it was measured: 1.2 s instead of 0.3 s for a page of
        // 8,000 rows with child fields, 87 ms on a 5 ms lookup of 1,000
        // links, 0.53 s instead of 0.42 s for the hard-delete check.
        config.options(format!("-c TimeZone={} -c jit=off", conn.timezone.name()));
        config.connect_timeout(Duration::from_secs(10));
        config.ssl_mode(tls::ssl_mode(conn.tls));
        let target = describe(&config);
        let connector = tls::connector(conn).map_err(|reason| EndpointError::Connect {
            side,
            target: target.clone(),
            reason,
            source: None,
        })?;
        // One direct connection first, so that a failure says why.
        match config.connect(connector.clone()).await {
            Ok((client, connection)) => {
                drop(client);
                let _ = connection.await;
            }
            Err(e) => {
                let server_says = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default();
                let reason = match e.code() {
                    // pg_hba.conf's `cert` method, or `clientcert=`.
                    Some(c)
                        if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                            && server_says.contains("certificate") =>
                    {
                        match &conn.tls_client {
                            None => "the server logs this user in by TLS client certificate: \
                                     set tls_cert_file and tls_key_file (and tls = \"require\")"
                                .to_string(),
                            Some(c) => format!(
                                "the server did not accept the client certificate in \
                                 tls_cert_file {}: its common name must be the user in the \
                                 url (or mapped to it in pg_ident.conf), and its CA in the \
                                 server's ssl_ca_file",
                                c.cert_path.display()
                            ),
                        }
                    }
                    Some(c)
                        if *c == SqlState::INVALID_PASSWORD
                            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                    {
                        "login failed: check the user in the url and the password \
                         (password_env / password_file)"
                            .to_string()
                    }
                    Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
                        "the database in the url does not exist".to_string()
                    }
                    _ => tls::explain(conn, &e).unwrap_or_else(|| {
                        "check the host, port and that the server is running and reachable"
                            .to_string()
                    }),
                };
                return Err(EndpointError::Connect {
                    side,
                    target,
                    reason,
                    source: Some(Box::new(DbFailure::from(&e))),
                });
            }
        }
        let manager = PostgresConnectionManager::new(config.clone(), connector.clone());
        let pool = Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(30))
            .build(manager)
            .await
            .map_err(|e| EndpointError::Connect {
                side,
                target: target.clone(),
                reason: "cannot open the connection pool".into(),
                source: Some(Box::new(DbFailure::from(&e))),
            })?;
        Ok(PgDatabase {
            side,
            config,
            tls: connector,
            pool,
            target,
        })
    }

    /// The side's name in messages.
    pub(crate) fn side(&self) -> &'static str {
        self.side
    }

    /// The database as shown in messages (`postgres://user@host:port/db`).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn conn(&self) -> Result<Pooled<'_>> {
        self.pool.get().await.map_err(|e| EndpointError::Query {
            side: self.side,
            what: "getting a connection from the pool".into(),
            retryable: true,
            missing_object: false,
            refused_row: false,
            source: Box::new(e),
        })
    }

    /// A session of its own, outside the pool, for as long as the client
    /// lives; `why` says what it is for when it cannot be opened.
    pub(crate) async fn session(&self, why: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            self.config
                .connect(self.tls.clone())
                .await
                .map_err(|e| EndpointError::Connect {
                    side: self.side,
                    target: self.target.clone(),
                    reason: why.into(),
                    source: Some(Box::new(DbFailure::from(&e))),
                })?;
        tokio::spawn(connection);
        Ok(client)
    }

    pub(crate) fn query_error(
        &self,
        what: impl Into<String>,
        e: tokio_postgres::Error,
    ) -> EndpointError {
        query_failure(self.side, what.into(), e)
    }

    /// Runs a lookup of a list of keys (`column = ANY($n)`) with sequential
    /// scans ruled out. A table that grew since its statistics were taken
    /// (a backfill's target, a young links table) looks small to the
    /// planner, which then scans all of it for every list of keys: the cost
    /// grows with the table instead of with the list.
    pub(crate) async fn query_by_keys(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<tokio_postgres::Row>> {
        let mut conn = self.conn().await?;
        let fail = |e| self.query_error(what.to_string(), e);
        let tx = conn.transaction().await.map_err(fail)?;
        tx.batch_execute("SET LOCAL enable_seqscan = off")
            .await
            .map_err(fail)?;
        let rows = tx.query(sql, params).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(rows)
    }
}

fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Quotes an identifier taken from the catalog.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A table's schema-qualified, quoted name.
pub(crate) fn qualified(t: &TableInfo) -> String {
    format!("{}.{}", quote(&t.schema), quote(&t.name))
}
