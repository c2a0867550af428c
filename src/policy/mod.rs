//! The decision: a pure function of (alert, ledger history, live Vercel
//! state, service policy, now) implementing the rules of the README's
//! decision table in order; the first rule that does not pass decides.
//! Every rule evaluated is kept as a [`Check`] so a stored decision explains
//! itself. Which steps follow a decision is [`plan`].

mod health;
mod plan;
mod rule;
mod score;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ingest::sentry::{Alert, Resource};
use crate::ledger::{Deployment, History, StepError, Verdict};

pub use crate::ledger::Outcome;
pub use health::{thousands, ConfirmPolicy, Fallback, HealthQuery, Reading, Readings};
pub use plan::{plan, PlanContext};
pub use rule::Rule;
pub use score::{score, Report, Score, ScoreFacts};

/// What Backstop may do for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Roll back by itself.
    Auto,
    /// Decide and announce, change nothing.
    DryRun,
    /// Ignore alerts.
    Off,
}

impl Mode {
    /// The config's spelling: `auto`, `dry-run`, `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::DryRun => "dry-run",
            Mode::Off => "off",
        }
    }
}

/// What the decision needs to know about a service: a view of its settings.
#[derive(Debug, Clone, Copy)]
pub struct ServicePolicy<'a> {
    /// Service name.
    pub name: &'a str,
    /// Sentry project slugs whose alerts concern it.
    pub projects: &'a [String],
    /// The Sentry environment its rules are scoped to.
    pub environment: &'a str,
    /// `auto`, `dry-run` or `off`.
    pub mode: Mode,
    /// How long a deployment must serve without an alert to be known-good.
    pub bake_time: Duration,
    /// No second automatic rollback within this window.
    pub cooldown: Duration,
    /// Automatic rollbacks allowed in any 24 hours.
    pub max_rollbacks_per_day: u32,
    /// Act on rules that are not crash-free rates.
    pub accept_other_rules: bool,
    /// Below this much time live before the alert was detected, a fresh
    /// alert escalates instead of acting (0: no minimum).
    pub min_live_before_alert: Duration,
    /// Confirming with Sentry's release health before acting.
    pub confirm: ConfirmPolicy,
}

/// One rule as evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The rule.
    pub rule: Rule,
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
    /// The deciding rule.
    pub rule: Rule,
    /// One line a human can read.
    pub reason: String,
    /// The mapped service.
    pub service: Option<String>,
    /// The live deployment.
    pub live: Option<DeploymentRef>,
    /// The known-good target.
    pub target: Option<DeploymentRef>,
    /// When Sentry detected the alert (after sanity clamping), Unix ms.
    pub alert_started_at_ms: Option<i64>,
    /// Every rule evaluated, in order.
    pub checks: Vec<Check>,
    /// Release health read from Sentry for this decision, if it was.
    #[serde(default)]
    pub readings: Option<Readings>,
    /// The run whose watch this alert joined (rule 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joins: Option<String>,
}

impl Decision {
    /// True when `rule` was evaluated and passed.
    pub fn passed(&self, rule: Rule) -> bool {
        self.checks.iter().any(|c| c.rule == rule && c.passed)
    }

    /// True when the alert was fresh for the deployment that was live and
    /// serving production (not stale, and Vercel served it), so it can no
    /// longer bake to `good`. When production had changed under the ledger
    /// (rule 7), the ledger's "live" deployment was not what crashed: the
    /// resync learns what was, and the decision made again marks that one.
    pub fn alert_hit_live(&self) -> bool {
        self.live.is_some() && self.passed(Rule::ProductionUnchanged)
    }
}

/// An input the decision needs and was not given.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// Rule 7 needs the domains' current targets: fetch them, decide again.
    ProductionState,
    /// Rules 12–15 need release health from Sentry: read this, decide again.
    ReleaseHealth(HealthQuery),
}

/// How an alert maps to a configured service.
#[derive(Debug, Clone)]
pub enum Mapping<'a, 'b> {
    /// This service, with a note when the mapping was inferred.
    Service(&'b ServicePolicy<'a>, Option<String>),
    /// No service claims it.
    Unmapped,
    /// It concerns configured services but cannot be told which (or its
    /// details are missing): a person must look. Says why.
    Unknown(String),
}

