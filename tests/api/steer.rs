//! Steering from where people are: the card's Undo, Hold and Resume
//! buttons (Slack interactivity, signed like Slack signs) and PagerDuty's
//! acks in the card's thread (Webhooks v3, signed like PagerDuty signs).

use std::time::{Duration, Instant};

use backstop::config::Settings;
use backstop::ingest::slack::ClickAction;
use backstop::ledger::{RunDetail, RunId, RunStatus, StepName, StepStatus, Verdict};
use backstop::sim::sender::{self, Click};
use backstop::sim::{Faults, Provider};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

const SIGNING: &str = "sim-slack-signing-secret";
const PD_SECRET: &str = "sim-pagerduty-webhook-secret";

/// The simulator app with Slack interactivity and PagerDuty webhooks on.
async fn steerable(db: Db, tweak: impl FnOnce(&mut Settings)) -> Option<SimApp> {
    spawn_on_sim(db, |s| {
        s.slack.signing_secret = Some(SecretString::from(SIGNING));
        s.pagerduty.webhook_secret = Some(SecretString::from(PD_SECRET));
        tweak(s);
    })
    .await
}

/// Sends the first alert and waits for its run to finish: the rollback.
async fn rolled_back(app: &SimApp) -> RunDetail {
    assert_eq!(app.alert("s1", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(10)).await;
    let run = app.store.list_runs(1).await.unwrap().remove(0);
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    app.store.run_detail(&run.id).await.unwrap()
}

fn click(app: &SimApp, run: &RunId, action: ClickAction, user: &str) -> Click {
    Click {
        run: run.0.clone(),
        action,
        user_id: user.into(),
        user_name: user.to_lowercase(),
        response_url: Some(format!("{}/slack/actions/{user}", app.sim.base)),
    }
}

async fn press(app: &SimApp, address: &str, c: &Click) -> u16 {
    let url = format!("{address}/webhooks/slack/interactions");
    c.deliver(&app.http, &url, SIGNING).await.unwrap()
}

/// Waits (bounded) until `step` of `run` is no longer pending.
async fn step_done(app: &SimApp, run: &RunId, step: StepName) -> RunDetail {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = app.store.run_detail(run).await.unwrap();
        let finished = d
            .step(step)
            .is_some_and(|s| s.status != StepStatus::Pending);
        let settled = matches!(d.run.status, RunStatus::Done | RunStatus::Failed);
        if finished && settled {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{step} not finished: {:?}",
            d.steps
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the presser alone was told, in order.
fn told(app: &SimApp) -> Vec<String> {
    app.sim
        .sim
        .world()
        .responses
        .iter()
        .map(|r| r["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn action_ids(blocks: &Value) -> Vec<String> {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .map(|e| e["action_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn undo_restores_production_holds_the_service_and_a_later_alert_escalates(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let d = rolled_back(&app).await;
    let run = d.run.id.clone();
    let card = app.sim.sim.world().messages[0].clone();
    assert_eq!(action_ids(&card.blocks), ["backstop_undo", "backstop_hold"]);
    let undo = card
        .blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap()["elements"][0]
        .clone();
    assert_eq!(undo["value"], run.0);
    assert_eq!(undo["style"], "danger");
    let confirm = undo["confirm"]["text"]["text"].as_str().unwrap();
    assert!(
        confirm.contains(SIM_LIVE) && confirm.contains(SIM_GOOD),
        "the confirm dialog names both deployments: {confirm}"
    );

    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Undo, "U1")
        )
        .await,
        200
    );
    let d = step_done(&app, &run, StepName::Undo).await;
    let out = d.step(StepName::Undo).unwrap().output.clone().unwrap();
    assert_eq!(out["undone"], true, "{out}");
    assert_eq!(
        app.serving(),
        vec![Some(SIM_LIVE.to_string()); 2],
        "production is back"
    );
    let live = app.store.deployments(Some("storefront")).await.unwrap();
    let back = live.iter().find(|x| x.id == SIM_LIVE).unwrap();
    assert!(back.live);
    assert_eq!(back.verdict, Verdict::Overridden);
    let pause = app
        .store
        .pause_of("storefront")
        .await
        .unwrap()
        .expect("held");
    assert_eq!(pause.by.as_deref(), Some("<@U1>"));
    {
        let w = app.sim.sim.world();
        let card = &w.messages[0];
        assert_eq!(
            action_ids(&card.blocks),
            ["backstop_resume"],
            "undo can no longer be pressed"
        );
        let text = card.blocks.to_string();
        assert!(text.contains("<@U1> undid the rollback at "), "{text}");
        assert!(
            w.messages
                .iter()
                .any(|m| m.thread_ts.as_deref() == Some(card.ts.as_str())
                    && m.text.contains("undid the rollback")),
            "said in the thread"
        );
    }
    // The alert still firing about the restored-then-undone deployment
    // cannot roll it back again: the service is held.
    let writes = app.sim.sim.world().alias_writes.len();
    assert_eq!(app.alert("s2", 0).await, 202);
    app.until_runs_finish(Duration::from_secs(10)).await;
    let next = app.store.list_runs(1).await.unwrap().remove(0);
    assert_eq!(next.outcome, Some(backstop::ledger::Outcome::Escalate));
    assert!(
        next.reason
            .as_deref()
            .unwrap_or("")
            .contains("held after <@U1> undid the rollback"),
        "{:?}",
        next.reason
    );
    assert_eq!(app.sim.sim.world().alias_writes.len(), writes);
}

async fn a_double_click_and_a_retry_act_once(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let c = click(&app, &run, ClickAction::Undo, "U1");
    let (a, b) = tokio::join!(press(&app, &app.address, &c), press(&app, &app.address, &c));
    assert_eq!((a, b), (200, 200));
    step_done(&app, &run, StepName::Undo).await;
    // Slack retrying the same press later.
    assert_eq!(press(&app, &app.address, &c).await, 200);
    assert_eq!(
        app.sim.sim.world().alias_writes.len(),
        4,
        "two domains rolled back, two undone, nothing twice"
    );
    let told = told(&app);
    assert!(
        told.iter()
            .filter(|t| t.contains("already asked for"))
            .count()
            >= 2,
        "{told:?}"
    );
}

async fn a_person_not_allowed_is_refused_and_a_group_member_is_not(db: Db) {
    let Some(app) = steerable(db, |s| {
        s.slack.allowed_users = vec!["UBOSS".into()];
        s.slack.allowed_usergroups = vec!["S0ONCALL".into()];
    })
    .await
    else {
        return;
    };
    app.sim
        .sim
        .world()
        .usergroups
        .insert("S0ONCALL".into(), vec!["UONCALL".into()]);
    let run = rolled_back(&app).await.run.id;
    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Hold, "UNOBODY")
        )
        .await,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while told(&app).is_empty() {
        assert!(Instant::now() < deadline, "the presser was not told");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(told(&app)[0].contains("not allowed"), "{:?}", told(&app));
    let d = app.store.run_detail(&run).await.unwrap();
    assert!(d.step(StepName::Hold).is_none(), "nothing was asked");
    assert!(app.store.pause_of("storefront").await.unwrap().is_none());
    // A member of the on-call user group may.
    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Hold, "UONCALL")
        )
        .await,
        200
    );
    step_done(&app, &run, StepName::Hold).await;
    let pause = app
        .store
        .pause_of("storefront")
        .await
        .unwrap()
        .expect("held");
    assert_eq!(pause.by.as_deref(), Some("<@UONCALL>"));
}

