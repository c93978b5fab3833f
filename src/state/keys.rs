//! Keys as the links table stores them: in the tuple encoding of
//! FoundationDB, one element per key. An integer takes a type byte and
//! only the bytes its magnitude needs (a key below 16,777,216 takes four),
//! a uuid its sixteen bytes, any other key its UTF-8 bytes. Byte order is
//! the keys' order within each kind, so keys drawn from a sequence or an
//! identity land at the right edge of the links table's indexes, where
//! appending is cheap, instead of all over them as their text would.
//!
//! The form follows the key's canonical text (`Value::key_string`), not the
//! column's type: a key keeps its bytes when its column changes from `int`
//! to `bigint`, `numeric(p,0)` or a text type, and two keys are the same
//! exactly when their canonical texts are. The state schema holds the same
//! function in SQL (`key_bytes`, and `key_text` back), for the hard-delete
//! anti-join and for anyone reading the table.

use crate::value::Value;
use foundationdb_tuple::{pack, unpack, Element};
use uuid::Uuid;

/// The stored form of a key's canonical text.
pub fn to_bytes(key: &str) -> Vec<u8> {
    if let Ok(i) = key.parse::<i64>() {
        // "007", "+7" and "-0" are text keys: their integer prints
        // differently, and the text must come back as it was.
        if i.to_string() == key {
            return pack(&i);
        }
    }
    if key.len() == 36 {
        if let Ok(u) = Uuid::try_parse(key) {
            if u.hyphenated().to_string() == key {
                return pack(&u);
            }
        }
    }
    pack(&key)
}

/// The stored form of a key value: the same bytes as `to_bytes` of its
/// canonical text, without making the text for integers and uuids.
pub fn value_bytes(key: &Value) -> Vec<u8> {
    match key {
        Value::Int(i) => pack(i),
        Value::Uuid(u) => pack(u),
        other => to_bytes(&other.key_string()),
    }
}

/// The integer a stored key holds, if it holds one.
pub fn stored_int(stored: &[u8]) -> Option<i64> {
    match unpack::<Element>(stored) {
        Ok(Element::Int(i)) => Some(i),
        _ => None,
    }
}

/// A stored key back in its canonical text.
pub fn from_bytes(stored: &[u8]) -> Result<String, String> {
    match unpack::<Element>(stored) {
        Ok(Element::Int(i)) => Ok(i.to_string()),
        Ok(Element::String(s)) => Ok(s.into_owned()),
        Ok(Element::Uuid(u)) => Ok(u.hyphenated().to_string()),
        Ok(other) => Err(format!("a stored key holds {other:?}, not a key")),
        Err(e) => Err(format!("a stored key is not readable: {e}")),
    }
}

/// The state schema's SQL twins of `to_bytes` and `from_bytes`; `{s}` is
/// the quoted schema. Plain SQL functions that the planner inlines: not
/// STRICT (a NULL gives NULL all the same), and STABLE where they convert
/// text (`convert_to` and `convert_from` are). Called instead, they cost
/// the hard-delete check 25 µs a row (4.8 s against 0.04 s for 200,000
/// keys).
pub(crate) const SQL_FUNCTIONS: &str = r#"
CREATE OR REPLACE FUNCTION {s}.key_int_len(v bigint) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN v = -9223372036854775808 THEN 8
            WHEN abs(v) < 256 THEN 1 WHEN abs(v) < 65536 THEN 2
            WHEN abs(v) < 16777216 THEN 3 WHEN abs(v) < 4294967296 THEN 4
            WHEN abs(v) < 1099511627776 THEN 5 WHEN abs(v) < 281474976710656 THEN 6
            WHEN abs(v) < 72057594037927936 THEN 7 ELSE 8 END $$;
