//! The validated, resolved configuration. `Plan::build` is pure (it reads
//! only the environment, password files and CA files) and collects every problem in
//! the file before any connection opens.

use crate::config::{self, RawConfig, RawEntity, RawField};
use crate::crm;
use crate::value::Value;
use chrono_tz::Tz;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    CrmToExternal,
    ExternalToCrm,
    Both,
}

impl Direction {
    pub fn crm_to_external(self) -> bool {
        matches!(self, Direction::CrmToExternal | Direction::Both)
    }
    pub fn external_to_crm(self) -> bool {
        matches!(self, Direction::ExternalToCrm | Direction::Both)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdStrategy {
    Auto,
    Identity,
    StoredProcedure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmDelete {
    Soft,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalDelete {
    Hard,
    Soft,
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    CrmWins,
    ExternalWins,
    NewestWins,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTruncate {
    Reject,
    Truncate,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// Sage CRM checkbox: 'Y' / NULL on the CRM side, boolean outside.
    Checkbox,
    /// Leading and trailing white space removed on the way out of CRM.
    Trim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Crm,
    External,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Crm => "crm",
            Side::External => "external",
        }
    }

    /// The side across from this one.
    pub fn other(self) -> Side {
        match self {
            Side::Crm => Side::External,
            Side::External => Side::Crm,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Mssql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Disable,
    Prefer,
    Require,
}

/// How to reach one database. `Debug` shows the password as redacted.
#[derive(Debug, Clone)]
pub struct Connection {
    pub kind: DbKind,
    /// The URL as configured; it never contains a password.
    pub url: String,
    pub password: Option<SecretString>,
    pub timezone: Tz,
    pub tls: Tls,
    /// The certificates of `tls_ca_file`, read during validation; only
    /// with `tls = "require"`.
    pub tls_ca: Option<TlsCa>,
    /// `tls_cert_file` and `tls_key_file`, read during validation.
    pub tls_client: Option<TlsClient>,
}

/// The certificate and key a PostgreSQL connection authenticates with.
/// `Debug` shows the files, never the key.
#[derive(Clone)]
pub struct TlsClient {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the certificate chain and the private key, and checks that
    /// they belong together; the message names the file that is wrong.
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<TlsClient, String> {
        let certs = read_certificates("tls_cert_file", cert_path)?;
        // As libpq does: a key others may read is refused.
        let meta = std::fs::metadata(key_path)
            .map_err(|e| format!("tls_key_file {}: cannot read it ({e})", key_path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o037 != 0 {
                return Err(format!(
                    "tls_key_file {}: group or others may access it (mode {:o}); \
                     chmod 600 it (or 640 with a group only crmsync's user is in)",
                    key_path.display(),
                    mode & 0o777
                ));
            }
        }
        let key_pem = std::fs::read(key_path)
            .map_err(|e| format!("tls_key_file {}: cannot read it ({e})", key_path.display()))?;
        // The parser's own error could quote the file; it is not repeated.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            format!(
                "tls_key_file {}: holds no PEM private key (expected a -----BEGIN \
                 PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block, unencrypted)",
                key_path.display()
            )
        })?;
        let client = TlsClient {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            certs,
            key: Arc::new(key),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS ({e})"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(client.certs.clone(), client.key.clone_key())
            .map_err(|e| {
                format!(
                    "tls_cert_file {} and tls_key_file {} do not make a usable client \
                     certificate ({e}); the key must be the certificate's own",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
        Ok(client)
    }
}

/// The CA certificates a `require` connection trusts instead of the
/// system roots.
#[derive(Clone)]
pub struct TlsCa {
    /// The file as resolved against the config file's directory.
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCa")
            .field("path", &self.path)
            .field("certs", &self.certs.len())
            .finish()
    }
}

/// The PEM certificates of the file that config key `key` names; the
/// message names the key and says what is wrong with the file.
fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{key} {}: cannot read it ({e})", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not a PEM certificate file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

impl TlsCa {
    /// Reads `path` as PEM certificates; the message says what is wrong
    /// with the file.
    pub fn read(path: &Path) -> Result<TlsCa, String> {
        let certs = read_certificates("tls_ca_file", path)?;
        let mut roots = rustls::RootCertStore::empty();
        let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
        if bad > 0 {
            return Err(format!(
                "tls_ca_file {}: {bad} of its {} certificates cannot be used as a CA \
                 (not a valid X.509 certificate)",
                path.display(),
                certs.len()
            ));
        }
        Ok(TlsCa {
            path: path.to_path_buf(),
            certs,
        })
    }
}

/// A table name as configured, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FieldPlan {
    pub crm: String,
    pub external: String,
    /// (CRM value, external value) pairs.
    pub values: Vec<(String, String)>,
    pub direction: Direction,
    pub transform: Transform,
    pub on_truncate: OnTruncate,
}

#[derive(Debug, Clone)]
pub struct EntityPlan {
    pub name: String,
    pub crm_table: TableRef,
    pub crm_prefix: String,
    /// Derived from Sage CRM's naming when not configured; `None` means
    /// "take the primary key from the catalog".
    pub crm_key: Option<String>,
    pub crm_updated_column: String,
    pub crm_deleted_column: String,
    pub crm_link_column: Option<String>,
    pub crm_filter: Option<String>,
    pub external_table: TableRef,
    pub external_key: String,
    pub external_crm_id_column: Option<String>,
    pub external_updated_column: String,
    pub external_deleted_column: Option<String>,
    pub external_filter: Option<String>,
    pub direction: Direction,
    pub insert_into_crm: bool,
    pub insert_into_external: bool,
    pub update_into_crm: bool,
    pub update_into_external: bool,
    pub delete_into_crm: CrmDelete,
    pub delete_into_external: ExternalDelete,
    pub conflict: ConflictPolicy,
    pub secterr: i64,
    pub crm_defaults: Vec<(String, Value)>,
    pub external_defaults: Vec<(String, Value)>,
    pub match_on: Vec<(String, String)>,
    pub fields: Vec<FieldPlan>,
    pub batch_size: usize,
    pub settle: Duration,
    pub overlap: Duration,
    pub max_delete_ratio: f64,
    pub on_truncate: OnTruncate,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    pub crm: Connection,
    pub crm_user_id: i64,
    pub id_strategy: IdStrategy,
    pub external: Connection,
    pub state_side: Side,
    pub state_schema: String,
    pub entities: Vec<EntityPlan>,
}

impl Plan {
    pub fn connection(&self, side: Side) -> &Connection {
        match side {
            Side::Crm => &self.crm,
            Side::External => &self.external,
        }
    }

    pub fn entity(&self, name: &str) -> Option<&EntityPlan> {
        self.entities
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }
}

/// Everything wrong with a config file, each naming where.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{} in the configuration",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {p}", self.file.display())?;
        }
        Ok(())
    }
}

struct Collector {
    problems: Vec<String>,
}

impl Collector {
    fn push(&mut self, at: &str, msg: impl fmt::Display) {
        if at.is_empty() {
            self.problems.push(msg.to_string());
        } else {
            self.problems.push(format!("{at}: {msg}"));
        }
    }

    fn choice<T: Copy>(
        &mut self,
        at: &str,
        key: &str,
        value: Option<&str>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(v) = value else { return default };
        match options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(v))
        {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(
                    at,
                    format!("{key} = {v:?} is not one of {}", names.join(" | ")),
                );
                default
            }
        }
    }

