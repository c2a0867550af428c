//! `backstop demo`: the whole flow in seconds, with nothing to set up. A
//! temporary SQLite ledger, the in-process simulator, a service with a
//! history, then a signed crash alert, a stale one and a duplicate.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::app::Application;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::engine::Engine;
use crate::ingest::signature::{sign, Digest};
use crate::ledger::{Outcome, RunDetail, RunId, RunStatus, StepName};
use crate::notice::Notice;
use crate::sim::config::{
    world, Bases, Config, DEMO, DEMO_PAGERDUTY_WEBHOOK_SECRET, DEMO_SLACK_SIGNING_SECRET, DOMAINS,
    PROJECT,
};
use crate::sim::sender::{self, CrashAlert};
use crate::sim::Running;

const SENTRY_SECRET: &str = DEMO.sentry_secret;
const VERCEL_SECRET: &str = DEMO.vercel_webhook_secret;
const MIN: i64 = 60_000;

/// What the demo showed; the test suite asserts it.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Every production domain ended on the restored deployment.
    pub rollback_verified: bool,
    /// Alert to verified rollback, ms (as measured by Backstop).
    pub alert_to_verified_ms: Option<i64>,
    /// How long the webhook took to be acknowledged, ms.
    pub ack_ms: u128,
    /// The stale alert was skipped.
    pub stale_skipped: bool,
    /// The duplicate delivery was answered `200` with the first run.
    pub duplicate_deduplicated: bool,
    /// PagerDuty incidents opened.
    pub incidents: usize,
    /// Slack messages posted.
    pub slack_messages: usize,
    /// The decision read Sentry's release health first.
    pub health_read: bool,
    /// The watch saw production recover and said so in the card's thread.
    pub recovered: bool,
    /// The first alert's run.
    pub first_run: String,
}

/// Settings pointing every provider at the simulator, Sentry's API
/// included (release health before acting), with time compressed: a 2 s
/// watch looking every 500 ms, a 3 s cooldown.
pub fn demo_settings(sim: &Running, db_url: &str, listen: SocketAddr) -> anyhow::Result<Settings> {
    let mut config = Config::new(DEMO, Bases::of(sim), db_url, listen).with_every_credential();
    config.service = [
        "mode = \"auto\"",
        "watch_window = \"2s\"",
        "watch_interval = \"500ms\"",
        "resolve_on_recovery = true",
        "cooldown = \"3s\"",
    ]
    .join("\n");
    Ok(config.settings()?)
}

/// Runs the demo, printing the timeline to `out`. With `keep`, leaves
/// everything running until Ctrl-C.
pub async fn run(out: &mut (dyn Write + Send), keep: bool) -> anyhow::Result<DemoReport> {
    run_with(out, Options { keep, ai: false }).await
}

/// How the demo runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Leave everything running afterwards.
    pub keep: bool,
    /// Turn the agents on, against the simulator's OpenAI-compatible server.
    pub ai: bool,
}

