//! Provider faults on the stateful simulator: a flaky world still heals,
//! and a provider that stays down ends the run failed, with its words, and
//! someone is told.

use std::time::Duration;

use backstop::clock::now_ms;
use backstop::ledger::{NewDeployment, RunId};
use backstop::sim::{Faults, Provider};
use serde_json::Value;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

fn flaky() -> Faults {
    // 30% of calls fail: 5xx, 429 with the provider's headers, hangs past
    // the client timeout, and dropped connections.
    Faults {
        error_rate: 0.10,
        rate_limit_rate: 0.10,
        timeout_rate: 0.05,
        hang_ms: 1_000,
        drop_rate: 0.05,
        latency_ms: 0,
    }
}

fn quick_timeouts(s: &mut backstop::config::Settings) {
    s.vercel.timeout = Duration::from_millis(300);
    s.pagerduty.timeout = Duration::from_millis(300);
    s.slack.timeout = Duration::from_millis(300);
}

/// A world where `provider` stays down: every call to it fails with a 5xx,
/// and deadlines are short. Returns the app and its one finished run.
async fn with_provider_down(
    provider: Provider,
    id: &str,
) -> Option<(SimApp, backstop::ledger::RunDetail)> {
    let app = spawn_on_sim(Db::Sqlite, |s| {
        quick_timeouts(s);
        s.engine.rollback_deadline = Duration::from_millis(1500);
        s.engine.step_deadline = Duration::from_millis(1500);
    })
    .await?;
    app.sim.sim.set_faults(
        provider,
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    );
    assert_eq!(app.alert(id, 0).await, 202);
    app.until_runs_finish(Duration::from_secs(30)).await;
    let run = app.store.list_runs(1).await.unwrap().remove(0);
    assert_eq!(run.status, RunStatus::Failed, "the run ends failed");
    let detail = app.store.run_detail(&run.id).await.unwrap();
    Some((app, detail))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_thirty_percent_of_provider_calls_failing_every_run_completes() {
    let Some(app) = spawn_on_sim(Db::Sqlite, |s| {
        quick_timeouts(s);
        s.services[0].cooldown = Duration::ZERO;
        s.services[0].max_rollbacks_per_day = 100;
    })
    .await
    else {
        return;
    };
    for p in [Provider::Vercel, Provider::Pagerduty, Provider::Slack] {
        app.sim.sim.set_faults(p, flaky());
    }
    for round in 0..3 {
        if round > 0 {
            // A new release goes live (and crashes too).
            let id = format!("dpl_fix{round}");
            let at = now_ms();
            app.sim
                .sim
                .world()
                .add_deployment("prj_storefront", &id, &format!("f1x{round}"), at);
            app.sim.sim.world().serve("prj_storefront", &id);
            let d = NewDeployment {
                id: id.clone(),
                service: "storefront".into(),
                release: Some(format!("f1x{round}")),
                ..Default::default()
            };
            app.store.record_deployment(&d).await.unwrap();
            app.store
                .promote("storefront", &id, at, Duration::from_secs(1800))
                .await
                .unwrap();
        }
        assert_eq!(app.alert(&format!("90{round}"), 0).await, 202);
        app.until_runs_finish(Duration::from_secs(60)).await;
        assert_eq!(
            app.serving(),
            vec![Some(SIM_GOOD.to_string()); 2],
            "round {round}: production healed"
        );
    }
    let runs = app.store.list_runs(10).await.unwrap();
    assert_eq!(runs.len(), 3);
    for r in &runs {
        assert_eq!(
            (r.status, r.outcome),
            (RunStatus::Done, Some(Outcome::Rollback)),
            "{:?}",
            r.reason
        );
    }
    let w = app.sim.sim.world();
    assert_eq!(w.incidents.len(), 3, "one incident per rollback");
    let cards = w.messages.iter().filter(|m| m.thread_ts.is_none()).count();
    assert_eq!(cards, 3, "one card per rollback, no duplicates");
}

#[tokio::test]
async fn vercel_that_stays_down_fails_the_run_with_its_error_and_pages() {
    let Some((app, detail)) = with_provider_down(Provider::Vercel, "910").await else {
        return;
    };
    let decide = detail
        .steps
        .iter()
        .find(|s| s.name == StepName::Decide)
        .unwrap();
    let message = decide.error.as_ref().unwrap().message.as_str().to_string();
    assert!(
        message.contains("An unexpected internal error occurred"),
        "Vercel's last words are kept: {message}"
    );
    assert_eq!(app.serving(), vec![Some(SIM_LIVE.to_string()); 2]);
    let w = app.sim.sim.world();
    let incident = w.incidents.values().next().expect("the failure was paged");
    assert_eq!(incident.severity, "critical");
    assert!(
        incident.summary.contains("not rolled back"),
        "{}",
        incident.summary
    );
}

#[tokio::test]
async fn pagerduty_that_stays_down_is_announced_in_slack() {
    let Some((app, detail)) = with_provider_down(Provider::Pagerduty, "911").await else {
        return;
    };
    assert_eq!(
        app.serving(),
        vec![Some(SIM_GOOD.to_string()); 2],
        "the rollback is not blocked"
    );
    let page = detail
        .steps
        .iter()
        .find(|s| s.name == StepName::Page)
        .unwrap();
    assert_eq!(page.status, StepStatus::Failed);
    let w = app.sim.sim.world();
    assert_eq!(w.messages.len(), 2);
    assert!(w.messages[1].thread_ts.is_some());
    assert!(
        w.messages[1].text.contains("PagerDuty could not be paged"),
        "{}",
        w.messages[1].text
    );
}

#[tokio::test]
async fn slack_that_stays_down_fails_the_run_after_the_rollback_and_the_page() {
    let Some((app, detail)) = with_provider_down(Provider::Slack, "912").await else {
        return;
    };
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    let announce = detail
        .steps
        .iter()
        .find(|s| s.name == StepName::Announce)
        .unwrap();
    assert!(announce
        .error
        .as_ref()
        .unwrap()
        .message
        .as_str()
        .contains("internal_error"));
    assert_eq!(app.sim.sim.world().incidents.len(), 1, "the page went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_step_keeps_its_lease_so_no_other_instance_takes_the_run() {
    let Some(app) = spawn_on_sim(Db::Sqlite, |s| s.engine.lease = Duration::from_millis(300)).await
    else {
        return;
    };
    // Slack answers after 1.5 s: five leases pass inside one attempt.
    app.sim.sim.set_faults(
        Provider::Slack,
        Faults {
            latency_ms: 1_500,
            ..Faults::default()
        },
    );
    assert_eq!(app.alert("920", 0).await, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.store.count_unfinished_runs().await.unwrap() > 0 {
        let stolen = app
            .store
            .claim_run("another-instance", Duration::from_secs(30))
            .await
            .unwrap();
        assert!(stolen.is_none(), "the heartbeat keeps the run claimed");
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.store.list_runs(1).await.unwrap()[0].status,
        RunStatus::Done
    );
    assert_eq!(app.sim.sim.world().messages.len(), 1);
}

/// A Vercel alias write that hangs: the rollback attempt stops at the
/// step's deadline instead of running its client retries past it.
#[tokio::test]
async fn a_hanging_alias_write_fails_the_rollback_at_its_deadline_and_pages() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.engine.rollback_deadline = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.*/aliases$"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&app.vercel)
        .await;
    let resp = app
        .post_sentry(
            "metric_alert",
            &compact(&crash_alert("hang-1", now_ms() - MIN)),
        )
        .await;
    assert_eq!(resp.status(), 202);
    let run: Value = resp.json().await.unwrap();
    app.engine.run_until_idle().await.unwrap();
    let d = app
        .store
        .run_detail(&RunId(run["run"].as_str().unwrap().into()))
        .await
        .unwrap();
    let rollback = d
        .steps
        .iter()
        .find(|s| s.name == StepName::Rollback)
        .unwrap();
    assert_eq!(rollback.status, StepStatus::Failed);
    assert_eq!(rollback.error.as_ref().unwrap().code, "deadline_exceeded");
    let attempt = d
        .attempts
        .iter()
        .find(|a| a.step == StepName::Rollback)
        .unwrap();
    let took = attempt.finished_at_ms.unwrap() - rollback.started_at_ms.unwrap();
    assert!(
        took <= 3_000,
        "the attempt ran {took} ms, past the 2 s deadline"
    );
    let pages = bodies(&app.pagerduty, "/v2/enqueue").await;
    assert!(pages[0]["payload"]["summary"]
        .as_str()
        .unwrap()
        .contains("rollback failed"));
}
