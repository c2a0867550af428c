//! Simulated Vercel REST API: aliases that really move, Instant Rollback
//! jobs reported through `lastAliasRequest`, deployment listings, and
//! Vercel's error bodies; calls are metered against Vercel's published
//! rate limits (or the ones a test sets), with its rate-limit headers and
//! 429s.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

use super::{AliasWrite, Metered, Sim};
use crate::clock::now_ms;

pub fn routes(sim: Sim) -> Router<Sim> {
    Router::new()
        .route("/v2/deployments/{id}/aliases", post(assign_alias))
        .route("/v4/aliases", get(list_aliases))
        .route("/v4/aliases/{domain}", get(get_alias))
        .route(
            "/v1/projects/{project}/rollback/{deployment}",
            post(rollback),
        )
        .route("/v9/projects/{project}", get(get_project))
        .route("/v6/deployments", get(list_deployments))
        .route("/v13/deployments/{id}", get(get_deployment))
        .layer(axum::middleware::from_fn_with_state(sim, metered))
}

/// Milliseconds to whole seconds, rounded up (a reset is never early).
fn ceil_s(ms: i64) -> i64 {
    (ms + 999) / 1000
}

/// The bucket of Vercel's published rate limits a call spends, if any.
fn bucket_of(method: &Method, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v2", "deployments", _, "aliases"]) => Some("alias creation"),
        ("GET", ["v4", "aliases"]) => Some("aliases list"),
        ("GET", ["v4", "aliases", _]) => Some("alias retrieval"),
        ("GET", ["v13", "deployments", _]) => Some("deployments retrieval"),
        ("GET", ["v6", "deployments"]) => Some("deployments list"),
        _ => None,
    }
}

/// Spends the call's bucket: answers 429 (Vercel's `rate_limited` body)
/// once its window is spent, and tells every answer the window's state in
/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds).
async fn metered(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let Some(bucket) = bucket_of(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let spent = sim.world().spend_vercel(bucket, now_ms());
    let (limit, remaining, reset_ms, mut response) = match spent {
        None => return next.run(req).await,
        Some(Metered::Within(limit, remaining, reset)) => {
            (limit, remaining, reset, next.run(req).await)
        }
        Some(Metered::Spent(limit, reset)) => {
            let wait_s = ceil_s((reset - now_ms()).max(0));
            let body = json!({"error": {
                "code": "rate_limited",
                "message": format!("The rate limit of {limit} exceeded for '{bucket}'. Try again in {wait_s} seconds"),
                "limit": {"remaining": 0, "reset": ceil_s(reset), "resetMs": reset, "total": limit}
            }});
            let r = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            (limit, 0, reset, r)
        }
    };
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", limit.into());
    h.insert("x-ratelimit-remaining", remaining.into());
    h.insert("x-ratelimit-reset", ceil_s(reset_ms).into());
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn ok(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The rejection for a request without the right credentials.
fn authorized(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", sim.world().creds.vercel_token);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(got) if got == expected => None,
        _ => Some(error(StatusCode::FORBIDDEN, "forbidden", "Not authorized")),
    }
}

async fn assign_alias(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let Some(alias) = body
        .as_ref()
        .and_then(|b| b.get("alias"))
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Invalid request: missing required property `alias`",
        );
    };
    let mut w = sim.world();
    if !w.deployments.contains_key(&id) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("Could not find the deployment: {id}"),
        );
    }
    let old = w.aliases.insert(alias.clone(), id.clone());
    let n = w.next_seq();
    w.alias_writes.push(AliasWrite {
        domain: alias.clone(),
        deployment: id,
        at_us: super::now_us(),
    });
    let mut body = json!({"uid": format!("alias_{n}"), "alias": alias, "created": crate::clock::format_time(now_ms())});
    if let Some(old) = old {
        body["oldDeploymentId"] = json!(old);
    }
    ok(StatusCode::OK, body)
}

async fn get_alias(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let mut w = sim.world();
    match read_alias(&mut w, &domain) {
        Some(alias) => ok(StatusCode::OK, alias),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("Could not find the alias: {domain}"),
        ),
    }
}

/// `GET /v4/aliases`: the aliases of the `domain`s asked for (repeated,
/// at most 20), or of `projectId`, or all; unpaginated.
async fn list_aliases(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let asked: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "domain")
        .map(|(_, v)| v.clone())
        .collect();
    if asked.len() > 20 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Invalid request: `domain` should NOT have more than 20 items",
        );
    }
    let project = q
        .iter()
        .find(|(k, _)| k == "projectId")
        .map(|(_, v)| v.clone());
    let mut w = sim.world();
    let domains: Vec<String> = if asked.is_empty() {
        w.aliases.keys().cloned().collect()
    } else {
        asked
    };
    let aliases: Vec<Value> = domains
        .iter()
        .filter_map(|d| read_alias(&mut w, d))
        .filter(|a| project.is_none() || a["projectId"].as_str() == project.as_deref())
        .collect();
    ok(
        StatusCode::OK,
        json!({"aliases": aliases, "pagination": {"count": aliases.len(), "next": null, "prev": null}}),
    )
}

