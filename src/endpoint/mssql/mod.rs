//! The SQL Server endpoint (Sage CRM's home): pooled tiberius connections
//! (bb8), catalog introspection, keyset change reads with every bound cast
//! to the change column's own type, and batched writes in one transaction
//! by Sage CRM's rules.
//!
//! crmsync's own state stays on PostgreSQL: this endpoint implements only
//! [`Endpoint`], and the plan refuses a `[state] side` on SQL Server.
//!
//! Error messages: SQL Server's texts for refused rows can quote the row's
//! data ("The duplicate key value is (…)", "Conversion failed when
//! converting the nvarchar value '…'"). An error is therefore reported as
//! its number, severity and only the first sentence of the server's text,
//! and for the errors whose first sentence itself quotes a value (245, 220,
//! 8115) a fixed text instead. The number is enough to look the rest up.

mod bulk;
pub mod types;

use super::{
    Applied, Assign, ColumnInfo, Endpoint, EndpointError, Lower, Result, Scan, TableInfo,
    WriteBatch,
};
use crate::plan::{Connection, Tls};
use crate::state::LinkBatch;
use crate::value::{floor_to_precision, SqlType, Value};
use async_trait::async_trait;
use bb8::Pool;
use bb8_tiberius::ConnectionManager;
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;
use types::{from_column, NativeType, Param};

pub use types::from_column as value_of;

/// SQL Server's parameter limit is 2,100 per request; key lists are sent
/// in chunks well below it.
const MAX_PARAMS: usize = 2000;

/// Sage CRM maintains this table with triggers; crmsync never writes it.
const TRIGGER_MAINTAINED: &str = "CRMEmailPhoneData";

/// A SQL Server database, as the CRM side or the external side.
pub struct MssqlEndpoint {
    side: &'static str,
    pool: Pool<ConnectionManager>,
    target: String,
    /// Declared types by table (`schema.name`, lower case), from `table`:
    /// casts need `datetime` told apart from `datetime2(3)`.
    natives: Mutex<HashMap<String, Vec<(String, NativeType)>>>,
}

impl std::fmt::Debug for MssqlEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlEndpoint")
            .field("side", &self.side)
            .field("target", &self.target)
            .finish()
    }
}

/// Quotes an identifier taken from the catalog: `[name]`, `]` doubled.
pub fn quote(ident: &str) -> String {
    format!("[{}]", ident.replace(']', "]]"))
}

fn qualified(t: &TableInfo) -> String {
    format!("{}.{}", quote(&t.schema), quote(&t.name))
}

fn cache_key(schema: &str, name: &str) -> String {
    format!("{}.{}", schema.to_lowercase(), name.to_lowercase())
}

/// A SQL Server error as crmsync reports it (see the module docs): never
/// the row data some server messages quote.
#[derive(Debug)]
pub struct DbFailure(String);

impl std::fmt::Display for DbFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbFailure {}

/// Errors whose first sentence quotes the offending value.
fn value_quoting_text(code: u32) -> Option<&'static str> {
    match code {
        245 => Some("Conversion failed when converting a value to the column's data type."),
        220 | 8115 => Some("Arithmetic overflow: a value does not fit the column's data type."),
        _ => None,
    }
}

fn first_sentence(msg: &str) -> &str {
    match msg.find(". ") {
        Some(i) => &msg[..=i],
        None => msg,
    }
}

impl From<&tiberius::error::Error> for DbFailure {
    fn from(e: &tiberius::error::Error) -> DbFailure {
        match e {
            tiberius::error::Error::Server(t) => {
                let text =
                    value_quoting_text(t.code()).unwrap_or_else(|| first_sentence(t.message()));
                DbFailure(format!(
                    "SQL Server error {} (severity {}): {text}",
                    t.code(),
                    t.class()
                ))
            }
            other => DbFailure(other.to_string()),
        }
    }
}

/// Error numbers meaning the data was refused, not the statement.
const REFUSED_ROW: [u32; 10] = [2627, 2601, 547, 515, 2628, 8152, 245, 8114, 220, 8115];

fn server_code(e: &tiberius::error::Error) -> Option<u32> {
    match e {
        tiberius::error::Error::Server(t) => Some(t.code()),
        _ => None,
    }
}

/// The one place that decides what is worth retrying on SQL Server:
/// deadlock victims, lock timeouts and dropped connections.
fn is_retryable(e: &tiberius::error::Error) -> bool {
    match e {
        tiberius::error::Error::Server(t) => matches!(t.code(), 1205 | 1222 | 40001 | 40613),
        tiberius::error::Error::Io { .. } => true,
        _ => false,
    }
}

/// `mssql://user@host:port/Database` or `mssql://user@host\INSTANCE/Database`
/// taken apart.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    user: String,
    host: String,
    /// A named instance (`host\INSTANCE`): its port comes from the SQL
    /// Server Browser unless the url gives one.
    instance: Option<String>,
    /// The port in the url, if any.
    port: Option<u16>,
    database: String,
}

impl Target {
    /// The url as shown in messages (it never holds a password).
    fn display(&self) -> String {
        let instance = self
            .instance
            .as_ref()
            .map(|i| format!("\\{i}"))
            .unwrap_or_default();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "mssql://{}@{}{instance}{port}/{}",
            self.user, self.host, self.database
        )
    }
}

