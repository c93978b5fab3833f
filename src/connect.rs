//! How crmsync connects to a side of the plan: its endpoint, and, on the
//! state side, the state store on that endpoint's own pool. The one place
//! that decides it, for `Engine::connect` and `crmsync status` alike.

use crate::endpoint::mssql::MssqlEndpoint;
use crate::endpoint::postgres::{PgDatabase, PgEndpoint};
use crate::endpoint::{Endpoint, EndpointError};
use crate::plan::{DbKind, Plan, Side};
use crate::state::postgres::PgStore;
use crate::state::StateStore;
use std::sync::Arc;

/// A side of the plan, connected.
pub struct Connected {
    pub endpoint: Arc<dyn Endpoint>,
    /// The database behind the endpoint when a state store can live in it.
    postgres: Option<PgDatabase>,
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
    /// endpoint's pool; `None` for a SQL Server database, where crmsync
    /// keeps no state.
    pub fn state_store(&self, schema: &str) -> Option<Arc<dyn StateStore>> {
        self.postgres
            .as_ref()
            .map(|db| Arc::new(PgStore::new(db.clone(), schema)) as Arc<dyn StateStore>)
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
                postgres: Some(db),
            }
        }
        DbKind::Mssql => Connected {
            endpoint: Arc::new(MssqlEndpoint::connect(name, conn).await?),
            postgres: None,
        },
    })
}
