//! TYPE_INFO and data encodings (MS-TDS 2.2.5.4 - 2.2.5.6): writing result
//! columns in their declared SQL Server type, and reading typed values that
//! clients send in RPC parameters and bulk loads.

use super::Reader;
use crate::error::{protocol, Error};
use crate::sqltype::{datetime_ticks, decimal_size, SqlType, Value};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Timelike};
use rust_decimal::Decimal;

/// SQL_Latin1_General_CP1_CI_AS: LCID 0x0409, CI/AS flags, sort id 52.
pub const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

// Data type tokens (MS-TDS 2.2.5.4.1 - 2.2.5.4.3).
pub const NULLTYPE: u8 = 0x1F;
pub const INT1: u8 = 0x30;
pub const BIT: u8 = 0x32;
pub const INT2: u8 = 0x34;
pub const INT4: u8 = 0x38;
pub const DATETIM4: u8 = 0x3A;
pub const FLT4: u8 = 0x3B;
pub const MONEY: u8 = 0x3C;
pub const DATETIME: u8 = 0x3D;
pub const FLT8: u8 = 0x3E;
pub const MONEY4: u8 = 0x7A;
pub const INT8: u8 = 0x7F;
pub const GUID: u8 = 0x24;
pub const INTN: u8 = 0x26;
pub const DECIMAL: u8 = 0x37;
pub const NUMERIC: u8 = 0x3F;
pub const BITN: u8 = 0x68;
pub const DECIMALN: u8 = 0x6A;
pub const NUMERICN: u8 = 0x6C;
pub const FLTN: u8 = 0x6D;
pub const MONEYN: u8 = 0x6E;
pub const DATETIMN: u8 = 0x6F;
pub const DATEN: u8 = 0x28;
pub const TIMEN: u8 = 0x29;
pub const DATETIME2N: u8 = 0x2A;
pub const DATETIMEOFFSETN: u8 = 0x2B;
pub const BIGVARBINARY: u8 = 0xA5;
pub const BIGVARCHAR: u8 = 0xA7;
pub const BIGBINARY: u8 = 0xAD;
pub const BIGCHAR: u8 = 0xAF;
pub const NVARCHAR: u8 = 0xE7;
pub const NCHAR: u8 = 0xEF;
pub const TEXT: u8 = 0x23;
pub const NTEXT: u8 = 0x63;
pub const IMAGE: u8 = 0x22;

const PLP_NULL: u64 = 0xFFFF_FFFF_FFFF_FFFF;
const PLP_UNKNOWN_LEN: u64 = 0xFFFF_FFFF_FFFF_FFFE;

fn day_zero_1900() -> NaiveDate {
    NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default()
}
fn day_zero_0001() -> NaiveDate {
    NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or_default()
}

/// Bytes of the time part of time/datetime2/datetimeoffset at `scale`.
fn time_len(scale: u8) -> usize {
    match scale {
        0..=2 => 3,
        3..=4 => 4,
        _ => 5,
    }
}

