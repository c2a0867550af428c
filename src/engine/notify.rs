//! The `page` and `announce` steps. They run after `rollback`, side by side;
//! their failure never blocks or undoes a rollback. The PagerDuty dedup key
//! is derived from the service and the deployment rolled back from, so
//! retries and restarts reach the same incident.

use std::collections::BTreeMap;

use serde_json::json;

use super::step::Finished;
use super::{Engine, EngineError};
use crate::config::{ServiceSettings, Severity};
use crate::ingest::sentry::{self, Alert, Resource};
use crate::ledger::{now_ms, step_status, ClaimedRun, RunDetail, RunId, StoreError};
use crate::notify::{Kind, Notice};
use crate::policy::Decision;
use crate::providers::pagerduty::Page;

/// Everything a notification step needs.
struct Facts {
    svc: ServiceSettings,
    notice: Notice,
    /// The run that first reported this incident (for resolutions: the
    /// critical run; otherwise this run).
    origin: RunDetail,
    dedup_key: String,
}

fn corrupt(what: String) -> EngineError {
    EngineError::Store(StoreError::Corrupt(what))
}

/// `backstop/<service>/<deployment rolled back from>`.
pub fn dedup_key(service: &str, decision: &Decision) -> String {
    let live = decision
        .live
        .as_ref()
        .map(|l| l.id.as_str())
        .unwrap_or("live-unknown");
    format!("backstop/{service}/{live}")
}

impl Engine {
    async fn facts(&self, claimed: &ClaimedRun) -> Result<Facts, EngineError> {
        let store = self.store();
        let detail = store.run_detail(&claimed.run.id).await?;
        let service = detail
            .run
            .service
            .clone()
            .ok_or_else(|| corrupt(format!("run {} has no service", claimed.run.id)))?;
        let svc = self
            .settings()
            .service(&service)
            .cloned()
            .ok_or_else(|| corrupt(format!("service {service} is not configured")))?;
        let resource = Resource::from_header(&claimed.resource).unwrap_or(Resource::MetricAlert);
        let alert =
            sentry::parse(resource, claimed.body.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        let is_resolution = detail.run.outcome.as_deref() == Some("resolution");
        let origin = match is_resolution {
            true => self
                .critical_run_of(&alert)
                .await?
                .unwrap_or_else(|| detail.clone()),
            false => detail.clone(),
        };
        let decision: Decision = origin
            .run
            .decision
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| corrupt(format!("run {} has no decision", origin.run.id)))?;
        let kind = kind_of(&detail);
        let mut notice = Notice::new(kind, &svc, &decision, &alert, &claimed.run.id.0);
        if is_resolution {
            notice.reason = "the alert resolved".into();
        }
        if let Some(rb) = detail.steps.iter().find(|s| s.name == "rollback") {
            notice.time_to_rollback_ms = rb
                .output
                .as_ref()
                .and_then(|o| o["alert_to_verified_ms"].as_i64());
            notice.error = rb
                .error
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .map(str::to_owned);
        }
        Ok(Facts {
            dedup_key: dedup_key(&svc.name, &decision),
            svc,
            notice,
            origin,
        })
    }

