//! The real `backstop serve` process: killed with SIGKILL at every step
//! boundary (and inside steps, after the provider accepted a call but before
//! the result was stored), stopped with SIGTERM, and read line by line for
//! secrets.

use std::process::Command;
use std::time::Duration;

use backstop::clock::now_ms;
use backstop::ledger::{RunStatus, StepName, Store};
use backstop::sim::sender::{self, CrashAlert};
use backstop::sim::{Faults, Provider};
use secrecy::SecretString;

use crate::helpers::procs::*;
use crate::helpers::{until_held, SIM_DOMAINS, SIM_GOOD};

const FAILPOINTS: [&str; 6] = [
    "after-decide",
    "rollback-accepted",
    "after-rollback",
    "page-accepted",
    "announce-accepted",
    "before-finish",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_boundary_the_run_resumes_and_acts_once() {
    for fp in FAILPOINTS {
        let w = world("").await;
        let first = Proc::spawn(&w.config, Some(fp));
        assert_eq!(first.alert("4242").await, 202, "{fp}");
        assert!(
            first
                .wait_for(
                    &format!("BACKSTOP_FAILPOINT {fp} reached"),
                    Duration::from_secs(20)
                )
                .is_some(),
            "{fp} never reached:\n{}",
            first.output()
        );
        drop(first); // SIGKILL, right there
        let _second = Proc::spawn(&w.config, None);
        let detail = until_finished(&w.db_url).await;
        assert_eq!(
            detail.run.status,
            RunStatus::Done,
            "{fp}: {:?}",
            detail.steps
        );
        let world = w.sim.sim.world();
        for d in SIM_DOMAINS {
            assert_eq!(
                world.aliases.get(d).map(String::as_str),
                Some(SIM_GOOD),
                "{fp}: production ends on the target"
            );
        }
        assert_eq!(world.incidents.len(), 1, "{fp}: one incident");
        assert_eq!(
            world.messages.len(),
            1,
            "{fp}: no second Slack post: {:?}",
            world.messages
        );
    }
}

const AI_KEY: &str = "sk-proc-ai-key-never-logged-5f1c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_brief_was_posted_the_thread_gets_it_once() {
    let w = world_with(None, |c| {
        let ai = c.bases.vercel.replace("/vercel", "/openai/v1");
        c.more.push_str(&format!(
            "\n[ai]\nbase_url = \"{ai}\"\nmodel = \"sim-small\"\napi_key = \"{AI_KEY}\"\n"
        ));
        // PagerDuty's REST API: the brief is a note on the incident too.
        let rest = format!(
            "mode = \"rest\"\napi_token = \"{}\"\nfrom = \"oncall@example.com\"\nservice_id = \"PSIMSVC\"",
            c.creds.pagerduty_token
        );
        *c = c.clone().with("pagerduty", &rest);
    })
    .await;
    let first = Proc::spawn(&w.config, Some("brief-posted"));
    assert_eq!(first.alert("4343").await, 202);
    assert!(
        first
            .wait_for(
                "BACKSTOP_FAILPOINT brief-posted reached",
                Duration::from_secs(20)
            )
            .is_some(),
        "the brief was never posted:\n{}",
        first.output()
    );
    let mut logs = first.output();
    drop(first); // SIGKILL: the brief is in the thread, its step not finished
    let second = Proc::spawn(&w.config, None);
    let detail = until_finished(&w.db_url).await;
    logs.push_str(&second.output());
    // The model's key went to the model, and nowhere else.
    assert!(!logs.contains(AI_KEY), "the AI key reached the logs");
    assert!(
        !logs.contains(PD_TOKEN),
        "the PagerDuty token reached the logs"
    );
    let sent = w.sim.sim.world().ai_requests.clone();
    assert!(!sent.is_empty());
    assert!(sent
        .iter()
        .all(|r| r["authorization"] == format!("Bearer {AI_KEY}")));
    assert!(
        sent.iter().all(|r| !r["body"].to_string().contains(AI_KEY)),
        "nor the prompt"
    );
    assert_eq!(detail.run.status, RunStatus::Done, "{:?}", detail.steps);
    let world = w.sim.sim.world();
    let brief = detail.steps.iter().find(|s| s.name == StepName::Brief);
    assert_eq!(
        brief.map(|s| s.status),
        Some(backstop::ledger::StepStatus::Succeeded),
        "the resumed brief finished: {:?}",
        detail.steps
    );
    let briefs: Vec<_> = world
        .messages
        .iter()
        .filter(|m| m.text.contains("*Brief*"))
        .collect();
    assert_eq!(
        briefs.len(),
        1,
        "one brief in the thread: {:?}",
        world.messages
    );
    assert_eq!(
        briefs[0].thread_ts.as_deref(),
        Some(world.messages[0].ts.as_str())
    );
    // And one note on the incident, naming the run, however the step resumed.
    let incident = world.incidents.values().next().expect("an incident");
    let notes = world
        .incident_notes
        .get(&incident.id)
        .cloned()
        .unwrap_or_default();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let content = notes[0]["content"].as_str().unwrap();
    assert!(
        content.starts_with(&format!(
            "Brief for Backstop run {} (written by a model, not a decision):",
            detail.run.id
        )),
        "{content}"
    );
    let out = brief.unwrap().output.clone().unwrap();
    assert_eq!(out["pagerduty_note"]["already"], true, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_step_in_flight_finish_and_exits_cleanly() {
    let w = world("").await;
    // Slack is slow, so the announce step is in flight when SIGTERM lands.
    w.sim.sim.set_faults(
        Provider::Slack,
        Faults {
            latency_ms: 1_000,
            ..Faults::default()
        },
    );
    let mut p = Proc::spawn(&w.config, None);
    assert_eq!(p.alert("4343").await, 202);
    assert!(
        p.wait_for("rollback verified", Duration::from_secs(20))
            .is_some(),
        "{}",
        p.output()
    );
    let exit = p.terminate();
    assert!(exit.success(), "clean exit: {exit:?}\n{}", p.output());
    assert!(p.output().contains("shutting down"));
    let detail = until_finished(&w.db_url).await;
    assert_eq!(
        detail.run.status,
        RunStatus::Done,
        "the step in flight finished before exit"
    );
    assert_eq!(w.sim.sim.world().messages.len(), 1);
}

/// SIGTERM while a rollback is held for Vercel's alias window (minutes
/// away): the process does not sit out the hold, it exits cleanly at once,
/// the held page having gone out; the next start resumes the run, and
/// with the window reset it rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_held_rollback_exits_at_once_and_the_next_start_rolls_back() {
    let w = world_with(None, |c| {
        c.engine
            .push_str("\nrollback_deadline = \"1s\"\nrate_limit_wait = \"15m\"");
    })
    .await;
    // The team's alias budget is spent for the next ten minutes.
    w.sim
        .sim
        .world()
        .vercel_limits
        .insert("alias creation".into(), (0, 600_000));
    let mut p = Proc::spawn(&w.config, None);
    assert_eq!(p.alert("4646").await, 202);
    // Held: the on-call hears it.
    until_held(&w.sim.sim).await;
    let exit = p.terminate();
    assert!(exit.success(), "clean exit: {exit:?}\n{}", p.output());
    assert!(w.sim.sim.world().alias_writes.is_empty(), "nothing moved");
    // The window has reset: the next start takes the run up again.
    w.sim.sim.world().meter_vercel_as_published();
    let _p = Proc::spawn(&w.config, None);
    let detail = until_finished(&w.db_url).await;
    assert_eq!(detail.run.status, RunStatus::Done);
    let world = w.sim.sim.world();
    for d in SIM_DOMAINS {
        assert_eq!(world.aliases[d], SIM_GOOD, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_cli_output() {
    let w = world("resolve_on_recovery = true").await;
    let p = Proc::spawn(&w.config, None);
    let http = reqwest::Client::new();
    let mut alert = CrashAlert::critical("storefront-web", "4444", now_ms() - 30_000);
    sender::deliver(&http, &p.url(), SENTRY, "metric_alert", &alert.body())
        .await
        .unwrap();
    // A forged delivery and a bad Vercel webhook, which are logged as refused.
    sender::deliver(
        &http,
        &p.url(),
        "wrong-secret",
        "metric_alert",
        &alert.body(),
    )
    .await
    .unwrap();
    let vercel_hook = p.url().replace("/sentry", "/vercel");
    http.post(&vercel_hook)
        .header("x-vercel-signature", "00")
        .body("{}")
        .send()
        .await
        .unwrap();
    until_finished(&w.db_url).await;
    alert.action = "resolved".into();
    sender::deliver(&http, &p.url(), SENTRY, "metric_alert", &alert.body())
        .await
        .unwrap();
    assert!(p
        .wait_for("run finished", Duration::from_secs(10))
        .is_some());

    let mut everything = p.output();
    for args in [
        &["runs", "list", "--json"][..],
        &["runs", "list"],
        &["deployments", "list", "--json"],
        &["check"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("--config")
            .arg(&w.config)
            .args(args)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        everything.push_str(&String::from_utf8_lossy(&out.stdout));
        everything.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let runs = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("--config")
        .arg(&w.config)
        .args(["runs", "list", "--json"])
        .output()
        .unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&runs.stdout).unwrap();
    for r in &list {
        for json in [true, false] {
            let mut args = vec!["runs", "show", r["id"].as_str().unwrap()];
            if json {
                args.push("--json");
            }
            let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
                .arg("--config")
                .arg(&w.config)
                .args(&args)
                .env("RUST_LOG", "debug")
                .output()
                .unwrap();
            everything.push_str(&String::from_utf8_lossy(&out.stdout));
            everything.push_str(&String::from_utf8_lossy(&out.stderr));
        }
    }
    assert!(
        everything.contains("webhook refused"),
        "the forged request was logged"
    );
    assert!(
        everything.lines().count() > 50,
        "a real amount of output was scanned"
    );
    for secret in SECRETS {
        let leaks: Vec<_> = everything.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "secret leaked in:\n{}", leaks.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_on_one_postgres_act_once_even_when_one_dies() {
    let Some(db) = crate::helpers::TestDatabase::new(crate::helpers::Db::Postgres).await else {
        return;
    };
    let w = world_on(Some(db.url.clone()), "").await;
    // The first instance dies right after Vercel accepted the alias writes.
    // (The others join once it holds the run: started earlier, one of them
    // could claim the run first and the failpoint would never be reached.)
    let doomed = Proc::spawn(&w.config, Some("rollback-accepted"));
    let http = reqwest::Client::new();
    let alert = CrashAlert::critical("storefront-web", "4545", now_ms() - 30_000).body();
    let (status, _) = sender::deliver(&http, &doomed.url(), SENTRY, "metric_alert", &alert)
        .await
        .unwrap();
    assert_eq!(status, 202);
    assert!(
        doomed
            .wait_for(
                "BACKSTOP_FAILPOINT rollback-accepted reached",
                Duration::from_secs(20)
            )
            .is_some(),
        "{}",
        doomed.output()
    );
    let others = [Proc::spawn(&w.config, None), Proc::spawn(&w.config, None)];
    drop(doomed); // SIGKILL, holding the run's lease
                  // Sentry re-sends, spread over the surviving instances.
    for i in 0..20 {
        let (status, _) =
            sender::deliver(&http, &others[i % 2].url(), SENTRY, "metric_alert", &alert)
                .await
                .unwrap();
        assert_eq!(status, 200, "a duplicate, wherever it lands");
    }
    let detail = until_finished(&w.db_url).await;
    assert_eq!(
        detail.run.status,
        RunStatus::Done,
        "taken over after the lease: {:?}",
        detail.steps
    );
    let store = Store::connect(&SecretString::from(w.db_url.clone()), 1)
        .await
        .unwrap();
    assert_eq!(store.count_runs().await.unwrap(), 1);
    let world = w.sim.sim.world();
    for d in SIM_DOMAINS {
        assert_eq!(world.aliases.get(d).map(String::as_str), Some(SIM_GOOD));
    }
    assert_eq!(world.incidents.len(), 1);
    assert_eq!(world.messages.len(), 1);
}

/// Two instances on one Postgres, one with its clock 90 s ahead, while the
/// first holds a run whose Vercel calls are slow: leases are on the
/// database's clock, so the skewed instance never thinks the lease lapsed,
/// and production sees one set of alias writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_clock_runs_ahead_does_not_take_over_a_held_run() {
    let Some(db) = crate::helpers::TestDatabase::new(crate::helpers::Db::Postgres).await else {
        return;
    };
    let w = world_with(Some(db.url.clone()), |c| {
        c.sections = vec![("vercel", "timeout = \"5s\"".into())];
        c.engine = "lease = \"2s\"\npoll_interval = \"100ms\"".into();
    })
    .await;
    let vercel_slow = Faults {
        latency_ms: 1_200,
        ..Faults::default()
    };
    w.sim.sim.set_faults(Provider::Vercel, vercel_slow);
    let first = Proc::spawn(&w.config, None);
    let http = reqwest::Client::new();
    let alert = CrashAlert::critical("storefront-web", "4646", now_ms() - 30_000).body();
    let (status, _) = sender::deliver(&http, &first.url(), SENTRY, "metric_alert", &alert)
        .await
        .unwrap();
    assert_eq!(status, 202);
    assert!(
        first.wait_for("decided", Duration::from_secs(20)).is_some(),
        "{}",
        first.output()
    );
    // The first instance is rolling back, slowly; the skewed one joins.
    let skewed = Proc::spawn_skewed(&w.config, "+90s");
    let detail = until_finished(&w.db_url).await;
    assert_eq!(detail.run.status, RunStatus::Done, "{:?}", detail.steps);
    let rollback = detail.step(StepName::Rollback).unwrap();
    assert_eq!(
        rollback.attempts, 1,
        "one instance rolled back: {:?}",
        detail.attempts
    );
    let world = w.sim.sim.world();
    assert_eq!(
        world.alias_writes.len(),
        SIM_DOMAINS.len(),
        "one set of alias writes: {:?}",
        world.alias_writes
    );
    assert!(
        !skewed.output().contains("run finished"),
        "the skewed instance worked the run:\n{}",
        skewed.output()
    );
}

/// Killed right after the watch froze the service for a rollback that did
/// not help, the next instance carries that verdict out (pages again, says
/// so in the thread) instead of looking again and contradicting it, even
/// though the restored release looks healthy by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_killed_while_acting_on_its_verdict_carries_it_out_after_a_restart() {
    let w = world_with(None, |c| {
        *c = c
            .clone()
            .with("sentry", "token = \"proc-sentry-token\"\norg = \"acme\"");
        c.service = "watch_window = \"1s\"\nwatch_interval = \"200ms\"".into();
    })
    .await;
    {
        let mut world = w.sim.sim.world();
        // Too few sessions to count before acting; what it gains once back
        // in production crashes at 95%.
        world.set_health("storefront-web", "production", "9be1c07", 0.95, 10);
    }
    let first = Proc::spawn(&w.config, Some("watch-frozen"));
    assert_eq!(first.alert("4545").await, 202);
    assert!(
        first
            .wait_for(
                "BACKSTOP_FAILPOINT watch-frozen reached",
                Duration::from_secs(20)
            )
            .is_some(),
        "{}",
        first.output()
    );
    drop(first); // SIGKILL after the freeze, before the second page
                 // By now the restored release would look healthy to a new look.
    w.sim
        .sim
        .world()
        .set_health("storefront-web", "production", "9be1c07", 0.999, 100_000);
    let _second = Proc::spawn(&w.config, None);
    let detail = until_finished(&w.db_url).await;
    assert_eq!(detail.run.status, RunStatus::Done, "{:?}", detail.steps);
    let out = detail.output_of(StepName::Watch).unwrap();
    assert_eq!(out["recovered"], false, "{out}");
    let world = w.sim.sim.world();
    assert!(
        world.incidents.keys().any(|k| k.ends_with("/did-not-help")),
        "paged again"
    );
    assert!(
        world
            .messages
            .iter()
            .any(|m| m.text.contains("did not help")),
        "{:?}",
        world.messages
    );
    assert!(
        !world
            .messages
            .iter()
            .any(|m| m.text.contains("Recovered") || m.text.contains("Could not tell")),
        "no contradicting reply: {:?}",
        world.messages
    );
}
