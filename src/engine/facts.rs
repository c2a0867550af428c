//! What the telling steps (`page`, `announce`) need to know about a run:
//! its service, the [`Notice`] people read, and the run that first
//! reported the incident (for a resolution: the critical run).

use super::{Engine, EngineError, RunCtx};
use crate::config::ServiceSettings;
use crate::ingest::sentry::{self, Alert, Resource};
use crate::ledger::{Outcome, RunDetail, StepName, StepStatus, StoreError};
use crate::notice::{Kind, Notice};
use crate::policy::Decision;

/// Everything a telling step needs.
pub(super) struct Facts {
    pub svc: ServiceSettings,
    pub notice: Notice,
    /// The run that first reported this incident (for resolutions: the
    /// critical run; otherwise this run).
    pub origin: RunDetail,
    /// PagerDuty's grouping key for the incident.
    pub incident_key: String,
}

fn corrupt(what: String) -> EngineError {
    EngineError::Store(StoreError::Corrupt(what))
}

impl Engine {
    pub(super) async fn facts(&self, ctx: &RunCtx) -> Result<Facts, EngineError> {
        let claimed = &ctx.claimed;
        let detail = self.store().run_detail(&claimed.run.id).await?;
        // An alert no service could be found for is told with the global
        // settings (it escalates so a person maps it).
        let svc = match &detail.run.service {
            Some(service) => self.service(service)?.clone(),
            None => ServiceSettings::unmapped(),
        };
        let resource = Resource::from_header(&claimed.resource).unwrap_or(Resource::MetricAlert);
        let alert =
            sentry::parse(resource, claimed.body.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        let is_resolution = detail.run.outcome == Some(Outcome::Resolution);
        // An alert that joined a watch is told in that incident's thread.
        let joined = detail
            .run
            .decision
            .as_ref()
            .and_then(|d| d["joins"].as_str())
            .map(|r| crate::ledger::RunId(r.to_string()));
        let joins_watch = joined.is_some();
        let origin = match (is_resolution, joined) {
            (true, _) => self
                .critical_run_of(&alert)
                .await?
                .unwrap_or_else(|| detail.clone()),
            (false, Some(watching)) => self.store().run_detail(&watching).await?,
            (false, None) => detail.clone(),
        };
        let decision: Decision = origin
            .run
            .decision
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| corrupt(format!("run {} has no decision", origin.run.id)))?;
        let mut notice = Notice::new(kind_of(&detail), &svc, &decision, &alert, &claimed.run.id.0);
        if is_resolution {
            notice.reason = "the alert resolved".into();
        }
        if joins_watch {
            notice.reason = detail.run.reason.clone().unwrap_or_default();
        }
        // Only a verified rollback (this run's, or the incident's) is a move.
        notice.moved = origin.output_of(StepName::Rollback).is_some();
        if let Some(rb) = detail.step(StepName::Rollback) {
            notice.time_to_rollback_ms = rb
                .output
                .as_ref()
                .and_then(|o| o["alert_to_verified_ms"].as_i64());
            notice.error = rb.error.as_ref().map(|e| e.message.clone());
        }
        // Buttons, when Slack interactivity is configured: a verified
        // rollback can be undone or the service held; a paused or frozen
        // service can be resumed.
        if self.settings().slack.signing_secret.is_some() && detail.run.service.is_some() {
            use crate::ingest::slack::ClickAction;
            notice.buttons = match notice.outcome {
                Kind::RolledBack if !is_resolution && !joins_watch => {
                    vec![ClickAction::Undo, ClickAction::Hold]
                }
                Kind::Escalated if decision.rule == crate::policy::Rule::NotPaused => {
                    vec![ClickAction::Resume]
                }
                _ => Vec::new(),
            };
        }
        let incident_key = match &detail.run.service {
            Some(_) => super::incident_key(&svc.name, &decision),
            None => format!("backstop/unmapped/{}", alert.rule_id),
        };
        Ok(Facts {
            incident_key,
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
}

fn kind_of(detail: &RunDetail) -> Kind {
    match detail.run.outcome {
        Some(Outcome::Rollback) => {
            let failed = detail
                .step(StepName::Rollback)
                .is_some_and(|s| s.status == StepStatus::Failed);
            if failed {
                Kind::RollbackFailed
            } else {
                Kind::RolledBack
            }
        }
        Some(Outcome::DryRun) => Kind::DryRun,
        Some(Outcome::Skip) => Kind::Skipped,
        Some(Outcome::Resolution) => Kind::Resolved,
        Some(Outcome::Escalate) | None => Kind::Escalated,
    }
}
