//! Alerts and runs: delivery, deduplication, what a decision reads about
//! a service, pauses, Vercel deliveries, steps and attempts.

use backstop::clock::now_ms;
use backstop::ledger::{AttemptOutcome, Ingested, StepError, StepName, StepStatus, StoreError};
use serde_json::json;

use super::*;

crate::on_both!(
    redelivered_alert_names_the_run_of_the_first_delivery,
    fifty_concurrent_deliveries_of_one_alert_store_exactly_one_run,
    history_counts_rollbacks_of_the_last_day_and_the_last_rollback_time,
    pausing_and_resuming_a_service_shows_in_history,
    vercel_event_is_recorded_only_once,
    attempts_are_numbered_per_step_and_kept_with_their_outcome_and_error,
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

async fn history_counts_rollbacks_of_the_last_day_and_the_last_rollback_time(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b", "dpl_c"]).await;
    promote_in_order(
        &store,
        &[
            ("dpl_a", 3 * 60 * MIN),
            ("dpl_b", 2 * 60 * MIN),
            ("dpl_c", 60 * MIN),
        ],
    )
    .await;

    let empty = store
        .history(
            SERVICE,
            &RunId::generate(),
            now_ms(),
            std::time::Duration::from_secs(1800),
        )
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

    let rollback = |from, to| {
        decision(
            Outcome::Rollback,
            Some(from),
            Some(to),
            &[StepName::Rollback],
        )
    };
    let earlier = decided_run(&store, "alert-1", &rollback("dpl_b", "dpl_a")).await;
    let earlier_at = verified(&store, &earlier).await;
    decided_run(&store, "alert-2", &decision(Outcome::Skip, None, None, &[])).await;
    let mut elsewhere = rollback("dpl_x", "dpl_y");
    elsewhere.service = Some("billing".into());
    verified(&store, &decided_run(&store, "alert-3", &elsewhere).await).await;
    // A rollback that failed moved nothing: it counts for neither.
    let failed = decided_run(&store, "alert-5", &rollback("dpl_b", "dpl_a")).await;
    let e = StepError::fatal("vercel_unavailable", "Vercel is down");
    store
        .finish_step(
            &failed,
            StepName::Rollback,
            StepStatus::Failed,
            None,
            Some(&e),
        )
        .await
        .unwrap();

    let h = store
        .history(
            SERVICE,
            &RunId::generate(),
            now_ms(),
            std::time::Duration::from_secs(1800),
        )
        .await
        .unwrap();
    assert_eq!(
        h.rollbacks_last_day, 1,
        "skips, failed rollbacks and other services do not count"
    );
    assert_eq!(
        h.last_rollback_at_ms,
        Some(earlier_at),
        "when it was verified"
    );
    assert!(
        !h.live_rolled_back,
        "no rollback away from the live dpl_c yet"
    );
    // The live deployment and the newest known-good one before it: what
    // the decision reads, not the whole history.
    let ids: Vec<_> = h.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["dpl_c", "dpl_b"]);

    let latest = decided_run(&store, "alert-4", &rollback("dpl_c", "dpl_a")).await;
    let h = store
        .history(
            SERVICE,
            &RunId::generate(),
            now_ms(),
            std::time::Duration::from_secs(1800),
        )
        .await
        .unwrap();
    assert!(
        h.live_rolled_back,
        "the live dpl_c already has a rollback run, even before it is verified"
    );
    assert_eq!(h.rollbacks_last_day, 1, "not verified yet");
    let latest_at = verified(&store, &latest).await;
    let h = store
        .history(
            SERVICE,
            &RunId::generate(),
            now_ms(),
            std::time::Duration::from_secs(1800),
        )
        .await
        .unwrap();
    assert_eq!(h.rollbacks_last_day, 2);
    assert_eq!(h.last_rollback_at_ms, Some(latest_at));

    // The run being decided does not count against itself.
    let own = store
        .history(
            SERVICE,
            &latest.run,
            now_ms(),
            std::time::Duration::from_secs(1800),
        )
        .await
        .unwrap();
    assert_eq!(own.rollbacks_last_day, 1);
    assert_eq!(own.last_rollback_at_ms, Some(earlier_at));
    assert!(!own.live_rolled_back);

    // A day later the rollbacks no longer count towards the daily limit.
    let tomorrow = store
        .history(
            SERVICE,
            &RunId::generate(),
            now_ms() + 25 * 60 * MIN,
            std::time::Duration::from_secs(1800),
        )
        .await
        .unwrap();
    assert_eq!(tomorrow.rollbacks_last_day, 0);
    assert_eq!(tomorrow.last_rollback_at_ms, Some(latest_at));
}

/// Finishes the claim's rollback step as succeeded; returns when.
async fn verified(store: &Store, claim: &Claim) -> i64 {
    store
        .finish_step(
            claim,
            StepName::Rollback,
            StepStatus::Succeeded,
            Some(&json!({})),
            None,
        )
        .await
        .unwrap();
    let steps = store.steps(&claim.run).await.unwrap();
    let step = steps.iter().find(|s| s.name == StepName::Rollback).unwrap();
    step.finished_at_ms.unwrap()
}

async fn pausing_and_resuming_a_service_shows_in_history(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let run = RunId::generate();
    assert_eq!(
        store
            .history(
                SERVICE,
                &run,
                now_ms(),
                std::time::Duration::from_secs(1800)
            )
            .await
            .unwrap()
            .paused,
        None
    );

    store
        .set_paused(SERVICE, Some("incident 42: manual control"))
        .await
        .unwrap();
    assert_eq!(
        store
            .history(
                SERVICE,
                &run,
                now_ms(),
                std::time::Duration::from_secs(1800)
            )
            .await
            .unwrap()
            .paused
            .as_deref(),
        Some("incident 42: manual control")
    );
    assert_eq!(
        store
            .history(
                "billing",
                &run,
                now_ms(),
                std::time::Duration::from_secs(1800)
            )
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
            .history(
                SERVICE,
                &run,
                now_ms(),
                std::time::Duration::from_secs(1800)
            )
            .await
            .unwrap()
            .paused
            .as_deref(),
        Some("freeze for launch")
    );

    store.set_paused(SERVICE, None).await.unwrap();
    assert_eq!(
        store
            .history(
                SERVICE,
                &run,
                now_ms(),
                std::time::Duration::from_secs(1800)
            )
            .await
            .unwrap()
            .paused,
        None,
        "resumed"
    );
    // Both ends are kept, newest first, with who; a resume of a service
    // that was not held is not an event.
    store.pause_by(SERVICE, None, "<@U42>").await.unwrap();
    store
        .pause_by("billing", Some("held from Slack"), "<@U42>")
        .await
        .unwrap();
    let log = store.pause_log(Some(SERVICE), 10).await.unwrap();
    let seen: Vec<(&str, Option<&str>)> = log
        .iter()
        .map(|e| (e.action.as_str(), e.reason.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("resume", None),
            ("pause", Some("freeze for launch")),
            ("pause", Some("incident 42: manual control")),
        ]
    );
    assert!(log
        .iter()
        .all(|e| e.by.as_deref().is_some_and(|b| b.starts_with("cli ("))));
    assert!(log.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    let all = store.pause_log(None, 10).await.unwrap();
    assert_eq!(all[0].service, "billing");
    assert_eq!(all[0].by.as_deref(), Some("<@U42>"));
    assert_eq!(all.len(), 4);
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
