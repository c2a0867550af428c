//! Scoring dry runs and rollbacks (`policy::score`) from what the ledger
//! learned within each service's `score_window`: a sweep the dispatcher
//! makes every few seconds. The state is the ledger's (a decision without a
//! score is looked at again on the next sweep, by any instance, after a
//! restart too); a score is stored once, and only the instance that stored
//! it says so in the dry run's thread.

use serde_json::Value;

use super::{Engine, EngineError};
use crate::clock::now_ms;
use crate::ingest::sentry::{self, Resource};
use crate::ledger::{Outcome, Run, RunDetail, StepName, StepStatus};
use crate::policy::{score, Decision, Score, ScoreFacts};

impl Engine {
    /// Scores every decision whose evidence is in; returns how many were
    /// scored.
    pub async fn score_due(&self) -> Result<usize, EngineError> {
        let now = now_ms();
        let mut scored = 0;
        for svc in &self.settings().services {
            if svc.score_window.is_zero() {
                continue;
            }
            let window = svc.score_window.as_millis() as i64;
            // Anything decided before the last window and a day was scored
            // long ago, or cannot be any more.
            let since = now - window - 86_400_000;
            for run in self.store().unscored(&svc.name, since, 200).await? {
                if self.score_one(&run, window, now).await? {
                    scored += 1;
                }
            }
            // Scored, but the reply did not reach the thread (Slack down, or
            // the instance died between the two): tell it now, for a day.
            // Each is claimed first: with several instances, one tells it.
            for id in self
                .store()
                .untold(&svc.name, now - 86_400_000, now, 50)
                .await?
            {
                if !self.store().claim_tell(&id, now_ms()).await? {
                    continue;
                }
                let detail = self.store().run_detail(&id).await?;
                let stored = self.store().score_of(&id).await?;
                if let (Some(outcome), Some(verdict)) = (detail.run.outcome, stored) {
                    let live = live_of(&detail.run);
                    self.tell_and_settle(&detail, outcome, &verdict, live.as_deref())
                        .await?;
                }
            }
        }
        Ok(scored)
    }

    async fn score_one(&self, run: &Run, window_ms: i64, now: i64) -> Result<bool, EngineError> {
        let (Some(outcome), Some(decided_at)) = (run.outcome, run.decided_at_ms) else {
            return Ok(false);
        };
        let detail = self.store().run_detail(&run.id).await?;
        let live = live_of(run);
        let left_production_at_ms = match (&live, outcome) {
            (Some(id), Outcome::DryRun) => self
                .store()
                .deployment(id)
                .await?
                .and_then(|d| d.superseded_at_ms),
            _ => None,
        };
        let button = detail.undone_at_ms();
        let rollback = detail.step(StepName::Rollback);
        // A rollback still in flight (pending, or its instance's lease not
        // yet lapsed) is scored once its step has finished, not before.
        if outcome == Outcome::Rollback && rollback.is_none_or(|s| s.status == StepStatus::Pending)
        {
            return Ok(false);
        }
        let rolled_back = rollback.is_some_and(|s| s.status == StepStatus::Succeeded);
        // By hand: the deployment rolled back from was promoted again.
        let by_hand = match (&run.rollback_from, rollback.and_then(|s| s.finished_at_ms)) {
            (Some(from), Some(at)) if outcome == Outcome::Rollback => self
                .store()
                .deployment(from)
                .await?
                .and_then(|d| d.promoted_at_ms)
                .filter(|p| *p > at),
            _ => None,
        };
        let undone_at_ms = match (button, by_hand) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let facts = ScoreFacts {
            outcome,
            decided_at_ms: decided_at,
            window_ms,
            now_ms: now,
            left_production_at_ms,
            resolved_at_ms: self.resolved_at(&detail).await?,
            undone_at_ms,
            rolled_back,
        };
        let Some(verdict) = score(&facts) else {
            return Ok(false);
        };
        let stored = serde_json::to_value(&verdict).unwrap_or(Value::Null);
        if !self
            .store()
            .save_score(run, verdict.verdict(), &stored)
            .await?
        {
            return Ok(false);
        }
        tracing::info!(run.id = %run.id, verdict = verdict.verdict(), why = verdict.why(), "decision scored");
        // Stored with this instance's claim to tell it.
        self.tell_and_settle(&detail, outcome, &verdict, live.as_deref())
            .await?;
        Ok(true)
    }

    /// When Sentry resolved the run's alert, if it did.
    async fn resolved_at(&self, detail: &RunDetail) -> Result<Option<i64>, EngineError> {
        let resource = match detail.dedup_key.contains("event_alert:") {
            true => return Ok(None),
            false => Resource::MetricAlert,
        };
        let raw = serde_json::to_vec(&detail.alert).unwrap_or_default();
        let Ok(mut alert) = sentry::parse(resource, &raw) else {
            return Ok(None);
        };
        alert.action = "resolved".into();
        Ok(
            match self.store().run_for_dedup_key(&alert.dedup_key()).await? {
                Some(run) => Some(self.store().run(&run).await?.created_at_ms),
                None => None,
            },
        )
    }

    /// Tells the score (holding the claim to tell it) and records how that went:
    /// told, or the claim let go for a later sweep anywhere.
    async fn tell_and_settle(
        &self,
        detail: &RunDetail,
        outcome: Outcome,
        verdict: &Score,
        live: Option<&str>,
    ) -> Result<(), EngineError> {
        let run = &detail.run.id;
        match self.tell_score(detail, outcome, verdict, live).await {
            true => self.store().score_told(run).await?,
            false => self.store().release_tell(run).await?,
        }
        Ok(())
    }

    /// A reply in the decision's thread once its verdict is known (dry
    /// runs, and rollbacks a person undid). True once told, or when there
    /// is nothing to tell or nowhere to tell it; false when Slack failed.
    async fn tell_score(
        &self,
        detail: &RunDetail,
        outcome: Outcome,
        verdict: &Score,
        live: Option<&str>,
    ) -> bool {
        let text = match (outcome, verdict) {
            (Outcome::DryRun, Score::Confirmed { minutes_saved: Some(m), .. }) => format!(
                ":dart: Production left {} {m} min after this dry run: Backstop would have saved {m} min.",
                live.unwrap_or("the crashing deployment")
            ),
            (Outcome::DryRun, Score::FalseAlarm { why }) => format!(
                ":information_source: Scored a false alarm: {why}."
            ),
            (Outcome::DryRun, Score::Undetermined { why }) => {
                format!(":grey_question: Scored undetermined: {why}.")
            }
            (Outcome::Rollback, Score::FalseAlarm { why }) => {
                format!(":information_source: Scored a false alarm: {why}.")
            }
            _ => return true,
        };
        let (Some(slack), Some(card)) = (
            self.inner.providers.slack.as_ref(),
            detail.output_of(StepName::Announce),
        ) else {
            return true;
        };
        let (Some(channel), Some(ts)) = (card["channel"].as_str(), card["ts"].as_str()) else {
            return true;
        };
        let thread = Some(ts).filter(|t| !t.is_empty() && slack.threads());
        let tag = format!("{}/score", detail.run.id);
        match slack
            .post_for_run(channel, &text, &[], thread, &tag, true)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot post the score in the thread; a later sweep retries");
                false
            }
        }
    }
}

/// The deployment a decision found live (what a dry run would have
/// rolled back from).
fn live_of(run: &Run) -> Option<String> {
    run.decision
        .clone()
        .and_then(|v| serde_json::from_value::<Decision>(v).ok())
        .and_then(|d| d.live)
        .map(|l| l.id)
}
