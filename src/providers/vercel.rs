//! Vercel REST client: aliases, Instant Rollback, projects and deployments.
//! `Authorization: Bearer`, `?teamId=` when configured, a timeout on every
//! call, and errors that keep Vercel's `{error: {code, message}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{classify, json_body, send, Backoff, Endpoint, ProviderError};

const PROVIDER: &str = "vercel";

/// Vercel's `domain` filter takes at most 20 domains.
const MAX_DOMAINS_PER_LIST: usize = 20;

/// Pages of a domain-filtered alias list followed at most.
const MAX_LIST_PAGES: usize = 5;

/// A small client around `reqwest::Client` with a configurable base URL.
#[derive(Clone)]
pub struct VercelClient {
    api: Endpoint,
    token: SecretString,
    team_id: Option<String>,
}

/// A production deployment as listed by `GET /v6/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedDeployment {
    /// `dpl_...` (the list calls it `uid`).
    pub id: String,
    /// `*.vercel.app`
    pub url: Option<String>,
    /// Created, Unix ms.
    pub created_at_ms: Option<i64>,
    /// Became ready, Unix ms.
    pub ready_at_ms: Option<i64>,
    /// `meta`.
    pub meta: serde_json::Map<String, Value>,
}

/// `lastAliasRequest` of a project: the state of a rollback or promote job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AliasJob {
    /// `succeeded`, `failed`, `skipped`, `pending`, `in-progress`.
    pub job_status: String,
    /// Deployment the job moves production to.
    pub to_deployment_id: Option<String>,
    /// `rollback` or `promote`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl VercelClient {
    /// A client for `base` (e.g. `https://api.vercel.com`).
    pub fn new(
        base: &str,
        token: SecretString,
        team_id: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let backoff = Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        };
        Ok(Self {
            api: Endpoint::new(PROVIDER, base, timeout, 4, backoff)?,
            token,
            team_id,
        })
    }

    /// Caps the requests in flight at once from this client and its clones.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.api.set_max_in_flight(max);
        self
    }

    /// Overrides the per-request retry schedule (tests use a tiny one).
    pub fn with_retries(mut self, tries: u32, backoff: Backoff) -> Self {
        self.api.set_retries(tries, backoff);
        self
    }

    /// Points `domain` at `deployment` (`POST /v2/deployments/{id}/aliases`).
    /// A 409 because the alias already points there counts as success.
    pub async fn assign_alias(&self, deployment: &str, domain: &str) -> Result<(), ProviderError> {
        let path = format!(
            "/v2/deployments/{}/aliases",
            super::path_segment(deployment)
        );
        let body = serde_json::json!({ "alias": domain });
        // Vercel answers 409 when the alias is already assigned to this
        // deployment; the read-back verifies production either way.
        self.call_accepting(Method::POST, &path, &[], Some(&body), &[409])
            .await
            .map(|_| ())
    }

    /// A deployment's `meta` (`GET /v13/deployments/{id}`): the git facts
    /// Vercel keeps (`githubCommitMessage`, `githubCommitRef`,
    /// `githubCommitAuthorName`, ...).
    pub async fn deployment_meta(&self, id: &str) -> Result<Value, ProviderError> {
        let path = format!("/v13/deployments/{}", super::path_segment(id));
        let v = self.call(Method::GET, &path, &[], None).await?;
        Ok(v["meta"].clone())
    }

    /// The deployment each of `domains` serves, in their order (`None`: no
    /// alias), read with one call per 20 domains (`GET /v4/aliases?domain=`,
    /// Vercel's "aliases list" limit of 500 a minute) rather than one per
    /// domain (its "alias retrieval" limit of 300 per ten minutes, which a
    /// fleet incident's reads alone would spend).
    pub async fn alias_targets(
        &self,
        domains: &[String],
    ) -> Result<Vec<Option<String>>, ProviderError> {
        let mut found: BTreeMap<&str, (i64, Option<String>)> = BTreeMap::new();
        for chunk in domains.chunks(MAX_DOMAINS_PER_LIST) {
            let mut until: Option<String> = None;
            for _ in 0..MAX_LIST_PAGES {
                let mut query: Vec<(&str, &str)> =
                    chunk.iter().map(|d| ("domain", d.as_str())).collect();
                query.push(("limit", "100"));
                if let Some(u) = &until {
                    query.push(("until", u.as_str()));
                }
                let v = self.call(Method::GET, "/v4/aliases", &query, None).await?;
                let items = v.get("aliases").and_then(Value::as_array);
                for item in items.into_iter().flatten() {
                    let Some(domain) = chunk
                        .iter()
                        .find(|d| item["alias"].as_str() == Some(d.as_str()))
                    else {
                        continue;
                    };
                    // Several records for one domain: the newest tells.
                    let at = item["updatedAt"]
                        .as_i64()
                        .or_else(|| item["createdAt"].as_i64())
                        .unwrap_or(0);
                    let target = item["deploymentId"]
                        .as_str()
                        .or_else(|| item.pointer("/deployment/id").and_then(Value::as_str))
                        .map(str::to_owned);
                    if found
                        .get(domain.as_str())
                        .is_none_or(|(seen, _)| at >= *seen)
                    {
                        found.insert(domain.as_str(), (at, target));
                    }
                }
                let all_found = chunk.iter().all(|d| found.contains_key(d.as_str()));
                match v.pointer("/pagination/next").and_then(Value::as_i64) {
                    Some(next) if !all_found => until = Some(next.to_string()),
                    _ => break,
                }
            }
        }
        Ok(domains
            .iter()
            .map(|d| found.get(d.as_str()).and_then(|(_, t)| t.clone()))
            .collect())
    }

    /// Starts an Instant Rollback (`POST /v1/projects/{p}/rollback/{d}`).
    pub async fn request_rollback(
        &self,
        project: &str,
        deployment: &str,
        description: &str,
    ) -> Result<(), ProviderError> {
        let path = format!(
            "/v1/projects/{}/rollback/{}",
            super::path_segment(project),
            super::path_segment(deployment)
        );
        self.call(Method::POST, &path, &[("description", description)], None)
            .await
            .map(|_| ())
    }

    /// The project's `lastAliasRequest` (`GET /v9/projects/{p}`).
    pub async fn last_alias_request(
        &self,
        project: &str,
    ) -> Result<Option<AliasJob>, ProviderError> {
        let v = self
            .call(
                Method::GET,
                &format!("/v9/projects/{}", super::path_segment(project)),
                &[],
                None,
            )
            .await?;
        match v.get("lastAliasRequest") {
            None | Some(Value::Null) => Ok(None),
            Some(job) => serde_json::from_value(job.clone()).map(Some).map_err(|e| {
                ProviderError::invalid(
                    PROVIDER,
                    "invalid_response",
                    format!("unexpected lastAliasRequest: {e}"),
                )
            }),
        }
    }

    /// Recent READY production deployments, newest first, following
    /// `pagination.next` up to `limit` items.
    pub async fn production_deployments(
        &self,
        project: &str,
        limit: usize,
    ) -> Result<Vec<ListedDeployment>, ProviderError> {
        let mut out = Vec::new();
        let mut until: Option<String> = None;
        while out.len() < limit {
            let page = (limit - out.len()).min(100).to_string();
            let mut query = vec![
                ("projectId", project),
                ("target", "production"),
                ("state", "READY"),
                ("limit", page.as_str()),
            ];
            if let Some(u) = &until {
                query.push(("until", u.as_str()));
            }
            let v = self
                .call(Method::GET, "/v6/deployments", &query, None)
                .await?;
            let items = v
                .get("deployments")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if items.is_empty() {
                break;
            }
            out.extend(items.iter().filter_map(listed));
            match v.pointer("/pagination/next").and_then(Value::as_i64) {
                Some(next) => until = Some(next.to_string()),
                None => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        self.call_accepting(method, path, query, body, &[]).await
    }

    /// Like `call`, treating the `accept` statuses as success.
    async fn call_accepting(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        accept: &[u16],
    ) -> Result<Value, ProviderError> {
        self.api
            .retry(|| self.once(method.clone(), path, query, body, accept))
            .await
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        accept: &[u16],
    ) -> Result<Value, ProviderError> {
        let mut req = self
            .api
            .http
            .request(method, self.api.url(path))
            .bearer_auth(self.token.expose_secret())
            .query(query);
        if let Some(team) = &self.team_id {
            req = req.query(&[("teamId", team)]);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let (status, headers, text) = send(PROVIDER, req).await?;
        if status.is_success() || accept.contains(&status.as_u16()) {
            if text.trim().is_empty() || !status.is_success() {
                return Ok(Value::Null);
            }
            return json_body(PROVIDER, status, &text);
        }
        let (code, message) = error_body(status, &text);
        Err(classify(PROVIDER, status, &headers, code, message))
    }
}

/// Vercel's `{"error": {"code", "message"}}`, or the raw text.
fn error_body(status: StatusCode, text: &str) -> (Option<String>, String) {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = v
        .pointer("/error/code")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let t: String = text.chars().take(300).collect();
            if t.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                t
            }
        });
    (code, message)
}

fn listed(v: &Value) -> Option<ListedDeployment> {
    Some(ListedDeployment {
        id: v.get("uid").or_else(|| v.get("id"))?.as_str()?.to_string(),
        url: v.get("url").and_then(Value::as_str).map(str::to_owned),
        created_at_ms: v
            .get("createdAt")
            .or_else(|| v.get("created"))
            .and_then(Value::as_i64),
        ready_at_ms: v.get("ready").and_then(Value::as_i64),
        meta: v
            .get("meta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}
