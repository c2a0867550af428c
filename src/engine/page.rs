//! The `page` step: open (or resolve) the PagerDuty incident. It runs after
//! `rollback`, beside `announce`; its failure never blocks or undoes a
//! rollback. The incident key is derived from the service and the
//! deployment rolled back from, so retries and restarts reach the same
//! incident.

use serde_json::json;

use super::{Engine, EngineError, RunCtx};
use crate::config::{PagerDutySettings, Severity};
use crate::ledger::StepName;
use crate::notice::Kind;
use crate::policy::Decision;
use crate::providers::pagerduty::PagerDutyClient;

/// The key of a page about an incident but apart from it (`<key>/held`,
/// `<key>/did-not-help`): within PagerDuty's 255 characters with the
/// suffix kept, so it never falls back onto the incident's own key.
pub(crate) fn sub_incident_key(key: &str, suffix: &str) -> String {
    use crate::providers::pagerduty::{truncate, DEDUP_MAX};
    let room = DEDUP_MAX.saturating_sub(suffix.chars().count() + 1);
    format!("{}/{suffix}", truncate(key, room))
}

/// PagerDuty's grouping key for an incident:
/// `backstop/<service>/<deployment rolled back from>`.
pub fn incident_key(service: &str, decision: &Decision) -> String {
    let live = decision
        .live
        .as_ref()
        .map(|l| l.id.as_str())
        .unwrap_or("live-unknown");
    format!("backstop/{service}/{live}")
}

impl Engine {
    /// The `page` step.
    pub(super) async fn page(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let Some(pd) = self.inner.providers.pagerduty.clone() else {
            let why = "pagerduty is not configured";
            return self.skip_step(ctx, StepName::Page, why).await;
        };
        let facts = self.facts(ctx).await?;
        let settings = self.settings();
        let (summary, warning) = facts.notice.render("pagerduty_summary", self.templates());
        let severity = severity_of(&facts.notice.outcome, &settings.pagerduty);
        let page = self.page_of(&facts, summary, severity.as_str());
        let resolve = facts.notice.outcome == Kind::Resolved;
        // The incident the critical run opened, when PagerDuty told us its id.
        let opened_id = facts
            .origin
            .output_of(StepName::Page)
            .and_then(|o| o["incident_id"].as_str())
            .map(str::to_owned);
        let deadline = settings.engine.step_deadline;
        let (page, opened_id, pd, warning) = (&page, &opened_id, &pd, &warning);
        let finished = self
            .attempt_loop(ctx, StepName::Page, deadline, true, |_| async move {
                let opened = match resolve {
                    true => pd.resolve(page, opened_id.as_deref()).await?,
                    false => pd.trigger(page).await?,
                };
                self.failpoint("page-accepted").await;
                if !resolve {
                    // PagerDuty's webhooks find the run by this key or id.
                    let stored = self
                        .store()
                        .record_page(
                            &opened.incident_key,
                            &ctx.claimed.run.id,
                            opened.incident_id.as_deref(),
                        )
                        .await;
                    if let Err(e) = stored {
                        tracing::warn!(error = %e, "cannot remember the incident this run paged");
                    }
                }
                Ok(json!({
                    "action": if resolve { "resolve" } else { "trigger" },
                    "incident_key": opened.incident_key,
                    "incident_id": opened.incident_id,
                    "html_url": opened.html_url,
                    "already_open": opened.already_open,
                    "severity": page.severity,
                    "summary": page.summary,
                    "template_warning": warning,
                }))
            })
            .await?;
        // Only once the outcome's own page went out: the held page may be
        // the only one the on-call has open.
        if !resolve && finished.succeeded() {
            self.resolve_held(ctx, &facts, pd).await;
        }
        Ok(finished.succeeded())
    }

    /// A rollback that was held (paged under `<key>/held`) has ended, one
    /// way or the other: that page is resolved, after this run's own page
    /// said how. Best effort: its failure is logged, nothing more.
    async fn resolve_held(&self, ctx: &RunCtx, facts: &super::facts::Facts, pd: &PagerDutyClient) {
        let held = match self.was_held(ctx).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the rollback was held");
                return;
            }
        };
        if !held {
            return;
        }
        let mut page = self.page_of(
            facts,
            format!(
                "{}: the held rollback has ended (see the incident {})",
                facts.svc.name, facts.incident_key
            ),
            "info",
        );
        page.incident_key = sub_incident_key(&facts.incident_key, "held");
        if let Err(e) = pd.resolve(&page, None).await {
            tracing::warn!(error = %e, "cannot resolve the held rollback's page");
        }
    }
}

fn severity_of(kind: &Kind, pd: &PagerDutySettings) -> Severity {
    match kind {
        Kind::RolledBack => pd.severity_rollback,
        Kind::RollbackFailed => pd.severity_rollback_failed,
        Kind::DryRun => pd.severity_dry_run,
        Kind::Resolved => Severity::Info,
        Kind::Escalated | Kind::Skipped => pd.severity_escalation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_key_keeps_its_suffix_within_pagerdutys_limit() {
        assert_eq!(
            sub_incident_key("backstop/shop/dpl_1", "held"),
            "backstop/shop/dpl_1/held"
        );
        let long = format!("backstop/{}/dpl_1", "s".repeat(300));
        let held = sub_incident_key(&long, "held");
        assert_eq!(held.chars().count(), crate::providers::pagerduty::DEDUP_MAX);
        assert!(held.ends_with("/held"));
        assert_ne!(
            crate::providers::pagerduty::truncate(&held, crate::providers::pagerduty::DEDUP_MAX),
            crate::providers::pagerduty::truncate(&long, crate::providers::pagerduty::DEDUP_MAX)
        );
    }
}
