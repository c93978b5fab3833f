//! The write path: a batch of inserts, updates and deletes in one
//! transaction, with new keys taken from eware_get_identity_id, IDENTITY
//! (SCOPE_IDENTITY()) or OUTPUT INSERTED … INTO, by Sage CRM's rules, and the
//! batch's links in the same transaction when the state lives here.

use super::error::DbFailure;
use super::types::{from_column, Param};
use super::TdsClient;
use super::{qualified, quote, MssqlEndpoint, MAX_PARAMS};
use crate::endpoint::{Applied, Assign, EndpointError, Result, WriteBatch};
use crate::state::LinkBatch;
use crate::value::Value;
use tiberius::ToSql;

/// Batches with fewer inserts than this insert row by row; more go through
/// a staging table in one statement.
const STAGED_MIN: usize = 20;

/// Sage CRM maintains this table with triggers; crmsync never writes it.
const TRIGGER_MAINTAINED: &str = "CRMEmailPhoneData";

/// Refuses writes to a table that Sage CRM's triggers maintain.
pub(super) fn refuse_trigger_maintained(table: &crate::endpoint::TableInfo) -> Result<()> {
    if table.name.eq_ignore_ascii_case(TRIGGER_MAINTAINED) {
        return Err(EndpointError::Schema(format!(
            "{} is maintained by Sage CRM's triggers; crmsync never writes it",
            table.qualified()
        )));
    }
    Ok(())
}

impl MssqlEndpoint {
    /// [`Endpoint::apply`](crate::endpoint::Endpoint::apply): the batch in one
    /// transaction.
    pub(super) async fn apply_batch(
        &self,
        batch: &WriteBatch,
        links: Option<&LinkBatch>,
    ) -> Result<Applied> {
        refuse_trigger_maintained(&batch.table)?;
        // Child values go to their own rows after the entity rows.
        let split = crate::endpoint::children::split(batch);
        let (batch, pending) = match &split {
            Some((own, pending)) => (own, Some(pending)),
            None => (batch, None),
        };
        let table = batch.table.qualified();
        let mut conn = self.conn().await?;
        self.begin(&mut conn).await?;
        let result = async {
            let applied = self.apply_in(&mut conn, batch, &table).await?;
            if let Some(pending) = pending.filter(|p| !p.is_empty()) {
                self.write_children(&mut conn, pending, &applied.inserted_keys)
                    .await?;
            }
            // The links commit with the rows they describe.
            if let Some(links) = links {
                let resolved = links.resolved(&applied.inserted_keys);
                crate::state::mssql::write_links_in(&mut conn, &resolved)
                    .await
                    .map_err(|e| self.query_error("writing links", e))?;
            }
            Ok::<_, EndpointError>(applied)
        }
        .await;
        self.end(&mut conn, result, &table).await
    }

    /// Opens a transaction in which any error rolls everything back
    /// (XACT_ABORT), so a failed batch leaves nothing behind (see
    /// [`crate::db::mssql::BEGIN`]).
    pub(super) async fn begin(&self, conn: &mut TdsClient) -> Result<()> {
        conn.simple_query(crate::db::mssql::BEGIN)
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?
            .into_results()
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?;
        Ok(())
    }

