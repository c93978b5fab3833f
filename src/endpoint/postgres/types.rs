//! PostgreSQL ↔ `Value`: the one place where values cross into and out of
//! the PostgreSQL wire format, and where catalog types become `SqlType`s.

use crate::value::{LengthUnit, SqlType, Value};
use bytes::BytesMut;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use postgres_types::{to_sql_checked, FromSql, IsNull, Kind, ToSql, Type};
use rust_decimal::Decimal;
use std::error::Error;

type BoxError = Box<dyn Error + Sync + Send>;

/// The neutral type of a column, from `pg_type.typname` and `atttypmod`.
pub fn sql_type(typname: &str, typmod: i32) -> SqlType {
    match typname {
        "bool" => SqlType::Bool,
        "int2" => SqlType::Int { bytes: 2 },
        "int4" => SqlType::Int { bytes: 4 },
        "int8" => SqlType::Int { bytes: 8 },
        "numeric" => {
            if typmod < 4 {
                // Unconstrained numeric: any precision and scale.
                SqlType::Decimal {
                    precision: 0,
                    scale: 28,
                }
            } else {
                let m = (typmod - 4) as u32;
                SqlType::Decimal {
                    precision: (m >> 16) & 0xffff,
                    scale: m & 0xffff,
                }
            }
        }
        "float4" | "float8" => SqlType::Float,
        "varchar" | "bpchar" | "text" | "name" | "citext" => SqlType::Text {
            max_len: (typmod >= 4 && typname != "text").then(|| (typmod - 4) as u32),
            unit: LengthUnit::Chars,
            fixed: typname == "bpchar",
        },
        "timestamp" => SqlType::Timestamp {
            precision: if typmod < 0 { 6 } else { typmod as u32 },
        },
        "timestamptz" => SqlType::TimestampTz,
        "date" => SqlType::Date,
        "uuid" => SqlType::Uuid,
        "bytea" => SqlType::Bytes,
        other => SqlType::Other(other.to_string()),
    }
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)? as i64),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)? as i64),
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::NUMERIC => Value::Decimal(Decimal::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Float(f32::from_sql(ty, raw)? as f64),
            Type::FLOAT8 => Value::Float(f64::from_sql(ty, raw)?),
            Type::TIMESTAMP => Value::Timestamp(NaiveDateTime::from_sql(ty, raw)?),
            Type::TIMESTAMPTZ => Value::TimestampTz(DateTime::<Utc>::from_sql(ty, raw)?),
            Type::DATE => Value::Date(NaiveDate::from_sql(ty, raw)?),
            Type::UUID => Value::Uuid(uuid::Uuid::from_sql(ty, raw)?),
            Type::BYTEA => Value::Bytes(Vec::<u8>::from_sql(ty, raw)?),
            Type::JSON | Type::JSONB => {
                Value::Text(serde_json::Value::from_sql(ty, raw)?.to_string())
            }
            _ => Value::Text(String::from_sql(ty, raw)?),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BOOL
                | Type::INT2
                | Type::INT4
                | Type::INT8
                | Type::NUMERIC
                | Type::FLOAT4
                | Type::FLOAT8
                | Type::TIMESTAMP
                | Type::TIMESTAMPTZ
                | Type::DATE
                | Type::UUID
                | Type::BYTEA
                | Type::JSON
                | Type::JSONB
        ) || <String as FromSql>::accepts(ty)
    }
}

fn mismatch(v: &Value, ty: &Type) -> BoxError {
    format!("cannot send {} as PostgreSQL type {ty}", v.display()).into()
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::NUMERIC) => Decimal::from(*i).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Decimal(d), &Type::NUMERIC) => d.to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Timestamp(t), &Type::TIMESTAMP) => t.to_sql(ty, out),
            (Value::TimestampTz(t), &Type::TIMESTAMPTZ) => t.to_sql(ty, out),
            (Value::Date(d), &Type::DATE) => d.to_sql(ty, out),
            (Value::Uuid(u), &Type::UUID) => u.to_sql(ty, out),
            (Value::Bytes(b), &Type::BYTEA) => b.to_sql(ty, out),
            (Value::Text(s), _) if <String as ToSql>::accepts(ty) => s.to_sql(ty, out),
            // An enum's binary form is its label.
            (Value::Text(s), ty) if matches!(ty.kind(), Kind::Enum(_)) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
            // A domain travels as the type it is over.
            (v, ty) if matches!(ty.kind(), Kind::Domain(_)) => match ty.kind() {
                Kind::Domain(base) => v.to_sql(base, out),
                _ => Err(mismatch(v, ty)),
            },
            (Value::Text(s), &Type::JSON | &Type::JSONB) => {
                serde_json::from_str::<serde_json::Value>(s)?.to_sql(ty, out)
            }
            (v, ty) => Err(mismatch(v, ty)),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_types_map_with_their_modifiers() {
        assert_eq!(
            sql_type("numeric", ((24 << 16) | 6) + 4),
            SqlType::Decimal {
                precision: 24,
                scale: 6
            }
        );
        assert_eq!(
            sql_type("varchar", 64),
            SqlType::Text {
                max_len: Some(60),
                unit: LengthUnit::Chars,
                fixed: false
            }
        );
        assert_eq!(
            sql_type("timestamp", 3),
            SqlType::Timestamp { precision: 3 }
        );
        assert_eq!(
            sql_type("timestamp", -1),
            SqlType::Timestamp { precision: 6 }
        );
        assert_eq!(sql_type("int2", -1), SqlType::Int { bytes: 2 });
    }
}
