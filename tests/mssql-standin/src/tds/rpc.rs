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

/// A Transaction Manager Request (MS-TDS 2.2.6.9), as clients without
/// autocommit send them instead of BEGIN/COMMIT batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionRequest {
    /// TM_BEGIN_XACT with its isolation level (0 = unchanged).
    Begin { isolation: u8 },
    /// TM_COMMIT_XACT; `then_begin` carries the isolation level of a new
    /// transaction started right after (fBeginXact).
    Commit { then_begin: Option<u8> },
    /// TM_ROLLBACK_XACT, likewise.
    Rollback { then_begin: Option<u8> },
    /// TM_SAVE_XACT and the DTC requests, which the stand-in refuses.
    Unsupported(u16),
}

pub fn parse_transaction_manager(payload: &[u8]) -> Result<TransactionRequest, Error> {
    let mut r = Reader::new(payload);
    read_all_headers(&mut r)?;
    let kind = r.u16()?;
    Ok(match kind {
        5 => {
            let isolation = r.u8()?;
            let _name = r.b_varchar()?;
            TransactionRequest::Begin { isolation }
        }
        7 | 8 => {
            let _name = r.b_varchar()?;
            let flags = if r.is_empty() { 0 } else { r.u8()? };
            let then_begin = if flags & 0x01 != 0 {
                let isolation = r.u8()?;
                let _new_name = r.b_varchar()?;
                Some(isolation)
            } else {
                None
            };
            if kind == 7 {
                TransactionRequest::Commit { then_begin }
            } else {
                TransactionRequest::Rollback { then_begin }
            }
        }
        other => TransactionRequest::Unsupported(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (no RNG dependency needed).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn malformed_client_messages_are_errors_not_panics() {
        // A valid RPC prefix (ALL_HEADERS, sp_executesql id) followed by noise
        // reaches the type and value decoders.
        let mut prefix = vec![
            22, 0, 0, 0, 18, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
        ];
        prefix.extend_from_slice(&[0xFF, 0xFF, 10, 0, 0, 0]);
        for seed in 0..3000u64 {
            let len = (seed % 300) as usize;
            let junk = noise(seed, len);
            let _ = parse_rpc(&junk);
            let _ = parse_sql_batch(&junk);
            let _ = crate::tds::login::parse_login7(&junk);
            let _ = crate::tds::login::parse_prelogin(&junk);
            let mut rpc = prefix.clone();
            rpc.extend_from_slice(&junk);
            let _ = parse_rpc(&rpc);
        }
    }

    #[test]
    fn rpc_parameters_decode() {
        // sp_executesql N'SELECT @P1', N'@P1 int', @P1 = 7
        let mut m = vec![
            22, 0, 0, 0, 18, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
        ];
        m.extend_from_slice(&[0xFF, 0xFF, 10, 0, 0, 0]);
        let text = |m: &mut Vec<u8>, s: &str| {
            m.push(0); // unnamed
            m.push(0); // status
            m.extend_from_slice(&[0xE7, 0x40, 0x1F]);
            m.extend_from_slice(&crate::tds::types::COLLATION);
            let b: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            m.extend_from_slice(&(b.len() as u16).to_le_bytes());
            m.extend_from_slice(&b);
        };
        text(&mut m, "SELECT @P1");
        text(&mut m, "@P1 int");
        m.push(3);
        m.extend_from_slice(&[b'@', 0, b'P', 0, b'1', 0]);
        m.push(0);
        m.extend_from_slice(&[0x26, 4, 4, 7, 0, 0, 0]);
        let calls = parse_rpc(&m).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].proc_id, Some(SP_EXECUTESQL));
        assert_eq!(calls[0].params.len(), 3);
        assert_eq!(calls[0].params[0].value, Value::Text("SELECT @P1".into()));
        assert_eq!(calls[0].params[2].name, "@P1");
        assert_eq!(calls[0].params[2].value, Value::Int(7));
    }
}
