//! Deployments and their verdicts: recording, promotions, the ledger side
//! of a verified rollback (fenced by the run's claim), verdicts by hand,
//! what a decision reads about a service, pauses and Vercel deliveries.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::dialect::Sql;
use super::records::*;
use super::rows::{self, DEPLOYMENT_COLS};
use super::{Backend, Store, StoreError};
use crate::clock::now_ms;

impl Store {
    /// Records a deployment, filling in what was unknown; never touches its
    /// verdict or live state.
    pub async fn record_deployment(&self, d: &NewDeployment) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deployments (id, service, url, release, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET url = COALESCE(excluded.url, deployments.url),
               release = COALESCE(excluded.release, deployments.release),
               created_at = COALESCE(excluded.created_at, deployments.created_at), updated_at = excluded.updated_at",
        )
        .bind(&d.id)
        .bind(&d.service)
        .bind(&d.url)
        .bind(&d.release)
        .bind(d.created_at_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes a recorded deployment live at `at_ms` (provider time), superseding
    /// the live one. A promotion older than the live one's only fills history.
    /// The superseded deployment becomes `good` if it served `bake` with no
    /// critical alert.
    pub async fn promote(
        &self,
        service: &str,
        id: &str,
        at_ms: i64,
        bake: Duration,
    ) -> Result<Promotion, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_service(&mut tx, self.backend, service).await?;
        let current = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE service = $1 AND live = 1"
        ))
        .bind(service)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| rows::deployment(&r))
        .transpose()?;
        let now = now_ms();
        if let Some(cur) = &current {
            if cur.id == id {
                tx.commit().await?;
                return Ok(Promotion::AlreadyLive);
            }
            if cur.promoted_at_ms.is_some_and(|p| p > at_ms) {
                // It served until the next promotion after it, which may be
                // earlier than the live one's.
                sqlx::query(
                    "UPDATE deployments SET promoted_at = COALESCE(promoted_at, $1),
                       superseded_at = COALESCE(superseded_at,
                         (SELECT MIN(promoted_at) FROM deployments WHERE service = $2 AND promoted_at > $1 AND id <> $4)),
                       updated_at = $3 WHERE id = $4",
                )
                .bind(at_ms)
                .bind(service)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Promotion::Older);
            }
            supersede(&mut tx, &cur.id, at_ms, bake).await?;
        }
        let updated = sqlx::query("UPDATE deployments SET live = 1, promoted_at = $1, superseded_at = NULL, updated_at = $2 WHERE id = $3 AND service = $4")
            .bind(at_ms)
            .bind(now)
            .bind(id)
            .bind(service)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!(
                "deployment {id} of service {service}"
            )));
        }
        tx.commit().await?;
        Ok(Promotion::Live {
            superseded: current.map(|c| c.id),
        })
    }

    /// After a verified rollback: `from` is bad and superseded, `to` is live
    /// and good, and the `rollback` step of `run` is finished with `output`,
    /// all in one transaction.
    pub async fn complete_rollback(&self, done: &RollbackDone<'_>) -> Result<(), StoreError> {
        let RollbackDone {
            claim,
            service,
            from,
            to,
            output,
            attempt,
        } = *done;
        let run = &claim.run;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Only the holder of the claim moves the ledger (and on Postgres the
        // row lock keeps a takeover waiting until this commits).
        let held = sqlx::query(
            "UPDATE runs SET lease_until = lease_until WHERE id = $1 AND fence = $2 AND status = $3",
        )
        .bind(&run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            return Err(StoreError::LostClaim(run.clone()));
        }
        lock_service(&mut tx, self.backend, service).await?;
        sqlx::query(
            "UPDATE deployments SET live = 0, superseded_at = $1, verdict = $5, verdict_reason = $2, updated_at = $1 WHERE id = $3 AND service = $4",
        )
        .bind(now)
        .bind(format!("rolled back by run {run}"))
        .bind(from)
        .bind(service)
        .bind(Verdict::Bad.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE deployments SET live = 0, superseded_at = $1, updated_at = $1 WHERE service = $2 AND live = 1")
            .bind(now)
            .bind(service)
            .execute(&mut *tx)
            .await?;
        let moved = sqlx::query(
            "UPDATE deployments SET live = 1, promoted_at = $1, superseded_at = NULL, updated_at = $1,
               verdict_reason = CASE WHEN verdict = $5 THEN verdict_reason ELSE $2 END, verdict = $5
             WHERE id = $3 AND service = $4",
        )
        .bind(now)
        .bind(format!("known-good target of run {run}"))
        .bind(to)
        .bind(service)
        .bind(Verdict::Good.as_str())
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            // Dropping the transaction rolls it back: the ledger keeps its live deployment.
            return Err(StoreError::NotFound(format!(
                "deployment {to} of service {service}"
            )));
        }
        sqlx::query("UPDATE steps SET status = $1, output = $2, finished_at = $3 WHERE run_id = $4 AND name = $5")
            .bind(StepStatus::Succeeded.as_str())
            .bind(output.to_string())
            .bind(now)
            .bind(&run.0)
            .bind(StepName::Rollback.as_str())
            .execute(&mut *tx)
            .await?;
        if let Some(n) = attempt {
            sqlx::query("UPDATE attempts SET finished_at = $1, outcome = $2 WHERE run_id = $3 AND step = $4 AND attempt = $5")
                .bind(now)
                .bind(AttemptOutcome::Ok.as_str())
                .bind(&run.0)
                .bind(StepName::Rollback.as_str())
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks as alerted the deployment of `service` that was serving
    /// production at `at_ms` (the alert's start), if the claim still holds:
    /// after a resync, that is the one that crashed.
    pub async fn mark_alerted_at(
        &self,
        claim: &Claim,
        service: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE deployments SET alerted_at = COALESCE(alerted_at, $1), updated_at = $1
             WHERE service = $2 AND promoted_at <= $3 AND (superseded_at IS NULL OR superseded_at > $3)
               AND EXISTS (SELECT 1 FROM runs WHERE id = $4 AND fence = $5 AND status = $6)",
        )
        .bind(now)
        .bind(service)
        .bind(at_ms)
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            let held: Option<i64> =
                sqlx::query_scalar("SELECT fence FROM runs WHERE id = $1 AND fence = $2")
                    .bind(&claim.run.0)
                    .bind(claim.fence)
                    .fetch_optional(&self.pool)
                    .await?;
            if held.is_none() {
                return Err(StoreError::LostClaim(claim.run.clone()));
            }
        }
        Ok(())
    }

    /// Sets a verdict by hand.
    pub async fn mark(
        &self,
        id: &str,
        verdict: Verdict,
        reason: &str,
    ) -> Result<Deployment, StoreError> {
        let done = sqlx::query("UPDATE deployments SET verdict = $1, verdict_reason = $2, updated_at = $3 WHERE id = $4")
            .bind(verdict.as_str())
            .bind(reason)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("deployment {id}")));
        }
        self.deployment(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))
    }

    /// One deployment.
    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| rows::deployment(&r))
        .transpose()
    }

    /// Deployments, newest first, optionally of one service (the newest
    /// 500; see [`Store::deployments_page`] to page).
    pub async fn deployments(&self, service: Option<&str>) -> Result<Vec<Deployment>, StoreError> {
        self.deployments_page(service, None, 500).await
    }

    /// A page of deployments, newest first (by time live, else created):
    /// at most `limit`, older than the deployment `before` when given.
    pub async fn deployments_page(
        &self,
        service: Option<&str>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        let key = "COALESCE(promoted_at, created_at, 0)";
        let mut sql = Sql::new(format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments d WHERE 1 = 1"
        ));
        if let Some(service) = service {
            sql.push(" AND service = ").bind(service.to_string());
        }
        if let Some(before) = before {
            // Strictly older than `before` in the same order (ties by id).
            sql.push(&format!(
                " AND ({key}, id) < (SELECT {key}, id FROM deployments WHERE id = "
            ))
            .bind(before.to_string())
            .push(")");
        }
        sql.push(&format!(" ORDER BY {key} DESC, id DESC LIMIT "))
            .bind(limit.clamp(1, 10_000));
        let (text, args) = sql.build()?;
        let rows = sqlx::query_with(&text, args).fetch_all(&self.pool).await?;
        rows.iter().map(rows::deployment).collect()
    }

    /// A service's deployments live at some point since `since_ms` (and the
    /// live one), newest first: what a timeline of that window shows.
    pub async fn deployments_since(
        &self,
        service: &str,
        since_ms: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE service = $1
               AND (live = 1 OR promoted_at >= $2 OR superseded_at >= $2)
             ORDER BY COALESCE(promoted_at, created_at, 0) DESC, id DESC LIMIT 1000"
        ))
        .bind(service)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::deployment).collect()
    }

    /// What the decision reads of a service's deployments, at the same cost
    /// on day 400 as on day 1: the live one, and the newest known-good one
    /// older than it (marked good, or served at least `bake` without a
    /// critical alert), found by an indexed query however old it is.
    async fn decision_deployments(
        &self,
        service: &str,
        bake: Duration,
    ) -> Result<Vec<Deployment>, StoreError> {
        let live = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE service = $1 AND live = 1"
        ))
        .bind(service)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| rows::deployment(&r))
        .transpose()?;
        let Some(live) = live else {
            return Ok(Vec::new());
        };
        let live_at = live
            .promoted_at_ms
            .or(live.created_at_ms)
            .unwrap_or(i64::MAX);
        let (good, unproven) = (Verdict::Good.as_str(), Verdict::Unproven.as_str());
        let promoted = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE service = $1 AND live = 0 AND id <> $2
               AND promoted_at < $3
               AND (verdict = '{good}' OR (verdict = '{unproven}' AND superseded_at IS NOT NULL
                    AND alerted_at IS NULL AND superseded_at - promoted_at >= $4))
             ORDER BY promoted_at DESC, id DESC LIMIT 1"
        ))
        .bind(service)
        .bind(&live.id)
        .bind(live_at)
        .bind(bake.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        // Marked good by a person without ever being promoted here.
        let marked = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE service = $1 AND live = 0 AND id <> $2
               AND promoted_at IS NULL AND verdict = '{good}' AND created_at < $3
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(service)
        .bind(&live.id)
        .bind(live_at)
        .fetch_optional(&self.pool)
        .await?;
        let mut out = vec![live];
        for r in [promoted, marked].into_iter().flatten() {
            out.push(rows::deployment(&r)?);
        }
        Ok(out)
    }

    /// What the decision needs to know about a service; `run` is excluded
    /// from the rollback counts. Its `deployments` are the live one and the
    /// target candidates (see `decision_deployments`), not the whole
    /// history: the cost is the same however long the ledger is.
    pub async fn history(
        &self,
        service: &str,
        run: &RunId,
        now_ms: i64,
        bake: Duration,
    ) -> Result<History, StoreError> {
        // The live deployment's id comes from the same query, so the two
        // reads can go out together.
        let (deployments, stats) = tokio::join!(
            self.decision_deployments(service, bake),
            self.stats(service, run, now_ms)
        );
        let (deployments, stats) = (deployments?, stats?);
        let live_rolled_back = stats.try_get::<i64, _>("from_live")? > 0;
        let last: Option<i64> = stats.try_get("last_rollback")?;
        let day: i64 = stats.try_get("last_day")?;
        let paused = (stats.try_get::<i64, _>("paused")? > 0).then(|| {
            stats
                .try_get::<Option<String>, _>("pause_reason")
                .ok()
                .flatten()
                .unwrap_or_else(|| "paused".into())
        });
        let frozen = stats.try_get::<Option<String>, _>("frozen_by")?.is_some();
        let watching = match stats.try_get::<Option<String>, _>("watching_run")? {
            Some(run) => stats
                .try_get::<Option<String>, _>("watching_restored")?
                .map(|to| (RunId(run), to)),
            None => None,
        };
        Ok(History {
            deployments,
            live_rolled_back,
            last_rollback_at_ms: last,
            rollbacks_last_day: u32::try_from(day).unwrap_or(u32::MAX),
            paused,
            frozen,
            watching,
        })
    }

    /// Rollback counts and the pause of a service, in one query. The
    /// cooldown and the daily budget count rollbacks that moved production
    /// (their `rollback` step succeeded), at the time they were verified;
    /// a failed attempt moved nothing and counts for neither.
    async fn stats(&self, service: &str, run: &RunId, now_ms: i64) -> Result<AnyRow, StoreError> {
        let rollback = Outcome::Rollback.as_str();
        let (step, failed) = (StepName::Rollback.as_str(), StepStatus::Failed.as_str());
        let succeeded = StepStatus::Succeeded.as_str();
        let (watch, pending) = (StepName::Watch.as_str(), StepStatus::Pending.as_str());
        // A rollback a person undid no longer handles its deployment: a
        // new alert about it pages (the service is held) instead of a skip.
        let overridden = Verdict::Overridden.as_str();
        // A run watching its verified rollback recover: between looks it is
        // `watching`, during one `running` (few rows: the claim index).
        let watching = format!(
            "r.status IN ('{}', '{}') AND r.service = $1 AND r.outcome = '{rollback}' AND r.id <> $2
               AND EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.name = '{watch}' AND s.status = '{pending}')
               AND EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.name = '{step}' AND s.status = '{succeeded}')",
            RunStatus::Watching.as_str(),
            RunStatus::Running.as_str()
        );
        Ok(sqlx::query(&format!(
            "SELECT
               (SELECT COUNT(*) FROM runs WHERE service = $1 AND outcome = '{rollback}' AND id <> $2
                  AND rollback_from = (SELECT id FROM deployments WHERE service = $1 AND live = 1 AND verdict <> '{overridden}')
                  AND NOT EXISTS (SELECT 1 FROM steps WHERE steps.run_id = runs.id AND steps.name = '{step}' AND steps.status = '{failed}')) AS from_live,
               (SELECT MAX(s.finished_at) FROM runs r JOIN steps s ON s.run_id = r.id AND s.name = '{step}' AND s.status = '{succeeded}'
                  WHERE r.service = $1 AND r.outcome = '{rollback}' AND r.id <> $2) AS last_rollback,
               (SELECT COUNT(*) FROM runs r JOIN steps s ON s.run_id = r.id AND s.name = '{step}' AND s.status = '{succeeded}'
                  WHERE r.service = $1 AND r.outcome = '{rollback}' AND r.id <> $2 AND s.finished_at >= $3) AS last_day,
               (SELECT COUNT(*) FROM service_pauses WHERE service = $1) AS paused,
               (SELECT MAX(reason) FROM service_pauses WHERE service = $1) AS pause_reason,
               (SELECT MAX(frozen_by_run) FROM service_pauses WHERE service = $1) AS frozen_by,
               (SELECT r.id FROM runs r WHERE {watching} ORDER BY r.id DESC LIMIT 1) AS watching_run,
               (SELECT r.rollback_to FROM runs r WHERE {watching} ORDER BY r.id DESC LIMIT 1) AS watching_restored"
        ))
        .bind(service)
        .bind(&run.0)
        .bind(now_ms - 86_400_000)
        .fetch_one(&self.pool)
        .await?)
    }

    /// True when a Vercel webhook delivery id was applied before.
    pub async fn vercel_event_seen(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vercel_events WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Records a Vercel webhook delivery id; false if it was seen before.
    pub async fn record_vercel_event(
        &self,
        id: &str,
        kind: &str,
        deployment: &str,
        created_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO vercel_events (id, kind, deployment_id, created_at, received_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(deployment)
        .bind(created_at_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Serialises changes to one service's deployments on Postgres (SQLite has
/// one writer already), so a promotion and a rollback never both make a
/// deployment live.
pub(super) async fn lock_service(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    service: &str,
) -> Result<(), StoreError> {
    if let Some(lock) = backend.service_lock() {
        sqlx::query(lock)
            .bind(format!("backstop-service:{service}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn supersede(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    at_ms: i64,
    bake: Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deployments SET live = 0, superseded_at = $1, updated_at = $1,
           verdict_reason = CASE WHEN verdict = $4 AND alerted_at IS NULL AND promoted_at IS NOT NULL AND $1 - promoted_at >= $2
                                 THEN 'served production for the bake time without a critical alert' ELSE verdict_reason END,
           verdict = CASE WHEN verdict = $4 AND alerted_at IS NULL AND promoted_at IS NOT NULL AND $1 - promoted_at >= $2
                          THEN $5 ELSE verdict END
         WHERE id = $3",
    )
    .bind(at_ms)
    .bind(bake.as_millis() as i64)
    .bind(id)
    .bind(Verdict::Unproven.as_str())
    .bind(Verdict::Good.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
