//! The real app on port 0 with Vercel, PagerDuty and Slack faked at the
//! HTTP boundary (wiremock), and the calls a test makes to it.

use backstop::app::Application;
use backstop::clock::now_ms;
use backstop::config::Settings;
use backstop::engine::Engine;
use backstop::ingest::signature::{sign, Digest};
use backstop::ledger::Store;
use backstop::sim::config::{Bases, Config};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

/// The test configuration for one storefront service with two domains,
/// providers at the given bases: no background worker (tests drive the
/// engine), short timeouts and a 3 s rollback deadline.
pub fn test_config(db_url: &str, vercel: &str, pagerduty: &str, slack: &str) -> Config {
    let bases = Bases {
        vercel: vercel.into(),
        pagerduty: pagerduty.into(),
        slack: slack.into(),
        sentry: "http://127.0.0.1:9".into(),
    };
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config::new(TEST_CREDS, bases, db_url, listen)
        .with("vercel", "team_id = \"team_test\"\ntimeout = \"2s\"")
        .with("pagerduty", "timeout = \"2s\"")
        .with("slack", "timeout = \"2s\"");
    config.engine = "max_concurrent_runs = 0\nrollback_deadline = \"3s\"".into();
    config.service = "bake_time = \"30m\"\ncooldown = \"1h\"".into();
    config
}

/// Settings for one storefront service with two domains.
pub fn settings(db_url: &str, vercel_base: &str, pd_base: &str, slack_base: &str) -> Settings {
    test_config(db_url, vercel_base, pd_base, slack_base)
        .settings()
        .expect("test settings")
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

    /// Fakes `GET /v4/aliases` answering `id` for every domain.
    pub async fn vercel_serves(&self, id: &str) {
        Mock::given(method("GET"))
            .and(path("/v4/aliases"))
            .respond_with(aliases_response(id))
            .with_priority(5)
            .mount(&self.vercel)
            .await;
    }

    /// Fakes a Vercel where assigning aliases really moves them: answers
    /// `from` until the first alias POST, `to` afterwards.
    pub async fn vercel_rollback_works(&self, from: &str, to: &str) {
        // Production is read once to decide (serving `from`), then read
        // back after the move (serving `to`).
        Mock::given(method("GET"))
            .and(path("/v4/aliases"))
            .respond_with(aliases_response(from))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&self.vercel)
            .await;
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
