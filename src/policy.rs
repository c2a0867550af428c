//! The decision: a pure function of (alert, ledger history, live Vercel
//! state, service policy, now) implementing the 15 rules of DESIGN.md in
//! order; the first rule that matches decides. Every rule evaluated is kept
//! as a [`Check`] so a stored decision explains itself.

use serde::{Deserialize, Serialize};

use crate::config::{Mode, ServiceSettings};
use crate::ingest::sentry::{Alert, Resource};
use crate::ledger::{Deployment, History, Verdict};

/// What to do about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A `resolved` alert: reply in the thread, maybe resolve the page.
    Resolution,
    /// Nothing to do.
    Skip,
    /// Page a human instead of acting.
    Escalate,
    /// Announce what would have happened; change nothing.
    DryRun,
    /// Roll production back from the live deployment to the target.
    Rollback,
    /// Rule 7 needs the domains' current targets: fetch them and decide again.
    NeedsProductionState,
}

impl Outcome {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Resolution => "resolution",
            Outcome::Skip => "skip",
            Outcome::Escalate => "escalate",
            Outcome::DryRun => "dry-run",
            Outcome::Rollback => "rollback",
            Outcome::NeedsProductionState => "needs-production-state",
        }
    }
}

/// One rule as evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Rule number in DESIGN.md.
    pub rule: u8,
    /// Short name.
    pub name: String,
    /// True when the rule did not stop the flow.
    pub passed: bool,
    /// What was compared.
    pub detail: String,
}

/// A deployment as the decision saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRef {
    /// Vercel id.
    pub id: String,
    /// URL.
    pub url: Option<String>,
    /// Release.
    pub release: Option<String>,
    /// When it went live, Unix ms.
    pub promoted_at_ms: Option<i64>,
}

impl From<&Deployment> for DeploymentRef {
    fn from(d: &Deployment) -> Self {
        Self {
            id: d.id.clone(),
            url: d.url.clone(),
            release: d.release.clone(),
            promoted_at_ms: d.promoted_at_ms,
        }
    }
}

/// Which deployment a production domain serves right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainTarget {
    /// The domain.
    pub domain: String,
    /// Deployment id it points at; `None` when Vercel has no alias for it.
    pub deployment_id: Option<String>,
}

/// The decision and the facts behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What to do.
    pub outcome: Outcome,
    /// The deciding rule (1-15).
    pub rule: u8,
    /// One line a human can read.
    pub reason: String,
    /// The mapped service.
    pub service: Option<String>,
    /// The live deployment.
    pub live: Option<DeploymentRef>,
    /// The known-good target.
    pub target: Option<DeploymentRef>,
    /// When the alert started (after sanity clamping), Unix ms.
    pub alert_started_at_ms: Option<i64>,
    /// Every rule evaluated, in order.
    pub checks: Vec<Check>,
}

impl Decision {
    /// True when the alert was fresh for the live deployment (not stale), so
    /// the live deployment can no longer bake to `good`.
    pub fn alert_hit_live(&self) -> bool {
        // Rule 7 too: the live deployment crashed and a person already
        // moved production; it must not bake to good afterwards.
        self.rule >= 7 && self.outcome != Outcome::NeedsProductionState && self.live.is_some()
    }
}

/// The service an alert belongs to: one of its projects and its environment.
pub fn map_service<'a>(
    alert: &Alert,
    services: &'a [ServiceSettings],
) -> Option<&'a ServiceSettings> {
    services.iter().find(|s| {
        alert.projects.iter().any(|p| s.sentry_projects.contains(p))
            && alert
                .environment
                .as_deref()
                .is_some_and(|e| e == s.environment)
    })
}

/// Domains not serving `deployment`, as `"<domain> serves <other>"`.
pub fn serving_other(production: &[DomainTarget], deployment: &str) -> Vec<String> {
    production
        .iter()
        .filter(|p| p.deployment_id.as_deref() != Some(deployment))
        .map(|p| {
            format!(
                "{} serves {}",
                p.domain,
                p.deployment_id.as_deref().unwrap_or("nothing")
            )
        })
        .collect()
}

/// True when `d` may be rolled back to: marked good, or served at least
/// `bake_ms` without a critical alert.
pub fn is_known_good(d: &Deployment, bake_ms: i64) -> bool {
    match d.verdict {
        Verdict::Good => true,
        Verdict::Bad => false,
        Verdict::Unproven => match (d.promoted_at_ms, d.superseded_at_ms) {
            (Some(p), Some(s)) => d.alerted_at_ms.is_none() && s - p >= bake_ms,
            _ => false,
        },
    }
}

