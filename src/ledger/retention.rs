//! Retention: finished runs (with their alerts, steps, attempts, notes,
//! scores and pages) are pruned after `retention.runs`; runs the alert
//! alone settled (unmapped, warnings, not a crash rule) after
//! `retention.settled_alerts`; delivery ids after the providers stop
//! retrying. In small batches, each a short transaction, so ingest never
//! waits. Never pruned: deployments and their verdicts, unfinished runs,
//! pauses and freezes (and the run a freeze names), rollbacks away from a
//! deployment that is live (rule 8 reads them), and anything younger than
//! a day or the longest cooldown (rules 17 and 18 count those).

use std::time::Duration;

use sqlx::Row;

use super::records::*;
use super::{Store, StoreError};

/// What to keep, in force.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Finished runs younger than this stay.
    pub runs: Duration,
    /// Runs the alert alone settled younger than this stay.
    pub settled: Duration,
    /// The longest cooldown of any service (its rollbacks stay).
    pub cooldown: Duration,
}

/// The least anything is kept: the decision counts a day of rollbacks, and
/// providers re-send for up to a day (Vercel) or two (PagerDuty).
pub const FLOOR: Duration = Duration::from_secs(86_400);

impl Keep {
    /// The cut-offs, Unix ms: (runs, settled runs).
    fn cutoffs(&self, now_ms: i64) -> (i64, i64) {
        let floor = FLOOR.max(self.cooldown);
        let runs = self.runs.max(floor).as_millis() as i64;
        let settled = self.settled.max(floor).as_millis() as i64;
        (now_ms - runs, now_ms - settled)
    }
}

/// What one pass removed (or, dry, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Runs, with their alerts, steps, attempts, notes, scores and pages.
    pub runs: u64,
    /// Vercel and PagerDuty delivery ids past their providers' retries.
    pub deliveries: u64,
}

