//! Vercel deployment webhooks: envelope `{id, type, createdAt, payload}`,
//! verified with `x-vercel-signature` before this parser sees the bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};

use super::{header, require_json, signature, IngestError};

/// Verifies a delivery before anything is parsed: `x-vercel-signature`
/// (HMAC-SHA1 of the raw body, compared in constant time), then the JSON
/// content type.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &SecretString) -> Result<(), IngestError> {
    let sig = header(headers, "x-vercel-signature").ok_or(IngestError::MissingSignature)?;
    let digest = signature::Digest::Sha1;
    if !signature::verify(digest, secret.expose_secret().as_bytes(), body, sig) {
        return Err(IngestError::BadSignature);
    }
    require_json(headers)
}

/// One deployment event, with the provider's own timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    /// Webhook delivery id (stable across Vercel's retries).
    pub event_id: String,
    /// `deployment.promoted`, `deployment.succeeded`, ...
    pub kind: String,
    /// When Vercel says it happened, Unix ms.
    pub created_at_ms: i64,
    /// `dpl_...`
    pub deployment_id: String,
    /// The deployment's `*.vercel.app` URL.
    pub url: Option<String>,
    /// `prj_...`
    pub project_id: Option<String>,
    /// `production`, `staging` or `None` (preview).
    pub target: Option<String>,
    /// The deployment's `meta` (git commit sha and friends).
    pub meta: serde_json::Map<String, Value>,
}

impl DeploymentEvent {
    /// The release under `key` in `meta` (default `githubCommitSha`).
    pub fn release(&self, key: &str) -> Option<String> {
        self.meta
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// Parses a verified body. `Ok(None)` for events that are not about a deployment.
pub fn parse(body: &[u8]) -> Result<Option<DeploymentEvent>, IngestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| IngestError::Malformed(format!("body is not JSON: {e}")))?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind =
        text(&v, "type").ok_or_else(|| IngestError::Malformed("missing field `type`".into()))?;
    if !kind.starts_with("deployment.") {
        return Ok(None);
    }
    let event_id =
        text(&v, "id").ok_or_else(|| IngestError::Malformed("missing field `id`".into()))?;
    let created_at_ms = v
        .get("createdAt")
        .and_then(Value::as_i64)
        .ok_or_else(|| IngestError::Malformed("missing or invalid field `createdAt`".into()))?;
    let payload = v
        .get("payload")
        .ok_or_else(|| IngestError::Malformed("missing field `payload`".into()))?;
    let deployment = payload.get("deployment").unwrap_or(&Value::Null);
    let deployment_id = text(deployment, "id")
        .or_else(|| text(payload, "deploymentId"))
        .ok_or_else(|| IngestError::Malformed("missing field `payload.deployment.id`".into()))?;
    Ok(Some(DeploymentEvent {
        event_id,
        kind,
        created_at_ms,
        deployment_id,
        url: text(deployment, "url").or_else(|| text(payload, "url")),
        project_id: payload
            .get("project")
            .and_then(|p| text(p, "id"))
            .or_else(|| text(payload, "projectId")),
        target: text(payload, "target").or_else(|| text(deployment, "target")),
        meta: deployment
            .get("meta")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_succeeded_event() {
        let body = include_bytes!("../../tests/fixtures/vercel/webhook_deployment_succeeded.json");
        let e = parse(body).unwrap().unwrap();
        assert_eq!(e.kind, "deployment.succeeded");
        assert_eq!(e.deployment_id, "dpl_12yAAMp54JKe1XxonMYqW4oWtK5K");
        assert_eq!(
            e.project_id.as_deref(),
            Some("prj_vt57HZEY7iilPaJv71LcOVLcEiOp")
        );
        assert_eq!(e.target, None);
        assert_eq!(e.created_at_ms, 1698397685674);
        assert_eq!(
            e.release("githubCommitSha").as_deref(),
            Some("d298272f30b0ece055912eb50739ce5106c3d716")
        );
    }

    #[test]
    fn other_event_types_are_not_errors() {
        assert_eq!(
            parse(br#"{"id":"1","type":"project.created","createdAt":1,"payload":{}}"#).unwrap(),
            None
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let err = parse(br#"{"id":"1","type":"deployment.promoted","payload":{}}"#).unwrap_err();
        assert!(err.to_string().contains("createdAt"));
        let err = parse(br#"{"id":"1","type":"deployment.promoted","createdAt":1,"payload":{}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("deployment.id"));
    }
}
