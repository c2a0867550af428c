//! The agents (brief and recap) on the simulator's OpenAI-compatible
//! server: what is sent, which model, overrides, off by default, and that
//! nothing they do (or fail to do) changes the rollback, the page or the
//! card.

use std::time::Duration;

use backstop::config::{AgentSettings, Settings};
use backstop::ledger::{RunDetail, RunStatus, StepName, StepStatus};
use backstop::sim::config::DEMO;
use backstop::sim::{Faults, Provider};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use crate::on_both;

const AI_KEY: &str = "sk-sim-agent-key";

/// The simulator app with Sentry's API and the agents on.
async fn with_agents(db: Db, tweak: impl FnOnce(&mut Settings)) -> Option<SimApp> {
    spawn_on_sim(db, |s| {
        s.sentry.token = Some(SecretString::from(DEMO.sentry_token));
        s.sentry.org = Some("acme".into());
        s.services[0].watch_window = Duration::ZERO;
        s.ai.model = Some("sim-small".into());
        s.ai.api_key = Some(SecretString::from(AI_KEY));
        s.ai.timeout = Duration::from_secs(2);
        tweak(s);
    })
    .await
}

/// Points the agents at the app's own simulator (known only once it runs).
async fn agents_app(db: Db, tweak: impl FnOnce(&mut Settings) + Send + 'static) -> Option<SimApp> {
    // The simulator's address is chosen when it starts: start without
    // agents, then restart with them pointed at it.
    let mut app = with_agents(db, |_| {}).await?;
    let base = app.sim.api_base(Provider::Ai);
    app.settings.ai.base_url = Some(base);
    tweak(&mut app.settings);
    app.restart().await;
    Some(app)
}

async fn rolled_back(app: &SimApp) -> RunDetail {
    assert_eq!(app.alert("a1", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;
    let run = app.store.list_runs(1).await.unwrap().remove(0);
    app.store.run_detail(&run.id).await.unwrap()
}

fn requests(app: &SimApp) -> Vec<Value> {
    app.sim.sim.world().ai_requests.clone()
}

async fn the_brief_asks_the_agents_model_with_the_facts_and_replies_in_the_thread(db: Db) {
    let Some(app) = agents_app(db, |_| {}).await else {
        return;
    };
    let d = rolled_back(&app).await;
    assert_eq!(d.run.status, RunStatus::Done);
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    let sent = requests(&app);
    assert_eq!(
        sent.len(),
        2,
        "a brief, then a recap when the run ended: {sent:?}"
    );
    let body = &sent[0]["body"];
    assert_eq!(body["model"], "sim-small");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_tokens"], 400);
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    for fact in [
        "Service storefront",
        "The crashing release is 3f2c1a9; production was restored to 9be1c07",
        "Crash-free rate 92.1% (threshold 99.5%)",
        "Release health: release 3f2c1a9: 92.1% over 2,140 sessions",
        "- TypeError: Cannot read properties of undefined (reading 'total') in app/checkout/CartSummary: 1834 events",
        "rolled back from dpl_3f2c1a9live (release 3f2c1a9): \"checkout: compute cart totals on the client\" on main by Sam Dev",
    ] {
        assert!(prompt.contains(fact), "`{fact}` missing from the prompt:\n{prompt}");
    }
    assert_eq!(sent[0]["authorization"], format!("Bearer {AI_KEY}"));
    let recap = sent[1]["body"]["messages"][1]["content"].as_str().unwrap();
    assert!(
        recap.contains("rollback verified") && recap.contains("on-call paged"),
        "{recap}"
    );
    // Nothing secret in the prompt, and no raw alert body.
    for secret in [
        AI_KEY,
        DEMO.vercel_token,
        DEMO.sentry_token,
        DEMO.routing_key,
        DEMO.slack_token,
        DEMO.sentry_secret,
    ] {
        assert!(
            !body.to_string().contains(secret),
            "a secret reached the prompt"
        );
    }
    assert!(!prompt.contains("metric_alert"), "no raw alert body");
    // The reply, in the card's thread, after the card and the page.
    let w = app.sim.sim.world();
    let card = &w.messages[0];
    let brief: Vec<_> = w
        .messages
        .iter()
        .filter(|m| m.text.contains("*Brief*"))
        .collect();
    assert_eq!(brief.len(), 1);
    assert_eq!(brief[0].thread_ts.as_deref(), Some(card.ts.as_str()));
    assert!(brief[0].text.contains("written by a model, not a decision"));
    assert_eq!(w.incidents.len(), 1);
    let step = d.step(StepName::Brief).unwrap();
    assert_eq!(step.status, StepStatus::Succeeded);
}

async fn an_endpoint_that_fails_changes_nothing_but_its_own_step(db: Db) {
    for (what, faults, model) in [
        (
            "500",
            Faults {
                error_rate: 1.0,
                ..Faults::default()
            },
            "sim-small",
        ),
        (
            "429",
            Faults {
                rate_limit_rate: 1.0,
                ..Faults::default()
            },
            "sim-small",
        ),
        (
            "timeout",
            Faults {
                timeout_rate: 1.0,
                hang_ms: 5_000,
                ..Faults::default()
            },
            "sim-small",
        ),
        ("unknown model", Faults::default(), "no-such-model"),
    ] {
        let Some(app) = agents_app(db, move |s| s.ai.model = Some(model.into())).await else {
            return;
        };
        app.sim.sim.set_faults(Provider::Ai, faults);
        let d = rolled_back(&app).await;
        assert_eq!(
            d.run.status,
            RunStatus::Done,
            "{what}: the run's outcome does not change"
        );
        assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2], "{what}");
        for s in [StepName::Rollback, StepName::Page, StepName::Announce] {
            assert_eq!(
                d.step(s).unwrap().status,
                StepStatus::Succeeded,
                "{what}: {s}"
            );
        }
        let brief = d.step(StepName::Brief).unwrap();
        assert_eq!(brief.status, StepStatus::Failed, "{what}");
        let error = brief.error.as_ref().unwrap().message.clone();
        assert!(!error.contains(AI_KEY), "{what}: {error}");
        // What the on-call reads on the step: the server's answer, not a
        // bare timeout, when the server answered.
        let code = brief.error.as_ref().unwrap().code.clone();
        match what {
            "unknown model" => assert!(error.contains("no-such-model"), "{error}"),
            "500" => assert!(error.contains("HTTP 5"), "{what}: {code} {error}"),
            "429" => assert!(error.contains("HTTP 429"), "{what}: {code} {error}"),
            _ => assert!(
                error.contains("timed out") || code == "timeout",
                "{what}: {code} {error}"
            ),
        }
        let w = app.sim.sim.world();
        assert!(
            !w.messages.iter().any(|m| m.text.contains("*Brief*")),
            "{what}"
        );
        assert_eq!(w.incidents.len(), 1, "{what}: paged");
    }
}

