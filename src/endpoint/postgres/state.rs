//! The state store on PostgreSQL: schema `[state] schema`, versioned
//! migrations, and an advisory lock per entity held on a connection of its
//! own for the length of a run.

use super::{quote, PgEndpoint};
use crate::endpoint::EndpointError;
use crate::plan::Side;
use crate::state::{
    shadow, Base, Checkpoint, ConflictInfo, ConflictRecord, EntityCounts, GoneLinks, KeyRef, Link,
    LinkBatch, LockGuard, RejectInfo, RunInfo, Shadow, StateStore, Status, Watermark,
    WatermarkInfo, SCHEMA_VERSION,
};
use crate::value::Value;
use async_trait::async_trait;
use std::collections::HashMap;
use tokio_postgres::GenericClient;

/// Schema version n is reached by running `MIGRATIONS[n - 1]`; `{s}`
/// stands for the quoted schema name.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE {s}.runs (
    run_id      bigserial PRIMARY KEY,
    entity      text NOT NULL,
    command     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text,
    summary     jsonb
);
CREATE INDEX ON {s}.runs (entity, run_id);
CREATE TABLE {s}.watermarks (
    entity     text NOT NULL,
    side       text NOT NULL,
    ts         jsonb NOT NULL,
    key        jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, side)
);
CREATE TABLE {s}.links (
    entity       text NOT NULL,
    crm_key      text NOT NULL,
    external_key text NOT NULL,
    shadow       jsonb NOT NULL,
    deleted      boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, crm_key),
    UNIQUE (entity, external_key)
);
CREATE TABLE {s}.rejects (
    entity      text NOT NULL,
    side        text NOT NULL,
    key         text NOT NULL,
    reason      text NOT NULL,
    first_run   bigint,
    last_run    bigint,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    PRIMARY KEY (entity, side, key)
);
CREATE TABLE {s}.conflicts (
    conflict_id         bigserial PRIMARY KEY,
    entity              text NOT NULL,
    crm_key             text NOT NULL,
    external_key        text NOT NULL,
    field               text NOT NULL,
    base_value          jsonb,
    crm_value           jsonb,
    external_value      jsonb,
    crm_changed_at      timestamptz,
    external_changed_at timestamptz,
    winner              text,
    run_id              bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    resolved_at         timestamptz,
    resolution          text
);
CREATE INDEX ON {s}.conflicts (entity) WHERE resolved_at IS NULL;
"#,
    r#"
CREATE TABLE {s}.backfill_checkpoints (
    entity      text NOT NULL,
    direction   text NOT NULL,
    snapshot_ts jsonb NOT NULL,
    last_key    jsonb,
    rows_done   bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (entity, direction)
);
"#,
    // Shadows are read and written whole, never queried: as text they load
    // about twice as fast as jsonb, which a backfill feels on every row.
    // A backfill writes them positionally, `[layout, value, ...]`, with the
    // field names kept once per layout: a third of the size. Keys are
    // only ever compared for equality: byte order spares every index
    // insert and lookup the database's collation.
    r#"
ALTER TABLE {s}.links ALTER COLUMN shadow TYPE text USING shadow::text,
    ALTER COLUMN crm_key TYPE text COLLATE "C",
    ALTER COLUMN external_key TYPE text COLLATE "C";
ALTER TABLE {s}.backfill_checkpoints ADD COLUMN insert_only boolean NOT NULL DEFAULT false;
CREATE TABLE {s}.shadow_layouts (
    entity text NOT NULL,
    layout int NOT NULL,
    fields text[] NOT NULL,
    PRIMARY KEY (entity, layout),
    UNIQUE (entity, fields)
);
"#,
    // The source clock at which a watermark's run began reading: the
    // overlap is measured back from it, not from the last change.
    r#"
ALTER TABLE {s}.watermarks ADD COLUMN read_at jsonb;
"#,
    // The external table's deletes fingerprint at the last hard-delete
    // check that left nothing undone: while it stays the same, no row can
    // have gone, and the check (a scan of every link) is skipped.
    r#"
CREATE TABLE {s}.deletes_checked (
    entity      text PRIMARY KEY,
    fingerprint text NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now()
);
"#,
    // Keys in their canonical text: without the blanks a char(n) key
    // column pads with, decimals without trailing zeros. Rejects that
    // would now name one key twice keep the newer.
    r#"
