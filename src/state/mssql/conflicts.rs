//! The conflict log on SQL Server: same-field clashes as met, and their
//! resolution.

use super::{int, opt_json, placeholders, text, to_json, utc, Arg, MsStore, MAX_PARAMS};
use crate::db::EndpointError;
use crate::plan::Side;
use crate::state::{ConflictInfo, ConflictRecord};
use crate::value::Value;

const CONFLICT_COLUMNS: &str = "conflict_id, entity, crm_key, external_key, field, base_value, \
     crm_value, external_value, crm_changed_at, external_changed_at, winner, run_id, created_at, \
     resolved_at, resolution";

fn conflict_from_row(r: &[Value]) -> Result<ConflictInfo, EndpointError> {
    Ok(ConflictInfo {
        id: int(&r[0]).unwrap_or(0),
        entity: text(&r[1]).unwrap_or_default(),
        record: ConflictRecord {
            crm_key: text(&r[2]).unwrap_or_default(),
            external_key: text(&r[3]).unwrap_or_default(),
            field: text(&r[4]).unwrap_or_default(),
            base: opt_json(&r[5])?,
            crm: opt_json(&r[6])?.unwrap_or(Value::Null),
            external: opt_json(&r[7])?.unwrap_or(Value::Null),
            crm_changed_at: utc(&r[8]),
            external_changed_at: utc(&r[9]),
            winner: match text(&r[10]).as_deref() {
                Some("crm") => Some(Side::Crm),
                Some("external") => Some(Side::External),
                _ => None,
            },
        },
        run: int(&r[11]),
        created_at: utc(&r[12]).unwrap_or_default(),
        resolved_at: utc(&r[13]),
        resolution: text(&r[14]),
    })
}

/// Logs conflicts; those with a winner are logged as already resolved.
pub(super) async fn record(
    store: &MsStore,
    entity: &str,
    run: i64,
    conflicts: &[ConflictRecord],
) -> Result<(), EndpointError> {
    if conflicts.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {}.conflicts (entity, crm_key, external_key, field, base_value, \
           crm_value, external_value, crm_changed_at, external_changed_at, winner, run_id, \
           resolved_at, resolution) \
         VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, \
           CASE WHEN @P12 IS NULL THEN NULL ELSE SYSUTCDATETIME() END, @P12)",
        store.s()
    );
    let fail = |e| store.state_error("logging conflicts", e);
    let mut c = store.db.conn().await?;
    super::batch(&mut c, crate::db::mssql::BEGIN)
        .await
        .map_err(fail)?;
    let result = async {
        for r in conflicts {
            let winner = r.winner.map(|w| w.as_str().to_string());
            let resolution = winner.as_ref().map(|w| format!("policy: {w} wins"));
            super::exec(
                &mut c,
                &sql,
                &[
                    Arg::text(entity),
                    Arg::text(&r.crm_key),
                    Arg::text(&r.external_key),
                    Arg::text(&r.field),
                    Arg::Text(r.base.as_ref().map(to_json)),
                    Arg::Text(Some(to_json(&r.crm))),
                    Arg::Text(Some(to_json(&r.external))),
                    Arg::Time(r.crm_changed_at.map(|t| t.naive_utc())),
                    Arg::Time(r.external_changed_at.map(|t| t.naive_utc())),
                    Arg::Text(winner),
                    Arg::Int(Some(run)),
                    Arg::Text(resolution),
                ],
            )
            .await?;
        }
        Ok(())
    }
    .await;
    let end = if result.is_ok() {
        "COMMIT TRANSACTION"
    } else {
        "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION"
    };
    let ended = super::batch(&mut c, end).await;
    result.map_err(fail)?;
    ended.map_err(fail)
}

/// Open conflicts of `entity` by CRM key (all of them when `crm_keys` is
/// `None`), in the order they were logged.
pub(super) async fn open(
    store: &MsStore,
    entity: &str,
    crm_keys: Option<&[String]>,
) -> Result<Vec<ConflictInfo>, EndpointError> {
    let base = format!(
        "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts WHERE entity = @P1 AND resolved_at IS NULL",
        store.s()
    );
    let mut out = Vec::new();
    match crm_keys {
        None => {
            let rows = store
                .rows(
                    &format!("{base} ORDER BY conflict_id"),
                    &[Arg::text(entity)],
                    "reading open conflicts",
                )
                .await?;
            for r in &rows {
                out.push(conflict_from_row(r)?);
            }
        }
        Some(keys) => {
            for chunk in keys.chunks(MAX_PARAMS) {
                let mut args = vec![Arg::text(entity)];
                args.extend(chunk.iter().map(|k| Arg::text(k)));
                let sql = format!("{base} AND crm_key IN ({})", placeholders(2, chunk.len()));
                for r in &store.rows(&sql, &args, "reading open conflicts").await? {
                    out.push(conflict_from_row(r)?);
                }
            }
            out.sort_by_key(|c| c.id);
        }
    }
    Ok(out)
}

/// Every conflict of `entity`, open or settled, logged at or after
/// `since` if given, oldest first.
pub(super) async fn all(
    store: &MsStore,
    entity: &str,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<ConflictInfo>, EndpointError> {
    let rows = store
        .rows(
            &format!(
                "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts \
                 WHERE entity = @P1 AND (@P2 IS NULL OR created_at >= @P2) ORDER BY conflict_id",
                store.s()
            ),
            &[Arg::text(entity), Arg::Time(since.map(|t| t.naive_utc()))],
            "reading conflicts",
        )
        .await?;
    rows.iter().map(|r| conflict_from_row(r)).collect()
}

/// One conflict by id.
pub(super) async fn one(store: &MsStore, id: i64) -> Result<Option<ConflictInfo>, EndpointError> {
    let rows = store
        .rows(
            &format!(
                "SELECT {CONFLICT_COLUMNS} FROM {}.conflicts WHERE conflict_id = @P1",
                store.s()
            ),
            &[Arg::Int(Some(id))],
            "reading a conflict",
        )
        .await?;
    rows.first().map(|r| conflict_from_row(r)).transpose()
}

/// Closes an open conflict with `resolution`.
pub(super) async fn close(store: &MsStore, id: i64, resolution: &str) -> Result<(), EndpointError> {
    store
        .exec(
            &format!(
                "UPDATE {}.conflicts SET resolved_at = SYSUTCDATETIME(), resolution = @P2 \
                 WHERE conflict_id = @P1 AND resolved_at IS NULL",
                store.s()
            ),
            &[Arg::Int(Some(id)), Arg::text(resolution)],
            "closing a conflict",
        )
        .await?;
    Ok(())
}
