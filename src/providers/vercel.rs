//! Vercel REST client: aliases, Instant Rollback, projects and deployments.
//! `Authorization: Bearer`, `?teamId=` when configured, a timeout on every
//! call, and errors that keep Vercel's `{error: {code, message}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ratelimit::{Admission, Answer, Windows};
use super::{classify, json_body, send, Backoff, Endpoint, ProviderError};

const PROVIDER: &str = "vercel";

/// Vercel's `domain` filter takes at most 20 domains.
const MAX_DOMAINS_PER_LIST: usize = 20;

/// Pages of a domain-filtered alias list followed at most.
const MAX_LIST_PAGES: usize = 5;

/// Vercel's rate limits that Backstop's calls spend, by the names of its
/// published table (https://vercel.com/docs/limits#rate-limits).
const ALIAS_CREATION: &str = "alias creation";
const ALIASES_LIST: &str = "aliases list";
const ALIAS_RETRIEVAL: &str = "alias retrieval";
const DEPLOYMENTS_RETRIEVAL: &str = "deployments retrieval";
const DEPLOYMENTS_LIST: &str = "deployments list";
/// Not named in Vercel's table: metered only if its answers say so.
const PROJECT_RETRIEVAL: &str = "project retrieval";
const INSTANT_ROLLBACK: &str = "instant rollback";

