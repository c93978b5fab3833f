//! SQL Server data types as declared in DDL, and the values the stand-in moves
//! between TDS and PostgreSQL.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use rust_decimal::Decimal;

/// A declared SQL Server type. `None` lengths mean `(max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Bit,
    Float,
    Real,
    Decimal(u8, u8),
    Money,
    SmallMoney,
    NVarChar(Option<u16>),
    NChar(u16),
    VarChar(Option<u16>),
    Char(u16),
    DateTime,
    SmallDateTime,
    DateTime2(u8),
    Date,
    Time(u8),
    DateTimeOffset(u8),
    UniqueIdentifier,
    VarBinary(Option<u16>),
    Binary(u16),
}

/// A value in flight. Integers of every width travel as `Int`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Decimal(Decimal),
    Text(String),
    Bytes(Vec<u8>),
    DateTime(NaiveDateTime),
    Date(NaiveDate),
    Time(NaiveTime),
    DateTimeOffset(DateTime<FixedOffset>),
    Uuid(uuid::Uuid),
}

impl SqlType {
    /// Parses a T-SQL type name with its arguments (`nvarchar`, `["60"]`).
    pub fn parse(name: &str, args: &[String]) -> Option<SqlType> {
        let n = |i: usize| -> Option<Option<u16>> {
            match args.get(i) {
                None => None,
                Some(a) if a.eq_ignore_ascii_case("max") => Some(None),
                Some(a) => a.trim().parse::<u16>().ok().map(Some),
            }
        };
        let small = |i: usize, default: u8| -> u8 {
            args.get(i)
                .and_then(|a| a.trim().parse::<u8>().ok())
                .unwrap_or(default)
        };
        let name = name.to_ascii_lowercase();
        let name = name.trim_start_matches("sys.").trim_start_matches("dbo.");
        Some(match name {
            "tinyint" => SqlType::TinyInt,
            "smallint" => SqlType::SmallInt,
            "int" | "integer" => SqlType::Int,
            "bigint" => SqlType::BigInt,
            "bit" => SqlType::Bit,
            "float" | "double precision" => SqlType::Float,
            "real" => SqlType::Real,
            "decimal" | "numeric" | "dec" => SqlType::Decimal(small(0, 18), small(1, 0)),
            "money" => SqlType::Money,
            "smallmoney" => SqlType::SmallMoney,
            "nvarchar" | "national character varying" => SqlType::NVarChar(n(0).unwrap_or(Some(1))),
            "nchar" | "national character" => SqlType::NChar(n(0).flatten().unwrap_or(1)),
            "varchar" | "character varying" => SqlType::VarChar(n(0).unwrap_or(Some(1))),
            "char" | "character" => SqlType::Char(n(0).flatten().unwrap_or(1)),
            "ntext" => SqlType::NVarChar(None),
            "text" => SqlType::VarChar(None),
            "sysname" => SqlType::NVarChar(Some(128)),
            "datetime" => SqlType::DateTime,
            "smalldatetime" => SqlType::SmallDateTime,
            "datetime2" => SqlType::DateTime2(small(0, 7)),
            "date" => SqlType::Date,
            "time" => SqlType::Time(small(0, 7)),
            "datetimeoffset" => SqlType::DateTimeOffset(small(0, 7)),
            "uniqueidentifier" => SqlType::UniqueIdentifier,
            "varbinary" => SqlType::VarBinary(n(0).unwrap_or(Some(1))),
            "binary" => SqlType::Binary(n(0).flatten().unwrap_or(1)),
            "image" => SqlType::VarBinary(None),
            _ => return None,
        })
    }

    /// The PostgreSQL column type that stores this type.
    pub fn pg_type(&self) -> String {
        match self {
            SqlType::TinyInt | SqlType::SmallInt | SqlType::Bit => "int2".into(),
            SqlType::Int => "int4".into(),
            SqlType::BigInt => "int8".into(),
            SqlType::Float => "float8".into(),
            SqlType::Real => "float4".into(),
            SqlType::Decimal(p, s) => format!("numeric({p},{s})"),
            SqlType::Money => "numeric(19,4)".into(),
            SqlType::SmallMoney => "numeric(10,4)".into(),
            SqlType::NVarChar(_) | SqlType::NChar(_) | SqlType::VarChar(_) | SqlType::Char(_) => {
                "text COLLATE mssql_standin.ci_as".into()
            }
            SqlType::DateTime | SqlType::SmallDateTime => "timestamp(6)".into(),
            SqlType::DateTime2(s) => format!("timestamp({})", (*s).min(6)),
            SqlType::Date => "date".into(),
            SqlType::Time(s) => format!("time({})", (*s).min(6)),
            SqlType::DateTimeOffset(s) => format!("timestamptz({})", (*s).min(6)),
            SqlType::UniqueIdentifier => "uuid".into(),
            SqlType::VarBinary(_) | SqlType::Binary(_) => "bytea".into(),
        }
    }