/// The service an alert belongs to: one of its projects and its
/// environment. An alert whose rule carries no `environment` key at all
/// (Sentry's 2025 serializer) maps to the only service claiming one of its
/// projects; with several, it is `Unknown`. So is an alert whose details
/// Sentry could not send.
pub fn map_alert<'a, 'b>(alert: &Alert, services: &'b [ServicePolicy<'a>]) -> Mapping<'a, 'b> {
    if alert.details_missing {
        let url = alert.web_url.as_deref().unwrap_or("(no link)");
        return Mapping::Unknown(format!(
            "Sentry sent a critical alert without its details: rule {}, see {url}",
            alert.rule_id
        ));
    }
    let claims = |s: &&ServicePolicy<'_>| alert.projects.iter().any(|p| s.projects.contains(p));
    if alert.environment_absent {
        let claiming: Vec<&ServicePolicy<'a>> = services.iter().filter(claims).collect();
        return match claiming.as_slice() {
            [] => Mapping::Unmapped,
            [only] => Mapping::Service(
                only,
                Some(format!(
                    "service {} (the alert carries no environment; it is the only service for {})",
                    only.name,
                    alert.projects.join(", ")
                )),
            ),
            several => Mapping::Unknown(format!(
                "could not be mapped: the alert carries no environment, and services {} all claim {}",
                several.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                alert.projects.join(", ")
            )),
        };
    }
    let env = alert.environment.as_deref();
    match services
        .iter()
        .filter(claims)
        .find(|s| env == Some(s.environment))
    {
        Some(s) => Mapping::Service(s, None),
        None => Mapping::Unmapped,
    }
}

/// The service an alert belongs to, when it can be told.
pub fn map_service<'a, 'b>(
    alert: &Alert,
    services: &'b [ServicePolicy<'a>],
) -> Option<&'b ServicePolicy<'a>> {
    match map_alert(alert, services) {
        Mapping::Service(s, _) => Some(s),
        Mapping::Unmapped | Mapping::Unknown(_) => None,
    }
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
        Verdict::Bad | Verdict::Overridden => false,
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
    pub services: &'a [ServicePolicy<'a>],
    /// Ledger history of the mapped service (empty if unmapped).
    pub history: &'a History,
    /// Current targets of the production domains, once fetched.
    pub production: Option<&'a [DomainTarget]>,
    /// Release health, once read (when the service confirms).
    pub readings: Option<&'a Readings>,
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
    readings: Option<Readings>,
}

impl Trail {
    fn new() -> Self {
        Self {
            checks: Vec::new(),
            service: None,
            live: None,
            started: None,
            readings: None,
        }
    }

    fn pass(&mut self, rule: Rule, detail: impl Into<String>) {
        self.checks.push(Check {
            rule,
            name: rule.check_name().into(),
            passed: true,
            detail: detail.into(),
        });
    }

    fn stop(mut self, rule: Rule, outcome: Outcome, reason: impl Into<String>) -> Decision {
        let reason = reason.into();
        self.checks.push(Check {
            rule,
            name: rule.check_name().into(),
            passed: false,
            detail: reason.clone(),
        });
        self.finish(rule, outcome, reason, None)
    }

    fn finish(
        self,
        rule: Rule,
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
            readings: self.readings,
            joins: None,
        }
    }
}

