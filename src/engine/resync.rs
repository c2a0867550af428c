//! The `resync` step: production changed under the ledger (rule 7), so
//! import the service's production deployments and live alias again, then
//! decide once more on the updated ledger. A fresh critical alert about the
//! release that is really live (its promotion webhook was late or lost) is
//! then acted on instead of only noted; when a person changed production,
//! the second decision finds the alert stale and the first decision (which
//! says what production serves) stands. Bounded: a decision made again
//! never plans another resync.

use serde_json::json;

use super::step::{Finished, StepError};
use super::{Engine, EngineError, RunCtx};
use crate::feed::{self, SyncError};
use crate::ledger::{AttemptOutcome, Outcome, StepName, StepStatus};
use crate::policy::Decision;

/// How many recent production deployments a resync imports.
const RESYNC_LIMIT: usize = 20;

impl Engine {
    /// The `resync` step.
    pub(super) async fn resync(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let Some(service) = ctx.claimed.run.service.clone() else {
            return self.skip_step(ctx, StepName::Resync, "no service").await;
        };
        let svc = self.service(&service)?.clone();
        let Some(vercel) = self.inner.providers.vercel.clone() else {
            let why = "vercel.token is not configured";
            return self.skip_step(ctx, StepName::Resync, why).await;
        };
        let deadline = self.settings().engine.step_deadline;
        let (store, svc, vercel) = (self.store(), &svc, &vercel);
        let finished = self
            .attempt_loop(ctx, StepName::Resync, deadline, false, move |_| async move {
                let report = feed::sync_service(store, vercel, svc, RESYNC_LIMIT)
                    .await
                    .map_err(|e| match e {
                        SyncError::Provider(p) => StepError::from(p),
                        other => StepError::retryable("store", other.to_string()),
                    })?;
                let again = self.decide_once(ctx).await?;
                Ok(json!({"imported": report.imported, "live": report.live, "decided_again": again}))
            })
            .await?;
        let claim = &ctx.claimed.claim;
        let (output, attempt) = match finished {
            Finished::Succeeded(output, attempt) => (output, attempt),
            Finished::Failed(e) => {
                self.store()
                    .finish_step(claim, StepName::Resync, StepStatus::Failed, None, Some(&e))
                    .await?;
                return Ok(false);
            }
        };
        let again: Option<Decision> = serde_json::from_value(output["decided_again"].clone()).ok();
        match again.filter(|d| d.outcome != Outcome::Skip) {
            Some(d) => {
                tracing::info!(outcome = %d.outcome, reason = %d.reason, "decided again after the resync");
                let mut record = self.record(&d);
                record.attempt = Some(attempt);
                record.note = super::decide::joined_note(&d, &ctx.claimed.run.id);
                self.store()
                    .save_redecision(claim, &record, &output)
                    .await?;
                ctx.set_decided(record, true);
            }
            None => {
                let store = self.store();
                // The first decision stands. The deployment that crashed is
                // the one serving production when the alert started.
                let started = output["decided_again"]["alert_started_at_ms"].as_i64();
                if let Some(at) = started {
                    store.mark_alerted_at(claim, &service, at).await?;
                }
                store
                    .finish_attempt(claim, StepName::Resync, attempt, AttemptOutcome::Ok, None)
                    .await?;
                store
                    .finish_step(
                        claim,
                        StepName::Resync,
                        StepStatus::Succeeded,
                        Some(&output),
                        None,
                    )
                    .await?;
            }
        }
        Ok(true)
    }
}
