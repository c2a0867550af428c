//! The PagerDuty and Slack clients against a fake provider speaking the real
//! wire formats: what goes on the wire, and how every answer is sorted into
//! success, retry or a fatal error that keeps the provider's words.
//! Response bodies are the providers' own examples (`tests/fixtures/`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use backstop::providers::pagerduty::{self, Opened, Page, PagerDutyClient};
use backstop::providers::slack::{self, Posted, SlackClient};
use backstop::providers::Backoff;
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ROUTING_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";
const PD_TOKEN: &str = "y_NbAkKc66ryYTWUXYEu";

const EVENTS_202: &str = include_str!("../fixtures/pagerduty/events_202.json");
const EVENTS_ERROR: &str = include_str!("../fixtures/pagerduty/events_error.json");
const EVENTS_TRIGGER_REQUEST: &str =
    include_str!("../fixtures/pagerduty/events_trigger_request.json");
const EVENTS_RESOLVE_REQUEST: &str =
    include_str!("../fixtures/pagerduty/events_resolve_request.json");
const REST_CREATE_INCIDENT_REQUEST: &str =
    include_str!("../fixtures/pagerduty/rest_create_incident_request.json");
const REST_CREATE_INCIDENT_201: &str =
    include_str!("../fixtures/pagerduty/rest_create_incident_201.json");
const REST_ERROR: &str = include_str!("../fixtures/pagerduty/rest_error.json");
const REST_429: &str = include_str!("../fixtures/pagerduty/rest_429.json");
const CHAT_POST_MESSAGE_200: &str = include_str!("../fixtures/slack/chat_post_message_200.json");
const CHAT_POST_MESSAGE_ERROR: &str =
    include_str!("../fixtures/slack/chat_post_message_error.json");
const WEBHOOK_REQUEST: &str = include_str!("../fixtures/slack/incoming_webhook_request.json");
const WEBHOOK_200: &str = include_str!("../fixtures/slack/incoming_webhook_200.txt");
const WEBHOOK_404: &str = include_str!("../fixtures/slack/incoming_webhook_404.txt");

// ---------------------------------------------------------------- helpers

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// Short waits so retries without a provider-given delay are fast; a test
/// that sees ~1 s knows the client waited because the provider said so.
fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_secs(5),
    }
}

fn events_client(server: &MockServer) -> PagerDutyClient {
    PagerDutyClient::new(
        &server.uri(),
        pagerduty::Target::Events {
            routing_key: SecretString::from(ROUTING_KEY),
        },
        Duration::from_millis(500),
    )
    .expect("client builds")
    .with_retries(3, fast_backoff())
}

fn rest_client(server: &MockServer) -> PagerDutyClient {
    PagerDutyClient::new(
        &server.uri(),
        pagerduty::Target::Rest {
            token: SecretString::from(PD_TOKEN),
            from: "oncall@example.com".into(),
            service_id: "PWIXJZS".into(),
            escalation_policy_id: Some("PT20YPA".into()),
        },
        Duration::from_millis(500),
    )
    .expect("client builds")
    .with_retries(3, fast_backoff())
}

fn bot_client(server: &MockServer) -> SlackClient {
    SlackClient::new(
        &server.uri(),
        slack::Target::Bot {
            token: SecretString::from("xoxb-test"),
        },
        Duration::from_millis(500),
    )
    .expect("client builds")
    .with_retries(3, fast_backoff())
}

fn webhook_client(server: &MockServer) -> SlackClient {
    SlackClient::new(
        &server.uri(),
        slack::Target::Webhook {
            url: SecretString::from(format!("{}/services/T/B/X", server.uri())),
        },
        Duration::from_millis(500),
    )
    .expect("client builds")
    .with_retries(3, fast_backoff())
}

fn page() -> Page {
    Page {
        incident_key: "backstop/prj_storefront/rule-4821/incident-37".into(),
        summary: "Rolled back shop.example.com: crash-free sessions fell to 92%".into(),
        severity: "critical".into(),
        component: "storefront".into(),
        group: "prj_storefront".into(),
        class: "rollback".into(),
        timestamp: "2026-08-20T12:26:40Z".into(),
        custom_details: json!({
            "release": "storefront@2.14.0",
            "crash_free_rate": 92.0,
            "rolled_back_to": "dpl_7Gw5ZV1UvkB4Q2mQ",
        }),
        links: vec![
            (
                "https://sentry.io/organizations/acme/alerts/rules/details/4821/".into(),
                "Sentry alert".into(),
            ),
            (
                "https://vercel.com/acme/storefront/dpl_7Gw5ZV1UvkB4Q2mQ".into(),
                "Vercel deployment".into(),
            ),
        ],
    }
}

