//! PagerDuty Webhooks v3: `X-PagerDuty-Signature` carries one or more
//! `v1=<hex>` values (several while a secret is rotated), each the
//! HMAC-SHA256 of the raw body under the subscription's secret; the request
//! is genuine when any of them matches. Deliveries are at least once:
//! `X-Webhook-Id` is the same on every attempt.

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::signature::{self, Digest};
use super::{header, IngestError};

/// What an incident event says, as far as Backstop cares.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentEvent {
    /// `incident.acknowledged`, `incident.resolved`, ...
    pub event_type: String,
    /// The incident's id (`P...`).
    pub incident_id: Option<String>,
    /// Its incident key (our dedup key), when PagerDuty sends it.
    pub incident_key: Option<String>,
    /// Who did it (`agent.summary`), when a person did.
    pub agent: Option<String>,
    /// When, RFC 3339.
    pub occurred_at: Option<String>,
    /// The incident's link.
    pub html_url: Option<String>,
}

/// Checks `X-PagerDuty-Signature`: any `v1=` value may match.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &SecretString) -> Result<(), IngestError> {
    let sigs = header(headers, "x-pagerduty-signature").ok_or(IngestError::MissingSignature)?;
    let key = secret.expose_secret().as_bytes();
    let genuine = sigs
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .any(|hex| signature::verify(Digest::Sha256, key, body, hex));
    match genuine {
        true => Ok(()),
        false => Err(IngestError::BadSignature),
    }
}

/// The header PagerDuty would send for `body` (simulator, tests).
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        signature::sign(Digest::Sha256, secret.as_bytes(), body)
    )
}

/// Decodes a verified delivery. `Ok(None)` for events that are not about
/// an incident.
pub fn parse(body: &[u8]) -> Result<Option<IncidentEvent>, IngestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| IngestError::Malformed(format!("not JSON: {e}")))?;
    let event = &v["event"];
    let Some(event_type) = event["event_type"].as_str() else {
        return Err(IngestError::Malformed("no event.event_type".into()));
    };
    if event["resource_type"].as_str() != Some("incident") {
        return Ok(None);
    }
    let data = &event["data"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    Ok(Some(IncidentEvent {
        event_type: event_type.to_string(),
        incident_id: text(&data["id"]),
        incident_key: text(&data["incident_key"]),
        agent: text(&event["agent"]["summary"]),
        occurred_at: text(&event["occurred_at"]),
        html_url: text(&data["html_url"]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const VECTOR: &str =
        include_str!("../../tests/fixtures/pagerduty/webhook_signature_vector.json");

    fn with(sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-pagerduty-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn pagerdutys_own_vector_verifies_alone_or_beside_a_rotated_secret() {
        let v: Value = serde_json::from_str(VECTOR).unwrap();
        let secret = SecretString::from(v["secret"].as_str().unwrap().to_string());
        let body = v["body"].as_str().unwrap().as_bytes();
        let good = v["header_value"].as_str().unwrap();
        let bad = v["mismatching_header_value"].as_str().unwrap();
        assert!(verify(&with(good), body, &secret).is_ok());
        assert_eq!(sign(v["secret"].as_str().unwrap(), body), good);
        assert!(verify(&with(bad), body, &secret).is_err());
        // Rotation: two values, either order, one of them ours.
        assert!(verify(&with(&format!("{bad},{good}")), body, &secret).is_ok());
        assert!(verify(&with(&format!("{good}, {bad}")), body, &secret).is_ok());
        assert!(verify(&with("v0=abc,garbage"), body, &secret).is_err());
        let event = parse(body).unwrap().unwrap();
        assert_eq!(event.event_type, "incident.priority_updated");
        assert_eq!(event.incident_id.as_deref(), Some("PGR0VU2"));
        assert_eq!(event.agent.as_deref(), Some("Tenex Engineer"));
    }
}
