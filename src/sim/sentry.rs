//! Simulated Sentry REST API: the sessions endpoint (crash-free rate, a
//! 0-1 fraction, and session counts per release and environment, from
//! world state), deploys of a release, and the project read `backstop
//! check` and the sessions queries need (numeric ids).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{ReleaseHealth, Sim, SimDeploy};
use crate::clock::{format_time, now_ms};

pub fn routes() -> Router<Sim> {
    Router::new()
        .route("/api/0/organizations/{org}/sessions/", get(sessions))
        .route(
            "/api/0/organizations/{org}/releases/{version}/deploys/",
            post(create_deploy),
        )
        .route("/api/0/projects/{org}/{project}/", get(project))
        .route("/api/0/organizations/{org}/issues/", get(issues))
}

/// The rejection for a request without the right credentials.
fn auth(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", sim.world().creds.sentry_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
        return None;
    }
    Some(detail(StatusCode::UNAUTHORIZED, "Invalid token"))
}

fn detail(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "detail": text }))).into_response()
}

/// Query pairs in order (`field`, `project` and `groupBy` repeat).
fn pairs(raw: Option<String>) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://sim/?{}", raw.unwrap_or_default()))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

async fn sessions(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(_org): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = auth(&sim, &headers) {
        return r;
    }
    let q = pairs(raw);
    let all = |k: &str| -> Vec<&str> {
        q.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |k: &str| all(k).first().map(|s| s.to_string());
    let fields = all("field");
    if fields.is_empty() {
        return detail(StatusCode::BAD_REQUEST, "Request is missing a \"field\"");
    }
    const KNOWN: [&str; 5] = [
        "sum(session)",
        "count_unique(user)",
        "crash_free_rate(session)",
        "crash_free_rate(user)",
        "crash_rate(session)",
    ];
    if let Some(bad) = fields.iter().find(|f| !KNOWN.contains(f)) {
        return detail(
            StatusCode::BAD_REQUEST,
            &format!("Invalid field: \"{bad}\""),
        );
    }
    // Sentry reads `project` with int(): slugs are refused.
    let mut ids = Vec::new();
    for p in all("project") {
        match p.parse::<i64>() {
            Ok(id) => ids.push(id),
            Err(_) => {
                return detail(
                    StatusCode::BAD_REQUEST,
                    "Invalid project parameter. Values must be numbers.",
                )
            }
        }
    }
    if one("statsPeriod").is_none() && (one("start").is_none() || one("end").is_none()) {
        return detail(
            StatusCode::BAD_REQUEST,
            "start and end are both required (or statsPeriod)",
        );
    }
    let by_release = all("groupBy").contains(&"release");
    let environments = all("environment");
    let release = one("query").and_then(|s| {
        s.strip_prefix("release:")
            .map(|r| r.trim_matches('"').to_string())
    });
    let w = sim.world();
    let slugs: Vec<&String> = w
        .sentry_projects
        .iter()
        .filter(|(_, id)| ids.is_empty() || ids.contains(&(**id as i64)) || ids == [-1])
        .map(|(slug, _)| slug)
        .collect();
    let now: Vec<ReleaseHealth> = w.release_health.iter().map(|h| w.health_now(h)).collect();
    let rows: Vec<&ReleaseHealth> = now
        .iter()
        .filter(|h| slugs.contains(&&h.project))
        .filter(|h| environments.is_empty() || environments.contains(&h.environment.as_str()))
        .filter(|h| release.as_ref().is_none_or(|r| *r == h.release))
        .collect();
    let mut groups: Vec<(Value, Vec<&ReleaseHealth>)> = Vec::new();
    if by_release {
        for h in &rows {
            match groups
                .iter_mut()
                .find(|(by, _)| by["release"] == json!(h.release))
            {
                Some((_, hs)) => hs.push(h),
                None => groups.push((json!({"release": h.release}), vec![h])),
            }
        }
    } else {
        groups.push((json!({}), rows));
    }
    let include_series = one("includeSeries").as_deref() != Some("0");
    let start = one("start").unwrap_or_else(|| format_time(now_ms() - 3_600_000));
    let end = one("end").unwrap_or_else(|| format_time(now_ms()));
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(by, hs)| {
            let sessions: u64 = hs.iter().map(|h| h.sessions).sum();
            let crashed: f64 = hs
                .iter()
                .map(|h| h.sessions as f64 * (1.0 - h.crash_free))
                .sum();
            let rate = (sessions > 0).then(|| 1.0 - crashed / sessions as f64);
            let mut totals = Map::new();
            for f in &fields {
                let v = match *f {
                    "sum(session)" => json!(sessions),
                    "count_unique(user)" => json!(sessions / 3),
                    "crash_rate(session)" => json!(rate.map(|r| 1.0 - r)),
                    _ => json!(rate),
                };
                totals.insert(f.to_string(), v);
            }
            let mut group = json!({"by": by, "totals": totals});
            if include_series {
                let series: Map<String, Value> = totals
                    .iter()
                    .map(|(k, v)| (k.clone(), json!([v])))
                    .collect();
                group["series"] = Value::Object(series);
            }
            group
        })
        .collect();
    let body = json!({
        "start": start,
        "end": end,
        "intervals": if include_series { json!([start]) } else { json!([]) },
        "groups": groups,
        "query": one("query").unwrap_or_default(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn create_deploy(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path((_org, version)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(r) = auth(&sim, &headers) {
        return r;
    }
    let Some(Json(body)) = body else {
        return detail(StatusCode::BAD_REQUEST, "Malformed request");
    };
    let Some(environment) = body["environment"].as_str().filter(|e| !e.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"environment": ["This field is required."]})),
        )
            .into_response();
    };
    let mut w = sim.world();
    if !w.release_health.iter().any(|h| h.release == version) {
        return detail(
            StatusCode::NOT_FOUND,
            "The requested resource does not exist",
        );
    }
    let n = w.next_seq();
    let deploy = SimDeploy {
        id: n.to_string(),
        release: version,
        environment: environment.into(),
        name: body["name"].as_str().map(str::to_owned),
        projects: body["projects"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        date_finished: format_time(now_ms()),
    };
    let reply = json!({
        "id": deploy.id,
        "environment": deploy.environment,
        "name": deploy.name,
        "url": null,
        "dateStarted": null,
        "dateFinished": deploy.date_finished,
    });
    w.sentry_deploys.push(deploy);
    (StatusCode::CREATED, Json(reply)).into_response()
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
        None => detail(
            StatusCode::NOT_FOUND,
            "The requested resource does not exist",
        ),
    }
}

/// The issues API: the world's unresolved issues of the release named in
/// `query=release:"..."`, in Sentry's issue shape.
async fn issues(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(_org): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Some(r) = auth(&sim, &headers) {
        return r;
    }
    let q = pairs(raw);
    let query = q
        .iter()
        .find(|(k, _)| k == "query")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let release = query
        .split_whitespace()
        .find_map(|t| t.strip_prefix("release:"))
        .map(|r| r.trim_matches('"').to_string())
        .unwrap_or_default();
    let found = sim
        .world()
        .issues
        .get(&release)
        .cloned()
        .unwrap_or_default();
    (StatusCode::OK, Json(Value::Array(found))).into_response()
}
