//! Links and their shadows on PostgreSQL: reads by either key, the
//! positional shadow layouts, the hard-delete anti-join, and the writers
//! that run inside the caller's transaction (the endpoint's data
//! transactions call them, so that links and checkpoints commit with the
//! data they describe).

use super::{to_json, PgStore};
use crate::db::postgres::{qualified, quote};
use crate::db::EndpointError;
use crate::state::{keys, shadow, Base, Checkpoint, GoneLinks, KeyRef, Link, LinkBatch, Shadow};
use crate::value::{SqlType, Value};
use std::collections::HashMap;
use tokio_postgres::GenericClient;

/// Writes links inside the caller's transaction.
pub(crate) async fn write_links_in<C: GenericClient>(
    client: &C,
    batch: &LinkBatch,
) -> Result<(), tokio_postgres::Error> {
    if batch.links.is_empty() {
        return Ok(());
    }
    let mut crm = Vec::with_capacity(batch.links.len());
    let mut ext = Vec::with_capacity(batch.links.len());
    let mut shadow = Vec::with_capacity(batch.links.len());
    let mut deleted = Vec::with_capacity(batch.links.len());
    for l in &batch.links {
        let known = |k: &KeyRef| match k {
            KeyRef::Known(s) => keys::to_bytes(s),
            KeyRef::Inserted(i) => unreachable!("link to insert {i} was not resolved"),
        };
        crm.push(known(&l.crm_key));
        ext.push(known(&l.external_key));
        shadow.push(l.shadow.as_slice());
        deleted.push(l.deleted);
    }
    super::blocks::materialize_in(client, &batch.schema, &batch.entity, &crm, &ext).await?;
    let s = quote(&batch.schema);
    let sql = format!(
        "INSERT INTO {s}.links AS l (entity, crm_key, external_key, shadow, deleted) \
         SELECT $1, c, e, sh, d FROM unnest($2::bytea[], $3::bytea[], $4::bytea[], $5::bool[]) AS u(c, e, sh, d) \
         ON CONFLICT (entity, crm_key) DO UPDATE SET external_key = excluded.external_key, \
           shadow = excluded.shadow, deleted = excluded.deleted"
    );
    client
        .execute(&sql, &[&batch.entity, &crm, &ext, &shadow, &deleted])
        .await?;
    Ok(())
}

/// Saves a backfill checkpoint inside the caller's transaction, so that it
/// commits together with the chunk it describes.
pub(crate) async fn save_checkpoint_in<C: GenericClient>(
    client: &C,
    schema: &str,
    entity: &str,
    direction: &str,
    cp: &Checkpoint,
) -> Result<(), tokio_postgres::Error> {
    let last_key = cp.last_key.as_ref().map(to_json);
    client
        .execute(
            &format!(
                "INSERT INTO {}.backfill_checkpoints AS c \
                   (entity, direction, snapshot_ts, last_key, rows_done, finished_at, insert_only) \
                 VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN now() END, $7) \
                 ON CONFLICT (entity, direction) DO UPDATE SET snapshot_ts = excluded.snapshot_ts, \
                   last_key = excluded.last_key, rows_done = excluded.rows_done, \
                   finished_at = excluded.finished_at, insert_only = excluded.insert_only, \
                   updated_at = now()",
                quote(schema)
            ),
            &[
                &entity,
                &direction,
                &to_json(&cp.snapshot_ts),
                &last_key,
                &cp.rows_done,
                &cp.finished,
                &cp.insert_only,
            ],
        )
        .await?;
    Ok(())
}

/// The links of `entity` whose `column` (`crm_key` or `external_key`) is
/// one of `keys`, by that key.
pub(super) async fn by_column(
    store: &PgStore,
    column: &str,
    entity: &str,
    keys: &[String],
) -> Result<HashMap<String, Link>, EndpointError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let s = store.s();
    let side = column.trim_end_matches("_key");
    let stored: Vec<Vec<u8>> = keys.iter().map(|k| keys::to_bytes(k)).collect();
    let ints = super::blocks::ints(&stored);
    // A page read in key order has its keys in few buckets: their blocks
    // are read whole, not probed key by key.
    let dense = super::blocks::dense_buckets(side, &ints);
    let blocks = match dense {
        Some(_) => super::blocks::entries_by_bucket_sql(&s, side, 1, 3, 4),
        None => super::blocks::entries_sql(&s, side, 1, 3, None),
    };
    let sql = format!(
        "SELECT crm_key, external_key, shadow, deleted FROM {s}.links \
         WHERE entity = $1 AND {column} = ANY($2) \
         UNION ALL SELECT crm_key, external_key, shadow, false FROM ({blocks}) AS b"
    );
    let what = format!("reading links (state store {})", store.schema);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&entity, &stored, &ints];
    if let Some(buckets) = &dense {
        params.push(buckets);
    }
    let rows = store.db.query_by_keys(&sql, &params, &what).await?;
    let mut out = HashMap::with_capacity(rows.len());
    let mut layouts = HashMap::new();
    for r in rows {
        let shadow = read_shadow(store, entity, r.get(2), &mut layouts).await?;
        let link = Link {
            crm_key: stored_key(entity, r.get(0))?,
            external_key: stored_key(entity, r.get(1))?,
            shadow,
            deleted: r.get(3),
        };
        let k = if column == "crm_key" {
            link.crm_key.clone()
        } else {
            link.external_key.clone()
        };
        out.insert(k, link);
    }
    Ok(out)
}