/// The decision when the alert alone settles it (rules 2-4, and the
/// resolution of an unmapped alert), so it can be stored finished at once.
pub fn decide_from_alert(
    alert: &Alert,
    services: &[ServicePolicy<'_>],
    received_at_ms: i64,
) -> Option<Decision> {
    let nothing = History::default();
    let d = decide(Inputs {
        alert,
        services,
        history: &nothing,
        production: None,
        readings: None,
        received_at_ms,
        now_ms: received_at_ms,
    })
    .ok()?;
    let settled = (d.outcome == Outcome::Skip && d.rule.settles_at_ingest())
        || (d.outcome == Outcome::Resolution && d.service.is_none());
    settled.then_some(d)
}

/// The decision when the facts could not be gathered in time (the ledger
/// or Vercel failed past the deadline): escalate, never stay silent on a
/// critical alert. `live` is the ledger's live deployment when known, so
/// the page joins that deployment's incident.
pub fn facts_unreadable(
    service: Option<String>,
    live: Option<DeploymentRef>,
    error: &StepError,
) -> Decision {
    let reason = format!("live state unknown: {}", error.message);
    let mut t = Trail::new();
    t.service = service;
    t.live = live;
    t.checks.push(Check {
        rule: Rule::LiveKnown,
        name: "facts readable".into(),
        passed: false,
        detail: serde_json::to_string(error).unwrap_or_default(),
    });
    t.finish(Rule::LiveKnown, Outcome::Escalate, reason, None)
}

/// Applies the rules in order; the first that does not pass decides.
pub fn decide(i: Inputs<'_>) -> Result<Decision, Missing> {
    let a = i.alert;
    let mut t = Trail::new();
    if a.action == "resolved" {
        t.service = map_service(a, i.services).map(|s| s.name.to_string());
        return Ok(t.stop(Rule::NotResolved, Outcome::Resolution, "the alert resolved"));
    }
    t.pass(Rule::NotResolved, format!("action is `{}`", a.action));
    if !a.is_critical() {
        let reason = format!("not critical (action `{}`)", a.action);
        return Ok(t.stop(Rule::Critical, Outcome::Skip, reason));
    }
    t.pass(Rule::Critical, "action is critical");
    let unmapped = || {
        let env = a.environment.as_deref().unwrap_or("(none)");
        format!(
            "unmapped: no service for projects {:?} in environment {env}",
            a.projects
        )
    };
    let svc = match map_alert(a, i.services) {
        Mapping::Service(svc, note) => {
            t.pass(
                Rule::Mapped,
                note.unwrap_or_else(|| format!("service {}", svc.name)),
            );
            svc
        }
        Mapping::Unmapped => return Ok(t.stop(Rule::Mapped, Outcome::Skip, unmapped())),
        // Never silence on a critical crash alert that concerns us.
        Mapping::Unknown(why) if a.details_missing || a.is_crash_free_rate() => {
            return Ok(t.stop(Rule::Mapped, Outcome::Escalate, why));
        }
        Mapping::Unknown(_) => return Ok(t.stop(Rule::Mapped, Outcome::Skip, unmapped())),
    };
    t.service = Some(svc.name.to_string());
    if !a.is_crash_free_rate() && !svc.accept_other_rules {
        let what = match a.resource {
            Resource::EventAlert => "an issue alert".to_string(),
            Resource::MetricAlert => {
                format!("aggregate `{}`", a.aggregate.as_deref().unwrap_or("?"))
            }
        };
        let reason = format!("not a crash alert: {what}");
        return Ok(t.stop(Rule::CrashRate, Outcome::Skip, reason));
    }
    t.pass(
        Rule::CrashRate,
        a.aggregate
            .clone()
            .unwrap_or_else(|| "other rules accepted".into()),
    );
    let Some(live) = i.history.deployments.iter().find(|d| d.live) else {
        let reason = "live release unknown: the ledger has no live deployment";
        return Ok(t.stop(Rule::LiveKnown, Outcome::Escalate, reason));
    };
    t.live = Some(live.into());
    let release = live.release.as_deref().unwrap_or("?");
    t.pass(Rule::LiveKnown, format!("{} (release {release})", live.id));
    if let Some(reason) = staleness(a, live, i.received_at_ms, &mut t.started) {
        return Ok(t.stop(Rule::Fresh, Outcome::Skip, format!("stale: {reason}")));
    }
    t.pass(Rule::Fresh, freshness(a, live, t.started));
    let production = i.production.ok_or(Missing::ProductionState)?;
    let moved = serving_other(production, &live.id);
    if !moved.is_empty() || production.is_empty() {
        let reason = format!("production already changed: {}", moved.join(", "));
        return Ok(t.stop(Rule::ProductionUnchanged, Outcome::Skip, reason));
    }
    t.pass(
        Rule::ProductionUnchanged,
        format!("all {} domains serve {}", production.len(), live.id),
    );
    rest_of_rules(i, svc, live, t)
}

fn rest_of_rules(
    i: Inputs<'_>,
    svc: &ServicePolicy<'_>,
    live: &Deployment,
    mut t: Trail,
) -> Result<Decision, Missing> {
    let h = i.history;
    if h.live_rolled_back {
        let reason = format!("already handled: {} was already rolled back from", live.id);
        return Ok(t.stop(Rule::NotHandled, Outcome::Skip, reason));
    }
    t.pass(
        Rule::NotHandled,
        "no earlier rollback from the live deployment",
    );
    match &h.watching {
        Some((run, restored)) if *restored == live.id => {
            let reason = format!(
                "joins the watch: run {run} restored {} and is watching it recover",
                live.id
            );
            let mut d = t.stop(Rule::NotWatched, Outcome::Skip, reason);
            d.joins = Some(run.0.clone());
            return Ok(d);
        }
        _ => t.pass(
            Rule::NotWatched,
            "no rollback is watching the live deployment",
        ),
    }
    if svc.mode == Mode::Off {
        let reason = "disabled: service mode is off";
        return Ok(t.stop(Rule::Enabled, Outcome::Skip, reason));
    }
    let mode = match svc.mode {
        Mode::DryRun => "mode dry-run",
        _ => "mode auto",
    };
    t.pass(Rule::Enabled, mode);
    if let Some(why) = &h.paused {
        let reason = match h.frozen {
            true => format!("frozen: {why}"),
            false => format!("paused by a person: {why}"),
        };
        return Ok(t.stop(Rule::NotPaused, Outcome::Escalate, reason));
    }
    t.pass(Rule::NotPaused, "not paused");
    let target = find_target(h, live, svc.bake_time.as_millis() as i64);
    let confirmed = match confirm(i, svc, live, target, &mut t)? {
        Ok(confirmed) => confirmed,
        Err(stopped) => return Ok(*stopped),
    };
    if let Some(reason) = too_soon(svc, live, confirmed, &mut t) {
        return Ok(t.stop(Rule::LiveLongEnough, Outcome::Escalate, reason));
    }
    let cooldown = svc.cooldown.as_millis() as i64;
    if let Some(last) = h.last_rollback_at_ms.filter(|l| i.now_ms - l < cooldown) {
        let ago = humantime::format_duration(Duration::from_secs(
            ((i.now_ms - last) / 1000).max(0) as u64,
        ));
        let reason = format!(
            "cooldown: the last automatic rollback was {ago} ago, within {}",
            humantime::format_duration(svc.cooldown)
        );
        return Ok(t.stop(Rule::OutsideCooldown, Outcome::Escalate, reason));
    }
    t.pass(
        Rule::OutsideCooldown,
        "no automatic rollback within the cooldown",
    );
    let (used, max) = (h.rollbacks_last_day, svc.max_rollbacks_per_day);
    if used >= max {
        let reason =
            format!("budget spent: {used} automatic rollbacks in the last 24 h (max {max})");
        return Ok(t.stop(Rule::BudgetLeft, Outcome::Escalate, reason));
    }
    t.pass(
        Rule::BudgetLeft,
        format!("{used} of {max} rollbacks used today"),
    );
    let Some(target) = target else {
        let reason = "no target: no known-good deployment older than the live one";
        return Ok(t.stop(Rule::Target, Outcome::Escalate, reason));
    };
    let release = target.release.as_deref().unwrap_or("?");
    t.pass(Rule::Target, format!("{} (release {release})", target.id));
    let target_ref = Some(DeploymentRef::from(target));
    if svc.mode == Mode::DryRun {
        let reason = format!("dry run: would roll back {} to {}", live.id, target.id);
        t.pass(Rule::DryRun, "mode is dry-run");
        return Ok(t.finish(Rule::DryRun, Outcome::DryRun, reason, target_ref));
    }
    let reason = format!("roll back {} to known-good {}", live.id, target.id);
    Ok(t.finish(Rule::Act, Outcome::Rollback, reason, target_ref))
}

/// Rule 16: an alert detected too soon after the promotion measures mostly
/// the previous release. Release health, when read and confirming, decides
/// instead; otherwise `min_live_before_alert` (0: off). Why, when too soon.
fn too_soon(
    svc: &ServicePolicy<'_>,
    live: &Deployment,
    confirmed: bool,
    t: &mut Trail,
) -> Option<String> {
    let min = svc.min_live_before_alert;
    let live_for = match (t.started, live.promoted_at_ms) {
        (Some(detected), Some(promoted)) => Some((detected - promoted).max(0)),
        _ => None,
    };
    let detail = match live_for {
        _ if confirmed => "release health says it is the live release that crashes".to_string(),
        Some(ms) if !min.is_zero() && ms < min.as_millis() as i64 => {
            return Some(format!(
                "live only {} before the alert was detected (min_live_before_alert {}): its window is mostly the previous release",
                crate::clock::human_ms(ms),
                humantime::format_duration(min)
            ));
        }
        _ if min.is_zero() => "no minimum (min_live_before_alert = 0)".to_string(),
        _ => format!(
            "at least {} live before the alert",
            humantime::format_duration(min)
        ),
    };
    t.pass(Rule::LiveLongEnough, detail);
    None
}

/// What rules 12–15 concluded.
type Confirmation = Result<bool, Box<Decision>>;

/// Rules 12–15: Sentry's release health. `Ok(Ok(true))` when it was read
/// and confirms the live release crashes; `Ok(Ok(false))` when it was not
/// read (off, or unreachable with `on_confirm_unavailable = "rollback"`);
/// `Ok(Err(decision))` when it says not to act; `Err(Missing)` when it must
/// be read first.
fn confirm(
    i: Inputs<'_>,
    svc: &ServicePolicy<'_>,
    live: &Deployment,
    target: Option<&Deployment>,
    t: &mut Trail,
) -> Result<Confirmation, Missing> {
    let c = svc.confirm;
    let Some(release) = live.release.clone().filter(|_| c.enabled) else {
        let why = match c.enabled {
            false => "not read: confirmation is off (sentry.token or sentry.org unset, or confirm = false)",
            true => "not read: the live deployment has no release",
        };
        t.pass(Rule::Confirmed, why);
        return Ok(Ok(false));
    };
    let Some(readings) = i.readings else {
        return Err(Missing::ReleaseHealth(health_query(
            i, live, target, release, t,
        )));
    };
    t.readings = Some(readings.clone());
    if let Some(why) = &readings.unavailable {
        if c.on_unavailable == Fallback::Escalate {
            let reason = format!("Sentry unreachable ({why}): not acting on the alert alone");
            return Ok(Err(stopped(t, Rule::Confirmed, Outcome::Escalate, reason)));
        }
        let detail = format!("Sentry unreachable ({why}): acting on the alert alone");
        t.pass(Rule::Confirmed, detail);
        return Ok(Ok(false));
    }
    let reading = readings.live.clone().unwrap_or(Reading {
        release: release.clone(),
        crash_free: None,
        sessions: 0,
    });
    t.pass(
        Rule::Confirmed,
        format!("release {release}: {}", reading.describe()),
    );
    if reading.sessions < c.min_sessions || reading.crash_free.is_none() {
        let reason = match reading.crash_free {
            None if reading.sessions >= c.min_sessions => format!(
                "inconclusive: Sentry gave no crash-free rate for release {release} ({} sessions)",
                thousands(reading.sessions)
            ),
            _ => format!(
                "inconclusive: {} sessions of release {release} in the window (min_sessions {})",
                thousands(reading.sessions),
                c.min_sessions
            ),
        };
        if c.on_inconclusive == Fallback::Escalate {
            return Ok(Err(stopped(t, Rule::EnoughData, Outcome::Escalate, reason)));
        }
        let detail = format!("{reason}; acting anyway (on_inconclusive = \"rollback\")");
        t.pass(Rule::EnoughData, detail);
        return Ok(Ok(false));
    }
    t.pass(
        Rule::EnoughData,
        format!("{} sessions", thousands(reading.sessions)),
    );
    let Some(threshold) = i.alert.threshold else {
        // Nothing to compare with: the readings are kept, but they confirm
        // nothing (rule 16 still applies).
        let why = "the alert carries no threshold to compare with";
        t.pass(Rule::StillCrashing, why);
        t.pass(Rule::TheRelease, why);
        return Ok(Ok(false));
    };
    let below = |r: &Reading| r.crash_free.is_some_and(|x| x < threshold);
    if !below(&reading) {
        let reason = format!(
            "already recovered: {} (threshold {threshold}%)",
            reading.describe()
        );
        return Ok(Err(stopped(t, Rule::StillCrashing, Outcome::Skip, reason)));
    }
    t.pass(
        Rule::StillCrashing,
        format!("{} < {threshold}%", reading.describe()),
    );
    if let Some(reason) = not_the_release(readings, c.min_sessions, threshold) {
        return Ok(Err(stopped(t, Rule::TheRelease, Outcome::Escalate, reason)));
    }
    let healthy = match &readings.target {
        Some(good) => format!("known-good release {}: {}", good.release, good.describe()),
        None => "no known-good release to compare with".to_string(),
    };
    t.pass(Rule::TheRelease, healthy);
    Ok(Ok(true))
}

/// What to read for rules 12–15: the live release over the alert's window
/// (up to now), and the known-good target over its own time live.
fn health_query(
    i: Inputs<'_>,
    live: &Deployment,
    target: Option<&Deployment>,
    release: String,
    t: &Trail,
) -> HealthQuery {
    let detected = t.started.unwrap_or(i.received_at_ms);
    let window = i.alert.window_ms.unwrap_or(3_600_000);
    // The known-good release over its own time live, at most its last
    // day (Sentry refuses more than 1,000 hourly points, and the last day
    // is what the live release replaced).
    let target = target.and_then(|d| {
        let to = d.superseded_at_ms.or(live.promoted_at_ms)?;
        let from = d.promoted_at_ms?.max(to - TARGET_WINDOW_MS);
        Some((d.release.clone()?, from, to))
    });
    let unit = match i.alert.aggregate.as_deref() {
        Some(a) if a.contains("user") => "user",
        _ => "session",
    };
    HealthQuery {
        live_release: release,
        start_ms: detected - window,
        end_ms: i.now_ms,
        target,
        unit: unit.into(),
    }
}

/// How much of the known-good release's time live is read: its last day.
pub const TARGET_WINDOW_MS: i64 = 86_400_000;

/// Why it is not the release: the known-good release was itself below the
/// threshold over its time live, or every release with enough sessions
/// dropped together.
fn not_the_release(readings: &Readings, min_sessions: u64, threshold: f64) -> Option<String> {
    let below =
        |r: &Reading| r.sessions >= min_sessions && r.crash_free.is_some_and(|x| x < threshold);
    if let Some(good) = readings.target.as_ref().filter(|r| below(r)) {
        return Some(format!(
            "not the release: the known-good release {} was itself at {} while it was live (threshold {threshold}%)",
            good.release,
            good.describe()
        ));
    }
    let others: Vec<&Reading> = readings
        .others
        .iter()
        .filter(|r| r.sessions >= min_sessions)
        .collect();
    if others.is_empty() || !others.iter().all(|r| below(r)) {
        return None;
    }
    let which: Vec<String> = others
        .iter()
        .map(|r| format!("{} {}", r.release, r.describe()))
        .collect();
    Some(format!(
        "all releases are crashing: likely not a release problem ({})",
        which.join("; ")
    ))
}

/// Stops the trail (taking it) at `rule`.
fn stopped(t: &mut Trail, rule: Rule, outcome: Outcome, reason: String) -> Box<Decision> {
    let trail = std::mem::replace(t, Trail::new());
    Box::new(trail.stop(rule, outcome, reason))
}

/// How fresh the alert is for the live deployment: when it was detected,
/// and how much of the rule's window the live deployment covered.
fn freshness(a: &Alert, live: &Deployment, detected: Option<i64>) -> String {
    let (Some(detected), Some(promoted)) = (detected, live.promoted_at_ms) else {
        return "alert detected after the live deployment was promoted".into();
    };
    let live_for = (detected - promoted).max(0);
    let mut text = format!(
        "alert detected {} after {} went live",
        crate::clock::human_ms(live_for),
        live.id
    );
    if let Some(window) = a.window_ms {
        let covered = live_for.min(window);
        text.push_str(&format!(
            "; live for {} of the {} min in the window",
            crate::clock::human_ms(covered),
            window / 60_000
        ));
    }
    text
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
    // A detection in the future cannot be true; an unknown one is at the
    // latest when the alert reached us.
    let detected = a
        .detected_at_ms
        .map_or(received_at_ms, |s| s.min(received_at_ms));
    *started = Some(detected);
    match live.promoted_at_ms {
        Some(promoted) if detected < promoted => Some(format!(
            "the alert was detected {} s before {} went live",
            (promoted - detected) / 1000,
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
