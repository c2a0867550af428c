//! Sentry integration-platform webhooks: verify, then parse leniently into an
//! [`Alert`]. Only `action`, `installation`, the incident identifier and the
//! rule id are required; everything else is optional and malformed
//! timestamps become `None`, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};

use super::{header, require_json, signature, IngestError};
use crate::clock::parse_time;

/// Verifies a delivery before anything is parsed: `Sentry-Hook-Signature`
/// (HMAC-SHA256 of the raw body, compared in constant time), then
/// `Sentry-Hook-Timestamp` within `tolerance` of `now_ms`, then the JSON
/// content type. Returns the `Sentry-Hook-Resource` it names.
pub fn verify<'h>(
    headers: &'h HeaderMap,
    body: &[u8],
    secret: &SecretString,
    tolerance: std::time::Duration,
    now_ms: i64,
) -> Result<&'h str, IngestError> {
    let sig = header(headers, "sentry-hook-signature").ok_or(IngestError::MissingSignature)?;
    let digest = signature::Digest::Sha256;
    if !signature::verify(digest, secret.expose_secret().as_bytes(), body, sig) {
        return Err(IngestError::BadSignature);
    }
    super::check_timestamp(header(headers, "sentry-hook-timestamp"), now_ms, tolerance)?;
    require_json(headers)?;
    Ok(header(headers, "sentry-hook-resource").unwrap_or(""))
}

/// `Sentry-Hook-Resource` values Backstop acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// A metric alert (crash-free rate and friends).
    MetricAlert,
    /// An issue alert; its event carries a release.
    EventAlert,
}

impl Resource {
    /// Maps the header value; `None` for resources Backstop ignores.
    pub fn from_header(value: &str) -> Option<Self> {
        match value {
            "metric_alert" => Some(Self::MetricAlert),
            "event_alert" => Some(Self::EventAlert),
            _ => None,
        }
    }
}

/// The facts of one alert delivery that the decision needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Metric or issue alert.
    pub resource: Resource,
    /// `critical`, `warning`, `resolved`, `open`, or `triggered` (issue alerts).
    pub action: String,
    /// Alert rule id.
    pub rule_id: String,
    /// Alert rule name.
    pub rule_name: Option<String>,
    /// Incident identifier (metric alerts) or issue id (issue alerts).
    pub identifier: String,
    /// Sentry project slugs.
    pub projects: Vec<String>,
    /// Environment the rule or event is scoped to (`None`: `null`, or absent).
    pub environment: Option<String>,
    /// The rule carried no `environment` key at all (Sentry's 2025
    /// serializer), as opposed to `environment: null` (a rule not scoped to
    /// one environment).
    pub environment_absent: bool,
    /// The rule's aggregate, e.g. `percentage(sessions_crashed, sessions) AS ...`.
    pub aggregate: Option<String>,
    /// The critical trigger's threshold (percent crash-free).
    pub threshold: Option<f64>,
    /// The measured value from `description_text` (percent).
    pub measured: Option<f64>,
    /// When Sentry detected the incident, Unix ms: `date_detected`, else
    /// `date_created`, else `date_started`; `None` if absent or malformed.
    /// (On Sentry's classic path `date_started` is the detection time minus
    /// the rule's time window, so it is not when the alert fired.)
    pub detected_at_ms: Option<i64>,
    /// The rule's time window (`alert_rule.time_window`, minutes), in ms.
    pub window_ms: Option<i64>,
    /// Sentry sent the webhook with `"metric_alert": null` (serialising the
    /// alert timed out): only the action, the rule id and the incident
    /// from `web_url` are known.
    pub details_missing: bool,
    /// Link to the alert in Sentry.
    pub web_url: Option<String>,
    /// Human title (`description_title`, incident title or event title).
    pub title: Option<String>,
    /// The release (issue alerts only: metric alerts carry none).
    pub release: Option<String>,
}

impl Alert {
    /// The deduplication key: `(resource, rule id, identifier, action)`.
    pub fn dedup_key(&self) -> String {
        let resource = match self.resource {
            Resource::MetricAlert => "metric_alert",
            Resource::EventAlert => "event_alert",
        };
        format!(
            "{resource}:{}:{}:{}",
            self.rule_id, self.identifier, self.action
        )
    }

    /// True when the rule measures a crash-free session or user rate.
    pub fn is_crash_free_rate(&self) -> bool {
        self.aggregate.as_deref().is_some_and(|a| {
            let a = a.replace(' ', "");
            a.contains("percentage(sessions_crashed,sessions)")
                || a.contains("percentage(users_crashed,users)")
                || a.contains("crash_free_rate(")
                || a.contains("_crash_rate_alert_aggregate")
        })
    }

