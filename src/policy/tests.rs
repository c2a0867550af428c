//! Every row of the decision table, and the precedence between rows.

use super::*;
use std::time::Duration;

const MIN: i64 = 60_000;
const NOW: i64 = 1_800_000_000_000;

/// A service's policy, owned, so tests can change it.
struct Svc {
    projects: Vec<String>,
    mode: Mode,
    accept_other_rules: bool,
    min_live: Duration,
    confirm: ConfirmPolicy,
}

impl Svc {
    fn view(&self) -> ServicePolicy<'_> {
        ServicePolicy {
            name: "storefront",
            projects: &self.projects,
            environment: "production",
            mode: self.mode,
            bake_time: Duration::from_secs(30 * 60),
            cooldown: Duration::from_secs(3600),
            max_rollbacks_per_day: 3,
            accept_other_rules: self.accept_other_rules,
            min_live_before_alert: self.min_live,
            confirm: self.confirm,
        }
    }
}

fn service() -> Svc {
    Svc {
        projects: vec!["web".into()],
        mode: Mode::Auto,
        accept_other_rules: false,
        min_live: Duration::ZERO,
        confirm: ConfirmPolicy::default(),
    }
}

fn alert() -> Alert {
    Alert {
        resource: Resource::MetricAlert,
        action: "critical".into(),
        rule_id: "9".into(),
        rule_name: Some("crash-free".into()),
        identifier: "42".into(),
        projects: vec!["web".into()],
        environment: Some("production".into()),
        environment_absent: false,
        aggregate: Some(
            "percentage(sessions_crashed, sessions) AS _crash_rate_alert_aggregate".into(),
        ),
        threshold: Some(99.5),
        measured: Some(92.0),
        detected_at_ms: Some(NOW - 5 * MIN),
        window_ms: Some(60 * MIN),
        details_missing: false,
        web_url: None,
        title: None,
        release: None,
    }
}

fn dep(id: &str, promoted: i64, superseded: Option<i64>, verdict: Verdict) -> Deployment {
    Deployment {
        id: id.into(),
        service: "storefront".into(),
        url: Some(format!("{id}.vercel.app")),
        release: Some(format!("rel-{id}")),
        created_at_ms: Some(promoted - MIN),
        promoted_at_ms: Some(promoted),
        superseded_at_ms: superseded,
        live: superseded.is_none(),
        verdict,
        verdict_reason: None,
        alerted_at_ms: None,
    }
}

/// good (marked) → baked (unproven, 2 h served) → live (promoted 10 min ago).
fn history() -> History {
    History {
        deployments: vec![
            dep("dpl_live", NOW - 10 * MIN, None, Verdict::Unproven),
            dep(
                "dpl_baked",
                NOW - 130 * MIN,
                Some(NOW - 10 * MIN),
                Verdict::Unproven,
            ),
            dep(
                "dpl_old",
                NOW - 600 * MIN,
                Some(NOW - 130 * MIN),
                Verdict::Good,
            ),
        ],
        ..History::default()
    }
}

fn serving(id: &str) -> Vec<DomainTarget> {
    ["shop.example.com", "www.shop.example.com"]
        .iter()
        .map(|d| DomainTarget {
            domain: d.to_string(),
            deployment_id: Some(id.into()),
        })
        .collect()
}

fn run(
    alert: &Alert,
    svc: &Svc,
    h: &History,
    production: Option<&[DomainTarget]>,
) -> Result<Decision, Missing> {
    decide(Inputs {
        alert,
        services: &[svc.view()],
        history: h,
        production,
        readings: None,
        received_at_ms: NOW,
        now_ms: NOW,
    })
}

fn full(alert: &Alert, svc: &Svc, h: &History) -> Decision {
    run(alert, svc, h, Some(&serving("dpl_live"))).expect("every input given")
}