fn parse_url(url: &str) -> std::result::Result<Target, String> {
    let rest = url
        .strip_prefix("mssql://")
        .or_else(|| url.strip_prefix("sqlserver://"))
        .ok_or("the url must start with mssql://")?;
    if rest.contains('?') {
        return Err("the url takes no ?options; use the config keys (tls, tls_ca_file)".into());
    }
    let (authority, database) = rest
        .split_once('/')
        .ok_or("the url names no database (mssql://user@host:1433/Database)")?;
    if database.is_empty() || database.contains('/') {
        return Err(
            "the url must end with one database name (mssql://user@host:1433/Database)".into(),
        );
    }
    let (user, hostport) = authority
        .rsplit_once('@')
        .ok_or("the url names no user (mssql://user@host:1433/Database)")?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("the port {p:?} in the url is not a number"))?,
            ),
        ),
        _ => (hostport, None),
    };
    let (host, instance) = match host.split_once('\\') {
        Some((h, i)) => {
            if i.is_empty()
                || i.len() > 16
                || !i
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_$#".contains(c))
            {
                return Err(format!(
                    "the instance name {i:?} in the url is not a SQL Server instance name \
                     (letters, digits, _ $ #, at most 16)"
                ));
            }
            (h, Some(i.to_string()))
        }
        None => (host, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if user.is_empty() || host.is_empty() {
        return Err("the url must name a user and a host (mssql://user@host:1433/Database)".into());
    }
    Ok(Target {
        user: user.to_string(),
        host: host.to_string(),
        instance,
        port,
        database: database.to_string(),
    })
}

/// The UDP port of the SQL Server Browser service.
const BROWSER_PORT: u16 = 1434;

/// The TCP port of named instance `instance` on `host`, asked of the SQL
/// Server Browser on UDP `browser_port` (MS-SQLR: a CLNT_UCAST_INST
/// request, an SVR_RESP answer). The Browser does not answer for an
/// instance it does not know: three tries of a second each, then an error
/// that says what to check.
async fn instance_port(
    host: &str,
    browser_port: u16,
    instance: &str,
) -> std::result::Result<u16, String> {
    let not_found = || {
        format!(
            "the SQL Server Browser on {host} (UDP {browser_port}) did not give the port of \
             instance {instance}: check the instance name, that the SQL Server Browser service \
             runs and that UDP {browser_port} is open to this machine; or put the instance's \
             TCP port in the url (host\\{instance}:port)"
        )
    };
    let addr = tokio::net::lookup_host((host, browser_port))
        .await
        .map_err(|e| format!("cannot resolve {host} ({e})"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let local = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("cannot open a UDP socket ({e})"))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("cannot reach {addr} ({e})"))?;
    let mut request = vec![0x04u8];
    request.extend_from_slice(instance.as_bytes());
    request.push(0);
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        socket
            .send(&request)
            .await
            .map_err(|e| format!("cannot ask the SQL Server Browser ({e})"))?;
        match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => return browser_reply_port(&buf[..n], instance).ok_or_else(not_found),
            Ok(Err(_)) | Err(_) => continue,
        }
    }
    Err(not_found())
}

/// The `tcp` port of `instance` in an SVR_RESP: 0x05, the length (u16,
/// little-endian), then `key;value;` pairs, instances ending in `;;`.
fn browser_reply_port(reply: &[u8], instance: &str) -> Option<u16> {
    let (&kind, rest) = reply.split_first()?;
    if kind != 0x05 || rest.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let data = String::from_utf8_lossy(rest.get(2..2 + len).or_else(|| rest.get(2..))?);
    data.split(";;").find_map(|server| {
        let parts: Vec<&str> = server.split(';').collect();
        let get = |key: &str| {
            parts
                .chunks(2)
                .find(|kv| kv[0].eq_ignore_ascii_case(key))
                .and_then(|kv| kv.get(1).copied())
        };
        get("InstanceName")
            .filter(|n| n.eq_ignore_ascii_case(instance))
            .and_then(|_| get("tcp"))
            .and_then(|p| p.parse().ok())
    })
}

/// Whether a connection failure came from TLS: tiberius reports rustls'
/// verdicts (an unknown issuer, a wrong host name) as I/O errors.
fn is_tls_failure(e: &tiberius::error::Error) -> bool {
    match e {
        tiberius::error::Error::Tls(_) => true,
        tiberius::error::Error::Io { message, .. } => {
            let m = message.to_lowercase();
            [
                "certificate",
                "tls",
                "handshake",
                "peer",
                "unexpected eof",
                "reset",
            ]
            .iter()
            .any(|w| m.contains(w))
        }
        _ => false,
    }
}

async fn connect_once(
    config: &Config,
) -> tiberius::Result<Client<tokio_util::compat::Compat<TcpStream>>> {
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    Client::connect(config.clone(), tcp.compat_write()).await
}

