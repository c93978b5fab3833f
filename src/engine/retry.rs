//! The one retry rule of the engine: a step whose database failure is
//! retryable (a deadlock, a serialization failure, a dropped connection:
//! [`EndpointError::is_retryable`] decides) runs again, a few times, after
//! a growing wait. Only idempotent steps are retried: a sync page (and a
//! backfill page written through the sync), a backfill's reads and the
//! link and checkpoint upserts that follow a bulk chunk, and verify's
//! repairs. A bulk chunk's own transaction is not: were its commit lost in
//! transit, running it again could insert its rows twice; a rerun resumes
//! from its checkpoint instead.

use super::EngineError;
use crate::endpoint::EndpointError;
use std::future::Future;
use std::time::Duration;

/// How often a step runs again after a retryable failure.
const RETRIES: u32 = 3;
/// The first wait before a step runs again (doubled each time).
const FIRST_WAIT: Duration = Duration::from_millis(200);

/// An error that knows whether running the step again may succeed.
pub(super) trait Retryable: std::error::Error {
    fn retryable(&self) -> bool;
}

impl Retryable for EndpointError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}

impl Retryable for EngineError {
    fn retryable(&self) -> bool {
        matches!(self, EngineError::Endpoint(e) if e.is_retryable())
    }
}

/// The attempts of one step.
pub(super) struct Retry {
    retries: u32,
    first_wait: Duration,
    attempt: u32,
}

impl Retry {
    pub(super) fn new() -> Retry {
        Retry {
            retries: RETRIES,
            first_wait: FIRST_WAIT,
            attempt: 0,
        }
    }

    /// After an attempt that ended in `r`: whether to run the step again.
    /// If so, the failure is logged (with the entity and the step, such as
    /// "the page") and the wait is over when this returns.
    pub(super) async fn again<T, E: Retryable>(
        &mut self,
        r: &Result<T, E>,
        (entity, step): (&str, &str),
    ) -> bool {
        let Err(err) = r else { return false };
        if !err.retryable() || self.attempt >= self.retries {
            return false;
        }
        self.attempt += 1;
        let wait = self.first_wait * 2u32.pow(self.attempt - 1);
        tracing::warn!(
            "entity {entity:?}: {}; retrying {step} in {wait:?} (attempt {} of {})",
            crate::causes::with_causes(err),
            self.attempt,
            self.retries
        );
        tokio::time::sleep(wait).await;
        true
    }

    /// Runs `step` until it succeeds, fails for good, or has been retried
    /// as often as the rule allows.
    pub(super) async fn run<T, E, F, Fut>(mut self, what: (&str, &str), mut step: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        loop {
            let r = step().await;
            if !self.again(&r, what).await {
                return r;
            }
        }
    }
}

/// Runs the idempotent `step` under the retry rule (see [`Retry::run`]).
pub(super) async fn retrying<T, E, F, Fut>(what: (&str, &str), step: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    Retry::new().run(what, step).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn failure(retryable: bool) -> EndpointError {
        EndpointError::Query {
            side: "external",
            what: "writing a page".into(),
            retryable,
            missing_object: false,
            refused_row: false,
            source: "deadlock detected".into(),
        }
    }

    fn quick() -> Retry {
        Retry {
            first_wait: Duration::ZERO,
            ..Retry::new()
        }
    }

    #[tokio::test]
    async fn a_retryable_failure_runs_the_step_again_until_it_succeeds() {
        let calls = Cell::new(0);
        let r = quick()
            .run(("company", "the page"), || async {
                calls.set(calls.get() + 1);
                if calls.get() < 3 {
                    Err(failure(true))
                } else {
                    Ok(calls.get())
                }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test]
    async fn other_failures_and_the_last_attempt_end_the_step() {
        let calls = Cell::new(0);
        let r: Result<(), EngineError> = quick()
            .run(("company", "the page"), || async {
                calls.set(calls.get() + 1);
                Err(EngineError::Internal("no".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.get(), 1, "not retryable: one attempt");

        let calls = Cell::new(0);
        let r: Result<(), EndpointError> = quick()
            .run(("company", "the page"), || async {
                calls.set(calls.get() + 1);
                Err(failure(true))
            })
            .await;
        assert!(r.unwrap_err().is_retryable());
        assert_eq!(
            calls.get(),
            1 + RETRIES,
            "the first attempt and every retry"
        );

        let r: Result<(), EngineError> = quick()
            .run(("company", "the page"), || async {
                Err(failure(false).into())
            })
            .await;
        assert!(!r.unwrap_err().retryable());
    }
}
