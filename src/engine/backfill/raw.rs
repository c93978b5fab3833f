//! The raw path of a CRM → external bulk backfill: between databases of
//! one kind, cells that need no mapping are copied in their binary form,
//! without decoding them, into rows that are new to the target.

use super::columns::CrmColumns;
use super::{settle, BackfillReport, ChunkCtx, Prepared};
use crate::endpoint::bulk::{
    Cell, CheckpointWrite, ChunkWrite, FreshLink, FreshLinks, RawInserts, RawRows, Rows,
};
use crate::endpoint::EndpointError;
use crate::engine::mapping::{crm_to_canonical, map_crm_values, FieldProblem};
use crate::engine::EngineError;
use crate::schema::{BoundEntity, BoundField};
use crate::state::shadow::{self, digest_int, digest_text, Sealer, Sealing};
use crate::state::{keys, Checkpoint};
use crate::value::{SqlType, Value};

/// Whether a value of CRM type `crm` is, unmapped and in the same binary
/// form, the canonical value for external type `ext`: same kind and
/// width, no rounding, no zone shift. Text still has its length checked.
pub(super) fn passes_raw(crm: &SqlType, ext: &SqlType, same_zone: bool) -> bool {
    match (crm, ext) {
        (SqlType::Bool, SqlType::Bool)
        | (SqlType::Date, SqlType::Date)
        | (SqlType::Uuid, SqlType::Uuid)
        | (SqlType::Bytes, SqlType::Bytes)
        | (SqlType::TimestampTz, SqlType::TimestampTz) => true,
        (SqlType::Int { bytes: a }, SqlType::Int { bytes: b }) => a == b,
        (SqlType::Text { fixed: false, .. }, SqlType::Text { fixed: false, .. }) => true,
        (SqlType::Timestamp { precision: a }, SqlType::Timestamp { precision: b }) => {
            same_zone && a <= b
        }
        _ => false,
    }
}

/// The cell of a field that passes raw, when this value may: a NULL only
/// into a nullable column, text only when its bytes fit the column (else
/// the value is mapped, and rejected if it does not fit).
fn raw_cell(rows: &RawRows, row: usize, pos: usize, f: &BoundField) -> Option<Cell> {
    match rows.range(row, pos) {
        None => f.external.nullable.then_some(Cell::Null),
        Some((a, b)) => match f.external.ty {
            SqlType::Text {
                max_len: Some(m), ..
            } if (b - a) as usize > m as usize => None,
            _ => Some(Cell::Raw(a, b)),
        },
    }
}

/// How a raw cell of CRM type `ty` is sealed into a shadow, as its
/// decoded value would be (a raw cell's CRM reading is the value itself),
/// decoding only what is not text, integer or boolean. `checked`: text
/// cells are known to be valid UTF-8.
fn raw_sealing(
    ty: &SqlType,
    cell: Option<&[u8]>,
    checked: bool,
    decode: impl FnOnce() -> Result<Value, EndpointError>,
) -> Result<Sealing, EngineError> {
    let int = |i: i64| shadow::inline_int(i).unwrap_or(Sealing::Digest(digest_int(i), None));
    Ok(match (ty, cell) {
        (_, None) => Sealing::Null,
        (SqlType::Text { .. }, Some(b)) if checked || std::str::from_utf8(b).is_ok() => {
            shadow::inline_text(b).unwrap_or(Sealing::Digest(digest_text(b), None))
        }
        (SqlType::Int { bytes: 2 }, Some(&[a, b])) => int(i16::from_be_bytes([a, b]).into()),
        (SqlType::Int { bytes: 4 }, Some(b)) if b.len() == 4 => {
            int(i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into())
        }
        (SqlType::Int { bytes: 8 }, Some(b)) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            int(i64::from_be_bytes(a))
        }
        (SqlType::Bool, Some(&[x])) => {
            let v = Value::Bool(x != 0);
            shadow::sealing(&v, &v)
        }
        _ => {
            let v = decode()?;
            shadow::sealing(&v, &v)
        }
    })
}