/// Writes a column's TYPE_INFO.
pub fn write_type_info(out: &mut Vec<u8>, t: &SqlType) {
    match t {
        SqlType::TinyInt => out.extend_from_slice(&[INTN, 1]),
        SqlType::SmallInt => out.extend_from_slice(&[INTN, 2]),
        SqlType::Int => out.extend_from_slice(&[INTN, 4]),
        SqlType::BigInt => out.extend_from_slice(&[INTN, 8]),
        SqlType::Bit => out.extend_from_slice(&[BITN, 1]),
        SqlType::Float => out.extend_from_slice(&[FLTN, 8]),
        SqlType::Real => out.extend_from_slice(&[FLTN, 4]),
        SqlType::Decimal(p, s) => out.extend_from_slice(&[DECIMALN, decimal_size(*p), *p, *s]),
        SqlType::Money => out.extend_from_slice(&[MONEYN, 8]),
        SqlType::SmallMoney => out.extend_from_slice(&[MONEYN, 4]),
        SqlType::NVarChar(n) => {
            out.push(NVARCHAR);
            let max = n.map(|n| n.saturating_mul(2)).unwrap_or(0xFFFF);
            out.extend_from_slice(&max.to_le_bytes());
            out.extend_from_slice(&COLLATION);
        }
        SqlType::NChar(n) => {
            out.push(NCHAR);
            out.extend_from_slice(&n.saturating_mul(2).to_le_bytes());
            out.extend_from_slice(&COLLATION);
        }
        SqlType::VarChar(n) => {
            out.push(BIGVARCHAR);
            out.extend_from_slice(&n.unwrap_or(0xFFFF).to_le_bytes());
            out.extend_from_slice(&COLLATION);
        }
        SqlType::Char(n) => {
            out.push(BIGCHAR);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&COLLATION);
        }
        SqlType::DateTime => out.extend_from_slice(&[DATETIMN, 8]),
        SqlType::SmallDateTime => out.extend_from_slice(&[DATETIMN, 4]),
        SqlType::DateTime2(s) => out.extend_from_slice(&[DATETIME2N, *s]),
        SqlType::Date => out.push(DATEN),
        SqlType::Time(s) => out.extend_from_slice(&[TIMEN, *s]),
        SqlType::DateTimeOffset(s) => out.extend_from_slice(&[DATETIMEOFFSETN, *s]),
        SqlType::UniqueIdentifier => out.extend_from_slice(&[GUID, 16]),
        SqlType::VarBinary(n) => {
            out.push(BIGVARBINARY);
            out.extend_from_slice(&n.unwrap_or(0xFFFF).to_le_bytes());
        }
        SqlType::Binary(n) => {
            out.push(BIGBINARY);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// A conversion failure while writing a value in its column type.
#[derive(Debug, thiserror::Error)]
#[error("cannot send {value} as {ty}")]
pub struct ConvertError {
    pub value: String,
    pub ty: &'static str,
}

fn conv(v: &Value, t: &SqlType) -> ConvertError {
    ConvertError {
        value: v.describe(),
        ty: t.name(),
    }
}

fn as_i64(v: &Value, t: &SqlType) -> Result<i64, ConvertError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Decimal(d) => d.trunc().to_string().parse().map_err(|_| conv(v, t)),
        Value::Float(f) => Ok(f.trunc() as i64),
        Value::Text(s) => s.trim().parse().map_err(|_| conv(v, t)),
        _ => Err(conv(v, t)),
    }
}

fn as_decimal(v: &Value, t: &SqlType) -> Result<Decimal, ConvertError> {
    match v {
        Value::Decimal(d) => Ok(*d),
        Value::Int(i) => Ok(Decimal::from(*i)),
        Value::Bool(b) => Ok(Decimal::from(u8::from(*b))),
        Value::Float(f) => Decimal::try_from(*f).map_err(|_| conv(v, t)),
        Value::Text(s) => s.trim().parse().map_err(|_| conv(v, t)),
        _ => Err(conv(v, t)),
    }
}

fn as_f64(v: &Value, t: &SqlType) -> Result<f64, ConvertError> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Decimal(d) => d.to_string().parse().map_err(|_| conv(v, t)),
        Value::Text(s) => s.trim().parse().map_err(|_| conv(v, t)),
        _ => Err(conv(v, t)),
    }
}

fn as_datetime(v: &Value, t: &SqlType) -> Result<NaiveDateTime, ConvertError> {
    match v {
        Value::DateTime(d) => Ok(*d),
        Value::Date(d) => Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default()),
        Value::DateTimeOffset(d) => Ok(d.naive_local()),
        Value::Text(s) => parse_datetime_text(s).ok_or_else(|| conv(v, t)),
        _ => Err(conv(v, t)),
    }
}

/// Parses the date/time text forms SQL Server accepts most often.
pub fn parse_datetime_text(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y%m%d %H:%M:%S%.f",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
            return Some(d);
        }
    }
    for f in ["%Y-%m-%d", "%Y%m%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return d.and_hms_opt(0, 0, 0);
        }
    }
    None
}

fn as_text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::DateTime(d) => d.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        other => other.describe(),
    }
}

