//! The listener: accepts TDS connections, runs PRELOGIN (optionally TLS) and
//! LOGIN7, and serves each session's requests over its own PostgreSQL
//! connection.

use crate::catalog::{Catalog, BOOTSTRAP};
use crate::error::{protocol, Error, SqlError};
use crate::session::{Out, Session, Shared};
use crate::sqltype::{SqlType, Value};
use crate::tds::{self, login, packet_type, rpc, token, types, Reader};
use crate::translate::Vars;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, RwLock};

/// How the stand-in is configured.
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL database behind the stand-in.
    pub pg_url: String,
    /// The one SQL login the stand-in accepts.
    pub user: String,
    pub password: String,
    /// IANA zone of GETDATE() and SYSDATETIME().
    pub timezone: String,
    /// Offer TLS in PRELOGIN with a self-signed certificate.
    pub tls: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("pg_url", &"…")
            .field("user", &self.user)
            .field("timezone", &self.timezone)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A running stand-in. Dropping it stops accepting connections.
pub struct StandIn {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl StandIn {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Server {
    config: Config,
    shared: Arc<Shared>,
    next_spid: AtomicU16,
    tls: Option<Arc<crate::tls::Acceptor>>,
}

/// Prepares the database and starts listening on `bind` (port 0 picks a free port).
pub async fn start(config: Config, bind: SocketAddr) -> Result<StandIn, Error> {
    let timezone: chrono_tz::Tz = config
        .timezone
        .parse()
        .map_err(|_| Error::Config(format!("{:?} is not an IANA time zone", config.timezone)))?;
    let (client, conn) = tokio_postgres::connect(&config.pg_url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    client.batch_execute(BOOTSTRAP).await?;
    crate::views::create(&client).await?;
    let catalog = Catalog::load(&client).await?;
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    drop(client);
    let _ = task.await;
    let tls = if config.tls {
        Some(Arc::new(crate::tls::Acceptor::self_signed()?))
    } else {
        None
    };
    let server = Arc::new(Server {
        config,
        shared: Arc::new(Shared {
            catalog: RwLock::new(catalog),
            database,
            timezone,
        }),
        next_spid: AtomicU16::new(51),
        tls,
    });
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let Ok((sock, _)) = accepted else { continue };
                    let server = server.clone();
                    tokio::spawn(async move {
                        let _ = sock.set_nodelay(true);
                        if let Err(e) = server.serve(sock).await {
                            if !matches!(e, Error::Io(_)) {
                                eprintln!("mssql-standin: connection ended: {e}");
                            }
                        }
                    });
                }
            }
        }
    });
    Ok(StandIn { addr, stop })
}

impl Server {
    async fn serve(self: Arc<Self>, mut sock: TcpStream) -> Result<(), Error> {
        let Some(msg) = tds::read_message(&mut sock).await? else {
            return Ok(());
        };
        if msg.kind != packet_type::PRELOGIN {
            return Err(protocol("expected PRELOGIN"));
        }
        let pre = login::parse_prelogin(&msg.payload)?;
        let client_enc = pre.encryption.unwrap_or(login::ENCRYPT_NOT_SUP);
        let answer = match (&self.tls, client_enc) {
            (None, _) => login::ENCRYPT_NOT_SUP,
            (Some(_), login::ENCRYPT_NOT_SUP) => login::ENCRYPT_NOT_SUP,
            (Some(_), login::ENCRYPT_OFF) => login::ENCRYPT_OFF,
            (Some(_), _) => login::ENCRYPT_ON,
        };
        tds::write_message(
            &mut sock,
            packet_type::TABULAR_RESULT,
            &login::prelogin_response(answer),
            4096,
        )
        .await?;
        match (&self.tls, answer) {
            (Some(acceptor), login::ENCRYPT_ON) => {
                let tls = acceptor.accept(sock).await?;
                self.after_prelogin(tls).await
            }
            (Some(acceptor), login::ENCRYPT_OFF) => {
                // Only LOGIN7 is encrypted; then the connection goes back to plain TDS.
                let (sock, login7) = acceptor.accept_login_only(sock).await?;
                self.after_login_message(sock, login7).await
            }
            _ => self.after_prelogin(sock).await,
        }
    }

