//! One struct per `[section]` of the configuration, with its defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::env::{de_bool, de_duration, de_list, de_u64};

/// `[admin]`: the console and `/metrics`, on a listener of their own (the
/// webhooks must be reachable from the internet; these must not be).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Where the console and metrics listen; `off` turns them off.
    #[serde(deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// Required when `listen` is not loopback: every request carries it
    /// (`Authorization: Bearer`, or the login form's cookie).
    pub token: Option<SecretString>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            token: None,
        }
    }
}

fn de_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{addr}` is not an address like 127.0.0.1:9091 (or `off`): {e}"
            ))
        }),
    }
}

/// `[ai]`: agents that write for people on a model the team picks, through
/// any OpenAI-compatible endpoint. Off unless `base_url` is set. No model
/// ever decides anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiSettings {
    /// An OpenAI-compatible `/v1` base URL; unset: off.
    pub base_url: Option<String>,
    /// API key (optional for a local server).
    pub api_key: Option<SecretString>,
    /// Every agent's model unless it names its own.
    pub model: Option<String>,
    /// Longest one completion may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// `max_tokens` of every completion.
    #[serde(deserialize_with = "de_u64")]
    pub max_tokens: u64,
    /// Per agent (`brief`, `recap`): its model, prompt, on or off.
    pub agents: BTreeMap<String, AgentSettings>,
}

impl Default for AiSettings {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key: None,
            model: None,
            timeout: Duration::from_secs(20),
            max_tokens: 400,
            agents: BTreeMap::new(),
        }
    }
}

/// One agent's settings (globally, or a service's override).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Its model (overrides `ai.model`).
    pub model: Option<String>,
    /// Its prompt: a minijinja template (the default is in the README).
    pub prompt: Option<String>,
    /// Off when false.
    #[serde(deserialize_with = "de_opt_bool")]
    pub enabled: Option<bool>,
}

/// The agents there are.
pub const AGENTS: [&str; 2] = ["brief", "recap"];

impl AiSettings {
    /// True when an endpoint is configured.
    pub fn on(&self) -> bool {
        self.base_url.is_some()
    }
}

fn de_opt_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    de_bool(d).map(Some)
}

/// `[retention]`: how long finished runs are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Finished runs, with their steps, attempts and alert bodies.
    #[serde(deserialize_with = "de_duration")]
    pub runs: Duration,
    /// Alerts the alert alone settled (unmapped, warnings, not a crash rule).
    #[serde(deserialize_with = "de_duration")]
    pub settled_alerts: Duration,
    /// How often to prune; 0: never in the background (`backstop prune`).
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            runs: Duration::from_secs(90 * 86_400),
            settled_alerts: Duration::from_secs(7 * 86_400),
            interval: Duration::from_secs(3600),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP server binds, e.g. `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest accepted webhook body, in bytes.
    #[serde(deserialize_with = "de_u64")]
    pub max_body_bytes: u64,
    /// Longest a webhook may take to be stored before it is answered 503
    /// (Sentry waits 1 s).
    #[serde(deserialize_with = "de_duration")]
    pub ingest_deadline: Duration,
    /// A connection that has not sent a complete request head this long
    /// after it opened, or after its last response (keep-alive idle), is
    /// closed.
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Longest a request body may take to arrive.
    #[serde(deserialize_with = "de_duration")]
    pub body_timeout: Duration,
    /// Slowest a declared body may arrive, bytes per second: a body of
    /// `Content-Length` n must arrive within 2 s + n / rate (and within
    /// `body_timeout`).
    #[serde(deserialize_with = "de_u64")]
    pub min_body_rate: u64,
    /// Most connections open at once. Beyond it the oldest connection that
    /// has not sent a complete request is shed to make room, so a real
    /// webhook always gets in. Must fit the open-files limit.
    #[serde(deserialize_with = "de_u64")]
    pub max_connections: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            ingest_deadline: Duration::from_millis(900),
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            min_body_rate: 64 * 1024,
            max_connections: 512,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://backstop.db` (embedded default) or `postgres://user@host/db`.
    pub url: SecretString,
    /// Largest connection pool (Postgres; SQLite always uses one writer).
    #[serde(deserialize_with = "de_u64")]
    pub max_connections: u64,
    /// How long a request waits for a connection before the store counts as
    /// unavailable (webhooks then answer 503 while Sentry still listens).
    #[serde(deserialize_with = "de_duration")]
    pub acquire_timeout: Duration,
    /// SQLite: sync every commit fully (`synchronous = FULL`), not only the
    /// webhook's. Closes the power-cut window on the engine's records; costs
    /// ~1.4 ms before the first alias write.
    #[serde(deserialize_with = "de_bool")]
    pub sqlite_full_sync: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://backstop.db"),
            max_connections: 10,
            acquire_timeout: Duration::from_millis(750),
            sqlite_full_sync: false,
        }
    }
}

