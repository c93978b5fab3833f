//! Throwaway PostgreSQL for tests: one private cluster per test process
//! (initdb into a temp dir, a free port), or the server named by
//! `CRMSYNC_TEST_PG_URL`, and a fresh randomly named database per test.
//!
//! The private cluster is started by a small shell watchdog that stops it
//! when the test process goes away, even if that process is killed.
//!
//! For TLS tests, `tls_server` starts a second private cluster with
//! `ssl = on` and a server certificate signed by a throwaway CA.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Names the server the tests may use instead of starting their own.
pub const URL_ENV: &str = "CRMSYNC_TEST_PG_URL";

/// A running server the tests can create databases in.
#[derive(Debug, Clone)]
pub struct Server {
    /// Connection URL of the maintenance database (`postgres`).
    pub admin_url: String,
    /// Where the private cluster lives, if we started one.
    pub data_dir: Option<PathBuf>,
}

/// The private cluster with `ssl = on`.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub server: Server,
    /// The throwaway CA that signed the server certificate (PEM); the
    /// certificate names `localhost` and `127.0.0.1`.
    pub ca_pem: String,
    /// A client certificate for [`CERT_USER`], signed by the same CA, and
    /// its key (PEM).
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// The role of the TLS cluster that may log in over TCP only with a
/// client certificate naming it (`hostssl ... cert`), never without. Its
/// URLs come from [`as_cert_user`].
pub const CERT_USER: &str = "certuser";

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static TLS_SERVER: OnceLock<Result<TlsServer, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server for this test process, started on first use.
pub fn server() -> &'static Server {
    match SERVER.get_or_init(|| match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Ok(Server {
            admin_url: url,
            data_dir: None,
        }),
        _ => start_private_cluster(),
    }) {
        Ok(s) => s,
        Err(e) => panic!("cannot start a throwaway PostgreSQL for the tests: {e}"),
    }
}

/// The TLS cluster for this test process, started on first use. It is
/// always a private cluster (also when `CRMSYNC_TEST_PG_URL` is set), since
/// its certificate must be one the tests made.
pub fn tls_server() -> &'static TlsServer {
    match TLS_SERVER.get_or_init(start_tls_cluster) {
        Ok(s) => s,
        Err(e) => panic!("cannot start a throwaway PostgreSQL with TLS for the tests: {e}"),
    }
}

/// A fresh, empty database with a random name; dropped by nobody (the
/// private cluster goes away with the test process).
pub async fn fresh_database(prefix: &str) -> String {
    fresh_database_on(server(), prefix).await
}

