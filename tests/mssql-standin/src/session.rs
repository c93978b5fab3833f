//! One TDS session: its PostgreSQL connection, SET options, transaction
//! state and variables, and the execution of batches, RPC calls and bulk
//! loads into a TDS token stream.

use crate::batch::{self, Node};
use crate::catalog::Catalog;
use crate::ddl;
use crate::error::SqlError;
use crate::pgvalue::{self, Bind};
use crate::sqltype::{SqlType, Value};
use crate::tds::token::{self, Column, DONE_COUNT, DONE_ERROR, DONE_INXACT, DONE_MORE};
use crate::translate::{self, Env, Translated, Vars};
use sqlparser::ast::Statement;
use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::RwLock;
use tokio_postgres::types::ToSql;

/// Makes this session's table statistics visible to others at the end of
/// its transaction (PostgreSQL 15+); older servers flush within seconds.
const FLUSH_STATISTICS: &str = "DO $$ BEGIN PERFORM pg_stat_force_next_flush(); \
    EXCEPTION WHEN undefined_function THEN NULL; END $$";
use tokio_postgres::Client;

/// Server-wide state shared by sessions.
pub struct Shared {
    pub catalog: RwLock<Catalog>,
    pub database: String,
    /// The zone of GETDATE() and of datetimeoffset results.
    pub timezone: chrono_tz::Tz,
}

/// The token stream of one response being built.
pub struct Out {
    pub buf: Vec<u8>,
    rpc: bool,
    last_done: Option<usize>,
}

impl Out {
    pub fn new(rpc: bool) -> Self {
        Out {
            buf: Vec::new(),
            rpc,
            last_done: None,
        }
    }

    fn done(&mut self, status: u16, count: u64) {
        self.last_done = Some(self.buf.len());
        if self.rpc {
            token::done_in_proc(&mut self.buf, status | DONE_MORE, 0xC1, count);
        } else {
            token::done(&mut self.buf, status | DONE_MORE, 0xC1, count);
        }
    }

    /// Ends a batch response: the last DONE carries no MORE bit.
    pub fn finish_batch(mut self, inxact: bool) -> Vec<u8> {
        match self.last_done {
            Some(pos) if !self.rpc => {
                let status =
                    u16::from_le_bytes([self.buf[pos + 1], self.buf[pos + 2]]) & !DONE_MORE;
                self.buf[pos + 1..pos + 3].copy_from_slice(&status.to_le_bytes());
            }
            _ if !self.rpc => {
                token::done(&mut self.buf, if inxact { DONE_INXACT } else { 0 }, 0, 0)
            }
            _ => {}
        }
        self.buf
    }

    /// Ends an RPC response with its return status.
    pub fn finish_rpc(mut self, status: i32, error: bool) -> Vec<u8> {
        token::return_status(&mut self.buf, status);
        token::done_proc(&mut self.buf, if error { DONE_ERROR } else { 0 }, 0, 0);
        self.buf
    }
}

/// The batch stops here (the error has been written).
#[derive(Debug)]
pub struct Abort;

/// Target of an `INSERT BULK` awaiting its BulkLoad packet.
#[derive(Debug, Clone)]
pub struct BulkTarget {
    pub table: String,
    /// `WITH (KEEP_NULLS)`: NULLs stay NULL instead of taking the column's
    /// default.
    pub keep_nulls: bool,
}

pub struct Session {
    pub pg: Client,
    pub shared: Arc<Shared>,
    pub spid: u16,
    pub user: String,
    /// The database the client logged in to (what DB_NAME() reports).
    pub database: String,
    nocount: bool,
    xact_abort: bool,
    /// SET LOCK_TIMEOUT in milliseconds; -1 waits forever.
    lock_timeout: i64,
    trancount: i32,
    descriptor: u64,
    next_descriptor: u64,
    identity_insert: HashSet<String>,
    /// Table variables of the running batch (`@t`, lower case).
    table_vars: Vec<String>,
    scope_identity: Option<i64>,
    rowcount: i64,
    last_error: i32,
    tx_locks: Vec<(i64, bool)>,
    pub bulk: Option<BulkTarget>,
    return_status: Option<i32>,
}

/// Errors that end the whole batch, not only the statement (compile errors
/// and conversion errors, as SQL Server does without XACT_ABORT).
fn aborts_batch(number: u32) -> bool {
    matches!(
        number,
        102 | 137 | 156 | 207 | 208 | 241 | 245 | 8114 | 8169 | 1205 | 206 | 3617
    )
}

/// Maps a PostgreSQL error to the SQL Server error a client would get.
pub fn map_pg_error(e: &tokio_postgres::Error, cat: Option<&Catalog>) -> SqlError {
    if let Some(c) = pgvalue::conversion_error(e) {
        return c;
    }
    let Some(db) = e.as_db_error() else {
        return SqlError::new(50000, 16, format!("PostgreSQL: {e}"));
    };
    let code = db.code().code();
    let msg = db.message();
    let quoted = |s: &str| -> String { s.split('"').nth(1).unwrap_or(s).to_string() };
    let table_name = |t: Option<&str>| -> String {
        let t = t.unwrap_or("");
        cat.and_then(|c| c.table(t))
            .map(|t| t.name.clone())
            .unwrap_or_else(|| t.to_string())
    };
    let dup_value = || {
        db.detail()
            .and_then(|d| d.split('=').nth(1))
            .map(|v| v.trim_end_matches(" already exists.").to_string())
            .unwrap_or_default()
    };
    if let Some(num) = code.strip_prefix('M').and_then(|n| n.parse::<u32>().ok()) {
        return SqlError::new(num, 16, msg);
    }
    match code {
        "23505" => {
            let pg_constraint = db.constraint().unwrap_or("");
            let (constraint, kind) = cat
                .and_then(|c| c.index_name(pg_constraint))
                .unwrap_or((pg_constraint, crate::catalog::IndexKind::Index));
            let table = format!("dbo.{}", table_name(db.table()));
            if kind != crate::catalog::IndexKind::Index {
                let kind = if kind == crate::catalog::IndexKind::PrimaryKey { "PRIMARY KEY" } else { "UNIQUE KEY" };
                SqlError::new(2627, 14, format!(
                    "Violation of {kind} constraint '{constraint}'. Cannot insert duplicate key in object '{table}'. The duplicate key value is {}.",
                    dup_value()
                ))
            } else {
                let index = constraint;
                SqlError::new(2601, 14, format!(
                    "Cannot insert duplicate key row in object '{table}' with unique index '{index}'. The duplicate key value is {}.",
                    dup_value()
                ))
            }
        }
        "23503" => SqlError::new(547, 16, format!(
            "The statement conflicted with the FOREIGN KEY constraint \"{}\". The conflict occurred in table \"dbo.{}\".",
            db.constraint().unwrap_or(""),
            table_name(db.table())
        )),
        "23514" => SqlError::new(547, 16, format!(
            "The statement conflicted with the CHECK constraint \"{}\". The conflict occurred in table \"dbo.{}\".",
            db.constraint().unwrap_or(""),
            table_name(db.table())
        )),
        "23502" => {
            let table = table_name(db.table());
            let column = db
                .column()
                .and_then(|c| cat.and_then(|k| k.table(&table)).and_then(|t| t.column(c)).map(|c| c.name.clone()))
                .unwrap_or_else(|| db.column().unwrap_or("").to_string());
            SqlError::new(515, 16, format!(
                "Cannot insert the value NULL into column '{column}', table 'dbo.{table}'; column does not allow nulls. INSERT fails."
            ))
        }
        "42703" => {
            let col = quoted(msg);
            let col = col.rsplit('.').next().unwrap_or(&col).to_string();
            SqlError::new(207, 16, format!("Invalid column name '{col}'."))
        }
        "42P01" => {
            let t = quoted(msg);
            let t = t.rsplit('.').next().unwrap_or(&t).to_string();
            SqlError::new(208, 16, format!("Invalid object name '{t}'."))
        }
        "40P01" => SqlError::new(1205, 13,
            "Transaction (Process ID 51) was deadlocked on lock resources with another process and has been chosen as the deadlock victim. Rerun the transaction."),
        "55P03" => SqlError::new(1222, 16, "Lock request time out period exceeded."),
        "22P02" | "22007" | "22008" => {
            if msg.contains("integer") || msg.contains("smallint") || msg.contains("bigint") {
                SqlError::new(245, 16, format!("Conversion failed when converting the varchar value '{}' to data type int.", quoted(msg)))
            } else if msg.contains("numeric") || msg.contains("double") || msg.contains("real") {
                SqlError::new(8114, 16, "Error converting data type varchar to numeric.")
            } else if msg.contains("uuid") {
                SqlError::new(8169, 16, "Conversion failed when converting from a character string to uniqueidentifier.")
            } else {
                SqlError::new(241, 16, "Conversion failed when converting date and/or time from character string.")
            }
        }
        "22003" => SqlError::new(8115, 16, "Arithmetic overflow error converting expression to data type numeric."),
        "22012" => SqlError::new(8134, 16, "Divide by zero error encountered."),
        "22001" => SqlError::new(2628, 16, format!("String or binary data would be truncated. {msg}")),
        "42601" => SqlError::new(102, 15, format!("Incorrect syntax: {msg}")),
        "42883" => SqlError::new(195, 15, format!("Not a recognized built-in function: {msg}")),
        "42P07" => SqlError::new(2714, 16, format!("There is already an object named '{}' in the database.", quoted(msg))),
        "42704" => SqlError::new(3701, 11, format!("Cannot drop the object because it does not exist or you do not have permission: {msg}")),
        "57014" => SqlError::new(3617, 16, "The query was cancelled."),
        _ => SqlError::new(50000, 16, format!("PostgreSQL {code}: {msg}")),
    }
}

