//! Shadows: what was last synced of each field of a link.
//!
//! A run holds the values it syncs; the state store keeps each field as a
//! 64-bit digest (XXH3) of its canonical value, so that a shadow costs
//! eight bytes a field however long the value. A digest stands in for a
//! value only in equality tests ("is this still the synced value?"): two
//! different values with one digest would hide a change, with a
//! probability of 2^-64 for each pair compared. Where the CRM holds a
//! synced value differently (a `values` map or transform that loses
//! something on the way in, a value cut to fit), the digest of the CRM's
//! reading is kept beside it, so that the merge does not take the CRM's
//! form for a change.
//!
//! Stored form, positional in a shadow layout (the entity's field names in
//! order, registered once in the state store): a format byte, the layout
//! as a big-endian i32, two bits a field (absent, NULL, digest, digest and
//! CRM digest), then the digests in field order, little-endian.

use crate::value::Value;
use std::collections::BTreeMap;
use xxhash_rust::xxh3::Xxh3;

/// What a shadow knows of one field's last synced value.
#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    /// The value itself: synced by this run, NULL, or read from a shadow
    /// stored before digests.
    Value(Value),
    /// The digest of the canonical value, and of the CRM's canonical
    /// reading of it where that differs.
    Digest { value: u64, in_crm: Option<u64> },
}

/// The last synced values of one link, by field (the CRM column name in
/// lower case).
pub type Shadow = BTreeMap<String, Base>;

impl From<Value> for Base {
    fn from(v: Value) -> Base {
        Base::Value(v)
    }
}

impl Base {
    /// Whether `v` is the synced value (for a digest: has its digest).
    pub fn is(&self, v: &Value) -> bool {
        match self {
            Base::Value(b) => b == v,
            Base::Digest { value, .. } => digest(v) == *value,
        }
    }

    /// Whether `c`, a CRM row's canonical reading, is what the CRM holds of
    /// the synced value; `crm_reading` maps a value the way the CRM would
    /// store and read it back.
    pub fn held_by_crm(&self, c: &Value, crm_reading: impl FnOnce(&Value) -> Value) -> bool {
        match self {
            Base::Value(b) => c == b || *c == crm_reading(b),
            Base::Digest { value, in_crm } => {
                let d = digest(c);
                d == *value || Some(d) == *in_crm
            }
        }
    }

    /// The value, where the shadow keeps it (conflict logs show it).
    pub fn value(&self) -> Option<&Value> {
        match self {
            Base::Value(v) => Some(v),
            Base::Digest { .. } => None,
        }
    }
}

/// Values of every kind feed their own tag first, so that equal digests
/// need equal kinds.
mod tag {
    pub const NULL: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const INT: u8 = 2;
    pub const DECIMAL: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const TEXT: u8 = 5;
    pub const TIMESTAMP: u8 = 6;
    pub const TIMESTAMP_TZ: u8 = 7;
    pub const DATE: u8 = 8;
    pub const UUID: u8 = 9;
    pub const BYTES: u8 = 10;
}

/// The digest of a canonical value. Values equal as [`Value`]s have equal
/// digests (decimals are normalized first: 1.50 and 1.5 are one value).
pub fn digest(v: &Value) -> u64 {
    let mut h = Xxh3::new();
    match v {
        Value::Null => h.update(&[tag::NULL]),
        Value::Bool(b) => h.update(&[tag::BOOL, u8::from(*b)]),
        Value::Int(i) => return digest_int(*i),
        Value::Decimal(d) => {
            h.update(&[tag::DECIMAL]);
            h.update(d.normalize().to_string().as_bytes());
        }
        Value::Float(f) => {
            h.update(&[tag::FLOAT]);
            h.update(&f.to_bits().to_le_bytes());
        }
        Value::Text(s) => return digest_text(s.as_bytes()),
        Value::Timestamp(t) => {
            let t = t.and_utc();
            h.update(&[tag::TIMESTAMP]);
            h.update(&t.timestamp().to_le_bytes());
            h.update(&t.timestamp_subsec_nanos().to_le_bytes());
        }
        Value::TimestampTz(t) => {
            h.update(&[tag::TIMESTAMP_TZ]);
            h.update(&t.timestamp().to_le_bytes());
            h.update(&t.timestamp_subsec_nanos().to_le_bytes());
        }
        Value::Date(d) => {
            h.update(&[tag::DATE]);
            h.update(&chrono::Datelike::num_days_from_ce(d).to_le_bytes());
        }
        Value::Uuid(u) => {
            h.update(&[tag::UUID]);
            h.update(u.as_bytes());
        }
        Value::Bytes(b) => {
            h.update(&[tag::BYTES]);
            h.update(b);
        }
    }
    h.digest()
}

