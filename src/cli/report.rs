//! `backstop report`: how right the decisions were (see `policy::score`),
//! per service; and `backstop sample-alert`: a Sentry alert to rehearse
//! with.

use std::io::Write;

use crate::config::Settings;
use crate::ledger::Store;
use crate::policy::Report;

/// Every service's record since `since_ms` (one service, or all configured).
pub async fn reports(
    store: &Store,
    settings: &Settings,
    service: Option<&str>,
    since_ms: i64,
) -> anyhow::Result<Vec<Report>> {
    let scores = store.scores(service, since_ms).await?;
    let names: Vec<&str> = match service {
        Some(s) => vec![s],
        None => settings.services.iter().map(|s| s.name.as_str()).collect(),
    };
    Ok(names
        .into_iter()
        .map(|name| {
            let of: Vec<_> = scores
                .iter()
                .filter(|s| s.service == name)
                .filter_map(|s| s.parsed())
                .collect();
            Report::of(name, &of)
        })
        .collect())
}

/// Prints the reports as a table, or JSON.
pub fn print(out: &mut dyn Write, reports: &[Report], json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(reports)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:>9} {:>8} {:>9} {:>9} {:>12} {:>12} {:>9} {:>13}  RECOMMENDATION",
        "SERVICE",
        "DECISIONS",
        "DRY RUNS",
        "ROLLBACKS",
        "CONFIRMED",
        "FALSE ALARMS",
        "UNDETERMINED",
        "PRECISION",
        "MEDIAN SAVED"
    )?;
    for r in reports {
        writeln!(
            out,
            "{:<16} {:>9} {:>8} {:>9} {:>9} {:>12} {:>12} {:>9} {:>13}  {}",
            r.service,
            r.decisions,
            r.dry_runs,
            r.rollbacks,
            r.confirmed,
            r.false_alarms,
            r.undetermined,
            r.precision
                .map(|p| format!("{:.0}%", p * 100.0))
                .unwrap_or_else(|| "-".into()),
            r.median_minutes_saved
                .map(|m| format!("{m} min"))
                .unwrap_or_else(|| "-".into()),
            r.recommendation
        )?;
    }
    Ok(())
}

/// A metric alert for `service`'s first project and environment, shaped as
/// Sentry sends it today, ready for `backstop test-alert FILE --dry-run`.
pub fn sample_alert(
    settings: &Settings,
    service: &str,
    action: &str,
    started_ago_ms: i64,
) -> anyhow::Result<serde_json::Value> {
    let svc = settings.service(service).ok_or_else(|| {
        let names: Vec<_> = settings.services.iter().map(|s| s.name.as_str()).collect();
        anyhow::anyhow!(
            "no service named `{service}` in the config (known: {})",
            names.join(", ")
        )
    })?;
    if !matches!(action, "critical" | "warning" | "resolved") {
        anyhow::bail!("--action must be critical, warning or resolved");
    }
    let project = svc
        .sentry_projects
        .first()
        .ok_or_else(|| anyhow::anyhow!("service `{service}` lists no Sentry project"))?;
    let mut alert = crate::sim::sender::CrashAlert::critical(
        project,
        &format!("{}", crate::clock::now_ms() / 1000),
        crate::clock::now_ms() - started_ago_ms,
    );
    alert.action = action.into();
    alert.environment = Some(svc.environment.clone());
    Ok(alert.body())
}