/// SQL Server names objects and columns in messages as the query wrote
/// them; PostgreSQL reports them folded to lower case.
fn spell_as_written(mut e: SqlError, text: &str) -> SqlError {
    if e.number != 207 && e.number != 208 {
        return e;
    }
    let Some(name) = e.message.split('\'').nth(1).map(str::to_string) else {
        return e;
    };
    let lower = text.to_lowercase();
    if let Some(pos) = lower.find(&name) {
        // Extend to a preceding schema qualifier, as SQL Server shows it.
        let mut start = pos;
        let bytes = text.as_bytes();
        while start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || matches!(bytes[start - 1], b'_' | b'.' | b'[' | b']'))
        {
            start -= 1;
        }
        let written = text[start..pos + name.len()].replace(['[', ']'], "");
        e.message = e.message.replacen(&name, &written, 1);
    }
    e
}

/// Removes whole words, keeping all other text, comments and line breaks.
fn strip_words(text: &str, drop: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for ch in text.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            word.push(ch);
            continue;
        }
        if !drop.iter().any(|d| d.eq_ignore_ascii_case(&word)) {
            out.push_str(&word);
        }
        word.clear();
        out.push(ch);
    }
    out.pop();
    out
}

/// Table hints PostgreSQL has no use for: its MVCC and the unique indexes
/// decide who waits (see the README's "What it does not emulate").
const TABLE_HINTS: &[&str] = &[
    "HOLDLOCK",
    "SERIALIZABLE",
    "UPDLOCK",
    "ROWLOCK",
    "PAGLOCK",
    "TABLOCK",
    "TABLOCKX",
    "XLOCK",
    "READCOMMITTED",
    "REPEATABLEREAD",
    "NOLOCK",
    "READUNCOMMITTED",
    "READPAST",
];

/// `MERGE [INTO] target WITH (<hints>) …` without the hints, which the
/// parser does not take. ("MERGE (Transact-SQL)": `MERGE [ TOP ( expression )
/// [ PERCENT ] ] [ INTO ] <target_table> [ WITH ( <merge_hint> ) ] [ [ AS ]
/// table_alias ]`.)
fn strip_merge_hints(text: &str) -> String {
    let upper = text.to_uppercase();
    let Some(w) = upper.find(" WITH") else {
        return text.to_string();
    };
    let rest = &upper[w + 5..];
    let open = rest.len() - rest.trim_start().len();
    if !rest.trim_start().starts_with('(') {
        return text.to_string();
    }
    let Some(close) = rest.find(')') else {
        return text.to_string();
    };
    let inner = &rest[open + 1..close];
    let all_hints = inner.split(',').all(|h| TABLE_HINTS.contains(&h.trim()));
    // Only a hint list right after the target (no USING before it).
    if !all_hints || upper[..w].contains(" USING") {
        return text.to_string();
    }
    format!("{}{}", &text[..w], &text[w + 5 + close + 1..])
}

pub(crate) fn parse_one(text: &str) -> Result<Statement, SqlError> {
    let mut stmts = Parser::parse_sql(&MsSqlDialect {}, text).map_err(|e| {
        let m = e.to_string();
        let near = m
            .split("found: ")
            .nth(1)
            .and_then(|s| s.split(" at ").next())
            .unwrap_or("")
            .to_string();
        SqlError::new(102, 15, format!("Incorrect syntax near '{near}'. ({m})"))
    })?;
    match stmts.len() {
        1 => Ok(stmts.remove(0)),
        _ => Err(SqlError::syntax(text.chars().take(30).collect::<String>())),
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ';' || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_uppercase())
        .collect()
}

/// Parses `@name = value` / positional EXEC arguments as T-SQL expressions.
fn parse_exec_args(
    text: &str,
) -> Result<Vec<(Option<String>, sqlparser::ast::Expr, bool)>, SqlError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = Parser::new(&MsSqlDialect {})
        .try_with_sql(text)
        .map_err(|e| SqlError::new(102, 15, e.to_string()))?;
    let exprs = p
        .parse_comma_separated(|p| {
            let e = p.parse_expr()?;
            let output = p.parse_keyword(sqlparser::keywords::Keyword::OUTPUT)
                || p.parse_keyword(sqlparser::keywords::Keyword::OUT);
            Ok((e, output))
        })
        .map_err(|e| SqlError::new(102, 15, e.to_string()))?;
    Ok(exprs
        .into_iter()
        .map(|(e, out)| match e {
            sqlparser::ast::Expr::BinaryOp { left, op: sqlparser::ast::BinaryOperator::Eq, right }
                if matches!(left.as_ref(), sqlparser::ast::Expr::Identifier(i) if i.value.starts_with('@')) =>
            {
                let name = match *left {
                    sqlparser::ast::Expr::Identifier(i) => i.value.to_lowercase(),
                    _ => String::new(),
                };
                (Some(name), *right, out)
            }
            other => (None, other, out),
        })
        .collect())
}

impl Session {
    pub fn new(pg: Client, shared: Arc<Shared>, spid: u16, user: String, database: String) -> Self {
        Session {
            pg,
            shared,
            spid,
            user,
            database,
            nocount: false,
            xact_abort: false,
            lock_timeout: -1,
            trancount: 0,
            descriptor: 0,
            next_descriptor: 1,
            identity_insert: HashSet::new(),
            table_vars: Vec::new(),
            scope_identity: None,
            rowcount: 0,
            last_error: 0,
            tx_locks: Vec::new(),
            bulk: None,
            return_status: None,
        }
    }

    /// Back to the state of a new login: no open transaction, default SET
    /// options, no IDENTITY_INSERT, no session application locks.
    /// Returns the ENVCHANGE tokens the client must see (a rolled-back
    /// transaction).
    pub async fn reset(&mut self) -> Vec<u8> {
        let mut tokens = Vec::new();
        if self.trancount > 0 {
            let _ = self.pg.batch_execute("ROLLBACK").await;
            token::envchange_transaction(&mut tokens, 10, self.descriptor);
            self.trancount = 0;
            self.descriptor = 0;
        }
        self.tx_locks.clear();
        let _ = self
            .pg
            .batch_execute("SELECT pg_advisory_unlock_all(); DISCARD TEMP")
            .await;
        self.nocount = false;
        self.xact_abort = false;
        if self.lock_timeout >= 0 {
            self.lock_timeout = -1;
            let _ = self.pg.batch_execute("SET lock_timeout = 0").await;
        }
        self.identity_insert.clear();
        self.scope_identity = None;
        self.rowcount = 0;
        self.last_error = 0;
        self.bulk = None;
        self.return_status = None;
        tokens
    }

    pub fn in_transaction(&self) -> bool {
        self.trancount > 0
    }

    pub fn descriptor(&self) -> u64 {
        self.descriptor
    }

    fn inxact(&self) -> u16 {
        if self.trancount > 0 {
            DONE_INXACT
        } else {
            0
        }
    }

    /// Runs a SQL batch (or the statement of sp_executesql with `vars`).
    pub async fn run_batch(&mut self, sql: &str, mut vars: Vars, out: &mut Out) -> bool {
        let pieces = batch::split(sql);
        // CREATE PROCEDURE takes the whole batch as its body.
        if let Some(p) = pieces.first() {
            let w = words(&p.text);
            if p.head == "CREATE" && w.iter().take(4).any(|x| x == "PROCEDURE" || x == "PROC") {
                let mut failed = false;
                let _ = self
                    .run_statement(&p.text, &mut vars, out, &mut failed)
                    .await;
                return failed;
            }
        }
        // So does CREATE TRIGGER ("CREATE TRIGGER must be the first
        // statement in the batch").
        if let Some(p) = pieces.first() {
            let w = words(&p.text);
            if p.head == "CREATE" && w.iter().take(4).any(|x| x == "TRIGGER") {
                let mut failed = false;
                let r = self.create_trigger(sql, out).await;
                if let Err(e) = r {
                    let _ = self.handle_error(e, out, &mut failed).await;
                }
                return failed;
            }
        }
        let nodes = match batch::build(&pieces) {
            Ok(n) => n,
            Err(near) => {
                let e = SqlError::syntax(near);
                token::error(&mut out.buf, &e);
                out.done(DONE_ERROR, 0);
                return true;
            }
        };
        let mut failed = false;
        let _ = self.run_nodes(&nodes, &mut vars, out, &mut failed).await;
        self.drop_table_variables().await;
        failed
    }

    async fn create_trigger(&mut self, sql: &str, out: &mut Out) -> Result<(), SqlError> {
        let cat = self.shared.catalog.read().await;
        let empty = Vars::new();
        let env = self.env(&cat, &empty);
        ddl::create_trigger(&self.pg, sql, &env).await?;
        drop(cat);
        self.reload_catalog().await?;
        out.done(self.inxact(), 0);
        Ok(())
    }

