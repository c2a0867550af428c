//! Printing ledger records for people (tables, explanations) and machines (`--json`).

use std::fmt::Write as _;

use crate::ledger::{Deployment, Pause, PauseEvent, Run, RunDetail};
use crate::policy::Decision;

fn time(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .map(|t| {
        let fmt =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
        t.format(&fmt).unwrap_or_default()
    })
    .unwrap_or_else(|| "-".into())
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Why a service is held back, for people.
pub fn pause_line(p: &Pause) -> String {
    match (&p.frozen_by_run, &p.by) {
        (Some(run), _) => format!(
            "{}: FROZEN since {} by run {run}: {} (`backstop resume {}` lifts it)",
            p.service,
            time(Some(p.at_ms)),
            p.reason,
            p.service
        ),
        (None, by) => format!(
            "{}: paused since {} by {}: {}",
            p.service,
            time(Some(p.at_ms)),
            by.as_deref().unwrap_or("a person"),
            p.reason
        ),
    }
}

/// `backstop pauses`: who held, resumed or froze which service, and when.
pub fn pause_log(log: &[PauseEvent], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&log);
    }
    if log.is_empty() {
        println!("no service has been held or resumed");
        return Ok(());
    }
    println!(
        "{:<20} {:<14} {:<7} {:<24} WHY",
        "WHEN", "SERVICE", "ACTION", "BY"
    );
    for e in log {
        println!(
            "{:<20} {:<14} {:<7} {:<24} {}",
            time(Some(e.at_ms)),
            e.service,
            e.action,
            e.by.as_deref().unwrap_or("-"),
            e.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `backstop deployments list`: the ledger, then the services held back
/// from automatic rollbacks.
pub fn deployments(list: &[Deployment], pauses: &[Pause], json: bool) -> anyhow::Result<()> {
    if json {
        // Each deployment says whether its service is held back, and how
        // (the array stays an array of deployments for scripts).
        #[derive(serde::Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            deployment: &'a Deployment,
            held: Option<&'a Pause>,
        }
        let rows: Vec<Row> = list
            .iter()
            .map(|d| Row {
                deployment: d,
                held: pauses.iter().find(|p| p.service == d.service),
            })
            .collect();
        return print_json(&rows);
    }
    let held = || {
        for p in pauses {
            println!("{}", pause_line(p));
        }
    };
    if list.is_empty() {
        println!("no deployments recorded; run `backstop sync` or point a Vercel webhook at /webhooks/vercel");
        held();
        return Ok(());
    }
    println!(
        "{:<32} {:<14} {:<12} {:<9} {:<20} {:<20} LIVE",
        "DEPLOYMENT", "SERVICE", "RELEASE", "VERDICT", "PROMOTED", "SUPERSEDED"
    );
    for d in list {
        let release: String = d
            .release
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(12)
            .collect();
        println!(
            "{:<32} {:<14} {:<12} {:<9} {:<20} {:<20} {}",
            d.id,
            d.service,
            release,
            d.verdict.as_str(),
            time(d.promoted_at_ms),
            time(d.superseded_at_ms),
            if d.live { "yes" } else { "" }
        );
    }
    if !pauses.is_empty() {
        println!();
        held();
    }
    Ok(())
}

/// `backstop runs list`
pub fn runs_list(runs: &[Run], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&runs);
    }
    if runs.is_empty() {
        println!("no runs yet");
        return Ok(());
    }
    println!(
        "{:<36} {:<20} {:<14} {:<8} {:<11} REASON",
        "RUN", "RECEIVED", "SERVICE", "STATUS", "OUTCOME"
    );
    for r in runs {
        println!(
            "{:<36} {:<20} {:<14} {:<8} {:<11} {}",
            r.id,
            time(Some(r.created_at_ms)),
            r.service.as_deref().unwrap_or("-"),
            r.status,
            r.outcome.map_or("-", |o| o.as_str()),
            r.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// `backstop runs show`
pub fn run_detail(d: &RunDetail, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(d);
    }
    print!("{}", explain(d));
    Ok(())
}

/// The human explanation of a run.
pub fn explain(d: &RunDetail) -> String {
    let r = &d.run;
    let mut out = String::new();
    let _ = writeln!(out, "run {}  ({})", r.id, r.status);
    let _ = writeln!(
        out,
        "alert      {} `{}` received {}",
        d.dedup_key,
        d.action,
        time(Some(r.created_at_ms))
    );
    let _ = writeln!(
        out,
        "service    {}",
        r.service.as_deref().unwrap_or("(unmapped)")
    );
    let _ = writeln!(
        out,
        "outcome    {}: {}",
        r.outcome.map_or("(undecided)", |o| o.as_str()),
        r.reason.as_deref().unwrap_or("-")
    );
    if let Some(decision) = r
        .decision
        .as_ref()
        .and_then(|v| serde_json::from_value::<Decision>(v.clone()).ok())
    {
        if let Some(live) = &decision.live {
            let _ = writeln!(
                out,
                "live       {} (release {})",
                live.id,
                live.release.as_deref().unwrap_or("?")
            );
        }
        if let Some(target) = &decision.target {
            let _ = writeln!(
                out,
                "target     {} (release {})",
                target.id,
                target.release.as_deref().unwrap_or("?")
            );
        }
        if let Some(readings) = &decision.readings {
            let _ = writeln!(out, "health     {}", crate::notice::health_text(readings));
        }
        let _ = writeln!(out, "checks");
        for c in &decision.checks {
            let mark = if c.passed { "pass" } else { "STOP" };
            let n = c.rule.number();
            let _ = writeln!(out, "  {n:>2} {mark} {:<22} {}", c.name, c.detail);
        }
    }
    let _ = writeln!(out, "steps");
    for s in &d.steps {
        let _ = writeln!(
            out,
            "  {:<9} {:<10} attempts {}  finished {}",
            s.name,
            s.status,
            s.attempts,
            time(s.finished_at_ms)
        );
        if let Some(err) = &s.error {
            let _ = writeln!(out, "            error: {}", err.message);
        }
        for a in d.attempts.iter().filter(|a| a.step == s.name) {
            let took = a
                .finished_at_ms
                .map(|f| format!("{} ms", f - a.started_at_ms))
                .unwrap_or_else(|| "unfinished".into());
            let err = a.error.as_ref().map_or("", |e| e.message.as_str());
            let _ = writeln!(
                out,
                "      #{} {:<9} {:<10} {}",
                a.attempt,
                a.outcome.map_or("in flight", |o| o.as_str()),
                took,
                err
            );
        }
    }
    if !d.notes.is_empty() {
        let _ = writeln!(out, "notes");
        for n in &d.notes {
            let _ = writeln!(out, "  {} {:<7} {}", time(Some(n.at_ms)), n.kind, n.text);
        }
    }
    if let Some(p) = &d.pause {
        let _ = writeln!(out, "service    {}", pause_line(p));
    }
    out
}