#[test]
fn rule_21_rolls_back_a_fresh_crash_alert_to_the_newest_known_good() {
    let d = full(&alert(), &service(), &history());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Rollback, 21));
    assert_eq!(d.live.as_ref().unwrap().id, "dpl_live");
    assert_eq!(d.target.as_ref().unwrap().id, "dpl_baked");
    assert_eq!(d.service.as_deref(), Some("storefront"));
    // Rules 1-12 and 16-19 (13-15 read release health: not evaluated when
    // confirmation is off).
    assert_eq!(d.checks.len(), 16, "{:?}", d.checks);
    assert!(d.checks.iter().all(|c| c.passed));
    assert!(d.alert_hit_live());
}

#[test]
fn rule_1_resolution_wins_over_everything() {
    let mut a = alert();
    a.action = "resolved".into();
    a.projects = vec!["elsewhere".into()];
    let d = full(&a, &service(), &History::default());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Resolution, 1));
}

#[test]
fn rule_2_warnings_are_skipped_even_when_unmapped() {
    for action in ["warning", "open"] {
        let mut a = alert();
        a.action = action.into();
        a.projects = vec!["elsewhere".into()];
        let d = full(&a, &service(), &history());
        assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 2), "{action}");
    }
}

#[test]
fn rule_3_unmapped_project_or_environment_is_skipped() {
    let mut a = alert();
    a.projects = vec!["other".into()];
    assert_eq!(full(&a, &service(), &history()).rule.number(), 3);
    let mut a = alert();
    a.environment = Some("staging".into());
    assert_eq!(full(&a, &service(), &history()).rule.number(), 3);
    let mut a = alert();
    a.environment = None;
    let d = full(&a, &service(), &history());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 3));
    assert!(!d.alert_hit_live());
}

#[test]
fn rule_4_other_aggregates_are_skipped_unless_accepted() {
    let mut a = alert();
    a.aggregate = Some("count()".into());
    let d = full(&a, &service(), &history());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 4));
    let mut svc = service();
    svc.accept_other_rules = true;
    assert_eq!(full(&a, &svc, &history()).outcome, Outcome::Rollback);
    let mut users = alert();
    users.aggregate =
        Some("percentage(users_crashed, users) AS _crash_rate_alert_aggregate".into());
    assert_eq!(
        full(&users, &service(), &history()).outcome,
        Outcome::Rollback
    );
}

#[test]
fn rule_5_unknown_live_release_escalates() {
    let mut h = history();
    h.deployments.retain(|d| !d.live);
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 5));
    // Precedence: an unmapped alert is skipped before the ledger matters.
    let mut a = alert();
    a.projects = vec!["other".into()];
    assert_eq!(full(&a, &service(), &h).rule.number(), 3);
}

#[test]
fn rule_6_alert_started_before_the_promotion_is_stale() {
    let mut a = alert();
    a.detected_at_ms = Some(NOW - 11 * MIN);
    let d = full(&a, &service(), &history());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 6));
    assert!(d.reason.starts_with("stale"));
    assert!(!d.alert_hit_live());
}

#[test]
fn rule_6_unknown_or_future_start_counts_as_received_time() {
    let mut a = alert();
    a.detected_at_ms = None;
    assert_eq!(full(&a, &service(), &history()).outcome, Outcome::Rollback);
    a.detected_at_ms = Some(NOW + 1000 * MIN);
    let d = full(&a, &service(), &history());
    assert_eq!(d.alert_started_at_ms, Some(NOW));
    // Received before the live promotion, with a start claimed after it: stale.
    let d = decide(Inputs {
        alert: &a,
        services: &[service().view()],
        history: &history(),
        production: Some(&serving("dpl_live")),
        readings: None,
        received_at_ms: NOW - 20 * MIN,
        now_ms: NOW,
    })
    .unwrap();
    assert_eq!(d.rule, Rule::Fresh);
}

