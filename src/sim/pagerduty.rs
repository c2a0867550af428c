//! Simulated PagerDuty: Events API v2 (`/v2/enqueue`) validating what the
//! real one validates, incidents grouped by dedup key, and the REST
//! `POST /incidents` and `GET /services/{id}` calls.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Incident, Sim};

pub fn routes() -> Router<Sim> {
    Router::new()
        .route("/v2/enqueue", post(enqueue))
        .route("/v2/change/enqueue", post(change_enqueue))
        .route("/incidents", post(create_incident))
        .route("/services/{id}", get(get_service))
        .route("/incidents/{id}/notes", get(list_notes).post(create_note))
}

fn invalid(errors: Vec<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}))).into_response()
}

fn check_event(sim: &Sim, v: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let key = v.get("routing_key").and_then(Value::as_str).unwrap_or("");
    if key.len() != 32 {
        errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".to_string());
    } else if !sim.world().creds.routing_keys.iter().any(|k| k == key) {
        errors.push("Invalid routing key".to_string());
    }
    let action = v.get("event_action").and_then(Value::as_str).unwrap_or("");
    if !matches!(action, "trigger" | "acknowledge" | "resolve") {
        errors.push(
            "'event_action' is invalid (must be one of trigger, acknowledge, resolve)".into(),
        );
    }
    if v.get("dedup_key")
        .and_then(Value::as_str)
        .is_some_and(|k| k.chars().count() > 255)
    {
        errors.push("'dedup_key' is too long (max 255 characters)".into());
    }
    if action != "trigger" {
        if v.get("dedup_key").and_then(Value::as_str).is_none() {
            errors.push("'dedup_key' is required for acknowledge and resolve".into());
        }
        return errors;
    }
    let p = v.get("payload").cloned().unwrap_or(Value::Null);
    for field in ["summary", "source", "severity"] {
        if p.get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errors.push(format!("'payload.{field}' is missing or blank"));
        }
    }
    if p.get("summary")
        .and_then(Value::as_str)
        .is_some_and(|s| s.chars().count() > 1024)
    {
        errors.push("'payload.summary' is too long (max 1024 characters)".into());
    }
    if p.get("severity")
        .and_then(Value::as_str)
        .is_some_and(|s| !matches!(s, "critical" | "error" | "warning" | "info"))
    {
        errors.push(
            "'payload.severity' is invalid (must be one of critical, error, warning, info)".into(),
        );
    }
    errors
}

/// A change event: a routing key and a summary, no action or dedup key;
/// it opens no incident.
async fn change_enqueue(State(sim): State<Sim>, body: Option<Json<Value>>) -> Response {
    let Some(Json(v)) = body else {
        return (StatusCode::BAD_REQUEST, Json(json!({"status": "Unrecognized object", "message": "Event object format is unrecognized", "errors": ["JSON parse error"]}))).into_response();
    };
    let mut errors = Vec::new();
    let key = v.get("routing_key").and_then(Value::as_str).unwrap_or("");
    if key.len() != 32 {
        errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".to_string());
    } else if !sim.world().creds.routing_keys.iter().any(|k| k == key) {
        errors.push("Invalid routing key".to_string());
    }
    match v["payload"]["summary"].as_str() {
        None | Some("") => errors.push("'payload.summary' is missing or blank".into()),
        Some(s) if s.chars().count() > 1024 => {
            errors.push("'payload.summary' is too long (max 1024 characters)".into())
        }
        Some(_) => {}
    }
    if v.get("event_action").is_some() {
        errors.push("'event_action' is not allowed in a change event".into());
    }
    if !errors.is_empty() {
        return invalid(errors);
    }
    sim.world().change_events.push(v);
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Change event processed"})),
    )
        .into_response()
}

async fn enqueue(State(sim): State<Sim>, body: Option<Json<Value>>) -> Response {
    let Some(Json(v)) = body else {
        return (StatusCode::BAD_REQUEST, Json(json!({"status": "Unrecognized object", "message": "Event object format is unrecognized", "errors": ["JSON parse error"]}))).into_response();
    };
    let errors = check_event(&sim, &v);
    if !errors.is_empty() {
        return invalid(errors);
    }
    let mut w = sim.world();
    let n = w.next_seq();
    let key = v
        .get("dedup_key")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sim-{n:08x}"));
    let action = v["event_action"].as_str().unwrap_or_default();
    let open = w
        .incidents
        .get(&key)
        .is_some_and(|i| i.status != "resolved");
    match action {
        "trigger" if open => {
            if let Some(i) = w.incidents.get_mut(&key) {
                i.events += 1;
            }
        }
        "trigger" => {
            let incident = Incident {
                id: format!("Q{n:07}"),
                key: key.clone(),
                status: "triggered".into(),
                summary: v["payload"]["summary"].as_str().unwrap_or_default().into(),
                severity: v["payload"]["severity"].as_str().unwrap_or_default().into(),
                events: 1,
                first_event: v.clone(),
                first_event_at_us: super::now_us(),
            };
            w.incidents.insert(key.clone(), incident);
        }
        _ => {
            if let Some(i) = w.incidents.get_mut(&key) {
                i.events += 1;
                i.status = if action == "resolve" {
                    "resolved".into()
                } else {
                    "acknowledged".into()
                };
            }
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Event processed", "dedup_key": key})),
    )
        .into_response()
}

fn rest_error(status: StatusCode, code: u32, message: &str, errors: &[&str]) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "code": code, "errors": errors}})),
    )
        .into_response()
}

