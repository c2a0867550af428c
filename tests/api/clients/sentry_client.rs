//! Sentry's REST API: release health from the sessions endpoint, deploys
//! of a restored release; PagerDuty change events. Requests are checked
//! against the providers' own documentation, answers are their examples.

use std::time::Duration;

use backstop::providers::sentry::{SentryClient, SessionsQuery};
use backstop::providers::ProviderError;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

use super::*;

const SESSIONS_BY_RELEASE: &str = include_str!("../../fixtures/sentry/sessions_by_release.json");
const DEPLOYS_201: &str = include_str!("../../fixtures/sentry/deploys_create_201.json");
const DEPLOYS_REQUEST_SCHEMA: &str =
    include_str!("../../fixtures/sentry/deploys_create_request.schema.json");
const CHANGE_REQUEST: &str = include_str!("../../fixtures/pagerduty/change_request.json");

fn sentry(server: &MockServer) -> SentryClient {
    SentryClient::new(
        &server.uri(),
        SecretString::from("sntrys_token"),
        "acme",
        Duration::from_millis(500),
    )
    .expect("client builds")
}

async fn project_42(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/api/0/projects/acme/storefront-web/"))
        .respond_with(json_response(
            200,
            r#"{"id": "42", "slug": "storefront-web"}"#,
        ))
        .mount(server)
        .await;
}

fn query_of(req: &Request) -> Vec<(String, String)> {
    req.url.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn sessions_are_asked_per_release_with_numeric_project_ids_and_read_as_percent() {
    let server = MockServer::start().await;
    project_42(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/0/organizations/acme/sessions/"))
        .respond_with(json_response(200, SESSIONS_BY_RELEASE))
        .mount(&server)
        .await;
    let projects = vec!["storefront-web".to_string()];
    let q = SessionsQuery {
        projects: &projects,
        environment: "production",
        start_ms: 1_795_000_000_000,
        end_ms: 1_795_003_600_000,
        unit: "session",
        release: None,
    };
    let client = sentry(&server);
    let readings = client.health(&q).await.expect("200 with groups");
    // Sentry's 0-1 fractions, as percent, per release.
    let rates: Vec<(String, f64)> = readings
        .iter()
        .map(|r| (r.release.clone(), r.crash_free.unwrap()))
        .collect();
    assert_eq!(rates.len(), 3);
    assert_eq!(rates[0].0, "1D");
    assert!((rates[0].1 - 80.0).abs() < 1e-9, "{rates:?}");
    assert!(
        (rates[2].1 - 33.333_333_333_333_34).abs() < 1e-6,
        "{rates:?}"
    );
    // The example asks no `sum(session)`: no sessions counted.
    assert!(readings.iter().all(|r| r.sessions == 0));

    // A second query reuses the project's id.
    let one = SessionsQuery {
        release: Some("1D"),
        unit: "user",
        ..q.clone()
    };
    client.health(&one).await.unwrap();
    let reqs = requests(&server).await;
    let project_reads = reqs
        .iter()
        .filter(|r| r.url.path().starts_with("/api/0/projects/"))
        .count();
    assert_eq!(project_reads, 1, "the slug's id is read once");
    let sessions: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.url.path() == "/api/0/organizations/acme/sessions/")
        .collect();
    assert_eq!(header(sessions[0], "authorization"), "Bearer sntrys_token");
    let first = query_of(sessions[0]);
    let has = |q: &[(String, String)], k: &str, v: &str| q.iter().any(|(a, b)| a == k && b == v);
    assert!(
        has(&first, "field", "crash_free_rate(session)"),
        "{first:?}"
    );
    assert!(has(&first, "field", "sum(session)"), "{first:?}");
    assert!(has(&first, "groupBy", "release"));
    assert!(has(&first, "environment", "production"));
    // Sentry reads `project` with int(): never a slug.
    assert!(has(&first, "project", "42"), "{first:?}");
    assert!(has(&first, "start", "2026-11-18T11:06:40Z"), "{first:?}");
    assert!(has(&first, "end", "2026-11-18T12:06:40Z"), "{first:?}");
    // The minimum interval the endpoint accepts.
    assert!(has(&first, "interval", "1h"));
    assert!(!first.iter().any(|(k, _)| k == "query"));
    let second = query_of(sessions[1]);
    assert!(has(&second, "field", "crash_free_rate(user)"), "{second:?}");
    assert!(has(&second, "query", "release:\"1D\""), "{second:?}");
}

#[tokio::test]
async fn a_deploy_of_the_restored_release_is_created_with_documented_fields() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(
            "/api/0/organizations/acme/releases/storefront%402.14.0/deploys/",
        ))
        .respond_with(json_response(201, DEPLOYS_201))
        .mount(&server)
        .await;
    let projects = vec!["storefront-web".to_string()];
    let id = sentry(&server)
        .create_deploy(
            "storefront@2.14.0",
            "production",
            "backstop rollback",
            &projects,
        )
        .await
        .expect("201");
    assert_eq!(id, "1234567");
    let reqs = requests(&server).await;
    let sent = body(&reqs[0]);
    let schema = fixture(DEPLOYS_REQUEST_SCHEMA);
    assert_known_fields(&sent, &schema["properties"], "deploy");
    assert_eq!(
        sent,
        json!({"environment": "production", "name": "backstop rollback", "projects": ["storefront-web"]})
    );
    assert!(sent["name"].as_str().unwrap().len() <= 64);
}