/// One alias as Vercel describes it, recorded as read; `None` when the
/// domain has none.
fn read_alias(w: &mut super::World, domain: &str) -> Option<Value> {
    let served = w.aliases.get(domain).cloned();
    w.alias_reads.push(super::AliasRead {
        domain: domain.to_string(),
        deployment: served.clone(),
        at_us: super::now_us(),
    });
    let id = served?;
    let d = w.deployments.get(&id);
    Some(json!({
        "alias": domain, "created": "2017-04-26T23:00:34.232Z", "createdAt": 1540095775941i64, "uid": format!("alias_{domain}"),
        "deploymentId": id, "projectId": d.map(|d| d.project.clone()),
        "deployment": {"id": id, "url": d.map(|d| d.url.clone()), "meta": {}}, "updatedAt": now_ms()
    }))
}

/// Vercel's 404 for an unknown project.
fn project_not_found(project: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("Project not found: {project}"),
    )
}

async fn rollback(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path((project, deployment)): Path<(String, String)>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let mut w = sim.world();
    let Some(domains) = w.projects.get(&project).cloned() else {
        return project_not_found(&project);
    };
    if w.deployments
        .get(&deployment)
        .is_none_or(|d| d.project != project)
    {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("Deployment not found: {deployment}"),
        );
    }
    let from = domains
        .first()
        .and_then(|d| w.aliases.get(d))
        .cloned()
        .unwrap_or_default();
    let job = json!({"jobStatus": "in-progress", "fromDeploymentId": from, "toDeploymentId": deployment, "requestedAt": now_ms(), "type": "rollback"});
    w.alias_jobs.insert(project, (job, false));
    StatusCode::CREATED.into_response()
}

/// A rollback job finishes once it has been seen in progress: the first
/// read reports `in-progress`, the next moves the aliases and reports `succeeded`.
async fn get_project(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(project): Path<String>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let mut w = sim.world();
    let Some(domains) = w.projects.get(&project).cloned() else {
        return project_not_found(&project);
    };
    let mut job = w.alias_jobs.get(&project).cloned();
    if let Some((j, seen)) = &mut job {
        if *seen && j["jobStatus"] == "in-progress" {
            let to = j["toDeploymentId"].as_str().unwrap_or_default().to_string();
            for d in &domains {
                w.aliases.insert(d.clone(), to.clone());
                w.alias_writes.push(AliasWrite {
                    domain: d.clone(),
                    deployment: to.clone(),
                    at_us: super::now_us(),
                });
            }
            j["jobStatus"] = json!("succeeded");
        }
        *seen = true;
        w.alias_jobs
            .insert(project.clone(), job.clone().unwrap_or_default());
    }
    let live = domains.first().and_then(|d| w.aliases.get(d)).cloned();
    ok(
        StatusCode::OK,
        json!({
            "id": project, "name": project.trim_start_matches("prj_"), "accountId": "team_sim", "framework": "nextjs",
            "targets": {"production": {"id": live}}, "autoAssignCustomDomains": true,
            "lastAliasRequest": job.map(|(j, _)| j)
        }),
    )
}

async fn list_deployments(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let w = sim.world();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20)
        .min(100);
    let until: i64 = q
        .get("until")
        .and_then(|u| u.parse().ok())
        .unwrap_or(i64::MAX);
    let mut items: Vec<_> = w
        .deployments
        .values()
        .filter(|d| q.get("projectId").is_none_or(|p| *p == d.project) && d.created_at < until)
        .collect();
    items.sort_by_key(|d| std::cmp::Reverse(d.created_at));
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(|d| d.created_at)
    } else {
        None
    };
    let list: Vec<Value> = items.iter().map(|d| w.deployment_json(d)).collect();
    ok(
        StatusCode::OK,
        json!({"pagination": {"count": list.len(), "next": next, "prev": null}, "deployments": list}),
    )
}

async fn get_deployment(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = authorized(&sim, &headers) {
        return r;
    }
    let w = sim.world();
    match w.deployments.get(&id) {
        Some(d) => ok(StatusCode::OK, w.deployment_json(d)),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("Could not find the deployment: {id}"),
        ),
    }
}
