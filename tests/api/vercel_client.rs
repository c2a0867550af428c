//! The Vercel REST client against a fake Vercel speaking the documented wire
//! format: request shapes, error sorting, retries and response parsing.

use std::time::{Duration, Instant};

use backstop::providers::vercel::{AliasJob, VercelClient};
use backstop::providers::Backoff;
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::domains_asked;

const LIST_ALIASES: &str = include_str!("../fixtures/vercel/list_aliases_200.json");
const GET_ALIAS: &str = include_str!("../fixtures/vercel/get_alias_200.json");
const ASSIGN_ALIAS: &str = include_str!("../fixtures/vercel/assign_alias_200.json");
const NOT_FOUND: &str = include_str!("../fixtures/vercel/error_not_found.json");
const FORBIDDEN: &str = include_str!("../fixtures/vercel/error_forbidden.json");
const RATE_LIMITED: &str = include_str!("../fixtures/vercel/error_rate_limited.json");
const INTERNAL: &str = include_str!("../fixtures/vercel/error_internal.json");
const LIST_DEPLOYMENTS: &str = include_str!("../fixtures/vercel/list_deployments_200.json");

const ASSIGN_PATH: &str = "/v2/deployments/dpl_x/aliases";
const DOMAIN: &str = "shop.example.com";

fn client(server: &MockServer) -> VercelClient {
    VercelClient::new(
        &server.uri(),
        SecretString::from("tok"),
        Some("team_1".into()),
        Duration::from_millis(500),
    )
    .expect("client builds")
    .with_retries(
        3,
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(5),
        },
    )
}

fn json_body(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

fn query(r: &Request, key: &str) -> Option<String> {
    r.url
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

// ---- assign_alias -------------------------------------------------------------

#[tokio::test]
async fn assign_alias_posts_the_domain_with_the_token_and_team() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .and(header("authorization", "Bearer tok"))
        .and(query_param("teamId", "team_1"))
        .and(body_json(json!({"alias": DOMAIN})))
        .respond_with(json_body(200, ASSIGN_ALIAS))
        .expect(1)
        .mount(&server)
        .await;

    client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .expect("assigned");

    let got = requests(&server).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].body,
        br#"{"alias":"shop.example.com"}"#.to_vec(),
        "exactly the documented body"
    );
    assert_eq!(
        got[0]
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
}

#[tokio::test]
async fn conflict_on_assign_counts_as_success() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(
            409,
            r#"{"error":{"code":"alias_in_use","message":"The alias is already assigned to this deployment"}}"#,
        ))
        .mount(&server)
        .await;

    client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .expect("409 is success for assign");
    assert_eq!(requests(&server).await.len(), 1, "no retries");
}

#[tokio::test]
async fn not_found_on_assign_is_fatal_and_keeps_vercels_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(404, NOT_FOUND))
        .mount(&server)
        .await;

    let err = client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("Could not find the RESOURCE: ID"),
        "{err}"
    );
    let envelope = err.envelope();
    assert_eq!(envelope.code, "not_found");
    assert!(!envelope.retryable);
    assert_eq!(
        requests(&server).await.len(),
        1,
        "fatal errors are not retried"
    );
}

#[tokio::test]
async fn rate_limited_assign_waits_as_told_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(429, RATE_LIMITED).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(200, ASSIGN_ALIAS))
        .mount(&server)
        .await;

    let started = Instant::now();
    client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .expect("succeeds after the rate limit");
    let elapsed = started.elapsed();

    assert_eq!(requests(&server).await.len(), 2);
    assert!(
        elapsed >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured, retried after {elapsed:?}"
    );
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(500, INTERNAL))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(200, ASSIGN_ALIAS))
        .mount(&server)
        .await;

    client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .expect("succeeds on the second try");
    let got = requests(&server).await;
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].body, got[1].body,
        "the retry repeats the same request"
    );
}

#[tokio::test]
async fn persistent_server_error_gives_up_after_every_try_with_vercels_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(500, INTERNAL))
        .mount(&server)
        .await;

    let err = client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "a 5xx may succeed later: {err}");
    assert!(
        err.to_string()
            .contains("An unexpected internal error occurred"),
        "{err}"
    );
    assert_eq!(requests(&server).await.len(), 3, "three tries configured");
}

