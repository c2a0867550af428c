//! Paging and announcing, through the real app: every rollback and every
//! holding back reaches PagerDuty and Slack, and neither failing undoes a
//! rollback.

use backstop::clock::now_ms;
use backstop::ledger::RunDetail;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Db::Sqlite).await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Db::Postgres).await } )* }
    };
}

on_both!(rollback_pages_once_and_announces_once_with_the_facts);

async fn fire(app: &TestApp, body: &Value) -> String {
    let resp = app.post_sentry("metric_alert", &compact(body)).await;
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    app.engine.run_until_idle().await.unwrap();
    v["run"].as_str().unwrap().to_string()
}

async fn detail(app: &TestApp, run: &str) -> RunDetail {
    app.store
        .run_detail(&backstop::ledger::RunId(run.into()))
        .await
        .unwrap()
}

fn step(d: &RunDetail, name: StepName) -> &backstop::ledger::Step {
    d.step(name)
        .unwrap_or_else(|| panic!("no {name} step in {:?}", d.steps))
}

async fn pages(app: &TestApp) -> Vec<Value> {
    bodies(&app.pagerduty, "/v2/enqueue").await
}

async fn posts(app: &TestApp) -> Vec<Value> {
    bodies(&app.slack, "/chat.postMessage").await
}

async fn rollback_pages_once_and_announces_once_with_the_facts(db: Db) {
    let Some(app) = spawn_app(db).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let run = fire(&app, &crash_alert("201", now_ms() - 5 * MIN)).await;

    let pages = pages(&app).await;
    assert_eq!(pages.len(), 1, "exactly one PagerDuty event");
    let p = &pages[0];
    assert_eq!(p["routing_key"], ROUTING_KEY);
    assert_eq!(p["event_action"], "trigger");
    assert_eq!(p["dedup_key"], "backstop/storefront/dpl_new");
    assert_eq!(p["payload"]["severity"], "error");
    let summary = p["payload"]["summary"].as_str().unwrap();
    for part in [
        "storefront rolled back",
        "92.1%",
        "99.5%",
        "3f2c1a9",
        "dpl_old",
        "9be1c07",
    ] {
        assert!(summary.contains(part), "summary `{summary}` lacks `{part}`");
    }
    assert_eq!(p["payload"]["component"], "storefront");
    assert_eq!(p["payload"]["group"], PROJECT);
    let notice = &p["payload"]["custom_details"]["notice"];
    assert_eq!(notice["from"]["id"], "dpl_new");
    assert_eq!(notice["to"]["id"], "dpl_old");
    assert_eq!(notice["rate"], 92.1);
    assert_eq!(notice["threshold"], 99.5);
    assert!(notice["time_to_rollback_ms"].as_i64().unwrap() >= 0);
    let hrefs: Vec<&str> = p["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["href"].as_str())
        .collect();
    assert!(hrefs.iter().any(|h| h.contains("sentry.io")), "{hrefs:?}");
    assert!(hrefs.iter().any(|h| h.contains("dpl_old")), "{hrefs:?}");

    let posts = posts(&app).await;
    assert_eq!(posts.len(), 1, "exactly one Slack message");
    let m = &posts[0];
    assert_eq!(m["channel"], "#deploys");
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .contains("rolled back from release 3f2c1a9 to 9be1c07"),
        "{}",
        m["text"]
    );
    let card = m["blocks"].to_string();
    for part in [
        "3f2c1a9 → 9be1c07",
        "92.1%",
        "99.5%",
        "Time to rollback",
        "production unchanged",
        "Sentry alert",
    ] {
        assert!(card.contains(part), "card lacks `{part}`: {card}");
    }
    let d = detail(&app, &run).await;
    for name in [StepName::Rollback, StepName::Page, StepName::Announce] {
        assert_eq!(step(&d, name).status, StepStatus::Succeeded, "{name}");
    }
    assert_eq!(
        step(&d, StepName::Announce).output.as_ref().unwrap()["ts"],
        SLACK_TS
    );
    assert_eq!(d.run.status, RunStatus::Done);
}