impl Store {
    /// The next `batch` runs that may go, oldest first, after the run
    /// `after`: walked in primary-key order (run ids are time-ordered), so
    /// a batch costs the same at the millionth run as at the first. (The
    /// status test is written so no planner prefers the status index and
    /// sorts every run.)
    async fn prunable(
        &self,
        keep: &Keep,
        now_ms: i64,
        after: &str,
        batch: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let (runs_cut, settled_cut) = keep.cutoffs(now_ms);
        let rows = sqlx::query(
            "SELECT r.id, r.alert_id FROM runs r
             WHERE r.id > $7 AND (r.status || '') IN ($1, $2)
               AND (r.created_at < $3
                    OR (r.created_at < $4 AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.name <> $5)))
               AND NOT EXISTS (SELECT 1 FROM service_pauses p WHERE p.frozen_by_run = r.id)
               AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.live = 1 AND d.id = r.rollback_from)
             ORDER BY r.id LIMIT $6",
        )
        .bind(RunStatus::Done.as_str())
        .bind(RunStatus::Failed.as_str())
        .bind(runs_cut)
        .bind(settled_cut)
        .bind(StepName::Decide.as_str())
        .bind(batch)
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("alert_id")?)))
            .collect()
    }

    /// One batch: removes up to `batch` runs in one short transaction;
    /// returns how many went (0: nothing left to prune).
    pub async fn prune_batch(
        &self,
        keep: &Keep,
        now_ms: i64,
        batch: i64,
    ) -> Result<u64, StoreError> {
        Ok(self.prune_after(keep, now_ms, "", batch).await?.0)
    }

    /// One batch of the runs after `after` (in id order): how many went,
    /// and where the next batch starts.
    pub async fn prune_after(
        &self,
        keep: &Keep,
        now_ms: i64,
        after: &str,
        batch: i64,
    ) -> Result<(u64, String), StoreError> {
        let victims = self.prunable(keep, now_ms, after, batch).await?;
        let Some((last, _)) = victims.last() else {
            return Ok((0, after.to_string()));
        };
        let last = last.clone();
        let list = |n: usize, from: usize| {
            (0..n)
                .map(|i| format!("${}", from + i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut tx = self.pool.begin().await?;
        // Still finished now, inside the transaction (and locked by this
        // write): a run a button press reopened meanwhile stays.
        let all: Vec<&str> = victims.iter().map(|(r, _)| r.as_str()).collect();
        let sql = format!(
            "UPDATE runs SET status = status WHERE id IN ({}) AND status IN (${}, ${}) RETURNING id",
            list(all.len(), 1),
            all.len() + 1,
            all.len() + 2
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for id in &all {
            q = q.bind(*id);
        }
        let still: Vec<String> = q
            .bind(RunStatus::Done.as_str())
            .bind(RunStatus::Failed.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let ids: Vec<&str> = all
            .iter()
            .copied()
            .filter(|id| still.iter().any(|s| s == id))
            .collect();
        let alerts: Vec<&str> = victims
            .iter()
            .filter(|(r, _)| ids.contains(&r.as_str()))
            .map(|(_, a)| a.as_str())
            .collect();
        if ids.is_empty() {
            return Ok((0, last));
        }
        for (table, col) in [
            ("attempts", "run_id"),
            ("steps", "run_id"),
            ("run_notes", "run_id"),
            ("scores", "run_id"),
            ("pages", "run_id"),
            ("runs", "id"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE {col} IN ({})",
                list(ids.len(), 1)
            );
            let mut q = sqlx::query(&sql);
            for id in &ids {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        let sql = format!("DELETE FROM alerts WHERE id IN ({})", list(alerts.len(), 1));
        let mut q = sqlx::query(&sql);
        for id in &alerts {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((ids.len() as u64, last))
    }

    /// How many runs one pass would remove now.
    pub async fn count_prunable(&self, keep: &Keep, now_ms: i64) -> Result<u64, StoreError> {
        let (runs_cut, settled_cut) = keep.cutoffs(now_ms);
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM runs r
             WHERE (r.status || '') IN ($1, $2)
               AND (r.created_at < $3
                    OR (r.created_at < $4 AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.name <> $5)))
               AND NOT EXISTS (SELECT 1 FROM service_pauses p WHERE p.frozen_by_run = r.id)
               AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.live = 1 AND d.id = r.rollback_from)",
        )
        .bind(RunStatus::Done.as_str())
        .bind(RunStatus::Failed.as_str())
        .bind(runs_cut)
        .bind(settled_cut)
        .bind(StepName::Decide.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// Delivery ids past their providers' retries (Vercel retries for a
    /// day, PagerDuty for two): kept three days. Returns how many went
    /// (or, dry, would).
    pub async fn prune_deliveries(&self, now_ms: i64, dry_run: bool) -> Result<u64, StoreError> {
        let cut = now_ms - 3 * FLOOR.as_millis() as i64;
        let mut n = 0;
        for (table, col) in [
            ("vercel_events", "received_at"),
            ("provider_events", "received_at"),
        ] {
            n += match dry_run {
                true => {
                    let c: i64 = sqlx::query_scalar(&format!(
                        "SELECT COUNT(*) FROM {table} WHERE {col} < $1"
                    ))
                    .bind(cut)
                    .fetch_one(&self.pool)
                    .await?;
                    c as u64
                }
                false => sqlx::query(&format!("DELETE FROM {table} WHERE {col} < $1"))
                    .bind(cut)
                    .execute(&self.pool)
                    .await?
                    .rows_affected(),
            };
        }
        Ok(n)
    }

    /// Takes (or keeps) the job `name` for `holder` until `lease` from now;
    /// false while another holder's lease lasts.
    pub async fn take_job(
        &self,
        name: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.backend.now();
        let got: Option<String> = sqlx::query_scalar(&format!(
            "INSERT INTO job_leases (name, holder, lease_until) VALUES ($1, $2, {now} + $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
             WHERE job_leases.holder = excluded.holder OR job_leases.lease_until < {now}
             RETURNING holder"
        ))
        .bind(name)
        .bind(holder)
        .bind(lease.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(got.as_deref() == Some(holder))
    }

    /// Lets the job go.
    pub async fn release_job(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM job_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
