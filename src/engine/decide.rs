//! The `decide` step: gather the facts (ledger history, and the domains'
//! live targets from Vercel when rule 7 needs them), apply the pure policy,
//! and store the decision with the steps its plan calls for, in one
//! transaction.

use serde_json::Value;

use super::step::{Finished, StepError};
use super::{Engine, EngineError, RunCtx};
use crate::clock::now_ms;
use crate::config::{PagerDutyMode, ServiceSettings, Strategy};
use crate::ingest::sentry::{self, Resource};
use crate::ledger::{DecisionRecord, History, NoteRecord, Outcome, RunId, StepName};
use crate::policy::{
    self, Decision, DomainTarget, HealthQuery, Inputs, Missing, Reading, Readings,
};
use crate::providers::sentry::SessionsQuery;

impl Engine {
    /// The `decide` step. The record it stores is kept on the run context,
    /// so the next steps need not read it back.
    pub(super) async fn decide(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let deadline = self.settings().engine.rollback_deadline;
        let finished = self
            .attempt_loop(ctx, StepName::Decide, deadline, false, |_| async {
                let decision = self.decide_once(ctx).await?;
                serde_json::to_value(&decision)
                    .map_err(|e| StepError::fatal("internal", e.to_string()))
            })
            .await?;
        let (decision, attempt, unreadable) = match finished {
            Finished::Succeeded(v, attempt) => {
                let d: Decision = serde_json::from_value(v)
                    .map_err(|e| StepError::fatal("internal", format!("decision: {e}")))
                    .unwrap_or_else(|e| self.unreadable(ctx, &e, None));
                (d, Some(attempt), None)
            }
            Finished::Failed(e) => {
                // Name the live deployment when the ledger knows it, so the
                // page joins that deployment's incident.
                let live = match &ctx.claimed.run.service {
                    Some(service) => self
                        .store()
                        .history(
                            service,
                            &ctx.claimed.run.id,
                            now_ms(),
                            self.settings()
                                .service(service)
                                .map(|s| s.bake_time)
                                .unwrap_or_default(),
                        )
                        .await
                        .ok()
                        .and_then(|h| h.deployments.iter().find(|x| x.live).map(Into::into)),
                    None => None,
                };
                (self.unreadable(ctx, &e, live), None, Some(e))
            }
        };
        let mut record = self.record(&decision);
        record.attempt = attempt;
        record.note = joined_note(&decision, &ctx.claimed.run.id);
        tracing::info!(outcome = %record.outcome, rule = %decision.rule, reason = %decision.reason, "decided");
        let claim = &ctx.claimed.claim;
        self.store().save_decision(claim, &record).await?;
        if let Some(e) = &unreadable {
            // The escalation goes out, and the run ends failed with the provider's words.
            self.store()
                .finish_step(
                    claim,
                    StepName::Decide,
                    crate::ledger::StepStatus::Failed,
                    None,
                    Some(e),
                )
                .await?;
        }
        // What became of a rollback is counted when the rollback ends.
        let fate = match record.outcome {
            Outcome::Rollback => None,
            Outcome::DryRun => Some("dry-run"),
            Outcome::Skip => Some("skipped"),
            Outcome::Escalate => Some("escalated"),
            Outcome::Resolution => Some("resolved"),
        };
        if let Some(fate) = fate {
            self.metrics().decided(record.service.as_deref(), fate);
        }
        ctx.set_decided(record, false);
        Ok(unreadable.is_none())
    }

    fn unreadable(
        &self,
        ctx: &RunCtx,
        e: &StepError,
        live: Option<policy::DeploymentRef>,
    ) -> Decision {
        policy::facts_unreadable(ctx.claimed.run.service.clone(), live, e)
    }

    pub(super) async fn decide_once(&self, ctx: &RunCtx) -> Result<Decision, StepError> {
        let c = &ctx.claimed;
        self.evaluate(&c.resource, &c.body, c.received_at_ms, &c.run.id)
            .await
    }

    /// Decides on an alert body without storing anything: `test-alert` uses
    /// this to show what would happen.
    pub async fn preview(&self, resource: &str, body: &str) -> Result<Decision, StepError> {
        self.evaluate(resource, body, now_ms(), &RunId(String::new()))
            .await
    }

