//! The `decide` step: gather the facts (ledger history, and the domains'
//! live targets from Vercel when rule 7 needs them), apply the pure policy,
//! and store the decision with the steps it calls for, in one transaction.

use serde_json::{json, Value};

use super::step::{Finished, StepError};
use super::{Engine, EngineError};
use crate::config::ServiceSettings;
use crate::ingest::sentry::{self, Resource};
use crate::ledger::{now_ms, ClaimedRun, DecisionRecord, History};
use crate::policy::{self, Decision, DomainTarget, Inputs, Outcome};

impl Engine {
    /// The `decide` step; returns what was stored, so the next steps need
    /// not read it back.
    pub(super) async fn decide(&self, claimed: &ClaimedRun) -> Result<DecisionRecord, EngineError> {
        let run = &claimed.run.id;
        let deadline = self.settings().engine.rollback_deadline;
        let finished = self
            .attempt_loop(run, "decide", deadline, false, |_| async {
                let decision = self.decide_once(claimed).await?;
                serde_json::to_value(&decision)
                    .map_err(|e| StepError::fatal("internal", e.to_string()))
            })
            .await?;
        let mut decided_attempt = None;
        let (decision, unreadable_error): (Decision, _) = match finished {
            Finished::Succeeded(v, attempt) => {
                decided_attempt = Some(attempt);
                (
                    serde_json::from_value(v).map_err(|e| {
                        EngineError::Store(crate::ledger::StoreError::Corrupt(format!(
                            "decision: {e}"
                        )))
                    })?,
                    None,
                )
            }
            Finished::Failed(e) => {
                let mut d = unreadable(claimed, &e);
                // Name the live deployment when the ledger knows it, so the
                // page joins that deployment's incident.
                if let Some(service) = &claimed.run.service {
                    if let Ok(h) = self.store().history(service, run, now_ms()).await {
                        d.live = h.deployments.iter().find(|x| x.live).map(Into::into);
                    }
                }
                (d, Some(e))
            }
        };
        let mut record = self.record(&decision);
        record.attempt = decided_attempt;
        tracing::info!(outcome = record.outcome, rule = decision.rule, reason = %decision.reason, "decided");
        self.store().save_decision(run, &record).await?;
        if let Some(e) = &unreadable_error {
            // The escalation goes out, and the run ends failed with the provider's words.
            self.store()
                .finish_step(
                    run,
                    "decide",
                    crate::ledger::step_status::FAILED,
                    None,
                    Some(&e.envelope()),
                )
                .await?;
        }
        Ok(record)
    }

    async fn decide_once(&self, claimed: &ClaimedRun) -> Result<Decision, StepError> {
        self.evaluate(
            &claimed.resource,
            &claimed.body,
            claimed.received_at_ms,
            &claimed.run.id,
        )
        .await
    }

    /// Decides on an alert body without storing anything: `test-alert` uses
    /// this to show what would happen.
    pub async fn preview(&self, resource: &str, body: &str) -> Result<Decision, StepError> {
        self.evaluate(
            resource,
            body,
            now_ms(),
            &crate::ledger::RunId(String::new()),
        )
        .await
    }

    /// Gathers the facts and applies the policy; `run` is left out of the
    /// rollback counts.
    async fn evaluate(
        &self,
        resource: &str,
        body: &str,
        received_at_ms: i64,
        run: &crate::ledger::RunId,
    ) -> Result<Decision, StepError> {
        let resource = Resource::from_header(resource).ok_or_else(|| {
            StepError::fatal("bad_resource", format!("unknown resource {resource}"))
        })?;
        let alert = sentry::parse(resource, body.as_bytes())
            .map_err(|e| StepError::fatal("malformed", e.to_string()))?;
        let services = &self.settings().services;
        let now = now_ms();
        let svc = policy::map_service(&alert, services);
        // For a critical alert of a mapped service, read the domains while
        // the ledger is read: rule 7 almost always needs them, and this is
        // the way to the first alias write. A stale alert wastes the reads.
        let (history, production) = match svc {
            Some(svc) if alert.is_critical() => {
                let (h, p) = tokio::join!(
                    self.store().history(&svc.name, run, now),
                    self.production_state(svc)
                );
                (h, Some(p))
            }
            Some(svc) => (self.store().history(&svc.name, run, now).await, None),
            None => (Ok(History::default()), None),
        };
        let history = history.map_err(|e| StepError::retryable("store", e.to_string()))?;
        let mut inputs = Inputs {
            alert: &alert,
            services,
            history: &history,
            production: None,
            received_at_ms,
            now_ms: now,
        };
        let decision = policy::decide(inputs);
        if decision.outcome != Outcome::NeedsProductionState {
            return Ok(decision);
        }
        let production = match (production, svc) {
            (Some(read), _) => read?,
            (None, Some(svc)) => self.production_state(svc).await?,
            (None, None) => return Err(StepError::fatal("internal", "unmapped after mapping")),
        };
        inputs.production = Some(&production);
        Ok(policy::decide(inputs))
    }

