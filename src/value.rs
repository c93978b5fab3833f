//! The neutral value and column types that both endpoints convert to and
//! from, and the conversions a mapping needs between them.
//!
//! | `Value`       | PostgreSQL                         | SQL Server                          |
//! |---------------|------------------------------------|-------------------------------------|
//! | `Bool`        | boolean                            | bit                                 |
//! | `Int`         | smallint, integer, bigint          | tinyint, smallint, int, bigint      |
//! | `Decimal`     | numeric(p,s)                       | decimal/numeric(p,s), money         |
//! | `Float`       | real, double precision             | real, float                         |
//! | `Text`        | text, varchar(n), char(n)          | nvarchar(n/max), nchar(n), varchar  |
//! | `Timestamp`   | timestamp(p) (wall clock of a zone) | datetime, datetime2(p), smalldatetime |
//! | `TimestampTz` | timestamptz                        | datetimeoffset                      |
//! | `Date`        | date                               | date                                |
//! | `Uuid`        | uuid                               | uniqueidentifier                    |
//! | `Bytes`       | bytea                              | varbinary                           |
//!
//! Integers of every width travel as `Int(i64)` so that values read from
//! different column widths compare equal. Money never passes through a float.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One value in neutral form.
///
/// In JSON (shadows, watermarks, conflicts, reports) the common kinds are
/// bare: `null`, `true`, `42`, `"text"`; the others are tagged,
/// `{"t": "Timestamp", "v": "2026-07-01T12:00:00"}`. Reading also takes
/// the tagged form of every kind, which earlier versions wrote throughout.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(Decimal),
    Float(f64),
    Text(String),
    /// A wall-clock time without zone; the side's configured zone says where.
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Date(NaiveDate),
    Uuid(uuid::Uuid),
    Bytes(Vec<u8>),
}

/// The tagged JSON form of a value.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", content = "v")]
enum Tagged {
    Null,
    Bool(bool),
    Int(i64),
    Decimal(#[serde(with = "rust_decimal::serde::str")] Decimal),
    Float(f64),
    Text(String),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Date(NaiveDate),
    Uuid(uuid::Uuid),
    Bytes(Vec<u8>),
}

/// The tagged form of the kinds that are not written bare.
#[derive(Serialize)]
#[serde(tag = "t", content = "v")]
enum TaggedRef<'a> {
    Decimal(#[serde(serialize_with = "decimal_str")] &'a Decimal),
    Float(f64),
    Timestamp(&'a NaiveDateTime),
    TimestampTz(&'a DateTime<Utc>),
    Date(&'a NaiveDate),
    Uuid(&'a uuid::Uuid),
    Bytes(&'a [u8]),
}

fn decimal_str<S: serde::Serializer>(d: &&Decimal, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(*d)
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Text(t) => s.serialize_str(t),
            Value::Decimal(d) => TaggedRef::Decimal(d).serialize(s),
            Value::Float(f) => TaggedRef::Float(*f).serialize(s),
            Value::Timestamp(t) => TaggedRef::Timestamp(t).serialize(s),
            Value::TimestampTz(t) => TaggedRef::TimestampTz(t).serialize(s),
            Value::Date(d) => TaggedRef::Date(d).serialize(s),
            Value::Uuid(u) => TaggedRef::Uuid(u).serialize(s),
            Value::Bytes(b) => TaggedRef::Bytes(b).serialize(s),
        }
    }
}

impl From<Tagged> for Value {
    fn from(t: Tagged) -> Value {
        match t {
            Tagged::Null => Value::Null,
            Tagged::Bool(b) => Value::Bool(b),
            Tagged::Int(i) => Value::Int(i),
            Tagged::Decimal(d) => Value::Decimal(d),
            Tagged::Float(f) => Value::Float(f),
            Tagged::Text(t) => Value::Text(t),
            Tagged::Timestamp(t) => Value::Timestamp(t),
            Tagged::TimestampTz(t) => Value::TimestampTz(t),
            Tagged::Date(d) => Value::Date(d),
            Tagged::Uuid(u) => Value::Uuid(u),
            Tagged::Bytes(b) => Value::Bytes(b),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null, a boolean, an integer, a string or a tagged value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i))
            }
            fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Value, E> {
                i64::try_from(u)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("integer {u} is out of range")))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
                Ok(Value::Float(f))
            }
            fn visit_str<E>(self, t: &str) -> Result<Value, E> {
                Ok(Value::Text(t.to_string()))
            }
            fn visit_string<E>(self, t: String) -> Result<Value, E> {
                Ok(Value::Text(t))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
                Tagged::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Value::from)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// How a text column counts its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthUnit {
    /// PostgreSQL varchar(n): characters (code points).
    Chars,
    /// SQL Server nvarchar(n)/nchar(n): UTF-16 code units.
    Utf16,
    /// SQL Server varchar(n): bytes of the code page.
    Bytes,
}

/// A column's type as read from the live catalog.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlType {
    Bool,
    /// Integer of `bytes` width (1, 2, 4, 8).
    Int {
        bytes: u8,
    },
    Decimal {
        precision: u32,
        scale: u32,
    },
    Float,
    Text {
        max_len: Option<u32>,
        unit: LengthUnit,
        fixed: bool,
    },
    /// Wall-clock timestamp with `precision` fractional digits.
    Timestamp {
        precision: u32,
    },
    TimestampTz,
    Date,
    Uuid,
    Bytes,
    /// Anything else; carried as text.
    Other(String),
}

