//! `backstop bench`: drives a real `backstop serve` process over loopback
//! with signed Sentry webhooks and reports throughput, latency percentiles
//! (send to response) and the server's peak RSS. Scenarios:
//!
//! - `ingest`: unique alerts for an unmapped project (verify + parse +
//!   durable store + 202), as fast as they go and at a fixed rate;
//! - `storm`: one alert delivered 10,000 times; counts rollbacks (must be 1);
//! - `rollback`: a full alert against the simulator: send → first alias
//!   write at the simulated Vercel, and → the rollback's read-back;
//! - `cold-start`: process start → `/readyz` answering;
//! - `hostile`: valid alerts at a fixed rate while slow clients hold
//!   connections and a flood of bad signatures hits the port;
//! - `fleet`: many services' alerts at once against a slow simulator: time
//!   to the last verified rollback, page and post, against the floor of
//!   three provider round trips;
//! - `growth`: alert → first alias write on an empty ledger and on one
//!   grown by years of history, and ingest while that history is pruned.

mod fleet;
mod growth;
mod hostile;
mod load;
mod rollback;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use secrecy::SecretString;

use crate::sim::config::{history as demo_history, world, Bases, Config, DEMO};

const SENTRY_SECRET: &str = DEMO.sentry_secret;
const VERCEL_SECRET: &str = DEMO.vercel_webhook_secret;
use crate::clock::now_ms;
use crate::ingest::signature::{sign, Digest};
use crate::ledger::Store;
use crate::sim::sender::{self, CrashAlert};
use crate::sim::{now_us, Running};

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Unique alerts for an unmapped project.
    Ingest,
    /// 10,000 deliveries of one alert.
    Storm,
    /// Alert → first alias write → verified rollback.
    Rollback,
    /// Process start → /readyz.
    ColdStart,
    /// Valid alerts at `--rate` while slow clients hold connections and
    /// bad signatures flood the port.
    Hostile,
    /// `--services` services' alerts at once, every provider answering in
    /// `--latency-ms`: time to the last verified rollback, page and post.
    Fleet,
    /// Alert → first alias write on an empty ledger, then on one with
    /// `--deployments` deployments and `--runs` finished runs; and ingest at
    /// a fixed rate while those runs are pruned.
    Growth,
}

/// Options of `backstop bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOpts {
    /// Scenario to run.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Postgres server to use instead of an SQLite file (a fresh schema is created).
    #[arg(long, env = "BACKSTOP_BENCH_POSTGRES_URL")]
    pub postgres: Option<String>,
    /// Requests (ingest, storm) or repetitions (rollback, cold-start).
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Requests in flight at once (closed loop).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Send at this fixed rate per second instead (open loop; latency counted from the scheduled send).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Drive an already running `backstop serve` at this base URL (ingest and
    /// storm; it must use the demo's Sentry secret) instead of starting one.
    #[arg(long)]
    pub target: Option<String>,
    /// Slow clients holding connections open (hostile).
    #[arg(long, default_value_t = 1000)]
    pub slow_clients: usize,
    /// Requests per second with a bad signature (hostile).
    #[arg(long, default_value_t = 500)]
    pub flood_rate: u32,
    /// Services alerting at once (fleet).
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Production domains per service (fleet).
    #[arg(long, default_value_t = 3)]
    pub domains: usize,
    /// Latency of every simulated provider call, ms (fleet).
    #[arg(long, default_value_t = 100)]
    pub latency_ms: u64,
    /// Turn the agents on against a simulated model endpoint that never
    /// answers (fleet): the rollback, page and post must not wait for it.
    #[arg(long)]
    pub ai_hang: bool,
    /// Meter the simulated Vercel with its published rate limits (fleet):
    /// 120 alias creations a window (shortened from ten minutes to ten
    /// seconds, so the held services are seen rolled back), 500 alias lists
    /// a minute, and so on. Off by default, so the fleet rows measure
    /// Backstop itself.
    #[arg(long)]
    pub vercel_limits: bool,
    /// Deployments of the service to grow the ledger by (growth).
    #[arg(long, default_value_t = 20_000)]
    pub deployments: usize,
    /// Finished runs to grow the ledger by (growth).
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: usize,
}

