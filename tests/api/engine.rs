//! The engine beyond the happy path: Vercel's native rollback, resuming
//! runs after a restart, taking over a dead instance's run, and sync.

use std::time::Duration;

use backstop::clock::now_ms;
use backstop::config::Strategy;
use backstop::ledger::Verdict;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

fn project(job: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": PROJECT, "name": "storefront", "accountId": "team_test",
        "targets": {"production": {"id": "dpl_old"}},
        "lastAliasRequest": job
    }))
}

#[tokio::test]
async fn vercel_rollback_strategy_requests_instant_rollback_follows_the_job_and_verifies() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.services[0].strategy = Strategy::VercelRollback
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let project_path = format!("/v9/projects/{PROJECT}");
    // Before the request there is no job; then it is in progress; then done.
    Mock::given(method("GET"))
        .and(path(&project_path))
        .respond_with(project(Value::Null))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.vercel)
        .await;
    let running = json!({"jobStatus": "in-progress", "fromDeploymentId": "dpl_new", "toDeploymentId": "dpl_old", "requestedAt": 1, "type": "rollback"});
    Mock::given(method("GET"))
        .and(path(&project_path))
        .respond_with(project(running))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&app.vercel)
        .await;
    let done = json!({"jobStatus": "succeeded", "fromDeploymentId": "dpl_new", "toDeploymentId": "dpl_old", "requestedAt": 1, "type": "rollback"});
    Mock::given(method("GET"))
        .and(path(&project_path))
        .respond_with(project(done))
        .with_priority(3)
        .mount(&app.vercel)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1/projects/{PROJECT}/rollback/dpl_old")))
        .and(query_param("teamId", "team_test"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&app.vercel)
        .await;

    let resp = app
        .post_sentry(
            "metric_alert",
            &compact(&crash_alert("501", now_ms() - MIN)),
        )
        .await;
    assert_eq!(resp.status(), 202);
    app.engine.run_until_idle().await.unwrap();

    assert!(
        app.alias_writes()
            .await
            .iter()
            .all(|(p, _)| !p.starts_with("/v2/")),
        "no re-aliasing with this strategy"
    );
    let rollback_calls: Vec<_> = app
        .vercel
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path().contains("/rollback/"))
        .collect();
    assert_eq!(rollback_calls.len(), 1);
    assert!(
        rollback_calls[0]
            .url
            .query()
            .unwrap()
            .contains("description="),
        "{}",
        rollback_calls[0].url
    );
    let old = app.store.deployment("dpl_old").await.unwrap().unwrap();
    assert!(old.live, "verified and recorded");
}

#[tokio::test]
async fn unfinished_runs_are_resumed_when_the_process_starts() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    // Stored by an instance that stops before working on it (max_concurrent_runs = 0).
    let resp = app
        .post_sentry(
            "metric_alert",
            &compact(&crash_alert("502", now_ms() - MIN)),
        )
        .await;
    assert_eq!(resp.status(), 202);
    assert_eq!(app.store.count_unfinished_runs().await.unwrap(), 1);
    // A fresh process with a background worker picks it up by itself.
    let _restarted = app
        .another_instance(|s| s.engine.max_concurrent_runs = 64)
        .await;
    app.until_runs_finish().await;
    assert_eq!(app.alias_writes().await.len(), 2);
    assert!(app.store.deployment("dpl_old").await.unwrap().unwrap().live);
}

#[tokio::test]
async fn a_run_claimed_by_a_dead_instance_is_taken_over_after_its_lease() {
    let Some(app) = spawn_app(Db::Postgres).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    app.post_sentry(
        "metric_alert",
        &compact(&crash_alert("503", now_ms() - MIN)),
    )
    .await;
    // An instance claims the run and dies without a word.
    let claimed = app
        .store
        .claim_run("dead-instance", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(claimed.is_some());
    assert_eq!(
        app.engine.run_until_idle().await.unwrap(),
        0,
        "the lease still holds"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.engine.run_until_idle().await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "run never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.alias_writes().await.len(), 2);
    let dead = claimed.unwrap().claim;
    let renewed = app.store.renew_run(&dead, Duration::from_secs(1)).await;
    assert!(
        matches!(renewed, Err(backstop::ledger::StoreError::LostClaim(_))),
        "the dead instance's claim is gone: {renewed:?}"
    );
}

#[tokio::test]
async fn sync_imports_production_history_and_the_live_alias() {
    let Some(app) = spawn_app(Db::Postgres).await else {
        return;
    };
    let now = now_ms();
    let item = |id: &str, sha: &str, at: i64| {
        json!({"uid": id, "name": "storefront", "url": format!("{id}.vercel.app"), "created": at - 60_000, "createdAt": at - 60_000,
               "ready": at, "state": "READY", "readyState": "READY", "target": "production", "meta": {"githubCommitSha": sha}})
    };
    Mock::given(method("GET"))
        .and(path("/v6/deployments"))
        .and(query_param("projectId", PROJECT))
        .and(query_param("target", "production"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "pagination": {"count": 3, "next": null, "prev": null},
            "deployments": [item("dpl_3", "ccc", now - 20 * MIN), item("dpl_2", "bbb", now - 180 * MIN), item("dpl_1", "aaa", now - 300 * MIN)]
        })))
        .mount(&app.vercel)
        .await;
    app.vercel_serves("dpl_3").await;
    let vercel = backstop::app::vercel_client(&test_settings(&app))
        .unwrap()
        .unwrap();
    let svc = test_settings(&app).services[0].clone();
    let report = backstop::feed::sync_service(&app.store, &vercel, &svc, 20)
        .await
        .unwrap();
    assert_eq!(
        (report.imported, report.live.as_deref()),
        (3, Some("dpl_3"))
    );
    let d = |id: &'static str| {
        let store = app.store.clone();
        async move { store.deployment(id).await.unwrap().unwrap() }
    };
    assert!(d("dpl_3").await.live);
    assert_eq!(
        d("dpl_2").await.verdict,
        Verdict::Good,
        "served 2h40m before dpl_3"
    );
    assert_eq!(d("dpl_1").await.verdict, Verdict::Good);
    assert_eq!(d("dpl_2").await.release.as_deref(), Some("bbb"));
    // Syncing again changes nothing.
    backstop::feed::sync_service(&app.store, &vercel, &svc, 20)
        .await
        .unwrap();
    assert_eq!(
        app.store
            .deployments(None)
            .await
            .unwrap()
            .iter()
            .filter(|x| x.live)
            .count(),
        1
    );
}

fn test_settings(app: &TestApp) -> backstop::config::Settings {
    settings(
        &app.db_url,
        &app.vercel.uri(),
        &app.pagerduty.uri(),
        &app.slack.uri(),
    )
}
