//! One error type for every handler: client errors explicit, internal
//! errors logged once and returned opaque.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::ingest::IngestError;
use crate::ledger::StoreError;

/// A request that could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Refused webhook.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The ledger failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A route whose secret is not configured.
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::Ingest(IngestError::Malformed(m)) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::Ingest(e) => (StatusCode::UNAUTHORIZED, e.to_string()),
            ApiError::Store(StoreError::Unavailable(_) | StoreError::Unreachable(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable, retry later".into(),
            ),
            ApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not store the event, retry later".into(),
            ),
            ApiError::NotConfigured(key) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{key} is not configured"),
            ),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::warn!(status = status.as_u16(), error = %self, "webhook refused");
        }
        (status, Json(json!({"error": message}))).into_response()
    }
}
