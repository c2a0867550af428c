//! Issue 9 red tests, written against the API before the change.

use std::time::Duration;

use backstop::clock::now_ms;
use backstop::ledger::RunId;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

/// A Vercel alias write that hangs: the rollback attempt stops at the
/// step's deadline instead of running its client retries past it.
#[tokio::test]
async fn a_hanging_alias_write_fails_the_rollback_at_its_deadline_and_pages() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.engine.rollback_deadline = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.*/aliases$"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&app.vercel)
        .await;
    let resp = app
        .post_sentry(
            "metric_alert",
            &compact(&crash_alert("hang-1", now_ms() - MIN)),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let run: Value = resp.json().await.unwrap();
    app.engine.run_until_idle().await.unwrap();
    let d = app
        .store
        .run_detail(&RunId(run["run"].as_str().unwrap().into()))
        .await
        .unwrap();
    let rollback = d
        .steps
        .iter()
        .find(|s| s.name == StepName::Rollback)
        .unwrap();
    assert_eq!(rollback.status, StepStatus::Failed);
    assert_eq!(rollback.error.as_ref().unwrap().code, "deadline_exceeded");
    let attempt = d
        .attempts
        .iter()
        .find(|a| a.step == StepName::Rollback)
        .unwrap();
    let took = attempt.finished_at_ms.unwrap() - rollback.started_at_ms.unwrap();
    assert!(
        took <= 3_000,
        "the attempt ran {took} ms, past the 2 s deadline"
    );
    let pages = bodies(&app.pagerduty, "/v2/enqueue").await;
    assert!(pages[0]["payload"]["summary"]
        .as_str()
        .unwrap()
        .contains("rollback failed"));
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
    settings.engine.workers = 0;
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

/// `resolve_on_recovery` in REST mode resolves the incident it opened.
#[tokio::test]
async fn resolve_on_recovery_in_rest_mode_resolves_the_incident() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.services[0].resolve_on_recovery = true;
        s.pagerduty.mode = backstop::config::PagerDutyMode::Rest;
        s.pagerduty.routing_key = None;
        s.pagerduty.api_token = Some(secrecy::SecretString::from("pd-rest-token-1"));
        s.pagerduty.from = Some("oncall@example.com".into());
        s.pagerduty.service_id = Some("PWIXJZS".into());
    })
    .await
    else {
        return;
    };
    Mock::given(method("POST"))
        .and(path("/incidents"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"incident": {"id": "PT4KHLK", "type": "incident", "html_url": "https://acme.pagerduty.com/incidents/PT4KHLK", "incident_key": "k", "status": "triggered"}})))
        .mount(&app.pagerduty)
        .await;
    Mock::given(method("PUT"))
        .and(path("/incidents/PT4KHLK"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"incident": {"id": "PT4KHLK", "type": "incident", "status": "resolved"}}),
        ))
        .mount(&app.pagerduty)
        .await;
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("rest-1", now_ms() - MIN);
    app.post_sentry("metric_alert", &compact(&alert)).await;
    app.engine.run_until_idle().await.unwrap();
    let mut resolved = alert.clone();
    resolved["action"] = json!("resolved");
    app.post_sentry("metric_alert", &compact(&resolved)).await;
    app.engine.run_until_idle().await.unwrap();
    let puts = bodies(&app.pagerduty, "/incidents/PT4KHLK").await;
    assert_eq!(puts.len(), 1, "the incident was resolved once");
    assert_eq!(puts[0]["incident"]["status"], "resolved");
    assert_eq!(puts[0]["incident"]["type"], "incident_reference");
    let last = &app.store.list_runs(1).await.unwrap()[0];
    assert_eq!(last.status, RunStatus::Done, "{last:?}");
}