/// A key as the links table stores it, in its canonical text.
pub(super) fn stored_key(entity: &str, stored: &[u8]) -> Result<String, EndpointError> {
    keys::from_bytes(stored).map_err(|e| {
        EndpointError::Schema(format!(
            "entity {entity:?}: {e} in the state store's links table"
        ))
    })
}

/// A stored shadow: sealed (see `state::shadow`), or, as stored
/// before schema 7, JSON text: an object by field, or positional,
/// `[layout, value, ...]`.
async fn read_shadow(
    store: &PgStore,
    entity: &str,
    stored: &[u8],
    known: &mut HashMap<i32, std::sync::Arc<Vec<String>>>,
) -> Result<Shadow, EndpointError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        EndpointError::Schema(format!(
            "a shadow of entity {entity:?} in the state store is unreadable: {e}"
        ))
    };
    if let Some(layout) = shadow::layout_of(stored) {
        let fields = known_layout(store, entity, layout, known).await?;
        return shadow::open(stored, &fields).map_err(|e| unreadable(&e));
    }
    let text = std::str::from_utf8(stored).map_err(|e| unreadable(&e))?;
    let whole = |values: std::collections::BTreeMap<String, Value>| -> Shadow {
        values
            .into_iter()
            .map(|(k, v)| (k, Base::Value(v)))
            .collect()
    };
    if !text.starts_with('[') {
        return serde_json::from_str(text)
            .map(whole)
            .map_err(|e| unreadable(&e));
    }
    let mut values: Vec<Value> = serde_json::from_str(text).map_err(|e| unreadable(&e))?;
    let layout = match values.first() {
        Some(Value::Int(l)) => i32::try_from(*l).map_err(|e| unreadable(&e))?,
        _ => return Err(unreadable(&"it names no layout")),
    };
    let fields = known_layout(store, entity, layout, known).await?;
    if fields.len() + 1 != values.len() {
        return Err(unreadable(&format!(
            "layout {layout} has {} fields, the shadow {} values",
            fields.len(),
            values.len() - 1
        )));
    }
    Ok(fields
        .iter()
        .cloned()
        .zip(values.drain(1..).map(Base::Value))
        .collect())
}

/// The fields of `layout`, looked up once per call of the caller.
async fn known_layout(
    store: &PgStore,
    entity: &str,
    layout: i32,
    known: &mut HashMap<i32, std::sync::Arc<Vec<String>>>,
) -> Result<std::sync::Arc<Vec<String>>, EndpointError> {
    if let Some(f) = known.get(&layout) {
        return Ok(f.clone());
    }
    let f = layout_fields(store, entity, layout).await?;
    known.insert(layout, f.clone());
    Ok(f)
}

async fn layout_fields(
    store: &PgStore,
    entity: &str,
    layout: i32,
) -> Result<std::sync::Arc<Vec<String>>, EndpointError> {
    let key = (entity.to_string(), layout);
    if let Some(f) = store.layouts.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(f);
    }
    let conn = store.conn().await?;
    let row = conn
        .query_opt(
            &format!(
                "SELECT fields FROM {}.shadow_layouts WHERE entity = $1 AND layout = $2",
                store.s()
            ),
            &[&entity, &layout],
        )
        .await
        .map_err(|e| store.state_error("reading a shadow layout", e))?
        .ok_or_else(|| {
            EndpointError::Schema(format!(
                "shadow layout {layout} of entity {entity:?} is missing from the state store"
            ))
        })?;
    let fields = std::sync::Arc::new(row.get::<_, Vec<String>>(0));
    if let Ok(mut m) = store.layouts.lock() {
        m.insert(key, fields.clone());
    }
    Ok(fields)
}

