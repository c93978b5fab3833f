//! The state schema's migrations: `MIGRATIONS[n - 1]` brings a schema
//! from version n - 1 to n, all in one transaction under an advisory lock.

use super::PgStore;
use crate::db::EndpointError;
use crate::state::SCHEMA_VERSION;

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
    // Keys in their compact, ordered binary form (`state::keys`), made by
    // SQL functions of the state schema that stay there for the
    // hard-delete check and for anyone reading the links.
    r#"
{key_functions}
ALTER TABLE {s}.links
    ALTER COLUMN crm_key TYPE bytea USING {s}.key_bytes(crm_key::text),
    ALTER COLUMN external_key TYPE bytea USING {s}.key_bytes(external_key::text);
"#,
    // Link blocks: the links a backfill creates, a heap page of them to a
    // row, in key order (`blocks`). A row of `links` for the same CRM key
    // overrides a block's entry; `all_links` shows both as one table.
    r#"
CREATE TABLE {s}.link_blocks (
    entity        text NOT NULL,
    crm_lo        bigint NOT NULL,
    crm_hi        bigint NOT NULL,
    external_lo   bigint NOT NULL,
    external_hi   bigint NOT NULL,
    crm_keys      bigint[] NOT NULL,
    external_keys bigint[] NOT NULL,
    shadows       bytea[] NOT NULL
);
-- A block fits a heap page and stays in it (a lookup reads one page, no
-- TOAST); its arrays are left out of statistics, which would read every
-- element of every block.
ALTER TABLE {s}.link_blocks
    ALTER COLUMN crm_keys SET STATISTICS 0, ALTER COLUMN external_keys SET STATISTICS 0,
    ALTER COLUMN shadows SET STORAGE EXTERNAL, ALTER COLUMN shadows SET STATISTICS 0,
    SET (toast_tuple_target = 8160);
-- The keys of a block share a bucket on each side: 64 CRM keys, 128
-- external keys (`blocks::CRM_SHIFT`, `EXTERNAL_SHIFT`).
CREATE INDEX link_blocks_crm ON {s}.link_blocks (entity, (crm_lo >> 6));
CREATE INDEX link_blocks_external ON {s}.link_blocks (entity, (external_lo >> 7));
CREATE VIEW {s}.all_links AS
SELECT entity, crm_key, external_key, shadow, deleted FROM {s}.links
UNION ALL
SELECT b.entity, {s}.key_bytes(u.crm_key), {s}.key_bytes(u.external_key), u.shadow, false
  FROM {s}.link_blocks b
 CROSS JOIN LATERAL unnest(b.crm_keys, b.external_keys, b.shadows)
       AS u(crm_key, external_key, shadow)
 WHERE NOT EXISTS (SELECT 1 FROM {s}.links l
                    WHERE l.entity = b.entity AND l.crm_key = {s}.key_bytes(u.crm_key));
"#,
];

/// The versions whose migration only rewrites existing rows.
const DATA_FIXES: &[usize] = &[6];

// Every migration raises the version by one.
const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

/// Creates or upgrades the state schema.
pub(super) async fn run(store: &PgStore) -> Result<(), EndpointError> {
    let mut conn = store.conn().await?;
    let tx = conn
        .transaction()
        .await
        .map_err(|e| store.state_error("starting the migration", e))?;
    let s = store.s();
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('crmsync-migrate'));
         CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (version int NOT NULL);"
    ))
    .await
    .map_err(|e| store.state_error("creating the state schema", e))?;
    let version: i32 = tx
        .query_opt(&format!("SELECT version FROM {s}.schema_version"), &[])
        .await
        .map_err(|e| store.state_error("reading the state schema version", e))?
        .map(|r| r.get(0))
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(EndpointError::Schema(format!(
            "the state schema {} is at version {version}, newer than this crmsync \
             understands ({SCHEMA_VERSION}); upgrade crmsync",
            store.schema
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        // A new schema has no rows for a data fix to fix.
        if version == 0 && DATA_FIXES.contains(&(i + 1)) {
            continue;
        }
        let m = m.replace("{key_functions}", crate::state::keys::SQL_FUNCTIONS);
        tx.batch_execute(&m.replace("{s}", &s)).await.map_err(|e| {
            store.state_error(
                &format!("migrating the state schema to version {}", i + 1),
                e,
            )
        })?;
    }
    if version < SCHEMA_VERSION {
        tx.execute(&format!("DELETE FROM {s}.schema_version"), &[])
            .await
            .map_err(|e| store.state_error("recording the state schema version", e))?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_version VALUES ($1)"),
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(|e| store.state_error("recording the state schema version", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| store.state_error("committing the migration", e))
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::state::postgres::blocks::{CRM_SHIFT, EXTERNAL_SHIFT};

    #[test]
    fn the_block_indexes_bucket_keys_as_the_lookups_do() {
        let m = MIGRATIONS[8];
        assert!(
            m.contains(&format!("(entity, (crm_lo >> {CRM_SHIFT}))")),
            "{m}"
        );
        assert!(
            m.contains(&format!("(entity, (external_lo >> {EXTERNAL_SHIFT}))")),
            "{m}"
        );
    }
}
