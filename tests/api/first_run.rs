//! The first-run experience: the demo, `test-alert` rehearsals and `check`,
//! all against the simulator.

use std::net::SocketAddr;

use backstop::cli::{check, demo, test_alert};
use backstop::clock::now_ms;
use backstop::config::Settings;
use backstop::ledger::{RunId, Store};
use backstop::sim::sender::CrashAlert;
use backstop::sim::Running;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{compact, crash_alert, settings, spawn_app, Db, RunStatus, MIN};

#[tokio::test]
async fn demo_rolls_back_ignores_the_stale_alert_and_deduplicates() {
    let mut out = Vec::new();
    let report = demo::run(&mut out, false).await.expect("demo succeeds");
    let text = String::from_utf8(out).unwrap();
    assert!(report.rollback_verified, "{text}");
    assert!(report.stale_skipped, "{text}");
    assert!(report.duplicate_deduplicated, "{text}");
    assert_eq!(report.incidents, 1, "{text}");
    assert!(report.alert_to_verified_ms.is_some());
    assert!(
        report.health_read,
        "the decision read release health: {text}"
    );
    assert!(report.recovered, "the watch saw it recover: {text}");
    for part in [
        "release health (Sentry): release 3f2c1a9: 92.1% over 2,140 sessions",
        "reply in thread",
        "Recovered",
        "alert acknowledged: 202",
        "re-aliased to dpl_9be1c07good",
        "verified: www.shop.example.com serves dpl_9be1c07good",
        "PagerDuty incident",
        "rolled back from 3f2c1a9 to 9be1c07",
        "stale",
        "duplicate",
    ] {
        assert!(
            text.contains(part),
            "`{part}` missing from the demo's timeline:\n{text}"
        );
    }
}

/// `backstop demo --ai`: the same demo, with the agents writing against
/// the simulator's OpenAI-compatible server; the brief reaches the thread,
/// marked as a model's.
#[tokio::test]
async fn the_demo_with_agents_shows_the_brief_in_the_thread() {
    let mut out = Vec::new();
    let opts = demo::Options {
        keep: false,
        ai: true,
    };
    let report = demo::run_with(&mut out, opts).await.expect("demo succeeds");
    let text = String::from_utf8(out).unwrap();
    assert!(report.rollback_verified, "{text}");
    assert!(
        text.contains(
            "Agents on, against the simulator's OpenAI-compatible server (model sim-small)"
        ),
        "{text}"
    );
    assert!(
        text.contains("*Brief* (sim-small; written by a model, not a decision)"),
        "the brief is in the timeline: {text}"
    );
    let brief_at = text.find("*Brief*").unwrap();
    let card_at = text.find("re-aliased to dpl_9be1c07good").unwrap();
    assert!(card_at < brief_at, "the brief comes after the rollback");
}

struct Rehearsal {
    sim: Running,
    settings: Settings,
    store: Store,
    _dir: tempfile::TempDir,
}

