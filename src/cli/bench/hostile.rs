//! `hostile`: valid, signed alerts at a fixed rate (open loop) while
//! `--slow-clients` connections send their headers a byte at a time and a
//! flood of `--flood-rate` requests per second carries bad signatures.
//! Compare with `ingest` at the same `--rate` for the clean numbers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::load::open_loop;
use super::*;

pub(super) async fn hostile(
    opts: &BenchOpts,
    exe: &Path,
    dir: &Path,
    db: &str,
) -> anyhow::Result<Report> {
    let port = free_port()?;
    let (server, _) = Server::start(exe, dir, &config(db, port, None), port).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let slow = slow_clients(port, opts.slow_clients, stop.clone());
    let (flooder, refused) = flood(server.url(), opts.flood_rate, stop.clone());
    let requests: Vec<Arc<Signed>> = (0..opts.requests)
        .map(|i| {
            let alert = CrashAlert::critical("unmapped-project", &format!("h{i}"), now_ms());
            Arc::new(signed(&alert))
        })
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let rate = opts.rate.unwrap_or(200);
    let results = open_loop(&http, &server.url(), requests, rate).await;
    stop.store(true, Ordering::SeqCst);
    let _ = flooder.await;
    for s in slow {
        s.abort();
    }
    let (ms, statuses): (Vec<f64>, Vec<u16>) = results.into_iter().unzip();
    let ok = statuses.iter().filter(|s| **s == 202).count();
    let note = format!(
        "{ok}/{} valid alerts answered 202 beside {} slow clients and {} bad-signature requests (answered 401)",
        statuses.len(),
        opts.slow_clients,
        refused.load(Ordering::Relaxed)
    );
    let name = format!("hostile {} {rate}/s", backend(db));
    Ok(report(name, ms, None, server.peak_rss_mib(), note))
}

/// Clients that open a connection and send a header byte every 500 ms,
/// reconnecting when the server closes them, until `stop`.
fn slow_clients(port: u16, n: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let _ = s
                        .write_all(b"POST /webhooks/sentry HTTP/1.1\r\nX-Slow: ")
                        .await;
                    while !stop.load(Ordering::SeqCst) && s.write_all(b"a").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            })
        })
        .collect()
}

/// Requests with a bad signature at `rate` per second until `stop`;
/// counts the 401s.
fn flood(
    url: String,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let refused = Arc::new(AtomicU64::new(0));
    let counter = refused.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let body = sender::encode(&CrashAlert::critical("x", "1", now_ms()).body());
        let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut tick = tokio::time::interval(gap);
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let (http, url, body, counter) =
                (http.clone(), url.clone(), body.clone(), counter.clone());
            tokio::spawn(async move {
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("sentry-hook-resource", "metric_alert")
                    .header("sentry-hook-timestamp", (now_ms() / 1000).to_string())
                    .header("sentry-hook-signature", "00".repeat(32))
                    .body(body)
                    .send()
                    .await;
                if resp.is_ok_and(|r| r.status().as_u16() == 401) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (task, refused)
}
