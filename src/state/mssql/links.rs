//! Links and their shadows on SQL Server: reads by either key, the
//! positional shadow layouts, the hard-delete comparison, and the writer
//! that runs inside the caller's transaction (the SQL Server endpoint's
//! data transactions call it, so that links commit with the rows they
//! describe).

use super::{bytes, int, placeholders, query, text, Arg, MsStore, MAX_PARAMS};
use crate::db::mssql::{quote, TdsClient};
use crate::db::EndpointError;
use crate::state::{keys, shadow, GoneLinks, KeyRef, Link, LinkBatch, Shadow};
use crate::value::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Links per MERGE: four parameters each, and the entity.
const LINKS_PER_STATEMENT: usize = (MAX_PARAMS - 1) / 4;

/// Writes links inside the caller's transaction (or as statements of their
/// own when there is none).
pub(crate) async fn write_links_in(
    c: &mut TdsClient,
    batch: &LinkBatch,
) -> Result<(), tiberius::error::Error> {
    let s = quote(&batch.schema);
    for chunk in batch.links.chunks(LINKS_PER_STATEMENT) {
        let mut args = vec![Arg::text(&batch.entity)];
        let rows: Vec<String> = chunk
            .iter()
            .map(|l| {
                let known = |k: &KeyRef| match k {
                    KeyRef::Known(s) => keys::to_bytes(s),
                    KeyRef::Inserted(i) => unreachable!("link to insert {i} was not resolved"),
                };
                args.push(Arg::Bytes(known(&l.crm_key)));
                args.push(Arg::Bytes(known(&l.external_key)));
                args.push(Arg::Bytes(l.shadow.clone()));
                args.push(Arg::Bool(l.deleted));
                let n = args.len();
                format!("(@P{}, @P{}, @P{}, @P{})", n - 3, n - 2, n - 1, n)
            })
            .collect();
        let sql = format!(
            "MERGE {s}.links WITH (HOLDLOCK) AS l \
             USING (VALUES {}) AS u (crm_key, external_key, shadow, deleted) \
             ON l.entity = @P1 AND l.crm_key = u.crm_key \
             WHEN MATCHED THEN UPDATE SET external_key = u.external_key, shadow = u.shadow, \
               deleted = u.deleted \
             WHEN NOT MATCHED THEN INSERT (entity, crm_key, external_key, shadow, deleted) \
               VALUES (@P1, u.crm_key, u.external_key, u.shadow, u.deleted);",
            rows.join(", ")
        );
        super::exec(c, &sql, &args).await?;
    }
    Ok(())
}

/// A key as the links table stores it, in its canonical text.
fn stored_key(entity: &str, stored: &[u8]) -> Result<String, EndpointError> {
    keys::from_bytes(stored).map_err(|e| {
        EndpointError::Schema(format!(
            "entity {entity:?}: {e} in the state store's links table"
        ))
    })
}

/// The links of `entity` whose `column` (`crm_key` or `external_key`) is
/// one of `keys`, by that key.
pub(super) async fn by_column(
    store: &MsStore,
    column: &str,
    entity: &str,
    keys: &[String],
) -> Result<HashMap<String, Link>, EndpointError> {
    let mut out = HashMap::with_capacity(keys.len());
    let mut layouts = HashMap::new();
    for chunk in keys.chunks(MAX_PARAMS) {
        let mut args = vec![Arg::text(entity)];
        args.extend(chunk.iter().map(|k| Arg::Bytes(keys::to_bytes(k))));
        let sql = format!(
            "SELECT crm_key, external_key, shadow, deleted FROM {}.links \
             WHERE entity = @P1 AND {column} IN ({})",
            store.s(),
            placeholders(2, chunk.len())
        );
        let rows = store.rows(&sql, &args, "reading links").await?;
        for r in rows {
            let shadow = read_shadow(store, entity, bytes(&r[2]), &mut layouts).await?;
            let link = Link {
                crm_key: stored_key(entity, bytes(&r[0]))?,
                external_key: stored_key(entity, bytes(&r[1]))?,
                shadow,
                deleted: int(&r[3]) == Some(1),
            };
            let k = if column == "crm_key" {
                link.crm_key.clone()
            } else {
                link.external_key.clone()
            };
            out.insert(k, link);
        }
    }
    Ok(out)
}