#[tokio::test]
async fn hung_vercel_times_out_on_every_try() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(json_body(200, ASSIGN_ALIAS).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;

    let err = client(&server)
        .assign_alias("dpl_x", DOMAIN)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(requests(&server).await.len(), 3, "every try was made");
}

// ---- rate-limit windows ------------------------------------------------------------

/// Vercel's documented rate-limit headers, read from an answer, decide the
/// next group: two domains do not fit in a window with one call left, so
/// neither is sent, and the error says until when.
#[tokio::test]
async fn a_group_of_writes_that_does_not_fit_the_window_vercel_reported_is_not_sent() {
    let server = MockServer::start().await;
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    Mock::given(method("POST"))
        .and(path(ASSIGN_PATH))
        .respond_with(
            json_body(200, ASSIGN_ALIAS)
                .insert_header("x-ratelimit-limit", "120")
                .insert_header("x-ratelimit-remaining", "1")
                .insert_header("x-ratelimit-reset", reset.to_string().as_str()),
        )
        .mount(&server)
        .await;
    let vercel = client(&server);
    vercel.assign_alias("dpl_x", DOMAIN).await.unwrap();
    let two = [DOMAIN, "www.example.com"].map(String::from);
    let err = vercel.assign_aliases("dpl_x", &two).await.unwrap_err();
    assert!(err.is_retryable());
    assert!(err.retry_after().unwrap() > Duration::from_secs(500));
    assert!(
        err.to_string()
            .contains("alias creation rate limit (120 a window) is spent until"),
        "{err}"
    );
    assert_eq!(requests(&server).await.len(), 1, "neither was sent");
    // One still fits.
    let one = vercel.assign_aliases("dpl_x", &two[..1]).await.unwrap();
    assert!(one[0].1.is_ok());
    assert_eq!(requests(&server).await.len(), 2);
}

// ---- alias_targets --------------------------------------------------------------