    /// Table variables live until the end of the batch that declares them
    /// ("table (Transact-SQL)": "The scope of a table variable is the
    /// batch").
    async fn drop_table_variables(&mut self) {
        if self.table_vars.is_empty() {
            return;
        }
        let names: Vec<String> = std::mem::take(&mut self.table_vars)
            .iter()
            .map(|n| translate::pg_ident(n))
            .collect();
        let _ = self
            .pg
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}; \
                 DELETE FROM mssql_standin.columns WHERE table_oid NOT IN (SELECT oid FROM pg_class)",
                names.join(", ")
            ))
            .await;
        let _ = self.reload_catalog().await;
    }

    fn run_nodes<'a>(
        &'a mut self,
        nodes: &'a [Node],
        vars: &'a mut Vars,
        out: &'a mut Out,
        failed: &'a mut bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Abort>> + Send + 'a>> {
        Box::pin(async move {
            for n in nodes {
                if self.return_status.is_some() {
                    break;
                }
                match n {
                    Node::Stmt(text) => self.run_statement(text, vars, out, failed).await?,
                    Node::Block(b) => self.run_nodes(b, vars, out, failed).await?,
                    Node::If {
                        cond,
                        then,
                        otherwise,
                    } => {
                        let savepoint = self.trancount > 0;
                        if savepoint {
                            let _ = self.pg.batch_execute("SAVEPOINT standin_cond").await;
                        }
                        let v = self
                            .eval_scalar(
                                &format!("SELECT CASE WHEN {cond} THEN 1 ELSE 0 END"),
                                vars,
                            )
                            .await;
                        if savepoint {
                            let undo = if v.is_err() {
                                "ROLLBACK TO SAVEPOINT standin_cond"
                            } else {
                                "RELEASE SAVEPOINT standin_cond"
                            };
                            let _ = self.pg.batch_execute(undo).await;
                        }
                        let v = match v {
                            Ok(v) => v,
                            Err(e) => return Err(self.fail(e, out, failed).await),
                        };
                        if v == Value::Int(1) {
                            self.run_nodes(std::slice::from_ref(then.as_ref()), vars, out, failed)
                                .await?;
                        } else if let Some(o) = otherwise {
                            self.run_nodes(std::slice::from_ref(o.as_ref()), vars, out, failed)
                                .await?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Writes an error; rolls back what SQL Server would roll back; tells
    /// whether the batch goes on.
    async fn handle_error(
        &mut self,
        e: SqlError,
        out: &mut Out,
        failed: &mut bool,
    ) -> Result<(), Abort> {
        *failed = true;
        self.last_error = e.number as i32;
        token::error(&mut out.buf, &e);
        let doom = self.trancount > 0 && (self.xact_abort || e.number == 1205);
        if doom {
            self.rollback_all(out).await;
        }
        out.done(DONE_ERROR | self.inxact(), 0);
        if doom || aborts_batch(e.number) {
            Err(Abort)
        } else {
            Ok(())
        }
    }

    async fn fail(&mut self, e: SqlError, out: &mut Out, failed: &mut bool) -> Abort {
        let _ = self.handle_error(e, out, failed).await;
        Abort
    }

    async fn rollback_all(&mut self, out: &mut Out) {
        let _ = self.pg.batch_execute("ROLLBACK").await;
        self.release_tx_locks().await;
        self.trancount = 0;
        token::envchange_transaction(&mut out.buf, 10, self.descriptor);
        self.descriptor = 0;
    }

    async fn release_tx_locks(&mut self) {
        for (key, shared) in std::mem::take(&mut self.tx_locks) {
            let f = if shared {
                "pg_advisory_unlock_shared"
            } else {
                "pg_advisory_unlock"
            };
            let _ = self.pg.execute(&format!("SELECT {f}($1)"), &[&key]).await;
        }
    }

    async fn run_statement(
        &mut self,
        text: &str,
        vars: &mut Vars,
        out: &mut Out,
        failed: &mut bool,
    ) -> Result<(), Abort> {
        let w = words(text);
        let first = w.first().map(String::as_str).unwrap_or("");
        let second = w.get(1).map(String::as_str).unwrap_or("");
        // Inside a transaction every statement runs under a savepoint, so a
        // failing one rolls back only itself (SQL Server without XACT_ABORT).
        let tx_control = matches!(
            (first, second),
            ("BEGIN", "TRAN" | "TRANSACTION") | ("COMMIT", _) | ("ROLLBACK", _) | ("USE", _)
        );
        let savepoint = !tx_control && self.trancount > 0;
        if savepoint {
            if let Err(e) = self.pg.batch_execute("SAVEPOINT standin_stmt").await {
                return self.handle_error(map_pg_error(&e, None), out, failed).await;
            }
        }
        let r = match (first, second) {
            ("BEGIN", "TRAN" | "TRANSACTION") => self.begin_tran(out).await,
            ("COMMIT", _) => self.commit_tran(out).await,
            ("ROLLBACK", _) => self.rollback_tran(out).await,
            ("SET", _) => self.set_option(text, &w, vars).await,
            ("DECLARE", _) => self.declare(text, vars).await,
            ("PRINT", _) => {
                match self
                    .eval_scalar(&format!("SELECT {}", &text[5..]), vars)
                    .await
                {
                    Ok(v) => {
                        token::info(&mut out.buf, 0, &v.describe());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            ("RETURN", _) => {
                let rest = text[6..].trim();
                let v = if rest.is_empty() {
                    Ok(Value::Int(0))
                } else {
                    self.eval_scalar(&format!("SELECT {rest}"), vars).await
                };
                v.map(|v| {
                    self.return_status = Some(match v {
                        Value::Int(i) => i as i32,
                        _ => 0,
                    });
                })
            }
            ("USE", _) => Ok(()),
            ("WAITFOR", "DELAY") => self.waitfor_delay(text).await,
            _ => self.run_work(text, &w, vars, out).await,
        };
        if savepoint && self.trancount > 0 {
            let undo = if r.is_err() {
                "ROLLBACK TO SAVEPOINT standin_stmt"
            } else {
                "RELEASE SAVEPOINT standin_stmt"
            };
            let _ = self.pg.batch_execute(undo).await;
        }
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = spell_as_written(e, text);
                self.handle_error(e, out, failed).await
            }
        }
    }

    /// WAITFOR DELAY 'hh:mm:ss[.mmm]', as a cancellable PostgreSQL sleep.
    async fn waitfor_delay(&mut self, text: &str) -> Result<(), SqlError> {
        let arg = text
            .split('\'')
            .nth(1)
            .ok_or_else(|| SqlError::syntax("DELAY"))?;
        let mut secs = 0f64;
        for part in arg.split(':') {
            let v: f64 = part.trim().parse().map_err(|_| {
                SqlError::new(
                    148,
                    15,
                    "Incorrect time syntax in time string used with WAITFOR.",
                )
            })?;
            secs = secs * 60.0 + v;
        }
        self.pg
            .execute("SELECT pg_sleep($1)", &[&secs])
            .await
            .map_err(|e| map_pg_error(&e, None))?;
        Ok(())
    }

    /// Serves a Transaction Manager Request.
    pub async fn transaction_manager(
        &mut self,
        req: crate::tds::rpc::TransactionRequest,
        out: &mut Out,
    ) {
        use crate::tds::rpc::TransactionRequest as T;
        let (first, begin_after) = match req {
            T::Begin { isolation } => {
                let r = match self.begin_tran(out).await {
                    Ok(()) => self.set_isolation(isolation).await,
                    Err(e) => Err(e),
                };
                (r, None)
            }
            T::Commit { then_begin } => (self.commit_all(out).await, then_begin),
            T::Rollback { then_begin } => {
                let r = if self.trancount > 0 {
                    self.rollback_tran(out).await
                } else {
                    Ok(())
                };
                (r, then_begin)
            }
            T::Unsupported(kind) => (
                Err(SqlError::unsupported(format!(
                    "transaction manager request {kind}"
                ))),
                None,
            ),
        };
        let r = match (first, begin_after) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(isolation)) => match self.begin_tran(out).await {
                Ok(()) => self.set_isolation(isolation).await,
                Err(e) => Err(e),
            },
            (Ok(()), None) => Ok(()),
        };
        if let Err(e) = r {
            token::error(&mut out.buf, &e);
            out.done(DONE_ERROR, 0);
        }
    }

    /// Applies a TDS isolation level (MS-TDS 2.2.6.9) to the open transaction.
    async fn set_isolation(&mut self, isolation: u8) -> Result<(), SqlError> {
        let level = match isolation {
            1 | 2 => "READ COMMITTED",
            3 | 5 => "REPEATABLE READ",
            4 => "SERIALIZABLE",
            _ => return Ok(()),
        };
        self.pg
            .batch_execute(&format!("SET TRANSACTION ISOLATION LEVEL {level}"))
            .await
            .map_err(|e| map_pg_error(&e, None))
    }

    /// Commits the whole transaction, whatever its nesting.
    async fn commit_all(&mut self, out: &mut Out) -> Result<(), SqlError> {
        if self.trancount > 1 {
            self.trancount = 1;
        }
        self.commit_tran(out).await
    }

    async fn begin_tran(&mut self, out: &mut Out) -> Result<(), SqlError> {
        if self.trancount == 0 {
            self.pg
                .batch_execute("BEGIN")
                .await
                .map_err(|e| map_pg_error(&e, None))?;
            self.descriptor = self.next_descriptor;
            self.next_descriptor += 1;
            token::envchange_transaction(&mut out.buf, 8, self.descriptor);
        }
        self.trancount += 1;
        out.done(self.inxact(), 0);
        Ok(())
    }

    async fn commit_tran(&mut self, out: &mut Out) -> Result<(), SqlError> {
        if self.trancount == 0 {
            return Err(SqlError::new(
                3902,
                16,
                "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
            ));
        }
        self.trancount -= 1;
        if self.trancount == 0 {
            let r = self.pg.batch_execute("COMMIT").await;
            self.release_tx_locks().await;
            token::envchange_transaction(&mut out.buf, 9, self.descriptor);
            self.descriptor = 0;
            r.map_err(|e| map_pg_error(&e, None))?;
        }
        out.done(self.inxact(), 0);
        Ok(())
    }

    async fn rollback_tran(&mut self, out: &mut Out) -> Result<(), SqlError> {
        if self.trancount == 0 {
            return Err(SqlError::new(
                3903,
                16,
                "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION.",
            ));
        }
        self.rollback_all(out).await;
        out.done(0, 0);
        Ok(())
    }

    async fn set_option(
        &mut self,
        text: &str,
        w: &[String],
        vars: &mut Vars,
    ) -> Result<(), SqlError> {
        let opt = w.get(1).map(String::as_str).unwrap_or("");
        let on = w.last().map(|s| s == "ON").unwrap_or(false);
        if opt.starts_with('@') {
            // SET @v = expr
            let rest = text.trim_start()[3..].trim_start();
            let (name, expr) = rest
                .split_once('=')
                .ok_or_else(|| SqlError::syntax("SET"))?;
            let name = name.trim().to_lowercase();
            let v = self
                .eval_scalar(&format!("SELECT {}", expr.trim()), vars)
                .await?;
            return self.assign(vars, &name, v);
        }
        match opt {
            "NOCOUNT" => self.nocount = on,
            "XACT_ABORT" => self.xact_abort = on,
            "IDENTITY_INSERT" => {
                let table = w
                    .get(2)
                    .map(|t| {
                        t.trim_matches(['[', ']'])
                            .rsplit('.')
                            .next()
                            .unwrap_or("")
                            .trim_matches(['[', ']'])
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                let cat = self.shared.catalog.read().await;
                let Some(t) = cat.table(&table) else {
                    return Err(SqlError::new(
                        208,
                        16,
                        format!("Invalid object name '{table}'."),
                    ));
                };
                if t.identity_column().is_none() {
                    return Err(SqlError::new(8106, 16, format!("Table '{}' does not have the identity property. Cannot perform SET operation.", t.name)));
                }
                if on {
                    self.identity_insert.insert(table);
                } else {
                    self.identity_insert.remove(&table);
                }
            }
            "LOCK_TIMEOUT" => {
                let ms: i64 = w.get(2).and_then(|s| s.parse().ok()).unwrap_or(-1);
                self.lock_timeout = ms;
                // PostgreSQL's 0 means "wait forever"; SQL Server's means "don't wait".
                let v = if ms < 0 { 0 } else { ms.max(1) };
                self.pg
                    .batch_execute(&format!("SET lock_timeout = {v}"))
                    .await
                    .map_err(|e| map_pg_error(&e, None))?;
            }
            "TRANSACTION" => {
                let level = w[2..].join(" ");
                let pg_level = if level.contains("SERIALIZABLE") {
                    "SERIALIZABLE"
                } else if level.contains("REPEATABLE") || level.contains("SNAPSHOT") {
                    "REPEATABLE READ"
                } else {
                    "READ COMMITTED"
                };
                self.pg
                    .batch_execute(&format!(
                        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {pg_level}"
                    ))
                    .await
                    .map_err(|e| map_pg_error(&e, None))?;
            }
            // Options whose SQL Server defaults the stand-in always follows.
            _ => {}
        }
        Ok(())
    }

    fn assign(&self, vars: &mut Vars, name: &str, v: Value) -> Result<(), SqlError> {
        match vars.get_mut(name) {
            Some(slot) => {
                slot.1 = v;
                Ok(())
            }
            None => Err(SqlError::new(
                137,
                15,
                format!("Must declare the scalar variable \"{name}\"."),
            )),
        }
    }

    async fn declare(&mut self, text: &str, vars: &mut Vars) -> Result<(), SqlError> {
        let body = text.trim_start()[7..].trim();
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in body.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&body[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&body[start..]);
        for p in parts {
            let p = p.trim();
            let (decl, init) = match p.split_once('=') {
                Some((d, i)) => (d.trim(), Some(i.trim())),
                None => (p, None),
            };
            let mut it = decl.splitn(2, char::is_whitespace);
            let name = it.next().unwrap_or("").to_lowercase();
            let ty_text = it.next().unwrap_or("").trim();
            let ty_text = ty_text
                .strip_prefix("AS ")
                .or_else(|| ty_text.strip_prefix("as "))
                .unwrap_or(ty_text);
            let head = ty_text.split(['(', ' ']).next().unwrap_or("");
            if head.eq_ignore_ascii_case("TABLE") && init.is_none() {
                self.declare_table(&name, &ty_text[5..]).await?;
                continue;
            }
            let ty = crate::catalog::parse_decl(ty_text).ok_or_else(|| {
                SqlError::new(
                    2715,
                    16,
                    format!("Column, parameter, or variable: Cannot find data type {ty_text}."),
                )
            })?;
            vars.insert(name.clone(), (Some(ty), Value::Null));
            if let Some(init) = init {
                let v = self.eval_scalar(&format!("SELECT {init}"), vars).await?;
                self.assign(vars, &name, v)?;
            }
        }
        Ok(())
    }

    /// `DECLARE @t TABLE (columns)`: a session temp table named `@t`,
    /// dropped at the end of the batch.
    async fn declare_table(&mut self, name: &str, columns: &str) -> Result<(), SqlError> {
        if self.table_vars.iter().any(|t| t == name) {
            return Err(SqlError::new(
                134,
                15,
                format!("The variable name '{name}' has already been declared. Variable names must be unique within a query batch or stored procedure."),
            ));
        }
        let stmt = parse_one(&format!("CREATE TABLE [{name}] {columns}"))?;
        let Statement::CreateTable(ct) = &stmt else {
            return Err(SqlError::syntax(name));
        };
        let _ = self
            .pg
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.{}",
                translate::pg_ident(name)
            ))
            .await;
        let cat = self.shared.catalog.read().await;
        let empty = Vars::new();
        let env = self.env(&cat, &empty);
        ddl::create_table(&self.pg, ct, &env, &self.shared.database).await?;
        drop(cat);
        self.table_vars.push(name.to_string());
        self.reload_catalog().await
    }

    fn env<'a>(&'a self, cat: &'a Catalog, vars: &'a Vars) -> Env<'a> {
        Env {
            catalog: cat,
            vars,
            scope_identity: self.scope_identity,
            trancount: self.trancount,
            rowcount: self.rowcount,
            error: self.last_error,
            spid: self.spid,
            lock_timeout: self.lock_timeout,
            user: &self.user,
            database: &self.database,
        }
    }

    /// Evaluates `SELECT expr` to one value.
    pub async fn eval_scalar(&mut self, select: &str, vars: &Vars) -> Result<Value, SqlError> {
        let stmt = parse_one(select)?;
        let cat = self.shared.catalog.read().await;
        let tr = translate::translate_statement(stmt, &self.env(&cat, vars))?;
        drop(cat);
        let rows = self.query(&tr).await?;
        Ok(match rows.first() {
            Some(r) if !r.is_empty() => pgvalue::read(r, 0).map_err(|e| map_pg_error(&e, None))?,
            _ => Value::Null,
        })
    }

    async fn query(&self, tr: &Translated) -> Result<Vec<tokio_postgres::Row>, SqlError> {
        Ok(self.query_prepared(tr).await?.1)
    }

    /// Prepares (for the result columns' types) and runs a statement.
    async fn query_prepared(
        &self,
        tr: &Translated,
    ) -> Result<(tokio_postgres::Statement, Vec<tokio_postgres::Row>), SqlError> {
        let binds: Vec<Bind<'_>> = tr.binds.iter().map(Bind).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
        let cat = self.shared.catalog.read().await;
        let stmt = self
            .pg
            .prepare(&tr.sql)
            .await
            .map_err(|e| map_pg_error(&e, Some(&cat)))?;
        let rows = self
            .pg
            .query(&stmt, &refs)
            .await
            .map_err(|e| map_pg_error(&e, Some(&cat)))?;
        Ok((stmt, rows))
    }

    /// SELECT / INSERT / UPDATE / DELETE / EXEC / DDL.
    async fn run_work(
        &mut self,
        text: &str,
        w: &[String],
        vars: &mut Vars,
        out: &mut Out,
    ) -> Result<(), SqlError> {
        let first = w.first().map(String::as_str).unwrap_or("");
        match first {
            "EXEC" | "EXECUTE" => return self.exec_proc(text, vars, out).await,
            "DROP" => return self.drop(w, out).await,
            "TRUNCATE" if w.get(1).map(String::as_str) == Some("TABLE") => {
                return self
                    .truncate(w.get(2).map(String::as_str).unwrap_or(""), out)
                    .await
            }
            "INSERT" if w.get(1).map(String::as_str) == Some("BULK") => {
                let table = text.split_whitespace().nth(2).unwrap_or("").to_string();
                let table = table.split('(').next().unwrap_or("").to_string();
                let keep_nulls = w.iter().any(|x| x == "KEEP_NULLS");
                self.bulk = Some(BulkTarget { table, keep_nulls });
                out.done(self.inxact(), 0);
                return Ok(());
            }
            "CREATE" if w.iter().take(4).any(|x| x == "PROCEDURE" || x == "PROC") => {
                // The stand-in's procedures are built in; creating one of them is accepted.
                let name = w
                    .iter()
                    .skip_while(|x| *x != "PROCEDURE" && *x != "PROC")
                    .nth(1)
                    .cloned()
                    .unwrap_or_default();
                let base = name
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .trim_matches(['[', ']'])
                    .to_lowercase();
                if base == "eware_get_identity_id" {
                    out.done(self.inxact(), 0);
                    return Ok(());
                }
                return Err(SqlError::unsupported(format!(
                    "CREATE PROCEDURE {name} (only built-in procedures exist)"
                )));
            }
            _ => {}
        }
        // ALTER TABLE t ALTER COLUMN c type [NULL | NOT NULL]
        if first == "ALTER" && w.get(3).map(String::as_str) == Some("ALTER") {
            let raw: Vec<&str> = text.split_whitespace().collect();
            if raw.len() >= 7 && w.get(4).map(String::as_str) == Some("COLUMN") {
                let table = raw[2]
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .trim_matches(['[', ']']);
                let column = raw[5].trim_matches(['[', ']']);
                let rest = raw[6..].join(" ");
                let upper = rest.to_uppercase();
                let (type_text, nullable) = if let Some(t) = upper.strip_suffix(" NOT NULL") {
                    (rest[..t.len()].to_string(), false)
                } else if let Some(t) = upper.strip_suffix(" NULL") {
                    (rest[..t.len()].to_string(), true)
                } else {
                    (rest.clone(), true)
                };
                let type_text = type_text.trim_end_matches(';').trim().to_string();
                let cat = self.shared.catalog.read().await;
                let empty = Vars::new();
                let env = self.env(&cat, &empty);
                ddl::alter_column(
                    &self.pg,
                    table,
                    column,
                    &type_text,
                    nullable,
                    &env,
                    &self.shared.database,
                )
                .await?;
                drop(cat);
                self.reload_catalog().await?;
                out.done(self.inxact(), 0);
                return Ok(());
            }
        }
        let cleaned;
        let text = if first == "CREATE" {
            cleaned = strip_words(text, &["NONCLUSTERED", "CLUSTERED"]);
            cleaned.as_str()
        } else if first == "MERGE" {
            cleaned = strip_merge_hints(text);
            cleaned.as_str()
        } else {
            text
        };
        let stmt = parse_one(text)?;
        match &stmt {
            Statement::CreateTable(ct) => {
                let cat = self.shared.catalog.read().await;
                let empty = Vars::new();
                let env = self.env(&cat, &empty);
                ddl::create_table(&self.pg, ct, &env, &self.shared.database).await?;
                drop(cat);
                self.reload_catalog().await?;
                out.done(self.inxact(), 0);
                return Ok(());
            }
            Statement::CreateIndex(ci) => {
                let cat = self.shared.catalog.read().await;
                let empty = Vars::new();
                let env = self.env(&cat, &empty);
                ddl::create_index(&self.pg, ci, &env).await?;
                out.done(self.inxact(), 0);
                return Ok(());
            }
            // CREATE SCHEMA [name]: the bracketed (or quoted) name becomes
            // the PostgreSQL schema of that name, as the stand-in maps every
            // schema (lower case).
            Statement::CreateSchema {
                schema_name:
                    sqlparser::ast::SchemaName::Simple(name)
                    | sqlparser::ast::SchemaName::NamedAuthorization(name, _),
                ..
            } => {
                let name = translate::object_base_name(name);
                self.pg
                    .batch_execute(&format!("CREATE SCHEMA {}", translate::pg_ident(&name)))
                    .await
                    .map_err(|e| map_pg_error(&e, None))?;
                self.reload_catalog().await?;
                out.done(self.inxact(), 0);
                return Ok(());
            }
            Statement::AlterTable(at) => {
                let cat = self.shared.catalog.read().await;
                let empty = Vars::new();
                let env = self.env(&cat, &empty);
                ddl::alter_table(&self.pg, at, &env, &self.shared.database).await?;
                drop(cat);
                self.reload_catalog().await?;
                out.done(self.inxact(), 0);
                return Ok(());
            }
            _ => {}
        }
        self.run_dml(stmt, vars, out).await
    }

    pub async fn reload_catalog(&self) -> Result<(), SqlError> {
        let cat = Catalog::load(&self.pg)
            .await
            .map_err(|e| map_pg_error(&e, None))?;
        *self.shared.catalog.write().await = cat;
        Ok(())
    }

    /// TRUNCATE TABLE ("TRUNCATE TABLE (Transact-SQL)"): every row goes,
    /// inside the caller's transaction (a rollback brings them back); a
    /// table that does not exist is error 4701.
    async fn truncate(&mut self, name: &str, out: &mut Out) -> Result<(), SqlError> {
        let pg = pg_table(name);
        let base = name
            .rsplit('.')
            .next()
            .unwrap_or(name)
            .trim_matches(['[', ']']);
        let missing = || {
            SqlError::new(
                4701,
                16,
                format!("Cannot find the object \"{base}\" because it does not exist or you do not have permissions."),
            )
        };
        if pg.is_empty() {
            return Err(missing());
        }
        self.pg
            .batch_execute(&format!("TRUNCATE TABLE {pg}"))
            .await
            .map_err(|e| match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => missing(),
                _ => map_pg_error(&e, None),
            })?;
        out.done(self.inxact(), 0);
        Ok(())
    }

    async fn drop(&mut self, w: &[String], out: &mut Out) -> Result<(), SqlError> {
        let kind = w.get(1).map(String::as_str).unwrap_or("");
        let mut names: Vec<&String> = w.iter().skip(2).collect();
        let if_exists = names.first().map(|s| s.as_str()) == Some("IF");
        if if_exists {
            names.drain(..2.min(names.len()));
        }
        let pg_name = |n: &str| pg_table(n);
        let sql = match kind {
            "TABLE" => format!(
                "DROP TABLE {}{}",
                if if_exists { "IF EXISTS " } else { "" },
                names
                    .iter()
                    .map(|n| pg_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "INDEX" => {
                // DROP INDEX name ON table
                let idx = names.first().map(|s| s.as_str()).unwrap_or("");
                let table = names.get(2).map(|s| s.as_str()).unwrap_or("");
                let tbase = table
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .trim_matches(['[', ']']);
                let schema = pg_name(table)
                    .split('.')
                    .next()
                    .unwrap_or("\"dbo\"")
                    .to_string();
                format!(
                    "DROP INDEX {}{schema}.{}",
                    if if_exists { "IF EXISTS " } else { "" },
                    translate::pg_ident(&format!("{tbase}__{}", idx.trim_matches(['[', ']'])))
                )
            }
            "PROCEDURE" | "PROC" => {
                out.done(self.inxact(), 0);
                return Ok(());
            }
            "TRIGGER" => {
                let name = names
                    .first()
                    .map(|n| n.rsplit('.').next().unwrap_or(n).trim_matches(['[', ']']))
                    .unwrap_or("")
                    .to_lowercase();
                let prefix = format!("{}{name}_", crate::catalog::USER_TRIGGER_PREFIX);
                let rows = self
                    .pg
                    .query(
                        "SELECT format('DROP TRIGGER %I ON %s', tgname, tgrelid::regclass) FROM pg_trigger WHERE starts_with(tgname::text, $1)",
                        &[&prefix],
                    )
                    .await
                    .map_err(|e| map_pg_error(&e, None))?;
                if rows.is_empty() && !if_exists {
                    return Err(SqlError::new(3701, 11, format!("Cannot drop the trigger '{name}', because it does not exist or you do not have permission.")));
                }
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            other => return Err(SqlError::unsupported(format!("DROP {other}"))),
        };
        let cat = self.shared.catalog.read().await;
        let r = self.pg.batch_execute(&sql).await.map_err(|e| {
            let mut err = map_pg_error(&e, Some(&cat));
            if err.number == 208 || err.number == 3701 {
                let name = names.first().map(|s| s.as_str()).unwrap_or("");
                err = SqlError::new(3701, 11, format!("Cannot drop the {} '{name}', because it does not exist or you do not have permission.", kind.to_lowercase()));
            }
            err
        });
        drop(cat);
        r?;
        let _ = self
            .pg
            .batch_execute(
                "DELETE FROM mssql_standin.columns WHERE table_oid NOT IN (SELECT oid FROM pg_class); \
                 DELETE FROM mssql_standin.indexes WHERE index_oid NOT IN (SELECT oid FROM pg_class)",
            )
            .await;
        self.reload_catalog().await?;
        out.done(self.inxact(), 0);
        Ok(())
    }

    async fn run_dml(
        &mut self,
        mut stmt: Statement,
        vars: &mut Vars,
        out: &mut Out,
    ) -> Result<(), SqlError> {
        // IDENTITY bookkeeping for INSERT.
        let mut ident_col: Option<String> = None;
        let mut explicit_identity = false;
        let mut target_table: Option<crate::catalog::TableInfo> = None;
        if let Statement::Insert(ins) = &mut stmt {
            let tname = match &ins.table {
                sqlparser::ast::TableObject::TableName(n) => translate::object_base_name(n),
                _ => String::new(),
            };
            let cat = self.shared.catalog.read().await;
            if let Some(t) = cat.table(&tname) {
                target_table = Some(t.clone());
                if let Some(ic) = t.identity_column() {
                    explicit_identity = ins
                        .columns
                        .iter()
                        .any(|c| translate::object_base_name(c).eq_ignore_ascii_case(&ic.name));
                    let allowed = self.identity_insert.contains(&t.name.to_lowercase());
                    if explicit_identity && !allowed {
                        return Err(SqlError::new(544, 16, format!(
                            "Cannot insert explicit value for identity column in table '{}' when IDENTITY_INSERT is set to OFF.",
                            t.name
                        )));
                    }
                    if allowed && !explicit_identity {
                        return Err(SqlError::new(545, 16, format!(
                            "Explicit value must be specified for identity column in table '{}' either when IDENTITY_INSERT is set to ON or when a replication user is inserting into a NOT FOR REPLICATION identity column.",
                            t.name
                        )));
                    }
                    ident_col = Some(ic.name.clone());
                }
            }
        }
        let is_query = matches!(stmt, Statement::Query(_));
        let is_delete = matches!(stmt, Statement::Delete(_));
        let dml_target = match &stmt {
            Statement::Insert(i) => match &i.table {
                sqlparser::ast::TableObject::TableName(n) => Some(translate::object_base_name(n)),
                _ => None,
            },
            Statement::Update(u) => match &u.table.relation {
                sqlparser::ast::TableFactor::Table { name, .. } => {
                    Some(translate::object_base_name(name))
                }
                _ => None,
            },
            Statement::Delete(d) => match &d.from {
                sqlparser::ast::FromTable::WithFromKeyword(t)
                | sqlparser::ast::FromTable::WithoutKeyword(t) => {
                    t.first().and_then(|t| match &t.relation {
                        sqlparser::ast::TableFactor::Table { name, .. } => {
                            Some(translate::object_base_name(name))
                        }
                        _ => None,
                    })
                }
            },
            Statement::Merge(m) => match &m.table {
                sqlparser::ast::TableFactor::Table { name, .. } => {
                    Some(translate::object_base_name(name))
                }
                _ => None,
            },
            _ => None,
        };
        let has_output = match &stmt {
            Statement::Insert(i) => i.output.is_some(),
            Statement::Update(u) => u.output.is_some(),
            Statement::Delete(d) => d.output.is_some(),
            Statement::Merge(m) => m.output.is_some(),
            _ => false,
        };
        let cat = self.shared.catalog.read().await;
        let mut tr = translate::translate_statement(stmt, &self.env(&cat, vars))?;
        drop(cat);
        // OUTPUT column types come from the target table.
        if let Some(t) = &target_table {
            for (i, name) in tr.names.iter().enumerate() {
                if let (Some(n), Some(slot)) = (name, tr.hints.get_mut(i)) {
                    if slot.is_none() {
                        *slot = t.column(n).map(|c| c.ty);
                    }
                }
            }
        }
        // OUTPUT without INTO on a table with enabled triggers is error 334
        // ("OUTPUT Clause (Transact-SQL)": "If the OUTPUT clause is
        // specified without also specifying the INTO keyword, the target of
        // the DML operation cannot have any enabled trigger defined on it").
        if has_output && tr.output_into.is_none() {
            if let Some(name) = &dml_target {
                let cat = self.shared.catalog.read().await;
                if let Some(t) = cat.table(name).filter(|t| cat.has_triggers(t.oid)) {
                    return Err(SqlError::new(
                        334,
                        16,
                        format!(
                            "The target table '{}.{}' of the DML statement cannot have any enabled triggers if the statement contains an OUTPUT clause without INTO clause.",
                            t.schema, t.name
                        ),
                    ));
                }
            }
        }
        if let Some(merge) = tr.merge_insert.take() {
            let Some(into) = tr.output_into.take() else {
                return Err(SqlError::unsupported("MERGE … OUTPUT without INTO"));
            };
            return self.run_merge_insert(tr, merge, into, out).await;
        }
        if let Some(into) = tr.output_into.take() {
            return self
                .run_output_into(tr, into, ident_col.as_deref(), out)
                .await;
        }
        // Capture the identity value generated by an INSERT.
        if let Some(ic) = &ident_col {
            let extra = format!("{} AS \"__standin_identity\"", translate::pg_ident(ic));
            if has_output {
                tr.sql.push_str(&format!(", {extra}"));
            } else {
                tr.sql.push_str(&format!(" RETURNING {extra}"));
            }
        }
        let returns_rows = is_query || has_output || ident_col.is_some();
        if !returns_rows {
            let binds: Vec<Bind<'_>> = tr.binds.iter().map(Bind).collect();
            let refs: Vec<&(dyn ToSql + Sync)> =
                binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
            let cat = self.shared.catalog.read().await;
            let n = self
                .pg
                .execute(&tr.sql, &refs)
                .await
                .map_err(|e| map_pg_error(&e, Some(&cat)))?;
            drop(cat);
            self.rowcount = n as i64;
            if n > 0 && is_delete {
                // SQL Server's operational statistics count a delete at
                // once; PostgreSQL's counters reach other sessions when
                // this one flushes them.
                let _ = self.pg.batch_execute(FLUSH_STATISTICS).await;
            }
            self.done_count(out, n);
            return Ok(());
        }
        let (stmt, rows) = self.query_prepared(&tr).await?;
        let n = rows.len() as u64;
        self.rowcount = n as i64;
        if let Some(ic) = &ident_col {
            let idx = rows.first().map(|r| r.len() - 1);
            if let (Some(last), Some(idx)) = (rows.last(), idx) {
                if let Ok(Value::Int(v)) = pgvalue::read(last, idx) {
                    self.scope_identity = Some(v);
                }
            }
            if explicit_identity {
                if let Some(t) = &target_table {
                    let table = format!(
                        "{}.{}",
                        translate::pg_ident(&t.schema),
                        translate::pg_ident(&t.name)
                    );
                    // An explicit value above the current identity moves it on
                    // ("SET IDENTITY_INSERT (Transact-SQL)").
                    let _ = self
                        .pg
                        .execute(
                            "SELECT mssql_standin.bump_identity($1::text, $2::text)",
                            &[&table, &ic.to_lowercase()],
                        )
                        .await;
                }
            }
        }
        if is_query && tr.assigns.iter().any(Option::is_some) {
            if let Some(last) = rows.last() {
                for (i, a) in tr.assigns.iter().enumerate() {
                    if let Some(name) = a {
                        let v = pgvalue::read(last, i).map_err(|e| map_pg_error(&e, None))?;
                        self.assign(vars, name, v)?;
                    }
                }
            }
            return Ok(());
        }
        if is_query || has_output {
            // Column metadata even for an empty result, from the prepared statement.
            let cols = self
                .describe(
                    &stmt,
                    &tr,
                    &rows,
                    if ident_col.is_some() {
                        stmt.columns().len() - 1
                    } else {
                        stmt.columns().len()
                    },
                )
                .await;
            token::colmetadata(&mut out.buf, &cols);
            for r in &rows {
                let vals: Result<Vec<Value>, _> =
                    (0..cols.len()).map(|i| pgvalue::read(r, i)).collect();
                let mut vals = vals.map_err(|e| map_pg_error(&e, None))?;
                for v in vals.iter_mut() {
                    // datetimeoffset values carry the server's zone offset, as
                    // SYSDATETIMEOFFSET() does on SQL Server.
                    if let Value::DateTimeOffset(d) = v {
                        *d = d.with_timezone(&self.shared.timezone).fixed_offset();
                    }
                }
                token::row(&mut out.buf, &cols, &vals)
                    .map_err(|e| SqlError::new(8114, 16, e.to_string()))?;
            }
        }
        self.done_count(out, n);
        Ok(())
    }

    /// Runs a DML statement with `OUTPUT … INTO`: the statement's RETURNING
    /// rows go into the target table in the same PostgreSQL statement, the
    /// client gets only the row count, and an INSERT's identity value is
    /// still captured for SCOPE_IDENTITY().
    async fn run_output_into(
        &mut self,
        tr: Translated,
        into: translate::OutputInto,
        ident_col: Option<&str>,
        out: &mut Out,
    ) -> Result<(), SqlError> {
        let mut inner = tr.sql.clone();
        if let Some(ic) = ident_col {
            inner.push_str(&format!(
                ", {} AS \"__standin_identity\"",
                translate::pg_ident(ic)
            ));
        }
        let cols = if into.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", into.columns.join(", "))
        };
        let items: Vec<String> = (0..into.items).map(|i| format!("__out_{i}")).collect();
        let result = if ident_col.is_some() {
            "\"__standin_identity\""
        } else {
            "1"
        };
        let sql = format!(
            "WITH __standin_output AS ({inner}), __standin_into AS (INSERT INTO {}{cols} SELECT {} FROM __standin_output) SELECT {result} FROM __standin_output",
            into.table,
            items.join(", ")
        );
        let tr = Translated { sql, ..tr };
        let rows = self.query(&tr).await?;
        let n = rows.len() as u64;
        self.rowcount = n as i64;
        if ident_col.is_some() {
            if let Some(last) = rows.last() {
                if let Ok(Value::Int(v)) = pgvalue::read(last, 0) {
                    self.scope_identity = Some(v);
                }
            }
        }
        self.done_count(out, n);
        Ok(())
    }

    /// Runs an insert-only `MERGE … OUTPUT … INTO` ("MERGE (Transact-SQL)")
    /// as one PostgreSQL statement: a data-modifying WITH whose first part
    /// is the source's rows that match nothing, with every target default
    /// that an `INSERTED.c` item reads drawn once per row (materialized, so
    /// a `gen_random_uuid()` or `nextval` is evaluated once); one INSERT of
    /// those rows, the drawn values given explicitly, which fires the
    /// target's triggers as any INSERT does; and an INSERT of the OUTPUT
    /// rows, computed from the same drawn values and the source's own
    /// columns, into the INTO target.
    async fn run_merge_insert(
        &mut self,
        tr: Translated,
        m: translate::MergeInsert,
        into: translate::OutputInto,
        out: &mut Out,
    ) -> Result<(), SqlError> {
        let cols = self
            .pg
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                 COALESCE(pg_get_expr(d.adbin, d.adrelid), \
                   CASE WHEN a.attidentity <> '' THEN \
                     format('nextval(%L::regclass)', pg_get_serial_sequence($1, a.attname)) END) \
                 FROM pg_attribute a \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                &[&m.target],
            )
            .await
            .map_err(|e| map_pg_error(&e, None))?;
        let s = &m.source_alias;
        let mut insert_cols = m.columns.clone();
        let mut insert_vals = m.values.clone();
        let mut drawn = String::new();
        let mut outputs = m.outputs.join(", ");
        for (i, col) in m.inserted.iter().enumerate() {
            let Some(row) = cols.iter().find(|r| r.get::<_, String>(0) == *col) else {
                return Err(SqlError::new(
                    207,
                    16,
                    format!("Invalid column name '{col}'."),
                ));
            };
            let ty: String = row.get(1);
            let quoted = translate::pg_ident(col);
            let expr = match (
                m.columns.iter().position(|c| *c == quoted),
                row.get::<_, Option<String>>(2),
            ) {
                // A column the INSERT gives: its value, as the column stores it.
                (Some(at), _) => format!("CAST(({}) AS {ty})", m.values[at]),
                // Drawn by its default, once per source row.
                (None, Some(default)) => {
                    let name = format!("\"__standin_d_{i}\"");
                    drawn.push_str(&format!(", CAST(({default}) AS {ty}) AS {name}"));
                    insert_cols.push(quoted);
                    insert_vals.push(format!("{s}.{name}"));
                    format!("{s}.{name}")
                }
                (None, None) => format!("CAST(NULL AS {ty})"),
            };
            outputs = outputs.replace(&translate::inserted_placeholder(i), &expr);
        }
        let predicate = m
            .predicate
            .as_ref()
            .map(|p| format!(" AND ({p})"))
            .unwrap_or_default();
        let into_cols = if into.columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", into.columns.join(", "))
        };
        let sql = format!(
            "WITH __standin_src AS MATERIALIZED (SELECT {s}.*{drawn} FROM {source} \
             WHERE NOT EXISTS (SELECT 1 FROM {target_from} WHERE {on}){predicate}), \
             __standin_ins AS (INSERT INTO {target} ({icols}) SELECT {ivals} FROM __standin_src AS {s} RETURNING 1), \
             __standin_into AS (INSERT INTO {into_table}{into_cols} SELECT {outputs} FROM __standin_src AS {s}) \
             SELECT count(*) FROM __standin_ins",
            source = m.source_from,
            target_from = m.target_from,
            on = m.on,
            target = m.target,
            icols = insert_cols.join(", "),
            ivals = insert_vals.join(", "),
            into_table = into.table,
        );
        let tr = Translated { sql, ..tr };
        let rows = self.query(&tr).await?;
        let n = rows
            .first()
            .and_then(|r| r.try_get::<_, i64>(0).ok())
            .unwrap_or(0) as u64;
        self.rowcount = n as i64;
        self.done_count(out, n);
        Ok(())
    }

    /// DONE for a statement that affected `n` rows. Under SET NOCOUNT ON
    /// the count is not valid (no DONE_COUNT bit, MS-TDS 2.2.7.6), so none
    /// is sent.
    fn done_count(&self, out: &mut Out, n: u64) {
        if self.nocount {
            out.done(self.inxact(), 0);
        } else {
            out.done(DONE_COUNT | self.inxact(), n);
        }
    }

    /// Result column names and SQL Server types.
    async fn describe(
        &self,
        stmt: &tokio_postgres::Statement,
        tr: &Translated,
        rows: &[tokio_postgres::Row],
        count: usize,
    ) -> Vec<Column> {
        let cat = self.shared.catalog.read().await;
        // Tables the shared catalog does not know (yet): this session's own,
        // made in its open transaction.
        let unknown: Vec<u32> = stmt
            .columns()
            .iter()
            .filter_map(|c| c.table_oid())
            .filter(|o| *o != 0 && cat.table_by_oid(*o).is_none())
            .collect();
        let own = if unknown.is_empty() {
            Catalog::default()
        } else {
            Catalog::load_oids(&self.pg, &unknown)
                .await
                .unwrap_or_default()
        };
        stmt.columns()
            .iter()
            .take(count)
            .enumerate()
            .map(|(i, c)| {
                let declared = c.table_oid().zip(c.column_id()).and_then(|(o, a)| {
                    cat.column_by_attnum(o, a)
                        .or_else(|| own.column_by_attnum(o, a))
                });
                let hint = tr.hints.get(i).copied().flatten();
                let name = match tr.names.get(i).cloned().flatten() {
                    Some(n) => n,
                    None => match declared {
                        Some((_, col)) if col.name.to_lowercase() == c.name() => col.name.clone(),
                        _ => c.name().to_string(),
                    },
                };
                let name = if name.starts_with("__unnamed_") {
                    String::new()
                } else {
                    name
                };
                let (ty, nullable, identity) = match (declared, hint) {
                    (Some((_, col)), _) => (col.ty, col.nullable, col.identity),
                    (None, Some(h)) => (h, true, false),
                    (None, None) => {
                        let mut vals = Vec::new();
                        for r in rows {
                            if let Ok(v) = pgvalue::read(r, i) {
                                vals.push(v);
                            }
                        }
                        (
                            pgvalue::default_type(c.type_(), c.type_modifier(), &mut vals.iter()),
                            true,
                            false,
                        )
                    }
                };
                Column {
                    name,
                    ty,
                    nullable,
                    identity,
                }
            })
            .collect()
    }

    /// EXEC [@ret =] procedure args.
    async fn exec_proc(
        &mut self,
        text: &str,
        vars: &mut Vars,
        out: &mut Out,
    ) -> Result<(), SqlError> {
        let rest = text.trim_start();
        let rest = rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..].trim_start();
        let (ret_var, rest) = if rest.starts_with('@') {
            let (lhs, rhs) = rest
                .split_once('=')
                .ok_or_else(|| SqlError::syntax("EXEC"))?;
            (Some(lhs.trim().to_lowercase()), rhs.trim_start())
        } else {
            (None, rest)
        };
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let name = rest[..end].to_string();
        let args = parse_exec_args(&rest[end..])?;
        // Evaluate argument values.
        let mut params: Vec<(Option<String>, Value)> = Vec::new();
        for (n, e, _out) in args {
            let v = match &e {
                sqlparser::ast::Expr::Identifier(i) if i.value.starts_with('@') => vars
                    .get(&i.value.to_lowercase())
                    .map(|x| x.1.clone())
                    .ok_or_else(|| {
                        SqlError::new(
                            137,
                            15,
                            format!("Must declare the scalar variable \"{}\".", i.value),
                        )
                    })?,
                other => self.eval_scalar(&format!("SELECT {other}"), vars).await?,
            };
            params.push((n, v));
        }
        let status = self.call_builtin(&name, params, out).await?;
        if let Some(r) = ret_var {
            self.assign(vars, &r, Value::Int(i64::from(status)))?;
        }
        Ok(())
    }

    /// Runs a built-in procedure; returns its return status.
    pub async fn call_builtin(
        &mut self,
        name: &str,
        params: Vec<(Option<String>, Value)>,
        out: &mut Out,
    ) -> Result<i32, SqlError> {
        let base = name
            .rsplit('.')
            .next()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_lowercase();
        let get = |key: &str, pos: usize| -> Value {
            params
                .iter()
                .find(|(n, _)| n.as_deref() == Some(key))
                .map(|x| x.1.clone())
                .or_else(|| {
                    params
                        .get(pos)
                        .filter(|(n, _)| n.is_none())
                        .map(|x| x.1.clone())
                })
                .unwrap_or(Value::Null)
        };
        let text = |v: Value| match v {
            Value::Text(s) => s,
            Value::Null => String::new(),
            other => other.describe(),
        };
        match base.as_str() {
            "eware_get_identity_id" => {
                let table = text(get("@table_name", 0));
                let rows = self
                    .pg
                    .query(
                        "UPDATE dbo.sql_identity i SET id_nextid = i.id_nextid + 1 FROM dbo.custom_tables t \
                         WHERE t.bord_tableid = i.id_tableid AND t.bord_name = $1::text RETURNING i.id_nextid - 1",
                        &[&table],
                    )
                    .await
                    .map_err(|e| map_pg_error(&e, None))?;
                match rows.first() {
                    Some(r) => Ok(r.get::<_, i32>(0)),
                    None => {
                        token::error(
                            &mut out.buf,
                            &SqlError::new(
                                50000,
                                16,
                                format!(
                                    "eware_get_identity_id: no SQL_Identity row for table {table}"
                                ),
                            ),
                        );
                        out.done(DONE_ERROR | self.inxact(), 0);
                        Ok(0)
                    }
                }
            }
            "sp_reset_connection" => {
                let tokens = self.reset().await;
                out.buf.extend(tokens);
                Ok(0)
            }
            "sp_getapplock" => {
                self.getapplock(
                    text(get("@resource", 0)),
                    text(get("@lockmode", 1)),
                    text(get("@lockowner", 2)),
                    get("@locktimeout", 3),
                    out,
                )
                .await
            }
            "sp_releaseapplock" => {
                self.releaseapplock(text(get("@resource", 0)), text(get("@lockowner", 1)), out)
                    .await
            }
            _ => Err(SqlError::new(
                2812,
                16,
                format!("Could not find stored procedure '{name}'."),
            )),
        }
    }

    async fn getapplock(
        &mut self,
        resource: String,
        mode: String,
        owner: String,
        timeout: Value,
        out: &mut Out,
    ) -> Result<i32, SqlError> {
        let session = owner.eq_ignore_ascii_case("session");
        if !session && self.trancount == 0 {
            // Msg 15626 is informational (severity 10); the call returns -999.
            token::message(&mut out.buf, &SqlError::new(15626, 10,
                "You attempted to acquire a transactional application lock without an active transaction."));
            return Ok(-999);
        }
        let shared =
            mode.eq_ignore_ascii_case("shared") || mode.eq_ignore_ascii_case("intentshared");
        // The default @LockTimeout is the session's @@LOCK_TIMEOUT.
        let timeout_ms: i64 = match timeout {
            Value::Int(i) => i,
            _ => self.lock_timeout,
        };
        let key: i64 = self
            .pg
            .query_one("SELECT hashtextextended($1::text, 0)", &[&resource])
            .await
            .map_err(|e| map_pg_error(&e, None))?
            .get(0);
        let try_fn = if shared {
            "pg_try_advisory_lock_shared"
        } else {
            "pg_try_advisory_lock"
        };
        let start = std::time::Instant::now();
        let mut waited = false;
        loop {
            let got: bool = self
                .pg
                .query_one(&format!("SELECT {try_fn}($1)"), &[&key])
                .await
                .map_err(|e| map_pg_error(&e, None))?
                .get(0);
            if got {
                if !session {
                    self.tx_locks.push((key, shared));
                }
                return Ok(if waited { 1 } else { 0 });
            }
            if timeout_ms >= 0 && start.elapsed().as_millis() as i64 >= timeout_ms {
                return Ok(-1);
            }
            waited = true;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn releaseapplock(
        &mut self,
        resource: String,
        owner: String,
        out: &mut Out,
    ) -> Result<i32, SqlError> {
        let session = owner.eq_ignore_ascii_case("session");
        let key: i64 = self
            .pg
            .query_one("SELECT hashtextextended($1::text, 0)", &[&resource])
            .await
            .map_err(|e| map_pg_error(&e, None))?
            .get(0);
        let pos = if session {
            None
        } else {
            self.tx_locks.iter().position(|(k, _)| *k == key)
        };
        let shared = pos.map(|p| self.tx_locks[p].1).unwrap_or(false);
        if !session && pos.is_none() {
            token::error(&mut out.buf, &SqlError::new(1223, 16, format!(
                "Cannot release the application lock (Database Principal: 'public', Resource: '{resource}') because it is not currently held."
            )));
            return Ok(-999);
        }
        let f = if shared {
            "pg_advisory_unlock_shared"
        } else {
            "pg_advisory_unlock"
        };
        let ok: bool = self
            .pg
            .query_one(&format!("SELECT {f}($1)"), &[&key])
            .await
            .map_err(|e| map_pg_error(&e, None))?
            .get(0);
        if let Some(p) = pos {
            self.tx_locks.remove(p);
        }
        if !ok {
            token::error(&mut out.buf, &SqlError::new(1223, 16, format!(
                "Cannot release the application lock (Database Principal: 'public', Resource: '{resource}') because it is not currently held."
            )));
            return Ok(-999);
        }
        Ok(0)
    }

    /// Takes the return status a RETURN statement set, if any.
    pub fn take_return_status(&mut self) -> Option<i32> {
        self.return_status.take()
    }

    /// Copies rows of a BulkLoad message into the target table.
    pub async fn bulk_load(
        &mut self,
        cols: &[(String, SqlType)],
        rows: &[Vec<Value>],
        out: &mut Out,
    ) -> bool {
        let Some(target) = self.bulk.take() else {
            token::error(
                &mut out.buf,
                &SqlError::new(4804, 16, "BulkLoad data arrived without INSERT BULK."),
            );
            out.done(DONE_ERROR, 0);
            return true;
        };
        let r = self
            .copy_rows(&target.table, cols, rows, target.keep_nulls)
            .await;
        match r {
            Ok(n) => {
                out.done(DONE_COUNT | self.inxact(), n);
                false
            }
            Err(e) => {
                token::error(&mut out.buf, &e);
                out.done(DONE_ERROR | self.inxact(), 0);
                true
            }
        }
    }

    /// Stores bulk-loaded rows. Without KEEP_NULLS a NULL sent for a column
    /// with a default stores the default ("INSERT (BULK) (Transact-SQL)":
    /// "KEEP_NULLS Specifies that empty columns should retain a null value
    /// during the bulk-import operation, instead of having any default
    /// values for the columns inserted"): such rows go through a staging
    /// copy and an INSERT … SELECT that puts the defaults in.
    async fn copy_rows(
        &self,
        table: &str,
        cols: &[(String, SqlType)],
        rows: &[Vec<Value>],
        keep_nulls: bool,
    ) -> Result<u64, SqlError> {
        let table = pg_table(table);
        let col_list: Vec<String> = cols.iter().map(|(n, _)| translate::pg_ident(n)).collect();
        let defaults = if keep_nulls {
            Vec::new()
        } else {
            let names: Vec<String> = cols.iter().map(|(n, _)| n.to_lowercase()).collect();
            self.pg
                .query(
                    "SELECT a.attnum, a.attname::text, pg_get_expr(d.adbin, d.adrelid) \
                     FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                     WHERE a.attrelid = $1::text::regclass AND a.attname::text = ANY($2)",
                    &[&table, &names],
                )
                .await
                .map_err(|e| map_pg_error(&e, None))?
                .iter()
                .filter_map(|r| {
                    let name: String = r.get(1);
                    let i = names.iter().position(|n| *n == name)?;
                    let any_null = rows.iter().any(|row| matches!(row.get(i), Some(Value::Null)));
                    any_null.then(|| (i, r.get::<_, String>(2)))
                })
                .collect::<Vec<(usize, String)>>()
        };
        if defaults.is_empty() {
            return self.copy_into(&table, &col_list, rows).await;
        }
        let stage = "pg_temp.\"__standin_bulk\"";
        self.pg
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {stage}; CREATE TEMP TABLE \"__standin_bulk\" AS SELECT {} FROM {table} WITH NO DATA",
                col_list.join(", ")
            ))
            .await
            .map_err(|e| map_pg_error(&e, None))?;
        self.copy_into(stage, &col_list, rows).await?;
        let select: Vec<String> = col_list
            .iter()
            .enumerate()
            .map(|(i, c)| match defaults.iter().find(|(d, _)| *d == i) {
                Some((_, expr)) => format!("coalesce({c}, {expr})"),
                None => c.clone(),
            })
            .collect();
        let cat = self.shared.catalog.read().await;
        let n = self
            .pg
            .execute(
                &format!(
                    "INSERT INTO {table} ({}) SELECT {} FROM {stage}",
                    col_list.join(", "),
                    select.join(", ")
                ),
                &[],
            )
            .await
            .map_err(|e| map_pg_error(&e, Some(&cat)))?;
        drop(cat);
        let _ = self.pg.batch_execute(&format!("DROP TABLE {stage}")).await;
        Ok(n)
    }

    /// COPYs rows into `table` (PostgreSQL name) as they are.
    async fn copy_into(
        &self,
        table: &str,
        col_list: &[String],
        rows: &[Vec<Value>],
    ) -> Result<u64, SqlError> {
        use futures_util::SinkExt;
        let sql = format!("COPY {table} ({}) FROM STDIN", col_list.join(", "));
        let cat = self.shared.catalog.read().await;
        let sink = self
            .pg
            .copy_in(&sql)
            .await
            .map_err(|e| map_pg_error(&e, Some(&cat)))?;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut sink = Box::pin(sink);
        for r in rows {
            for (i, v) in r.iter().enumerate() {
                if i > 0 {
                    buf.push(b'\t');
                }
                copy_text(&mut buf, v);
            }
            buf.push(b'\n');
            if buf.len() > (1 << 20) {
                sink.send(bytes::Bytes::from(std::mem::take(&mut buf)))
                    .await
                    .map_err(|e| map_pg_error(&e, Some(&cat)))?;
            }
        }
        if !buf.is_empty() {
            sink.send(bytes::Bytes::from(buf))
                .await
                .map_err(|e| map_pg_error(&e, Some(&cat)))?;
        }
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| map_pg_error(&e, Some(&cat)))
    }
}