#[test]
fn rule_6_issue_alert_about_another_release_is_stale() {
    let mut a = alert();
    a.resource = Resource::EventAlert;
    a.action = "triggered".into();
    a.aggregate = None;
    a.release = Some("rel-dpl_baked".into());
    let mut svc = service();
    svc.accept_other_rules = true;
    assert_eq!(full(&a, &svc, &history()).rule.number(), 6);
    a.release = Some("rel-dpl_live".into());
    assert_eq!(full(&a, &svc, &history()).outcome, Outcome::Rollback);
}

#[test]
fn rule_7_needs_production_state_then_skips_when_it_moved() {
    let d = run(&alert(), &service(), &history(), None);
    assert_eq!(d, Err(Missing::ProductionState));
    let mut prod = serving("dpl_live");
    prod[1].deployment_id = Some("dpl_someone_else".into());
    let d = run(&alert(), &service(), &history(), Some(&prod)).unwrap();
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 7));
    assert!(
        d.reason
            .contains("www.shop.example.com serves dpl_someone_else"),
        "{}",
        d.reason
    );
    assert!(
        !d.alert_hit_live(),
        "the ledger's live deployment was not serving: it did not crash"
    );
    prod[1].deployment_id = None;
    let d = run(&alert(), &service(), &history(), Some(&prod)).unwrap();
    assert_eq!(d.rule, Rule::ProductionUnchanged);
}

#[test]
fn rule_8_live_deployment_already_rolled_back_from_is_skipped() {
    let mut h = history();
    h.live_rolled_back = true;
    h.paused = Some("maintenance".into());
    let d = full(&alert(), &service(), &h);
    assert_eq!(
        (d.outcome, d.rule.number()),
        (Outcome::Skip, 8),
        "8 wins over 11"
    );
}

#[test]
fn rule_10_mode_off_is_skipped_before_pause() {
    let mut svc = service();
    svc.mode = Mode::Off;
    let mut h = history();
    h.paused = Some("x".into());
    let d = full(&alert(), &svc, &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 10));
}

#[test]
fn rule_11_paused_service_escalates() {
    let mut h = history();
    h.paused = Some("release freeze".into());
    h.rollbacks_last_day = 99;
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 11));
    assert!(d.reason.contains("release freeze"));
}

#[test]
fn rule_17_cooldown_escalates_and_expires() {
    let mut h = history();
    h.last_rollback_at_ms = Some(NOW - 30 * MIN);
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 17));
    h.last_rollback_at_ms = Some(NOW - 61 * MIN);
    assert_eq!(full(&alert(), &service(), &h).outcome, Outcome::Rollback);
}

#[test]
fn rule_18_daily_budget_escalates() {
    let mut h = history();
    h.rollbacks_last_day = 3;
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 18));
    h.rollbacks_last_day = 2;
    assert_eq!(full(&alert(), &service(), &h).outcome, Outcome::Rollback);
}

#[test]
fn rule_19_no_known_good_target_escalates() {
    let mut h = history();
    h.deployments[1].verdict = Verdict::Bad;
    h.deployments[2].verdict = Verdict::Bad;
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 19));
}

#[test]
fn rule_19_unbaked_or_alerted_deployments_are_not_targets() {
    let mut h = history();
    // dpl_baked served only 20 minutes: falls through to the marked-good one.
    h.deployments[1].promoted_at_ms = Some(NOW - 30 * MIN);
    assert_eq!(full(&alert(), &service(), &h).target.unwrap().id, "dpl_old");
    let mut h = history();
    h.deployments[1].alerted_at_ms = Some(NOW - 20 * MIN);
    assert_eq!(full(&alert(), &service(), &h).target.unwrap().id, "dpl_old");
    // A good deployment promoted after the live one is not "before" it.
    let mut h = history();
    h.deployments[1].verdict = Verdict::Bad;
    h.deployments[2].promoted_at_ms = Some(NOW - MIN);
    assert_eq!(full(&alert(), &service(), &h).rule.number(), 19);
}

