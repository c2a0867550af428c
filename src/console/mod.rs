//! The console and `/metrics`, on the admin listener: server-rendered
//! pages (no build step; a few lines of script poll for changes and reload)
//! reading the ledger a page at a time. With `admin.token` set, every
//! request carries it: `Authorization: Bearer <token>`, or the cookie the
//! login form sets (HttpOnly, SameSite=Strict; it holds its expiry and an
//! HMAC of it keyed with the token, never the token, and the server refuses
//! it after 12 hours whatever the browser keeps). No secret, token or raw alert body is shown.

mod pages;
mod timeline;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::Sha256;

use crate::http::AppState;
use crate::ledger::{Outcome, RunFilter, RunId, StoreError};
use crate::metrics::{to_prometheus_text, OPENMETRICS, PROMETHEUS_TEXT};

const COOKIE: &str = "backstop_admin";
/// How long a console login lasts, seconds.
const SESSION_SECS: i64 = 12 * 3600;
/// How far apart instances' clocks may be for a session cookie, seconds.
const CLOCK_SLACK_SECS: i64 = 300;

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

/// The cookie value for `token`, good until `expires` (Unix seconds):
/// `<expires>.<hex HMAC-SHA256 of it, keyed with the token>`. The cookie is
/// not the token, and cannot be extended without it.
fn session(token: &str, expires: i64) -> String {
    format!("{expires}.{}", session_mac(token, expires))
}

fn session_mac(token: &str, expires: i64) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("backstop-admin-session:{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A cookie value that is this token's and not expired at `now` (Unix s).
fn session_valid(token: &str, cookie: &str, now: i64) -> bool {
    let Some((expires, mac)) = cookie.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    // Instances' clocks differ a little: a cookie set by one a few minutes
    // ahead is still fresh here.
    let fresh = expires > now && expires <= now + SESSION_SECS + CLOCK_SLACK_SECS;
    constant_eq(mac.as_bytes(), session_mac(token, expires).as_bytes()) && fresh
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
    let now = crate::clock::now_ms() / 1000;
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
        .any(|c| session_valid(token, &c, now))
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
    let expires = crate::clock::now_ms() / 1000 + SESSION_SECS;
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}",
        session(token.expose_secret(), expires)
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_cookie_is_the_tokens_and_expires_on_the_server() {
        let now = 1_800_000_000;
        let good = session("tok", now + SESSION_SECS);
        assert!(session_valid("tok", &good, now));
        assert!(!good.contains("tok"), "the cookie is not the token");
        // Past its expiry, whatever the browser keeps.
        assert!(!session_valid("tok", &good, now + SESSION_SECS));
        // Another token's, a forged expiry, garbage.
        assert!(!session_valid("other", &good, now));
        let (_, mac) = good.split_once('.').unwrap();
        let later = format!("{}.{mac}", now + 2 * SESSION_SECS);
        assert!(!session_valid("tok", &later, now + SESSION_SECS));
        assert!(!session_valid(
            "tok",
            &session("tok", now + 10 * SESSION_SECS),
            now
        ));
        assert!(!session_valid("tok", "nonsense", now));
    }
}