    fn duration(&mut self, at: &str, key: &str, value: Option<&str>, default: &str) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    at,
                    format!(
                        "{key} = {text:?} is not a duration ({e}); write e.g. \"2s\" or \"5m\""
                    ),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    fn identifier(&mut self, at: &str, key: &str, name: &str) {
        if !is_identifier(name) {
            self.push(
                at,
                format!(
                    "{key} = {name:?} is not a plain column or table name \
                     (letters, digits, _ $ # only, not starting with a digit)"
                ),
            );
        }
    }

    fn filter(&mut self, at: &str, key: &str, sql: &Option<String>) {
        if let Some(f) = sql {
            if f.trim().is_empty() {
                self.push(
                    at,
                    format!("{key} is empty; remove it or write a predicate"),
                );
            } else if f.contains(';') || f.contains("--") || f.contains("/*") {
                self.push(
                    at,
                    format!("{key} must be a single predicate without ';' or comments"),
                );
            }
        }
    }
}

/// A plain identifier, as both SQL Server and PostgreSQL accept unquoted.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {}
        _ => return false,
    }
    s.len() <= 128 && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '#'))
}

fn table_ref(c: &mut Collector, at: &str, key: &str, text: &str) -> TableRef {
    let parts: Vec<&str> = text.split('.').collect();
    let tr = match parts.as_slice() {
        [name] => TableRef {
            schema: None,
            name: name.to_string(),
        },
        [schema, name] => TableRef {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        },
        _ => {
            c.push(at, format!("{key} = {text:?}: write table or schema.table"));
            return TableRef {
                schema: None,
                name: text.to_string(),
            };
        }
    };
    if let Some(s) = &tr.schema {
        c.identifier(at, key, s);
    }
    c.identifier(at, key, &tr.name);
    tr
}

