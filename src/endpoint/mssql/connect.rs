//! Connecting to SQL Server: the url taken apart, the login and TLS
//! settings, the SQL Server Browser lookup of a named instance's port, and
//! the pool that [`MssqlEndpoint::connect`] builds.

use super::error::DbFailure;
use super::MssqlEndpoint;
use crate::endpoint::{EndpointError, Result};
use crate::plan::{Connection, Tls};
use bb8::Pool;
use bb8_tiberius::ConnectionManager;
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

/// The session options SQL Server requires of a statement that writes into
/// a table with a filtered index, an indexed view or an index on a
/// computed column ("SET Options That Affect Results" in "Create indexed
/// views", and "CREATE INDEX (Transact-SQL)"), error 1934 otherwise: the
/// state schema's `conflicts` table has one, and an ERP's tables may.
/// tiberius' login asks for the ANSI defaults but leaves
/// `CONCAT_NULL_YIELDS_NULL` and `ARITHABORT` to the database's defaults,
/// so every new connection sets them all once.
const SESSION_OPTIONS: &str = "SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; \
     SET ARITHABORT ON; SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; \
     SET NUMERIC_ROUNDABORT OFF";

/// Sets [`SESSION_OPTIONS`] on each connection the pool opens.
#[derive(Debug)]
struct SessionOptions;

impl bb8::CustomizeConnection<bb8_tiberius::rt::Client, bb8_tiberius::Error> for SessionOptions {
    fn on_acquire<'a>(
        &'a self,
        conn: &'a mut bb8_tiberius::rt::Client,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<(), bb8_tiberius::Error>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            conn.simple_query(SESSION_OPTIONS)
                .await?
                .into_results()
                .await?;
            Ok(())
        })
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
            .connection_customizer(Box::new(SessionOptions))
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
            identity_descends: Mutex::new(HashMap::new()),
        })
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
}
