//! Fault injection per provider: added latency, and shares of 5xx, 429
//! (with the provider's own rate-limit headers and body), timeouts and
//! dropped connections.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Provider, Sim};

/// What goes wrong, per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every response, ms.
    pub latency_ms: u64,
    /// Share of requests answered 5xx (0-1).
    pub error_rate: f64,
    /// Share answered 429 with rate-limit headers.
    pub rate_limit_rate: f64,
    /// Share that hang for `hang_ms` (the client times out).
    pub timeout_rate: f64,
    /// How long a "timeout" hangs, ms (default 30 s).
    pub hang_ms: u64,
    /// Share whose connection drops mid-response.
    pub drop_rate: f64,
}

enum Fault {
    Error,
    RateLimit,
    Hang,
    Drop,
}

impl Faults {
    fn roll(&self) -> Option<Fault> {
        let r = fastrand::f64();
        let mut edge = self.error_rate;
        if r < edge {
            return Some(Fault::Error);
        }
        edge += self.rate_limit_rate;
        if r < edge {
            return Some(Fault::RateLimit);
        }
        edge += self.timeout_rate;
        if r < edge {
            return Some(Fault::Hang);
        }
        edge += self.drop_rate;
        (r < edge).then_some(Fault::Drop)
    }
}

/// A request counted as in flight at its provider until it is answered
/// (or its client gave up and the handler was dropped).
struct InFlight {
    sim: Sim,
    provider: Provider,
}

impl InFlight {
    fn enter(sim: &Sim, provider: Provider) -> Self {
        let mut w = sim.world();
        let now = {
            let n = w.in_flight.entry(provider).or_default();
            *n += 1;
            *n
        };
        let max = w.max_in_flight.entry(provider).or_default();
        *max = (*max).max(now);
        Self {
            sim: sim.clone(),
            provider,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.sim.world().in_flight.get_mut(&self.provider) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Wraps a provider's routes with its faults.
pub fn layer(routes: Router<Sim>, sim: Sim, provider: Provider) -> Router<Sim> {
    routes.layer(axum::middleware::from_fn_with_state(
        (sim, provider),
        inject,
    ))
}

async fn inject(
    State((sim, provider)): State<(Sim, Provider)>,
    req: Request,
    next: Next,
) -> Response {
    let faults = sim.faults_of(provider);
    let _counted = InFlight::enter(&sim, provider);
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let response = respond(provider, &faults, req, next).await;
    sim.world().served.push(super::Served {
        provider,
        method,
        path,
        status: response.status().as_u16(),
        at_us: super::now_us(),
    });
    response
}

async fn respond(provider: Provider, faults: &Faults, req: Request, next: Next) -> Response {
    match faults.roll() {
        None => next.run(req).await,
        Some(Fault::Error) => server_error(provider),
        Some(Fault::RateLimit) => rate_limited(provider),
        Some(Fault::Hang) => {
            let hang = if faults.hang_ms == 0 {
                30_000
            } else {
                faults.hang_ms
            };
            tokio::time::sleep(Duration::from_millis(hang)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Some(Fault::Drop) => {
            // Headers go out, then the body stream fails: the connection drops.
            let stream = failing_stream(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "dropped by the simulator",
            ));
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
    }
}

fn failing_stream(
    e: std::io::Error,
) -> impl futures_core::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    struct Once(Option<std::io::Error>);
    impl futures_core::Stream for Once {
        type Item = Result<axum::body::Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.take().map(Err))
        }
    }
    Once(Some(e))
}

fn server_error(provider: Provider) -> Response {
    let body = match provider {
        Provider::Vercel => {
            json!({"error": {"code": "internal_server_error", "message": "An unexpected internal error occurred"}})
        }
        Provider::Pagerduty => {
            json!({"status": "Unrecognized object", "message": "Event object format is unrecognized", "errors": ["internal error"]})
        }
        Provider::Slack => json!({"ok": false, "error": "internal_error"}),
        Provider::Sentry => json!({"detail": "Internal Error"}),
        Provider::Ai => {
            json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}})
        }
    };
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

fn rate_limited(provider: Provider) -> Response {
    let reset = (crate::clock::now_ms() / 1000 + 1).to_string();
    let (body, headers): (serde_json::Value, Vec<(&str, String)>) = match provider {
        Provider::Vercel => (
            json!({"error": {"code": "rate_limited", "message": "Rate limit exceeded", "limit": {"remaining": 0, "reset": reset.parse::<i64>().unwrap_or(0), "total": 120}}}),
            vec![
                ("x-ratelimit-limit", "120".into()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset),
            ],
        ),
        Provider::Pagerduty => (
            json!({"error": {"message": "Rate Limit Exceeded", "code": 2020}}),
            vec![
                ("ratelimit-limit", "960".into()),
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", "1".into()),
            ],
        ),
        Provider::Slack => (
            json!({"ok": false, "error": "ratelimited"}),
            vec![("retry-after", "1".into())],
        ),
        Provider::Sentry => (
            json!({"detail": "You are attempting to use this endpoint too frequently."}),
            vec![("retry-after", "1".into())],
        ),
        Provider::Ai => (
            json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
            vec![
                ("retry-after-ms", "300".into()),
                ("x-ratelimit-reset-requests", "1s".into()),
            ],
        ),
    };
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}
