//! The `watch` step: after a verified rollback, look every
//! `watch_interval` whether production recovered, for `watch_window`.
//! Between looks the run holds no worker and no connection: it is handed
//! back to the ledger (status `watching`) with its next look as
//! `not_before`, so any instance takes it up, after a restart too.
//!
//! - Recovered (Sentry resolved the alert, or the restored release is back
//!   above the alert's threshold with at least `min_sessions`): a reply in
//!   the card's thread, and the page resolved when `resolve_on_recovery`.
//! - Not recovered when the window ends (the restored release still below
//!   the threshold, with enough sessions to believe it): the service is
//!   frozen (no automatic rollback until a person resumes it), the on-call
//!   is paged again at `severity_rollback_failed`, and the thread says so.
//! - Could not tell by then (Sentry unreadable, too few sessions): frozen
//!   too (another automatic rollback would be a guess), the on-call paged
//!   at `severity_escalation`, and the thread says so.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::facts::Facts;
use super::{Engine, EngineError, RunCtx};
use crate::clock::{format_time, human_ms, now_ms};
use crate::config::ServiceSettings;
use crate::ingest::sentry::{self, Alert, Resource};
use crate::ledger::{StepName, StepStatus};
use crate::policy::Reading;
use crate::providers::pagerduty::Page;
use crate::providers::sentry::SessionsQuery;

/// What one look found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "found")]
pub(crate) enum Look {
    /// Sentry resolved the alert (the run of its resolution).
    Resolved { run: String },
    /// The restored release is healthy again.
    Healthy { reading: Reading },
    /// The restored release is still below the threshold.
    Crashing { reading: Reading },
    /// Cannot tell: why.
    Unknown { why: String },
}

impl Look {
    fn describe(&self) -> String {
        match self {
            Look::Resolved { run } => format!("Sentry resolved the alert (run {run})"),
            Look::Healthy { reading } | Look::Crashing { reading } => {
                format!("release {}: {}", reading.release, reading.describe())
            }
            Look::Unknown { why } => format!("cannot tell: {why}"),
        }
    }

    fn reading(&self) -> Option<&Reading> {
        match self {
            Look::Healthy { reading } | Look::Crashing { reading } => Some(reading),
            _ => None,
        }
    }
}

/// How a watch that did not end recovered is told.
struct Ending<'a> {
    /// Why the service is frozen; the page's summary.
    reason: &'a str,
    /// The reply in the card's thread.
    reply: &'a str,
    severity: &'a str,
    /// Suffix of the page's incident key.
    key: &'a str,
    /// The page's class.
    class: &'a str,
    reading: Option<&'a Reading>,
}

/// Notes the watch keeps on its run: what Sentry already counted for the
/// restored release when the rollback was verified, each look, and the
/// verdict (stored before it is acted on, so a watch interrupted while
/// acting on it carries it out instead of looking again).
const BASELINE: &str = "baseline";
const LOOK: &str = "look";
const VERDICT: &str = "verdict";