impl MssqlEndpoint {
    /// Connects (checking the server answers and the login works) and
    /// builds the pool.
    ///
    /// TLS: `disable` never encrypts; `require` encrypts everything and
    /// verifies the certificate against `tls_ca_file` or the system roots;
    /// `prefer` encrypts without verifying when the server can, and falls
    /// back to plain TDS when the TLS handshake fails.
    pub async fn connect(side: &'static str, conn: &Connection) -> Result<MssqlEndpoint> {
        let connect_error = |reason: String, source: Option<DbFailure>| EndpointError::Connect {
            side,
            target: conn.url.clone(),
            reason,
            source: source.map(|s| Box::new(s) as _),
        };
        let t = parse_url(&conn.url).map_err(|r| connect_error(r, None))?;
        let target = t.display();
        let port = match (t.port, &t.instance) {
            (Some(p), _) => p,
            (None, None) => 1433,
            (None, Some(instance)) => instance_port(&t.host, BROWSER_PORT, instance)
                .await
                .map_err(|r| connect_error(r, None))?,
        };
        let mut config = Config::new();
        config.host(&t.host);
        config.port(port);
        config.database(&t.database);
        config.application_name("crmsync");
        let password = conn
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .unwrap_or_default();
        config.authentication(AuthMethod::sql_server(&t.user, password));
        match conn.tls {
            Tls::Disable => config.encryption(EncryptionLevel::NotSupported),
            Tls::Prefer => {
                config.encryption(EncryptionLevel::Required);
                config.trust_cert();
            }
            Tls::Require => {
                config.encryption(EncryptionLevel::Required);
                if let Some(ca) = &conn.tls_ca {
                    config.trust_cert_ca(ca.path.display().to_string());
                }
            }
        }
        // One direct connection first, so that a failure says why.
        let mut first = connect_once(&config).await;
        if conn.tls == Tls::Prefer && first.as_ref().err().is_some_and(is_tls_failure) {
            config.encryption(EncryptionLevel::NotSupported);
            first = connect_once(&config).await;
        }
        if let Err(e) = first {
            let reason = match &e {
                tiberius::error::Error::Server(s) if s.code() == 18456 => {
                    "login failed: check the user in the url and the password \
                     (password_env / password_file)"
                        .to_string()
                }
                tiberius::error::Error::Server(s) if s.code() == 4060 => {
                    "the database in the url does not exist or the login may not open it"
                        .to_string()
                }
                e if is_tls_failure(e) => match conn.tls {
                    Tls::Require => "the TLS handshake failed: check that the server offers \
                                     TLS and that its certificate is signed by tls_ca_file \
                                     (or a system root) for this host name"
                        .to_string(),
                    _ => "the TLS handshake failed; set tls = \"disable\" if the server \
                          offers no TLS"
                        .to_string(),
                },
                _ => "check the host, port and that the server is running and reachable".into(),
            };
            return Err(connect_error(reason, Some(DbFailure::from(&e))));
        }
        drop(first);
        let pool = Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(30))
            .build(ConnectionManager::new(config))
            .await
            .map_err(|e| EndpointError::Connect {
                side,
                target: target.clone(),
                reason: "cannot open the connection pool".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(MssqlEndpoint {
            side,
            pool,
            target,
            natives: Mutex::new(HashMap::new()),
        })
    }

    fn query_error(&self, what: impl Into<String>, e: tiberius::error::Error) -> EndpointError {
        query_failure(self.side, what.into(), e)
    }

    async fn conn(&self) -> Result<bb8::PooledConnection<'_, ConnectionManager>> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_failure(self.side, e))
    }

    /// The declared type of `column` of `table`, when `table` was read
    /// through this endpoint.
    fn native(&self, table: &TableInfo, column: &str) -> Option<NativeType> {
        let natives = self.natives.lock().ok()?;
        natives
            .get(&cache_key(&table.schema, &table.name))?
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(column))
            .map(|(_, n)| n.clone())
    }

    /// The T-SQL type of `column`, for casts: the declared type, or one
    /// derived from the neutral type.
    fn declaration(&self, table: &TableInfo, column: &str) -> String {
        if let Some(n) = self.native(table, column) {
            return n.declaration();
        }
        match table.column(column).map(|c| c.ty.clone()) {
            Ok(SqlType::Timestamp { precision: 3 }) => "datetime".into(),
            Ok(SqlType::Timestamp { precision }) => format!("datetime2({precision})"),
            Ok(SqlType::TimestampTz) => "datetimeoffset".into(),
            Ok(SqlType::Date) => "date".into(),
            Ok(SqlType::Int { bytes: 8 }) => "bigint".into(),
            Ok(SqlType::Int { .. }) => "int".into(),
            _ => "sql_variant".into(),
        }
    }

    fn select_list(&self, scan: &Scan) -> String {
        scan.columns
            .iter()
            .map(
                |c| match self.native(&scan.table, c).and_then(|n| n.select_cast()) {
                    Some(ty) => format!("CAST({} AS {ty}) AS {}", quote(c), quote(c)),
                    None => quote(c),
                },
            )
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn filter_sql(scan: &Scan) -> String {
        scan.filter
            .as_ref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default()
    }

    fn param(&self, table: &TableInfo, column: &str, v: &Value) -> Param {
        Param::new(v.clone(), table.column(column).ok().map(|c| c.ty.clone()))
    }

    async fn rows(&self, sql: &str, params: &[Param], what: &str) -> Result<Vec<Vec<Value>>> {
        let mut conn = self.conn().await?;
        let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
        let rows = conn
            .query(sql, &refs)
            .await
            .map_err(|e| self.query_error(what, e))?
            .into_first_result()
            .await
            .map_err(|e| self.query_error(what, e))?;
        decode_rows(rows).map_err(|e| self.query_error(format!("decoding {what}"), e))
    }
}

