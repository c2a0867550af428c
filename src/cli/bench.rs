//! `backstop bench`: drives a real `backstop serve` process over loopback
//! with signed Sentry webhooks and reports throughput, latency percentiles
//! (send to response) and the server's peak RSS. Scenarios:
//!
//! - `ingest`: unique alerts for an unmapped project (verify + parse +
//!   durable store + 202), as fast as they go and at a fixed rate;
//! - `storm`: one alert delivered 10,000 times; counts rollbacks (must be 1);
//! - `rollback`: a full alert against the simulator: send → first alias
//!   write at the simulated Vercel, and → the rollback's read-back;
//! - `cold-start`: process start → `/readyz` answering.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use secrecy::SecretString;
use serde_json::json;

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

fn report(
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
        Scenario::Ingest | Scenario::Storm => load(&opts, &exe, &dir, &db).await,
        Scenario::Rollback => rollback(&opts, &exe, &dir, &db).await,
        Scenario::ColdStart => cold_start(&opts, &exe, &dir, &db).await,
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

fn backend(db: &str) -> &'static str {
    if db.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn config(db: &str, port: u16, sim: Option<&Running>) -> String {
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let bases = sim.map_or_else(Bases::closed, Bases::of);
    let mut config = Config::new(DEMO, bases, db, listen);
    config.service = "mode = \"auto\"\ncooldown = \"0s\"\nmax_rollbacks_per_day = 1000000".into();
    config.toml()
}

/// A `backstop serve` child process.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    async fn start(
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/sentry", self.port)
    }

    /// CPU time the server has used so far (user + system), seconds.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    /// Peak resident set size (VmHWM), MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
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
struct Signed {
    body: Vec<u8>,
    signature: String,
}

fn signed(alert: &CrashAlert) -> Signed {
    let body = sender::encode(&alert.body());
    let signature = sign(Digest::Sha256, SENTRY_SECRET.as_bytes(), &body);
    Signed { body, signature }
}

