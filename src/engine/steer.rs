//! What the paged engineer does from the card: **Undo** a rollback,
//! **Hold** or **Resume** the service. A press is checked (who may press,
//! whether it applies) and stored as a step of the card's run, once
//! (`Store::request_step`); a worker carries it out like any step, fenced
//! by the run's claim. The card is then updated so its buttons cannot be
//! pressed again, and the thread says who did what.
//!
//! PagerDuty's webhooks land here too: an ack, a resolve or a reassignment
//! of a run's incident is noted on the run and told in the card's thread.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::step::Finished;
use super::{Engine, EngineError, RunCtx};
use crate::clock::{format_time, human_ms, now_ms, parse_time};
use crate::ingest::pagerduty::IncidentEvent;
use crate::ingest::slack::{Click, ClickAction};
use crate::ledger::{Requested, RunDetail, RunId, StepName, StepStatus, StoreError, UndoDone};
use crate::notice::actions_block;

/// How long a user group's members are trusted before being read again.
const GROUP_TTL: Duration = Duration::from_secs(60);

/// Who asked for a step, as the request's note keeps it.
#[derive(Debug, Clone, Default)]
pub struct Asker {
    /// `<@U123>` for a Slack user, `cli (name)` from the command line.
    pub by: String,
    /// Slack user id, when pressed in Slack.
    pub user_id: Option<String>,
    /// Where to answer the presser only.
    pub response_url: Option<String>,
}

impl Asker {
    /// A person at the command line.
    pub fn cli() -> Self {
        Self {
            by: crate::ledger::cli_user(),
            ..Self::default()
        }
    }
}

/// Cached members of Slack user groups.
#[derive(Default)]
pub(crate) struct Groups(Mutex<BTreeMap<String, (Instant, Vec<String>)>>);

fn step_of(action: ClickAction) -> StepName {
    match action {
        ClickAction::Undo => StepName::Undo,
        ClickAction::Hold => StepName::Hold,
        ClickAction::Resume => StepName::Resume,
    }
}

impl Engine {
    /// A verified button press: who may press, whether it applies, and the
    /// request stored. Returns what to tell the presser, if anything (the
    /// card itself shows what was done).
    pub async fn press(&self, click: &Click) -> Result<Option<String>, StoreError> {
        if !self.may_press(&click.user_id).await {
            tracing::warn!(user = %click.user_id, action = click.action.name(), "button pressed by someone not allowed");
            return Ok(Some(
                "You are not allowed to steer Backstop (slack.allowed_users / slack.allowed_usergroups). Nothing was changed.".into(),
            ));
        }
        let asker = Asker {
            by: format!("<@{}>", click.user_id),
            user_id: Some(click.user_id.clone()),
            response_url: click.response_url.clone(),
        };
        self.ask(&RunId(click.run.clone()), click.action, &asker)
            .await
    }

    /// Asks for `action` on `run` (from Slack or the command line). Returns
    /// why it was refused, if it was.
    pub async fn ask(
        &self,
        run: &RunId,
        action: ClickAction,
        asker: &Asker,
    ) -> Result<Option<String>, StoreError> {
        let detail = match self.store().run_detail(run).await {
            Ok(d) => d,
            Err(StoreError::NotFound(_)) => return Ok(Some(format!("There is no run {run}."))),
            Err(e) => return Err(e),
        };
        if detail.run.service.is_none() {
            return Ok(Some(format!("Run {run} concerns no configured service.")));
        }
        if action == ClickAction::Undo {
            let verified = detail
                .step(StepName::Rollback)
                .is_some_and(|s| s.status == StepStatus::Succeeded);
            if !verified {
                return Ok(Some(format!(
                    "Run {run} made no verified rollback: there is nothing to undo."
                )));
            }
        }
        let data = json!({"user_id": asker.user_id, "response_url": asker.response_url});
        let step = step_of(action);
        match self
            .store()
            .request_step(run, step, &asker.by, &data)
            .await?
        {
            Requested::Stored => {
                tracing::info!(run.id = %run, action = action.name(), by = %asker.by, "asked");
                self.wake();
                Ok(None)
            }
            Requested::Already(by) => Ok(Some(format!(
                "{} was already asked for on this run{}.",
                capitalized(action.name()),
                by.map(|b| format!(" by {b}")).unwrap_or_default()
            ))),
            Requested::NoRun => Ok(Some(format!("There is no run {run}."))),
        }
    }