impl SqlType {
    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            SqlType::Bool => "boolean".into(),
            SqlType::Int { bytes } => format!("integer({bytes} bytes)"),
            SqlType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
            SqlType::Float => "float".into(),
            SqlType::Text { max_len, .. } => match max_len {
                Some(n) => format!("text({n})"),
                None => "text".into(),
            },
            SqlType::Timestamp { precision } => format!("timestamp({precision})"),
            SqlType::TimestampTz => "timestamp with time zone".into(),
            SqlType::Date => "date".into(),
            SqlType::Uuid => "uuid".into(),
            SqlType::Bytes => "bytes".into(),
            SqlType::Other(n) => n.clone(),
        }
    }

    /// The broad family, for deciding whether a mapping between two
    /// columns can ever work.
    pub fn family(&self) -> Family {
        match self {
            SqlType::Bool => Family::Bool,
            SqlType::Int { .. } | SqlType::Decimal { .. } | SqlType::Float => Family::Number,
            SqlType::Text { .. } | SqlType::Other(_) => Family::Text,
            SqlType::Timestamp { .. } | SqlType::TimestampTz | SqlType::Date => Family::Time,
            SqlType::Uuid => Family::Uuid,
            SqlType::Bytes => Family::Bytes,
        }
    }

    /// Whether the type can serve as a change-tracking column.
    pub fn is_timestamp(&self) -> bool {
        matches!(self, SqlType::Timestamp { .. } | SqlType::TimestampTz)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bool,
    Number,
    Text,
    Time,
    Uuid,
    Bytes,
}

/// Why a value cannot be stored in a column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoerceError {
    #[error("value is {len} long but the column holds at most {max}")]
    TooLong { len: usize, max: u32 },
    #[error("{value} does not fit {target}")]
    OutOfRange { value: String, target: String },
    #[error("{value} cannot be converted to {target}")]
    Incompatible { value: String, target: String },
}