/// Appends a value in COPY text format.
fn copy_text(buf: &mut Vec<u8>, v: &Value) {
    let s = match v {
        Value::Null => {
            buf.extend_from_slice(b"\\N");
            return;
        }
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Decimal(d) => d.to_string(),
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
        Value::DateTime(d) => d.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
        Value::Date(d) => d.to_string(),
        Value::Time(t) => t.format("%H:%M:%S%.f").to_string(),
        Value::DateTimeOffset(d) => d.to_rfc3339(),
        Value::Uuid(u) => u.to_string(),
    };
    for c in s.bytes() {
        match c {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(c),
        }
    }
}

/// The PostgreSQL name of table `name` as T-SQL writes it (`t`,
/// `schema.t`, `db.schema.t`, `[x].[y]`, `#temp`): schema and table, `dbo`
/// when no schema is given, a #temp table (`tempdb..#t` too) by its own
/// name.
fn pg_table(name: &str) -> String {
    let parts: Vec<String> = name
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| translate::pg_ident(p.trim_matches(['[', ']', '"'])))
        .collect();
    let last = name
        .rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_start_matches('[');
    if last.starts_with('#') {
        parts.last().cloned().unwrap_or_default()
    } else if parts.len() >= 2 {
        parts[parts.len() - 2..].join(".")
    } else {
        format!("\"dbo\".{}", parts.join(""))
    }
}