async fn undo_after_production_moved_is_refused(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    // A person promoted something else meanwhile.
    app.sim
        .sim
        .world()
        .serve(backstop::sim::config::PROJECT, "dpl_a1b2c3dgood");
    let writes = app.sim.sim.world().alias_writes.len();
    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Undo, "U1")
        )
        .await,
        200
    );
    let d = step_done(&app, &run, StepName::Undo).await;
    let out = d.step(StepName::Undo).unwrap().output.clone().unwrap();
    assert!(
        out["refused"]
            .as_str()
            .unwrap()
            .starts_with("production has moved since the rollback"),
        "{out}"
    );
    assert_eq!(
        app.sim.sim.world().alias_writes.len(),
        writes,
        "nothing moved"
    );
    assert!(app.store.pause_of("storefront").await.unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !told(&app)
        .iter()
        .any(|t| t.contains("production has moved"))
    {
        assert!(Instant::now() < deadline, "not told: {:?}", told(&app));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hold_then_resume_from_the_card(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Hold, "U1")
        )
        .await,
        200
    );
    step_done(&app, &run, StepName::Hold).await;
    assert!(app.store.pause_of("storefront").await.unwrap().is_some());
    assert_eq!(
        action_ids(&app.sim.sim.world().messages[0].blocks),
        ["backstop_undo", "backstop_resume"]
    );
    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Resume, "U2")
        )
        .await,
        200
    );
    step_done(&app, &run, StepName::Resume).await;
    assert!(app.store.pause_of("storefront").await.unwrap().is_none());
    let card = app.sim.sim.world().messages[0].blocks.to_string();
    assert!(card.contains("<@U2> resumed storefront"), "{card}");
    assert!(action_ids(&app.sim.sim.world().messages[0].blocks).is_empty());
}

