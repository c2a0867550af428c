//! The `rollback` step: move every production domain to the target (by
//! re-aliasing, or Vercel's Instant Rollback), read every alias back, and only
//! then record the target live and the old deployment bad. Re-running the
//! step after a crash is safe: re-aliasing is idempotent, and an Instant
//! Rollback already under way is followed rather than requested again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::step::{Finished, StepError};
use super::{Engine, EngineError};
use crate::config::{ServiceSettings, Strategy};
use crate::ledger::{now_ms, ClaimedRun, StoreError};

/// How long to follow an Instant Rollback job before giving this attempt up.
const JOB_WAIT: Duration = Duration::from_secs(60);

impl Engine {
    /// The `rollback` step. `plan` is `(service, from, to)` when the decision
    /// was just made here; a resumed run reads it from the store.
    pub(super) async fn rollback(
        &self,
        claimed: &ClaimedRun,
        plan: Option<(String, String, String)>,
    ) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        let plan = match plan {
            Some(plan) => Some(plan),
            None => {
                let stored = self.store().run(run).await?;
                match (stored.service, stored.rollback_from, stored.rollback_to) {
                    (Some(s), Some(f), Some(t)) => Some((s, f, t)),
                    _ => None,
                }
            }
        };
        let Some((service, from, to)) = plan else {
            return Err(EngineError::Store(StoreError::Corrupt(format!(
                "run {run} has no rollback target"
            ))));
        };
        let Some(svc) = self.settings().service(&service).cloned() else {
            return Err(EngineError::Store(StoreError::Corrupt(format!(
                "service {service} is no longer configured"
            ))));
        };
        let deadline = self.settings().engine.rollback_deadline;
        let received = claimed.received_at_ms;
        let (svc, from, to) = (&svc, &from, &to);
        let finished = self
            .attempt_loop(
                run,
                "rollback",
                deadline,
                false,
                move |attempt| async move {
                    if attempt > 1 {
                        self.still_ours(svc, from, to).await?;
                    }
                    let started = Instant::now();
                    self.move_production(svc, to, run.to_string()).await?;
                    self.failpoint("rollback-accepted").await;
                    let verified = self.verify(svc, to).await?;
                    Ok(json!({
                        "strategy": format!("{:?}", svc.strategy).to_lowercase(),
                        "from": from,
                        "to": to,
                        "domains": verified,
                        "call_ms": started.elapsed().as_millis() as u64,
                        "alert_to_verified_ms": now_ms() - received,
                    }))
                },
            )
            .await?;
        let store = self.store();
        match finished {
            Finished::Succeeded(output, attempt) => {
                // The ledger and the step's outcome move together.
                store
                    .complete_rollback(&crate::ledger::RollbackDone {
                        service: &service,
                        from,
                        to,
                        run,
                        output: &output,
                        attempt: Some(attempt),
                        worker: self.worker_id(),
                    })
                    .await?;
                self.failpoint("after-rollback").await;
                tracing::info!(from, to, "rollback verified");
                Ok(true)
            }
            Finished::Failed(e) => {
                store
                    .finish_step(
                        run,
                        "rollback",
                        crate::ledger::step_status::FAILED,
                        None,
                        Some(&e.envelope()),
                    )
                    .await?;
                tracing::error!(from, to, error = %e, "rollback failed: manual action needed");
                Ok(false)
            }
        }
    }

    async fn move_production(
        &self,
        svc: &ServiceSettings,
        to: &str,
        run: String,
    ) -> Result<(), StepError> {
        let vercel = self.vercel().map_err(|e| *e)?;
        match svc.strategy {
            Strategy::Alias => {
                for domain in &svc.domains {
                    vercel.assign_alias(to, domain).await?;
                }
                Ok(())
            }
            Strategy::VercelRollback => {
                let job = vercel.last_alias_request(&svc.vercel_project).await?;
                let under_way = job.as_ref().is_some_and(|j| {
                    j.to_deployment_id.as_deref() == Some(to)
                        && j.job_status != "failed"
                        && j.job_status != "skipped"
                });
                if !under_way {
                    let description =
                        format!("backstop run {run}: crash-free rate below threshold");
                    vercel
                        .request_rollback(&svc.vercel_project, to, &description)
                        .await?;
                }
                self.follow_job(svc, to).await
            }
        }
    }

    /// Polls `lastAliasRequest` until the job to `to` succeeds (bounded).
    async fn follow_job(&self, svc: &ServiceSettings, to: &str) -> Result<(), StepError> {
        let vercel = self.vercel().map_err(|e| *e)?;
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let job = vercel.last_alias_request(&svc.vercel_project).await?;
            match job {
                Some(j)
                    if j.to_deployment_id.as_deref() == Some(to) && j.job_status == "succeeded" =>
                {
                    return Ok(())
                }
                Some(j)
                    if j.to_deployment_id.as_deref() == Some(to)
                        && (j.job_status == "failed" || j.job_status == "skipped") =>
                {
                    return Err(StepError::fatal(
                        "rollback_job_failed",
                        format!("Vercel rollback job to {to} ended `{}`", j.job_status),
                    ));
                }
                _ if started.elapsed() >= JOB_WAIT => {
                    return Err(StepError::retryable(
                        "rollback_job_pending",
                        format!(
                            "Vercel rollback job to {to} not finished after {}s",
                            JOB_WAIT.as_secs()
                        ),
                    ));
                }
                _ => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Before retrying: production must still be on `from` or `to`. If a
    /// person moved it meanwhile, stop, and let the failure page a human.
    async fn still_ours(
        &self,
        svc: &ServiceSettings,
        from: &str,
        to: &str,
    ) -> Result<(), StepError> {
        let production = self.production_state(svc).await?;
        let elsewhere: Vec<String> = production
            .iter()
            .filter(|p| {
                p.deployment_id.as_deref() != Some(from) && p.deployment_id.as_deref() != Some(to)
            })
            .map(|p| {
                format!(
                    "{} serves {}",
                    p.domain,
                    p.deployment_id.as_deref().unwrap_or("nothing")
                )
            })
            .collect();
        if elsewhere.is_empty() {
            return Ok(());
        }
        Err(StepError::fatal(
            "production_changed",
            format!(
                "production changed during the rollback, not retrying: {}",
                elsewhere.join(", ")
            ),
        ))
    }

    /// Reads every alias back; fails unless each serves `to`.
    async fn verify(&self, svc: &ServiceSettings, to: &str) -> Result<Vec<Value>, StepError> {
        let production = self.production_state(svc).await?;
        let wrong = crate::policy::serving_other(&production, to);
        if !wrong.is_empty() {
            return Err(StepError::retryable(
                "not_verified",
                format!("production did not move to {to}: {}", wrong.join(", ")),
            ));
        }
        Ok(production
            .iter()
            .map(|p| json!({"domain": p.domain, "deployment": p.deployment_id}))
            .collect())
    }
}