fn blocks(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("block {i}")}}))
        .collect()
}

fn json_response(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json")
}

fn text_response(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "text/html")
}

/// `POST route` answers `first` once, then `then` for every later request.
async fn once_then(
    server: &MockServer,
    route: &str,
    first: ResponseTemplate,
    then: ResponseTemplate,
) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(first)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(then)
        .mount(server)
        .await;
}

async fn always(server: &MockServer, route: &str, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

fn body(req: &Request) -> Value {
    req.body_json().expect("request body is JSON")
}

fn header<'a>(req: &'a Request, name: &str) -> &'a str {
    req.headers
        .get(name)
        .unwrap_or_else(|| panic!("request has no {name} header"))
        .to_str()
        .expect("header is ASCII")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// Every field we send exists in the provider's own example of the request.
fn assert_known_fields(sent: &Value, reference: &Value, what: &str) {
    let unknown: Vec<_> = keys(sent).difference(&keys(reference)).cloned().collect();
    assert!(
        unknown.is_empty(),
        "{what}: fields the provider does not know: {unknown:?}"
    );
}

// ------------------------------------------------------ PagerDuty Events v2

#[tokio::test]
async fn pagerduty_trigger_sends_a_complete_events_v2_event_and_returns_the_dedup_key() {
    let server = MockServer::start().await;
    always(&server, "/v2/enqueue", json_response(202, EVENTS_202)).await;
    let mut page = page();
    page.summary = "crash-free sessions fell ".repeat(200); // 5000 chars
    assert_eq!(page.summary.chars().count(), 5000);

    let opened = events_client(&server)
        .trigger(&page)
        .await
        .expect("202 is success");

    // The dedup key PagerDuty answered with (the reference body's) wins.
    assert_eq!(
        opened,
        Opened {
            incident_key: "srv01/HTTP".into(),
            incident_id: None,
            html_url: None,
            already_open: false,
        }
    );
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/v2/enqueue");
    assert!(header(req, "content-type").starts_with("application/json"));
    let sent = body(req);
    let reference = fixture(EVENTS_TRIGGER_REQUEST);
    assert_known_fields(&sent, &reference, "event");
    assert_known_fields(&sent["payload"], &reference["payload"], "payload");

    assert_eq!(sent["routing_key"], ROUTING_KEY);
    assert_eq!(sent["routing_key"].as_str().unwrap().len(), 32);
    assert_eq!(sent["event_action"], "trigger");
    assert_eq!(sent["dedup_key"], page.incident_key);
    assert!(sent["dedup_key"].as_str().unwrap().chars().count() <= 255);

    let payload = &sent["payload"];
    let summary = payload["summary"].as_str().expect("payload.summary");
    assert!(
        summary.chars().count() <= 1024,
        "summary has {} chars",
        summary.chars().count()
    );
    assert!(
        summary.ends_with('…'),
        "a cut summary ends with an ellipsis"
    );
    assert!(page.summary.starts_with(summary.trim_end_matches('…')));
    assert!(!payload["source"]
        .as_str()
        .expect("payload.source")
        .is_empty());
    assert!(
        ["critical", "error", "warning", "info"].contains(&payload["severity"].as_str().unwrap()),
        "severity {}",
        payload["severity"]
    );
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["timestamp"], "2026-08-20T12:26:40Z");
    assert_eq!(payload["component"], "storefront");
    assert_eq!(payload["group"], "prj_storefront");
    assert_eq!(payload["class"], "rollback");
    assert_eq!(payload["custom_details"], page.custom_details);

    assert_eq!(
        sent["links"],
        json!([
            {"href": "https://sentry.io/organizations/acme/alerts/rules/details/4821/", "text": "Sentry alert"},
            {"href": "https://vercel.com/acme/storefront/dpl_7Gw5ZV1UvkB4Q2mQ", "text": "Vercel deployment"},
        ])
    );
}

