//! Moves values between the stand-in's `Value` and PostgreSQL: binding
//! parameters with SQL Server's implicit conversions, reading result rows,
//! and the default SQL Server type of a PostgreSQL result column.

use crate::error::SqlError;
use crate::sqltype::{SqlType, Value};
use crate::tds::types::parse_datetime_text;
use bytes::BytesMut;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::Row;

/// A parameter value bound to whatever type PostgreSQL inferred for it.
#[derive(Debug)]
pub struct Bind<'a>(pub &'a Value);

/// A failed implicit conversion, carried through tokio-postgres as the
/// source of its serialization error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConversionFailed(pub SqlError);

fn source_type(v: &Value) -> &'static str {
    match v {
        Value::Text(_) => "nvarchar",
        Value::Int(_) => "int",
        Value::Decimal(_) => "numeric",
        Value::Float(_) => "float",
        Value::DateTime(_) => "datetime2",
        Value::Date(_) => "date",
        _ => "sql_variant",
    }
}

fn conversion(v: &Value, target: &Type) -> Box<dyn std::error::Error + Sync + Send> {
    let err = match *target {
        Type::INT2 | Type::INT4 | Type::INT8 => SqlError::new(
            245,
            16,
            format!(
                "Conversion failed when converting the {} value '{}' to data type int.",
                source_type(v),
                v.describe()
            ),
        ),
        Type::NUMERIC | Type::FLOAT4 | Type::FLOAT8 => SqlError::new(
            8114,
            16,
            format!("Error converting data type {} to numeric.", source_type(v)),
        ),
        Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::DATE | Type::TIME => SqlError::new(
            241,
            16,
            "Conversion failed when converting date and/or time from character string.",
        ),
        Type::UUID => SqlError::new(
            8169,
            16,
            "Conversion failed when converting from a character string to uniqueidentifier.",
        ),
        _ => SqlError::new(
            206,
            16,
            format!(
                "Operand type clash: {} is incompatible with {}",
                source_type(v),
                target.name()
            ),
        ),
    };
    Box::new(ConversionFailed(err))
}

impl ToSql for Bind<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let v = self.0;
        if v.is_null() {
            return Ok(IsNull::Yes);
        }
        let int = || -> Option<i64> {
            match v {
                Value::Int(i) => Some(*i),
                Value::Bool(b) => Some(i64::from(*b)),
                Value::Decimal(d) if d.fract().is_zero() => d.to_string().parse().ok(),
                Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
                Value::Text(s) => s.trim().parse().ok(),
                _ => None,
            }
        };
        let dec = || -> Option<Decimal> {
            match v {
                Value::Decimal(d) => Some(*d),
                Value::Int(i) => Some(Decimal::from(*i)),
                Value::Bool(b) => Some(Decimal::from(u8::from(*b))),
                Value::Float(f) => Decimal::try_from(*f).ok(),
                Value::Text(s) => s.trim().parse().ok(),
                _ => None,
            }
        };
        let ts = || -> Option<NaiveDateTime> {
            match v {
                Value::DateTime(d) => Some(*d),
                Value::Date(d) => d.and_hms_opt(0, 0, 0),
                Value::DateTimeOffset(d) => Some(d.naive_utc()),
                Value::Text(s) => parse_datetime_text(s),
                _ => None,
            }
        };
        match *ty {
            Type::INT2 => match int().and_then(|i| i16::try_from(i).ok()) {
                Some(i) => i.to_sql(ty, out),
                None => Err(conversion(v, ty)),
            },
            Type::INT4 => match int().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => i.to_sql(ty, out),
                None => Err(conversion(v, ty)),
            },
            Type::INT8 => match int() {
                Some(i) => i.to_sql(ty, out),
                None => Err(conversion(v, ty)),
            },
            Type::BOOL => match int() {
                Some(i) => (i != 0).to_sql(ty, out),
                None => Err(conversion(v, ty)),
            },
            Type::NUMERIC => match dec() {
                Some(d) => d.to_sql(ty, out),
                None => Err(conversion(v, ty)),
            },
            Type::FLOAT8 | Type::FLOAT4 => {
                let f = match v {
                    Value::Float(f) => Some(*f),
                    other => match other {
                        Value::Text(s) => s.trim().parse().ok(),
                        _ => dec().and_then(|d| d.to_string().parse().ok()),
                    },
                };
                match (f, *ty == Type::FLOAT4) {
                    (Some(f), true) => (f as f32).to_sql(ty, out),
                    (Some(f), false) => f.to_sql(ty, out),
                    (None, _) => Err(conversion(v, ty)),
                }
            }
            Type::TIMESTAMP => match ts() {
                Some(d) => d.to_sql(ty, out),
                None => Err(conversion(v, ty)),
            },
            Type::TIMESTAMPTZ => match v {
                Value::DateTimeOffset(d) => d.with_timezone(&Utc).to_sql(ty, out),
                _ => match ts() {
                    Some(d) => DateTime::<Utc>::from_naive_utc_and_offset(d, Utc).to_sql(ty, out),
                    None => Err(conversion(v, ty)),
                },
            },
            Type::DATE => match v {
                Value::Date(d) => d.to_sql(ty, out),
                _ => match ts() {
                    Some(d) => d.date().to_sql(ty, out),
                    None => Err(conversion(v, ty)),
                },
            },
            Type::TIME => match v {
                Value::Time(t) => t.to_sql(ty, out),
                _ => match ts() {
                    Some(d) => d.time().to_sql(ty, out),
                    None => Err(conversion(v, ty)),
                },
            },
            Type::UUID => match v {
                Value::Uuid(u) => u.to_sql(ty, out),
                Value::Text(s) => match uuid::Uuid::parse_str(s.trim()) {
                    Ok(u) => u.to_sql(ty, out),
                    Err(_) => Err(conversion(v, ty)),
                },
                _ => Err(conversion(v, ty)),
            },
            Type::BYTEA => match v {
                Value::Bytes(b) => b.to_sql(ty, out),
                _ => Err(conversion(v, ty)),
            },
            _ => {
                let s = match v {
                    Value::Text(s) => s.clone(),
                    Value::DateTime(d) => d.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
                    other => other.describe(),
                };
                s.to_sql(&Type::TEXT, out)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Finds a conversion failure inside a tokio-postgres error.
pub fn conversion_error(e: &tokio_postgres::Error) -> Option<SqlError> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(c) = s.downcast_ref::<ConversionFailed>() {
            return Some(c.0.clone());
        }
        src = s.source();
    }
    None
}

