//! What the console reads: runs a page at a time, and a token that changes
//! whenever something it shows changed (so an open page knows to reload).

use super::dialect::Sql;
use super::records::*;
use super::rows::{self, RUN_COLS};
use super::{Store, StoreError};

/// Which runs a console page shows.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this service.
    pub service: Option<String>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// Only runs older than this one (the next page).
    pub before: Option<RunId>,
    /// Only runs received at or after this time, Unix ms.
    pub since_ms: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

impl Store {
    /// Runs newest first (run ids are time-ordered), filtered; indexed by
    /// id, and by service and id.
    pub async fn runs_page(&self, f: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let mut sql = Sql::new(format!("SELECT {RUN_COLS} FROM runs WHERE 1 = 1"));
        if let Some(service) = &f.service {
            sql.push(" AND service = ").bind(service.clone());
        }
        if let Some(outcome) = f.outcome {
            sql.push(" AND outcome = ")
                .bind(outcome.as_str().to_string());
        }
        if let Some(before) = &f.before {
            sql.push(" AND id < ").bind(before.0.clone());
        }
        if let Some(since) = f.since_ms {
            sql.push(" AND created_at >= ").bind(since);
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(f.limit.clamp(1, 500));
        let (text, args) = sql.build()?;
        let rows = sqlx::query_with(&text, args).fetch_all(&self.pool).await?;
        rows.iter().map(rows::run).collect()
    }

    /// Changes whenever a run is added or changes status, a deployment
    /// changes, or a service is paused or resumed.
    pub async fn changes_token(&self) -> Result<String, StoreError> {
        let row: (Option<String>, i64, i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT MAX(id) FROM runs),
                    (SELECT COUNT(*) FROM runs WHERE status IN ($1, $2, $3)),
                    (SELECT COUNT(*) FROM run_notes),
                    (SELECT MAX(updated_at) FROM deployments),
                    (SELECT COUNT(*) FROM service_pauses)",
        )
        .bind(RunStatus::Pending.as_str())
        .bind(RunStatus::Running.as_str())
        .bind(RunStatus::Watching.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(format!(
            "{}.{}.{}.{}.{}",
            row.0.unwrap_or_default(),
            row.1,
            row.2,
            row.3.unwrap_or_default(),
            row.4
        ))
    }
}