    /// Gathers the facts and applies the policy; `run` is left out of the
    /// rollback counts.
    async fn evaluate(
        &self,
        resource: &str,
        body: &str,
        received_at_ms: i64,
        run: &RunId,
    ) -> Result<Decision, StepError> {
        let resource = Resource::from_header(resource).ok_or_else(|| {
            StepError::fatal("bad_resource", format!("unknown resource {resource}"))
        })?;
        let alert = sentry::parse(resource, body.as_bytes())
            .map_err(|e| StepError::fatal("malformed", e.to_string()))?;
        let settings = self.settings();
        let policies = settings.policies();
        let now = now_ms();
        let svc = policy::map_service(&alert, &policies).and_then(|p| settings.service(p.name));
        // For a critical alert of a mapped service, read the domains while
        // the ledger is read: rule 7 almost always needs them, and this is
        // the way to the first alias write. A stale alert wastes the reads.
        let (history, production) = match svc {
            Some(svc) if alert.is_critical() => {
                let (h, p) = tokio::join!(
                    self.store().history(&svc.name, run, now, svc.bake_time),
                    self.production_state(svc)
                );
                (h, Some(p))
            }
            Some(svc) => (
                self.store()
                    .history(&svc.name, run, now, svc.bake_time)
                    .await,
                None,
            ),
            None => (Ok(History::default()), None),
        };
        let history = history.map_err(|e| StepError::retryable("store", e.to_string()))?;
        let mut production = production;
        let mut readings: Option<Readings> = None;
        // Decide; when the policy names a missing input, gather it and decide
        // again. Each input is gathered at most once.
        loop {
            let fetched = match &production {
                Some(Ok(p)) => Some(p.as_slice()),
                _ => None,
            };
            let inputs = Inputs {
                alert: &alert,
                services: &policies,
                history: &history,
                production: fetched,
                readings: readings.as_ref(),
                received_at_ms,
                now_ms: now,
            };
            let missing = match policy::decide(inputs) {
                Ok(decision) => return Ok(decision),
                Err(missing) => missing,
            };
            let svc = svc.ok_or_else(|| StepError::fatal("internal", "unmapped after mapping"))?;
            match missing {
                Missing::ProductionState if fetched.is_none() => {
                    production = Some(match production.take() {
                        Some(Err(e)) => return Err(e),
                        _ => self.production_state(svc).await,
                    });
                    if let Some(Err(e)) = production {
                        return Err(e);
                    }
                }
                Missing::ReleaseHealth(q) if readings.is_none() => {
                    readings = Some(self.read_health(svc, &q).await);
                }
                still => {
                    return Err(StepError::fatal(
                        "internal",
                        format!("still missing {still:?}"),
                    ))
                }
            }
        }
    }

