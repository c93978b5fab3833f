//! The validated, resolved configuration. `Plan::build` is pure (it reads
//! only the environment, password files and CA files) and collects every problem in
//! the file before any connection opens.
//!
//! Here: the plan's types (the plan, its entities and fields, the sides,
//! directions and policies, the connections) and small helpers. Alongside:
//! `build` (config to plan, collecting every problem), `connection` (the
//! `[crm]` and `[external]` keys), `entity` (an entity and its fields) and
//! `tls` (the CA, certificate and key files).

mod build;
mod connection;
mod entity;
pub mod order;
mod tls;

/// Re-exported: the plan speaks of sides throughout.
pub use crate::side::{PerSide, Side};
pub use build::ConfigErrors;
pub use tls::{TlsCa, TlsClient};

use crate::value::Value;
use chrono_tz::Tz;
use secrecy::SecretString;
use std::fmt;
use std::path::PathBuf;
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
    /// Whether values flow out of `side`.
    pub fn from(self, side: Side) -> bool {
        match side {
            Side::Crm => self.crm_to_external(),
            Side::External => self.external_to_crm(),
        }
    }
}

/// Which way a backfill copies. Here, below the engine that runs it, so
/// that the state store's run history can name it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillDirection {
    CrmToExternal,
    ExternalToCrm,
}

impl BackfillDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillDirection::CrmToExternal => "crm_to_external",
            BackfillDirection::ExternalToCrm => "external_to_crm",
        }
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
    /// The entity whose keys the field holds (by its configured name).
    pub references: Option<String>,
    /// Set when `crm` names a column of a phone, e-mail or address
    /// (`Phone[Business].Phon_Number`) rather than of the entity's table.
    pub child: Option<ChildRef>,
}

/// A field's CRM side in one of Sage CRM's child tables:
/// `Table[selector].Column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    pub table: &'static crate::crm::ChildTable,
    pub selector: ChildSelector,
    /// The child table's column, as configured.
    pub column: String,
}

/// Which of the entity's children of a kind a field follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChildSelector {
    /// The live link of this type code (`PLink_Type`, `ELink_Type`,
    /// `AdLi_Type`), matched exactly.
    Type(String),
    /// The address named by the entity's primary-address column.
    Primary,
}

impl ChildRef {
    /// Parses `Table[selector].Column`; `None` when `text` has no bracket
    /// (a plain column), `Some(Err(why))` when it has one but is not a
    /// child reference.
    pub fn parse(text: &str) -> Option<Result<ChildRef, String>> {
        let open = text.find('[')?;
        let usage = "write Table[TypeCode].Column, e.g. Phone[Business].Phon_Number, \
                     Email[Business].Emai_EmailAddress or Address[primary].Addr_City";
        let Some(close) = text[open..].find(']').map(|i| open + i) else {
            return Some(Err(format!("no closing ']'; {usage}")));
        };
        let table = text[..open].trim();
        let code = &text[open + 1..close];
        let Some(column) = text[close + 1..].strip_prefix('.') else {
            return Some(Err(format!("a '.' and a column must follow ']'; {usage}")));
        };
        let Some(child) = crate::crm::child_table(table) else {
            let names: Vec<&str> = crate::crm::CHILD_TABLES.iter().map(|c| c.table).collect();
            let hint = names
                .iter()
                .map(|n| {
                    (
                        strsim::jaro_winkler(&n.to_lowercase(), &table.to_lowercase()),
                        *n,
                    )
                })
                .filter(|(score, _)| *score > 0.7)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| format!(" (did you mean {n}?)"))
                .unwrap_or_default();
            return Some(Err(format!(
                "{table:?} is not one of Sage CRM's child tables ({}){hint}",
                names.join(", ")
            )));
        };
        if code.trim().is_empty() || code.trim() != code {
            return Some(Err(format!(
                "the type code in brackets must be a stored code without surrounding blanks, \
                 e.g. [Business]; {usage}"
            )));
        }
        let selector = if child.kind == crate::crm::ChildKind::Address
            && code.eq_ignore_ascii_case(crate::crm::PRIMARY)
        {
            ChildSelector::Primary
        } else {
            ChildSelector::Type(code.to_string())
        };
        Some(Ok(ChildRef {
            table: child,
            selector,
            column: column.to_string(),
        }))
    }
}

impl fmt::Display for ChildRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sel = match &self.selector {
            ChildSelector::Type(code) => code.as_str(),
            ChildSelector::Primary => crate::crm::PRIMARY,
        };
        write!(f, "{}[{sel}].{}", self.table.table, self.column)
    }
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
    /// `status` exits 3 when the entity's lag is longer than this.
    pub max_lag: Option<Duration>,
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

/// A plain identifier, as both SQL Server and PostgreSQL accept unquoted.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {}
        _ => return false,
    }
    s.len() <= 128 && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_fields_parse_with_their_selector() {
        let r = ChildRef::parse("Phone[Business].Phon_Number")
            .unwrap()
            .unwrap();
        assert_eq!(r.table.table, "Phone");
        assert_eq!(r.selector, ChildSelector::Type("Business".into()));
        assert_eq!(r.column, "Phon_Number");
        let r = ChildRef::parse("address[Primary].Addr_City")
            .unwrap()
            .unwrap();
        assert_eq!(r.selector, ChildSelector::Primary);
        assert_eq!(r.to_string(), "Address[primary].Addr_City");
        // Only an address follows the primary column; a phone type code
        // "primary" is just a code.
        let r = ChildRef::parse("Phone[primary].Phon_Number")
            .unwrap()
            .unwrap();
        assert_eq!(r.selector, ChildSelector::Type("primary".into()));
        // Codes keep their case and inner blanks.
        let r = ChildRef::parse("Email[Sales Office].Emai_EmailAddress")
            .unwrap()
            .unwrap();
        assert_eq!(r.selector, ChildSelector::Type("Sales Office".into()));
        assert!(ChildRef::parse("Comp_Name").is_none());
    }

    #[test]
    fn malformed_child_fields_say_what_is_wrong() {
        let why = |s: &str| ChildRef::parse(s).unwrap().unwrap_err();
        assert!(why("Phon[Business].Phon_Number").contains("did you mean Phone?"));
        assert!(why("Phone[Business.Phon_Number").contains("no closing ']'"));
        assert!(why("Phone[Business]Phon_Number").contains("a '.' and a column"));
        assert!(why("Phone[].Phon_Number").contains("type code"));
        assert!(why("Phone[ Business].Phon_Number").contains("surrounding blanks"));
        assert!(why("Fax[Business].Phon_Number").contains("not one of Sage CRM's child tables"));
    }
}