#[tokio::test]
async fn alias_targets_reads_every_domain_in_one_list_call_of_the_documented_shape() {
    let server = MockServer::start().await;
    let mut listed: Value = serde_json::from_str(LIST_ALIASES).unwrap();
    // The documented example, for the two domains asked about.
    let mut second = listed["aliases"][0].clone();
    second["alias"] = "www.example.com".into();
    second["deploymentId"] = "dpl_www".into();
    second["deployment"]["id"] = "dpl_www".into();
    listed["aliases"][0]["alias"] = DOMAIN.into();
    listed["aliases"].as_array_mut().unwrap().push(second);
    listed["pagination"]["next"] = Value::Null;
    Mock::given(method("GET"))
        .and(path("/v4/aliases"))
        .and(header("authorization", "Bearer tok"))
        .and(query_param("teamId", "team_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(listed))
        .mount(&server)
        .await;

    let asked = [DOMAIN, "www.example.com", "nowhere.example.com"].map(String::from);
    let targets = client(&server).alias_targets(&asked).await.unwrap();
    assert_eq!(
        targets,
        [
            Some("dpl_5m8CQaRBm3FnWRW1od3wKTpaECPx".to_string()),
            Some("dpl_www".to_string()),
            None
        ],
        "in the order asked; a domain Vercel does not list serves nothing"
    );
    let sent = requests(&server).await;
    assert_eq!(sent.len(), 1, "one call for every domain");
    assert_eq!(
        domains_asked(&sent[0]),
        asked,
        "each domain as its own `domain` parameter"
    );
}

#[tokio::test]
async fn alias_targets_asks_at_most_twenty_domains_a_call_and_takes_the_newest_record() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v4/aliases"))
        .respond_with(|r: &Request| {
            // Each domain twice: an older record and the current one; only
            // `deployment.id` on the current one.
            let aliases: Vec<Value> = domains_asked(r)
                .into_iter()
                .flat_map(|d| {
                    [
                        json!({"alias": d, "deploymentId": "dpl_before", "updatedAt": 1}),
                        json!({"alias": d, "deployment": {"id": format!("dpl_{d}")}, "updatedAt": 2}),
                    ]
                })
                .collect();
            ResponseTemplate::new(200).set_body_json(
                json!({"aliases": aliases, "pagination": {"count": 0, "next": null, "prev": null}}),
            )
        })
        .mount(&server)
        .await;

    let asked: Vec<String> = (0..25).map(|i| format!("d{i}.example.com")).collect();
    let targets = client(&server).alias_targets(&asked).await.unwrap();
    for (d, t) in asked.iter().zip(&targets) {
        assert_eq!(t.as_deref(), Some(format!("dpl_{d}").as_str()));
    }
    let sizes: Vec<usize> = requests(&server)
        .await
        .iter()
        .map(|r| domains_asked(r).len())
        .collect();
    assert_eq!(sizes, [20, 5], "Vercel takes at most 20 domains a call");
}

/// A list that goes on past the pages read (Vercel's filter may be wider
/// than the exact hostname): a domain not found in them is asked for alone,
/// never taken to serve nothing; names match whatever their case.
#[tokio::test]
async fn alias_targets_follows_pages_then_asks_alone_for_a_domain_not_in_them() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v4/aliases"))
        .respond_with(|r: &Request| {
            let page = query(r, "until").map_or(0, |u| 1_000 - u.parse::<i64>().unwrap());
            let mut aliases = vec![json!({"alias": format!("preview-{page}.example.com"), "deploymentId": "dpl_preview"})];
            if page == 0 {
                aliases.push(json!({"alias": "Shop.Example.com", "deploymentId": "dpl_shop"}));
            }
            ResponseTemplate::new(200).set_body_json(json!({
                "aliases": aliases,
                "pagination": {"count": aliases.len(), "next": 1_000 - page - 1, "prev": null}
            }))
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v4/aliases/www.example.com"))
        .respond_with(json_body(200, GET_ALIAS))
        .mount(&server)
        .await;

    let asked = [DOMAIN, "www.example.com"].map(String::from);
    let targets = client(&server).alias_targets(&asked).await.unwrap();
    assert_eq!(
        targets,
        [
            Some("dpl_shop".to_string()),
            Some("dpl_5m8CQaRBm3FnWRW1od3wKTpaECPx".to_string())
        ]
    );
    let sent = requests(&server).await;
    let untils: Vec<Option<String>> = sent
        .iter()
        .filter(|r| r.url.path() == "/v4/aliases")
        .map(|r| query(r, "until"))
        .collect();
    assert_eq!(
        untils,
        [
            None,
            Some("999".into()),
            Some("998".into()),
            Some("997".into()),
            Some("996".into())
        ],
        "each page from the last one's `next`, five at most"
    );
    assert_eq!(sent.len(), 6, "then one read of the domain alone");
}

/// Should Vercel refuse the repeated `domain` filter (a 400), production is
/// still read: each domain alone, as the single-alias endpoint answers it.
#[tokio::test]
async fn alias_targets_reads_each_domain_alone_when_the_list_refuses_its_filter() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v4/aliases"))
        .respond_with(json_body(
            400,
            r#"{"error": {"code": "bad_request", "message": "Invalid query"}}"#,
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v4/aliases/{DOMAIN}")))
        .respond_with(json_body(200, GET_ALIAS))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v4/aliases/www.example.com"))
        .respond_with(json_body(404, NOT_FOUND))
        .mount(&server)
        .await;

    let asked = [DOMAIN, "www.example.com"].map(String::from);
    let targets = client(&server).alias_targets(&asked).await.unwrap();
    assert_eq!(
        targets,
        [Some("dpl_5m8CQaRBm3FnWRW1od3wKTpaECPx".to_string()), None]
    );
}

#[tokio::test]
async fn alias_targets_without_permission_is_an_error_not_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v4/aliases"))
        .respond_with(json_body(403, FORBIDDEN))
        .mount(&server)
        .await;

    let err = client(&server)
        .alias_targets(&[DOMAIN.to_string()])
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(err.envelope().code, "forbidden");
}

// ---- production_deployments -------------------------------------------------------

#[tokio::test]
async fn production_deployments_asks_for_ready_production_and_follows_pagination() {
    let server = MockServer::start().await;
    let second_page = json!({
        "pagination": {"count": 1, "next": null, "prev": 1540095775951i64},
        "deployments": [{"uid": "dpl_older", "url": "docs-older.vercel.app", "created": 1609400000000i64,
                          "createdAt": 1609400000000i64, "ready": 1609400100000i64, "state": "READY",
                          "target": "production", "meta": {"githubCommitSha": "9be1c07"}}]
    });
    Mock::given(method("GET"))
        .and(path("/v6/deployments"))
        .and(query_param("until", "1540095775951"))
        .respond_with(ResponseTemplate::new(200).set_body_json(second_page))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v6/deployments"))
        .and(query_param_is_missing("until"))
        .respond_with(json_body(200, LIST_DEPLOYMENTS))
        .mount(&server)
        .await;

    let listed = client(&server)
        .production_deployments("prj_1", 10)
        .await
        .unwrap();

    let ids: Vec<_> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["dpl_2euZBFqxYdDMDG1jTrHFnNZ2eUVa", "dpl_older"]);
    assert_eq!(listed[0].url.as_deref(), Some("docs-9jaeg38me.vercel.app"));
    assert_eq!(listed[0].created_at_ms, Some(1609492210000));
    assert_eq!(listed[0].ready_at_ms, Some(1609492210000));
    assert_eq!(
        listed[1].meta.get("githubCommitSha"),
        Some(&json!("9be1c07"))
    );

    let got = requests(&server).await;
    assert_eq!(got.len(), 2, "stops when there is no next page");
    for r in &got {
        assert_eq!(query(r, "projectId").as_deref(), Some("prj_1"), "{}", r.url);
        assert_eq!(
            query(r, "target").as_deref(),
            Some("production"),
            "{}",
            r.url
        );
        assert_eq!(query(r, "state").as_deref(), Some("READY"), "{}", r.url);
        assert_eq!(query(r, "teamId").as_deref(), Some("team_1"), "{}", r.url);
    }
    assert_eq!(query(&got[0], "limit").as_deref(), Some("10"));
    assert_eq!(query(&got[0], "until"), None);
    assert_eq!(
        query(&got[1], "limit").as_deref(),
        Some("9"),
        "asks only for what is still missing"
    );
    assert_eq!(
        query(&got[1], "until").as_deref(),
        Some("1540095775951"),
        "pagination.next becomes until"
    );
}

#[tokio::test]
async fn production_deployments_stops_at_an_empty_page() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v6/deployments"))
        .and(query_param("until", "1540095775951"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "pagination": {"count": 0, "next": 1540095775951i64, "prev": null}, "deployments": []
        })))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v6/deployments"))
        .respond_with(json_body(200, LIST_DEPLOYMENTS))
        .mount(&server)
        .await;

    let listed = client(&server)
        .production_deployments("prj_1", 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        requests(&server).await.len(),
        2,
        "an empty page ends the listing even if it names a next page"
    );
}

