//! The `rollback` step: move every production domain to the target (by
//! re-aliasing every domain side by side, as one group against Vercel's
//! alias-creation limit, or Vercel's Instant Rollback; a retry re-aliases
//! only the domains not moved yet), read every alias back in one call, and
//! only then record the target live and the old deployment bad. Re-running
//! the step after a crash is safe: re-aliasing is idempotent, and an
//! Instant Rollback already under way is followed rather than requested
//! again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use futures_util::future::BoxFuture;

use super::step::{Finished, Hold, StepError};
use super::{Engine, EngineError, RunCtx};
use crate::clock::now_ms;
use crate::config::{ServiceSettings, Strategy};
use crate::ledger::{RollbackDone, StepName, StepStatus, StoreError};

/// The run note of a rollback held past its deadline (`runs show` lists it).
pub(super) const HELD_NOTE: &str = "rollback-held";

/// How long to follow an Instant Rollback job before giving this attempt up.
const JOB_WAIT: Duration = Duration::from_secs(60);

impl Engine {
    /// The `rollback` step. The plan comes from the decision just made, or
    /// from the stored run when the run was resumed.
    pub(super) async fn rollback(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let run = &ctx.claimed.run.id;
        let (service, from, to) = match ctx.decided() {
            Some(d) => (
                d.service.clone(),
                d.rollback_from.clone(),
                d.rollback_to.clone(),
            ),
            None => {
                let stored = self.store().run(run).await?;
                (stored.service, stored.rollback_from, stored.rollback_to)
            }
        };
        let (Some(service), Some(from), Some(to)) = (service, from, to) else {
            let why = format!("run {run} has no rollback target");
            return Err(EngineError::Store(StoreError::Corrupt(why)));
        };
        let svc = self.service(&service)?.clone();
        let engine = &self.settings().engine;
        let (deadline, held_for) = (engine.rollback_deadline, engine.rate_limit_wait);
        let received = ctx.claimed.received_at_ms;
        // Which attempt moved each domain, across attempts.
        let moved: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());
        let (svc, from, to, moved) = (&svc, &from, &to, &moved);
        let tell = move |wait: Duration, why: StepError| -> BoxFuture<'_, ()> {
            let moved: Vec<String> = moved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            Box::pin(async move { self.tell_held(ctx, svc, wait, &why, &moved).await })
        };
        // Held before this process took the run up (it was stopped during
        // the hold): the retry still gets a whole deadline. Only a resumed
        // run can have been; a fresh one spends no read on it.
        let held_before = ctx.decided().is_none() && self.was_held(ctx).await?;
        let hold = Hold {
            longest: held_for,
            held_before,
            tell: &tell,
        };
        let finished = self
            .attempt_loop_holding(
                ctx,
                StepName::Rollback,
                deadline,
                false,
                Some(hold),
                move |attempt| async move {
                    // A retry moves only the domains not on the target yet,
                    // and stops if a person paused the service or moved
                    // production meanwhile.
                    let pending = match attempt {
                        1 => svc.domains.clone(),
                        _ => {
                            self.not_paused_since(svc).await?;
                            self.still_ours(svc, from, to).await?
                        }
                    };
                    let started = Instant::now();
                    let description =
                        format!("backstop run {run}: crash-free rate below threshold");
                    self.move_production(svc, to, &pending, attempt, moved, description)
                        .await?;
                    self.failpoint("rollback-accepted").await;
                    let verified = self.verify(svc, to).await?;
                    let moved = moved.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    Ok(json!({
                        "strategy": format!("{:?}", svc.strategy).to_lowercase(),
                        "from": from,
                        "to": to,
                        "domains": verified,
                        "moved_in_attempt": moved,
                        "call_ms": started.elapsed().as_millis() as u64,
                        "alert_to_verified_ms": now_ms() - received,
                    }))
                },
            )
            .await?;
        let claim = &ctx.claimed.claim;
        match finished {
            Finished::Succeeded(output, attempt) => {
                // The ledger and the step's outcome move together.
                self.store()
                    .complete_rollback(&RollbackDone {
                        claim,
                        service: &service,
                        from,
                        to,
                        output: &output,
                        attempt: Some(attempt),
                    })
                    .await?;
                self.failpoint("after-rollback").await;
                tracing::info!(from, to, "rollback verified");
                let m = self.metrics();
                m.decided(Some(&service), "rolled-back");
                if let Some(ms) = output["alert_to_verified_ms"].as_i64() {
                    m.rolled_back(&service, ms);
                }
                Ok(true)
            }
            Finished::Failed(e) => {
                // Which domains did move before it gave up: what a person
                // fixing a half-moved production needs first.
                let moved = moved.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let not_moved: Vec<&String> = svc
                    .domains
                    .iter()
                    .filter(|d| !moved.contains_key(*d))
                    .collect();
                let output = json!({
                    "from": from,
                    "to": to,
                    "moved_in_attempt": moved,
                    "not_moved": not_moved,
                });
                self.store()
                    .finish_step(
                        claim,
                        StepName::Rollback,
                        StepStatus::Failed,
                        Some(&output),
                        Some(&e),
                    )
                    .await?;
                // Logged once, here: the page says the same to a person.
                tracing::error!(from, to, error = %e, "rollback failed: manual action needed");
                self.metrics().decided(Some(&service), "rollback-failed");
                Ok(false)
            }
        }
    }

    /// Moves `domains` to `to`: every alias written at once (side by side),
    /// recording which attempt moved each; a domain whose write failed is
    /// retried alone by the next attempt. Or Vercel's Instant Rollback.
    pub(super) async fn move_production(
        &self,
        svc: &ServiceSettings,
        to: &str,
        domains: &[String],
        attempt: i64,
        moved: &Mutex<BTreeMap<String, i64>>,
        description: String,
    ) -> Result<(), StepError> {
        let vercel = self.vercel()?;
        match svc.strategy {
            Strategy::Alias => {
                // One group: all of this service's domains, or none while
                // Vercel's alias-creation window cannot take them all.
                let mut failed = Vec::new();
                for (domain, result) in vercel.assign_aliases(to, domains).await? {
                    match result {
                        Ok(()) => {
                            let mut moved = moved.lock().unwrap_or_else(|e| e.into_inner());
                            moved.entry(domain).or_insert(attempt);
                        }
                        Err(e) => failed.push((domain, StepError::from(e))),
                    }
                }
                match failed.first() {
                    None => Ok(()),
                    Some((_, first)) => {
                        let which: Vec<String> =
                            failed.iter().map(|(d, e)| format!("{d}: {e}")).collect();
                        Err(StepError {
                            message: format!("alias write failed for {}", which.join("; ")),
                            retryable: failed.iter().all(|(_, e)| e.retryable),
                            // The longest wait any of them was asked for.
                            retry_after: failed.iter().filter_map(|(_, e)| e.retry_after).max(),
                            ..first.clone()
                        })
                    }
                }
            }
            Strategy::VercelRollback => {
                let job = vercel.last_alias_request(&svc.vercel_project).await?;
                let under_way = job.as_ref().is_some_and(|j| {
                    j.to_deployment_id.as_deref() == Some(to)
                        && j.job_status != "failed"
                        && j.job_status != "skipped"
                });
                if !under_way {
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
        let vercel = self.vercel()?;
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

    /// Whether this run's rollback was held (it has a [`HELD_NOTE`]).
    pub(super) async fn was_held(&self, ctx: &RunCtx) -> Result<bool, StoreError> {
        let notes = self.store().notes(&ctx.claimed.run.id).await?;
        Ok(notes.iter().any(|n| n.kind == HELD_NOTE))
    }

    /// A rollback held past its deadline (a provider named when to come
    /// back): noted on the run, and the on-call paged at once under a key
    /// of its own, saying until when and how to stop it. Telling never
    /// fails the rollback.
    async fn tell_held(
        &self,
        ctx: &RunCtx,
        svc: &ServiceSettings,
        wait: Duration,
        why: &StepError,
        moved: &[String],
    ) {
        let until = crate::clock::format_time(now_ms() + wait.as_millis() as i64);
        // Half moved already (another instance spent the window): say so.
        let split = match moved {
            [] => String::new(),
            moved => format!(
                " Production is split meanwhile: {} already serve the target.",
                moved.join(", ")
            ),
        };
        let text = format!(
            "rollback held until {until}: {}.{split} Backstop rolls back then, unless the service is paused (backstop pause {})",
            why.message, svc.name
        );
        let data = json!({"until": until, "why": why.message, "moved": moved});
        let run = &ctx.claimed.run.id;
        if let Err(e) = self
            .store()
            .add_note(run, HELD_NOTE, &text, Some(&data))
            .await
        {
            tracing::warn!(error = %e, "cannot note the held rollback");
        }
        let Some(pd) = self.inner.providers.pagerduty.as_ref() else {
            return;
        };
        let facts = match self.facts(ctx).await {
            Ok(facts) => facts,
            Err(e) => {
                tracing::warn!(error = %e, "cannot page the held rollback");
                return;
            }
        };
        let severity = self.settings().pagerduty.severity_rollback_failed;
        let summary = crate::providers::pagerduty::truncate(&format!("{}: {text}", svc.name), 1024);
        let mut page = self.page_of(&facts, summary, severity.as_str());
        page.incident_key = super::page::sub_incident_key(&facts.incident_key, "held");
        page.class = "rollback-held".into();
        page.custom_details = json!({"held": data, "decision": facts.origin.run.decision});
        if let Err(e) = pd.trigger(&page).await {
            tracing::warn!(error = %e, "cannot page the held rollback");
        }
    }

    /// Before retrying: the service must not have been paused (or frozen)
    /// since the decision; a person's hold stops an automatic rollback
    /// still retrying.
    async fn not_paused_since(&self, svc: &ServiceSettings) -> Result<(), StepError> {
        let pause = self.store().pause_of(&svc.name).await.map_err(|e| {
            StepError::retryable(
                "store_unavailable",
                format!("cannot read the service's pause: {e}"),
            )
        })?;
        match pause {
            None => Ok(()),
            Some(p) => Err(StepError::fatal(
                "paused",
                format!(
                    "{} was paused during the rollback's retries{}{}: not rolled back",
                    svc.name,
                    p.by.map(|by| format!(" by {by}")).unwrap_or_default(),
                    match p.reason.as_str() {
                        "" => String::new(),
                        r => format!(" ({r})"),
                    }
                ),
            )),
        }
    }

    /// Before retrying: production must still be on `from` or `to`. If a
    /// person moved it meanwhile, stop, and let the failure page a human.
    /// Returns the domains still to move.
    pub(super) async fn still_ours(
        &self,
        svc: &ServiceSettings,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, StepError> {
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
            return Ok(production
                .into_iter()
                .filter(|p| p.deployment_id.as_deref() != Some(to))
                .map(|p| p.domain)
                .collect());
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
    pub(super) async fn verify(
        &self,
        svc: &ServiceSettings,
        to: &str,
    ) -> Result<Vec<Value>, StepError> {
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
