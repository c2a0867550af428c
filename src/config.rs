//! Typed settings: built-in defaults < TOML file < `BACKSTOP_<SECTION>__<KEY>`
//! environment variables. Unknown keys are errors, secrets live in
//! [`SecretString`] (redacted `Debug`), and [`Settings::validate`] names the
//! key and the fix for anything a configured feature needs but lacks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// Everything Backstop reads from its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP listener.
    #[serde(default)]
    pub server: ServerSettings,
    /// The ledger database.
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Inbound Sentry webhooks.
    #[serde(default)]
    pub sentry: SentrySettings,
    /// Vercel API and inbound Vercel webhooks.
    #[serde(default)]
    pub vercel: VercelSettings,
    /// PagerDuty paging.
    #[serde(default)]
    pub pagerduty: PagerDutySettings,
    /// Slack announcements.
    #[serde(default)]
    pub slack: SlackSettings,
    /// The background worker that executes runs.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Message templates (`pagerduty_summary`, `slack_headline`, `slack_text`).
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
    /// The services Backstop protects.
    #[serde(default)]
    pub services: Vec<ServiceSettings>,
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
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            ingest_deadline: Duration::from_millis(900),
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
    /// Optional API token (`project:read`), used by `backstop check`.
    pub token: Option<SecretString>,
    /// Organization slug, with `token`.
    pub org: Option<String>,
    /// API base URL.
    pub api_base: String,
}

