//! Webhook routes: statuses exactly as the README's HTTP table says, and a
//! refused request leaves nothing behind.

use backstop::clock::now_ms;
use backstop::ingest::signature::{sign, Digest};
use serde_json::json;

use crate::helpers::*;

async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(app.store.count_alerts().await.unwrap(), 0);
    assert_eq!(app.store.count_runs().await.unwrap(), 0);
}

#[tokio::test]
async fn malformed_json_is_400_and_stores_nothing() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    for body in [
        &b"not json"[..],
        b"{\"action\":",
        b"[]",
        br#"{"action":"critical","installation":{},"data":{}}"#,
    ] {
        let resp = app.post_sentry("metric_alert", body).await;
        assert_eq!(resp.status(), 400, "{}", String::from_utf8_lossy(body));
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn stale_or_missing_timestamp_is_401() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let body = compact(&crash_alert("1", now_ms()));
    let sig = sign(Digest::Sha256, SENTRY_SECRET.as_bytes(), &body);
    let old = ((now_ms() - 10 * MIN) / 1000).to_string();
    for ts in [Some(old.as_str()), Some("not-a-number"), None] {
        let resp = app
            .post_sentry_raw("metric_alert", &body, Some(&sig), ts)
            .await;
        assert_eq!(resp.status(), 401, "{ts:?}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let mut alert = crash_alert("1", now_ms());
    alert["padding"] = json!("x".repeat(1024 * 1024 + 10));
    let resp = app.post_sentry("metric_alert", &compact(&alert)).await;
    assert_eq!(resp.status(), 413);
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn other_resources_are_200_ignored() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let body = compact(&json!({"action": "created", "installation": {"uuid": "x"}, "data": {}}));
    let resp = app.post_sentry("installation", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["status"],
        "ignored"
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn store_outage_is_503_never_202() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.store.close().await;
    let resp = app
        .post_sentry("metric_alert", &compact(&crash_alert("1", now_ms())))
        .await;
    assert_eq!(resp.status(), 503);
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let live = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn readyz_answers_when_the_store_does() {
    let Some(app) = spawn_app(Db::Postgres).await else {
        return;
    };
    let ready = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn vercel_webhook_with_a_bad_signature_is_401_and_changes_nothing() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let body = compact(&promoted("dpl_x", "abc", now_ms()));
    let wrong = sign(Digest::Sha1, b"wrong", &body);
    for sig in [Some(wrong.as_str()), None] {
        let mut req = app
            .http
            .post(format!("{}/webhooks/vercel", app.address))
            .body(body.clone());
        if let Some(sig) = sig {
            req = req.header("x-vercel-signature", sig);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    assert!(app.store.deployments(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn promoted_webhook_makes_the_deployment_live_and_late_ones_fill_history() {
    let Some(app) = spawn_app(Db::Postgres).await else {
        return;
    };
    let now = now_ms();
    assert_eq!(
        app.post_vercel(&promoted("dpl_b", "bbb", now - 10 * MIN))
            .await
            .status(),
        200
    );
    // A delivery retried late, about an earlier promotion.
    let resp = app
        .post_vercel(&promoted("dpl_a", "aaa", now - 200 * MIN))
        .await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["result"],
        "older_promotion"
    );
    let b = app.store.deployment("dpl_b").await.unwrap().unwrap();
    let a = app.store.deployment("dpl_a").await.unwrap().unwrap();
    assert!(b.live && !a.live);
    assert_eq!(b.release.as_deref(), Some("bbb"));
    assert_eq!(b.url.as_deref(), Some("storefront-dpl_b.vercel.app"));
    assert_eq!(
        a.superseded_at_ms,
        Some(now - 10 * MIN),
        "history filled from provider times"
    );
    // Redelivery of the same event id changes nothing.
    let resp = app
        .post_vercel(&promoted("dpl_b", "bbb", now - 10 * MIN))
        .await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["result"],
        "duplicate"
    );
}

#[tokio::test]
async fn preview_and_foreign_project_events_are_ignored() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let preview = deployment_event("deployment.succeeded", "dpl_p", "ppp", now_ms(), None);
    let resp = app.post_vercel(&preview).await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["result"],
        "ignored"
    );
    let mut foreign = promoted("dpl_f", "fff", now_ms());
    foreign["payload"]["project"]["id"] = json!("prj_someone_else");
    let resp = app.post_vercel(&foreign).await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["result"],
        "ignored"
    );
    let staging = deployment_event(
        "deployment.promoted",
        "dpl_s",
        "sss",
        now_ms(),
        Some("staging"),
    );
    let resp = app.post_vercel(&staging).await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["result"],
        "ignored",
        "a staging promotion is not production"
    );
    let ready = deployment_event(
        "deployment.succeeded",
        "dpl_r",
        "rrr",
        now_ms(),
        Some("production"),
    );
    assert_eq!(
        app.post_vercel(&ready)
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["result"],
        "recorded"
    );
    let ids: Vec<_> = app
        .store
        .deployments(None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.live))
        .collect();
    assert_eq!(ids, vec![("dpl_r".to_string(), false)]);
}

#[tokio::test]
async fn alerts_the_alert_alone_settles_are_stored_decided_and_finished() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let mut unmapped = crash_alert("901", now_ms());
    unmapped["data"]["metric_alert"]["projects"] = json!(["billing"]);
    let mut warning = crash_alert("902", now_ms());
    warning["action"] = json!("warning");
    for alert in [unmapped, warning] {
        assert_eq!(
            app.post_sentry("metric_alert", &compact(&alert))
                .await
                .status(),
            202
        );
    }
    // No worker has run: the alert alone decided these.
    assert_eq!(app.store.count_unfinished_runs().await.unwrap(), 0);
    let reasons: Vec<_> = app
        .store
        .list_runs(5)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.status, r.reason.unwrap_or_default()))
        .collect();
    assert!(
        reasons.iter().all(|(s, _)| *s == RunStatus::Done),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.starts_with("unmapped"))
            && reasons.iter().any(|(_, r)| r.starts_with("not critical")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn with_full_sync_on_sqlite_alerts_are_stored_and_worked_the_same() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| s.database.sqlite_full_sync = true).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    assert_eq!(
        app.post_sentry(
            "metric_alert",
            &compact(&crash_alert("903", now_ms() - MIN))
        )
        .await
        .status(),
        202
    );
    app.engine.run_until_idle().await.unwrap();
    assert_eq!(app.alias_writes().await.len(), 2);
    assert!(app.store.deployment("dpl_old").await.unwrap().unwrap().live);
}