    /// The provider calls a decision leads to, for people to read.
    pub fn planned_calls(&self, d: &Decision) -> Vec<String> {
        let settings = self.settings();
        let Some(svc) = d.service.as_deref().and_then(|s| settings.service(s)) else {
            return vec![];
        };
        let vercel = &settings.vercel.api_base;
        let mut calls = Vec::new();
        for step in self.steps_for(d) {
            match step.as_str() {
                "rollback" => {
                    let to = d.target.as_ref().map(|t| t.id.as_str()).unwrap_or("?");
                    match svc.strategy {
                        crate::config::Strategy::Alias => {
                            for dom in &svc.domains {
                                calls.push(format!("POST {vercel}/v2/deployments/{to}/aliases {{\"alias\":\"{dom}\"}}"));
                            }
                        }
                        crate::config::Strategy::VercelRollback => {
                            calls.push(format!(
                                "POST {vercel}/v1/projects/{}/rollback/{to}?description=...",
                                svc.vercel_project
                            ));
                            calls.push(format!("GET {vercel}/v9/projects/{} until lastAliasRequest.jobStatus = succeeded", svc.vercel_project));
                        }
                    }
                    for dom in &svc.domains {
                        calls.push(format!(
                            "GET {vercel}/v4/aliases/{dom} (verify it serves {to})"
                        ));
                    }
                }
                "page" => {
                    let key = super::notify::dedup_key(&svc.name, d);
                    let action = if d.outcome == Outcome::Resolution {
                        "resolve"
                    } else {
                        "trigger"
                    };
                    calls.push(match settings.pagerduty.mode {
                        crate::config::PagerDutyMode::Events => format!(
                            "POST {}/v2/enqueue event_action={action} dedup_key={key}",
                            settings.pagerduty.base()
                        ),
                        crate::config::PagerDutyMode::Rest => format!(
                            "POST {}/incidents incident_key={key}",
                            settings.pagerduty.base()
                        ),
                    });
                }
                "announce" => {
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
                _ => {}
            }
        }
        calls
    }

    /// Which deployment every production domain serves now.
    pub(crate) async fn production_state(
        &self,
        svc: &ServiceSettings,
    ) -> Result<Vec<DomainTarget>, StepError> {
        let vercel = self.vercel().map_err(|e| *e)?;
        // Every domain at once: this is on the way to the first alias write.
        let mut reads = tokio::task::JoinSet::new();
        for (i, domain) in svc.domains.iter().enumerate() {
            let (vercel, domain) = (vercel.clone(), domain.clone());
            reads.spawn(async move { (i, vercel.alias_target(&domain).await, domain) });
        }
        let mut out: Vec<(usize, DomainTarget)> = Vec::with_capacity(svc.domains.len());
        while let Some(read) = reads.join_next().await {
            let (i, result, domain) =
                read.map_err(|e| StepError::retryable("internal", e.to_string()))?;
            out.push((
                i,
                DomainTarget {
                    domain,
                    deployment_id: result?,
                },
            ));
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// The steps an outcome calls for, given what is configured.
    pub(crate) fn steps_for(&self, d: &Decision) -> Vec<String> {
        let settings = self.settings();
        let Some(svc) = d.service.as_deref().and_then(|s| settings.service(s)) else {
            return vec![];
        };
        let (page, announce) = match d.outcome {
            Outcome::Rollback | Outcome::Escalate => (true, true),
            Outcome::DryRun => (svc.page_on_dry_run, true),
            Outcome::Resolution => (svc.resolve_on_recovery, true),
            // Critical alerts for a mapped service that were not acted on.
            Outcome::Skip => (false, svc.announce_skips && matches!(d.rule, 6..=8)),
            Outcome::NeedsProductionState => (false, false),
        };
        let mut steps = Vec::new();
        if d.outcome == Outcome::Rollback {
            steps.push("rollback".to_string());
        }
        if d.outcome == Outcome::Skip && d.rule == 7 {
            // Someone changed production: bring the ledger up to date.
            steps.push("resync".to_string());
        }
        if page && settings.pagerduty.enabled() {
            steps.push("page".into());
        }
        if announce && settings.slack.enabled() {
            steps.push("announce".into());
        }
        if steps.iter().any(|s| s == "page") && steps.iter().any(|s| s == "announce") {
            steps.push("followup".into());
        }
        steps
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
        let steps = self.steps_for(d);
        let (from, to) = match d.outcome {
            Outcome::Rollback | Outcome::DryRun => (
                d.live.as_ref().map(|l| l.id.clone()),
                d.target.as_ref().map(|t| t.id.clone()),
            ),
            _ => (None, None),
        };
        DecisionRecord {
            service: d.service.clone(),
            outcome: d.outcome.as_str().into(),
            reason: d.reason.clone(),
            detail: serde_json::to_value(d).unwrap_or(Value::Null),
            rollback_from: if d.outcome == Outcome::Rollback {
                from
            } else {
                None
            },
            rollback_to: to,
            alerted_live: d
                .alert_hit_live()
                .then(|| d.live.as_ref().map(|l| l.id.clone()))
                .flatten(),
            steps,
            attempt: None,
        }
    }
}

/// The decision when the facts could not be gathered in time: escalate,
/// never stay silent on a critical alert.
fn unreadable(claimed: &ClaimedRun, e: &StepError) -> Decision {
    let reason = format!("live state unknown: {}", e.message);
    Decision {
        outcome: Outcome::Escalate,
        rule: 5,
        reason: reason.clone(),
        service: claimed.run.service.clone(),
        live: None,
        target: None,
        alert_started_at_ms: None,
        checks: vec![policy::Check {
            rule: 5,
            name: "facts readable".into(),
            passed: false,
            detail: json!(e.envelope()).to_string(),
        }],
    }
}
