//! crmsync library core.