fn put_time(out: &mut Vec<u8>, t: NaiveTime, scale: u8) {
    let ns = u64::from(t.num_seconds_from_midnight()) * 1_000_000_000 + u64::from(t.nanosecond());
    let units = ns / 10u64.pow(9 - u32::from(scale.min(7)));
    out.extend_from_slice(&units.to_le_bytes()[..time_len(scale)]);
}

fn put_date3(out: &mut Vec<u8>, d: NaiveDate) {
    let days = (d - day_zero_0001()).num_days() as u32;
    out.extend_from_slice(&days.to_le_bytes()[..3]);
}

fn put_plp(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    if !data.is_empty() {
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
}

fn utf16_bytes(s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(s.len() * 2);
    super::put_utf16(&mut b, s);
    b
}

/// Encodes text as code page 1252 (Latin-1 for the printable range; others become '?').
fn cp1252(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
        .collect()
}

/// Writes one value in the column's declared type.
pub fn write_value(out: &mut Vec<u8>, t: &SqlType, v: &Value) -> Result<(), ConvertError> {
    if v.is_null() {
        match t {
            SqlType::NVarChar(None) | SqlType::VarChar(None) | SqlType::VarBinary(None) => {
                out.extend_from_slice(&PLP_NULL.to_le_bytes())
            }
            SqlType::NVarChar(_)
            | SqlType::NChar(_)
            | SqlType::VarChar(_)
            | SqlType::Char(_)
            | SqlType::VarBinary(_)
            | SqlType::Binary(_) => out.extend_from_slice(&0xFFFFu16.to_le_bytes()),
            _ => out.push(0),
        }
        return Ok(());
    }
    match t {
        SqlType::TinyInt | SqlType::SmallInt | SqlType::Int | SqlType::BigInt => {
            let i = as_i64(v, t)?;
            let n = match t {
                SqlType::TinyInt => 1,
                SqlType::SmallInt => 2,
                SqlType::Int => 4,
                _ => 8,
            };
            out.push(n as u8);
            out.extend_from_slice(&i.to_le_bytes()[..n]);
        }
        SqlType::Bit => {
            let b = match v {
                Value::Bool(b) => *b,
                other => as_i64(other, t)? != 0,
            };
            out.extend_from_slice(&[1, u8::from(b)]);
        }
        SqlType::Float => {
            out.push(8);
            out.extend_from_slice(&as_f64(v, t)?.to_le_bytes());
        }
        SqlType::Real => {
            out.push(4);
            out.extend_from_slice(&(as_f64(v, t)? as f32).to_le_bytes());
        }
        SqlType::Decimal(p, s) => {
            let mut d = as_decimal(v, t)?;
            d.rescale(u32::from(*s));
            let size = decimal_size(*p);
            out.push(size);
            out.push(u8::from(d.mantissa() >= 0));
            let m = d.mantissa().unsigned_abs();
            out.extend_from_slice(&m.to_le_bytes()[..size as usize - 1]);
        }
        SqlType::Money | SqlType::SmallMoney => {
            let mut d = as_decimal(v, t)?;
            d.rescale(4);
            let m = d.mantissa() as i64;
            if *t == SqlType::Money {
                out.push(8);
                out.extend_from_slice(&((m >> 32) as i32).to_le_bytes());
                out.extend_from_slice(&(m as u32).to_le_bytes());
            } else {
                out.push(4);
                out.extend_from_slice(&(m as i32).to_le_bytes());
            }
        }
        SqlType::NVarChar(n) => {
            let b = utf16_bytes(&as_text(v));
            match n {
                None => put_plp(out, &b),
                Some(_) => {
                    out.extend_from_slice(&(b.len().min(0xFFFE) as u16).to_le_bytes());
                    out.extend_from_slice(&b[..b.len().min(0xFFFE)]);
                }
            }
        }
        SqlType::NChar(_) => {
            let b = utf16_bytes(&as_text(v));
            out.extend_from_slice(&(b.len().min(0xFFFE) as u16).to_le_bytes());
            out.extend_from_slice(&b[..b.len().min(0xFFFE)]);
        }
        SqlType::VarChar(n) => {
            let b = cp1252(&as_text(v));
            match n {
                None => put_plp(out, &b),
                Some(_) => {
                    out.extend_from_slice(&(b.len().min(0xFFFE) as u16).to_le_bytes());
                    out.extend_from_slice(&b[..b.len().min(0xFFFE)]);
                }
            }
        }
        SqlType::Char(_) => {
            let b = cp1252(&as_text(v));
            out.extend_from_slice(&(b.len().min(0xFFFE) as u16).to_le_bytes());
            out.extend_from_slice(&b[..b.len().min(0xFFFE)]);
        }
        SqlType::DateTime => {
            let d = as_datetime(v, t)?;
            let (carry, ticks) = datetime_ticks(d.time());
            let days = (d.date() - day_zero_1900()).num_days() + carry;
            out.push(8);
            out.extend_from_slice(&(days as i32).to_le_bytes());
            out.extend_from_slice(&ticks.to_le_bytes());
        }
        SqlType::SmallDateTime => {
            let d = as_datetime(v, t)?;
            let mins = (d.time().num_seconds_from_midnight() + 30) / 60;
            let (carry, mins) = if mins >= 1440 { (1, 0) } else { (0, mins) };
            let days = (d.date() - day_zero_1900()).num_days() + carry;
            out.push(4);
            out.extend_from_slice(&(days as u16).to_le_bytes());
            out.extend_from_slice(&(mins as u16).to_le_bytes());
        }
        SqlType::DateTime2(s) => {
            let d = as_datetime(v, t)?;
            out.push((time_len(*s) + 3) as u8);
            put_time(out, d.time(), *s);
            put_date3(out, d.date());
        }
        SqlType::Date => {
            let d = match v {
                Value::Date(d) => *d,
                other => as_datetime(other, t)?.date(),
            };
            out.push(3);
            put_date3(out, d);
        }
        SqlType::Time(s) => {
            let tm = match v {
                Value::Time(tm) => *tm,
                other => as_datetime(other, t)?.time(),
            };
            out.push(time_len(*s) as u8);
            put_time(out, tm, *s);
        }
        SqlType::DateTimeOffset(s) => {
            let d = match v {
                Value::DateTimeOffset(d) => *d,
                other => chrono::Utc
                    .from_utc_datetime(&as_datetime(other, t)?)
                    .fixed_offset(),
            };
            let utc = d.naive_utc();
            out.push((time_len(*s) + 5) as u8);
            put_time(out, utc.time(), *s);
            put_date3(out, utc.date());
            let off = (d.offset().fix().local_minus_utc() / 60) as i16;
            out.extend_from_slice(&off.to_le_bytes());
        }
        SqlType::UniqueIdentifier => {
            let u = match v {
                Value::Uuid(u) => *u,
                Value::Text(s) => uuid::Uuid::parse_str(s.trim()).map_err(|_| conv(v, t))?,
                _ => return Err(conv(v, t)),
            };
            out.push(16);
            out.extend_from_slice(&u.to_bytes_le());
        }
        SqlType::VarBinary(n) => {
            let b = match v {
                Value::Bytes(b) => b.clone(),
                other => as_text(other).into_bytes(),
            };
            match n {
                None => put_plp(out, &b),
                Some(_) => {
                    out.extend_from_slice(&(b.len().min(0xFFFE) as u16).to_le_bytes());
                    out.extend_from_slice(&b[..b.len().min(0xFFFE)]);
                }
            }
        }
        SqlType::Binary(_) => {
            let b = match v {
                Value::Bytes(b) => b.clone(),
                other => as_text(other).into_bytes(),
            };
            out.extend_from_slice(&(b.len().min(0xFFFE) as u16).to_le_bytes());
            out.extend_from_slice(&b[..b.len().min(0xFFFE)]);
        }
    }
    Ok(())
}

/// A TYPE_INFO as a client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireType {
    pub token: u8,
    /// Length byte/word of variable-length types (0xFFFF for PLP).
    pub len: u32,
    pub precision: u8,
    pub scale: u8,
}