CREATE OR REPLACE FUNCTION {s}.key_bytes(v bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN v = 0 THEN '\x14'::bytea
            WHEN v > 0 THEN set_byte('\x00'::bytea, 0, 20 + {s}.key_int_len(v))
                            || substring(int8send(v) FROM 9 - {s}.key_int_len(v))
            ELSE set_byte('\x00'::bytea, 0, 20 - {s}.key_int_len(v))
                 || substring(int8send(CASE WHEN v = -9223372036854775808
                                            THEN 9223372036854775807 ELSE v - 1 END)
                              FROM 9 - {s}.key_int_len(v)) END $$;
CREATE OR REPLACE FUNCTION {s}.key_bytes(v uuid) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT '\x30'::bytea || uuid_send(v) $$;
CREATE OR REPLACE FUNCTION {s}.key_bytes(k text) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN k ~ '^(0|-?[1-9][0-9]{0,18})$'
                 AND k::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
            THEN {s}.key_bytes(k::bigint)
            WHEN k ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN {s}.key_bytes(k::uuid)
            ELSE '\x02'::bytea || convert_to(k, 'UTF8') || '\x00'::bytea END $$;
CREATE OR REPLACE FUNCTION {s}.key_text(b bytea) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT CASE WHEN get_byte(b, 0) = 2
            THEN convert_from(substring(b FROM 2 FOR length(b) - 2), 'UTF8')
            WHEN get_byte(b, 0) = 48 THEN encode(substring(b FROM 2), 'hex')::uuid::text
            WHEN get_byte(b, 0) = 20 THEN '0'
            WHEN get_byte(b, 0) BETWEEN 21 AND 28
            THEN ('x' || lpad(encode(substring(b FROM 2), 'hex'), 16, '0'))::bit(64)::bigint::text
            WHEN get_byte(b, 0) BETWEEN 12 AND 19
            THEN (('x' || lpad(encode(substring(b FROM 2), 'hex'), 16, '0'))::bit(64)::bigint::numeric
                  + CASE WHEN length(b) = 9 AND get_byte(b, 1) >= 128
                         THEN 18446744073709551616 ELSE 0 END
                  - (2::numeric ^ (8 * (length(b) - 1)) - 1))::bigint::text END $$;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_the_bytes_they_need_and_keep_their_order() {
        assert_eq!(to_bytes("0"), vec![0x14]);
        assert_eq!(to_bytes("990002"), vec![0x17, 0x0f, 0x1b, 0x32]);
        let ks = [
            i64::MIN,
            -65537,
            -256,
            -255,
            -1,
            0,
            1,
            255,
            256,
            1 << 40,
            i64::MAX,
        ];
        let enc: Vec<Vec<u8>> = ks.iter().map(|k| to_bytes(&k.to_string())).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]), "{enc:x?}");
        for (k, e) in ks.iter().zip(&enc) {
            assert_eq!(from_bytes(e).unwrap(), k.to_string());
            assert_eq!(stored_int(e), Some(*k));
        }
        assert_eq!(stored_int(&to_bytes("SUP-1")), None);
    }

    #[test]
    fn text_that_only_looks_like_a_number_stays_text() {
        for k in [
            "007",
            "+7",
            "-0",
            "1.5",
            "9223372036854775808",
            "SUP-000001",
            "",
        ] {
            let b = to_bytes(k);
            assert_eq!(b[0], 0x02, "{k}");
            assert_eq!(from_bytes(&b).unwrap(), k);
        }
    }

    #[test]
    fn uuids_in_their_canonical_text_take_sixteen_bytes() {
        let u = "550e8400-e29b-41d4-a716-446655440000";
        assert_eq!(to_bytes(u).len(), 17);
        assert_eq!(from_bytes(&to_bytes(u)).unwrap(), u);
        // Upper case is not the canonical text of a uuid: it is text.
        let upper = u.to_uppercase();
        assert_eq!(to_bytes(&upper)[0], 0x02);
        assert_eq!(from_bytes(&to_bytes(&upper)).unwrap(), upper);
    }

    #[test]
    fn a_value_encodes_as_its_canonical_text_does() {
        let u = Uuid::parse_str("550e8400-e29b-41d4-a716-446655440000").unwrap();
        for v in [
            Value::Int(-42),
            Value::Int(7),
            Value::Uuid(u),
            Value::Text("SUP-1  ".into()),
            Value::Text("12".into()),
        ] {
            assert_eq!(value_bytes(&v), to_bytes(&v.key_string()), "{v:?}");
        }
    }

    #[test]
    fn sequential_codes_sort_in_sequence() {
        let a = to_bytes("SUP-000009");
        let b = to_bytes("SUP-000010");
        assert!(a < b);
    }
}