#[tokio::test]
async fn pagerduty_dedup_key_longer_than_255_chars_is_cut_to_255() {
    let server = MockServer::start().await;
    always(&server, "/v2/enqueue", json_response(202, EVENTS_202)).await;
    let mut page = page();
    page.incident_key = format!("backstop/{}", "k".repeat(400));

    events_client(&server)
        .trigger(&page)
        .await
        .expect("202 is success");

    let sent = body(&requests(&server).await[0]);
    let key = sent["dedup_key"].as_str().expect("dedup_key");
    assert!(
        key.chars().count() <= 255,
        "dedup_key has {} chars",
        key.chars().count()
    );
    assert!(
        key.starts_with("backstop/kkkk"),
        "the key keeps its start: {key}"
    );
}

#[tokio::test]
async fn pagerduty_400_is_fatal_not_retried_and_keeps_pagerdutys_words() {
    let server = MockServer::start().await;
    always(&server, "/v2/enqueue", json_response(400, EVENTS_ERROR)).await;

    let err = events_client(&server)
        .trigger(&page())
        .await
        .expect_err("400 fails");

    assert!(!err.is_retryable(), "{err}");
    assert_eq!(requests(&server).await.len(), 1, "a 400 is never retried");
    let shown = err.to_string();
    assert!(
        shown.contains("Event object format is unrecognized"),
        "{shown}"
    );
    assert!(shown.contains("JSON parse error"), "{shown}");
    let envelope = err.envelope();
    assert!(!envelope.retryable);
    assert!(
        envelope.message.contains("JSON parse error"),
        "{}",
        envelope.message
    );
}

#[tokio::test]
async fn pagerduty_429_then_202_succeeds_on_the_second_request() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/v2/enqueue",
        ResponseTemplate::new(429),
        json_response(202, EVENTS_202),
    )
    .await;

    let opened = events_client(&server)
        .trigger(&page())
        .await
        .expect("retried to success");

    assert_eq!(opened.incident_key, "srv01/HTTP");
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        body(&reqs[0]),
        body(&reqs[1]),
        "the retry sends the same event"
    );
}

#[tokio::test]
async fn pagerduty_500_then_202_succeeds_on_the_second_request() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/v2/enqueue",
        json_response(500, EVENTS_ERROR),
        json_response(202, EVENTS_202),
    )
    .await;

    let opened = events_client(&server)
        .trigger(&page())
        .await
        .expect("retried to success");

    assert_eq!(opened.incident_key, "srv01/HTTP");
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        body(&reqs[0]),
        body(&reqs[1]),
        "the retry sends the same event"
    );
}

#[tokio::test]
async fn pagerduty_resolve_sends_the_same_dedup_key_with_event_action_resolve() {
    let server = MockServer::start().await;
    always(&server, "/v2/enqueue", json_response(202, EVENTS_202)).await;
    let page = page();

    events_client(&server)
        .resolve(&page, None)
        .await
        .expect("202 is success");

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].url.path(), "/v2/enqueue");
    let sent = body(&reqs[0]);
    assert_known_fields(&sent, &fixture(EVENTS_RESOLVE_REQUEST), "resolve event");
    assert_eq!(sent["routing_key"], ROUTING_KEY);
    assert_eq!(sent["event_action"], "resolve");
    assert_eq!(sent["dedup_key"], page.incident_key);
}

// ---------------------------------------------------------- PagerDuty REST