/// The demo's simulated world with a seeded ledger and a config pointing at it.
async fn rehearsal() -> Rehearsal {
    let sim = backstop::sim::config::world(&backstop::sim::config::DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let settings = demo::demo_settings(&sim, &db, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let store = Store::connect(&SecretString::from(db), 1).await.unwrap();
    store.migrate().await.unwrap();
    backstop::sim::config::seed_ledger(&store, settings.services[0].bake_time)
        .await
        .unwrap();
    Rehearsal {
        sim,
        settings,
        store,
        _dir: dir,
    }
}

async fn picture(r: &Rehearsal) -> (serde_json::Value, String, i64) {
    let ledger = serde_json::to_string(&r.store.deployments(None).await.unwrap()).unwrap();
    let runs = r.store.count_runs().await.unwrap();
    let world = r.sim.sim.world().snapshot();
    (world, ledger, runs)
}

fn alert_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("alert.json");
    let body = CrashAlert::critical("storefront-web", "77", now_ms() - 30_000).body();
    std::fs::write(&path, serde_json::to_vec_pretty(&body).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn test_alert_dry_run_shows_the_decision_and_changes_nothing() {
    let r = rehearsal().await;
    let file = alert_file(r._dir.path());
    let before = picture(&r).await;
    let mut out = Vec::new();
    let opts = test_alert::Options {
        file: &file,
        dry_run: true,
        yes: false,
    };
    test_alert::run(r.settings.clone(), opts, &mut out, &mut std::io::empty())
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("outcome: rollback (rule 21)"), "{text}");
    assert!(
        text.contains("/v2/deployments/dpl_9be1c07good/aliases {\"alias\":\"shop.example.com\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "/v2/enqueue event_action=trigger dedup_key=backstop/storefront/dpl_3f2c1a9live"
        ),
        "{text}"
    );
    assert!(text.contains("chat.postMessage channel=#deploys"), "{text}");
    assert!(text.contains("nothing was changed"));
    assert_eq!(picture(&r).await, before, "ledger and simulator untouched");
}

#[tokio::test]
async fn test_alert_acts_only_when_confirmed() {
    let r = rehearsal().await;
    let file = alert_file(r._dir.path());
    let before = picture(&r).await;
    let mut out = Vec::new();
    let opts = test_alert::Options {
        file: &file,
        dry_run: false,
        yes: false,
    };
    test_alert::run(r.settings.clone(), opts, &mut out, &mut "no\n".as_bytes())
        .await
        .unwrap();
    assert!(String::from_utf8(out).unwrap().contains("not confirmed"));
    assert_eq!(picture(&r).await, before);

    let mut out = Vec::new();
    let opts = test_alert::Options {
        file: &file,
        dry_run: false,
        yes: true,
    };
    test_alert::run(r.settings.clone(), opts, &mut out, &mut std::io::empty())
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("rollback  succeeded"), "{text}");
    assert_eq!(
        r.sim
            .sim
            .world()
            .aliases
            .get("shop.example.com")
            .map(String::as_str),
        Some("dpl_9be1c07good")
    );
}

#[tokio::test]
async fn check_names_the_provider_with_a_bad_token() {
    let r = rehearsal().await;
    let rows = check::run(&r.settings).await;
    let mut out = Vec::new();
    assert!(
        check::print(&mut out, &rows).unwrap(),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let mut bad = r.settings.clone();
    bad.vercel.token = Some(SecretString::from("not-the-token"));
    let rows = check::run(&bad).await;
    let mut out = Vec::new();
    assert!(!check::print(&mut out, &rows).unwrap());
    let text = String::from_utf8(out).unwrap();
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.provider.as_str())
        .collect();
    assert_eq!(failed, vec!["vercel"], "{text}");
    assert!(text.contains("Not authorized"), "{text}");
    assert!(!text.contains("not-the-token"), "secrets are never printed");

    let mut bad = r.settings.clone();
    bad.slack.bot_token = Some(SecretString::from("xoxb-wrong"));
    let rows = check::run(&bad).await;
    let slack = rows.iter().find(|r| r.provider == "slack").unwrap();
    assert!(
        !slack.ok && slack.detail.contains("invalid_auth"),
        "{slack:?}"
    );
}

/// `test-alert` acts on the run it created, never on other pending runs.
#[tokio::test]
async fn test_alert_works_only_its_own_run() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    // A real delivery waits for a worker (this instance has none).
    let other = app
        .post_sentry(
            "metric_alert",
            &compact(&crash_alert("other", now_ms() - MIN)),
        )
        .await;
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alert.json");
    std::fs::write(&file, crash_alert("rehearsal", now_ms() - MIN).to_string()).unwrap();
    let mut settings = settings(
        &app.db_url,
        &app.vercel.uri(),
        &app.pagerduty.uri(),
        &app.slack.uri(),
    );
    settings.engine.max_concurrent_runs = 0;
    let mut out = Vec::new();
    backstop::cli::test_alert::run(
        settings,
        backstop::cli::test_alert::Options {
            file: &file,
            dry_run: false,
            yes: true,
        },
        &mut out,
        &mut std::io::empty(),
    )
    .await
    .unwrap();
    let run = app
        .store
        .run(&RunId(other["run"].as_str().unwrap().into()))
        .await
        .unwrap();
    assert_eq!(
        run.status,
        RunStatus::Pending,
        "test-alert worked another alert's run"
    );
}
