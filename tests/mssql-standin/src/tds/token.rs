//! Token stream writers for server responses (MS-TDS 2.2.7).

use super::types::{write_type_info, write_value, ConvertError, COLLATION};
use super::{put_b_varchar, put_us_varchar};
use crate::error::SqlError;
use crate::sqltype::{SqlType, Value};

pub const DONE_FINAL: u16 = 0x00;
pub const DONE_MORE: u16 = 0x01;
pub const DONE_ERROR: u16 = 0x02;
pub const DONE_INXACT: u16 = 0x04;
pub const DONE_COUNT: u16 = 0x10;
pub const DONE_ATTN: u16 = 0x20;

const TOKEN_DONE: u8 = 0xFD;
const TOKEN_DONEPROC: u8 = 0xFE;
const TOKEN_DONEINPROC: u8 = 0xFF;

/// A result column as COLMETADATA describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    pub identity: bool,
}

/// Where the server's name goes in ERROR and INFO tokens.
pub const SERVER_NAME: &str = "mssql-standin";

pub fn loginack(out: &mut Vec<u8>, tds_version: u32) {
    let mut body = vec![1u8]; // SQL_TSQL
    body.extend_from_slice(&tds_version.to_be_bytes());
    put_b_varchar(&mut body, "Microsoft SQL Server");
    body.extend_from_slice(&[16, 0, 0x03, 0xE8]);
    out.push(0xAD);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

fn envchange(out: &mut Vec<u8>, body: Vec<u8>) {
    out.push(0xE3);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

/// ENVCHANGE with B_VARCHAR new and old values (database, language, packet size).
pub fn envchange_text(out: &mut Vec<u8>, kind: u8, new: &str, old: &str) {
    let mut body = vec![kind];
    put_b_varchar(&mut body, new);
    put_b_varchar(&mut body, old);
    envchange(out, body);
}

pub fn envchange_collation(out: &mut Vec<u8>) {
    let mut body = vec![7u8, 5];
    body.extend_from_slice(&COLLATION);
    body.push(0);
    envchange(out, body);
}

/// Begin (8), commit (9) or rollback (10) of a transaction.
pub fn envchange_transaction(out: &mut Vec<u8>, kind: u8, descriptor: u64) {
    let mut body = vec![kind];
    if kind == 8 {
        body.push(8);
        body.extend_from_slice(&descriptor.to_le_bytes());
        body.push(0);
    } else {
        body.push(0);
        body.push(8);
        body.extend_from_slice(&descriptor.to_le_bytes());
    }
    envchange(out, body);
}

fn message_token(out: &mut Vec<u8>, token: u8, e: &SqlError) {
    let mut body = Vec::new();
    body.extend_from_slice(&e.number.to_le_bytes());
    body.push(e.state);
    body.push(e.class);
    put_us_varchar(&mut body, &e.message);
    put_b_varchar(&mut body, SERVER_NAME);
    put_b_varchar(&mut body, "");
    body.extend_from_slice(&1u32.to_le_bytes());
    out.push(token);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

pub fn error(out: &mut Vec<u8>, e: &SqlError) {
    message_token(out, 0xAA, e);
}

/// An INFO token for a message of severity 10 or below.
pub fn message(out: &mut Vec<u8>, e: &SqlError) {
    message_token(out, 0xAB, e);
}

pub fn info(out: &mut Vec<u8>, number: u32, text: &str) {
    message_token(out, 0xAB, &SqlError::new(number, 0, text));
}

pub fn colmetadata(out: &mut Vec<u8>, cols: &[Column]) {
    out.push(0x81);
    out.extend_from_slice(&(cols.len() as u16).to_le_bytes());
    for c in cols {
        out.extend_from_slice(&0u32.to_le_bytes()); // user type
        let mut flags: u16 = 0;
        if c.nullable {
            flags |= 0x0001;
        }
        // usUpdateable (bits 2-3): identity columns are read-only (0), other
        // columns "unknown" (2), as SQL Server reports them outside browse mode.
        if c.identity {
            flags |= 0x0010;
        } else {
            flags |= 0x0008;
        }
        out.extend_from_slice(&flags.to_le_bytes());
        write_type_info(out, &c.ty);
        put_b_varchar(out, &c.name);
    }
}

pub fn row(out: &mut Vec<u8>, cols: &[Column], values: &[Value]) -> Result<(), ConvertError> {
    out.push(0xD1);
    for (c, v) in cols.iter().zip(values) {
        write_value(out, &c.ty, v)?;
    }
    Ok(())
}

fn done_token(out: &mut Vec<u8>, token: u8, status: u16, cur_cmd: u16, count: u64) {
    out.push(token);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&cur_cmd.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

pub fn done(out: &mut Vec<u8>, status: u16, cur_cmd: u16, count: u64) {
    done_token(out, TOKEN_DONE, status, cur_cmd, count);
}

pub fn done_proc(out: &mut Vec<u8>, status: u16, cur_cmd: u16, count: u64) {
    done_token(out, TOKEN_DONEPROC, status, cur_cmd, count);
}

pub fn done_in_proc(out: &mut Vec<u8>, status: u16, cur_cmd: u16, count: u64) {
    done_token(out, TOKEN_DONEINPROC, status, cur_cmd, count);
}

pub fn return_status(out: &mut Vec<u8>, status: i32) {
    out.push(0x79);
    out.extend_from_slice(&status.to_le_bytes());
}

pub fn return_value(
    out: &mut Vec<u8>,
    ordinal: u16,
    name: &str,
    ty: &SqlType,
    v: &Value,
) -> Result<(), ConvertError> {
    out.push(0xAC);
    out.extend_from_slice(&ordinal.to_le_bytes());
    put_b_varchar(out, name);
    out.push(0x01); // output parameter
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0x0001u16.to_le_bytes());
    write_type_info(out, ty);
    write_value(out, ty, v)
}