async fn agents_are_off_by_default_and_can_be_turned_off_per_service(db: Db) {
    // No [ai]: no agent step at all.
    let Some(app) = spawn_on_sim(db, |_| {}).await else {
        return;
    };
    let d = rolled_back(&app).await;
    assert!(d.step(StepName::Brief).is_none() && d.step(StepName::Recap).is_none());
    assert!(requests(&app).is_empty());
    // On, but turned off for the service; the recap on another model.
    let Some(app) = agents_app(db, |s| {
        s.services[0].ai.insert(
            "brief".into(),
            AgentSettings {
                enabled: Some(false),
                ..Default::default()
            },
        );
        s.ai.agents.insert(
            "recap".into(),
            AgentSettings {
                model: Some("sim-large".into()),
                ..Default::default()
            },
        );
    })
    .await
    else {
        return;
    };
    let d = rolled_back(&app).await;
    assert!(
        d.step(StepName::Brief).is_none(),
        "the service turned the brief off"
    );
    let recap = d
        .step(StepName::Recap)
        .expect("the recap runs when the run ends");
    assert_eq!(recap.status, StepStatus::Succeeded);
    let sent = requests(&app);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["body"]["model"], "sim-large",
        "the agent's own model"
    );
    let prompt = sent[0]["body"]["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("rollback verified"), "{prompt}");
}

async fn a_service_prompt_overrides_the_default(db: Db) {
    let Some(app) = agents_app(db, |s| {
        s.services[0].ai.insert(
            "brief".into(),
            AgentSettings {
                prompt: Some("Only this: {{ service }} / {{ release }}".into()),
                model: Some("sim-large".into()),
                ..Default::default()
            },
        );
    })
    .await
    else {
        return;
    };
    rolled_back(&app).await;
    let sent = requests(&app);
    let brief = sent
        .iter()
        .find(|r| {
            r["body"]["messages"][1]["content"]
                .as_str()
                .unwrap_or("")
                .starts_with("Only this")
        })
        .expect("the brief");
    assert_eq!(
        brief["body"]["messages"][1]["content"],
        "Only this: storefront / 3f2c1a9"
    );
    assert_eq!(brief["body"]["model"], "sim-large");
}

on_both!(
    an_undo_after_the_recap_is_recapped_again,
    the_brief_asks_the_agents_model_with_the_facts_and_replies_in_the_thread,
    an_endpoint_that_fails_changes_nothing_but_its_own_step,
    agents_are_off_by_default_and_can_be_turned_off_per_service,
    a_service_prompt_overrides_the_default,
    the_recap_waits_for_the_watch_without_spinning,
);

