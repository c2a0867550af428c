//! Steps and their attempts, every write fenced by the run's claim.

use sqlx::Row;

use super::dialect::Sql;
use super::records::*;
use super::{Store, StoreError};
use crate::clock::now_ms;

impl Store {
    /// Records the start of a step attempt; returns its number and when the
    /// step first started (Unix ms), for the step's deadline.
    pub async fn begin_attempt(
        &self,
        claim: &Claim,
        step: StepName,
    ) -> Result<(i64, i64), StoreError> {
        let now = now_ms();
        let mut sql = Sql::new(
            "UPDATE steps SET attempts = attempts + 1, started_at = COALESCE(started_at, ",
        );
        sql.bind(now)
            .push(") WHERE run_id = ")
            .bind(claim.run.0.clone())
            .push(" AND name = ")
            .bind(step.as_str().to_string())
            .push(" AND ")
            .push_held(self.backend, claim)
            .push(" RETURNING attempts, started_at");
        let one = self.backend.one_statement_writes();
        if one {
            // One round trip: count the attempt and record it together.
            let (text, args) = sql.build()?;
            let text = format!(
                "WITH s AS ({text}) INSERT INTO attempts (run_id, step, attempt, started_at)
                 SELECT ${run}, ${step}, attempts, ${now} FROM s
                 RETURNING attempt AS attempts, (SELECT started_at FROM s) AS started_at",
                now = 1,
                run = 2,
                step = 3,
            );
            let row = sqlx::query_with(&text, args)
                .fetch_optional(&self.pool)
                .await?;
            return match row {
                Some(row) => Ok((row.try_get("attempts")?, row.try_get("started_at")?)),
                None => Err(self.why_not_written(claim, step).await),
            };
        }
        let (text, args) = sql.build()?;
        let Some(row) = sqlx::query_with(&text, args)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Err(self.why_not_written(claim, step).await);
        };
        let (attempt, started): (i64, i64) = (row.try_get("attempts")?, row.try_get("started_at")?);
        // Not in one transaction: if the process dies between the two
        // statements the attempt is counted without a row, which only
        // understates. SQLite has one writer, so no takeover interleaves.
        sqlx::query(
            "INSERT INTO attempts (run_id, step, attempt, started_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&claim.run.0)
        .bind(step.as_str())
        .bind(attempt)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((attempt, started))
    }

    /// Records how an attempt ended.
    pub async fn finish_attempt(
        &self,
        claim: &Claim,
        step: StepName,
        attempt: i64,
        outcome: AttemptOutcome,
        error: Option<&StepError>,
    ) -> Result<(), StoreError> {
        let mut sql = Sql::new("UPDATE attempts SET finished_at = ");
        sql.bind(now_ms())
            .push(", outcome = ")
            .bind(outcome.as_str().to_string())
            .push(", error = ")
            .bind(error.map(envelope))
            .push(" WHERE run_id = ")
            .bind(claim.run.0.clone())
            .push(" AND step = ")
            .bind(step.as_str().to_string())
            .push(" AND attempt = ")
            .bind(attempt)
            .push(" AND ")
            .push_held(self.backend, claim);
        self.fenced(sql, claim, step).await
    }

    /// Finishes a step for good.
    pub async fn finish_step(
        &self,
        claim: &Claim,
        step: StepName,
        status: StepStatus,
        output: Option<&serde_json::Value>,
        error: Option<&StepError>,
    ) -> Result<(), StoreError> {
        let mut sql = Sql::new("UPDATE steps SET status = ");
        sql.bind(status.as_str().to_string())
            .push(", output = ")
            .bind(output.map(|o| o.to_string()))
            .push(", error = ")
            .bind(error.map(envelope))
            .push(", finished_at = ")
            .bind(now_ms())
            .push(" WHERE run_id = ")
            .bind(claim.run.0.clone())
            .push(" AND name = ")
            .bind(step.as_str().to_string())
            .push(" AND ")
            .push_held(self.backend, claim);
        self.fenced(sql, claim, step).await
    }

    /// Runs a fenced update that must change one row.
    async fn fenced(&self, sql: Sql, claim: &Claim, step: StepName) -> Result<(), StoreError> {
        let (text, args) = sql.build()?;
        let done = sqlx::query_with(&text, args).execute(&self.pool).await?;
        match done.rows_affected() {
            0 => Err(self.why_not_written(claim, step).await),
            _ => Ok(()),
        }
    }

    /// After a fenced write changed nothing: the claim was lost, or the
    /// step does not exist.
    async fn why_not_written(&self, claim: &Claim, step: StepName) -> StoreError {
        let held: Result<Option<i64>, _> = sqlx::query_scalar(
            "SELECT fence FROM runs WHERE id = $1 AND fence = $2 AND status = $3",
        )
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .fetch_optional(&self.pool)
        .await;
        match held {
            Ok(Some(_)) => StoreError::NotFound(format!("step {step} of run {}", claim.run)),
            Ok(None) => StoreError::LostClaim(claim.run.clone()),
            Err(e) => e.into(),
        }
    }
}

fn envelope(e: &StepError) -> String {
    serde_json::to_string(e).unwrap_or_default()
}
