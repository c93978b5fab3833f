//! crmsync's integration tests: one binary, run against real PostgreSQL
//! databases that the tests create themselves (a private throwaway
//! cluster, or the server named by CRMSYNC_TEST_PG_URL).

/// `crmsync backfill`: bulk copy, linking, resume, progress output.
mod backfill;
/// Sage CRM's phones, e-mails and addresses as columns of the ERP row:
/// read through the link tables, a child's own change carried across,
/// written back into the child and link rows by Sage's rules.
mod children;
/// Shared set-up: databases with the schema files loaded, configs,
/// in-process and binary runners, comparisons of both sides.
mod common;
/// A run killed mid-way, and lost links, converge on the next run.
mod crash;
/// Bad inputs: exit codes 1 and 2, messages, passwords kept out of output.
mod errors;
/// Keys of every type: link columns, external keys and CRM-id columns of
/// each type real installs use, both ways; `check` refusing misfits.
mod keys;
/// Sage CRM on SQL Server (the stand-in, or CRMSYNC_TEST_MSSQL_URL):
/// datetime ties across pages, Sage's system columns under both id
/// strategies, nvarchar lengths in UTF-16 units, the state side.
mod mssql;
/// Running unattended: the metrics file, the last success kept across a
/// failed run, `status --max-lag`, `runs`, `conflicts list --all`.
mod ops;
/// Related records: a child entity's keys of its parent translated
/// through the parent's links, both ways, parents first.
mod references;
/// Whole deployments end to end: the example mapping against a CRM in
/// another time zone and an ERP with triggers and foreign keys, through
/// backfill, two-way changes, deletes, a killed run, verify and status.
mod scenario;
/// Incremental sync: timestamp ties across pages, runs with nothing to
/// do, late commits, soft deletes, crm_filter, dry runs.
mod sync;
/// TLS to PostgreSQL: require with a CA file, unknown CAs, plain servers,
/// prefer's fallback, bad tls_ca_file values (a second cluster with ssl on).
mod tls;
/// Two-way sync: CRM writes by Sage's rules, merge, conflict policies,
/// the delete-ratio guard, oversize values, and a property test.
mod two_way;
/// Values that must arrive unchanged: Unicode, NULLs, maximum lengths,
/// datetime edges.
mod values;
/// Full comparison of both sides: drift reported without writing, and
/// `verify --repair` bringing both sides back in step.
mod verify;
