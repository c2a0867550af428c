//! Retention: old finished runs go; what decisions and guarantees need
//! stays. Time passes by asking the prune what it would do at a later
//! "now", instead of waiting.

use std::time::Duration;

use backstop::clock::now_ms;
use backstop::ledger::{Keep, Outcome, RunStatus, StepName};

use super::*;

crate::on_both!(
    old_finished_runs_go_and_what_decisions_need_stays,
    delivery_ids_go_once_their_providers_stop_retrying,
    one_instance_prunes_at_a_time,
    a_cooldown_longer_than_a_day_keeps_its_rollbacks,
);

const DAY: i64 = 86_400_000;

fn keep() -> Keep {
    Keep {
        runs: Duration::from_secs(90 * 86_400),
        settled: Duration::from_secs(7 * 86_400),
        cooldown: Duration::from_secs(3600),
    }
}

/// Finishes the pending run (the only one) with `d`.
async fn finished(store: &Store, key: &str, d: &DecisionRecord) -> RunId {
    let claim = decided_run(store, key, d).await;
    store.finish_run(&claim, RunStatus::Done).await.unwrap();
    claim.run
}

async fn old_finished_runs_go_and_what_decisions_need_stays(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_old", "dpl_live"]).await;
    promote_in_order(&store, &[("dpl_old", 3 * 60 * MIN), ("dpl_live", 60 * MIN)]).await;

    // Settled by the alert alone (an unmapped warning): short retention.
    let mut settled = alert("settled", None);
    settled.decided = Some(decision(Outcome::Skip, None, None, &[]));
    let settled = match store.ingest_alert(&settled).await.unwrap() {
        backstop::ledger::Ingested::Stored(r) => r,
        other => panic!("{other:?}"),
    };
    // Worked by the engine: the long retention.
    let worked = finished(
        &store,
        "worked",
        &decision(Outcome::Skip, None, None, &[StepName::Announce]),
    )
    .await;
    // A rollback away from the deployment that is live again (rule 8).
    let from_live = finished(
        &store,
        "from-live",
        &decision(Outcome::Rollback, Some("dpl_live"), Some("dpl_old"), &[]),
    )
    .await;
    // The run a freeze names.
    stored_run(&store, "frozen", Some(SERVICE)).await;
    let c = claim(&store, "worker-freeze").await;
    store
        .save_decision(&c, &decision(Outcome::Skip, None, None, &[]))
        .await
        .unwrap();
    store
        .freeze(&c, SERVICE, "the rollback did not help")
        .await
        .unwrap();
    store.finish_run(&c, RunStatus::Done).await.unwrap();
    // Still being worked on.
    let unfinished = stored_run(&store, "unfinished", Some(SERVICE)).await;

    let exists = |run: RunId| {
        let store = store.clone();
        async move { store.run(&run).await.is_ok() }
    };
    let now = now_ms();
    // Within a day nothing goes, whatever the settings say.
    let short = Keep {
        runs: Duration::from_secs(60),
        settled: Duration::from_secs(60),
        cooldown: Duration::ZERO,
    };
    assert_eq!(
        store.prune_batch(&short, now + DAY / 2, 100).await.unwrap(),
        0
    );

    // Eight days on: the settled run goes, with its alert.
    assert_eq!(
        store.count_prunable(&keep(), now + 8 * DAY).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .prune_batch(&keep(), now + 8 * DAY, 100)
            .await
            .unwrap(),
        1
    );
    assert!(!exists(settled.clone()).await);
    assert!(exists(worked.clone()).await);
    // Its dedup key went with it: a delivery of that alert now is new.
    let mut again = alert("settled", None);
    again.decided = Some(decision(Outcome::Skip, None, None, &[]));
    assert!(matches!(
        store.ingest_alert(&again).await.unwrap(),
        backstop::ledger::Ingested::Stored(_)
    ));

    // Ninety-one days on: the worked run goes too; the rest stays.
    let gone = store
        .prune_batch(&keep(), now + 91 * DAY, 100)
        .await
        .unwrap();
    assert_eq!(gone, 2, "the worked run, and the settled one just re-sent");
    assert!(!exists(worked).await);
    assert!(
        exists(from_live).await,
        "rule 8 reads it while its deployment is live"
    );
    assert!(exists(unfinished).await, "unfinished runs stay");
    let pauses = store.pauses().await.unwrap();
    assert_eq!(pauses.len(), 1, "the freeze stays");
    assert!(
        exists(pauses[0].frozen_by_run.clone().unwrap()).await,
        "and the run it names"
    );
    assert_eq!(
        store.deployments(Some(SERVICE)).await.unwrap().len(),
        2,
        "deployments stay"
    );
    assert_eq!(
        get(&store, "dpl_old").await.verdict,
        backstop::ledger::Verdict::Good
    );
    assert_eq!(
        store
            .prune_batch(&keep(), now + 91 * DAY, 100)
            .await
            .unwrap(),
        0,
        "nothing left"
    );
}

