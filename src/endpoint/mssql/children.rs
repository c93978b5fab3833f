//! Phones, e-mails and addresses written on SQL Server: the child writes of
//! a batch, in the batch's transaction, through the same statements as the
//! batch's own rows.

use super::types::Param;
use super::{decode_rows, MssqlEndpoint, DIALECT};
use crate::endpoint::children::{self, ChildTx, Dialect, Pending};
use crate::endpoint::{Result, WriteBatch};
use crate::value::Value;
use async_trait::async_trait;
use tiberius::{Client, ToSql};
use tokio::net::TcpStream;

type Conn = Client<tokio_util::compat::Compat<TcpStream>>;

struct Tx<'a> {
    ep: &'a MssqlEndpoint,
    conn: &'a mut Conn,
}

#[async_trait]
impl ChildTx for Tx<'_> {
    fn dialect(&self) -> Dialect {
        DIALECT
    }

    async fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        let what = "writing a phone, e-mail or address";
        let params: Vec<Param> = params.iter().map(|v| Param::new(v.clone(), None)).collect();
        let refs: Vec<&dyn ToSql> = params.iter().map(|p| p as &dyn ToSql).collect();
        let rows = self
            .conn
            .query(sql, &refs)
            .await
            .map_err(|e| self.ep.query_error(what, e))?
            .into_first_result()
            .await
            .map_err(|e| self.ep.query_error(what, e))?;
        decode_rows(rows).map_err(|e| self.ep.query_error("decoding a child row", e))
    }

    async fn apply(&mut self, batch: &WriteBatch) -> Result<Vec<Value>> {
        let table = batch.table.qualified();
        Ok(self
            .ep
            .apply_in(self.conn, batch, &table)
            .await?
            .inserted_keys)
    }
}

impl MssqlEndpoint {
    /// The child writes of a batch whose own rows are written.
    pub(super) async fn write_children(
        &self,
        conn: &mut Conn,
        pending: &Pending,
        inserted: &[Value],
    ) -> Result<()> {
        let mut tx = Tx { ep: self, conn };
        children::write_pending(&mut tx, pending, inserted).await
    }
}