/// One line of results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Scenario and settings.
    pub name: String,
    /// Measurements taken.
    pub samples: usize,
    /// Per second (ingest, storm).
    pub throughput: Option<f64>,
    /// ms.
    pub p50: f64,
    /// ms.
    pub p90: f64,
    /// ms.
    pub p99: f64,
    /// ms.
    pub max: f64,
    /// Server peak RSS (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Anything else worth saying.
    pub note: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tp = self
            .throughput
            .map(|t| format!("{t:.0}/s"))
            .unwrap_or_else(|| "-".into());
        let rss = self
            .peak_rss_mib
            .map(|r| format!("{r:.1} MiB"))
            .unwrap_or_else(|| "-".into());
        write!(
            f,
            "{:<34} n={:<6} {:>9}  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  rss {:>9}  {}",
            self.name, self.samples, tp, self.p50, self.p90, self.p99, self.max, rss, self.note
        )
    }
}

pub(super) fn report(
    name: String,
    mut ms: Vec<f64>,
    throughput: Option<f64>,
    rss: Option<f64>,
    note: String,
) -> Report {
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Report {
        name,
        samples: ms.len(),
        throughput,
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        max: pct(1.0),
        peak_rss_mib: rss,
        note,
    }
}

/// Runs one scenario.
pub async fn run(opts: BenchOpts) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find the backstop binary")?;
    let dir =
        std::env::temp_dir().join(format!("backstop-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir)?;
    let db = database(&opts, &dir).await?;
    let result = match opts.scenario {
        Scenario::Ingest | Scenario::Storm => load::load(&opts, &exe, &dir, &db).await,
        Scenario::Hostile => hostile::hostile(&opts, &exe, &dir, &db).await,
        Scenario::Fleet => fleet::fleet(&opts, &exe, &dir, &db).await,
        Scenario::Growth => growth::growth(&opts, &exe, &dir, &db).await,
        Scenario::Rollback => rollback::rollback(&opts, &exe, &dir, &db).await,
        Scenario::ColdStart => rollback::cold_start(&opts, &exe, &dir, &db).await,
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn database(opts: &BenchOpts, dir: &Path) -> anyhow::Result<String> {
    let Some(base) = &opts.postgres else {
        return Ok(format!("sqlite://{}", dir.join("bench.db").display()));
    };
    let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let admin = Store::connect(&SecretString::from(base.clone()), 1)
        .await
        .context("cannot reach --postgres")?;
    admin
        .execute_raw(&format!("CREATE SCHEMA {schema}"))
        .await?;
    admin.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

pub(super) fn backend(db: &str) -> &'static str {
    if db.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn config(db: &str, port: u16, sim: Option<&Running>) -> String {
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let bases = sim.map_or_else(Bases::closed, Bases::of);
    let mut config = Config::new(DEMO, bases, db, listen);
    config.service = "mode = \"auto\"\ncooldown = \"0s\"\nmax_rollbacks_per_day = 1000000".into();
    config.toml()
}

/// A `backstop serve` child process.
pub(super) struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub(super) async fn start(
        exe: &Path,
        dir: &Path,
        config_text: &str,
        port: u16,
    ) -> anyhow::Result<(Server, Duration)> {
        let path: PathBuf = dir.join(format!("bench-{port}.toml"));
        std::fs::write(&path, config_text)?;
        let started = Instant::now();
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&path)
            // BACKSTOP_BENCH_SERVER_LOG (a RUST_LOG filter) profiles the server.
            .env(
                "RUST_LOG",
                std::env::var("BACKSTOP_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start backstop serve")?;
        let server = Server { child, port };
        let http = reqwest::Client::new();
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok((server, started.elapsed()));
                }
            }
            if Instant::now() > deadline {
                bail!("backstop serve did not become ready");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/sentry", self.port)
    }

    /// CPU time the server has used so far (user + system), seconds.
    pub(super) fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    /// Peak resident set size (VmHWM), MiB.
    pub(super) fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A signed request, ready to send.
pub(super) struct Signed {
    pub body: Vec<u8>,
    pub signature: String,
}

pub(super) fn signed(alert: &CrashAlert) -> Signed {
    let body = sender::encode(&alert.body());
    let signature = sign(Digest::Sha256, SENTRY_SECRET.as_bytes(), &body);
    Signed { body, signature }
}

pub(super) async fn post(http: &reqwest::Client, url: &str, s: &Signed) -> anyhow::Result<u16> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header("sentry-hook-resource", "metric_alert")
        .header("sentry-hook-timestamp", (now_ms() / 1000).to_string())
        .header("sentry-hook-signature", &s.signature)
        .body(s.body.clone())
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// The benches measure Backstop, not Vercel's budget: the simulated Vercel
/// does not meter its published rate limits (fleet's `--vercel-limits`
/// aside), or 200 rollbacks in a row would spend its 120 alias creations.
fn unmetered(sim: &crate::sim::Running) {
    sim.sim.world().vercel_limits.clear();
}
