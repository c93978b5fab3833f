//! Validation of the keys `[crm]` and `[external]` share: the url, the
//! password, the time zone and TLS, into a `Connection`.

use super::build::Collector;
use super::{Connection, DbKind, Tls, TlsCa, TlsClient};
use crate::config;
use chrono_tz::Tz;
use secrecy::SecretString;
use std::path::{Path, PathBuf};

/// The keys `[crm]` and `[external]` share.
pub(super) struct ConnectionKeys<'a> {
    pub(super) url: &'a str,
    pub(super) password_env: &'a Option<String>,
    pub(super) password_file: &'a Option<PathBuf>,
    pub(super) timezone: &'a Option<String>,
    pub(super) tls: &'a Option<String>,
    pub(super) tls_ca_file: &'a Option<PathBuf>,
    pub(super) tls_cert_file: &'a Option<PathBuf>,
    pub(super) tls_key_file: &'a Option<PathBuf>,
}

pub(super) fn connection(
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
