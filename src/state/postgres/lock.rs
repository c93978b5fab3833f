//! The run lock: a session-level advisory lock per entity, held on a
//! connection of its own for the length of a run.

use super::PgStore;
use crate::db::EndpointError;
use crate::state::LockGuard;
use async_trait::async_trait;

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

/// Takes the run lock of `entity`, or `None` if another run holds it.
pub(super) async fn take(
    store: &PgStore,
    entity: &str,
) -> Result<Option<LockGuard>, EndpointError> {
    let client = store.db.session("cannot open the lock connection").await?;
    let key = format!("{}:{entity}", store.schema);
    let got: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('crmsync'), hashtext($1))",
            &[&key],
        )
        .await
        .map_err(|e| store.state_error("taking the run lock", e))?
        .get(0);
    Ok(got.then(|| LockGuard(Box::new(PgLock { client, key }))))
}
