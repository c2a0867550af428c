//! What Backstop tells people: the facts of a run as a [`Notice`], rendered
//! into a PagerDuty summary and a Slack decision card. Headlines and
//! summaries are minijinja templates with built-in defaults and per-service
//! overrides, compiled once at start ([`Templates`]); a template that fails
//! to parse stops startup, one that fails to render falls back to the
//! default and says so.

use serde::Serialize;
use serde_json::{json, Value};

use crate::ingest::slack::ClickAction;

use crate::config::{ServiceSettings, Settings, TEMPLATE_NAMES};
use crate::ingest::sentry::Alert;
use crate::policy::{Decision, DeploymentRef, Outcome};

const DEFAULT_SUMMARY: &str = "{% if outcome == 'rolled-back' %}{{ service }} rolled back: crash-free {{ metric }} {{ rate_text }} < {{ threshold_text }} on release {{ release_short }} — restored {{ to_id }} (release {{ target_release_short }})\
{% elif outcome == 'rollback-failed' %}{{ service }}: rollback failed — manual action needed: {{ error }} (crash-free {{ metric }} {{ rate_text }} < {{ threshold_text }} on release {{ release_short }})\
{% elif outcome == 'dry-run' %}{{ service }} dry run: would roll back release {{ release_short }} to {{ to_id }} (crash-free {{ metric }} {{ rate_text }} < {{ threshold_text }})\
{% elif outcome == 'resolved' %}{{ service }}: crash-free {{ metric }} recovered\
{% else %}{{ service }}: crash-free {{ metric }} {{ rate_text }} < {{ threshold_text }} on release {{ release_short }} — not rolled back: {{ reason }}{% endif %}";

const DEFAULT_HEADLINE: &str = "{% if outcome == 'rolled-back' %}:rewind: *{{ service }}* rolled back from {{ release_short }} to {{ target_release_short }}{% if time_to_rollback %} in {{ time_to_rollback }}{% endif %}\
{% elif outcome == 'rollback-failed' %}:rotating_light: *{{ service }}*: rollback failed — manual action needed\
{% elif outcome == 'dry-run' %}:test_tube: *{{ service }}* dry run: would have rolled back {{ release_short }} to {{ target_release_short }}\
{% elif outcome == 'resolved' %}:white_check_mark: *{{ service }}*: the crash-free alert resolved\
{% elif outcome == 'skipped' %}:information_source: *{{ service }}*: critical alert not acted on — {{ reason }}\
{% else %}:warning: *{{ service }}*: not rolled back — {{ reason }}{% endif %}";

const DEFAULT_TEXT: &str = "{% if outcome == 'rolled-back' %}{{ service }} rolled back from release {{ release_short }} to {{ target_release_short }}: crash-free {{ metric }} {{ rate_text }} < {{ threshold_text }}\
{% elif outcome == 'rollback-failed' %}{{ service }}: rollback failed — manual action needed: {{ error }}\
{% elif outcome == 'dry-run' %}{{ service }} dry run: would have rolled back {{ release_short }} to {{ target_release_short }}\
{% elif outcome == 'resolved' %}{{ service }}: the crash-free alert resolved\
{% else %}{{ service }}: not rolled back — {{ reason }}{% endif %}";

/// The default template for a name.
pub fn default_template(name: &str) -> &'static str {
    match name {
        "pagerduty_summary" => DEFAULT_SUMMARY,
        "slack_headline" => DEFAULT_HEADLINE,
        _ => DEFAULT_TEXT,
    }
}

/// Every template in force, compiled once: the defaults, the `[templates]`
/// overrides and each service's.
pub struct Templates {
    env: minijinja::Environment<'static>,
}

impl Templates {
    /// Compiles the defaults and every configured template. Fails only on
    /// a template that does not parse (config validation catches those
    /// first, naming the key).
    pub fn compile(settings: &Settings) -> Result<Self, minijinja::Error> {
        let mut env = minijinja::Environment::new();
        for name in TEMPLATE_NAMES {
            env.add_template_owned(format!("default/{name}"), default_template(name))?;
        }
        for (name, text) in &settings.templates {
            env.add_template_owned(format!("global/{name}"), text.clone())?;
        }
        for svc in &settings.services {
            for (name, text) in &svc.templates {
                env.add_template_owned(format!("service/{}/{name}", svc.name), text.clone())?;
            }
        }
        Ok(Self { env })
    }

