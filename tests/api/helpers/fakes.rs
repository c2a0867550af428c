//! Provider answers in their documented wire formats, and the Sentry and
//! Vercel payloads tests send.

use backstop::sim::sender::CrashAlert;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

/// PagerDuty answering every event with its documented 202.
pub async fn healthy_pagerduty(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"status": "success", "message": "Event processed", "dedup_key": "from-pagerduty"})))
        .with_priority(10)
        .mount(server)
        .await;
}

/// Slack accepting every message, as `chat.postMessage` documents.
pub async fn healthy_slack(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/chat.postMessage"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "channel": "C123ABC456", "ts": SLACK_TS, "message": {"type": "message", "ts": SLACK_TS}})))
        .with_priority(10)
        .mount(server)
        .await;
}

/// JSON bodies a fake received on `path`.
pub async fn bodies(server: &MockServer, at: &str) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == at)
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        .collect()
}

/// A crash-free-session critical alert exactly as Sentry serialises it
/// (the simulator's sender builds it; tests and the demo share it).
pub fn crash_alert(identifier: &str, started_ms: i64) -> Value {
    CrashAlert::critical("storefront-web", identifier, started_ms).body()
}

/// Compact JSON, as Sentry sends it.
pub fn compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// `GET /v4/aliases` (the domain-filtered list) answering `id` for every
/// domain asked about.
pub fn aliases_response(id: &str) -> AliasList {
    AliasList(id.to_string())
}

/// The domains a `GET /v4/aliases` asked about (its `domain` parameters),
/// in order.
pub fn domains_asked(req: &wiremock::Request) -> Vec<String> {
    req.url
        .query_pairs()
        .filter(|(k, _)| k == "domain")
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The list of aliases serving one deployment, for whichever domains the
/// request names.
pub struct AliasList(String);

impl wiremock::Respond for AliasList {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        let domains = domains_asked(req);
        let serving: Vec<(&str, Option<&str>)> = domains
            .iter()
            .map(|d| (d.as_str(), Some(self.0.as_str())))
            .collect();
        alias_list(&serving)
    }
}

/// A `GET /v4/aliases` answer of the documented shape: each domain with
/// the deployment it serves (a domain serving nothing is not listed).
pub fn alias_list(serving: &[(&str, Option<&str>)]) -> ResponseTemplate {
    let aliases: Vec<Value> = serving
        .iter()
        .filter_map(|(domain, id)| {
            let id = (*id)?;
            Some(json!({
                "alias": domain, "created": "2017-04-26T23:00:34.232Z", "createdAt": 1540095775941i64,
                "deployment": {"id": id, "url": format!("{id}.vercel.app"), "meta": {}},
                "deploymentId": id, "projectId": PROJECT, "uid": format!("alias_{domain}"), "updatedAt": 1540095775941i64
            }))
        })
        .collect();
    ResponseTemplate::new(200).set_body_json(json!({
        "aliases": aliases,
        "pagination": {"count": serving.len(), "next": null, "prev": null}
    }))
}

/// A `deployment.promoted` webhook envelope.
pub fn promoted(id: &str, sha: &str, at_ms: i64) -> Value {
    deployment_event("deployment.promoted", id, sha, at_ms, Some("production"))
}

pub fn deployment_event(
    kind: &str,
    id: &str,
    sha: &str,
    at_ms: i64,
    target: Option<&str>,
) -> Value {
    json!({
        "id": format!("evt_{id}_{kind}"),
        "type": kind,
        "createdAt": at_ms,
        "region": "iad1",
        "payload": {
            "team": {"id": "team_test"},
            "user": {"id": "u1"},
            "deployment": {
                "id": id, "name": "storefront", "url": format!("storefront-{id}.vercel.app"),
                "meta": {"githubCommitSha": sha, "githubCommitRef": "main"}
            },
            "links": {"deployment": "https://vercel.com/acme/storefront/x", "project": "https://vercel.com/acme/storefront"},
            "name": "storefront", "plan": "pro",
            "project": {"id": PROJECT},
            "target": target, "type": "LAMBDAS", "url": format!("storefront-{id}.vercel.app")
        }
    })
}