#[tokio::test]
async fn pagerduty_rest_create_sends_a_complete_incident_and_returns_its_id_and_link() {
    let server = MockServer::start().await;
    always(
        &server,
        "/incidents",
        json_response(201, REST_CREATE_INCIDENT_201),
    )
    .await;
    let page = page();

    let opened = rest_client(&server)
        .trigger(&page)
        .await
        .expect("201 is success");

    assert_eq!(
        opened,
        Opened {
            incident_key: page.incident_key.clone(),
            incident_id: Some("PT4KHLK".into()),
            html_url: Some("https://subdomain.pagerduty.com/incidents/PT4KHLK".into()),
            already_open: false,
        }
    );
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), "/incidents");
    assert_eq!(
        header(req, "authorization"),
        format!("Token token={PD_TOKEN}")
    );
    assert_eq!(header(req, "from"), "oncall@example.com");
    assert_eq!(
        header(req, "accept"),
        "application/vnd.pagerduty+json;version=2"
    );
    assert!(header(req, "content-type").starts_with("application/json"));

    let sent = body(req);
    let reference = fixture(REST_CREATE_INCIDENT_REQUEST);
    assert_known_fields(&sent, &reference, "request");
    assert_known_fields(&sent["incident"], &reference["incident"], "incident");
    let incident = &sent["incident"];
    assert_eq!(incident["type"], "incident");
    assert_eq!(incident["title"], page.summary);
    assert_eq!(
        incident["service"],
        json!({"id": "PWIXJZS", "type": "service_reference"})
    );
    assert_eq!(incident["urgency"], "high", "a critical page is urgent");
    assert_eq!(incident["incident_key"], page.incident_key);
    assert_eq!(incident["body"]["type"], "incident_body");
    let details = incident["body"]["details"]
        .as_str()
        .expect("details is a string");
    assert!(details.contains("storefront@2.14.0"), "{details}");
    assert_eq!(
        incident["escalation_policy"],
        json!({"id": "PT20YPA", "type": "escalation_policy_reference"})
    );
}

#[tokio::test]
async fn pagerduty_rest_open_incident_with_the_same_key_counts_as_already_open() {
    let server = MockServer::start().await;
    let mut error = fixture(REST_ERROR);
    error["error"]["message"] = json!("Invalid Input Provided");
    error["error"]["errors"] =
        json!(["Open incident with matching dedup key already exists on this service"]);
    always(
        &server,
        "/incidents",
        json_response(400, &error.to_string()),
    )
    .await;
    let page = page();

    let opened = rest_client(&server)
        .trigger(&page)
        .await
        .expect("an open incident is fine");

    assert!(opened.already_open);
    assert_eq!(opened.incident_key, page.incident_key);
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn pagerduty_rest_429_waits_ratelimit_reset_then_creates_the_incident() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/incidents",
        json_response(429, REST_429)
            .insert_header("ratelimit-limit", "960")
            .insert_header("ratelimit-remaining", "0")
            .insert_header("ratelimit-reset", "1"),
        json_response(201, REST_CREATE_INCIDENT_201),
    )
    .await;

    let started = Instant::now();
    let opened = rest_client(&server)
        .trigger(&page())
        .await
        .expect("retried to success");
    let took = started.elapsed();

    assert_eq!(opened.incident_id.as_deref(), Some("PT4KHLK"));
    assert_eq!(requests(&server).await.len(), 2);
    assert!(took >= Duration::from_millis(900), "waited only {took:?}");
}

// ----------------------------------------------------------- Slack Web API

#[tokio::test]
async fn slack_post_sends_chat_post_message_and_returns_channel_and_ts() {
    let server = MockServer::start().await;
    always(
        &server,
        "/chat.postMessage",
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;
    let client = bot_client(&server);

    let top = client
        .post("C123ABC456", "Rolled back storefront", &blocks(3), None)
        .await
        .expect("ok: true");
    let reply = client
        .post(
            "C123ABC456",
            "Verified",
            &blocks(1),
            Some("1503435956.000247"),
        )
        .await
        .expect("ok: true");

    let posted = Posted {
        channel: "C123ABC456".into(),
        ts: "1503435956.000247".into(),
    };
    assert_eq!(top, posted);
    assert_eq!(reply, posted);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(req.method.as_str(), "POST");
        assert_eq!(req.url.path(), "/chat.postMessage");
        assert_eq!(header(req, "authorization"), "Bearer xoxb-test");
        assert!(header(req, "content-type").starts_with("application/json"));
    }
    let first = body(&reqs[0]);
    assert_eq!(first["channel"], "C123ABC456");
    assert_eq!(first["text"], "Rolled back storefront");
    assert_eq!(first["blocks"], json!(blocks(3)));
    assert!(
        first.get("thread_ts").is_none(),
        "no thread unless asked: {first}"
    );
    let second = body(&reqs[1]);
    assert_eq!(second["text"], "Verified");
    assert_eq!(second["blocks"], json!(blocks(1)));
    assert_eq!(second["thread_ts"], "1503435956.000247");
}

