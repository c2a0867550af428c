//! The whole pipeline through the real HTTP server, on SQLite and Postgres:
//! signed alert → decision → Vercel rollback → ledger.

use backstop::clock::now_ms;
use backstop::ledger::Verdict;
use serde_json::Value;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

/// Runs each scenario once per backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Db::Sqlite).await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Db::Postgres).await } )* }
    };
}

on_both!(
    crash_alert_about_live_release_rolls_every_domain_back_and_verifies,
    stale_alert_does_not_touch_vercel,
    unmapped_project_does_not_touch_vercel,
    warning_does_not_touch_vercel,
    drifted_production_does_not_touch_vercel_and_resyncs_the_ledger,
    dry_run_service_does_not_touch_vercel,
    forged_signature_is_refused_and_stores_nothing,
    duplicate_delivery_answers_200_and_rolls_back_once,
    failed_alias_write_fails_the_run_and_keeps_the_ledger,
);

async fn fire(app: &TestApp, body: &Value) -> (u16, Value) {
    let resp = app.post_sentry("metric_alert", &compact(body)).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn crash_alert_about_live_release_rolls_every_domain_back_and_verifies(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;

    let (status, body) = fire(&app, &crash_alert("101", now_ms() - 5 * MIN)).await;
    assert_eq!(status, 202, "{body}");
    let run = body["run"].as_str().expect("run id").to_string();
    assert_eq!(app.engine.run_until_idle().await.unwrap(), 1);

    let writes = app.alias_writes().await;
    // Written side by side: in whichever order they arrived.
    let mut domains: Vec<_> = writes
        .iter()
        .map(|(p, b)| (p.as_str(), b["alias"].as_str().unwrap_or("")))
        .collect();
    domains.sort();
    assert_eq!(
        domains,
        vec![
            ("/v2/deployments/dpl_old/aliases", DOMAINS[0]),
            ("/v2/deployments/dpl_old/aliases", DOMAINS[1])
        ]
    );
    let requests = app.vercel.received_requests().await.unwrap();
    for r in &requests {
        assert_eq!(
            r.headers.get("authorization").unwrap(),
            &format!("Bearer {VERCEL_TOKEN}")
        );
        assert!(
            r.url.query().unwrap_or("").contains("teamId=team_test"),
            "{}",
            r.url
        );
    }
    let reads_after_write: Vec<Vec<String>> = requests
        .iter()
        .skip_while(|r| r.method.as_str() != "POST")
        .filter(|r| r.method.as_str() == "GET" && r.url.path() == "/v4/aliases")
        .map(domains_asked)
        .collect();
    assert_eq!(
        reads_after_write,
        [DOMAINS.map(String::from).to_vec()],
        "every domain is read back after the move, in one call"
    );

    let old = app.store.deployment("dpl_old").await.unwrap().unwrap();
    let new = app.store.deployment("dpl_new").await.unwrap().unwrap();
    assert!(old.live && old.verdict == Verdict::Good);
    assert!(!new.live && new.verdict == Verdict::Bad);

    let detail = app
        .store
        .run_detail(&backstop::ledger::RunId(run))
        .await
        .unwrap();
    assert_eq!(detail.run.status, RunStatus::Done);
    let ends: Vec<_> = detail
        .attempts
        .iter()
        .map(|a| (a.step, a.outcome, a.finished_at_ms.is_some()))
        .collect();
    assert!(
        ends.iter()
            .all(|(_, o, f)| *o == Some(AttemptOutcome::Ok) && *f),
        "every attempt is on record as ended: {ends:?}"
    );
    assert!(
        ends.iter().any(|(s, _, _)| *s == StepName::Decide)
            && ends.iter().any(|(s, _, _)| *s == StepName::Rollback)
    );
    assert_eq!(detail.run.outcome, Some(Outcome::Rollback));
    assert_eq!(detail.run.rollback_from.as_deref(), Some("dpl_new"));
    assert_eq!(detail.run.rollback_to.as_deref(), Some("dpl_old"));
    let rollback = detail
        .steps
        .iter()
        .find(|s| s.name == StepName::Rollback)
        .unwrap();
    assert_eq!(rollback.status, StepStatus::Succeeded);
    assert_eq!(
        rollback.output.as_ref().unwrap()["domains"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let text = backstop::cli::explain(&detail);
    assert!(
        text.contains("roll back dpl_new to known-good dpl_old"),
        "{text}"
    );
    assert!(text.contains("production unchanged"), "{text}");
}

async fn assert_no_writes(app: &TestApp, expected_outcome: Outcome, reason_part: &str) {
    app.engine.run_until_idle().await.unwrap();
    assert!(app.alias_writes().await.is_empty(), "no alias may move");
    let runs = app.store.list_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].outcome, Some(expected_outcome));
    let reason = runs[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains(reason_part),
        "reason `{reason}` lacks `{reason_part}`"
    );
    assert!(
        app.store.deployment("dpl_new").await.unwrap().unwrap().live,
        "ledger unchanged"
    );
}

async fn stale_alert_does_not_touch_vercel(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    let (status, _) = fire(&app, &crash_alert("102", now_ms() - 30 * MIN)).await;
    assert_eq!(status, 202);
    assert_no_writes(&app, Outcome::Skip, "stale").await;
}

async fn unmapped_project_does_not_touch_vercel(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    let mut alert = crash_alert("103", now_ms() - MIN);
    alert["data"]["metric_alert"]["projects"] = serde_json::json!(["billing-api"]);
    let (status, _) = fire(&app, &alert).await;
    assert_eq!(status, 202);
    assert_no_writes(&app, Outcome::Skip, "unmapped").await;
}

async fn warning_does_not_touch_vercel(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    let mut alert = crash_alert("104", now_ms() - MIN);
    alert["action"] = "warning".into();
    let (status, _) = fire(&app, &alert).await;
    assert_eq!(status, 202);
    assert_no_writes(&app, Outcome::Skip, "not critical").await;
}

async fn drifted_production_does_not_touch_vercel_and_resyncs_the_ledger(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_hotfix_by_hand").await;
    let listed = serde_json::json!({"pagination": {"count": 1, "next": null, "prev": null}, "deployments": [{
        "uid": "dpl_hotfix_by_hand", "url": "hotfix.vercel.app", "createdAt": now_ms() - 2 * MIN, "ready": now_ms() - MIN,
        "state": "READY", "target": "production", "meta": {"githubCommitSha": "feedbee"}
    }]});
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/v6/deployments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(listed))
        .mount(&app.vercel)
        .await;
    // The alert started while dpl_new served, before the hand-made hotfix.
    fire(&app, &crash_alert("105", now_ms() - 3 * MIN)).await;
    app.engine.run_until_idle().await.unwrap();
    assert!(app.alias_writes().await.is_empty(), "no alias may move");
    let run = &app.store.list_runs(1).await.unwrap()[0];
    assert_eq!(run.outcome, Some(Outcome::Skip));
    assert!(run
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("production already changed"));
    // ...and the ledger was re-synced to what Vercel serves.
    let hotfix = app
        .store
        .deployment("dpl_hotfix_by_hand")
        .await
        .unwrap()
        .expect("imported");
    assert!(hotfix.live);
    assert_eq!(hotfix.release.as_deref(), Some("feedbee"));
    let crashed = app.store.deployment("dpl_new").await.unwrap().unwrap();
    assert!(!crashed.live);
    assert!(
        crashed.alerted_at_ms.is_some(),
        "it crashed while live: it must never bake to good"
    );
}

