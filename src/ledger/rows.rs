//! Reading rows into records. Stored spellings are parsed by their enums;
//! anything unreadable is `Corrupt`, never a panic.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::records::*;
use super::StoreError;

/// Columns of a deployment row, in [`deployment`]'s order.
pub const DEPLOYMENT_COLS: &str = "id, service, url, release, created_at, promoted_at, superseded_at, live, verdict, verdict_reason, alerted_at";
/// Columns of a run row, in [`run`]'s order.
pub const RUN_COLS: &str = "id, alert_id, service, status, outcome, reason, decision, rollback_from, rollback_to, created_at, decided_at, finished_at";
/// Columns of a step row.
pub const STEP_COLS: &str = "name, seq, status, attempts, output, error, started_at, finished_at";

fn parsed<T>(row: &AnyRow, col: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    let text: String = row.try_get(col)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{col} `{text}`")))
}

fn parsed_opt<T>(
    row: &AnyRow,
    col: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| parse(&t).ok_or_else(|| StoreError::Corrupt(format!("{col} `{t}`"))))
        .transpose()
}

/// A JSON column, parsed.
pub fn json<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    col: &str,
) -> Result<Option<T>, StoreError> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

/// A deployment row.
pub fn deployment(row: &AnyRow) -> Result<Deployment, StoreError> {
    Ok(Deployment {
        id: row.try_get("id")?,
        service: row.try_get("service")?,
        url: row.try_get("url")?,
        release: row.try_get("release")?,
        created_at_ms: row.try_get("created_at")?,
        promoted_at_ms: row.try_get("promoted_at")?,
        superseded_at_ms: row.try_get("superseded_at")?,
        live: row.try_get::<i64, _>("live")? == 1,
        verdict: parsed(row, "verdict", Verdict::parse)?,
        verdict_reason: row.try_get("verdict_reason")?,
        alerted_at_ms: row.try_get("alerted_at")?,
    })
}

/// A run row.
pub fn run(row: &AnyRow) -> Result<Run, StoreError> {
    Ok(Run {
        id: RunId(row.try_get("id")?),
        alert_id: row.try_get("alert_id")?,
        service: row.try_get("service")?,
        status: parsed(row, "status", RunStatus::parse)?,
        outcome: parsed_opt(row, "outcome", Outcome::parse)?,
        reason: row.try_get("reason")?,
        decision: json(row, "decision")?,
        rollback_from: row.try_get("rollback_from")?,
        rollback_to: row.try_get("rollback_to")?,
        created_at_ms: row.try_get("created_at")?,
        decided_at_ms: row.try_get("decided_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

/// A step row.
pub fn step(row: &AnyRow) -> Result<Step, StoreError> {
    Ok(Step {
        name: parsed(row, "name", StepName::parse)?,
        seq: row.try_get("seq")?,
        status: parsed(row, "status", StepStatus::parse)?,
        attempts: row.try_get("attempts")?,
        output: json(row, "output")?,
        error: json(row, "error")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

/// An attempt row.
pub fn attempt(row: &AnyRow) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        step: parsed(row, "step", StepName::parse)?,
        attempt: row.try_get("attempt")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        outcome: parsed_opt(row, "outcome", AttemptOutcome::parse)?,
        error: json(row, "error")?,
    })
}