#[test]
fn rule_20_dry_run_names_the_target_and_changes_nothing() {
    let mut svc = service();
    svc.mode = Mode::DryRun;
    let d = full(&alert(), &svc, &history());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::DryRun, 20));
    assert_eq!(d.target.unwrap().id, "dpl_baked");
    // Escalation rules still come first in dry-run.
    let mut h = history();
    h.rollbacks_last_day = 3;
    assert_eq!(full(&alert(), &svc, &h).rule.number(), 18);
}

#[test]
fn known_good_needs_a_full_bake_without_alerts() {
    let bake = 30 * MIN;
    assert!(is_known_good(
        &dep("a", 0, Some(bake), Verdict::Unproven),
        bake
    ));
    assert!(!is_known_good(
        &dep("a", 0, Some(bake - 1), Verdict::Unproven),
        bake
    ));
    assert!(!is_known_good(&dep("a", 0, None, Verdict::Unproven), bake));
    assert!(is_known_good(&dep("a", 0, None, Verdict::Good), bake));
    assert!(!is_known_good(
        &dep("a", 0, Some(10 * bake), Verdict::Bad),
        bake
    ));
    let mut alerted = dep("a", 0, Some(10 * bake), Verdict::Unproven);
    alerted.alerted_at_ms = Some(1);
    assert!(!is_known_good(&alerted, bake));
}

#[test]
fn rule_6_freshness_is_the_detection_time_and_says_how_much_of_the_window_was_live() {
    let d = full(&alert(), &service(), &history());
    let fresh = d.checks.iter().find(|c| c.rule == Rule::Fresh).unwrap();
    assert_eq!(
        fresh.detail,
        "alert detected 5 min after dpl_live went live; live for 5 min of the 60 min in the window"
    );
}

#[test]
fn rule_3_an_alert_without_an_environment_maps_to_the_only_service_for_its_project() {
    let mut a = alert();
    a.environment = None;
    a.environment_absent = true;
    let d = full(&a, &service(), &history());
    assert_eq!(d.outcome, Outcome::Rollback);
    let mapped = d.checks.iter().find(|c| c.rule == Rule::Mapped).unwrap();
    assert!(
        mapped.detail.contains("carries no environment"),
        "{}",
        mapped.detail
    );
    // Two services claim the project (one per environment): a person must map it.
    let (prod, staging) = (service(), service());
    let services = [
        prod.view(),
        ServicePolicy {
            name: "storefront-staging",
            environment: "staging",
            ..staging.view()
        },
    ];
    let d = decide(Inputs {
        alert: &a,
        services: &services,
        history: &history(),
        production: Some(&serving("dpl_live")),
        readings: None,
        received_at_ms: NOW,
        now_ms: NOW,
    })
    .unwrap();
    assert_eq!((d.outcome, d.rule), (Outcome::Escalate, Rule::Mapped));
    assert_eq!(d.service, None);
    assert!(d.reason.starts_with("could not be mapped"), "{}", d.reason);
}

#[test]
fn rule_3_an_alert_without_details_pages_a_person_and_never_acts() {
    let mut a = alert();
    a.details_missing = true;
    a.projects.clear();
    a.environment = None;
    a.aggregate = None;
    a.web_url = Some("https://acme.sentry.io/alerts/rules/details/9/?alert=42".into());
    let d = full(&a, &service(), &history());
    assert_eq!((d.outcome, d.rule), (Outcome::Escalate, Rule::Mapped));
    assert_eq!(
        d.reason,
        "Sentry sent a critical alert without its details: rule 9, see https://acme.sentry.io/alerts/rules/details/9/?alert=42"
    );
    assert!(d.target.is_none() && d.live.is_none());
}

