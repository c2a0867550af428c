//! Situations where a wrong word or a wrong target hurts: what cards and
//! pages call each deployment, a late Vercel webhook, and what counts as
//! "the last automatic rollback".

use std::sync::atomic::Ordering;

use backstop::clock::now_ms;
use backstop::ledger::Verdict;
use serde_json::Value;

use crate::helpers::*;

crate::on_both!(
    link_labels_follow_the_outcome_in_slack_and_pagerduty,
    link_labels_of_a_dry_run_say_would,
    a_person_moving_production_is_still_only_noted_after_the_resync,
    a_late_promotion_webhook_neither_taints_the_good_release_nor_silences_the_alert,
    a_failed_rollback_is_not_the_last_automatic_rollback,
);

async fn fire(app: &TestApp, id: &str, started_ms: i64) -> RunDetailOf {
    let resp = app
        .post_sentry("metric_alert", &compact(&crash_alert(id, started_ms)))
        .await;
    assert_eq!(resp.status(), 202);
    let run: Value = resp.json().await.unwrap();
    app.engine.run_until_idle().await.unwrap();
    let run = backstop::ledger::RunId(run["run"].as_str().unwrap().into());
    app.store.run_detail(&run).await.unwrap()
}

type RunDetailOf = backstop::ledger::RunDetail;