#[tokio::test]
async fn slack_outage_neither_blocks_the_rollback_nor_the_page_and_announce_retries() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    // The first announce attempt (three client tries) meets a Slack outage.
    Mock::given(method("POST"))
        .and(path("/chat.postMessage"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&app.slack)
        .await;
    let run = fire(&app, &crash_alert("202", now_ms() - MIN)).await;
    assert_eq!(app.alias_writes().await.len(), 2, "the rollback happened");
    assert_eq!(pages(&app).await.len(), 1, "the page went out");
    let d = detail(&app, &run).await;
    let announce = step(&d, StepName::Announce);
    assert_eq!(announce.status, StepStatus::Succeeded);
    assert_eq!(announce.attempts, 2, "the announce step retried durably");
    let first = d
        .attempts
        .iter()
        .find(|a| a.step == StepName::Announce && a.attempt == 1)
        .unwrap();
    assert_eq!(first.outcome, Some(AttemptOutcome::Retryable));
    assert!(first
        .error
        .as_ref()
        .unwrap()
        .message
        .as_str()
        .contains("503"));
    assert_eq!(
        posts(&app).await.len(),
        4,
        "three failed tries, one success"
    );
}

#[tokio::test]
async fn pagerduty_400_is_recorded_as_fatal_and_slack_still_posts_and_says_so() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "status": "invalid event", "message": "Event object is invalid", "errors": ["Length of 'routing_key' is incorrect"]
        })))
        .with_priority(1)
        .mount(&app.pagerduty)
        .await;
    let run = fire(&app, &crash_alert("203", now_ms() - MIN)).await;
    let d = detail(&app, &run).await;
    let page = step(&d, StepName::Page);
    assert_eq!((page.status.as_str(), page.attempts), ("failed", 1));
    let message = page.error.as_ref().unwrap().message.as_str();
    assert!(
        message.contains("Event object is invalid") && message.contains("routing_key"),
        "{message}"
    );
    assert_eq!(pages(&app).await.len(), 1, "400 is not retried");
    let posts = posts(&app).await;
    assert_eq!(
        posts.len(),
        2,
        "Slack still posts the card, then says paging failed"
    );
    assert!(posts[0]["text"].as_str().unwrap().contains("rolled back"));
    assert_eq!(posts[1]["thread_ts"], SLACK_TS);
    let note = posts[1]["text"].as_str().unwrap();
    assert!(
        note.contains("PagerDuty could not be paged") && note.contains("Event object is invalid"),
        "{note}"
    );
    assert_eq!(step(&d, StepName::Followup).status, StepStatus::Succeeded);
    assert_eq!(step(&d, StepName::Rollback).status, StepStatus::Succeeded);
    assert!(app.store.deployment("dpl_old").await.unwrap().unwrap().live);
}

#[tokio::test]
async fn resolved_alert_replies_in_the_thread_and_resolves_the_page_when_configured() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| s.services[0].resolve_on_recovery = true).await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("204", now_ms() - MIN);
    fire(&app, &alert).await;
    let mut resolved = alert.clone();
    resolved["action"] = json!("resolved");
    resolved["data"]["metric_alert"]["status"] = json!(2);
    fire(&app, &resolved).await;

    let posts = posts(&app).await;
    assert_eq!(posts.len(), 2);
    assert!(posts[0].get("thread_ts").is_none());
    assert_eq!(
        posts[1]["thread_ts"], SLACK_TS,
        "the resolution goes into the rollback's thread"
    );
    assert!(posts[1]["text"].as_str().unwrap().contains("resolved"));
    let pages = pages(&app).await;
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[1]["event_action"], "resolve");
    assert_eq!(
        pages[1]["dedup_key"], pages[0]["dedup_key"],
        "the same incident is resolved"
    );
}

#[tokio::test]
async fn resolved_alert_leaves_the_page_open_by_default() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("205", now_ms() - MIN);
    fire(&app, &alert).await;
    let mut resolved = alert.clone();
    resolved["action"] = json!("resolved");
    fire(&app, &resolved).await;
    assert_eq!(
        pages(&app).await.len(),
        1,
        "no resolve event without resolve_on_recovery"
    );
    assert_eq!(posts(&app).await.len(), 2);
}

/// Each escalation reason pages a human (critical) and announces why.
#[tokio::test]
async fn every_escalation_reason_pages_and_announces() {
    // rule 5: nothing live in the ledger
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.vercel_serves("dpl_new").await;
    assert_escalation(&app, "301", "live release unknown").await;

    // rule 10: paused
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    app.store
        .set_paused("storefront", Some("release freeze"))
        .await
        .unwrap();
    assert_escalation(&app, "302", "paused by a person: release freeze").await;

    // rule 12: budget (no rollbacks allowed today)
    let Some(app) = spawn_app_with(Db::Sqlite, |s| s.services[0].max_rollbacks_per_day = 0).await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    assert_escalation(&app, "303", "budget spent").await;

    // rule 13: no known-good deployment before the live one
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let resp = app
        .post_vercel(&promoted("dpl_new", "3f2c1a9", now_ms() - 10 * MIN))
        .await;
    assert_eq!(resp.status(), 200);
    app.vercel_serves("dpl_new").await;
    assert_escalation(&app, "304", "no target").await;
}