#[tokio::test]
async fn a_retry_stops_when_a_person_moved_production_meanwhile() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    // Read once to decide (live), then a person has promoted a fix.
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/v4/aliases"))
        .respond_with(aliases_response("dpl_new"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&app.vercel)
        .await;
    app.vercel_serves("dpl_fix_by_hand").await;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.*/aliases$"))
        .respond_with(ResponseTemplate::new(503).set_body_json(serde_json::json!({"error": {"code": "internal_server_error", "message": "An unexpected internal error occurred"}})))
        .mount(&app.vercel)
        .await;
    fire(&app, &crash_alert("110", now_ms() - MIN)).await;
    app.engine.run_until_idle().await.unwrap();
    let run = &app.store.list_runs(1).await.unwrap()[0];
    let detail = app.store.run_detail(&run.id).await.unwrap();
    let step = detail
        .steps
        .iter()
        .find(|s| s.name == StepName::Rollback)
        .unwrap();
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(
        step.error.as_ref().unwrap().code,
        "production_changed",
        "{:?}",
        step.error
    );
    let writes_after_the_move = app.alias_writes().await.len();
    assert_eq!(
        writes_after_the_move,
        2 * 4,
        "only the first attempt's four tries per domain (both domains at once) hit Vercel"
    );
}

async fn dry_run_service_does_not_touch_vercel(db: Db) {
    let Some(app) =
        spawn_app_with(db, |s| s.services[0].mode = backstop::config::Mode::DryRun).await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    fire(&app, &crash_alert("106", now_ms() - MIN)).await;
    assert_no_writes(&app, Outcome::DryRun, "would roll back dpl_new to dpl_old").await;
}