/// Reads a TYPE_INFO (MS-TDS 2.2.5.6).
pub fn read_type_info(r: &mut Reader<'_>) -> Result<WireType, Error> {
    let token = r.u8()?;
    let mut wt = WireType {
        token,
        len: 0,
        precision: 0,
        scale: 0,
    };
    match token {
        NULLTYPE | INT1 | BIT | INT2 | INT4 | DATETIM4 | FLT4 | MONEY | DATETIME | FLT8
        | MONEY4 | INT8 => {}
        GUID | INTN | BITN | FLTN | MONEYN | DATETIMN => wt.len = u32::from(r.u8()?),
        DECIMALN | NUMERICN | DECIMAL | NUMERIC => {
            wt.len = u32::from(r.u8()?);
            wt.precision = r.u8()?;
            wt.scale = r.u8()?;
        }
        DATEN => {}
        TIMEN | DATETIME2N | DATETIMEOFFSETN => wt.scale = r.u8()?,
        BIGVARBINARY | BIGBINARY => wt.len = u32::from(r.u16()?),
        BIGVARCHAR | BIGCHAR | NVARCHAR | NCHAR => {
            wt.len = u32::from(r.u16()?);
            r.skip(5)?;
        }
        other => return Err(protocol(format!("unsupported data type {other:#04x}"))),
    }
    if wt.scale > 7 && matches!(token, TIMEN | DATETIME2N | DATETIMEOFFSETN) {
        return Err(protocol(format!("scale {} out of range", wt.scale)));
    }
    Ok(wt)
}

