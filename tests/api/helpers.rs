//! Spawning the real app on port 0 with a fresh database (SQLite file or a
//! Postgres schema of its own) and Vercel faked at the HTTP boundary.

use backstop::app::Application;
use backstop::config::Settings;
use backstop::engine::Engine;
use backstop::ingest::signature::{sign, Digest};
use backstop::ledger::{now_ms, Store};
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const SENTRY_SECRET: &str = "sentry-client-secret-4f1b2c";
pub const VERCEL_SECRET: &str = "vercel-webhook-secret-9a8b7c";
pub const VERCEL_TOKEN: &str = "vercel-token-31415926";
pub const PROJECT: &str = "prj_storefront";
pub const DOMAINS: [&str; 2] = ["shop.example.com", "www.shop.example.com"];
pub const MIN: i64 = 60_000;
pub const ROUTING_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";
pub const SLACK_TOKEN: &str = "xoxb-test-2718281828";
pub const SLACK_TS: &str = "1503435956.000247";

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The Postgres server for tests: `BACKSTOP_TEST_POSTGRES_URL`. Missing is a
/// skip on a laptop and a failure under CI.
pub fn postgres_url() -> Option<String> {
    match std::env::var("BACKSTOP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but BACKSTOP_TEST_POSTGRES_URL is not: Postgres-backed tests must run in CI")
        }
        _ => {
            eprintln!("skipping: set BACKSTOP_TEST_POSTGRES_URL to run Postgres-backed tests");
            None
        }
    }
}

/// A fresh, empty database. Holds the SQLite temp dir alive.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// `None` when Postgres is not available outside CI.
    pub async fn new(db: Db) -> Option<Self> {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("backstop.db").display());
                Some(Self {
                    url,
                    _dir: Some(dir),
                })
            }
            Db::Postgres => {
                let base = postgres_url()?;
                let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
                let admin = Store::connect(&SecretString::from(base.clone()), 1)
                    .await
                    .expect("connect to test Postgres");
                admin
                    .execute_raw(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .expect("create schema");
                admin.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                Some(Self {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    _dir: None,
                })
            }
        }
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&SecretString::from(self.url.clone()), 5)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

/// Settings for one storefront service with two domains.
pub fn settings(db_url: &str, vercel_base: &str, pd_base: &str, slack_base: &str) -> Settings {
    let text = format!(
        r##"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{db_url}"
        [sentry]
        client_secret = "{SENTRY_SECRET}"
        [vercel]
        token = "{VERCEL_TOKEN}"
        team_id = "team_test"
        webhook_secret = "{VERCEL_SECRET}"
        api_base = "{vercel_base}"
        timeout = "2s"
        [pagerduty]
        routing_key = "{ROUTING_KEY}"
        api_base = "{pd_base}"
        timeout = "2s"
        [slack]
        bot_token = "{SLACK_TOKEN}"
        channel = "#deploys"
        api_base = "{slack_base}"
        timeout = "2s"
        [engine]
        workers = 0
        rollback_deadline = "3s"
        [[services]]
        name = "storefront"
        sentry_projects = ["storefront-web"]
        environment = "production"
        vercel_project = "{PROJECT}"
        domains = ["{}", "{}"]
        bake_time = "30m"
        cooldown = "1h"
        "##,
        DOMAINS[0], DOMAINS[1]
    );
    Settings::from_toml(&text, Vec::new()).expect("test settings")
}

/// A running Backstop with its fakes.
pub struct TestApp {
    pub address: String,
    pub engine: Engine,
    pub store: Store,
    pub vercel: MockServer,
    pub pagerduty: MockServer,
    pub slack: MockServer,
    pub http: reqwest::Client,
    pub db_url: String,
    _db: TestDatabase,
}

