//! `ingest` and `storm`: many alerts, closed or open loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use secrecy::SecretString;

use super::rollback::{promote, wait_idle};
use super::*;

pub(super) async fn load(
    opts: &BenchOpts,
    exe: &Path,
    dir: &Path,
    db: &str,
) -> anyhow::Result<Report> {
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

pub(super) async fn closed_loop(
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

pub(super) async fn open_loop(
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
