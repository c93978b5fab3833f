//! SQL Server ↔ `Value`: the one place where values cross into and out of
//! tiberius' `ColumnData`, and where catalog types become `SqlType`s.
//!
//! Reading: integers of every width become `Int`; `decimal`/`numeric` (and
//! `money`, which the endpoint selects as `decimal(19,4)` because tiberius
//! would decode it as a float) become `Decimal`; `datetime` values, stored in
//! 1/300 s ticks, are rounded to the millisecond SQL Server displays
//! (.000/.003/.007), so that the value read back casts to the same tick.
//!
//! Writing: every value travels as a typed parameter. NULLs carry the type
//! of the column they are written to, because SQL Server does not convert
//! an `nvarchar` NULL to every type implicitly (`varbinary`, for one).

use crate::value::{round_to_precision, LengthUnit, SqlType, Value};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use std::borrow::Cow;
use tiberius::{ColumnData, FromSql, ToSql};

/// A column as `INFORMATION_SCHEMA.COLUMNS` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeType {
    /// `DATA_TYPE`, lower case: `nvarchar`, `datetime`, …
    pub name: String,
    /// `CHARACTER_MAXIMUM_LENGTH`: characters (-1 for `max`).
    pub char_len: Option<i32>,
    pub precision: Option<u8>,
    pub scale: Option<i32>,
    /// `DATETIME_PRECISION`.
    pub datetime_precision: Option<i16>,
}

impl NativeType {
    /// The type as T-SQL spells it in a `CAST` or a declaration.
    pub fn declaration(&self) -> String {
        let len = |n: Option<i32>| match n {
            Some(-1) | None => "max".to_string(),
            Some(n) => n.to_string(),
        };
        match self.name.as_str() {
            "nvarchar" | "varchar" | "varbinary" | "nchar" | "char" | "binary" => {
                format!("{}({})", self.name, len(self.char_len))
            }
            "decimal" | "numeric" => format!(
                "{}({},{})",
                self.name,
                self.precision.unwrap_or(18),
                self.scale.unwrap_or(0)
            ),
            "datetime2" | "datetimeoffset" | "time" => {
                format!("{}({})", self.name, self.datetime_precision.unwrap_or(7))
            }
            other => other.to_string(),
        }
    }

    /// The neutral type.
    pub fn sql_type(&self) -> SqlType {
        let text = |unit, fixed| SqlType::Text {
            max_len: self.char_len.filter(|n| *n > 0).map(|n| n as u32),
            unit,
            fixed,
        };
        match self.name.as_str() {
            "bit" => SqlType::Bool,
            "tinyint" => SqlType::Int { bytes: 1 },
            "smallint" => SqlType::Int { bytes: 2 },
            "int" => SqlType::Int { bytes: 4 },
            "bigint" => SqlType::Int { bytes: 8 },
            "decimal" | "numeric" => SqlType::Decimal {
                precision: u32::from(self.precision.unwrap_or(18)),
                scale: self.scale.unwrap_or(0).max(0) as u32,
            },
            "money" => SqlType::Decimal {
                precision: 19,
                scale: 4,
            },
            "smallmoney" => SqlType::Decimal {
                precision: 10,
                scale: 4,
            },
            "float" | "real" => SqlType::Float,
            "nvarchar" => text(LengthUnit::Utf16, false),
            "nchar" => text(LengthUnit::Utf16, true),
            "varchar" => text(LengthUnit::Bytes, false),
            "char" => text(LengthUnit::Bytes, true),
            "ntext" | "text" => SqlType::Text {
                max_len: None,
                unit: LengthUnit::Utf16,
                fixed: false,
            },
            // datetime: three digits, but only .000/.003/.007 exist.
            "datetime" => SqlType::Timestamp { precision: 3 },
            "smalldatetime" => SqlType::Timestamp { precision: 0 },
            "datetime2" => SqlType::Timestamp {
                precision: self.datetime_precision.unwrap_or(7).clamp(0, 7) as u32,
            },
            "datetimeoffset" => SqlType::TimestampTz,
            "date" => SqlType::Date,
            "uniqueidentifier" => SqlType::Uuid,
            "varbinary" | "binary" | "image" => SqlType::Bytes,
            other => SqlType::Other(other.to_string()),
        }
    }

    /// The type a parameter compared with a column of this type is cast
    /// to, where the parameter's wire type would make SQL Server convert
    /// the column instead. A text parameter travels as `nvarchar`, which
    /// outranks `varchar` ("Data type precedence (Transact-SQL)"): the
    /// column is converted, which under a SQL Server collation such as
    /// SQL_Latin1_General_CP1_CI_AS both rules out an index seek and
    /// compares by the Unicode rules where `ORDER BY` sorts by the
    /// non-Unicode ones ("Collation and Unicode support"), so a keyset page
    /// that ends at 'A-2' skips 'A1'. A chrono value travels as
    /// `datetime2(7)`, to which a `datetime` is converted exactly (.857
    /// becomes .8566667): `=` never holds. `varchar(8000)` rather than the
    /// column's length, so that a longer value is not cut to a prefix that
    /// matches.
    pub fn param_cast(&self) -> Option<String> {
        match self.name.as_str() {
            "varchar" | "char" if self.char_len == Some(-1) => Some("varchar(max)".into()),
            "varchar" | "char" => Some("varchar(8000)".into()),
            "datetime" | "smalldatetime" => Some(self.name.clone()),
            _ => None,
        }
    }