/// Spawns the app; `None` when the backend is unavailable outside CI.
pub async fn spawn_app(db: Db) -> Option<TestApp> {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: Db, tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let database = TestDatabase::new(db).await?;
    let vercel = MockServer::start().await;
    let pagerduty = MockServer::start().await;
    let slack = MockServer::start().await;
    healthy_pagerduty(&pagerduty).await;
    healthy_slack(&slack).await;
    let mut settings = settings(&database.url, &vercel.uri(), &pagerduty.uri(), &slack.uri());
    tweak(&mut settings);
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let engine = app.engine();
    tokio::spawn(app.run_until(std::future::pending()));
    let store = engine.store().clone();
    Some(TestApp {
        address,
        engine,
        store,
        vercel,
        pagerduty,
        slack,
        http: reqwest::Client::new(),
        db_url: database.url.clone(),
        _db: database,
    })
}

/// PagerDuty answering every event with its documented 202.
pub async fn healthy_pagerduty(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"status": "success", "message": "Event processed", "dedup_key": "from-pagerduty"})))
        .with_priority(10)
        .mount(server)
        .await;
}

/// Slack accepting every message, as `chat.postMessage` documents.
pub async fn healthy_slack(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/chat.postMessage"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "channel": "C123ABC456", "ts": SLACK_TS, "message": {"type": "message", "ts": SLACK_TS}})))
        .with_priority(10)
        .mount(server)
        .await;
}

/// JSON bodies a fake received on `path`.
pub async fn bodies(server: &MockServer, at: &str) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == at)
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        .collect()
}

/// A crash-free-session critical alert exactly as Sentry serialises it.
pub fn crash_alert(identifier: &str, started_ms: i64) -> Value {
    json!({
        "action": "critical",
        "installation": {"uuid": "7a485448-a9e2-4c85-8a3c-4f44175783c9"},
        "data": {
            "metric_alert": {
                "id": "4", "identifier": identifier, "organization_id": "5",
                "projects": ["storefront-web"], "status": 20, "title": "Crash-free sessions",
                "date_started": rfc3339(started_ms), "date_detected": rfc3339(started_ms), "date_created": rfc3339(started_ms),
                "date_closed": null,
                "alert_rule": {
                    "id": "177111", "name": "Crash-free sessions below 99.5%", "organization_id": "5",
                    "dataset": "metrics", "query": "", "environment": "production", "time_window": 60,
                    "aggregate": "percentage(sessions_crashed, sessions) AS _crash_rate_alert_aggregate",
                    "threshold_type": 1, "projects": ["storefront-web"],
                    "triggers": [{"id": "294003", "label": "critical", "threshold_type": 1, "alert_threshold": 99.5}]
                }
            },
            "description_text": "92.1% sessions crash free rate in the last hour",
            "description_title": "Critical: Crash-free sessions below 99.5%",
            "web_url": "https://sentry.io/organizations/acme/alerts/rules/details/177111/"
        }
    })
}