    async fn after_prelogin<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut sock: S,
    ) -> Result<(), Error> {
        let Some(msg) = tds::read_message(&mut sock).await? else {
            return Ok(());
        };
        self.after_login_message(sock, msg).await
    }

    async fn after_login_message<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut sock: S,
        msg: tds::Message,
    ) -> Result<(), Error> {
        if msg.kind != packet_type::LOGIN7 {
            return Err(protocol("expected LOGIN7"));
        }
        let l = login::parse_login7(&msg.payload)?;
        let mut out = Vec::new();
        if l.integrated || l.username != self.config.user || l.password != self.config.password {
            token::error(
                &mut out,
                &SqlError::new(
                    18456,
                    14,
                    format!("Login failed for user '{}'.", l.username),
                ),
            );
            token::done(&mut out, token::DONE_ERROR, 0, 0);
            tds::write_message(&mut sock, packet_type::TABULAR_RESULT, &out, 4096).await?;
            return Ok(());
        }
        let db = if l.database.is_empty() {
            self.shared.database.clone()
        } else {
            l.database.clone()
        };
        let (pg, conn) = match tokio_postgres::connect(&self.config.pg_url, tokio_postgres::NoTls)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // The database behind the stand-in is gone: SQL Server's
                // answer for a database it cannot open.
                token::error(
                        &mut out,
                        &SqlError::new(
                            4060,
                            11,
                            format!("Cannot open database \"{db}\" requested by the login. The login failed. ({e})"),
                        ),
                    );
                token::done(&mut out, token::DONE_ERROR, 0, 0);
                tds::write_message(&mut sock, packet_type::TABULAR_RESULT, &out, 4096).await?;
                return Ok(());
            }
        };
        let conn_task = tokio::spawn(conn);
        pg.batch_execute(&format!(
            "SET TimeZone = '{}'; SET search_path = dbo, public; SET DateStyle = ISO; \
             SET mssql_standin.database = '{}'",
            self.config.timezone.replace('\'', "''"),
            db.replace('\'', "''")
        ))
        .await?;
        let packet_size = (l.packet_size as usize).clamp(512, tds::MAX_PACKET_SIZE);
        let packet_size = if l.packet_size == 0 {
            4096
        } else {
            packet_size
        };
        token::envchange_text(&mut out, 1, &db, "master");
        token::info(
            &mut out,
            5701,
            &format!("Changed database context to '{db}'."),
        );
        token::envchange_collation(&mut out);
        token::envchange_text(&mut out, 2, "us_english", "");
        token::info(&mut out, 5703, "Changed language setting to us_english.");
        token::loginack(&mut out, l.tds_version.min(0x7400_0004));
        token::envchange_text(&mut out, 4, &packet_size.to_string(), "4096");
        token::done(&mut out, 0, 0, 0);
        tds::write_message(&mut sock, packet_type::TABULAR_RESULT, &out, packet_size).await?;
        let spid = self.next_spid.fetch_add(1, Ordering::Relaxed);
        let mut session = Session::new(
            pg,
            self.shared.clone(),
            spid,
            l.username.clone(),
            db.clone(),
        );
        let r = self.requests(sock, &mut session, packet_size).await;
        drop(session);
        conn_task.abort();
        r
    }

    /// Serves requests until the client goes away. A reader task forwards
    /// incoming messages, so that an ATTENTION arriving while a request runs
    /// cancels it (MS-TDS 3.2.5.7): the PostgreSQL query is cancelled and the
    /// reply is a DONE with the ATTN bit.
    async fn requests<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        sock: S,
        session: &mut Session,
        packet_size: usize,
    ) -> Result<(), Error> {
        let (mut rd, mut wr) = tokio::io::split(sock);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<tds::Message, Error>>(4);
        let reader = tokio::spawn(async move {
            loop {
                match tds::read_message(&mut rd).await {
                    Ok(Some(m)) => {
                        if tx.send(Ok(m)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        let result = async {
            while let Some(msg) = rx.recv().await {
                let msg = msg?;
                // RESETCONNECTION (MS-TDS 2.2.3.1.2): a pooled client starts
                // afresh before this request; the reply begins with the
                // reset's ENVCHANGEs (a rollback, then type 18).
                let mut prefix = Vec::new();
                if msg.reset {
                    prefix = session.reset().await;
                    prefix.extend_from_slice(&[0xE3, 3, 0, 18, 0, 0]);
                }
                let mut attn = Vec::new();
                token::done(&mut attn, token::DONE_ATTN, 0, 0);
                if msg.kind == packet_type::ATTENTION {
                    // Nothing is running: acknowledge at once.
                    tds::write_message(&mut wr, packet_type::TABULAR_RESULT, &attn, packet_size)
                        .await?;
                    continue;
                }
                let cancel = session.pg.cancel_token();
                let work = self.handle(session, msg);
                tokio::pin!(work);
                let mut attention = false;
                let reply = loop {
                    tokio::select! {
                        r = &mut work => break r?,
                        m = rx.recv(), if !attention => match m {
                            Some(Ok(m)) if m.kind == packet_type::ATTENTION => {
                                attention = true;
                                let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(e),
                            None => attention = true,
                        },
                    }
                };
                let reply = if attention {
                    attn
                } else {
                    prefix.extend(reply);
                    prefix
                };
                tds::write_message(&mut wr, packet_type::TABULAR_RESULT, &reply, packet_size)
                    .await?;
            }
            Ok(())
        }
        .await;
        reader.abort();
        result
    }

    async fn handle(&self, session: &mut Session, msg: tds::Message) -> Result<Vec<u8>, Error> {
        Ok(match msg.kind {
            packet_type::SQL_BATCH => {
                let sql = rpc::parse_sql_batch(&msg.payload)?;
                let mut out = Out::new(false);
                session.run_batch(&sql, Vars::new(), &mut out).await;
                let _ = session.take_return_status();
                out.finish_batch(session.in_transaction())
            }
            packet_type::RPC => {
                let calls = rpc::parse_rpc(&msg.payload)?;
                let mut buf = Vec::new();
                for call in calls {
                    buf.extend(self.rpc_call(session, call).await);
                }
                buf
            }
            packet_type::BULK_LOAD => {
                let mut out = Out::new(false);
                match parse_bulk(&msg.payload) {
                    Ok((cols, rows)) => {
                        session.bulk_load(&cols, &rows, &mut out).await;
                    }
                    Err(e) => {
                        token::error(
                            &mut out.buf,
                            &SqlError::new(
                                4815,
                                16,
                                format!(
                                    "Received an invalid column length from the bcp client: {e}"
                                ),
                            ),
                        );
                    }
                }
                out.finish_batch(session.in_transaction())
            }
            packet_type::ATTENTION => {
                let mut b = Vec::new();
                token::done(&mut b, token::DONE_ATTN, 0, 0);
                b
            }
            packet_type::TRANSACTION_MANAGER => {
                let req = rpc::parse_transaction_manager(&msg.payload)?;
                let mut out = Out::new(false);
                session.transaction_manager(req, &mut out).await;
                out.finish_batch(session.in_transaction())
            }
            other => {
                let mut b = Vec::new();
                token::error(
                    &mut b,
                    &SqlError::new(
                        40000,
                        16,
                        format!("mssql-standin does not support TDS packet type {other:#04x}"),
                    ),
                );
                token::done(&mut b, token::DONE_ERROR, 0, 0);
                b
            }
        })
    }

    async fn rpc_call(&self, session: &mut Session, call: rpc::RpcCall) -> Vec<u8> {
        let name = call.proc_name.clone().unwrap_or_default().to_lowercase();
        let mut out = Out::new(true);
        if call.proc_id == Some(rpc::SP_EXECUTESQL) || name == "sp_executesql" {
            let mut params = call.params.into_iter();
            let stmt = match params.next().map(|p| p.value) {
                Some(Value::Text(s)) => s,
                _ => String::new(),
            };
            // A NULL sent untyped takes the type its declaration gives it
            // ("sp_executesql (Transact-SQL)": @params declares every
            // parameter embedded in the statement).
            let declared = match params.next().map(|p| p.value) {
                Some(Value::Text(d)) => declarations(&d),
                _ => Vec::new(),
            };
            let mut vars = Vars::new();
            for p in params {
                let ty = if p.wire.token == types::NULLTYPE {
                    declared
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&p.name))
                        .and_then(|(_, t)| *t)
                } else {
                    Some(p.wire.sql_type())
                };
                vars.insert(p.name.to_lowercase(), (ty, p.value));
            }
            let failed = session.run_batch(&stmt, vars, &mut out).await;
            let status = session.take_return_status().unwrap_or(0);
            return out.finish_rpc(status, failed);
        }
        let params: Vec<(Option<String>, Value)> = call
            .params
            .into_iter()
            .map(|p| {
                (
                    if p.name.is_empty() {
                        None
                    } else {
                        Some(p.name.to_lowercase())
                    },
                    p.value,
                )
            })
            .collect();
        match session.call_builtin(&name, params, &mut out).await {
            Ok(status) => out.finish_rpc(status, false),
            Err(e) => {
                token::error(&mut out.buf, &e);
                out.finish_rpc(-6, true)
            }
        }
    }
}

type BulkColumns = Vec<(String, SqlType)>;

/// Parses a BulkLoad message: COLMETADATA, ROW tokens, DONE.
fn parse_bulk(payload: &[u8]) -> Result<(BulkColumns, Vec<Vec<Value>>), Error> {
    let mut r = Reader::new(payload);
    if r.u8()? != 0x81 {
        return Err(protocol("BulkLoad must start with COLMETADATA"));
    }
    let n = r.u16()? as usize;
    let mut wires = Vec::with_capacity(n);
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let _user_type = r.u32()?;
        let _flags = r.u16()?;
        let wt = types::read_type_info(&mut r)?;
        let name = r.b_varchar()?;
        cols.push((name, wt.sql_type()));
        wires.push(wt);
    }
    let mut rows = Vec::new();
    while !r.is_empty() {
        match r.u8()? {
            0xD1 => {
                let mut row = Vec::with_capacity(n);
                for wt in &wires {
                    row.push(types::read_value(&mut r, wt)?);
                }
                rows.push(row);
            }
            0xFD => {
                r.skip(12)?;
            }
            other => {
                return Err(protocol(format!(
                    "unexpected token {other:#04x} in BulkLoad"
                )))
            }
        }
    }
    Ok((cols, rows))
}

/// The names and types of sp_executesql's `@params`: `@P1 nvarchar(4000),
/// @P2 numeric(10,2)`.
fn declarations(text: &str) -> Vec<(String, Option<SqlType>)> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .filter_map(|item| {
            let item = item.trim();
            let (name, ty) = item.split_once(char::is_whitespace)?;
            let ty = ty
                .trim()
                .trim_end_matches("OUTPUT")
                .trim_end_matches("output");
            Some((name.to_string(), crate::catalog::parse_decl(ty.trim())))
        })
        .collect()
}

#[cfg(test)]
mod declaration_tests {
    use super::*;

    #[test]
    fn declarations_name_their_types() {
        let d = declarations("@P1 nvarchar(4000),@P2 numeric(10,2), @P3 bigint");
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[0],
            ("@P1".to_string(), Some(SqlType::NVarChar(Some(4000))))
        );
        assert_eq!(d[1], ("@P2".to_string(), Some(SqlType::Decimal(10, 2))));
        assert_eq!(d[2], ("@P3".to_string(), Some(SqlType::BigInt)));
    }
}