/// The keys `[crm]` and `[external]` share.
struct ConnectionKeys<'a> {
    url: &'a str,
    password_env: &'a Option<String>,
    password_file: &'a Option<PathBuf>,
    timezone: &'a Option<String>,
    tls: &'a Option<String>,
    tls_ca_file: &'a Option<PathBuf>,
    tls_cert_file: &'a Option<PathBuf>,
    tls_key_file: &'a Option<PathBuf>,
}

fn connection(
    c: &mut Collector,
    at: &str,
    keys: ConnectionKeys<'_>,
    config_dir: &Path,
) -> Connection {
    let ConnectionKeys {
        url,
        password_env,
        password_file,
        timezone,
        tls,
        tls_ca_file,
        tls_cert_file,
        tls_key_file,
    } = keys;
    let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        DbKind::Postgres
    } else if url.starts_with("mssql://") || url.starts_with("sqlserver://") {
        DbKind::Mssql
    } else {
        c.push(
            at,
            "url must start with postgres:// or mssql:// (e.g. \"mssql://sync@crm-sql01:1433/CRM\")",
        );
        DbKind::Postgres
    };
    if url_has_password(url) {
        c.push(
            at,
            "url contains a password; remove it and use password_env or password_file",
        );
    }
    let password = match (password_env, password_file) {
        (Some(_), Some(_)) => {
            c.push(at, "set password_env or password_file, not both");
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(SecretString::from(p)),
            Err(_) => {
                c.push(
                    at,
                    format!("password_env names {var}, which is not set in the environment; export it or use password_file"),
                );
                None
            }
        },
        (None, Some(file)) => {
            let path = resolve(config_dir, file);
            match std::fs::read_to_string(&path) {
                Ok(p) => {
                    let p = p.trim_end_matches(['\r', '\n']).to_string();
                    (!p.is_empty()).then(|| SecretString::from(p))
                }
                Err(e) => {
                    c.push(
                        at,
                        format!("password_file {}: cannot read it ({e})", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };
    let tz_text = timezone.as_deref().unwrap_or(config::DEFAULT_TIMEZONE);
    let timezone = match tz_text.parse::<Tz>() {
        Ok(tz) => tz,
        Err(_) => {
            c.push(
                at,
                format!("timezone = {tz_text:?} is not an IANA time zone name (e.g. \"Europe/London\", \"UTC\")"),
            );
            Tz::UTC
        }
    };
    let tls = c.choice(
        at,
        "tls",
        tls.as_deref(),
        Tls::Prefer,
        &[
            ("disable", Tls::Disable),
            ("prefer", Tls::Prefer),
            ("require", Tls::Require),
        ],
    );
    let tls_ca = tls_ca_file.as_ref().and_then(|file| {
        if tls != Tls::Require {
            c.push(
                at,
                "tls_ca_file is set, but only tls = \"require\" verifies the server's \
                 certificate; set tls = \"require\" or remove tls_ca_file",
            );
            return None;
        }
        match TlsCa::read(&resolve(config_dir, file)) {
            Ok(ca) => Some(ca),
            Err(msg) => {
                c.push(at, msg);
                None
            }
        }
    });
    let tls_client = match (tls_cert_file, tls_key_file) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            c.push(
                at,
                "set tls_cert_file and tls_key_file together: a client certificate needs its key",
            );
            None
        }
        (Some(_), Some(_)) if kind == DbKind::Mssql => {
            c.push(
                at,
                "tls_cert_file and tls_key_file are for PostgreSQL; a SQL Server login \
                 authenticates with its password",
            );
            None
        }
        (Some(_), Some(_)) if tls == Tls::Disable => {
            c.push(
                at,
                "tls_cert_file is set, but tls = \"disable\" sends no certificate; set tls = \
                 \"require\" or remove the certificate keys",
            );
            None
        }
        (Some(cert), Some(key)) => {
            match TlsClient::read(&resolve(config_dir, cert), &resolve(config_dir, key)) {
                Ok(client) => Some(client),
                Err(msg) => {
                    c.push(at, msg);
                    None
                }
            }
        }
    };
    Connection {
        kind,
        url: url.to_string(),
        password,
        timezone,
        tls,
        tls_ca,
        tls_client,
    }
}

/// `file` as written in the config, relative to the config's directory.
fn resolve(config_dir: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_path_buf()
    } else {
        config_dir.join(file)
    }
}

/// Whether `scheme://user:password@host` carries a password.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}

fn toml_to_value(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        _ => return None,
    })
}

