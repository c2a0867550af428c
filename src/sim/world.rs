//! The simulated providers' state.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

/// Credentials the simulated providers accept.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Vercel bearer token.
    pub vercel_token: String,
    /// PagerDuty Events API routing keys.
    pub routing_keys: Vec<String>,
    /// PagerDuty REST API token.
    pub pagerduty_token: String,
    /// Slack bot token.
    pub slack_token: String,
    /// Sentry API token.
    pub sentry_token: String,
}

/// A simulated Vercel deployment.
#[derive(Debug, Clone, Serialize)]
pub struct SimDeployment {
    /// `dpl_...`
    pub id: String,
    /// Project id.
    pub project: String,
    /// `*.vercel.app`
    pub url: String,
    /// Git commit sha (`meta.githubCommitSha`).
    pub sha: String,
    /// Commit message (`meta.githubCommitMessage`).
    pub message: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Ready, Unix ms.
    pub ready_at: i64,
}

/// One alias write, as Vercel received it.
#[derive(Debug, Clone, Serialize)]
pub struct AliasWrite {
    /// Domain.
    pub domain: String,
    /// Deployment it now serves.
    pub deployment: String,
    /// When, Unix microseconds.
    pub at_us: i64,
}

/// One alias read: which deployment Vercel said a domain serves.
#[derive(Debug, Clone, Serialize)]
pub struct AliasRead {
    /// Domain.
    pub domain: String,
    /// Deployment it served.
    pub deployment: Option<String>,
    /// When, Unix microseconds.
    pub at_us: i64,
}

/// Wall-clock Unix microseconds.
pub fn now_us() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// One request a simulated provider answered, in the order answered.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    /// Which provider.
    pub provider: super::Provider,
    /// HTTP method.
    pub method: String,
    /// Path (after the provider's prefix).
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// When it was answered, Unix microseconds.
    pub at_us: i64,
}

/// A PagerDuty incident (one per dedup key).
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// `Q...` id.
    pub id: String,
    /// Dedup / incident key.
    pub key: String,
    /// `triggered` or `resolved`.
    pub status: String,
    /// Summary or title.
    pub summary: String,
    /// Severity or urgency.
    pub severity: String,
    /// Events received for it.
    pub events: u32,
    /// The first trigger's body.
    pub first_event: Value,
    /// When the first trigger arrived, Unix microseconds.
    pub first_event_at_us: i64,
}

/// One release's health in a Sentry project and environment.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReleaseHealth {
    /// Project slug.
    pub project: String,
    /// Environment.
    pub environment: String,
    /// Release.
    pub release: String,
    /// Crash-free rate, a 0-1 fraction.
    pub crash_free: f64,
    /// Sessions.
    pub sessions: u64,
}

/// A Sentry deploy created through the API.
#[derive(Debug, Clone, Serialize)]
pub struct SimDeploy {
    /// Id.
    pub id: String,
    /// Release.
    pub release: String,
    /// Environment.
    pub environment: String,
    /// Name.
    pub name: Option<String>,
    /// Project slugs.
    pub projects: Vec<String>,
    /// When.
    pub date_finished: String,
}

/// A Slack message.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// Channel id.
    pub channel: String,
    /// `ts`
    pub ts: String,
    /// Thread parent, if a reply.
    pub thread_ts: Option<String>,
    /// Fallback text.
    pub text: String,
    /// Blocks.
    pub blocks: Value,
    /// Message metadata, when sent.
    pub metadata: Value,
}

