//! The database endpoints: one small trait that both sides implement, and
//! the catalog and batch types it speaks in. One folder per database kind.

pub mod bulk;
pub mod children;
pub mod mssql;
pub mod postgres;

/// The catalog types and the database error live in the layer below, so
/// the state store can use them too.
pub use crate::db::{ColumnInfo, EndpointError, Lookup, Result, TableInfo};
use crate::value::{SqlType, Value};
use async_trait::async_trait;
use std::sync::Arc;

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
    /// Columns of `columns` read from Sage CRM's child tables. When there
    /// are any, the change column reads as the latest change of the row
    /// and of its children's link and child rows.
    pub children: Vec<children::ChildColumn>,
}

impl Scan {
    pub fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }

    /// The child column `column` names, if it names one.
    pub fn child(&self, column: &str) -> Option<&children::ChildColumn> {
        self.children.iter().find(|c| c.name == column)
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
    /// Columns of inserts and updates that are Sage CRM child values
    /// (`Phone[Business].Phon_Number`): written to their child and link
    /// rows, in the same transaction.
    pub children: Vec<children::ChildColumn>,
}

impl WriteBatch {
    pub fn new(table: Arc<TableInfo>, key: String) -> WriteBatch {
        WriteBatch {
            table,
            key,
            inserts: Vec::new(),
            updates: Vec::new(),
            deletes: Vec::new(),
            children: Vec::new(),
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

    /// Whether a committed delete can be missing from
    /// [`deletes_fingerprint`](Endpoint::deletes_fingerprint) for a while
    /// (PostgreSQL flushes a session's counts about a second after its
    /// transaction, and later when busy).
    fn deletes_fingerprint_lags(&self) -> bool {
        false
    }

    /// Rows of `child` (filter applied) whose `column` is not NULL and
    /// names no row of `parent` by its key that passes `parent`'s filter:
    /// references a sync cannot translate.
    async fn count_dangling(&self, child: &Scan, column: &str, parent: &Scan) -> Result<i64>;

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
