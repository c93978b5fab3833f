//! The bulk side of SQL Server: what a backfill reads (a Sage CRM there is
//! copied out in key order, a page per chunk, by the same queries and
//! decoding as a sync), and the chunk writer that loads rows through a
//! staging table (`load`) and commits them with their updates, links and
//! checkpoint.

use super::error::{pool_failure, query_failure};
use super::types::Param;
use super::{decode_rows, qualified, quote, MssqlEndpoint, Params, MAX_PARAMS};
use crate::endpoint::bulk::{Bulk, BulkSource, ChunkWrite, RawRows, Rows, StreamRequest, Turn};
use crate::endpoint::{EndpointError, Result, Scan, TableInfo, WriteBatch};
use crate::value::Value;
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use tiberius::ToSql;
use tokio::sync::mpsc;

/// Leaves out rows whose `deleted` flag column is set.
fn live_sql(deleted: Option<&str>) -> String {
    deleted
        .map(|d| format!(" AND ({0} IS NULL OR {0} = 0)", quote(d)))
        .unwrap_or_default()
}

#[async_trait]
impl BulkSource for MssqlEndpoint {
    fn stream(&self, req: StreamRequest) -> mpsc::Receiver<Result<Rows>> {
        let (tx, rx) = mpsc::channel(req.depth.max(1));
        let pool = self.pool.clone();
        let side = self.side;
        let scan = &req.scan;
        let key = quote(&scan.key);
        let limit = req.chunk_rows.max(1);
        // Child values take parameters: after the key's in `next`.
        let base = |first: usize| {
            let mut p = Params::from(first);
            let sql = format!(
                "SELECT TOP ({limit}) {} FROM {} WHERE 1 = 1{}{}",
                self.select_list(scan, &mut p),
                qualified(&scan.table),
                live_sql(req.deleted.as_deref()),
                Self::filter_sql(scan),
            );
            (sql, p.values)
        };
        let (first, child_values) = base(1);
        let first = format!("{first} ORDER BY {key}");
        let next = format!(
            "{} AND {key} > {} ORDER BY {key}",
            base(2).0,
            self.placeholder(&scan.table, &scan.key, 1)
        );
        let key_ty = scan.table.column(&scan.key).ok().map(|c| c.ty.clone());
        let key_pos = scan.position(&scan.key).unwrap_or(0);
        let what = format!("reading {}", scan.table.qualified());
        let mut after = req.after;
        tokio::spawn(async move {
            let mut conn = match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(pool_failure(side, e))).await;
                    return;
                }
            };
            loop {
                // Wait for room before reading: memory stays bounded.
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let read = async {
                    let children: Vec<Param> = child_values
                        .iter()
                        .map(|v| Param::new(v.clone(), None))
                        .collect();
                    let stream = match &after {
                        None => {
                            let refs: Vec<&dyn ToSql> =
                                children.iter().map(|p| p as &dyn ToSql).collect();
                            conn.query(&first, &refs).await?
                        }
                        Some(k) => {
                            let p = Param::new(k.clone(), key_ty.clone());
                            let mut refs: Vec<&dyn ToSql> = vec![&p as &dyn ToSql];
                            refs.extend(children.iter().map(|p| p as &dyn ToSql));
                            conn.query(&next, &refs).await?
                        }
                    };
                    decode_rows(stream.into_first_result().await?)
                };
                match read.await {
                    Ok(rows) => {
                        let n = rows.len();
                        let Some(last) = rows.last() else {
                            return;
                        };
                        after = Some(last[key_pos].clone());
                        permit.send(Ok(rows));
                        if n < limit {
                            return;
                        }
                    }
                    Err(e) => {
                        permit.send(Err(query_failure(side, what, e)));
                        return;
                    }
                }
            }
        });
        rx
    }

    fn kind(&self) -> &'static str {
        "mssql"
    }

    async fn duplicates(
        &self,
        scan: &Scan,
        columns: &[String],
        first: &[Value],
        deleted: Option<&str>,
    ) -> Result<Vec<Vec<Value>>> {
        let first: Vec<&Value> = first.iter().filter(|v| !v.is_null()).collect();
        if columns.is_empty() || first.is_empty() {
            return Ok(Vec::new());
        }
        // The database's collation may take 'Acme' and 'ACME ' for one
        // value; crmsync matches exactly. So the rows come back and are
        // counted here, by their exact values.
        // With the key last, so that a row fetched by two chunks of the
        // list (one value in two spellings) counts once.
        let mut read = columns.to_vec();
        read.push(scan.key.clone());
        let only = Scan {
            columns: read,
            ..scan.clone()
        };
        let mut seen = HashSet::new();
        let mut count: HashMap<String, (usize, Vec<Value>)> = HashMap::new();
        for chunk in first.chunks(MAX_PARAMS) {
            let mut p = Params::from(chunk.len() + 1);
            let sql = format!(
                "SELECT {} FROM {} WHERE {} IN ({}){}{}",
                self.select_list(&only, &mut p),
                qualified(&scan.table),
                quote(&columns[0]),
                self.placeholders_for(&scan.table, &columns[0], 1, chunk.len()),
                live_sql(deleted),
                Self::filter_sql(scan),
            );
            let mut params: Vec<Param> = chunk
                .iter()
                .map(|v| self.param(&scan.table, &columns[0], v))
                .collect();
            params.extend(super::child_params(p));
            let what = format!("counting matches in {}", scan.table.qualified());
            for mut row in self.rows(&sql, &params, &what).await? {
                let key = row.pop().map(|k| k.key_string()).unwrap_or_default();
                if !seen.insert(key) {
                    continue;
                }
                let tuple: Vec<String> = row.iter().map(Value::key_string).collect();
                count.entry(tuple.join("\u{1f}")).or_insert((0, row)).0 += 1;
            }
        }
        Ok(count
            .into_values()
            .filter(|(n, _)| *n > 1)
            .map(|(_, row)| row)
            .collect())
    }
}

