//! The `record` step: after a verified rollback, say so where people look.
//! A Sentry deploy of the restored release (so the release page shows when
//! production went back) and a PagerDuty change event (so the service's
//! change timeline shows it next to the incident). Both are best-effort:
//! the step runs after the page and the card, and what failed is written
//! in its output, never failing the run.

use serde_json::{json, Value};

use super::{Engine, EngineError, RunCtx};
use crate::clock::{format_time, now_ms};
use crate::config::PagerDutyMode;
use crate::ledger::{RunNote, StepName};
use crate::providers::ProviderError;

/// What Sentry's deploys are named.
pub const DEPLOY_NAME: &str = "backstop rollback";

const SENTRY_NOTE: &str = "recorded:sentry";
const PAGERDUTY_NOTE: &str = "recorded:pagerduty";

impl Engine {
    /// Notes a part of the record that was sent (errors are not: the next
    /// attempt tries them again).
    async fn noted(&self, run: &crate::ledger::RunId, kind: &str, v: &Value) {
        if v.get("error").is_some() {
            return;
        }
        if let Err(e) = self.store().add_note(run, kind, "recorded", Some(v)).await {
            tracing::warn!(error = %e, "cannot note what was recorded");
        }
    }

    /// The `record` step.
    pub(super) async fn record_change(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let facts = self.facts(ctx).await?;
        if !facts.notice.moved {
            let why = "nothing to record: production did not move";
            return self.skip_step(ctx, StepName::Record, why).await;
        }
        let settings = self.settings();
        let notice = &facts.notice;
        let release = notice.to.as_ref().and_then(|d| d.release.clone());
        let sentry = async {
            let Some(sentry) = self
                .inner
                .providers
                .sentry
                .as_ref()
                .filter(|_| settings.sentry.record_deploys)
            else {
                return json!({"skipped": "sentry.token/org unset or sentry.record_deploys = false"});
            };
            let Some(release) = &release else {
                return json!({"skipped": "the restored deployment has no release"});
            };
            let env = &facts.svc.environment;
            let projects = &facts.svc.sentry_projects;
            match sentry
                .create_deploy(release, env, DEPLOY_NAME, projects)
                .await
            {
                Ok(id) => json!({"deploy_id": id, "release": release, "environment": env}),
                // The release does not exist in Sentry: nothing to attach to.
                Err(ProviderError::Fatal {
                    status: Some(404), ..
                }) => json!({"skipped": format!("release {release} is not in Sentry (404)")}),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the rollback in Sentry");
                    json!({"error": e.to_string()})
                }
            }
        };
        let pagerduty = async {
            let Some(pd) = self.inner.providers.pagerduty.as_ref().filter(|_| {
                settings.pagerduty.change_events && settings.pagerduty.mode == PagerDutyMode::Events
            }) else {
                return json!({"skipped": "no Events API routing key or pagerduty.change_events = false"});
            };
            let from = notice.from.as_ref().map(|d| d.id.as_str()).unwrap_or("?");
            let to = notice.to.as_ref().map(|d| d.id.as_str()).unwrap_or("?");
            let summary = format!(
                "Backstop rolled back {} from {from} to {to}: {}",
                notice.service, notice.reason
            );
            let details = json!({
                "service": notice.service,
                "from": notice.from,
                "to": notice.to,
                "run": notice.run_id,
                "incident_key": facts.incident_key,
            });
            let at = format_time(now_ms());
            match pd
                .change_event(&summary, &at, &details, &notice.links())
                .await
            {
                Ok(_) => json!({"sent": true, "summary": summary}),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot send the PagerDuty change event");
                    json!({"error": e.to_string()})
                }
            }
        };
        // What an earlier attempt already recorded is not sent again (a
        // crash after the call and before its note can still repeat it).
        let run = &ctx.claimed.run.id;
        let done: Vec<RunNote> = self.store().notes(run).await?;
        let earlier = |kind: &str| {
            done.iter()
                .find(|n| n.kind == kind)
                .and_then(|n| n.data.clone())
        };
        let (sentry_done, pd_done) = (earlier(SENTRY_NOTE), earlier(PAGERDUTY_NOTE));
        let sentry = async {
            match sentry_done {
                Some(v) => v,
                None => {
                    let v = sentry.await;
                    self.noted(run, SENTRY_NOTE, &v).await;
                    v
                }
            }
        };
        let pagerduty = async {
            match pd_done {
                Some(v) => v,
                None => {
                    let v = pagerduty.await;
                    self.noted(run, PAGERDUTY_NOTE, &v).await;
                    v
                }
            }
        };
        // Bounded like every telling step; what did not finish is said so.
        let deadline = settings.engine.step_deadline;
        let (sentry, pagerduty): (Value, Value) = match tokio::time::timeout(deadline, async {
            tokio::join!(sentry, pagerduty)
        })
        .await
        {
            Ok(both) => both,
            Err(_) => {
                let late = json!({"error": format!("not finished within {}", humantime::format_duration(deadline))});
                (late.clone(), late)
            }
        };
        let output = json!({"sentry_deploy": sentry, "pagerduty_change": pagerduty});
        self.store()
            .finish_step(
                &ctx.claimed.claim,
                StepName::Record,
                crate::ledger::StepStatus::Succeeded,
                Some(&output),
                None,
            )
            .await?;
        Ok(true)
    }
}