async fn post(http: &reqwest::Client, url: &str, s: &Signed) -> anyhow::Result<u16> {
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

async fn load(opts: &BenchOpts, exe: &Path, dir: &Path, db: &str) -> anyhow::Result<Report> {
    let storm = opts.scenario == Scenario::Storm;
    // A storm is of a real crash alert: the simulator and a ledger with a
    // history, so the one run it makes really rolls back.
    let sim = match storm && opts.target.is_none() {
        true => Some(
            world(&DEMO)
                .start(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await?,
        ),
        false => None,
    };
    let server = match &opts.target {
        Some(_) => None,
        None => {
            let port = free_port()?;
            let (server, _) =
                Server::start(exe, dir, &config(db, port, sim.as_ref()), port).await?;
            if sim.is_some() {
                let hook = format!("http://127.0.0.1:{port}/webhooks/vercel");
                for (id, sha, at) in demo_history(now_ms()) {
                    promote(&reqwest::Client::new(), &hook, id, sha, at).await?;
                }
            }
            Some(server)
        }
    };
    let requests: Vec<Arc<Signed>> = (0..opts.requests)
        .map(|i| {
            let (project, id) = if storm {
                ("storefront-web", "1".to_string())
            } else {
                ("unmapped-project", i.to_string())
            };
            Arc::new(signed(&CrashAlert::critical(
                project,
                &id,
                now_ms() - 60_000,
            )))
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency.max(64))
        .build()?;
    let url = match (&opts.target, &server) {
        (Some(t), _) => format!("{}/webhooks/sentry", t.trim_end_matches('/')),
        (None, Some(s)) => s.url(),
        (None, None) => bail!("no server"),
    };
    let cpu_before = server.as_ref().and_then(Server::cpu_seconds);
    let started = Instant::now();
    let results = match opts.rate {
        None => closed_loop(&http, &url, requests, opts.concurrency).await,
        Some(rate) => open_loop(&http, &url, requests, rate).await,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let (ms, statuses): (Vec<f64>, Vec<u16>) = results.into_iter().unzip();
    let ok = statuses.iter().filter(|s| **s == 202 || **s == 200).count();
    let mut note = format!("{ok}/{} answered 2xx", statuses.len());
    if let (Some(before), Some(after)) = (cpu_before, server.as_ref().and_then(Server::cpu_seconds))
    {
        note.push_str(&format!(
            "; server CPU {:.0} µs/request",
            (after - before) * 1e6 / statuses.len().max(1) as f64
        ));
    }
    if let Some(sim) = &sim {
        let store = Store::connect(&SecretString::from(db.to_string()), 1).await?;
        wait_idle(&store).await?;
        let runs = store.list_runs(10).await?;
        let rollbacks = runs
            .iter()
            .filter(|r| r.outcome == Some(crate::ledger::Outcome::Rollback))
            .count();
        note.push_str(&format!(
            "; runs: {}, rollbacks: {rollbacks}, alias writes: {}",
            runs.len(),
            sim.sim.world().alias_writes.len()
        ));
        store.close().await;
    }
    let mode = match opts.rate {
        Some(r) => format!("{r}/s"),
        None => format!("c={}", opts.concurrency),
    };
    let name = format!("{:?} {} {mode}", opts.scenario, backend(db)).to_lowercase();
    let throughput = Some(statuses.len() as f64 / elapsed);
    Ok(report(
        name,
        ms,
        throughput,
        server.as_ref().and_then(Server::peak_rss_mib),
        note,
    ))
}

async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    requests: Vec<Arc<Signed>>,
    concurrency: usize,
) -> Vec<(f64, u16)> {
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (http, url, queue) = (http.clone(), url.to_string(), queue.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let Some(next) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        break;
                    };
                    let t = Instant::now();
                    let status = post(&http, &url, &next).await.unwrap_or(0);
                    out.push((t.elapsed().as_secs_f64() * 1000.0, status));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    all
}

async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    requests: Vec<Arc<Signed>>,
    rate: u32,
) -> Vec<(f64, u16)> {
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tasks = Vec::with_capacity(requests.len());
    for (i, req) in requests.into_iter().enumerate() {
        let scheduled = start + gap * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (http, url) = (http.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let status = post(&http, &url, &req).await.unwrap_or(0);
            // From the scheduled send, so a slow server cannot hide its queue.
            (scheduled.elapsed().as_secs_f64() * 1000.0, status)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            all.push(r);
        }
    }
    all
}

async fn rollback(opts: &BenchOpts, exe: &Path, dir: &Path, db: &str) -> anyhow::Result<Report> {
    let sim = world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    let port = free_port()?;
    let (server, _) = Server::start(exe, dir, &config(db, port, Some(&sim)), port).await?;
    let http = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{port}/webhooks/vercel");
    for (id, sha, at) in demo_history(now_ms()) {
        promote(&http, &hook, id, sha, at).await?;
    }
    let store = Store::connect(&SecretString::from(db.to_string()), 1).await?;
    let mut first_write = Vec::new();
    let mut verified = Vec::new();
    let reps = opts.requests.min(1000);
    for i in 0..reps {
        if i > 0 {
            // A new release goes live, and it crashes too.
            let id = format!("dpl_bench{i}");
            let at = now_ms();
            {
                let mut w = sim.sim.world();
                w.add_deployment("prj_storefront", &id, &format!("b{i:06}"), at);
                w.serve("prj_storefront", &id);
            }
            promote(&http, &hook, &id, &format!("b{i:06}"), at).await?;
        }
        let writes_before = sim.sim.world().alias_writes.len();
        let request = signed(&CrashAlert::critical(
            "storefront-web",
            &format!("r{i}"),
            now_ms(),
        ));
        let sent = now_us();
        let status = post(&http, &server.url(), &request).await?;
        if status != 202 {
            bail!("alert {i} answered {status}");
        }
        let (first, done) = wait_rollback(&sim, writes_before, sent).await?;
        // The ledger records the rollback just after the read-back; the next
        // release is promoted only then, as it would be in life.
        wait_idle(&store).await?;
        first_write.push((first - sent) as f64 / 1000.0);
        verified.push((done - sent) as f64 / 1000.0);
    }
    let rss = server.peak_rss_mib();
    let name = format!("rollback {} → first alias write", backend(db));
    let mut r = report(name, first_write, None, rss, String::new());
    let v = report(String::new(), verified, None, None, String::new());
    r.note = format!(
        "→ verified: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.p50, v.p99, v.max
    );
    Ok(r)
}

async fn promote(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    sha: &str,
    at: i64,
) -> anyhow::Result<()> {
    let event = json!({
        "id": format!("evt_{id}"), "type": "deployment.promoted", "createdAt": at,
        "payload": {"deployment": {"id": id, "url": format!("{id}.vercel.app"), "meta": {"githubCommitSha": sha}},
                    "project": {"id": "prj_storefront"}, "target": "production"}
    });
    let body = serde_json::to_vec(&event)?;
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header(
            "x-vercel-signature",
            sign(Digest::Sha1, VERCEL_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("promotion refused: {}", resp.status());
    }
    Ok(())
}

/// Waits until every run is finished.
async fn wait_idle(store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.count_unfinished_runs().await? > 0 {
        if Instant::now() > deadline {
            bail!("runs did not finish within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Times (µs) of the first alias write after `writes_before`, and of the
/// read-back that saw every domain on the target.
async fn wait_rollback(
    sim: &Running,
    writes_before: usize,
    sent_us: i64,
) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let w = sim.sim.world();
            if let Some(first) = w.alias_writes.get(writes_before) {
                let target = first.deployment.clone();
                let reads: Vec<_> = w
                    .alias_reads
                    .iter()
                    .filter(|r| {
                        r.at_us > first.at_us && r.deployment.as_deref() == Some(target.as_str())
                    })
                    .collect();
                if reads.len() >= 2 && w.alias_writes.len() >= writes_before + 2 {
                    return Ok((first.at_us, reads[1].at_us.max(sent_us)));
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the rollback did not happen within 30 s");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn cold_start(opts: &BenchOpts, exe: &Path, dir: &Path, db: &str) -> anyhow::Result<Report> {
    let mut ms = Vec::new();
    let mut rss = None;
    for _ in 0..opts.requests.clamp(1, 100) {
        let port = free_port()?;
        let (server, took) = Server::start(exe, dir, &config(db, port, None), port).await?;
        ms.push(took.as_secs_f64() * 1000.0);
        rss = server.peak_rss_mib();
    }
    let name = format!("cold start {} → /readyz", backend(db));
    Ok(report(
        name,
        ms,
        None,
        rss,
        "migrations already applied after the first".into(),
    ))
}