    /// Renders `name` for `service`: its own override, else the global
    /// one, else the default. A configured template that fails to render
    /// falls back to the default, and the second value says why.
    fn render(&self, name: &str, service: &str, ctx: &Value) -> (String, Option<String>) {
        let configured = [
            format!("service/{service}/{name}"),
            format!("global/{name}"),
        ]
        .into_iter()
        .find_map(|key| self.env.get_template(&key).ok());
        let default = self
            .env
            .get_template(&format!("default/{name}"))
            .and_then(|t| t.render(ctx));
        let fallback = |e: Option<String>| match &default {
            Ok(text) => (text.clone(), e),
            Err(d) => (
                String::new(),
                Some(format!("default template `{name}` failed: {d}")),
            ),
        };
        match configured.map(|t| t.render(ctx)) {
            None => fallback(None),
            Some(Ok(out)) => (out, None),
            Some(Err(e)) => fallback(Some(format!(
                "template `{name}` failed to render, used the default: {e}"
            ))),
        }
    }
}

/// What happened, as people are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Production moved back and was verified.
    RolledBack,
    /// The rollback failed: a human must act.
    RollbackFailed,
    /// Backstop held back and pages a human.
    Escalated,
    /// Dry run.
    DryRun,
    /// A critical alert that was skipped (stale, already handled...).
    Skipped,
    /// The alert resolved.
    Resolved,
}

/// The facts of a run that messages carry. Also the template context.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// Outcome (`rolled-back`, `rollback-failed`, `escalated`, `dry-run`, `skipped`, `resolved`).
    pub outcome: Kind,
    /// Service name.
    pub service: String,
    /// Vercel project id.
    pub vercel_project: String,
    /// The decision's reason.
    pub reason: String,
    /// Deployment rolled back from (the live one when alerted).
    pub from: Option<DeploymentRef>,
    /// Deployment rolled back to.
    pub to: Option<DeploymentRef>,
    /// Measured crash-free rate, percent.
    pub rate: Option<f64>,
    /// The rule's critical threshold, percent.
    pub threshold: Option<f64>,
    /// `sessions` or `users`.
    pub metric: String,
    /// Alert rule name.
    pub rule_name: Option<String>,
    /// Incident identifier.
    pub identifier: String,
    /// Link to the alert.
    pub alert_url: Option<String>,
    /// When the alert started (RFC 3339).
    pub alert_started: Option<String>,
    /// Alert to verified rollback, ms.
    pub time_to_rollback_ms: Option<i64>,
    /// The rules that passed.
    pub checks_passed: Vec<String>,
    /// Why the rollback failed.
    pub error: Option<String>,
    /// PagerDuty incident link, when known.
    pub pagerduty_url: Option<String>,
    /// Production moved to `to` and was verified (for a resolution: the
    /// incident's rollback did). Only then do messages say "restored".
    pub moved: bool,
    /// What Sentry's release health said before acting, for people:
    /// `release abc: 92.1% over 2,140 sessions; known-good def: 99.8% over
    /// 50,000 sessions`, or why it could not be read. `None` when it was
    /// not read (confirmation off, or decided before it mattered).
    pub health: Option<String>,
    /// Run id.
    pub run_id: String,
    /// Buttons the card carries (Slack interactivity configured).
    #[serde(skip)]
    pub buttons: Vec<ClickAction>,
}

impl Notice {
    /// Facts from a decision and its alert.
    pub fn new(
        kind: Kind,
        svc: &ServiceSettings,
        d: &Decision,
        alert: &Alert,
        run_id: &str,
    ) -> Self {
        let metric = match alert.aggregate.as_deref() {
            Some(a) if a.contains("user") => "users",
            _ => "sessions",
        };
        Self {
            outcome: kind,
            service: svc.name.clone(),
            vercel_project: svc.vercel_project.clone(),
            reason: d.reason.clone(),
            from: d.live.clone(),
            to: d.target.clone(),
            rate: alert.measured,
            threshold: alert.threshold,
            metric: metric.into(),
            rule_name: alert.rule_name.clone(),
            identifier: alert.identifier.clone(),
            alert_url: alert.web_url.clone(),
            alert_started: d.alert_started_at_ms.map(rfc3339),
            time_to_rollback_ms: None,
            checks_passed: d
                .checks
                .iter()
                .filter(|c| c.passed)
                .map(|c| c.name.clone())
                .collect(),
            error: None,
            pagerduty_url: None,
            moved: kind == Kind::RolledBack,
            health: d.readings.as_ref().map(|r| match &r.unavailable {
                // Say which way the fallback went: the page and card are
                // where a person learns Sentry could not confirm.
                Some(_) if matches!(d.outcome, Outcome::Rollback | Outcome::DryRun) => {
                    format!("{}: acting on the alert alone", health_text(r))
                }
                Some(_) if d.outcome == Outcome::Escalate => {
                    format!("{}: not acting on the alert alone", health_text(r))
                }
                _ => health_text(r),
            }),
            run_id: run_id.into(),
            buttons: Vec::new(),
        }
    }

