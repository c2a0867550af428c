//! `backstop test-alert FILE [--dry-run] [--yes]`: the real decision on a
//! sample Sentry webhook body (no signature needed), against the configured
//! ledger and live Vercel state. Prints the outcome, every check, and the
//! exact calls it would make; without `--dry-run` it then acts, after
//! asking. A dry run only reads.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::app;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::engine::Engine;
use crate::ingest::sentry::{self, Resource};
use crate::ledger::{Ingested, NewAlert};
use crate::policy::map_service;

/// Options of the command.
pub struct Options<'a> {
    /// The webhook body.
    pub file: &'a Path,
    /// Decide only.
    pub dry_run: bool,
    /// Skip the confirmation.
    pub yes: bool,
}

/// Runs the command, printing to `out` and reading a confirmation from `input`.
pub async fn run(
    settings: Settings,
    opts: Options<'_>,
    out: &mut dyn Write,
    input: &mut dyn BufRead,
) -> anyhow::Result<()> {
    let body = std::fs::read_to_string(opts.file)
        .with_context(|| format!("cannot read {}", opts.file.display()))?;
    let v: Value = serde_json::from_str(&body)
        .with_context(|| format!("{} is not JSON", opts.file.display()))?;
    let resource = if v.pointer("/data/metric_alert").is_some() {
        "metric_alert"
    } else if v.pointer("/data/event").is_some() {
        "event_alert"
    } else {
        bail!(
            "{} is neither a metric alert (data.metric_alert) nor an issue alert (data.event)",
            opts.file.display()
        );
    };
    let alert = sentry::parse(
        Resource::from_header(resource).unwrap_or(Resource::MetricAlert),
        body.as_bytes(),
    )?;
    let store = app::open_store(&settings).await?;
    let providers = app::providers(&settings)?;
    let service = map_service(&alert, &settings.policies()).map(|s| s.name.to_string());
    let engine = Engine::new(store.clone(), Arc::new(settings), providers)?;
    let decision = engine
        .preview(resource, &body)
        .await
        .map_err(|e| anyhow::anyhow!("cannot decide: {e}"))?;

    writeln!(
        out,
        "outcome: {} (rule {}) — {}",
        decision.outcome.as_str(),
        decision.rule.number(),
        decision.reason
    )?;
    for c in &decision.checks {
        writeln!(
            out,
            "  {:>2} {} {:<22} {}",
            c.rule.number(),
            if c.passed { "pass" } else { "STOP" },
            c.name,
            c.detail
        )?;
    }
    let calls = engine.planned_calls(&decision);
    writeln!(
        out,
        "\ncalls it would make:{}",
        if calls.is_empty() { " none" } else { "" }
    )?;
    for c in &calls {
        writeln!(out, "  {c}")?;
    }
    if opts.dry_run || calls.is_empty() {
        writeln!(out, "\ndry run: nothing was changed")?;
        return Ok(());
    }
    if !opts.yes {
        write!(out, "\nAct on this now? Type `yes` to proceed: ")?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if answer.trim() != "yes" {
            writeln!(out, "not confirmed: nothing was changed")?;
            return Ok(());
        }
    }
    // Its own run, so a later real delivery of the same alert is not a duplicate.
    let new = NewAlert {
        dedup_key: format!(
            "test-alert:{}:{}",
            alert.dedup_key(),
            uuid::Uuid::now_v7().simple()
        ),
        resource: resource.into(),
        action: alert.action.clone(),
        service,
        body,
        received_at_ms: now_ms(),
        decided: None,
    };
    let run = match store.ingest_alert(&new).await? {
        Ingested::Stored(run) | Ingested::Duplicate(run) => run,
    };
    // Only this run: a rehearsal never executes other alerts' runs.
    engine.run_one(&run).await?;
    write!(out, "\n{}", super::explain(&store.run_detail(&run).await?))?;
    Ok(())
}
