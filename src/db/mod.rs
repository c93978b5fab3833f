//! The layer below both the endpoints and the state store: the catalog
//! types (a table and its columns as the live catalog names them), the
//! error of a database call, and each kind's connection pool and quoting,
//! which its endpoint and the state store kept in it share.

pub mod mssql;
pub mod postgres;

use crate::value::SqlType;

/// A table as the live catalog describes it; every name here is the
/// catalog's own spelling.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    pub primary_key: Vec<String>,
    /// Column lists of the table's indexes, in index order.
    pub indexes: Vec<Vec<String>>,
    /// Column lists of its unique indexes (the primary key's too).
    pub unique: Vec<Vec<String>>,
    /// The catalog's row estimate (not a count).
    pub row_estimate: i64,
}

#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    pub has_default: bool,
    pub identity: bool,
    /// The database computes it (a generated or computed column, a
    /// rowversion): it is read, never written.
    pub generated: bool,
}

/// Looking a configured name up in the catalog failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Missing { suggestion: Option<String> },
    Ambiguous(Vec<String>),
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether the primary key or a unique index holds column `name` alone.
    pub fn is_unique(&self, name: &str) -> bool {
        let alone = |cols: &[String]| matches!(cols, [c] if c.eq_ignore_ascii_case(name));
        alone(&self.primary_key) || self.unique.iter().any(|u| alone(u))
    }

    /// The column named `name`, matched case-insensitively as SQL Server
    /// does; two columns differing only in case make the name ambiguous.
    pub fn column(&self, name: &str) -> Result<&ColumnInfo, Lookup> {
        let hits: Vec<&ColumnInfo> = self
            .columns
            .iter()
            .filter(|c| c.name.eq_ignore_ascii_case(name))
            .collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(Lookup::Missing {
                suggestion: self.suggest(name),
            }),
            many => Err(Lookup::Ambiguous(
                many.iter().map(|c| c.name.clone()).collect(),
            )),
        }
    }

    fn suggest(&self, name: &str) -> Option<String> {
        let lower = name.to_lowercase();
        self.columns
            .iter()
            .map(|c| (strsim::levenshtein(&lower, &c.name.to_lowercase()), &c.name))
            .filter(|(d, _)| *d <= 3)
            .min_by_key(|(d, _)| *d)
            .map(|(_, n)| n.clone())
    }

    /// Whether some index starts with `column` (so a range scan on it is
    /// cheap).
    pub fn has_index_starting_with(&self, column: &str) -> bool {
        self.indexes
            .iter()
            .any(|ix| ix.first().is_some_and(|c| c.eq_ignore_ascii_case(column)))
    }
}

/// A failure talking to a database.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot connect to the {side} database {target}: {reason}")]
    Connect {
        side: &'static str,
        target: String,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{what} failed on the {side} database")]
    Query {
        side: &'static str,
        what: String,
        retryable: bool,
        /// The statement named a table or schema that does not exist.
        missing_object: bool,
        /// The database refused the data itself (a constraint, a value it
        /// cannot store), not the statement or the connection.
        refused_row: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Schema(String),
}

impl EndpointError {
    /// Whether the failure lies in the rows written, so that writing them
    /// one by one isolates the culprit.
    pub fn refused_row(&self) -> bool {
        matches!(
            self,
            EndpointError::Query {
                refused_row: true,
                ..
            }
        )
    }

    /// A database that cannot be reached, queried or read is a runtime
    /// failure; a rerun is safe.
    pub fn exit_code(&self) -> i32 {
        crate::exit::FAILED
    }

    /// The one place that decides what is worth retrying: deadlocks,
    /// serialization failures and dropped connections (each database's
    /// error conversion sets `retryable`).
    pub fn is_retryable(&self) -> bool {
        match self {
            EndpointError::Query { retryable, .. } => *retryable,
            EndpointError::Connect { .. } | EndpointError::Schema(_) => false,
        }
    }
}

pub type Result<T, E = EndpointError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableInfo {
        let col = |n: &str| ColumnInfo {
            name: n.into(),
            ty: SqlType::Int { bytes: 4 },
            nullable: true,
            has_default: false,
            identity: false,
            generated: false,
        };
        TableInfo {
            schema: "public".into(),
            name: "company".into(),
            columns: vec![col("comp_name"), col("comp_companyid"), col("X"), col("x")],
            primary_key: vec!["comp_companyid".into()],
            indexes: vec![],
            unique: vec![],
            row_estimate: 0,
        }
    }

    #[test]
    fn columns_match_case_insensitively_and_suggest_near_misses() {
        let t = table();
        assert_eq!(t.column("Comp_Name").unwrap().name, "comp_name");
        assert_eq!(
            t.column("Comp_Nmae").unwrap_err(),
            Lookup::Missing {
                suggestion: Some("comp_name".into())
            }
        );
        assert!(matches!(t.column("x"), Err(Lookup::Ambiguous(v)) if v.len() == 2));
    }
}