/// Everything the simulators know.
#[derive(Debug, Default)]
pub struct World {
    /// What they accept.
    pub creds: Credentials,
    /// Vercel: project id → production domains.
    pub projects: BTreeMap<String, Vec<String>>,
    /// Vercel deployments by id.
    pub deployments: BTreeMap<String, SimDeployment>,
    /// Vercel: domain → deployment id.
    pub aliases: BTreeMap<String, String>,
    /// Vercel: every alias write.
    pub alias_writes: Vec<AliasWrite>,
    /// Vercel: every alias read.
    pub alias_reads: Vec<AliasRead>,
    /// Vercel: project → last alias job (`lastAliasRequest`), and whether it has been polled once.
    pub alias_jobs: BTreeMap<String, (Value, bool)>,
    /// PagerDuty incidents by key.
    pub incidents: BTreeMap<String, Incident>,
    /// Slack channels: name (with `#`) → id.
    pub channels: BTreeMap<String, String>,
    /// Slack messages, in order.
    pub messages: Vec<Message>,
    /// Slack user groups: id → member user ids.
    pub usergroups: BTreeMap<String, Vec<String>>,
    /// Slack: what was posted to interactions' `response_url`s (ephemeral
    /// answers to the presser), in order.
    pub responses: Vec<Value>,
    /// Sentry: release health per project, environment and release.
    pub release_health: Vec<ReleaseHealth>,
    /// Sentry: sessions a release production was rolled back to gains per
    /// second from its first alias write on, at its own crash-free rate,
    /// or at `no_recovery` when set (the crash follows production: not a
    /// release problem after all). `Sim::new` sets 1,000.
    pub accrual_per_s: u64,
    /// Sentry: the crash-free rate (0-1) of sessions a restored release
    /// gains, when it does not recover.
    pub no_recovery: Option<f64>,
    /// Sentry: deploys created.
    pub sentry_deploys: Vec<SimDeploy>,
    /// PagerDuty (REST): notes per incident id, as created, in order.
    pub incident_notes: BTreeMap<String, Vec<Value>>,
    /// PagerDuty: change events received, bodies in order.
    pub change_events: Vec<Value>,
    /// Sentry: unresolved issues per release (the issues API).
    pub issues: BTreeMap<String, Vec<Value>>,
    /// The OpenAI-compatible server: every request (body and Authorization).
    pub ai_requests: Vec<Value>,
    /// Sentry projects: slug → numeric id.
    pub sentry_projects: BTreeMap<String, u64>,
    /// Requests each provider is answering right now.
    pub in_flight: BTreeMap<super::Provider, usize>,
    /// The most requests each provider was answering at once.
    pub max_in_flight: BTreeMap<super::Provider, usize>,
    /// Every request answered, by every provider, in order.
    pub served: Vec<Served>,
    /// Vercel's rate limits: bucket → `(calls, window in ms)`. `Sim::new`
    /// sets the published ones (`VERCEL_PUBLISHED_LIMITS`); a bucket not
    /// here is not metered.
    pub vercel_limits: BTreeMap<String, (u64, i64)>,
    /// Vercel: each metered bucket's current window, `(start ms, calls)`.
    pub vercel_windows: BTreeMap<String, (i64, u64)>,
    /// Counter for ids and timestamps.
    pub seq: u64,
}

/// Vercel's published API rate limits for the endpoints Backstop calls,
/// from https://vercel.com/docs/limits#rate-limits: `(bucket, calls,
/// window in seconds)`. Instant Rollback and project reads are not named
/// there, so the simulator does not meter them.
pub const VERCEL_PUBLISHED_LIMITS: &[(&str, u64, i64)] = &[
    ("alias creation", 120, 600),
    ("alias retrieval", 300, 600),
    ("aliases list", 500, 60),
    ("deployments retrieval", 500, 60),
    ("deployments list", 1000, 60),
];

/// What a metered Vercel call found in its bucket's window.
pub enum Metered {
    /// Within the window: `(limit, remaining, reset in Unix ms)`.
    Within(u64, u64, i64),
    /// Spent until `reset` (Unix ms): `(limit, reset)`.
    Spent(u64, i64),
}

impl World {
    /// Sets Vercel's rate limits to the published ones.
    pub fn meter_vercel_as_published(&mut self) {
        self.vercel_limits = VERCEL_PUBLISHED_LIMITS
            .iter()
            .map(|(b, n, s)| (b.to_string(), (*n, s * 1000)))
            .collect();
        self.vercel_windows.clear();
    }

    /// Spends one call of `bucket` at `now` (Unix ms); `None` when the
    /// bucket is not metered. A window starts with its first call.
    pub fn spend_vercel(&mut self, bucket: &str, now: i64) -> Option<Metered> {
        let (limit, window_ms) = *self.vercel_limits.get(bucket)?;
        let (start, used) = self
            .vercel_windows
            .entry(bucket.to_string())
            .or_insert((now, 0));
        if now >= *start + window_ms {
            (*start, *used) = (now, 0);
        }
        let reset = *start + window_ms;
        if *used >= limit {
            return Some(Metered::Spent(limit, reset));
        }
        *used += 1;
        Some(Metered::Within(limit, limit - *used, reset))
    }