impl Engine {
    /// The `watch` step: one look, then finished or handed back until the
    /// next look.
    pub(super) async fn watch(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let facts = self.facts(ctx).await?;
        let rollback = facts.origin.step(StepName::Rollback);
        let Some(since) = rollback
            .filter(|s| s.status == StepStatus::Succeeded)
            .and_then(|s| s.finished_at_ms)
        else {
            let why = "nothing to watch: no verified rollback";
            return self.skip_step(ctx, StepName::Watch, why).await;
        };
        let run = &ctx.claimed.run.id;
        let svc = facts.svc.clone();
        let notes = self.store().notes(run).await?;
        if let Some(verdict) = notes.iter().rev().find(|n| n.kind == VERDICT) {
            let data = verdict.data.clone().unwrap_or_default();
            if let Ok(look) = serde_json::from_value::<Look>(data["look"].clone()) {
                let after = data["after_ms"].as_i64().unwrap_or_default();
                return self.conclude(ctx, &facts, look, after).await;
            }
        }
        let interval = svc.watch_interval.min(svc.watch_window);
        let first = since + interval.as_millis() as i64;
        let baseline = match notes.iter().find(|n| n.kind == BASELINE) {
            Some(n) => n
                .data
                .as_ref()
                .and_then(|d| serde_json::from_value::<Reading>(d["reading"].clone()).ok()),
            None => {
                // Sentry counts whole hours: what it already counted for the
                // restored release in this hour (lingering clients before the
                // rollback) is subtracted from every look.
                let read = self.restored_health(&svc, &facts, since).await;
                let (text, data) = match &read {
                    Ok(r) => (r.describe(), json!({"reading": r})),
                    Err(why) => (format!("unavailable: {why}"), json!({"unavailable": why})),
                };
                self.store()
                    .add_note(run, BASELINE, &text, Some(&data))
                    .await?;
                return self.look_later(ctx, (first - now_ms()).max(0) as u64).await;
            }
        };
        if now_ms() < first {
            return self.look_later(ctx, (first - now_ms()) as u64).await;
        }
        let alert = self.alert_of(ctx)?;
        let look = self
            .look(&svc, &facts, &alert, since, baseline.as_ref())
            .await?;
        let now = now_ms();
        let ends = since + svc.watch_window.as_millis() as i64;
        tracing::info!(look = %look.describe(), "watching the rollback recover");
        self.store()
            .add_note(run, LOOK, &look.describe(), None)
            .await?;
        if now < ends && matches!(look, Look::Crashing { .. } | Look::Unknown { .. }) {
            // Not yet: look again, the last look at the window's end.
            let next = ((ends - now) as u64).min(interval.as_millis() as u64);
            return self.look_later(ctx, next).await;
        }
        let data = json!({"look": look, "after_ms": now - since});
        self.store()
            .add_note(run, VERDICT, &look.describe(), Some(&data))
            .await?;
        self.conclude(ctx, &facts, look, now - since).await
    }

    /// Acts on the watch's verdict and finishes the step. Every action is
    /// safe to repeat: the freeze keeps a freeze, the second page has a key
    /// of its own, the replies are tagged.
    async fn conclude(
        &self,
        ctx: &RunCtx,
        facts: &Facts,
        look: Look,
        after_ms: i64,
    ) -> Result<bool, EngineError> {
        let svc = &facts.svc;
        let after = human_ms(after_ms);
        match &look {
            Look::Resolved { .. } | Look::Healthy { .. } => {
                let what = match look.reading() {
                    Some(r) => r.describe(),
                    None => look.describe(),
                };
                let reply =
                    format!(":white_check_mark: Recovered {after} after the rollback: {what}.");
                let replied = self.reply(ctx, facts, &reply, "watch").await;
                let resolved = match svc.resolve_on_recovery && look.reading().is_some() {
                    true => Some(self.resolve_page(facts, &reply).await),
                    false => None,
                };
                let output = json!({
                    "recovered": true,
                    "after_ms": after_ms,
                    "look": look.describe(),
                    "reading": look.reading(),
                    "reply": replied,
                    "resolved_page": resolved,
                });
                self.end_watch(ctx, &output, None).await
            }
            Look::Crashing { reading: r } => {
                let reason =
                    format!(
                    "the rollback to {} (release {}) did not help: {} {after} after it (run {})",
                    facts.notice.to.as_ref().map(|d| d.id.as_str()).unwrap_or("?"),
                    r.release,
                    r.describe(),
                    ctx.claimed.run.id
                );
                let reply = format!(
                    ":x: The rollback did not help: {} {after} after it. Automatic rollbacks of {} are frozen until someone runs `backstop resume {}`.",
                    r.describe(),
                    svc.name,
                    svc.name
                );
                let severity = self.settings().pagerduty.severity_rollback_failed;
                let mut output = json!({
                    "recovered": false,
                    "after_ms": after_ms,
                    "look": look.describe(),
                    "reading": r,
                });
                let ending = Ending {
                    reason: &reason,
                    reply: &reply,
                    severity: severity.as_str(),
                    key: "did-not-help",
                    class: "rollback-did-not-help",
                    reading: Some(r),
                };
                self.freeze_and_page(ctx, facts, ending, &mut output).await
            }
            Look::Unknown { why } => {
                // Without evidence either way, a person decides: another
                // automatic rollback (to an older deployment still) would be
                // a guess on top of a guess.
                let window = humantime::format_duration(svc.watch_window);
                let reason = format!(
                    "could not tell whether the rollback to {} helped within {window}: {why} (run {})",
                    facts.notice.to.as_ref().map(|d| d.id.as_str()).unwrap_or("?"),
                    ctx.claimed.run.id
                );
                let reply = format!(
                    ":grey_question: Could not tell whether the rollback helped within {window}: {why}. Automatic rollbacks of {} are frozen until someone checks the release's health in Sentry and runs `backstop resume {}`.",
                    svc.name, svc.name
                );
                let severity = self.settings().pagerduty.severity_escalation;
                let mut output = json!({
                    "recovered": Value::Null,
                    "after_ms": after_ms,
                    "look": look.describe(),
                });
                let ending = Ending {
                    reason: &reason,
                    reply: &reply,
                    severity: severity.as_str(),
                    key: "could-not-tell",
                    class: "rollback-unconfirmed",
                    reading: None,
                };
                self.freeze_and_page(ctx, facts, ending, &mut output).await
            }
        }
    }

