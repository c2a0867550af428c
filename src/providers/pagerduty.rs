//! PagerDuty: Events API v2 (`POST /v2/enqueue`, the default) or the REST
//! API (`POST /incidents`, for a named escalation policy). The same
//! `dedup_key` / `incident_key` always means the same incident.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{json, Value};

use super::{classify, json_body, send, Backoff, Endpoint, ProviderError};

const PROVIDER: &str = "pagerduty";
/// PagerDuty's limit on `payload.summary`.
pub const SUMMARY_MAX: usize = 1024;
/// PagerDuty's limit on `dedup_key`.
pub const DEDUP_MAX: usize = 255;

/// Where incidents are opened.
#[derive(Clone)]
pub enum Target {
    /// Events API v2 with an integration (routing) key.
    Events {
        /// 32-character integration key.
        routing_key: SecretString,
    },
    /// REST API with an API token.
    Rest {
        /// REST API token (`Authorization: Token token=...`).
        token: SecretString,
        /// `From:` header: a PagerDuty user's email.
        from: String,
        /// Service id the incident belongs to.
        service_id: String,
        /// Optional escalation policy id.
        escalation_policy_id: Option<String>,
    },
}

/// A PagerDuty client.
#[derive(Clone)]
pub struct PagerDutyClient {
    api: Endpoint,
    target: Target,
}

/// One page to open (or resolve).
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// Same key, same incident: PagerDuty's `dedup_key` (Events) or
    /// `incident_key` (REST). Not the alert's dedup key.
    pub incident_key: String,
    /// One line (truncated to 1024 chars).
    pub summary: String,
    /// `critical`, `error`, `warning`, `info`.
    pub severity: String,
    /// Service name.
    pub component: String,
    /// Vercel project.
    pub group: String,
    /// `rollback`, `rollback-failed`, `escalation`, `dry-run`.
    pub class: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Everything else.
    pub custom_details: Value,
    /// `(href, text)`.
    pub links: Vec<(String, String)>,
}

/// What PagerDuty said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Opened {
    /// The incident key PagerDuty grouped it under.
    pub incident_key: String,
    /// REST incident id.
    pub incident_id: Option<String>,
    /// Link to the incident, when known.
    pub html_url: Option<String>,
    /// PagerDuty already had an open incident with this key.
    pub already_open: bool,
}