pub fn rfc3339(ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Compact JSON, as Sentry sends it.
pub fn compact(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

impl TestApp {
    /// Another instance on the same database and fakes: a restart, or a
    /// second replica. Returns its address and engine; it serves until the
    /// test ends.
    pub async fn another_instance(&self, tweak: impl FnOnce(&mut Settings)) -> (String, Engine) {
        let mut s = settings(
            &self.db_url,
            &self.vercel.uri(),
            &self.pagerduty.uri(),
            &self.slack.uri(),
        );
        tweak(&mut s);
        let app = Application::build(s).await.expect("second instance builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let engine = app.engine();
        tokio::spawn(app.run_until(std::future::pending()));
        (address, engine)
    }

    /// Waits (bounded) until every run is finished.
    pub async fn until_runs_finish(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.store.count_unfinished_runs().await.unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "runs did not finish in time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// POSTs a body to the Sentry route with Sentry's four headers.
    pub async fn post_sentry(&self, resource: &str, body: &[u8]) -> reqwest::Response {
        let sig = sign(Digest::Sha256, SENTRY_SECRET.as_bytes(), body);
        self.post_sentry_raw(
            resource,
            body,
            Some(&sig),
            Some(&(now_ms() / 1000).to_string()),
        )
        .await
    }

    pub async fn post_sentry_raw(
        &self,
        resource: &str,
        body: &[u8],
        sig: Option<&str>,
        ts: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/webhooks/sentry", self.address))
            .header("content-type", "application/json")
            .header("sentry-hook-resource", resource)
            .header("request-id", uuid::Uuid::now_v7().simple().to_string())
            .body(body.to_vec());
        if let Some(sig) = sig {
            req = req.header("sentry-hook-signature", sig);
        }
        if let Some(ts) = ts {
            req = req.header("sentry-hook-timestamp", ts);
        }
        req.send().await.expect("request")
    }

    /// POSTs a signed Vercel deployment webhook.
    pub async fn post_vercel(&self, event: &Value) -> reqwest::Response {
        let body = compact(event);
        let sig = sign(Digest::Sha1, VERCEL_SECRET.as_bytes(), &body);
        self.http
            .post(format!("{}/webhooks/vercel", self.address))
            .header("content-type", "application/json")
            .header("x-vercel-signature", sig)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    /// Seeds history through Vercel webhooks: `dpl_old` (live 3 h ago to
    /// 10 min ago, baked) and `dpl_new` (promoted 10 min ago, live).
    pub async fn seed_history(&self) {
        let now = now_ms();
        for (id, sha, at) in [
            ("dpl_old", "9be1c07", now - 180 * MIN),
            ("dpl_new", "3f2c1a9", now - 10 * MIN),
        ] {
            let resp = self.post_vercel(&promoted(id, sha, at)).await;
            assert_eq!(resp.status(), 200, "seeding {id}");
        }
    }

    /// Fakes `GET /v4/aliases/{domain}` answering `id` for every domain.
    pub async fn vercel_serves(&self, id: &str) {
        for d in DOMAINS {
            Mock::given(method("GET"))
                .and(path(format!("/v4/aliases/{d}")))
                .respond_with(alias_response(d, id))
                .with_priority(5)
                .mount(&self.vercel)
                .await;
        }
    }

    /// Fakes a Vercel where assigning aliases really moves them: answers
    /// `from` until the first alias POST, `to` afterwards.
    pub async fn vercel_rollback_works(&self, from: &str, to: &str) {
        // Each domain is read once to decide (serving `from`), then read
        // back after the move (serving `to`).
        for d in DOMAINS {
            Mock::given(method("GET"))
                .and(path(format!("/v4/aliases/{d}")))
                .respond_with(alias_response(d, from))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&self.vercel)
                .await;
        }
        self.vercel_serves(to).await;
        Mock::given(method("POST"))
            .and(path(format!("/v2/deployments/{to}/aliases")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "uid": "2WjyKQmM8ZnGcJsPWMrHRHrE", "alias": "x", "created": "2017-04-26T23:00:34.232Z", "oldDeploymentId": from
            })))
            .mount(&self.vercel)
            .await;
    }

    /// Alias writes Vercel received.
    pub async fn alias_writes(&self) -> Vec<(String, Value)> {
        let requests = self.vercel.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .filter(|r| {
                r.method == wiremock::http::Method::POST && r.url.path().ends_with("/aliases")
            })
            .map(|r| {
                (
                    r.url.path().to_string(),
                    serde_json::from_slice(&r.body).unwrap_or(Value::Null),
                )
            })
            .collect()
    }
}

pub fn alias_response(domain: &str, id: &str) -> ResponseTemplate {
    // The documented response is an array; Backstop accepts both shapes.
    ResponseTemplate::new(200).set_body_json(json!([{
        "alias": domain, "created": "2017-04-26T23:00:34.232Z", "createdAt": 1540095775941i64,
        "deployment": {"id": id, "url": format!("{id}.vercel.app"), "meta": {}},
        "deploymentId": id, "projectId": PROJECT, "uid": "a1", "updatedAt": 1540095775941i64
    }]))
}

/// A `deployment.promoted` webhook envelope.
pub fn promoted(id: &str, sha: &str, at_ms: i64) -> Value {
    deployment_event("deployment.promoted", id, sha, at_ms, Some("production"))
}

pub fn deployment_event(
    kind: &str,
    id: &str,
    sha: &str,
    at_ms: i64,
    target: Option<&str>,
) -> Value {
    json!({
        "id": format!("evt_{id}_{kind}"),
        "type": kind,
        "createdAt": at_ms,
        "region": "iad1",
        "payload": {
            "team": {"id": "team_test"},
            "user": {"id": "u1"},
            "deployment": {
                "id": id, "name": "storefront", "url": format!("storefront-{id}.vercel.app"),
                "meta": {"githubCommitSha": sha, "githubCommitRef": "main"}
            },
            "links": {"deployment": "https://vercel.com/acme/storefront/x", "project": "https://vercel.com/acme/storefront"},
            "name": "storefront", "plan": "pro",
            "project": {"id": PROJECT},
            "target": target, "type": "LAMBDAS", "url": format!("storefront-{id}.vercel.app")
        }
    })
}

/// A TCP proxy that can cut every connection, to take a database away
/// and give it back without touching the server.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, up, conns }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `host:port` of a database URL.
pub fn host_port(url: &str) -> String {
    let after_at = url.split_once('@').map(|(_, r)| r).unwrap_or(url);
    let after_scheme = after_at
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(after_at);
    after_scheme
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The real app against the stateful simulator (the demo's world: two
/// good deployments, a live one promoted two minutes ago), with a worker.
pub struct SimApp {
    pub sim: backstop::sim::Running,
    pub address: String,
    pub store: Store,
    pub http: reqwest::Client,
    _db: TestDatabase,
}

pub const SIM_LIVE: &str = "dpl_3f2c1a9live";
pub const SIM_GOOD: &str = "dpl_9be1c07good";
pub const SIM_DOMAINS: [&str; 2] = ["shop.example.com", "www.shop.example.com"];

pub async fn spawn_on_sim(db: Db, tweak: impl FnOnce(&mut Settings)) -> Option<SimApp> {
    let database = TestDatabase::new(db).await?;
    let sim = backstop::cli::demo::demo_sim()
        .start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut settings = backstop::cli::demo::demo_settings(&sim, &database.url, listen).unwrap();
    settings.engine.poll_interval = std::time::Duration::from_millis(50);
    tweak(&mut settings);
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.engine().store().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    backstop::cli::demo::seed_ledger(&store, settings.services[0].bake_time)
        .await
        .unwrap();
    Some(SimApp {
        sim,
        address,
        store,
        http: reqwest::Client::new(),
        _db: database,
    })
}

impl SimApp {
    /// Sends a signed crash alert that started `ago_ms` ago; returns the status.
    pub async fn alert(&self, identifier: &str, ago_ms: i64) -> u16 {
        let body = backstop::sim::sender::CrashAlert::critical(
            "storefront-web",
            identifier,
            now_ms() - ago_ms,
        )
        .body();
        let url = format!("{}/webhooks/sentry", self.address);
        backstop::sim::sender::deliver(
            &self.http,
            &url,
            backstop::cli::demo::SENTRY_SECRET,
            "metric_alert",
            &body,
        )
        .await
        .unwrap()
        .0
    }

    /// Waits (bounded) until every run is finished.
    pub async fn until_runs_finish(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.store.count_unfinished_runs().await.unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "runs did not finish within {within:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Which deployment each production domain serves on the simulator.
    pub fn serving(&self) -> Vec<Option<String>> {
        let w = self.sim.sim.world();
        SIM_DOMAINS
            .iter()
            .map(|d| w.aliases.get(*d).cloned())
            .collect()
    }
}
