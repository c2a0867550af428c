//! PagerDuty: Events API v2 and the REST API.

use std::time::{Duration, Instant};

use backstop::providers::pagerduty::Opened;
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

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

#[tokio::test]
async fn pagerduty_rest_resolve_puts_the_incident_it_opened_to_resolved() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/incidents/PT4KHLK"))
        .respond_with(json_response(200, REST_CREATE_INCIDENT_201))
        .mount(&server)
        .await;
    let opened = rest_client(&server)
        .resolve(&page(), Some("PT4KHLK"))
        .await
        .expect("200 is success");
    assert_eq!(opened.incident_id.as_deref(), Some("PT4KHLK"));
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1, "the id is known: no lookup");
    let put = &reqs[0];
    assert_eq!(put.method.as_str(), "PUT");
    assert_eq!(
        body(put),
        json!({"incident": {"type": "incident_reference", "status": "resolved"}})
    );
    assert_eq!(
        header(put, "authorization"),
        format!("Token token={PD_TOKEN}")
    );
    assert_eq!(header(put, "from"), "oncall@example.com");
    assert_eq!(
        header(put, "accept"),
        "application/vnd.pagerduty+json;version=2"
    );
}

#[tokio::test]
async fn pagerduty_rest_resolve_finds_the_open_incident_by_its_key() {
    let server = MockServer::start().await;
    let page = page();
    Mock::given(method("GET"))
        .and(path("/incidents"))
        .and(query_param("incident_key", page.incident_key.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "incidents": [{"id": "PT4KHLK", "type": "incident", "status": "acknowledged", "incident_key": page.incident_key}],
            "limit": 25, "offset": 0, "more": false, "total": null
        })))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/incidents/PT4KHLK"))
        .respond_with(json_response(200, REST_CREATE_INCIDENT_201))
        .mount(&server)
        .await;
    let opened = rest_client(&server).resolve(&page, None).await.unwrap();
    assert_eq!(opened.incident_id.as_deref(), Some("PT4KHLK"));
    let methods: Vec<_> = requests(&server)
        .await
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, vec!["GET", "PUT"]);
}

#[tokio::test]
async fn pagerduty_rest_resolve_with_no_open_incident_changes_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/incidents"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"incidents": [], "limit": 25, "offset": 0, "more": false, "total": null}),
        ))
        .mount(&server)
        .await;
    let opened = rest_client(&server).resolve(&page(), None).await.unwrap();
    assert_eq!(opened.incident_id, None);
    assert_eq!(
        requests(&server).await.len(),
        1,
        "no PUT without an incident"
    );
}
