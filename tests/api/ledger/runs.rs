//! Alerts, runs, claims, fencing, steps and attempts.

use std::time::{Duration, Instant};

use backstop::clock::now_ms;
use backstop::ledger::{
    AttemptOutcome, Ingested, RollbackDone, RunStatus, StepError, StepName, StepStatus, StoreError,
};
use serde_json::json;

use super::*;

crate::on_both!(
    one_run_can_be_claimed_by_its_id_and_no_other,
    a_worker_that_lost_its_claim_cannot_record_a_decision_a_step_or_an_attempt,
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
    a_worker_that_lost_its_claim_cannot_move_the_ledger_or_finish_the_run,
);

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
    assert_eq!(detail.run.status, RunStatus::Pending);
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
    assert_eq!(claimed.run.status, RunStatus::Running);
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
    let none = |w: &'static str| {
        let store = store.clone();
        async move { store.claim_run(w, LONG_LEASE).await.unwrap().is_none() }
    };
    assert!(none("worker-b").await, "leased to worker-a");
    assert!(none("worker-a").await, "not even twice by its holder");
    assert!(
        store
            .claim_run_by_id(&run, "worker-b", LONG_LEASE)
            .await
            .unwrap()
            .is_none(),
        "nor by its id"
    );
    store
        .renew_run(&claimed.claim, LONG_LEASE)
        .await
        .expect("the holder can renew");
    let forged = Claim {
        fence: claimed.claim.fence + 1,
        ..claimed.claim.clone()
    };
    let err = store.renew_run(&forged, LONG_LEASE).await.unwrap_err();
    assert!(matches!(err, StoreError::LostClaim(_)), "{err:?}");
    assert!(none("worker-b").await);
}

async fn one_run_can_be_claimed_by_its_id_and_no_other(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let older = stored_run(&store, "alert-older", Some(SERVICE)).await;
    let mine = stored_run(&store, "alert-mine", Some(SERVICE)).await;
    let claimed = store
        .claim_run_by_id(&mine, "rehearsal", LONG_LEASE)
        .await
        .unwrap()
        .expect("a pending run is claimable by id");
    assert_eq!(claimed.run.id, mine);
    let rest = store
        .claim_run("worker", LONG_LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.run.id, older, "the other run was left for the workers");
}

async fn lapsed_lease_lets_another_worker_take_over_and_the_old_worker_cannot_renew(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let first = store
        .claim_run("worker-a", Duration::from_millis(1))
        .await
        .unwrap()
        .expect("pending run is claimable")
        .claim;
    let taken = take_over(&store, "worker-b").await;
    assert_eq!(taken.run.id, run, "worker-b took over the abandoned run");
    assert_eq!(taken.run.status, RunStatus::Running);
    assert!(
        taken.claim.fence > first.fence,
        "every claim has a higher fence"
    );

    let err = store.renew_run(&first, LONG_LEASE).await.unwrap_err();
    assert!(
        matches!(err, StoreError::LostClaim(_)),
        "worker-a lost its claim: {err:?}"
    );
    store.renew_run(&taken.claim, LONG_LEASE).await.unwrap();
    assert!(
        store
            .claim_run("worker-a", LONG_LEASE)
            .await
            .unwrap()
            .is_none(),
        "worker-b's lease holds"
    );
}