#[tokio::test]
async fn second_rollback_within_the_cooldown_escalates_instead() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    fire(&app, &crash_alert("305", now_ms() - 5 * MIN)).await;
    // A fix ships, and it crashes too.
    app.vercel.reset().await;
    app.vercel_serves("dpl_fix").await;
    let resp = app
        .post_vercel(&promoted("dpl_fix", "c0ffee1", now_ms()))
        .await;
    assert_eq!(resp.status(), 200);
    app.pagerduty.reset().await;
    app.slack.reset().await;
    healthy_pagerduty(&app.pagerduty).await;
    healthy_slack(&app.slack).await;
    assert_escalation(&app, "306", "cooldown").await;
    assert!(app.alias_writes().await.is_empty(), "no cascading rollback");
}

async fn assert_escalation(app: &TestApp, id: &str, reason: &str) {
    let run = fire(app, &crash_alert(id, now_ms())).await;
    let d = detail(app, &run).await;
    assert_eq!(d.run.outcome, Some(Outcome::Escalate), "{:?}", d.run.reason);
    let pages = pages(app).await;
    assert_eq!(pages.len(), 1, "{reason}");
    assert_eq!(pages[0]["payload"]["severity"], "critical");
    let summary = pages[0]["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("not rolled back") && summary.contains(reason),
        "`{summary}` lacks `{reason}`"
    );
    let posts = posts(app).await;
    assert_eq!(posts.len(), 1);
    assert!(
        posts[0]["text"].as_str().unwrap().contains(reason),
        "{}",
        posts[0]["text"]
    );
}

#[tokio::test]
async fn failed_rollback_pages_critical_with_vercels_error() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.*/aliases$"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"code": "deployment_not_ready", "message": "The deployment is not ready"}})))
        .mount(&app.vercel)
        .await;
    fire(&app, &crash_alert("401", now_ms() - MIN)).await;
    let sent = pages(&app).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["payload"]["severity"], "critical");
    let summary = sent[0]["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("rollback failed — manual action needed")
            && summary.contains("The deployment is not ready"),
        "{summary}"
    );
    let posts = posts(&app).await;
    assert!(posts[0]["blocks"]
        .to_string()
        .contains("The deployment is not ready"));
    // Nothing moved: the next alert is neither "already handled" nor held
    // back by a cooldown. It tries again, fails again, and pages again.
    fire(&app, &crash_alert("407", now_ms() - MIN)).await;
    let run = &app.store.list_runs(1).await.unwrap()[0];
    assert_eq!(run.outcome, Some(Outcome::Rollback), "{:?}", run.reason);
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(pages(&app).await.len(), 2, "paged again");
}

/// Vercel's alias writes are rate limited for the next ten minutes, and
/// its 429 says when the window resets; with `engine.rate_limit_wait = 0s`
/// the rollback does not spend its deadline knocking (one write per
/// domain, no retry), and the page says at once how long Vercel asked to
/// wait.
#[tokio::test]
async fn a_rate_limit_resetting_past_the_deadline_fails_the_rollback_at_once_and_says_why() {
    // No hold past the deadline: the rollback fails rather than wait.
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.engine.rate_limit_wait = std::time::Duration::ZERO;
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    let reset = now_ms() / 1000 + 600;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.*/aliases$"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(json!({"error": {"code": "rate_limited", "message": "Rate limit exceeded", "limit": {"remaining": 0, "reset": reset, "total": 120}}}))
                .insert_header("x-ratelimit-limit", "120")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.to_string().as_str()),
        )
        .mount(&app.vercel)
        .await;
    fire(&app, &crash_alert("429", now_ms() - MIN)).await;
    assert_eq!(
        app.alias_writes().await.len(),
        DOMAINS.len(),
        "one write per domain: no retry before the window resets"
    );
    let sent = pages(&app).await;
    assert_eq!(sent.len(), 1);
    let summary = sent[0]["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("rollback failed — manual action needed")
            && summary.contains("Rate limit exceeded")
            && summary.contains("asked to wait")
            && summary.contains("past this step's deadline"),
        "{summary}"
    );
}

#[tokio::test]
async fn dry_run_announces_what_would_have_happened_without_paging() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.services[0].mode = backstop::config::Mode::DryRun
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    fire(&app, &crash_alert("402", now_ms() - MIN)).await;
    assert!(
        pages(&app).await.is_empty(),
        "page_on_dry_run is off by default"
    );
    let posts = posts(&app).await;
    assert_eq!(posts.len(), 1);
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap()
            .contains("would have rolled back 3f2c1a9 to 9be1c07"),
        "{}",
        posts[0]["text"]
    );
    assert!(app.alias_writes().await.is_empty());
}