/// Reads column `i` of a row as a `Value`.
pub fn read(row: &Row, i: usize) -> Result<Value, tokio_postgres::Error> {
    let ty = row.columns()[i].type_().clone();
    Ok(match ty {
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
        Type::NUMERIC => row.try_get::<_, Option<Decimal>>(i)?.map(Value::Decimal),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| Value::Float(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Float),
        Type::TIMESTAMP => row
            .try_get::<_, Option<NaiveDateTime>>(i)?
            .map(Value::DateTime),
        Type::TIMESTAMPTZ => row.try_get::<_, Option<DateTime<Utc>>>(i)?.map(|d| {
            Value::DateTimeOffset(
                d.with_timezone(&FixedOffset::east_opt(0).unwrap_or_else(|| d.offset().fix())),
            )
        }),
        Type::DATE => row.try_get::<_, Option<NaiveDate>>(i)?.map(Value::Date),
        Type::TIME => row.try_get::<_, Option<NaiveTime>>(i)?.map(Value::Time),
        Type::UUID => row.try_get::<_, Option<uuid::Uuid>>(i)?.map(Value::Uuid),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Bytes),
        Type::CHAR => row
            .try_get::<_, Option<i8>>(i)?
            .map(|c| Value::Text(((c as u8) as char).to_string())),
        _ => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
    }
    .unwrap_or(Value::Null))
}

use chrono::Offset;

/// The SQL Server type to report for a PostgreSQL result column.
pub fn default_type(ty: &Type, typmod: i32, values: &mut dyn Iterator<Item = &Value>) -> SqlType {
    match *ty {
        Type::INT2 => SqlType::SmallInt,
        Type::INT4 | Type::OID => SqlType::Int,
        Type::INT8 => SqlType::BigInt,
        Type::BOOL => SqlType::Bit,
        Type::FLOAT4 => SqlType::Real,
        Type::FLOAT8 => SqlType::Float,
        Type::NUMERIC => {
            if typmod >= 4 {
                let m = typmod - 4;
                SqlType::Decimal(
                    ((m >> 16) & 0xFFFF).min(38) as u8,
                    (m & 0xFFFF).min(38) as u8,
                )
            } else {
                let scale = values
                    .filter_map(|v| match v {
                        Value::Decimal(d) => Some(d.scale()),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                SqlType::Decimal(38, scale.min(38) as u8)
            }
        }
        Type::TIMESTAMP => SqlType::DateTime2(7),
        Type::TIMESTAMPTZ => SqlType::DateTimeOffset(7),
        Type::DATE => SqlType::Date,
        Type::TIME => SqlType::Time(7),
        Type::UUID => SqlType::UniqueIdentifier,
        Type::BYTEA => SqlType::VarBinary(None),
        _ => {
            let mut long = false;
            for v in values {
                if let Value::Text(s) = v {
                    long |= crate::sqltype::utf16_len(s) > 4000;
                }
            }
            if long {
                SqlType::NVarChar(None)
            } else {
                SqlType::NVarChar(Some(4000))
            }
        }
    }
}