CREATE FUNCTION pg_temp.crmsync_key(k text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN r ~ '^-?[0-9]+\.[0-9]*$'
                THEN rtrim(rtrim(r, '0'), '.') ELSE r END
      FROM rtrim(k, ' ') AS r $$;
UPDATE {s}.links SET crm_key = pg_temp.crmsync_key(crm_key)
 WHERE crm_key <> pg_temp.crmsync_key(crm_key);
UPDATE {s}.links SET external_key = pg_temp.crmsync_key(external_key)
 WHERE external_key <> pg_temp.crmsync_key(external_key);
DELETE FROM {s}.rejects r USING {s}.rejects o
 WHERE r.entity = o.entity AND r.side = o.side AND r.key <> o.key
   AND pg_temp.crmsync_key(r.key) = pg_temp.crmsync_key(o.key)
   AND (r.last_seen, r.key) < (o.last_seen, o.key);
UPDATE {s}.rejects SET key = pg_temp.crmsync_key(key)
 WHERE key <> pg_temp.crmsync_key(key);
UPDATE {s}.conflicts SET crm_key = pg_temp.crmsync_key(crm_key),
       external_key = pg_temp.crmsync_key(external_key)
 WHERE crm_key <> pg_temp.crmsync_key(crm_key)
    OR external_key <> pg_temp.crmsync_key(external_key);
DROP FUNCTION pg_temp.crmsync_key(text);
"#,
    // Shadows sealed into digests, eight bytes a field (the JSON text of
    // earlier shadows stays readable as it is); links no longer carry a
    // time of their own.
    r#"
ALTER TABLE {s}.links ALTER COLUMN shadow TYPE bytea USING convert_to(shadow, 'UTF8'),
    DROP COLUMN updated_at;
"#,
];

/// The versions whose migration only rewrites existing rows.
const DATA_FIXES: &[usize] = &[6];