/// The link texts of the last Slack card and the last PagerDuty event.
async fn labels(app: &TestApp) -> (String, Vec<String>) {
    let posts = bodies(&app.slack, "/chat.postMessage").await;
    let card = posts.last().expect("a card").to_string();
    let pages = bodies(&app.pagerduty, "/v2/enqueue").await;
    let links = pages
        .last()
        .map(|p| {
            p["links"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| l["text"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    (card, links)
}

async fn link_labels_follow_the_outcome_in_slack_and_pagerduty(db: Db) {
    // A failed rollback: production is still on the crashing deployment.
    let Some(app) = spawn_app_with(db, |s| {
        s.engine.rollback_deadline = std::time::Duration::from_secs(1)
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    let now = now_ms();
    let vercel = app
        .stateful_vercel(
            "dpl_new",
            &[
                ("dpl_old", "9be1c07", now - 180 * MIN),
                ("dpl_new", "3f2c1a9", now - 10 * MIN),
            ],
        )
        .await;
    vercel.writes_fail.store(true, Ordering::SeqCst);
    let d = fire(&app, "label-1", now - MIN).await;
    assert_eq!(d.run.outcome, Some(Outcome::Rollback));
    assert_eq!(vercel.serving(), ["dpl_new", "dpl_new"], "nothing moved");
    let (card, page) = labels(&app).await;
    for (what, text) in [("card", card.clone()), ("page", page.join(" · "))] {
        assert!(
            text.contains("Live (crashing, not rolled back): dpl_new")
                && text.contains("Known-good target (not restored): dpl_old"),
            "{what} after a failed rollback: {text}"
        );
        assert!(
            !text.contains("Restored") && !text.contains("Rolled back from"),
            "{what} says production moved though it did not: {text}"
        );
    }
    assert!(
        card.contains("3f2c1a9 (live, crashing)"),
        "the release field does not claim a move: {card}"
    );

    // Vercel recovers: the rollback that does move says so.
    vercel.writes_fail.store(false, Ordering::SeqCst);
    fire(&app, "label-2", now_ms() - MIN).await;
    assert_eq!(vercel.serving(), ["dpl_old", "dpl_old"]);
    let (card, page) = labels(&app).await;
    for text in [card.clone(), page.join(" · ")] {
        assert!(
            text.contains("Rolled back from dpl_new") && text.contains("Restored dpl_old"),
            "{text}"
        );
    }
    assert!(card.contains("3f2c1a9 → 9be1c07"), "{card}");

    // Within the cooldown the next alert escalates: nothing was restored.
    fire(&app, "label-3", now_ms()).await;
    let (card, page) = labels(&app).await;
    for text in [card, page.join(" · ")] {
        assert!(text.contains("Live (crashing): dpl_old"), "{text}");
        assert!(!text.contains("Restored"), "{text}");
    }
}

async fn link_labels_of_a_dry_run_say_would(db: Db) {
    let Some(app) = spawn_app_with(db, |s| {
        s.services[0].mode = backstop::config::Mode::DryRun;
        s.services[0].page_on_dry_run = true;
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    fire(&app, "dry-1", now_ms() - MIN).await;
    let (card, page) = labels(&app).await;
    for text in [card, page.join(" · ")] {
        assert!(
            text.contains("Would roll back from dpl_new") && text.contains("Would restore dpl_old"),
            "{text}"
        );
        assert!(!text.contains("Restored"), "{text}");
    }
}

/// v1 and v2 are in the ledger, v2 live for an hour; v3 went live on Vercel
/// but its `deployment.promoted` webhook is late. A crash alert about v3
/// arrives.
async fn a_late_promotion_webhook_neither_taints_the_good_release_nor_silences_the_alert(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    let now = now_ms();
    for (id, sha, at) in [
        ("dpl_v1", "aaa1111", now - 300 * MIN),
        ("dpl_v2", "bbb2222", now - 70 * MIN),
    ] {
        assert_eq!(app.post_vercel(&promoted(id, sha, at)).await.status(), 200);
    }
    let vercel = app
        .stateful_vercel(
            "dpl_v3",
            &[
                ("dpl_v1", "aaa1111", now - 300 * MIN),
                ("dpl_v2", "bbb2222", now - 70 * MIN),
                ("dpl_v3", "ccc3333", now - 10 * MIN),
            ],
        )
        .await;
    let d = fire(&app, "late-1", now - 5 * MIN).await;

    // The resync learned that v3 is live, and the run decided again on it:
    // a fresh critical alert on the live release is rolled back, not noted.
    assert_eq!(d.run.outcome, Some(Outcome::Rollback), "{:?}", d.run.reason);
    assert_eq!(d.run.rollback_from.as_deref(), Some("dpl_v3"));
    assert_eq!(d.run.rollback_to.as_deref(), Some("dpl_v2"));
    assert_eq!(vercel.serving(), ["dpl_v2", "dpl_v2"]);
    let pages = bodies(&app.pagerduty, "/v2/enqueue").await;
    assert_eq!(pages.len(), 1, "the on-call engineer is paged");
    let v2 = app.store.deployment("dpl_v2").await.unwrap().unwrap();
    assert_eq!(v2.alerted_at_ms, None, "v2 never crashed while live");
    assert!(v2.live);
    assert_eq!(v2.verdict, Verdict::Good);
    let v3 = app.store.deployment("dpl_v3").await.unwrap().unwrap();
    assert_eq!(v3.verdict, Verdict::Bad);
    assert!(v3.alerted_at_ms.is_some(), "v3 is the one that crashed");
    let steps: Vec<_> = d.steps.iter().map(|s| (s.name, s.status)).collect();
    assert!(
        steps.contains(&(StepName::Resync, StepStatus::Succeeded))
            && steps.contains(&(StepName::Rollback, StepStatus::Succeeded)),
        "{steps:?}"
    );
}

/// A person rolled back by hand (Vercel serves the older v1, the ledger
/// still says v2): after the resync the alert is stale, and is only noted.
async fn a_person_moving_production_is_still_only_noted_after_the_resync(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    let now = now_ms();
    for (id, sha, at) in [
        ("dpl_v1", "aaa1111", now - 300 * MIN),
        ("dpl_v2", "bbb2222", now - 70 * MIN),
    ] {
        assert_eq!(app.post_vercel(&promoted(id, sha, at)).await.status(), 200);
    }
    let vercel = app
        .stateful_vercel(
            "dpl_v1",
            &[
                ("dpl_v1", "aaa1111", now - 300 * MIN),
                ("dpl_v2", "bbb2222", now - 70 * MIN),
            ],
        )
        .await;
    let d = fire(&app, "moved-1", now - 5 * MIN).await;
    assert_eq!(d.run.outcome, Some(Outcome::Skip), "{:?}", d.run.reason);
    let reason = d.run.reason.as_deref().unwrap();
    assert!(reason.starts_with("production already changed"), "{reason}");
    let v2 = app.store.deployment("dpl_v2").await.unwrap().unwrap();
    assert!(
        v2.alerted_at_ms.is_some(),
        "v2 was serving when the alert started"
    );
    let v1 = app.store.deployment("dpl_v1").await.unwrap().unwrap();
    assert!(v1.live && v1.alerted_at_ms.is_none());
    assert_eq!(
        vercel.serving(),
        ["dpl_v1", "dpl_v1"],
        "production stays where the person put it"
    );
    assert!(bodies(&app.pagerduty, "/v2/enqueue").await.is_empty());
    assert!(app.alias_writes().await.is_empty());
}

async fn a_failed_rollback_is_not_the_last_automatic_rollback(db: Db) {
    let Some(app) = spawn_app_with(db, |s| {
        s.engine.rollback_deadline = std::time::Duration::from_secs(1)
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    let now = now_ms();
    let vercel = app
        .stateful_vercel(
            "dpl_new",
            &[
                ("dpl_old", "9be1c07", now - 180 * MIN),
                ("dpl_new", "3f2c1a9", now - 10 * MIN),
            ],
        )
        .await;
    vercel.writes_fail.store(true, Ordering::SeqCst);
    let first = fire(&app, "down-1", now - MIN).await;
    assert_eq!(
        first.step(StepName::Rollback).unwrap().status,
        StepStatus::Failed
    );
    // Vercel recovers; a new incident about the same crashing release.
    vercel.writes_fail.store(false, Ordering::SeqCst);
    let second = fire(&app, "down-2", now_ms() - MIN).await;
    assert_eq!(
        second.run.outcome,
        Some(Outcome::Rollback),
        "nothing moved, so no cooldown holds back: {:?}",
        second.run.reason
    );
    assert_eq!(vercel.serving(), ["dpl_old", "dpl_old"]);
    let h = app
        .store
        .history(
            "storefront",
            &backstop::ledger::RunId::generate(),
            now_ms(),
            std::time::Duration::from_secs(1800),
        )
        .await
        .unwrap();
    assert_eq!(h.rollbacks_last_day, 1, "only the verified rollback counts");
}
