//! The closed loop against the simulator: confirm with Sentry's release
//! health before acting, record the rollback where people look, watch it
//! recover, and freeze the service when it did not.

use std::time::{Duration, Instant};

use backstop::config::Settings;
use backstop::ledger::{RunDetail, RunStatus, StepName, StepStatus};
use backstop::sim::config::{DEMO, SENTRY_PROJECT};
use backstop::sim::{Faults, Provider};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

const LIVE_RELEASE: &str = "3f2c1a9";
const GOOD_RELEASE: &str = "9be1c07";

/// The simulator app with Sentry's API configured (so decisions confirm
/// with release health) and no watch unless `tweak` sets one.
async fn confirming(db: Db, tweak: impl FnOnce(&mut Settings)) -> Option<SimApp> {
    spawn_on_sim(db, |s| {
        s.sentry.token = Some(SecretString::from(DEMO.sentry_token));
        s.sentry.org = Some("acme".into());
        s.services[0].watch_window = Duration::ZERO;
        tweak(s);
    })
    .await
}

/// Watching: a short window, frequent looks.
fn watching(window_ms: u64) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.services[0].watch_window = Duration::from_millis(window_ms);
        s.services[0].watch_interval = Duration::from_millis(100);
        s.services[0].resolve_on_recovery = true;
    }
}

fn set_health(app: &SimApp, release: &str, crash_free: f64, sessions: u64) {
    app.sim
        .sim
        .world()
        .set_health(SENTRY_PROJECT, "production", release, crash_free, sessions);
}