#[tokio::test]
async fn skipped_critical_alert_gets_a_short_note_unless_turned_off() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    fire(&app, &crash_alert("403", now_ms() - 60 * MIN)).await;
    let notes = posts(&app).await;
    assert_eq!(notes.len(), 1);
    assert!(
        notes[0]["text"].as_str().unwrap().contains("stale"),
        "{}",
        notes[0]["text"]
    );
    assert!(pages(&app).await.is_empty(), "skips never page");

    let Some(app) = spawn_app_with(Db::Sqlite, |s| s.services[0].announce_skips = false).await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    fire(&app, &crash_alert("404", now_ms() - 60 * MIN)).await;
    assert!(posts(&app).await.is_empty());
}

#[tokio::test]
async fn service_template_overrides_the_summary_and_a_broken_one_falls_back() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.services[0].templates.insert(
            "pagerduty_summary".into(),
            "[{{ service | upper }}] {{ outcome }} {{ release_short }}".into(),
        );
        s.services[0]
            .templates
            .insert("slack_text".into(), "{{ missing.deeply.nested }}".into());
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let run = fire(&app, &crash_alert("405", now_ms() - MIN)).await;
    assert_eq!(
        pages(&app).await[0]["payload"]["summary"],
        "[STOREFRONT] rolled-back 3f2c1a9"
    );
    let posts = posts(&app).await;
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap()
            .contains("rolled back from release 3f2c1a9"),
        "default used"
    );
    let d = detail(&app, &run).await;
    let warning = step(&d, StepName::Announce).output.as_ref().unwrap()["template_warning"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        warning.contains("slack_text"),
        "the run's record says the template failed: {warning}"
    );
}

#[test]
fn a_template_that_does_not_parse_fails_at_start_naming_the_key() {
    let mut text = std::fs::read_to_string("examples/backstop.toml").unwrap();
    text = text.replace(
        "[templates]\n",
        "[templates]\nslack_headline = \"{% if %}\"\n",
    );
    let err = backstop::config::Settings::from_toml(&text, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("templates.slack_headline"), "{err}");
}

#[tokio::test]
async fn a_service_channel_overrides_the_default_channel() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.services[0].slack_channel = Some("#storefront-oncall".into())
    })
    .await
    else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    fire(&app, &crash_alert("406", now_ms() - MIN)).await;
    let posts = posts(&app).await;
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["channel"], "#storefront-oncall");
}

/// `resolve_on_recovery` in REST mode resolves the incident it opened.
#[tokio::test]
async fn resolve_on_recovery_in_rest_mode_resolves_the_incident() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.services[0].resolve_on_recovery = true;
        s.pagerduty.mode = backstop::config::PagerDutyMode::Rest;
        s.pagerduty.routing_key = None;
        s.pagerduty.api_token = Some(secrecy::SecretString::from("pd-rest-token-1"));
        s.pagerduty.from = Some("oncall@example.com".into());
        s.pagerduty.service_id = Some("PWIXJZS".into());
    })
    .await
    else {
        return;
    };
    Mock::given(method("POST"))
        .and(path("/incidents"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"incident": {"id": "PT4KHLK", "type": "incident", "html_url": "https://acme.pagerduty.com/incidents/PT4KHLK", "incident_key": "k", "status": "triggered"}})))
        .mount(&app.pagerduty)
        .await;
    Mock::given(method("PUT"))
        .and(path("/incidents/PT4KHLK"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"incident": {"id": "PT4KHLK", "type": "incident", "status": "resolved"}}),
        ))
        .mount(&app.pagerduty)
        .await;
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let alert = crash_alert("rest-1", now_ms() - MIN);
    app.post_sentry("metric_alert", &compact(&alert)).await;
    app.engine.run_until_idle().await.unwrap();
    let mut resolved = alert.clone();
    resolved["action"] = json!("resolved");
    app.post_sentry("metric_alert", &compact(&resolved)).await;
    app.engine.run_until_idle().await.unwrap();
    let puts = bodies(&app.pagerduty, "/incidents/PT4KHLK").await;
    assert_eq!(puts.len(), 1, "the incident was resolved once");
    assert_eq!(puts[0]["incident"]["status"], "resolved");
    assert_eq!(puts[0]["incident"]["type"], "incident_reference");
    let last = &app.store.list_runs(1).await.unwrap()[0];
    assert_eq!(last.status, RunStatus::Done, "{last:?}");
}