#[test]
fn rule_16_an_alert_detected_too_soon_after_the_promotion_escalates_when_asked() {
    let mut a = alert();
    a.detected_at_ms = Some(NOW - 10 * MIN + 40_000); // 40 s after dpl_live went live
    assert_eq!(
        full(&a, &service(), &history()).outcome,
        Outcome::Rollback,
        "no minimum by default"
    );
    let mut svc = service();
    svc.min_live = Duration::from_secs(300);
    let d = full(&a, &svc, &history());
    assert_eq!(
        (d.outcome, d.rule),
        (Outcome::Escalate, Rule::LiveLongEnough)
    );
    assert!(d.reason.contains("live only 40.0s"), "{}", d.reason);
    a.detected_at_ms = Some(NOW - 4 * MIN);
    assert_eq!(full(&a, &svc, &history()).outcome, Outcome::Rollback);
}

fn confirming() -> Svc {
    let mut svc = service();
    svc.confirm.enabled = true;
    svc
}

fn reading(release: &str, rate: f64, sessions: u64) -> Reading {
    Reading {
        release: release.into(),
        crash_free: Some(rate),
        sessions,
    }
}

/// The live release crashing over 2,140 sessions, the known-good one
/// healthy, one other release healthy.
fn crashing() -> Readings {
    Readings {
        live: Some(reading("rel-dpl_live", 92.1, 2140)),
        others: vec![reading("rel-dpl_baked", 99.9, 900)],
        target: Some(reading("rel-dpl_baked", 99.8, 50_000)),
        unavailable: None,
    }
}

fn with_health(alert: &Alert, svc: &Svc, h: &History, readings: &Readings) -> Decision {
    decide(Inputs {
        alert,
        services: &[svc.view()],
        history: h,
        production: Some(&serving("dpl_live")),
        readings: Some(readings),
        received_at_ms: NOW,
        now_ms: NOW,
    })
    .expect("every input given")
}

#[test]
fn rule_12_confirmation_asks_for_the_live_and_known_good_releases_health_first() {
    let asked = run(
        &alert(),
        &confirming(),
        &history(),
        Some(&serving("dpl_live")),
    );
    let Err(Missing::ReleaseHealth(q)) = asked else {
        panic!("expected a release-health query, got {asked:?}");
    };
    assert_eq!(q.live_release, "rel-dpl_live");
    // The alert's 60 min window up to its detection 5 min ago, then until now.
    assert_eq!((q.start_ms, q.end_ms), (NOW - 65 * MIN, NOW));
    // The known-good target over its own time live.
    assert_eq!(
        q.target,
        Some(("rel-dpl_baked".to_string(), NOW - 130 * MIN, NOW - 10 * MIN))
    );
    assert_eq!(q.unit, "session");
    let mut users = alert();
    users.aggregate =
        Some("percentage(users_crashed, users) AS _crash_rate_alert_aggregate".into());
    let Err(Missing::ReleaseHealth(q)) = run(
        &users,
        &confirming(),
        &history(),
        Some(&serving("dpl_live")),
    ) else {
        panic!("expected a release-health query");
    };
    assert_eq!(q.unit, "user");
    // Confirmation off: never asked, the check says why.
    let d = full(&alert(), &service(), &history());
    let c = d.checks.iter().find(|c| c.rule == Rule::Confirmed).unwrap();
    assert!(c.passed && c.detail.starts_with("not read"), "{}", c.detail);
}

#[test]
fn rule_21_confirmed_release_health_rolls_back_and_keeps_the_readings() {
    let d = with_health(&alert(), &confirming(), &history(), &crashing());
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Rollback, 21));
    assert_eq!(d.checks.len(), 19, "rules 1-19 passed: {:?}", d.checks);
    assert_eq!(d.readings.as_ref(), Some(&crashing()));
    let detail = |r: Rule| {
        d.checks
            .iter()
            .find(|c| c.rule == r)
            .unwrap()
            .detail
            .clone()
    };
    assert_eq!(
        detail(Rule::Confirmed),
        "release rel-dpl_live: 92.1% over 2,140 sessions"
    );
    assert_eq!(
        detail(Rule::StillCrashing),
        "92.1% over 2,140 sessions < 99.5%"
    );
    assert_eq!(
        detail(Rule::TheRelease),
        "known-good release rel-dpl_baked: 99.8% over 50,000 sessions"
    );
}