    /// True for a fresh critical signal (`critical`, or an issue alert firing).
    pub fn is_critical(&self) -> bool {
        self.action == "critical"
            || (self.resource == Resource::EventAlert && self.action == "triggered")
    }
}

/// Parses a verified body. Fails only when a required field is missing.
pub fn parse(resource: Resource, body: &[u8]) -> Result<Alert, IngestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| IngestError::Malformed(format!("body is not JSON: {e}")))?;
    let action = v
        .get("action")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| missing("action"))?;
    if !v.get("installation").is_some_and(Value::is_object) {
        return Err(missing("installation"));
    }
    match resource {
        Resource::MetricAlert => parse_metric(&v, action, body),
        Resource::EventAlert => parse_event(&v, action),
    }
}

fn parse_metric(v: &Value, action: String, body: &[u8]) -> Result<Alert, IngestError> {
    let data = v.get("data").ok_or_else(|| missing("data"))?;
    let incident = data
        .get("metric_alert")
        .ok_or_else(|| missing("data.metric_alert"))?;
    if incident.is_null() {
        return Ok(without_details(data, action, body));
    }
    let rule = incident.get("alert_rule").unwrap_or(&Value::Null);
    let identifier =
        str_at(incident, &["identifier"]).ok_or_else(|| missing("data.metric_alert.identifier"))?;
    let rule_id =
        str_at(rule, &["id"]).ok_or_else(|| missing("data.metric_alert.alert_rule.id"))?;
    let mut projects = strings(incident.get("projects"));
    if projects.is_empty() {
        projects = strings(rule.get("projects"));
    }
    let detected = ["date_detected", "date_created", "date_started"]
        .iter()
        .find_map(|k| str_at(incident, &[k]).and_then(|s| parse_time(&s)));
    let window_ms = rule
        .get("time_window")
        .and_then(number)
        .filter(|m| m.is_finite() && *m > 0.0)
        .map(|m| (m * 60_000.0) as i64);
    Ok(Alert {
        resource: Resource::MetricAlert,
        action,
        rule_id,
        rule_name: str_at(rule, &["name"]),
        identifier,
        projects,
        environment: str_at(rule, &["environment"]),
        environment_absent: rule.is_object() && rule.get("environment").is_none(),
        aggregate: str_at(rule, &["aggregate"]),
        threshold: critical_threshold(rule),
        measured: str_at(data, &["description_text"]).and_then(|t| leading_percent(&t)),
        detected_at_ms: detected,
        window_ms,
        details_missing: false,
        web_url: str_at(data, &["web_url"]),
        title: str_at(data, &["description_title"]).or_else(|| str_at(incident, &["title"])),
        release: None,
    })
}

fn parse_event(v: &Value, action: String) -> Result<Alert, IngestError> {
    let data = v.get("data").ok_or_else(|| missing("data"))?;
    let event = data.get("event").ok_or_else(|| missing("data.event"))?;
    let identifier = str_at(event, &["issue_id"])
        .or_else(|| str_at(event, &["event_id"]))
        .ok_or_else(|| missing("data.event.issue_id"))?;
    let rule_id =
        str_at(data, &["triggered_rule"]).ok_or_else(|| missing("data.triggered_rule"))?;
    let project = str_at(event, &["url"]).and_then(|u| project_from_event_url(&u));
    let environment = str_at(event, &["environment"]).or_else(|| tag(event, "environment"));
    Ok(Alert {
        resource: Resource::EventAlert,
        action,
        rule_name: Some(rule_id.clone()),
        rule_id,
        identifier,
        projects: project.into_iter().collect(),
        environment,
        environment_absent: false,
        aggregate: None,
        threshold: None,
        measured: None,
        detected_at_ms: str_at(event, &["datetime"]).and_then(|s| parse_time(&s)),
        window_ms: None,
        details_missing: false,
        web_url: str_at(event, &["web_url"]),
        title: str_at(event, &["title"]),
        release: str_at(event, &["release"]).or_else(|| tag(event, "release")),
    })
}