impl WireType {
    /// The SQL Server type a client declared with this TYPE_INFO.
    pub fn sql_type(&self) -> SqlType {
        let max = |l: u32| if l == 0xFFFF { None } else { Some(l as u16) };
        match self.token {
            INT1 => SqlType::TinyInt,
            INT2 => SqlType::SmallInt,
            INT4 => SqlType::Int,
            INT8 => SqlType::BigInt,
            INTN => match self.len {
                1 => SqlType::TinyInt,
                2 => SqlType::SmallInt,
                4 => SqlType::Int,
                _ => SqlType::BigInt,
            },
            BIT | BITN => SqlType::Bit,
            FLT4 => SqlType::Real,
            FLT8 => SqlType::Float,
            FLTN if self.len == 4 => SqlType::Real,
            FLTN => SqlType::Float,
            MONEY => SqlType::Money,
            MONEY4 => SqlType::SmallMoney,
            MONEYN if self.len == 4 => SqlType::SmallMoney,
            MONEYN => SqlType::Money,
            DATETIME => SqlType::DateTime,
            DATETIM4 => SqlType::SmallDateTime,
            DATETIMN if self.len == 4 => SqlType::SmallDateTime,
            DATETIMN => SqlType::DateTime,
            DECIMALN | NUMERICN | DECIMAL | NUMERIC => SqlType::Decimal(self.precision, self.scale),
            DATEN => SqlType::Date,
            TIMEN => SqlType::Time(self.scale),
            DATETIME2N => SqlType::DateTime2(self.scale),
            DATETIMEOFFSETN => SqlType::DateTimeOffset(self.scale),
            GUID => SqlType::UniqueIdentifier,
            BIGVARBINARY => SqlType::VarBinary(max(self.len)),
            BIGBINARY => SqlType::Binary(self.len as u16),
            BIGVARCHAR => SqlType::VarChar(max(self.len)),
            BIGCHAR => SqlType::Char(self.len as u16),
            NVARCHAR => SqlType::NVarChar(max(self.len).map(|n| n / 2)),
            NCHAR => SqlType::NChar(self.len as u16 / 2),
            // NULLTYPE: a NULL of no particular type.
            _ => SqlType::NVarChar(Some(1)),
        }
    }

    fn is_plp(&self) -> bool {
        self.len == 0xFFFF && matches!(self.token, BIGVARBINARY | BIGVARCHAR | NVARCHAR)
    }
}