fn query_failure(side: &'static str, what: String, e: tiberius::error::Error) -> EndpointError {
    let code = server_code(&e);
    EndpointError::Query {
        side,
        what,
        retryable: is_retryable(&e),
        missing_object: matches!(code, Some(208 | 207)),
        refused_row: code.is_some_and(|c| REFUSED_ROW.contains(&c)),
        source: Box::new(DbFailure::from(&e)),
    }
}

fn pool_failure(
    side: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> EndpointError {
    EndpointError::Query {
        side,
        what: "getting a connection from the pool".into(),
        retryable: true,
        missing_object: false,
        refused_row: false,
        source: Box::new(e),
    }
}

fn decode_rows(rows: Vec<Row>) -> tiberius::Result<Vec<Vec<Value>>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(|d| from_column(&d)).collect())
        .collect()
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Decimal(d) => i64::try_from(d.trunc()).ok(),
        _ => None,
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        other => other.key_string(),
    }
}

/// `@P1, @P2, …` from `start`.
fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("@P{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Endpoint for MssqlEndpoint {
    fn describe(&self) -> String {
        self.target.clone()
    }

    async fn table(&self, schema: Option<&str>, name: &str) -> Result<Option<TableInfo>> {
        // Unqualified names are looked up in dbo, as Sage CRM's tables are.
        let schema = schema.unwrap_or("dbo");
        let found = self
            .rows(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM INFORMATION_SCHEMA.TABLES \
                 WHERE LOWER(TABLE_NAME) = LOWER(@P1) AND LOWER(TABLE_SCHEMA) = LOWER(@P2)",
                &[
                    Param::new(Value::Text(name.into()), None),
                    Param::new(Value::Text(schema.into()), None),
                ],
                &format!("looking up table {name}"),
            )
            .await?;
        let (schema, name) = match found.as_slice() {
            [] => return Ok(None),
            [one] => (text_of(&one[0]), text_of(&one[1])),
            many => {
                let names: Vec<String> = many
                    .iter()
                    .map(|r| format!("{}.{}", text_of(&r[0]), text_of(&r[1])))
                    .collect();
                return Err(EndpointError::Schema(format!(
                    "table name {name} matches {} tables ({}); name it exactly as the catalog spells it",
                    names.len(),
                    names.join(", ")
                )));
            }
        };
        let object = format!("{}.{}", quote(&schema), quote(&name));
        let cols = self
            .rows(
                "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, \
                        NUMERIC_SCALE, DATETIME_PRECISION, IS_NULLABLE, COLUMN_DEFAULT \
                 FROM INFORMATION_SCHEMA.COLUMNS \
                 WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2 ORDER BY ORDINAL_POSITION",
                &[
                    Param::new(Value::Text(schema.clone()), None),
                    Param::new(Value::Text(name.clone()), None),
                ],
                &format!("reading the columns of {name}"),
            )
            .await?;
        let identity: Vec<String> = self
            .rows(
                "SELECT name FROM sys.columns WHERE object_id = OBJECT_ID(@P1) AND is_identity = 1",
                &[Param::new(Value::Text(object.clone()), None)],
                &format!("reading the identity column of {name}"),
            )
            .await?
            .iter()
            .map(|r| text_of(&r[0]))
            .collect();
        let mut info = TableInfo {
            schema: schema.clone(),
            name: name.clone(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            indexes: Vec::new(),
            row_estimate: 0,
        };
        let mut natives = Vec::new();
        for c in cols {
            let col = text_of(&c[0]);
            let native = NativeType {
                name: text_of(&c[1]).to_lowercase(),
                char_len: int_of(&c[2]).map(|n| n as i32),
                precision: int_of(&c[3]).map(|n| n as u8),
                scale: int_of(&c[4]).map(|n| n as i32),
                datetime_precision: int_of(&c[5]).map(|n| n as i16),
            };
            info.columns.push(ColumnInfo {
                name: col.clone(),
                ty: native.sql_type(),
                nullable: text_of(&c[6]).eq_ignore_ascii_case("YES"),
                has_default: !c[7].is_null(),
                identity: identity.iter().any(|i| i.eq_ignore_ascii_case(&col)),
            });
            natives.push((col, native));
        }
        let ixs = self
            .rows(
                "SELECT i.index_id, i.is_primary_key, c.name \
                 FROM sys.indexes i \
                 JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
                 JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
                 WHERE i.object_id = OBJECT_ID(@P1) AND ic.is_included_column = 0 \
                 ORDER BY i.index_id, ic.key_ordinal",
                &[Param::new(Value::Text(object.clone()), None)],
                &format!("reading the indexes of {name}"),
            )
            .await?;
        let mut current: Option<(i64, bool, Vec<String>)> = None;
        let finish = |ix: Option<(i64, bool, Vec<String>)>, info: &mut TableInfo| {
            if let Some((_, pk, cols)) = ix {
                if pk {
                    info.primary_key = cols.clone();
                }
                info.indexes.push(cols);
            }
        };
        for r in ixs {
            let id = int_of(&r[0]).unwrap_or(-1);
            let pk = int_of(&r[1]) == Some(1);
            let col = text_of(&r[2]);
            match &mut current {
                Some((cur, _, cols)) if *cur == id => cols.push(col),
                _ => {
                    finish(current.take(), &mut info);
                    current = Some((id, pk, vec![col]));
                }
            }
        }
        finish(current.take(), &mut info);
        // The estimate is advisory: a login that cannot read sys.partitions
        // (or a server without it) gets 0 rather than a failed lookup.
        match self
            .rows(
                "SELECT SUM(p.rows) FROM sys.partitions p \
                 WHERE p.object_id = OBJECT_ID(@P1) AND p.index_id IN (0, 1)",
                &[Param::new(Value::Text(object), None)],
                "estimating rows",
            )
            .await
        {
            Ok(r) => info.row_estimate = r.first().and_then(|r| int_of(&r[0])).unwrap_or(0),
            Err(e) => tracing::debug!("no row estimate for {name}: {e}"),
        }
        if let Ok(mut cache) = self.natives.lock() {
            cache.insert(cache_key(&schema, &name), natives);
        }
        Ok(Some(info))
    }

    async fn clock(&self, ty: &SqlType) -> Result<Value> {
        let row = self
            .rows(
                "SELECT GETDATE(), SYSDATETIME(), SYSDATETIMEOFFSET()",
                &[],
                "reading the server clock",
            )
            .await?;
        let row = row.into_iter().next().unwrap_or_default();
        let pick = |i: usize| row.get(i).cloned().unwrap_or(Value::Null);
        Ok(match ty {
            SqlType::TimestampTz => pick(2),
            // datetime (and smalldatetime) columns are stamped by GETDATE().
            SqlType::Timestamp { precision } if *precision <= 3 => match pick(0) {
                Value::Timestamp(t) => Value::Timestamp(floor_to_precision(t, *precision)),
                v => v,
            },
            SqlType::Timestamp { precision } => match pick(1) {
                Value::Timestamp(t) => Value::Timestamp(floor_to_precision(t, *precision)),
                v => v,
            },
            _ => pick(0),
        })
    }

    async fn read_changes(
        &self,
        scan: &Scan,
        lower: &Lower,
        upto: &Value,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let chg = quote(&scan.change);
        let key = quote(&scan.key);
        // Every bound is cast to the change column's own type: tiberius
        // sends chrono values as datetime2(7), and a datetime column
        // compared with a datetime2 is converted exactly (.857 becomes
        // .8566667), so an uncast `>=` misses or repeats rows.
        let ty = self.declaration(&scan.table, &scan.change);
        let bound = |n: usize| format!("CAST(@P{n} AS {ty})");
        let t = &scan.table;
        let mut params = vec![self.param(t, &scan.change, upto)];
        let cond = match lower {
            Lower::Start => String::new(),
            Lower::From(ts) => {
                params.push(self.param(t, &scan.change, ts));
                format!(" AND {chg} >= {}", bound(2))
            }
            Lower::After { ts, key: k } => {
                params.push(self.param(t, &scan.change, ts));
                params.push(self.param(t, &scan.key, k));
                format!(
                    " AND ({chg} > {b} OR ({chg} = {b} AND {key} > @P3))",
                    b = bound(2)
                )
            }
        };
        let sql = format!(
            "SELECT TOP ({limit}) {} FROM {} WHERE {chg} IS NOT NULL AND {chg} <= {}{cond}{} \
             ORDER BY {chg}, {key}",
            self.select_list(scan),
            qualified(t),
            bound(1),
            Self::filter_sql(scan),
        );
        self.rows(
            &sql,
            &params,
            &format!("reading changes of {}", t.qualified()),
        )
        .await
    }

    async fn fetch(&self, scan: &Scan, column: &str, keys: &[Value]) -> Result<Vec<Vec<Value>>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(MAX_PARAMS) {
            let sql = format!(
                "SELECT {} FROM {} WHERE {} IN ({}){}",
                self.select_list(scan),
                qualified(&scan.table),
                quote(column),
                placeholders(1, chunk.len()),
                Self::filter_sql(scan),
            );
            let params: Vec<Param> = chunk
                .iter()
                .map(|k| self.param(&scan.table, column, k))
                .collect();
            out.extend(
                self.rows(
                    &sql,
                    &params,
                    &format!("fetching rows of {}", scan.table.qualified()),
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn read_page(
        &self,
        scan: &Scan,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let key = quote(&scan.key);
        let (cond, params) = match after {
            Some(k) => (
                format!("{key} > @P1"),
                vec![self.param(&scan.table, &scan.key, k)],
            ),
            None => ("1 = 1".to_string(), Vec::new()),
        };
        let sql = format!(
            "SELECT TOP ({limit}) {} FROM {} WHERE {cond}{} ORDER BY {key}",
            self.select_list(scan),
            qualified(&scan.table),
            Self::filter_sql(scan),
        );
        self.rows(
            &sql,
            &params,
            &format!("reading {} in key order", scan.table.qualified()),
        )
        .await
    }

    async fn find(
        &self,
        scan: &Scan,
        conditions: &[(String, Value)],
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        for (c, v) in conditions {
            if v.is_null() {
                conds.push(format!("{} IS NULL", quote(c)));
            } else {
                params.push(self.param(&scan.table, c, v));
                conds.push(format!("{} = @P{}", quote(c), params.len()));
            }
        }
        let sql = format!(
            "SELECT TOP ({limit}) {} FROM {} WHERE {}{} ORDER BY {}",
            self.select_list(scan),
            qualified(&scan.table),
            if conds.is_empty() {
                "1 = 1".to_string()
            } else {
                conds.join(" AND ")
            },
            Self::filter_sql(scan),
            quote(&scan.key),
        );
        self.rows(
            &sql,
            &params,
            &format!("searching {}", scan.table.qualified()),
        )
        .await
    }

    async fn keys(&self, scan: &Scan) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT {} FROM {}",
            quote(&scan.key),
            qualified(&scan.table)
        );
        let rows = self
            .rows(
                &sql,
                &[],
                &format!("reading the keys of {}", scan.table.qualified()),
            )
            .await?;
        Ok(rows.iter().map(|r| r[0].key_string()).collect())
    }

    async fn count_null_changes(&self, scan: &Scan) -> Result<i64> {
        let sql = format!(
            "SELECT COUNT_BIG(*) FROM {} WHERE {} IS NULL{}",
            qualified(&scan.table),
            quote(&scan.change),
            Self::filter_sql(scan)
        );
        let rows = self
            .rows(&sql, &[], "counting rows without a change time")
            .await?;
        Ok(rows.first().and_then(|r| int_of(&r[0])).unwrap_or(0))
    }

    async fn column_range(
        &self,
        table: &TableInfo,
        column: &str,
    ) -> Result<Option<(Value, Value)>> {
        let c = quote(column);
        let sql = format!("SELECT MIN({c}), MAX({c}) FROM {}", qualified(table));
        let mut rows = self
            .rows(&sql, &[], &format!("reading the range of {column}"))
            .await?;
        Ok(match rows.pop() {
            Some(mut r) if r.len() == 2 && !r[0].is_null() => {
                let hi = r.pop().unwrap_or(Value::Null);
                let lo = r.pop().unwrap_or(Value::Null);
                Some((lo, hi))
            }
            _ => None,
        })
    }

    async fn filter_accepts(
        &self,
        scan: &Scan,
        values: &[(String, Value)],
    ) -> Result<Option<bool>> {
        let Some(filter) = &scan.filter else {
            return Ok(Some(true));
        };
        // A one-row derived table named like the table, every column NULL
        // except the given ones, run through the filter.
        let mut params = Vec::new();
        let mut cols = Vec::new();
        for c in &scan.table.columns {
            let ty = self.declaration(&scan.table, &c.name);
            match values.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c.name)) {
                Some((_, v)) if !v.is_null() => {
                    params.push(self.param(&scan.table, &c.name, v));
                    cols.push(format!(
                        "CAST(@P{} AS {ty}) AS {}",
                        params.len(),
                        quote(&c.name)
                    ));
                }
                _ => cols.push(format!("CAST(NULL AS {ty}) AS {}", quote(&c.name))),
            }
        }
        let sql = format!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM (SELECT {}) AS {} WHERE {filter}) \
             THEN 1 ELSE 0 END",
            cols.join(", "),
            quote(&scan.table.name)
        );
        match self.rows(&sql, &params, "testing the filter").await {
            Ok(r) => Ok(r.first().and_then(|r| int_of(&r[0])).map(|i| i == 1)),
            Err(e) => {
                tracing::debug!("cannot test the filter on a row of defaults: {e:?}");
                Ok(None)
            }
        }
    }

    async fn check_filter(&self, scan: &Scan) -> Result<()> {
        let sql = format!(
            "SELECT TOP (0) 1 FROM {} WHERE 1 = 1{}",
            qualified(&scan.table),
            Self::filter_sql(scan)
        );
        let mut conn = self.conn().await?;
        let res = match conn.simple_query(&sql).await {
            Ok(s) => s.into_results().await.map(|_| ()),
            Err(e) => Err(e),
        };
        res.map_err(|e| {
            EndpointError::Schema(format!(
                "the filter {:?} is not valid for {}: {}",
                scan.filter.as_deref().unwrap_or(""),
                scan.table.qualified(),
                DbFailure::from(&e)
            ))
        })
    }

    fn bulk_source(&self) -> &dyn super::bulk::BulkSource {
        self
    }

    async fn apply(&self, batch: &WriteBatch, links: Option<&LinkBatch>) -> Result<Applied> {
        if links.is_some() {
            // The plan keeps crmsync's state on PostgreSQL, so the engine
            // never asks a SQL Server endpoint to write links.
            return Err(EndpointError::Schema(
                "internal error: links to write on SQL Server, which never holds the state store"
                    .into(),
            ));
        }
        if batch.table.name.eq_ignore_ascii_case(TRIGGER_MAINTAINED) {
            return Err(EndpointError::Schema(format!(
                "{} is maintained by Sage CRM's triggers; crmsync never writes it",
                batch.table.qualified()
            )));
        }
        let table = batch.table.qualified();
        let mut conn = self.conn().await?;
        // XACT_ABORT: any error rolls the whole transaction back, so a
        // failed batch leaves nothing behind.
        conn.simple_query("SET XACT_ABORT ON; BEGIN TRANSACTION")
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?
            .into_results()
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?;
        let result = self.apply_in(&mut conn, batch, &table).await;
        match result {
            Ok(applied) => {
                conn.simple_query("COMMIT TRANSACTION")
                    .await
                    .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?
                    .into_results()
                    .await
                    .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?;
                Ok(applied)
            }
            Err(e) => {
                let rollback = async {
                    conn.simple_query("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
                        .await?
                        .into_results()
                        .await
                };
                if let Err(r) = rollback.await {
                    tracing::debug!("rollback after a failed batch: {}", DbFailure::from(&r));
                }
                Err(e)
            }
        }
    }
}