/// Claims the run whose 1 ms lease is about to lapse, as `worker`.
async fn take_over(store: &Store, worker: &'static str) -> backstop::ledger::ClaimedRun {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(claimed) = store.claim_run(worker, LONG_LEASE).await.unwrap() {
            return claimed;
        }
        assert!(Instant::now() < deadline, "a 1 ms lease never lapsed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_worker_that_lost_its_claim_cannot_record_a_decision_a_step_or_an_attempt(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_live"]).await;
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let stale = store
        .claim_run("worker-a", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap()
        .claim;
    let owner = take_over(&store, "worker-b").await.claim;
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LostClaim(_)));

    let mut d = decision(Outcome::Skip, None, None, &[StepName::Announce]);
    d.alerted_live = Some("dpl_live".into());
    d.attempt = Some(1);
    assert!(
        lost(store.save_decision(&stale, &d).await),
        "a stale decision is refused"
    );
    assert!(store.run(&run).await.unwrap().decided_at_ms.is_none());
    assert!(get(&store, "dpl_live").await.alerted_at_ms.is_none());
    assert_eq!(
        store.steps(&run).await.unwrap().len(),
        1,
        "no step was added"
    );
    let begun = store
        .begin_attempt(&stale, StepName::Decide)
        .await
        .map(|_| ());
    assert!(lost(begun), "no attempt is started");
    let e = StepError::fatal("x", "stale");
    let finished = store
        .finish_step(&stale, StepName::Decide, StepStatus::Failed, None, Some(&e))
        .await;
    assert!(lost(finished));
    let ended = store
        .finish_attempt(&stale, StepName::Decide, 1, AttemptOutcome::Fatal, Some(&e))
        .await;
    assert!(lost(ended));
    assert!(lost(store.finish_run(&stale, RunStatus::Failed).await));
    let detail = store.run_detail(&run).await.unwrap();
    assert_eq!(
        detail.steps[0].status,
        StepStatus::Pending,
        "the owner's step is untouched"
    );
    assert!(detail.attempts.is_empty());

    // The owner's writes all land.
    let (n, _) = store.begin_attempt(&owner, StepName::Decide).await.unwrap();
    assert_eq!(n, 1);
    store.save_decision(&owner, &d).await.unwrap();
    store.finish_run(&owner, RunStatus::Done).await.unwrap();
    assert_eq!(store.run(&run).await.unwrap().status, RunStatus::Done);
}