    /// A watch that did not end recovered: the service is frozen first (no
    /// automatic rollback may cascade to an older deployment while a person
    /// is being found), the thread told, with a Resume button, and the
    /// on-call paged again under a key of its own (retried like any page).
    async fn freeze_and_page(
        &self,
        ctx: &RunCtx,
        facts: &Facts,
        ending: Ending<'_>,
        output: &mut Value,
    ) -> Result<bool, EngineError> {
        let svc = &facts.svc;
        self.store()
            .freeze(&ctx.claimed.claim, &svc.name, ending.reason)
            .await?;
        self.failpoint("watch-frozen").await;
        // The thread hears it at once; the page may take retries.
        let resume = match self.settings().slack.signing_secret.is_some() {
            true => crate::notice::actions_block(
                &[crate::ingest::slack::ClickAction::Resume],
                &ctx.claimed.run.id.0,
                &svc.name,
                None,
                None,
            ),
            false => None,
        };
        let replied = self
            .reply_with(ctx, facts, ending.reply, "watch", resume)
            .await;
        let deadline = self.settings().engine.step_deadline;
        let ending = &ending;
        let paged = self
            .attempt_loop(ctx, StepName::Watch, deadline, false, |_| async move {
                self.page_again(facts, ending).await
            })
            .await?;
        let paged = match paged {
            super::step::Finished::Succeeded(v, n) => {
                self.store()
                    .finish_attempt(
                        &ctx.claimed.claim,
                        StepName::Watch,
                        n,
                        crate::ledger::AttemptOutcome::Ok,
                        None,
                    )
                    .await?;
                Ok(v)
            }
            super::step::Finished::Failed(e) => Err(e),
        };
        output["frozen"] = json!(ending.reason);
        output["page"] = json!(paged.as_ref().ok());
        output["reply"] = replied;
        let error = paged.err();
        self.end_watch(ctx, output, error.as_ref()).await
    }

    /// Hands the run back until the next look, `ms` from now.
    async fn look_later(&self, ctx: &RunCtx, ms: u64) -> Result<bool, EngineError> {
        let delay = Duration::from_millis(ms.max(10));
        self.store().watch_later(&ctx.claimed.claim, delay).await?;
        ctx.later.store(true, Ordering::SeqCst);
        Ok(true)
    }

