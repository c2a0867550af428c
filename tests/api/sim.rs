//! The simulator speaks the providers' real wire formats: each answer is
//! checked against the reference examples in `tests/fixtures/`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use backstop::sim::{Credentials, Faults, Provider, Running, Sim};
use serde_json::{json, Value};

const TOKEN: &str = "tok";
const KEY: &str = "e93facc04764012d7bfb002500d5d1a6";

async fn start() -> (Running, reqwest::Client) {
    let sim = Sim::new(Credentials {
        vercel_token: TOKEN.into(),
        routing_keys: vec![KEY.into()],
        pagerduty_token: "pd-token".into(),
        slack_token: "xoxb-sim".into(),
        sentry_token: "sentry-token".into(),
    });
    {
        let mut w = sim.world();
        w.add_project("prj_1", &["a.example.com", "b.example.com"]);
        w.add_deployment("prj_1", "dpl_old", "aaa", 1_700_000_000_000);
        w.add_deployment("prj_1", "dpl_new", "bbb", 1_700_000_600_000);
        w.serve("prj_1", "dpl_new");
        w.add_channel("#deploys");
        w.set_health("web", "production", "bbb", 0.921, 2140);
        w.sentry_projects.insert("web".into(), 42);
    }
    let running = sim
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    (running, reqwest::Client::new())
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// A Vercel GET with the right token, its JSON answer.
async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn fixture(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("tests/fixtures/{path}")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn simulated_vercel_answers_like_vercel() {
    let (sim, http) = start().await;
    let v = sim.api_base(Provider::Vercel);
    // A wrong token gets Vercel's 403 body.
    let r = http
        .get(format!("{v}/v4/aliases/a.example.com"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        fixture("vercel/error_forbidden.json")
    );

    let r = http
        .post(format!("{v}/v2/deployments/dpl_old/aliases"))
        .bearer_auth(TOKEN)
        .json(&json!({"alias": "a.example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(r.headers().contains_key(h), "{h}");
    }
    let body: Value = r.json().await.unwrap();
    assert_eq!(keys(&body), keys(&fixture("vercel/assign_alias_200.json")));
    assert_eq!(body["oldDeploymentId"], "dpl_new");

    // Reading it back tells the truth.
    let r = get_json(&http, format!("{v}/v4/aliases/a.example.com")).await;
    assert_eq!(r["deploymentId"], "dpl_old");
    let reference = fixture("vercel/get_alias_200.json")[0].clone();
    for k in [
        "alias",
        "deploymentId",
        "deployment",
        "projectId",
        "uid",
        "created",
        "createdAt",
    ] {
        assert!(r.get(k).is_some() && reference.get(k).is_some(), "{k}");
    }
    // The list, filtered to the domains asked about, tells the same truth
    // in the documented shape; a domain without an alias is not listed.
    let r = get_json(&http, format!(
            "{v}/v4/aliases?domain=a.example.com&domain=b.example.com&domain=nowhere.example.com&limit=100"
        )).await;
    let reference = fixture("vercel/list_aliases_200.json");
    assert_eq!(keys(&r), keys(&reference));
    assert_eq!(keys(&r["pagination"]), keys(&reference["pagination"]));
    let listed: Vec<(&str, &str)> = r["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["alias"].as_str().unwrap(),
                a["deploymentId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("a.example.com", "dpl_old"), ("b.example.com", "dpl_new")]
    );
    let r = http
        .get(format!("{v}/v4/aliases/nowhere.example.com"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        keys(&r.json::<Value>().await.unwrap()["error"]),
        keys(&fixture("vercel/error_not_found.json")["error"])
    );
    let r = http
        .post(format!("{v}/v2/deployments/dpl_nope/aliases"))
        .bearer_auth(TOKEN)
        .json(&json!({"alias": "a.example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let list = get_json(
        &http,
        format!("{v}/v6/deployments?projectId=prj_1&target=production&state=READY&limit=1"),
    )
    .await;
    assert_eq!(
        keys(&list),
        keys(&fixture("vercel/list_deployments_200.json"))
    );
    assert_eq!(list["deployments"][0]["uid"], "dpl_new");
    assert_eq!(list["deployments"][0]["meta"]["githubCommitSha"], "bbb");
    assert!(list["pagination"]["next"].is_i64(), "a second page exists");
}

/// Vercel's calls are metered as Vercel meters them: the window in the
/// headers of every answer, and a spent window answered 429 with Vercel's
/// `rate_limited` body (the reference example's shape).
#[tokio::test]
async fn simulated_vercel_meters_its_rate_limits_like_vercel() {
    let (sim, http) = start().await;
    let v = sim.api_base(Provider::Vercel);
    let set = |limits: Value| {
        let http = http.clone();
        let url = format!("{}/_sim/vercel-limits", sim.base);
        async move {
            let r = http.post(url).json(&limits).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    set(json!({"limits": {"alias creation": [1, 60_000]}})).await;
    let write = || {
        http.post(format!("{v}/v2/deployments/dpl_old/aliases"))
            .bearer_auth(TOKEN)
            .json(&json!({"alias": "a.example.com"}))
            .send()
    };
    let first = write().await.unwrap();
    assert_eq!(first.status(), 200);
    let header = |r: &reqwest::Response, h: &str| -> i64 {
        r.headers()[h].to_str().unwrap().parse().unwrap()
    };
    assert_eq!(header(&first, "x-ratelimit-limit"), 1);
    assert_eq!(header(&first, "x-ratelimit-remaining"), 0);
    let reset = header(&first, "x-ratelimit-reset");
    let second = write().await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(header(&second, "x-ratelimit-reset"), reset);
    let body: Value = second.json().await.unwrap();
    let reference = fixture("vercel/error_rate_limited.json");
    assert_eq!(keys(&body["error"]), keys(&reference["error"]));
    assert_eq!(
        keys(&body["error"]["limit"]),
        keys(&reference["error"]["limit"])
    );
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["limit"]["reset"], reset);
    assert_eq!(
        sim.sim.world().alias_writes.len(),
        1,
        "the refused write did not move anything"
    );
    // Unmetered: no headers, no refusals.
    set(json!({})).await;
    let r = write().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("x-ratelimit-remaining"));
    // The published limits again: 120 alias creations per ten minutes.
    set(json!({"published": true})).await;
    let r = write().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit"), 120);
    assert_eq!(header(&r, "x-ratelimit-remaining"), 119);
}

#[tokio::test]
async fn simulated_instant_rollback_reports_its_job_and_moves_production() {
    let (sim, http) = start().await;
    let v = sim.api_base(Provider::Vercel);
    let r = http
        .post(format!(
            "{v}/v1/projects/prj_1/rollback/dpl_old?description=test"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let project = |http: reqwest::Client, v: String| async move {
        http.get(format!("{v}/v9/projects/prj_1"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = project(http.clone(), v.clone()).await;
    assert_eq!(first["lastAliasRequest"]["jobStatus"], "in-progress");
    let second = project(http.clone(), v.clone()).await;
    assert_eq!(second["lastAliasRequest"]["jobStatus"], "succeeded");
    assert_eq!(second["lastAliasRequest"]["toDeploymentId"], "dpl_old");
    assert_eq!(
        sim.sim
            .world()
            .aliases
            .get("b.example.com")
            .map(String::as_str),
        Some("dpl_old")
    );
}

#[tokio::test]
async fn simulated_pagerduty_validates_like_pagerduty_and_groups_by_dedup_key() {
    let (sim, http) = start().await;
    let url = format!("{}/v2/enqueue", sim.api_base(Provider::Pagerduty));
    let mut event = fixture("pagerduty/events_trigger_request.json");
    event["routing_key"] = json!(KEY);
    let r = http.post(&url).json(&event).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(keys(&body), keys(&fixture("pagerduty/events_202.json")));
    assert_eq!(body["dedup_key"], "srv01/mysql");
    http.post(&url).json(&event).send().await.unwrap();
    assert_eq!(
        sim.sim.world().incidents.len(),
        1,
        "same dedup key, same incident"
    );
    assert_eq!(sim.sim.world().incidents["srv01/mysql"].events, 2);

    let mut missing = event.clone();
    missing["payload"]
        .as_object_mut()
        .unwrap()
        .remove("severity");
    missing["routing_key"] = json!("short");
    let r = http.post(&url).json(&missing).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(keys(&err), keys(&fixture("pagerduty/events_error.json")));
    let errors = err["errors"].to_string();
    assert!(
        errors.contains("routing_key") && errors.contains("severity"),
        "{errors}"
    );

    let resolve =
        json!({"routing_key": KEY, "event_action": "resolve", "dedup_key": "srv01/mysql"});
    assert_eq!(
        http.post(&url)
            .json(&resolve)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(sim.sim.world().incidents["srv01/mysql"].status, "resolved");
}

#[tokio::test]
async fn simulated_pagerduty_rest_creates_incidents_once_per_key() {
    let (sim, http) = start().await;
    let url = format!("{}/incidents", sim.api_base(Provider::Pagerduty));
    let body = fixture("pagerduty/rest_create_incident_request.json");
    let send = || {
        http.post(&url)
            .header("Authorization", "Token token=pd-token")
            .header("From", "oncall@example.com")
            .header("Accept", "application/vnd.pagerduty+json;version=2")
            .json(&body)
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let reference = fixture("pagerduty/rest_create_incident_201.json");
    for k in [
        "id",
        "type",
        "title",
        "status",
        "incident_key",
        "html_url",
        "incident_number",
        "service",
        "urgency",
    ] {
        assert!(
            created["incident"].get(k).is_some() && reference["incident"].get(k).is_some(),
            "{k}"
        );
    }
    let again = send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(again
        .text()
        .await
        .unwrap()
        .contains("matching dedup key already exists"));
    let r = http
        .post(&url)
        .header("Authorization", "Token token=wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn simulated_slack_answers_200_with_ok_false_like_slack() {
    let (sim, http) = start().await;
    let base = sim.api_base(Provider::Slack);
    let r = http
        .post(format!("{base}/chat.postMessage"))
        .bearer_auth("xoxb-sim")
        .json(&json!({"channel": "#nope", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"ok": false, "error": "channel_not_found"})
    );
    let r: Value = http
        .post(format!("{base}/chat.postMessage"))
        .bearer_auth("wrong")
        .json(&json!({"channel": "#deploys", "text": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["error"], "invalid_auth");

    let first: Value = http
        .post(format!("{base}/chat.postMessage"))
        .bearer_auth("xoxb-sim")
        .json(&json!({"channel": "#deploys", "text": "rolled back"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys(&first),
        keys(&fixture("slack/chat_post_message_200.json"))
    );
    let ts = first["ts"].as_str().unwrap();
    let reply: Value = http
        .post(format!("{base}/chat.postMessage"))
        .bearer_auth("xoxb-sim")
        .json(&json!({"channel": first["channel"], "text": "resolved", "thread_ts": ts}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reply["ok"].as_bool().unwrap());
    assert_eq!(sim.sim.world().messages[1].thread_ts.as_deref(), Some(ts));
    let auth: Value = http
        .post(format!("{base}/auth.test"))
        .bearer_auth("xoxb-sim")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(auth["ok"], true);
    let update: Value = http
        .post(format!("{base}/chat.update"))
        .bearer_auth("xoxb-sim")
        .json(&json!({"channel": first["channel"], "ts": ts, "text": "edited"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(update["ok"], true);
    assert_eq!(sim.sim.world().messages[0].text, "edited");
}

#[tokio::test]
async fn simulated_sentry_reports_crash_free_rate_as_a_fraction() {
    let (sim, http) = start().await;
    let base = sim.api_base(Provider::Sentry);
    let r: Value = http
        .get(format!("{base}/api/0/organizations/acme/sessions/?field=crash_free_rate(session)&field=sum(session)&project=42&environment=production&query=release:bbb&statsPeriod=1h&interval=1h"))
        .bearer_auth("sentry-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["groups"][0]["totals"]["crash_free_rate(session)"], 0.921);
    let r = http
        .get(format!("{base}/api/0/projects/acme/web/"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn injected_faults_look_like_the_providers_own() {
    let (sim, http) = start().await;
    let v = sim.api_base(Provider::Vercel);
    sim.sim.set_faults(
        Provider::Vercel,
        Faults {
            rate_limit_rate: 1.0,
            ..Faults::default()
        },
    );
    let r = http
        .get(format!("{v}/v4/aliases/a.example.com"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("x-ratelimit-reset"));
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );

    sim.sim.set_faults(
        Provider::Slack,
        Faults {
            rate_limit_rate: 1.0,
            ..Faults::default()
        },
    );
    let r = http
        .post(format!(
            "{}/chat.postMessage",
            sim.api_base(Provider::Slack)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "1")
    );

    sim.sim.set_faults(
        Provider::Pagerduty,
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    );
    let r = http
        .post(format!("{}/v2/enqueue", sim.api_base(Provider::Pagerduty)))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    sim.sim.set_faults(
        Provider::Vercel,
        Faults {
            drop_rate: 1.0,
            ..Faults::default()
        },
    );
    let dropped = match http
        .get(format!("{v}/v4/aliases/a.example.com"))
        .bearer_auth(TOKEN)
        .send()
        .await
    {
        Err(e) => !e.is_timeout(),
        Ok(r) => r.text().await.is_err(),
    };
    assert!(dropped, "the connection drops mid-response");

    sim.sim.set_faults(
        Provider::Vercel,
        Faults {
            timeout_rate: 1.0,
            hang_ms: 5_000,
            ..Faults::default()
        },
    );
    let quick = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    let err = quick
        .get(format!("{v}/v4/aliases/a.example.com"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());

    // Steering over HTTP, as `backstop sim` users do.
    let r = http
        .post(format!("{}/_sim/faults", sim.base))
        .json(&json!({"provider": "vercel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{v}/v4/aliases/a.example.com"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "faults cleared");
}
