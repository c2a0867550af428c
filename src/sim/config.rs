//! The simulator's world and a `backstop.toml` that points at it: one
//! definition shared by the demo, `backstop sim`, the benchmarks and the
//! test suite, so they cannot drift apart.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Credentials, Provider, Running, Sim};
use crate::clock::now_ms;
use crate::ledger::{NewDeployment, Store, StoreError};

/// The credentials a Backstop and its simulator share. Not secrets when
/// they are the demo's; tests pass their own to prove none is ever printed.
#[derive(Debug, Clone, Copy)]
pub struct Creds {
    /// Sentry integration client secret.
    pub sentry_secret: &'static str,
    /// Vercel API token.
    pub vercel_token: &'static str,
    /// Vercel webhook secret.
    pub vercel_webhook_secret: &'static str,
    /// PagerDuty Events API routing key (32 characters).
    pub routing_key: &'static str,
    /// PagerDuty REST API token.
    pub pagerduty_token: &'static str,
    /// Slack bot token.
    pub slack_token: &'static str,
    /// Sentry API token.
    pub sentry_token: &'static str,
}

/// The demo's credentials (printed by `backstop sim --print-config`).
pub const DEMO: Creds = Creds {
    sentry_secret: "demo-sentry-client-secret",
    vercel_token: "demo-vercel-token",
    vercel_webhook_secret: "demo-vercel-webhook-secret",
    routing_key: "demo0000000000000000000000000key",
    pagerduty_token: "demo-pagerduty-token",
    slack_token: "xoxb-demo",
    sentry_token: "demo-sentry-token",
};

/// The demo's Slack app signing secret (the cards' buttons).
pub const DEMO_SLACK_SIGNING_SECRET: &str = "demo-slack-signing-secret";
/// The demo's PagerDuty webhook subscription secret.
pub const DEMO_PAGERDUTY_WEBHOOK_SECRET: &str = "demo-pagerduty-webhook-secret";

/// The demo service's Vercel project.
pub const PROJECT: &str = "prj_storefront";
/// Its production domains.
pub const DOMAINS: [&str; 2] = ["shop.example.com", "www.shop.example.com"];
/// Its Sentry project.
pub const SENTRY_PROJECT: &str = "storefront-web";
/// The live deployment of the demo world.
pub const LIVE: &str = "dpl_3f2c1a9live";
/// The newest known-good deployment of the demo world.
pub const GOOD: &str = "dpl_9be1c07good";

const MIN: i64 = 60_000;

impl Creds {
    /// What the simulator accepts for these credentials.
    pub fn for_sim(&self) -> Credentials {
        Credentials {
            vercel_token: self.vercel_token.into(),
            routing_keys: vec![self.routing_key.into()],
            pagerduty_token: self.pagerduty_token.into(),
            slack_token: self.slack_token.into(),
            sentry_token: self.sentry_token.into(),
        }
    }
}

/// The demo service's deployments: `(id, release, went live)`, oldest first.
pub fn history(now: i64) -> [(&'static str, &'static str, i64); 3] {
    [
        ("dpl_a1b2c3dgood", "a1b2c3d", now - 360 * MIN),
        (GOOD, "9be1c07", now - 180 * MIN),
        (LIVE, "3f2c1a9", now - 2 * MIN),
    ]
}