    /// Commits the transaction `begin` opened when `result` is a success,
    /// rolls it back otherwise.
    pub(super) async fn end<T>(
        &self,
        conn: &mut TdsClient,
        result: Result<T>,
        table: &str,
    ) -> Result<T> {
        match result {
            Ok(v) => {
                conn.simple_query("COMMIT TRANSACTION")
                    .await
                    .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?
                    .into_results()
                    .await
                    .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?;
                Ok(v)
            }
            Err(e) => {
                let rollback = async {
                    conn.simple_query("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
                        .await?
                        .into_results()
                        .await
                };
                if let Err(r) = rollback.await {
                    tracing::debug!("rollback after a failed batch: {}", DbFailure::from(&r));
                }
                Err(e)
            }
        }
    }

    pub(super) async fn apply_in(
        &self,
        conn: &mut TdsClient,
        batch: &WriteBatch,
        table: &str,
    ) -> Result<Applied> {
        let inserted_keys = match self.staged_inserts(conn, batch).await? {
            Some(keys) => keys,
            None => self.apply_rows(conn, batch, table).await?.inserted_keys,
        };
        self.apply_changes(conn, batch, table).await?;
        Ok(Applied { inserted_keys })
    }

    /// The batch's inserts as one set-based insert through the staging
    /// table (`load`), when there are many and they are alike: the same
    /// columns, each a value in every row, or the server's clock in every
    /// row, or (the key) an id from `eware_get_identity_id`, drawn as a
    /// block in one round trip. `None` when the batch is not such.
    async fn staged_inserts(
        &self,
        conn: &mut TdsClient,
        batch: &WriteBatch,
    ) -> Result<Option<Vec<Value>>> {
        let [first, ..] = batch.inserts.as_slice() else {
            return Ok(None);
        };
        if batch.inserts.len() < STAGED_MIN {
            return Ok(None);
        }
        let kind = |a: &Assign| std::mem::discriminant(a);
        let alike = batch.inserts.iter().all(|ins| {
            ins.columns.len() == first.columns.len()
                && ins
                    .columns
                    .iter()
                    .zip(&first.columns)
                    .all(|((c, a), (c0, a0))| c == c0 && kind(a) == kind(a0))
        });
        if !alike {
            return Ok(None);
        }
        let names: Vec<String> = first.columns.iter().map(|(c, _)| c.clone()).collect();
        let mut exprs = Vec::with_capacity(names.len());
        let mut allocate = None;
        for (c, a) in &first.columns {
            match a {
                Assign::Value(_) => exprs.push(None),
                Assign::Now => exprs.push(Some(self.now_expr(batch, c))),
                Assign::AllocateId { table } if c.eq_ignore_ascii_case(&batch.key) => {
                    allocate = Some(table.clone());
                    exprs.push(None);
                }
                Assign::AllocateId { .. } => return Ok(None),
            }
        }
        let ids = match &allocate {
            Some(t) => self.allocate_ids(conn, t, batch.inserts.len()).await?,
            None => Vec::new(),
        };
        let rows: Vec<Vec<Value>> = batch
            .inserts
            .iter()
            .enumerate()
            .map(|(r, ins)| {
                ins.columns
                    .iter()
                    .filter_map(|(_, a)| match a {
                        Assign::Value(v) => Some(v.clone()),
                        Assign::AllocateId { .. } => ids.get(r).cloned(),
                        Assign::Now => None,
                    })
                    .collect()
            })
            .collect();
        let staged = super::load::Staged {
            table: &batch.table,
            key: &batch.key,
            columns: &names,
            exprs,
            rows: &rows,
            links: None,
        };
        Ok(self.insert_staged(conn, &staged).await?.map(|s| s.keys))
    }

    /// `n` new ids for `table` from Sage CRM's `eware_get_identity_id`, in
    /// one round trip.
    async fn allocate_ids(
        &self,
        conn: &mut TdsClient,
        table: &str,
        n: usize,
    ) -> Result<Vec<Value>> {
        let sql: String = (0..n)
            .map(|i| {
                format!(
                    "DECLARE @id{i} int; EXEC @id{i} = eware_get_identity_id @P1; SELECT @id{i}; "
                )
            })
            .collect();
        let what = format!("allocating {n} ids for {table}");
        let p = Param::new(Value::Text(table.to_string()), None);
        let ids: Vec<Value> = conn
            .query(sql, &[&p as &dyn ToSql])
            .await
            .map_err(|e| self.query_error(what.clone(), e))?
            .into_results()
            .await
            .map_err(|e| self.query_error(what.clone(), e))?
            .into_iter()
            .flatten()
            .map(|r| {
                r.into_iter()
                    .next()
                    .map(|d| from_column(&d))
                    .transpose()
                    .map(|v| v.unwrap_or(Value::Null))
            })
            .collect::<tiberius::Result<_>>()
            .map_err(|e| self.query_error("decoding allocated ids", e))?;
        if ids.len() != n || ids.iter().any(Value::is_null) {
            return Err(EndpointError::Schema(format!(
                "eware_get_identity_id gave {} ids for {table} where {n} were asked",
                ids.iter().filter(|v| !v.is_null()).count()
            )));
        }
        Ok(ids)
    }

    /// The batch's inserts one statement each.
    pub(super) async fn apply_rows(
        &self,
        conn: &mut TdsClient,
        batch: &WriteBatch,
        table: &str,
    ) -> Result<Applied> {
        let mut inserted_keys = Vec::with_capacity(batch.inserts.len());
        for ins in &batch.inserts {
            let (sql, params, given) = self.insert_sql(batch, &ins.columns);
            let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
            let what = format!("inserting into {table}");
            let rows = conn
                .query(sql, &refs)
                .await
                .map_err(|e| self.query_error(what.clone(), e))?
                .into_results()
                .await
                .map_err(|e| self.query_error(what.clone(), e))?;
            let key = match given {
                Some(k) => k,
                None => {
                    let row = rows.into_iter().flatten().next().ok_or_else(|| {
                        EndpointError::Schema(format!("an insert into {table} returned no key"))
                    })?;
                    let v = row
                        .into_iter()
                        .next()
                        .map(|d| from_column(&d))
                        .transpose()
                        .map_err(|e| self.query_error("decoding an inserted key", e))?
                        .unwrap_or(Value::Null);
                    // SCOPE_IDENTITY() is numeric(38,0): back to the key's type.
                    match batch.table.column(&batch.key) {
                        Ok(c) => v.clone().coerce(&c.ty, None, false).unwrap_or(v),
                        Err(_) => v,
                    }
                }
            };
            inserted_keys.push(key);
        }
        Ok(Applied { inserted_keys })
    }

    /// The batch's updates and deletes.
    async fn apply_changes(
        &self,
        conn: &mut TdsClient,
        batch: &WriteBatch,
        table: &str,
    ) -> Result<()> {
        for up in &batch.updates {
            let mut params = Vec::new();
            let sets: Vec<String> = up
                .set
                .iter()
                .map(|(c, a)| {
                    format!(
                        "{} = {}",
                        quote(c),
                        self.assign_expr(batch, c, a, &mut params)
                    )
                })
                .collect();
            params.push(self.param(&batch.table, &batch.key, &up.key));
            let sql = format!(
                "UPDATE {} SET {} WHERE {} = {}",
                qualified(&batch.table),
                sets.join(", "),
                quote(&batch.key),
                self.placeholder(&batch.table, &batch.key, params.len())
            );
            let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
            conn.execute(sql, &refs)
                .await
                .map_err(|e| self.query_error(format!("updating {table}"), e))?;
        }
        for chunk in batch.deletes.chunks(MAX_PARAMS) {
            let sql = format!(
                "DELETE FROM {} WHERE {} IN ({})",
                qualified(&batch.table),
                quote(&batch.key),
                self.placeholders_for(&batch.table, &batch.key, 1, chunk.len())
            );
            let params: Vec<Param> = chunk
                .iter()
                .map(|k| self.param(&batch.table, &batch.key, k))
                .collect();
            let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
            conn.execute(sql, &refs)
                .await
                .map_err(|e| self.query_error(format!("deleting from {table}"), e))?;
        }
        Ok(())
    }

    /// The statement of one insert, its parameters, and the key when the
    /// insert gives it itself.
    ///
    /// The new key comes back by `SELECT @id` (eware_get_identity_id), by
    /// `SCOPE_IDENTITY()` (IDENTITY), or else (a key drawn by a default,
    /// such as `NEWID()`) by `OUTPUT INSERTED.key INTO` a table variable:
    /// SQL Server refuses `OUTPUT` without `INTO` on a table with enabled
    /// triggers (error 334), and Sage CRM's and most ERPs' tables carry
    /// triggers.
    fn insert_sql(
        &self,
        batch: &WriteBatch,
        cols: &[(String, Assign)],
    ) -> (String, Vec<Param>, Option<Value>) {
        let mut params = Vec::new();
        let mut prefix = String::new();
        let mut names = Vec::new();
        let mut exprs = Vec::new();
        let mut given = None;
        let mut allocated = false;
        for (c, a) in cols {
            names.push(quote(c));
            match a {
                Assign::AllocateId { table } => {
                    params.push(Param::new(Value::Text(table.clone()), None));
                    prefix = format!(
                        "DECLARE @id int; EXEC @id = eware_get_identity_id @P{}; ",
                        params.len()
                    );
                    allocated = c.eq_ignore_ascii_case(&batch.key);
                    exprs.push("@id".to_string());
                }
                other => {
                    if c.eq_ignore_ascii_case(&batch.key) {
                        if let Assign::Value(v) = other {
                            given = Some(v.clone());
                        }
                    }
                    exprs.push(self.assign_expr(batch, c, other, &mut params));
                }
            }
        }
        let identity = batch.table.column(&batch.key).is_ok_and(|k| k.identity);
        let table = qualified(&batch.table);
        let key = quote(&batch.key);
        let (output, suffix) = if given.is_some() {
            (String::new(), String::new())
        } else if allocated {
            (String::new(), "; SELECT @id".to_string())
        } else if identity {
            (String::new(), "; SELECT SCOPE_IDENTITY()".to_string())
        } else {
            prefix.push_str(&format!(
                "DECLARE @k TABLE (k {}); ",
                self.declaration(&batch.table, &batch.key)
            ));
            (
                format!(" OUTPUT INSERTED.{key} INTO @k"),
                "; SELECT k FROM @k".to_string(),
            )
        };
        let body = if names.is_empty() {
            format!("INSERT INTO {table}{output} DEFAULT VALUES")
        } else {
            format!(
                "INSERT INTO {table} ({}){output} VALUES ({})",
                names.join(", "),
                exprs.join(", ")
            )
        };
        (format!("{prefix}{body}{suffix}"), params, given)
    }

    /// The server's clock in the form of `column`.
    fn now_expr(&self, batch: &WriteBatch, column: &str) -> String {
        let native = self.native(&batch.table, column).map(|n| n.name);
        match native.as_deref() {
            Some("datetimeoffset") => "SYSDATETIMEOFFSET()".into(),
            Some("datetime2") => "SYSDATETIME()".into(),
            Some("date") => "CAST(GETDATE() AS date)".into(),
            _ => "GETDATE()".into(),
        }
    }

    fn assign_expr(
        &self,
        batch: &WriteBatch,
        column: &str,
        a: &Assign,
        params: &mut Vec<Param>,
    ) -> String {
        match a {
            Assign::Value(v) => {
                params.push(self.param(&batch.table, column, v));
                format!("@P{}", params.len())
            }
            Assign::Now => self.now_expr(batch, column),
            // Ids are allocated only for the key of an insert, which
            // insert_sql handles before the INSERT; `@id` is its variable.
            Assign::AllocateId { .. } => "@id".into(),
        }
    }
}
