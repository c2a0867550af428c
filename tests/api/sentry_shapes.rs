//! Sentry's metric alerts as real Sentry versions send them: the workflow
//! engine's shape, the classic path's window-start `date_started`, the
//! 2025 serializer's missing `environment`, and `"metric_alert": null`.

use backstop::clock::now_ms;
use backstop::ledger::RunId;
use backstop::sim::sender::CrashAlert;
use serde_json::Value;

use crate::helpers::*;

crate::on_both!(
    a_classic_alert_detected_after_the_promotion_rolls_back_though_its_window_started_before,
    the_workflow_engine_shape_rolls_back_and_its_resolution_threads,
    an_alert_without_an_environment_maps_to_the_only_service_for_its_project,
    an_alert_without_an_environment_claimed_by_two_services_pages_a_person,
    a_null_metric_alert_is_accepted_deduplicated_and_paged_never_acted_on,
);

/// Posts `body` as a metric alert; returns the status and the run it names.
async fn post(app: &TestApp, body: &Value) -> (u16, RunId) {
    let resp = app.post_sentry("metric_alert", &compact(body)).await;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (status, RunId(v["run"].as_str().unwrap_or_default().into()))
}

async fn decided(app: &TestApp, run: &RunId) -> backstop::ledger::RunDetail {
    app.engine.run_until_idle().await.unwrap();
    app.store.run_detail(run).await.unwrap()
}

fn check(d: &backstop::ledger::RunDetail, name: &str) -> String {
    let decision: backstop::policy::Decision =
        serde_json::from_value(d.run.decision.clone().unwrap()).unwrap();
    decision
        .checks
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.detail.clone())
        .unwrap_or_else(|| panic!("no `{name}` check in {:?}", decision.checks))
}

async fn a_classic_alert_detected_after_the_promotion_rolls_back_though_its_window_started_before(
    db: Db,
) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await; // dpl_new went live 10 min ago
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let mut alert = CrashAlert::critical("storefront-web", "701", now_ms() - 8 * MIN);
    alert.classic = true; // date_started = detection − 60 min, before the promotion
    let (status, run) = post(&app, &alert.body()).await;
    assert_eq!(status, 202);
    let d = decided(&app, &run).await;
    assert_eq!(d.run.outcome, Some(Outcome::Rollback), "{:?}", d.run.reason);
    assert_eq!(app.alias_writes().await.len(), 2);
    let fresh = check(&d, "fresh");
    assert!(
        fresh.contains("after dpl_new went live") && fresh.contains("of the 60 min in the window"),
        "{fresh}"
    );
}

async fn the_workflow_engine_shape_rolls_back_and_its_resolution_threads(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let fixture = include_str!("../fixtures/sentry/metric_alert_workflow_engine_critical.json");
    let mut body: Value = serde_json::from_str(fixture).unwrap();
    let at = backstop::clock::format_time(now_ms() - 2 * MIN);
    for k in ["date_started", "date_detected", "date_created"] {
        body["data"]["metric_alert"][k] = at.clone().into();
    }
    let (status, run) = post(&app, &body).await;
    assert_eq!(status, 202);
    let d = decided(&app, &run).await;
    assert_eq!(d.run.outcome, Some(Outcome::Rollback), "{:?}", d.run.reason);
    body["action"] = "resolved".into();
    body["data"]["metric_alert"]["status"] = 2.into();
    let (status, resolved) = post(&app, &body).await;
    assert_eq!(status, 202);
    let r = decided(&app, &resolved).await;
    assert_eq!(r.run.outcome, Some(Outcome::Resolution));
    let posts = bodies(&app.slack, "/chat.postMessage").await;
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[1]["thread_ts"], SLACK_TS, "the resolution threads");
}

async fn an_alert_without_an_environment_maps_to_the_only_service_for_its_project(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let mut alert = CrashAlert::critical("storefront-web", "702", now_ms() - 2 * MIN);
    alert.environment = None;
    let body = alert.body();
    assert!(body["data"]["metric_alert"]["alert_rule"]
        .get("environment")
        .is_none());
    let (status, run) = post(&app, &body).await;
    assert_eq!(status, 202);
    let d = decided(&app, &run).await;
    assert_eq!(d.run.outcome, Some(Outcome::Rollback), "{:?}", d.run.reason);
    assert!(check(&d, "mapped").contains("carries no environment"));
    assert_eq!(app.alias_writes().await.len(), 2);
}

async fn an_alert_without_an_environment_claimed_by_two_services_pages_a_person(db: Db) {
    let Some(app) = spawn_app_with(db, |s| {
        let mut staging = s.services[0].clone();
        staging.name = "storefront-staging".into();
        staging.environment = "staging".into();
        staging.vercel_project = "prj_storefront_staging".into();
        s.services.push(staging);
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    let mut alert = CrashAlert::critical("storefront-web", "703", now_ms() - 2 * MIN);
    alert.environment = None;
    let (status, run) = post(&app, &alert.body()).await;
    assert_eq!(status, 202, "accepted, never silently dropped");
    let d = decided(&app, &run).await;
    assert_eq!(d.run.outcome, Some(Outcome::Escalate), "{:?}", d.run.reason);
    assert!(
        app.alias_writes().await.is_empty(),
        "production is never moved"
    );
    let pages = bodies(&app.pagerduty, "/v2/enqueue").await;
    assert_eq!(pages.len(), 1, "a person is paged");
    let summary = pages[0]["payload"]["summary"].as_str().unwrap();
    assert!(summary.contains("could not be mapped"), "{summary}");
    assert!(
        summary.contains("storefront, storefront-staging"),
        "{summary}"
    );
    assert_eq!(bodies(&app.slack, "/chat.postMessage").await.len(), 1);
}

async fn a_null_metric_alert_is_accepted_deduplicated_and_paged_never_acted_on(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    let mut body = CrashAlert::critical("storefront-web", "1004821937", now_ms()).body();
    body["data"]["metric_alert"] = Value::Null;
    let (status, run) = post(&app, &body).await;
    assert_eq!(status, 202, "a null body is not hostile");
    let (again, same) = post(&app, &body).await;
    assert_eq!(
        (again, &same),
        (200, &run),
        "Sentry's re-send is a duplicate"
    );
    let d = decided(&app, &run).await;
    assert_eq!(d.run.outcome, Some(Outcome::Escalate));
    assert_eq!(d.run.service, None);
    assert!(app.alias_writes().await.is_empty());
    let pages = bodies(&app.pagerduty, "/v2/enqueue").await;
    assert_eq!(pages.len(), 1);
    let summary = pages[0]["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("Sentry sent a critical alert without its details: rule 177111"),
        "{summary}"
    );
    assert_eq!(pages[0]["dedup_key"], "backstop/unmapped/177111");
}
