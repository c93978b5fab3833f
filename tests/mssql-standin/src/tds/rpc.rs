//! Client requests: ALL_HEADERS, SQL batches and RPC calls (MS-TDS 2.2.6.6, 2.2.6.7, 2.2.5.3).

use super::types::{read_type_info, read_value, WireType};
use super::Reader;
use crate::error::{protocol, Error};
use crate::sqltype::Value;

/// Well-known procedure ids of RPC requests (MS-TDS 2.2.6.6).
pub const SP_EXECUTESQL: u16 = 10;
pub const SP_PREPARE: u16 = 11;
pub const SP_EXECUTE: u16 = 12;
pub const SP_PREPEXEC: u16 = 13;
pub const SP_UNPREPARE: u16 = 15;

/// Skips ALL_HEADERS, returning the transaction descriptor if one was sent.
pub fn read_all_headers(r: &mut Reader<'_>) -> Result<Option<u64>, Error> {
    let start = r.pos();
    let total = r.u32()? as usize;
    if total < 4 {
        return Err(protocol("ALL_HEADERS too short"));
    }
    let mut descriptor = None;
    while r.pos() - start < total {
        let len = r.u32()? as usize;
        if len < 6 {
            return Err(protocol("header too short"));
        }
        let kind = r.u16()?;
        let data = r.take(len - 6)?;
        if kind == 2 && data.len() >= 8 {
            let mut a = [0u8; 8];
            a.copy_from_slice(&data[..8]);
            descriptor = Some(u64::from_le_bytes(a));
        }
    }
    Ok(descriptor)
}

/// Reads a SQL batch's text.
pub fn parse_sql_batch(payload: &[u8]) -> Result<String, Error> {
    let mut r = Reader::new(payload);
    // Clients of TDS 7.2+ always send ALL_HEADERS first.
    read_all_headers(&mut r)?;
    let rest = r.take(r.remaining())?;
    super::decode_utf16(rest)
}

/// One RPC parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub output: bool,
    pub wire: WireType,
    pub value: Value,
}

/// One RPC call.
#[derive(Debug)]
pub struct RpcCall {
    pub proc_id: Option<u16>,
    pub proc_name: Option<String>,
    pub params: Vec<Param>,
}

/// Parses an RPC request (one or more calls).
pub fn parse_rpc(payload: &[u8]) -> Result<Vec<RpcCall>, Error> {
    let mut r = Reader::new(payload);
    read_all_headers(&mut r)?;
    let mut calls = Vec::new();
    while !r.is_empty() {
        let name_len = r.u16()?;
        let (proc_id, proc_name) = if name_len == 0xFFFF {
            (Some(r.u16()?), None)
        } else {
            (None, Some(r.utf16(name_len as usize)?))
        };
        let _options = r.u16()?;
        let mut params = Vec::new();
        while !r.is_empty() {
            // Batch separators between calls (0x80 in 7.2+, 0xFF in 7.1).
            let next = r.take(1)?[0];
            if next == 0x80 || next == 0xFF {
                break;
            }
            let name = r.utf16(next as usize)?;
            let status = r.u8()?;
            let wire = read_type_info(&mut r)?;
            let value = read_value(&mut r, &wire)?;
            params.push(Param {
                name,
                output: status & 0x01 != 0,
                wire,
                value,
            });
        }
        calls.push(RpcCall {
            proc_id,
            proc_name,
            params,
        });
    }
    Ok(calls)
}