/// The id of the positional shadow layout of `fields`, registered on
/// first use.
pub(super) async fn register_layout(
    store: &PgStore,
    entity: &str,
    fields: &[String],
) -> Result<i32, EndpointError> {
    let mut conn = store.conn().await?;
    let s = store.s();
    let fields = fields.to_vec();
    // A layout is registered once and then only looked up: one query on
    // every run but the first.
    let known: Option<i32> = conn
        .query_opt(
            &format!("SELECT layout FROM {s}.shadow_layouts WHERE entity = $1 AND fields = $2"),
            &[&entity, &fields],
        )
        .await
        .map_err(|e| store.state_error("looking up a shadow layout", e))?
        .map(|r| r.get(0));
    if let Some(layout) = known {
        if let Ok(mut m) = store.layouts.lock() {
            m.insert((entity.to_string(), layout), std::sync::Arc::new(fields));
        }
        return Ok(layout);
    }
    let tx = conn
        .transaction()
        .await
        .map_err(|e| store.state_error("starting a transaction", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('crmsync-layout'), hashtext($1))",
        &[&entity],
    )
    .await
    .map_err(|e| store.state_error("locking the shadow layouts", e))?;
    let layout: i32 = tx
        .query_one(
            &format!(
                "WITH found AS (SELECT layout FROM {s}.shadow_layouts \
                                 WHERE entity = $1 AND fields = $2), \
                      added AS (INSERT INTO {s}.shadow_layouts (entity, layout, fields) \
                                SELECT $1, coalesce(max(layout), 0) + 1, $2 \
                                  FROM {s}.shadow_layouts WHERE entity = $1 \
                                HAVING NOT EXISTS (SELECT 1 FROM found) \
                                RETURNING layout) \
                 SELECT layout FROM found UNION ALL SELECT layout FROM added"
            ),
            &[&entity, &fields],
        )
        .await
        .map_err(|e| store.state_error("registering a shadow layout", e))?
        .get(0);
    tx.commit()
        .await
        .map_err(|e| store.state_error("registering a shadow layout", e))?;
    if let Ok(mut m) = store.layouts.lock() {
        m.insert((entity.to_string(), layout), std::sync::Arc::new(fields));
    }
    Ok(layout)
}

/// See `StateStore::links_gone_from`.
pub(super) async fn gone_from(
    store: &PgStore,
    entity: &str,
    table: &crate::db::TableInfo,
    key: &str,
) -> Result<GoneLinks, EndpointError> {
    // The external table's keys are compared in the links' stored form
    // (see `state::keys`), made by the state schema's `key_bytes`. A hash
    // anti-join reads each side once; a merge join would sort the whole
    // table's keys first, twice as slow at a million rows.
    let s = store.s();
    let x = format!("x.{}", quote(key));
    let stored = match table.columns.iter().find(|c| c.name == key).map(|c| &c.ty) {
        Some(SqlType::Int { .. }) => format!("{s}.key_bytes({x}::bigint)"),
        Some(SqlType::Uuid) => format!("{s}.key_bytes({x})"),
        _ => format!("{s}.key_bytes({x}::text)"),
    };
    let gone_sql = format!(
        "SELECT l.crm_key, l.external_key FROM {s}.all_links l \
         WHERE l.entity = $1 AND NOT l.deleted \
           AND NOT EXISTS (SELECT 1 FROM {t} x WHERE {stored} = l.external_key)",
        t = qualified(table),
    );
    let count_sql = format!(
        "SELECT count(*) FROM {}.all_links WHERE entity = $1 AND NOT deleted",
        store.s()
    );
    let mut conn = store.conn().await?;
    let fail = |e| store.state_error("looking for links whose external row is gone", e);
    let tx = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(fail)?;
    tx.batch_execute("SET LOCAL enable_mergejoin = off")
        .await
        .map_err(fail)?;
    let gone = tx
        .query(&gone_sql, &[&entity])
        .await
        .map_err(fail)?
        .into_iter()
        .map(|r| Ok((stored_key(entity, r.get(0))?, stored_key(entity, r.get(1))?)))
        .collect::<Result<Vec<(String, String)>, EndpointError>>()?;
    let live = if gone.is_empty() {
        0
    } else {
        let n: i64 = tx
            .query_one(&count_sql, &[&entity])
            .await
            .map_err(fail)?
            .get(0);
        n as u64
    };
    tx.commit().await.map_err(fail)?;
    Ok(GoneLinks { gone, live })
}
