//! Cross-field rules. Every error names the key and the fix.

use secrecy::ExposeSecret;

use super::env::env_name;
use super::{ConfigError, PagerDutyMode, Settings};

/// Template names, also the config keys under `[templates]`.
pub const TEMPLATE_NAMES: [&str; 3] = ["pagerduty_summary", "slack_headline", "slack_text"];

impl Settings {
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
            if !s.watch_window.is_zero() && s.watch_interval.is_zero() {
                return Err(invalid(
                    &key("watch_interval"),
                    "must be longer than 0s while watch_window is set",
                ));
            }
        }
        if self.sentry.token.is_some() != self.sentry.org.is_some() {
            let (key, why) = match self.sentry.token.is_some() {
                true => ("sentry.org", "set the organization slug with sentry.token"),
                false => ("sentry.token", "set an API token with sentry.org"),
            };
            return Err(invalid(key, why));
        }
        if self.sentry.confirm_timeout.is_zero()
            || (self.sentry.api_configured()
                && self.sentry.confirm_timeout >= self.engine.rollback_deadline)
        {
            return Err(invalid(
                "sentry.confirm_timeout",
                "must be longer than 0s and shorter than engine.rollback_deadline (it is counted inside it)",
            ));
        }
        if let (Some(addr), None) = (self.admin.listen, &self.admin.token) {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "admin.token",
                    &format!("is required when admin.listen ({addr}) is not a loopback address: the console and /metrics must not be open to the network"),
                ));
            }
        }
        // An empty secret would let anyone sign (or sign in).
        let secrets = [
            ("sentry.client_secret", self.sentry.client_secret.as_ref()),
            ("sentry.token", self.sentry.token.as_ref()),
            ("vercel.token", self.vercel.token.as_ref()),
            ("vercel.webhook_secret", self.vercel.webhook_secret.as_ref()),
            ("pagerduty.routing_key", self.pagerduty.routing_key.as_ref()),
            ("pagerduty.api_token", self.pagerduty.api_token.as_ref()),
            (
                "pagerduty.webhook_secret",
                self.pagerduty.webhook_secret.as_ref(),
            ),
            ("slack.bot_token", self.slack.bot_token.as_ref()),
            ("slack.signing_secret", self.slack.signing_secret.as_ref()),
            ("admin.token", self.admin.token.as_ref()),
            ("ai.api_key", self.ai.api_key.as_ref()),
        ];
        for (key, secret) in secrets {
            if secret.is_some_and(|s| s.expose_secret().trim().is_empty()) {
                return Err(invalid(key, "is empty: set it, or remove the key"));
            }
        }
        if self
            .admin
            .token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().len() < 16)
        {
            return Err(invalid(
                "admin.token",
                "must be at least 16 characters (it guards the console and /metrics)",
            ));
        }
        let slack = &self.slack;
        if slack.bot_token.is_none() {
            if slack.signing_secret.is_some() {
                return Err(invalid(
                    "slack.signing_secret",
                    "buttons need slack.bot_token (cards are updated with chat.update)",
                ));
            }
            if !slack.allowed_usergroups.is_empty() {
                return Err(invalid(
                    "slack.allowed_usergroups",
                    "reading a user group needs slack.bot_token (scope usergroups:read)",
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
        self.validate_templates()?;
        self.validate_ai()?;
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

    /// Every configured template has a known name and parses (rendering
    /// is checked when it happens: a failure falls back to the default).
    fn validate_ai(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
        let env = minijinja::Environment::new();
        let global = self
            .ai
            .agents
            .iter()
            .map(|(k, a)| (format!("ai.agents.{k}"), k, a));
        let per_service = self.services.iter().enumerate().flat_map(|(i, s)| {
            s.ai.iter()
                .map(move |(k, a)| (format!("services[{i}].ai.{k}"), k, a))
        });
        for (key, name, agent) in global.chain(per_service) {
            if !super::AGENTS.contains(&name.as_str()) {
                return Err(invalid(
                    key,
                    format!(
                        "unknown agent `{name}`; known: {}",
                        super::AGENTS.join(", ")
                    ),
                ));
            }
            if let Some(prompt) = &agent.prompt {
                if let Err(e) = env.template_from_str(prompt) {
                    return Err(invalid(
                        format!("{key}.prompt"),
                        format!("does not parse: {e}"),
                    ));
                }
            }
        }
        if let Some(base) = &self.ai.base_url {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(invalid(
                    "ai.base_url".into(),
                    "must be an http(s) URL ending in /v1".into(),
                ));
            }
            // Every agent that will write for some service needs a model:
            // its service's, its own, or `ai.model`. A disabled one needs none.
            for agent in super::AGENTS {
                let global = self.ai.agents.get(agent);
                let global_model = global
                    .and_then(|a| a.model.as_ref())
                    .or(self.ai.model.as_ref());
                let global_on = global.and_then(|a| a.enabled).unwrap_or(true);
                for svc in &self.services {
                    let own = svc.ai.get(agent);
                    let on = own.and_then(|a| a.enabled).unwrap_or(global_on);
                    let model = own.and_then(|a| a.model.as_ref()).or(global_model);
                    if on && model.is_none() {
                        return Err(invalid(
                            "ai.model".into(),
                            format!(
                                "set a model for every agent that is on (agent `{agent}` has none for service `{}`; or set ai.agents.{agent}.enabled = false)",
                                svc.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_templates(&self) -> Result<(), ConfigError> {
        let env = minijinja::Environment::new();
        let global = self
            .templates
            .iter()
            .map(|(k, v)| (format!("templates.{k}"), k, v));
        let per_service = self.services.iter().enumerate().flat_map(|(i, s)| {
            s.templates
                .iter()
                .map(move |(k, v)| (format!("services[{i}].templates.{k}"), k, v))
        });
        for (key, name, text) in global.chain(per_service) {
            if !TEMPLATE_NAMES.contains(&name.as_str()) {
                let known = TEMPLATE_NAMES.join(", ");
                return Err(ConfigError::Invalid {
                    key,
                    message: format!(
                        "template `{name}` does not parse: unknown template; known: {known}"
                    ),
                });
            }
            if let Err(e) = env.template_from_str(text) {
                return Err(ConfigError::Invalid {
                    message: format!("template `{key}` does not parse: {e}"),
                    key,
                });
            }
        }
        Ok(())
    }
}
