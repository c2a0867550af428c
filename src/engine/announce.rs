//! The `announce` step (the Slack decision card, or a reply in the thread
//! of the incident's first card) and the `followup` step (a reply in the
//! card's thread when paging failed). Each post carries its run and step in
//! its metadata, so a retry after a crash finds it instead of posting twice.

use serde_json::json;

use super::{Engine, EngineError, RunCtx};
use crate::ledger::{RunDetail, StepName, StepStatus};

impl Engine {
    /// The `announce` step.
    pub(super) async fn announce(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let run = &ctx.claimed.run.id;
        let Some(slack) = self.inner.providers.slack.clone() else {
            let why = "slack is not configured";
            return self.skip_step(ctx, StepName::Announce, why).await;
        };
        let facts = self.facts(ctx).await?;
        let settings = self.settings();
        let channel = facts
            .svc
            .slack_channel
            .clone()
            .or_else(|| settings.slack.channel.clone())
            .unwrap_or_default();
        let (headline, w1) = facts.notice.render("slack_headline", self.templates());
        let (text, w2) = facts.notice.render("slack_text", self.templates());
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
            .attempt_loop(
                ctx,
                StepName::Announce,
                deadline,
                true,
                move |attempt| async move {
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
                },
            )
            .await?;
        Ok(finished.succeeded())
    }

    /// The `followup` step: when paging failed but the card went out, say
    /// so in the card's thread, so a human pages by hand.
    pub(super) async fn followup(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let run = &ctx.claimed.run.id;
        let detail = self.store().run_detail(run).await?;
        let page_error = detail
            .step(StepName::Page)
            .filter(|s| s.status == StepStatus::Failed)
            .and_then(|s| s.error.clone());
        let card = detail.output_of(StepName::Announce).cloned();
        let (Some(slack), Some(error), Some(card)) =
            (self.inner.providers.slack.clone(), page_error, card)
        else {
            let why = "nothing to follow up: the page went out, or there is no card to reply to";
            return self.skip_step(ctx, StepName::Followup, why).await;
        };
        let channel = card["channel"].as_str().unwrap_or_default().to_string();
        let ts = card["ts"]
            .as_str()
            .filter(|ts| !ts.is_empty())
            .map(str::to_owned);
        let text = format!(
            ":rotating_light: PagerDuty could not be paged ({}). Page the on-call engineer by hand.",
            error.message
        );
        let deadline = self.settings().engine.step_deadline;
        let tag = format!("{run}/followup");
        let (channel, text, ts, tag, slack) = (&channel, &text, &ts, &tag, &slack);
        let finished = self
            .attempt_loop(ctx, StepName::Followup, deadline, true, move |attempt| async move {
                let posted = slack.post_for_run(channel, text, &[], ts.as_deref(), tag, attempt > 1).await?;
                Ok(json!({"channel": posted.channel, "ts": posted.ts, "thread_ts": ts, "text": text}))
            })
            .await?;
        Ok(finished.succeeded())
    }
}

/// The Slack `ts` of a run's announcement, if it made one.
fn announced_ts(detail: &RunDetail) -> Option<String> {
    detail
        .output_of(StepName::Announce)?
        .get("ts")?
        .as_str()
        .filter(|ts| !ts.is_empty())
        .map(str::to_owned)
}