async fn delivery_ids_go_once_their_providers_stop_retrying(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    store
        .record_vercel_event("evt_1", "deployment.promoted", "dpl_a", now_ms())
        .await
        .unwrap();
    assert!(!store
        .provider_event_seen("pagerduty", "wh-1")
        .await
        .unwrap());
    let now = now_ms();
    // Vercel retries for a day, PagerDuty for two: kept three.
    assert_eq!(
        store.prune_deliveries(now + 2 * DAY, false).await.unwrap(),
        0
    );
    assert_eq!(
        store.prune_deliveries(now + 4 * DAY, true).await.unwrap(),
        2
    );
    assert!(
        store.vercel_event_seen("evt_1").await.unwrap(),
        "a dry run removes nothing"
    );
    assert_eq!(
        store.prune_deliveries(now + 4 * DAY, false).await.unwrap(),
        2
    );
    assert!(!store.vercel_event_seen("evt_1").await.unwrap());
}

async fn one_instance_prunes_at_a_time(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let lease = Duration::from_secs(60);
    assert!(store.take_job("retention", "a", lease).await.unwrap());
    assert!(
        !store.take_job("retention", "b", lease).await.unwrap(),
        "a holds it"
    );
    assert!(
        store.take_job("retention", "a", lease).await.unwrap(),
        "a renews it"
    );
    store.release_job("retention", "a").await.unwrap();
    assert!(store.take_job("retention", "b", lease).await.unwrap());
    // A holder that died: its lease lapses.
    assert!(store
        .take_job("other", "dead", Duration::from_millis(1))
        .await
        .unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.take_job("other", "c", lease).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "a 1 ms lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_cooldown_longer_than_a_day_keeps_its_rollbacks(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_old", "dpl_bad", "dpl_new"]).await;
    promote_in_order(
        &store,
        &[
            ("dpl_old", 3 * 60 * MIN),
            ("dpl_bad", 60 * MIN),
            ("dpl_new", MIN),
        ],
    )
    .await;
    // A rollback away from a deployment no longer live.
    let rollback = finished(
        &store,
        "rolled-back",
        &decision(Outcome::Rollback, Some("dpl_bad"), Some("dpl_old"), &[]),
    )
    .await;
    // Retention says a minute, but a service's cooldown is three days:
    // rule 17 must still see that rollback until the cooldown is over.
    let keep = Keep {
        runs: Duration::from_secs(60),
        settled: Duration::from_secs(60),
        cooldown: Duration::from_secs(3 * 86_400),
    };
    let now = now_ms();
    assert_eq!(store.count_prunable(&keep, now + 2 * DAY).await.unwrap(), 0);
    assert_eq!(
        store.prune_batch(&keep, now + 2 * DAY, 100).await.unwrap(),
        0
    );
    assert!(
        store.run(&rollback).await.is_ok(),
        "kept within the cooldown"
    );
    assert_eq!(
        store.prune_batch(&keep, now + 4 * DAY, 100).await.unwrap(),
        1
    );
    assert!(
        store.run(&rollback).await.is_err(),
        "gone once it has passed"
    );
}
