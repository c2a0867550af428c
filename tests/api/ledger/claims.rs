//! Claims: one worker per run, leases on the database's clock, takeover
//! after a lapsed lease, service claims, and fencing: a worker whose claim
//! was taken over changes nothing.

use std::time::{Duration, Instant};

use backstop::ledger::{
    AttemptOutcome, RollbackDone, RunStatus, StepError, StepName, StepStatus, StoreError,
};
use serde_json::json;

use super::*;

crate::on_both!(
    lapsed_lease_lets_another_worker_take_over_and_the_old_worker_cannot_renew,
    two_concurrent_workers_never_both_claim_one_run,
    claimed_run_is_not_claimable_while_its_lease_lasts,
    one_run_can_be_claimed_by_its_id_and_no_other,
    a_worker_that_lost_its_claim_cannot_record_a_decision_a_step_or_an_attempt,
    service_claim_admits_one_run_until_released,
    a_worker_that_lost_its_claim_cannot_move_the_ledger_or_finish_the_run,
    a_step_a_person_asks_for_while_the_run_is_worked_on_keeps_it_open,
);

/// A press (a hold) arriving while a worker holds the run is not lost:
/// finishing the run leaves it claimable for that step; a second press of
/// the same button finds the first.
async fn a_step_a_person_asks_for_while_the_run_is_worked_on_keeps_it_open(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = stored_run(&store, "alert-1", Some(SERVICE)).await;
    let claimed = store
        .claim_run("worker-a", LONG_LEASE)
        .await
        .unwrap()
        .unwrap();
    let data = json!({"user_id": "U1"});
    assert_eq!(
        store
            .request_step(&run, StepName::Hold, "<@U1>", &data)
            .await
            .unwrap(),
        backstop::ledger::Requested::Stored
    );
    assert_eq!(
        store
            .request_step(&run, StepName::Hold, "<@U2>", &data)
            .await
            .unwrap(),
        backstop::ledger::Requested::Already(Some("<@U1>".into()))
    );
    assert_eq!(
        store.run(&run).await.unwrap().status,
        RunStatus::Running,
        "the worker keeps its claim"
    );
    store
        .finish_run(&claimed.claim, RunStatus::Done)
        .await
        .unwrap();
    assert_eq!(store.run(&run).await.unwrap().status, RunStatus::Pending);
    let again = store.claim_run("worker-b", LONG_LEASE).await.unwrap();
    assert_eq!(
        again.map(|c| c.run.id),
        Some(run.clone()),
        "claimable at once"
    );
    assert_eq!(
        store
            .request_step(&RunId("no-such-run".into()), StepName::Undo, "x", &data)
            .await
            .unwrap(),
        backstop::ledger::Requested::NoRun
    );
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