#[async_trait]
impl Bulk for MssqlEndpoint {
    /// Raw cells move between PostgreSQL databases only: SQL Server's rows
    /// are decoded (see `moves_raw`).
    fn stream_raw(&self, _req: StreamRequest) -> mpsc::Receiver<Result<RawRows>> {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(EndpointError::Schema(
            "rows of SQL Server are not read in raw form".into(),
        )));
        rx
    }

    fn moves_raw(&self) -> bool {
        false
    }

    async fn write_chunk(&self, chunk: &ChunkWrite, turn: Option<Turn>) -> Result<Vec<Value>> {
        super::write::refuse_trigger_maintained(&chunk.table)?;
        let table = chunk.table.qualified();
        let mut conn = self.conn().await?;
        self.begin(&mut conn).await?;
        let result = async {
            if !chunk.updates.is_empty() {
                let mut batch = WriteBatch::new(chunk.table.clone(), chunk.key.clone());
                batch.updates = chunk.updates.clone();
                self.apply_in(&mut conn, &batch, &table).await?;
            }
            let t = std::time::Instant::now();
            let fresh = chunk.fresh_links.as_ref().filter(|l| !l.links.is_empty());
            let loaded = self.load_inserts(&mut conn, chunk, fresh).await?;
            let keys = loaded.keys;
            tracing::debug!("chunk: {} rows loaded in {:?}", keys.len(), t.elapsed());
            if let Some(links) = &chunk.links {
                let resolved = links.resolved(&keys);
                crate::state::mssql::write_links_in(&mut conn, &resolved)
                    .await
                    .map_err(|e| self.query_error("writing links", e))?;
            }
            if let Some(fresh) = fresh.filter(|_| !loaded.links_written) {
                self.load_links(&mut conn, fresh, &keys).await?;
            }
            if let Some(turn) = turn {
                turn.await.map_err(|_| {
                    EndpointError::Schema(
                        "an earlier backfill chunk did not commit; this one was rolled back".into(),
                    )
                })?;
            }
            if let Some(cp) = &chunk.checkpoint {
                crate::state::mssql::save_checkpoint_in(
                    &mut conn,
                    &cp.schema,
                    &cp.entity,
                    &cp.direction,
                    &cp.checkpoint,
                )
                .await
                .map_err(|e| self.query_error("saving the backfill checkpoint", e))?;
            }
            Ok::<_, EndpointError>(keys)
        }
        .await;
        self.end(&mut conn, result, &table).await
    }

    async fn has_rows(&self, table: &TableInfo) -> Result<bool> {
        let sql = format!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM {}) THEN 1 ELSE 0 END",
            qualified(table)
        );
        let rows = self
            .rows(&sql, &[], &format!("looking into {}", table.qualified()))
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .is_some_and(|v| *v == Value::Int(1)))
    }

    /// SQL Server updates a table's statistics by itself once enough of it
    /// changed (AUTO_UPDATE_STATISTICS, on by default); nothing to do.
    async fn analyze(
        &self,
        _table: Option<(&TableInfo, &[String])>,
        _state_schema: Option<&str>,
    ) -> Result<()> {
        Ok(())
    }
}