    /// Release health for the decision, within `sentry.confirm_timeout`:
    /// the live release (and every other release, to tell a release's crash
    /// from everything crashing) over the alert's window, and the
    /// known-good release over its own time live. A failure or a slow
    /// answer is a reading too: `unavailable`, with why.
    pub(crate) async fn read_health(&self, svc: &ServiceSettings, q: &HealthQuery) -> Readings {
        let unavailable = |why: String| Readings {
            unavailable: Some(why),
            ..Default::default()
        };
        let Some(sentry) = self.inner.providers.sentry.as_ref() else {
            return unavailable("sentry.token or sentry.org is not configured".into());
        };
        let timeout = self.settings().sentry.confirm_timeout;
        let all = SessionsQuery {
            projects: &svc.sentry_projects,
            environment: &svc.environment,
            start_ms: q.start_ms,
            end_ms: q.end_ms,
            unit: &q.unit,
            release: None,
        };
        let target = async {
            let Some((release, from, to)) = &q.target else {
                return Ok(None);
            };
            let query = SessionsQuery {
                start_ms: *from,
                end_ms: *to,
                release: Some(release),
                ..all.clone()
            };
            let found = sentry.health(&query).await?;
            Ok::<_, crate::providers::ProviderError>(
                found.into_iter().find(|r| r.release == *release),
            )
        };
        // Each read has its own timeout, side by side (so the whole stays
        // within one `confirm_timeout`). The known-good release's reading is
        // a comparison: when it alone fails or is slow, the decision goes on
        // with the live release's reading.
        let (all, target) = tokio::join!(
            tokio::time::timeout(timeout, sentry.health(&all)),
            tokio::time::timeout(timeout, target)
        );
        let late = || {
            format!(
                "no answer within {} (sentry.confirm_timeout)",
                humantime::format_duration(timeout)
            )
        };
        match all {
            Ok(Ok(all)) => {
                let target = match target {
                    Ok(Ok(found)) => found,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the known-good release's health is unreadable");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(error = %late(), "the known-good release's health is unreadable");
                        None
                    }
                };
                let (live, others): (Vec<Reading>, Vec<Reading>) =
                    all.into_iter().partition(|r| r.release == q.live_release);
                Readings {
                    live: live.into_iter().next(),
                    others,
                    target,
                    unavailable: None,
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "release health unreadable");
                unavailable(e.to_string())
            }
            Err(_) => unavailable(late()),
        }
    }

    /// The provider calls a decision leads to, for people to read.
    pub fn planned_calls(&self, d: &Decision) -> Vec<String> {
        let settings = self.settings();
        let Some(svc) = d.service.as_deref().and_then(|s| settings.service(s)) else {
            return vec![];
        };
        let vercel = &settings.vercel.api_base;
        let mut calls = Vec::new();
        for step in self.plan(d) {
            match step {
                StepName::Rollback => {
                    let to = d.target.as_ref().map(|t| t.id.as_str()).unwrap_or("?");
                    match svc.strategy {
                        Strategy::Alias => {
                            for dom in &svc.domains {
                                calls.push(format!("POST {vercel}/v2/deployments/{to}/aliases {{\"alias\":\"{dom}\"}}"));
                            }
                        }
                        Strategy::VercelRollback => {
                            let project = &svc.vercel_project;
                            calls.push(format!(
                                "POST {vercel}/v1/projects/{project}/rollback/{to}?description=..."
                            ));
                            calls.push(format!("GET {vercel}/v9/projects/{project} until lastAliasRequest.jobStatus = succeeded"));
                        }
                    }
                    let filter: Vec<String> =
                        svc.domains.iter().map(|d| format!("domain={d}")).collect();
                    calls.push(format!(
                        "GET {vercel}/v4/aliases?{} (verify every domain serves {to})",
                        filter.join("&")
                    ));
                }
                StepName::Page => {
                    let key = super::incident_key(&svc.name, d);
                    let action = match d.outcome {
                        Outcome::Resolution => "resolve",
                        _ => "trigger",
                    };
                    let base = settings.pagerduty.base();
                    calls.push(match settings.pagerduty.mode {
                        PagerDutyMode::Events => {
                            format!("POST {base}/v2/enqueue event_action={action} dedup_key={key}")
                        }
                        PagerDutyMode::Rest => format!("POST {base}/incidents incident_key={key}"),
                    });
                }
                StepName::Announce => {
                    let channel = svc
                        .slack_channel
                        .clone()
                        .or_else(|| settings.slack.channel.clone())
                        .unwrap_or_else(|| "(webhook)".into());
                    calls.push(format!(
                        "POST {}/chat.postMessage channel={channel}",
                        settings.slack.api_base
                    ));
                }
                StepName::Record => {
                    if let (Some(release), true) = (
                        d.target.as_ref().and_then(|t| t.release.as_deref()),
                        settings.sentry.record_deploys && settings.sentry.api_configured(),
                    ) {
                        calls.push(format!(
                            "POST {}/api/0/organizations/{}/releases/{release}/deploys/ {{\"environment\":\"{}\",\"name\":\"backstop rollback\"}}",
                            settings.sentry.api_base,
                            settings.sentry.org.as_deref().unwrap_or("?"),
                            svc.environment
                        ));
                    }
                    if settings.pagerduty.change_events && settings.pagerduty.mode == PagerDutyMode::Events {
                        calls.push(format!("POST {}/v2/change/enqueue", settings.pagerduty.base()));
                    }
                }
                StepName::Watch => calls.push(format!(
                    "GET {}/api/0/organizations/{}/sessions/ every {} for {} (watch the restored release recover)",
                    settings.sentry.api_base,
                    settings.sentry.org.as_deref().unwrap_or("?"),
                    humantime::format_duration(svc.watch_interval),
                    humantime::format_duration(svc.watch_window)
                )),
                StepName::Decide
                | StepName::Resync
                | StepName::Followup
                | StepName::Undo
                | StepName::Hold
                | StepName::Resume => {}
                StepName::Brief | StepName::Recap => {
                    calls.push(format!(
                        "POST {}/chat/completions ({} agent; after the rollback, the page and the card)",
                        settings.ai.base_url.as_deref().unwrap_or("?"),
                        step
                    ));
                }
            }
        }
        calls
    }

    /// Which deployment every production domain serves now.
    pub(crate) async fn production_state(
        &self,
        svc: &ServiceSettings,
    ) -> Result<Vec<DomainTarget>, StepError> {
        let vercel = self.vercel()?;
        // Every domain in one read: this is on the way to the first alias write.
        let targets = vercel.alias_targets(&svc.domains).await?;
        Ok(svc
            .domains
            .iter()
            .zip(targets)
            .map(|(domain, deployment_id)| DomainTarget {
                domain: domain.clone(),
                deployment_id,
            })
            .collect())
    }

    /// The steps a decision calls for, given what is configured.
    pub(crate) fn plan(&self, d: &Decision) -> Vec<StepName> {
        let settings = self.settings();
        let (paging, announcing) = (settings.pagerduty.enabled(), settings.slack.enabled());
        let sentry = settings.sentry.api_configured();
        let record = (sentry && settings.sentry.record_deploys)
            || (settings.pagerduty.change_events
                && settings.pagerduty.mode == PagerDutyMode::Events
                && paging);
        let ctx = match d.service.as_deref().and_then(|s| settings.service(s)) {
            Some(svc) => policy::PlanContext {
                brief: self.agent(svc, "brief").is_some(),
                recap: self.agent(svc, "recap").is_some(),
                ..svc.plan_context(paging, announcing, record, sentry)
            },
            None => policy::PlanContext {
                paging,
                announcing,
                ..Default::default()
            },
        };
        policy::plan(d, &ctx)
    }

    pub(crate) fn vercel(&self) -> Result<&crate::providers::vercel::VercelClient, Box<StepError>> {
        self.inner.providers.vercel.as_ref().ok_or_else(|| {
            Box::new(StepError::fatal(
                "not_configured",
                "vercel.token is not configured",
            ))
        })
    }

    pub(super) fn record(&self, d: &Decision) -> DecisionRecord {
        let target = d.target.as_ref().map(|t| t.id.clone());
        let from = d.live.as_ref().map(|l| l.id.clone());
        DecisionRecord {
            service: d.service.clone(),
            outcome: d.outcome,
            reason: d.reason.clone(),
            detail: serde_json::to_value(d).unwrap_or(Value::Null),
            rollback_from: (d.outcome == Outcome::Rollback)
                .then(|| from.clone())
                .flatten(),
            rollback_to: matches!(d.outcome, Outcome::Rollback | Outcome::DryRun)
                .then_some(target)
                .flatten(),
            alerted_live: d.alert_hit_live().then_some(from).flatten(),
            steps: self.plan(d),
            attempt: None,
            note: None,
        }
    }
}

/// The note an alert that joined a watch leaves on the watching run: a
/// second alert about the restored deployment is news for that incident.
/// Stored with the decision, so a crash between the two cannot lose it.
pub(super) fn joined_note(decision: &Decision, run: &RunId) -> Option<NoteRecord> {
    let watching = decision.joins.as_ref()?;
    Some(NoteRecord {
        run: RunId(watching.clone()),
        kind: "joined".into(),
        text: format!(
            "a new critical alert about {} (run {run}) joined the watch",
            decision.live.as_ref().map(|l| l.id.as_str()).unwrap_or("?"),
        ),
        data: Some(serde_json::json!({"run": run, "reason": decision.reason})),
    })
}