async fn service_claim_admits_one_run_until_released(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    stored_run(&store, "alert-1", Some(SERVICE)).await;
    let first = claim(&store, "worker-a").await;
    stored_run(&store, "alert-2", Some(SERVICE)).await;
    let second = claim(&store, "worker-b").await;
    let service = |name: &'static str, c: &Claim| {
        let (store, c) = (store.clone(), c.clone());
        async move { store.claim_service(name, &c, LONG_LEASE).await.unwrap() }
    };

    assert!(service(SERVICE, &first).await);
    assert!(!service(SERVICE, &second).await, "held by the first run");
    assert!(service(SERVICE, &first).await, "the holder may re-claim");
    assert!(
        service("billing", &second).await,
        "other services are independent"
    );

    store.release_service(SERVICE, &second).await.unwrap();
    assert!(
        !service(SERVICE, &second).await,
        "only the holder can release"
    );

    // A worker that lost the first run's claim cannot free the service.
    let stale = Claim {
        fence: first.fence - 1,
        ..first.clone()
    };
    store.release_service(SERVICE, &stale).await.unwrap();
    assert!(
        !service(SERVICE, &second).await,
        "a stale release frees nothing"
    );

    store.release_service(SERVICE, &first).await.unwrap();
    assert!(
        service(SERVICE, &second).await,
        "released, so the second run gets it"
    );
    assert!(!service(SERVICE, &first).await);
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
        &decision(Outcome::Rollback, Some("dpl_b"), Some("dpl_a"), &[]),
    )
    .await;
    decided_run(&store, "alert-2", &decision(Outcome::Skip, None, None, &[])).await;
    let mut elsewhere = decision(Outcome::Rollback, Some("dpl_x"), Some("dpl_y"), &[]);
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
        Some(decided_at(&store, &earlier.run).await)
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
        &decision(Outcome::Rollback, Some("dpl_c"), Some("dpl_a"), &[]),
    )
    .await;
    let h = store
        .history(SERVICE, &RunId::generate(), now_ms())
        .await
        .unwrap();
    assert_eq!(h.rollbacks_last_day, 2);
    assert_eq!(
        h.last_rollback_at_ms,
        Some(decided_at(&store, &latest.run).await)
    );
    assert!(
        h.live_rolled_back,
        "the live dpl_c already has a rollback run"
    );

    // The run being decided does not count against itself.
    let own = store.history(SERVICE, &latest.run, now_ms()).await.unwrap();
    assert_eq!(own.rollbacks_last_day, 1);
    assert_eq!(
        own.last_rollback_at_ms,
        Some(decided_at(&store, &earlier.run).await)
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
        Some(decided_at(&store, &latest.run).await)
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
    use StepName::{Announce, Decide, Page, Rollback};
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let c = claim(&store, "worker").await;
    let unavailable = StepError::retryable("vercel_unavailable", "vercel: HTTP 503: try later");
    let forbidden = StepError::fatal("forbidden", "vercel: HTTP 403 forbidden: Not authorized");

    let (n1, started1) = store.begin_attempt(&c, Decide).await.unwrap();
    assert_eq!(n1, 1);
    store
        .finish_attempt(&c, Decide, 1, AttemptOutcome::Retryable, Some(&unavailable))
        .await
        .unwrap();
    let (n2, started2) = store.begin_attempt(&c, Decide).await.unwrap();
    assert_eq!(n2, 2);
    assert_eq!(started2, started1, "the step's start is its first attempt");
    store
        .finish_attempt(&c, Decide, 2, AttemptOutcome::Ok, None)
        .await
        .unwrap();

    let d = decision(
        Outcome::Rollback,
        Some("dpl_new"),
        Some("dpl_old"),
        &[Rollback, Page],
    );
    store.save_decision(&c, &d).await.unwrap();
    let (r1, _) = store.begin_attempt(&c, Rollback).await.unwrap();
    assert_eq!(r1, 1, "numbering is per step");
    store
        .finish_attempt(&c, Rollback, 1, AttemptOutcome::Fatal, Some(&forbidden))
        .await
        .unwrap();
    store
        .finish_step(&c, Rollback, StepStatus::Failed, None, Some(&forbidden))
        .await
        .unwrap();
    let (p1, _) = store.begin_attempt(&c, Page).await.unwrap();
    assert_eq!(p1, 1);

    let missing = store.begin_attempt(&c, Announce).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing:?}");

    let detail = store.run_detail(&run).await.unwrap();
    let decide_numbers: Vec<_> = detail
        .attempts
        .iter()
        .filter(|a| a.step == Decide)
        .map(|a| a.attempt)
        .collect();
    assert_eq!(
        decide_numbers,
        vec![1, 2],
        "a step's attempts are listed in order"
    );
    let mut attempts: Vec<_> = detail
        .attempts
        .iter()
        .map(|a| {
            (
                a.step,
                a.attempt,
                a.outcome,
                a.error.clone(),
                a.finished_at_ms.is_some(),
            )
        })
        .collect();
    attempts.sort_by_key(|a| (a.0, a.1));
    assert_eq!(
        attempts,
        vec![
            (
                Decide,
                1,
                Some(AttemptOutcome::Retryable),
                Some(unavailable.clone()),
                true
            ),
            (Decide, 2, Some(AttemptOutcome::Ok), None, true),
            (
                Rollback,
                1,
                Some(AttemptOutcome::Fatal),
                Some(forbidden.clone()),
                true
            ),
            (Page, 1, None, None, false),
        ]
    );
    let steps: Vec<_> = detail
        .steps
        .iter()
        .map(|s| (s.name, s.seq, s.status, s.attempts))
        .collect();
    assert_eq!(
        steps,
        vec![
            (Decide, 0, StepStatus::Succeeded, 2),
            (Rollback, 1, StepStatus::Failed, 1),
            (Page, 2, StepStatus::Pending, 1)
        ]
    );
    let rollback = &detail.steps[1];
    assert_eq!(rollback.error.as_ref(), Some(&forbidden));
    assert!(rollback.finished_at_ms.is_some());
    assert_eq!(detail.run.outcome, Some(Outcome::Rollback));
    assert_eq!(detail.run.rollback_from.as_deref(), Some("dpl_new"));
    assert_eq!(detail.alert, json!({"key": "alert-1"}));
}

async fn a_worker_that_lost_its_claim_cannot_move_the_ledger_or_finish_the_run(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let owner = decided_to_roll_back(&store, "alert-lost").await;
    // "worker-decide" holds the claim; a stale worker (an earlier fence) tries to act.
    let stale = Claim {
        fence: owner.fence - 1,
        worker: "stale-worker".into(),
        ..owner.clone()
    };
    let err = store
        .complete_rollback(&RollbackDone {
            claim: &stale,
            service: SERVICE,
            from: "dpl_new",
            to: "dpl_old",
            output: &json!({}),
            attempt: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LostClaim(_)), "{err}");
    assert!(get(&store, "dpl_new").await.live, "the ledger did not move");
    let err = store.finish_run(&stale, RunStatus::Done).await.unwrap_err();
    assert!(matches!(err, StoreError::LostClaim(_)), "{err}");
    store.finish_run(&owner, RunStatus::Done).await.unwrap();
}