async fn forged_stale_and_malformed_presses_change_nothing(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let before = app.store.run_detail(&run).await.unwrap();
    let url = format!("{}/webhooks/slack/interactions", app.address);
    let c = click(&app, &run, ClickAction::Undo, "U1");
    // Signed with another secret.
    assert_eq!(
        c.deliver(&app.http, &url, "not-the-secret").await.unwrap(),
        401
    );
    // Replayed: a genuine signature from ten minutes ago.
    let body = c.body();
    let old = backstop::clock::now_ms() / 1000 - 600;
    let sig = backstop::ingest::slack::sign(SIGNING, old, body.as_bytes());
    let stale = app
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", old.to_string())
        .header("x-slack-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    // Genuinely signed garbage.
    let now = backstop::clock::now_ms() / 1000;
    let junk = "payload=%7Bnot+json";
    let bad = app
        .http
        .post(&url)
        .header("x-slack-request-timestamp", now.to_string())
        .header(
            "x-slack-signature",
            backstop::ingest::slack::sign(SIGNING, now, junk.as_bytes()),
        )
        .body(junk)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // No signature at all.
    let none = app.http.post(&url).body(c.body()).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let d = app.store.run_detail(&run).await.unwrap();
    assert_eq!(d.steps.len(), before.steps.len(), "no step was added");
    assert_eq!(d.notes, before.notes, "nothing noted");
    assert!(told(&app).is_empty());
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
}

async fn an_ack_is_threaded_once_with_the_time_since_the_alert(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let key = app.sim.sim.world().incidents.keys().next().unwrap().clone();
    let url = format!("{}/webhooks/pagerduty", app.address);
    let ack = sender::pagerduty_event("incident.acknowledged", &key, "PINC1", "Ana Ops");
    let send = |id: &'static str| {
        let (app, url, ack) = (&app, url.clone(), ack.clone());
        async move {
            sender::deliver_pagerduty(&app.http, &url, PD_SECRET, &ack, id)
                .await
                .unwrap()
        }
    };
    assert_eq!(send("wh-1").await, 202);
    // Redelivered (same X-Webhook-Id), then a second ack of the same incident.
    assert_eq!(send("wh-1").await, 200);
    assert_eq!(send("wh-2").await, 202);
    // Deliveries racing each other (retries, or one to each instance).
    let racing =
        futures_util::future::join_all(["wh-3", "wh-4", "wh-5", "wh-6", "wh-7", "wh-8"].map(send))
            .await;
    assert!(racing.iter().all(|s| *s == 202), "{racing:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let acks = || {
        app.sim
            .sim
            .world()
            .messages
            .iter()
            .filter(|m| m.text.contains("acknowledged by Ana Ops"))
            .map(|m| (m.thread_ts.clone(), m.text.clone()))
            .collect::<Vec<_>>()
    };
    while acks().is_empty() {
        assert!(Instant::now() < deadline, "the ack was not threaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let card_ts = app.sim.sim.world().messages[0].ts.clone();
    let d = app.store.run_detail(&run).await.unwrap();
    let notes: Vec<_> = d
        .notes
        .iter()
        .filter(|n| n.kind == "pagerduty:incident.acknowledged")
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", d.notes);
    assert!(
        notes[0].text.contains("after the alert"),
        "{}",
        notes[0].text
    );
    let found = acks();
    assert_eq!(found.len(), 1, "threaded once: {found:?}");
    assert_eq!(found[0].0.as_deref(), Some(card_ts.as_str()));
    assert!(backstop::cli::show::explain(&d).contains("acknowledged by Ana Ops"));
}

async fn pagerduty_webhooks_are_verified_with_any_of_the_rotated_signatures(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let key = app.sim.sim.world().incidents.keys().next().unwrap().clone();
    let url = format!("{}/webhooks/pagerduty", app.address);
    let body = serde_json::to_vec(&sender::pagerduty_event(
        "incident.acknowledged",
        &key,
        "PINC1",
        "Ana Ops",
    ))
    .unwrap();
    let post = |sig: String| {
        let (app, url, body) = (&app, url.clone(), body.clone());
        async move {
            app.http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-webhook-id", "rot-1")
                .header("x-pagerduty-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let forged = backstop::ingest::pagerduty::sign("old-secret", &body);
    let before = app.store.run_detail(&run).await.unwrap().notes;
    assert_eq!(post(forged.clone()).await, 401, "a wrong secret alone");
    assert_eq!(app.store.run_detail(&run).await.unwrap().notes, before);
    let good = backstop::ingest::pagerduty::sign(PD_SECRET, &body);
    assert_eq!(
        post(format!("{forged},{good}")).await,
        202,
        "rotation: one of two matches"
    );
}

async fn an_undo_refused_while_vercel_was_unreadable_can_be_pressed_again(db: Db) {
    let Some(app) = steerable(db, |s| {
        s.vercel.timeout = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let down = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    app.sim.sim.set_faults(Provider::Vercel, down);
    let first = click(&app, &run, ClickAction::Undo, "U1");
    assert_eq!(press(&app, &app.address, &first).await, 200);
    let d = step_done(&app, &run, StepName::Undo).await;
    let out = d.step(StepName::Undo).unwrap().output.clone().unwrap();
    assert!(
        out["refused"]
            .as_str()
            .unwrap()
            .starts_with("cannot read production from Vercel"),
        "{out}"
    );
    assert_eq!(
        app.serving(),
        vec![Some(SIM_GOOD.to_string()); 2],
        "nothing moved"
    );
    // Vercel is back: the refusal changed nothing, so pressing again checks
    // again (it is not "already asked for").
    app.sim.sim.set_faults(Provider::Vercel, Faults::default());
    let again = click(&app, &run, ClickAction::Undo, "U2");
    assert_eq!(press(&app, &app.address, &again).await, 200);
    let d = step_done(&app, &run, StepName::Undo).await;
    let out = d.step(StepName::Undo).unwrap().output.clone().unwrap();
    assert_eq!(out["undone"], true, "{out}");
    assert_eq!(
        out["by"], "<@U2>",
        "the second presser is the one on record"
    );
    assert_eq!(app.serving(), vec![Some(SIM_LIVE.to_string()); 2]);
    // Once done, a third press is the same request, not a second undo.
    let writes = app.sim.sim.world().alias_writes.len();
    let third = click(&app, &run, ClickAction::Undo, "U3");
    assert_eq!(press(&app, &app.address, &third).await, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !told(&app)
        .iter()
        .any(|t| t.contains("already asked for on this run by <@U2>"))
    {
        assert!(Instant::now() < deadline, "not told: {:?}", told(&app));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.sim.sim.world().alias_writes.len(), writes);
}

async fn undo_with_vercel_instant_rollback_puts_production_back(db: Db) {
    let Some(app) = steerable(db, |s| {
        s.services[0].strategy = backstop::config::Strategy::VercelRollback;
    })
    .await
    else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    assert_eq!(
        press(
            &app,
            &app.address,
            &click(&app, &run, ClickAction::Undo, "U1")
        )
        .await,
        200
    );
    let d = step_done(&app, &run, StepName::Undo).await;
    let out = d.step(StepName::Undo).unwrap().output.clone().unwrap();
    assert_eq!(out["undone"], true, "{out}");
    assert_eq!(app.serving(), vec![Some(SIM_LIVE.to_string()); 2]);
    // A deployment promoted once cannot be promoted again: the undo is an
    // Instant Rollback to it, never a promote, and no alias is written.
    let posts: Vec<String> = app
        .sim
        .sim
        .world()
        .served
        .iter()
        .filter(|s| s.provider == Provider::Vercel && s.method == "POST")
        .map(|s| s.path.clone())
        .collect();
    assert!(
        posts.contains(&"/v1/projects/prj_storefront/rollback/dpl_3f2c1a9live".to_string()),
        "{posts:?}"
    );
    assert!(
        posts
            .iter()
            .all(|p| !p.contains("/promote/") && !p.contains("/aliases")),
        "{posts:?}"
    );
    assert!(
        app.store.pause_of("storefront").await.unwrap().is_some(),
        "held"
    );
}

async fn pagerduty_resolve_and_reassign_are_noted_and_other_events_ignored(db: Db) {
    let Some(app) = steerable(db, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let key = app.sim.sim.world().incidents.keys().next().unwrap().clone();
    let url = format!("{}/webhooks/pagerduty", app.address);
    let send = |event: &str, id: &str, key: &str| {
        let body = sender::pagerduty_event(event, key, "PINC1", "Ana Ops");
        let (app, url, id) = (&app, url.clone(), id.to_string());
        async move {
            sender::deliver_pagerduty(&app.http, &url, PD_SECRET, &body, &id)
                .await
                .unwrap()
        }
    };
    let before = app.store.run_detail(&run).await.unwrap().notes.len();
    // Events Backstop does not use, and incidents it did not open: 200,
    // nothing recorded.
    assert_eq!(send("incident.priority_updated", "ig-1", &key).await, 200);
    assert_eq!(
        send("incident.acknowledged", "ig-2", "someone-else/key").await,
        200
    );
    assert_eq!(
        app.store.run_detail(&run).await.unwrap().notes.len(),
        before
    );
    assert!(!app
        .store
        .provider_event_known("pagerduty", "ig-1")
        .await
        .unwrap());
    assert_eq!(send("incident.reassigned", "rs-1", &key).await, 202);
    assert_eq!(send("incident.resolved", "rs-2", &key).await, 202);
    let d = app.store.run_detail(&run).await.unwrap();
    let kinds: Vec<&str> = d.notes[before..].iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "pagerduty:incident.reassigned",
            "pagerduty:incident.resolved"
        ]
    );
    assert!(d.notes[before]
        .text
        .starts_with("PagerDuty incident reassigned by Ana Ops"));
    assert!(d.notes[before + 1]
        .text
        .starts_with("PagerDuty incident resolved by Ana Ops"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let threaded = || {
        app.sim
            .sim
            .world()
            .messages
            .iter()
            .filter(|m| m.thread_ts.is_some() && m.text.contains("by Ana Ops"))
            .count()
    };
    while threaded() < 2 {
        assert!(Instant::now() < deadline, "not threaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both!(
    undo_restores_production_holds_the_service_and_a_later_alert_escalates,
    a_double_click_and_a_retry_act_once,
    a_person_not_allowed_is_refused_and_a_group_member_is_not,
    undo_after_production_moved_is_refused,
    hold_then_resume_from_the_card,
    forged_stale_and_malformed_presses_change_nothing,
    an_ack_is_threaded_once_with_the_time_since_the_alert,
    pagerduty_webhooks_are_verified_with_any_of_the_rotated_signatures,
    an_undo_refused_while_vercel_was_unreadable_can_be_pressed_again,
    undo_with_vercel_instant_rollback_puts_production_back,
    pagerduty_resolve_and_reassign_are_noted_and_other_events_ignored,
);

/// Two instances on one Postgres receive the same press at once (Slack
/// retrying to another replica, or two people): one undo.
#[tokio::test]
async fn presses_on_two_instances_undo_once() {
    let Some(app) = steerable(Db::Postgres, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let other = app.another().await;
    let (a, b) = (
        click(&app, &run, ClickAction::Undo, "U1"),
        click(&app, &run, ClickAction::Undo, "U2"),
    );
    let (x, y) = tokio::join!(press(&app, &app.address, &a), press(&app, &other, &b));
    assert_eq!((x, y), (200, 200));
    step_done(&app, &run, StepName::Undo).await;
    assert_eq!(app.sim.sim.world().alias_writes.len(), 4, "undone once");
    assert_eq!(app.serving(), vec![Some(SIM_LIVE.to_string()); 2]);
}

/// `backstop undo <run>` does what the button does.
#[tokio::test]
async fn the_cli_undoes_a_rollback_too() {
    let Some(app) = steerable(Db::Sqlite, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let (done, text) = cli_undo(&app, &run, true, "").await;
    done.unwrap();
    assert!(
        text.contains("production is back on dpl_3f2c1a9live"),
        "{text}"
    );
    assert_eq!(app.serving(), vec![Some(SIM_LIVE.to_string()); 2]);
    let pause = app.store.pause_of("storefront").await.unwrap().unwrap();
    assert!(
        pause.by.as_deref().unwrap().starts_with("cli ("),
        "{pause:?}"
    );
    // The hold an undo leaves is in the pause log, with who.
    let log = app.store.pause_log(Some("storefront"), 10).await.unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].action, "pause");
    assert_eq!(log[0].by, pause.by);
    // Asking twice is refused with who asked first.
    let err = cli_undo(&app, &run, true, "")
        .await
        .0
        .unwrap_err()
        .to_string();
    assert!(err.contains("already asked for"), "{err}");
}

/// Answering anything but `yes` to the CLI's question changes nothing.
#[tokio::test]
async fn the_cli_undo_asks_first_and_no_means_no() {
    let Some(app) = steerable(Db::Sqlite, |_| {}).await else {
        return;
    };
    let run = rolled_back(&app).await.run.id;
    let (done, text) = cli_undo(&app, &run, false, "no\n").await;
    done.unwrap();
    assert!(
        text.contains("Put storefront's production back on dpl_3f2c1a9live, replacing dpl_9be1c07good, and hold storefront? Type `yes` to proceed:"),
        "{text}"
    );
    assert!(
        text.contains("not confirmed: nothing was changed"),
        "{text}"
    );
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    let d = app.store.run_detail(&run).await.unwrap();
    assert!(d.step(StepName::Undo).is_none(), "no undo asked for");
    assert!(app.store.pause_of("storefront").await.unwrap().is_none());
}

/// `backstop undo RUN` (with `--yes` when `yes`), answering `input` to its
/// question: what it returned, and what it printed.
async fn cli_undo(
    app: &SimApp,
    run: &RunId,
    yes: bool,
    input: &str,
) -> (anyhow::Result<()>, String) {
    let mut out = Vec::new();
    let done = backstop::cli::undo::run(
        app.settings.clone(),
        run,
        yes,
        &mut out,
        &mut input.as_bytes(),
    )
    .await;
    (done, String::from_utf8(out).unwrap())
}