impl MssqlEndpoint {
    async fn apply_in(
        &self,
        conn: &mut Client<tokio_util::compat::Compat<TcpStream>>,
        batch: &WriteBatch,
        table: &str,
    ) -> Result<Applied> {
        let mut inserted_keys = Vec::with_capacity(batch.inserts.len());
        for ins in &batch.inserts {
            let (sql, params, given) = self.insert_sql(batch, &ins.columns);
            let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
            let what = format!("inserting into {table}");
            let rows = conn
                .query(sql, &refs)
                .await
                .map_err(|e| self.query_error(what.clone(), e))?
                .into_results()
                .await
                .map_err(|e| self.query_error(what.clone(), e))?;
            let key = match given {
                Some(k) => k,
                None => {
                    let row = rows.into_iter().flatten().next().ok_or_else(|| {
                        EndpointError::Schema(format!("an insert into {table} returned no key"))
                    })?;
                    let v = row
                        .into_iter()
                        .next()
                        .map(|d| from_column(&d))
                        .transpose()
                        .map_err(|e| self.query_error("decoding an inserted key", e))?
                        .unwrap_or(Value::Null);
                    // SCOPE_IDENTITY() is numeric(38,0): back to the key's type.
                    match batch.table.column(&batch.key) {
                        Ok(c) => v.clone().coerce(&c.ty, None, false).unwrap_or(v),
                        Err(_) => v,
                    }
                }
            };
            inserted_keys.push(key);
        }
        for up in &batch.updates {
            let mut params = Vec::new();
            let sets: Vec<String> = up
                .set
                .iter()
                .map(|(c, a)| {
                    format!(
                        "{} = {}",
                        quote(c),
                        self.assign_expr(batch, c, a, &mut params)
                    )
                })
                .collect();
            params.push(self.param(&batch.table, &batch.key, &up.key));
            let sql = format!(
                "UPDATE {} SET {} WHERE {} = @P{}",
                qualified(&batch.table),
                sets.join(", "),
                quote(&batch.key),
                params.len()
            );
            let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
            conn.execute(sql, &refs)
                .await
                .map_err(|e| self.query_error(format!("updating {table}"), e))?;
        }
        for chunk in batch.deletes.chunks(MAX_PARAMS) {
            let sql = format!(
                "DELETE FROM {} WHERE {} IN ({})",
                qualified(&batch.table),
                quote(&batch.key),
                placeholders(1, chunk.len())
            );
            let params: Vec<Param> = chunk
                .iter()
                .map(|k| self.param(&batch.table, &batch.key, k))
                .collect();
            let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
            conn.execute(sql, &refs)
                .await
                .map_err(|e| self.query_error(format!("deleting from {table}"), e))?;
        }
        Ok(Applied { inserted_keys })
    }

