//! Sentry REST client: release health from the sessions API (before acting,
//! and while watching a rollback recover), deploys of restored releases, and
//! the project read `backstop check` makes. `Authorization: Bearer` with an
//! internal integration's token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{classify, json_body, send, ProviderError};
use crate::clock::format_time;
use crate::policy::Reading;

const PROVIDER: &str = "sentry";

/// A Sentry API client.
#[derive(Clone)]
pub struct SentryClient {
    api: super::Endpoint,
    token: SecretString,
    org: String,
    /// Project slug → numeric id (the sessions API takes ids).
    ids: Arc<Mutex<HashMap<String, u64>>>,
}

/// One sessions query: crash-free rate and session count per release.
#[derive(Debug, Clone)]
pub struct SessionsQuery<'a> {
    /// Project slugs.
    pub projects: &'a [String],
    /// Environment.
    pub environment: &'a str,
    /// Window start, Unix ms.
    pub start_ms: i64,
    /// Window end, Unix ms.
    pub end_ms: i64,
    /// `session` or `user`.
    pub unit: &'a str,
    /// Only this release (`query=release:"…"`); all releases otherwise.
    pub release: Option<&'a str>,
}

impl SentryClient {
    /// A client for `base` (`https://sentry.io`).
    pub fn new(
        base: &str,
        token: SecretString,
        org: &str,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let backoff = super::Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
        };
        Ok(Self {
            api: super::Endpoint::new(PROVIDER, base, timeout, 2, backoff)?,
            token,
            org: org.to_string(),
            ids: Arc::default(),
        })
    }

    /// Reads a project (`GET /api/0/projects/{org}/{slug}/`).
    pub async fn project(&self, slug: &str) -> Result<Value, ProviderError> {
        let path = format!("/api/0/projects/{}/{slug}/", self.org);
        self.call(Method::GET, &path, &[], None).await
    }

    /// A project's numeric id, read once and kept.
    pub async fn project_id(&self, slug: &str) -> Result<u64, ProviderError> {
        if let Some(id) = self.ids.lock().unwrap_or_else(|e| e.into_inner()).get(slug) {
            return Ok(*id);
        }
        let v = self.project(slug).await?;
        let id = match &v["id"] {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
        .ok_or_else(|| {
            ProviderError::invalid(PROVIDER, "invalid_response", "project without an id")
        })?;
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slug.to_string(), id);
        Ok(id)
    }

    /// Crash-free rate (percent) and sessions per release over a window
    /// (`GET /api/0/organizations/{org}/sessions/`, grouped by release).
    pub async fn health(&self, q: &SessionsQuery<'_>) -> Result<Vec<Reading>, ProviderError> {
        let mut ids = Vec::new();
        for slug in q.projects {
            ids.push(self.project_id(slug).await?.to_string());
        }
        let rate = format!("crash_free_rate({})", q.unit);
        let mut query: Vec<(&str, String)> = vec![
            ("field", rate.clone()),
            ("field", "sum(session)".into()),
            ("groupBy", "release".into()),
            ("environment", q.environment.into()),
            ("start", format_time(q.start_ms)),
            ("end", format_time(q.end_ms)),
            ("interval", "1h".into()),
            ("includeSeries", "0".into()),
        ];
        for id in &ids {
            query.push(("project", id.clone()));
        }
        if let Some(release) = q.release {
            query.push(("query", format!("release:\"{release}\"")));
        }
        let path = format!("/api/0/organizations/{}/sessions/", self.org);
        let v = self.call(Method::GET, &path, &query, None).await?;
        Ok(v["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| {
                let release = g["by"]["release"].as_str()?.to_string();
                let totals = &g["totals"];
                Some(Reading {
                    release,
                    // Sentry answers a 0–1 fraction; thresholds are percent.
                    crash_free: totals[&rate].as_f64().map(|f| f * 100.0),
                    sessions: totals["sum(session)"].as_u64().unwrap_or(0),
                })
            })
            .collect())
    }

    /// The most frequent unresolved issues seen in `release` over the last
    /// day (`GET /api/0/organizations/{org}/issues/`, scope `event:read`):
    /// title, culprit, count, first seen and link of each.
    pub async fn top_issues(
        &self,
        projects: &[String],
        environment: &str,
        release: &str,
        limit: usize,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut query: Vec<(&str, String)> = vec![
            ("query", format!("release:\"{release}\" is:unresolved")),
            ("sort", "freq".into()),
            ("statsPeriod", "24h".into()),
            ("environment", environment.into()),
            ("limit", limit.to_string()),
        ];
        for slug in projects {
            query.push(("project", self.project_id(slug).await?.to_string()));
        }
        let path = format!("/api/0/organizations/{}/issues/", self.org);
        let v = self.call(Method::GET, &path, &query, None).await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .take(limit)
            .map(|i| {
                json!({
                    "title": i["title"],
                    "culprit": i["culprit"],
                    "count": match &i["count"] {
                        Value::String(s) => s.parse::<u64>().map(Value::from).unwrap_or(Value::Null),
                        other => other.clone(),
                    },
                    "first_seen": i["firstSeen"],
                    "link": i["permalink"],
                })
            })
            .collect())
    }

    /// Records a deploy of `version` to `environment`
    /// (`POST /api/0/organizations/{org}/releases/{version}/deploys/`);
    /// returns the deploy's id.
    pub async fn create_deploy(
        &self,
        version: &str,
        environment: &str,
        name: &str,
        projects: &[String],
    ) -> Result<String, ProviderError> {
        let path = format!(
            "/api/0/organizations/{}/releases/{}/deploys/",
            self.org,
            super::path_segment(version)
        );
        let body = json!({"environment": environment, "name": name, "projects": projects});
        let v = self.call(Method::POST, &path, &[], Some(&body)).await?;
        Ok(match &v["id"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        self.api
            .retry(|| async {
                let mut req = self
                    .api
                    .http
                    .request(method.clone(), self.api.url(path))
                    .bearer_auth(self.token.expose_secret())
                    .query(query);
                if let Some(body) = body {
                    req = req.json(body);
                }
                let (status, headers, text) = send(PROVIDER, req).await?;
                if status.is_success() {
                    return json_body(PROVIDER, status, &text);
                }
                let detail = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                Err(classify(PROVIDER, status, &headers, None, detail))
            })
            .await
    }
}
