//! The state schema on SQL Server: created in its final shape on first
//! use and recorded at the same version number as on PostgreSQL, under an
//! application lock so that two processes never build it at once.
//!
//! T-SQL that SQL Server 2016 accepts: keys and shadows are `varbinary`
//! (keys in `state::keys`' ordered form, compared byte by byte, whatever
//! the database's collation), values and summaries JSON text in
//! `nvarchar(max)`, times `datetime2` in UTC. Key texts kept for people
//! (rejects, conflicts) use a binary collation, so that keys differing
//! only in case stay apart.

use super::{Arg, MsStore};
use crate::db::EndpointError;
use crate::state::SCHEMA_VERSION;

/// The version a new SQL Server state schema is created at: the first
/// with the shape below (PostgreSQL reached it through migrations).
const CREATED_AT: i32 = 8;

/// The state schema at version `CREATED_AT`; `{s}` stands for the quoted
/// schema name. Index keys stay within SQL Server's limits (900 bytes for
/// a clustered index, 1,700 for the others).
const CREATE: &str = r#"
CREATE TABLE {s}.runs (
    run_id      bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,
    entity      nvarchar(200) NOT NULL,
    command     nvarchar(40) NOT NULL,
    started_at  datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    finished_at datetime2(3) NULL,
    outcome     nvarchar(200) NULL,
    summary     nvarchar(max) NULL
);
CREATE INDEX runs_entity ON {s}.runs (entity, run_id);
CREATE TABLE {s}.watermarks (
    entity     nvarchar(200) NOT NULL,
    side       nvarchar(20) NOT NULL,
    ts         nvarchar(max) NOT NULL,
    [key]      nvarchar(max) NOT NULL,
    read_at    nvarchar(max) NULL,
    updated_at datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    PRIMARY KEY (entity, side)
);
CREATE TABLE {s}.links (
    entity       nvarchar(200) NOT NULL,
    crm_key      varbinary(450) NOT NULL,
    external_key varbinary(1200) NOT NULL,
    shadow       varbinary(max) NOT NULL,
    deleted      bit NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, crm_key)
);
CREATE UNIQUE INDEX links_external_key ON {s}.links (entity, external_key);
CREATE TABLE {s}.rejects (
    entity      nvarchar(200) NOT NULL,
    side        nvarchar(20) NOT NULL,
    [key]       nvarchar(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    reason      nvarchar(max) NOT NULL,
    first_run   bigint NULL,
    last_run    bigint NULL,
    first_seen  datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    last_seen   datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    resolved_at datetime2(3) NULL,
    PRIMARY KEY NONCLUSTERED (entity, side, [key])
);
CREATE TABLE {s}.conflicts (
    conflict_id         bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,
    entity              nvarchar(200) NOT NULL,
    crm_key             nvarchar(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    external_key        nvarchar(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    field               nvarchar(400) NOT NULL,
    base_value          nvarchar(max) NULL,
    crm_value           nvarchar(max) NULL,
    external_value      nvarchar(max) NULL,
    crm_changed_at      datetime2(7) NULL,
    external_changed_at datetime2(7) NULL,
    winner              nvarchar(20) NULL,
    run_id              bigint NULL,
    created_at          datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    resolved_at         datetime2(3) NULL,
    resolution          nvarchar(400) NULL
);
CREATE INDEX conflicts_open ON {s}.conflicts (entity) WHERE resolved_at IS NULL;
CREATE TABLE {s}.backfill_checkpoints (
    entity      nvarchar(200) NOT NULL,
    direction   nvarchar(40) NOT NULL,
    snapshot_ts nvarchar(max) NOT NULL,
    last_key    nvarchar(max) NULL,
    rows_done   bigint NOT NULL DEFAULT 0,
    started_at  datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    updated_at  datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME(),
    finished_at datetime2(3) NULL,
    insert_only bit NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, direction)
);
CREATE TABLE {s}.shadow_layouts (
    entity nvarchar(200) NOT NULL,
    layout int NOT NULL,
    fields nvarchar(max) NOT NULL,
    PRIMARY KEY (entity, layout)
);
CREATE TABLE {s}.deletes_checked (
    entity      nvarchar(200) NOT NULL PRIMARY KEY,
    fingerprint nvarchar(max) NOT NULL,
    checked_at  datetime2(3) NOT NULL DEFAULT SYSUTCDATETIME()
);
"#;

/// `UPGRADES[n]` brings a SQL Server state schema from version
/// `CREATED_AT + n` to the next.
const UPGRADES: &[&str] = &[
    // 9: link blocks, which only the PostgreSQL store keeps.
    "",
];

// Every upgrade raises the version by one, to the PostgreSQL store's.
const _: () = assert!(CREATED_AT + UPGRADES.len() as i32 == SCHEMA_VERSION);

/// How long a migration waits for another process's to finish.
const MIGRATE_WAIT_MS: i64 = 60_000;

/// The application lock that serializes migrations of `schema`.
pub(super) fn migrate_lock(schema: &str) -> String {
    super::lock::resource("crmsync-migrate", schema, "")
}

/// Creates or upgrades the state schema.
pub(super) async fn run(store: &MsStore) -> Result<(), EndpointError> {
    let fail = |what: &str, e| store.state_error(what, e);
    // A connection of its own: the lock it takes goes with it, whatever
    // happens below.
    let mut c = store.db.session("opening a connection to migrate").await?;
    let lock = migrate_lock(&store.schema);
    let got = super::lock::get_applock(&mut c, &lock, MIGRATE_WAIT_MS)
        .await
        .map_err(|e| fail("locking the state schema for its migration", e))?;
    if got < 0 {
        return Err(EndpointError::Schema(format!(
            "the state schema {} is being migrated by another crmsync process (application \
             lock {lock:?} held for over a minute); run again once it has finished",
            store.schema
        )));
    }
    let s = store.s();
    let exists = super::query(
        &mut c,
        "SELECT COUNT(*) FROM sys.schemas WHERE name = @P1",
        &[Arg::text(&store.schema)],
    )
    .await
    .map_err(|e| fail("looking for the state schema", e))?;
    if super::int_at(&exists, 0) == Some(0) {
        // CREATE SCHEMA must be alone in its batch.
        super::batch(&mut c, &format!("CREATE SCHEMA {s}"))
            .await
            .map_err(|e| fail("creating the state schema", e))?;
    }
    let table = super::query(
        &mut c,
        "SELECT COUNT(*) FROM sys.tables t JOIN sys.schemas s ON s.schema_id = t.schema_id \
         WHERE s.name = @P1 AND t.name = 'schema_version'",
        &[Arg::text(&store.schema)],
    )
    .await
    .map_err(|e| fail("looking for the state schema's version", e))?;
    let version = if super::int_at(&table, 0) == Some(0) {
        0
    } else {
        let rows = super::query(
            &mut c,
            &format!("SELECT version FROM {s}.schema_version"),
            &[],
        )
        .await
        .map_err(|e| fail("reading the state schema version", e))?;
        super::int_at(&rows, 0).unwrap_or(0) as i32
    };
    if version > SCHEMA_VERSION {
        return Err(EndpointError::Schema(format!(
            "the state schema {} is at version {version}, newer than this crmsync \
             understands ({SCHEMA_VERSION}); upgrade crmsync",
            store.schema
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version != 0 && version < CREATED_AT {
        return Err(EndpointError::Schema(format!(
            "the state schema {} on SQL Server is at version {version}, which crmsync never \
             created there; drop the schema (or name another in [state] schema) and run again",
            store.schema
        )));
    }
    let mut script = String::from("SET XACT_ABORT ON; BEGIN TRANSACTION;\n");
    if version == 0 {
        script.push_str(&format!(
            "CREATE TABLE {s}.schema_version (version int NOT NULL);\n{}",
            CREATE.replace("{s}", &s)
        ));
    }
    let from = if version == 0 { CREATED_AT } else { version };
    for m in UPGRADES.iter().skip((from - CREATED_AT) as usize) {
        script.push_str(&m.replace("{s}", &s));
    }
    script.push_str(&format!(
        "DELETE FROM {s}.schema_version;\n\
         INSERT INTO {s}.schema_version (version) VALUES ({SCHEMA_VERSION});\n\
         COMMIT TRANSACTION;"
    ));
    super::batch(&mut c, &script).await.map_err(|e| {
        fail(
            &format!("migrating the state schema to version {SCHEMA_VERSION}"),
            e,
        )
    })?;
    Ok(())
}
