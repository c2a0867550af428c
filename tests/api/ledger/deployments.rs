//! Deployments and verdicts.

use backstop::clock::now_ms;
use backstop::ledger::{Promotion, RollbackDone, StoreError, Verdict};
use serde_json::json;

use super::*;

crate::on_both!(
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
    marking_sets_the_verdict_and_reason_by_hand,
    marking_an_unknown_deployment_is_not_found,
    the_decision_finds_a_target_older_than_a_thousand_newer_deployments,
    deployments_are_listed_a_page_at_a_time,
);

/// 1,200 deployments, each live a minute (never baked), the oldest marked
/// good: the decision still finds it, reading two rows, not 1,200.
async fn the_decision_finds_a_target_older_than_a_thousand_newer_deployments(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    let ids: Vec<String> = (0..1200).map(|i| format!("dpl_{i:05}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    record(&store, &refs).await;
    let now = now_ms();
    for (i, id) in ids.iter().enumerate() {
        let at = now - (1200 - i as i64) * MIN;
        store.promote(SERVICE, id, at, BAKE).await.unwrap();
    }
    store
        .mark("dpl_00000", Verdict::Good, "the last release we trust")
        .await
        .unwrap();
    let h = store
        .history(SERVICE, &RunId::generate(), now_ms(), BAKE)
        .await
        .unwrap();
    let ids: Vec<&str> = h.deployments.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["dpl_01199", "dpl_00000"],
        "the live one and the target"
    );
    // The policy picks it as the target.
    let target = h
        .deployments
        .iter()
        .filter(|d| !d.live && backstop::policy::is_known_good(d, BAKE.as_millis() as i64))
        .max_by_key(|d| d.promoted_at_ms);
    assert_eq!(target.map(|d| d.id.as_str()), Some("dpl_00000"));
}

async fn deployments_are_listed_a_page_at_a_time(db: Db) {
    let Some((_db, store)) = fresh(db).await else {
        return;
    };
    record(&store, &["dpl_a", "dpl_b", "dpl_c", "dpl_d", "dpl_e"]).await;
    promote_in_order(
        &store,
        &[
            ("dpl_a", 50 * MIN),
            ("dpl_b", 40 * MIN),
            ("dpl_c", 30 * MIN),
            ("dpl_d", 20 * MIN),
            ("dpl_e", 10 * MIN),
        ],
    )
    .await;
    let page = |before: Option<String>| {
        let store = store.clone();
        async move {
            store
                .deployments_page(Some(SERVICE), before.as_deref(), 2)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        }
    };
    let first = page(None).await;
    assert_eq!(first, vec!["dpl_e", "dpl_d"]);
    let second = page(Some("dpl_d".into())).await;
    assert_eq!(second, vec!["dpl_c", "dpl_b"]);
    let last = page(Some("dpl_b".into())).await;
    assert_eq!(last, vec!["dpl_a"]);
}

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
    promote_in_order(&store, &[("dpl_a", 60 * MIN), ("dpl_b", 10 * MIN)]).await;

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
    let mut d = decision(Outcome::Escalate, None, None, &[]);
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
    let claim = decided_to_roll_back(&store, "alert-1").await;
    let run = &claim.run;

    store
        .complete_rollback(&RollbackDone {
            claim: &claim,
            service: SERVICE,
            from: "dpl_new",
            to: "dpl_old",
            output: &json!({}),
            attempt: None,
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