#[test]
fn rule_12_sentry_unreachable_acts_on_the_alert_alone_or_escalates() {
    let down = Readings {
        unavailable: Some("no answer within 3s".into()),
        ..Readings::default()
    };
    let d = with_health(&alert(), &confirming(), &history(), &down);
    assert_eq!(
        d.outcome,
        Outcome::Rollback,
        "the default: Sentry fired the alert"
    );
    let c = d.checks.iter().find(|c| c.rule == Rule::Confirmed).unwrap();
    assert!(
        c.detail.contains("acting on the alert alone"),
        "{}",
        c.detail
    );
    let mut svc = confirming();
    svc.confirm.on_unavailable = Fallback::Escalate;
    let d = with_health(&alert(), &svc, &history(), &down);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 12));
    assert!(
        d.reason
            .contains("Sentry unreachable (no answer within 3s)"),
        "{}",
        d.reason
    );
}

#[test]
fn rule_13_too_little_data_pages_a_person_unless_told_to_roll_back() {
    let mut thin = crashing();
    thin.live = Some(reading("rel-dpl_live", 80.0, 37));
    let d = with_health(&alert(), &confirming(), &history(), &thin);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 13));
    assert!(
        d.reason.starts_with("inconclusive: 37 sessions"),
        "{}",
        d.reason
    );
    // No sessions at all for the live release is too little data as well.
    thin.live = None;
    let d = with_health(&alert(), &confirming(), &history(), &thin);
    assert_eq!(d.rule, Rule::EnoughData);
    let mut svc = confirming();
    svc.confirm.on_inconclusive = Fallback::Rollback;
    let d = with_health(&alert(), &svc, &history(), &thin);
    assert_eq!(d.outcome, Outcome::Rollback);
}

#[test]
fn rule_14_a_release_already_back_above_the_threshold_is_skipped() {
    let mut healed = crashing();
    healed.live = Some(reading("rel-dpl_live", 99.7, 2140));
    let d = with_health(&alert(), &confirming(), &history(), &healed);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 14));
    assert!(
        d.reason.starts_with("already recovered: 99.7%"),
        "{}",
        d.reason
    );
    assert!(d.rule.announces_skip(), "a Slack note says so");
}

#[test]
fn rule_15_not_the_release_when_the_known_good_one_crashed_too_or_everything_dropped() {
    let mut also_bad = crashing();
    also_bad.target = Some(reading("rel-dpl_baked", 97.0, 8000));
    let d = with_health(&alert(), &confirming(), &history(), &also_bad);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 15));
    assert!(d.reason.starts_with("not the release"), "{}", d.reason);
    assert!(d.target.is_none(), "nothing to roll back to is named");

    let mut everything = crashing();
    everything.others = vec![
        reading("rel-dpl_baked", 95.0, 900),
        reading("rel-dpl_old", 91.0, 300),
    ];
    let d = with_health(&alert(), &confirming(), &history(), &everything);
    assert_eq!(d.rule, Rule::TheRelease);
    assert!(
        d.reason
            .starts_with("all releases are crashing: likely not a release problem"),
        "{}",
        d.reason
    );
    // A release with too few sessions to believe does not count either way.
    everything.others[1] = reading("rel-dpl_old", 99.9, 12);
    let d = with_health(&alert(), &confirming(), &history(), &everything);
    assert_eq!(d.rule, Rule::TheRelease);
    // One other release healthy: it is the live release.
    everything.others[1] = reading("rel-dpl_old", 99.9, 400);
    let d = with_health(&alert(), &confirming(), &history(), &everything);
    assert_eq!(d.outcome, Outcome::Rollback);
}