impl Default for SentrySettings {
    fn default() -> Self {
        Self {
            client_secret: None,
            timestamp_tolerance: Duration::from_secs(300),
            token: None,
            org: None,
            api_base: "https://sentry.io".into(),
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
}

impl Default for VercelSettings {
    fn default() -> Self {
        Self {
            token: None,
            team_id: None,
            webhook_secret: None,
            api_base: "https://api.vercel.com".into(),
            timeout: Duration::from_secs(10),
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
}

impl Default for SlackSettings {
    fn default() -> Self {
        Self {
            bot_token: None,
            channel: None,
            webhook_url: None,
            api_base: "https://slack.com/api".into(),
            timeout: Duration::from_secs(10),
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
    /// Background workers in this process (0: only `run_until_idle` callers
    /// and other instances execute runs).
    #[serde(deserialize_with = "de_u64")]
    pub workers: u64,
    /// How long a claim on a run or service lasts without renewal; another
    /// instance takes the run over after it lapses.
    #[serde(deserialize_with = "de_duration")]
    pub lease: Duration,
    /// How often an idle worker looks for work from other instances.
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    /// Give up retrying the rollback step after this long.
    #[serde(deserialize_with = "de_duration")]
    pub rollback_deadline: Duration,
    /// Give up retrying any other step after this long.
    #[serde(deserialize_with = "de_duration")]
    pub step_deadline: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            workers: 1,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            rollback_deadline: Duration::from_secs(120),
            step_deadline: Duration::from_secs(600),
        }
    }
}

/// How a rollback moves production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Re-point every production domain at the target (`POST /v2/deployments/{id}/aliases`).
    Alias,
    /// Vercel's Instant Rollback (`POST /v1/projects/{id}/rollback/{deployment}`).
    VercelRollback,
}

/// What Backstop may do for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Roll back by itself.
    Auto,
    /// Decide and announce, change nothing.
    DryRun,
    /// Ignore alerts.
    Off,
}

/// One `[[services]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// Unique name, used in the ledger and CLI.
    pub name: String,
    /// Sentry project slugs whose alerts concern this service.
    pub sentry_projects: Vec<String>,
    /// Sentry environment the alert rule must be scoped to.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Vercel project id (`prj_...`).
    pub vercel_project: String,
    /// Production domains, all moved on rollback.
    pub domains: Vec<String>,
    /// `alias` (default) or `vercel-rollback`.
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// `auto` (default), `dry-run` or `off`.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// How long a live deployment must serve without a critical alert to be known-good.
    #[serde(default = "default_bake", deserialize_with = "de_duration")]
    pub bake_time: Duration,
    /// No second automatic rollback of this service within this window.
    #[serde(default = "default_cooldown", deserialize_with = "de_duration")]
    pub cooldown: Duration,
    /// Automatic rollbacks allowed in any 24 hours.
    #[serde(default = "default_budget")]
    pub max_rollbacks_per_day: u32,
    /// Act on alert rules that are not crash-free rates (error counts, issue alerts).
    #[serde(default)]
    pub accept_other_rules: bool,
    /// Deployment `meta` key holding the Sentry release.
    #[serde(default = "default_release_key")]
    pub release_meta_key: String,
    /// Slack channel for this service (overrides `slack.channel`).
    #[serde(default)]
    pub slack_channel: Option<String>,
    /// Resolve the PagerDuty incident when Sentry resolves the alert.
    #[serde(default)]
    pub resolve_on_recovery: bool,
    /// Page (at `pagerduty.severity_dry_run`) on dry runs too.
    #[serde(default)]
    pub page_on_dry_run: bool,
    /// Post a short Slack note when a critical alert is skipped (stale, production changed, already handled).
    #[serde(default = "default_true")]
    pub announce_skips: bool,
    /// Per-service template overrides.
    #[serde(default)]
    pub templates: BTreeMap<String, String>,
}

fn default_environment() -> String {
    "production".into()
}
fn default_strategy() -> Strategy {
    Strategy::Alias
}
fn default_mode() -> Mode {
    Mode::Auto
}
fn default_bake() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_cooldown() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_budget() -> u32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_release_key() -> String {
    "githubCommitSha".into()
}

/// Why the configuration cannot be used. Always names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML did not parse.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A key is unknown or has the wrong type.
    #[error("invalid config key `{key}`: {message}")]
    Key { key: String, message: String },
    /// A required value is missing or inconsistent.
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl Settings {
    /// Loads `path` (missing file allowed only when `required` is false), then
    /// applies `BACKSTOP_*__*` overrides from `env`.
    pub fn load(
        path: &Path,
        required: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            message: e.message().to_string(),
        })?;
        Self::from_table(table, env)
    }

    /// Parses TOML text (plus env overrides); used by tests and the demo.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "<inline>".into(),
            message: e.message().to_string(),
        })?;
        Self::from_table(table, env)
    }

    fn from_table(
        mut table: toml::Table,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        apply_env(&mut table, env)?;
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Key {
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks cross-field rules; every error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let key = |k: &str| format!("services[{i}].{k}");
            if s.name.trim().is_empty() {
                return Err(invalid(&key("name"), "must not be empty"));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    "is used by two services; names must be unique",
                ));
            }
            if s.sentry_projects.is_empty() {
                return Err(invalid(
                    &key("sentry_projects"),
                    "list at least one Sentry project slug",
                ));
            }
            if s.domains.is_empty() {
                return Err(invalid(
                    &key("domains"),
                    "list at least one production domain",
                ));
            }
            if s.vercel_project.trim().is_empty() {
                return Err(invalid(
                    &key("vercel_project"),
                    "set the Vercel project id (prj_...)",
                ));
            }
        }
        if let Some(key) = &self.pagerduty.routing_key {
            if key.expose_secret().len() != 32 {
                return Err(invalid(
                    "pagerduty.routing_key",
                    "must be the 32-character Events API v2 integration key",
                ));
            }
        }
        crate::notify::validate_templates(&self.templates, &self.services).map_err(|e| {
            ConfigError::Invalid {
                key: e.key,
                message: e.message,
            }
        })?;
        for (i, a) in self.services.iter().enumerate() {
            for b in &self.services[i + 1..] {
                let overlap = a
                    .sentry_projects
                    .iter()
                    .any(|p| b.sentry_projects.contains(p));
                if overlap && a.environment == b.environment {
                    return Err(invalid(
                        &format!("services[{}].sentry_projects", i),
                        &format!("services `{}` and `{}` both claim the same Sentry project and environment", a.name, b.name),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks what `backstop serve` needs on top of [`Settings::validate`].
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        let missing = |key: &str, why: &str| ConfigError::Invalid {
            key: key.into(),
            message: format!(
                "is required {why}; set it in the file or as BACKSTOP_{}",
                env_name(key)
            ),
        };
        if self.sentry.client_secret.is_none() {
            return Err(missing("sentry.client_secret", "to verify Sentry webhooks"));
        }
        if !self.services.is_empty() && self.vercel.token.is_none() {
            return Err(missing(
                "vercel.token",
                "to read and move production aliases",
            ));
        }
        if self.vercel.webhook_secret.is_none() {
            return Err(missing(
                "vercel.webhook_secret",
                "to verify Vercel deployment webhooks",
            ));
        }
        if self.slack.bot_token.is_some() && self.slack.channel.is_none() {
            if let Some(s) = self.services.iter().find(|s| s.slack_channel.is_none()) {
                return Err(missing(
                    "slack.channel",
                    &format!(
                        "when slack.bot_token is set (service `{}` has no slack_channel)",
                        s.name
                    ),
                ));
            }
        }
        if self.sentry.token.is_some() && self.sentry.org.is_none() {
            return Err(missing(
                "sentry.org",
                "when sentry.token is set (the organization slug)",
            ));
        }
        let pd = &self.pagerduty;
        if pd.mode == PagerDutyMode::Rest {
            if pd.api_token.is_none() {
                return Err(missing(
                    "pagerduty.api_token",
                    "when pagerduty.mode = \"rest\"",
                ));
            }
            if pd.from.is_none() {
                return Err(missing(
                    "pagerduty.from",
                    "when pagerduty.mode = \"rest\" (a PagerDuty user's email)",
                ));
            }
            if pd.service_id.is_none() {
                return Err(missing(
                    "pagerduty.service_id",
                    "when pagerduty.mode = \"rest\"",
                ));
            }
        }
        Ok(())
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceSettings> {
        self.services.iter().find(|s| s.name == name)
    }
}

fn env_name(key: &str) -> String {
    key.replace('.', "__").to_uppercase()
}

/// Sets `[section] key = value` for every `BACKSTOP_SECTION__KEY=value`.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let overrides: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("BACKSTOP_") && k.contains("__"))
        .collect();
    for (name, value) in overrides {
        let rest = &name["BACKSTOP_".len()..];
        let (section, key) = rest.split_once("__").unwrap_or((rest, ""));
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        if section.is_empty() || key.is_empty() || section == "services" {
            return Err(ConfigError::Key {
                key: name.clone(),
                message: "environment overrides take the form BACKSTOP_<SECTION>__<KEY> (services are configured in the file)".into(),
            });
        }
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, toml::Value::String(value));
            }
            _ => {
                return Err(ConfigError::Key {
                    key: section,
                    message: "must be a table".into(),
                })
            }
        }
    }
    Ok(())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration like `30s`, `5m` or `1h`: {e}"
        ))
    })
}