/// The simulator seeded with the demo's world: two good deployments and a
/// live one promoted two minutes ago, crashing.
pub fn world(creds: &Creds) -> Sim {
    let sim = Sim::new(creds.for_sim());
    let now = now_ms();
    {
        let mut w = sim.world();
        w.add_project(PROJECT, &DOMAINS);
        for (id, sha, at) in history(now) {
            w.add_deployment(PROJECT, id, sha, at);
        }
        w.serve(PROJECT, LIVE);
        w.add_channel("#deploys");
        // The live release crashing over enough sessions to believe it, the
        // ones before it healthy.
        w.set_health(SENTRY_PROJECT, "production", "3f2c1a9", 0.921, 2140);
        w.set_health(SENTRY_PROJECT, "production", "9be1c07", 0.998, 48_200);
        w.set_health(SENTRY_PROJECT, "production", "a1b2c3d", 0.997, 51_800);
        if let Some(d) = w.deployments.get_mut(LIVE) {
            d.message = "checkout: compute cart totals on the client".into();
        }
        w.issues.insert(
            "3f2c1a9".into(),
            vec![serde_json::json!({
                "id": "4501", "shortId": "STOREFRONT-WEB-1A", "title": "TypeError: Cannot read properties of undefined (reading 'total')",
                "culprit": "app/checkout/CartSummary", "count": "1834", "userCount": 412, "firstSeen": crate::clock::format_time(now - 90_000),
                "lastSeen": crate::clock::format_time(now), "level": "error", "status": "unresolved",
                "permalink": "https://acme.sentry.io/issues/4501/", "project": {"id": "4505676595200000", "slug": SENTRY_PROJECT}
            })],
        );
        w.sentry_projects
            .insert(SENTRY_PROJECT.into(), 4505676595200000);
    }
    sim
}

/// Records the demo's deployments in a ledger directly (tests and benches;
/// the demo itself goes through signed Vercel webhooks).
pub async fn seed_ledger(store: &Store, bake: Duration) -> Result<(), StoreError> {
    for (id, sha, at) in history(now_ms()) {
        let d = NewDeployment {
            id: id.into(),
            service: "storefront".into(),
            release: Some(sha.into()),
            ..Default::default()
        };
        store.record_deployment(&d).await?;
        store.promote("storefront", id, at, bake).await?;
    }
    Ok(())
}

/// A fleet of `services` services with `domains` production domains each,
/// every one with a known-good deployment and a live one, promoted two
/// minutes ago, that crashes: what a shared dependency breaking looks like.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// How many services.
    pub services: usize,
    /// Production domains per service.
    pub domains: usize,
}

impl Fleet {
    /// Service `i`'s name, which is also its Sentry project's prefix.
    pub fn name(i: usize) -> String {
        format!("svc-{i:03}")
    }

    /// Service `i`'s Sentry project.
    pub fn sentry_project(i: usize) -> String {
        format!("{}-web", Self::name(i))
    }

    /// Service `i`'s Vercel project.
    pub fn project(i: usize) -> String {
        format!("prj_svc{i:03}")
    }

    /// Service `i`'s production domains.
    pub fn domains_of(&self, i: usize) -> Vec<String> {
        (0..self.domains)
            .map(|d| format!("d{d}.{}.example.com", Self::name(i)))
            .collect()
    }

    /// Service `i`'s deployments: `(id, release, went live)`, oldest first.
    pub fn history(i: usize, now: i64) -> [(String, String, i64); 2] {
        [
            (
                format!("dpl_svc{i:03}good"),
                format!("g{i:06}"),
                now - 180 * MIN,
            ),
            (
                format!("dpl_svc{i:03}live"),
                format!("l{i:06}"),
                now - 2 * MIN,
            ),
        ]
    }

    /// The simulator with every service's project, domains and history.
    pub fn world(&self, creds: &Creds) -> Sim {
        let sim = Sim::new(creds.for_sim());
        let now = now_ms();
        {
            let mut w = sim.world();
            w.add_channel("#deploys");
            for i in 0..self.services {
                let project = Self::project(i);
                let domains = self.domains_of(i);
                let refs: Vec<&str> = domains.iter().map(String::as_str).collect();
                w.add_project(&project, &refs);
                let [good, live] = Self::history(i, now);
                for (id, sha, at) in [&good, &live] {
                    w.add_deployment(&project, id, sha, *at);
                }
                w.serve(&project, &live.0);
            }
        }
        sim
    }

