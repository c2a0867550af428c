//! A Vercel fake with state, at the HTTP boundary: assigning an alias really
//! moves it, reading it back tells the truth, and the deployment list is
//! what production saw. Writes can be made to fail (Vercel down).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::*;

/// What the fake knows.
#[derive(Default)]
pub struct VercelState {
    /// Domain → deployment it serves.
    pub aliases: Mutex<BTreeMap<String, String>>,
    /// READY production deployments: `(id, sha, ready_at)`, newest first.
    pub deployments: Mutex<Vec<(String, String, i64)>>,
    /// While true, alias writes answer 500 (Vercel down).
    pub writes_fail: AtomicBool,
    /// Domain → how many more writes to it answer 500.
    pub failing: Mutex<BTreeMap<String, u32>>,
}

impl VercelState {
    /// Points every production domain at `id`.
    pub fn serve(&self, id: &str) {
        let mut a = self.aliases.lock().unwrap();
        for d in DOMAINS {
            a.insert(d.to_string(), id.to_string());
        }
    }

    /// Makes the next `n` writes to `domain` answer 500.
    pub fn fail_writes_for(&self, domain: &str, n: u32) {
        self.failing.lock().unwrap().insert(domain.to_string(), n);
    }

    /// Which deployment each production domain serves.
    pub fn serving(&self) -> Vec<String> {
        let a = self.aliases.lock().unwrap();
        DOMAINS.iter().map(|d| a[*d].clone()).collect()
    }
}

struct Shared(Arc<VercelState>);

struct ReadAlias(Arc<VercelState>);
impl Respond for ReadAlias {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let aliases = self.0.aliases.lock().unwrap();
        let asked: Vec<(String, Option<String>)> = domains_asked(req)
            .into_iter()
            .map(|d| {
                let id = aliases.get(&d).cloned();
                (d, id)
            })
            .collect();
        let serving: Vec<(&str, Option<&str>)> = asked
            .iter()
            .map(|(d, id)| (d.as_str(), id.as_deref()))
            .collect();
        alias_list(&serving)
    }
}

struct WriteAlias(Arc<VercelState>);
impl Respond for WriteAlias {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if self.0.writes_fail.load(Ordering::SeqCst) {
            return ResponseTemplate::new(500).set_body_json(json!({"error": {"code": "internal_server_error", "message": "An unexpected internal error occurred"}}));
        }
        let id = req
            .url
            .path()
            .trim_start_matches("/v2/deployments/")
            .trim_end_matches("/aliases")
            .to_string();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let alias = body["alias"].as_str().unwrap_or_default().to_string();
        if let Some(left) = self
            .0
            .failing
            .lock()
            .unwrap()
            .get_mut(&alias)
            .filter(|n| **n > 0)
        {
            *left -= 1;
            return ResponseTemplate::new(500).set_body_json(json!({"error": {"code": "internal_server_error", "message": "An unexpected internal error occurred"}}));
        }
        let old = self.0.aliases.lock().unwrap().insert(alias.clone(), id);
        ResponseTemplate::new(200).set_body_json(json!({
            "uid": "2WjyKQmM8ZnGcJsPWMrHRHrE", "alias": alias, "created": "2017-04-26T23:00:34.232Z", "oldDeploymentId": old
        }))
    }
}

impl Respond for Shared {
    fn respond(&self, _req: &Request) -> ResponseTemplate {
        let items: Vec<Value> = self
            .0
            .deployments
            .lock()
            .unwrap()
            .iter()
            .map(|(id, sha, at)| {
                json!({"uid": id, "name": "storefront", "url": format!("{id}.vercel.app"), "created": at - 60_000,
                       "createdAt": at - 60_000, "ready": at, "state": "READY", "readyState": "READY",
                       "target": "production", "meta": {"githubCommitSha": sha}})
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({
            "pagination": {"count": items.len(), "next": null, "prev": null},
            "deployments": items
        }))
    }
}

impl TestApp {
    /// Mounts a stateful Vercel serving `live` on every domain, listing
    /// `deployments` (`(id, sha, ready_at)`, any order) as production's.
    pub async fn stateful_vercel(
        &self,
        live: &str,
        deployments: &[(&str, &str, i64)],
    ) -> Arc<VercelState> {
        let state = Arc::new(VercelState::default());
        state.serve(live);
        let mut listed: Vec<_> = deployments
            .iter()
            .map(|(id, sha, at)| (id.to_string(), sha.to_string(), *at))
            .collect();
        listed.sort_by_key(|d| -d.2);
        *state.deployments.lock().unwrap() = listed;
        mount(&self.vercel, &state).await;
        state
    }
}

async fn mount(server: &MockServer, state: &Arc<VercelState>) {
    Mock::given(method("GET"))
        .and(path("/v4/aliases"))
        .respond_with(ReadAlias(state.clone()))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/v2/deployments/.+/aliases$"))
        .respond_with(WriteAlias(state.clone()))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v6/deployments"))
        .respond_with(Shared(state.clone()))
        .mount(server)
        .await;
}
