//! The attempt loop shared by every step: record the attempt, run it with a
//! timeout that keeps it inside the step's deadline, record how it ended,
//! and retry retryable failures with capped, jittered backoff until the
//! deadline (counted from the step's first attempt, which is stored, so the
//! deadline survives restarts). A step may be *held* past its deadline, a
//! bounded time more, when a provider named when to come back (a
//! rate-limit window): people are told first.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Engine, EngineError, RunCtx};
use crate::clock::now_ms;
use crate::ledger::{AttemptOutcome, StepName, StepStatus};
use crate::providers::{Backoff, ProviderError};

pub use crate::ledger::StepError;

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

impl From<Box<StepError>> for StepError {
    fn from(e: Box<StepError>) -> Self {
        *e
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

impl Finished {
    /// True for a success.
    pub fn succeeded(&self) -> bool {
        matches!(self, Finished::Succeeded(..))
    }
}

/// How a step may be held past its deadline: for at most `longest`, once
/// `tell` (given the wait and why) has told people.
pub(crate) struct Hold<'a> {
    pub longest: Duration,
    /// The step was held before (by a process since stopped): taken up
    /// past its deadline, its next attempt still gets a whole deadline.
    pub held_before: bool,
    pub tell: &'a (dyn Fn(Duration, StepError) -> BoxFuture<'a, ()> + Send + Sync),
}

const STEP_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// The least time an attempt gets, even when the step's deadline has all
/// but passed (a run resumed long after it started still tries once).
const ATTEMPT_FLOOR: Duration = Duration::from_secs(5);

impl Engine {
    /// Runs `attempt` (given its 1-based number) until it succeeds, fails
    /// fatally, or `deadline` passes; each attempt is cut off where it
    /// would run past the deadline. Only records the step's final status
    /// (and a success's end) when `finish` is true: `decide` and `rollback`
    /// store theirs together with the decision or the ledger change.
    pub(crate) async fn attempt_loop<F, Fut>(
        &self,
        ctx: &RunCtx,
        step: StepName,
        deadline: Duration,
        finish: bool,
        attempt: F,
    ) -> Result<Finished, EngineError>
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = Result<Value, StepError>>,
    {
        self.attempt_loop_holding(ctx, step, deadline, finish, None, attempt)
            .await
    }

