//! Plain records read from and written to the ledger.

use serde::{Deserialize, Serialize};

/// A run's id (a time-ordered UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the ledger knows about a deployment's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Recorded, not yet proven.
    Unproven,
    /// Baked without a critical alert, or marked good by a person.
    Good,
    /// Rolled back from, or marked bad by a person. Never a target.
    Bad,
}

impl Verdict {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unproven => "unproven",
            Verdict::Good => "good",
            Verdict::Bad => "bad",
        }
    }

    /// Parses the stored or typed spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unproven" => Some(Verdict::Unproven),
            "good" => Some(Verdict::Good),
            "bad" => Some(Verdict::Bad),
            _ => None,
        }
    }
}

/// One deployment row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Vercel deployment id.
    pub id: String,
    /// Configured service name.
    pub service: String,
    /// `*.vercel.app` URL.
    pub url: Option<String>,
    /// Sentry release (by default the git commit sha).
    pub release: Option<String>,
    /// When Vercel created it, Unix ms.
    pub created_at_ms: Option<i64>,
    /// When it last went live, Unix ms.
    pub promoted_at_ms: Option<i64>,
    /// When another deployment replaced it, Unix ms.
    pub superseded_at_ms: Option<i64>,
    /// Serving production now.
    pub live: bool,
    /// Stored verdict.
    pub verdict: Verdict,
    /// Why it has that verdict.
    pub verdict_reason: Option<String>,
    /// When a fresh critical alert arrived while it was live, Unix ms.
    pub alerted_at_ms: Option<i64>,
}

/// A deployment to record (from a webhook, `sync` or the CLI).
#[derive(Debug, Clone, Default)]
pub struct NewDeployment {
    /// Vercel deployment id.
    pub id: String,
    /// Configured service name.
    pub service: String,
    /// `*.vercel.app` URL.
    pub url: Option<String>,
    /// Sentry release.
    pub release: Option<String>,
    /// Vercel's `createdAt`, Unix ms.
    pub created_at_ms: Option<i64>,
}

/// What became of a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// It is live now; `superseded` names what it replaced.
    Live { superseded: Option<String> },
    /// It was live already.
    AlreadyLive,
    /// A later promotion is already recorded; history updated only.
    Older,
}

/// What became of an incoming alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored with a new run.
    Stored(RunId),
    /// Seen before; this is its run.
    Duplicate(RunId),
}

/// An alert as received.
#[derive(Debug, Clone)]
pub struct NewAlert {
    /// `(resource, rule, identifier, action)` key.
    pub dedup_key: String,
    /// `metric_alert` or `event_alert`.
    pub resource: String,
    /// `critical`, `resolved`, ...
    pub action: String,
    /// Service the alert maps to, if any (serialises its runs).
    pub service: Option<String>,
    /// The verified raw body.
    pub body: String,
    /// Unix ms.
    pub received_at_ms: i64,
    /// The decision, when the alert alone decides it (not critical,
    /// unmapped, not a crash alert): the run is stored finished.
    pub decided: Option<DecisionRecord>,
}

/// Run status.
pub mod run_status {
    /// Waiting for a worker.
    pub const PENDING: &str = "pending";
    /// Claimed by a worker.
    pub const RUNNING: &str = "running";
    /// Every step finished (or none was needed).
    pub const DONE: &str = "done";
    /// A step failed for good.
    pub const FAILED: &str = "failed";
}

/// Step status.
pub mod step_status {
    /// Not finished yet.
    pub const PENDING: &str = "pending";
    /// Finished successfully.
    pub const SUCCEEDED: &str = "succeeded";
    /// Gave up (fatal error or deadline).
    pub const FAILED: &str = "failed";
}

/// One run row.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Run id.
    pub id: RunId,
    /// Alert id.
    pub alert_id: String,
    /// Service, once known.
    pub service: Option<String>,
    /// `pending`, `running`, `done`, `failed`.
    pub status: String,
    /// `rollback`, `escalate`, `dry-run`, `skip`, `resolution`.
    pub outcome: Option<String>,
    /// One-line reason for the outcome.
    pub reason: Option<String>,
    /// The full decision with its facts.
    pub decision: Option<serde_json::Value>,
    /// Deployment rolled back from.
    pub rollback_from: Option<String>,
    /// Deployment rolled back to.
    pub rollback_to: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub decided_at_ms: Option<i64>,
    /// Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// A run claimed by a worker, with the alert it acts on.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// The run.
    pub run: Run,
    /// Alert resource (`metric_alert`, `event_alert`).
    pub resource: String,
    /// The stored raw alert body.
    pub body: String,
    /// When the alert was received, Unix ms.
    pub received_at_ms: i64,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `decide`, `rollback`, `page`, `announce`.
    pub name: String,
    /// Order of creation.
    pub seq: i64,
    /// `pending`, `succeeded`, `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// What the step produced.
    pub output: Option<serde_json::Value>,
    /// Last error envelope `{code, message, retryable}`.
    pub error: Option<serde_json::Value>,
    /// Unix ms of the first attempt.
    pub started_at_ms: Option<i64>,
    /// Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// One attempt of a step.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Step name.
    pub step: String,
    /// 1-based attempt number.
    pub attempt: i64,
    /// Unix ms.
    pub started_at_ms: i64,
    /// Unix ms; `None` while in flight (or if the process died).
    pub finished_at_ms: Option<i64>,
    /// `ok`, `retryable`, `fatal`; `None` while in flight.
    pub outcome: Option<String>,
    /// Error envelope.
    pub error: Option<serde_json::Value>,
}

/// A run with everything it did.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Alert action.
    pub action: String,
    /// Alert dedup key.
    pub dedup_key: String,
    /// The stored alert body.
    pub alert: serde_json::Value,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

/// The decision as stored on the run.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// Service the alert mapped to.
    pub service: Option<String>,
    /// Outcome kind.
    pub outcome: String,
    /// One-line reason.
    pub reason: String,
    /// The full decision (serialised).
    pub detail: serde_json::Value,
    /// Deployment to roll back from.
    pub rollback_from: Option<String>,
    /// Deployment to roll back to.
    pub rollback_to: Option<String>,
    /// Live deployment that took a fresh critical alert (no longer bakes to good).
    pub alerted_live: Option<String>,
    /// Steps to run next, in order.
    pub steps: Vec<String>,
    /// The `decide` attempt that made it, recorded as ended with it.
    pub attempt: Option<i64>,
}

/// What the ledger says about a service when an alert is decided.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// Deployments of the service, newest promotion first.
    pub deployments: Vec<Deployment>,
    /// The live deployment already had a rollback run.
    pub live_rolled_back: bool,
    /// Last automatic rollback decision of this service, Unix ms.
    pub last_rollback_at_ms: Option<i64>,
    /// Automatic rollback decisions in the last 24 hours.
    pub rollbacks_last_day: u32,
    /// Why a person paused the service, if they did.
    pub paused: Option<String>,
}

/// A verified rollback, as the `rollback` step hands it to the ledger.
#[derive(Debug, Clone, Copy)]
pub struct RollbackDone<'a> {
    /// Service.
    pub service: &'a str,
    /// Deployment rolled back from (becomes bad).
    pub from: &'a str,
    /// Deployment rolled back to (becomes live and good).
    pub to: &'a str,
    /// The run.
    pub run: &'a RunId,
    /// The step's output.
    pub output: &'a serde_json::Value,
    /// The successful attempt, ended with this write.
    pub attempt: Option<i64>,
    /// The worker that must still hold the run's claim.
    pub worker: &'a str,
}
