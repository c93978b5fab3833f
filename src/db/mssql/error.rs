//! How SQL Server errors are classified and reported: what is worth
//! retrying, which errors mean a refused row or a missing object, and the
//! scrubbing that keeps row values out of messages.
//!
//! Error messages: SQL Server's texts for refused rows can quote the row's
//! data ("The duplicate key value is (…)", "Conversion failed when
//! converting the nvarchar value '…'"). An error is therefore reported as
//! its number, severity and only the first sentence of the server's text,
//! and for the errors whose first sentence itself quotes a value (245, 220,
//! 8115) a fixed text instead. The number is enough to look the rest up.

use crate::db::EndpointError;

/// A SQL Server error as crmsync reports it (see the module docs): never
/// the row data some server messages quote.
#[derive(Debug)]
pub struct DbFailure(String);

impl std::fmt::Display for DbFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbFailure {}

/// Errors whose first sentence quotes the offending value.
fn value_quoting_text(code: u32) -> Option<&'static str> {
    match code {
        245 => Some("Conversion failed when converting a value to the column's data type."),
        220 | 8115 => Some("Arithmetic overflow: a value does not fit the column's data type."),
        _ => None,
    }
}

fn first_sentence(msg: &str) -> &str {
    match msg.find(". ") {
        Some(i) => &msg[..=i],
        None => msg,
    }
}

impl From<&tiberius::error::Error> for DbFailure {
    fn from(e: &tiberius::error::Error) -> DbFailure {
        match e {
            tiberius::error::Error::Server(t) => {
                let text =
                    value_quoting_text(t.code()).unwrap_or_else(|| first_sentence(t.message()));
                DbFailure(format!(
                    "SQL Server error {} (severity {}): {text}",
                    t.code(),
                    t.class()
                ))
            }
            other => DbFailure(other.to_string()),
        }
    }
}

/// Error numbers meaning the data was refused, not the statement.
const REFUSED_ROW: [u32; 10] = [2627, 2601, 547, 515, 2628, 8152, 245, 8114, 220, 8115];

/// User-defined errors (`THROW`, `RAISERROR` with a message of its own)
/// start here: how a validation trigger refuses a row.
const FIRST_USER_ERROR: u32 = 50000;

fn refuses_row(code: u32) -> bool {
    REFUSED_ROW.contains(&code) || code >= FIRST_USER_ERROR
}

fn server_code(e: &tiberius::error::Error) -> Option<u32> {
    match e {
        tiberius::error::Error::Server(t) => Some(t.code()),
        _ => None,
    }
}

/// The one place that decides what is worth retrying on SQL Server:
/// deadlock victims, lock timeouts and dropped connections.
fn is_retryable(e: &tiberius::error::Error) -> bool {
    match e {
        tiberius::error::Error::Server(t) => matches!(t.code(), 1205 | 1222 | 40001 | 40613),
        tiberius::error::Error::Io { .. } => true,
        _ => false,
    }
}

pub fn query_failure(side: &'static str, what: String, e: tiberius::error::Error) -> EndpointError {
    let code = server_code(&e);
    EndpointError::Query {
        side,
        what,
        retryable: is_retryable(&e),
        missing_object: matches!(code, Some(208 | 207)),
        refused_row: code.is_some_and(refuses_row),
        source: Box::new(DbFailure::from(&e)),
    }
}

pub fn pool_failure(
    side: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> EndpointError {
    EndpointError::Query {
        side,
        what: "getting a connection from the pool".into(),
        retryable: true,
        missing_object: false,
        refused_row: false,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data refused (constraints, conversions, a trigger's own error) is a
    /// refused row; a missing object or a deadlock is not.
    #[test]
    fn user_errors_and_constraints_refuse_a_row() {
        for code in [547, 2627, 8152, 50000, 50123] {
            assert!(refuses_row(code), "{code}");
        }
        for code in [208, 1205, 18456, 3609] {
            assert!(!refuses_row(code), "{code}");
        }
    }

    #[test]
    fn messages_keep_no_row_data() {
        let dup = "Violation of PRIMARY KEY constraint 'PK_X'. Cannot insert duplicate key \
                   in object 'dbo.X'. The duplicate key value is (secret).";
        assert_eq!(
            first_sentence(dup),
            "Violation of PRIMARY KEY constraint 'PK_X'."
        );
        assert!(value_quoting_text(245).is_some());
    }
}