// ---- Instant Rollback ---------------------------------------------------------------

#[tokio::test]
async fn request_rollback_posts_to_instant_rollback_with_a_description() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/projects/prj_1/rollback/dpl_1"))
        .and(query_param(
            "description",
            "backstop run 42: crash-free sessions below 99.5%",
        ))
        .and(query_param("teamId", "team_1"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;

    client(&server)
        .request_rollback(
            "prj_1",
            "dpl_1",
            "backstop run 42: crash-free sessions below 99.5%",
        )
        .await
        .expect("rollback requested");
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn last_alias_request_reads_the_rollback_job() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v9/projects/prj_1"))
        .and(query_param("teamId", "team_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "prj_1", "name": "storefront",
            "lastAliasRequest": {"jobStatus": "succeeded", "toDeploymentId": "dpl_1", "fromDeploymentId": "dpl_0",
                                 "requestedAt": 1, "type": "rollback"}
        })))
        .mount(&server)
        .await;

    let job = client(&server).last_alias_request("prj_1").await.unwrap();
    assert_eq!(
        job,
        Some(AliasJob {
            job_status: "succeeded".into(),
            to_deployment_id: Some("dpl_1".into()),
            kind: Some("rollback".into())
        })
    );
}

#[tokio::test]
async fn project_without_an_alias_request_has_no_job() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v9/projects/prj_1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "prj_1", "lastAliasRequest": null})),
        )
        .mount(&server)
        .await;

    assert_eq!(
        client(&server).last_alias_request("prj_1").await.unwrap(),
        None
    );
}