    /// Whether the endpoint must select the column through a cast so that
    /// tiberius decodes it without loss (`money` would come back as a
    /// float, `time` and `xml` have no `Value`).
    pub fn select_cast(&self) -> Option<String> {
        match self.name.as_str() {
            "money" | "smallmoney" => Some("decimal(19,4)".into()),
            _ => match self.sql_type() {
                SqlType::Other(_) => Some("nvarchar(max)".into()),
                _ => None,
            },
        }
    }
}

/// A value read from SQL Server, in neutral form.
pub fn from_column(data: &ColumnData<'static>) -> tiberius::Result<Value> {
    Ok(match data {
        ColumnData::U8(v) => v.map_or(Value::Null, |i| Value::Int(i64::from(i))),
        ColumnData::I16(v) => v.map_or(Value::Null, |i| Value::Int(i64::from(i))),
        ColumnData::I32(v) => v.map_or(Value::Null, |i| Value::Int(i64::from(i))),
        ColumnData::I64(v) => v.map_or(Value::Null, Value::Int),
        ColumnData::F32(v) => v.map_or(Value::Null, |f| Value::Float(f64::from(f))),
        ColumnData::F64(v) => v.map_or(Value::Null, Value::Float),
        ColumnData::Bit(v) => v.map_or(Value::Null, Value::Bool),
        ColumnData::String(v) => v
            .as_ref()
            .map_or(Value::Null, |s| Value::Text(s.to_string())),
        ColumnData::Guid(v) => v.map_or(Value::Null, Value::Uuid),
        ColumnData::Binary(v) => v.as_ref().map_or(Value::Null, |b| Value::Bytes(b.to_vec())),
        ColumnData::Numeric(_) => Decimal::from_sql(data)?.map_or(Value::Null, Value::Decimal),
        ColumnData::Xml(v) => v
            .as_ref()
            .map_or(Value::Null, |x| Value::Text(x.to_string())),
        ColumnData::DateTime(_) => NaiveDateTime::from_sql(data)?
            .map_or(Value::Null, |t| Value::Timestamp(round_to_precision(t, 3))),
        ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => {
            NaiveDateTime::from_sql(data)?.map_or(Value::Null, Value::Timestamp)
        }
        ColumnData::Date(_) => NaiveDate::from_sql(data)?.map_or(Value::Null, Value::Date),
        ColumnData::Time(_) => NaiveTime::from_sql(data)?.map_or(Value::Null, |t| {
            Value::Text(t.format("%H:%M:%S%.f").to_string())
        }),
        // On the wire a datetimeoffset's date and time are UTC (MS-TDS);
        // tiberius 0.12 reads them so into `DateTime<FixedOffset>`, but into
        // `DateTime<Utc>` as local time, off by the offset.
        ColumnData::DateTimeOffset(_) => DateTime::<FixedOffset>::from_sql(data)?
            .map_or(Value::Null, |t| Value::TimestampTz(t.with_timezone(&Utc))),
    })
}

/// A value as a tiberius parameter. `ty` is the type of the column the
/// value is compared with or written to, when known; it types NULLs and
/// picks the integer width.
#[derive(Debug, Clone)]
pub struct Param {
    value: Value,
    ty: Option<SqlType>,
}

impl Param {
    pub fn new(value: Value, ty: Option<SqlType>) -> Param {
        Param { value, ty }
    }
}

impl ToSql for Param {
    fn to_sql(&self) -> ColumnData<'_> {
        match &self.value {
            Value::Null => null_of(self.ty.as_ref()),
            Value::Bool(b) => ColumnData::Bit(Some(*b)),
            Value::Int(i) => match (self.ty.as_ref(), i32::try_from(*i)) {
                (Some(SqlType::Int { bytes: 8 }), _) | (_, Err(_)) => ColumnData::I64(Some(*i)),
                (_, Ok(small)) => ColumnData::I32(Some(small)),
            },
            Value::Decimal(d) => d.to_sql(),
            Value::Float(f) => ColumnData::F64(Some(*f)),
            Value::Text(s) => ColumnData::String(Some(Cow::Borrowed(s.as_str()))),
            Value::Timestamp(t) => t.to_sql(),
            Value::TimestampTz(t) => t.to_sql(),
            Value::Date(d) => d.to_sql(),
            Value::Uuid(u) => ColumnData::Guid(Some(*u)),
            Value::Bytes(b) => ColumnData::Binary(Some(Cow::Borrowed(b.as_slice()))),
        }
    }
}

