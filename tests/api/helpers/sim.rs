//! The real app against the stateful simulator, with a background worker.

use backstop::app::Application;
use backstop::clock::now_ms;
use backstop::config::Settings;
use backstop::ledger::Store;
use backstop::sim::config::{world, Bases, Config, DEMO};

use super::*;

/// The real app against the stateful simulator (the demo's world: two
/// good deployments, a live one promoted two minutes ago), with a worker.
pub struct SimApp {
    pub sim: backstop::sim::Running,
    pub address: String,
    /// The console and metrics (`http://127.0.0.1:PORT`).
    pub admin: String,
    /// The instance's engine (tests drive sweeps directly).
    pub engine: backstop::engine::Engine,
    pub store: Store,
    pub http: reqwest::Client,
    /// Stops the instance and says when it stopped.
    stop: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    pub settings: Settings,
    _db: TestDatabase,
}

/// Builds and serves an instance until the returned sender fires.
async fn serve(
    settings: Settings,
) -> (
    String,
    String,
    backstop::engine::Engine,
    Store,
    (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
) {
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin = format!("http://127.0.0.1:{}", app.admin_port().unwrap_or(0));
    let engine = app.engine();
    let store = app.engine().store().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = app
            .run_until(async move {
                let _ = rx.await;
            })
            .await;
    });
    (address, admin, engine, store, (tx, task))
}

pub const SIM_LIVE: &str = backstop::sim::config::LIVE;
pub const SIM_GOOD: &str = backstop::sim::config::GOOD;
pub const SIM_DOMAINS: [&str; 2] = backstop::sim::config::DOMAINS;

pub async fn spawn_on_sim(db: Db, tweak: impl FnOnce(&mut Settings)) -> Option<SimApp> {
    let database = TestDatabase::new(db).await?;
    let sim = world(&DEMO)
        .start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut settings = Config::new(DEMO, Bases::of(&sim), &database.url, listen)
        .settings()
        .unwrap();
    settings.engine.poll_interval = std::time::Duration::from_millis(50);
    tweak(&mut settings);
    let (address, admin, engine, store, stop) = serve(settings.clone()).await;
    backstop::sim::config::seed_ledger(&store, settings.services[0].bake_time)
        .await
        .unwrap();
    Some(SimApp {
        sim,
        address,
        admin,
        engine,
        store,
        http: reqwest::Client::new(),
        stop: Some(stop),
        settings,
        _db: database,
    })
}

impl SimApp {
    /// A signed Vercel `deployment.promoted` webhook: a person or CI put
    /// `id` live. The simulator's aliases follow.
    pub async fn promoted(&self, id: &str, sha: &str) {
        self.sim
            .sim
            .world()
            .serve(backstop::sim::config::PROJECT, id);
        let event = serde_json::json!({
            "id": format!("evt_{id}_{}", now_ms()), "type": "deployment.promoted", "createdAt": now_ms(),
            "payload": {"deployment": {"id": id, "url": format!("{id}.vercel.app"), "meta": {"githubCommitSha": sha}},
                        "project": {"id": backstop::sim::config::PROJECT}, "target": "production"}
        });
        let body = serde_json::to_vec(&event).unwrap();
        let sig = backstop::ingest::signature::sign(
            backstop::ingest::signature::Digest::Sha1,
            DEMO.vercel_webhook_secret.as_bytes(),
            &body,
        );
        let resp = self
            .http
            .post(format!("{}/webhooks/vercel", self.address))
            .header("content-type", "application/json")
            .header("x-vercel-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    /// A second instance on the same database and simulator (a replica);
    /// its address. It serves until the test ends.
    pub async fn another(&self) -> String {
        let (address, _, _, _, stop) = serve(self.settings.clone()).await;
        std::mem::forget(stop.0);
        address
    }

    /// Stops this instance (it finishes the runs in hand) and starts
    /// another on the same database and simulator: a restart.
    pub async fn restart(&mut self) {
        if let Some((tx, task)) = self.stop.take() {
            let _ = tx.send(());
            task.await.expect("the instance stopped cleanly");
        }
        let (address, admin, engine, store, stop) = serve(self.settings.clone()).await;
        self.address = address;
        self.admin = admin;
        self.engine = engine;
        self.store = store;
        self.stop = Some(stop);
    }

    /// Sends a signed crash alert that started `ago_ms` ago; returns the status.
    pub async fn alert(&self, identifier: &str, ago_ms: i64) -> u16 {
        let body = backstop::sim::sender::CrashAlert::critical(
            "storefront-web",
            identifier,
            now_ms() - ago_ms,
        )
        .body();
        let url = format!("{}/webhooks/sentry", self.address);
        backstop::sim::sender::deliver(&self.http, &url, DEMO.sentry_secret, "metric_alert", &body)
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

/// Waits (at most 30 s) until the simulated PagerDuty has an incident
/// for a held rollback (`…/held`); its key.
pub async fn until_held(sim: &backstop::sim::Sim) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let key = sim
            .world()
            .incidents
            .keys()
            .find(|k| k.ends_with("/held"))
            .cloned();
        if let Some(key) = key {
            return key;
        }
        assert!(std::time::Instant::now() < deadline, "no rollback was held");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
