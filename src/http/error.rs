//! One error type for every handler: client errors explicit, internal
//! errors logged once and returned opaque. Refused requests are logged
//! through [`Refusals`], which keeps a flood of them (bad signatures from
//! the internet) from becoming a flood of log lines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// The body is (or was declared) larger than `server.max_body_bytes`.
    #[error("body larger than server.max_body_bytes")]
    TooLarge,
    /// The body did not arrive in time.
    #[error("body did not arrive in time")]
    BodyTimeout,
}

impl ApiError {
    fn status(&self) -> (StatusCode, String) {
        match self {
            ApiError::Ingest(IngestError::Malformed(m)) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::Ingest(e) => (StatusCode::UNAUTHORIZED, e.to_string()),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, self.to_string()),
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
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(json!({"error": message}))).into_response()
    }
}

/// How often a kind of refusal is logged at `warn` (the rest are counted
/// and reported with the next one).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs refused webhooks without flooding: the first refusal of each
/// (source, status) in a window at `warn`, the others at `debug` and
/// counted into the next `warn` line.
#[derive(Default)]
pub struct Refusals {
    seen: Mutex<HashMap<(&'static str, u16), Window>>,
}

/// When a kind of refusal was last logged, and how many since.
type Window = (Option<Instant>, u64);

impl Refusals {
    /// The response for `result`, logging a refusal.
    pub fn answer(&self, source: &'static str, result: Result<Response, ApiError>) -> Response {
        match result {
            Ok(response) => response,
            Err(e) => {
                let status = e.status().0;
                if status.is_client_error() {
                    self.note(source, status.as_u16(), &e);
                }
                e.into_response()
            }
        }
    }

    fn note(&self, source: &'static str, status: u16, e: &ApiError) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = seen.entry((source, status)).or_insert((None, 0));
        if entry
            .0
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
        {
            let suppressed = std::mem::take(&mut entry.1);
            entry.0 = Some(now);
            tracing::warn!(source, status, error = %e, suppressed, "webhook refused");
        } else {
            entry.1 += 1;
            tracing::debug!(source, status, error = %e, "webhook refused");
        }
    }
}