/// Accepts a boolean or a string holding one (env overrides are strings).
fn de_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    de_lenient(d, "true or false")
}

/// Accepts an integer or a string holding one (env overrides are strings).
fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_lenient(d, "a whole number")
}

/// The value itself, or a string that parses as one; `what` names the
/// expected form in the error.
fn de_lenient<'de, D, T>(d: D, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Value(T),
        Str(String),
    }
    match Raw::<T>::deserialize(d)? {
        Raw::Value(v) => Ok(v),
        Raw::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [sentry]
        client_secret = "s3cret"
        [vercel]
        token = "tok"
        webhook_secret = "whs"
        [[services]]
        name = "storefront"
        sentry_projects = ["storefront-web"]
        vercel_project = "prj_1"
        domains = ["shop.example.com"]
    "#;

    fn none() -> Vec<(String, String)> {
        vec![]
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let s = Settings::from_toml(MINIMAL, none()).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database.url.expose_secret(), "sqlite://backstop.db");
        let svc = &s.services[0];
        assert_eq!(svc.environment, "production");
        assert_eq!(svc.strategy, Strategy::Alias);
        assert_eq!(svc.mode, Mode::Auto);
        assert_eq!(svc.bake_time, Duration::from_secs(1800));
        assert_eq!(svc.cooldown, Duration::from_secs(3600));
        assert_eq!(svc.max_rollbacks_per_day, 3);
        s.validate_for_serve().unwrap();
    }

    #[test]
    fn env_overrides_beat_the_file() {
        let env = vec![
            ("BACKSTOP_VERCEL__TOKEN".to_string(), "from-env".to_string()),
            (
                "BACKSTOP_SERVER__LISTEN".to_string(),
                "0.0.0.0:9000".to_string(),
            ),
            (
                "BACKSTOP_SERVER__MAX_BODY_BYTES".to_string(),
                "2048".to_string(),
            ),
            (
                "BACKSTOP_SENTRY__TIMESTAMP_TOLERANCE".to_string(),
                "1m".to_string(),
            ),
            (
                "BACKSTOP_DATABASE__SQLITE_FULL_SYNC".to_string(),
                "true".to_string(),
            ),
        ];
        let s = Settings::from_toml(MINIMAL, env).unwrap();
        assert_eq!(s.vercel.token.unwrap().expose_secret(), "from-env");
        assert_eq!(s.server.listen.port(), 9000);
        assert_eq!(s.server.max_body_bytes, 2048);
        assert_eq!(s.sentry.timestamp_tolerance, Duration::from_secs(60));
        assert!(s.database.sqlite_full_sync);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Settings::from_toml(&format!("{MINIMAL}\nbake = 1"), none())
            .unwrap_err()
            .to_string();
        assert!(err.contains("services[0]") && err.contains("bake"), "{err}");
        let err = Settings::from_toml(MINIMAL, vec![("BACKSTOP_VERCEL__TOKN".into(), "x".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("vercel") && err.contains("tokn"), "{err}");
    }

    #[test]
    fn bad_durations_and_modes_are_named() {
        let text = MINIMAL.replace("domains =", "cooldown = \"soon\"\ndomains =");
        let err = Settings::from_toml(&text, none()).unwrap_err().to_string();
        assert!(
            err.contains("services[0].cooldown") && err.contains("soon"),
            "{err}"
        );
        let text = MINIMAL.replace("domains =", "mode = \"yolo\"\ndomains =");
        let err = Settings::from_toml(&text, none()).unwrap_err().to_string();
        assert!(err.contains("services[0].mode"), "{err}");
    }

    #[test]
    fn missing_secrets_are_named_without_their_values() {
        let text = MINIMAL.replace("client_secret = \"s3cret\"", "");
        let s = Settings::from_toml(&text, none()).unwrap();
        let err = s.validate_for_serve().unwrap_err().to_string();
        assert!(err.contains("sentry.client_secret"), "{err}");
        assert!(err.contains("BACKSTOP_SENTRY__CLIENT_SECRET"), "{err}");
        let s = Settings::from_toml(MINIMAL, none()).unwrap();
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("whs"),
            "{debug}"
        );
    }

    #[test]
    fn two_services_cannot_claim_one_project() {
        let text = format!(
            "{MINIMAL}\n[[services]]\nname = \"b\"\nsentry_projects = [\"storefront-web\"]\nvercel_project = \"p\"\ndomains = [\"b.com\"]\n"
        );
        let err = Settings::from_toml(&text, none()).unwrap_err().to_string();
        assert!(err.contains("sentry_projects"), "{err}");
    }
}
