//! PRELOGIN (MS-TDS 2.2.6.5) and LOGIN7 (MS-TDS 2.2.6.4) messages.

use super::Reader;
use crate::error::{protocol, Error};

/// PRELOGIN ENCRYPTION option values.
pub const ENCRYPT_OFF: u8 = 0x00;
pub const ENCRYPT_ON: u8 = 0x01;
pub const ENCRYPT_NOT_SUP: u8 = 0x02;
pub const ENCRYPT_REQ: u8 = 0x03;

const OPT_VERSION: u8 = 0x00;
const OPT_ENCRYPTION: u8 = 0x01;
const OPT_INSTOPT: u8 = 0x02;
const OPT_THREADID: u8 = 0x03;
const OPT_MARS: u8 = 0x04;
const OPT_TERMINATOR: u8 = 0xFF;

/// What the client said in its PRELOGIN.
#[derive(Debug, Default)]
pub struct PreLogin {
    pub encryption: Option<u8>,
    pub mars: bool,
}

/// Parses the option table and the options the server acts on.
pub fn parse_prelogin(payload: &[u8]) -> Result<PreLogin, Error> {
    let mut r = Reader::new(payload);
    let mut out = PreLogin::default();
    loop {
        let token = r.u8()?;
        if token == OPT_TERMINATOR {
            break;
        }
        let offset = r.u16_be()? as usize;
        let len = r.u16_be()? as usize;
        let data = payload
            .get(offset..offset + len)
            .ok_or_else(|| protocol("PRELOGIN option points outside the message"))?;
        match token {
            OPT_ENCRYPTION if len >= 1 => out.encryption = Some(data[0]),
            OPT_MARS if len >= 1 => out.mars = data[0] != 0,
            _ => {}
        }
    }
    Ok(out)
}

/// Builds the server's PRELOGIN response.
pub fn prelogin_response(encryption: u8) -> Vec<u8> {
    // version 16.0.1000.0 (SQL Server 2022), build as a US number.
    let options: [(u8, Vec<u8>); 5] = [
        (OPT_VERSION, vec![16, 0, 0x03, 0xE8, 0, 0]),
        (OPT_ENCRYPTION, vec![encryption]),
        (OPT_INSTOPT, vec![0]),
        (OPT_THREADID, vec![]),
        (OPT_MARS, vec![0]),
    ];
    let header_len = options.len() * 5 + 1;
    let mut head = Vec::new();
    let mut body = Vec::new();
    for (tok, data) in options.iter() {
        head.push(*tok);
        head.extend_from_slice(&((header_len + body.len()) as u16).to_be_bytes());
        head.extend_from_slice(&(data.len() as u16).to_be_bytes());
        body.extend_from_slice(data);
    }
    head.push(OPT_TERMINATOR);
    head.extend_from_slice(&body);
    head
}

/// The parts of LOGIN7 the server uses.
#[derive(Debug, Default)]
pub struct Login7 {
    pub tds_version: u32,
    pub packet_size: u32,
    pub hostname: String,
    pub username: String,
    pub password: String,
    pub app_name: String,
    pub server_name: String,
    pub database: String,
    /// The client asked for integrated (SSPI) authentication.
    pub integrated: bool,
}

/// LOGIN7 passwords are obfuscated: each byte had its nibbles swapped and was
/// XORed with 0xA5 (MS-TDS 2.2.6.4).
fn decode_password(b: &[u8]) -> Result<String, Error> {
    let plain: Vec<u8> = b
        .iter()
        .map(|x| {
            let y = x ^ 0xA5;
            y.rotate_left(4)
        })
        .collect();
    super::decode_utf16(&plain)
}

pub fn parse_login7(payload: &[u8]) -> Result<Login7, Error> {
    let mut r = Reader::new(payload);
    let length = r.u32()? as usize;
    if length > payload.len() || length < 94 {
        return Err(protocol(format!("LOGIN7 length {length} is invalid")));
    }
    let tds_version = r.u32()?;
    let packet_size = r.u32()?;
    r.skip(4 + 4 + 4)?; // client program version, PID, connection id
    let _flags1 = r.u8()?;
    let flags2 = r.u8()?;
    r.skip(1 + 1 + 4 + 4)?; // type flags, flags3, time zone, LCID
    let field = |r: &mut Reader<'_>| -> Result<(usize, usize), Error> {
        Ok((r.u16()? as usize, r.u16()? as usize))
    };
    let host = field(&mut r)?;
    let user = field(&mut r)?;
    let pass = field(&mut r)?;
    let app = field(&mut r)?;
    let server = field(&mut r)?;
    let _ext = field(&mut r)?;
    let _lib = field(&mut r)?;
    let _lang = field(&mut r)?;
    let db = field(&mut r)?;
    let text = |(off, chars): (usize, usize)| -> Result<&[u8], Error> {
        payload
            .get(off..off + chars * 2)
            .ok_or_else(|| protocol("LOGIN7 field points outside the message"))
    };
    Ok(Login7 {
        tds_version,
        packet_size,
        hostname: super::decode_utf16(text(host)?)?,
        username: super::decode_utf16(text(user)?)?,
        password: decode_password(text(pass)?)?,
        app_name: super::decode_utf16(text(app)?)?,
        server_name: super::decode_utf16(text(server)?)?,
        database: super::decode_utf16(text(db)?)?,
        integrated: flags2 & 0x80 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_obfuscation_is_undone() {
        // "a" is 0x61 0x00: swap nibbles then XOR 0xA5 gives 0xB3 0xA5.
        assert_eq!(decode_password(&[0xB3, 0xA5]).unwrap(), "a");
    }

    #[test]
    fn prelogin_response_parses_back() {
        let p = parse_prelogin(&prelogin_response(ENCRYPT_NOT_SUP)).unwrap();
        assert_eq!(p.encryption, Some(ENCRYPT_NOT_SUP));
    }
}
