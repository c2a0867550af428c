//! "Never twice, never lost", made to go wrong on purpose: storms of
//! duplicates, racing alerts, several instances, a database that goes away,
//! and providers that fail.

use std::time::Duration;

use backstop::clock::now_ms;
use backstop::sim::sender;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::helpers::*;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Db::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Db::Postgres).await } )* }
    };
}

on_both!(
    two_hundred_concurrent_deliveries_and_resends_act_exactly_once,
    two_different_alerts_for_one_service_roll_back_once,
);

/// Delivers `body` the way Sentry re-sends: same bytes, new Request-ID and timestamp.
async fn deliver(http: &reqwest::Client, address: &str, body: &Value) -> u16 {
    let (status, _) = sender::deliver(
        http,
        &format!("{address}/webhooks/sentry"),
        SENTRY_SECRET,
        "metric_alert",
        body,
    )
    .await
    .unwrap();
    status
}

async fn two_hundred_concurrent_deliveries_and_resends_act_exactly_once(db: Db) {
    let Some(app) = spawn_app_with(db, |s| s.engine.max_concurrent_runs = 64).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("701", now_ms() - MIN);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (http, address, alert) = (app.http.clone(), app.address.clone(), alert.clone());
            tokio::spawn(async move { deliver(&http, &address, &alert).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        199,
        "{statuses:?}"
    );
    app.until_runs_finish().await;
    // Late re-sends after the work is done.
    for _ in 0..5 {
        assert_eq!(deliver(&app.http, &app.address, &alert).await, 200);
    }
    app.until_runs_finish().await;
    assert_eq!(app.store.count_runs().await.unwrap(), 1);
    assert_eq!(app.alias_writes().await.len(), 2, "one write per domain");
    assert_eq!(
        bodies(&app.pagerduty, "/v2/enqueue").await.len(),
        1,
        "one page"
    );
    assert_eq!(
        bodies(&app.slack, "/chat.postMessage").await.len(),
        1,
        "one Slack post"
    );
}

async fn two_different_alerts_for_one_service_roll_back_once(db: Db) {
    let Some(app) = spawn_app_with(db, |s| s.engine.max_concurrent_runs = 64).await else {
        return;
    };
    let _second = app
        .another_instance(|s| s.engine.max_concurrent_runs = 64)
        .await;
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let (a, b) = (
        crash_alert("702", now_ms() - MIN),
        crash_alert("703", now_ms() - MIN),
    );
    let (sa, sb) = tokio::join!(
        deliver(&app.http, &app.address, &a),
        deliver(&app.http, &app.address, &b)
    );
    assert_eq!((sa, sb), (202, 202));
    app.until_runs_finish().await;
    assert_eq!(app.alias_writes().await.len(), 2, "one rollback, not two");
    let runs = app.store.list_runs(10).await.unwrap();
    let outcomes: Vec<_> = runs.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Some(Outcome::Rollback))
            .count(),
        1,
        "{outcomes:?}"
    );
    let other = runs
        .iter()
        .find(|r| r.outcome != Some(Outcome::Rollback))
        .unwrap();
    let reason = other.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("stale")
            || reason.starts_with("already handled")
            || reason.starts_with("cooldown"),
        "the second decides on the updated ledger: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_act_once_per_incident() {
    let Some(app) = spawn_app_with(Db::Postgres, |s| s.engine.max_concurrent_runs = 64).await
    else {
        return;
    };
    let (b, _) = app
        .another_instance(|s| s.engine.max_concurrent_runs = 64)
        .await;
    let (c, _) = app
        .another_instance(|s| s.engine.max_concurrent_runs = 64)
        .await;
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("704", now_ms() - MIN);
    let addresses = [app.address.clone(), b, c];
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (http, address, alert) =
                (app.http.clone(), addresses[i % 3].clone(), alert.clone());
            tokio::spawn(async move { deliver(&http, &address, &alert).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(t.await.unwrap() == 202);
    }
    assert_eq!(accepted, 1);
    app.until_runs_finish().await;
    assert_eq!(app.store.count_runs().await.unwrap(), 1);
    assert_eq!(app.alias_writes().await.len(), 2);
    assert_eq!(bodies(&app.pagerduty, "/v2/enqueue").await.len(), 1);
    assert_eq!(bodies(&app.slack, "/chat.postMessage").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_work_resumes_without_restart() {
    let Some(base) = postgres_url() else { return };
    let proxy = Proxy::start(host_port(&base)).await;
    let proxy_addr = proxy.addr.to_string();
    let Some(app) = spawn_app_with(Db::Postgres, |s| {
        s.engine.max_concurrent_runs = 64;
        s.engine.poll_interval = Duration::from_millis(100);
        let url = s
            .database
            .url
            .expose_secret()
            .replacen(&host_port(&base), &proxy_addr, 1);
        s.database.url = url.into();
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;

    proxy.down();
    let alert = crash_alert("705", now_ms() - MIN);
    assert_eq!(
        deliver(&app.http, &app.address, &alert).await,
        503,
        "never 202 for something not stored"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    proxy.up();
    // Sentry retries; the store is back and nothing was stored the first time.
    assert_eq!(deliver(&app.http, &app.address, &alert).await, 202);
    app.until_runs_finish().await;
    assert_eq!(app.alias_writes().await.len(), 2);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
