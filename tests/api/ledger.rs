//! Conformance suite for the ledger: every behaviour of `Store`, once on
//! SQLite and once on Postgres.

use std::time::{Duration, Instant};

use backstop::ledger::{
    now_ms, DecisionRecord, Ingested, NewAlert, NewDeployment, Promotion, RollbackDone, RunId,
    Store, StoreError, Verdict,
};
use serde_json::json;

use crate::helpers::*;

/// Runs each scenario once per backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Db::Sqlite).await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Db::Postgres).await } )* }
    };
}

on_both!(
    recording_a_deployment_again_fills_unknown_fields_without_clobbering_known_ones,
    recording_a_deployment_again_never_changes_its_verdict_or_live_state,
    promotion_makes_a_deployment_live_and_supersedes_the_previous_one,
    promoting_the_live_deployment_again_is_already_live,
    late_webhook_for_an_older_promotion_leaves_the_live_deployment_live,
    superseded_deployment_that_baked_without_an_alert_becomes_good,
    superseded_deployment_that_served_less_than_the_bake_time_stays_unproven,
    superseded_deployment_that_took_a_critical_alert_stays_unproven,
    promoting_an_unknown_deployment_is_not_found_and_changes_nothing,
    completed_rollback_marks_the_source_bad_and_the_target_live_and_good,
    a_worker_that_lost_its_claim_cannot_move_the_ledger_or_finish_the_run,
    marking_sets_the_verdict_and_reason_by_hand,
    marking_an_unknown_deployment_is_not_found,
    redelivered_alert_names_the_run_of_the_first_delivery,
    fifty_concurrent_deliveries_of_one_alert_store_exactly_one_run,
    two_concurrent_workers_never_both_claim_one_run,
    claimed_run_is_not_claimable_while_its_lease_lasts,
    lapsed_lease_lets_another_worker_take_over_and_the_old_worker_cannot_renew,
    service_claim_admits_one_run_until_released,
    history_counts_rollbacks_of_the_last_day_and_the_last_rollback_time,
    pausing_and_resuming_a_service_shows_in_history,
    vercel_event_is_recorded_only_once,
    attempts_are_numbered_per_step_and_kept_with_their_outcome_and_error,
);

const SERVICE: &str = "storefront";
const BAKE: Duration = Duration::from_secs(30 * 60);
const LONG_LEASE: Duration = Duration::from_secs(60);

async fn fresh(db: Db) -> Option<(TestDatabase, Store)> {
    let database = TestDatabase::new(db).await?;
    let store = database.store().await;
    Some((database, store))
}

fn deployment(id: &str) -> NewDeployment {
    NewDeployment {
        id: id.into(),
        service: SERVICE.into(),
        url: Some(format!("storefront-{id}.vercel.app")),
        release: Some(format!("sha-{id}")),
        created_at_ms: Some(1_700_000_000_000),
    }
}

async fn record(store: &Store, ids: &[&str]) {
    for id in ids {
        store
            .record_deployment(&deployment(id))
            .await
            .expect("record deployment");
    }
}

async fn get(store: &Store, id: &str) -> backstop::ledger::Deployment {
    store
        .deployment(id)
        .await
        .expect("read deployment")
        .unwrap_or_else(|| panic!("{id} is recorded"))
}

async fn live_ids(store: &Store, service: &str) -> Vec<String> {
    let all = store.deployments(Some(service)).await.expect("deployments");
    all.into_iter().filter(|d| d.live).map(|d| d.id).collect()
}

fn alert(key: &str, service: Option<&str>) -> NewAlert {
    NewAlert {
        dedup_key: key.into(),
        resource: "metric_alert".into(),
        action: "critical".into(),
        service: service.map(str::to_owned),
        body: json!({"key": key}).to_string(),
        received_at_ms: now_ms(),
        decided: None,
    }
}

async fn stored_run(store: &Store, key: &str, service: Option<&str>) -> RunId {
    match store
        .ingest_alert(&alert(key, service))
        .await
        .expect("ingest")
    {
        Ingested::Stored(run) => run,
        other => panic!("first delivery of {key} must be stored, got {other:?}"),
    }
}

