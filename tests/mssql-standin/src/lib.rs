//! A SQL Server stand-in for crmsync's tests: TDS 7.4 in front of PostgreSQL.