    /// The statement of one insert, its parameters, and the key when the
    /// insert gives it itself.
    ///
    /// The new key comes back by `SELECT @id` (eware_get_identity_id), by
    /// `SCOPE_IDENTITY()` (IDENTITY), or else by `OUTPUT INSERTED`: Sage
    /// CRM's tables carry triggers, and SQL Server refuses `OUTPUT` without
    /// `INTO` on a table with enabled triggers (error 334), so it is used
    /// only where nothing else can tell the key.
    fn insert_sql(
        &self,
        batch: &WriteBatch,
        cols: &[(String, Assign)],
    ) -> (String, Vec<Param>, Option<Value>) {
        let mut params = Vec::new();
        let mut prefix = String::new();
        let mut names = Vec::new();
        let mut exprs = Vec::new();
        let mut given = None;
        let mut allocated = false;
        for (c, a) in cols {
            names.push(quote(c));
            match a {
                Assign::AllocateId { table } => {
                    params.push(Param::new(Value::Text(table.clone()), None));
                    prefix = format!(
                        "DECLARE @id int; EXEC @id = eware_get_identity_id @P{}; ",
                        params.len()
                    );
                    allocated = c.eq_ignore_ascii_case(&batch.key);
                    exprs.push("@id".to_string());
                }
                other => {
                    if c.eq_ignore_ascii_case(&batch.key) {
                        if let Assign::Value(v) = other {
                            given = Some(v.clone());
                        }
                    }
                    exprs.push(self.assign_expr(batch, c, other, &mut params));
                }
            }
        }
        let identity = batch.table.column(&batch.key).is_ok_and(|k| k.identity);
        let table = qualified(&batch.table);
        let key = quote(&batch.key);
        let (output, suffix) = if given.is_some() {
            (String::new(), String::new())
        } else if allocated {
            (String::new(), "; SELECT @id".to_string())
        } else if identity {
            (String::new(), "; SELECT SCOPE_IDENTITY()".to_string())
        } else {
            (format!(" OUTPUT INSERTED.{key}"), String::new())
        };
        let body = if names.is_empty() {
            format!("INSERT INTO {table}{output} DEFAULT VALUES")
        } else {
            format!(
                "INSERT INTO {table} ({}){output} VALUES ({})",
                names.join(", "),
                exprs.join(", ")
            )
        };
        (format!("{prefix}{body}{suffix}"), params, given)
    }