    /// The PostgreSQL type used to cast a parameter of this type (no collation).
    pub fn pg_cast(&self) -> String {
        match self {
            SqlType::NVarChar(_) | SqlType::NChar(_) | SqlType::VarChar(_) | SqlType::Char(_) => {
                "text".into()
            }
            SqlType::Bit => "int2".into(),
            SqlType::Decimal(..) | SqlType::Money | SqlType::SmallMoney => "numeric".into(),
            SqlType::DateTime | SqlType::SmallDateTime | SqlType::DateTime2(_) => {
                "timestamp".into()
            }
            SqlType::Time(_) => "time".into(),
            SqlType::DateTimeOffset(_) => "timestamptz".into(),
            other => other.pg_type(),
        }
    }

    /// The lower-case name INFORMATION_SCHEMA and sys.types use.
    pub fn name(&self) -> &'static str {
        match self {
            SqlType::TinyInt => "tinyint",
            SqlType::SmallInt => "smallint",
            SqlType::Int => "int",
            SqlType::BigInt => "bigint",
            SqlType::Bit => "bit",
            SqlType::Float => "float",
            SqlType::Real => "real",
            SqlType::Decimal(..) => "decimal",
            SqlType::Money => "money",
            SqlType::SmallMoney => "smallmoney",
            SqlType::NVarChar(_) => "nvarchar",
            SqlType::NChar(_) => "nchar",
            SqlType::VarChar(_) => "varchar",
            SqlType::Char(_) => "char",
            SqlType::DateTime => "datetime",
            SqlType::SmallDateTime => "smalldatetime",
            SqlType::DateTime2(_) => "datetime2",
            SqlType::Date => "date",
            SqlType::Time(_) => "time",
            SqlType::DateTimeOffset(_) => "datetimeoffset",
            SqlType::UniqueIdentifier => "uniqueidentifier",
            SqlType::VarBinary(_) => "varbinary",
            SqlType::Binary(_) => "binary",
        }
    }

    /// The declared type as T-SQL text (`nvarchar(60)`), for the catalog.
    pub fn declaration(&self) -> String {
        let len = |n: &Option<u16>| match n {
            Some(n) => n.to_string(),
            None => "max".into(),
        };
        match self {
            SqlType::Decimal(p, s) => format!("decimal({p},{s})"),
            SqlType::NVarChar(n) | SqlType::VarChar(n) | SqlType::VarBinary(n) => {
                format!("{}({})", self.name(), len(n))
            }
            SqlType::NChar(n) | SqlType::Char(n) | SqlType::Binary(n) => {
                format!("{}({n})", self.name())
            }
            SqlType::DateTime2(s) | SqlType::Time(s) | SqlType::DateTimeOffset(s) => {
                format!("{}({s})", self.name())
            }
            other => other.name().into(),
        }
    }

    /// Character length as INFORMATION_SCHEMA reports it (-1 for max).
    pub fn char_length(&self) -> Option<i32> {
        match self {
            SqlType::NVarChar(n) | SqlType::VarChar(n) | SqlType::VarBinary(n) => {
                Some(n.map(i32::from).unwrap_or(-1))
            }
            SqlType::NChar(n) | SqlType::Char(n) | SqlType::Binary(n) => Some(i32::from(*n)),
            _ => None,
        }
    }

    /// Bytes of storage as `sys.columns.max_length` reports it (-1 for max).
    pub fn max_length(&self) -> i32 {
        match self {
            SqlType::TinyInt | SqlType::Bit => 1,
            SqlType::SmallInt => 2,
            SqlType::Int | SqlType::Real | SqlType::SmallMoney | SqlType::SmallDateTime => 4,
            SqlType::BigInt | SqlType::Float | SqlType::Money | SqlType::DateTime => 8,
            SqlType::Decimal(p, _) => decimal_size(*p) as i32,
            SqlType::NVarChar(n) => n.map(|n| 2 * i32::from(n)).unwrap_or(-1),
            SqlType::NChar(n) => 2 * i32::from(*n),
            SqlType::VarChar(n) | SqlType::VarBinary(n) => n.map(i32::from).unwrap_or(-1),
            SqlType::Char(n) | SqlType::Binary(n) => i32::from(*n),
            SqlType::DateTime2(s) => 6 + i32::from(*s > 2) + i32::from(*s > 4),
            SqlType::Date => 3,
            SqlType::Time(s) => 3 + i32::from(*s > 2) + i32::from(*s > 4),
            SqlType::DateTimeOffset(s) => 8 + i32::from(*s > 2) + i32::from(*s > 4),
            SqlType::UniqueIdentifier => 16,
        }
    }

    /// Numeric precision and scale as the catalog reports them.
    pub fn precision_scale(&self) -> (i32, i32) {
        match self {
            SqlType::TinyInt => (3, 0),
            SqlType::SmallInt => (5, 0),
            SqlType::Int => (10, 0),
            SqlType::BigInt => (19, 0),
            SqlType::Bit => (1, 0),
            SqlType::Float => (53, 0),
            SqlType::Real => (24, 0),
            SqlType::Decimal(p, s) => (i32::from(*p), i32::from(*s)),
            SqlType::Money => (19, 4),
            SqlType::SmallMoney => (10, 4),
            SqlType::DateTime => (23, 3),
            SqlType::SmallDateTime => (16, 0),
            SqlType::DateTime2(s) => (20 + i32::from(*s) + i32::from(*s > 0), i32::from(*s)),
            SqlType::Date => (10, 0),
            SqlType::Time(s) => (8 + i32::from(*s) + i32::from(*s > 0), i32::from(*s)),
            SqlType::DateTimeOffset(s) => (26 + i32::from(*s) + i32::from(*s > 0), i32::from(*s)),
            _ => (0, 0),
        }
    }

    /// `sys.types.system_type_id` of the type.
    pub fn system_type_id(&self) -> i32 {
        match self {
            SqlType::TinyInt => 48,
            SqlType::SmallInt => 52,
            SqlType::Int => 56,
            SqlType::BigInt => 127,
            SqlType::Bit => 104,
            SqlType::Float => 62,
            SqlType::Real => 59,
            SqlType::Decimal(..) => 106,
            SqlType::Money => 60,
            SqlType::SmallMoney => 122,
            SqlType::NVarChar(_) => 231,
            SqlType::NChar(_) => 239,
            SqlType::VarChar(_) => 167,
            SqlType::Char(_) => 175,
            SqlType::DateTime => 61,
            SqlType::SmallDateTime => 58,
            SqlType::DateTime2(_) => 42,
            SqlType::Date => 40,
            SqlType::Time(_) => 41,
            SqlType::DateTimeOffset(_) => 43,
            SqlType::UniqueIdentifier => 36,
            SqlType::VarBinary(_) => 165,
            SqlType::Binary(_) => 173,
        }
    }

    pub fn is_character(&self) -> bool {
        matches!(
            self,
            SqlType::NVarChar(_) | SqlType::NChar(_) | SqlType::VarChar(_) | SqlType::Char(_)
        )
    }
}