impl Plan {
    /// Validates `raw` (read from `file`) into a plan, or lists every
    /// problem found.
    pub fn build(file: &Path, raw: RawConfig) -> Result<Plan, ConfigErrors> {
        let mut c = Collector {
            problems: Vec::new(),
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let crm_conn = connection(
            &mut c,
            "[crm]",
            ConnectionKeys {
                url: &raw.crm.url,
                password_env: &raw.crm.password_env,
                password_file: &raw.crm.password_file,
                timezone: &raw.crm.timezone,
                tls: &raw.crm.tls,
                tls_ca_file: &raw.crm.tls_ca_file,
                tls_cert_file: &raw.crm.tls_cert_file,
                tls_key_file: &raw.crm.tls_key_file,
            },
            dir,
        );
        let crm_user_id = match raw.crm.user_id {
            Some(id) if i32::try_from(id).is_ok() => id,
            Some(id) => {
                c.push(
                    "[crm]",
                    format!("user_id = {id} is not a Sage CRM user id (int)"),
                );
                1
            }
            None => {
                c.push(
                    "[crm]",
                    "user_id is missing: the CRM user id written to CreatedBy/UpdatedBy",
                );
                1
            }
        };
        let id_strategy = c.choice(
            "[crm]",
            "id_strategy",
            raw.crm.id_strategy.as_deref(),
            IdStrategy::Auto,
            &[
                ("auto", IdStrategy::Auto),
                ("identity", IdStrategy::Identity),
                ("stored_procedure", IdStrategy::StoredProcedure),
            ],
        );
        let external = connection(
            &mut c,
            "[external]",
            ConnectionKeys {
                url: &raw.external.url,
                password_env: &raw.external.password_env,
                password_file: &raw.external.password_file,
                timezone: &raw.external.timezone,
                tls: &raw.external.tls,
                tls_ca_file: &raw.external.tls_ca_file,
                tls_cert_file: &raw.external.tls_cert_file,
                tls_key_file: &raw.external.tls_key_file,
            },
            dir,
        );
        let state_side = c.choice(
            "[state]",
            "side",
            raw.state.side.as_deref(),
            Side::External,
            &[("crm", Side::Crm), ("external", Side::External)],
        );
        let state_kind = match state_side {
            Side::Crm => crm_conn.kind,
            Side::External => external.kind,
        };
        if state_kind == DbKind::Mssql {
            c.push(
                "[state]",
                format!(
                    "side = \"{state_side}\" is a SQL Server database; crmsync keeps its state \
                     (watermarks, links, shadows, run lock) on PostgreSQL only: set side to the \
                     PostgreSQL side"
                ),
            );
        }
        let state_schema = raw
            .state
            .schema
            .clone()
            .unwrap_or_else(|| config::DEFAULT_STATE_SCHEMA.to_string());
        c.identifier("[state]", "schema", &state_schema);
        if raw.entities.is_empty() {
            c.push(
                "",
                "no [[entity]] is configured; add one to say what to sync",
            );
        }
        let mut names = BTreeSet::new();
        let mut entities = Vec::new();
        for (i, e) in raw.entities.iter().enumerate() {
            let at = format!("entity {:?}", e.name);
            if e.name.trim().is_empty() {
                c.push(&format!("entity {}", i + 1), "name is empty");
            } else if !names.insert(e.name.to_lowercase()) {
                c.push(
                    &at,
                    "the name is used by another entity; names must be unique",
                );
            }
            entities.push(entity(&mut c, &at, e, &raw.defaults, state_side));
        }
        if c.problems.is_empty() {
            Ok(Plan {
                file: file.to_path_buf(),
                crm: crm_conn,
                crm_user_id,
                id_strategy,
                external,
                state_side,
                state_schema,
                entities,
            })
        } else {
            Err(ConfigErrors {
                file: file.to_path_buf(),
                problems: c.problems,
            })
        }
    }
}

const DIRECTIONS: [(&str, Direction); 3] = [
    ("crm_to_external", Direction::CrmToExternal),
    ("external_to_crm", Direction::ExternalToCrm),
    ("both", Direction::Both),
];

const TRUNCATE: [(&str, OnTruncate); 3] = [
    ("reject", OnTruncate::Reject),
    ("truncate", OnTruncate::Truncate),
    ("fail", OnTruncate::Fail),
];

fn entity(
    c: &mut Collector,
    at: &str,
    e: &RawEntity,
    defaults: &config::RawDefaults,
    state_side: Side,
) -> EntityPlan {
    let crm_table = table_ref(c, at, "crm_table", &e.crm_table);
    let external_table = table_ref(c, at, "external_table", &e.external_table);
    let known = crm::known_table(&crm_table.name);
    let crm_prefix = match (&e.crm_prefix, known) {
        (Some(p), _) => p.clone(),
        (None, Some(k)) => k.prefix.to_string(),
        (None, None) => {
            c.push(
                at,
                format!(
                    "crm_table {:?} is not a standard Sage CRM entity; set crm_prefix (e.g. \"Comp_\") and crm_key",
                    crm_table.name
                ),
            );
            String::new()
        }
    };
    let crm_key = e
        .crm_key
        .clone()
        .or_else(|| known.map(|k| k.key.to_string()));
    let crm_updated_column = e
        .crm_updated_column
        .clone()
        .unwrap_or_else(|| format!("{crm_prefix}UpdatedDate"));
    let crm_deleted_column = format!("{crm_prefix}Deleted");
    for (key, v) in [
        ("crm_prefix", Some(&crm_prefix)),
        ("crm_key", crm_key.as_ref()),
        ("crm_updated_column", Some(&crm_updated_column)),
        ("crm_link_column", e.crm_link_column.as_ref()),
        ("external_key", Some(&e.external_key)),
        ("external_crm_id_column", e.external_crm_id_column.as_ref()),
        ("external_updated_column", Some(&e.external_updated_column)),
        (
            "external_deleted_column",
            e.external_deleted_column.as_ref(),
        ),
    ] {
        if let Some(v) = v {
            if !(key == "crm_prefix" && v.is_empty()) {
                c.identifier(at, key, v);
            }
        }
    }
    c.filter(at, "crm_filter", &e.crm_filter);
    c.filter(at, "external_filter", &e.external_filter);
    let direction = c.choice(
        at,
        "direction",
        e.direction.as_deref(),
        Direction::Both,
        &DIRECTIONS,
    );
    let delete_into_crm = c.choice(
        at,
        "delete_into_crm",
        e.delete_into_crm.as_deref(),
        CrmDelete::Soft,
        &[("soft", CrmDelete::Soft), ("ignore", CrmDelete::Ignore)],
    );
    if e.delete_into_crm.as_deref() == Some("hard") {
        c.problems.pop();
        c.push(
            at,
            "delete_into_crm = \"hard\" is not allowed: Sage CRM rows are only ever soft-deleted (soft | ignore)",
        );
    }
    let delete_into_external = c.choice(
        at,
        "delete_into_external",
        e.delete_into_external.as_deref(),
        ExternalDelete::Hard,
        &[
            ("hard", ExternalDelete::Hard),
            ("soft", ExternalDelete::Soft),
            ("ignore", ExternalDelete::Ignore),
        ],
    );
    if delete_into_external == ExternalDelete::Soft && e.external_deleted_column.is_none() {
        c.push(
            at,
            "delete_into_external = \"soft\" needs external_deleted_column (the flag column to set)",
        );
    }
    let conflict = c.choice(
        at,
        "conflict",
        e.conflict.as_deref(),
        ConflictPolicy::NewestWins,
        &[
            ("crm_wins", ConflictPolicy::CrmWins),
            ("external_wins", ConflictPolicy::ExternalWins),
            ("newest_wins", ConflictPolicy::NewestWins),
            ("manual", ConflictPolicy::Manual),
        ],
    );
    let settings = e.settings(defaults);
    let batch_size = match settings.batch_size {
        None => config::DEFAULT_BATCH_SIZE,
        Some(n) if (1..=100_000).contains(&n) => n as usize,
        Some(n) => {
            c.push(at, format!("batch_size = {n} must be between 1 and 100000"));
            config::DEFAULT_BATCH_SIZE
        }
    };
    let settle = c.duration(
        at,
        "settle",
        settings.settle.as_deref(),
        config::DEFAULT_SETTLE,
    );
    let overlap = c.duration(
        at,
        "overlap",
        settings.overlap.as_deref(),
        config::DEFAULT_OVERLAP,
    );
    let max_delete_ratio = match settings.max_delete_ratio {
        None => config::DEFAULT_MAX_DELETE_RATIO,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            c.push(
                at,
                format!("max_delete_ratio = {r} must be between 0 and 1"),
            );
            config::DEFAULT_MAX_DELETE_RATIO
        }
    };
    let on_truncate = c.choice(
        at,
        "on_truncate",
        settings.on_truncate.as_deref(),
        OnTruncate::Reject,
        &TRUNCATE,
    );
    let secterr = match e.secterr {
        None => config::DEFAULT_SECTERR,
        Some(t) if i32::try_from(t).is_ok() => t,
        Some(t) => {
            c.push(at, format!("secterr = {t} is not a territory id (int)"));
            config::DEFAULT_SECTERR
        }
    };
    let mut defaults_of = |key: &str, map: &std::collections::BTreeMap<String, toml::Value>| {
        let mut out = Vec::new();
        for (col, v) in map {
            c.identifier(at, key, col);
            match toml_to_value(v) {
                Some(v) => out.push((col.clone(), v)),
                None => c.push(
                    at,
                    format!("{key}.{col}: only strings, numbers and booleans are allowed"),
                ),
            }
        }
        out
    };
    let crm_defaults = defaults_of("crm_defaults", &e.crm_defaults);
    let external_defaults = defaults_of("external_defaults", &e.external_defaults);
    let mut match_on = Vec::new();
    for m in &e.match_on {
        c.identifier(at, "match_on.crm", &m.crm);
        c.identifier(at, "match_on.external", &m.external);
        match_on.push((m.crm.clone(), m.external.clone()));
    }
    if e.fields.is_empty() {
        c.push(at, "no [[entity.field]] is mapped; map at least one column");
    }
    let mut seen_crm = BTreeSet::new();
    let mut seen_ext = BTreeSet::new();
    let mut fields = Vec::new();
    for (i, f) in e.fields.iter().enumerate() {
        let fat = format!("{at}: field {} ({})", i + 1, f.crm);
        fields.push(field(c, &fat, f, direction, on_truncate));
        if !seen_crm.insert(f.crm.to_lowercase()) {
            c.push(&fat, format!("CRM column {} is mapped twice", f.crm));
        }
        if !seen_ext.insert(f.external.to_lowercase()) {
            c.push(
                &fat,
                format!("external column {} is mapped twice", f.external),
            );
        }
    }
    let insert_into_external = e.insert_into_external.unwrap_or(true);
    if direction.crm_to_external()
        && insert_into_external
        && e.external_crm_id_column.is_none()
        && state_side != Side::External
    {
        c.push(
            at,
            "rows inserted into the external table could not be found again after a crash: \
             set external_crm_id_column, or keep [state] side = \"external\" so the link is \
             written in the same transaction",
        );
    }
    if direction.external_to_crm() && e.crm_link_column.is_none() {
        c.push(
            at,
            "direction sends rows into CRM but crm_link_column is not set (the CRM column \
             holding the external key, e.g. \"comp_supplierid\")",
        );
    }
    EntityPlan {
        name: e.name.clone(),
        crm_table,
        crm_prefix,
        crm_key,
        crm_updated_column,
        crm_deleted_column,
        crm_link_column: e.crm_link_column.clone(),
        crm_filter: e.crm_filter.clone(),
        external_table,
        external_key: e.external_key.clone(),
        external_crm_id_column: e.external_crm_id_column.clone(),
        external_updated_column: e.external_updated_column.clone(),
        external_deleted_column: e.external_deleted_column.clone(),
        external_filter: e.external_filter.clone(),
        direction,
        insert_into_crm: e.insert_into_crm.unwrap_or(true),
        insert_into_external,
        update_into_crm: e.update_into_crm.unwrap_or(true),
        update_into_external: e.update_into_external.unwrap_or(true),
        delete_into_crm,
        delete_into_external,
        conflict,
        secterr,
        crm_defaults,
        external_defaults,
        match_on,
        fields,
        batch_size,
        settle,
        overlap,
        max_delete_ratio,
        on_truncate,
    }
}

