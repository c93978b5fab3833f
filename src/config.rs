//! The configuration file as written: raw serde types with no meaning
//! attached yet. `plan` validates them into something the engine can run.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_FILE: &str = "crmsync.toml";
pub const CONFIG_ENV: &str = "CRMSYNC_CONFIG";
pub const DEFAULT_STATE_SCHEMA: &str = "crmsync";
pub const DEFAULT_BATCH_SIZE: usize = 1000;
pub const DEFAULT_SETTLE: &str = "2s";
pub const DEFAULT_OVERLAP: &str = "5m";
pub const DEFAULT_MAX_DELETE_RATIO: f64 = 0.10;
pub const DEFAULT_ON_TRUNCATE: &str = "reject";
pub const DEFAULT_TIMEZONE: &str = "UTC";
pub const DEFAULT_SECTERR: i64 = -2147483640;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub crm: RawCrm,
    pub external: RawExternal,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default, rename = "entity")]
    pub entities: Vec<RawEntity>,
}

/// The CRM database. Deliberately no `Serialize`: it names where the
/// password lives, and `Debug` shows only that, never a password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrm {
    pub url: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub user_id: Option<i64>,
    pub timezone: Option<String>,
    pub id_strategy: Option<String>,
    /// `disable` | `prefer` | `require`.
    pub tls: Option<String>,
    /// PEM file with the CA certificate(s) that `require` verifies the
    /// server against instead of the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for servers
    /// that authenticate clients by certificate (PostgreSQL only).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternal {
    pub url: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub timezone: Option<String>,
    pub tls: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub side: Option<String>,
    pub schema: Option<String>,
}

/// Settings that every entity may override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub batch_size: Option<i64>,
    pub settle: Option<String>,
    pub overlap: Option<String>,
    pub max_delete_ratio: Option<f64>,
    pub on_truncate: Option<String>,
    /// `status` exits 3 for an entity whose lag is longer; no default.
    pub max_lag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntity {
    pub name: String,
    pub crm_table: String,
    pub crm_key: Option<String>,
    pub crm_prefix: Option<String>,
    /// Change column; default `<prefix>UpdatedDate`.
    pub crm_updated_column: Option<String>,
    pub crm_link_column: Option<String>,
    pub crm_filter: Option<String>,
    pub external_table: String,
    pub external_key: String,
    pub external_crm_id_column: Option<String>,
    pub external_updated_column: String,
    pub external_deleted_column: Option<String>,
    pub external_filter: Option<String>,
    pub direction: Option<String>,
    pub insert_into_crm: Option<bool>,
    pub insert_into_external: Option<bool>,
    pub update_into_crm: Option<bool>,
    pub update_into_external: Option<bool>,
    pub delete_into_crm: Option<String>,
    pub delete_into_external: Option<String>,
    pub conflict: Option<String>,
    pub secterr: Option<i64>,
    #[serde(default)]
    pub crm_defaults: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub external_defaults: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub match_on: Vec<RawMatch>,
    #[serde(default, rename = "field")]
    pub fields: Vec<RawField>,
    pub batch_size: Option<i64>,
    pub settle: Option<String>,
    pub overlap: Option<String>,
    pub max_delete_ratio: Option<f64>,
    pub on_truncate: Option<String>,
    pub max_lag: Option<String>,
}

impl RawEntity {
    /// This entity's own settings, each falling back to `defaults`.
    pub fn settings(&self, defaults: &RawDefaults) -> RawDefaults {
        RawDefaults {
            batch_size: self.batch_size.or(defaults.batch_size),
            settle: self.settle.clone().or_else(|| defaults.settle.clone()),
            overlap: self.overlap.clone().or_else(|| defaults.overlap.clone()),
            max_delete_ratio: self.max_delete_ratio.or(defaults.max_delete_ratio),
            on_truncate: self
                .on_truncate
                .clone()
                .or_else(|| defaults.on_truncate.clone()),
            max_lag: self.max_lag.clone().or_else(|| defaults.max_lag.clone()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub crm: String,
    pub external: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    pub crm: String,
    pub external: String,
    /// CRM value = external value.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    pub direction: Option<String>,
    /// `checkbox` | `trim`.
    pub transform: Option<String>,
    pub on_truncate: Option<String>,
    /// The entity whose keys this field holds: its CRM key on the CRM side,
    /// its external key on the external side.
    pub references: Option<String>,
}

/// A config file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{file}: cannot read the config file: {source}; pass --config FILE or set CRMSYNC_CONFIG"
    )]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
}

impl LoadError {
    /// A config file that cannot be read or parsed is bad usage.
    pub fn exit_code(&self) -> i32 {
        crate::exit::BAD_CONFIG
    }
}

/// Reads and parses `file`. Unknown keys are errors: a typo must never be
/// silently ignored.
pub fn load(file: &Path) -> Result<RawConfig, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|source| LoadError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    parse(file, &text)
}

pub fn parse(file: &Path, text: &str) -> Result<RawConfig, LoadError> {
    toml::from_str(text).map_err(|e| LoadError::Parse {
        file: file.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[crm]
url = "postgres://u@h/crm"
[external]
url = "postgres://u@h/erp"
[[entity]]
name = "supplier"
crm_table = "Company"
external_table = "erp.supplier"
external_key = "supplier_id"
external_updated_column = "updated_at"
batch_size = 50
[[entity.field]]
crm = "Comp_Name"
external = "name"
"#;

    #[test]
    fn minimal_config_parses_with_entity_overrides() {
        let c = parse(Path::new("x.toml"), MINIMAL).unwrap();
        assert_eq!(c.entities.len(), 1);
        assert_eq!(c.entities[0].settings(&c.defaults).batch_size, Some(50));
        assert_eq!(c.entities[0].fields[0].crm, "Comp_Name");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key_and_file() {
        let text = MINIMAL.replace("batch_size = 50", "batch_sise = 50");
        let err = parse(Path::new("x.toml"), &text).unwrap_err().to_string();
        assert!(err.starts_with("x.toml:"), "{err}");
        assert!(err.contains("batch_sise"), "{err}");
    }
}