    fn assign_expr(
        &self,
        batch: &WriteBatch,
        column: &str,
        a: &Assign,
        params: &mut Vec<Param>,
    ) -> String {
        match a {
            Assign::Value(v) => {
                params.push(self.param(&batch.table, column, v));
                format!("@P{}", params.len())
            }
            Assign::Now => {
                let native = self.native(&batch.table, column).map(|n| n.name);
                match native.as_deref() {
                    Some("datetimeoffset") => "SYSDATETIMEOFFSET()".into(),
                    Some("datetime2") => "SYSDATETIME()".into(),
                    Some("date") => "CAST(GETDATE() AS date)".into(),
                    _ => "GETDATE()".into(),
                }
            }
            // Ids are allocated only for the key of an insert, which
            // insert_sql handles before the INSERT; `@id` is its variable.
            Assign::AllocateId { .. } => "@id".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_user_host_port_and_database() {
        assert_eq!(
            parse_url("mssql://sync@crm-sql01:1433/CRM").unwrap(),
            Target {
                user: "sync".into(),
                host: "crm-sql01".into(),
                instance: None,
                port: Some(1433),
                database: "CRM".into()
            }
        );
        assert_eq!(parse_url("mssql://sa@db/CRM").unwrap().port, None);
        let named = parse_url("mssql://sa@db\\SQLEXPRESS/CRM").unwrap();
        assert_eq!(
            (named.host.as_str(), named.instance.as_deref(), named.port),
            ("db", Some("SQLEXPRESS"), None)
        );
        assert_eq!(named.display(), "mssql://sa@db\\SQLEXPRESS/CRM");
        let both = parse_url("mssql://sa@db\\CRM:50123/CRM").unwrap();
        assert_eq!(
            (both.instance.as_deref(), both.port),
            (Some("CRM"), Some(50123))
        );
        assert!(parse_url("mssql://sa@db\\/CRM").is_err());
        assert!(parse_url("mssql://sa@db\\bad name/CRM").is_err());
        assert!(parse_url("mssql://db:1433/CRM").is_err());
        assert!(parse_url("mssql://sa@db:x/CRM").is_err());
        assert!(parse_url("mssql://sa@db:1433").is_err());
    }

    #[test]
    fn browser_replies_give_the_instance_port() {
        let reply = |text: &str| {
            let mut r = vec![0x05];
            r.extend_from_slice(&(text.len() as u16).to_le_bytes());
            r.extend_from_slice(text.as_bytes());
            r
        };
        let one = reply(
            "ServerName;CRM-SQL01;InstanceName;SQLEXPRESS;IsClustered;No;\
             Version;15.0.2000.5;tcp;49721;;",
        );
        assert_eq!(browser_reply_port(&one, "sqlexpress"), Some(49721));
        assert_eq!(browser_reply_port(&one, "OTHER"), None);
        let two = reply(
            "ServerName;H;InstanceName;A;IsClustered;No;Version;16.0;tcp;1500;;\
             ServerName;H;InstanceName;CRM;IsClustered;No;Version;16.0;np;\\\\H\\pipe;tcp;1501;;",
        );
        assert_eq!(browser_reply_port(&two, "CRM"), Some(1501));
        // Named pipes only: no TCP port to connect to.
        let pipes = reply("ServerName;H;InstanceName;P;IsClustered;No;Version;16.0;np;x;;");
        assert_eq!(browser_reply_port(&pipes, "P"), None);
        assert_eq!(browser_reply_port(&[0x04, 0, 0], "P"), None);
        assert_eq!(browser_reply_port(&[], "P"), None);
    }

    #[test]
    fn identifiers_are_bracketed() {
        assert_eq!(quote("Comp_Name"), "[Comp_Name]");
        assert_eq!(quote("a]b"), "[a]]b]");
    }

    #[test]
    fn messages_keep_no_row_data() {
        let dup = "Violation of PRIMARY KEY constraint 'PK_X'. Cannot insert duplicate key \
                   in object 'dbo.X'. The duplicate key value is (secret).";
        assert_eq!(
            first_sentence(dup),
            "Violation of PRIMARY KEY constraint 'PK_X'."
        );
        assert!(value_quoting_text(245).is_some());
    }
}