#[test]
fn rule_16_release_health_decides_instead_of_the_minimum_time_live() {
    let mut a = alert();
    a.detected_at_ms = Some(NOW - 10 * MIN + 40_000);
    let mut svc = confirming();
    svc.min_live = Duration::from_secs(300);
    let d = with_health(&a, &svc, &history(), &crashing());
    assert_eq!(d.outcome, Outcome::Rollback);
    // Sentry unreachable: the minimum applies again.
    let down = Readings {
        unavailable: Some("timeout".into()),
        ..Readings::default()
    };
    let d = with_health(&a, &svc, &history(), &down);
    assert_eq!(d.rule, Rule::LiveLongEnough);
}

#[test]
fn rule_9_an_alert_about_a_restored_deployment_joins_its_watch() {
    let mut h = history();
    h.watching = Some((crate::ledger::RunId("run-1".into()), "dpl_live".into()));
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Skip, 9));
    assert!(d.reason.contains("run run-1"), "{}", d.reason);
    assert_eq!(
        d.joins.as_deref(),
        Some("run-1"),
        "recorded on the watching run"
    );
    assert!(
        d.alert_hit_live(),
        "the restored deployment crashed: it is not good"
    );
    // A watch over another deployment does not stop this one.
    h.watching = Some((crate::ledger::RunId("run-1".into()), "dpl_other".into()));
    assert_eq!(full(&alert(), &service(), &h).outcome, Outcome::Rollback);
}

#[test]
fn rule_11_a_frozen_service_escalates_and_says_why() {
    let mut h = history();
    h.paused = Some("the rollback to dpl_x did not help".into());
    h.frozen = true;
    let d = full(&alert(), &service(), &h);
    assert_eq!((d.outcome, d.rule.number()), (Outcome::Escalate, 11));
    assert_eq!(d.reason, "frozen: the rollback to dpl_x did not help");
}

#[test]
fn rule_13_a_reading_without_a_rate_is_inconclusive_never_a_recovery() {
    let mut no_rate = crashing();
    no_rate.live = Some(Reading {
        release: "rel-dpl_live".into(),
        crash_free: None,
        sessions: 5_000,
    });
    let d = with_health(&alert(), &confirming(), &history(), &no_rate);
    assert_eq!((d.outcome, d.rule), (Outcome::Escalate, Rule::EnoughData));
    assert!(d.reason.contains("no crash-free rate"), "{}", d.reason);
}

#[test]
fn rule_14_without_a_threshold_the_readings_confirm_nothing() {
    let mut a = alert();
    a.threshold = None;
    a.detected_at_ms = Some(NOW - 10 * MIN + 40_000);
    let mut svc = confirming();
    svc.min_live = Duration::from_secs(300);
    // Nothing to compare the rate with: the minimum time live applies.
    let d = with_health(&a, &svc, &history(), &crashing());
    assert_eq!(d.rule, Rule::LiveLongEnough);
}

#[test]
fn rule_15_the_known_good_release_is_read_over_its_last_day_live_at_most() {
    let mut h = history();
    // Known-good for 60 days before the live one.
    h.deployments.truncate(2);
    h.deployments[1].promoted_at_ms = Some(NOW - 60 * 24 * 60 * MIN);
    let Err(Missing::ReleaseHealth(q)) =
        run(&alert(), &confirming(), &h, Some(&serving("dpl_live")))
    else {
        panic!("expected a release-health query");
    };
    let (_, from, to) = q.target.unwrap();
    assert_eq!(
        (from, to),
        (NOW - 10 * MIN - TARGET_WINDOW_MS, NOW - 10 * MIN)
    );
    let mut a = alert();
    a.aggregate = Some("crash_free_rate(user)".into());
    let Err(Missing::ReleaseHealth(q)) =
        run(&a, &confirming(), &history(), Some(&serving("dpl_live")))
    else {
        panic!("expected a release-health query");
    };
    assert_eq!(q.unit, "user");
}
