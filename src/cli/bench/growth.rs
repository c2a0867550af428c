//! `growth`: does a decision cost the same on day 400 as on day 1? Alert →
//! first alias write is measured on a fresh ledger, then again after
//! `--deployments` deployments of the service and `--runs` finished runs
//! (received 100 days ago) are added; then ingest at 500/s is measured
//! alone and while a prune removes those runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;

use super::load::open_loop;
use super::rollback::{promote, rollbacks};
use super::*;

const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

pub(super) async fn growth(
    opts: &BenchOpts,
    exe: &Path,
    dir: &Path,
    db: &str,
) -> anyhow::Result<Report> {
    let sim = world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    unmetered(&sim);
    let port = free_port()?;
    let config_text = config(db, port, Some(&sim));
    let (server, _) = Server::start(exe, dir, &config_text, port).await?;
    let http = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{port}/webhooks/vercel");
    let now = now_ms();
    for (id, sha, at) in demo_history(now) {
        promote(&http, &hook, id, sha, at).await?;
    }
    let store = Store::connect(&SecretString::from(db.to_string()), 2).await?;
    let reps = opts.requests.min(200);
    let (empty, _) = rollbacks(&sim, &http, &server.url(), &hook, &store, 0..reps).await?;
    let rss_empty = server.peak_rss_mib();

    // Years of history, before anything live now: deployments every 30
    // minutes (each baked), runs the alert alone settled.
    let filled = Instant::now();
    let n = opts.deployments as i64;
    store
        .fill_deployments(
            "storefront",
            opts.deployments,
            now - 400 * MIN - n * 30 * MIN,
            30 * MIN,
        )
        .await?;
    store.fill_runs(opts.runs, now - 100 * DAY).await?;
    store.analyze().await?;
    let fill_s = filled.elapsed().as_secs_f64();
    let (grown, _) = rollbacks(&sim, &http, &server.url(), &hook, &store, reps..2 * reps).await?;
    let rss_grown = server.peak_rss_mib();

    // Ingest at 500/s, alone, then while the runs are pruned.
    let unmapped = |tag: &str| -> Vec<Arc<Signed>> {
        (0..2_000)
            .map(|i| {
                let alert =
                    CrashAlert::critical("unmapped-project", &format!("{tag}{i}"), now_ms());
                Arc::new(signed(&alert))
            })
            .collect()
    };
    let quiet = open_loop(&http, &server.url(), unmapped("q"), 500).await;
    let settings = crate::config::Settings::from_toml(&config_text, Vec::new())?;
    let engine = crate::engine::Engine::new(
        store.clone(),
        std::sync::Arc::new(settings),
        crate::engine::Providers::default(),
    )?;
    let pruning = Instant::now();
    let prune = tokio::spawn(async move { engine.prune(false).await });
    let busy = open_loop(&http, &server.url(), unmapped("b"), 500).await;
    let pruned = prune.await??.map(|p| p.runs).unwrap_or(0);
    let prune_s = pruning.elapsed().as_secs_f64();

    let ms = |v: Vec<(f64, u16)>| v.into_iter().map(|(ms, _)| ms).collect::<Vec<_>>();
    let (e, g) = (
        report(String::new(), empty, None, None, String::new()),
        report(String::new(), grown.clone(), None, None, String::new()),
    );
    let (q, b) = (
        report(String::new(), ms(quiet), None, None, String::new()),
        report(String::new(), ms(busy), None, None, String::new()),
    );
    let name = format!(
        "growth {} +{}dpl +{}runs",
        backend(db),
        opts.deployments,
        opts.runs
    );
    let note = format!(
        "alert → first alias write: empty p50 {:.2} p99 {:.2} ms, grown p50 {:.2} p99 {:.2} ms ({:.2}× at p50); RSS {:.1} → {:.1} MiB; filled in {fill_s:.0} s; ingest at 500/s p99 {:.2} ms alone, {:.2} ms while pruning {pruned} runs ({prune_s:.0} s)",
        e.p50,
        e.p99,
        g.p50,
        g.p99,
        g.p50 / e.p50.max(0.001),
        rss_empty.unwrap_or(0.0),
        rss_grown.unwrap_or(0.0),
        q.p99,
        b.p99,
    );
    Ok(report(name, grown, None, rss_grown, note))
}
