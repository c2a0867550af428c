//! A Sentry webhook sender that builds and signs metric alerts exactly as
//! Sentry does: compact JSON, ASCII-escaped, HMAC-SHA256 over the bytes
//! sent, and the `Sentry-Hook-*` and `Request-ID` headers (a new
//! `Request-ID` and timestamp on every delivery, as on Sentry's retries).

use serde_json::{json, Value};

use crate::clock::format_time;
use crate::clock::now_ms;
use crate::ingest::signature::{sign, Digest};

/// A crash-free-session metric alert, shaped as Sentry's workflow engine
/// (Monitors + Alerts) sends it since 2025–2026; see
/// `tests/fixtures/sentry/metric_alert_workflow_engine_critical.json`.
#[derive(Debug, Clone)]
pub struct CrashAlert {
    /// `critical`, `warning` or `resolved`.
    pub action: String,
    /// Incident identifier (the open period; `id` is the same).
    pub identifier: String,
    /// Alert rule id.
    pub rule_id: String,
    /// Sentry project slug.
    pub project: String,
    /// Environment the rule is scoped to (`None`: no `environment` key, as
    /// Sentry's 2025 serializer sent it).
    pub environment: Option<String>,
    /// When Sentry detected the incident, Unix ms.
    pub detected_at_ms: i64,
    /// The rule's time window, minutes.
    pub window_minutes: i64,
    /// The classic path's `date_started`: detection minus the window.
    pub classic: bool,
    /// Measured crash-free rate, percent.
    pub rate: f64,
    /// Critical threshold, percent.
    pub threshold: f64,
}

impl CrashAlert {
    /// A critical alert on `project` detected at `detected_at_ms`.
    pub fn critical(project: &str, identifier: &str, detected_at_ms: i64) -> Self {
        Self {
            action: "critical".into(),
            identifier: identifier.into(),
            rule_id: "177111".into(),
            project: project.into(),
            environment: Some("production".into()),
            detected_at_ms,
            window_minutes: 60,
            classic: false,
            rate: 92.1,
            threshold: 99.5,
        }
    }