/// A metric alert whose details Sentry could not serialise: the rule id and
/// the incident come from `web_url` (`…/alerts/rules/details/<rule>/?alert=<incident>`);
/// without them, the body's hash keeps Sentry's re-sends one alert.
fn without_details(data: &Value, action: String, body: &[u8]) -> Alert {
    let web_url = str_at(data, &["web_url"]);
    let url = web_url.as_deref().unwrap_or_default();
    let rule_id = url
        .split("/details/")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .filter(|id| !id.is_empty())
        .unwrap_or("unknown")
        .to_string();
    let identifier = url
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("alert="))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            use sha2::Digest;
            format!("body-{}", &hex::encode(sha2::Sha256::digest(body))[..16])
        });
    Alert {
        resource: Resource::MetricAlert,
        action,
        rule_name: None,
        rule_id,
        identifier,
        projects: Vec::new(),
        environment: None,
        environment_absent: false,
        aggregate: None,
        threshold: None,
        measured: str_at(data, &["description_text"]).and_then(|t| leading_percent(&t)),
        detected_at_ms: None,
        window_ms: None,
        details_missing: true,
        web_url,
        title: str_at(data, &["description_title"]),
        release: None,
    }
}

fn missing(field: &str) -> IngestError {
    IngestError::Malformed(format!("missing or invalid field `{field}`"))
}