fn read_plp(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, Error> {
    let total = r.u64()?;
    if total == PLP_NULL {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(if total == PLP_UNKNOWN_LEN {
        0
    } else {
        total.min(1 << 24) as usize
    });
    loop {
        let n = r.u32()? as usize;
        if n == 0 {
            break;
        }
        data.extend_from_slice(r.take(n)?);
    }
    if total != PLP_UNKNOWN_LEN && total != data.len() as u64 {
        return Err(protocol("PLP length does not match its chunks"));
    }
    Ok(Some(data))
}

fn read_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(a)
}

fn time_from_units(units: u64, scale: u8) -> Result<NaiveTime, Error> {
    let ns = units
        .checked_mul(10u64.pow(9 - u32::from(scale.min(7))))
        .ok_or_else(|| protocol("time of day out of range"))?;
    let secs =
        u32::try_from(ns / 1_000_000_000).map_err(|_| protocol("time of day out of range"))?;
    NaiveTime::from_num_seconds_from_midnight_opt(secs, (ns % 1_000_000_000) as u32)
        .ok_or_else(|| protocol("time of day out of range"))
}

fn date_from_days(days: u64) -> Result<NaiveDate, Error> {
    day_zero_0001()
        .checked_add_days(chrono::Days::new(days))
        .ok_or_else(|| protocol("date out of range"))
}

/// Reads one value of the given TYPE_INFO.
pub fn read_value(r: &mut Reader<'_>, wt: &WireType) -> Result<Value, Error> {
    // Fixed-length types carry no length prefix.
    let fixed = match wt.token {
        NULLTYPE => return Ok(Value::Null),
        INT1 => Some(1),
        BIT => Some(1),
        INT2 => Some(2),
        INT4 | DATETIM4 | FLT4 | MONEY4 => Some(4),
        MONEY | DATETIME | FLT8 | INT8 => Some(8),
        _ => None,
    };
    if wt.is_plp() {
        let Some(data) = read_plp(r)? else {
            return Ok(Value::Null);
        };
        return bytes_value(wt, data);
    }
    let len = match (fixed, wt.token) {
        (Some(n), _) => n,
        (None, BIGVARBINARY | BIGBINARY | BIGVARCHAR | BIGCHAR | NVARCHAR | NCHAR) => {
            let n = r.u16()?;
            if n == 0xFFFF {
                return Ok(Value::Null);
            }
            let data = r.take(n as usize)?.to_vec();
            return bytes_value(wt, data);
        }
        _ => r.u8()? as usize,
    };
    if len == 0 {
        return Ok(Value::Null);
    }
    let b = r.take(len)?;
    let v = match wt.sql_type() {
        SqlType::TinyInt => Value::Int(i64::from(b[0])),
        SqlType::SmallInt if len == 2 => Value::Int(i64::from(i16::from_le_bytes([b[0], b[1]]))),
        SqlType::Int if len == 4 => {
            Value::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        SqlType::BigInt if len == 8 => Value::Int(read_le(b) as i64),
        SqlType::Bit => Value::Bool(b[0] != 0),
        SqlType::Real if len == 4 => {
            Value::Float(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        SqlType::Float if len == 8 => Value::Float(f64::from_bits(read_le(b))),
        SqlType::Money if len == 8 => {
            let hi = i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let lo = i64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
            Value::Decimal(Decimal::new((hi << 32) | lo, 4))
        }
        SqlType::SmallMoney if len == 4 => Value::Decimal(Decimal::new(
            i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            4,
        )),
        SqlType::DateTime if len == 8 => {
            let days = i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let ticks = u64::from(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
            let date = day_zero_1900()
                .checked_add_signed(chrono::Duration::days(days))
                .ok_or_else(|| protocol("datetime out of range"))?;
            let ns = (ticks * 10_000_000 + 1) / 3;
            Value::DateTime(
                date.and_hms_opt(0, 0, 0).unwrap_or_default()
                    + chrono::Duration::nanoseconds(ns as i64),
            )
        }
        SqlType::SmallDateTime if len == 4 => {
            let days = i64::from(u16::from_le_bytes([b[0], b[1]]));
            let mins = i64::from(u16::from_le_bytes([b[2], b[3]]));
            let date = day_zero_1900()
                .checked_add_signed(chrono::Duration::days(days))
                .ok_or_else(|| protocol("datetime out of range"))?;
            Value::DateTime(
                date.and_hms_opt(0, 0, 0).unwrap_or_default() + chrono::Duration::minutes(mins),
            )
        }
        SqlType::Decimal(_, s) => {
            if !(2..=17).contains(&len) {
                return Err(protocol("decimal length out of range"));
            }
            let mut a = [0u8; 16];
            a[..len - 1].copy_from_slice(&b[1..len]);
            let m = u128::from_le_bytes(a);
            let m = i128::try_from(m).map_err(|_| protocol("decimal out of range"))?;
            let m = if b[0] == 0 { -m } else { m };
            let d = Decimal::try_from_i128_with_scale(m, u32::from(s))
                .map_err(|_| protocol("decimal has more than 28 digits"))?;
            Value::Decimal(d)
        }
        SqlType::Date if len == 3 => Value::Date(date_from_days(read_le(b))?),
        SqlType::Time(s) => Value::Time(time_from_units(read_le(b), s)?),
        SqlType::DateTime2(s) if len > 3 => {
            let t = time_from_units(read_le(&b[..len - 3]), s)?;
            let d = date_from_days(read_le(&b[len - 3..]))?;
            Value::DateTime(d.and_time(t))
        }
        SqlType::DateTimeOffset(s) if len > 5 => {
            let t = time_from_units(read_le(&b[..len - 5]), s)?;
            let d = date_from_days(read_le(&b[len - 5..len - 2]))?;
            let off = i32::from(i16::from_le_bytes([b[len - 2], b[len - 1]]));
            let tz = chrono::FixedOffset::east_opt(off * 60)
                .ok_or_else(|| protocol("offset out of range"))?;
            Value::DateTimeOffset(tz.from_utc_datetime(&d.and_time(t)))
        }
        SqlType::UniqueIdentifier if len == 16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Value::Uuid(uuid::Uuid::from_bytes_le(a))
        }
        other => return Err(protocol(format!("bad length {len} for {}", other.name()))),
    };
    Ok(v)
}

fn bytes_value(wt: &WireType, data: Vec<u8>) -> Result<Value, Error> {
    Ok(match wt.token {
        NVARCHAR | NCHAR => Value::Text(super::decode_utf16(&data)?),
        BIGVARCHAR | BIGCHAR => Value::Text(data.iter().map(|&c| c as char).collect()),
        _ => Value::Bytes(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(t: SqlType, v: Value) -> Value {
        let mut ti = Vec::new();
        write_type_info(&mut ti, &t);
        write_value(&mut ti, &t, &v).unwrap();
        let mut r = Reader::new(&ti);
        let wt = read_type_info(&mut r).unwrap();
        assert_eq!(wt.sql_type(), t);
        read_value(&mut r, &wt).unwrap()
    }

    #[test]
    fn values_round_trip_through_their_encodings() {
        let dt = NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_nano_opt(13, 14, 15, 123_456_700)
            .unwrap();
        assert_eq!(round_trip(SqlType::Int, Value::Int(-5)), Value::Int(-5));
        assert_eq!(
            round_trip(SqlType::TinyInt, Value::Int(255)),
            Value::Int(255)
        );
        assert_eq!(
            round_trip(SqlType::DateTime2(7), Value::DateTime(dt)),
            Value::DateTime(dt)
        );
        assert_eq!(
            round_trip(
                SqlType::Decimal(24, 6),
                Value::Decimal("-12.5".parse().unwrap())
            ),
            Value::Decimal("-12.500000".parse().unwrap())
        );
        assert_eq!(
            round_trip(SqlType::Money, Value::Decimal("1234.5678".parse().unwrap())),
            Value::Decimal("1234.5678".parse().unwrap())
        );
        assert_eq!(
            round_trip(SqlType::NVarChar(None), Value::Text("😀x".into())),
            Value::Text("😀x".into())
        );
        assert_eq!(
            round_trip(SqlType::NVarChar(Some(5)), Value::Null),
            Value::Null
        );
        let u = uuid::Uuid::new_v4();
        assert_eq!(
            round_trip(SqlType::UniqueIdentifier, Value::Uuid(u)),
            Value::Uuid(u)
        );
        // datetime goes over the wire in 1/300 s ticks: .123 is 37 ticks = .12333..
        match round_trip(SqlType::DateTime, Value::DateTime(dt)) {
            Value::DateTime(d) => assert_eq!(d.time().nanosecond(), 123_333_333),
            other => panic!("{other:?}"),
        }
    }
}
