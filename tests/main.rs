//! crmsync's integration tests: one binary, one module per area, each test
//! against fresh databases on a throwaway PostgreSQL.

// `crmsync backfill`: bulk copy, linking, resume, progress output.
mod backfill;
