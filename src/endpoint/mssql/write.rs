//! The write path: a batch of inserts, updates and deletes in one
//! transaction, with new keys taken from eware_get_identity_id, IDENTITY
//! (SCOPE_IDENTITY()) or OUTPUT INSERTED, by Sage CRM's rules, and the
//! batch's links in the same transaction when the state lives here.

use super::error::DbFailure;
use super::types::{from_column, Param};
use super::{placeholders, qualified, quote, MssqlEndpoint, MAX_PARAMS};
use crate::endpoint::{Applied, Assign, EndpointError, Result, WriteBatch};
use crate::state::LinkBatch;
use crate::value::Value;
use tiberius::{Client, ToSql};
use tokio::net::TcpStream;

/// Sage CRM maintains this table with triggers; crmsync never writes it.
const TRIGGER_MAINTAINED: &str = "CRMEmailPhoneData";

impl MssqlEndpoint {
    /// [`Endpoint::apply`](crate::endpoint::Endpoint::apply): the batch in one
    /// transaction.
    pub(super) async fn apply_batch(
        &self,
        batch: &WriteBatch,
        links: Option<&LinkBatch>,
    ) -> Result<Applied> {
        if batch.table.name.eq_ignore_ascii_case(TRIGGER_MAINTAINED) {
            return Err(EndpointError::Schema(format!(
                "{} is maintained by Sage CRM's triggers; crmsync never writes it",
                batch.table.qualified()
            )));
        }
        // Child values go to their own rows after the entity rows.
        let split = crate::endpoint::children::split(batch);
        let (batch, pending) = match &split {
            Some((own, pending)) => (own, Some(pending)),
            None => (batch, None),
        };
        let table = batch.table.qualified();
        let mut conn = self.conn().await?;
        // XACT_ABORT: any error rolls the whole transaction back, so a
        // failed batch leaves nothing behind.
        conn.simple_query("SET XACT_ABORT ON; BEGIN TRANSACTION")
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?
            .into_results()
            .await
            .map_err(|e| self.query_error("starting a transaction", e))?;
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
        match result {
            Ok(applied) => {
                conn.simple_query("COMMIT TRANSACTION")
                    .await
                    .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?
                    .into_results()
                    .await
                    .map_err(|e| self.query_error(format!("committing writes to {table}"), e))?;
                Ok(applied)
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
        conn: &mut Client<tokio_util::compat::Compat<TcpStream>>,
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
                "UPDATE {} SET {} WHERE {} = @P{}",
                qualified(&batch.table),
                sets.join(", "),
                quote(&batch.key),
                params.len()
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
                placeholders(1, chunk.len())
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
        Ok(Applied { inserted_keys })
    }

    /// The statement of one insert, its parameters, and the key when the
    /// insert gives it itself.
    ///
    /// The new key comes back by `SELECT @id` (eware_get_identity_id), by
    /// `SCOPE_IDENTITY()` (IDENTITY), or else by `OUTPUT INSERTED`: Sage
    /// CRM's tables carry triggers, and SQL Server refuses `OUTPUT` without
    /// `INTO` on a table with enabled triggers (error 334), so it is used
    /// only where nothing else can tell the key.
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
            (format!(" OUTPUT INSERTED.{key}"), String::new())
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
            Assign::Now => {
                let native = self.native(&batch.table, column).map(|n| n.name);
                match native.as_deref() {
                    Some("datetimeoffset") => "SYSDATETIMEOFFSET()".into(),
                    Some("datetime2") => "SYSDATETIME()".into(),
                    Some("date") => "CAST(GETDATE() AS date)".into(),
                    _ => "GETDATE()".into(),
                }
            }
            // Ids are allocated only for the key of an insert, which
            // insert_sql handles before the INSERT; `@id` is its variable.
            Assign::AllocateId { .. } => "@id".into(),
        }
    }
}