/// Every live link of `entity` as (CRM key, external key).
pub(super) async fn live(
    store: &MsStore,
    entity: &str,
) -> Result<Vec<(String, String)>, EndpointError> {
    let rows = store
        .rows(
            &format!(
                "SELECT crm_key, external_key FROM {}.links WHERE entity = @P1 AND deleted = 0",
                store.s()
            ),
            &[Arg::text(entity)],
            "reading links",
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                stored_key(entity, bytes(&r[0]))?,
                stored_key(entity, bytes(&r[1]))?,
            ))
        })
        .collect()
}

/// A stored shadow, sealed (see `state::shadow`): the only form a SQL
/// Server state store has held.
async fn read_shadow(
    store: &MsStore,
    entity: &str,
    stored: &[u8],
    known: &mut HashMap<i32, Arc<Vec<String>>>,
) -> Result<Shadow, EndpointError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        EndpointError::Schema(format!(
            "a shadow of entity {entity:?} in the state store is unreadable: {e}"
        ))
    };
    let layout = shadow::layout_of(stored).ok_or_else(|| unreadable(&"it names no layout"))?;
    let fields = match known.get(&layout) {
        Some(f) => f.clone(),
        None => {
            let f = layout_fields(store, entity, layout).await?;
            known.insert(layout, f.clone());
            f
        }
    };
    shadow::open(stored, &fields).map_err(|e| unreadable(&e))
}

/// The layouts of `entity` as stored: (id, fields).
async fn layouts_of(
    store: &MsStore,
    c: &mut TdsClient,
    entity: &str,
) -> Result<Vec<(i32, Vec<String>)>, EndpointError> {
    let rows = query(
        c,
        &format!(
            "SELECT layout, fields FROM {}.shadow_layouts WHERE entity = @P1 ORDER BY layout",
            store.s()
        ),
        &[Arg::text(entity)],
    )
    .await
    .map_err(|e| store.state_error("reading the shadow layouts", e))?;
    rows.iter()
        .map(|r| {
            let fields: Vec<String> = serde_json::from_str(&text(&r[1]).unwrap_or_default())
                .map_err(|e| {
                    EndpointError::Schema(format!(
                        "a shadow layout of entity {entity:?} in the state store is \
                         unreadable: {e}"
                    ))
                })?;
            Ok((int(&r[0]).unwrap_or(0) as i32, fields))
        })
        .collect()
}

async fn layout_fields(
    store: &MsStore,
    entity: &str,
    layout: i32,
) -> Result<Arc<Vec<String>>, EndpointError> {
    let key = (entity.to_string(), layout);
    if let Some(f) = store.layouts.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(f);
    }
    let mut c = store.db.conn().await?;
    let found = layouts_of(store, &mut c, entity).await?;
    let mut wanted = None;
    if let Ok(mut m) = store.layouts.lock() {
        for (id, fields) in found {
            let fields = Arc::new(fields);
            if id == layout {
                wanted = Some(fields.clone());
            }
            m.insert((entity.to_string(), id), fields);
        }
    }
    wanted.ok_or_else(|| {
        EndpointError::Schema(format!(
            "shadow layout {layout} of entity {entity:?} is missing from the state store"
        ))
    })
}

