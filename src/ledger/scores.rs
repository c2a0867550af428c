//! Scores of dry runs and rollbacks (see `policy::score`): which runs still
//! wait for one, and the scores themselves, for `backstop report`.

use sqlx::Row;

use super::records::*;
use super::rows::{self, RUN_COLS};
use super::{Store, StoreError};
use crate::clock::now_ms;

/// A stored score.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScore {
    /// The run scored.
    pub run: RunId,
    /// Its service.
    pub service: String,
    /// Its outcome (`dry-run` or `rollback`).
    pub outcome: String,
    /// The verdict, as `policy::Score` JSON.
    pub score: serde_json::Value,
    /// When it was decided, Unix ms.
    pub decided_at_ms: i64,
}

impl StoredScore {
    /// The decision's outcome and its verdict, when both read back.
    pub fn parsed(&self) -> Option<(Outcome, crate::policy::Score)> {
        let outcome = Outcome::parse(&self.outcome)?;
        Some((outcome, serde_json::from_value(self.score.clone()).ok()?))
    }
}

/// How long a claim to tell a score holds before another instance may
/// take it over, ms.
const TELL_CLAIM_MS: i64 = 60_000;

impl Store {
    /// Dry runs and rollbacks of `service` decided since `since_ms` that
    /// have no score yet, oldest first.
    pub async fn unscored(
        &self,
        service: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs r WHERE service = $1 AND outcome IN ($2, $3) AND decided_at >= $4
               AND NOT EXISTS (SELECT 1 FROM scores s WHERE s.run_id = r.id)
             ORDER BY decided_at LIMIT $5"
        ))
        .bind(service)
        .bind(Outcome::DryRun.as_str())
        .bind(Outcome::Rollback.as_str())
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::run).collect()
    }

    /// Stores a run's score, once: true when this call stored it.
    pub async fn save_score(
        &self,
        run: &Run,
        verdict: &str,
        score: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO scores (run_id, service, outcome, verdict, score, decided_at, scored_at, tell_claimed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(&run.id.0)
        .bind(run.service.as_deref().unwrap_or_default())
        .bind(run.outcome.map(|o| o.as_str()).unwrap_or_default())
        .bind(verdict)
        .bind(score.to_string())
        .bind(run.decided_at_ms.unwrap_or_else(now_ms))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Runs of `service` scored since `since_ms` whose reply has not reached
    /// the thread and that nobody is telling now (`now_ms`), oldest first.
    pub async fn untold(
        &self,
        service: &str,
        since_ms: i64,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<RunId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT run_id FROM scores WHERE service = $1 AND told_at IS NULL AND scored_at >= $2
               AND (tell_claimed_at IS NULL OR tell_claimed_at < $3) ORDER BY scored_at LIMIT $4",
        )
        .bind(service)
        .bind(since_ms)
        .bind(now_ms - TELL_CLAIM_MS)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(RunId).collect())
    }

    /// Takes the telling of a run's score: true when this caller may tell
    /// it (not told, and nobody else telling it).
    pub async fn claim_tell(&self, run: &RunId, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE scores SET tell_claimed_at = $1 WHERE run_id = $2 AND told_at IS NULL
               AND (tell_claimed_at IS NULL OR tell_claimed_at < $3)",
        )
        .bind(now_ms)
        .bind(&run.0)
        .bind(now_ms - TELL_CLAIM_MS)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Lets go of the telling (it failed): the next sweep anywhere takes it.
    pub async fn release_tell(&self, run: &RunId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scores SET tell_claimed_at = NULL WHERE run_id = $1 AND told_at IS NULL",
        )
        .bind(&run.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A run's verdict, when it was scored.
    pub async fn score_of(&self, run: &RunId) -> Result<Option<crate::policy::Score>, StoreError> {
        let score: Option<String> =
            sqlx::query_scalar("SELECT score FROM scores WHERE run_id = $1")
                .bind(&run.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(score.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// The score's reply reached the thread (or there was nothing to tell).
    pub async fn score_told(&self, run: &RunId) -> Result<(), StoreError> {
        sqlx::query("UPDATE scores SET told_at = $1 WHERE run_id = $2 AND told_at IS NULL")
            .bind(now_ms())
            .bind(&run.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Scores of decisions made since `since_ms` (of one service, or all).
    pub async fn scores(
        &self,
        service: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<StoredScore>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, service, outcome, score, decided_at FROM scores
             WHERE ($1 IS NULL OR service = $1) AND decided_at >= $2 ORDER BY decided_at",
        )
        .bind(service)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredScore {
                    run: RunId(r.try_get("run_id")?),
                    service: r.try_get("service")?,
                    outcome: r.try_get("outcome")?,
                    score: rows::json(r, "score")?.unwrap_or_default(),
                    decided_at_ms: r.try_get("decided_at")?,
                })
            })
            .collect()
    }
}