#[tokio::test]
async fn a_release_sentry_does_not_know_is_a_404_the_caller_can_tell_apart() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json_response(
            404,
            r#"{"detail": "The requested resource does not exist"}"#,
        ))
        .mount(&server)
        .await;
    let err = sentry(&server)
        .create_deploy("nope", "production", "backstop rollback", &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Fatal {
                status: Some(404),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("The requested resource does not exist"),
        "{err}"
    );
    assert!(!err.to_string().contains("sntrys_token"));
}

#[tokio::test]
async fn a_change_event_has_the_documented_shape_and_opens_no_incident() {
    let server = MockServer::start().await;
    always(
        &server,
        "/v2/change/enqueue",
        json_response(202, EVENTS_202),
    )
    .await;
    let page = page();
    let sent = events_client(&server)
        .change_event(
            "Backstop rolled back storefront from dpl_a to dpl_b",
            "2026-08-20T12:26:40Z",
            &json!({"service": "storefront"}),
            &page.links,
        )
        .await
        .expect("202");
    assert_eq!(sent, Some(()));
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    let body = body(&reqs[0]);
    let reference = fixture(CHANGE_REQUEST);
    assert_known_fields(&body, &reference, "change event");
    assert_known_fields(&body["payload"], &reference["payload"], "change payload");
    assert_eq!(body["routing_key"], ROUTING_KEY);
    assert!(body.get("event_action").is_none() && body.get("dedup_key").is_none());
    assert_eq!(body["links"][0]["text"], "Sentry alert");
    // REST mode has no routing key: nothing is sent.
    let rest = MockServer::start().await;
    let none = rest_client(&rest)
        .change_event("x", "2026-08-20T12:26:40Z", &json!({}), &[])
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(requests(&rest).await.is_empty());
}

#[tokio::test]
async fn top_issues_are_asked_for_the_release_and_read_from_sentrys_published_example() {
    let server = MockServer::start().await;
    project_42(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/0/organizations/acme/issues/"))
        .respond_with(json_response(
            200,
            include_str!("../../fixtures/sentry/issues_list_200.json"),
        ))
        .mount(&server)
        .await;
    let issues = sentry(&server)
        .top_issues(&["storefront-web".to_string()], "production", "3f2c1a9", 5)
        .await
        .expect("read");
    assert_eq!(issues.len(), 1);
    let i = &issues[0];
    assert_eq!(i["title"], "This is an example Python exception");
    assert_eq!(i["culprit"], "raven.scripts.runner in main");
    assert_eq!(i["count"], 150);
    assert_eq!(i["first_seen"], "2018-11-06T21:19:55Z");
    assert_eq!(
        i["link"],
        "https://sentry.io/the-interstellar-jurisdiction/pump-station/issues/1/"
    );
    let reqs = requests(&server).await;
    let asked = reqs
        .iter()
        .find(|r| r.url.path() == "/api/0/organizations/acme/issues/")
        .expect("asked");
    assert_eq!(header(asked, "authorization"), "Bearer sntrys_token");
    let q = query_of(asked);
    let has = |k: &str, v: &str| q.iter().any(|(a, b)| a == k && b == v);
    assert!(has("query", "release:\"3f2c1a9\" is:unresolved"), "{q:?}");
    assert!(has("sort", "freq") && has("statsPeriod", "24h"), "{q:?}");
    assert!(
        has("environment", "production") && has("project", "42"),
        "{q:?}"
    );
    assert!(has("limit", "5"), "{q:?}");
}
