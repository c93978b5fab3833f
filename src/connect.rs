//! How crmsync connects to a side of the plan: its endpoint, and, on the
//! state side, the state store on that endpoint's own pool. The one place
//! that decides it, for `Engine::connect` and `crmsync status` alike.

use crate::endpoint::mssql::{MssqlDatabase, MssqlEndpoint};
use crate::endpoint::postgres::{PgDatabase, PgEndpoint};
use crate::endpoint::{Endpoint, EndpointError};
use crate::plan::{DbKind, Plan, Side};
use crate::state::mssql::MsStore;
use crate::state::postgres::PgStore;
use crate::state::StateStore;
use std::sync::Arc;

/// A side of the plan, connected.
pub struct Connected {
    pub endpoint: Arc<dyn Endpoint>,
    /// The database behind the endpoint, where a state store can live.
    database: Database,
}

/// The database behind a connected side.
enum Database {
    Postgres(Box<PgDatabase>),
    Mssql(MssqlDatabase),
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("endpoint", &self.endpoint.describe())
            .finish()
    }
}

impl Connected {
    /// The state store in `schema` of this side's database, on the
    /// endpoint's pool.
    pub fn state_store(&self, schema: &str) -> Arc<dyn StateStore> {
        match &self.database {
            Database::Postgres(db) => Arc::new(PgStore::new((**db).clone(), schema)),
            Database::Mssql(db) => Arc::new(MsStore::new(db.clone(), schema)),
        }
    }
}

/// A side's name in messages.
fn side_name(side: Side) -> &'static str {
    match side {
        Side::Crm => "CRM",
        Side::External => "external",
    }
}

/// Connects to `side`'s database as the plan says (checking that the
/// server answers and the login works).
pub async fn side(plan: &Plan, side: Side) -> Result<Connected, EndpointError> {
    let conn = plan.connection(side);
    let name = side_name(side);
    Ok(match conn.kind {
        DbKind::Postgres => {
            let db = PgDatabase::connect(name, conn).await?;
            Connected {
                endpoint: Arc::new(PgEndpoint::new(db.clone())),
                database: Database::Postgres(Box::new(db)),
            }
        }
        DbKind::Mssql => {
            let endpoint = MssqlEndpoint::connect(name, conn).await?;
            Connected {
                database: Database::Mssql(endpoint.database()),
                endpoint: Arc::new(endpoint),
            }
        }
    })
}
