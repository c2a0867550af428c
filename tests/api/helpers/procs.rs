//! Real `backstop serve` processes on the simulator: a world (simulator,
//! config file, seeded ledger) and processes whose output is collected line
//! by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::ledger::{RunStatus, Store};
use backstop::sim::config::{seed_ledger, world as sim_world, Bases, Config, Creds};
use backstop::sim::Running;
use secrecy::SecretString;

pub const SENTRY: &str = "proc-sentry-secret-8c1f0e";
pub const VERCEL_HOOK: &str = "proc-vercel-hook-secret-77aa10";
pub const VERCEL_TOKEN: &str = "proc-vercel-token-5b2d99";
pub const ROUTING_KEY: &str = "0c0ffee0c0ffee0c0ffee0c0ffee0c0f";
pub const SLACK_TOKEN: &str = "xoxb-proc-slack-token-e3a1";
pub const PD_TOKEN: &str = "proc-pagerduty-rest-token-7b2";
pub const SECRETS: [&str; 6] = [
    SENTRY,
    VERCEL_HOOK,
    VERCEL_TOKEN,
    ROUTING_KEY,
    SLACK_TOKEN,
    PD_TOKEN,
];
pub const CREDS: Creds = Creds {
    sentry_secret: SENTRY,
    vercel_token: VERCEL_TOKEN,
    vercel_webhook_secret: VERCEL_HOOK,
    routing_key: ROUTING_KEY,
    pagerduty_token: PD_TOKEN,
    slack_token: SLACK_TOKEN,
    sentry_token: "proc-sentry-token",
};

/// A world: the simulator, a config file and a seeded SQLite ledger.
pub struct World {
    pub sim: Running,
    pub config: PathBuf,
    pub db_url: String,
    _dir: tempfile::TempDir,
}

pub async fn world(extra: &str) -> World {
    world_on(None, extra).await
}

/// A world whose ledger is `db_url` (a Postgres schema), or a fresh SQLite
/// file; `service` adds lines to the service's table.
pub async fn world_on(db_url: Option<String>, service: &str) -> World {
    let service = service.to_string();
    world_with(db_url, move |c| c.service = service).await
}

/// A world whose configuration `tweak` adjusts.
pub async fn world_with(db_url: Option<String>, tweak: impl FnOnce(&mut Config)) -> World {
    let sim = sim_world(&CREDS)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db_url =
        db_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("ledger.db").display()));
    let mut config = Config::new(
        CREDS,
        Bases::of(&sim),
        &db_url,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .with("vercel", "timeout = \"1s\"");
    config.channel = sim.sim.world().channels["#deploys"].clone();
    config.engine = "lease = \"1s\"\npoll_interval = \"100ms\"".into();
    tweak(&mut config);
    let path = dir.path().join("backstop.toml");
    std::fs::write(&path, config.toml()).unwrap();
    let store = Store::connect(&SecretString::from(db_url.clone()), 1)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    seed_ledger(&store, Duration::from_secs(1800))
        .await
        .unwrap();
    store.close().await;
    World {
        sim,
        config: path,
        db_url,
        _dir: dir,
    }
}

/// A running `backstop serve`, its output collected line by line.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub port: u16,
}

impl Proc {
    pub fn spawn(config: &Path, failpoint: Option<&str>) -> Proc {
        Self::start(
            Command::new(env!("CARGO_BIN_EXE_backstop")),
            config,
            failpoint,
        )
    }

    /// `backstop serve` with its clock `offset` away from the host's
    /// (Debian's `faketime`, which `.ci/run` installs).
    pub fn spawn_skewed(config: &Path, offset: &str) -> Proc {
        let mut cmd = Command::new("faketime");
        cmd.args(["-f", offset, env!("CARGO_BIN_EXE_backstop")]);
        Self::start(cmd, config, None)
    }

    pub fn start(mut cmd: Command, config: &Path, failpoint: Option<&str>) -> Proc {
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .env("BACKSTOP_FAILPOINT", failpoint.unwrap_or(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("backstop starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut p = Proc {
            child,
            lines,
            port: 0,
        };
        let line = p
            .wait_for("backstop serving", Duration::from_secs(15))
            .unwrap_or_else(|| panic!("not serving:\n{}", p.output()));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        p.port = v["port"].as_u64().expect("port logged") as u16;
        p
    }

    pub fn wait_for(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/sentry", self.port)
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Delivers the storefront's crash alert `identifier` (started 30 s
    /// ago), signed as Sentry signs; the HTTP status.
    pub async fn alert(&self, identifier: &str) -> u16 {
        let alert = backstop::sim::sender::CrashAlert::critical(
            "storefront-web",
            identifier,
            backstop::clock::now_ms() - 30_000,
        )
        .body();
        let http = reqwest::Client::new();
        backstop::sim::sender::deliver(&http, &self.url(), SENTRY, "metric_alert", &alert)
            .await
            .unwrap()
            .0
    }

    /// Sends SIGTERM and waits (at most 20 s) for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit after SIGTERM\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn until_finished(db_url: &str) -> backstop::ledger::RunDetail {
    let store = Store::connect(&SecretString::from(db_url.to_string()), 1)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = store.list_runs(5).await.unwrap();
        if let Some(r) = runs
            .first()
            .filter(|r| matches!(r.status, RunStatus::Done | RunStatus::Failed))
        {
            let d = store.run_detail(&r.id).await.unwrap();
            store.close().await;
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