/// The digest of `Value::Text` of these UTF-8 bytes.
pub fn digest_text(utf8: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&[tag::TEXT]);
    h.update(utf8);
    h.digest()
}

/// The digest of `Value::Int(i)`.
pub fn digest_int(i: i64) -> u64 {
    let mut b = [0u8; 9];
    b[0] = tag::INT;
    b[1..].copy_from_slice(&i.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&b)
}

/// The digest of `Value::Bool(b)`.
pub fn digest_bool(b: bool) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&[tag::BOOL, u8::from(b)])
}

/// The first byte of a sealed shadow (a shadow stored as JSON text, before
/// digests, starts with `{` or `[`).
pub const FORMAT: u8 = 1;

/// One field of a shadow being sealed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sealing {
    Absent,
    Null,
    Digest(u64, Option<u64>),
}

/// Builds a sealed shadow field by field, in the layout's order.
#[derive(Debug)]
pub struct Sealer {
    codes: Vec<u8>,
    digests: Vec<u8>,
    n: usize,
}

impl Sealer {
    pub fn new(layout: i32, fields: usize) -> Sealer {
        let mut codes = Vec::with_capacity(5 + fields.div_ceil(4));
        codes.push(FORMAT);
        codes.extend_from_slice(&layout.to_be_bytes());
        codes.resize(5 + fields.div_ceil(4), 0);
        Sealer {
            codes,
            digests: Vec::with_capacity(fields * 8),
            n: 0,
        }
    }

    pub fn push(&mut self, field: Sealing) {
        let code: u8 = match field {
            Sealing::Absent => 0,
            Sealing::Null => 1,
            Sealing::Digest(v, None) => {
                self.digests.extend_from_slice(&v.to_le_bytes());
                2
            }
            Sealing::Digest(v, Some(c)) => {
                self.digests.extend_from_slice(&v.to_le_bytes());
                self.digests.extend_from_slice(&c.to_le_bytes());
                3
            }
        };
        let byte = 5 + self.n / 4;
        if byte >= self.codes.len() {
            self.codes.push(0);
        }
        self.codes[byte] |= code << (2 * (self.n % 4));
        self.n += 1;
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.codes.append(&mut self.digests);
        self.codes
    }
}

/// Seals `shadow` in layout `layout` of the field names `names`;
/// `sealing(i, v)` seals value `v` of field `i` (see [`sealing`]).
pub fn seal(
    layout: i32,
    names: &[String],
    shadow: &Shadow,
    sealing: impl Fn(usize, &Value) -> Sealing,
) -> Vec<u8> {
    let mut s = Sealer::new(layout, names.len());
    for (i, name) in names.iter().enumerate() {
        s.push(match shadow.get(name) {
            None => Sealing::Absent,
            Some(Base::Digest { value, in_crm }) => Sealing::Digest(*value, *in_crm),
            Some(Base::Value(v)) => sealing(i, v),
        });
    }
    s.finish()
}

/// How a value whose CRM reading is `crm_reading` is sealed.
pub fn sealing(v: &Value, crm_reading: &Value) -> Sealing {
    match (v, crm_reading == v) {
        (Value::Null, true) => Sealing::Null,
        (v, same) => Sealing::Digest(digest(v), (!same).then(|| digest(crm_reading))),
    }
}

