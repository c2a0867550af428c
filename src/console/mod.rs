//! The console and `/metrics`, on the admin listener: server-rendered
//! pages (no build step; a few lines of script poll for changes and reload)
//! reading the ledger a page at a time. With `admin.token` set, every
//! request carries it: `Authorization: Bearer <token>`, or the cookie the
//! login form sets (HttpOnly, SameSite=Strict; it holds a digest of the
//! token, never the token). No secret, token or raw alert body is shown.

mod pages;
mod timeline;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::http::AppState;
use crate::ledger::{Outcome, RunFilter, RunId, StoreError};
use crate::metrics::{to_prometheus_text, OPENMETRICS, PROMETHEUS_TEXT};

const COOKIE: &str = "backstop_admin";

/// The admin listener's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(services))
        .route("/services/{name}", get(service))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/changes", get(changes))
        .route("/metrics", get(metrics_page))
        .route("/login", get(login_form).post(login))
        .with_state(state)
}

/// The cookie value for `token`: a digest, so the cookie is not the token.
fn session(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"backstop-admin-session:");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// True when no token is required, or the request carries it.
fn allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.settings.admin.token else {
        return true;
    };
    let token = token.expose_secret();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return constant_eq(given.trim().as_bytes(), token.as_bytes());
    }
    let expected = session(token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
        .any(|c| constant_eq(c.as_bytes(), expected.as_bytes()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request without the token sees: the login form, nothing else.
fn login_wall() -> Response {
    (StatusCode::UNAUTHORIZED, Html(pages::login(None))).into_response()
}

fn failed(e: StoreError) -> Response {
    tracing::warn!(error = %e, "console cannot read the ledger");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(pages::error("The ledger cannot be read right now.")),
    )
        .into_response()
}

async fn services(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !allowed(&state, &headers) {
        return login_wall();
    }
    match pages::services(&state).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Deserialize)]
struct Window {
    window: Option<String>,
}

async fn service(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(w): Query<Window>,
) -> Response {
    if !allowed(&state, &headers) {
        return login_wall();
    }
    let Some(svc) = state.settings.service(&name).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Html(pages::error("No such service.")),
        )
            .into_response();
    };
    let days = match w.window.as_deref() {
        Some("7d") => 7,
        _ => 1,
    };
    match pages::service(&state, &svc, days).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    service: Option<String>,
    outcome: Option<String>,
    before: Option<String>,
}

async fn runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> Response {
    if !allowed(&state, &headers) {
        return login_wall();
    }
    let filter = RunFilter {
        service: q.service.filter(|s| !s.is_empty()),
        outcome: q.outcome.as_deref().and_then(Outcome::parse),
        before: q.before.filter(|b| !b.is_empty()).map(RunId),
        since_ms: None,
        limit: pages::PAGE,
    };
    match pages::runs(&state, &filter).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => failed(e),
    }
}

async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !allowed(&state, &headers) {
        return login_wall();
    }
    match state.engine.store().run_detail(&RunId(id)).await {
        Ok(d) => Html(pages::run(&state, &d)).into_response(),
        Err(StoreError::NotFound(_)) => {
            (StatusCode::NOT_FOUND, Html(pages::error("No such run."))).into_response()
        }
        Err(e) => failed(e),
    }
}

async fn changes(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !allowed(&state, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match state.engine.store().changes_token().await {
        Ok(t) => ([(header::CACHE_CONTROL, "no-store")], t).into_response(),
        Err(e) => failed(e),
    }
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), else the Prometheus text format 0.0.4.
async fn metrics_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !allowed(&state, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let text = match state
        .engine
        .metrics()
        .render(state.engine.store(), &state.settings)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "metrics cannot read the ledger");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match openmetrics {
        true => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        false => (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&text),
        )
            .into_response(),
    }
}

async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if state.settings.admin.token.is_none() || allowed(&state, &headers) {
        return Redirect::to("/").into_response();
    }
    Html(pages::login(None)).into_response()
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(state): State<AppState>, Form(form): Form<Login>) -> Response {
    let Some(token) = &state.settings.admin.token else {
        return Redirect::to("/").into_response();
    };
    if !constant_eq(
        form.token.trim().as_bytes(),
        token.expose_secret().as_bytes(),
    ) {
        tracing::warn!("console login with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("That is not the token."))),
        )
            .into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200",
        session(token.expose_secret())
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}
