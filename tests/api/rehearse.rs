//! Rehearse, then turn it on: a sample alert to test with, a simulator
//! config that works as it is, and dry runs scored against what people did.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backstop::cli::{check, report, test_alert};
use backstop::config::Settings;
use backstop::ledger::{Outcome, RunId, StepName, StepStatus};
use backstop::sim::config::{ready_config, DEMO, SENTRY_PROJECT};
use backstop::sim::sender::{self, CrashAlert};
use backstop::sim::{Faults, Provider};
use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

#[tokio::test]
async fn sim_print_config_works_as_it_is_with_check() {
    let sim = backstop::sim::config::world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let text = ready_config(&sim.base, &db, SocketAddr::from(([127, 0, 0, 1], 0)));
    let settings = Settings::from_toml(&text, Vec::new()).expect("it parses");
    settings.validate_for_serve().expect("it is ready to serve");
    let rows = check::run(&settings).await;
    let mut out = Vec::new();
    let all_ok = check::print(&mut out, &rows).unwrap();
    assert!(all_ok, "{}", String::from_utf8_lossy(&out));
    assert_eq!(settings.services[0].mode, backstop::policy::Mode::DryRun);
    assert!(settings.sentry.api_configured() && settings.slack.signing_secret.is_some());
}

#[tokio::test]
async fn a_sample_alert_rehearses_to_a_decision_for_the_service() {
    let sim = backstop::sim::config::world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let settings =
        backstop::cli::demo::demo_settings(&sim, &db, SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap();
    let store = backstop::app::open_store(&settings).await.unwrap();
    backstop::sim::config::seed_ledger(&store, settings.services[0].bake_time)
        .await
        .unwrap();
    let body = report::sample_alert(&settings, "storefront", "critical", 2 * MIN).unwrap();
    assert_eq!(
        body["data"]["metric_alert"]["alert_rule"]["projects"][0],
        SENTRY_PROJECT
    );
    assert_eq!(
        body["data"]["metric_alert"]["alert_rule"]["environment"],
        "production"
    );
    let file = dir.path().join("alert.json");
    std::fs::write(&file, serde_json::to_string_pretty(&body).unwrap()).unwrap();
    let mut out = Vec::new();
    let opts = test_alert::Options {
        file: &file,
        dry_run: true,
        yes: false,
    };
    test_alert::run(settings.clone(), opts, &mut out, &mut std::io::empty())
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("outcome: rollback (rule 21)"), "{text}");
    assert!(text.contains("dry run: nothing was changed"), "{text}");
    // Unknown service or action: a clear error.
    let e = report::sample_alert(&settings, "nope", "critical", 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no service named `nope`") && e.contains("storefront"),
        "{e}"
    );
}

/// A dry-run service scoring within `window`.
async fn scoring(db: Db, window: Duration) -> Option<SimApp> {
    spawn_on_sim(db, move |s: &mut Settings| {
        s.services[0].mode = backstop::policy::Mode::DryRun;
        s.services[0].score_window = window;
    })
    .await
}

