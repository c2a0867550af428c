//! The PagerDuty and Slack clients against a fake provider speaking the real
//! wire formats: what goes on the wire, and how every answer is sorted into
//! success, retry or a fatal error that keeps the provider's words.
//! Response bodies are the providers' own examples (`tests/fixtures/`).
//! `pagerduty_client` and `slack_client` hold the tests; this module their fakes.

mod ai_client;
mod pagerduty_client;
mod sentry_client;
mod slack_client;

use std::collections::BTreeSet;
use std::time::Duration;

use backstop::providers::pagerduty::{self, Page, PagerDutyClient};
use backstop::providers::slack::{self, SlackClient};
use backstop::providers::Backoff;
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const ROUTING_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";
pub const PD_TOKEN: &str = "y_NbAkKc66ryYTWUXYEu";

pub const EVENTS_202: &str = include_str!("../../fixtures/pagerduty/events_202.json");
pub const EVENTS_ERROR: &str = include_str!("../../fixtures/pagerduty/events_error.json");
pub const EVENTS_TRIGGER_REQUEST: &str =
    include_str!("../../fixtures/pagerduty/events_trigger_request.json");
pub const EVENTS_RESOLVE_REQUEST: &str =
    include_str!("../../fixtures/pagerduty/events_resolve_request.json");
pub const REST_CREATE_INCIDENT_REQUEST: &str =
    include_str!("../../fixtures/pagerduty/rest_create_incident_request.json");
pub const REST_CREATE_INCIDENT_201: &str =
    include_str!("../../fixtures/pagerduty/rest_create_incident_201.json");
pub const REST_ERROR: &str = include_str!("../../fixtures/pagerduty/rest_error.json");
pub const REST_429: &str = include_str!("../../fixtures/pagerduty/rest_429.json");
pub const CHAT_POST_MESSAGE_200: &str =
    include_str!("../../fixtures/slack/chat_post_message_200.json");
pub const CHAT_POST_MESSAGE_ERROR: &str =
    include_str!("../../fixtures/slack/chat_post_message_error.json");
pub const CHAT_UPDATE_200: &str = include_str!("../../fixtures/slack/chat_update_200.json");
pub const CHAT_UPDATE_ERROR: &str = include_str!("../../fixtures/slack/chat_update_error.json");
pub const USERGROUP_USERS_200: &str =
    include_str!("../../fixtures/slack/usergroups_users_list_200.json");
pub const WEBHOOK_REQUEST: &str =
    include_str!("../../fixtures/slack/incoming_webhook_request.json");
pub const WEBHOOK_200: &str = include_str!("../../fixtures/slack/incoming_webhook_200.txt");
pub const WEBHOOK_404: &str = include_str!("../../fixtures/slack/incoming_webhook_404.txt");

// ---------------------------------------------------------------- helpers

pub fn fixture(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// Short waits so retries without a provider-given delay are fast; a test
/// that sees ~1 s knows the client waited because the provider said so.
pub fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_secs(5),
    }
}

pub fn events_client(server: &MockServer) -> PagerDutyClient {
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

pub fn rest_client(server: &MockServer) -> PagerDutyClient {
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

pub fn bot_client(server: &MockServer) -> SlackClient {
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

pub fn webhook_client(server: &MockServer) -> SlackClient {
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

pub fn page() -> Page {
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

pub fn blocks(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("block {i}")}}))
        .collect()
}

pub fn json_response(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json")
}

pub fn text_response(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_owned(), "text/html")
}

/// `POST route` answers `first` once, then `then` for every later request.
pub async fn once_then(
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

pub async fn always(server: &MockServer, route: &str, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(route))
        .respond_with(response)
        .mount(server)
        .await;
}

pub async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

pub fn body(req: &Request) -> Value {
    req.body_json().expect("request body is JSON")
}

pub fn header<'a>(req: &'a Request, name: &str) -> &'a str {
    req.headers
        .get(name)
        .unwrap_or_else(|| panic!("request has no {name} header"))
        .to_str()
        .expect("header is ASCII")
}

pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// Every field we send exists in the provider's own example of the request.
pub fn assert_known_fields(sent: &Value, reference: &Value, what: &str) {
    let unknown: Vec<_> = keys(sent).difference(&keys(reference)).cloned().collect();
    assert!(
        unknown.is_empty(),
        "{what}: fields the provider does not know: {unknown:?}"
    );
}
