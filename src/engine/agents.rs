//! The agents, which write for people on the model the team picks; no
//! model ever decides anything:
//! - `brief`, after a rollback, a failed rollback or an escalation: what is
//!   probably failing, the likely change, what to check first, from the
//!   decision's facts, Sentry's top unresolved issues in the bad release
//!   and the deployments' commit messages;
//! - `recap`, when a rollback's run ends (after its watch): a timeline draft
//!   for the postmortem.
//!
//! Both run after the rollback, the page and the card, and can only add a
//! reply in the card's thread (and, in PagerDuty REST mode, a note on the
//! incident). Their failure (a timeout, a 4xx or 5xx, a 429 after waiting,
//! an empty answer, an unknown model) is recorded on their step and logged
//! once; the run's outcome does not change. What is sent is listed in the
//! README: the facts below, never a secret, never the raw alert body.

use serde_json::{json, Value};

use super::{Engine, EngineError, RunCtx};
use crate::clock::format_time;
use crate::config::{PagerDutyMode, ServiceSettings};
use crate::ledger::{RunDetail, StepName, StepStatus};
use crate::policy::Decision;
use crate::providers::ai::AiClient;

/// Longest a read of the brief's facts (Sentry's issues, a deployment's
/// commit) may take; what is not read in time is left out.
const FACTS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The system message of every agent.
pub const SYSTEM: &str = "You write for the on-call engineer during a production incident. Be short and concrete. Use only the facts you are given; when they do not say, say you do not know. You do not decide anything: Backstop already acted.";

/// The brief's built-in prompt (a minijinja template; see the README for
/// its variables).
pub const BRIEF_PROMPT: &str = "Service {{ service }}: {{ outcome }}. {{ reason }}
The crashing release is {{ release }}{% if restored_release %}; production was restored to {{ restored_release }}{% endif %}.
Crash-free rate {{ crash_free }} (threshold {{ threshold }}).{% if health %}
Release health: {{ health }}{% endif %}
Top unresolved issues in release {{ release }}:
{% for i in issues %}- {{ i.title }} in {{ i.culprit }}: {{ i.count }} events, first seen {{ i.first_seen }}
{% else %}- none found
{% endfor %}Deployments:
{% for d in deployments %}- {{ d.role }} {{ d.id }} (release {{ d.release }}): \"{{ d.message }}\" on {{ d.ref }} by {{ d.author }}
{% endfor %}
In at most 5 short lines: what is failing, the likely change, what to check first.";

/// The recap's built-in prompt.
pub const RECAP_PROMPT: &str = "What happened to {{ service }} (times UTC):
{% for e in events %}- {{ e.at }}: {{ e.what }}
{% endfor %}
Write a 3 to 6 line timeline draft of this incident for the postmortem.";

/// One agent as configured for a service.
#[derive(Debug, Clone)]
pub struct Agent {
    /// `brief` or `recap`.
    pub name: &'static str,
    /// The model it asks.
    pub model: String,
    /// Its prompt template.
    pub prompt: String,
}

impl Engine {
    /// The agent `name` for `svc`, when `[ai]` is on and the agent is not
    /// turned off (globally or for the service).
    pub fn agent(&self, svc: &ServiceSettings, name: &'static str) -> Option<Agent> {
        let ai = &self.settings().ai;
        if !ai.on() {
            return None;
        }
        let global = ai.agents.get(name);
        let local = svc.ai.get(name);
        let enabled = local
            .and_then(|a| a.enabled)
            .or(global.and_then(|a| a.enabled))
            .unwrap_or(true);
        if !enabled {
            return None;
        }
        let model = local
            .and_then(|a| a.model.clone())
            .or(global.and_then(|a| a.model.clone()))
            .or(ai.model.clone())?;
        let prompt = local
            .and_then(|a| a.prompt.clone())
            .or(global.and_then(|a| a.prompt.clone()))
            .unwrap_or_else(|| match name {
                "recap" => RECAP_PROMPT.into(),
                _ => BRIEF_PROMPT.into(),
            });
        Some(Agent {
            name,
            model,
            prompt,
        })
    }

    fn ai(&self) -> Option<&AiClient> {
        self.inner.providers.ai.as_ref()
    }