#[test]
fn bad_agent_settings_fail_at_start_naming_the_key() {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let config = backstop::sim::config::Config::new(
        DEMO,
        backstop::sim::config::Bases::closed(),
        "sqlite://x.db",
        listen,
    );
    let mut s = config.settings().unwrap();
    s.ai.base_url = Some("http://127.0.0.1:9/v1".into());
    assert!(s.validate().unwrap_err().to_string().contains("ai.model"));
    // Only the agents that are on need a model: the brief with its own
    // model and the recap off is a complete setup.
    let off = AgentSettings {
        enabled: Some(false),
        ..Default::default()
    };
    s.ai.agents.insert(
        "brief".into(),
        AgentSettings {
            model: Some("fast".into()),
            ..Default::default()
        },
    );
    let e = s.validate().unwrap_err().to_string();
    assert!(
        e.contains("agent `recap`") && e.contains("storefront"),
        "{e}"
    );
    s.ai.agents.insert("recap".into(), off.clone());
    s.validate().expect("a disabled agent needs no model");
    // A service turning the recap back on needs a model for it.
    s.services[0].ai.insert(
        "recap".into(),
        AgentSettings {
            enabled: Some(true),
            ..Default::default()
        },
    );
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("agent `recap`"));
    s.services[0].ai.clear();
    s.ai.agents.clear();
    s.ai.model = Some("m".into());
    s.validate().unwrap();
    s.ai.agents.insert("poet".into(), AgentSettings::default());
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ai.agents.poet"));
    s.ai.agents.clear();
    s.services[0].ai.insert(
        "brief".into(),
        AgentSettings {
            prompt: Some("{{ unclosed".into()),
            ..Default::default()
        },
    );
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("services[0].ai.brief.prompt"));
}

/// The recap waits for the watch without spinning: the watch looks once
/// per interval, not as fast as the run can be claimed.
async fn the_recap_waits_for_the_watch_without_spinning(db: Db) {
    let Some(app) = agents_app(db, |s| {
        s.services[0].watch_window = Duration::from_millis(2_000);
        s.services[0].watch_interval = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    // Too few sessions of the restored release: the watch runs its window.
    app.sim.sim.world().accrual_per_s = 0;
    app.sim.sim.world().set_health(
        backstop::sim::config::SENTRY_PROJECT,
        "production",
        "9be1c07",
        0.998,
        10,
    );
    let d = rolled_back(&app).await;
    assert_eq!(
        d.step(StepName::Recap).unwrap().status,
        StepStatus::Succeeded
    );
    let looks = d.notes.iter().filter(|n| n.kind == "look").count();
    assert!(
        (2..=6).contains(&looks),
        "one look per interval over the window, not a spin: {looks} looks"
    );
    let sessions_reads = app
        .sim
        .sim
        .world()
        .served
        .iter()
        .filter(|s| s.path.ends_with("/sessions/"))
        .count();
    assert!(sessions_reads <= 12, "{sessions_reads} sessions reads");
}

/// An undo after the run ended (its recap written) gets a recap of its
/// own: the timeline the model is given now ends with the undo.
async fn an_undo_after_the_recap_is_recapped_again(db: Db) {
    let Some(app) = agents_app(db, |s| {
        s.slack.signing_secret = Some(SecretString::from("agents-signing-secret"));
    })
    .await
    else {
        return;
    };
    let d = rolled_back(&app).await;
    assert_eq!(
        d.step(StepName::Recap).unwrap().status,
        StepStatus::Succeeded
    );
    let recaps = |app: &SimApp| {
        app.sim
            .sim
            .world()
            .messages
            .iter()
            .filter(|m| m.text.contains("*Recap*"))
            .count()
    };
    assert_eq!(recaps(&app), 1);
    let click = backstop::sim::sender::Click {
        run: d.run.id.0.clone(),
        action: backstop::ingest::slack::ClickAction::Undo,
        user_id: "U7".into(),
        user_name: "ana".into(),
        response_url: None,
    };
    let url = format!("{}/webhooks/slack/interactions", app.address);
    assert_eq!(
        click
            .deliver(&app.http, &url, "agents-signing-secret")
            .await
            .unwrap(),
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let d = loop {
        let d = app.store.run_detail(&d.run.id).await.unwrap();
        let undone = d
            .step(StepName::Undo)
            .is_some_and(|s| s.status == StepStatus::Succeeded);
        let recapped = d
            .step(StepName::Recap)
            .is_some_and(|s| s.status != StepStatus::Pending);
        if undone && recapped && d.run.status == RunStatus::Done {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", d.steps);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        d.step(StepName::Recap).unwrap().status,
        StepStatus::Succeeded
    );
    assert_eq!(recaps(&app), 2, "a second recap, in the thread");
    let last = requests(&app).last().cloned().unwrap();
    let prompt = last["body"]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains("a person undid the rollback"), "{prompt}");
}

#[test]
fn an_empty_secret_fails_at_start_naming_the_key() {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let config = backstop::sim::config::Config::new(
        DEMO,
        backstop::sim::config::Bases::closed(),
        "sqlite://x.db",
        listen,
    );
    for (key, set) in [
        (
            "slack.signing_secret",
            (|s: &mut Settings| s.slack.signing_secret = Some(SecretString::from(" ")))
                as fn(&mut Settings),
        ),
        ("pagerduty.webhook_secret", |s: &mut Settings| {
            s.pagerduty.webhook_secret = Some(SecretString::from(""))
        }),
        ("admin.token", |s: &mut Settings| {
            s.admin.token = Some(SecretString::from("short"))
        }),
    ] {
        let mut s = config.settings().unwrap();
        set(&mut s);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
}