// Every migration raises the version by one.
const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn from_json(j: serde_json::Value) -> Result<Value, EndpointError> {
    serde_json::from_value(j).map_err(|e| {
        EndpointError::Schema(format!(
            "the state store holds a value crmsync cannot read: {e}"
        ))
    })
}

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
            KeyRef::Known(s) => s.clone(),
            KeyRef::Inserted(i) => unreachable!("link to insert {i} was not resolved"),
        };
        crm.push(known(&l.crm_key));
        ext.push(known(&l.external_key));
        shadow.push(l.shadow.as_slice());
        deleted.push(l.deleted);
    }
    let s = quote(&batch.schema);
    let sql = format!(
        "INSERT INTO {s}.links AS l (entity, crm_key, external_key, shadow, deleted) \
         SELECT $1, c, e, sh, d FROM unnest($2::text[], $3::text[], $4::bytea[], $5::bool[]) AS u(c, e, sh, d) \
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

impl PgEndpoint {
    fn s(&self) -> String {
        quote(&self.state_schema)
    }

    /// A stored shadow: sealed (see `state::shadow`), or, as stored
    /// before schema 7, JSON text: an object by field, or positional,
    /// `[layout, value, ...]`.
    async fn read_shadow(
        &self,
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
            let fields = self.known_layout(entity, layout, known).await?;
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
        let fields = self.known_layout(entity, layout, known).await?;
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
        &self,
        entity: &str,
        layout: i32,
        known: &mut HashMap<i32, std::sync::Arc<Vec<String>>>,
    ) -> Result<std::sync::Arc<Vec<String>>, EndpointError> {
        if let Some(f) = known.get(&layout) {
            return Ok(f.clone());
        }
        let f = self.layout_fields(entity, layout).await?;
        known.insert(layout, f.clone());
        Ok(f)
    }

    async fn layout_fields(
        &self,
        entity: &str,
        layout: i32,
    ) -> Result<std::sync::Arc<Vec<String>>, EndpointError> {
        let key = (entity.to_string(), layout);
        if let Some(f) = self.layouts.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(f);
        }
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT fields FROM {}.shadow_layouts WHERE entity = $1 AND layout = $2",
                    self.s()
                ),
                &[&entity, &layout],
            )
            .await
            .map_err(|e| self.state_error("reading a shadow layout", e))?
            .ok_or_else(|| {
                EndpointError::Schema(format!(
                    "shadow layout {layout} of entity {entity:?} is missing from the state store"
                ))
            })?;
        let fields = std::sync::Arc::new(row.get::<_, Vec<String>>(0));
        if let Ok(mut m) = self.layouts.lock() {
            m.insert(key, fields.clone());
        }
        Ok(fields)
    }

    fn state_error(&self, what: &str, e: tokio_postgres::Error) -> EndpointError {
        self.query_error(format!("{what} (state store {})", self.state_schema), e)
    }

    async fn links_by(
        &self,
        column: &str,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT crm_key, external_key, shadow, deleted FROM {}.links \
             WHERE entity = $1 AND {column} = ANY($2)",
            self.s()
        );
        let what = format!("reading links (state store {})", self.state_schema);
        let rows = self.query_by_keys(&sql, &[&entity, &keys], &what).await?;
        let mut out = HashMap::with_capacity(rows.len());
        let mut layouts = HashMap::new();
        for r in rows {
            let shadow = self.read_shadow(entity, r.get(2), &mut layouts).await?;
            let link = Link {
                crm_key: r.get(0),
                external_key: r.get(1),
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
}

const CONFLICT_COLUMNS: &str = "conflict_id, entity, crm_key, external_key, field, base_value, \
     crm_value, external_value, crm_changed_at, external_changed_at, winner, run_id, created_at, \
     resolved_at, resolution";

fn conflict_from_row(r: &tokio_postgres::Row) -> Result<ConflictInfo, EndpointError> {
    let opt = |j: Option<serde_json::Value>| j.map(from_json).transpose();
    let winner: Option<String> = r.get(10);
    Ok(ConflictInfo {
        id: r.get(0),
        entity: r.get(1),
        record: ConflictRecord {
            crm_key: r.get(2),
            external_key: r.get(3),
            field: r.get(4),
            base: opt(r.get(5))?,
            crm: opt(r.get(6))?.unwrap_or(Value::Null),
            external: opt(r.get(7))?.unwrap_or(Value::Null),
            crm_changed_at: r.get(8),
            external_changed_at: r.get(9),
            winner: match winner.as_deref() {
                Some("crm") => Some(Side::Crm),
                Some("external") => Some(Side::External),
                _ => None,
            },
        },
        run: r.get(11),
        created_at: r.get(12),
        resolved_at: r.get(13),
        resolution: r.get(14),
    })
}

/// Holds the dedicated connection whose session owns the advisory lock.
struct PgLock {
    client: tokio_postgres::Client,
    key: String,
}

#[async_trait]
impl crate::state::HeldLock for PgLock {
    async fn release(self: Box<Self>) {
        // Errors here only mean the connection is already gone, which
        // releases the lock too.
        let _ = self
            .client
            .execute(
                "SELECT pg_advisory_unlock(hashtext('crmsync'), hashtext($1))",
                &[&self.key],
            )
            .await;
    }
}

#[async_trait]
impl StateStore for PgEndpoint {
    async fn migrate(&self) -> Result<(), EndpointError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.state_error("starting the migration", e))?;
        let s = self.s();
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('crmsync-migrate'));
             CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (version int NOT NULL);"
        ))
        .await
        .map_err(|e| self.state_error("creating the state schema", e))?;
        let version: i32 = tx
            .query_opt(&format!("SELECT version FROM {s}.schema_version"), &[])
            .await
            .map_err(|e| self.state_error("reading the state schema version", e))?
            .map(|r| r.get(0))
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(EndpointError::Schema(format!(
                "the state schema {} is at version {version}, newer than this crmsync \
                 understands ({SCHEMA_VERSION}); upgrade crmsync",
                self.state_schema
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            // A new schema has no rows for a data fix to fix.
            if version == 0 && DATA_FIXES.contains(&(i + 1)) {
                continue;
            }
            tx.batch_execute(&m.replace("{s}", &s)).await.map_err(|e| {
                self.state_error(
                    &format!("migrating the state schema to version {}", i + 1),
                    e,
                )
            })?;
        }
        if version < SCHEMA_VERSION {
            tx.execute(&format!("DELETE FROM {s}.schema_version"), &[])
                .await
                .map_err(|e| self.state_error("recording the state schema version", e))?;
            tx.execute(
                &format!("INSERT INTO {s}.schema_version VALUES ($1)"),
                &[&SCHEMA_VERSION],
            )
            .await
            .map_err(|e| self.state_error("recording the state schema version", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.state_error("committing the migration", e))
    }

    async fn lock(&self, entity: &str) -> Result<Option<LockGuard>, EndpointError> {
        let (client, connection) =
            self.config
                .connect(self.tls.clone())
                .await
                .map_err(|e| EndpointError::Connect {
                    side: self.side,
                    target: self.target.clone(),
                    reason: "cannot open the lock connection".into(),
                    source: Some(Box::new(super::DbFailure::from(&e))),
                })?;
        tokio::spawn(connection);
        let key = format!("{}:{entity}", self.state_schema);
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('crmsync'), hashtext($1))",
                &[&key],
            )
            .await
            .map_err(|e| self.state_error("taking the run lock", e))?
            .get(0);
        Ok(got.then(|| LockGuard(Box::new(PgLock { client, key }))))
    }

    async fn start_run(&self, entity: &str, command: &str) -> Result<i64, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                &format!(
                    "INSERT INTO {}.runs (entity, command) VALUES ($1, $2) RETURNING run_id",
                    self.s()
                ),
                &[&entity, &command],
            )
            .await
            .map_err(|e| self.state_error("recording the run", e))?;
        Ok(row.get(0))
    }

    async fn finish_run(
        &self,
        run: i64,
        outcome: &str,
        summary: &serde_json::Value,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "UPDATE {}.runs SET finished_at = now(), outcome = $2, summary = $3 WHERE run_id = $1",
                self.s()
            ),
            &[&run, &outcome, summary],
        )
        .await
        .map_err(|e| self.state_error("recording the end of the run", e))?;
        Ok(())
    }

    async fn watermark(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Option<Watermark>, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT ts, key, read_at FROM {}.watermarks WHERE entity = $1 AND side = $2",
                    self.s()
                ),
                &[&entity, &side.as_str()],
            )
            .await
            .map_err(|e| self.state_error("reading the watermark", e))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(Watermark {
                ts: from_json(r.get(0))?,
                key: from_json(r.get(1))?,
                read_at: r
                    .get::<_, Option<serde_json::Value>>(2)
                    .map(from_json)
                    .transpose()?,
            })),
        }
    }

    async fn set_watermark(
        &self,
        entity: &str,
        side: Side,
        mark: &Watermark,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "INSERT INTO {}.watermarks (entity, side, ts, key, read_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (entity, side) DO UPDATE SET ts = excluded.ts, key = excluded.key, \
                 read_at = excluded.read_at, updated_at = now()",
                self.s()
            ),
            &[
                &entity,
                &side.as_str(),
                &to_json(&mark.ts),
                &to_json(&mark.key),
                &mark.read_at.as_ref().map(to_json),
            ],
        )
        .await
        .map_err(|e| self.state_error("saving the watermark", e))?;
        Ok(())
    }

    async fn links_by_crm(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        self.links_by("crm_key", entity, keys).await
    }

    async fn links_by_external(
        &self,
        entity: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Link>, EndpointError> {
        self.links_by("external_key", entity, keys).await
    }

    async fn write_links(&self, batch: &LinkBatch) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        write_links_in(&*conn, batch)
            .await
            .map_err(|e| self.state_error("writing links", e))
    }

    async fn open_rejects(
        &self,
        entity: &str,
        side: Side,
    ) -> Result<Vec<RejectInfo>, EndpointError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT side, key, reason FROM {}.rejects \
                     WHERE entity = $1 AND side = $2 AND resolved_at IS NULL ORDER BY key",
                    self.s()
                ),
                &[&entity, &side.as_str()],
            )
            .await
            .map_err(|e| self.state_error("reading rejects", e))?;
        Ok(rows
            .into_iter()
            .map(|r| RejectInfo {
                side: r.get(0),
                key: r.get(1),
                reason: r.get(2),
            })
            .collect())
    }

    async fn record_rejects(
        &self,
        entity: &str,
        run: i64,
        side: Side,
        rejects: &[(String, String)],
    ) -> Result<(), EndpointError> {
        if rejects.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = rejects.iter().map(|(k, _)| k.as_str()).collect();
        let reasons: Vec<&str> = rejects.iter().map(|(_, r)| r.as_str()).collect();
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "INSERT INTO {}.rejects AS r (entity, side, key, reason, first_run, last_run) \
                 SELECT $1, $2, k, why, $3, $3 FROM unnest($4::text[], $5::text[]) AS u(k, why) \
                 ON CONFLICT (entity, side, key) DO UPDATE SET reason = excluded.reason, \
                   last_run = excluded.last_run, last_seen = now(), resolved_at = NULL",
                self.s()
            ),
            &[&entity, &side.as_str(), &run, &keys, &reasons],
        )
        .await
        .map_err(|e| self.state_error("recording rejects", e))?;
        Ok(())
    }

    async fn clear_rejects(
        &self,
        entity: &str,
        side: Side,
        keys: &[String],
    ) -> Result<(), EndpointError> {
        if keys.is_empty() {
            return Ok(());
        }
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "UPDATE {}.rejects SET resolved_at = now() \
                 WHERE entity = $1 AND side = $2 AND key = ANY($3) AND resolved_at IS NULL",
                self.s()
            ),
            &[&entity, &side.as_str(), &keys],
        )
        .await
        .map_err(|e| self.state_error("closing rejects", e))?;
        Ok(())
    }

    async fn status(&self) -> Result<Status, EndpointError> {
        let conn = self.conn().await?;
        let s = self.s();
        let wms = conn
            .query(
                &format!("SELECT entity, side, ts, key, updated_at FROM {s}.watermarks ORDER BY entity, side"),
                &[],
            )
            .await
            .map_err(|e| self.state_error("reading watermarks", e))?;
        let mut watermarks = Vec::new();
        for r in wms {
            let ts = from_json(r.get(2))?;
            watermarks.push(WatermarkInfo {
                entity: r.get(0),
                side: r.get(1),
                ts: ts.display(),
                ts_value: ts,
                key: from_json(r.get(3))?.display(),
                updated_at: r.get(4),
            });
        }
        let counts = conn
            .query(
                &format!(
                    "WITH e AS (SELECT entity FROM {s}.runs UNION SELECT entity FROM {s}.links) \
                     SELECT e.entity, \
                       (SELECT count(*) FROM {s}.links l WHERE l.entity = e.entity AND NOT l.deleted), \
                       (SELECT count(*) FROM {s}.rejects r WHERE r.entity = e.entity AND r.resolved_at IS NULL), \
                       (SELECT count(*) FROM {s}.conflicts c WHERE c.entity = e.entity AND c.resolved_at IS NULL) \
                     FROM e ORDER BY e.entity"
                ),
                &[],
            )
            .await
            .map_err(|e| self.state_error("counting links", e))?
            .into_iter()
            .map(|r| EntityCounts {
                entity: r.get(0),
                links: r.get(1),
                open_rejects: r.get(2),
                open_conflicts: r.get(3),
                deletes_checked_at: None,
            })
            .collect::<Vec<_>>();
        // A state schema older than 5 has no such table: none is shown.
        let checked: HashMap<String, chrono::DateTime<chrono::Utc>> = conn
            .query(
                &format!("SELECT entity, checked_at FROM {s}.deletes_checked"),
                &[],
            )
            .await
            .map(|rows| rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        let counts = counts
            .into_iter()
            .map(|c| EntityCounts {
                deletes_checked_at: checked.get(&c.entity).copied(),
                ..c
            })
            .collect();
        let last_runs = conn
            .query(
                &format!(
                    "SELECT DISTINCT ON (entity, command) run_id, entity, command, started_at, \
                            finished_at, outcome, summary \
                     FROM {s}.runs ORDER BY entity, command, run_id DESC"
                ),
                &[],
            )
            .await
            .map_err(|e| self.state_error("reading runs", e))?
            .into_iter()
            .map(|r| RunInfo {
                id: r.get(0),
                entity: r.get(1),
                command: r.get(2),
                started_at: r.get(3),
                finished_at: r.get(4),
                outcome: r.get(5),
                summary: r.get(6),
            })
            .collect();
        Ok(Status {
            watermarks,
            counts,
            last_runs,
        })
    }

    async fn record_conflicts(
        &self,
        entity: &str,
        run: i64,
        conflicts: &[ConflictRecord],
    ) -> Result<(), EndpointError> {
        if conflicts.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.state_error("logging conflicts", e))?;
        let st = tx
            .prepare(&format!(
                "INSERT INTO {}.conflicts (entity, crm_key, external_key, field, base_value, \
                   crm_value, external_value, crm_changed_at, external_changed_at, winner, run_id, \
                   resolved_at, resolution) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                   CASE WHEN $10::text IS NULL THEN NULL ELSE now() END, \
                   CASE WHEN $10::text IS NULL THEN NULL ELSE 'policy: ' || $10::text || ' wins' END)",
                self.s()
            ))
            .await
            .map_err(|e| self.state_error("logging conflicts", e))?;
        for c in conflicts {
            let winner = c.winner.map(|w| w.as_str());
            tx.execute(
                &st,
                &[
                    &entity,
                    &c.crm_key,
                    &c.external_key,
                    &c.field,
                    &c.base.as_ref().map(to_json),
                    &to_json(&c.crm),
                    &to_json(&c.external),
                    &c.crm_changed_at,
                    &c.external_changed_at,
                    &winner,
                    &run,
                ],
            )
            .await
            .map_err(|e| self.state_error("logging conflicts", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| self.state_error("logging conflicts", e))
    }

    async fn open_conflicts(
        &self,
        entity: &str,
        crm_keys: Option<&[String]>,
    ) -> Result<Vec<ConflictInfo>, EndpointError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts \
                     WHERE entity = $1 AND resolved_at IS NULL \
                       AND ($2::text[] IS NULL OR crm_key = ANY($2)) ORDER BY conflict_id",
                    self.s()
                ),
                &[&entity, &crm_keys],
            )
            .await
            .map_err(|e| self.state_error("reading open conflicts", e))?;
        rows.iter().map(conflict_from_row).collect()
    }

    async fn conflict(&self, id: i64) -> Result<Option<ConflictInfo>, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts WHERE conflict_id = $1",
                    self.s()
                ),
                &[&id],
            )
            .await
            .map_err(|e| self.state_error("reading a conflict", e))?;
        row.as_ref().map(conflict_from_row).transpose()
    }

    async fn close_conflict(&self, id: i64, resolution: &str) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "UPDATE {}.conflicts SET resolved_at = now(), resolution = $2 \
                 WHERE conflict_id = $1 AND resolved_at IS NULL",
                self.s()
            ),
            &[&id, &resolution],
        )
        .await
        .map_err(|e| self.state_error("closing a conflict", e))?;
        Ok(())
    }

    async fn shadow_layout(&self, entity: &str, fields: &[String]) -> Result<i32, EndpointError> {
        let mut conn = self.conn().await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| self.state_error("starting a transaction", e))?;
        let s = self.s();
        let fields = fields.to_vec();
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('crmsync-layout'), hashtext($1))",
            &[&entity],
        )
        .await
        .map_err(|e| self.state_error("locking the shadow layouts", e))?;
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
            .map_err(|e| self.state_error("registering a shadow layout", e))?
            .get(0);
        tx.commit()
            .await
            .map_err(|e| self.state_error("registering a shadow layout", e))?;
        if let Ok(mut m) = self.layouts.lock() {
            m.insert((entity.to_string(), layout), std::sync::Arc::new(fields));
        }
        Ok(layout)
    }

    async fn has_links(&self, entity: &str) -> Result<bool, EndpointError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.links WHERE entity = $1)",
            self.s()
        );
        conn.query_one(&sql, &[&entity])
            .await
            .map(|r| r.get(0))
            .map_err(|e| self.state_error("looking for links", e))
    }

    async fn deletes_checked(
        &self,
        entity: &str,
        within: std::time::Duration,
    ) -> Result<Option<String>, EndpointError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT fingerprint FROM {}.deletes_checked \
             WHERE entity = $1 AND checked_at > now() - make_interval(secs => $2)",
            self.s()
        );
        conn.query_opt(&sql, &[&entity, &within.as_secs_f64()])
            .await
            .map(|r| r.map(|r| r.get(0)))
            .map_err(|e| self.state_error("reading the last hard-delete check", e))
    }

    async fn set_deletes_checked(
        &self,
        entity: &str,
        fingerprint: &str,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        let sql = format!(
            "INSERT INTO {}.deletes_checked (entity, fingerprint) VALUES ($1, $2) \
             ON CONFLICT (entity) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                 checked_at = now()",
            self.s()
        );
        conn.execute(&sql, &[&entity, &fingerprint])
            .await
            .map(|_| ())
            .map_err(|e| self.state_error("recording the hard-delete check", e))
    }

    async fn forget_deletes_checked(&self, entity: &str) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        let sql = format!("DELETE FROM {}.deletes_checked WHERE entity = $1", self.s());
        conn.execute(&sql, &[&entity])
            .await
            .map(|_| ())
            .map_err(|e| self.state_error("forgetting the hard-delete check", e))
    }

    async fn live_links(&self, entity: &str) -> Result<Vec<(String, String)>, EndpointError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT crm_key, external_key FROM {}.links WHERE entity = $1 AND NOT deleted",
                    self.s()
                ),
                &[&entity],
            )
            .await
            .map_err(|e| self.state_error("reading links", e))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn links_gone_from(
        &self,
        entity: &str,
        table: &crate::endpoint::TableInfo,
        key: &str,
    ) -> Result<GoneLinks, EndpointError> {
        // Keys compare as text, the form links store. A hash anti-join
        // reads each side once; a merge join would sort the whole table's
        // keys by their text first, twice as slow at a million rows. The
        // plan's cost estimate calls for JIT compilation, which costs more
        // than it saves here (0.53 s -> 0.42 s without, at a million).
        let gone_sql = format!(
            "SELECT l.crm_key, l.external_key FROM {s}.links l \
             WHERE l.entity = $1 AND NOT l.deleted \
               AND NOT EXISTS (SELECT 1 FROM {t} x WHERE x.{k}::text = l.external_key)",
            s = self.s(),
            t = super::qualified(table),
            k = quote(key),
        );
        let count_sql = format!(
            "SELECT count(*) FROM {}.links WHERE entity = $1 AND NOT deleted",
            self.s()
        );
        let mut conn = self.conn().await?;
        let fail = |e| self.state_error("looking for links whose external row is gone", e);
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(fail)?;
        tx.batch_execute("SET LOCAL enable_mergejoin = off; SET LOCAL jit = off")
            .await
            .map_err(fail)?;
        let gone: Vec<(String, String)> = tx
            .query(&gone_sql, &[&entity])
            .await
            .map_err(fail)?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
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

    async fn checkpoint(
        &self,
        entity: &str,
        direction: &str,
    ) -> Result<Option<Checkpoint>, EndpointError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT snapshot_ts, last_key, rows_done, finished_at IS NOT NULL, insert_only \
                     FROM {}.backfill_checkpoints WHERE entity = $1 AND direction = $2",
                    self.s()
                ),
                &[&entity, &direction],
            )
            .await
            .map_err(|e| self.state_error("reading the backfill checkpoint", e))?;
        let Some(r) = row else { return Ok(None) };
        let last_key: Option<serde_json::Value> = r.get(1);
        Ok(Some(Checkpoint {
            snapshot_ts: from_json(r.get(0))?,
            last_key: last_key.map(from_json).transpose()?,
            rows_done: r.get(2),
            finished: r.get(3),
            insert_only: r.get(4),
        }))
    }

    async fn save_checkpoint(
        &self,
        entity: &str,
        direction: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        save_checkpoint_in(&*conn, &self.state_schema, entity, direction, checkpoint)
            .await
            .map_err(|e| self.state_error("saving the backfill checkpoint", e))
    }

    async fn clear_checkpoint(&self, entity: &str, direction: &str) -> Result<(), EndpointError> {
        let conn = self.conn().await?;
        conn.execute(
            &format!(
                "DELETE FROM {}.backfill_checkpoints WHERE entity = $1 AND direction = $2",
                self.s()
            ),
            &[&entity, &direction],
        )
        .await
        .map_err(|e| self.state_error("forgetting the backfill checkpoint", e))?;
        Ok(())
    }
}
