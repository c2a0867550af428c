//! Filling a ledger with years of history fast, for `backstop bench
//! --scenario growth`: plain multi-row inserts in batches, each its own
//! transaction. Not used by Backstop itself.

use super::dialect::Sql;
use super::records::*;
use super::{Store, StoreError};

const BATCH: usize = 500;

impl Store {
    /// `n` deployments of `service`, each promoted `every_ms` after the
    /// previous from `first_ms` on and superseded by the next (so each
    /// served `every_ms`), all before anything live now.
    pub async fn fill_deployments(
        &self,
        service: &str,
        n: usize,
        first_ms: i64,
        every_ms: i64,
    ) -> Result<(), StoreError> {
        for start in (0..n).step_by(BATCH) {
            let rows: Vec<usize> = (start..(start + BATCH).min(n)).collect();
            let mut sql = Sql::new(
                "INSERT INTO deployments (id, service, url, release, created_at, promoted_at, superseded_at, live, verdict, updated_at) VALUES ",
            );
            sql.push_values(&rows, |row, i| {
                let at = first_ms + *i as i64 * every_ms;
                row.bind(format!("dpl_hist{i:07}"))
                    .bind(service.to_string())
                    .bind(format!("hist{i:07}.vercel.app"))
                    .bind(format!("h{i:07}"))
                    .bind(at - 60_000)
                    .bind(at)
                    .bind(at + every_ms)
                    .bind(0i64)
                    .bind(Verdict::Unproven.as_str().to_string())
                    .bind(at + every_ms);
            });
            let (text, args) = sql.build()?;
            sqlx::query_with(&text, args).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Refreshes Postgres's planner statistics after a bulk fill (which
    /// leaves none until autovacuum gets to it; a ledger that grew over
    /// months has them). SQLite is left as it is.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        if self.backend == super::Backend::Postgres {
            sqlx::query("ANALYZE").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// `m` finished runs the alert alone settled (with their alerts and
    /// `decide` steps), received at `at_ms`.
    pub async fn fill_runs(&self, m: usize, at_ms: i64) -> Result<(), StoreError> {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        for start in (0..m).step_by(BATCH) {
            let rows: Vec<(usize, String, String)> = (start..(start + BATCH).min(m))
                .map(|i| {
                    (
                        i,
                        uuid::Uuid::now_v7().to_string(),
                        uuid::Uuid::now_v7().to_string(),
                    )
                })
                .collect();
            let mut tx = self.pool.begin().await?;
            let mut a = Sql::new(
                "INSERT INTO alerts (id, dedup_key, resource, action, received_at, body) VALUES ",
            );
            a.push_values(&rows, |row, (i, alert, _)| {
                row.bind(alert.clone())
                    .bind(format!("fill:{tag}:{i}"))
                    .bind("metric_alert".to_string())
                    .bind("warning".to_string())
                    .bind(at_ms)
                    .bind(format!("{{\"fill\":{i}}}"));
            });
            let (text, args) = a.build()?;
            sqlx::query_with(&text, args).execute(&mut *tx).await?;
            let mut r = Sql::new(
                "INSERT INTO runs (id, alert_id, service, status, outcome, reason, decision, created_at, decided_at, finished_at, not_before) VALUES ",
            );
            r.push_values(&rows, |row, (_, alert, run)| {
                row.bind(run.clone())
                    .bind(alert.clone())
                    .bind(None::<String>)
                    .bind(RunStatus::Done.as_str().to_string())
                    .bind(Outcome::Skip.as_str().to_string())
                    .bind("not critical (action `warning`)".to_string())
                    .bind("{}".to_string())
                    .bind(at_ms)
                    .bind(at_ms)
                    .bind(at_ms)
                    .bind(at_ms);
            });
            let (text, args) = r.build()?;
            sqlx::query_with(&text, args).execute(&mut *tx).await?;
            let mut s = Sql::new(
                "INSERT INTO steps (run_id, name, seq, status, output, finished_at) VALUES ",
            );
            s.push_values(&rows, |row, (_, _, run)| {
                row.bind(run.clone())
                    .bind(StepName::Decide.as_str().to_string())
                    .bind(0i64)
                    .bind(StepStatus::Succeeded.as_str().to_string())
                    .bind("{}".to_string())
                    .bind(at_ms);
            });
            let (text, args) = s.build()?;
            sqlx::query_with(&text, args).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}
