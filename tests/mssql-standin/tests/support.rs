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
    let short: String = sql.chars().take(300).collect();
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {short}"))
        .into_results()
        .await
        .unwrap_or_else(|e| panic!("{e}\nin: {short}"));
}

/// First column of the first row of a batch's first result.
pub async fn scalar<T>(c: &mut Tds, sql: &str) -> Option<T>
where
    T: for<'a> tiberius::FromSql<'a> + 'static,
{
    let row = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_row()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))?;
    row.try_get::<T, _>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// All rows of a batch's first result.
pub async fn rows(c: &mut Tds, sql: &str) -> Vec<tiberius::Row> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_first_result()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The batches of a T-SQL script, split on lines holding only GO (as sqlcmd does).
pub fn go_batches(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in script.lines() {
        if line.trim().eq_ignore_ascii_case("go") {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    out.push(cur);
    out.into_iter().filter(|b| !b.trim().is_empty()).collect()
}

/// crmsync's Sage CRM schema, as shipped in sql/mssql/crm_schema.sql.
pub fn crm_schema() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../sql/mssql/crm_schema.sql"
    );
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Loads crm_schema.sql batch by batch.
pub async fn load_crm_schema(c: &mut Tds) {
    for b in go_batches(&crm_schema()) {
        exec(c, &b).await;
    }
}

/// First column of the first row, as text.
pub async fn text(c: &mut Tds, sql: &str) -> Option<String> {
    let row = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_row()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))?;
    row.try_get::<&str, _>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .map(str::to_string)
}

/// Runs a batch that is expected to raise errors part-way.
pub async fn run_ignoring_errors(c: &mut Tds, sql: &str) {
    if let Ok(s) = c.simple_query(sql).await {
        let _ = s.into_results().await;
    }
}
