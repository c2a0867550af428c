//! The HTTP adapter: webhook routes, health and readiness. Handlers verify,
//! parse and hand over to the ledger; no SQL and no decisions here. What
//! can be refused cheaply is refused before the body is read: an unknown
//! path or method, a missing signature header, a declared body over the
//! limit. The body itself must arrive in time (`serve` holds the other
//! timeouts and the connection budget).

mod error;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::{ApiError, Refusals};

use crate::clock::now_ms;
use crate::config::{ServerSettings, Settings};
use crate::engine::Engine;
use crate::feed;
use crate::ingest::{self, pagerduty, sentry, slack, vercel, IngestError};
use crate::ledger::{Ingested, StoreError};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Settings in force.
    pub settings: Arc<Settings>,
    /// The engine (and through it the store).
    pub engine: Engine,
    /// Refused requests, logged without flooding the log.
    pub refusals: Arc<Refusals>,
}

/// The answer to a webhook, counted in the metrics; refusals logged
/// without flooding.
fn answered(
    state: &AppState,
    source: &'static str,
    result: Result<Response, ApiError>,
) -> Response {
    let response = state.refusals.answer(source, result);
    state
        .engine
        .metrics()
        .webhook(source, response.status().as_u16());
    response
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/sentry", post(sentry_webhook))
        .route("/webhooks/vercel", post(vercel_webhook))
        .route("/webhooks/slack/interactions", post(slack_interaction))
        .route("/webhooks/pagerduty", post(pagerduty_webhook))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The headers and body of a webhook, refused before the body is read when
/// the signature header `signed_by` is missing or the declared length is
/// over the limit, and refused when the body does not arrive in time.
async fn read_body(
    req: Request,
    signed_by: &str,
    server: &ServerSettings,
) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(server.max_body_bytes).unwrap_or(usize::MAX);
    let declared =
        ingest::header(&parts.headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > server.max_body_bytes) {
        return Err(ApiError::TooLarge);
    }
    if ingest::header(&parts.headers, signed_by).is_none() {
        return Err(IngestError::MissingSignature.into());
    }
    // A declared body must keep up a minimum rate; any body, the timeout.
    let by_rate = declared.map(|n| Duration::from_secs(2 + n / server.min_body_rate.max(1)));
    let deadline = by_rate.map_or(server.body_timeout, |d| d.min(server.body_timeout));
    // While the body trickles in the connection holds a place but no work:
    // a full server sheds it before refusing anyone.
    let watch = parts.extensions.get::<serve::BodyWatch>().cloned();
    if let Some(w) = &watch {
        w.reading(true);
    }
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await;
    if let Some(w) = &watch {
        w.reading(false);
    }
    match read {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Err(_)) => Err(ApiError::TooLarge),
        Ok(Ok(bytes)) => Ok((parts.headers, bytes)),
    }
}

async fn sentry_webhook(State(state): State<AppState>, req: Request) -> Response {
    let result = sentry_delivery(&state, req).await;
    answered(&state, "sentry", result)
}

