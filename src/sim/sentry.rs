//! Simulated Sentry REST API: the sessions endpoint (crash-free rate per
//! release, as a fraction 0-1) and a project read for `backstop check`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::Sim;

pub fn routes() -> Router<Sim> {
    Router::new()
        .route("/api/0/organizations/{org}/sessions/", get(sessions))
        .route("/api/0/projects/{org}/{project}/", get(project))
}

/// The rejection for a request without the right credentials.
fn auth(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", sim.world().creds.sentry_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"detail": "Invalid token"})),
        )
            .into_response(),
    )
}

async fn sessions(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(_org): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = auth(&sim, &headers) {
        return r;
    }
    let release = q
        .get("query")
        .and_then(|s| s.strip_prefix("release:"))
        .unwrap_or_default()
        .to_string();
    let rate = sim.world().crash_free.get(&release).copied();
    let totals = json!({"crash_free_rate(session)": rate, "sum(session)": if rate.is_some() { 1000 } else { 0 }});
    let now = crate::clock::format_time(crate::clock::now_ms());
    let body: Value = json!({
        "start": now, "end": now, "intervals": [now], "query": q.get("query"),
        "groups": [{"by": {}, "totals": totals, "series": {"crash_free_rate(session)": [rate], "sum(session)": [totals["sum(session)"]]}}]
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn project(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path((_org, slug)): Path<(String, String)>,
) -> Response {
    if let Some(r) = auth(&sim, &headers) {
        return r;
    }
    match sim.world().sentry_projects.get(&slug) {
        Some(id) => (
            StatusCode::OK,
            Json(
                json!({"id": id.to_string(), "slug": slug, "name": slug, "platform": "javascript"}),
            ),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": "The requested resource does not exist"})),
        )
            .into_response(),
    }
}