    fn context(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        let short = |r: Option<&DeploymentRef>| {
            r.map(|d| {
                d.release
                    .clone()
                    .unwrap_or_else(|| d.id.clone())
                    .chars()
                    .take(7)
                    .collect::<String>()
            })
            .unwrap_or_else(|| "?".into())
        };
        let pct = |x: Option<f64>| {
            x.map(|x| format!("{}%", (x * 100.0).round() / 100.0))
                .unwrap_or_else(|| "?".into())
        };
        v["release"] = json!(self.from.as_ref().and_then(|d| d.release.clone()));
        v["release_short"] = json!(short(self.from.as_ref()));
        v["target_release"] = json!(self.to.as_ref().and_then(|d| d.release.clone()));
        v["target_release_short"] = json!(short(self.to.as_ref()));
        v["from_id"] = json!(self.from.as_ref().map(|d| d.id.clone()));
        v["to_id"] = json!(self.to.as_ref().map(|d| d.id.clone()));
        v["from_url"] = json!(self.from.as_ref().and_then(|d| d.url.as_deref().map(https)));
        v["to_url"] = json!(self.to.as_ref().and_then(|d| d.url.as_deref().map(https)));
        v["rate_text"] = json!(pct(self.rate));
        v["threshold_text"] = json!(pct(self.threshold));
        v["time_to_rollback"] = json!(self.time_to_rollback_ms.map(|ms| match ms {
            ms if ms < 1000 => format!("{ms} ms"),
            ms => format!("{:.1}s", ms as f64 / 1000.0),
        }));
        v
    }

    /// Renders template `name` (service override, else global, else
    /// default). Returns the text and, if a configured template failed, why.
    pub fn render(&self, name: &str, templates: &Templates) -> (String, Option<String>) {
        let (text, warning) = templates.render(name, &self.service, &self.context());
        match text.is_empty() {
            true => (self.reason.clone(), warning),
            false => (text, warning),
        }
    }

    /// Links for PagerDuty and Slack: the alert and both deployments.
    /// Their labels say what happened to each deployment: "Rolled back
    /// from / Restored" only after a verified rollback, "Would …" for a dry
    /// run, and otherwise that the crashing one is still live and the
    /// known-good one was not restored.
    pub fn links(&self) -> Vec<(String, String)> {
        let mut links = Vec::new();
        if let Some(url) = &self.alert_url {
            links.push((url.clone(), "Sentry alert".to_string()));
        }
        let (from, to) = self.labels();
        for (d, label) in [(&self.from, from), (&self.to, to)] {
            if let Some(d) = d {
                if let Some(u) = &d.url {
                    links.push((https(u), format!("{label} {}", d.id)));
                }
            }
        }
        links
    }

    /// How to call the deployment rolled back from, and the target.
    fn labels(&self) -> (&'static str, &'static str) {
        match (self.moved, &self.outcome) {
            (true, _) => ("Rolled back from", "Restored"),
            (false, Kind::DryRun) => ("Would roll back from", "Would restore"),
            (false, Kind::RollbackFailed) => (
                "Live (crashing, not rolled back):",
                "Known-good target (not restored):",
            ),
            (false, Kind::Resolved) => ("Live:", "Known-good target (not restored):"),
            (false, _) => ("Live (crashing):", "Known-good target (not restored):"),
        }
    }

    /// The card's release field: a move only when production moved.
    fn release_field(&self, from: &str, to: &str) -> String {
        let target = self.to.is_some();
        match (self.moved, &self.outcome) {
            (true, _) => format!("{from} → {to}"),
            (false, Kind::DryRun) => format!("{from} → {to} (would)"),
            (false, Kind::Resolved) if target => format!("{from} (live); known-good {to}"),
            (false, Kind::Resolved) => format!("{from} (live)"),
            (false, _) if target => format!("{from} (live, crashing); known-good {to}"),
            (false, _) => format!("{from} (live, crashing)"),
        }
    }