    /// Adds a project with its production domains.
    pub fn add_project(&mut self, id: &str, domains: &[&str]) {
        self.projects
            .insert(id.into(), domains.iter().map(|d| d.to_string()).collect());
    }

    /// Adds a READY production deployment.
    pub fn add_deployment(&mut self, project: &str, id: &str, sha: &str, ready_at: i64) {
        let url = format!(
            "{}-{}.vercel.app",
            project.trim_start_matches("prj_"),
            &id[id.len().saturating_sub(6)..].to_lowercase()
        );
        self.deployments.insert(
            id.into(),
            SimDeployment {
                id: id.into(),
                project: project.into(),
                url,
                sha: sha.into(),
                message: format!("Release {sha}"),
                created_at: ready_at - 60_000,
                ready_at,
            },
        );
    }

    /// Points every production domain of `project` at `deployment`.
    pub fn serve(&mut self, project: &str, deployment: &str) {
        for d in self.projects.get(project).cloned().unwrap_or_default() {
            self.aliases.insert(d, deployment.into());
        }
    }

    /// Sets a release's health in a project and environment: crash-free
    /// rate as a 0-1 fraction (as Sentry answers) over `sessions` sessions.
    pub fn set_health(
        &mut self,
        project: &str,
        environment: &str,
        release: &str,
        crash_free: f64,
        sessions: u64,
    ) {
        let row = ReleaseHealth {
            project: project.into(),
            environment: environment.into(),
            release: release.into(),
            crash_free,
            sessions,
        };
        match self
            .release_health
            .iter_mut()
            .find(|h| h.project == project && h.environment == environment && h.release == release)
        {
            Some(h) => *h = row,
            None => self.release_health.push(row),
        }
    }

    /// A release's health as Sentry reports it now: as set, plus what it
    /// gained since production was rolled back to it (see `accrual_per_s`).
    pub fn health_now(&self, h: &ReleaseHealth) -> ReleaseHealth {
        let restored_at = self
            .alias_writes
            .iter()
            .filter(|w| {
                self.deployments
                    .get(&w.deployment)
                    .is_some_and(|d| d.sha == h.release)
            })
            .map(|w| w.at_us)
            .min();
        let Some(at) = restored_at else {
            return h.clone();
        };
        let secs = (now_us() - at).max(0) as f64 / 1e6;
        let gained = (secs * self.accrual_per_s as f64) as u64;
        let rate = self.no_recovery.unwrap_or(h.crash_free);
        let sessions = h.sessions + gained;
        let crashed = h.sessions as f64 * (1.0 - h.crash_free) + gained as f64 * (1.0 - rate);
        ReleaseHealth {
            sessions,
            crash_free: match sessions {
                0 => h.crash_free,
                n => 1.0 - crashed / n as f64,
            },
            ..h.clone()
        }
    }

    /// Adds a Slack channel.
    pub fn add_channel(&mut self, name: &str) {
        let id = format!("C{:08}", self.channels.len() + 1);
        self.channels.insert(name.into(), id);
    }

    /// The next number in sequence.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A JSON picture of everything (for `/_sim/state` and tests).
    pub fn snapshot(&self) -> Value {
        json!({
            "vercel": {"aliases": self.aliases, "alias_writes": self.alias_writes, "deployments": self.deployments,
                       "alias_jobs": self.alias_jobs.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect::<BTreeMap<_, _>>()},
            "pagerduty": {"incidents": self.incidents},
            "slack": {"channels": self.channels, "messages": self.messages, "responses": self.responses},
            "sentry": {"release_health": self.release_health, "deploys": self.sentry_deploys},
            "pagerduty_changes": self.change_events,
        })
    }

    /// Deployment as Vercel's API shows it.
    pub fn deployment_json(&self, d: &SimDeployment) -> Value {
        json!({
            "uid": d.id, "id": d.id, "name": d.project.trim_start_matches("prj_"), "projectId": d.project, "url": d.url,
            "created": d.created_at, "createdAt": d.created_at, "buildingAt": d.created_at, "ready": d.ready_at,
            "state": "READY", "readyState": "READY", "readySubstate": "PROMOTED", "target": "production", "type": "LAMBDAS",
            "source": "git", "meta": {"githubCommitSha": d.sha, "githubCommitRef": "main", "githubCommitMessage": d.message, "githubCommitAuthorName": "Sam Dev", "githubCommitAuthorLogin": "samdev"}, "isRollbackCandidate": true
        })
    }
}
