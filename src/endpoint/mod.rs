//! The database endpoints: one small trait that both sides implement, and
//! the catalog and batch types it speaks in. One folder per database kind.

pub mod bulk;
pub mod mssql;
pub mod postgres;

use crate::value::{SqlType, Value};
use async_trait::async_trait;
use std::sync::Arc;

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
}

/// Looking a configured name up in the catalog failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Missing { suggestion: Option<String> },
    Ambiguous(Vec<String>),
}

/// The `(min, max)` of a one-row `SELECT min(c), max(c)` result; `None`
/// for an empty table.
pub(crate) fn min_max(mut rows: Vec<Vec<Value>>) -> Option<(Value, Value)> {
    match rows.pop() {
        Some(mut r) if r.len() == 2 && !r[0].is_null() => {
            let hi = r.pop()?;
            let lo = r.pop()?;
            Some((lo, hi))
        }
        _ => None,
    }
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
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

/// What to read from one table: real names only, taken from the catalog.
#[derive(Debug, Clone)]
pub struct Scan {
    pub table: Arc<TableInfo>,
    /// Columns to read, in the order rows come back.
    pub columns: Vec<String>,
    pub key: String,
    pub change: String,
    pub change_ty: SqlType,
    /// A predicate from the config, validated against the database by
    /// `check`.
    pub filter: Option<String>,
}

impl Scan {
    pub fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }
}

/// Where a change read starts.
#[derive(Debug, Clone)]
pub enum Lower {
    /// From the beginning of time.
    Start,
    /// Rows with change time `>=` this.
    From(Value),
    /// Rows after this `(change time, key)` in keyset order.
    After { ts: Value, key: Value },
}

/// A value to assign in a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Assign {
    Value(Value),
    /// The server's clock, in the column's own form (wall clock in the
    /// side's zone, or an instant).
    Now,
    /// A new id from Sage CRM's `eware_get_identity_id` for this table.
    AllocateId {
        table: String,
    },
}

#[derive(Debug, Clone)]
pub struct Insert {
    pub columns: Vec<(String, Assign)>,
}

#[derive(Debug, Clone)]
pub struct Update {
    pub key: Value,
    pub set: Vec<(String, Assign)>,
}

/// Writes to one table, applied in one transaction.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    pub table: Arc<TableInfo>,
    pub key: String,
    pub inserts: Vec<Insert>,
    pub updates: Vec<Update>,
    /// Keys of rows to delete for real.
    pub deletes: Vec<Value>,
}

impl WriteBatch {
    pub fn new(table: Arc<TableInfo>, key: String) -> WriteBatch {
        WriteBatch {
            table,
            key,
            inserts: Vec::new(),
            updates: Vec::new(),
            deletes: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty() && self.updates.is_empty() && self.deletes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.inserts.len() + self.updates.len() + self.deletes.len()
    }
}

/// The outcome of `apply`.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The key of each insert, in batch order.
    pub inserted_keys: Vec<Value>,
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
    /// The one place that decides what is worth retrying: deadlocks,
    /// serialization failures and dropped connections.
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

    pub fn is_retryable(&self) -> bool {
        match self {
            EndpointError::Query { retryable, .. } => *retryable,
            EndpointError::Connect { .. } | EndpointError::Schema(_) => false,
        }
    }
}

pub type Result<T, E = EndpointError> = std::result::Result<T, E>;

/// One database crmsync reads changes from and writes to.
///
/// Contract:
/// - `read_changes` returns rows whose change column lies in the window,
///   in ascending `(change, key)` order, never more than `limit`; rows whose
///   change column is NULL are never returned. Bounds are compared in the
///   column's own type and precision.
/// - `apply` runs a whole batch in one transaction: all of it commits or
///   none does. When `links` is given (the state store lives in this same
///   database) they are written in that transaction too.
/// - Writes are idempotent in effect: updates set absolute values and
///   deletes of missing rows are no-ops.
/// - `read_page` returns rows in ascending key order, strictly after the
///   given key, filter applied, never more than `limit`, in the same column
///   order and decoding as `fetch`. Rows of any change time (NULL too) are
///   returned: it is the full read of `verify`, paged so that memory stays
///   flat however large the table.
/// - Calls may run concurrently; each takes its own pooled connection.
#[async_trait]
pub trait Endpoint: Send + Sync {
    /// A printable name of the database (no password).
    fn describe(&self) -> String;

    /// The table, looked up case-insensitively, or `None` if missing.
    async fn table(&self, schema: Option<&str>, name: &str) -> Result<Option<TableInfo>>;

    /// The server's clock in the form of a column of type `ty`.
    async fn clock(&self, ty: &SqlType) -> Result<Value>;

    async fn read_changes(
        &self,
        scan: &Scan,
        lower: &Lower,
        upto: &Value,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>>;

    /// Rows of `scan` whose `column` equals one of `keys` (filter applied).
    async fn fetch(&self, scan: &Scan, column: &str, keys: &[Value]) -> Result<Vec<Vec<Value>>>;

    /// Rows of `scan` (filter applied) whose key is greater than `after`
    /// (all rows when `None`), in key order; at most `limit`.
    async fn read_page(
        &self,
        scan: &Scan,
        after: Option<&Value>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>>;

    /// Rows of `scan` (filter applied) where every `column = value` holds
    /// (`Value::Null` means IS NULL); at most `limit`.
    async fn find(
        &self,
        scan: &Scan,
        conditions: &[(String, Value)],
        limit: usize,
    ) -> Result<Vec<Vec<Value>>>;

    /// Every key of the scan's table (no filter), as key strings.
    async fn keys(&self, scan: &Scan) -> Result<Vec<String>>;

    /// A value that changes whenever a row of `table` may have been
    /// deleted since it was last read (a DELETE, a TRUNCATE, the table
    /// recreated, its statistics reset), or `None` when the database
    /// cannot tell. Equal values read at two times mean no row was deleted
    /// in between, except deletes whose statistics were not flushed yet
    /// at the second read: they change the value later.
    async fn deletes_fingerprint(&self, _table: &TableInfo) -> Result<Option<String>> {
        Ok(None)
    }

    /// Rows whose change column is NULL (they never enter a window).
    async fn count_null_changes(&self, scan: &Scan) -> Result<i64>;

    /// The smallest and largest value of `column` in the whole table (no
    /// filter), or `None` when the table is empty: the keys a narrower
    /// column must hold today.
    async fn column_range(&self, table: &TableInfo, column: &str)
        -> Result<Option<(Value, Value)>>;

    /// Whether a row holding only `values` (every other column NULL) would
    /// pass the scan's filter; `None` if it cannot be told.
    async fn filter_accepts(&self, scan: &Scan, values: &[(String, Value)])
        -> Result<Option<bool>>;

    /// Checks that the scan's filter is valid SQL for this table.
    async fn check_filter(&self, scan: &Scan) -> Result<()>;

    async fn apply(
        &self,
        batch: &WriteBatch,
        links: Option<&crate::state::LinkBatch>,
    ) -> Result<Applied>;

    /// The bulk interface of `backfill`, where this database has one.
    fn bulk(&self) -> Option<&dyn bulk::Bulk> {
        None
    }

    /// What a backfill reads its source through.
    fn bulk_source(&self) -> &dyn bulk::BulkSource;
}

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
        };
        TableInfo {
            schema: "public".into(),
            name: "company".into(),
            columns: vec![col("comp_name"), col("comp_companyid"), col("X"), col("x")],
            primary_key: vec!["comp_companyid".into()],
            indexes: vec![],
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