/// A small client around `reqwest::Client` with a configurable base URL.
#[derive(Clone)]
pub struct VercelClient {
    api: Endpoint,
    token: SecretString,
    team_id: Option<String>,
    windows: Windows,
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
            // Reads go without waiting for a window they do not know yet,
            // up to the published limit; alias writes wait for it.
            windows: Windows::with_priors(&[
                (ALIASES_LIST, 500),
                (ALIAS_RETRIEVAL, 300),
                (DEPLOYMENTS_RETRIEVAL, 500),
                (DEPLOYMENTS_LIST, 1000),
            ]),
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
        let mut results = self
            .assign_aliases(deployment, std::slice::from_ref(&domain.to_string()))
            .await?;
        results.pop().map_or(Ok(()), |(_, r)| r)
    }

    /// Points every one of `domains` at `deployment`, side by side, as one
    /// group against Vercel's alias-creation limit: when its window cannot
    /// take them all, none is sent (the error says until when), so a
    /// service is never half moved for want of budget. Each domain's own
    /// outcome otherwise.
    pub async fn assign_aliases(
        &self,
        deployment: &str,
        domains: &[String],
    ) -> Result<Vec<(String, Result<(), ProviderError>)>, ProviderError> {
        let group = self
            .windows
            .admit(
                PROVIDER,
                ALIAS_CREATION,
                domains.len() as u64,
                // Handed back at once, saying until when: the engine, which
                // knows the step's deadline, decides whether to wait.
                Duration::ZERO,
            )
            .await?;
        let path = format!(
            "/v2/deployments/{}/aliases",
            super::path_segment(deployment)
        );
        let (path, group) = (path.as_str(), &group);
        let writes = domains.iter().map(|domain| {
            let body = serde_json::json!({ "alias": domain });
            async move {
                // Vercel answers 409 when the alias is already assigned to
                // this deployment; the read-back verifies production either way.
                let result = self
                    .tries(group, Method::POST, path, &[], Some(&body), &[409])
                    .await
                    .map(|_| ());
                (domain.clone(), result)
            }
        });
        Ok(futures_util::future::join_all(writes).await)
    }

    /// A deployment's `meta` (`GET /v13/deployments/{id}`): the git facts
    /// Vercel keeps (`githubCommitMessage`, `githubCommitRef`,
    /// `githubCommitAuthorName`, ...).
    pub async fn deployment_meta(&self, id: &str) -> Result<Value, ProviderError> {
        let path = format!("/v13/deployments/{}", super::path_segment(id));
        let v = self
            .call(DEPLOYMENTS_RETRIEVAL, Method::GET, &path, &[], None)
            .await?;
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
        let mut out = Vec::with_capacity(domains.len());
        for chunk in domains.chunks(MAX_DOMAINS_PER_LIST) {
            let (found, complete) = match self.list_aliases_of(chunk).await {
                Ok(listed) => listed,
                // The list refused the filter as sent (a 400): each domain
                // is read alone instead, as it always could be.
                Err(e) if e.status() == Some(400) => {
                    tracing::warn!(error = %e, "Vercel refused the domain-filtered alias list; reading each domain alone");
                    (BTreeMap::new(), false)
                }
                Err(e) => return Err(e),
            };
            for domain in chunk {
                let target = match found.get(domain.to_ascii_lowercase().as_str()) {
                    Some((_, target)) => target.clone(),
                    // Not listed and the list was read to its end: no alias.
                    None if complete => None,
                    // Not within the pages read: asked for alone.
                    None => self.alias_target(domain).await?,
                };
                out.push(target);
            }
        }
        Ok(out)
    }

    /// The newest record of each of `domains` (lower-cased) in the
    /// domain-filtered list, and whether the list was read to its end.
    async fn list_aliases_of(
        &self,
        domains: &[String],
    ) -> Result<(BTreeMap<String, (i64, Option<String>)>, bool), ProviderError> {
        let wanted: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        let mut found: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
        let mut until: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query: Vec<(&str, &str)> =
                domains.iter().map(|d| ("domain", d.as_str())).collect();
            query.push(("limit", "100"));
            if let Some(u) = &until {
                query.push(("until", u.as_str()));
            }
            let v = self
                .call(ALIASES_LIST, Method::GET, "/v4/aliases", &query, None)
                .await?;
            let items = v.get("aliases").and_then(Value::as_array);
            for item in items.into_iter().flatten() {
                let Some(name) = item["alias"].as_str().map(str::to_ascii_lowercase) else {
                    continue;
                };
                if !wanted.contains(&name) {
                    continue;
                }
                // Several records for one domain: the newest tells.
                let at = item["updatedAt"]
                    .as_i64()
                    .or_else(|| item["createdAt"].as_i64())
                    .unwrap_or(0);
                if found.get(&name).is_none_or(|(seen, _)| at >= *seen) {
                    found.insert(name, (at, alias_deployment(item)));
                }
            }
            match v.pointer("/pagination/next").and_then(Value::as_i64) {
                None => return Ok((found, true)),
                Some(_) if wanted.iter().all(|d| found.contains_key(d)) => {
                    return Ok((found, true))
                }
                Some(next) => until = Some(next.to_string()),
            }
        }
        Ok((found, false))
    }

    /// The deployment one domain serves (`GET /v4/aliases/{domain}`, the
    /// "alias retrieval" limit); `None` on 404. Both documented shapes.
    async fn alias_target(&self, domain: &str) -> Result<Option<String>, ProviderError> {
        let path = format!("/v4/aliases/{}", super::path_segment(domain));
        match self
            .call(ALIAS_RETRIEVAL, Method::GET, &path, &[], None)
            .await
        {
            Ok(Value::Array(items)) => Ok(items.first().and_then(alias_deployment)),
            Ok(item) => Ok(alias_deployment(&item)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
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
        self.call(
            INSTANT_ROLLBACK,
            Method::POST,
            &path,
            &[("description", description)],
            None,
        )
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
                PROJECT_RETRIEVAL,
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
                .call(
                    DEPLOYMENTS_LIST,
                    Method::GET,
                    "/v6/deployments",
                    &query,
                    None,
                )
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

    /// One call, admitted against `bucket`'s rate-limit window (a window
    /// resetting within the client's backoff cap is waited for; a later
    /// one is handed back, saying until when), with this client's retries.
    async fn call(
        &self,
        bucket: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let admitted = self
            .windows
            .admit(PROVIDER, bucket, 1, self.api.backoff.max)
            .await?;
        self.tries(&admitted, method, path, query, body, &[]).await
    }

    /// This client's tries of one call of an admitted group (a retry is one
    /// more call out).
    async fn tries(
        &self,
        group: &Admission,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        accept: &[u16],
    ) -> Result<Value, ProviderError> {
        let tried = std::sync::atomic::AtomicBool::new(false);
        self.api
            .retry(|| {
                if tried.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    self.windows.resending(group);
                }
                self.once(group, method.clone(), path, query, body, accept)
            })
            .await
    }

    /// One try; what its answer says of its bucket's window is kept. The
    /// `accept` statuses count as success.
    async fn once(
        &self,
        group: &Admission,
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
        let (status, headers, text) = match send(PROVIDER, req).await {
            Ok(answer) => answer,
            Err(e) => {
                self.windows.record(group, Answer::Lost);
                return Err(e);
            }
        };
        self.windows.record(group, Answer::of(status, &headers));
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

/// The deployment an alias record points at (`deploymentId`, or
/// `deployment.id`).
fn alias_deployment(item: &Value) -> Option<String> {
    item["deploymentId"]
        .as_str()
        .or_else(|| item.pointer("/deployment/id").and_then(Value::as_str))
        .map(str::to_owned)
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
