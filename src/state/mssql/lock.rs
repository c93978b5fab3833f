//! The run lock on SQL Server: an exclusive application lock
//! (`sp_getapplock`) owned by the session of a connection of its own, held
//! for the length of a run. SQL Server releases a session's locks when its
//! connection closes, so a run that dies never leaves the lock behind.

use super::{Arg, MsStore};
use crate::db::mssql::TdsClient;
use crate::db::EndpointError;
use crate::state::LockGuard;
use async_trait::async_trait;

/// `sp_getapplock`'s `@Resource` is an nvarchar(255).
const MAX_RESOURCE: usize = 255;

/// The application lock's name: `kind:schema:name`, or, when that would
/// not fit `@Resource`, its start and a hash of the whole.
pub(super) fn resource(kind: &str, schema: &str, name: &str) -> String {
    let full = if name.is_empty() {
        format!("{kind}:{schema}")
    } else {
        format!("{kind}:{schema}:{name}")
    };
    if full.encode_utf16().count() <= MAX_RESOURCE {
        return full;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(full.as_bytes());
    let head: String = full.chars().take(200).collect();
    format!("{head}#{hash:016x}")
}

/// `sp_getapplock` for an exclusive session lock, waiting up to
/// `timeout_ms` (0: not at all); its return code: 0 or 1 granted, -1 timed
/// out, lower a failure.
pub(super) async fn get_applock(
    c: &mut TdsClient,
    resource: &str,
    timeout_ms: i64,
) -> Result<i64, tiberius::error::Error> {
    let rows = super::query(
        c,
        "DECLARE @r int; \
         EXEC @r = sp_getapplock @Resource = @P1, @LockMode = 'Exclusive', \
              @LockOwner = 'Session', @LockTimeout = @P2; \
         SELECT @r",
        &[Arg::text(resource), Arg::Int(Some(timeout_ms))],
    )
    .await?;
    Ok(super::int_at(&rows, 0).unwrap_or(-999))
}

/// Holds the dedicated connection whose session owns the lock.
struct MsLock {
    client: TdsClient,
    resource: String,
}

#[async_trait]
impl crate::state::HeldLock for MsLock {
    async fn release(mut self: Box<Self>) {
        // Errors here only mean the connection is already gone, which
        // releases the lock too.
        let _ = super::query(
            &mut self.client,
            "EXEC sp_releaseapplock @Resource = @P1, @LockOwner = 'Session'",
            &[Arg::text(&self.resource)],
        )
        .await;
    }
}

/// Takes the run lock of `entity`, or `None` if another run holds it.
pub(super) async fn take(
    store: &MsStore,
    entity: &str,
) -> Result<Option<LockGuard>, EndpointError> {
    let mut client = store.db.session("cannot open the lock connection").await?;
    let resource = resource("crmsync", &store.schema, entity);
    let code = get_applock(&mut client, &resource, 0)
        .await
        .map_err(|e| store.state_error("taking the run lock", e))?;
    match code {
        0 | 1 => Ok(Some(LockGuard(Box::new(MsLock { client, resource })))),
        -1 => Ok(None),
        other => Err(EndpointError::Schema(format!(
            "taking the run lock of entity {entity:?} failed: sp_getapplock returned {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_sp_getapplock() {
        assert_eq!(
            resource("crmsync", "crmsync", "supplier"),
            "crmsync:crmsync:supplier"
        );
        let long = "x".repeat(400);
        let r = resource("crmsync", "crmsync", &long);
        assert!(r.encode_utf16().count() <= MAX_RESOURCE, "{r}");
        assert_ne!(r, resource("crmsync", "crmsync", &format!("{long}y")));
    }
}