fn field(
    c: &mut Collector,
    at: &str,
    f: &RawField,
    entity_direction: Direction,
    entity_truncate: OnTruncate,
) -> FieldPlan {
    c.identifier(at, "crm", &f.crm);
    c.identifier(at, "external", &f.external);
    let direction = c.choice(
        at,
        "direction",
        f.direction.as_deref(),
        entity_direction,
        &DIRECTIONS,
    );
    if (direction.crm_to_external() && !entity_direction.crm_to_external())
        || (direction.external_to_crm() && !entity_direction.external_to_crm())
    {
        c.push(
            at,
            "the field's direction goes where the entity's direction does not; \
             widen the entity's direction or narrow the field's",
        );
    }
    let transform = c.choice(
        at,
        "transform",
        f.transform.as_deref(),
        Transform::None,
        &[
            ("none", Transform::None),
            ("checkbox", Transform::Checkbox),
            ("trim", Transform::Trim),
        ],
    );
    if transform == Transform::Checkbox && !f.values.is_empty() {
        c.push(at, "transform = \"checkbox\" and values cannot be combined");
    }
    let mut seen_ext = BTreeSet::new();
    for ext in f.values.values() {
        if !seen_ext.insert(ext) && direction.external_to_crm() {
            c.push(
                at,
                format!("values: external value {ext:?} appears twice, so it cannot be mapped back to CRM"),
            );
        }
    }
    let on_truncate = c.choice(
        at,
        "on_truncate",
        f.on_truncate.as_deref(),
        entity_truncate,
        &TRUNCATE,
    );
    FieldPlan {
        crm: f.crm.clone(),
        external: f.external.clone(),
        values: f
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        direction,
        transform,
        on_truncate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn build(text: &str) -> Result<Plan, ConfigErrors> {
        let raw = config::parse(Path::new("crmsync.toml"), text).unwrap();
        Plan::build(Path::new("crmsync.toml"), raw)
    }

    const GOOD: &str = r#"
[crm]
url = "postgres://sync@crm/crm"
password_env = "CRMSYNC_PLAN_TEST_PW"
user_id = 1
timezone = "Europe/London"
[external]
url = "postgres://sync@erp/erp"
[[entity]]
name = "supplier"
crm_table = "Company"
crm_link_column = "comp_supplierid"
external_table = "erp.supplier"
external_key = "supplier_id"
external_updated_column = "updated_at"
direction = "crm_to_external"
[[entity.field]]
crm = "Comp_Name"
external = "name"
"#;

    #[test]
    fn good_config_derives_sage_names_and_keeps_the_password_secret() {
        std::env::set_var("CRMSYNC_PLAN_TEST_PW", "s3cr3t-pw");
        let plan = build(GOOD).unwrap();
        let e = &plan.entities[0];
        assert_eq!(e.crm_key.as_deref(), Some("Comp_CompanyId"));
        assert_eq!(e.crm_updated_column, "Comp_UpdatedDate");
        assert_eq!(e.crm_deleted_column, "Comp_Deleted");
        assert_eq!(e.settle, Duration::from_secs(2));
        assert_eq!(e.overlap, Duration::from_secs(300));
        assert_eq!(
            plan.crm.password.as_ref().unwrap().expose_secret(),
            "s3cr3t-pw"
        );
        let debug = format!("{plan:?}");
        assert!(!debug.contains("s3cr3t-pw"), "password leaked in Debug");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_place() {
        let bad = GOOD
            .replace(
                "timezone = \"Europe/London\"",
                "timezone = \"Mars/Olympus\"",
            )
            .replace(
                "direction = \"crm_to_external\"",
                "direction = \"sideways\"",
            )
            .replace("crm = \"Comp_Name\"", "crm = \"Comp Name\"")
            .replace(
                "password_env = \"CRMSYNC_PLAN_TEST_PW\"",
                "password_env = \"CRMSYNC_PLAN_TEST_UNSET\"",
            );
        let err = build(&bad).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        assert!(text.contains("Mars/Olympus"), "{text}");
        assert!(
            text.contains("entity \"supplier\": direction = \"sideways\""),
            "{text}"
        );
        assert!(text.contains("field 1 (Comp Name)"), "{text}");
        assert!(text.contains("CRMSYNC_PLAN_TEST_UNSET"), "{text}");
        assert!(text
            .lines()
            .skip(1)
            .all(|l| l.trim_start().starts_with("crmsync.toml: ")));
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let bad = GOOD.replace("postgres://sync@crm/crm", "postgres://sync:hunter2@crm/crm");
        let err = build(&bad).unwrap_err().to_string();
        assert!(err.contains("url contains a password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn hard_delete_into_crm_is_refused() {
        let bad = GOOD.replace(
            "direction = \"crm_to_external\"",
            "direction = \"crm_to_external\"\ndelete_into_crm = \"hard\"",
        );
        let err = build(&bad).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("soft-deleted"));
    }
}