/// A raw row ready to insert: its outgoing cells, in order, and its
/// sealed shadow.
pub(super) struct RawRow {
    pub(super) cells: Vec<Cell>,
    pub(super) shadow: Vec<u8>,
}

/// Prepares raw row `r` for insertion: cells that pass raw are copied as
/// they are, the others are decoded and mapped as in
/// [`prepare_chunk`](super::chunk::prepare_chunk). `Ok(Err(why))`: the row
/// is rejected.
pub(super) fn raw_row(
    e: &BoundEntity,
    cols: &CrmColumns,
    outgoing: &[&BoundField],
    rows: &RawRows,
    r: usize,
    key: &Value,
) -> Result<Result<RawRow, String>, EngineError> {
    let mut cells: Vec<Cell> = Vec::with_capacity(outgoing.len() + 2);
    let mut shadow = Sealer::new(cols.layout.id, outgoing.len());
    for (n, (o, f)) in cols.outgoing.iter().zip(outgoing).enumerate() {
        if let Some(p) = o.pos.filter(|_| o.raw) {
            if let Some(cell) = raw_cell(rows, r, p, f) {
                shadow.push(raw_sealing(
                    &f.crm.ty,
                    rows.cell(r, p),
                    rows.text_checked,
                    || rows.value(r, p),
                )?);
                cells.push(cell);
                continue;
            }
        }
        let v = match o.pos {
            Some(p) => rows.value(r, p)?,
            None => Value::Null,
        };
        let (v, _) = match crm_to_canonical(f, v, e.to_external) {
            Ok(mapped) => mapped,
            // The key's text is made only for a row that is refused.
            Err(p) => return settle(e, &key.key_string(), Err(p)),
        };
        shadow.push(cols.layout.sealing(e, n, &v));
        cells.push(Cell::Value(v));
    }
    Ok(Ok(RawRow {
        cells,
        shadow: shadow.finish(),
    }))
}