    /// The Slack decision card: a headline, the facts as fields, the checks
    /// that passed, and links.
    pub fn card(&self, headline: &str) -> Vec<Value> {
        let ctx = self.context();
        let text = |k: &str| ctx[k].as_str().unwrap_or("?").to_string();
        let mut fields = vec![field("Service", &self.service)];
        if self.from.is_some() || self.to.is_some() {
            let release = self.release_field(&text("release_short"), &text("target_release_short"));
            fields.push(field("Release", &release));
        }
        fields.push(field(
            "Crash-free rate",
            &format!(
                "{} {} (threshold {})",
                text("rate_text"),
                self.metric,
                text("threshold_text")
            ),
        ));
        if let Some(t) = ctx["time_to_rollback"].as_str() {
            fields.push(field("Time to rollback", t));
        }
        if let Some(h) = &self.health {
            fields.push(field("Release health (Sentry)", h));
        }
        let mut blocks = vec![
            json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(headline, 3000)}}),
            json!({"type": "section", "fields": fields}),
        ];
        if let Some(e) = &self.error {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&format!("*Error:* {e}"), 3000)}}));
        }
        if !self.checks_passed.is_empty() {
            let checks = self
                .checks_passed
                .iter()
                .map(|c| format!("✓ {c}"))
                .collect::<Vec<_>>()
                .join("  ");
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(&checks, 3000)}]}));
        }
        if let Some(actions) = actions_block(
            &self.buttons,
            &self.run_id,
            &self.service,
            self.from.as_ref(),
            self.to.as_ref(),
        ) {
            blocks.push(actions);
        }
        let mut links: Vec<String> = self
            .links()
            .into_iter()
            .map(|(href, t)| format!("<{href}|{t}>"))
            .collect();
        if let Some(pd) = &self.pagerduty_url {
            links.push(format!("<{pd}|PagerDuty incident>"));
        }
        if !links.is_empty() {
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": clip(&links.join(" · "), 3000)}]}));
        }
        blocks
    }

    /// The card as plain text (the demo prints this).
    pub fn card_as_text(blocks: &[Value]) -> String {
        let mut out = Vec::new();
        for b in blocks {
            if let Some(t) = b.pointer("/text/text").and_then(Value::as_str) {
                out.push(t.to_string());
            }
            for f in b
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(format!(
                    "  {}",
                    f["text"].as_str().unwrap_or("").replace('\n', " ")
                ));
            }
            for e in b
                .get("elements")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push(format!("  {}", e["text"].as_str().unwrap_or("")));
            }
        }
        out.join("\n")
    }
}

/// The buttons of a card (or a reply) as a Block Kit `actions` block; the
/// `value` of each names the run, which is checked again when pressed.
pub fn actions_block(
    actions: &[ClickAction],
    run: &str,
    service: &str,
    from: Option<&DeploymentRef>,
    to: Option<&DeploymentRef>,
) -> Option<Value> {
    if actions.is_empty() {
        return None;
    }
    let plain = |t: &str| json!({"type": "plain_text", "text": clip(t, 75)});
    let name = |d: Option<&DeploymentRef>| {
        d.map(|d| match &d.release {
            Some(r) => format!("{} (release {r})", d.id),
            None => d.id.clone(),
        })
        .unwrap_or_else(|| "?".into())
    };
    let elements: Vec<Value> = actions
        .iter()
        .map(|a| match a {
            ClickAction::Undo => json!({
                "type": "button",
                "action_id": a.action_id(),
                "text": plain("Undo rollback"),
                "style": "danger",
                "value": run,
                "confirm": {
                    "title": plain("Undo the rollback?"),
                    "text": {"type": "mrkdwn", "text": clip(&format!(
                        "Put production back on {}, replacing {}? {service} is then held: no automatic rollback until someone resumes it.",
                        name(from), name(to)
                    ), 300)},
                    "confirm": plain("Undo"),
                    "deny": plain("Cancel"),
                    "style": "danger",
                },
            }),
            ClickAction::Hold => json!({
                "type": "button",
                "action_id": a.action_id(),
                "text": plain(&format!("Hold {service}")),
                "value": run,
            }),
            ClickAction::Resume => json!({
                "type": "button",
                "action_id": a.action_id(),
                "text": plain(&format!("Resume {service}")),
                "style": "primary",
                "value": run,
            }),
        })
        .collect();
    Some(json!({"type": "actions", "block_id": "backstop_actions", "elements": elements}))
}

/// Release health as one line for people.
pub fn health_text(r: &crate::policy::Readings) -> String {
    if let Some(why) = &r.unavailable {
        return format!("unavailable ({why})");
    }
    let mut parts = vec![match &r.live {
        Some(live) => format!("release {}: {}", live.release, live.describe()),
        None => "the live release: no sessions".to_string(),
    }];
    if let Some(good) = &r.target {
        parts.push(format!("known-good {}: {}", good.release, good.describe()));
    }
    if !r.others.is_empty() {
        let n = r.others.len();
        parts.push(format!(
            "{n} other release{}",
            if n == 1 { "" } else { "s" }
        ));
    }
    parts.join("; ")
}

fn field(title: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": clip(&format!("*{title}*\n{value}"), 2000)})
}

/// Cuts text to Slack's limits on a character boundary.
fn clip(s: &str, max: usize) -> String {
    crate::providers::pagerduty::truncate(s, max)
}

fn https(url: &str) -> String {
    if url.starts_with("http") {
        url.to_string()
    } else {
        format!("https://{url}")
    }
}

fn rfc3339(ms: i64) -> String {
    crate::clock::format_time(ms)
}