/// `[sentry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentrySettings {
    /// The internal integration's Client Secret; verifies `Sentry-Hook-Signature`.
    pub client_secret: Option<SecretString>,
    /// How far `Sentry-Hook-Timestamp` may be from now.
    #[serde(deserialize_with = "de_duration")]
    pub timestamp_tolerance: Duration,
    /// API token: release health before acting (`org:read`,
    /// `project:read`), deploys of restored releases (`project:releases`),
    /// and `backstop check`.
    pub token: Option<SecretString>,
    /// Organization slug, with `token`.
    pub org: Option<String>,
    /// API base URL.
    pub api_base: String,
    /// Longest the release-health reads before acting may take (counted
    /// inside `engine.rollback_deadline`); slower counts as unreachable.
    #[serde(deserialize_with = "de_duration")]
    pub confirm_timeout: Duration,
    /// Create a Sentry deploy of the restored release after a rollback.
    #[serde(deserialize_with = "de_bool")]
    pub record_deploys: bool,
}

impl SentrySettings {
    /// True when the API can be called (a token and an organization).
    pub fn api_configured(&self) -> bool {
        self.token.is_some() && self.org.is_some()
    }
}

impl Default for SentrySettings {
    fn default() -> Self {
        Self {
            client_secret: None,
            timestamp_tolerance: Duration::from_secs(300),
            token: None,
            org: None,
            api_base: "https://sentry.io".into(),
            confirm_timeout: Duration::from_secs(3),
            record_deploys: true,
        }
    }
}

/// `[vercel]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VercelSettings {
    /// API token (`Authorization: Bearer`).
    pub token: Option<SecretString>,
    /// Team id, sent as `?teamId=` on every call when set.
    pub team_id: Option<String>,
    /// Verifies `x-vercel-signature` on deployment webhooks.
    pub webhook_secret: Option<SecretString>,
    /// API base URL; overridable for tests and the simulator.
    pub api_base: String,
    /// Timeout of one API call.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Most Vercel API calls in flight at once from this process.
    #[serde(deserialize_with = "de_u64")]
    pub max_in_flight: u64,
}

impl Default for VercelSettings {
    fn default() -> Self {
        Self {
            token: None,
            team_id: None,
            webhook_secret: None,
            api_base: "https://api.vercel.com".into(),
            timeout: Duration::from_secs(10),
            max_in_flight: 256,
        }
    }
}

/// `[pagerduty]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagerDutySettings {
    /// `events` (Events API v2, default) or `rest` (REST API, named escalation policy).
    pub mode: PagerDutyMode,
    /// Events API v2 integration (routing) key.
    pub routing_key: Option<SecretString>,
    /// REST API token (`rest` mode).
    pub api_token: Option<SecretString>,
    /// Email of the PagerDuty user sending REST requests (`From:` header).
    pub from: Option<String>,
    /// PagerDuty service id incidents are opened on (`rest` mode).
    pub service_id: Option<String>,
    /// Escalation policy id (`rest` mode, optional).
    pub escalation_policy_id: Option<String>,
    /// API base URL; defaults to `https://events.pagerduty.com` or `https://api.pagerduty.com` by mode.
    pub api_base: Option<String>,
    /// Severity of the page after a successful rollback.
    pub severity_rollback: Severity,
    /// Severity of the page when a rollback failed.
    pub severity_rollback_failed: Severity,
    /// Severity of the page when Backstop holds back (escalations).
    pub severity_escalation: Severity,
    /// Severity of the page for a dry run (when the service pages on dry runs).
    pub severity_dry_run: Severity,
    /// Timeout of one API call.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Most PagerDuty API calls in flight at once from this process.
    #[serde(deserialize_with = "de_u64")]
    pub max_in_flight: u64,
    /// Send a change event (`/v2/change/enqueue`) for every rollback, so
    /// the service's change timeline shows it (Events API mode).
    #[serde(deserialize_with = "de_bool")]
    pub change_events: bool,
    /// The Webhooks v3 subscription's secret: acks and resolves arrive at
    /// `POST /webhooks/pagerduty`.
    pub webhook_secret: Option<SecretString>,
}