/// The canonical values of raw row `r`'s outgoing fields, decoded and
/// mapped as [`prepare_chunk`](super::chunk::prepare_chunk) maps decoded
/// rows.
pub(super) fn raw_values(
    e: &BoundEntity,
    cols: &CrmColumns,
    outgoing: &[&BoundField],
    rows: &RawRows,
    r: usize,
) -> Result<Result<Vec<Value>, FieldProblem>, EngineError> {
    let mut decoded = cols
        .outgoing
        .iter()
        .map(|o| match o.pos {
            Some(p) => rows.value(r, p),
            None => Ok(Value::Null),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        map_crm_values(outgoing.iter().copied(), e.to_external, |n, _| {
            std::mem::replace(&mut decoded[n], Value::Null)
        })
        .map(|(values, _)| values),
    )
}

/// Rows of a raw chunk with only the columns the lookups read decoded
/// (key, change time, link column, match_on columns); NULL elsewhere.
pub(super) fn lookup_rows(cols: &CrmColumns, raw: &RawRows) -> Result<Rows, EngineError> {
    let mut wanted = vec![cols.key, cols.change];
    wanted.extend(cols.link);
    wanted.extend(cols.matches.iter().map(|(p, _)| *p));
    let width = cols.scan.columns.len();
    (0..raw.len())
        .map(|r| {
            let mut row = vec![Value::Null; width];
            for &p in &wanted {
                row[p] = raw.value(r, p)?;
            }
            Ok(row)
        })
        .collect()
}

/// Prepares a chunk of an insert-only backfill read raw: every row is
/// inserted (see [`raw_row`]).
pub(super) fn prepare_raw(
    ctx: &ChunkCtx<'_>,
    rows: &RawRows,
    checkpoint: &Checkpoint,
    report: &mut BackfillReport,
) -> Result<Prepared, EngineError> {
    let ChunkCtx {
        engine,
        e,
        cols,
        shape,
        direction,
        ..
    } = *ctx;
    let outgoing: Vec<&BoundField> = cols.fields(e).collect();
    let mut rejects: Vec<(String, String)> = Vec::new();
    let mut inserts: Vec<Vec<Cell>> = Vec::with_capacity(rows.len());
    let mut fresh: Vec<FreshLink> = Vec::with_capacity(rows.len());
    for r in 0..rows.len() {
        let key = rows.value(r, cols.key)?;
        let RawRow { mut cells, shadow } = match raw_row(e, cols, &outgoing, rows, r, &key)? {
            Ok(row) => row,
            Err(why) => {
                rejects.push((key.key_string(), why));
                continue;
            }
        };
        cells.extend(shape.crm_id(e, &key)?.map(Cell::Value));
        cells.extend((0..shape.constants.len()).map(Cell::Const));
        fresh.push(FreshLink {
            crm_key: keys::value_bytes(&key),
            insert: inserts.len(),
            shadow,
        });
        inserts.push(cells);
    }
    report.inserted += inserts.len() as u64;
    report.rejected += rejects.len() as u64;
    let schema = engine.plan.state_schema.clone();
    let chunk = ChunkWrite {
        table: e.side.external.table.clone(),
        key: e.side.external.key.name.clone(),
        columns: shape.columns.clone(),
        inserts: Vec::new(),
        raw_inserts: Some(RawInserts {
            data: rows.data.clone(),
            constants: shape.constants.clone(),
            rows: inserts,
        }),
        updates: Vec::new(),
        links: None,
        fresh_links: Some(FreshLinks {
            schema: schema.clone(),
            entity: e.name().to_string(),
            links: fresh,
        }),
        checkpoint: Some(CheckpointWrite {
            schema,
            entity: e.name().to_string(),
            direction: direction.to_string(),
            checkpoint: checkpoint.clone(),
        }),
    };
    Ok(Prepared {
        chunk,
        deferred: None,
        rejects,
        counts: BackfillReport::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A raw cell (PostgreSQL's binary form) seals as its decoded
        /// value does, or the shadows of a raw backfill would all look
        /// changed to the next sync.
        #[test]
        fn raw_cells_seal_as_their_decoded_values(
            text in "\\PC*",
            int in proptest::num::i64::ANY,
            flag in proptest::bool::ANY,
        ) {
            let text_ty = SqlType::Text { max_len: None, unit: crate::value::LengthUnit::Chars, fixed: false };
            let cases: Vec<(SqlType, Vec<u8>, Value)> = vec![
                (text_ty, text.as_bytes().to_vec(), Value::Text(text.clone())),
                (SqlType::Int { bytes: 8 }, int.to_be_bytes().to_vec(), Value::Int(int)),
                (SqlType::Int { bytes: 4 }, (int as i32).to_be_bytes().to_vec(), Value::Int((int as i32).into())),
                (SqlType::Int { bytes: 2 }, (int as i16).to_be_bytes().to_vec(), Value::Int((int as i16).into())),
                (SqlType::Bool, vec![u8::from(flag)], Value::Bool(flag)),
            ];
            for (ty, cell, v) in cases {
                // Text the server has checked is sealed without a second look.
                for checked in [false, true] {
                    let raw = raw_sealing(&ty, Some(&cell), checked, || unreachable!("decoded"))
                        .unwrap();
                    proptest::prop_assert_eq!(raw, shadow::sealing(&v, &v));
                }
            }
            proptest::prop_assert_eq!(
                raw_sealing(&SqlType::Bool, None, false, || unreachable!()).unwrap(),
                Sealing::Null
            );
        }
    }

    /// Unchecked text that is not UTF-8 (a SQL_ASCII database) is decoded,
    /// which refuses it, rather than sealed as text.
    #[test]
    fn unchecked_text_that_is_not_utf8_is_decoded() {
        let ty = SqlType::Text {
            max_len: None,
            unit: crate::value::LengthUnit::Chars,
            fixed: false,
        };
        let mut decoded = false;
        let r = raw_sealing(&ty, Some(b"caf\xe9"), false, || {
            decoded = true;
            Err(EndpointError::Schema("not UTF-8".into()))
        });
        assert!(decoded && r.is_err());
    }
}
