//! Shadows: what was last synced of each field of a link.
//!
//! A run holds the values it syncs; the state store keeps each field in at
//! most eight bytes: a value whose encoding fits (a short code, a small
//! number, a flag, a date) as itself, any other as a 64-bit digest (XXH3)
//! of its canonical value. A digest stands in for a value only in equality
//! tests ("is this still the synced value?"): two different values with
//! one digest would hide a change, with a probability of 2^-64 for each
//! pair compared. Where the CRM holds a synced value differently (a
//! `values` map or transform that loses something on the way in, a value
//! cut to fit), the digest of the CRM's reading is kept beside the
//! value's, so that the merge does not take the CRM's form for a change.
//!
//! Stored form, positional in a shadow layout (the entity's field names in
//! order, registered once in the state store): a format byte, the layout
//! as a big-endian i32, four bits a field (absent, NULL, digest, digest and
//! CRM digest, or an inline value of 1 to 8 bytes), then the digests and
//! inline values in field order.

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
/// (and inline encodings) need equal kinds.
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
    // The same digest in one call for text of usual length: the streaming
    // hasher's set-up costs more than hashing a short text.
    let mut buf = [0u8; 256];
    if utf8.len() < buf.len() {
        buf[0] = tag::TEXT;
        buf[1..=utf8.len()].copy_from_slice(utf8);
        return xxhash_rust::xxh3::xxh3_64(&buf[..=utf8.len()]);
    }
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

/// The first byte of a sealed shadow (a shadow stored as JSON text, before
/// digests, starts with `{` or `[`).
pub const FORMAT: u8 = 1;

/// The longest inline value, in bytes.
const INLINE_MAX: usize = 8;

/// Field codes: absent, NULL, digest, digest with the CRM's digest, and
/// `INLINE + n` for an inline value of `n` bytes (1 to 8).
mod code {
    pub const ABSENT: u8 = 0;
    pub const NULL: u8 = 1;
    pub const DIGEST: u8 = 2;
    pub const DIGESTS: u8 = 3;
    pub const INLINE: u8 = 3;
}

/// One field of a shadow being sealed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sealing {
    Absent,
    Null,
    Digest(u64, Option<u64>),
    /// A value's own encoding, its first `len` bytes.
    Inline([u8; INLINE_MAX], u8),
}

/// How a value whose CRM reading is `crm_reading` is sealed: NULL, inline
/// where its encoding fits and the CRM reads it back unchanged, else its
/// digest (with the reading's where that differs).
pub fn sealing(v: &Value, crm_reading: &Value) -> Sealing {
    match (v, crm_reading == v) {
        (Value::Null, true) => Sealing::Null,
        (v, true) => inline(v).unwrap_or_else(|| Sealing::Digest(digest(v), None)),
        (v, false) => Sealing::Digest(digest(v), Some(digest(crm_reading))),
    }
}

fn inline_bytes(tag: u8, payload: &[u8]) -> Option<Sealing> {
    if payload.len() >= INLINE_MAX {
        return None;
    }
    let mut b = [0u8; INLINE_MAX];
    b[0] = tag;
    b[1..=payload.len()].copy_from_slice(payload);
    Some(Sealing::Inline(b, payload.len() as u8 + 1))
}

/// The inline encoding of a value, where it fits: its kind's tag, then
/// text as UTF-8, an integer zigzag-encoded little-endian without its
/// high zero bytes, a date as days, a decimal as its normalized text.
fn inline(v: &Value) -> Option<Sealing> {
    match v {
        Value::Bool(b) => inline_bytes(tag::BOOL, &[u8::from(*b)]),
        Value::Int(i) => inline_int(*i),
        Value::Text(s) => inline_text(s.as_bytes()),
        Value::Decimal(d) => inline_bytes(tag::DECIMAL, d.normalize().to_string().as_bytes()),
        Value::Date(d) => inline_bytes(
            tag::DATE,
            &chrono::Datelike::num_days_from_ce(d).to_le_bytes(),
        ),
        _ => None,
    }
}

/// The inline encoding of `Value::Text` of these UTF-8 bytes, if short.
pub fn inline_text(utf8: &[u8]) -> Option<Sealing> {
    inline_bytes(tag::TEXT, utf8)
}

/// The inline encoding of `Value::Int(i)`, if small.
pub fn inline_int(i: i64) -> Option<Sealing> {
    let z = ((i << 1) ^ (i >> 63)) as u64;
    let len = 8 - (z.leading_zeros() / 8) as usize;
    inline_bytes(tag::INT, &z.to_le_bytes()[..len])
}