/// The id of the positional shadow layout of `fields`, registered on
/// first use. Field lists are compared here, exactly, whatever the
/// database's collation; registration runs under a transaction-owned
/// application lock, so that two processes never give one list two ids.
pub(super) async fn register_layout(
    store: &MsStore,
    entity: &str,
    fields: &[String],
) -> Result<i32, EndpointError> {
    let remember = |id: i32| {
        if let Ok(mut m) = store.layouts.lock() {
            m.insert((entity.to_string(), id), Arc::new(fields.to_vec()));
        }
        id
    };
    let mut c = store.db.conn().await?;
    let find = |found: &[(i32, Vec<String>)]| {
        found
            .iter()
            .find(|(_, f)| f.as_slice() == fields)
            .map(|(id, _)| *id)
    };
    if let Some(id) = find(&layouts_of(store, &mut c, entity).await?) {
        return Ok(remember(id));
    }
    let fail = |e| store.state_error("registering a shadow layout", e);
    let lock = super::lock::resource("crmsync-layout", &store.schema, entity);
    super::batch(&mut c, crate::db::mssql::BEGIN)
        .await
        .map_err(fail)?;
    let result = async {
        let got = query(
            &mut c,
            "DECLARE @r int; EXEC @r = sp_getapplock @Resource = @P1, @LockMode = 'Exclusive', \
             @LockOwner = 'Transaction', @LockTimeout = 30000; SELECT @r",
            &[Arg::text(&lock)],
        )
        .await
        .map_err(fail)?;
        if !matches!(super::int_at(&got, 0), Some(0 | 1)) {
            return Err(EndpointError::Schema(format!(
                "registering a shadow layout of entity {entity:?}: another process held the \
                 application lock {lock:?} for over 30 s; run again"
            )));
        }
        let found = layouts_of(store, &mut c, entity).await?;
        if let Some(id) = find(&found) {
            return Ok(id);
        }
        let id = found.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        let list = serde_json::to_string(fields).unwrap_or_else(|_| "[]".into());
        super::exec(
            &mut c,
            &format!(
                "INSERT INTO {}.shadow_layouts (entity, layout, fields) VALUES (@P1, @P2, @P3)",
                store.s()
            ),
            &[
                Arg::text(entity),
                Arg::Int(Some(i64::from(id))),
                Arg::Text(Some(list)),
            ],
        )
        .await
        .map_err(fail)?;
        Ok::<_, EndpointError>(id)
    }
    .await;
    let end = if result.is_ok() {
        "COMMIT TRANSACTION"
    } else {
        "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"
    };
    let ended = super::batch(&mut c, end).await;
    let id = result?;
    ended.map_err(fail)?;
    Ok(remember(id))
}

/// The stored form of an integer key (`state::keys`) decoded back into a
/// `bigint` in T-SQL: the first byte gives the sign and the length n, the
/// next n bytes the magnitude, big-endian (negative numbers as the
/// complement, `2^(8n) - 1 - |v|`, which for n = 8 reads as `v - 1`). Binary converts to an integer
/// big-endian, padded with zeros on the left ("CAST and CONVERT
/// (Transact-SQL)", "binary and varbinary"). Any other stored form gives
/// NULL, which names no row.
fn int_key_sql(b: &str) -> String {
    let part = |n: usize| format!("CAST(SUBSTRING({b}, 2, {n}) AS bigint)");
    let mut arms = vec!["WHEN 20 THEN CAST(0 AS bigint)".to_string()];
    for n in 1..=8usize {
        arms.push(format!("WHEN {} THEN {}", 20 + n, part(n)));
        let negative = if n == 8 {
            // The bytes of the smallest bigint read as the largest.
            format!(
                "CASE WHEN {p} = 9223372036854775807 THEN CAST(-9223372036854775807 AS bigint) - 1 \
                 ELSE {p} + 1 END",
                p = part(8)
            )
        } else {
            format!("{} - {}", part(n), (1i64 << (8 * n)) - 1)
        };
        arms.push(format!("WHEN {} THEN {negative}", 20 - n));
    }
    format!(
        "CASE CAST(SUBSTRING({b}, 1, 1) AS int) {} END",
        arms.join(" ")
    )
}

/// The stored form (`state::keys`) of `x`, a positive `bigint`, made in
/// T-SQL: the type byte 20 + n, then the n big-endian bytes its magnitude
/// needs. An integer cast to `binary(8)` is its big-endian bytes, and
/// `binary(1)` keeps the lowest byte ("CAST and CONVERT (Transact-SQL)",
/// "binary and varbinary": other types are "padded or truncated on the
/// left").
pub(crate) fn positive_int_key_sql(x: &str) -> String {
    let arms: Vec<String> = (1..8u32)
        .map(|n| format!("WHEN {x} < {} THEN {n}", 1u64 << (8 * n)))
        .collect();
    let n = format!("CASE {} ELSE 8 END", arms.join(" "));
    format!("CAST(20 + {n} AS binary(1)) + SUBSTRING(CAST({x} AS binary(8)), 9 - {n}, {n})")
}