/// Time zones of the two sides, for moving wall-clock values across.
#[derive(Debug, Clone, Copy)]
pub struct Zones {
    pub from: Tz,
    pub to: Tz,
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short rendering for messages and samples (not for SQL).
    pub fn display(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Decimal(d) => d.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(s) => format!("{s:?}"),
            Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
            Value::TimestampTz(t) => t.format("%Y-%m-%d %H:%M:%S%.f UTC").to_string(),
            Value::Date(d) => d.to_string(),
            Value::Uuid(u) => u.to_string(),
            Value::Bytes(b) => format!("{} bytes", b.len()),
        }
    }

    /// Orders two values of the same kind; `None` across kinds.
    pub fn cmp_same(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
            (Value::Decimal(a), Value::Decimal(b)) => Some(a.cmp(b)),
            (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
            (Value::TimestampTz(a), Value::TimestampTz(b)) => Some(a.cmp(b)),
            (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
            (Value::Uuid(a), Value::Uuid(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// This timestamp moved back by `d` (other values unchanged).
    pub fn minus(&self, d: std::time::Duration) -> Value {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        match self {
            Value::Timestamp(t) => Value::Timestamp(*t - d),
            Value::TimestampTz(t) => Value::TimestampTz(*t - d),
            other => other.clone(),
        }
    }

    /// The canonical text of a key: the form the state store's links hold
    /// and the form in which a key read from one column is compared with
    /// the same key read from another. Text loses its trailing blanks (a
    /// `char(n)` column pads, and both databases' `=` ignores them), a
    /// decimal its trailing zeros (`numeric(18,0)` and `int` name the same
    /// key), a uuid is lower case with hyphens.
    pub fn key_string(&self) -> String {
        match self {
            Value::Text(s) => s.trim_end_matches(' ').to_string(),
            Value::Int(i) => i.to_string(),
            Value::Decimal(d) => d.normalize().to_string(),
            Value::Uuid(u) => u.to_string(),
            other => other.display(),
        }
    }

    /// Parses a key's canonical text back into a value of a column of type
    /// `ty` (a key column, a link column, a CRM-id column). A key that does
    /// not fit is an error, never cut short: a shortened key names another
    /// row.
    pub fn from_key_string(s: &str, ty: &SqlType) -> Result<Value, CoerceError> {
        Value::Text(s.to_string()).coerce(ty, None, false)
    }

    /// This value in UTC, for comparing change times across sides.
    pub fn to_utc(&self, zone: Tz) -> Option<DateTime<Utc>> {
        match self {
            Value::TimestampTz(t) => Some(*t),
            Value::Timestamp(t) => local_to_utc(*t, zone),
            _ => None,
        }
    }

    /// Converts this value for a column of type `ty`. Wall-clock times move
    /// between zones when `zones` is given. Text longer than the column is
    /// an error unless `truncate` is set.
    pub fn coerce(
        self,
        ty: &SqlType,
        zones: Option<Zones>,
        truncate: bool,
    ) -> Result<Value, CoerceError> {
        let incompatible = |v: &Value| CoerceError::Incompatible {
            value: v.display(),
            target: ty.describe(),
        };
        let out_of_range = |v: &Value| CoerceError::OutOfRange {
            value: v.display(),
            target: ty.describe(),
        };
        if self.is_null() {
            return Ok(Value::Null);
        }
        Ok(match ty {
            SqlType::Bool => match self {
                Value::Bool(b) => Value::Bool(b),
                Value::Int(0) => Value::Bool(false),
                Value::Int(1) => Value::Bool(true),
                Value::Text(ref s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "t" | "y" | "yes" | "1" => Value::Bool(true),
                    "false" | "f" | "n" | "no" | "0" => Value::Bool(false),
                    _ => return Err(incompatible(&self)),
                },
                v => return Err(incompatible(&v)),
            },
            SqlType::Int { bytes } => {
                let i = match self {
                    Value::Int(i) => i,
                    Value::Bool(b) => b as i64,
                    Value::Decimal(d) if d.fract().is_zero() => {
                        i64::try_from(d).map_err(|_| out_of_range(&Value::Decimal(d)))?
                    }
                    Value::Text(ref s) => s.trim().parse().map_err(|_| incompatible(&self))?,
                    v => return Err(incompatible(&v)),
                };
                let (lo, hi) = match bytes {
                    1 => (0, 255),
                    2 => (i16::MIN as i64, i16::MAX as i64),
                    4 => (i32::MIN as i64, i32::MAX as i64),
                    _ => (i64::MIN, i64::MAX),
                };
                if i < lo || i > hi {
                    return Err(out_of_range(&Value::Int(i)));
                }
                Value::Int(i)
            }
            SqlType::Decimal { precision, scale } => {
                let d = match self {
                    Value::Decimal(d) => d,
                    Value::Int(i) => Decimal::from(i),
                    Value::Text(ref s) => s.trim().parse().map_err(|_| incompatible(&self))?,
                    v => return Err(incompatible(&v)),
                };
                let rounded = d.round_dp(*scale);
                if rounded != d {
                    return Err(out_of_range(&Value::Decimal(d)));
                }
                let int_digits = digits_before_point(&rounded);
                if int_digits > precision.saturating_sub(*scale) {
                    return Err(out_of_range(&Value::Decimal(d)));
                }
                Value::Decimal(rounded)
            }
            SqlType::Float => match self {
                Value::Float(f) => Value::Float(f),
                Value::Int(i) => Value::Float(i as f64),
                Value::Decimal(d) => {
                    Value::Float(d.to_string().parse().map_err(|_| incompatible(&self))?)
                }
                Value::Text(ref s) => {
                    Value::Float(s.trim().parse().map_err(|_| incompatible(&self))?)
                }
                v => return Err(incompatible(&v)),
            },
            SqlType::Text { max_len, unit, .. } => {
                let s = match self {
                    Value::Text(s) => s,
                    Value::Bytes(_) => return Err(incompatible(&self)),
                    Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
                    Value::TimestampTz(t) => t.to_rfc3339(),
                    Value::Bool(b) => b.to_string(),
                    Value::Int(i) => i.to_string(),
                    Value::Decimal(d) => d.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Date(d) => d.to_string(),
                    Value::Uuid(u) => u.to_string(),
                    Value::Null => unreachable!("handled above"),
                };
                match max_len {
                    // No unit counts more than the UTF-8 bytes.
                    Some(max) if s.len() > *max as usize && text_len(&s, *unit) > *max as usize => {
                        if truncate {
                            Value::Text(truncate_text(&s, *max as usize, *unit))
                        } else {
                            return Err(CoerceError::TooLong {
                                len: text_len(&s, *unit),
                                max: *max,
                            });
                        }
                    }
                    _ => Value::Text(s),
                }
            }
            SqlType::Timestamp { precision } => {
                let t = match self {
                    Value::Timestamp(t) => match zones {
                        Some(z) => move_wall_clock(t, z).ok_or_else(|| incompatible(&self))?,
                        None => t,
                    },
                    Value::TimestampTz(t) => match zones {
                        Some(z) => t.with_timezone(&z.to).naive_local(),
                        None => t.naive_utc(),
                    },
                    Value::Date(d) => d.and_hms_opt(0, 0, 0).ok_or_else(|| incompatible(&self))?,
                    Value::Text(ref s) => parse_naive(s).ok_or_else(|| incompatible(&self))?,
                    v => return Err(incompatible(&v)),
                };
                Value::Timestamp(round_to_precision(t, *precision))
            }
            SqlType::TimestampTz => match self {
                Value::TimestampTz(t) => Value::TimestampTz(t),
                Value::Timestamp(t) => {
                    let zone = zones.map(|z| z.from).unwrap_or(Tz::UTC);
                    Value::TimestampTz(local_to_utc(t, zone).ok_or_else(|| incompatible(&self))?)
                }
                Value::Text(ref s) => DateTime::parse_from_rfc3339(s.trim())
                    .map(|t| Value::TimestampTz(t.with_timezone(&Utc)))
                    .map_err(|_| incompatible(&self))?,
                v => return Err(incompatible(&v)),
            },
            SqlType::Date => match self {
                Value::Date(d) => Value::Date(d),
                Value::Timestamp(t) => Value::Date(t.date()),
                Value::Text(ref s) => {
                    Value::Date(s.trim().parse().map_err(|_| incompatible(&self))?)
                }
                v => return Err(incompatible(&v)),
            },
            SqlType::Uuid => match self {
                Value::Uuid(u) => Value::Uuid(u),
                Value::Text(ref s) => {
                    Value::Uuid(s.trim().parse().map_err(|_| incompatible(&self))?)
                }
                v => return Err(incompatible(&v)),
            },
            SqlType::Bytes => match self {
                Value::Bytes(b) => Value::Bytes(b),
                v => return Err(incompatible(&v)),
            },
            SqlType::Other(_) => match self {
                Value::Text(s) => Value::Text(s),
                v => Value::Text(v.display()),
            },
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// Length of `s` as a column of `unit` counts it.
pub fn text_len(s: &str, unit: LengthUnit) -> usize {
    match unit {
        LengthUnit::Chars => s.chars().count(),
        LengthUnit::Utf16 => s.encode_utf16().count(),
        LengthUnit::Bytes => s.len(),
    }
}

/// The longest prefix of `s` that fits `max`, never splitting a character.
pub fn truncate_text(s: &str, max: usize, unit: LengthUnit) -> String {
    let mut used = 0;
    let mut out = String::new();
    for c in s.chars() {
        let w = match unit {
            LengthUnit::Chars => 1,
            LengthUnit::Utf16 => c.len_utf16(),
            LengthUnit::Bytes => c.len_utf8(),
        };
        if used + w > max {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

fn digits_before_point(d: &Decimal) -> u32 {
    let t = d.trunc().abs();
    if t.is_zero() {
        0
    } else {
        t.to_string().len() as u32
    }
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

/// The UTC instant of a wall-clock time in `zone`. In the autumn overlap the
/// earlier instant is taken; in the spring gap the time is moved forward.
pub fn local_to_utc(t: NaiveDateTime, zone: Tz) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&t) {
        chrono::LocalResult::Single(x) => Some(x.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(a, _) => Some(a.with_timezone(&Utc)),
        chrono::LocalResult::None => zone
            .from_local_datetime(&(t + chrono::Duration::hours(1)))
            .earliest()
            .map(|x| x.with_timezone(&Utc)),
    }
}

fn move_wall_clock(t: NaiveDateTime, z: Zones) -> Option<NaiveDateTime> {
    if z.from == z.to {
        return Some(t);
    }
    local_to_utc(t, z.from).map(|u| u.with_timezone(&z.to).naive_local())
}

/// Rounds to `precision` fractional digits (half up), as a database does
/// when storing into a column of that precision.
pub fn round_to_precision(t: NaiveDateTime, precision: u32) -> NaiveDateTime {
    if precision >= 9 {
        return t;
    }
    let step = 10u32.pow(9 - precision);
    let nanos = t.nanosecond() % 1_000_000_000;
    let rem = nanos % step;
    if rem == 0 {
        return t;
    }
    let down = t - chrono::Duration::nanoseconds(rem as i64);
    if rem * 2 >= step {
        down + chrono::Duration::nanoseconds(step as i64)
    } else {
        down
    }
}

/// Truncates to `precision` fractional digits, never moving a bound later.
pub fn floor_to_precision(t: NaiveDateTime, precision: u32) -> NaiveDateTime {
    if precision >= 9 {
        return t;
    }
    let step = 10u32.pow(9 - precision);
    let rem = (t.nanosecond() % 1_000_000_000) % step;
    t - chrono::Duration::nanoseconds(rem as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(max: u32, unit: LengthUnit) -> SqlType {
        SqlType::Text {
            max_len: Some(max),
            unit,
            fixed: false,
        }
    }

    #[test]
    fn utf16_counts_emoji_as_two_units() {
        let s = "ab😀";
        assert_eq!(text_len(s, LengthUnit::Chars), 3);
        assert_eq!(text_len(s, LengthUnit::Utf16), 4);
        let v = Value::Text(s.into());
        assert!(v
            .clone()
            .coerce(&text(3, LengthUnit::Chars), None, false)
            .is_ok());
        assert_eq!(
            v.clone().coerce(&text(3, LengthUnit::Utf16), None, false),
            Err(CoerceError::TooLong { len: 4, max: 3 })
        );
        // Truncation never splits the surrogate pair.
        assert_eq!(
            v.coerce(&text(3, LengthUnit::Utf16), None, true),
            Ok(Value::Text("ab".into()))
        );
    }

    #[test]
    fn decimal_keeps_precision_and_rejects_overflow() {
        let ty = SqlType::Decimal {
            precision: 24,
            scale: 6,
        };
        let d: Decimal = "123456789012345678.123456".parse().unwrap();
        assert_eq!(
            Value::Decimal(d).coerce(&ty, None, false),
            Ok(Value::Decimal(d))
        );
        let too_big: Decimal = "1234567890123456789.5".parse().unwrap();
        assert!(Value::Decimal(too_big).coerce(&ty, None, false).is_err());
        let too_fine: Decimal = "1.1234567".parse().unwrap();
        assert!(Value::Decimal(too_fine).coerce(&ty, None, false).is_err());
    }

    #[test]
    fn wall_clock_moves_between_zones_through_utc() {
        let t = NaiveDate::from_ymd_opt(2026, 7, 1)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        let zones = Zones {
            from: chrono_tz::Europe::London,
            to: chrono_tz::UTC,
        };
        let out = Value::Timestamp(t)
            .coerce(&SqlType::Timestamp { precision: 6 }, Some(zones), false)
            .unwrap();
        assert_eq!(out, Value::Timestamp(t - chrono::Duration::hours(1)));
        let tz = Value::Timestamp(t)
            .coerce(&SqlType::TimestampTz, Some(zones), false)
            .unwrap();
        assert_eq!(
            tz.to_utc(chrono_tz::UTC).unwrap().naive_utc(),
            t - chrono::Duration::hours(1)
        );
    }

    #[test]
    fn common_kinds_are_bare_in_json_and_the_tagged_form_still_reads() {
        let shadow: std::collections::BTreeMap<String, Value> = [
            ("a".to_string(), Value::Text("x".into())),
            ("b".to_string(), Value::Int(-7)),
            ("c".to_string(), Value::Null),
            ("d".to_string(), Value::Bool(true)),
            ("e".to_string(), Value::Decimal(Decimal::new(1050, 2))),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            serde_json::to_string(&shadow).unwrap(),
            r#"{"a":"x","b":-7,"c":null,"d":true,"e":{"t":"Decimal","v":"10.50"}}"#
        );
        let old = r#"{"a":{"t":"Text","v":"x"},"b":{"t":"Int","v":-7},"c":{"t":"Null"},
                      "d":{"t":"Bool","v":true},"e":{"t":"Decimal","v":"10.50"}}"#;
        let back: std::collections::BTreeMap<String, Value> = serde_json::from_str(old).unwrap();
        assert_eq!(back, shadow);
        assert_eq!(
            serde_json::from_str::<Value>("18446744073709551615")
                .unwrap_err()
                .to_string(),
            "integer 18446744073709551615 is out of range at line 1 column 20"
        );
    }

    #[test]
    fn integer_width_is_checked() {
        assert!(Value::Int(256)
            .coerce(&SqlType::Int { bytes: 1 }, None, false)
            .is_err());
        assert!(Value::Int(-1)
            .coerce(&SqlType::Int { bytes: 1 }, None, false)
            .is_err());
        assert_eq!(
            Value::Int(i32::MAX as i64).coerce(&SqlType::Int { bytes: 4 }, None, false),
            Ok(Value::Int(i32::MAX as i64))
        );
        assert!(Value::Int(i32::MAX as i64 + 1)
            .coerce(&SqlType::Int { bytes: 4 }, None, false)
            .is_err());
    }

    #[test]
    fn rounding_matches_column_precision() {
        let t = NaiveDate::from_ymd_opt(2026, 1, 1)
            .unwrap()
            .and_hms_nano_opt(0, 0, 0, 857_500_000)
            .unwrap();
        assert_eq!(round_to_precision(t, 3).nanosecond(), 858_000_000);
        assert_eq!(floor_to_precision(t, 3).nanosecond(), 857_000_000);
        assert_eq!(round_to_precision(t, 6), t);
    }

    proptest! {
        #[test]
        fn shadow_serialisation_round_trips(
            i in any::<i64>(),
            s in ".*",
            s2 in ".{0,8}",
            m in any::<i64>(),
            scale in 0u32..10,
            secs in 0i64..4_000_000_000,
        ) {
            let t = DateTime::from_timestamp(secs, 123_000).unwrap();
            let values = vec![
                Value::Null,
                Value::Int(i),
                Value::Text(s),
                Value::Decimal(Decimal::new(m, scale)),
                Value::Timestamp(t.naive_utc()),
                Value::TimestampTz(t),
                Value::Bool(i % 2 == 0),
                Value::Float(m as f64 / 8.0),
                Value::Date(t.date_naive()),
                Value::Uuid(uuid::Uuid::from_u64_pair(i as u64, m as u64)),
                Value::Bytes(s2.into_bytes()),
            ];
            let json = serde_json::to_string(&values).unwrap();
            let back: Vec<Value> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &values);
            // Through jsonb-like re-parsing as a document, too.
            let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
            let back: Vec<Value> = serde_json::from_value(doc).unwrap();
            prop_assert_eq!(back, values);
        }

        #[test]
        fn truncation_fits_and_is_a_prefix(s in "\\PC*", max in 0usize..20) {
            for unit in [LengthUnit::Chars, LengthUnit::Utf16, LengthUnit::Bytes] {
                let t = truncate_text(&s, max, unit);
                prop_assert!(text_len(&t, unit) <= max);
                prop_assert!(s.starts_with(&t));
            }
        }
    }
}
