//! INFORMATION_SCHEMA and sys catalog views over the declared SQL Server
//! types, created in the schemas `mssql_information_schema` and `mssql_sys`
//! that the translation maps those names to.

use tokio_postgres::Client;

const VIEWS: &str = include_str!("views.sql");

pub async fn create(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(VIEWS).await
}
