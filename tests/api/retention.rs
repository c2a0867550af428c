//! Years of history, live: pruning in the background never holds up
//! ingest, and a backup taken while alerts arrive serves as the ledger.

use backstop::app::Application;
use backstop::clock::now_ms;
use backstop::ledger::{DecisionRecord, Ingested, NewAlert, Outcome};
use backstop::sim::config::DEMO;
use backstop::sim::sender::{self, CrashAlert};
use serde_json::json;

use crate::helpers::*;
use crate::on_both;

const DAY: i64 = 86_400_000;

/// `n` alerts the alert alone settled, received `ago` ms ago.
async fn old_settled(store: &backstop::ledger::Store, n: usize, ago: i64) {
    let at = now_ms() - ago;
    let stores = (0..n).map(|i| {
        let store = store.clone();
        async move {
            let a = NewAlert {
                dedup_key: format!("old-{i}"),
                resource: "metric_alert".into(),
                action: "warning".into(),
                service: None,
                body: json!({"n": i}).to_string(),
                received_at_ms: at,
                decided: Some(DecisionRecord {
                    service: None,
                    outcome: Outcome::Skip,
                    reason: "not critical".into(),
                    detail: json!({}),
                    rollback_from: None,
                    rollback_to: None,
                    alerted_live: None,
                    steps: vec![],
                    attempt: None,
                    note: None,
                }),
            };
            assert!(matches!(
                store.ingest_alert(&a).await.unwrap(),
                Ingested::Stored(_)
            ));
        }
    });
    futures_util::future::join_all(stores).await;
}

async fn unmapped_alert(app: &SimApp, i: usize) -> u16 {
    let body = CrashAlert::critical("some-other-project", &format!("live-{i}"), now_ms()).body();
    let url = format!("{}/webhooks/sentry", app.address);
    sender::deliver(&app.http, &url, DEMO.sentry_secret, "metric_alert", &body)
        .await
        .unwrap()
        .0
}

async fn ingest_keeps_answering_while_a_prune_runs(db: Db) {
    let Some(app) = spawn_on_sim(db, |_| {}).await else {
        return;
    };
    old_settled(&app.store, 2_000, 10 * DAY).await;
    let before = app.store.count_runs().await.unwrap();
    let engine = app.engine.clone();
    let prune = tokio::spawn(async move { engine.prune(false).await });
    let sends = (0..50).map(|i| unmapped_alert(&app, i));
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let pruned = prune.await.unwrap().unwrap().expect("this instance pruned");
    assert_eq!(pruned.runs, 2_000);
    assert_eq!(
        app.store.count_runs().await.unwrap(),
        before - 2_000 + 50,
        "the fresh alerts stayed"
    );
}

async fn a_pass_is_skipped_while_another_instance_prunes(db: Db) {
    let Some(app) = spawn_on_sim(db, |_| {}).await else {
        return;
    };
    old_settled(&app.store, 10, 10 * DAY).await;
    // Another instance on the same ledger holds the pruning job.
    let lease = std::time::Duration::from_secs(60);
    assert!(app
        .store
        .take_job("retention", "other-instance", lease)
        .await
        .unwrap());
    let before = app.store.count_runs().await.unwrap();
    assert_eq!(app.engine.prune(false).await.unwrap(), None, "skipped");
    assert_eq!(
        app.store.count_runs().await.unwrap(),
        before,
        "nothing pruned"
    );
    // A dry run only counts: it needs no job.
    let dry = app.engine.prune(true).await.unwrap().expect("counted");
    assert_eq!(dry.runs, 10);
    // Once the other instance lets go, this one prunes.
    app.store
        .release_job("retention", "other-instance")
        .await
        .unwrap();
    let pruned = app
        .engine
        .prune(false)
        .await
        .unwrap()
        .expect("this instance pruned");
    assert_eq!(pruned.runs, 10);
    assert_eq!(app.store.count_runs().await.unwrap(), before - 10);
}

on_both!(
    ingest_keeps_answering_while_a_prune_runs,
    a_pass_is_skipped_while_another_instance_prunes
);

/// A backup taken while alerts arrive is a consistent ledger: `serve`
/// starts on it and decides a fresh alert as the original does.
#[tokio::test]
async fn a_backup_taken_mid_traffic_serves_as_the_ledger() {
    let Some(app) = spawn_on_sim(Db::Sqlite, |_| {}).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let sends = (0..40).map(|i| unmapped_alert(&app, i));
    let (statuses, backup) = tokio::join!(
        futures_util::future::join_all(sends),
        app.store.backup(&file)
    );
    backup.unwrap();
    assert!(statuses.iter().all(|s| *s == 202));
    assert!(
        app.store.backup(&file).await.is_err(),
        "a backup never overwrites"
    );

    let mut settings = app.settings.clone();
    settings.database.url = secrecy::SecretString::from(format!("sqlite://{}", file.display()));
    let restored = Application::build(settings)
        .await
        .expect("serve starts on the backup");
    let engine = restored.engine();
    // The same ledger: the deployments, and every run whole.
    let ids = |v: Vec<backstop::ledger::Deployment>| {
        v.into_iter()
            .map(|d| (d.id, d.verdict, d.live))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(engine.store().deployments(None).await.unwrap()),
        ids(app.store.deployments(None).await.unwrap())
    );
    for run in engine.store().list_runs(100).await.unwrap() {
        engine
            .store()
            .run_detail(&run.id)
            .await
            .expect("each run with its alert");
    }
    // The same decision for a fresh alert.
    let body = CrashAlert::critical("storefront-web", "fresh", now_ms() - 30_000)
        .body()
        .to_string();
    let original = app.engine.preview("metric_alert", &body).await.unwrap();
    let from_backup = engine.preview("metric_alert", &body).await.unwrap();
    assert_eq!(
        (
            from_backup.outcome,
            from_backup.rule,
            from_backup.target.map(|t| t.id)
        ),
        (
            original.outcome,
            original.rule,
            original.target.map(|t| t.id)
        )
    );
    assert_eq!(original.outcome, Outcome::Rollback);
}

/// Postgres is backed up with pg_dump; the command says so.
#[tokio::test]
async fn a_backup_of_a_postgres_ledger_points_at_pg_dump() {
    let Some(db) = TestDatabase::new(Db::Postgres).await else {
        return;
    };
    let store = db.store().await;
    let e = store
        .backup(std::path::Path::new("/tmp/never"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pg_dump"), "{e}");
}
