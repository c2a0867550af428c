//! `[[services]]`: what Backstop protects and how.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::env::de_duration;
use crate::policy::{ConfirmPolicy, Fallback, Mode, PlanContext, ServicePolicy};

/// How a rollback moves production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Re-point every production domain at the target (`POST /v2/deployments/{id}/aliases`).
    Alias,
    /// Vercel's Instant Rollback (`POST /v1/projects/{id}/rollback/{deployment}`).
    VercelRollback,
}

/// One `[[services]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Unique name, used in the ledger and CLI.
    pub name: String,
    /// Sentry project slugs whose alerts concern this service.
    pub sentry_projects: Vec<String>,
    /// Sentry environment the alert rule must be scoped to.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Vercel project id (`prj_...`).
    pub vercel_project: String,
    /// Production domains, all moved on rollback.
    pub domains: Vec<String>,
    /// `alias` (default) or `vercel-rollback`.
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// `auto` (default), `dry-run` or `off`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// How long a live deployment must serve without a critical alert to be known-good.
    #[serde(default = "default_bake", deserialize_with = "de_duration")]
    pub bake_time: Duration,
    /// No second automatic rollback of this service within this window.
    #[serde(default = "default_cooldown", deserialize_with = "de_duration")]
    pub cooldown: Duration,
    /// Automatic rollbacks allowed in any 24 hours.
    #[serde(default = "default_budget")]
    pub max_rollbacks_per_day: u32,
    /// Act on alert rules that are not crash-free rates (error counts, issue alerts).
    #[serde(default)]
    pub accept_other_rules: bool,
    /// When the live deployment had served less than this when the alert
    /// was detected, escalate instead of rolling back: the alert's window
    /// (an hour for a typical crash-free rule) is then mostly the previous
    /// release. 0 (the default) acts on any alert detected after the
    /// promotion.
    #[serde(default, deserialize_with = "de_duration")]
    pub min_live_before_alert: Duration,
    /// Confirm with Sentry's release health before acting (when
    /// `sentry.token` and `sentry.org` are set).
    #[serde(default = "default_true")]
    pub confirm: bool,
    /// Fewer sessions of the live release than this in the alert's window
    /// is too little data to believe.
    #[serde(default = "default_min_sessions")]
    pub min_sessions: u64,
    /// Too little data: `escalate` (page a person, default) or `rollback`.
    #[serde(default = "default_escalate")]
    pub on_inconclusive: Fallback,
    /// Sentry unreachable or slower than `sentry.confirm_timeout`:
    /// `rollback` on the alert alone (default) or `escalate`.
    #[serde(default = "default_rollback")]
    pub on_confirm_unavailable: Fallback,
    /// After a verified rollback, watch this long for recovery; not
    /// recovered by then, page again and freeze the service. 0: no watch.
    #[serde(default = "default_watch_window", deserialize_with = "de_duration")]
    pub watch_window: Duration,
    /// How often the watch looks.
    #[serde(default = "default_watch_interval", deserialize_with = "de_duration")]
    pub watch_interval: Duration,
    /// Score dry runs and rollbacks from what happens this long after them
    /// (`backstop report`). 0: off.
    #[serde(default = "default_score_window", deserialize_with = "de_duration")]
    pub score_window: Duration,
    /// Deployment `meta` key holding the Sentry release.
    #[serde(default = "default_release_key")]
    pub release_meta_key: String,
    /// Slack channel for this service (overrides `slack.channel`).
    #[serde(default)]
    pub slack_channel: Option<String>,
    /// Resolve the PagerDuty incident when Sentry resolves the alert.
    #[serde(default)]
    pub resolve_on_recovery: bool,
    /// Page (at `pagerduty.severity_dry_run`) on dry runs too.
    #[serde(default)]
    pub page_on_dry_run: bool,
    /// Post a short Slack note when a critical alert is skipped (stale, production changed, already handled).
    #[serde(default = "default_true")]
    pub announce_skips: bool,
    /// Per-service template overrides.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// Per-agent overrides (`[services.ai.brief]`): model, prompt, enabled.
    #[serde(default)]
    pub ai: BTreeMap<String, super::AgentSettings>,
}

fn default_environment() -> String {
    "production".into()
}
fn default_strategy() -> Strategy {
    Strategy::Alias
}
fn default_mode() -> Mode {
    Mode::Auto
}
fn default_bake() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_budget() -> u32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_min_sessions() -> u64 {
    100
}
fn default_escalate() -> Fallback {
    Fallback::Escalate
}
fn default_rollback() -> Fallback {
    Fallback::Rollback
}
fn default_watch_window() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_watch_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_score_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_release_key() -> String {
    "githubCommitSha".into()
}

impl ServiceSettings {
    /// Stands in for the service of an alert no service could be found
    /// for, so a person can be paged and told with the global settings.
    pub fn unmapped() -> Self {
        Self {
            name: "(unmapped)".into(),
            sentry_projects: Vec::new(),
            environment: default_environment(),
            vercel_project: String::new(),
            domains: Vec::new(),
            strategy: default_strategy(),
            mode: default_mode(),
            bake_time: default_bake(),
            cooldown: default_cooldown(),
            max_rollbacks_per_day: default_budget(),
            accept_other_rules: false,
            min_live_before_alert: Duration::ZERO,
            confirm: true,
            min_sessions: default_min_sessions(),
            on_inconclusive: default_escalate(),
            on_confirm_unavailable: default_rollback(),
            watch_window: Duration::ZERO,
            watch_interval: default_watch_interval(),
            score_window: Duration::ZERO,
            release_meta_key: default_release_key(),
            slack_channel: None,
            resolve_on_recovery: false,
            page_on_dry_run: false,
            announce_skips: true,
            templates: BTreeMap::new(),
            ai: BTreeMap::new(),
        }
    }

    /// What the decision needs to know about this service; `sentry` says
    /// whether Sentry's API is configured (token and org).
    pub fn policy(&self, sentry: bool) -> ServicePolicy<'_> {
        ServicePolicy {
            name: &self.name,
            projects: &self.sentry_projects,
            environment: &self.environment,
            mode: self.mode,
            bake_time: self.bake_time,
            cooldown: self.cooldown,
            max_rollbacks_per_day: self.max_rollbacks_per_day,
            accept_other_rules: self.accept_other_rules,
            min_live_before_alert: self.min_live_before_alert,
            confirm: ConfirmPolicy {
                enabled: sentry && self.confirm,
                min_sessions: self.min_sessions,
                on_inconclusive: self.on_inconclusive,
                on_unavailable: self.on_confirm_unavailable,
            },
        }
    }

    /// What the plan needs to know about this service, given whether
    /// paging and announcing are configured.
    /// What the plan needs to know about this service; `record` says a
    /// rollback can be recorded somewhere (Sentry deploys or PagerDuty
    /// change events), `sentry` that release health can be read (the
    /// watch needs it).
    pub fn plan_context(
        &self,
        paging: bool,
        announcing: bool,
        record: bool,
        sentry: bool,
    ) -> PlanContext {
        PlanContext {
            paging,
            announcing,
            record,
            watch: sentry && !self.watch_window.is_zero(),
            brief: false,
            recap: false,
            page_on_dry_run: self.page_on_dry_run,
            resolve_on_recovery: self.resolve_on_recovery,
            announce_skips: self.announce_skips,
        }
    }
}
