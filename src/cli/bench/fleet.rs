//! `fleet`: a shared dependency breaks and `--services` services alert at
//! once. Every simulated provider answers in `--latency-ms`; the floor is
//! three round trips (read the aliases, write them, read them back, every
//! domain and service side by side). Reports when the last service was
//! verified back on its known-good deployment, paged and posted, and the
//! ratio to the floor. With `--vercel-limits` the simulated Vercel meters
//! its published rate limits (the alias-creation window shortened to ten
//! seconds, the rollback deadline to five): how many services moved whole
//! in the first window, how many were held (paged at once) and rolled back
//! at the resets, and that none was half moved.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use secrecy::SecretString;

use super::rollback::{promote_in, wait_idle};
use super::*;
use crate::sim::config::Fleet;
use crate::sim::{Faults, Provider};

/// The alias-creation window of `--vercel-limits`: Vercel's is ten
/// minutes; the bench's is short enough to see the held services rolled
/// back at its reset.
const VERCEL_BENCH_WINDOW_MS: i64 = 10_000;

pub(super) async fn fleet(
    opts: &BenchOpts,
    exe: &Path,
    dir: &Path,
    db: &str,
) -> anyhow::Result<Report> {
    let fleet = Fleet {
        services: opts.services.max(1),
        domains: opts.domains.max(1),
    };
    let sim = fleet
        .world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;
    if opts.vercel_limits {
        // Vercel's budget of alias creations, in a window short enough for
        // the bench to see the held services rolled back when it resets.
        let mut w = sim.sim.world();
        let budget = w.vercel_limits.get("alias creation").map_or(120, |l| l.0);
        w.vercel_limits
            .insert("alias creation".into(), (budget, VERCEL_BENCH_WINDOW_MS));
    } else {
        unmetered(&sim);
    }
    let port = free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = Config::new(DEMO, Bases::of(&sim), db, listen);
    config.more = fleet.services_toml();
    if opts.vercel_limits {
        // Against the shortened window, a rollback deadline shorter than it
        // (as the default 2 min is against Vercel's 10): what does not fit
        // the first window is held, and paged at once.
        config.engine.push_str("\nrollback_deadline = \"5s\"");
    }
    if opts.ai_hang {
        // The brief is asked for after every rollback; the model never answers.
        let base = sim.api_base(Provider::Ai);
        config.more.push_str(&format!(
            "\n[ai]\nbase_url = \"{base}\"\nmodel = \"sim-small\"\ntimeout = \"2s\"\n"
        ));
        let hang = Faults {
            timeout_rate: 1.0,
            hang_ms: 60_000,
            ..Faults::default()
        };
        sim.sim.set_faults(Provider::Ai, hang);
    }
    let (server, _) = Server::start(exe, dir, &config.toml(), port).await?;
    let http = reqwest::Client::new();
    let hook = format!("http://127.0.0.1:{port}/webhooks/vercel");
    let now = now_ms();
    for i in 0..fleet.services {
        for (id, sha, at) in Fleet::history(i, now) {
            promote_in(&http, &hook, &Fleet::project(i), &id, &sha, at).await?;
        }
    }
    for p in [Provider::Vercel, Provider::Pagerduty, Provider::Slack] {
        let slow = Faults {
            latency_ms: opts.latency_ms,
            ..Faults::default()
        };
        sim.sim.set_faults(p, slow);
    }
    let alerts: Vec<Signed> = (0..fleet.services)
        .map(|i| {
            signed(&CrashAlert::critical(
                &Fleet::sentry_project(i),
                &format!("fleet{i}"),
                now_ms() - 30_000,
            ))
        })
        .collect();
    let t0 = crate::sim::now_us();
    let url = server.url();
    let sends = alerts.iter().map(|a| post(&http, &url, a));
    let acks = futures_util::future::join_all(sends).await;
    let acked_us = crate::sim::now_us() - t0;
    let accepted = acks.iter().filter(|a| matches!(a, Ok(202))).count();
    let store = Store::connect(&SecretString::from(db.to_string()), 1).await?;
    wait_idle(&store).await?;
    store.close().await;
    let w = sim.sim.world();
    let verified = last_verified(&w, &fleet, t0);
    let last = |provider: Provider, suffix: &str| {
        w.served
            .iter()
            .filter(|s| s.provider == provider && s.path.ends_with(suffix) && s.status < 300)
            .map(|s| s.at_us - t0)
            .max()
            .unwrap_or(0)
    };
    let paged = last(Provider::Pagerduty, "/enqueue");
    // Rollbacks held for Vercel's window: paged at once, under `…/held`.
    let held: Vec<i64> = w
        .incidents
        .values()
        .filter(|i| i.key.ends_with("/held"))
        .map(|i| i.first_event_at_us - t0)
        .collect();
    let posted = last(Provider::Slack, "/chat.postMessage");
    // Pages and cards that reached their provider (one each per service).
    let pages = w.incidents.len() - held.len();
    let cards = w.messages.iter().filter(|m| m.thread_ts.is_none()).count();
    // Per service: every domain moved, none moved, or some (never wanted).
    let (mut whole, mut untouched, mut half) = (0, 0, 0);
    for i in 0..fleet.services {
        let [good, _] = Fleet::history(i, 0);
        let domains = fleet.domains_of(i);
        let on_good = domains
            .iter()
            .filter(|d| w.aliases.get(*d) == Some(&good.0))
            .count();
        match on_good {
            n if n == domains.len() => whole += 1,
            0 => untouched += 1,
            _ => half += 1,
        }
    }
    let refused = w
        .served
        .iter()
        .filter(|s| s.provider == Provider::Vercel && s.status == 429)
        .count();
    let floor_ms = 3.0 * opts.latency_ms as f64;
    let ms = |us: i64| us as f64 / 1000.0;
    let per_service: Vec<f64> = verified.values().map(|us| ms(*us)).collect();
    // Verified before the first window could have reset.
    let first: Vec<f64> = per_service
        .iter()
        .copied()
        .filter(|t| *t < VERCEL_BENCH_WINDOW_MS as f64)
        .collect();
    let mut note = format!(
        "{accepted}/{} acknowledged (last ack {:.0} ms); last verified {:.0} ms = {:.2}× the floor of {floor_ms:.0} ms; last page {:.0} ms, last post {:.0} ms; {pages} pages, {cards} cards; {} alias writes; {} services verified; services moved whole {whole}, untouched {untouched}, half moved {half}; Vercel 429s {refused}; {} held (paged at once, the last at {:.0} ms)",
        fleet.services,
        ms(acked_us),
        per_service.iter().cloned().fold(0.0, f64::max),
        per_service.iter().cloned().fold(0.0, f64::max) / floor_ms,
        ms(paged),
        ms(posted),
        w.alias_writes.len(),
        verified.len(),
        held.len(),
        ms(held.iter().copied().max().unwrap_or(0)),
    );
    if opts.vercel_limits {
        note.push_str(&format!(
            "; within the first window {} verified, the last at {:.0} ms",
            first.len(),
            first.iter().copied().fold(0.0, f64::max)
        ));
    }
    let name = format!(
        "fleet {} n={} d={} {}ms{}{}",
        backend(db),
        fleet.services,
        fleet.domains,
        opts.latency_ms,
        if opts.ai_hang { " ai-hanging" } else { "" },
        if opts.vercel_limits {
            " vercel-limits"
        } else {
            ""
        }
    );
    drop(w);
    Ok(report(name, per_service, None, server.peak_rss_mib(), note))
}

/// Per service, µs from `t0` until every one of its domains was read back
/// serving the deployment it was re-aliased to.
fn last_verified(w: &crate::sim::World, fleet: &Fleet, t0: i64) -> BTreeMap<usize, i64> {
    let mut out = BTreeMap::new();
    for i in 0..fleet.services {
        let mut latest = None;
        for d in fleet.domains_of(i) {
            let Some(write) = w.alias_writes.iter().find(|a| a.domain == d) else {
                continue;
            };
            let read = w.alias_reads.iter().find(|r| {
                r.domain == d
                    && r.at_us > write.at_us
                    && r.deployment.as_deref() == Some(write.deployment.as_str())
            });
            if let Some(r) = read {
                latest = latest.max(Some(r.at_us - t0));
            }
        }
        if let Some(t) = latest {
            out.insert(i, t);
        }
    }
    out
}