/// The dry run of the first alert.
async fn dry_run(app: &SimApp, identifier: &str) -> RunId {
    assert_eq!(app.alert(identifier, 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(10)).await;
    let run = app.store.list_runs(1).await.unwrap().remove(0);
    assert_eq!(run.outcome, Some(Outcome::DryRun));
    run.id
}

fn verdict_of(scores: &[backstop::ledger::StoredScore], run: &RunId) -> Value {
    scores
        .iter()
        .find(|s| s.run == *run)
        .map(|s| s.score.clone())
        .unwrap_or(Value::Null)
}

async fn a_person_rolling_back_after_a_dry_run_confirms_it_with_minutes_saved(db: Db) {
    let Some(app) = scoring(db, Duration::from_secs(3600)).await else {
        return;
    };
    let run = dry_run(&app, "d1").await;
    // (The instance's own sweep runs every few seconds too: what a sweep
    // returns is not asserted, what is stored is.)
    app.engine.score_due().await.unwrap();
    assert!(
        app.store.scores(None, 0).await.unwrap().is_empty(),
        "nothing to score yet"
    );
    // A person promotes the known-good deployment by hand.
    app.promoted(SIM_GOOD, "9be1c07").await;
    app.engine.score_due().await.unwrap();
    let scores = app.store.scores(None, 0).await.unwrap();
    assert_eq!(scores.len(), 1);
    let v = verdict_of(&scores, &run);
    assert_eq!(v["verdict"], "confirmed", "{v}");
    assert!(v["minutes_saved"].as_f64().is_some(), "{v}");
    // Once: a second sweep scores nothing.
    assert_eq!(app.engine.score_due().await.unwrap(), 0);
    assert_eq!(app.store.scores(None, 0).await.unwrap().len(), 1);
    let w = app.sim.sim.world();
    let card = &w.messages[0];
    let replies: Vec<_> = w
        .messages
        .iter()
        .filter(|m| {
            m.thread_ts.as_deref() == Some(card.ts.as_str()) && m.text.contains("would have saved")
        })
        .collect();
    assert_eq!(replies.len(), 1, "{:?}", w.messages);
    assert!(replies[0].text.contains(SIM_LIVE), "{}", replies[0].text);
}

async fn a_score_the_thread_missed_is_told_by_a_later_sweep(db: Db) {
    let Some(app) = scoring(db, Duration::from_secs(3600)).await else {
        return;
    };
    let run = dry_run(&app, "told").await;
    let down = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    app.sim.sim.set_faults(Provider::Slack, down);
    app.promoted(SIM_GOOD, "9be1c07").await;
    app.engine.score_due().await.unwrap();
    let v = verdict_of(&app.store.scores(None, 0).await.unwrap(), &run);
    assert_eq!(
        v["verdict"], "confirmed",
        "scored though Slack is down: {v}"
    );
    let replies = |app: &SimApp| {
        let w = app.sim.sim.world();
        let card = w.messages[0].ts.clone();
        w.messages
            .iter()
            .filter(|m| {
                m.thread_ts.as_deref() == Some(card.as_str()) && m.text.contains("would have saved")
            })
            .count()
    };
    assert_eq!(replies(&app), 0);
    // Slack is back: the next sweep tells it, once.
    app.sim.sim.set_faults(Provider::Slack, Faults::default());
    app.engine.score_due().await.unwrap();
    assert_eq!(replies(&app), 1);
    app.engine.score_due().await.unwrap();
    assert_eq!(replies(&app), 1, "told once");
}

async fn an_alert_resolving_by_itself_is_a_false_alarm(db: Db) {
    let Some(app) = scoring(db, Duration::from_secs(3600)).await else {
        return;
    };
    let run = dry_run(&app, "d2").await;
    let mut resolved =
        CrashAlert::critical(SENTRY_PROJECT, "d2", backstop::clock::now_ms() - 30_000);
    resolved.action = "resolved".into();
    let url = format!("{}/webhooks/sentry", app.address);
    let (status, _) = sender::deliver(
        &app.http,
        &url,
        DEMO.sentry_secret,
        "metric_alert",
        &resolved.body(),
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    app.until_runs_finish(Duration::from_secs(10)).await;
    app.engine.score_due().await.unwrap();
    let v = verdict_of(&app.store.scores(None, 0).await.unwrap(), &run);
    assert_eq!(v["verdict"], "false-alarm", "{v}");
    assert!(
        v["why"].as_str().unwrap().contains("resolved by itself"),
        "{v}"
    );
}

async fn neither_within_the_window_is_undetermined_and_a_restart_loses_nothing(db: Db) {
    let Some(mut app) = scoring(db, Duration::from_millis(400)).await else {
        return;
    };
    let run = dry_run(&app, "d3").await;
    // Restarted before the window ends: the verdict still comes.
    app.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        app.engine.score_due().await.unwrap();
        if !app.store.scores(None, 0).await.unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never scored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = verdict_of(&app.store.scores(None, 0).await.unwrap(), &run);
    assert_eq!(v["verdict"], "undetermined", "{v}");
}

async fn the_report_tallies_per_service(db: Db) {
    let Some(app) = scoring(db, Duration::from_secs(3600)).await else {
        return;
    };
    dry_run(&app, "r1").await;
    app.promoted(SIM_GOOD, "9be1c07").await;
    app.engine.score_due().await.unwrap();
    let reports = report::reports(&app.store, &app.settings, None, 0)
        .await
        .unwrap();
    let mut out = Vec::new();
    report::print(&mut out, &reports, true).unwrap();
    let json: Value = serde_json::from_slice(&out).unwrap();
    let r = &json[0];
    assert_eq!(r["service"], "storefront");
    assert_eq!(
        (r["decisions"].as_u64(), r["confirmed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (r["false_alarms"].as_u64(), r["undetermined"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        (r["dry_runs"].as_u64(), r["rollbacks"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(r["precision"].as_f64(), Some(1.0));
    assert!(r["median_minutes_saved"].is_number());
    assert_eq!(r["recommendation"], "1 decision: too few decisions to say");
    let mut table = Vec::new();
    report::print(&mut table, &reports, false).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("storefront") && table.contains("100%"),
        "{table}"
    );
}

async fn a_rollback_in_flight_is_not_scored_and_one_undone_by_hand_is_a_false_alarm(db: Db) {
    let Some(app) = spawn_on_sim(db, |s: &mut Settings| {
        s.services[0].score_window = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    // Vercel answers slowly: the rollback step stays pending a while.
    let slow = Faults {
        latency_ms: 1_500,
        ..Faults::default()
    };
    app.sim.sim.set_faults(Provider::Vercel, slow);
    assert_eq!(app.alert("inflight", 30_000).await, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let run = loop {
        let runs = app.store.list_runs(1).await.unwrap();
        if let Some(r) = runs
            .first()
            .filter(|r| r.outcome == Some(Outcome::Rollback))
        {
            let detail = app.store.run_detail(&r.id).await.unwrap();
            if detail
                .step(StepName::Rollback)
                .is_some_and(|s| s.status == StepStatus::Pending)
            {
                break r.id.clone();
            }
        }
        assert!(Instant::now() < deadline, "no rollback in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    app.engine.score_due().await.unwrap();
    assert!(
        app.store.scores(None, 0).await.unwrap().is_empty(),
        "a rollback still in flight is not scored (as failed or otherwise)"
    );
    app.sim.sim.set_faults(Provider::Vercel, Faults::default());
    app.until_runs_finish(Duration::from_secs(20)).await;
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    app.engine.score_due().await.unwrap();
    assert!(
        app.store.scores(None, 0).await.unwrap().is_empty(),
        "window still open"
    );
    // A person puts the rolled-back deployment live again by hand.
    app.promoted(SIM_LIVE, "3f2c1a9").await;
    app.engine.score_due().await.unwrap();
    let v = verdict_of(&app.store.scores(None, 0).await.unwrap(), &run);
    assert_eq!(v["verdict"], "false-alarm", "{v}");
    assert!(
        v["why"].as_str().unwrap().contains("undid the rollback"),
        "{v}"
    );
}

on_both!(
    a_rollback_in_flight_is_not_scored_and_one_undone_by_hand_is_a_false_alarm,
    a_person_rolling_back_after_a_dry_run_confirms_it_with_minutes_saved,
    an_alert_resolving_by_itself_is_a_false_alarm,
    neither_within_the_window_is_undetermined_and_a_restart_loses_nothing,
    the_report_tallies_per_service,
    a_score_the_thread_missed_is_told_by_a_later_sweep,
);

/// Runs the built binary with `args` in `dir`.
fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .current_dir(dir)
        .args(args)
        .env_remove("BACKSTOP_CONFIG")
        .output()
        .expect("backstop runs")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What `backstop sim --print-config` prints works as it is: `check`,
/// `migrate`, `sync`, then a `sample-alert` rehearsed with `test-alert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_sim_config_rehearses_from_the_command_line() {
    let sim = backstop::sim::config::world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let listen = sim.base.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let printed = cli(d, &["sim", "--print-config", "--listen", &listen]);
    assert!(printed.status.success(), "{}", text(&printed));
    std::fs::write(d.join("backstop.toml"), &printed.stdout).unwrap();
    for args in [&["check"][..], &["migrate"], &["sync"]] {
        let mut all = vec!["--config", "backstop.toml"];
        all.extend_from_slice(args);
        let out = cli(d, &all);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let listed = cli(d, &["--config", "backstop.toml", "deployments", "list"]);
    assert!(
        text(&listed).contains(backstop::sim::config::LIVE),
        "sync imported the live deployment: {}",
        text(&listed)
    );
    let sample = cli(
        d,
        &[
            "--config",
            "backstop.toml",
            "sample-alert",
            "--service",
            "storefront",
        ],
    );
    assert!(sample.status.success(), "{}", text(&sample));
    std::fs::write(d.join("alert.json"), &sample.stdout).unwrap();
    let out = cli(
        d,
        &[
            "--config",
            "backstop.toml",
            "test-alert",
            "alert.json",
            "--dry-run",
        ],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("would roll back {}", backstop::sim::config::LIVE)),
        "{said}"
    );
    assert!(said.contains("dry run: nothing was changed"), "{said}");
    assert!(
        sim.sim.world().alias_writes.is_empty(),
        "nothing touched production"
    );
}

/// `backstop demo --keep` leaves a config next to its ledger, and the
/// commands it prints show what the demo did, while it keeps running.
#[test]
fn the_kept_demo_prints_commands_that_show_its_ledger() {
    use std::io::BufRead;
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["demo", "--keep"])
        .env_remove("BACKSTOP_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut commands = Vec::new();
    let mut seen = Vec::new();
    while commands.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = demo.kill();
            panic!("the demo did not print its commands: {seen:#?}")
        });
        if line.trim_start().starts_with("backstop --config ") {
            commands.push(line.trim().to_string());
        }
        seen.push(line);
    }
    let run = |command: &str| {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(&args)
            .env_remove("BACKSTOP_CONFIG")
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    };
    let (ok_runs, runs) = run(&commands[0]);
    let (ok_deps, deps) = run(&commands[1]);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status();
    let _ = demo.wait();
    assert!(commands[0].ends_with("runs list"), "{commands:?}");
    assert!(ok_runs && runs.contains("rollback"), "{runs}");
    assert!(commands[1].ends_with("deployments list"), "{commands:?}");
    assert!(
        ok_deps && deps.contains(backstop::sim::config::LIVE),
        "{deps}"
    );
}
