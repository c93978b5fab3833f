//! Shared test helpers: a stand-in over a fresh PostgreSQL database, and
//! tiberius clients connected to it.

use mssql_standin::{Config, StandIn};
use tiberius::{AuthMethod, Client, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

pub const USER: &str = "sa";
pub const PASSWORD: &str = "Str0ng!Passw0rd";

pub type Tds = Client<Compat<TcpStream>>;

/// Starts a stand-in (plain TDS) over a fresh database.
pub async fn standin() -> StandIn {
    standin_with(false, "Europe/London").await
}

pub async fn standin_with(tls: bool, timezone: &str) -> StandIn {
    let pg_url = testkit::fresh_database("standin").await;
    let config = Config {
        pg_url,
        user: USER.into(),
        password: PASSWORD.into(),
        timezone: timezone.into(),
        tls,
    };
    mssql_standin::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("start the stand-in")
}

pub fn tiberius_config(port: u16, password: &str, encryption: EncryptionLevel) -> tiberius::Config {
    let mut c = tiberius::Config::new();
    c.host("127.0.0.1");
    c.port(port);
    c.database("CRM");
    c.authentication(AuthMethod::sql_server(USER, password));
    c.encryption(encryption);
    c.trust_cert();
    c
}

pub async fn connect_with(port: u16, password: &str) -> Result<Tds, tiberius::error::Error> {
    let config = tiberius_config(port, password, EncryptionLevel::NotSupported);
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    Client::connect(config, tcp.compat_write()).await
}

pub async fn connect(s: &StandIn) -> Tds {
    connect_with(s.port(), PASSWORD)
        .await
        .expect("connect with tiberius")
}

/// Runs a batch and returns the server error it raised.
pub async fn server_error(c: &mut Tds, sql: &str) -> tiberius::error::TokenError {
    match c.simple_query(sql).await {
        Ok(s) => match s.into_results().await {
            Err(tiberius::error::Error::Server(e)) => e,
            other => panic!("expected a server error from {sql:?}, got {other:?}"),
        },
        Err(tiberius::error::Error::Server(e)) => e,
        Err(other) => panic!("expected a server error from {sql:?}, got {other:?}"),
    }
}

/// Runs a batch to completion.
pub async fn exec(c: &mut Tds, sql: &str) {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
