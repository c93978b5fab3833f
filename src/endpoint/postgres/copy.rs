//! Backfill on PostgreSQL: one streaming keyset read per table, and chunk
//! writes through `COPY ... FROM STDIN (FORMAT binary)`.
//!
//! Inserted rows need their keys for the links. When the key is mapped,
//! the rows carry it; when it comes from a sequence (serial or identity
//! `BY DEFAULT`), the keys are drawn with `nextval` first and the rows are
//! copied straight into the target. Otherwise (identity `ALWAYS`, a
//! default expression, or a table with a BEFORE INSERT row trigger, which
//! may set the key itself) the rows are copied into a temporary staging
//! table and moved with one `INSERT ... SELECT ... ORDER BY ... RETURNING`.

use super::{qualified, quote, refs, PgEndpoint};
use crate::endpoint::bulk::{
    Bulk, BulkSource, Cell, ChunkWrite, FreshLinks, RawInserts, RawRows, Rows, StreamRequest, Turn,
};
use crate::endpoint::{EndpointError, Result, Scan};
use crate::state::postgres::{save_checkpoint_in, write_links_in};
use crate::value::Value;
use async_trait::async_trait;
use bytes::BufMut;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::types::{IsNull, ToSql, Type};

/// How inserted rows get their keys.
enum Keys {
    /// The key is one of the inserted columns.
    Given,
    /// Drawn from this sequence before the copy.
    Sequence(String),
    /// Assigned by the database during the insert.
    Database,
}

fn live_sql(deleted: Option<&str>) -> String {
    deleted
        .map(|d| format!(" AND ({0} IS NULL OR {0} = 0)", quote(d)))
        .unwrap_or_default()
}

/// Bytes of COPY data sent per message. The driver's own binary writer
/// sends every 4 KiB, each a hand-over to the connection task and a
/// system call; larger messages cost a fraction of that.
const COPY_MESSAGE: usize = 256 * 1024;

type EncodeError = Box<dyn std::error::Error + Sync + Send>;

/// Appends one row in PostgreSQL's binary COPY format: the field count,
/// then each field's length (-1 for NULL) and its binary value.
fn encode_row(
    buf: &mut bytes::BytesMut,
    row: &[&(dyn ToSql + Sync)],
    types: &[Type],
) -> std::result::Result<(), EncodeError> {
    if row.len() != types.len() {
        return Err(format!("{} values for {} columns", row.len(), types.len()).into());
    }
    buf.put_i16(i16::try_from(row.len())?);
    for (v, ty) in row.iter().zip(types) {
        encode_field(buf, *v, ty)?;
    }
    Ok(())
}