    /// True when `user` may press: listed in `slack.allowed_users`, a
    /// member of one of `slack.allowed_usergroups`, or both lists empty.
    pub async fn may_press(&self, user: &str) -> bool {
        let slack = &self.settings().slack;
        if slack.allowed_users.is_empty() && slack.allowed_usergroups.is_empty() {
            return true;
        }
        if slack.allowed_users.iter().any(|u| u == user) {
            return true;
        }
        for group in &slack.allowed_usergroups {
            if self.group_members(group).await.iter().any(|u| u == user) {
                return true;
            }
        }
        false
    }

    async fn group_members(&self, group: &str) -> Vec<String> {
        {
            let cache = self
                .inner
                .groups
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((at, members)) = cache.get(group) {
                if at.elapsed() < GROUP_TTL {
                    return members.clone();
                }
            }
        }
        let Some(slack) = self.inner.providers.slack.as_ref() else {
            return Vec::new();
        };
        // Bounded: the answer to Slack must go out within its 3 s.
        let read = tokio::time::timeout(Duration::from_secs(2), slack.usergroup_members(group));
        match read.await {
            Ok(Ok(members)) => {
                let mut cache = self
                    .inner
                    .groups
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                cache.insert(group.to_string(), (Instant::now(), members.clone()));
                members
            }
            Ok(Err(e)) => {
                tracing::warn!(group, error = %e, "cannot read a Slack user group; its members may not press");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(group, "Slack did not list a user group in time");
                Vec::new()
            }
        }
    }

    /// Who asked for `step` on the run, from the request's note.
    async fn asker(&self, run: &RunId, step: StepName) -> Result<Asker, EngineError> {
        let kind = format!("asked:{step}");
        let notes = self.store().notes(run).await?;
        // The latest ask: a refused one may have been asked again since.
        let note = notes.iter().rev().find(|n| n.kind == kind);
        let data = note.and_then(|n| n.data.clone()).unwrap_or(Value::Null);
        Ok(Asker {
            by: note
                .map(|n| n.text.clone())
                .unwrap_or_else(|| "someone".into()),
            user_id: data["user_id"].as_str().map(str::to_owned),
            response_url: data["response_url"].as_str().map(str::to_owned),
        })
    }