/// Everything the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The alert.
    pub alert: &'a Alert,
    /// Configured services.
    pub services: &'a [ServiceSettings],
    /// Ledger history of the mapped service (empty if unmapped).
    pub history: &'a History,
    /// Current targets of the production domains, once fetched.
    pub production: Option<&'a [DomainTarget]>,
    /// When the alert was received, Unix ms.
    pub received_at_ms: i64,
    /// Now, Unix ms.
    pub now_ms: i64,
}

struct Trail {
    checks: Vec<Check>,
    service: Option<String>,
    live: Option<DeploymentRef>,
    started: Option<i64>,
}

impl Trail {
    fn pass(&mut self, rule: u8, name: &str, detail: impl Into<String>) {
        self.checks.push(Check {
            rule,
            name: name.into(),
            passed: true,
            detail: detail.into(),
        });
    }

    fn stop(
        mut self,
        rule: u8,
        name: &str,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> Decision {
        let reason = reason.into();
        self.checks.push(Check {
            rule,
            name: name.into(),
            passed: false,
            detail: reason.clone(),
        });
        self.finish(rule, outcome, reason, None)
    }

    fn finish(
        self,
        rule: u8,
        outcome: Outcome,
        reason: String,
        target: Option<DeploymentRef>,
    ) -> Decision {
        Decision {
            outcome,
            rule,
            reason,
            service: self.service,
            live: self.live,
            target,
            alert_started_at_ms: self.started,
            checks: self.checks,
        }
    }
}

/// The decision when the alert alone settles it (rules 2-4, and the
/// resolution of an unmapped alert), so it can be stored finished at once.
pub fn decide_from_alert(
    alert: &Alert,
    services: &[ServiceSettings],
    received_at_ms: i64,
) -> Option<Decision> {
    let nothing = History::default();
    let inputs = Inputs {
        alert,
        services,
        history: &nothing,
        production: None,
        received_at_ms,
        now_ms: received_at_ms,
    };
    let d = decide(inputs);
    let settled = matches!((d.outcome, d.rule), (Outcome::Skip, 2..=4))
        || (d.outcome == Outcome::Resolution && d.service.is_none());
    settled.then_some(d)
}

/// Applies the rules in order; the first that matches decides.
pub fn decide(i: Inputs<'_>) -> Decision {
    let a = i.alert;
    let mut t = Trail {
        checks: Vec::new(),
        service: None,
        live: None,
        started: None,
    };
    if a.action == "resolved" {
        t.service = map_service(a, i.services).map(|s| s.name.clone());
        return t.stop(1, "not resolved", Outcome::Resolution, "the alert resolved");
    }
    t.pass(1, "not resolved", format!("action is `{}`", a.action));
    if !a.is_critical() {
        return t.stop(
            2,
            "critical",
            Outcome::Skip,
            format!("not critical (action `{}`)", a.action),
        );
    }
    t.pass(2, "critical", "action is critical");
    let Some(svc) = map_service(a, i.services) else {
        let env = a.environment.as_deref().unwrap_or("(none)");
        let reason = format!(
            "unmapped: no service for projects {:?} in environment {env}",
            a.projects
        );
        return t.stop(3, "mapped", Outcome::Skip, reason);
    };
    t.service = Some(svc.name.clone());
    t.pass(3, "mapped", format!("service {}", svc.name));
    if !a.is_crash_free_rate() && !svc.accept_other_rules {
        let what = match a.resource {
            Resource::EventAlert => "an issue alert".to_string(),
            Resource::MetricAlert => {
                format!("aggregate `{}`", a.aggregate.as_deref().unwrap_or("?"))
            }
        };
        return t.stop(
            4,
            "crash-free rate",
            Outcome::Skip,
            format!("not a crash alert: {what}"),
        );
    }
    t.pass(
        4,
        "crash-free rate",
        a.aggregate
            .clone()
            .unwrap_or_else(|| "other rules accepted".into()),
    );
    let Some(live) = i.history.deployments.iter().find(|d| d.live) else {
        return t.stop(
            5,
            "live known",
            Outcome::Escalate,
            "live release unknown: the ledger has no live deployment",
        );
    };
    t.live = Some(live.into());
    t.pass(
        5,
        "live known",
        format!(
            "{} (release {})",
            live.id,
            live.release.as_deref().unwrap_or("?")
        ),
    );
    if let Some(reason) = staleness(a, live, i.received_at_ms, &mut t.started) {
        return t.stop(6, "fresh", Outcome::Skip, format!("stale: {reason}"));
    }
    t.pass(
        6,
        "fresh",
        "alert started after the live deployment was promoted",
    );
    let Some(production) = i.production else {
        return t.finish(
            7,
            Outcome::NeedsProductionState,
            "production state needed".into(),
            None,
        );
    };
    let moved = serving_other(production, &live.id);
    if !moved.is_empty() || production.is_empty() {
        let reason = format!("production already changed: {}", moved.join(", "));
        return t.stop(7, "production unchanged", Outcome::Skip, reason);
    }
    t.pass(
        7,
        "production unchanged",
        format!("all {} domains serve {}", production.len(), live.id),
    );
    rest_of_rules(i, svc, live, t)
}

fn rest_of_rules(
    i: Inputs<'_>,
    svc: &ServiceSettings,
    live: &Deployment,
    mut t: Trail,
) -> Decision {
    let h = i.history;
    if h.live_rolled_back {
        return t.stop(
            8,
            "not handled",
            Outcome::Skip,
            format!("already handled: {} was already rolled back from", live.id),
        );
    }
    t.pass(
        8,
        "not handled",
        "no earlier rollback from the live deployment",
    );
    if svc.mode == Mode::Off {
        return t.stop(9, "enabled", Outcome::Skip, "disabled: service mode is off");
    }
    t.pass(
        9,
        "enabled",
        if svc.mode == Mode::DryRun {
            "mode dry-run"
        } else {
            "mode auto"
        },
    );
    if let Some(why) = &h.paused {
        return t.stop(
            10,
            "not paused",
            Outcome::Escalate,
            format!("paused by a person: {why}"),
        );
    }
    t.pass(10, "not paused", "not paused");
    let cooldown = svc.cooldown.as_millis() as i64;
    if let Some(last) = h.last_rollback_at_ms.filter(|l| i.now_ms - l < cooldown) {
        let ago = humantime::format_duration(std::time::Duration::from_secs(
            ((i.now_ms - last) / 1000).max(0) as u64,
        ));
        return t.stop(
            11,
            "outside cooldown",
            Outcome::Escalate,
            format!(
                "cooldown: the last automatic rollback was {ago} ago, within {}",
                humantime::format_duration(svc.cooldown)
            ),
        );
    }
    t.pass(
        11,
        "outside cooldown",
        "no automatic rollback within the cooldown",
    );
    if h.rollbacks_last_day >= svc.max_rollbacks_per_day {
        return t.stop(
            12,
            "budget left",
            Outcome::Escalate,
            format!(
                "budget spent: {} automatic rollbacks in the last 24 h (max {})",
                h.rollbacks_last_day, svc.max_rollbacks_per_day
            ),
        );
    }
    t.pass(
        12,
        "budget left",
        format!(
            "{} of {} rollbacks used today",
            h.rollbacks_last_day, svc.max_rollbacks_per_day
        ),
    );
    let Some(target) = find_target(h, live, svc.bake_time.as_millis() as i64) else {
        return t.stop(
            13,
            "target",
            Outcome::Escalate,
            "no target: no known-good deployment older than the live one",
        );
    };
    t.pass(
        13,
        "target",
        format!(
            "{} (release {})",
            target.id,
            target.release.as_deref().unwrap_or("?")
        ),
    );
    let target_ref = Some(DeploymentRef::from(target));
    if svc.mode == Mode::DryRun {
        let reason = format!("dry run: would roll back {} to {}", live.id, target.id);
        t.pass(14, "dry run", "mode is dry-run");
        return t.finish(14, Outcome::DryRun, reason, target_ref);
    }
    let reason = format!("roll back {} to known-good {}", live.id, target.id);
    t.finish(15, Outcome::Rollback, reason, target_ref)
}

/// Why the alert is about an earlier release, or `None` if it is fresh.
fn staleness(
    a: &Alert,
    live: &Deployment,
    received_at_ms: i64,
    started: &mut Option<i64>,
) -> Option<String> {
    if let (Some(alerted), Some(current)) = (&a.release, &live.release) {
        if alerted != current {
            return Some(format!(
                "the alert is about release {alerted}, the live release is {current}"
            ));
        }
    }
    // A start in the future cannot be true; an unknown start is at the latest
    // when the alert reached us.
    let start = a
        .started_at_ms
        .map_or(received_at_ms, |s| s.min(received_at_ms));
    *started = Some(start);
    match live.promoted_at_ms {
        Some(promoted) if start < promoted => Some(format!(
            "the alert started {} s before {} went live",
            (promoted - start) / 1000,
            live.id
        )),
        _ => None,
    }
}

/// The newest known-good deployment that served production before `live`.
fn find_target<'a>(h: &'a History, live: &Deployment, bake_ms: i64) -> Option<&'a Deployment> {
    let live_at = live
        .promoted_at_ms
        .or(live.created_at_ms)
        .unwrap_or(i64::MAX);
    h.deployments
        .iter()
        .filter(|d| !d.live && d.id != live.id && is_known_good(d, bake_ms))
        .filter(|d| {
            d.promoted_at_ms
                .or(d.created_at_ms)
                .is_some_and(|at| at < live_at)
        })
        .max_by_key(|d| d.promoted_at_ms.or(d.created_at_ms))
}

#[cfg(test)]
mod tests;