fn decision(outcome: &str, from: Option<&str>, to: Option<&str>, steps: &[&str]) -> DecisionRecord {
    DecisionRecord {
        service: Some(SERVICE.into()),
        outcome: outcome.into(),
        reason: format!("{outcome} for the test"),
        detail: json!({"outcome": outcome}),
        rollback_from: from.map(str::to_owned),
        rollback_to: to.map(str::to_owned),
        alerted_live: None,
        steps: steps.iter().map(|s| s.to_string()).collect(),
        attempt: None,
    }
}

/// `dpl_old` live 3 h ago, `dpl_new` live now, and a run decided to roll
/// back from one to the other, claimed by "worker-decide".
async fn decided_to_roll_back(store: &Store, key: &str) -> RunId {
    record(store, &["dpl_old", "dpl_new"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_old", now - 3 * 60 * MIN, BAKE)
        .await
        .unwrap();
    store
        .promote(SERVICE, "dpl_new", now - 10 * MIN, BAKE)
        .await
        .unwrap();
    decided_run(
        store,
        key,
        &decision("rollback", Some("dpl_new"), Some("dpl_old"), &["rollback"]),
    )
    .await
}

/// An alert whose run a worker claimed and decided with `d`.
async fn decided_run(store: &Store, key: &str, d: &DecisionRecord) -> RunId {
    let run = stored_run(store, key, d.service.as_deref()).await;
    let claimed = store
        .claim_run("worker-decide", LONG_LEASE)
        .await
        .expect("claim")
        .expect("a pending run");
    assert_eq!(claimed.run.id, run, "the only pending run is claimed");
    store.save_decision(&run, d).await.expect("save decision");
    run
}

async fn decided_at(store: &Store, run: &RunId) -> i64 {
    store
        .run_detail(run)
        .await
        .expect("run detail")
        .run
        .decided_at_ms
        .expect("decided")
}

// ---- deployments -----------------------------------------------------------

async fn recording_a_deployment_again_fills_unknown_fields_without_clobbering_known_ones(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    store
        .record_deployment(&NewDeployment {
            id: "dpl_a".into(),
            service: SERVICE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = get(&store, "dpl_a").await;
    assert_eq!((d.url, d.release, d.created_at_ms), (None, None, None));

    store.record_deployment(&deployment("dpl_a")).await.unwrap();
    let d = get(&store, "dpl_a").await;
    assert_eq!(
        d.url.as_deref(),
        Some("storefront-dpl_a.vercel.app"),
        "unknown url filled in"
    );
    assert_eq!(d.release.as_deref(), Some("sha-dpl_a"));
    assert_eq!(d.created_at_ms, Some(1_700_000_000_000));

    // A later sighting that knows less (e.g. a webhook without meta) keeps what is known.
    store
        .record_deployment(&NewDeployment {
            id: "dpl_a".into(),
            service: SERVICE.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = get(&store, "dpl_a").await;
    assert_eq!(d.url.as_deref(), Some("storefront-dpl_a.vercel.app"));
    assert_eq!(d.release.as_deref(), Some("sha-dpl_a"));
    assert_eq!(d.created_at_ms, Some(1_700_000_000_000));

    // A sighting that knows a new value replaces the old one.
    store
        .record_deployment(&NewDeployment {
            id: "dpl_a".into(),
            service: SERVICE.into(),
            url: Some("storefront-renamed.vercel.app".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let d = get(&store, "dpl_a").await;
    assert_eq!(d.url.as_deref(), Some("storefront-renamed.vercel.app"));
    assert_eq!(d.release.as_deref(), Some("sha-dpl_a"));
    assert_eq!(
        store.deployments(None).await.unwrap().len(),
        1,
        "upsert, not a second row"
    );
}

async fn recording_a_deployment_again_never_changes_its_verdict_or_live_state(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a"]).await;
    let d = get(&store, "dpl_a").await;
    assert!(
        !d.live && d.verdict == Verdict::Unproven,
        "a new deployment is neither live nor proven"
    );

    store
        .promote(SERVICE, "dpl_a", now_ms(), BAKE)
        .await
        .unwrap();
    store
        .mark("dpl_a", Verdict::Bad, "broke checkout")
        .await
        .unwrap();
    store.record_deployment(&deployment("dpl_a")).await.unwrap();

    let d = get(&store, "dpl_a").await;
    assert!(d.live, "still live");
    assert_eq!(d.verdict, Verdict::Bad);
    assert_eq!(d.verdict_reason.as_deref(), Some("broke checkout"));
}

async fn promotion_makes_a_deployment_live_and_supersedes_the_previous_one(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b", "dpl_c"]).await;
    let now = now_ms();

    let first = store
        .promote(SERVICE, "dpl_a", now - 3 * 60 * MIN, BAKE)
        .await
        .unwrap();
    assert_eq!(first, Promotion::Live { superseded: None });
    assert_eq!(live_ids(&store, SERVICE).await, vec!["dpl_a"]);

    let second = store
        .promote(SERVICE, "dpl_b", now - 2 * 60 * MIN, BAKE)
        .await
        .unwrap();
    assert_eq!(
        second,
        Promotion::Live {
            superseded: Some("dpl_a".into())
        }
    );
    assert_eq!(
        live_ids(&store, SERVICE).await,
        vec!["dpl_b"],
        "exactly one live deployment"
    );

    let third = store
        .promote(SERVICE, "dpl_c", now - 60 * MIN, BAKE)
        .await
        .unwrap();
    assert_eq!(
        third,
        Promotion::Live {
            superseded: Some("dpl_b".into())
        }
    );
    assert_eq!(
        live_ids(&store, SERVICE).await,
        vec!["dpl_c"],
        "exactly one live deployment"
    );

    let c = get(&store, "dpl_c").await;
    assert_eq!(c.promoted_at_ms, Some(now - 60 * MIN));
    assert_eq!(c.superseded_at_ms, None);
    let b = get(&store, "dpl_b").await;
    assert_eq!(b.promoted_at_ms, Some(now - 2 * 60 * MIN));
    assert_eq!(
        b.superseded_at_ms,
        Some(now - 60 * MIN),
        "superseded when its successor went live"
    );

    let order: Vec<_> = store
        .deployments(Some(SERVICE))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(
        order,
        vec!["dpl_c", "dpl_b", "dpl_a"],
        "newest promotion first"
    );
}

async fn promoting_the_live_deployment_again_is_already_live(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_a", now - 60 * MIN, BAKE)
        .await
        .unwrap();
    store
        .promote(SERVICE, "dpl_b", now - 10 * MIN, BAKE)
        .await
        .unwrap();

    let again = store.promote(SERVICE, "dpl_b", now, BAKE).await.unwrap();
    assert_eq!(again, Promotion::AlreadyLive);
    assert_eq!(live_ids(&store, SERVICE).await, vec!["dpl_b"]);
    assert_eq!(
        get(&store, "dpl_b").await.promoted_at_ms,
        Some(now - 10 * MIN),
        "the original promotion time is kept"
    );
}

async fn late_webhook_for_an_older_promotion_leaves_the_live_deployment_live(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_old", "dpl_new"]).await;
    let now = now_ms();
    // The newer promotion's webhook arrives first.
    store
        .promote(SERVICE, "dpl_new", now - 10 * MIN, BAKE)
        .await
        .unwrap();

    let late = store
        .promote(SERVICE, "dpl_old", now - 60 * MIN, BAKE)
        .await
        .unwrap();
    assert_eq!(late, Promotion::Older);
    assert_eq!(
        live_ids(&store, SERVICE).await,
        vec!["dpl_new"],
        "the newer promotion stays live"
    );
    let old = get(&store, "dpl_old").await;
    assert!(!old.live);
    assert_eq!(
        old.promoted_at_ms,
        Some(now - 60 * MIN),
        "history is filled in"
    );
    assert_eq!(
        old.superseded_at_ms,
        Some(now - 10 * MIN),
        "it was superseded by the live one"
    );
    assert_eq!(old.verdict, Verdict::Unproven);
}

async fn superseded_deployment_that_baked_without_an_alert_becomes_good(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_a", now - 2 * 60 * MIN, BAKE)
        .await
        .unwrap();
    store.promote(SERVICE, "dpl_b", now, BAKE).await.unwrap();

    let a = get(&store, "dpl_a").await;
    assert_eq!(
        a.verdict,
        Verdict::Good,
        "served 2 h with a 30 min bake time"
    );
    assert!(a.verdict_reason.unwrap_or_default().contains("bake time"));
    assert_eq!(
        get(&store, "dpl_b").await.verdict,
        Verdict::Unproven,
        "the new live one is not proven yet"
    );
}

async fn superseded_deployment_that_served_less_than_the_bake_time_stays_unproven(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_a", now - 10 * MIN, BAKE)
        .await
        .unwrap();
    store.promote(SERVICE, "dpl_b", now, BAKE).await.unwrap();

    let a = get(&store, "dpl_a").await;
    assert!(!a.live);
    assert_eq!(
        a.verdict,
        Verdict::Unproven,
        "served 10 min with a 30 min bake time"
    );
    assert_eq!(a.verdict_reason, None);
}

async fn superseded_deployment_that_took_a_critical_alert_stays_unproven(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_a", now - 2 * 60 * MIN, BAKE)
        .await
        .unwrap();
    let mut d = decision("escalate", None, None, &[]);
    d.alerted_live = Some("dpl_a".into());
    decided_run(&store, "alert-1", &d).await;
    assert!(
        get(&store, "dpl_a").await.alerted_at_ms.is_some(),
        "the alert is recorded on the live deployment"
    );

    store.promote(SERVICE, "dpl_b", now, BAKE).await.unwrap();
    assert_eq!(
        get(&store, "dpl_a").await.verdict,
        Verdict::Unproven,
        "baked long enough, but it alerted"
    );
}

async fn promoting_an_unknown_deployment_is_not_found_and_changes_nothing(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_a", now - 2 * 60 * MIN, BAKE)
        .await
        .unwrap();

    let err = store
        .promote(SERVICE, "dpl_nope", now, BAKE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let a = get(&store, "dpl_a").await;
    assert!(
        a.live,
        "the failed promotion did not supersede the live deployment"
    );
    assert_eq!(a.verdict, Verdict::Unproven);
    assert_eq!(a.superseded_at_ms, None);

    // Known id, wrong service: also not found.
    record(&store, &["dpl_b"]).await;
    let err = store
        .promote("billing", "dpl_b", now, BAKE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(!get(&store, "dpl_b").await.live);
}

async fn completed_rollback_marks_the_source_bad_and_the_target_live_and_good(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = decided_to_roll_back(&store, "alert-1").await;

    store
        .complete_rollback(&RollbackDone {
            service: SERVICE,
            from: "dpl_new",
            to: "dpl_old",
            run: &run,
            output: &json!({}),
            attempt: None,
            worker: "worker-decide",
        })
        .await
        .unwrap();

    let from = get(&store, "dpl_new").await;
    assert!(!from.live);
    assert_eq!(from.verdict, Verdict::Bad);
    let reason = from.verdict_reason.unwrap_or_default();
    assert!(reason.contains(&run.0), "reason `{reason}` names the run");
    assert!(from.superseded_at_ms.is_some());
    let to = get(&store, "dpl_old").await;
    assert!(to.live);
    assert_eq!(to.verdict, Verdict::Good);
    assert_eq!(to.superseded_at_ms, None);
    assert_eq!(live_ids(&store, SERVICE).await, vec!["dpl_old"]);
}

async fn marking_sets_the_verdict_and_reason_by_hand(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a"]).await;

    let d = store
        .mark("dpl_a", Verdict::Good, "verified by hand")
        .await
        .unwrap();
    assert_eq!(
        (d.verdict, d.verdict_reason.as_deref()),
        (Verdict::Good, Some("verified by hand"))
    );
    let d = store
        .mark("dpl_a", Verdict::Bad, "leaks memory")
        .await
        .unwrap();
    assert_eq!(
        (d.verdict, d.verdict_reason.as_deref()),
        (Verdict::Bad, Some("leaks memory"))
    );
    let stored = get(&store, "dpl_a").await;
    assert_eq!(
        (stored.verdict, stored.verdict_reason.as_deref()),
        (Verdict::Bad, Some("leaks memory"))
    );
}

async fn marking_an_unknown_deployment_is_not_found(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let err = store
        .mark("dpl_nope", Verdict::Good, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(
        store.deployment("dpl_nope").await.unwrap().is_none(),
        "marking does not create a row"
    );
}

// ---- alerts and runs ----------------------------------------------------------

async fn redelivered_alert_names_the_run_of_the_first_delivery(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let first = store
        .ingest_alert(&alert("metric_alert:177111:101:critical", Some(SERVICE)))
        .await
        .unwrap();
    let Ingested::Stored(run) = first else {
        panic!("first delivery is stored, got {first:?}")
    };

    let again = store
        .ingest_alert(&alert("metric_alert:177111:101:critical", Some(SERVICE)))
        .await
        .unwrap();
    assert_eq!(again, Ingested::Duplicate(run.clone()));
    assert_eq!(store.count_alerts().await.unwrap(), 1);
    assert_eq!(store.count_runs().await.unwrap(), 1);

    let other = store
        .ingest_alert(&alert("metric_alert:177111:101:resolved", Some(SERVICE)))
        .await
        .unwrap();
    assert!(
        matches!(&other, Ingested::Stored(r) if *r != run),
        "another key is another run: {other:?}"
    );

    let detail = store.run_detail(&run).await.unwrap();
    assert_eq!(detail.dedup_key, "metric_alert:177111:101:critical");
    assert_eq!(detail.run.status, "pending");
    assert_eq!(
        detail
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["decide"]
    );
}

async fn fifty_concurrent_deliveries_of_one_alert_store_exactly_one_run(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .ingest_alert(&alert("metric_alert:1:storm:critical", Some(SERVICE)))
                    .await
            })
        })
        .collect();
    let mut stored = Vec::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        match task
            .await
            .expect("task")
            .expect("ingest succeeds under contention")
        {
            Ingested::Stored(run) => stored.push(run),
            Ingested::Duplicate(run) => duplicates.push(run),
        }
    }
    assert_eq!(stored.len(), 1, "exactly one delivery stores the alert");
    assert_eq!(duplicates.len(), 49);
    assert!(
        duplicates.iter().all(|r| *r == stored[0]),
        "every duplicate names the stored run"
    );
    assert_eq!(store.count_runs().await.unwrap(), 1);
    assert_eq!(store.count_alerts().await.unwrap(), 1);
}

async fn two_concurrent_workers_never_both_claim_one_run(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let claimers: Vec<_> = ["worker-a", "worker-b"]
        .into_iter()
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_run(w, LONG_LEASE).await })
        })
        .collect();
    let mut winners = Vec::new();
    for c in claimers {
        if let Some(claimed) = c.await.expect("task").expect("claim") {
            winners.push(claimed);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one worker gets the run");
    let claimed = &winners[0];
    assert_eq!(claimed.run.id, run);
    assert_eq!(claimed.run.status, "running");
    assert_eq!(claimed.resource, "metric_alert");
    assert_eq!(
        claimed.body,
        json!({"key": "alert-1"}).to_string(),
        "the claim carries the stored alert body"
    );
}

async fn claimed_run_is_not_claimable_while_its_lease_lasts(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let claimed = store
        .claim_run("worker-a", LONG_LEASE)
        .await
        .unwrap()
        .expect("pending run is claimable");
    assert_eq!(claimed.run.id, run);

    assert!(
        store
            .claim_run("worker-b", LONG_LEASE)
            .await
            .unwrap()
            .is_none(),
        "leased to worker-a"
    );
    assert!(
        store
            .claim_run("worker-a", LONG_LEASE)
            .await
            .unwrap()
            .is_none(),
        "not even twice by its holder"
    );
    assert!(
        store.renew_run(&run, "worker-a", LONG_LEASE).await.unwrap(),
        "the holder can renew"
    );
    assert!(
        !store.renew_run(&run, "worker-b", LONG_LEASE).await.unwrap(),
        "a non-holder cannot renew"
    );
    assert!(store
        .claim_run("worker-b", LONG_LEASE)
        .await
        .unwrap()
        .is_none());
}

async fn lapsed_lease_lets_another_worker_take_over_and_the_old_worker_cannot_renew(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    store
        .claim_run("worker-a", Duration::from_millis(1))
        .await
        .unwrap()
        .expect("pending run is claimable");

    let deadline = Instant::now() + Duration::from_secs(5);
    let taken = loop {
        if let Some(claimed) = store.claim_run("worker-b", LONG_LEASE).await.unwrap() {
            break claimed;
        }
        assert!(Instant::now() < deadline, "a 1 ms lease never lapsed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(taken.run.id, run, "worker-b took over the abandoned run");
    assert_eq!(taken.run.status, "running");

    assert!(
        !store.renew_run(&run, "worker-a", LONG_LEASE).await.unwrap(),
        "worker-a lost its claim"
    );
    assert!(store.renew_run(&run, "worker-b", LONG_LEASE).await.unwrap());
    assert!(
        store
            .claim_run("worker-a", LONG_LEASE)
            .await
            .unwrap()
            .is_none(),
        "worker-b's lease holds"
    );
}

async fn service_claim_admits_one_run_until_released(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let first = RunId::generate();
    let second = RunId::generate();

    assert!(store
        .claim_service(SERVICE, &first, LONG_LEASE)
        .await
        .unwrap());
    assert!(
        !store
            .claim_service(SERVICE, &second, LONG_LEASE)
            .await
            .unwrap(),
        "held by the first run"
    );
    assert!(
        store
            .claim_service(SERVICE, &first, LONG_LEASE)
            .await
            .unwrap(),
        "the holder may re-claim"
    );
    assert!(
        store
            .claim_service("billing", &second, LONG_LEASE)
            .await
            .unwrap(),
        "other services are independent"
    );

    store.release_service(SERVICE, &second).await.unwrap();
    assert!(
        !store
            .claim_service(SERVICE, &second, LONG_LEASE)
            .await
            .unwrap(),
        "only the holder can release"
    );

    store.release_service(SERVICE, &first).await.unwrap();
    assert!(
        store
            .claim_service(SERVICE, &second, LONG_LEASE)
            .await
            .unwrap(),
        "released, so the second run gets it"
    );
    assert!(!store
        .claim_service(SERVICE, &first, LONG_LEASE)
        .await
        .unwrap());
}

async fn history_counts_rollbacks_of_the_last_day_and_the_last_rollback_time(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b", "dpl_c"]).await;
    let now = now_ms();
    store
        .promote(SERVICE, "dpl_a", now - 3 * 60 * MIN, BAKE)
        .await
        .unwrap();
    store
        .promote(SERVICE, "dpl_b", now - 2 * 60 * MIN, BAKE)
        .await
        .unwrap();
    store
        .promote(SERVICE, "dpl_c", now - 60 * MIN, BAKE)
        .await
        .unwrap();

    let empty = store
        .history(SERVICE, &RunId::generate(), now_ms())
        .await
        .unwrap();
    assert_eq!(
        (
            empty.rollbacks_last_day,
            empty.last_rollback_at_ms,
            empty.live_rolled_back
        ),
        (0, None, false)
    );

    let earlier = decided_run(
        &store,
        "alert-1",
        &decision("rollback", Some("dpl_b"), Some("dpl_a"), &[]),
    )
    .await;
    decided_run(&store, "alert-2", &decision("skip", None, None, &[])).await;
    let mut elsewhere = decision("rollback", Some("dpl_x"), Some("dpl_y"), &[]);
    elsewhere.service = Some("billing".into());
    decided_run(&store, "alert-3", &elsewhere).await;

    let h = store
        .history(SERVICE, &RunId::generate(), now_ms())
        .await
        .unwrap();
    assert_eq!(
        h.rollbacks_last_day, 1,
        "skips and other services do not count"
    );
    assert_eq!(
        h.last_rollback_at_ms,
        Some(decided_at(&store, &earlier).await)
    );
    assert!(
        !h.live_rolled_back,
        "no rollback away from the live dpl_c yet"
    );
    let ids: Vec<_> = h.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["dpl_c", "dpl_b", "dpl_a"]);

    let latest = decided_run(
        &store,
        "alert-4",
        &decision("rollback", Some("dpl_c"), Some("dpl_a"), &[]),
    )
    .await;
    let h = store
        .history(SERVICE, &RunId::generate(), now_ms())
        .await
        .unwrap();
    assert_eq!(h.rollbacks_last_day, 2);
    assert_eq!(
        h.last_rollback_at_ms,
        Some(decided_at(&store, &latest).await)
    );
    assert!(
        h.live_rolled_back,
        "the live dpl_c already has a rollback run"
    );

    // The run being decided does not count against itself.
    let own = store.history(SERVICE, &latest, now_ms()).await.unwrap();
    assert_eq!(own.rollbacks_last_day, 1);
    assert_eq!(
        own.last_rollback_at_ms,
        Some(decided_at(&store, &earlier).await)
    );
    assert!(!own.live_rolled_back);

    // A day later the rollbacks no longer count towards the daily limit.
    let tomorrow = store
        .history(SERVICE, &RunId::generate(), now_ms() + 25 * 60 * MIN)
        .await
        .unwrap();
    assert_eq!(tomorrow.rollbacks_last_day, 0);
    assert_eq!(
        tomorrow.last_rollback_at_ms,
        Some(decided_at(&store, &latest).await)
    );
}

async fn pausing_and_resuming_a_service_shows_in_history(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = RunId::generate();
    assert_eq!(
        store.history(SERVICE, &run, now_ms()).await.unwrap().paused,
        None
    );

    store
        .set_paused(SERVICE, Some("incident 42: manual control"))
        .await
        .unwrap();
    assert_eq!(
        store
            .history(SERVICE, &run, now_ms())
            .await
            .unwrap()
            .paused
            .as_deref(),
        Some("incident 42: manual control")
    );
    assert_eq!(
        store
            .history("billing", &run, now_ms())
            .await
            .unwrap()
            .paused,
        None,
        "only that service is paused"
    );

    store
        .set_paused(SERVICE, Some("freeze for launch"))
        .await
        .unwrap();
    assert_eq!(
        store
            .history(SERVICE, &run, now_ms())
            .await
            .unwrap()
            .paused
            .as_deref(),
        Some("freeze for launch")
    );

    store.set_paused(SERVICE, None).await.unwrap();
    assert_eq!(
        store.history(SERVICE, &run, now_ms()).await.unwrap().paused,
        None,
        "resumed"
    );
}

async fn vercel_event_is_recorded_only_once(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let at = now_ms();
    assert!(store
        .record_vercel_event("evt_1", "deployment.promoted", "dpl_a", at)
        .await
        .unwrap());
    assert!(
        !store
            .record_vercel_event("evt_1", "deployment.promoted", "dpl_a", at)
            .await
            .unwrap(),
        "redelivery"
    );
    assert!(store
        .record_vercel_event("evt_2", "deployment.promoted", "dpl_a", at)
        .await
        .unwrap());
}

async fn attempts_are_numbered_per_step_and_kept_with_their_outcome_and_error(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let unavailable = json!({"code": "vercel_unavailable", "message": "vercel: HTTP 503: try later", "retryable": true});
    let forbidden = json!({"code": "forbidden", "message": "vercel: HTTP 403 forbidden: Not authorized", "retryable": false});

    let (n1, started1) = store.begin_attempt(&run, "decide").await.unwrap();
    assert_eq!(n1, 1);
    store
        .finish_attempt(&run, "decide", 1, "retryable", Some(&unavailable))
        .await
        .unwrap();
    let (n2, started2) = store.begin_attempt(&run, "decide").await.unwrap();
    assert_eq!(n2, 2);
    assert_eq!(started2, started1, "the step's start is its first attempt");
    store
        .finish_attempt(&run, "decide", 2, "ok", None)
        .await
        .unwrap();

    store
        .save_decision(
            &run,
            &decision(
                "rollback",
                Some("dpl_new"),
                Some("dpl_old"),
                &["rollback", "page"],
            ),
        )
        .await
        .unwrap();
    let (r1, _) = store.begin_attempt(&run, "rollback").await.unwrap();
    assert_eq!(r1, 1, "numbering is per step");
    store
        .finish_attempt(&run, "rollback", 1, "fatal", Some(&forbidden))
        .await
        .unwrap();
    store
        .finish_step(&run, "rollback", "failed", None, Some(&forbidden))
        .await
        .unwrap();
    let (p1, _) = store.begin_attempt(&run, "page").await.unwrap();
    assert_eq!(p1, 1);

    let missing = store.begin_attempt(&run, "announce").await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");

    let detail = store.run_detail(&run).await.unwrap();
    // Attempts are listed by start time; those of different steps begun in
    // the same millisecond may come in either order, so compare per step.
    let seq = |step: &str| {
        ["decide", "rollback", "page"]
            .iter()
            .position(|s| *s == step)
    };
    let mut attempts: Vec<_> = detail
        .attempts
        .iter()
        .map(|a| {
            (
                a.step.as_str(),
                a.attempt,
                a.outcome.as_deref(),
                a.error.clone(),
                a.finished_at_ms.is_some(),
            )
        })
        .collect();
    let decide_numbers: Vec<_> = attempts
        .iter()
        .filter(|a| a.0 == "decide")
        .map(|a| a.1)
        .collect();
    assert_eq!(
        decide_numbers,
        vec![1, 2],
        "a step's attempts are listed in order"
    );
    attempts.sort_by_key(|a| (seq(a.0), a.1));
    assert_eq!(
        attempts,
        vec![
            (
                "decide",
                1,
                Some("retryable"),
                Some(unavailable.clone()),
                true
            ),
            ("decide", 2, Some("ok"), None, true),
            ("rollback", 1, Some("fatal"), Some(forbidden.clone()), true),
            ("page", 1, None, None, false),
        ]
    );
    let steps: Vec<_> = detail
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.seq, s.status.as_str(), s.attempts))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("decide", 0, "succeeded", 2),
            ("rollback", 1, "failed", 1),
            ("page", 2, "pending", 1)
        ]
    );
    let rollback = &detail.steps[1];
    assert_eq!(rollback.error.as_ref(), Some(&forbidden));
    assert!(rollback.finished_at_ms.is_some());
    assert_eq!(detail.run.outcome.as_deref(), Some("rollback"));
    assert_eq!(detail.run.rollback_from.as_deref(), Some("dpl_new"));
    assert_eq!(detail.alert, json!({"key": "alert-1"}));
}

async fn a_worker_that_lost_its_claim_cannot_move_the_ledger_or_finish_the_run(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = decided_to_roll_back(&store, "alert-lost").await;
    // "worker-decide" holds the claim; a stale worker tries to act.
    let err = store
        .complete_rollback(&RollbackDone {
            service: SERVICE,
            from: "dpl_new",
            to: "dpl_old",
            run: &run,
            output: &json!({}),
            attempt: None,
            worker: "stale-worker",
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(get(&store, "dpl_new").await.live, "the ledger did not move");
    assert!(!store
        .finish_run(&run, "done", "stale-worker")
        .await
        .unwrap());
    assert!(store
        .finish_run(&run, "done", "worker-decide")
        .await
        .unwrap());
}