/// Appends one field: its length (-1 for NULL), then its binary value.
fn encode_field(
    buf: &mut bytes::BytesMut,
    v: &(dyn ToSql + Sync),
    ty: &Type,
) -> std::result::Result<(), EncodeError> {
    let at = buf.len();
    buf.put_i32(0);
    match v.to_sql_checked(ty, buf)? {
        IsNull::Yes => buf[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes()),
        IsNull::No => {
            let len = i32::try_from(buf.len() - at - 4)?;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

impl PgEndpoint {
    /// One keyset query per chunk, issued only when the channel has room:
    /// a single streaming query would let the driver buffer the whole
    /// table in memory when the writer is slower than the reader.
    /// `convert` turns a chunk's rows into what is sent, with the key of
    /// its last row; it is told whether the server has checked that text
    /// is valid UTF-8.
    fn stream_with<T, F>(&self, req: StreamRequest, convert: F) -> mpsc::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: Fn(Vec<tokio_postgres::Row>, usize, bool) -> Result<(T, Option<Value>)> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(req.depth.max(1));
        let pool = self.db.pool().clone();
        let side = self.db.side();
        let key = quote(&req.scan.key);
        // Child values take parameters: after the key's in `next`.
        let base = |first: usize| {
            let mut p = super::Params::from(first);
            let sql = format!(
                "SELECT {} FROM {} WHERE true{}{}",
                Self::select_list(&req.scan, &mut p),
                qualified(&req.scan.table),
                live_sql(req.deleted.as_deref()),
                Self::filter_sql(&req.scan),
            );
            (sql, p.values)
        };
        let limit = req.chunk_rows.max(1);
        let (first, child_params) = base(1);
        let first = format!("{first} ORDER BY {key} LIMIT {limit}");
        let next = format!("{} AND {key} > $1 ORDER BY {key} LIMIT {limit}", base(2).0);
        let what = format!("reading {}", req.scan.table.qualified());
        let key_pos = req.scan.position(&req.scan.key).unwrap_or(0);
        tokio::spawn(async move {
            let fail = |e: tokio_postgres::Error| super::query_failure(side, what.clone(), e);
            let conn = match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(EndpointError::Query {
                            side,
                            what: what.clone(),
                            retryable: true,
                            missing_object: false,
                            refused_row: false,
                            source: Box::new(e),
                        }))
                        .await;
                    return;
                }
            };
            // Text arrives converted into UTF-8, which checks it, unless
            // the database stores bytes unchecked (SQL_ASCII).
            let text_checked = match conn.query_one("SHOW server_encoding", &[]).await {
                Ok(r) => r.get::<_, String>(0) != "SQL_ASCII",
                Err(e) => {
                    let _ = tx.send(Err(fail(e))).await;
                    return;
                }
            };
            let (first, next) = match (conn.prepare(&first).await, conn.prepare(&next).await) {
                (Ok(f), Ok(n)) => (f, n),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(fail(e))).await;
                    return;
                }
            };
            let mut after = req.after;
            loop {
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let rows = match &after {
                    None => conn.query(&first, &super::refs(&child_params)).await,
                    Some(k) => {
                        let mut params: Vec<&(dyn ToSql + Sync)> = vec![k];
                        params.extend(super::refs(&child_params));
                        conn.query(&next, &params).await
                    }
                };
                let rows = match rows {
                    Ok(r) => r,
                    Err(e) => {
                        permit.send(Err(fail(e)));
                        return;
                    }
                };
                let n = rows.len();
                if n == 0 {
                    return;
                }
                match convert(rows, key_pos, text_checked) {
                    Ok((chunk, last)) => {
                        after = last;
                        permit.send(Ok(chunk));
                    }
                    Err(e) => {
                        permit.send(Err(e));
                        return;
                    }
                }
                if n < limit || after.is_none() {
                    return;
                }
            }
        });
        rx
    }

    async fn key_source(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        chunk: &ChunkWrite,
    ) -> Result<Keys> {
        // A BEFORE INSERT trigger may set the key whatever the row gave:
        // only the keys the insert returns are the rows' own.
        let row = tx
            .query_one(
                "SELECT pg_get_serial_sequence($1, $2), \
                        (SELECT a.attidentity::text FROM pg_attribute a \
                          WHERE a.attrelid = $1::regclass AND a.attname = $2), \
                        EXISTS (SELECT 1 FROM pg_trigger t \
                                 WHERE t.tgrelid = $1::regclass AND NOT t.tgisinternal \
                                   AND t.tgenabled IN ('O', 'A') AND t.tgtype & 7 = 7)",
                &[&qualified(&chunk.table), &chunk.key],
            )
            .await
            .map_err(|e| self.query_error("looking up the key's sequence", e))?;
        let seq: Option<String> = row.get(0);
        let identity: Option<String> = row.get(1);
        let before_insert: bool = row.get(2);
        if before_insert {
            return Ok(Keys::Database);
        }
        if chunk.columns.contains(&chunk.key) {
            return Ok(Keys::Given);
        }
        Ok(match (seq, identity.as_deref()) {
            (Some(_), Some("a")) | (None, _) => Keys::Database,
            (Some(s), _) => Keys::Sequence(s),
        })
    }

    async fn copy_rows<'r, I>(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        target: &str,
        columns: &[String],
        types: &[Type],
        rows: I,
    ) -> Result<()>
    where
        I: Iterator<Item = Vec<&'r (dyn ToSql + Sync)>> + Send,
    {
        let mut rows = rows;
        self.copy_with(tx, target, columns, |buf| match rows.next() {
            None => Ok(false),
            Some(row) => encode_row(buf, &row, types).map(|()| true),
        })
        .await
    }

    /// Copies the rows `encode` appends to the buffer, one per call,
    /// until it says there are no more.
    async fn copy_with<F>(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        target: &str,
        columns: &[String],
        mut encode: F,
    ) -> Result<()>
    where
        F: FnMut(&mut bytes::BytesMut) -> std::result::Result<bool, EncodeError> + Send,
    {
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let sink = tx
            .copy_in::<_, bytes::Bytes>(&format!(
                "COPY {target} ({}) FROM STDIN (FORMAT binary)",
                cols.join(", ")
            ))
            .await
            .map_err(|e| self.query_error(format!("starting COPY into {target}"), e))?;
        let mut sink = std::pin::pin!(sink);
        let failed = |e| self.query_error(format!("copying rows into {target}"), e);
        let mut buf = bytes::BytesMut::with_capacity(COPY_MESSAGE + 64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension
        while encode(&mut buf)
            .map_err(|e| EndpointError::Schema(format!("encoding a row for {target}: {e}")))?
        {
            if buf.len() >= COPY_MESSAGE {
                sink.send(buf.split().freeze()).await.map_err(failed)?;
                // A buffer of the whole message at once: grown from empty
                // it would be copied over again at every doubling.
                buf.reserve(COPY_MESSAGE + 64 * 1024);
            }
        }
        buf.put_i16(-1);
        sink.send(buf.split().freeze()).await.map_err(failed)?;
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| self.query_error(format!("finishing COPY into {target}"), e))?;
        Ok(())
    }

    async fn column_types(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        target: &str,
        columns: &[String],
    ) -> Result<Vec<Type>> {
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let st = tx
            .prepare(&format!("SELECT {} FROM {target} LIMIT 0", cols.join(", ")))
            .await
            .map_err(|e| self.query_error(format!("reading the column types of {target}"), e))?;
        Ok(st.columns().iter().map(|c| c.type_().clone()).collect())
    }

    async fn insert_chunk(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        chunk: &ChunkWrite,
    ) -> Result<Vec<Value>> {
        let n = match &chunk.raw_inserts {
            Some(raw) => raw.rows.len(),
            None => chunk.inserts.len(),
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        // Row `i`, then `extra` (the key drawn for it, or its place in the
        // staging table) when given.
        let encode = |buf: &mut bytes::BytesMut,
                      i: usize,
                      extra: Option<&Value>,
                      types: &[Type]|
         -> std::result::Result<(), EncodeError> {
            match &chunk.raw_inserts {
                Some(raw) => raw.encode(buf, i, extra, types),
                None => {
                    let mut row = refs(&chunk.inserts[i]);
                    row.extend(extra.map(|x| x as &(dyn ToSql + Sync)));
                    encode_row(buf, &row, types)
                }
            }
        };
        let target = qualified(&chunk.table);
        let source = self.key_source(tx, chunk).await?;
        // With keys from a sequence the key column is copied too.
        let mut columns = chunk.columns.clone();
        if let Keys::Sequence(_) = source {
            columns.push(chunk.key.clone());
        }
        let mut types = self.column_types(tx, &target, &columns).await?;
        match source {
            Keys::Given => {
                let pos = chunk
                    .columns
                    .iter()
                    .position(|c| *c == chunk.key)
                    .unwrap_or(0);
                let keys = match &chunk.raw_inserts {
                    Some(raw) => raw
                        .rows
                        .iter()
                        .map(|r| raw.value(&r[pos], &types[pos]))
                        .collect::<Result<Vec<_>>>()?,
                    None => chunk.inserts.iter().map(|r| r[pos].clone()).collect(),
                };
                let mut i = 0;
                self.copy_with(tx, &target, &columns, |buf| {
                    if i == n {
                        return Ok(false);
                    }
                    encode(buf, i, None, &types)?;
                    i += 1;
                    Ok(true)
                })
                .await?;
                Ok(keys)
            }
            Keys::Sequence(seq) => {
                // One array rather than a row per key.
                let keys: Vec<i64> = tx
                    .query_one(
                        "WITH s AS MATERIALIZED (SELECT $1::text::regclass AS seq) \
                         SELECT array_agg(nextval(s.seq)) \
                           FROM s, generate_series(1, $2::int8)",
                        &[&seq, &(n as i64)],
                    )
                    .await
                    .map_err(|e| self.query_error(format!("drawing keys from {seq}"), e))?
                    .get(0);
                let keys: Vec<Value> = keys.into_iter().map(Value::Int).collect();
                let mut i = 0;
                self.copy_with(tx, &target, &columns, |buf| {
                    if i == n {
                        return Ok(false);
                    }
                    encode(buf, i, Some(&keys[i]), &types)?;
                    i += 1;
                    Ok(true)
                })
                .await?;
                Ok(keys)
            }
            Keys::Database => {
                let cols: Vec<String> = chunk.columns.iter().map(|c| quote(c)).collect();
                let cols = cols.join(", ");
                tx.batch_execute(&format!(
                    "CREATE TEMP TABLE crmsync_stage ON COMMIT DROP AS \
                       SELECT {cols} FROM {target} WITH NO DATA; \
                     ALTER TABLE crmsync_stage ADD COLUMN crmsync_ord int8"
                ))
                .await
                .map_err(|e| self.query_error("creating the staging table", e))?;
                columns.push("crmsync_ord".into());
                types.push(Type::INT8);
                let mut i = 0;
                self.copy_with(tx, "crmsync_stage", &columns, |buf| {
                    if i == n {
                        return Ok(false);
                    }
                    encode(buf, i, Some(&Value::Int(i as i64)), &types)?;
                    i += 1;
                    Ok(true)
                })
                .await?;
                // Rows are inserted, and returned, in the SELECT's order.
                let keys = tx
                    .query(
                        &format!(
                            "INSERT INTO {target} ({cols}) SELECT {cols} FROM crmsync_stage \
                             ORDER BY crmsync_ord RETURNING {}",
                            quote(&chunk.key)
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| self.query_error(format!("inserting into {target}"), e))?;
                let keys = keys
                    .iter()
                    .map(|r| r.try_get::<_, Value>(0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| self.query_error("decoding inserted keys", e))?;
                // Keys pair with rows by place: a row a trigger skipped
                // (returned NULL for) would shift every key after it.
                if keys.len() != n {
                    return Err(EndpointError::Schema(format!(
                        "inserting {n} rows into {target} inserted {}: a BEFORE INSERT trigger \
                         skipped some, so crmsync cannot tell which key is whose; nothing of \
                         this chunk was committed. Let the trigger insert every row crmsync \
                         writes, or leave the table out",
                        keys.len()
                    )));
                }
                tx.batch_execute("DROP TABLE crmsync_stage")
                    .await
                    .map_err(|e| self.query_error("dropping the staging table", e))?;
                Ok(keys)
            }
        }
    }
}

/// A cell as it came over the wire, in binary form.
struct WireCell<'a>(Option<&'a [u8]>);

impl<'a> tokio_postgres::types::FromSql<'a> for WireCell<'a> {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(WireCell(Some(raw)))
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(WireCell(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Rows in raw form: every cell's bytes copied into one buffer.
fn raw_rows(
    side: &'static str,
    rows: Vec<tokio_postgres::Row>,
    text_checked: bool,
) -> Result<RawRows> {
    let types: Vec<Type> = rows
        .first()
        .map(|r| r.columns().iter().map(|c| c.type_().clone()).collect())
        .unwrap_or_default();
    let columns = types.len();
    // Room for rows the size of the first, so that the buffer is seldom
    // grown (and copied) while it fills.
    let first_row: usize = match rows.first() {
        Some(r) => (0..columns)
            .map(|i| {
                r.try_get::<_, WireCell>(i)
                    .map_or(0, |c| c.0.map_or(0, <[u8]>::len))
            })
            .sum(),
        None => 0,
    };
    let mut data = bytes::BytesMut::with_capacity((first_row + first_row / 4) * rows.len());
    let mut cells = Vec::with_capacity(rows.len() * columns);
    for r in &rows {
        for i in 0..columns {
            let cell = r
                .try_get::<_, WireCell>(i)
                .map_err(|e| super::query_failure(side, "reading a row".into(), e))?;
            // Offsets past u32 wrap, but then the chunk is refused below.
            cells.push(cell.0.map(|b| {
                let at = data.len() as u32;
                data.extend_from_slice(b);
                (at, data.len() as u32)
            }));
        }
    }
    if data.len() > u32::MAX as usize {
        return Err(EndpointError::Schema(format!(
            "a chunk of {} rows holds {} bytes, more than a chunk can; lower --chunk-rows",
            rows.len(),
            data.len()
        )));
    }
    Ok(RawRows {
        data: data.freeze(),
        cells,
        columns,
        text_checked,
        decode: std::sync::Arc::new(move |i, raw| decode_cell(&types[i], raw)),
    })
}

/// The value of a cell of type `ty` in binary form (`None`: NULL).
fn decode_cell(ty: &Type, raw: Option<&[u8]>) -> Result<Value> {
    use tokio_postgres::types::FromSql;
    if !<Value as FromSql>::accepts(ty) {
        return Err(EndpointError::Schema(format!(
            "crmsync cannot read values of type {ty}"
        )));
    }
    match raw {
        None => Value::from_sql_null(ty),
        Some(b) => Value::from_sql(ty, b),
    }
    .map_err(|e| EndpointError::Schema(format!("a {ty} value cannot be read: {e}")))
}

impl RawInserts {
    /// The value of a cell in a column of type `ty`.
    fn value(&self, cell: &Cell, ty: &Type) -> Result<Value> {
        match cell {
            Cell::Null => Ok(Value::Null),
            Cell::Value(v) => Ok(v.clone()),
            Cell::Const(i) => Ok(self.constants[*i].clone()),
            Cell::Raw(a, b) => decode_cell(ty, Some(&self.data[*a as usize..*b as usize])),
        }
    }

    /// Appends row `i` in binary COPY form (see [`encode_row`]), then
    /// `extra` when given: cells read raw go over as they came, without
    /// being decoded.
    fn encode(
        &self,
        buf: &mut bytes::BytesMut,
        i: usize,
        extra: Option<&Value>,
        types: &[Type],
    ) -> std::result::Result<(), EncodeError> {
        let row = &self.rows[i];
        let fields = row.len() + usize::from(extra.is_some());
        if fields != types.len() {
            return Err(format!("{fields} values for {} columns", types.len()).into());
        }
        buf.put_i16(i16::try_from(fields)?);
        for (cell, ty) in row.iter().zip(types) {
            match cell {
                Cell::Null => buf.put_i32(-1),
                Cell::Raw(a, b) => {
                    buf.put_i32(i32::try_from(b - a)?);
                    buf.extend_from_slice(&self.data[*a as usize..*b as usize]);
                }
                Cell::Value(v) => encode_field(buf, v, ty)?,
                Cell::Const(c) => encode_field(buf, &self.constants[*c], ty)?,
            }
        }
        if let Some(x) = extra {
            encode_field(buf, x, &types[fields - 1])?;
        }
        Ok(())
    }
}

impl PgEndpoint {
    /// Copies links that are new for certain into the state store: runs
    /// of them whose keys ascend as link blocks, the rest as rows of the
    /// links table (see `state::postgres::blocks`).
    async fn copy_links(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        fresh: &FreshLinks,
        inserted: &[Value],
    ) -> Result<()> {
        use crate::state::{keys, postgres::blocks};
        let ext_keys: Vec<Vec<u8>> = fresh
            .links
            .iter()
            .map(|l| keys::value_bytes(&inserted[l.insert]))
            .collect();
        let crm_ints: Vec<Option<i64>> = fresh
            .links
            .iter()
            .map(|l| keys::stored_int(&l.crm_key))
            .collect();
        let ext_ints: Vec<Option<i64>> = fresh
            .links
            .iter()
            .map(|l| match inserted[l.insert] {
                Value::Int(i) => Some(i),
                _ => None,
            })
            .collect();
        let shadows: Vec<&[u8]> = fresh.links.iter().map(|l| l.shadow.as_slice()).collect();
        let bytes: usize = fresh
            .links
            .iter()
            .zip(&ext_keys)
            .map(|(l, x)| l.crm_key.len() + x.len() + l.shadow.len())
            .sum();
        let per_link = bytes / fresh.links.len().max(1);
        let (made, in_block) = blocks::split(&crm_ints, &ext_ints, &shadows, per_link);
        let entity = fresh.entity.as_str();
        let schema = quote(&fresh.schema);
        if !made.is_empty() {
            let columns: Vec<String> = blocks::COLUMNS.iter().map(|c| c.to_string()).collect();
            let types = [
                Type::TEXT,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8_ARRAY,
                Type::INT8_ARRAY,
                Type::BYTEA_ARRAY,
            ];
            let iter = made.iter().map(|b| {
                vec![
                    &entity as &(dyn ToSql + Sync),
                    &b.bounds[0] as &(dyn ToSql + Sync),
                    &b.bounds[1] as &(dyn ToSql + Sync),
                    &b.bounds[2] as &(dyn ToSql + Sync),
                    &b.bounds[3] as &(dyn ToSql + Sync),
                    &b.crm as &(dyn ToSql + Sync),
                    &b.external as &(dyn ToSql + Sync),
                    &b.shadows as &(dyn ToSql + Sync),
                ]
            });
            let target = format!("{schema}.link_blocks");
            self.copy_rows(tx, &target, &columns, &types, iter).await?;
        }
        if in_block.iter().all(|b| *b) {
            return Ok(());
        }
        let columns: Vec<String> = ["entity", "crm_key", "external_key", "shadow"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let types = [Type::TEXT, Type::BYTEA, Type::BYTEA, Type::BYTEA];
        let target = format!("{schema}.links");
        let iter = fresh
            .links
            .iter()
            .zip(&ext_keys)
            .zip(&in_block)
            .filter(|(_, b)| !**b)
            .map(|((l, x), _)| {
                vec![
                    &entity as &(dyn ToSql + Sync),
                    &l.crm_key as &(dyn ToSql + Sync),
                    x as &(dyn ToSql + Sync),
                    &l.shadow as &(dyn ToSql + Sync),
                ]
            });
        self.copy_rows(tx, &target, &columns, &types, iter).await
    }
}

#[async_trait]
impl BulkSource for PgEndpoint {
    fn stream(&self, req: StreamRequest) -> mpsc::Receiver<Result<Rows>> {
        let side = self.db.side();
        self.stream_with(req, move |rows, key_pos, _| {
            let rows = super::rows_to_values(rows)
                .map_err(|e| super::query_failure(side, "decoding rows".into(), e))?;
            let last = rows.last().map(|r| r[key_pos].clone());
            Ok((rows, last))
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn duplicates(
        &self,
        scan: &Scan,
        columns: &[String],
        first: &[Value],
        deleted: Option<&str>,
    ) -> Result<Vec<Vec<Value>>> {
        if columns.is_empty() || first.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        let cols = cols.join(", ");
        let sql = format!(
            "SELECT {cols} FROM {} WHERE {} = ANY($1){}{} GROUP BY {cols} HAVING count(*) > 1",
            qualified(&scan.table),
            quote(&columns[0]),
            live_sql(deleted),
            Self::filter_sql(scan),
        );
        let first = first.to_vec();
        let what = format!("counting matches in {}", scan.table.qualified());
        let rows = self.query_by_keys(&sql, &[&first], &what).await?;
        super::rows_to_values(rows).map_err(|e| self.query_error("decoding matches", e))
    }
}

#[async_trait]
impl Bulk for PgEndpoint {
    fn stream_raw(&self, req: StreamRequest) -> mpsc::Receiver<Result<RawRows>> {
        let side = self.db.side();
        self.stream_with(req, move |rows, key_pos, text_checked| {
            let raw = raw_rows(side, rows, text_checked)?;
            let last = match raw.len() {
                0 => None,
                n => Some(raw.value(n - 1, key_pos)?),
            };
            Ok((raw, last))
        })
    }

    async fn analyze(
        &self,
        table: Option<(&crate::endpoint::TableInfo, &[String])>,
        state_schema: Option<&str>,
    ) -> Result<()> {
        let list = |cols: &[String]| {
            let cols: Vec<String> = cols.iter().map(|c| quote(c)).collect();
            cols.join(", ")
        };
        let mut names: Vec<String> = table
            .map(|(t, cols)| format!("{} ({})", qualified(t), list(cols)))
            .into_iter()
            .collect();
        // The shadows' statistics serve no query.
        if let Some(s) = state_schema.map(quote) {
            names.push(format!("{s}.links (entity, crm_key, external_key)"));
            // Whole: its arrays keep no statistics, and the bucket
            // expressions of its indexes get theirs only so.
            names.push(format!("{s}.link_blocks"));
        }
        if names.is_empty() {
            return Ok(());
        }
        let fail = |e| self.query_error(format!("analyzing {}", names.join(", ")), e);
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(fail)?;
        // A sample of 3,000 pages, not the server's 30,000: enough for the
        // key lookups and change-time ranges of the next sync, and a
        // tenth of the time on a table just loaded (on the benchmark's
        // 267 MB, 0.02 s instead of 0.2 s to 1.2 s, which read nearly every
        // page). Autovacuum analyzes the new rows again later.
        tx.batch_execute(&format!(
            "SET LOCAL default_statistics_target = 10; ANALYZE {}",
            names.join(", ")
        ))
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }

    async fn has_rows(&self, table: &crate::endpoint::TableInfo) -> Result<bool> {
        let conn = self.conn().await?;
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", qualified(table));
        conn.query_one(&sql, &[])
            .await
            .map(|r| r.get(0))
            .map_err(|e| self.query_error(format!("looking into {}", table.qualified()), e))
    }

    async fn write_chunk(&self, chunk: &ChunkWrite, turn: Option<Turn>) -> Result<Vec<Value>> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?;
        let table = chunk.table.qualified();
        let mut batch = crate::endpoint::WriteBatch::new(chunk.table.clone(), chunk.key.clone());
        batch.updates = chunk.updates.clone();
        self.apply_updates(&tx, &batch).await?;
        let t = std::time::Instant::now();
        let keys = self.insert_chunk(&tx, chunk).await?;
        tracing::debug!("chunk: {} rows copied in {:?}", keys.len(), t.elapsed());
        if let Some(links) = &chunk.links {
            let resolved = links.resolved(&keys);
            write_links_in(&tx, &resolved)
                .await
                .map_err(|e| self.query_error("writing links", e))?;
        }
        if let Some(fresh) = chunk.fresh_links.as_ref().filter(|l| !l.links.is_empty()) {
            self.copy_links(&tx, fresh, &keys).await?;
        }
        tracing::debug!("chunk: links written at {:?}", t.elapsed());
        if let Some(turn) = turn {
            turn.await.map_err(|_| {
                EndpointError::Schema(
                    "an earlier backfill chunk did not commit; this one was rolled back".into(),
                )
            })?;
        }
        if let Some(cp) = &chunk.checkpoint {
            save_checkpoint_in(&tx, &cp.schema, &cp.entity, &cp.direction, &cp.checkpoint)
                .await
                .map_err(|e| self.query_error("saving the backfill checkpoint", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.query_error(format!("committing a backfill chunk of {table}"), e))?;
        tracing::debug!("chunk: committed at {:?}", t.elapsed());
        Ok(keys)
    }
}
