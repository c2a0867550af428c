//! Simulated Vercel, PagerDuty, Slack and Sentry APIs for the demo and the
//! tests. They speak the real wire formats (bodies, error shapes, rate-limit
//! headers), keep state (an alias really moves, incidents group by dedup
//! key, messages thread), and inject faults per provider: latency, 5xx, 429,
//! timeouts and dropped connections. The product only sees an `api_base`.
//!
//! Each provider lives under its own prefix: `/vercel`, `/pagerduty`,
//! `/slack`, `/sentry`; `/_sim/state`, `/_sim/faults`, `/_sim/health` (a
//! release's crash-free rate and sessions) and `/_sim/recovery` (whether a
//! release production is rolled back to recovers) inspect and steer.

pub mod config;
mod faults;
mod openai;
mod pagerduty;
pub mod sender;
mod sentry;
mod slack;
mod vercel;
mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

pub use faults::Faults;
pub use world::*;

/// Which simulated provider.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Vercel REST API.
    Vercel,
    /// PagerDuty Events and REST APIs.
    Pagerduty,
    /// Slack Web API.
    Slack,
    /// Sentry REST API.
    Sentry,
    /// An OpenAI-compatible chat-completions server (the agents).
    Ai,
}

/// Shared simulator state.
#[derive(Clone, Default)]
pub struct Sim {
    world: Arc<Mutex<World>>,
    faults: Arc<Mutex<std::collections::BTreeMap<Provider, Faults>>>,
}

impl Sim {
    /// A simulator with these credentials and nothing else.
    pub fn new(creds: Credentials) -> Self {
        let sim = Self::default();
        {
            let mut w = sim.world();
            w.creds = creds;
            w.accrual_per_s = 1_000;
            w.meter_vercel_as_published();
        }
        sim
    }

    /// Locks the world (never held across an await).
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the faults of one provider.
    pub fn set_faults(&self, provider: Provider, faults: Faults) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(provider, faults);
    }

    fn faults_of(&self, provider: Provider) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&provider)
            .cloned()
            .unwrap_or_default()
    }

    /// The whole router.
    pub fn router(&self) -> Router {
        Router::new()
            .nest(
                "/vercel",
                faults::layer(vercel::routes(self.clone()), self.clone(), Provider::Vercel),
            )
            .nest(
                "/pagerduty",
                faults::layer(pagerduty::routes(), self.clone(), Provider::Pagerduty),
            )
            .nest(
                "/slack",
                faults::layer(slack::routes(), self.clone(), Provider::Slack),
            )
            .nest(
                "/sentry",
                faults::layer(sentry::routes(), self.clone(), Provider::Sentry),
            )
            .nest(
                "/openai",
                faults::layer(openai::routes(), self.clone(), Provider::Ai),
            )
            .route("/_sim/state", get(state))
            .route("/_sim/faults", post(set_faults))
            .route("/_sim/vercel-limits", post(set_vercel_limits))
            .route("/_sim/health", post(set_health))
            .route("/_sim/recovery", post(set_recovery))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one) in the background.
    pub async fn start(self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Running {
            sim: self,
            base: format!("http://{addr}"),
            task,
        })
    }
}

/// A simulator serving in the background.
pub struct Running {
    /// Its state.
    pub sim: Sim,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `api_base` for one provider.
    pub fn api_base(&self, provider: Provider) -> String {
        let prefix = match provider {
            Provider::Vercel => "vercel",
            Provider::Pagerduty => "pagerduty",
            Provider::Slack => "slack",
            Provider::Sentry => "sentry",
            Provider::Ai => "openai/v1",
        };
        format!("{}/{prefix}", self.base)
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn state(State(sim): State<Sim>) -> Json<Value> {
    Json(sim.world().snapshot())
}

#[derive(serde::Deserialize)]
struct FaultRequest {
    provider: Provider,
    #[serde(flatten)]
    faults: Faults,
}

async fn set_faults(State(sim): State<Sim>, Json(req): Json<FaultRequest>) -> Json<Value> {
    sim.set_faults(req.provider, req.faults);
    Json(serde_json::json!({"ok": true}))
}

/// `{"published": true}` (Vercel's published limits), `{}` (none), or
/// `{"limits": {"alias creation": [calls, window_ms], ...}}`.
#[derive(serde::Deserialize)]
struct VercelLimits {
    #[serde(default)]
    published: bool,
    #[serde(default)]
    limits: std::collections::BTreeMap<String, (u64, i64)>,
}

async fn set_vercel_limits(State(sim): State<Sim>, Json(req): Json<VercelLimits>) -> Json<Value> {
    let mut w = sim.world();
    if req.published {
        w.meter_vercel_as_published();
    } else {
        w.vercel_limits = req.limits;
        w.vercel_windows.clear();
    }
    Json(serde_json::json!({"ok": true, "limits": w.vercel_limits}))
}

async fn set_health(State(sim): State<Sim>, Json(h): Json<ReleaseHealth>) -> Json<Value> {
    sim.world().set_health(
        &h.project,
        &h.environment,
        &h.release,
        h.crash_free,
        h.sessions,
    );
    Json(serde_json::json!({"ok": true}))
}

#[derive(serde::Deserialize)]
struct Recovery {
    recovers: bool,
    /// Crash-free rate (0-1) of what a restored release gains when it
    /// does not recover.
    #[serde(default = "crashing_rate")]
    crash_free: f64,
}

fn crashing_rate() -> f64 {
    0.93
}

async fn set_recovery(State(sim): State<Sim>, Json(r): Json<Recovery>) -> Json<Value> {
    sim.world().no_recovery = (!r.recovers).then_some(r.crash_free);
    Json(serde_json::json!({"ok": true, "recovers": r.recovers}))
}