/// Like `fresh_database`, on `server`.
pub async fn fresh_database_on(server: &Server, prefix: &str) -> String {
    let name = format!(
        "{}_{}_{}_{}",
        prefix,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
    .to_lowercase();
    let (client, conn) = tokio_postgres::connect(&server.admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to test server: {e}"));
    let handle = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"
        ))
        .await
        .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
    drop(client);
    let _ = handle.await;
    with_database(&server.admin_url, &name)
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

fn pg_bin_dir() -> Result<PathBuf, String> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return Ok(dir);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or_else(|| {
        "no PostgreSQL server binaries found (initdb); install the Debian package \
         'postgresql' or set CRMSYNC_TEST_PG_URL"
            .to_string()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `program args` as the `postgres` user when we are root (initdb and
/// postgres refuse to run as root).
fn command_as_pg_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn start_private_cluster() -> Result<Server, String> {
    start_cluster(|_, _| Ok(()), "")
}

/// A private cluster with `ssl = on`: a CA and a server certificate made
/// here, written into the data directory before the server starts.
fn start_tls_cluster() -> Result<TlsServer, String> {
    let certs = make_certificates().map_err(|e| format!("rcgen: {e}"))?;
    let (ca_pem, cert_pem, key_pem) = (&certs.ca, &certs.server_cert, &certs.server_key);
    let server = start_cluster(
        |data, root| {
            // The certificate rule comes first: the first matching line of
            // pg_hba.conf decides.
            let hba = data.join("pg_hba.conf");
            let rules = std::fs::read_to_string(&hba)
                .map_err(|e| format!("read {}: {e}", hba.display()))?;
            std::fs::write(
                &hba,
                format!("hostssl all {CERT_USER} 127.0.0.1/32 cert\nhost all {CERT_USER} 127.0.0.1/32 reject\n{rules}"),
            )
            .map_err(|e| format!("write {}: {e}", hba.display()))?;
            // The server refuses a key readable by others.
            for (name, text) in [
                ("server.crt", cert_pem),
                ("server.key", key_pem),
                ("root.crt", ca_pem),
            ] {
                let path = data.join(name);
                std::fs::write(&path, text)
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("chmod {}: {e}", path.display()))?;
                if root {
                    chown_postgres(&path)?;
                }
            }
            Ok(())
        },
        "-c ssl=on -c ssl_ca_file=root.crt",
    )?;
    Ok(TlsServer {
        server,
        ca_pem: certs.ca,
        client_cert_pem: certs.client_cert,
        client_key_pem: certs.client_key,
    })
}

/// Creates [`CERT_USER`] (a superuser) on the TLS cluster, once, and
/// returns `url` (a database of that cluster) for that role.
pub async fn as_cert_user(url: &str) -> String {
    let admin = &tls_server().server.admin_url;
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {CERT_USER} LOGIN SUPERUSER; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .await
        .expect("create the certificate role");
    let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{CERT_USER}@{host}")
}

/// A fresh private key (PEM) that belongs to no certificate.
pub fn unrelated_key_pem() -> String {
    rcgen::KeyPair::generate()
        .expect("generate a key")
        .serialize_pem()
}

/// The throwaway PKI of the TLS cluster, all PEM.
struct Certificates {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn make_certificates() -> Result<Certificates, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "crmsync test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_cert = leaf.signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, CERT_USER);
    let client_cert = client.signed_by(&client_key, &issuer)?;
    Ok(Certificates {
        ca: ca_cert.pem(),
        server_cert: leaf_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

fn chown_postgres(path: &Path) -> Result<(), String> {
    let st = Command::new("chown")
        .args(["postgres:", &path.to_string_lossy()])
        .status()
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("chown postgres {} failed", path.display()))
    }
}

/// Starts a cluster: initdb, then `setup(data_dir, running_as_root)`, then
/// postgres with the usual options plus `extra_options`.
fn start_cluster(
    setup: impl FnOnce(&Path, bool) -> Result<(), String>,
    extra_options: &str,
) -> Result<Server, String> {
    let bin = pg_bin_dir()?;
    let root = is_root();
    let base = std::env::temp_dir().join(format!(
        "crmsync-test-pg-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let data = base.join("data");
    std::fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
    if root {
        chown_postgres(&base)?;
    }
    let out = command_as_pg_user(&bin.join("initdb"), root)
        .args(["-D", &data.to_string_lossy()])
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    setup(&data, root)?;
    let port = free_port()?;
    let postgres = bin.join("postgres");
    let log = base.join("postgres.log");
    // The watchdog: start postgres, stop it (fast shutdown) when the test
    // process is gone, then remove the cluster.
    let script = format!(
        "{postgres} -D '{data}' -p {port} -k '{base}' -c listen_addresses=127.0.0.1 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_connections=300 -c shared_buffers=128MB {extra_options} >'{log}' 2>&1 &\n\
         pg=$!\n\
         while [ -d /proc/{parent} ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done\n\
         kill -INT $pg 2>/dev/null; wait $pg 2>/dev/null; rm -rf '{base}'\n",
        postgres = postgres.display(),
        data = data.display(),
        base = base.display(),
        log = log.display(),
        parent = std::process::id(),
    );
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start postgres: {e}"))?;
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(true);
            if ready {
                break;
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("postgres did not start within 60 s: {log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Server {
        admin_url,
        data_dir: Some(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            with_database("postgres://u@h:1/postgres?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }

    #[tokio::test]
    async fn fresh_databases_are_distinct_and_usable() {
        let a = fresh_database("tk").await;
        let b = fresh_database("tk").await;
        assert_ne!(a, b);
        let (client, conn) = tokio_postgres::connect(&a, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap();
        let name: String = row.get(0);
        assert!(a.ends_with(&name));
    }
}