    /// The `brief` step.
    pub(super) async fn brief(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let facts = self.facts(ctx).await?;
        let (Some(agent), Some(ai)) = (self.agent(&facts.svc, "brief"), self.ai()) else {
            return self
                .skip_step(ctx, StepName::Brief, "the brief agent is off")
                .await;
        };
        let detail = self.store().run_detail(&ctx.claimed.run.id).await?;
        let vars = self.brief_facts(&facts.svc, &detail, &facts.notice).await;
        self.ask_agent(
            ctx,
            StepName::Brief,
            &agent,
            ai,
            &vars,
            &detail,
            Some(&facts),
        )
        .await
    }

    /// The `recap` step.
    pub(super) async fn recap(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let facts = self.facts(ctx).await?;
        let (Some(agent), Some(ai)) = (self.agent(&facts.svc, "recap"), self.ai()) else {
            return self
                .skip_step(ctx, StepName::Recap, "the recap agent is off")
                .await;
        };
        let detail = self.store().run_detail(&ctx.claimed.run.id).await?;
        let vars = json!({"service": facts.svc.name, "events": timeline(&detail)});
        self.ask_agent(ctx, StepName::Recap, &agent, ai, &vars, &detail, None)
            .await
    }

    /// Renders the prompt, asks the model, replies in the thread (once: the
    /// reply is tagged, so a retry after a crash finds it) and, for the
    /// brief in PagerDuty REST mode, notes it on the incident.
    #[allow(clippy::too_many_arguments)]
    async fn ask_agent(
        &self,
        ctx: &RunCtx,
        step: StepName,
        agent: &Agent,
        ai: &AiClient,
        vars: &Value,
        detail: &RunDetail,
        facts: Option<&super::facts::Facts>,
    ) -> Result<bool, EngineError> {
        let claim = &ctx.claimed.claim;
        let env = minijinja::Environment::new();
        let prompt = match env.render_str(&agent.prompt, vars) {
            Ok(p) => p,
            Err(e) => {
                let err = super::step::StepError::fatal(
                    "template",
                    format!("the {} prompt does not render: {e}", agent.name),
                );
                return self.agent_failed(ctx, step, &err).await;
            }
        };
        let max_tokens = self.settings().ai.max_tokens;
        // Bounded as a whole (retries included): an agent never holds the
        // run for longer than `ai.timeout`.
        let timeout = self.settings().ai.timeout;
        let by = tokio::time::Instant::now() + timeout;
        let answer = tokio::time::timeout(
            timeout,
            ai.complete_by(&agent.model, SYSTEM, &prompt, max_tokens, Some(by)),
        )
        .await;
        let text = match answer {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let err = super::step::StepError::from(e);
                return self.agent_failed(ctx, step, &err).await;
            }
            Err(_) => {
                let err = super::step::StepError::fatal(
                    "timeout",
                    format!(
                        "no answer within {} (ai.timeout)",
                        humantime::format_duration(timeout)
                    ),
                );
                return self.agent_failed(ctx, step, &err).await;
            }
        };
        let title = match step {
            StepName::Recap => "Recap",
            _ => "Brief",
        };
        let line = format!(
            ":robot_face: *{title}* ({}; written by a model, not a decision)\n{}",
            slack_escape(&agent.model),
            slack_escape(&text)
        );
        let replied = match (
            self.inner.providers.slack.as_ref(),
            detail.output_of(StepName::Announce),
        ) {
            (Some(slack), Some(card)) => {
                let (channel, ts) = (
                    card["channel"].as_str().unwrap_or_default(),
                    card["ts"].as_str(),
                );
                let thread = ts.filter(|t| !t.is_empty() && slack.threads());
                // A recap written again after an undo is a post of its own.
                let tag = match (step, detail.undone_at_ms().is_some()) {
                    (StepName::Recap, true) => format!("{}/{step}/undone", detail.run.id),
                    _ => format!("{}/{step}", detail.run.id),
                };
                match slack
                    .post_for_run(channel, &line, &[], thread, &tag, true)
                    .await
                {
                    Ok(p) => json!({"channel": p.channel, "ts": p.ts}),
                    Err(e) => json!({"error": e.to_string()}),
                }
            }
            _ => json!({"skipped": "no card to reply to"}),
        };
        let noted = match (step, facts) {
            (StepName::Brief, Some(f)) => self.note_incident(f, &text).await,
            _ => Value::Null,
        };
        // Posted (and noted), not yet finished: a crash here must not post twice.
        self.failpoint(&format!("{step}-posted")).await;
        let output = json!({
            "model": agent.model,
            "text": text,
            "reply": replied,
            "pagerduty_note": noted,
        });
        self.store()
            .finish_step(claim, step, StepStatus::Succeeded, Some(&output), None)
            .await?;
        Ok(true)
    }

    /// Records an agent's failure on its step (logged once); the run's
    /// outcome does not change.
    async fn agent_failed(
        &self,
        ctx: &RunCtx,
        step: StepName,
        err: &super::step::StepError,
    ) -> Result<bool, EngineError> {
        tracing::warn!(step = %step, error = %err, "the agent could not write");
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                step,
                StepStatus::Failed,
                None,
                Some(err),
            )
            .await?;
        Ok(true)
    }

    /// In PagerDuty REST mode, the brief as a note on the incident. (The
    /// Events API has no way to add to an incident after its trigger.)
    async fn note_incident(&self, facts: &super::facts::Facts, text: &str) -> Value {
        let Some(pd) = self.inner.providers.pagerduty.as_ref() else {
            return json!({"skipped": "pagerduty is not configured"});
        };
        if self.settings().pagerduty.mode != PagerDutyMode::Rest {
            return json!({"skipped": "the Events API cannot add a note to an incident"});
        }
        let Some(id) = facts
            .origin
            .output_of(StepName::Page)
            .and_then(|o| o["incident_id"].as_str())
        else {
            return json!({"skipped": "the incident's id is not known"});
        };
        // Once per run: a brief resumed after a crash finds its note there
        // (PagerDuty has no idempotency key for notes; the run id is ours).
        let head = format!("Brief for Backstop run {}", facts.origin.run.id);
        match pd.notes(id).await {
            Ok(notes) if notes.iter().any(|n| n.starts_with(&head)) => {
                return json!({"incident_id": id, "already": true});
            }
            Ok(_) => {}
            Err(e) => return json!({"error": e.to_string()}),
        }
        match pd
            .note(
                id,
                &format!("{head} (written by a model, not a decision):\n{text}"),
            )
            .await
        {
            Ok(()) => json!({"incident_id": id}),
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    /// The brief's facts: the decision, Sentry's top unresolved issues in
    /// the crashing release, the deployments' commits. Nothing else.
    async fn brief_facts(
        &self,
        svc: &ServiceSettings,
        detail: &RunDetail,
        notice: &crate::notice::Notice,
    ) -> Value {
        let decision: Option<Decision> = detail
            .run
            .decision
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        let release = notice.from.as_ref().and_then(|d| d.release.clone());
        let issues = match (&release, self.inner.providers.sentry.as_ref()) {
            (Some(r), Some(sentry)) => {
                let read = sentry.top_issues(&svc.sentry_projects, &svc.environment, r, 5);
                match tokio::time::timeout(FACTS_TIMEOUT, read).await {
                    Ok(Ok(issues)) => issues,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read Sentry's issues for the brief");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let mut deployments = Vec::new();
        for (role, d) in [("rolled back from", &notice.from), ("restored", &notice.to)] {
            let Some(d) = d else { continue };
            if notice.outcome != crate::notice::Kind::RolledBack && role == "restored" {
                continue;
            }
            let meta = match self.vercel() {
                Ok(v) => tokio::time::timeout(FACTS_TIMEOUT, v.deployment_meta(&d.id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let text = |k: &str| meta[k].as_str().unwrap_or("?").to_string();
            deployments.push(json!({
                "role": role,
                "id": d.id,
                "release": d.release.clone().unwrap_or_else(|| "?".into()),
                "message": text("githubCommitMessage").lines().next().unwrap_or("?"),
                "ref": text("githubCommitRef"),
                "author": text("githubCommitAuthorName"),
            }));
        }
        let pct = |x: Option<f64>| x.map(|x| format!("{x}%")).unwrap_or_else(|| "?".into());
        json!({
            "service": svc.name,
            "outcome": serde_json::to_value(notice.outcome).unwrap_or(Value::Null),
            "reason": notice.reason,
            "release": release.unwrap_or_else(|| "?".into()),
            "restored_release": match notice.moved {
                true => notice.to.as_ref().and_then(|d| d.release.clone()),
                false => None,
            },
            "crash_free": pct(notice.rate),
            "threshold": pct(notice.threshold),
            "health": decision.and_then(|d| d.readings).map(|r| crate::notice::health_text(&r)),
            "issues": issues,
            "deployments": deployments,
        })
    }
}

/// What happened on the run, in order, for the recap.
fn timeline(d: &RunDetail) -> Vec<Value> {
    let mut events = vec![(
        d.run.created_at_ms,
        format!("critical alert received ({})", d.action),
    )];
    if let Some(at) = d.run.decided_at_ms {
        events.push((
            at,
            format!(
                "decided: {} ({})",
                d.run.outcome.map_or("?", |o| o.as_str()),
                d.run.reason.as_deref().unwrap_or("")
            ),
        ));
    }
    for s in &d.steps {
        let Some(at) = s.finished_at_ms else { continue };
        let what = match (s.name, s.status) {
            (StepName::Rollback, StepStatus::Succeeded) => "rollback verified".to_string(),
            (StepName::Rollback, StepStatus::Failed) => "rollback failed".to_string(),
            (StepName::Page, StepStatus::Succeeded) => "on-call paged".to_string(),
            (StepName::Announce, StepStatus::Succeeded) => "announced in Slack".to_string(),
            (StepName::Watch, _) => {
                let look = s
                    .output
                    .as_ref()
                    .and_then(|o| o["look"].as_str())
                    .unwrap_or("?");
                match s.output.as_ref().map(|o| &o["recovered"]) {
                    Some(Value::Bool(true)) => format!("recovered: {look}"),
                    Some(Value::Bool(false)) => format!("did not recover, service frozen: {look}"),
                    _ => format!("recovery unknown: {look}"),
                }
            }
            (StepName::Undo, StepStatus::Succeeded) => "a person undid the rollback".to_string(),
            _ => continue,
        };
        events.push((at, what));
    }
    for n in &d.notes {
        if n.kind.starts_with("pagerduty:") || n.kind == "joined" {
            events.push((n.at_ms, n.text.clone()));
        }
    }
    events.sort_by_key(|(at, _)| *at);
    events
        .into_iter()
        .map(|(at, what)| json!({"at": format_time(at).get(11..19).unwrap_or("?"), "what": what}))
        .collect()
}

/// Slack mrkdwn: `&`, `<` and `>` escaped, so a model's text cannot ping
/// or link.
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prompts_render_with_their_documented_variables() {
        let env = minijinja::Environment::new();
        let brief = env
            .render_str(
                BRIEF_PROMPT,
                json!({
                    "service": "storefront", "outcome": "rolled-back", "reason": "roll back a to b",
                    "release": "3f2c1a9", "restored_release": "9be1c07", "crash_free": "92.1%", "threshold": "99.5%",
                    "health": "release 3f2c1a9: 92.1% over 2,140 sessions",
                    "issues": [{"title": "TypeError", "culprit": "checkout", "count": 150, "first_seen": "2026-11-26T14:00:00Z"}],
                    "deployments": [{"role": "rolled back from", "id": "dpl_a", "release": "3f2c1a9", "message": "new checkout", "ref": "main", "author": "Ana"}],
                }),
            )
            .unwrap();
        assert!(
            brief.contains("- TypeError in checkout: 150 events"),
            "{brief}"
        );
        assert!(
            brief.contains(
                "rolled back from dpl_a (release 3f2c1a9): \"new checkout\" on main by Ana"
            ),
            "{brief}"
        );
        let recap = env
            .render_str(RECAP_PROMPT, json!({"service": "storefront", "events": [{"at": "14:02:10", "what": "rollback verified"}]}))
            .unwrap();
        assert!(recap.contains("- 14:02:10: rollback verified"), "{recap}");
        assert_eq!(
            slack_escape("<@U1> & <!here>"),
            "&lt;@U1&gt; &amp; &lt;!here&gt;"
        );
    }
}
