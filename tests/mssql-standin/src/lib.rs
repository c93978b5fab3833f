//! A SQL Server stand-in for crmsync's tests: TDS 7.4 in front of PostgreSQL.
//!
//! Start it with [`start`] on a free loopback port; point tiberius at it with
//! SQL authentication. See README.md for what it emulates and what it does not.

pub mod batch;
pub mod catalog;
pub mod ddl;
pub mod error;
pub mod pgvalue;
pub mod server;
pub mod session;
pub mod sqltype;
pub mod tds;
pub mod tls;
pub mod translate;
pub mod views;

pub use error::{Error, SqlError};
pub use server::{start, Config, StandIn};