    /// The `undo` step: production back on the deployment the rollback
    /// moved away from, verified; that deployment marked `overridden`; the
    /// service held; the watch, if any, ended.
    pub(super) async fn undo(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let run = &ctx.claimed.run.id;
        let asker = self.asker(run, StepName::Undo).await?;
        let stored = self.store().run(run).await?;
        let (Some(service), Some(from), Some(to)) =
            (stored.service, stored.rollback_from, stored.rollback_to)
        else {
            return self
                .refuse(ctx, StepName::Undo, &asker, "this run made no rollback")
                .await;
        };
        let svc = self.service(&service)?.clone();
        // Production must still be where the rollback put it: a newer
        // deployment live, or a person's move, is not undone by a button.
        let history = self
            .store()
            .history(&service, run, now_ms(), svc.bake_time)
            .await?;
        let live = history
            .deployments
            .iter()
            .find(|d| d.live)
            .map(|d| d.id.clone());
        if live.as_deref() != Some(to.as_str()) {
            let why = format!(
                "production has moved since the rollback: {} is live, not {to}",
                live.as_deref().unwrap_or("nothing known")
            );
            return self.refuse(ctx, StepName::Undo, &asker, &why).await;
        }
        // A resumed undo (an attempt was made before a crash) may find
        // production already partly back: its attempts accept that.
        let resumed = self
            .store()
            .steps(run)
            .await?
            .iter()
            .any(|s| s.name == StepName::Undo && s.attempts > 0);
        match self.production_state(&svc).await {
            Ok(_) if resumed => {}
            Ok(p) => {
                let elsewhere = crate::policy::serving_other(&p, &to);
                if !elsewhere.is_empty() {
                    let why = format!(
                        "production has moved since the rollback: {}",
                        elsewhere.join(", ")
                    );
                    return self.refuse(ctx, StepName::Undo, &asker, &why).await;
                }
            }
            Err(e) => {
                let why = format!("cannot read production from Vercel: {}", e.message);
                return self.refuse(ctx, StepName::Undo, &asker, &why).await;
            }
        }
        let deadline = self.settings().engine.rollback_deadline;
        let moved: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());
        let (svc, from_ref, to_ref, moved, by) = (&svc, &from, &to, &moved, &asker.by);
        let finished = self
            .attempt_loop(
                ctx,
                StepName::Undo,
                deadline,
                false,
                move |attempt| async move {
                    let pending = match attempt {
                        1 => svc.domains.clone(),
                        // Only what is not back yet (and stop if a person moved it).
                        _ => self.still_ours(svc, to_ref, from_ref).await?,
                    };
                    let description = format!("backstop run {run}: rollback undone by {by}");
                    self.move_production(svc, from_ref, &pending, attempt, moved, description)
                        .await?;
                    let verified = self.verify(svc, from_ref).await?;
                    Ok(json!({
                        "undone": true,
                        "back_on": from_ref,
                        "replaced": to_ref,
                        "by": by,
                        "domains": verified,
                    }))
                },
            )
            .await?;
        let claim = &ctx.claimed.claim;
        match finished {
            Finished::Succeeded(output, attempt) => {
                self.store()
                    .finish_attempt(
                        claim,
                        StepName::Undo,
                        attempt,
                        crate::ledger::AttemptOutcome::Ok,
                        None,
                    )
                    .await?;
                self.store()
                    .complete_undo(&UndoDone {
                        claim,
                        service: &service,
                        back_on: &from,
                        by: &asker.by,
                        output: &output,
                    })
                    .await?;
                tracing::info!(back_on = %from, by = %asker.by, "rollback undone");
                // The watch over the restored deployment has nothing left to watch.
                let detail = self.store().run_detail(run).await?;
                if detail
                    .step(StepName::Watch)
                    .is_some_and(|s| s.status == StepStatus::Pending)
                {
                    let why =
                        json!({"skipped": format!("the rollback was undone by {}", asker.by)});
                    self.store()
                        .finish_step(
                            claim,
                            StepName::Watch,
                            StepStatus::Succeeded,
                            Some(&why),
                            None,
                        )
                        .await?;
                    ctx.replanned
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // A recap already written missed the undo: the undo made it
                // pending again; it is written after this, with the undo.
                if detail
                    .step(StepName::Recap)
                    .is_some_and(|s| s.status == StepStatus::Pending)
                {
                    ctx.replanned
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let line = format!(
                    ":leftwards_arrow_with_hook: {} undid the rollback at {}: production is back on {from}; {service} is held (no automatic rollback) until someone resumes it.",
                    asker.by,
                    clock_minute(now_ms())
                );
                self.acted(ctx, &detail, &line, &[ClickAction::Resume], "undo")
                    .await;
                Ok(true)
            }
            Finished::Failed(e) => {
                self.store()
                    .finish_step(claim, StepName::Undo, StepStatus::Failed, None, Some(&e))
                    .await?;
                tracing::error!(error = %e, "undo failed");
                let text = format!(":x: The undo {} asked for failed: {}", asker.by, e.message);
                self.tell(&asker, &text).await;
                let detail = self.store().run_detail(run).await?;
                self.thread_reply(ctx, &detail, &text, "undo-failed").await;
                Ok(false)
            }
        }
    }

    /// The `hold` step: the service paused, by the person who pressed.
    pub(super) async fn hold(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let run = &ctx.claimed.run.id;
        let asker = self.asker(run, StepName::Hold).await?;
        let Some(service) = ctx.claimed.run.service.clone() else {
            return self
                .refuse(ctx, StepName::Hold, &asker, "this run concerns no service")
                .await;
        };
        let reason = format!("held by {} from run {run}", asker.by);
        self.store()
            .pause_by(&service, Some(&reason), &asker.by)
            .await?;
        let output = json!({"held": service, "by": asker.by});
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                StepName::Hold,
                StepStatus::Succeeded,
                Some(&output),
                None,
            )
            .await?;
        let detail = self.store().run_detail(run).await?;
        let line = format!(
            ":double_vertical_bar: {} held {service} at {}: critical alerts page instead of rolling back until someone resumes it.",
            asker.by,
            clock_minute(now_ms())
        );
        let mut next = Vec::new();
        if detail.step(StepName::Undo).is_none()
            && detail
                .step(StepName::Rollback)
                .is_some_and(|s| s.status == StepStatus::Succeeded)
        {
            next.push(ClickAction::Undo);
        }
        next.push(ClickAction::Resume);
        self.acted(ctx, &detail, &line, &next, "hold").await;
        Ok(true)
    }

