//! `rollback` (alert → first alias write → verified) and `cold-start`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use secrecy::SecretString;

use super::*;

use serde_json::json;

pub(super) async fn rollback(
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
    let (server, _) = Server::start(exe, dir, &config(db, port, Some(&sim)), port).await?;
    let http = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{port}/webhooks/vercel");
    for (id, sha, at) in demo_history(now_ms()) {
        promote(&http, &hook, id, sha, at).await?;
    }
    let store = Store::connect(&SecretString::from(db.to_string()), 1).await?;
    let reps = opts.requests.min(1000);
    let (first_write, verified) =
        rollbacks(&sim, &http, &server.url(), &hook, &store, 0..reps).await?;
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

/// Alert → first alias write and → verified read-back (ms), once per
/// `reps` index: each after the first promotes a new crashing release.
pub(super) async fn rollbacks(
    sim: &Running,
    http: &reqwest::Client,
    url: &str,
    hook: &str,
    store: &Store,
    reps: std::ops::Range<usize>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut first_write = Vec::new();
    let mut verified = Vec::new();
    for i in reps {
        if i > 0 {
            // A new release goes live, and it crashes too.
            let id = format!("dpl_bench{i}");
            let at = now_ms();
            {
                let mut w = sim.sim.world();
                w.add_deployment("prj_storefront", &id, &format!("b{i:06}"), at);
                w.serve("prj_storefront", &id);
            }
            promote(http, hook, &id, &format!("b{i:06}"), at).await?;
        }
        let writes_before = sim.sim.world().alias_writes.len();
        let request = signed(&CrashAlert::critical(
            "storefront-web",
            &format!("r{i}"),
            now_ms(),
        ));
        let sent = now_us();
        let status = post(http, url, &request).await?;
        if status != 202 {
            bail!("alert {i} answered {status}");
        }
        let (first, done) = wait_rollback(sim, writes_before, sent).await?;
        // The ledger records the rollback just after the read-back; the next
        // release is promoted only then, as it would be in life.
        wait_idle(store).await?;
        first_write.push((first - sent) as f64 / 1000.0);
        verified.push((done - sent) as f64 / 1000.0);
    }
    Ok((first_write, verified))
}

pub(super) async fn promote(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    sha: &str,
    at: i64,
) -> anyhow::Result<()> {
    promote_in(http, url, "prj_storefront", id, sha, at).await
}

/// Sends a signed `deployment.promoted` webhook for `project`.
pub(super) async fn promote_in(
    http: &reqwest::Client,
    url: &str,
    project: &str,
    id: &str,
    sha: &str,
    at: i64,
) -> anyhow::Result<()> {
    let event = json!({
        "id": format!("evt_{id}"), "type": "deployment.promoted", "createdAt": at,
        "payload": {"deployment": {"id": id, "url": format!("{id}.vercel.app"), "meta": {"githubCommitSha": sha}},
                    "project": {"id": project}, "target": "production"}
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
pub(super) async fn wait_idle(store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.count_unfinished_runs().await? > 0 {
        if Instant::now() > deadline {
            bail!("runs did not finish within 60 s");
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

pub(super) async fn cold_start(
    opts: &BenchOpts,
    exe: &Path,
    dir: &Path,
    db: &str,
) -> anyhow::Result<Report> {
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