impl Default for PagerDutySettings {
    fn default() -> Self {
        Self {
            mode: PagerDutyMode::Events,
            routing_key: None,
            api_token: None,
            from: None,
            service_id: None,
            escalation_policy_id: None,
            api_base: None,
            severity_rollback: Severity::Error,
            severity_rollback_failed: Severity::Critical,
            severity_escalation: Severity::Critical,
            severity_dry_run: Severity::Info,
            timeout: Duration::from_secs(10),
            max_in_flight: 32,
            change_events: true,
            webhook_secret: None,
        }
    }
}

impl PagerDutySettings {
    /// True when paging is configured.
    pub fn enabled(&self) -> bool {
        match self.mode {
            PagerDutyMode::Events => self.routing_key.is_some(),
            PagerDutyMode::Rest => self.api_token.is_some(),
        }
    }

    /// The API base in force.
    pub fn base(&self) -> &str {
        match (&self.api_base, self.mode) {
            (Some(b), _) => b,
            (None, PagerDutyMode::Events) => "https://events.pagerduty.com",
            (None, PagerDutyMode::Rest) => "https://api.pagerduty.com",
        }
    }
}

/// PagerDuty API flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PagerDutyMode {
    /// Events API v2.
    Events,
    /// REST API.
    Rest,
}

/// PagerDuty event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Pages loudly.
    Critical,
    /// Pages.
    Error,
    /// Low urgency.
    Warning,
    /// Informational.
    Info,
}

impl Severity {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// `[slack]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackSettings {
    /// Bot token (`xoxb-...`) with `chat:write`.
    pub bot_token: Option<SecretString>,
    /// Channel to post in, e.g. `#deploys`.
    pub channel: Option<String>,
    /// Incoming-webhook URL, for teams without a bot (no threads).
    pub webhook_url: Option<SecretString>,
    /// API base URL.
    pub api_base: String,
    /// Timeout of one API call.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Most Slack API calls in flight at once from this process.
    #[serde(deserialize_with = "de_u64")]
    pub max_in_flight: u64,
    /// The Slack app's signing secret: cards carry Undo / Hold / Resume
    /// buttons, answered at `POST /webhooks/slack/interactions`.
    pub signing_secret: Option<SecretString>,
    /// Slack user ids who may press them (with `allowed_usergroups`; both
    /// empty: anyone who can see the channel).
    #[serde(deserialize_with = "de_list")]
    pub allowed_users: Vec<String>,
    /// Slack user group ids whose members may press them (read with
    /// `usergroups.users.list`, scope `usergroups:read`, cached a minute).
    #[serde(deserialize_with = "de_list")]
    pub allowed_usergroups: Vec<String>,
}

impl Default for SlackSettings {
    fn default() -> Self {
        Self {
            bot_token: None,
            channel: None,
            webhook_url: None,
            api_base: "https://slack.com/api".into(),
            timeout: Duration::from_secs(10),
            max_in_flight: 16,
            signing_secret: None,
            allowed_users: Vec::new(),
            allowed_usergroups: Vec::new(),
        }
    }
}

impl SlackSettings {
    /// True when announcing is configured.
    pub fn enabled(&self) -> bool {
        self.bot_token.is_some() || self.webhook_url.is_some()
    }
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Runs this process works on at once, for different services (one run
    /// per service at a time, always). Sized for a fleet incident; 0: no
    /// background work (only `run_until_idle` callers and other instances).
    #[serde(deserialize_with = "de_u64")]
    pub max_concurrent_runs: u64,
    /// How long a claim on a run or service lasts without renewal; another
    /// instance takes the run over after it lapses.
    #[serde(deserialize_with = "de_duration")]
    pub lease: Duration,
    /// How often an idle process looks for work other instances stored
    /// (its own webhooks wake it at once).
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    /// How long `decide` and `rollback` may take, every attempt and retry
    /// included: each attempt is cut off when it would run past it.
    #[serde(deserialize_with = "de_duration")]
    pub rollback_deadline: Duration,
    /// How much longer than `rollback_deadline` a rollback may wait for a
    /// provider that named when to come back (Vercel's rate-limit window
    /// resetting, a 429's `Retry-After`). The on-call is paged at once that
    /// the rollback is held and until when; it goes ahead then, unless the
    /// service was paused meanwhile. `0s`: no such wait, the rollback fails
    /// and pages "rollback failed".
    #[serde(deserialize_with = "de_duration")]
    pub rate_limit_wait: Duration,
    /// How long each later step (`resync`, `page`, `announce`, `followup`)
    /// may take, every attempt and retry included.
    #[serde(deserialize_with = "de_duration")]
    pub step_deadline: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 128,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            rollback_deadline: Duration::from_secs(120),
            rate_limit_wait: Duration::from_secs(900),
            step_deadline: Duration::from_secs(600),
        }
    }
}