    /// The restored release's health from `since` (Sentry widens it to
    /// the hour) until now, within `sentry.confirm_timeout`.
    async fn restored_health(
        &self,
        svc: &ServiceSettings,
        facts: &Facts,
        since: i64,
    ) -> Result<Reading, String> {
        let Some(release) = facts.notice.to.as_ref().and_then(|d| d.release.clone()) else {
            return Err("the restored deployment has no release".into());
        };
        let Some(sentry) = self.inner.providers.sentry.as_ref() else {
            return Err("sentry.token or sentry.org is not configured".into());
        };
        let unit = match facts.notice.metric.as_str() {
            "users" => "user",
            _ => "session",
        };
        let query = SessionsQuery {
            projects: &svc.sentry_projects,
            environment: &svc.environment,
            start_ms: since,
            end_ms: now_ms(),
            unit,
            release: Some(&release),
        };
        let timeout = self.settings().sentry.confirm_timeout;
        match tokio::time::timeout(timeout, sentry.health(&query)).await {
            Ok(Ok(found)) => {
                Ok(found
                    .into_iter()
                    .find(|r| r.release == release)
                    .unwrap_or(Reading {
                        release,
                        crash_free: None,
                        sessions: 0,
                    }))
            }
            Ok(Err(e)) => Err(format!("Sentry unreachable: {e}")),
            Err(_) => Err(format!(
                "Sentry did not answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// One look: did Sentry resolve the alert, and how is the restored
    /// release doing since the rollback (less what Sentry had already
    /// counted for it in that hour)?
    async fn look(
        &self,
        svc: &ServiceSettings,
        facts: &Facts,
        alert: &Alert,
        since: i64,
        baseline: Option<&Reading>,
    ) -> Result<Look, EngineError> {
        if alert.resource == Resource::MetricAlert {
            let mut resolved = alert.clone();
            resolved.action = "resolved".into();
            if let Some(run) = self
                .store()
                .run_for_dedup_key(&resolved.dedup_key())
                .await?
            {
                return Ok(Look::Resolved { run: run.0 });
            }
        }
        let Some(threshold) = alert.threshold else {
            let why = "the alert carries no threshold".into();
            return Ok(Look::Unknown { why });
        };
        let reading = match self.restored_health(svc, facts, since).await {
            Ok(now) => match baseline {
                Some(before) => since_baseline(&now, before),
                None => now,
            },
            Err(why) => return Ok(Look::Unknown { why }),
        };
        if reading.sessions < svc.min_sessions {
            let why = format!(
                "only {} sessions of release {} since the rollback (min_sessions {})",
                crate::policy::thousands(reading.sessions),
                reading.release,
                svc.min_sessions
            );
            return Ok(Look::Unknown { why });
        }
        Ok(match reading.crash_free {
            Some(rate) if rate >= threshold => Look::Healthy { reading },
            Some(_) => Look::Crashing { reading },
            None => Look::Unknown {
                why: format!("no crash-free rate for release {}", reading.release),
            },
        })
    }

    /// The alert this run was started by.
    pub(super) fn alert_of(&self, ctx: &RunCtx) -> Result<Alert, EngineError> {
        let resource =
            Resource::from_header(&ctx.claimed.resource).unwrap_or(Resource::MetricAlert);
        sentry::parse(resource, ctx.claimed.body.as_bytes())
            .map_err(|e| EngineError::Store(crate::ledger::StoreError::Corrupt(e.to_string())))
    }

    async fn end_watch(
        &self,
        ctx: &RunCtx,
        output: &Value,
        error: Option<&crate::ledger::StepError>,
    ) -> Result<bool, EngineError> {
        let status = match error {
            Some(_) => StepStatus::Failed,
            None => StepStatus::Succeeded,
        };
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                StepName::Watch,
                status,
                Some(output),
                error,
            )
            .await?;
        Ok(error.is_none())
    }

    /// A reply in the thread of the incident's card (a post of its own
    /// when there is no card). The post is tagged, so a look repeated after
    /// a crash finds it instead of posting twice. What happened, as JSON.
    pub(super) async fn reply(&self, ctx: &RunCtx, facts: &Facts, text: &str, what: &str) -> Value {
        self.reply_with(ctx, facts, text, what, None).await
    }

    /// Like [`Engine::reply`], with buttons under the text.
    pub(super) async fn reply_with(
        &self,
        ctx: &RunCtx,
        facts: &Facts,
        text: &str,
        what: &str,
        buttons: Option<Value>,
    ) -> Value {
        let Some(slack) = self.inner.providers.slack.as_ref() else {
            return json!({"skipped": "slack is not configured"});
        };
        let card = facts.origin.output_of(StepName::Announce);
        let channel = card
            .and_then(|c| c["channel"].as_str().map(str::to_owned))
            .or_else(|| facts.svc.slack_channel.clone())
            .or_else(|| self.settings().slack.channel.clone())
            .unwrap_or_default();
        let ts = card
            .and_then(|c| c["ts"].as_str())
            .filter(|ts| !ts.is_empty() && slack.threads());
        let blocks: Vec<Value> = match buttons {
            Some(actions) => vec![
                json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}),
                actions,
            ],
            None => Vec::new(),
        };
        let tag = format!("{}/{what}", ctx.claimed.run.id);
        match slack
            .post_for_run(&channel, text, &blocks, ts, &tag, true)
            .await
        {
            Ok(posted) => {
                json!({"channel": posted.channel, "ts": posted.ts, "thread_ts": ts, "text": text})
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reply in the card's thread");
                json!({"error": e.to_string()})
            }
        }
    }

    /// Pages again, under a key of its own (the incident's page is open
    /// already; this one must ring).
    async fn page_again(
        &self,
        facts: &Facts,
        ending: &Ending<'_>,
    ) -> Result<Value, crate::ledger::StepError> {
        let Some(pd) = self.inner.providers.pagerduty.as_ref() else {
            return Ok(json!({"skipped": "pagerduty is not configured"}));
        };
        let mut page = self.page_of(
            facts,
            format!("{}: {}", facts.svc.name, ending.reason),
            ending.severity,
        );
        page.incident_key = super::page::sub_incident_key(&facts.incident_key, ending.key);
        page.class = ending.class.into();
        page.custom_details = json!({
            "notice": facts.notice,
            "reading": ending.reading,
            "decision": facts.origin.run.decision,
        });
        let opened = pd.trigger(&page).await?;
        Ok(json!({
            "incident_key": opened.incident_key,
            "incident_id": opened.incident_id,
            "severity": page.severity,
            "summary": page.summary,
        }))
    }

    /// Resolves the incident's page (recovered, `resolve_on_recovery`).
    async fn resolve_page(&self, facts: &Facts, summary: &str) -> Value {
        let Some(pd) = self.inner.providers.pagerduty.as_ref() else {
            return json!({"skipped": "pagerduty is not configured"});
        };
        let page = self.page_of(facts, summary.to_string(), "info");
        let opened = facts
            .origin
            .output_of(StepName::Page)
            .and_then(|o| o["incident_id"].as_str());
        match pd.resolve(&page, opened).await {
            Ok(r) => json!({"incident_key": r.incident_key}),
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    /// A page about this incident.
    pub(super) fn page_of(&self, facts: &Facts, summary: String, severity: &str) -> Page {
        Page {
            incident_key: facts.incident_key.clone(),
            summary,
            severity: severity.into(),
            component: facts.svc.name.clone(),
            group: facts.svc.vercel_project.clone(),
            class: serde_json::to_value(facts.notice.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            timestamp: format_time(now_ms()),
            custom_details: json!({ "notice": facts.notice, "decision": facts.origin.run.decision }),
            links: facts.notice.links(),
        }
    }
}

/// What happened after the baseline: sessions and crashes counted since.
pub(crate) fn since_baseline(now: &Reading, before: &Reading) -> Reading {
    let crashed = |r: &Reading| r.sessions as f64 * (100.0 - r.crash_free.unwrap_or(100.0)) / 100.0;
    let sessions = now.sessions.saturating_sub(before.sessions);
    let crash_free = (sessions > 0 && now.crash_free.is_some()).then(|| {
        let new_crashes = (crashed(now) - crashed(before)).max(0.0);
        (100.0 - new_crashes / sessions as f64 * 100.0).clamp(0.0, 100.0)
    });
    Reading {
        release: now.release.clone(),
        crash_free,
        sessions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(rate: f64, sessions: u64) -> Reading {
        Reading {
            release: "a".into(),
            crash_free: Some(rate),
            sessions,
        }
    }

    #[test]
    fn a_look_counts_only_what_came_after_the_baseline() {
        // 1,000 healthy sessions before the rollback; 2,000 more at 95%.
        let before = r(100.0, 1_000);
        let now = r(100.0 - 100.0 * 100.0 / 3_000.0, 3_000);
        let after = since_baseline(&now, &before);
        assert_eq!(after.sessions, 2_000);
        assert!((after.crash_free.unwrap() - 95.0).abs() < 1e-9, "{after:?}");
        // Nothing new: no rate to judge.
        assert_eq!(since_baseline(&before, &before).crash_free, None);
    }
}
