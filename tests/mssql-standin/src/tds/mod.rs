//! The TDS wire protocol (MS-TDS 7.4): packets, tokens and type encodings.

pub mod login;
pub mod rpc;
pub mod token;
pub mod types;

use crate::error::{protocol, Error};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Packet types (MS-TDS 2.2.3.1.1).
pub mod packet_type {
    pub const SQL_BATCH: u8 = 0x01;
    pub const RPC: u8 = 0x03;
    pub const TABULAR_RESULT: u8 = 0x04;
    pub const ATTENTION: u8 = 0x06;
    pub const BULK_LOAD: u8 = 0x07;
    pub const TRANSACTION_MANAGER: u8 = 0x0E;
    pub const LOGIN7: u8 = 0x10;
    pub const PRELOGIN: u8 = 0x12;
}

/// Status bit marking the last packet of a message.
pub const STATUS_EOM: u8 = 0x01;
/// Status bit asking the server to reset the connection before the request.
pub const STATUS_RESET_CONNECTION: u8 = 0x08;
pub const HEADER_LEN: usize = 8;
/// Largest packet size a client may negotiate (MS-TDS 2.2.6.4).
pub const MAX_PACKET_SIZE: usize = 32767;

/// One client message, reassembled from its packets.
#[derive(Debug)]
pub struct Message {
    pub kind: u8,
    pub reset: bool,
    pub payload: Vec<u8>,
}

/// Reads one packet header and body; `None` at a clean end of stream.
pub async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Option<(u8, u8, Vec<u8>)>, Error> {
    let mut header = [0u8; HEADER_LEN];
    match s.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if !(HEADER_LEN..=MAX_PACKET_SIZE + HEADER_LEN).contains(&len) {
        return Err(protocol(format!("packet length {len} out of range")));
    }
    let mut body = vec![0u8; len - HEADER_LEN];
    s.read_exact(&mut body).await?;
    Ok(Some((header[0], header[1], body)))
}

/// Reads packets until end of message; `None` at a clean end of stream.
pub async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<Message>, Error> {
    let Some((kind, status, mut payload)) = read_packet(s).await? else {
        return Ok(None);
    };
    let reset = status & STATUS_RESET_CONNECTION != 0;
    let mut eom = status & STATUS_EOM != 0;
    while !eom {
        let Some((k, st, body)) = read_packet(s).await? else {
            return Err(protocol("connection closed inside a message"));
        };
        if k != kind {
            // An attention may arrive between packets of nothing else; any other
            // type change is a protocol violation.
            return Err(protocol(format!(
                "packet type changed from {kind:#x} to {k:#x} inside a message"
            )));
        }
        payload.extend_from_slice(&body);
        eom = st & STATUS_EOM != 0;
    }
    Ok(Some(Message {
        kind,
        reset,
        payload,
    }))
}

/// Splits `payload` into packets of at most `packet_size` bytes and sends them.
pub async fn write_message<S: AsyncWrite + Unpin>(
    s: &mut S,
    kind: u8,
    payload: &[u8],
    packet_size: usize,
) -> Result<(), Error> {
    let chunk = packet_size.clamp(512, MAX_PACKET_SIZE) - HEADER_LEN;
    let mut out = Vec::with_capacity(payload.len() + (payload.len() / chunk + 1) * HEADER_LEN);
    let mut chunks = payload.chunks(chunk).peekable();
    let mut id: u8 = 1;
    if chunks.peek().is_none() {
        out.extend_from_slice(&[kind, STATUS_EOM, 0, 8, 0, 0, 1, 0]);
    }
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = (c.len() + HEADER_LEN) as u16;
        out.push(kind);
        out.push(if last { STATUS_EOM } else { 0 });
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[0, 0, id, 0]);
        out.extend_from_slice(c);
        id = id.wrapping_add(1);
    }
    s.write_all(&out).await?;
    s.flush().await?;
    Ok(())
}

/// A cursor over a received payload that fails instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(protocol(format!(
                "needed {n} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn skip(&mut self, n: usize) -> Result<(), Error> {
        self.take(n).map(|_| ())
    }
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u16_be(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// UTF-16LE text of `chars` code units.
    pub fn utf16(&mut self, chars: usize) -> Result<String, Error> {
        let b = self.take(chars * 2)?;
        decode_utf16(b)
    }
    /// B_VARCHAR: a one-byte length in characters, then UTF-16LE.
    pub fn b_varchar(&mut self) -> Result<String, Error> {
        let n = self.u8()? as usize;
        self.utf16(n)
    }
    /// US_VARCHAR: a two-byte length in characters, then UTF-16LE.
    pub fn us_varchar(&mut self) -> Result<String, Error> {
        let n = self.u16()? as usize;
        self.utf16(n)
    }
}

pub fn decode_utf16(b: &[u8]) -> Result<String, Error> {
    if !b.len().is_multiple_of(2) {
        return Err(protocol("odd number of bytes in UTF-16 text"));
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| protocol("invalid UTF-16 text"))
}

/// Appends UTF-16LE text.
pub fn put_utf16(out: &mut Vec<u8>, s: &str) {
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

/// Appends a B_VARCHAR (length in characters, at most 255).
pub fn put_b_varchar(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(255).collect();
    out.push(units.len() as u8);
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

/// Appends a US_VARCHAR (length in characters, at most 65535).
pub fn put_us_varchar(out: &mut Vec<u8>, s: &str) {
    let units: Vec<u16> = s.encode_utf16().take(65535).collect();
    out.extend_from_slice(&(units.len() as u16).to_le_bytes());
    for u in units {
        out.extend_from_slice(&u.to_le_bytes());
    }
}