/// The rejection for a request without the right credentials.
/// A REST write: authenticated, and naming its requester (`From`).
fn rest_writer(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    if let Some(r) = rest_auth(sim, headers) {
        return Some(r);
    }
    headers.get("from").is_none().then(|| {
        rest_error(
            StatusCode::BAD_REQUEST,
            2001,
            "Invalid Input Provided",
            &["Requester User Not Found"],
        )
    })
}

fn rest_auth(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Token token={}", sim.world().creds.pagerduty_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Some(rest_error(
            StatusCode::UNAUTHORIZED,
            2006,
            "Unauthorized",
            &[],
        ));
    }
    None
}

async fn create_incident(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(r) = rest_writer(&sim, &headers) {
        return r;
    }
    let inc = body
        .map(|Json(v)| v["incident"].clone())
        .unwrap_or(Value::Null);
    if inc["type"] != "incident"
        || inc["title"].as_str().is_none()
        || inc["service"]["type"] != "service_reference"
    {
        return rest_error(
            StatusCode::BAD_REQUEST,
            2001,
            "Invalid Input Provided",
            &["incident must have type, title and a service_reference"],
        );
    }
    let key = inc["incident_key"].as_str().unwrap_or_default().to_string();
    let mut w = sim.world();
    if !key.is_empty()
        && w.incidents
            .get(&key)
            .is_some_and(|i| i.status != "resolved")
    {
        return rest_error(
            StatusCode::BAD_REQUEST,
            2001,
            "Invalid Input Provided",
            &["Open incident with matching dedup key already exists on this service"],
        );
    }
    let n = w.next_seq();
    let id = format!("P{n:06}");
    let title = inc["title"].as_str().unwrap_or_default().to_string();
    let urgency = inc["urgency"].as_str().unwrap_or("high").to_string();
    w.incidents.insert(
        key.clone(),
        Incident {
            id: id.clone(),
            key: key.clone(),
            status: "triggered".into(),
            summary: title.clone(),
            severity: urgency.clone(),
            events: 1,
            first_event: inc.clone(),
            first_event_at_us: super::now_us(),
        },
    );
    let body = json!({"incident": {
        "id": id, "type": "incident", "title": title, "summary": format!("[#{n}] {title}"), "incident_number": n,
        "status": "triggered", "urgency": urgency, "incident_key": key,
        "html_url": format!("https://sim.pagerduty.com/incidents/{id}"),
        "service": {"id": inc["service"]["id"], "type": "service_reference"}
    }});
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_service(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = rest_auth(&sim, &headers) {
        return r;
    }
    (StatusCode::OK, Json(json!({"service": {"id": id, "type": "service", "name": "Simulated service", "status": "active"}}))).into_response()
}

/// `GET /incidents/{id}/notes`: the incident's notes, oldest first.
async fn list_notes(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = rest_auth(&sim, &headers) {
        return r;
    }
    let w = sim.world();
    if !w.incidents.values().any(|i| i.id == id) {
        return rest_error(StatusCode::NOT_FOUND, 2100, "Not Found", &[]);
    }
    let notes = w.incident_notes.get(&id).cloned().unwrap_or_default();
    (StatusCode::OK, Json(json!({"notes": notes}))).into_response()
}

/// `POST /incidents/{id}/notes` (`{"note": {"content": ...}}`, `From`
/// required): the note as PagerDuty answers it, 200.
async fn create_note(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(r) = rest_writer(&sim, &headers) {
        return r;
    }
    let Some(content) = body
        .as_ref()
        .and_then(|Json(v)| v["note"]["content"].as_str().map(str::to_owned))
    else {
        return rest_error(
            StatusCode::BAD_REQUEST,
            2001,
            "Invalid Input Provided",
            &["Content can't be blank."],
        );
    };
    let mut w = sim.world();
    if !w.incidents.values().any(|i| i.id == id) {
        return rest_error(StatusCode::NOT_FOUND, 2100, "Not Found", &[]);
    }
    let n = w.next_seq();
    let now = crate::clock::format_time(crate::clock::now_ms());
    let note = json!({
        "id": format!("PN{n:05}"),
        "user": {"id": "PSIM", "type": "user_reference", "summary": "Backstop", "self": "https://api.pagerduty.com/users/PSIM", "html_url": "https://sim.pagerduty.com/users/PSIM"},
        "channel": {"summary": "The PagerDuty website or APIs"},
        "content": content,
        "created_at": now,
        "updated_at": now,
    });
    w.incident_notes.entry(id).or_default().push(note.clone());
    (StatusCode::OK, Json(json!({"note": note}))).into_response()
}