#[tokio::test]
async fn slack_post_cuts_more_than_50_blocks_to_50() {
    let server = MockServer::start().await;
    always(
        &server,
        "/chat.postMessage",
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(60), None)
        .await
        .expect("ok: true");

    let sent = body(&requests(&server).await[0]);
    assert_eq!(
        sent["blocks"],
        json!(blocks(50)),
        "the first 50 blocks, in order"
    );
}

#[tokio::test]
async fn slack_ok_false_errors_are_fatal_not_retried_and_keep_slacks_code() {
    let reference = fixture(CHAT_POST_MESSAGE_ERROR);
    for code in [
        "too_many_attachments",
        "channel_not_found",
        "not_in_channel",
        "invalid_auth",
    ] {
        let mut answer = reference.clone();
        answer["error"] = json!(code);
        let server = MockServer::start().await;
        always(
            &server,
            "/chat.postMessage",
            json_response(200, &answer.to_string()),
        )
        .await;

        let err = bot_client(&server)
            .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
            .await
            .expect_err("ok: false fails");

        assert!(!err.is_retryable(), "{code}: {err}");
        assert_eq!(requests(&server).await.len(), 1, "{code} is not retried");
        let envelope = err.envelope();
        assert_eq!(envelope.code, code);
        assert!(!envelope.retryable);
        assert!(err.to_string().contains(code), "{code}: {err}");
    }
}

#[tokio::test]
async fn slack_http_429_waits_retry_after_then_posts() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/chat.postMessage",
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    let started = Instant::now();
    let posted = bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
        .await
        .expect("retried to success");
    let took = started.elapsed();

    assert_eq!(posted.ts, "1503435956.000247");
    assert_eq!(requests(&server).await.len(), 2);
    assert!(took >= Duration::from_millis(900), "waited only {took:?}");
}

#[tokio::test]
async fn slack_ok_false_ratelimited_is_retried_then_posts() {
    let server = MockServer::start().await;
    let mut ratelimited = fixture(CHAT_POST_MESSAGE_ERROR);
    ratelimited["error"] = json!("ratelimited");
    once_then(
        &server,
        "/chat.postMessage",
        json_response(200, &ratelimited.to_string()),
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    let posted = bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
        .await
        .expect("retried to success");

    assert_eq!(posted.channel, "C123ABC456");
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn slack_http_500_is_retried_then_posts() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/chat.postMessage",
        ResponseTemplate::new(500),
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    let posted = bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
        .await
        .expect("retried to success");

    assert_eq!(posted.channel, "C123ABC456");
    assert_eq!(requests(&server).await.len(), 2);
}

// ------------------------------------------------------ Slack webhooks

#[tokio::test]
async fn slack_webhook_posts_text_and_blocks_to_the_hook_url() {
    let server = MockServer::start().await;
    always(&server, "/services/T/B/X", text_response(200, WEBHOOK_200)).await;

    let posted = webhook_client(&server)
        .post("ignored", "Rolled back storefront", &blocks(2), None)
        .await
        .expect("200 ok");

    assert_eq!(
        posted,
        Posted {
            channel: String::new(),
            ts: String::new()
        }
    );
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method.as_str(), "POST");
    assert_eq!(reqs[0].url.path(), "/services/T/B/X");
    assert!(header(&reqs[0], "content-type").starts_with("application/json"));
    let sent = body(&reqs[0]);
    assert_eq!(
        keys(&sent),
        BTreeSet::from(["text".to_string(), "blocks".to_string()])
    );
    assert!(keys(&fixture(WEBHOOK_REQUEST)).is_subset(&keys(&sent)));
    assert_eq!(sent["text"], "Rolled back storefront");
    assert_eq!(sent["blocks"], json!(blocks(2)));
}

#[tokio::test]
async fn slack_webhook_404_no_team_is_fatal_with_its_code() {
    let server = MockServer::start().await;
    always(&server, "/services/T/B/X", text_response(404, WEBHOOK_404)).await;

    let err = webhook_client(&server)
        .post("ignored", "Rolled back storefront", &blocks(1), None)
        .await
        .expect_err("404 fails");

    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.envelope().code, "no_team");
    assert_eq!(
        requests(&server).await.len(),
        1,
        "a dead hook is not retried"
    );
}