    /// The webhook body, in the shape Sentry's integration platform sends.
    pub fn body(&self) -> Value {
        let detected = format_time(self.detected_at_ms);
        let started = match self.classic {
            true => format_time(self.detected_at_ms - self.window_minutes * 60_000),
            false => detected.clone(),
        };
        let title = format!("Crash-free sessions below {}%", self.threshold);
        let status = match self.action.as_str() {
            "resolved" => 2,
            "warning" => 10,
            _ => 20,
        };
        let mut rule = json!({
            "id": self.rule_id, "name": title, "organization_id": "5", "status": 0,
            "query_type": 2, "dataset": "metrics", "query": "",
            "aggregate": "percentage(sessions_crashed, sessions) AS _crash_rate_alert_aggregate",
            "threshold_type": 1, "resolve_threshold": self.threshold, "time_window": self.window_minutes as f64,
            "environment": self.environment, "resolution": 1.0, "threshold_period": 1,
            "triggers": [{"id": "294003", "alert_rule_id": self.rule_id, "label": "critical", "threshold_type": 1,
                          "alert_threshold": self.threshold, "resolve_threshold": self.threshold, "actions": []}],
            "projects": [self.project], "owner": null, "original_alert_rule_id": null, "comparison_delta": null,
            "description": "", "detection_type": "static", "event_types": [], "snooze": false
        });
        if self.environment.is_none() {
            if let Some(r) = rule.as_object_mut() {
                r.remove("environment");
            }
        }
        json!({
            "action": self.action,
            "installation": {"uuid": "7a485448-a9e2-4c85-8a3c-4f44175783c9"},
            "data": {
                "metric_alert": {
                    "id": self.identifier, "identifier": self.identifier, "organization_id": "5",
                    "projects": [self.project], "alert_rule": rule, "activities": null,
                    "status": status, "status_method": 3, "type": 2, "title": title,
                    "date_started": started, "date_detected": detected, "date_created": detected, "date_closed": null
                },
                "description_text": format!("{}% sessions crash free rate in the last hour\nThreshold: Static", self.rate),
                "description_title": format!("{}: {title}", capitalise(&self.action)),
                "web_url": format!(
                    "https://sentry.io/organizations/acme/alerts/rules/details/{}/?alert={}&referrer=metric_alert_sentry_app&detection_type=static",
                    self.rule_id, self.identifier
                )
            },
            "actor": {"id": "sentry", "name": "Sentry", "type": "application"}
        })
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Sentry's encoding: compact separators, non-ASCII escaped.
pub fn encode(body: &Value) -> Vec<u8> {
    let compact = serde_json::to_string(body).unwrap_or_default();
    let mut out = String::with_capacity(compact.len());
    for ch in compact.chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            let mut buf = [0u16; 2];
            for unit in ch.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// The headers Sentry sends with `body` for `resource`.
pub fn headers(secret: &str, resource: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("request-id", uuid::Uuid::now_v7().simple().to_string()),
        ("sentry-hook-resource", resource.into()),
        ("sentry-hook-timestamp", (now_ms() / 1000).to_string()),
        (
            "sentry-hook-signature",
            sign(Digest::Sha256, secret.as_bytes(), body),
        ),
    ]
}

/// Delivers a signed webhook; returns the status and the response body.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    resource: &str,
    body: &Value,
) -> reqwest::Result<(u16, Value)> {
    let bytes = encode(body);
    let mut req = client.post(url).body(bytes.clone());
    for (k, v) in headers(secret, resource, &bytes) {
        req = req.header(k, v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(Value::Null);
    Ok((status, json))
}

/// A button press as Slack sends it: a `block_actions` payload,
/// form-encoded, signed over `v0:{timestamp}:{body}`.
#[derive(Debug, Clone)]
pub struct Click {
    /// The run the card belongs to (the button's `value`).
    pub run: String,
    /// Which button.
    pub action: crate::ingest::slack::ClickAction,
    /// Slack user id of who pressed.
    pub user_id: String,
    /// Their user name.
    pub user_name: String,
    /// Where Slack would take an ephemeral answer.
    pub response_url: Option<String>,
}

impl Click {
    /// The form body Slack sends.
    pub fn body(&self) -> String {
        let payload = json!({
            "type": "block_actions",
            "team": {"id": "T0SIM", "domain": "sim"},
            "user": {"id": self.user_id, "username": self.user_name, "name": self.user_name, "team_id": "T0SIM"},
            "api_app_id": "A0SIM",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": "0", "channel_id": "C0SIM", "is_ephemeral": false},
            "trigger_id": format!("{}.0.sim", now_ms()),
            "channel": {"id": "C0SIM", "name": "deploys"},
            "response_url": self.response_url,
            "actions": [{
                "action_id": self.action.action_id(),
                "block_id": "backstop_actions",
                "text": {"type": "plain_text", "text": self.action.name(), "emoji": true},
                "value": self.run,
                "type": "button",
                "action_ts": format!("{}.000000", now_ms() / 1000),
            }],
        });
        format!(
            "payload={}",
            crate::ingest::slack::form_encode(&payload.to_string())
        )
    }

    /// Signs and sends the press to Backstop's interactivity URL; returns
    /// the HTTP status.
    pub async fn deliver(
        &self,
        client: &reqwest::Client,
        url: &str,
        signing_secret: &str,
    ) -> reqwest::Result<u16> {
        let body = self.body();
        let ts = now_ms() / 1000;
        let sig = crate::ingest::slack::sign(signing_secret, ts, body.as_bytes());
        let resp = client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", sig)
            .body(body)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }
}

/// A PagerDuty Webhooks v3 incident event (`incident.acknowledged`, ...)
/// for the incident with `incident_key`, as PagerDuty builds it.
pub fn pagerduty_event(
    event_type: &str,
    incident_key: &str,
    incident_id: &str,
    agent: &str,
) -> Value {
    json!({
        "event": {
            "id": uuid::Uuid::now_v7().to_string(),
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": format_time(now_ms()),
            "agent": {"html_url": "https://sim.pagerduty.com/users/PSIM", "id": "PSIM", "self": "https://api.pagerduty.com/users/PSIM", "summary": agent, "type": "user_reference"},
            "client": null,
            "data": {
                "id": incident_id, "type": "incident", "self": format!("https://api.pagerduty.com/incidents/{incident_id}"),
                "html_url": format!("https://sim.pagerduty.com/incidents/{incident_id}"), "number": 1,
                "status": event_type.trim_start_matches("incident."), "incident_key": incident_key,
                "title": "backstop", "urgency": "high", "resolve_reason": null
            }
        }
    })
}

/// Signs (`X-PagerDuty-Signature: v1=...`) and sends a webhook with its
/// `X-Webhook-Id`; returns the HTTP status.
pub async fn deliver_pagerduty(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &Value,
    webhook_id: &str,
) -> reqwest::Result<u16> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-webhook-id", webhook_id)
        .header(
            "x-pagerduty-signature",
            crate::ingest::pagerduty::sign(secret, &bytes),
        )
        .body(bytes)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_sentry_compact_and_ascii_escaped() {
        let bytes = encode(&json!({"a": "é", "b": [1, 2]}));
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":"\u00e9","b":[1,2]}"#
        );
    }

    #[test]
    fn signs_the_bytes_it_sends() {
        let body = encode(&CrashAlert::critical("web", "1", 0).body());
        let h = headers("s3cret", "metric_alert", &body);
        let sig = &h
            .iter()
            .find(|(k, _)| *k == "sentry-hook-signature")
            .unwrap()
            .1;
        assert!(crate::ingest::signature::verify(
            Digest::Sha256,
            b"s3cret",
            &body,
            sig
        ));
    }
}
