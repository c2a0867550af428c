//! Runs and claims: storing an alert with its run, claiming runs and
//! services under leases (on the database's clock), fenced decisions and
//! finishes, and the queries people read runs with.

use std::time::Duration;

use sqlx::Row;

use super::dialect::Sql;
use super::records::*;
use super::rows::{self, RUN_COLS, STEP_COLS};
use super::{batch, Store, StoreError};
use crate::clock::now_ms;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores an alert and its run in one transaction, or names the run of
    /// the earlier delivery with the same dedup key. Concurrent calls share
    /// a transaction (group commit); each returns once it has committed.
    pub async fn ingest_alert(&self, alert: &NewAlert) -> Result<Ingested, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = batch::Job {
            alert: alert.clone(),
            reply,
        };
        let stopped = || StoreError::Unreachable("the ingest writer has stopped".into());
        self.ingest.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Claims the oldest runnable run: pending, or running under a lapsed lease.
    pub async fn claim_run(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedRun>, StoreError> {
        self.claim(worker, lease, None).await
    }

    /// Claims one run by id, if it is runnable.
    pub async fn claim_run_by_id(
        &self,
        run: &RunId,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedRun>, StoreError> {
        self.claim(worker, lease, Some(run)).await
    }

    async fn claim(
        &self,
        worker: &str,
        lease: Duration,
        only: Option<&RunId>,
    ) -> Result<Option<ClaimedRun>, StoreError> {
        let b = self.backend;
        let now = b.now();
        let claimable = format!(
            "status IN ('{}', '{}', '{}') AND not_before <= {now} AND (lease_until IS NULL OR lease_until < {now})",
            RunStatus::Pending.as_str(),
            RunStatus::Running.as_str(),
            RunStatus::Watching.as_str()
        );
        let mut sql = Sql::new("UPDATE runs SET status = ");
        sql.bind(RunStatus::Running.as_str().to_string())
            .push(", claimed_by = ")
            .bind(worker.to_string())
            .push(&format!(", lease_until = {now} + "))
            .bind(ms(lease))
            .push(", fence = fence + 1");
        let one_statement = b.one_statement_writes();
        if one_statement {
            // Postgres returns the alert with the claim.
            sql.push(" FROM alerts WHERE alerts.id = runs.alert_id AND runs.id = ");
        } else {
            sql.push(" WHERE id = ");
        }
        match only {
            Some(run) => {
                sql.bind(run.0.clone());
            }
            None => {
                sql.push(&format!(
                    "(SELECT id FROM runs WHERE {claimable} ORDER BY created_at, id LIMIT 1 {})",
                    b.skip_locked()
                ));
            }
        }
        let cols: Vec<String> = RUN_COLS.split(", ").map(|c| format!("runs.{c}")).collect();
        if one_statement {
            sql.push(&format!(
                " AND runs.{claimable} RETURNING {}, runs.fence, alerts.resource, alerts.body, alerts.received_at",
                cols.join(", ")
            ));
        } else {
            // SQLite's RETURNING cannot see other tables: the alert is read after.
            sql.push(&format!(" AND {claimable} RETURNING {RUN_COLS}, fence"));
        }
        let (text, args) = sql.build()?;
        let Some(row) = sqlx::query_with(&text, args)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let run = rows::run(&row)?;
        let claim = Claim {
            run: run.id.clone(),
            worker: worker.into(),
            fence: row.try_get("fence")?,
        };
        let alert = match one_statement {
            true => row,
            false => {
                sqlx::query("SELECT resource, body, received_at FROM alerts WHERE id = $1")
                    .bind(&run.alert_id)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok(Some(ClaimedRun {
            claim,
            resource: alert.try_get("resource")?,
            body: alert.try_get("body")?,
            received_at_ms: alert.try_get("received_at")?,
            run,
        }))
    }

    /// Extends the claim's lease (and the service claims its run holds).
    /// `LostClaim` when another worker took the run over.
    pub async fn renew_run(&self, claim: &Claim, lease: Duration) -> Result<(), StoreError> {
        let now = self.backend.now();
        let done = sqlx::query(&format!(
            "UPDATE runs SET lease_until = {now} + $1 WHERE id = $2 AND fence = $3 AND status = $4"
        ))
        .bind(ms(lease))
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::LostClaim(claim.run.clone()));
        }
        sqlx::query(&format!(
            "UPDATE service_claims SET lease_until = {now} + $1 WHERE run_id = $2"
        ))
        .bind(ms(lease))
        .bind(&claim.run.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Hands a claimed run back, to be retried no earlier than `delay` from now.
    pub async fn defer_run(&self, claim: &Claim, delay: Duration) -> Result<(), StoreError> {
        self.release_run(claim, delay, RunStatus::Running).await
    }

    /// Hands a watching run back until its next look, `delay` from now,
    /// holding no worker meanwhile.
    pub async fn watch_later(&self, claim: &Claim, delay: Duration) -> Result<(), StoreError> {
        self.release_run(claim, delay, RunStatus::Watching).await
    }

    async fn release_run(
        &self,
        claim: &Claim,
        delay: Duration,
        status: RunStatus,
    ) -> Result<(), StoreError> {
        let now = self.backend.now();
        // A watching run: a step a person asked for meanwhile (an undo, a
        // hold, a resume) is not kept waiting until the next look. (Steps of
        // a later phase, such as the recap, wait: they run after the watch.)
        let other_step = match status {
            RunStatus::Watching => "EXISTS (SELECT 1 FROM steps WHERE steps.run_id = $2 AND steps.status = $5 AND steps.name IN ($6, $7, $8))",
            _ => "1 = 0 AND $5 <> $6 AND $7 <> $8",
        };
        let done = sqlx::query(&format!(
            "UPDATE runs SET lease_until = NULL, claimed_by = NULL, status = $4,
               not_before = CASE WHEN {other_step} THEN {now} ELSE {now} + $1 END
             WHERE id = $2 AND fence = $3"
        ))
        .bind(ms(delay))
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(status.as_str())
        .bind(StepStatus::Pending.as_str())
        .bind(StepName::Undo.as_str())
        .bind(StepName::Hold.as_str())
        .bind(StepName::Resume.as_str())
        .execute(&self.pool)
        .await?;
        match done.rows_affected() {
            1 => Ok(()),
            _ => Err(StoreError::LostClaim(claim.run.clone())),
        }
    }

    /// Claims the right to decide and roll back `service` for the claim's
    /// run. False while another run holds it under an unexpired lease.
    pub async fn claim_service(
        &self,
        service: &str,
        claim: &Claim,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.backend.now();
        let holder: Option<String> = sqlx::query_scalar(&format!(
            "INSERT INTO service_claims (service, run_id, lease_until) VALUES ($1, $2, {now} + $3)
             ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id, lease_until = excluded.lease_until
             WHERE service_claims.run_id = excluded.run_id OR service_claims.lease_until < {now}
             RETURNING run_id"
        ))
        .bind(service)
        .bind(&claim.run.0)
        .bind(ms(lease))
        .fetch_optional(&self.pool)
        .await?;
        Ok(holder.as_deref() == Some(claim.run.0.as_str()))
    }

    /// Releases the service claim held by the claim's run, if the claim
    /// still holds (a stale worker must not free the new owner's service).
    pub async fn release_service(&self, service: &str, claim: &Claim) -> Result<(), StoreError> {
        let mut sql = Sql::new("DELETE FROM service_claims WHERE service = ");
        sql.bind(service.to_string())
            .push(" AND run_id = ")
            .bind(claim.run.0.clone())
            .push(" AND ")
            .push_held(self.backend, claim);
        let (text, args) = sql.build()?;
        sqlx::query_with(&text, args).execute(&self.pool).await?;
        Ok(())
    }

    /// Stores the decision, finishes the `decide` step (and its attempt),
    /// marks the alerted live deployment and creates the next steps, in
    /// one transaction, if the claim still holds.
    pub async fn save_decision(&self, claim: &Claim, d: &DecisionRecord) -> Result<(), StoreError> {
        if self.backend.one_statement_writes() {
            return self.save_decision_in_one(claim, d).await;
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(
            "UPDATE runs SET service = $1, outcome = $2, reason = $3, decision = $4, rollback_from = $5, rollback_to = $6, decided_at = $7
             WHERE id = $8 AND fence = $9 AND status = $10",
        )
        .bind(&d.service)
        .bind(d.outcome.as_str())
        .bind(&d.reason)
        .bind(d.detail.to_string())
        .bind(&d.rollback_from)
        .bind(&d.rollback_to)
        .bind(now)
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            return Err(StoreError::LostClaim(claim.run.clone()));
        }
        sqlx::query("UPDATE steps SET status = $1, finished_at = $2, output = $3 WHERE run_id = $4 AND name = $5")
            .bind(StepStatus::Succeeded.as_str())
            .bind(now)
            .bind(decide_output(d))
            .bind(&claim.run.0)
            .bind(StepName::Decide.as_str())
            .execute(&mut *tx)
            .await?;
        if let Some(live) = &d.alerted_live {
            sqlx::query("UPDATE deployments SET alerted_at = COALESCE(alerted_at, $1), updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(live)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(n) = d.attempt {
            sqlx::query("UPDATE attempts SET finished_at = $1, outcome = $2 WHERE run_id = $3 AND step = $4 AND attempt = $5")
                .bind(now)
                .bind(AttemptOutcome::Ok.as_str())
                .bind(&claim.run.0)
                .bind(StepName::Decide.as_str())
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        if !d.steps.is_empty() {
            let mut sql = Sql::new("INSERT INTO steps (run_id, name, seq, status) VALUES ");
            sql.push_values(d.steps.iter().enumerate(), |row, (i, step)| {
                row.bind(claim.run.0.clone())
                    .bind(step.as_str().to_string())
                    .bind(1 + i as i64)
                    .bind(StepStatus::Pending.as_str().to_string());
            });
            let (text, args) = sql.build()?;
            sqlx::query_with(&text, args).execute(&mut *tx).await?;
        }
        if let Some(n) = &d.note {
            super::services::insert_note(
                &mut *tx,
                &n.run.0,
                now,
                &n.kind,
                &n.text,
                n.data.as_ref(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Postgres: the whole decision in one statement (data-modifying CTEs
    /// run once, to completion, atomically): one round trip on the way to
    /// the rollback instead of six. The run's UPDATE is the fence: it waits
    /// for a concurrent takeover and then matches nothing, and every other
    /// part only writes when it matched.
    async fn save_decision_in_one(
        &self,
        claim: &Claim,
        d: &DecisionRecord,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut sql = Sql::new("WITH r AS (UPDATE runs SET service = ");
        sql.bind(d.service.clone())
            .push(", outcome = ")
            .bind(d.outcome.as_str().to_string())
            .push(", reason = ")
            .bind(d.reason.clone())
            .push(", decision = ")
            .bind(d.detail.to_string())
            .push(", rollback_from = ")
            .bind(d.rollback_from.clone())
            .push(", rollback_to = ")
            .bind(d.rollback_to.clone())
            .push(", decided_at = ")
            .bind(now)
            .push(" WHERE id = ")
            .bind(claim.run.0.clone())
            .push(" AND fence = ")
            .bind(claim.fence)
            .push(" AND status = ")
            .bind(RunStatus::Running.as_str().to_string())
            .push(" RETURNING id),");
        sql.push(" s AS (UPDATE steps SET status = ")
            .bind(StepStatus::Succeeded.as_str().to_string())
            .push(", finished_at = ")
            .bind(now)
            .push(", output = ")
            .bind(decide_output(d))
            .push(" WHERE run_id IN (SELECT id FROM r) AND name = ")
            .bind(StepName::Decide.as_str().to_string())
            .push(" RETURNING 1),");
        sql.push(" a AS (UPDATE deployments SET alerted_at = COALESCE(alerted_at, ")
            .bind(now)
            .push("), updated_at = ")
            .bind(now)
            .push(" WHERE id = ")
            .bind(d.alerted_live.clone())
            .push(" AND EXISTS (SELECT 1 FROM r) RETURNING 1),");
        sql.push(" t AS (UPDATE attempts SET finished_at = ")
            .bind(now)
            .push(", outcome = ")
            .bind(AttemptOutcome::Ok.as_str().to_string())
            .push(" WHERE run_id IN (SELECT id FROM r) AND step = ")
            .bind(StepName::Decide.as_str().to_string())
            .push(" AND attempt = ")
            .bind(d.attempt)
            .push(" RETURNING 1)");
        if !d.steps.is_empty() {
            sql.push(", i AS (INSERT INTO steps (run_id, name, seq, status) SELECT r.id, v.name, v.seq, v.status FROM r CROSS JOIN (VALUES ");
            sql.push_values(d.steps.iter().enumerate(), |row, (i, step)| {
                row.bind(step.as_str().to_string())
                    .bind(1 + i as i64)
                    .bind(StepStatus::Pending.as_str().to_string());
            });
            sql.push(") AS v(name, seq, status) RETURNING 1)");
        }
        if let Some(note) = &d.note {
            sql.push(", n AS (INSERT INTO run_notes (run_id, at, kind, text, data) SELECT ")
                .bind(note.run.0.clone())
                .push(", ")
                .bind(now)
                .push(", ")
                .bind(note.kind.clone())
                .push(", ")
                .bind(note.text.clone())
                .push(", ")
                .bind(note.data.as_ref().map(|v| v.to_string()))
                .push(" FROM r RETURNING 1)");
        }
        sql.push(" SELECT COUNT(*) AS held FROM r");
        let (text, args) = sql.build()?;
        let held: i64 = sqlx::query_with(&text, args)
            .fetch_one(&self.pool)
            .await?
            .try_get("held")?;
        match held {
            1 => Ok(()),
            _ => Err(StoreError::LostClaim(claim.run.clone())),
        }
    }

    /// Replaces the run's decision with one made again after a resync, in
    /// one transaction, if the claim still holds: the run's outcome and
    /// facts, the alerted live deployment, the `resync` step (and its
    /// attempt) finished with `output`, and the new decision's steps added
    /// after the existing ones (a step the run already has is kept).
    pub async fn save_redecision(
        &self,
        claim: &Claim,
        d: &DecisionRecord,
        output: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query(
            "UPDATE runs SET outcome = $1, reason = $2, decision = $3, rollback_from = $4, rollback_to = $5
             WHERE id = $6 AND fence = $7 AND status = $8",
        )
        .bind(d.outcome.as_str())
        .bind(&d.reason)
        .bind(d.detail.to_string())
        .bind(&d.rollback_from)
        .bind(&d.rollback_to)
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            return Err(StoreError::LostClaim(claim.run.clone()));
        }
        if let Some(live) = &d.alerted_live {
            sqlx::query("UPDATE deployments SET alerted_at = COALESCE(alerted_at, $1), updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(live)
                .execute(&mut *tx)
                .await?;
        }
        let resync = StepName::Resync.as_str();
        sqlx::query("UPDATE steps SET status = $1, output = $2, finished_at = $3 WHERE run_id = $4 AND name = $5")
            .bind(StepStatus::Succeeded.as_str())
            .bind(output.to_string())
            .bind(now)
            .bind(&claim.run.0)
            .bind(resync)
            .execute(&mut *tx)
            .await?;
        if let Some(n) = d.attempt {
            sqlx::query("UPDATE attempts SET finished_at = $1, outcome = $2 WHERE run_id = $3 AND step = $4 AND attempt = $5")
                .bind(now)
                .bind(AttemptOutcome::Ok.as_str())
                .bind(&claim.run.0)
                .bind(resync)
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        let last: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM steps WHERE run_id = $1")
                .bind(&claim.run.0)
                .fetch_one(&mut *tx)
                .await?;
        if !d.steps.is_empty() {
            let mut sql = Sql::new("INSERT INTO steps (run_id, name, seq, status) VALUES ");
            sql.push_values(d.steps.iter().enumerate(), |row, (i, step)| {
                row.bind(claim.run.0.clone())
                    .bind(step.as_str().to_string())
                    .bind(last + 1 + i as i64)
                    .bind(StepStatus::Pending.as_str().to_string());
            });
            sql.push(" ON CONFLICT (run_id, name) DO NOTHING");
            let (text, args) = sql.build()?;
            sqlx::query_with(&text, args).execute(&mut *tx).await?;
        }
        if let Some(n) = &d.note {
            super::services::insert_note(
                &mut *tx,
                &n.run.0,
                now,
                &n.kind,
                &n.text,
                n.data.as_ref(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Finishes a run and drops its claim, if the claim still holds.
    pub async fn finish_run(&self, claim: &Claim, status: RunStatus) -> Result<(), StoreError> {
        // A step a person asked for while the run was worked on (an undo,
        // a hold, a resume) keeps it open: it is claimable again at once.
        let done = sqlx::query(
            "UPDATE runs SET finished_at = $2, lease_until = NULL, claimed_by = NULL,
               status = CASE WHEN EXISTS (SELECT 1 FROM steps WHERE steps.run_id = $3 AND steps.status = $6
                                          AND steps.name IN ($8, $9, $10)) THEN $7 ELSE $1 END
             WHERE id = $3 AND fence = $4 AND status = $5",
        )
        .bind(status.as_str())
        .bind(now_ms())
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .bind(StepStatus::Pending.as_str())
        .bind(RunStatus::Pending.as_str())
        .bind(StepName::Undo.as_str())
        .bind(StepName::Hold.as_str())
        .bind(StepName::Resume.as_str())
        .execute(&self.pool)
        .await?;
        match done.rows_affected() {
            1 => Ok(()),
            _ => Err(StoreError::LostClaim(claim.run.clone())),
        }
    }

    /// The newest runs first (run ids are time-ordered: the primary key
    /// serves the order).
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::run).collect()
    }

    /// One run.
    pub async fn run(&self, run: &RunId) -> Result<Run, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
            .bind(&run.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?;
        rows::run(&row)
    }

    /// A run with its alert, steps and attempts.
    pub async fn run_detail(&self, run: &RunId) -> Result<RunDetail, StoreError> {
        let run_rec = self.run(run).await?;
        let alert = sqlx::query("SELECT action, dedup_key, body FROM alerts WHERE id = $1")
            .bind(&run_rec.alert_id)
            .fetch_one(&self.pool)
            .await?;
        let attempts = sqlx::query(
            "SELECT a.step, a.attempt, a.started_at, a.finished_at, a.outcome, a.error FROM attempts a
             JOIN steps s ON s.run_id = a.run_id AND s.name = a.step
             WHERE a.run_id = $1 ORDER BY s.seq, a.attempt",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::attempt)
        .collect::<Result<_, _>>()?;
        let body: String = alert.try_get("body")?;
        Ok(RunDetail {
            action: alert.try_get("action")?,
            dedup_key: alert.try_get("dedup_key")?,
            alert: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            steps: self.steps(run).await?,
            attempts,
            notes: self.notes(run).await?,
            pause: match &run_rec.service {
                Some(service) => self.pause_of(service).await?,
                None => None,
            },
            run: run_rec,
        })
    }

    /// The steps of a run, in order.
    pub async fn steps(&self, run: &RunId) -> Result<Vec<Step>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps WHERE run_id = $1 ORDER BY seq, name"
        ))
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::step).collect()
    }

    /// The run of the alert stored under `dedup_key`.
    pub async fn run_for_dedup_key(&self, dedup_key: &str) -> Result<Option<RunId>, StoreError> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT r.id FROM runs r JOIN alerts a ON a.id = r.alert_id WHERE a.dedup_key = $1",
        )
        .bind(dedup_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(RunId))
    }

    /// Counts runs; used by tests and the demo.
    pub async fn count_runs(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM runs")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Counts stored alerts.
    pub async fn count_alerts(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM alerts")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Runs not yet finished (watching ones included).
    pub async fn count_unfinished_runs(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE status IN ($1, $2, $3)")
                .bind(RunStatus::Pending.as_str())
                .bind(RunStatus::Running.as_str())
                .bind(RunStatus::Watching.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

/// What the `decide` step records as its output.
fn decide_output(d: &DecisionRecord) -> String {
    serde_json::json!({"outcome": d.outcome, "reason": d.reason}).to_string()
}