#[tracing::instrument(skip_all, fields(resource, request_id))]
async fn sentry_delivery(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let settings = &state.settings;
    let secret = settings
        .sentry
        .client_secret
        .as_ref()
        .ok_or(ApiError::NotConfigured("sentry.client_secret"))?;
    let (headers, body) = read_body(req, "sentry-hook-signature", &settings.server).await?;
    let span = tracing::Span::current();
    span.record(
        "request_id",
        ingest::header(&headers, "request-id").unwrap_or("-"),
    );
    let now = now_ms();
    let tolerance = settings.sentry.timestamp_tolerance;
    let resource_name = sentry::verify(&headers, &body, secret, tolerance, now)?;
    span.record("resource", resource_name);
    let Some(resource) = sentry::Resource::from_header(resource_name) else {
        let reason = format!("resource `{resource_name}` is not an alert");
        let body = Json(json!({"status": "ignored", "reason": reason}));
        return Ok((StatusCode::OK, body).into_response());
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
    Ok((status, Json(json!({"status": word, "run": run}))).into_response())
}

async fn vercel_webhook(State(state): State<AppState>, req: Request) -> Response {
    let result = vercel_delivery(&state, req).await;
    answered(&state, "vercel", result)
}

#[tracing::instrument(skip_all)]
async fn vercel_delivery(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let settings = &state.settings;
    let secret = settings
        .vercel
        .webhook_secret
        .as_ref()
        .ok_or(ApiError::NotConfigured("vercel.webhook_secret"))?;
    let (headers, body) = read_body(req, "x-vercel-signature", &settings.server).await?;
    vercel::verify(&headers, &body, secret)?;
    let Some(event) = vercel::parse(&body)? else {
        let body = Json(json!({"result": "ignored", "why": "not a deployment event"}));
        return Ok((StatusCode::OK, body).into_response());
    };
    let applied = feed::apply_vercel_event(state.engine.store(), settings, &event).await?;
    tracing::info!(kind = %event.kind, deployment = %event.deployment_id, ?applied, "vercel event");
    let body = Json(serde_json::to_value(&applied).unwrap_or_default());
    Ok((StatusCode::OK, body).into_response())
}

async fn slack_interaction(State(state): State<AppState>, req: Request) -> Response {
    let result = slack_delivery(&state, req).await;
    answered(&state, "slack", result)
}

/// A button pressed on a card. Verified on the raw bytes before decoding;
/// answered `200` within Slack's 3 s once the request is stored (the work
/// is a step of the card's run). What the presser must know (not allowed,
/// already done, nothing to undo) goes to them only, at `response_url`.
#[tracing::instrument(skip_all)]
async fn slack_delivery(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let settings = &state.settings;
    let secret = settings
        .slack
        .signing_secret
        .as_ref()
        .ok_or(ApiError::NotConfigured("slack.signing_secret"))?;
    let (headers, body) = read_body(req, "x-slack-signature", &settings.server).await?;
    slack::verify(&headers, &body, secret, now_ms())?;
    let Some(click) = slack::parse(&body)? else {
        return Ok((StatusCode::OK, Json(json!({"status": "ignored"}))).into_response());
    };
    let answer = tokio::time::timeout(Duration::from_millis(2500), state.engine.press(&click))
        .await
        .map_err(|_| StoreError::Unreachable("storing the press took too long".into()))??;
    tracing::info!(action = click.action.name(), run.id = %click.run, user = %click.user_id, refused = answer.is_some(), "button pressed");
    if let (Some(text), Some(url)) = (answer, click.response_url.clone()) {
        let engine = state.engine.clone();
        tokio::spawn(async move { engine.answer_presser(&url, &text).await });
    }
    Ok(StatusCode::OK.into_response())
}

async fn pagerduty_webhook(State(state): State<AppState>, req: Request) -> Response {
    let result = pagerduty_delivery(&state, req).await;
    answered(&state, "pagerduty", result)
}

/// A Webhooks v3 delivery. Events Backstop does not use are answered 2xx
/// too (PagerDuty disables a subscription after repeated failures);
/// redeliveries are recognised by `X-Webhook-Id`.
#[tracing::instrument(skip_all, fields(webhook_id))]
async fn pagerduty_delivery(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let settings = &state.settings;
    let secret = settings
        .pagerduty
        .webhook_secret
        .as_ref()
        .ok_or(ApiError::NotConfigured("pagerduty.webhook_secret"))?;
    let (headers, body) = read_body(req, "x-pagerduty-signature", &settings.server).await?;
    ingest::require_json(&headers)?;
    pagerduty::verify(&headers, &body, secret)?;
    let webhook_id = ingest::header(&headers, "x-webhook-id").map(str::to_owned);
    tracing::Span::current().record("webhook_id", webhook_id.as_deref().unwrap_or("-"));
    let ignored = |why: &str| {
        (
            StatusCode::OK,
            Json(json!({"status": "ignored", "why": why})),
        )
            .into_response()
    };
    let Some(event) = pagerduty::parse(&body)? else {
        return Ok(ignored("not an incident event"));
    };
    if !matches!(
        event.event_type.as_str(),
        "incident.acknowledged" | "incident.resolved" | "incident.reassigned"
    ) {
        return Ok(ignored("event type not used"));
    }
    if let Some(id) = &webhook_id {
        if state
            .engine
            .store()
            .provider_event_known("pagerduty", id)
            .await?
        {
            return Ok((StatusCode::OK, Json(json!({"status": "duplicate"}))).into_response());
        }
    }
    let run = state
        .engine
        .store()
        .run_for_incident(event.incident_key.as_deref(), event.incident_id.as_deref())
        .await?;
    let Some(run) = run else {
        return Ok(ignored("not an incident Backstop opened"));
    };
    // Noted first (once per kind); the delivery id only once that worked,
    // so a failure here is retried by PagerDuty instead of called a duplicate.
    state.engine.incident_event(&run, &event).await?;
    if let Some(id) = &webhook_id {
        state
            .engine
            .store()
            .provider_event_seen("pagerduty", id)
            .await?;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "accepted", "run": run})),
    )
        .into_response())
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