    /// The `resume` step: the service's pause or freeze lifted.
    pub(super) async fn resume(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let run = &ctx.claimed.run.id;
        let asker = self.asker(run, StepName::Resume).await?;
        let Some(service) = ctx.claimed.run.service.clone() else {
            return self
                .refuse(
                    ctx,
                    StepName::Resume,
                    &asker,
                    "this run concerns no service",
                )
                .await;
        };
        let lifted = self.store().pause_of(&service).await?;
        self.store().pause_by(&service, None, &asker.by).await?;
        let output = json!({"resumed": service, "by": asker.by, "lifted": lifted});
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                StepName::Resume,
                StepStatus::Succeeded,
                Some(&output),
                None,
            )
            .await?;
        let detail = self.store().run_detail(run).await?;
        let line = format!(
            ":arrow_forward: {} resumed {service} at {}: automatic rollbacks are on again.",
            asker.by,
            clock_minute(now_ms())
        );
        self.acted(ctx, &detail, &line, &[], "resume").await;
        Ok(true)
    }

    /// Finishes a step that does not apply, telling the presser why.
    async fn refuse(
        &self,
        ctx: &RunCtx,
        step: StepName,
        asker: &Asker,
        why: &str,
    ) -> Result<bool, EngineError> {
        let output = json!({"refused": why, "by": asker.by});
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                step,
                StepStatus::Succeeded,
                Some(&output),
                None,
            )
            .await?;
        tracing::info!(step = %step, by = %asker.by, why, "refused");
        self.tell(
            asker,
            &format!(
                "{} refused: {why}. Nothing was changed.",
                capitalized(step.as_str())
            ),
        )
        .await;
        Ok(true)
    }

    /// Tells the person who pressed (only them), when they pressed in Slack.
    async fn tell(&self, asker: &Asker, text: &str) {
        if let Some(url) = &asker.response_url {
            self.answer_presser(url, text).await;
        }
    }

    /// An answer only the presser sees, at their interaction's `response_url`.
    pub async fn answer_presser(&self, url: &str, text: &str) {
        let Some(slack) = self.inner.providers.slack.as_ref() else {
            return;
        };
        if !self.trusted_response_url(url) {
            tracing::warn!("not answering at a response_url outside Slack");
            return;
        }
        if let Err(e) = slack.respond(url, text).await {
            tracing::warn!(error = %e, "cannot answer the presser");
        }
    }

    /// Slack's `response_url`s are on `hooks.slack.com` (or the configured
    /// Slack API's host, for the simulator).
    pub fn trusted_response_url(&self, url: &str) -> bool {
        let host = |u: &str| {
            reqwest::Url::parse(u).ok().and_then(|u| {
                u.host_str()
                    .map(str::to_owned)
                    .map(|h| (u.scheme().to_string(), h, u.port()))
            })
        };
        let Some((scheme, h, port)) = host(url) else {
            return false;
        };
        if scheme == "https" && h == "hooks.slack.com" {
            return true;
        }
        host(&self.settings().slack.api_base) == Some((scheme, h, port))
    }

    /// The card after a person acted: its buttons replaced by `next` and a
    /// line saying who did what; the same line in its thread.
    async fn acted(
        &self,
        ctx: &RunCtx,
        detail: &RunDetail,
        line: &str,
        next: &[ClickAction],
        what: &str,
    ) {
        let Some(slack) = self.inner.providers.slack.as_ref() else {
            return;
        };
        if let Some(card) = detail.output_of(StepName::Announce) {
            let (channel, ts) = (card["channel"].as_str(), card["ts"].as_str());
            if let (Some(channel), Some(ts)) = (channel, ts.filter(|t| !t.is_empty())) {
                let mut blocks: Vec<Value> = card["blocks"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|b| b["type"] != "actions")
                    .collect();
                blocks.push(
                    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": line}]}),
                );
                let decision: Option<crate::policy::Decision> = detail
                    .run
                    .decision
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok());
                let service = detail.run.service.clone().unwrap_or_default();
                let (from, to) = match &decision {
                    Some(d) => (d.live.as_ref(), d.target.as_ref()),
                    None => (None, None),
                };
                let interactive = self.settings().slack.signing_secret.is_some();
                let next: Vec<ClickAction> = match interactive {
                    true => next.to_vec(),
                    false => Vec::new(),
                };
                if let Some(actions) = actions_block(&next, &detail.run.id.0, &service, from, to) {
                    blocks.push(actions);
                }
                let text = card["text"].as_str().unwrap_or(line);
                if let Err(e) = slack.update(channel, ts, text, &blocks).await {
                    tracing::warn!(error = %e, "cannot update the card");
                }
            }
        }
        self.thread_reply(ctx, detail, line, what).await;
    }

    /// A reply in the thread of the run's card, tagged so a retry finds it.
    async fn thread_reply(&self, ctx: &RunCtx, detail: &RunDetail, text: &str, what: &str) {
        let Some(slack) = self.inner.providers.slack.as_ref() else {
            return;
        };
        let Some(card) = detail.output_of(StepName::Announce) else {
            return;
        };
        let (Some(channel), Some(ts)) = (card["channel"].as_str(), card["ts"].as_str()) else {
            return;
        };
        // Tagged: a step resumed after a crash finds its reply.
        let tag = format!("{}/{what}", ctx.claimed.run.id);
        let thread = Some(ts).filter(|t| !t.is_empty() && slack.threads());
        if let Err(e) = slack
            .post_for_run(channel, text, &[], thread, &tag, true)
            .await
        {
            tracing::warn!(error = %e, "cannot reply in the card's thread");
        }
    }

    /// A PagerDuty incident event for a run's incident: noted on the run
    /// (once per kind) and told in the card's thread.
    pub async fn incident_event(
        &self,
        run: &RunId,
        event: &IncidentEvent,
    ) -> Result<(), StoreError> {
        let kind = format!("pagerduty:{}", event.event_type);
        let detail = self.store().run_detail(run).await?;
        let at = event
            .occurred_at
            .as_deref()
            .and_then(parse_time)
            .unwrap_or_else(now_ms);
        let after_ms = (at - detail.run.created_at_ms).max(0);
        let who = event.agent.clone().unwrap_or_else(|| "PagerDuty".into());
        let verb = match event.event_type.as_str() {
            "incident.acknowledged" => "acknowledged",
            "incident.resolved" => "resolved",
            "incident.reassigned" => "reassigned",
            other => other,
        };
        let text = format!(
            "PagerDuty incident {verb} by {who} {} after the alert",
            human_ms(after_ms)
        );
        let data = json!({
            "by": who,
            "at": format_time(at),
            "after_ms": after_ms,
            "incident_id": event.incident_id,
            "html_url": event.html_url,
        });
        if !self
            .store()
            .add_note_once(run, &kind, &text, Some(&data))
            .await?
        {
            return Ok(());
        }
        tracing::info!(run.id = %run, event = %event.event_type, after_ms, "incident event");
        if let (Some(service), "incident.acknowledged") =
            (&detail.run.service, event.event_type.as_str())
        {
            self.metrics().acked(service, after_ms);
        }
        let card = detail.output_of(StepName::Announce).cloned();
        let (Some(slack), Some(card)) = (self.inner.providers.slack.clone(), card) else {
            return Ok(());
        };
        let (Some(channel), Some(ts)) = (
            card["channel"].as_str().map(str::to_owned),
            card["ts"].as_str().map(str::to_owned),
        ) else {
            return Ok(());
        };
        // Noted above; the reply goes out after PagerDuty has its answer
        // (it wants one within 5 s).
        let tag = format!("{run}/{kind}");
        tokio::spawn(async move {
            let thread = Some(ts.as_str()).filter(|t| !t.is_empty() && slack.threads());
            let line = format!(":pager: {text}.");
            if let Err(e) = slack
                .post_for_run(&channel, &line, &[], thread, &tag, true)
                .await
            {
                tracing::warn!(error = %e, "cannot reply in the card's thread");
            }
        });
        Ok(())
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `14:02 UTC`.
fn clock_minute(ms: i64) -> String {
    let t = format_time(ms);
    match t.get(11..16) {
        Some(hm) => format!("{hm} UTC"),
        None => t,
    }
}