    /// The `[[services]]` tables of the fleet.
    pub fn services_toml(&self) -> String {
        (0..self.services)
            .map(|i| {
                let domains: Vec<String> =
                    self.domains_of(i).iter().map(|d| format!("\"{d}\"")).collect();
                format!(
                    "[[services]]\nname = \"{}\"\nsentry_projects = [\"{}\"]\nvercel_project = \"{}\"\ndomains = [{}]\n",
                    Self::name(i),
                    Self::sentry_project(i),
                    Self::project(i),
                    domains.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Records every service's history in a ledger directly.
    pub async fn seed(&self, store: &Store, bake: Duration) -> Result<(), StoreError> {
        let now = now_ms();
        for i in 0..self.services {
            for (id, sha, at) in Self::history(i, now) {
                let d = NewDeployment {
                    id: id.clone(),
                    service: Self::name(i),
                    release: Some(sha),
                    ..Default::default()
                };
                store.record_deployment(&d).await?;
                store.promote(&Self::name(i), &id, at, bake).await?;
            }
        }
        Ok(())
    }
}

/// Where each provider's API is.
#[derive(Debug, Clone)]
pub struct Bases {
    /// Vercel `api_base`.
    pub vercel: String,
    /// PagerDuty `api_base`.
    pub pagerduty: String,
    /// Slack `api_base`.
    pub slack: String,
    /// Sentry `api_base`.
    pub sentry: String,
}

impl Bases {
    /// A simulator serving at `base` (`http://127.0.0.1:9090`).
    pub fn under(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        Self {
            vercel: format!("{base}/vercel"),
            pagerduty: format!("{base}/pagerduty"),
            slack: format!("{base}/slack"),
            sentry: format!("{base}/sentry"),
        }
    }

    /// A running simulator's.
    pub fn of(sim: &Running) -> Self {
        Self {
            vercel: sim.api_base(Provider::Vercel),
            pagerduty: sim.api_base(Provider::Pagerduty),
            slack: sim.api_base(Provider::Slack),
            sentry: sim.api_base(Provider::Sentry),
        }
    }

    /// A closed port for every provider (nothing answers).
    pub fn closed() -> Self {
        let closed = "http://127.0.0.1:9".to_string();
        Self {
            vercel: closed.clone(),
            pagerduty: closed.clone(),
            slack: closed.clone(),
            sentry: closed,
        }
    }
}

/// A `backstop.toml` for a simulator at `sim_base` that works as it is with
/// `check`, `sync`, `serve` and `test-alert` (`backstop sim
/// --print-config`): the simulator's credentials, its world's service in
/// dry-run, the console on 9091.
pub fn ready_config(sim_base: &str, db_url: &str, listen: SocketAddr) -> String {
    let mut c = Config::new(DEMO, Bases::under(sim_base), db_url, listen).with_every_credential();
    c.service =
        "mode = \"dry-run\"        # `auto` once its dry runs score well (`backstop report`)"
            .into();
    c.admin_listen = "127.0.0.1:9091".into();
    format!(
        "# Backstop against the simulator at {sim_base} (`backstop sim`).\n\n{}",
        c.toml()
    )
}

/// A complete configuration for the demo's storefront service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Credentials.
    pub creds: Creds,
    /// Provider API bases.
    pub bases: Bases,
    /// `database.url`.
    pub db_url: String,
    /// `server.listen`.
    pub listen: SocketAddr,
    /// The Slack channel (a name or the simulator's channel id).
    pub channel: String,
    /// Extra lines in `[engine]`.
    pub engine: String,
    /// Extra lines in each provider's section, by section name.
    pub sections: Vec<(&'static str, String)>,
    /// Extra lines in the `[[services]]` table.
    pub service: String,
    /// More TOML after the storefront service (e.g. a fleet's services).
    pub more: String,
    /// `admin.listen` (port 0 picks one).
    pub admin_listen: String,
}

impl Config {
    /// The demo's configuration with `creds`, at `bases`, on `db_url`.
    pub fn new(creds: Creds, bases: Bases, db_url: &str, listen: SocketAddr) -> Self {
        Self {
            creds,
            bases,
            db_url: db_url.into(),
            listen,
            channel: "#deploys".into(),
            engine: "poll_interval = \"200ms\"".into(),
            sections: Vec::new(),
            service: "mode = \"auto\"".into(),
            more: String::new(),
            admin_listen: "127.0.0.1:0".into(),
        }
    }

    /// With every credential the simulator accepts: Sentry's API (release
    /// health, deploys), Slack's signing secret (the cards' buttons) and
    /// PagerDuty's webhook secret (acks in the thread).
    pub fn with_every_credential(self) -> Self {
        let token = self.creds.sentry_token;
        self.with("sentry", &format!("token = \"{token}\"\norg = \"acme\""))
            .with(
                "slack",
                &format!("signing_secret = \"{DEMO_SLACK_SIGNING_SECRET}\""),
            )
            .with(
                "pagerduty",
                &format!("webhook_secret = \"{DEMO_PAGERDUTY_WEBHOOK_SECRET}\""),
            )
    }

    /// Adds `lines` to `[section]`.
    pub fn with(mut self, section: &'static str, lines: &str) -> Self {
        self.sections.push((section, lines.to_string()));
        self
    }

    fn extra(&self, section: &str) -> String {
        self.sections
            .iter()
            .filter(|(s, _)| *s == section)
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        let c = &self.creds;
        let b = &self.bases;
        format!(
            r##"[server]
listen = "{listen}"
{server}
[admin]
listen = "{admin_listen}"
{admin}
[database]
url = "{db}"
{database}
[sentry]
client_secret = "{sentry_secret}"
api_base = "{sentry_base}"
{sentry}
[vercel]
token = "{vercel_token}"
webhook_secret = "{vercel_hook}"
api_base = "{vercel_base}"
{vercel}
[pagerduty]
routing_key = "{routing_key}"
api_base = "{pagerduty_base}"
{pagerduty}
[slack]
bot_token = "{slack_token}"
channel = "{channel}"
api_base = "{slack_base}"
{slack}
[engine]
{engine}

[[services]]
name = "storefront"
sentry_projects = ["{project}"]
vercel_project = "{vercel_project}"
domains = ["{d0}", "{d1}"]
{service}
{more}
"##,
            listen = self.listen,
            server = self.extra("server"),
            admin = self.extra("admin"),
            admin_listen = self.admin_listen,
            db = self.db_url,
            database = self.extra("database"),
            sentry_secret = c.sentry_secret,
            sentry_base = b.sentry,
            sentry = self.extra("sentry"),
            vercel_token = c.vercel_token,
            vercel_hook = c.vercel_webhook_secret,
            vercel_base = b.vercel,
            vercel = self.extra("vercel"),
            routing_key = c.routing_key,
            pagerduty_base = b.pagerduty,
            pagerduty = self.extra("pagerduty"),
            slack_token = c.slack_token,
            channel = self.channel,
            slack_base = b.slack,
            slack = self.extra("slack"),
            engine = self.engine,
            project = SENTRY_PROJECT,
            vercel_project = PROJECT,
            d0 = DOMAINS[0],
            d1 = DOMAINS[1],
            service = self.service,
            more = self.more,
        )
    }

    /// The parsed settings.
    pub fn settings(&self) -> Result<crate::config::Settings, crate::config::ConfigError> {
        crate::config::Settings::from_toml(&self.toml(), Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_parses_and_is_ready_to_serve() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = Config::new(DEMO, Bases::closed(), "sqlite://x.db", listen)
            .with("vercel", "timeout = \"2s\"");
        let s = config.settings().unwrap();
        s.validate_for_serve().unwrap();
        assert_eq!(s.services[0].domains, DOMAINS);
        assert_eq!(s.vercel.timeout, Duration::from_secs(2));
    }
}