/// Cuts `s` to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl PagerDutyClient {
    /// A client for `base` (`https://events.pagerduty.com` or `https://api.pagerduty.com`).
    pub fn new(base: &str, target: Target, timeout: Duration) -> Result<Self, ProviderError> {
        let backoff = Backoff {
            base: Duration::from_millis(300),
            max: Duration::from_secs(20),
        };
        Ok(Self {
            api: Endpoint::new(PROVIDER, base, timeout, 3, backoff)?,
            target,
        })
    }

    /// Caps the requests in flight at once from this client and its clones.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.api.set_max_in_flight(max);
        self
    }

    /// Overrides the per-request retry schedule.
    pub fn with_retries(mut self, tries: u32, backoff: Backoff) -> Self {
        self.api.set_retries(tries, backoff);
        self
    }

    /// Opens (or re-triggers) the incident for `page.incident_key`.
    pub async fn trigger(&self, page: &Page) -> Result<Opened, ProviderError> {
        self.api
            .retry(|| async {
                match &self.target {
                    Target::Events { routing_key } => {
                        self.enqueue(routing_key, "trigger", page).await
                    }
                    Target::Rest { .. } => self.create_incident(page).await,
                }
            })
            .await
    }

    /// Resolves the incident for `page.incident_key`: an Events API
    /// `resolve`, or in REST mode `PUT /incidents/{id}` with status
    /// `resolved` (the id as opened, else found by its incident key).
    pub async fn resolve(
        &self,
        page: &Page,
        incident_id: Option<&str>,
    ) -> Result<Opened, ProviderError> {
        self.api
            .retry(|| async {
                match &self.target {
                    Target::Events { routing_key } => {
                        self.enqueue(routing_key, "resolve", page).await
                    }
                    Target::Rest { .. } => self.resolve_incident(page, incident_id).await,
                }
            })
            .await
    }

    /// Sends a change event (`POST /v2/change/enqueue`, same routing key
    /// as alert events) so the service's change timeline shows a rollback.
    /// Events API only: in REST mode there is no routing key, and `None`
    /// says nothing was sent.
    pub async fn change_event(
        &self,
        summary: &str,
        timestamp: &str,
        custom_details: &Value,
        links: &[(String, String)],
    ) -> Result<Option<()>, ProviderError> {
        let Target::Events { routing_key } = &self.target else {
            return Ok(None);
        };
        let body = Self::change_body(
            routing_key.expose_secret(),
            summary,
            timestamp,
            custom_details,
            links,
        );
        self.api
            .retry(|| async {
                let req = self
                    .api
                    .http
                    .post(self.api.url("/v2/change/enqueue"))
                    .json(&body);
                let (status, headers, text) = send(PROVIDER, req).await?;
                if status.is_success() {
                    return Ok(Some(()));
                }
                Err(classify(
                    PROVIDER,
                    status,
                    &headers,
                    None,
                    error_text(&text),
                ))
            })
            .await
    }

    /// The change event body: no `event_action`, no `dedup_key`.
    pub fn change_body(
        routing_key: &str,
        summary: &str,
        timestamp: &str,
        custom_details: &Value,
        links: &[(String, String)],
    ) -> Value {
        json!({
            "routing_key": routing_key,
            "payload": {
                "summary": truncate(summary, SUMMARY_MAX),
                "timestamp": timestamp,
                "source": "backstop",
                "custom_details": custom_details,
            },
            "links": links
                .iter()
                .map(|(href, text)| json!({"href": href, "text": text}))
                .collect::<Vec<_>>(),
        })
    }

    /// REST: adds a note to incident `id` (`POST /incidents/{id}/notes`).
    /// Tried once: PagerDuty has no idempotency key for notes, and a retry
    /// after an answer lost in transit would add it twice.
    pub async fn note(&self, id: &str, content: &str) -> Result<(), ProviderError> {
        let body = json!({"note": {"content": truncate(content, 25_000)}});
        let path = format!("/incidents/{}/notes", super::path_segment(id));
        rest_json(self.rest(Method::POST, &path).json(&body))
            .await
            .map(|_| ())
    }

    /// REST: the contents of incident `id`'s notes
    /// (`GET /incidents/{id}/notes`), to tell whether a note is there.
    pub async fn notes(&self, id: &str) -> Result<Vec<String>, ProviderError> {
        let path = format!("/incidents/{}/notes", super::path_segment(id));
        let v = self
            .api
            .retry(|| async { rest_json(self.rest(Method::GET, &path)).await })
            .await?;
        Ok(v["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["content"].as_str().map(str::to_owned))
            .collect())
    }

    /// A harmless authenticated call: reads the REST service; for the
    /// Events API (which has no read call) only checks the key's shape.
    pub async fn check(&self) -> Result<String, ProviderError> {
        match &self.target {
            Target::Events { routing_key } if routing_key.expose_secret().len() == 32 => {
                Ok("Events API v2 has no read-only call; integration key is well-formed".into())
            }
            Target::Events { .. } => Err(ProviderError::invalid(
                PROVIDER,
                "invalid_routing_key",
                "integration key must be 32 characters",
            )),
            Target::Rest { service_id, .. } => {
                let req = self.rest(Method::GET, &format!("/services/{service_id}"));
                let (status, headers, text) = send(PROVIDER, req).await?;
                if status.is_success() {
                    return Ok(format!("service {service_id} readable"));
                }
                Err(classify(
                    PROVIDER,
                    status,
                    &headers,
                    None,
                    error_text(&text),
                ))
            }
        }
    }

    /// The Events API v2 body for `action`.
    pub fn event_body(routing_key: &str, action: &str, page: &Page) -> Value {
        let mut body = json!({
            "routing_key": routing_key,
            "event_action": action,
            "dedup_key": truncate(&page.incident_key, DEDUP_MAX),
        });
        if action == "trigger" {
            body["payload"] = json!({
                "summary": truncate(&page.summary, SUMMARY_MAX),
                "source": "backstop",
                "severity": page.severity,
                "timestamp": page.timestamp,
                "component": page.component,
                "group": page.group,
                "class": page.class,
                "custom_details": page.custom_details,
            });
            body["links"] = page
                .links
                .iter()
                .map(|(href, text)| json!({"href": href, "text": text}))
                .collect();
            body["client"] = json!("Backstop");
        }
        body
    }

    async fn enqueue(
        &self,
        routing_key: &SecretString,
        action: &str,
        page: &Page,
    ) -> Result<Opened, ProviderError> {
        let body = Self::event_body(routing_key.expose_secret(), action, page);
        let req = self.api.http.post(self.api.url("/v2/enqueue")).json(&body);
        let (status, headers, text) = send(PROVIDER, req).await?;
        if status.is_success() {
            let v = json_body(PROVIDER, status, &text)?;
            let key = v
                .get("dedup_key")
                .and_then(Value::as_str)
                .unwrap_or(&page.incident_key);
            return Ok(Opened {
                incident_key: key.to_string(),
                incident_id: None,
                html_url: None,
                already_open: false,
            });
        }
        Err(classify(
            PROVIDER,
            status,
            &headers,
            None,
            error_text(&text),
        ))
    }

    /// A REST API request with the token, `From:` and the v2 `Accept`.
    fn rest(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .api
            .http
            .request(method, self.api.url(path))
            .header("Accept", "application/vnd.pagerduty+json;version=2");
        if let Target::Rest { token, from, .. } = &self.target {
            req = req
                .header(
                    "Authorization",
                    format!("Token token={}", token.expose_secret()),
                )
                .header("From", from);
        }
        req
    }

    /// REST: resolves the incident `id`, or the open one whose incident key
    /// is the page's. No open incident is nothing to resolve.
    async fn resolve_incident(
        &self,
        page: &Page,
        id: Option<&str>,
    ) -> Result<Opened, ProviderError> {
        let key = truncate(&page.incident_key, DEDUP_MAX);
        let id = match id {
            Some(id) => Some(id.to_string()),
            None => self.open_incident(&key).await?,
        };
        let Some(id) = id else {
            return Ok(Opened {
                incident_key: key,
                incident_id: None,
                html_url: None,
                already_open: false,
            });
        };
        let body = json!({"incident": {"type": "incident_reference", "status": "resolved"}});
        let req = self
            .rest(Method::PUT, &format!("/incidents/{id}"))
            .json(&body);
        let v = rest_json(req).await?;
        Ok(Opened {
            incident_key: key,
            incident_id: Some(id),
            html_url: v
                .pointer("/incident/html_url")
                .and_then(Value::as_str)
                .map(str::to_owned),
            already_open: false,
        })
    }

    /// REST: the id of the triggered or acknowledged incident with `key`.
    async fn open_incident(&self, key: &str) -> Result<Option<String>, ProviderError> {
        let req = self.rest(Method::GET, "/incidents").query(&[
            ("incident_key", key),
            ("statuses[]", "triggered"),
            ("statuses[]", "acknowledged"),
        ]);
        let v = rest_json(req).await?;
        Ok(v["incidents"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|i| i["id"].as_str())
            .map(str::to_owned))
    }

    async fn create_incident(&self, page: &Page) -> Result<Opened, ProviderError> {
        let Target::Rest {
            service_id,
            escalation_policy_id,
            ..
        } = &self.target
        else {
            unreachable!("create_incident is only called in REST mode")
        };
        let urgency = if page.severity == "critical" || page.severity == "error" {
            "high"
        } else {
            "low"
        };
        let mut incident = json!({
            "type": "incident",
            "title": truncate(&page.summary, SUMMARY_MAX),
            "service": {"id": service_id, "type": "service_reference"},
            "urgency": urgency,
            "incident_key": truncate(&page.incident_key, DEDUP_MAX),
            "body": {"type": "incident_body", "details": serde_json::to_string_pretty(&page.custom_details).unwrap_or_default()},
        });
        if let Some(ep) = escalation_policy_id {
            incident["escalation_policy"] =
                json!({"id": ep, "type": "escalation_policy_reference"});
        }
        let req = self
            .rest(Method::POST, "/incidents")
            .json(&json!({ "incident": incident }));
        let (status, headers, text) = send(PROVIDER, req).await?;
        if status.is_success() {
            let v = json_body(PROVIDER, status, &text)?;
            let inc = v.get("incident").cloned().unwrap_or(Value::Null);
            return Ok(Opened {
                incident_key: truncate(&page.incident_key, DEDUP_MAX),
                incident_id: inc.get("id").and_then(Value::as_str).map(str::to_owned),
                html_url: inc
                    .get("html_url")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                already_open: false,
            });
        }
        let message = error_text(&text);
        if status == StatusCode::BAD_REQUEST
            && message
                .to_lowercase()
                .contains("matching dedup key already exists")
        {
            return Ok(Opened {
                incident_key: truncate(&page.incident_key, DEDUP_MAX),
                incident_id: None,
                html_url: None,
                already_open: true,
            });
        }
        let code = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            v.pointer("/error/code")
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
        });
        Err(classify(PROVIDER, status, &headers, code, message))
    }
}

/// A REST call whose success is a JSON body; anything else is sorted with
/// PagerDuty's own words.
async fn rest_json(req: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
    let (status, headers, text) = send(PROVIDER, req).await?;
    if !status.is_success() {
        let message = error_text(&text);
        return Err(classify(PROVIDER, status, &headers, None, message));
    }
    json_body(PROVIDER, status, &text)
}

/// PagerDuty's words from either error shape (`{status, message, errors}`
/// or `{error: {code, message, errors}}`).
fn error_text(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return text.chars().take(300).collect();
    };
    let root = v.get("error").unwrap_or(&v);
    let message = root
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let errors: Vec<String> = root
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if errors.is_empty() {
        message.to_string()
    } else {
        format!("{message}: {}", errors.join("; "))
    }
}
