//! Typed settings: built-in defaults < TOML file < `BACKSTOP_<SECTION>__<KEY>`
//! environment variables. Unknown keys are errors, secrets live in
//! [`SecretString`](secrecy::SecretString) (redacted `Debug`), and
//! [`Settings::validate`] names the key and the fix for anything a
//! configured feature needs but lacks.
//!
//! `sections` holds one struct per `[section]`, `services` the
//! `[[services]]` entries, `validate` the cross-field rules and `env` the
//! environment overrides and lenient value parsers.

mod env;
mod sections;
mod services;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::policy::Mode;
pub use sections::*;
pub use services::*;
pub use validate::TEMPLATE_NAMES;

/// Everything Backstop reads from its configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP listener.
    #[serde(default)]
    pub server: ServerSettings,
    /// The console and metrics listener.
    #[serde(default)]
    pub admin: AdminSettings,
    /// How long finished runs are kept.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Optional agents writing for people (an OpenAI-compatible endpoint).
    #[serde(default)]
    pub ai: AiSettings,
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
        env::apply_env(&mut table, env)?;
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Key {
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Every service's policy, for the decision.
    pub fn policies(&self) -> Vec<crate::policy::ServicePolicy<'_>> {
        let sentry = self.sentry.api_configured();
        self.services.iter().map(|s| s.policy(sentry)).collect()
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceSettings> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::time::Duration;

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