/// Runs the demo with `opts`.
pub async fn run_with(out: &mut (dyn Write + Send), opts: Options) -> anyhow::Result<DemoReport> {
    let keep = opts.keep;
    let dir = tempfile_dir()?;
    let db_url = format!("sqlite://{}", dir.join("backstop-demo.db").display());
    let sim = world(&DEMO)
        .start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the simulator")?;
    let mut settings = demo_settings(&sim, &db_url, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    if opts.ai {
        settings.ai.base_url = Some(sim.api_base(crate::sim::Provider::Ai));
        settings.ai.model = Some("sim-small".into());
        writeln!(
            out,
            "Agents on, against the simulator's OpenAI-compatible server (model sim-small). For a real one: [ai] base_url = \"https://api.openai.com/v1\" (or a local Ollama: http://localhost:11434/v1), api_key, model.\n"
        )?;
    }
    let app = Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let console = app.admin_port().map(|p| format!("http://127.0.0.1:{p}/"));
    let engine = app.engine();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let result = script(out, &http, &base, &engine, &sim).await;
    if keep && result.is_ok() {
        let first_run = result
            .as_ref()
            .map(|r| r.first_run.clone())
            .unwrap_or_default();
        // A config for this ledger and simulator, to look with the CLI.
        let config_path = dir.join("backstop.toml");
        let text = crate::sim::config::ready_config(
            &sim.base,
            &db_url,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        std::fs::write(&config_path, text).context("cannot write the demo's config")?;
        writeln!(out, "\nStill running (Ctrl-C to stop):")?;
        writeln!(out, "  backstop   {base}   (ledger {db_url})")?;
        if let Some(console) = &console {
            writeln!(out, "  console    {console}   (and {console}metrics)")?;
        }
        writeln!(
            out,
            "  simulator  {}   (state: {}/_sim/state)",
            sim.base, sim.base
        )?;
        writeln!(out, "Fire another alert:")?;
        writeln!(out, "  backstop sim send-alert --url {base}/webhooks/sentry --secret {SENTRY_SECRET} --identifier 1003 --started-ago 0s")?;
        writeln!(
            out,
            "Make the next rollback not help first, and watch Backstop page again and freeze storefront:"
        )?;
        writeln!(
            out,
            "  curl -s -X POST {}/_sim/recovery -H 'content-type: application/json' -d '{{\"recovers\": false}}'",
            sim.base
        )?;
        writeln!(
            out,
            "Steer it as the on-call would, from the first run's card and its PagerDuty incident:"
        )?;
        writeln!(out, "  backstop sim click --url {base}/webhooks/slack/interactions --secret {DEMO_SLACK_SIGNING_SECRET} --run {first_run} --action undo   (or hold, resume)")?;
        writeln!(out, "  backstop sim pd-event --url {base}/webhooks/pagerduty --secret {DEMO_PAGERDUTY_WEBHOOK_SECRET} --incident-key backstop/storefront/{} --event acknowledged", crate::sim::config::LIVE)?;
        writeln!(out, "Look at what it did with the CLI:")?;
        writeln!(
            out,
            "  backstop --config {} runs list",
            config_path.display()
        )?;
        writeln!(
            out,
            "  backstop --config {} deployments list",
            config_path.display()
        )?;
        writeln!(out, "New runs are shown here as they finish.")?;
        out.flush()?;
        let seen: std::collections::BTreeSet<String> = engine
            .store()
            .list_runs(1000)
            .await?
            .into_iter()
            .map(|r| r.id.0)
            .collect();
        tokio::select! {
            _ = crate::app::shutdown_signal() => {}
            r = follow(out, &engine, sim.sim.clone(), seen) => r?,
        }
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    sim.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("backstop-demo-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).context("cannot create a temporary directory")?;
    Ok(dir)
}

async fn script(
    out: &mut (dyn Write + Send),
    http: &reqwest::Client,
    base: &str,
    engine: &Engine,
    sim: &Running,
) -> anyhow::Result<DemoReport> {
    let mut report = DemoReport::default();
    writeln!(
        out,
        "Backstop demo: storefront on simulated Vercel, PagerDuty and Slack (SQLite ledger)\n"
    )?;
    feed_ledger(out, http, base).await?;

    let t0 = Instant::now();
    let alert = CrashAlert::critical("storefront-web", "1001", now_ms() - 60_000).body();
    let (status, body) = sender::deliver(
        http,
        &format!("{base}/webhooks/sentry"),
        SENTRY_SECRET,
        "metric_alert",
        &alert,
    )
    .await?;
    report.ack_ms = t0.elapsed().as_millis();
    if status != 202 {
        bail!("the alert was not accepted: HTTP {status} {body}");
    }
    let run = RunId(body["run"].as_str().unwrap_or_default().to_string());
    report.first_run = run.0.clone();
    line(
        out,
        t0,
        &format!(
            "alert acknowledged: 202 in {} ms (run {run})",
            report.ack_ms
        ),
    )?;
    let detail = wait_for(engine, &run).await?;
    timeline(out, t0, &detail, sim, &mut report)?;

    // A late delivery about an incident that started before production changed.
    let stale = CrashAlert::critical("storefront-web", "1000", now_ms() - 10 * MIN).body();
    let (status, body) = sender::deliver(
        http,
        &format!("{base}/webhooks/sentry"),
        SENTRY_SECRET,
        "metric_alert",
        &stale,
    )
    .await?;
    let stale_run = wait_for(
        engine,
        &RunId(body["run"].as_str().unwrap_or_default().into()),
    )
    .await?;
    report.stale_skipped = status == 202
        && stale_run.run.outcome == Some(Outcome::Skip)
        && stale_run
            .run
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("stale"));
    writeln!(
        out,
        "\nstale alert (started 10 min ago): {} — {}",
        stale_run.run.outcome.map_or("?", |o| o.as_str()),
        stale_run.run.reason.as_deref().unwrap_or("?")
    )?;

    // Sentry re-sends the first alert: new Request-ID and timestamp, same body.
    let (status, body) = sender::deliver(
        http,
        &format!("{base}/webhooks/sentry"),
        SENTRY_SECRET,
        "metric_alert",
        &alert,
    )
    .await?;
    report.duplicate_deduplicated = status == 200 && body["run"].as_str() == Some(run.0.as_str());
    writeln!(
        out,
        "duplicate delivery of the first alert: HTTP {status}, {} (run {})",
        body["status"].as_str().unwrap_or("?"),
        body["run"].as_str().unwrap_or("?")
    )?;
    let w = sim.sim.world();
    report.incidents = w.incidents.len();
    report.slack_messages = w.messages.len();
    writeln!(
        out,
        "\nin the end: {} alias writes, {} PagerDuty incident(s), {} Slack message(s)",
        w.alias_writes.len(),
        report.incidents,
        report.slack_messages
    )?;
    if !report.rollback_verified {
        bail!("the rollback was not verified");
    }
    Ok(report)
}

/// Feeds the ledger through signed Vercel webhooks, as production would.
async fn feed_ledger(
    out: &mut (dyn Write + Send),
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<()> {
    for (id, sha, at) in crate::sim::config::history(now_ms()) {
        let event = serde_json::json!({
            "id": format!("evt_{id}"), "type": "deployment.promoted", "createdAt": at, "region": "iad1",
            "payload": {"deployment": {"id": id, "name": "storefront", "url": format!("storefront-{}.vercel.app", &id[id.len() - 6..].to_lowercase()),
                        "meta": {"githubCommitSha": sha}}, "project": {"id": PROJECT}, "target": "production", "team": {"id": "team_demo"}}
        });
        let bytes = serde_json::to_vec(&event)?;
        let resp = http
            .post(format!("{base}/webhooks/vercel"))
            .header("content-type", "application/json")
            .header(
                "x-vercel-signature",
                sign(Digest::Sha1, VERCEL_SECRET.as_bytes(), &bytes),
            )
            .body(bytes)
            .send()
            .await?;
        if resp.status() != 200 {
            bail!("Vercel webhook refused: HTTP {}", resp.status());
        }
        let ago = (now_ms() - at) / MIN;
        writeln!(
            out,
            "ledger: deployment.promoted {id} (release {sha}) {ago} min ago"
        )?;
    }
    writeln!(
        out,
        "live: dpl_3f2c1a9live on {} and {}\n",
        DOMAINS[0], DOMAINS[1]
    )?;
    Ok(())
}

async fn wait_for(engine: &Engine, run: &RunId) -> anyhow::Result<RunDetail> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = engine.store().run_detail(run).await?;
        if matches!(d.run.status, RunStatus::Done | RunStatus::Failed) {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("run {run} did not finish in 20 s (status {})", d.run.status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Prints every run that finishes from now on (the `--keep` mode).
async fn follow(
    out: &mut (dyn Write + Send),
    engine: &Engine,
    sim: crate::sim::Sim,
    mut seen: std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    let mut shown_messages = sim.world().messages.len();
    let mut shown_incidents: std::collections::BTreeSet<String> =
        sim.world().incidents.keys().cloned().collect();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for r in engine.store().list_runs(50).await?.into_iter().rev() {
            if seen.contains(&r.id.0) || !matches!(r.status, RunStatus::Done | RunStatus::Failed) {
                continue;
            }
            seen.insert(r.id.0.clone());
            let d = engine.store().run_detail(&r.id).await?;
            writeln!(out, "\nrun {} finished ({})", r.id, r.status)?;
            decision_lines(out, &d)?;
            watch_line(out, &d)?;
        }
        {
            let w = sim.world();
            for m in &w.messages[shown_messages..] {
                message_lines(out, m)?;
            }
            shown_messages = w.messages.len();
            for (key, i) in &w.incidents {
                if shown_incidents.insert(key.clone()) {
                    writeln!(
                        out,
                        "  PagerDuty incident {} ({}): {}",
                        i.id, i.severity, i.summary
                    )?;
                }
            }
        }
        for p in engine.store().pauses().await? {
            if seen.insert(format!("pause/{}/{}", p.service, p.at_ms)) {
                writeln!(out, "  {}", super::show::pause_line(&p))?;
            }
        }
        out.flush()?;
    }
}

fn decision_lines(out: &mut (dyn Write + Send), d: &RunDetail) -> anyhow::Result<()> {
    writeln!(
        out,
        "decision: {} — {}",
        d.run.outcome.map_or("?", |o| o.as_str()),
        d.run.reason.as_deref().unwrap_or("?")
    )?;
    let decision = d
        .run
        .decision
        .clone()
        .and_then(|v| serde_json::from_value::<crate::policy::Decision>(v).ok());
    if let Some(readings) = decision.as_ref().and_then(|d| d.readings.as_ref()) {
        writeln!(
            out,
            "  release health (Sentry): {}",
            crate::notice::health_text(readings)
        )?;
    }
    for c in decision.iter().flat_map(|d| &d.checks) {
        let mark = if c.passed { "✓" } else { "✗" };
        let n = c.rule.number();
        writeln!(out, "    {mark} {n:>2} {:<22} {}", c.name, c.detail)?;
    }
    Ok(())
}

/// What the watch concluded, if the run watched. True when it recovered.
fn watch_line(out: &mut (dyn Write + Send), d: &RunDetail) -> anyhow::Result<bool> {
    let Some(w) = d.output_of(StepName::Watch) else {
        return Ok(false);
    };
    let after = w["after_ms"]
        .as_i64()
        .map(crate::clock::human_ms)
        .unwrap_or_default();
    let verdict = match w["recovered"].as_bool() {
        Some(true) => "recovered",
        Some(false) => "did NOT recover: paged again, service frozen",
        None => "could not tell",
    };
    writeln!(
        out,
        "  watch: {verdict} {after} after the rollback ({})",
        w["look"].as_str().unwrap_or("?")
    )?;
    Ok(w["recovered"].as_bool() == Some(true))
}

fn message_lines(out: &mut (dyn Write + Send), m: &crate::sim::Message) -> anyhow::Result<()> {
    match &m.thread_ts {
        Some(parent) => {
            writeln!(out, "  Slack {} reply in thread {parent}:", m.channel)?;
            for l in m.text.lines() {
                writeln!(out, "    | {l}")?;
            }
        }
        None => {
            writeln!(out, "  Slack {} ts {}:", m.channel, m.ts)?;
            for l in
                Notice::card_as_text(m.blocks.as_array().map(Vec::as_slice).unwrap_or_default())
                    .lines()
            {
                writeln!(out, "    | {l}")?;
            }
        }
    }
    Ok(())
}

fn line(out: &mut (dyn Write + Send), t0: Instant, text: &str) -> std::io::Result<()> {
    writeln!(
        out,
        "[{:>6.1} ms] {text}",
        t0.elapsed().as_secs_f64() * 1000.0
    )
}

fn timeline(
    out: &mut (dyn Write + Send),
    t0: Instant,
    d: &RunDetail,
    sim: &Running,
    report: &mut DemoReport,
) -> anyhow::Result<()> {
    decision_lines(out, d)?;
    report.health_read = d
        .run
        .decision
        .as_ref()
        .is_some_and(|v| v["readings"]["live"].is_object());
    let w = sim.sim.world();
    for write in &w.alias_writes {
        writeln!(out, "  {} re-aliased to {}", write.domain, write.deployment)?;
    }
    let verified = d
        .output_of(StepName::Rollback)
        .cloned()
        .unwrap_or(Value::Null);
    for dom in verified["domains"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  verified: {} serves {}",
            dom["domain"].as_str().unwrap_or("?"),
            dom["deployment"].as_str().unwrap_or("?")
        )?;
    }
    report.rollback_verified = DOMAINS
        .iter()
        .all(|dom| w.aliases.get(*dom).map(String::as_str) == Some("dpl_9be1c07good"));
    report.alert_to_verified_ms = verified["alert_to_verified_ms"].as_i64();
    for i in w.incidents.values() {
        writeln!(
            out,
            "  PagerDuty incident {} ({}): {}",
            i.id, i.severity, i.summary
        )?;
    }
    for m in &w.messages {
        message_lines(out, m)?;
    }
    report.recovered = watch_line(out, d)?;
    let took = report
        .alert_to_verified_ms
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "not verified".into());
    line(
        out,
        t0,
        &format!("alert → verified rollback: {took}; run {}", d.run.status),
    )?;
    Ok(())
}