    /// The run of the critical delivery of the same alert rule and incident.
    async fn critical_run_of(&self, alert: &Alert) -> Result<Option<RunDetail>, EngineError> {
        let mut critical = alert.clone();
        critical.action = if alert.resource == Resource::EventAlert {
            "triggered".into()
        } else {
            "critical".into()
        };
        match self
            .store()
            .run_for_dedup_key(&critical.dedup_key())
            .await?
        {
            Some(run) => Ok(Some(self.store().run_detail(&run).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn page(&self, claimed: &ClaimedRun) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        let Some(pd) = self.inner.providers.pagerduty.clone() else {
            return self
                .skip_step(run, "page", "pagerduty is not configured")
                .await;
        };
        let facts = self.facts(claimed).await?;
        let settings = self.settings();
        let (summary, warning) =
            facts
                .notice
                .render("pagerduty_summary", &settings.templates, &facts.svc);
        let severity = severity_of(&facts.notice.outcome, &settings.pagerduty);
        let page = Page {
            dedup_key: facts.dedup_key.clone(),
            summary,
            severity: severity.as_str().into(),
            component: facts.svc.name.clone(),
            group: facts.svc.vercel_project.clone(),
            class: serde_json::to_value(&facts.notice.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            timestamp: crate::ingest::sentry::format_time(now_ms()),
            custom_details: json!({ "notice": facts.notice, "decision": facts.origin.run.decision }),
            links: facts.notice.links(),
        };
        let resolve = facts.notice.outcome == Kind::Resolved;
        let deadline = settings.engine.step_deadline;
        let finished = self
            .attempt_loop(run, "page", deadline, true, |_| async {
                let opened = if resolve {
                    pd.resolve(&page).await?
                } else {
                    pd.trigger(&page).await?
                };
                self.failpoint("page-accepted").await;
                Ok(json!({
                    "action": if resolve { "resolve" } else { "trigger" },
                    "dedup_key": opened.dedup_key,
                    "incident_id": opened.incident_id,
                    "html_url": opened.html_url,
                    "already_open": opened.already_open,
                    "severity": page.severity,
                    "summary": page.summary,
                    "template_warning": warning,
                }))
            })
            .await?;
        Ok(matches!(finished, Finished::Succeeded(..)))
    }

    pub(super) async fn announce(&self, claimed: &ClaimedRun) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        let Some(slack) = self.inner.providers.slack.clone() else {
            return self
                .skip_step(run, "announce", "slack is not configured")
                .await;
        };
        let facts = self.facts(claimed).await?;
        let settings = self.settings();
        let channel = facts
            .svc
            .slack_channel
            .clone()
            .or_else(|| settings.slack.channel.clone())
            .unwrap_or_default();
        let templates: &BTreeMap<String, String> = &settings.templates;
        let (headline, w1) = facts.notice.render("slack_headline", templates, &facts.svc);
        let (text, w2) = facts.notice.render("slack_text", templates, &facts.svc);
        let blocks = facts.notice.card(&headline);
        // Later news about an incident goes into the thread of its first post.
        let thread = match facts.origin.run.id != *run {
            true => announced_ts(&facts.origin),
            false => None,
        };
        let thread = thread.filter(|_| slack.threads());
        let deadline = settings.engine.step_deadline;
        let tag = format!("{run}/announce");
        let warning = w1.or(w2);
        let (channel, text, blocks, thread, tag, slack, warning) =
            (&channel, &text, &blocks, &thread, &tag, &slack, &warning);
        let finished = self
            .attempt_loop(run, "announce", deadline, true, move |attempt| async move {
                // A later attempt may follow one that posted and died before
                // its result was stored: look for that message first.
                let posted = slack
                    .post_for_run(channel, text, blocks, thread.as_deref(), tag, attempt > 1)
                    .await?;
                self.failpoint("announce-accepted").await;
                Ok(json!({
                    "channel": posted.channel,
                    "ts": posted.ts,
                    "thread_ts": thread,
                    "text": text,
                    "blocks": blocks,
                    "template_warning": warning,
                }))
            })
            .await?;
        Ok(matches!(finished, Finished::Succeeded(..)))
    }

    /// The `followup` step: when paging failed but the card went out, say
    /// so in the card's thread, so a human pages by hand.
    pub(super) async fn followup(&self, claimed: &ClaimedRun) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        let detail = self.store().run_detail(run).await?;
        let step = |name: &str| detail.steps.iter().find(|s| s.name == name);
        let page_error = step("page")
            .filter(|s| s.status == step_status::FAILED)
            .and_then(|s| s.error.clone());
        let card = step("announce")
            .filter(|s| s.status == step_status::SUCCEEDED)
            .and_then(|s| s.output.clone());
        let (Some(slack), Some(error), Some(card)) =
            (self.inner.providers.slack.clone(), page_error, card)
        else {
            return self
                .skip_step(
                    run,
                    "followup",
                    "nothing to follow up: the page went out, or there is no card to reply to",
                )
                .await;
        };
        let channel = card["channel"].as_str().unwrap_or_default().to_string();
        let ts = card["ts"]
            .as_str()
            .filter(|ts| !ts.is_empty())
            .map(str::to_owned);
        let text = format!(
            ":rotating_light: PagerDuty could not be paged ({}). Page the on-call engineer by hand.",
            error["message"].as_str().unwrap_or("unknown error")
        );
        let deadline = self.settings().engine.step_deadline;
        let tag = format!("{run}/followup");
        let (channel, text, ts, tag, slack) = (&channel, &text, &ts, &tag, &slack);
        let finished = self
            .attempt_loop(run, "followup", deadline, true, move |attempt| async move {
                let posted = slack.post_for_run(channel, text, &[], ts.as_deref(), tag, attempt > 1).await?;
                Ok(json!({"channel": posted.channel, "ts": posted.ts, "thread_ts": ts, "text": text}))
            })
            .await?;
        Ok(matches!(finished, Finished::Succeeded(..)))
    }

    async fn skip_step(&self, run: &RunId, step: &str, why: &str) -> Result<bool, EngineError> {
        self.store()
            .finish_step(
                run,
                step,
                step_status::SUCCEEDED,
                Some(&json!({"skipped": why})),
                None,
            )
            .await?;
        Ok(true)
    }
}

/// The Slack `ts` of a run's announcement, if it made one.
fn announced_ts(detail: &RunDetail) -> Option<String> {
    let step = detail
        .steps
        .iter()
        .find(|s| s.name == "announce" && s.status == step_status::SUCCEEDED)?;
    step.output
        .as_ref()?
        .get("ts")?
        .as_str()
        .filter(|ts| !ts.is_empty())
        .map(str::to_owned)
}

fn kind_of(detail: &RunDetail) -> Kind {
    match detail.run.outcome.as_deref() {
        Some("rollback") => {
            let failed = detail
                .steps
                .iter()
                .any(|s| s.name == "rollback" && s.status == step_status::FAILED);
            if failed {
                Kind::RollbackFailed
            } else {
                Kind::RolledBack
            }
        }
        Some("dry-run") => Kind::DryRun,
        Some("skip") => Kind::Skipped,
        Some("resolution") => Kind::Resolved,
        _ => Kind::Escalated,
    }
}

fn severity_of(kind: &Kind, pd: &crate::config::PagerDutySettings) -> Severity {
    match kind {
        Kind::RolledBack => pd.severity_rollback,
        Kind::RollbackFailed => pd.severity_rollback_failed,
        Kind::DryRun => pd.severity_dry_run,
        Kind::Resolved => Severity::Info,
        Kind::Escalated | Kind::Skipped => pd.severity_escalation,
    }
}
