//! The HTTP adapter: webhook routes, health and readiness. Handlers verify,
//! parse and hand over to the ledger; no SQL and no decisions here.

mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;

use crate::clock::now_ms;
use crate::config::Settings;
use crate::engine::Engine;
use crate::feed;
use crate::ingest::{self, sentry, vercel, IngestError};
use crate::ledger::{Ingested, StoreError};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Settings in force.
    pub settings: Arc<Settings>,
    /// The engine (and through it the store).
    pub engine: Engine,
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let limit = usize::try_from(state.settings.server.max_body_bytes).unwrap_or(usize::MAX);
    Router::new()
        .route("/webhooks/sentry", post(sentry_webhook))
        .route("/webhooks/vercel", post(vercel_webhook))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[tracing::instrument(skip_all, fields(resource, request_id))]
async fn sentry_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let span = tracing::Span::current();
    span.record(
        "request_id",
        ingest::header(&headers, "request-id").unwrap_or("-"),
    );
    let settings = &state.settings;
    let secret = settings
        .sentry
        .client_secret
        .as_ref()
        .ok_or(ApiError::NotConfigured("sentry.client_secret"))?;
    let now = now_ms();
    let tolerance = settings.sentry.timestamp_tolerance;
    let resource_name = sentry::verify(&headers, &body, secret, tolerance, now)?;
    span.record("resource", resource_name);
    let Some(resource) = sentry::Resource::from_header(resource_name) else {
        let reason = format!("resource `{resource_name}` is not an alert");
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "ignored", "reason": reason})),
        ));
    };
    let alert = sentry::parse(resource, &body)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| IngestError::Malformed("body is not UTF-8".into()))?;
    let key = alert.dedup_key();
    // Answer inside Sentry's 1 s: if storing takes longer, say 503 (Sentry
    // retries, and a late commit then answers as a duplicate), never 202.
    let deadline = settings.server.ingest_deadline;
    let stored = tokio::time::timeout(
        deadline,
        state.engine.ingest(resource_name, &alert, text, now),
    )
    .await
    .map_err(|_| StoreError::Unreachable(format!("storing took longer than {deadline:?}")))??;
    let (status, word, run) = match stored {
        Ingested::Stored(run) => (StatusCode::ACCEPTED, "accepted", run),
        Ingested::Duplicate(run) => (StatusCode::OK, "duplicate", run),
    };
    tracing::info!(run.id = %run, key = %key, "alert {word}");
    Ok((status, Json(json!({"status": word, "run": run}))))
}

#[tracing::instrument(skip_all)]
async fn vercel_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let settings = &state.settings;
    let secret = settings
        .vercel
        .webhook_secret
        .as_ref()
        .ok_or(ApiError::NotConfigured("vercel.webhook_secret"))?;
    vercel::verify(&headers, &body, secret)?;
    let Some(event) = vercel::parse(&body)? else {
        return Ok((
            StatusCode::OK,
            Json(json!({"result": "ignored", "why": "not a deployment event"})),
        ));
    };
    let applied = feed::apply_vercel_event(state.engine.store(), settings, &event).await?;
    tracing::info!(kind = %event.kind, deployment = %event.deployment_id, ?applied, "vercel event");
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(&applied).unwrap_or_default()),
    ))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = tokio::time::timeout(Duration::from_secs(2), state.engine.store().ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "store unavailable"})),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store timed out"})),
        ),
    }
}