/// Bytes a decimal of precision `p` takes on the wire, sign byte included.
pub fn decimal_size(p: u8) -> u8 {
    match p {
        0..=9 => 5,
        10..=19 => 9,
        20..=28 => 13,
        _ => 17,
    }
}

/// Length in UTF-16 code units, as SQL Server counts nvarchar lengths.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Rounds a time of day to SQL Server `datetime` precision (1/300 s ticks),
/// returning (day carry, ticks).
pub fn datetime_ticks(t: NaiveTime) -> (i64, u32) {
    let ns = u64::from(t.num_seconds_from_midnight()) * 1_000_000_000 + u64::from(t.nanosecond());
    // Round to the nearest tick; ties round up as SQL Server does for .xx5.
    let ticks = (ns * 300 + 500_000_000) / 1_000_000_000;
    if ticks >= 300 * 86_400 {
        (1, (ticks - 300 * 86_400) as u32)
    } else {
        (0, ticks as u32)
    }
}

/// A timestamp rounded to `datetime` precision, to the nearest microsecond.
pub fn round_datetime(v: NaiveDateTime) -> NaiveDateTime {
    let (carry, ticks) = datetime_ticks(v.time());
    let date = v.date() + chrono::Duration::days(carry);
    let micros = (u64::from(ticks) * 1_000_000 + 150) / 300;
    date.and_hms_opt(0, 0, 0).unwrap_or_default() + chrono::Duration::microseconds(micros as i64)
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short text form for messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Bool(b) => u8::from(*b).to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Decimal(d) => d.to_string(),
            Value::Text(s) => s.clone(),
            Value::Bytes(b) => format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02X}")).collect::<String>()
            ),
            Value::DateTime(d) => d.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
            Value::Date(d) => d.to_string(),
            Value::Time(t) => t.to_string(),
            Value::DateTimeOffset(d) => d.to_rfc3339(),
            Value::Uuid(u) => u.to_string().to_uppercase(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_rounds_to_three_hundredths() {
        let t = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        assert_eq!(
            round_datetime(t("2024-01-01 10:00:00.857")),
            t("2024-01-01 10:00:00.856667")
        );
        assert_eq!(
            round_datetime(t("2024-01-01 10:00:00.001")),
            t("2024-01-01 10:00:00.000")
        );
        assert_eq!(
            round_datetime(t("2024-01-01 10:00:00.002")),
            t("2024-01-01 10:00:00.003333")
        );
        assert_eq!(
            round_datetime(t("2024-01-01 23:59:59.999")),
            t("2024-01-02 00:00:00")
        );
    }

    #[test]
    fn utf16_length_counts_surrogate_pairs() {
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("😀"), 2);
    }
}