    /// Like [`Engine::attempt_loop`], and a provider that named when to
    /// come back past the deadline is waited for, up to `hold.longest`
    /// past it, once `hold.tell` has told people so.
    pub(crate) async fn attempt_loop_holding<F, Fut>(
        &self,
        ctx: &RunCtx,
        step: StepName,
        deadline: Duration,
        finish: bool,
        hold: Option<Hold<'_>>,
        mut attempt: F,
    ) -> Result<Finished, EngineError>
    where
        F: FnMut(i64) -> Fut,
        Fut: Future<Output = Result<Value, StepError>>,
    {
        let store = self.store();
        let claim = &ctx.claimed.claim;
        // The deadline in force: a step held past its deadline gets a whole
        // deadline again after the wait, never past `deadline + longest`.
        let mut until = deadline;
        let longest = hold.as_ref().map_or(Duration::ZERO, |h| h.longest);
        let mut held_before = hold.as_ref().is_some_and(|h| h.held_before);
        loop {
            ctx.still_held()?;
            let (n, started) = store.begin_attempt(claim, step).await?;
            let elapsed = since(started);
            if std::mem::take(&mut held_before) && elapsed >= until {
                until = (elapsed + deadline).min(deadline + longest);
            }
            let budget = until
                .saturating_sub(elapsed)
                .max(deadline.min(ATTEMPT_FLOOR));
            let span = tracing::info_span!("step", step = %step, attempt = n);
            let run = tracing::Instrument::instrument(attempt(n), span);
            let result = match tokio::time::timeout(budget, run).await {
                Ok(result) => result,
                Err(_) => Err(StepError::fatal(
                    "deadline_exceeded",
                    format!(
                        "{step} did not finish within its deadline of {}{}",
                        humantime::format_duration(deadline),
                        match until > deadline {
                            true => " (renewed after a hold)",
                            false => "",
                        }
                    ),
                )),
            };
            let e = match result {
                Ok(output) => {
                    if finish {
                        store
                            .finish_attempt(claim, step, n, AttemptOutcome::Ok, None)
                            .await?;
                        store
                            .finish_step(claim, step, StepStatus::Succeeded, Some(&output), None)
                            .await?;
                    }
                    return Ok(Finished::Succeeded(output, n));
                }
                Err(e) => e,
            };
            let wait = match e.retry_after {
                // The provider named its time (a rate-limit window): all of
                // it, not the backoff's cap, or no retry at all.
                Some(asked) if asked > STEP_BACKOFF.max => asked,
                asked => STEP_BACKOFF.delay((n - 1).clamp(0, 16) as u32, asked),
            };
            let ends = since(started) + wait;
            // Held: the provider named a time past the deadline in force,
            // and it comes before the hold runs out.
            let held = e.retryable
                && e.retry_after.is_some_and(|asked| !asked.is_zero())
                && ends >= until
                && ends < deadline + longest;
            let retry = e.retryable && (ends < until || held);
            let mut e = e;
            if let Some(asked) = e.retry_after.filter(|_| e.retryable && !retry) {
                // Said where it is decided: why this step stopped waiting.
                let held_for = match longest.is_zero() {
                    true => String::new(),
                    false => format!(
                        " and the {} it may be held past it",
                        humantime::format_duration(longest)
                    ),
                };
                e.message = format!(
                    "{}; asked to wait {}, past this step's deadline of {}{held_for}",
                    e.message,
                    humantime::format_duration(Duration::from_secs(asked.as_secs().max(1))),
                    humantime::format_duration(deadline)
                );
            }
            let outcome = match e.retryable {
                true => AttemptOutcome::Retryable,
                false => AttemptOutcome::Fatal,
            };
            store
                .finish_attempt(claim, step, n, outcome, Some(&e))
                .await?;
            if !retry {
                if finish {
                    store
                        .finish_step(claim, step, StepStatus::Failed, None, Some(&e))
                        .await?;
                }
                return Ok(Finished::Failed(e));
            }
            let tell = match (&hold, held) {
                (Some(h), true) => {
                    tracing::warn!(step = %step, attempt = n, error = %e, wait_ms = wait.as_millis() as u64, "step held: the provider named when to come back");
                    until = (ends + deadline).min(deadline + longest);
                    Some((h.tell)(wait, e))
                }
                _ => {
                    tracing::info!(step = %step, attempt = n, error = %e, wait_ms = wait.as_millis() as u64, "step will retry");
                    None
                }
            };
            self.wait_between_attempts(wait, tell).await?;
        }
    }

    /// Sleeps `wait` before the next attempt, telling people meanwhile
    /// (never for longer than the wait: the retry does not wait for the
    /// telling). A process shutting down does not sit out a hold or a long
    /// named wait: the run stops here and resumes at the next start, or on
    /// another instance, once its lease lapses.
    async fn wait_between_attempts(
        &self,
        wait: Duration,
        tell: Option<BoxFuture<'_, ()>>,
    ) -> Result<(), EngineError> {
        // A short wait (a backoff) is sat out: a clean stop finishes the run.
        if wait <= STEP_BACKOFF.max && tell.is_none() {
            tokio::time::sleep(wait).await;
            return Ok(());
        }
        let sleep = async {
            match tell {
                Some(tell) => {
                    let told = tokio::time::timeout(wait, tell);
                    let _ = tokio::join!(told, tokio::time::sleep(wait));
                }
                None => tokio::time::sleep(wait).await,
            }
        };
        let mut stopping = self.inner.stopping.subscribe();
        tokio::select! {
            _ = sleep => Ok(()),
            _ = stopping.wait_for(|stop| *stop) => Err(EngineError::ShuttingDown),
        }
    }

    /// Finishes a step that has nothing to do, saying why.
    pub(crate) async fn skip_step(
        &self,
        ctx: &RunCtx,
        step: StepName,
        why: &str,
    ) -> Result<bool, EngineError> {
        let output = serde_json::json!({"skipped": why});
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                step,
                StepStatus::Succeeded,
                Some(&output),
                None,
            )
            .await?;
        Ok(true)
    }
}

fn since(started_ms: i64) -> Duration {
    Duration::from_millis((now_ms() - started_ms).max(0) as u64)
}