/// A NULL of the wire type that matches a column of type `ty`.
fn null_of(ty: Option<&SqlType>) -> ColumnData<'static> {
    match ty {
        Some(SqlType::Bool) => ColumnData::Bit(None),
        Some(SqlType::Int { bytes: 8 }) => ColumnData::I64(None),
        Some(SqlType::Int { .. }) => ColumnData::I32(None),
        Some(SqlType::Decimal { .. }) => ColumnData::Numeric(None),
        Some(SqlType::Float) => ColumnData::F64(None),
        Some(SqlType::Timestamp { .. }) => ColumnData::DateTime2(None),
        Some(SqlType::TimestampTz) => ColumnData::DateTimeOffset(None),
        Some(SqlType::Date) => ColumnData::Date(None),
        Some(SqlType::Uuid) => ColumnData::Guid(None),
        Some(SqlType::Bytes) => ColumnData::Binary(None),
        Some(SqlType::Text { .. } | SqlType::Other(_)) | None => ColumnData::String(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a `datetimeoffset` stamped off UTC (SYSDATETIMEOFFSET()
    /// on a server in New York) was read as an instant off by its offset,
    /// so change reads of such a column set the watermark hours ahead and
    /// missed the changes in between.
    #[test]
    fn a_datetimeoffset_off_utc_reads_as_its_instant() {
        use chrono::TimeZone;
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 15, 9, 30).unwrap();
        for minutes in [-300, 0, 60, 330] {
            let zone = FixedOffset::east_opt(minutes * 60).unwrap();
            let data = tiberius::IntoSql::into_sql(at.with_timezone(&zone));
            assert_eq!(
                from_column(&data).unwrap(),
                Value::TimestampTz(at),
                "offset {minutes} min"
            );
        }
        assert_eq!(
            from_column(&ColumnData::DateTimeOffset(None)).unwrap(),
            Value::Null
        );
    }

    fn native(name: &str, len: Option<i32>, dp: Option<i16>) -> NativeType {
        NativeType {
            name: name.into(),
            char_len: len,
            precision: None,
            scale: None,
            datetime_precision: dp,
        }
    }

    #[test]
    fn catalog_types_map_as_sage_crm_uses_them() {
        assert_eq!(
            native("nvarchar", Some(60), None).sql_type(),
            SqlType::Text {
                max_len: Some(60),
                unit: LengthUnit::Utf16,
                fixed: false
            }
        );
        assert_eq!(
            native("nvarchar", Some(-1), None).sql_type(),
            SqlType::Text {
                max_len: None,
                unit: LengthUnit::Utf16,
                fixed: false
            }
        );
        assert_eq!(
            native("datetime", None, Some(3)).sql_type(),
            SqlType::Timestamp { precision: 3 }
        );
        assert_eq!(
            native("datetime2", None, Some(7)).declaration(),
            "datetime2(7)"
        );
        assert_eq!(native("datetime", None, Some(3)).declaration(), "datetime");
        assert_eq!(
            native("money", None, None).select_cast().as_deref(),
            Some("decimal(19,4)")
        );
        assert_eq!(
            native("tinyint", None, None).sql_type(),
            SqlType::Int { bytes: 1 }
        );
    }

    #[test]
    fn parameters_compared_with_varchar_and_datetime_columns_take_their_type() {
        let cast = |name: &str, len: Option<i32>| native(name, len, None).param_cast();
        assert_eq!(cast("varchar", Some(20)).as_deref(), Some("varchar(8000)"));
        assert_eq!(cast("char", Some(8)).as_deref(), Some("varchar(8000)"));
        assert_eq!(cast("varchar", Some(-1)).as_deref(), Some("varchar(max)"));
        assert_eq!(cast("datetime", None).as_deref(), Some("datetime"));
        assert_eq!(
            cast("smalldatetime", None).as_deref(),
            Some("smalldatetime")
        );
        // Already the parameter's own type, or one it converts to.
        for name in [
            "nvarchar",
            "nchar",
            "int",
            "bigint",
            "datetime2",
            "uniqueidentifier",
        ] {
            assert_eq!(cast(name, Some(10)), None, "{name}");
        }
    }

    #[test]
    fn datetime_ticks_read_as_the_milliseconds_sql_server_shows() {
        // 1 tick = 1/300 s: .003 as SQL Server prints it.
        let d = tiberius::time::DateTime::new(45_000, 300 * 3600 + 1);
        let v = from_column(&ColumnData::DateTime(Some(d))).unwrap();
        let Value::Timestamp(t) = v else {
            panic!("{v:?}")
        };
        assert_eq!(t.format("%H:%M:%S%.f").to_string(), "01:00:00.003");
        let d = tiberius::time::DateTime::new(45_000, 300 * 3600 + 2);
        let Value::Timestamp(t) = from_column(&ColumnData::DateTime(Some(d))).unwrap() else {
            panic!()
        };
        assert_eq!(t.format("%H:%M:%S%.f").to_string(), "01:00:00.007");
    }
}