/// The layout a sealed shadow is positional in; `None` for a shadow
/// stored before digests.
pub fn layout_of(stored: &[u8]) -> Option<i32> {
    match stored {
        [FORMAT, a, b, c, d, ..] => Some(i32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Opens a sealed shadow whose layout has the field names `names`.
pub fn open(stored: &[u8], names: &[String]) -> Result<Shadow, String> {
    let codes_end = 5 + names.len().div_ceil(4);
    if stored.len() < codes_end || stored.first() != Some(&FORMAT) {
        return Err(format!(
            "a sealed shadow of {} bytes cannot hold {} fields",
            stored.len(),
            names.len()
        ));
    }
    let mut digests = stored[codes_end..].chunks_exact(8).map(|c| {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        u64::from_le_bytes(b)
    });
    let mut out = Shadow::new();
    for (i, name) in names.iter().enumerate() {
        let code = (stored[5 + i / 4] >> (2 * (i % 4))) & 3;
        let mut next = || digests.next().ok_or("a sealed shadow ends early");
        let base = match code {
            0 => continue,
            1 => Base::Value(Value::Null),
            2 => Base::Digest {
                value: next()?,
                in_crm: None,
            },
            _ => Base::Digest {
                value: next()?,
                in_crm: Some(next()?),
            },
        };
        out.insert(name.clone(), base);
    }
    if digests.next().is_some() {
        return Err("a sealed shadow holds more digests than its fields".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn digests_follow_value_equality() {
        assert_eq!(digest(&Value::Text("Acme".into())), digest_text(b"Acme"));
        assert_eq!(digest(&Value::Int(-7)), digest_int(-7));
        assert_eq!(digest(&Value::Bool(true)), digest_bool(true));
        let d = |s: &str| Value::Decimal(s.parse().unwrap());
        assert_eq!(digest(&d("1.50")), digest(&d("1.5")));
        assert_ne!(digest(&Value::Int(1)), digest(&Value::Text("1".into())));
        assert_ne!(digest(&Value::Null), digest(&Value::Text(String::new())));
    }

    #[test]
    fn a_sealed_shadow_costs_eight_bytes_a_field() {
        let n = names(22);
        let shadow: Shadow = n
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    Base::Value(Value::Text(format!("{f} value of some length"))),
                )
            })
            .collect();
        let sealed = seal(3, &n, &shadow, |_, v| sealing(v, v));
        assert_eq!(sealed.len(), 5 + 6 + 22 * 8);
        assert_eq!(layout_of(&sealed), Some(3));
    }

    proptest! {
        /// Sealing keeps, per field, whether it is absent, NULL, or which
        /// value (and which CRM reading) it stands for.
        #[test]
        fn sealed_shadows_open_to_the_same_tests(
            fields in proptest::collection::vec(
                prop_oneof![
                    Just(None),
                    Just(Some(Value::Null)),
                    any::<i64>().prop_map(|i| Some(Value::Int(i))),
                    "\\PC{0,12}".prop_map(|s| Some(Value::Text(s))),
                ],
                0..12,
            ),
            lossy in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let n = names(fields.len());
            let shadow: Shadow = n
                .iter()
                .zip(&fields)
                .filter_map(|(f, v)| v.clone().map(|v| (f.clone(), Base::Value(v))))
                .collect();
            let reading = |i: usize, v: &Value| match v {
                Value::Text(s) if lossy[i] => Value::Text(format!("{s}!")),
                other => other.clone(),
            };
            let opened = open(&seal(-1, &n, &shadow, |i, v| sealing(v, &reading(i, v))), &n).unwrap();
            prop_assert_eq!(opened.len(), shadow.len());
            for (i, f) in n.iter().enumerate() {
                match (&fields[i], opened.get(f)) {
                    (None, None) => {}
                    (Some(v), Some(b)) => {
                        prop_assert!(b.is(v));
                        let other = Value::Text("a value never generated \u{1}".into());
                        prop_assert!(!b.is(&other));
                        prop_assert!(b.held_by_crm(&reading(i, v), |_| unreachable!()));
                    }
                    other => prop_assert!(false, "field {f}: {other:?}"),
                }
            }
        }
    }
}
