//! The bulk side of an endpoint, used by `backfill`: a streaming keyset
//! read of a whole table ([`BulkSource`], all a backfill asks of its
//! source) and a chunk write that commits data, links and the backfill
//! checkpoint together ([`Bulk`]: PostgreSQL's COPY, SQL Server's bulk
//! load).

use super::{Result, Scan, TableInfo, Update};
use crate::state::{Checkpoint, LinkBatch};
use crate::value::Value;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Resolves when the previous chunk has committed; an error (the sender
/// dropped) means it did not.
pub type Turn = tokio::sync::oneshot::Receiver<()>;

/// A chunk of rows in the scan's column order.
pub type Rows = Vec<Vec<Value>>;

/// Decodes the cell (`None`: NULL) of column `i` of a [`RawRows`].
pub type CellDecoder = dyn Fn(usize, Option<&[u8]>) -> Result<Value> + Send + Sync;

/// Rows as read, each cell still in the source database's binary form:
/// moved unchanged into a database of the same kind, decoded only where a
/// value must be looked at.
#[derive(Clone)]
pub struct RawRows {
    pub data: bytes::Bytes,
    /// Row by row, column by column: the cell's bytes in `data`, or `None`
    /// for NULL.
    pub cells: Vec<Option<(u32, u32)>>,
    pub columns: usize,
    /// Text cells are valid UTF-8: the server converted them into it.
    pub text_checked: bool,
    /// Decodes the cell of column `i`.
    pub decode: Arc<CellDecoder>,
}

impl std::fmt::Debug for RawRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRows")
            .field("rows", &self.len())
            .field("columns", &self.columns)
            .finish()
    }
}

impl RawRows {
    pub fn len(&self) -> usize {
        self.cells.len().checked_div(self.columns).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the cell at `row`, `column` (`None`: NULL).
    pub fn cell(&self, row: usize, column: usize) -> Option<&[u8]> {
        self.cells[row * self.columns + column].map(|(a, b)| &self.data[a as usize..b as usize])
    }

    /// The range of the cell at `row`, `column` in `data`.
    pub fn range(&self, row: usize, column: usize) -> Option<(u32, u32)> {
        self.cells[row * self.columns + column]
    }

    pub fn value(&self, row: usize, column: usize) -> Result<Value> {
        (self.decode)(column, self.cell(row, column))
    }
}

/// A cell of a row to insert.
#[derive(Debug, Clone)]
pub enum Cell {
    Null,
    /// Bytes of [`RawInserts::data`], in the target's binary form.
    Raw(u32, u32),
    Value(Value),
    /// The n-th of [`RawInserts::constants`].
    Const(usize),
}

/// Rows to insert whose cells are partly moved unchanged from the source.
#[derive(Debug, Clone)]
pub struct RawInserts {
    pub data: bytes::Bytes,
    pub constants: Vec<Value>,
    pub rows: Vec<Vec<Cell>>,
}

/// What to read: rows of `scan` in ascending key order, strictly after
/// `after`, leaving out rows whose `deleted` flag column is set.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    pub scan: Scan,
    pub after: Option<Value>,
    pub deleted: Option<String>,
    pub chunk_rows: usize,
    /// Chunks buffered between reader and writer; bounds memory.
    pub depth: usize,
}

/// The checkpoint to commit with a chunk, in the state schema `schema`.
#[derive(Debug, Clone)]
pub struct CheckpointWrite {
    pub schema: String,
    pub entity: String,
    pub direction: String,
    pub checkpoint: Checkpoint,
}

/// The link of the `insert`-th inserted row of a chunk, new for certain.
#[derive(Debug, Clone)]
pub struct FreshLink {
    /// The CRM key in the links' stored form (`state::keys`).
    pub crm_key: Vec<u8>,
    pub insert: usize,
    /// The sealed shadow.
    pub shadow: Vec<u8>,
}

/// Fresh links of one entity, in the state schema `schema`.
#[derive(Debug, Clone)]
pub struct FreshLinks {
    pub schema: String,
    pub entity: String,
    pub links: Vec<FreshLink>,
}

/// One chunk of a backfill, written in one transaction.
#[derive(Debug, Clone)]
pub struct ChunkWrite {
    pub table: Arc<TableInfo>,
    pub key: String,
    /// Columns of `inserts`, in order.
    pub columns: Vec<String>,
    pub inserts: Rows,
    /// Inserts in raw form; when set, `inserts` is empty.
    pub raw_inserts: Option<RawInserts>,
    pub updates: Vec<Update>,
    /// Links (with `KeyRef::Inserted(i)` for the i-th insert) and the
    /// checkpoint, when the state store lives in this database.
    pub links: Option<LinkBatch>,
    /// Links of inserted rows whose CRM key has no row in the links table
    /// yet, written with COPY (in the same transaction, like `links`).
    pub fresh_links: Option<FreshLinks>,
    pub checkpoint: Option<CheckpointWrite>,
}

/// The reading half: what a backfill asks of the database it copies from.
///
/// `stream` returns at once; a reader task sends chunks in key order and
/// stops at the end of the table, at the first error (sent as the last
/// item), or when the receiver is dropped.
#[async_trait]
pub trait BulkSource: Send + Sync {
    fn stream(&self, req: StreamRequest) -> mpsc::Receiver<Result<Rows>>;

    /// The kind of database: raw cells move only between the same kind.
    fn kind(&self) -> &'static str;

    /// Tuples of `columns` (values of the first given in `first`) that
    /// occur more than once among the live rows of `scan`, the values
    /// compared exactly (as crmsync compares them, whatever the
    /// database's collation).
    async fn duplicates(
        &self,
        scan: &Scan,
        columns: &[String],
        first: &[Value],
        deleted: Option<&str>,
    ) -> Result<Vec<Vec<Value>>>;
}

/// The whole of bulk, reading raw and writing.
///
/// `write_chunk` commits all of a chunk or nothing, and returns the keys
/// of the inserted rows in insert order. Several may run at once, each on
/// its own connection; when `turn` is given, the chunk writes its
/// checkpoint and commits only after `turn` resolves (the previous chunk
/// committed), and rolls back if it fails, so that checkpoints commit in
/// chunk order.
#[async_trait]
pub trait Bulk: BulkSource {
    /// `stream` in raw form.
    fn stream_raw(&self, req: StreamRequest) -> mpsc::Receiver<Result<RawRows>>;

    /// Whether `stream_raw` and `ChunkWrite::raw_inserts` are served: raw
    /// cells move only between databases whose writer takes them.
    fn moves_raw(&self) -> bool {
        true
    }

    async fn write_chunk(&self, chunk: &ChunkWrite, turn: Option<Turn>) -> Result<Vec<Value>>;

    /// Whether `table` holds any row at all.
    async fn has_rows(&self, table: &TableInfo) -> Result<bool>;

    /// Refreshes the planner statistics of `table`'s listed columns and,
    /// when given, of the state schema's links table after a bulk load, so
    /// that the next sync's key lookups use their indexes. Only the columns
    /// crmsync looks rows up by: the rest of a large table would double the
    /// cost, and the database's own autovacuum still analyzes it in full
    /// (a partial ANALYZE leaves its count of changed rows alone).
    async fn analyze(
        &self,
        table: Option<(&TableInfo, &[String])>,
        state_schema: Option<&str>,
    ) -> Result<()>;
}