/// The value an inline encoding stands for.
fn from_inline(b: &[u8]) -> Result<Value, String> {
    let bad = || format!("an inline shadow value {b:?} is not one crmsync writes");
    let (tag, payload) = b.split_first().ok_or_else(bad)?;
    Ok(match *tag {
        tag::BOOL => Value::Bool(payload == [1]),
        tag::INT => {
            let mut z = [0u8; 8];
            z[..payload.len()].copy_from_slice(payload);
            let z = u64::from_le_bytes(z);
            Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
        }
        tag::TEXT => Value::Text(String::from_utf8(payload.to_vec()).map_err(|_| bad())?),
        tag::DECIMAL => Value::Decimal(
            std::str::from_utf8(payload)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?,
        ),
        tag::DATE => {
            let days = i32::from_le_bytes(payload.try_into().map_err(|_| bad())?);
            Value::Date(chrono::NaiveDate::from_num_days_from_ce_opt(days).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    })
}

/// Builds a sealed shadow field by field, in the layout's order: the
/// header, a nibble of code per field, then the fields' bodies, written
/// into one buffer (a backfill seals a shadow for every row it copies).
#[derive(Debug)]
pub struct Sealer {
    buf: Vec<u8>,
    /// Where the bodies begin: after the header and the codes.
    codes_end: usize,
    n: usize,
}

impl Sealer {
    pub fn new(layout: i32, fields: usize) -> Sealer {
        let codes_end = 5 + fields.div_ceil(2);
        let mut buf = Vec::with_capacity(codes_end + fields * 8);
        buf.push(FORMAT);
        buf.extend_from_slice(&layout.to_be_bytes());
        buf.resize(codes_end, 0);
        Sealer {
            buf,
            codes_end,
            n: 0,
        }
    }

    pub fn push(&mut self, field: Sealing) {
        let code: u8 = match field {
            Sealing::Absent => code::ABSENT,
            Sealing::Null => code::NULL,
            Sealing::Digest(v, None) => {
                self.buf.extend_from_slice(&v.to_le_bytes());
                code::DIGEST
            }
            Sealing::Digest(v, Some(c)) => {
                self.buf.extend_from_slice(&v.to_le_bytes());
                self.buf.extend_from_slice(&c.to_le_bytes());
                code::DIGESTS
            }
            Sealing::Inline(b, len) => {
                self.buf.extend_from_slice(&b[..usize::from(len)]);
                code::INLINE + len
            }
        };
        let byte = 5 + self.n / 2;
        if byte >= self.codes_end {
            // More fields than announced: one more byte of codes.
            self.buf.insert(self.codes_end, 0);
            self.codes_end += 1;
        }
        self.buf[byte] |= code << (4 * (self.n % 2));
        self.n += 1;
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
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

/// The layout a sealed shadow is positional in; `None` for a shadow
/// stored before digests.
pub fn layout_of(stored: &[u8]) -> Option<i32> {
    match stored {
        [FORMAT, a, b, c, d, ..] => Some(i32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Opens a sealed shadow whose layout has the field names `names`: inline
/// values come back as values, digests as digests.
pub fn open(stored: &[u8], names: &[String]) -> Result<Shadow, String> {
    let codes_end = 5 + names.len().div_ceil(2);
    if stored.len() < codes_end || stored.first() != Some(&FORMAT) {
        return Err(format!(
            "a sealed shadow of {} bytes cannot hold {} fields",
            stored.len(),
            names.len()
        ));
    }
    let mut body = &stored[codes_end..];
    let mut take = |n: usize| -> Result<&[u8], String> {
        if body.len() < n {
            return Err("a sealed shadow ends early".into());
        }
        let (head, rest) = body.split_at(n);
        body = rest;
        Ok(head)
    };
    let digest_at = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    };
    let mut out = Shadow::new();
    for (i, name) in names.iter().enumerate() {
        let c = (stored[5 + i / 2] >> (4 * (i % 2))) & 0x0f;
        let base = match c {
            code::ABSENT => continue,
            code::NULL => Base::Value(Value::Null),
            code::DIGEST => Base::Digest {
                value: digest_at(take(8)?),
                in_crm: None,
            },
            code::DIGESTS => Base::Digest {
                value: digest_at(take(8)?),
                in_crm: Some(digest_at(take(8)?)),
            },
            len @ 4..=11 => Base::Value(from_inline(take(usize::from(len - code::INLINE))?)?),
            other => return Err(format!("a sealed shadow holds field code {other}")),
        };
        out.insert(name.clone(), base);
    }
    if !body.is_empty() {
        return Err("a sealed shadow holds more than its fields".into());
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
    fn text_digests_are_those_of_the_streaming_hasher_at_every_length() {
        // Shadows sealed before the one-call digest must still compare.
        for n in [
            0, 1, 7, 8, 9, 16, 17, 128, 129, 240, 241, 254, 255, 256, 300, 1000,
        ] {
            let text: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let mut h = Xxh3::new();
            h.update(&[tag::TEXT]);
            h.update(&text);
            assert_eq!(digest_text(&text), h.digest(), "length {n}");
        }
    }

    #[test]
    fn digests_follow_value_equality() {
        assert_eq!(digest(&Value::Text("Acme".into())), digest_text(b"Acme"));
        assert_eq!(digest(&Value::Int(-7)), digest_int(-7));
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
        assert_eq!(sealed.len(), 5 + 11 + 22 * 8);
        assert_eq!(layout_of(&sealed), Some(3));
        // Short values are kept as they are, in fewer bytes than a digest.
        let short: Shadow = [
            ("f0".to_string(), Base::Value(Value::Text("Active".into()))),
            ("f1".to_string(), Base::Value(Value::Int(-3))),
            ("f2".to_string(), Base::Value(Value::Bool(true))),
        ]
        .into_iter()
        .collect();
        let three = names(3);
        let sealed = seal(1, &three, &short, |_, v| sealing(v, v));
        assert_eq!(sealed.len(), 5 + 2 + 7 + 2 + 2);
        assert_eq!(open(&sealed, &three).unwrap(), short);
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
                    (-300i64..300).prop_map(|i| Some(Value::Int(i))),
                    any::<bool>().prop_map(|b| Some(Value::Bool(b))),
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