async fn forged_signature_is_refused_and_stores_nothing(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    let body = compact(&crash_alert("107", now_ms() - MIN));
    let forged = backstop::ingest::signature::sign(
        backstop::ingest::signature::Digest::Sha256,
        b"not-the-secret",
        &body,
    );
    let ts = (now_ms() / 1000).to_string();
    let resp = app
        .post_sentry_raw("metric_alert", &body, Some(&forged), Some(&ts))
        .await;
    assert_eq!(resp.status(), 401);
    let resp = app
        .post_sentry_raw("metric_alert", &body, None, Some(&ts))
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(app.store.count_alerts().await.unwrap(), 0);
    assert_eq!(app.store.count_runs().await.unwrap(), 0);
    assert!(app.vercel.received_requests().await.unwrap().is_empty());
}

async fn duplicate_delivery_answers_200_and_rolls_back_once(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("108", now_ms() - 5 * MIN);
    let (first, body1) = fire(&app, &alert).await;
    let (second, body2) = fire(&app, &alert).await;
    assert_eq!((first, second), (202, 200));
    assert_eq!(
        body1["run"], body2["run"],
        "the duplicate names the existing run"
    );
    assert_eq!(body2["status"], "duplicate");
    app.engine.run_until_idle().await.unwrap();
    let (third, _) = fire(&app, &alert).await;
    assert_eq!(third, 200);
    app.engine.run_until_idle().await.unwrap();
    assert_eq!(
        app.alias_writes().await.len(),
        2,
        "one write per domain, once"
    );
    assert_eq!(app.store.count_runs().await.unwrap(), 1);
}

async fn failed_alias_write_fails_the_run_and_keeps_the_ledger(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.*/aliases$"))
        .respond_with(ResponseTemplate::new(403).set_body_json(
            serde_json::json!({"error": {"code": "forbidden", "message": "Not authorized"}}),
        ))
        .mount(&app.vercel)
        .await;
    fire(&app, &crash_alert("109", now_ms() - MIN)).await;
    app.engine.run_until_idle().await.unwrap();
    let runs = app.store.list_runs(1).await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Failed);
    let detail = app.store.run_detail(&runs[0].id).await.unwrap();
    let step = detail
        .steps
        .iter()
        .find(|s| s.name == StepName::Rollback)
        .unwrap();
    assert_eq!(step.attempts, 1, "403 is fatal at once");
    assert_eq!(step.error.as_ref().unwrap().code, "forbidden");
    assert!(step
        .error
        .as_ref()
        .unwrap()
        .message
        .as_str()
        .contains("Not authorized"));
    assert!(
        app.store.deployment("dpl_new").await.unwrap().unwrap().live,
        "the ledger only moves after a verified rollback"
    );
}