/// The run of the first alert, once it reaches `status` (bounded wait).
async fn run_reaching(app: &SimApp, status: RunStatus, within: Duration) -> RunDetail {
    let deadline = Instant::now() + within;
    loop {
        let runs = app.store.list_runs(10).await.unwrap();
        if let Some(run) = runs.iter().find(|r| r.status == status) {
            return app.store.run_detail(&run.id).await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no run reached {status} within {within:?}: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `run` is finished; its final status.
async fn until_finished(app: &SimApp, run: &backstop::ledger::RunId) -> RunStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.store.run(run).await.unwrap().status;
        if matches!(status, RunStatus::Done | RunStatus::Failed) {
            return status;
        }
        assert!(Instant::now() < deadline, "run {run} still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn decision(d: &RunDetail) -> Value {
    d.run.decision.clone().expect("decided")
}

fn slack_texts(app: &SimApp) -> Vec<(Option<String>, String)> {
    app.sim
        .sim
        .world()
        .messages
        .iter()
        .map(|m| (m.thread_ts.clone(), m.text.clone()))
        .collect()
}

async fn a_confirmed_rollback_shows_its_readings_in_the_page_the_card_and_runs_show(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    assert_eq!(app.alert("c1", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    let readings = &decision(&d)["readings"];
    assert_eq!(readings["live"]["release"], LIVE_RELEASE);
    assert_eq!(readings["live"]["sessions"], 2140);
    // Sentry answers a 0-1 fraction; Backstop keeps percent.
    let rate = readings["live"]["crash_free"].as_f64().unwrap();
    assert!((rate - 92.1).abs() < 1e-9, "{rate}");
    assert_eq!(readings["target"]["release"], GOOD_RELEASE);
    let w = app.sim.sim.world();
    let incident = w.incidents.values().next().expect("paged");
    let health = incident.first_event["payload"]["custom_details"]["notice"]["health"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        health,
        "release 3f2c1a9: 92.1% over 2,140 sessions; known-good 9be1c07: 99.8% over 48,200 sessions; 2 other releases"
    );
    let card = serde_json::to_string(&w.messages[0].blocks).unwrap();
    assert!(card.contains("Release health (Sentry)"), "{card}");
    assert!(card.contains("92.1% over 2,140 sessions"), "{card}");
    // The sessions API was asked with the project's numeric id.
    let asked: Vec<&str> = w
        .served
        .iter()
        .filter(|s| s.provider == Provider::Sentry)
        .map(|s| s.path.as_str())
        .collect();
    assert!(
        asked.contains(&"/api/0/projects/acme/storefront-web/"),
        "{asked:?}"
    );
    assert!(
        asked.contains(&"/api/0/organizations/acme/sessions/"),
        "{asked:?}"
    );
    drop(w);
    let text = backstop::cli::show::explain(&d);
    assert!(
        text.contains("health     release 3f2c1a9: 92.1% over 2,140 sessions"),
        "{text}"
    );
    assert!(
        text.contains("12 pass release health read"),
        "the check is numbered and passed: {text}"
    );
}

async fn too_little_data_pages_a_person_instead_of_rolling_back(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    set_health(&app, LIVE_RELEASE, 0.5, 37);
    assert_eq!(app.alert("thin", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(
        d.run
            .reason
            .as_deref()
            .map(|r| r.starts_with("inconclusive: 37 sessions")),
        Some(true),
        "{:?}",
        d.run.reason
    );
    assert_eq!(
        app.serving(),
        vec![Some(SIM_LIVE.to_string()); 2],
        "production untouched"
    );
    let w = app.sim.sim.world();
    assert!(w.alias_writes.is_empty());
    let incident = w.incidents.values().next().expect("a person is paged");
    assert!(
        incident.summary.contains("inconclusive: 37 sessions"),
        "{}",
        incident.summary
    );
}

async fn every_release_crashing_is_not_a_release_problem(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    // A backend outage: the older release still in use crashes as much
    // (the known-good one has too few sessions to count either way).
    set_health(&app, GOOD_RELEASE, 0.93, 50);
    set_health(&app, "a1b2c3d", 0.91, 51_800);
    assert_eq!(app.alert("outage", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let reason = d.run.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("all releases are crashing: likely not a release problem"),
        "{reason}"
    );
    assert!(
        app.sim.sim.world().alias_writes.is_empty(),
        "nothing rolled back"
    );
    assert_eq!(decision(&d)["rule"], "the-release");
}

async fn a_release_already_back_above_the_threshold_is_left_alone_with_a_note(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    set_health(&app, LIVE_RELEASE, 0.998, 5_000);
    assert_eq!(app.alert("healed", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(d.run.outcome, Some(backstop::ledger::Outcome::Skip));
    let w = app.sim.sim.world();
    assert!(w.alias_writes.is_empty() && w.incidents.is_empty());
    assert_eq!(
        w.messages.len(),
        1,
        "a Slack note says why nothing happened"
    );
    assert!(
        w.messages[0].text.contains("already recovered"),
        "{}",
        w.messages[0].text
    );
}

async fn sentry_down_rolls_back_on_the_alert_alone_by_default(db: Db) {
    let Some(app) = confirming(db, |s| {
        s.sentry.confirm_timeout = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let down = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    app.sim.sim.set_faults(Provider::Sentry, down);
    assert_eq!(app.alert("down", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    let checks = decision(&d)["checks"].to_string();
    assert!(checks.contains("acting on the alert alone"), "{checks}");
    let w = app.sim.sim.world();
    let card = serde_json::to_string(&w.messages[0].blocks).unwrap();
    assert!(card.contains("Release health (Sentry)"), "{card}");
    assert!(
        card.contains("unavailable (") && card.contains("acting on the alert alone"),
        "the card says Sentry could not be read and what was done: {card}"
    );
    let incident = w.incidents.values().next().expect("paged");
    let health = incident.first_event["payload"]["custom_details"]["notice"]["health"]
        .as_str()
        .unwrap_or_default();
    assert!(
        health.contains("acting on the alert alone"),
        "the page says it too: {health}"
    );
}

async fn sentry_down_escalates_when_the_service_says_so(db: Db) {
    let Some(app) = confirming(db, |s| {
        s.sentry.confirm_timeout = Duration::from_millis(300);
        s.services[0].on_confirm_unavailable = backstop::policy::Fallback::Escalate;
    })
    .await
    else {
        return;
    };
    // Slower than the confirmation timeout counts as unreachable.
    let slow = Faults {
        timeout_rate: 1.0,
        hang_ms: 5_000,
        ..Faults::default()
    };
    app.sim.sim.set_faults(Provider::Sentry, slow);
    assert_eq!(app.alert("slow", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let reason = d.run.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("Sentry unreachable (no answer within 300ms"),
        "{reason}"
    );
    let w = app.sim.sim.world();
    assert!(w.alias_writes.is_empty());
    let incident = w.incidents.values().next().expect("paged");
    assert!(
        incident.summary.contains("Sentry unreachable"),
        "{}",
        incident.summary
    );
    let card = serde_json::to_string(&w.messages[0].blocks).unwrap();
    assert!(card.contains("not acting on the alert alone"), "{card}");
}

async fn a_known_good_release_that_crashed_as_much_is_not_a_release_problem(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    // The release Backstop would go back to was itself below the line
    // over its own time live, with enough sessions to believe it.
    set_health(&app, GOOD_RELEASE, 0.90, 48_200);
    assert_eq!(app.alert("old-too", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let reason = d.run.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("not the release: the known-good release 9be1c07 was itself at 90% over 48,200 sessions"),
        "{reason}"
    );
    assert_eq!(decision(&d)["rule"], "the-release");
    assert_eq!(d.run.outcome, Some(backstop::ledger::Outcome::Escalate));
    let w = app.sim.sim.world();
    assert!(w.alias_writes.is_empty(), "nothing rolled back");
    let incident = w.incidents.values().next().expect("a person is paged");
    assert!(
        incident.summary.contains("not the release"),
        "{}",
        incident.summary
    );
}

async fn too_little_data_rolls_back_when_the_service_says_so(db: Db) {
    let Some(app) = confirming(db, |s| {
        s.services[0].on_inconclusive = backstop::policy::Fallback::Rollback;
    })
    .await
    else {
        return;
    };
    set_health(&app, LIVE_RELEASE, 0.5, 37);
    assert_eq!(app.alert("thin-act", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(d.run.outcome, Some(backstop::ledger::Outcome::Rollback));
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    let checks = decision(&d)["checks"].to_string();
    assert!(
        checks.contains("inconclusive: 37 sessions")
            && checks.contains("acting anyway (on_inconclusive = \\\"rollback\\\")"),
        "the check says why it acted on thin data: {checks}"
    );
}

async fn an_alert_too_soon_after_the_promotion_waits_unless_release_health_confirms(db: Db) {
    // Without Sentry's reading, rule 16 alone: the live deployment served
    // 90 s before the alert, under the 10 min minimum.
    let Some(app) = spawn_on_sim(db, |s| {
        s.services[0].min_live_before_alert = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    assert_eq!(app.alert("early", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let reason = d.run.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(
            "live only 1 min 30 s before the alert was detected (min_live_before_alert 10m)"
        ),
        "{reason}"
    );
    assert_eq!(d.run.outcome, Some(backstop::ledger::Outcome::Escalate));
    assert!(app.sim.sim.world().alias_writes.is_empty());
    drop(app);
    // With release health confirming the live release crashes, the
    // reading decides: it rolls back.
    let Some(app) = confirming(db, |s| {
        s.services[0].min_live_before_alert = Duration::from_secs(600);
    })
    .await
    else {
        return;
    };
    assert_eq!(app.alert("early-confirmed", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    assert_eq!(d.run.outcome, Some(backstop::ledger::Outcome::Rollback));
    let checks = decision(&d)["checks"].to_string();
    assert!(
        checks.contains("release health says it is the live release that crashes"),
        "{checks}"
    );
}

/// A slow answer for the known-good release alone costs only that
/// comparison: the live release's reading still decides.
async fn a_slow_known_good_reading_does_not_lose_the_live_one(db: Db) {
    let sentry = wiremock::MockServer::start().await;
    let Some(app) = confirming(db, |s| {
        s.sentry.api_base = sentry.uri();
        s.sentry.confirm_timeout = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    use wiremock::matchers::{method, path, query_param, query_param_is_missing};
    use wiremock::{Mock, ResponseTemplate};
    Mock::given(method("GET"))
        .and(path("/api/0/projects/acme/storefront-web/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"id": "4505", "slug": "storefront-web"})),
        )
        .mount(&sentry)
        .await;
    let groups = |release: &str, rate: f64, n: u64| {
        serde_json::json!({
            "start": "2026-12-03T06:00:00Z", "end": "2026-12-03T07:00:00Z",
            "intervals": [], "query": "",
            "groups": [{"by": {"release": release},
                        "totals": {"crash_free_rate(session)": rate, "sum(session)": n},
                        "series": {}}]
        })
    };
    Mock::given(method("GET"))
        .and(path("/api/0/organizations/acme/sessions/"))
        .and(query_param_is_missing("query"))
        .and(query_param("project", "4505"))
        .respond_with(ResponseTemplate::new(200).set_body_json(groups(LIVE_RELEASE, 0.921, 2140)))
        .mount(&sentry)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/0/organizations/acme/sessions/"))
        .and(query_param("query", format!("release:\"{GOOD_RELEASE}\"")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(groups(GOOD_RELEASE, 0.998, 48_200))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&sentry)
        .await;
    assert_eq!(app.alert("slow-good", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let readings = &decision(&d)["readings"];
    assert!(readings["unavailable"].is_null(), "{readings}");
    assert_eq!(readings["live"]["sessions"], 2140, "{readings}");
    assert!(readings["target"].is_null(), "{readings}");
    assert_eq!(d.run.outcome, Some(backstop::ledger::Outcome::Rollback));
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
}

async fn a_rollback_is_recorded_in_sentry_and_on_the_pagerduty_timeline(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    assert_eq!(app.alert("rec", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let w = app.sim.sim.world();
    assert_eq!(w.sentry_deploys.len(), 1);
    let deploy = &w.sentry_deploys[0];
    assert_eq!(deploy.release, GOOD_RELEASE);
    assert_eq!(deploy.environment, "production");
    assert_eq!(deploy.name.as_deref(), Some("backstop rollback"));
    assert_eq!(deploy.projects, vec![SENTRY_PROJECT.to_string()]);
    assert_eq!(w.change_events.len(), 1);
    let change = &w.change_events[0];
    assert_eq!(change["routing_key"], DEMO.routing_key);
    let summary = change["payload"]["summary"].as_str().unwrap();
    assert!(
        summary
            .starts_with("Backstop rolled back storefront from dpl_3f2c1a9live to dpl_9be1c07good"),
        "{summary}"
    );
    assert!(change.get("event_action").is_none() && change.get("dedup_key").is_none());
    // Recorded after the page and the card, never before them.
    let order: Vec<String> = w
        .served
        .iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.path.clone())
        .collect();
    let at = |p: &str| order.iter().position(|x| x.contains(p)).unwrap();
    assert!(at("/v2/enqueue") < at("/v2/change/enqueue"), "{order:?}");
    assert!(at("chat.postMessage") < at("/deploys/"), "{order:?}");
    drop(w);
    let out = d.step(StepName::Record).unwrap().output.clone().unwrap();
    assert_eq!(out["sentry_deploy"]["release"], GOOD_RELEASE);
    assert_eq!(out["pagerduty_change"]["sent"], true);
}

async fn a_release_sentry_does_not_know_is_recorded_as_such_and_the_run_succeeds(db: Db) {
    let Some(app) = confirming(db, |_| {}).await else {
        return;
    };
    app.sim
        .sim
        .world()
        .release_health
        .retain(|h| h.release != GOOD_RELEASE);
    assert_eq!(app.alert("unknown-release", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let out = d.step(StepName::Record).unwrap().output.clone().unwrap();
    assert_eq!(
        out["sentry_deploy"]["skipped"],
        "release 9be1c07 is not in Sentry (404)"
    );
    assert!(app.sim.sim.world().sentry_deploys.is_empty());
}

async fn a_watched_rollback_that_recovers_says_so_in_the_thread_and_resolves_the_page(db: Db) {
    let Some(app) = confirming(db, watching(5_000)).await else {
        return;
    };
    assert_eq!(app.alert("w1", 30_000).await, 202);
    let d = run_reaching(&app, RunStatus::Done, Duration::from_secs(10)).await;
    let watch = d.step(StepName::Watch).expect("a rollback is watched");
    assert_eq!(watch.status, StepStatus::Succeeded);
    let out = watch.output.clone().unwrap();
    assert_eq!(out["recovered"], true, "{out}");
    let texts = slack_texts(&app);
    let card_ts = app.sim.sim.world().messages[0].ts.clone();
    let reply = texts
        .iter()
        .find(|(thread, t)| thread.as_deref() == Some(card_ts.as_str()) && t.contains("Recovered"))
        .unwrap_or_else(|| panic!("a recovery reply in the card's thread: {texts:?}"));
    assert!(
        reply.1.contains("after the rollback: 99.8% over "),
        "{}",
        reply.1
    );
    let status = app
        .sim
        .sim
        .world()
        .incidents
        .values()
        .next()
        .unwrap()
        .status
        .clone();
    assert_eq!(status, "resolved", "resolve_on_recovery");
    assert!(
        app.store.pauses().await.unwrap().is_empty(),
        "nothing frozen"
    );
}

async fn a_rollback_that_did_not_help_freezes_the_service_and_pages_again(db: Db) {
    let Some(app) = confirming(db, watching(3_000)).await else {
        return;
    };
    // Before acting, the known-good release shows too few sessions to
    // count against it; once it is back, the sessions it gains crash as
    // well: only the rollback shows it was not the release.
    set_health(&app, GOOD_RELEASE, 0.95, 10);
    assert_eq!(app.alert("w2", 30_000).await, 202);
    let watching_run = run_reaching(&app, RunStatus::Watching, Duration::from_secs(10)).await;
    let d = watching_run.run.id.clone();
    assert_eq!(until_finished(&app, &d).await, RunStatus::Done);
    let detail = app.store.run_detail(&d).await.unwrap();
    let out = detail
        .step(StepName::Watch)
        .unwrap()
        .output
        .clone()
        .unwrap();
    assert_eq!(out["recovered"], false, "{out}");
    let pauses = app.store.pauses().await.unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].frozen_by_run.as_ref(), Some(&d));
    assert!(
        pauses[0]
            .reason
            .contains("(release 9be1c07) did not help: 95% over "),
        "{}",
        pauses[0].reason
    );
    let log = app.store.pause_log(None, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, "freeze");
    assert_eq!(
        log[0].by.as_deref(),
        Some(format!("backstop (run {d})").as_str())
    );
    let writes = {
        let w = app.sim.sim.world();
        let again = w
            .incidents
            .values()
            .find(|i| i.key.ends_with("/did-not-help"))
            .expect("paged again");
        assert_eq!(again.severity, "critical");
        assert!(again.summary.starts_with("storefront: the rollback to dpl_9be1c07good (release 9be1c07) did not help: 95% over "), "{}", again.summary);
        let card_ts = w.messages[0].ts.clone();
        assert!(
            w.messages
                .iter()
                .any(|m| m.thread_ts.as_deref() == Some(card_ts.as_str())
                    && m.text.contains("The rollback did not help")),
            "a reply in the thread"
        );
        w.alias_writes.len()
    };
    // `runs show` says the service is frozen and why.
    let text = backstop::cli::show::explain(&detail);
    assert!(text.contains("FROZEN"), "{text}");

    // A new critical alert about the restored deployment: no second
    // rollback cascades to an older deployment; a person is paged.
    assert_eq!(app.alert("w3", 0).await, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        let runs = app.store.list_runs(10).await.unwrap();
        if let Some(r) = runs
            .iter()
            .find(|r| r.id != d && r.status == RunStatus::Done)
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the second alert was not decided"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(next.outcome, Some(backstop::ledger::Outcome::Escalate));
    assert!(
        next.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("frozen: the rollback to dpl_9be1c07good (release 9be1c07) did not help"),
        "{:?}",
        next.reason
    );
    assert_eq!(app.sim.sim.world().alias_writes.len(), writes, "no cascade");
}

async fn a_new_alert_during_the_watch_joins_it_instead_of_rolling_back_again(db: Db) {
    let Some(app) = confirming(db, watching(60_000)).await else {
        return;
    };
    // Too few sessions of the restored release yet: the watch goes on.
    set_health(&app, GOOD_RELEASE, 0.90, 20);
    assert_eq!(app.alert("j1", 30_000).await, 202);
    let first = run_reaching(&app, RunStatus::Watching, Duration::from_secs(10)).await;
    let writes = app.sim.sim.world().alias_writes.len();
    assert_eq!(app.alert("j2", 0).await, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let runs = app.store.list_runs(10).await.unwrap();
        if let Some(r) = runs
            .iter()
            .find(|r| r.id != first.run.id && r.status == RunStatus::Done)
        {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the second alert was not decided"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second.outcome, Some(backstop::ledger::Outcome::Skip));
    assert!(
        second
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("joins the watch"),
        "{:?}",
        second.reason
    );
    assert_eq!(
        app.sim.sim.world().alias_writes.len(),
        writes,
        "no second rollback"
    );
    let notes = app.store.run_detail(&first.run.id).await.unwrap().notes;
    assert!(
        notes
            .iter()
            .any(|n| n.kind == "joined" && n.text.contains(&second.id.0)),
        "recorded on the watching run: {notes:?}"
    );
    // And the note is told in the incident's thread, not as a new card.
    let w = app.sim.sim.world();
    let card_ts = w.messages[0].ts.clone();
    let note = w
        .messages
        .iter()
        .find(|m| m.text.contains("joins the watch"))
        .expect("the joined alert is told");
    assert_eq!(note.thread_ts.as_deref(), Some(card_ts.as_str()));
    assert!(w.messages[1..]
        .iter()
        .all(|m| m.thread_ts.as_deref() == Some(card_ts.as_str())));
}

async fn sentry_resolving_the_alert_ends_the_watch_as_recovered(db: Db) {
    let Some(app) = confirming(db, watching(60_000)).await else {
        return;
    };
    // The restored release gains no sessions: only Sentry's resolution
    // can end the watch.
    app.sim.sim.world().accrual_per_s = 0;
    set_health(&app, GOOD_RELEASE, 0.998, 10);
    assert_eq!(app.alert("r1", 30_000).await, 202);
    let first = run_reaching(&app, RunStatus::Watching, Duration::from_secs(10)).await;
    let mut resolved = backstop::sim::sender::CrashAlert::critical(
        SENTRY_PROJECT,
        "r1",
        backstop::clock::now_ms() - 30_000,
    );
    resolved.action = "resolved".into();
    let url = format!("{}/webhooks/sentry", app.address);
    let (status, _) = backstop::sim::sender::deliver(
        &app.http,
        &url,
        DEMO.sentry_secret,
        "metric_alert",
        &resolved.body(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    assert_eq!(until_finished(&app, &first.run.id).await, RunStatus::Done);
    let d = app.store.run_detail(&first.run.id).await.unwrap();
    let out = d.step(StepName::Watch).unwrap().output.clone().unwrap();
    assert_eq!(out["recovered"], true);
    assert!(
        out["look"]
            .as_str()
            .unwrap()
            .starts_with("Sentry resolved the alert"),
        "{out}"
    );
}

async fn a_watch_resumes_after_a_restart(db: Db) {
    let Some(mut app) = confirming(db, watching(60_000)).await else {
        return;
    };
    // No sessions yet: the instance leaves the run watching.
    app.sim.sim.world().accrual_per_s = 0;
    set_health(&app, GOOD_RELEASE, 0.998, 10);
    assert_eq!(app.alert("restart", 30_000).await, 202);
    let first = run_reaching(&app, RunStatus::Watching, Duration::from_secs(10)).await;
    // Wait for the first instance's first look (too few sessions to tell).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app
        .store
        .notes(&first.run.id)
        .await
        .unwrap()
        .iter()
        .any(|n| n.kind == "look")
    {
        assert!(Instant::now() < deadline, "the first look did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped between two looks, it holds nothing; the restarted instance
    // takes the looks over once the restored release has traffic.
    app.restart().await;
    let restarted = backstop::clock::now_ms();
    app.sim.sim.world().accrual_per_s = 1_000;
    assert_eq!(until_finished(&app, &first.run.id).await, RunStatus::Done);
    let d = app.store.run_detail(&first.run.id).await.unwrap();
    assert_eq!(
        d.step(StepName::Watch).unwrap().output.as_ref().unwrap()["recovered"],
        true
    );
    assert_eq!(
        app.sim.sim.world().alias_writes.len(),
        2,
        "rolled back once"
    );
    let looks: Vec<i64> = d
        .notes
        .iter()
        .filter(|n| n.kind == "look")
        .map(|n| n.at_ms)
        .collect();
    assert!(
        looks.iter().any(|at| *at < restarted) && looks.iter().any(|at| *at >= restarted),
        "looked before and after the restart: {:?}",
        d.notes
    );
}

async fn a_watch_that_cannot_tell_freezes_the_service_and_pages_a_person(db: Db) {
    let Some(app) = confirming(db, watching(1_500)).await else {
        return;
    };
    // The restored release gains no sessions: the window ends without
    // evidence either way.
    app.sim.sim.world().accrual_per_s = 0;
    set_health(&app, GOOD_RELEASE, 0.998, 10);
    assert_eq!(app.alert("unsure", 30_000).await, 202);
    let first = run_reaching(&app, RunStatus::Watching, Duration::from_secs(10)).await;
    assert_eq!(until_finished(&app, &first.run.id).await, RunStatus::Done);
    let d = app.store.run_detail(&first.run.id).await.unwrap();
    let out = d.step(StepName::Watch).unwrap().output.clone().unwrap();
    assert!(out["recovered"].is_null(), "{out}");
    assert!(
        out["look"]
            .as_str()
            .unwrap()
            .starts_with("cannot tell: only 0 sessions"),
        "{out}"
    );
    let pauses = app.store.pauses().await.unwrap();
    assert_eq!(pauses.len(), 1, "frozen: another rollback would be a guess");
    assert_eq!(pauses[0].frozen_by_run.as_ref(), Some(&first.run.id));
    assert!(
        pauses[0]
            .reason
            .starts_with("could not tell whether the rollback to dpl_9be1c07good helped within 1s 500ms: only 0 sessions"),
        "{}",
        pauses[0].reason
    );
    let w = app.sim.sim.world();
    let page = w
        .incidents
        .values()
        .find(|i| i.key.ends_with("/could-not-tell"))
        .expect("a person is paged");
    assert_eq!(page.severity, "critical", "severity_escalation");
    let card_ts = w.messages[0].ts.clone();
    assert!(
        w.messages
            .iter()
            .any(|m| m.thread_ts.as_deref() == Some(card_ts.as_str())
                && m.text
                    .contains("Could not tell whether the rollback helped")
                && m.text.contains("are frozen")),
        "a reply in the thread says so"
    );
}

async fn the_did_not_help_page_is_retried_until_pagerduty_takes_it(db: Db) {
    let Some(app) = confirming(db, watching(1_500)).await else {
        return;
    };
    set_health(&app, GOOD_RELEASE, 0.95, 10);
    assert_eq!(app.alert("retry", 30_000).await, 202);
    let first = run_reaching(&app, RunStatus::Watching, Duration::from_secs(10)).await;
    // The incident's first page is in; PagerDuty now fails until the
    // watch's page has been tried and refused once.
    let down = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    app.sim.sim.set_faults(Provider::Pagerduty, down);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = app.store.run_detail(&first.run.id).await.unwrap();
        if d.attempts.iter().any(|a| {
            a.step == StepName::Watch
                && a.outcome == Some(backstop::ledger::AttemptOutcome::Retryable)
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page was not tried: {:?}",
            d.attempts
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.sim
        .sim
        .set_faults(Provider::Pagerduty, Faults::default());
    assert_eq!(until_finished(&app, &first.run.id).await, RunStatus::Done);
    let d = app.store.run_detail(&first.run.id).await.unwrap();
    let watch = d.step(StepName::Watch).unwrap();
    assert_eq!(watch.status, StepStatus::Succeeded, "{watch:?}");
    let out = watch.output.clone().unwrap();
    assert!(
        out["page"]["incident_key"]
            .as_str()
            .unwrap()
            .ends_with("/did-not-help"),
        "{out}"
    );
    let tries: Vec<_> = d
        .attempts
        .iter()
        .filter(|a| a.step == StepName::Watch)
        .collect();
    assert!(tries.len() >= 2, "{tries:?}");
    assert_eq!(
        tries.last().unwrap().outcome,
        Some(backstop::ledger::AttemptOutcome::Ok)
    );
    assert!(app
        .sim
        .sim
        .world()
        .incidents
        .values()
        .any(|i| i.key.ends_with("/did-not-help")));
}

on_both!(
    a_confirmed_rollback_shows_its_readings_in_the_page_the_card_and_runs_show,
    too_little_data_pages_a_person_instead_of_rolling_back,
    every_release_crashing_is_not_a_release_problem,
    a_release_already_back_above_the_threshold_is_left_alone_with_a_note,
    sentry_down_rolls_back_on_the_alert_alone_by_default,
    sentry_down_escalates_when_the_service_says_so,
    a_known_good_release_that_crashed_as_much_is_not_a_release_problem,
    too_little_data_rolls_back_when_the_service_says_so,
    an_alert_too_soon_after_the_promotion_waits_unless_release_health_confirms,
    a_slow_known_good_reading_does_not_lose_the_live_one,
    a_rollback_is_recorded_in_sentry_and_on_the_pagerduty_timeline,
    a_release_sentry_does_not_know_is_recorded_as_such_and_the_run_succeeds,
    a_watched_rollback_that_recovers_says_so_in_the_thread_and_resolves_the_page,
    a_rollback_that_did_not_help_freezes_the_service_and_pages_again,
    a_new_alert_during_the_watch_joins_it_instead_of_rolling_back_again,
    sentry_resolving_the_alert_ends_the_watch_as_recovered,
    a_watch_resumes_after_a_restart,
    a_watch_that_cannot_tell_freezes_the_service_and_pages_a_person,
    the_did_not_help_page_is_retried_until_pagerduty_takes_it,
);

#[test]
fn bad_closed_loop_settings_fail_at_start_naming_the_key() {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let base = || {
        backstop::sim::config::Config::new(
            DEMO,
            backstop::sim::config::Bases::closed(),
            "sqlite://x.db",
            listen,
        )
    };
    let error = |c: backstop::sim::config::Config| c.settings().unwrap_err().to_string();
    let mut c = base();
    c.service = "on_inconclusive = \"maybe\"".into();
    assert!(error(c).contains("on_inconclusive"));
    let mut c = base();
    c.service = "watch_interval = \"0s\"".into();
    assert!(error(c).contains("services[0].watch_interval"));
    let c = base().with("sentry", "token = \"sntrys_secret_value\"");
    let e = error(c);
    assert!(e.contains("sentry.org"), "{e}");
    assert!(!e.contains("sntrys_secret_value"), "secret leaked: {e}");
    let c = base().with(
        "sentry",
        "token = \"t\"\norg = \"acme\"\nconfirm_timeout = \"0s\"",
    );
    assert!(error(c).contains("sentry.confirm_timeout"));
    // Counted inside the rollback deadline: it must leave room to act.
    let mut c = base().with(
        "sentry",
        "token = \"t\"\norg = \"acme\"\nconfirm_timeout = \"30s\"",
    );
    c.engine = "rollback_deadline = \"10s\"".into();
    assert!(error(c).contains("sentry.confirm_timeout"));
}