/// A string or number at `path`, as a string.
fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    match cur {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn tag(event: &Value, name: &str) -> Option<String> {
    event.get("tags")?.as_array()?.iter().find_map(|t| {
        let pair = t.as_array()?;
        (pair.first()?.as_str()? == name).then(|| pair.get(1)?.as_str().map(str::to_owned))?
    })
}

fn project_from_event_url(url: &str) -> Option<String> {
    let rest = url.split("/projects/").nth(1)?;
    let mut parts = rest.split('/');
    let _org = parts.next()?;
    parts.next().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn critical_threshold(rule: &Value) -> Option<f64> {
    rule.get("triggers")?.as_array()?.iter().find_map(|t| {
        (t.get("label")?.as_str()? == "critical").then(|| number(t.get("alert_threshold")?))?
    })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `"92% sessions crash free rate in the last hour"` → `92.0`.
fn leading_percent(text: &str) -> Option<f64> {
    let (num, _) = text.trim_start().split_once('%')?;
    num.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESOLVED: &str = include_str!("../../tests/fixtures/sentry/metric_alert_resolved.json");
    const EVENT: &str = include_str!("../../tests/fixtures/sentry/event_alert_triggered.json");

    #[test]
    fn parses_the_documented_resolved_metric_alert() {
        let a = parse(Resource::MetricAlert, RESOLVED.as_bytes()).unwrap();
        assert_eq!(a.action, "resolved");
        assert_eq!(a.rule_id, "7");
        assert_eq!(a.identifier, "1");
        assert_eq!(a.projects, vec!["bar"]);
        assert_eq!(a.environment, None);
        assert!(!a.is_crash_free_rate());
        assert_eq!(a.detected_at_ms, Some(1_600_000_000_000));
        assert_eq!(a.dedup_key(), "metric_alert:7:1:resolved");
    }

    #[test]
    fn parses_the_documented_issue_alert_with_its_project() {
        let a = parse(Resource::EventAlert, EVENT.as_bytes()).unwrap();
        assert_eq!(a.action, "triggered");
        assert!(a.is_critical());
        assert_eq!(a.projects, vec!["front-end"]);
        assert_eq!(a.identifier, "1117540176");
        assert_eq!(a.rule_id, "Very Important Alert Rule!");
    }

    fn crash_alert(started: &str) -> String {
        serde_json::json!({
            "action": "critical",
            "installation": {"uuid": "x"},
            "data": {
                "description_text": "92.1% sessions crash free rate in the last hour",
                "description_title": "Critical: crash-free",
                "web_url": "https://sentry.io/alerts/1/",
                "metric_alert": {
                    "identifier": 42, "projects": ["web"], "date_started": started,
                    "alert_rule": {
                        "id": 9, "name": "crash-free", "environment": "production",
                        "aggregate": "percentage(sessions_crashed, sessions) AS _crash_rate_alert_aggregate",
                        "triggers": [{"label": "warning", "alert_threshold": 99.9},
                                     {"label": "critical", "alert_threshold": "99.5"}]
                    }
                }
            }
        })
        .to_string()
    }

    #[test]
    fn reads_rate_threshold_and_numeric_ids() {
        let a = parse(
            Resource::MetricAlert,
            crash_alert("2025-07-14T11:41:32.000000Z").as_bytes(),
        )
        .unwrap();
        assert!(a.is_crash_free_rate() && a.is_critical());
        assert_eq!(a.threshold, Some(99.5));
        assert_eq!(a.measured, Some(92.1));
        assert_eq!(a.identifier, "42");
        assert_eq!(a.rule_id, "9");
        assert_eq!(a.environment.as_deref(), Some("production"));
    }

    #[test]
    fn malformed_dates_become_unknown_not_errors() {
        for bad in [
            "2025-07-14T11:41:32+053096Z",
            "yesterday",
            "",
            "9999999999999999-01-01T00:00:00Z",
        ] {
            let a = parse(Resource::MetricAlert, crash_alert(bad).as_bytes()).unwrap();
            assert_eq!(a.detected_at_ms, None, "{bad}");
        }
    }

    #[test]
    fn missing_required_fields_are_named() {
        let err = parse(Resource::MetricAlert, br#"{"action":"critical","installation":{},"data":{"metric_alert":{"alert_rule":{"id":"1"}}}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
        let err = parse(Resource::MetricAlert, br#"{"installation":{}}"#).unwrap_err();
        assert!(err.to_string().contains("action"), "{err}");
        let err = parse(
            Resource::MetricAlert,
            br#"{"action":["critical"],"installation":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("action"), "{err}");
    }

    const WORKFLOW_ENGINE: &str =
        include_str!("../../tests/fixtures/sentry/metric_alert_workflow_engine_critical.json");

    #[test]
    fn the_workflow_engine_shape_is_read_by_its_detection_time_and_window() {
        let a = parse(Resource::MetricAlert, WORKFLOW_ENGINE.as_bytes()).unwrap();
        assert!(a.is_critical() && a.is_crash_free_rate());
        assert_eq!(
            (a.rule_id.as_str(), a.identifier.as_str()),
            ("1000913584", "1004821937")
        );
        assert_eq!(a.detected_at_ms, parse_time("2026-11-26T12:00:03.412775Z"));
        assert_eq!(a.window_ms, Some(60 * 60_000));
        assert_eq!(a.environment.as_deref(), Some("production"));
        assert!(!a.environment_absent && !a.details_missing);
    }

    #[test]
    fn the_classic_start_is_the_window_start_so_detection_time_wins() {
        let mut v: Value = serde_json::from_str(WORKFLOW_ENGINE).unwrap();
        let incident = &mut v["data"]["metric_alert"];
        incident["date_started"] = "2026-11-26T11:00:03Z".into();
        incident["date_detected"] = "2026-11-26T12:00:03Z".into();
        let a = parse(Resource::MetricAlert, v.to_string().as_bytes()).unwrap();
        assert_eq!(a.detected_at_ms, parse_time("2026-11-26T12:00:03Z"));
    }

    #[test]
    fn a_missing_environment_key_is_not_a_null_one() {
        let mut v: Value = serde_json::from_str(WORKFLOW_ENGINE).unwrap();
        let rule = v["data"]["metric_alert"]["alert_rule"]
            .as_object_mut()
            .unwrap();
        rule.remove("environment");
        let a = parse(Resource::MetricAlert, v.to_string().as_bytes()).unwrap();
        assert!(a.environment_absent && a.environment.is_none());
        v["data"]["metric_alert"]["alert_rule"]["environment"] = Value::Null;
        let a = parse(Resource::MetricAlert, v.to_string().as_bytes()).unwrap();
        assert!(!a.environment_absent && a.environment.is_none());
    }

    #[test]
    fn a_null_metric_alert_keeps_the_rule_and_incident_from_web_url() {
        let mut v: Value = serde_json::from_str(WORKFLOW_ENGINE).unwrap();
        v["data"]["metric_alert"] = Value::Null;
        let a = parse(Resource::MetricAlert, v.to_string().as_bytes()).unwrap();
        assert!(a.details_missing && a.is_critical());
        assert_eq!(
            (a.rule_id.as_str(), a.identifier.as_str()),
            ("1000913584", "1004821937")
        );
        assert_eq!(a.dedup_key(), "metric_alert:1000913584:1004821937:critical");
        assert!(a.projects.is_empty());
        // Without a web_url, the body itself keeps re-sends one alert.
        v["data"]["web_url"] = Value::Null;
        let body = v.to_string();
        let a = parse(Resource::MetricAlert, body.as_bytes()).unwrap();
        let b = parse(Resource::MetricAlert, body.as_bytes()).unwrap();
        assert!(a.identifier.starts_with("body-"));
        assert_eq!(a.dedup_key(), b.dedup_key());
        // A body without the key at all is still malformed.
        v["data"].as_object_mut().unwrap().remove("metric_alert");
        assert!(parse(Resource::MetricAlert, v.to_string().as_bytes()).is_err());
    }
}