/// See `StateStore::links_gone_from`. Integer keys (the identity or
/// sequence keys of most ERP tables) are compared in one anti-join in the
/// database: each live link's stored key decoded to the column's type and
/// looked up in the table, in one statement and so one snapshot of it. Other
/// keys (uuid, text) are compared here in their canonical text: SQL Server
/// 2016 has no UTF-8 conversion to decode text keys with, and a text key
/// compared by the table's collation could match another row.
pub(super) async fn gone_from(
    store: &MsStore,
    entity: &str,
    table: &crate::db::TableInfo,
    key: &str,
) -> Result<GoneLinks, EndpointError> {
    let qualified = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let column = table.columns.iter().find(|c| c.name == key);
    if let Some(crate::value::SqlType::Int { .. }) = column.map(|c| &c.ty) {
        let sql = format!(
            "SELECT l.crm_key, l.external_key, \
               (SELECT COUNT_BIG(*) FROM {s}.links c WHERE c.entity = @P1 AND c.deleted = 0) \
             FROM {s}.links l \
             WHERE l.entity = @P1 AND l.deleted = 0 \
               AND NOT EXISTS (SELECT 1 FROM {qualified} x WHERE x.{k} = {decoded})",
            s = store.s(),
            k = quote(key),
            decoded = int_key_sql("l.external_key"),
        );
        let rows = store
            .rows(
                &sql,
                &[Arg::text(entity)],
                "looking for links whose external row is gone",
            )
            .await?;
        let live = rows.first().and_then(|r| int(&r[2])).unwrap_or(0) as u64;
        let gone = rows
            .iter()
            .map(|r| {
                Ok((
                    stored_key(entity, bytes(&r[0]))?,
                    stored_key(entity, bytes(&r[1]))?,
                ))
            })
            .collect::<Result<Vec<_>, EndpointError>>()?;
        return Ok(GoneLinks { gone, live });
    }
    // The live links first, then the table's keys: a link whose row was
    // there throughout is always found; a row deleted in between is found
    // gone by the next check.
    let links = live(store, entity).await?;
    if links.is_empty() {
        return Ok(GoneLinks::default());
    }
    let rows = store
        .rows(
            &format!("SELECT {} FROM {qualified}", quote(key)),
            &[],
            &format!("reading the keys of {}", table.qualified()),
        )
        .await?;
    let present: HashSet<String> = rows
        .iter()
        .filter_map(|r| r.first())
        .filter(|v| !matches!(v, Value::Null))
        .map(Value::key_string)
        .collect();
    let live = links.len() as u64;
    let gone: Vec<(String, String)> = links
        .into_iter()
        .filter(|(_, x)| !present.contains(x))
        .collect();
    Ok(GoneLinks {
        live: if gone.is_empty() { 0 } else { live },
        gone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_integer_keys_encode_as_the_state_does() {
        // The SQL's length arms, evaluated here as SQL Server would.
        let sql = positive_int_key_sql("x");
        for k in [
            1i64,
            255,
            256,
            65_535,
            65_536,
            16_777_216,
            1 << 40,
            (1 << 56) - 1,
            1 << 56,
            i64::MAX,
        ] {
            let n = (1..8u32)
                .find(|n| (k as u64) < 1u64 << (8 * n))
                .unwrap_or(8) as usize;
            let mut made = vec![20 + n as u8];
            made.extend_from_slice(&k.to_be_bytes()[8 - n..]);
            assert_eq!(made, keys::value_bytes(&Value::Int(k)), "{k}");
            if n < 8 {
                assert!(sql.contains(&format!("WHEN x < {} THEN {n}", 1u64 << (8 * n))));
            }
        }
    }

    #[test]
    fn integer_keys_decode_by_their_length_byte() {
        let sql = int_key_sql("b");
        // Positive lengths 1..8, negative lengths 1..8, and zero.
        for byte in 12..=28 {
            assert!(sql.contains(&format!("WHEN {byte} THEN")), "{byte}: {sql}");
        }
        assert!(sql.contains("WHEN 19 THEN CAST(SUBSTRING(b, 2, 1) AS bigint) - 255"));
        assert!(sql.contains("ELSE CAST(SUBSTRING(b, 2, 8) AS bigint) + 1 END"));
        assert!(sql.contains("- 72057594037927935"));
    }
}
