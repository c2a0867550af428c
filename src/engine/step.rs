//! The attempt loop shared by every step: record the attempt, run it,
//! record how it ended, and retry retryable failures with capped, jittered
//! backoff until the step's deadline (counted from its first attempt, which
//! is stored, so the deadline survives restarts).

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::{Engine, EngineError};
use crate::ledger::{now_ms, step_status, RunId};
use crate::providers::{Backoff, ProviderError};

/// A failed attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message (no secrets).
    pub message: String,
    /// Another attempt may succeed.
    pub retryable: bool,
    /// Provider-requested wait.
    pub retry_after: Option<Duration>,
}

impl StepError {
    /// An error no retry will fix.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// An error worth another attempt.
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// The stored envelope `{code, message, retryable}`.
    pub fn envelope(&self) -> Value {
        serde_json::json!({ "code": self.code, "message": self.message, "retryable": self.retryable })
    }
}

impl From<ProviderError> for StepError {
    fn from(e: ProviderError) -> Self {
        let env = e.envelope();
        Self {
            code: env.code,
            message: env.message,
            retryable: env.retryable,
            retry_after: e.retry_after(),
        }
    }
}

/// How a step ended.
pub(crate) enum Finished {
    /// With this output, at this attempt. When the loop was told not to
    /// finish the step, the attempt's end is not recorded either: the
    /// caller records both with its own write.
    Succeeded(Value, i64),
    /// For good, with this error.
    Failed(StepError),
}

const STEP_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

impl Engine {
    /// Runs `attempt` (given its 1-based number) until it succeeds, fails
    /// fatally, or `deadline` passes.
    /// Only records the step's final status (and a success's end) when
    /// `finish` is true: `decide` and `rollback` store theirs together with
    /// the decision or the ledger change.
    pub(crate) async fn attempt_loop<F, Fut>(
        &self,
        run: &RunId,
        step: &str,
        deadline: Duration,
        finish: bool,
        mut attempt: F,
    ) -> Result<Finished, EngineError>
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = Result<Value, StepError>>,
    {
        let store = self.store();
        loop {
            if self.is_lost(run) {
                return Err(EngineError::LostClaim(run.to_string()));
            }
            let (n, started) = store.begin_attempt(run, step).await?;
            let span = tracing::info_span!("step", step, attempt = n);
            let result = tracing::Instrument::instrument(attempt(n), span).await;
            match result {
                Ok(output) => {
                    if finish {
                        store.finish_attempt(run, step, n, "ok", None).await?;
                        store
                            .finish_step(run, step, step_status::SUCCEEDED, Some(&output), None)
                            .await?;
                    }
                    return Ok(Finished::Succeeded(output, n));
                }
                Err(e) => {
                    let elapsed = Duration::from_millis((now_ms() - started).max(0) as u64);
                    let wait = STEP_BACKOFF.delay((n - 1).clamp(0, 16) as u32, e.retry_after);
                    let retry = e.retryable && elapsed + wait < deadline;
                    let outcome = if e.retryable { "retryable" } else { "fatal" };
                    store
                        .finish_attempt(run, step, n, outcome, Some(&e.envelope()))
                        .await?;
                    if !retry {
                        tracing::warn!(step, attempt = n, error = %e, "step failed");
                        if finish {
                            store
                                .finish_step(
                                    run,
                                    step,
                                    step_status::FAILED,
                                    None,
                                    Some(&e.envelope()),
                                )
                                .await?;
                        }
                        return Ok(Finished::Failed(e));
                    }
                    tracing::info!(step, attempt = n, error = %e, wait_ms = wait.as_millis() as u64, "step will retry");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
