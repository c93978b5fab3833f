//! The stand-in's test suite: one binary, one module per area.

mod support;

// TDS protocol: login, batches, RPC, types, transactions.
mod protocol;

// SQL Server semantics that replicators depend on.
mod semantics;

// The stand-in as a program.
mod binary;

// Pools and bulk loads, as crmsync uses tiberius.
mod clients;

// Cross-checks with FreeTDS tsql and python-tds.
mod crosscheck;

// Queries shaped like a sync endpoint's.
mod queries;
