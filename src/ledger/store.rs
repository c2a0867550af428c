//! The SQL behind [`Store`], shared by SQLite and Postgres.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::*;

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "ledger",
    include_str!("../../migrations/0001_ledger.sql"),
)];

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, single writer.
    Sqlite,
    /// Shared by several instances.
    Postgres,
}

/// The ledger.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    ingest: tokio::sync::mpsc::Sender<super::batch::Job>,
}

const DEPLOYMENT_COLS: &str = "id, service, url, release, created_at, promoted_at, superseded_at, live, verdict, verdict_reason, alerted_at";
const RUN_COLS: &str = "id, alert_id, service, status, outcome, reason, decision, rollback_from, rollback_to, created_at, decided_at, finished_at";

impl Store {
    /// Connects (creating an SQLite file if needed). Does not migrate.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, max_connections, Duration::from_secs(5), false).await
    }

    /// Like [`Store::connect`], waiting at most `acquire_timeout` for a
    /// connection before a call fails as unavailable.
    /// `sqlite_full_sync` makes every SQLite commit sync fully, not only
    /// the ingest batch's.
    pub async fn connect_with(
        url: &SecretString,
        max_connections: u32,
        acquire_timeout: Duration,
        sqlite_full_sync: bool,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let backend = if raw.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = raw.to_string();
        let options = AnyPoolOptions::new().acquire_timeout(acquire_timeout);
        let options = match backend {
            Backend::Sqlite => {
                if !url.contains('?') && !url.contains(":memory:") {
                    url.push_str("?mode=rwc");
                }
                // One connection: SQLite has one writer anyway, and deferred
                // transactions on several connections fail with SQLITE_BUSY.
                // synchronous = NORMAL survives a process crash; the ingest
                // batch raises it to FULL so a 202 survives power loss too.
                options.max_connections(1).idle_timeout(None).max_lifetime(None).after_connect(move |conn, _| {
                    Box::pin(async move {
                        let sync = if sqlite_full_sync { "FULL" } else { "NORMAL" };
                        conn.execute(format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON").as_str()).await?;
                        Ok(())
                    })
                })
            }
            Backend::Postgres => options
                .max_connections(max_connections.max(1))
                .min_connections(0),
        };
        let pool = options.connect(&url).await?;
        let ingest = super::batch::spawn(
            pool.clone(),
            backend == Backend::Sqlite && !sqlite_full_sync,
        );
        Ok(Self {
            pool,
            backend,
            ingest,
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies forward-only migrations not yet applied. Safe to run from
    /// several instances at once on Postgres (advisory lock).
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_lock(7215553)").await?;
        }
        let result = self.migrate_on(&mut conn).await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7215553)").await?;
        }
        result
    }

    async fn migrate_on(&self, conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>, StoreError> {
        conn.execute("CREATE TABLE IF NOT EXISTS backstop_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            .await?;
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM backstop_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *conn)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO backstop_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            applied.push(*version);
        }
        Ok(applied)
    }

    /// True when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Executes one administrative statement (tests create schemas with it).
    pub async fn execute_raw(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::raw_sql(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- alerts and runs -------------------------------------------------

    /// Stores an alert and its run in one transaction, or names the run of
    /// the earlier delivery with the same dedup key. Concurrent calls share
    /// a transaction (group commit); each returns once it has committed.
    pub async fn ingest_alert(&self, alert: &NewAlert) -> Result<Ingested, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = super::batch::Job {
            alert: alert.clone(),
            reply,
        };
        self.ingest
            .send(job)
            .await
            .map_err(|_| StoreError::Unreachable("the ingest writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unreachable("the ingest writer has stopped".into()))?
    }

    /// Claims the oldest runnable run: pending, or running under a lapsed lease.
    pub async fn claim_run(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedRun>, StoreError> {
        let now = now_ms();
        let lock = if self.backend == Backend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let pick = format!(
            "(SELECT id FROM runs WHERE status IN ('pending', 'running') AND not_before <= $3
               AND (lease_until IS NULL OR lease_until < $3) ORDER BY created_at, id LIMIT 1 {lock})"
        );
        let cols: Vec<String> = RUN_COLS.split(", ").map(|c| format!("runs.{c}")).collect();
        // Postgres returns the alert with the claim; SQLite's RETURNING
        // cannot see other tables, so it reads the alert after.
        let sql = match self.backend {
            Backend::Postgres => format!(
                "UPDATE runs SET status = 'running', claimed_by = $1, lease_until = $2 FROM alerts
                 WHERE alerts.id = runs.alert_id AND runs.id = {pick}
                   AND runs.status IN ('pending', 'running') AND (runs.lease_until IS NULL OR runs.lease_until < $3)
                 RETURNING {}, alerts.resource, alerts.body, alerts.received_at",
                cols.join(", ")
            ),
            Backend::Sqlite => format!(
                "UPDATE runs SET status = 'running', claimed_by = $1, lease_until = $2
                 WHERE id = {pick} AND status IN ('pending', 'running') AND (lease_until IS NULL OR lease_until < $3)
                 RETURNING {RUN_COLS}"
            ),
        };
        let row = sqlx::query(&sql)
            .bind(worker)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let run = run_from_row(&row)?;
        let alert = match self.backend {
            Backend::Postgres => row,
            Backend::Sqlite => {
                sqlx::query("SELECT resource, body, received_at FROM alerts WHERE id = $1")
                    .bind(&run.alert_id)
                    .fetch_one(&self.pool)
                    .await?
            }
        };
        Ok(Some(ClaimedRun {
            resource: alert.try_get("resource")?,
            body: alert.try_get("body")?,
            received_at_ms: alert.try_get("received_at")?,
            run,
        }))
    }

    /// Extends this worker's lease on a run. False when the claim was lost.
    pub async fn renew_run(
        &self,
        run: &RunId,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE runs SET lease_until = $1 WHERE id = $2 AND claimed_by = $3 AND status = 'running'")
            .bind(now_ms() + lease.as_millis() as i64)
            .bind(&run.0)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            // Service claims held by the run live as long as the run's.
            sqlx::query("UPDATE service_claims SET lease_until = $1 WHERE run_id = $2")
                .bind(now_ms() + lease.as_millis() as i64)
                .bind(&run.0)
                .execute(&self.pool)
                .await?;
        }
        Ok(done.rows_affected() == 1)
    }

    /// Hands a claimed run back, to be retried no earlier than `delay` from now.
    pub async fn defer_run(
        &self,
        run: &RunId,
        worker: &str,
        delay: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE runs SET lease_until = NULL, claimed_by = NULL, not_before = $1 WHERE id = $2 AND claimed_by = $3")
            .bind(now_ms() + delay.as_millis() as i64)
            .bind(&run.0)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims the right to decide and roll back `service` for `run`.
    pub async fn claim_service(
        &self,
        service: &str,
        run: &RunId,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let holder: Option<String> = sqlx::query_scalar(
            "INSERT INTO service_claims (service, run_id, lease_until) VALUES ($1, $2, $3)
             ON CONFLICT (service) DO UPDATE SET run_id = excluded.run_id, lease_until = excluded.lease_until
             WHERE service_claims.run_id = excluded.run_id OR service_claims.lease_until < $4
             RETURNING run_id",
        )
        .bind(service)
        .bind(&run.0)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(holder.as_deref() == Some(run.0.as_str()))
    }

    /// Releases a service claim held by `run`.
    pub async fn release_service(&self, service: &str, run: &RunId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM service_claims WHERE service = $1 AND run_id = $2")
            .bind(service)
            .bind(&run.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores the decision, finishes the `decide` step and creates the next steps.
    pub async fn save_decision(&self, run: &RunId, d: &DecisionRecord) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            return self.save_decision_in_one(run, d).await;
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE runs SET service = $1, outcome = $2, reason = $3, decision = $4, rollback_from = $5, rollback_to = $6, decided_at = $7 WHERE id = $8",
        )
        .bind(&d.service)
        .bind(&d.outcome)
        .bind(&d.reason)
        .bind(d.detail.to_string())
        .bind(&d.rollback_from)
        .bind(&d.rollback_to)
        .bind(now)
        .bind(&run.0)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE steps SET status = 'succeeded', finished_at = $1, output = $2 WHERE run_id = $3 AND name = 'decide'")
            .bind(now)
            .bind(serde_json::json!({"outcome": d.outcome, "reason": d.reason}).to_string())
            .bind(&run.0)
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
            sqlx::query("UPDATE attempts SET finished_at = $1, outcome = 'ok' WHERE run_id = $2 AND step = 'decide' AND attempt = $3")
                .bind(now)
                .bind(&run.0)
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        insert_steps(&mut tx, run, &d.steps, 1).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Postgres: the whole decision in one statement (data-modifying CTEs
    /// run once, to completion, atomically), one round trip on the way to
    /// the rollback instead of six.
    async fn save_decision_in_one(
        &self,
        run: &RunId,
        d: &DecisionRecord,
    ) -> Result<(), StoreError> {
        let steps: Vec<String> = (0..d.steps.len())
            .map(|i| format!("($8, ${}, ${}, 'pending')", 12 + 2 * i, 13 + 2 * i))
            .collect();
        let main = match steps.is_empty() {
            true => "SELECT 1".to_string(),
            false => format!(
                "INSERT INTO steps (run_id, name, seq, status) VALUES {}",
                steps.join(", ")
            ),
        };
        let sql = format!(
            "WITH r AS (UPDATE runs SET service = $1, outcome = $2, reason = $3, decision = $4, rollback_from = $5,
                          rollback_to = $6, decided_at = $7 WHERE id = $8 RETURNING id),
                  s AS (UPDATE steps SET status = 'succeeded', finished_at = $7, output = $9 WHERE run_id = $8 AND name = 'decide' RETURNING run_id),
                  a AS (UPDATE deployments SET alerted_at = COALESCE(alerted_at, $7), updated_at = $7 WHERE id = $10 RETURNING id),
                  t AS (UPDATE attempts SET finished_at = $7, outcome = 'ok' WHERE run_id = $8 AND step = 'decide' AND attempt = $11 RETURNING 1)
             {main}"
        );
        let mut q = sqlx::query(&sql)
            .bind(&d.service)
            .bind(&d.outcome)
            .bind(&d.reason)
            .bind(d.detail.to_string())
            .bind(&d.rollback_from)
            .bind(&d.rollback_to)
            .bind(now_ms())
            .bind(&run.0)
            .bind(serde_json::json!({"outcome": d.outcome, "reason": d.reason}).to_string())
            .bind(&d.alerted_live)
            .bind(d.attempt);
        for (i, name) in d.steps.iter().enumerate() {
            q = q.bind(name).bind(1 + i as i64);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// Records the start of a step attempt; returns its number and when the
    /// step first started (Unix ms), for the step's deadline.
    pub async fn begin_attempt(&self, run: &RunId, step: &str) -> Result<(i64, i64), StoreError> {
        let now = now_ms();
        let sql = match self.backend {
            // One round trip: count the attempt and record it together.
            Backend::Postgres => {
                "WITH s AS (UPDATE steps SET attempts = attempts + 1, started_at = COALESCE(started_at, $1)
                            WHERE run_id = $2 AND name = $3 RETURNING attempts, started_at)
                 INSERT INTO attempts (run_id, step, attempt, started_at) SELECT $2, $3, attempts, $1 FROM s
                 RETURNING attempt AS attempts, (SELECT started_at FROM s) AS started_at"
            }
            // No data-modifying CTEs: the attempt row follows below.
            Backend::Sqlite => {
                "UPDATE steps SET attempts = attempts + 1, started_at = COALESCE(started_at, $1) WHERE run_id = $2 AND name = $3
                 RETURNING attempts, started_at"
            }
        };
        let row = sqlx::query(sql)
            .bind(now)
            .bind(&run.0)
            .bind(step)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("step {step} of run {run}")))?;
        let (attempt, started): (i64, i64) = (row.try_get("attempts")?, row.try_get("started_at")?);
        if self.backend == Backend::Sqlite {
            // Not in one transaction: if the process dies between the two
            // statements the attempt is counted without a row, which only
            // understates.
            sqlx::query(
                "INSERT INTO attempts (run_id, step, attempt, started_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&run.0)
            .bind(step)
            .bind(attempt)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok((attempt, started))
    }

    /// Records how an attempt ended (`ok`, `retryable`, `fatal`).
    pub async fn finish_attempt(
        &self,
        run: &RunId,
        step: &str,
        attempt: i64,
        outcome: &str,
        error: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE attempts SET finished_at = $1, outcome = $2, error = $3 WHERE run_id = $4 AND step = $5 AND attempt = $6")
            .bind(now_ms())
            .bind(outcome)
            .bind(error.map(|e| e.to_string()))
            .bind(&run.0)
            .bind(step)
            .bind(attempt)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Finishes a step for good.
    pub async fn finish_step(
        &self,
        run: &RunId,
        step: &str,
        status: &str,
        output: Option<&serde_json::Value>,
        error: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE steps SET status = $1, output = $2, error = $3, finished_at = $4 WHERE run_id = $5 AND name = $6")
            .bind(status)
            .bind(output.map(|o| o.to_string()))
            .bind(error.map(|e| e.to_string()))
            .bind(now_ms())
            .bind(&run.0)
            .bind(step)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Finishes a run and drops its claim.
    /// Only the worker holding the claim can finish it; false when another
    /// instance took the run over.
    pub async fn finish_run(
        &self,
        run: &RunId,
        status: &str,
        worker: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE runs SET status = $1, finished_at = $2, lease_until = NULL WHERE id = $3 AND claimed_by = $4")
            .bind(status)
            .bind(now_ms())
            .bind(&run.0)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The steps of a run, in order.
    pub async fn steps(&self, run: &RunId) -> Result<Vec<Step>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, seq, status, attempts, output, error, started_at, finished_at FROM steps WHERE run_id = $1 ORDER BY seq, name",
        )
        .bind(&run.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// The newest runs first.
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLS} FROM runs ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// One run.
    pub async fn run(&self, run: &RunId) -> Result<Run, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
            .bind(&run.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?;
        run_from_row(&row)
    }

    /// A run with its alert, steps and attempts.
    pub async fn run_detail(&self, run: &RunId) -> Result<RunDetail, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
            .bind(&run.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("run {run}")))?;
        let run_rec = run_from_row(&row)?;
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
        .map(attempt_from_row)
        .collect::<Result<_, _>>()?;
        let body: String = alert.try_get("body")?;
        Ok(RunDetail {
            action: alert.try_get("action")?,
            dedup_key: alert.try_get("dedup_key")?,
            alert: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            steps: self.steps(run).await?,
            attempts,
            run: run_rec,
        })
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

    /// Runs not yet finished.
    pub async fn count_unfinished_runs(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE status IN ('pending', 'running')")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    // ---- deployments ------------------------------------------------------

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
        .map(|r| deployment_from_row(&r))
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
            service,
            from,
            to,
            run,
            output,
            attempt,
            worker,
        } = *done;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Only the holder of the claim moves the ledger (and on Postgres the
        // row lock keeps a takeover waiting until this commits).
        let held = sqlx::query(
            "UPDATE runs SET lease_until = lease_until WHERE id = $1 AND claimed_by = $2",
        )
        .bind(&run.0)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        if held.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "run {run} was taken over by another worker"
            )));
        }
        lock_service(&mut tx, self.backend, service).await?;
        sqlx::query(
            "UPDATE deployments SET live = 0, superseded_at = $1, verdict = 'bad', verdict_reason = $2, updated_at = $1 WHERE id = $3 AND service = $4",
        )
        .bind(now)
        .bind(format!("rolled back by run {run}"))
        .bind(from)
        .bind(service)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE deployments SET live = 0, superseded_at = $1, updated_at = $1 WHERE service = $2 AND live = 1")
            .bind(now)
            .bind(service)
            .execute(&mut *tx)
            .await?;
        let moved = sqlx::query(
            "UPDATE deployments SET live = 1, promoted_at = $1, superseded_at = NULL, updated_at = $1,
               verdict_reason = CASE WHEN verdict = 'good' THEN verdict_reason ELSE $2 END, verdict = 'good'
             WHERE id = $3 AND service = $4",
        )
        .bind(now)
        .bind(format!("known-good target of run {run}"))
        .bind(to)
        .bind(service)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            // Dropping the transaction rolls it back: the ledger keeps its live deployment.
            return Err(StoreError::NotFound(format!(
                "deployment {to} of service {service}"
            )));
        }
        sqlx::query("UPDATE steps SET status = 'succeeded', output = $1, finished_at = $2 WHERE run_id = $3 AND name = 'rollback'")
            .bind(output.to_string())
            .bind(now)
            .bind(&run.0)
            .execute(&mut *tx)
            .await?;
        if let Some(n) = attempt {
            sqlx::query("UPDATE attempts SET finished_at = $1, outcome = 'ok' WHERE run_id = $2 AND step = 'rollback' AND attempt = $3")
                .bind(now)
                .bind(&run.0)
                .bind(n)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
        .map(|r| deployment_from_row(&r))
        .transpose()
    }

    /// Deployments, newest first, optionally of one service.
    pub async fn deployments(&self, service: Option<&str>) -> Result<Vec<Deployment>, StoreError> {
        let order = "ORDER BY COALESCE(promoted_at, created_at, 0) DESC, id DESC LIMIT 500";
        let rows = match service {
            Some(service) => {
                sqlx::query(&format!(
                    "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE service = $1 {order}"
                ))
                .bind(service)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {DEPLOYMENT_COLS} FROM deployments {order}"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(deployment_from_row).collect()
    }

    /// What the decision needs to know about a service; `run` is excluded
    /// from the rollback counts.
    pub async fn history(
        &self,
        service: &str,
        run: &RunId,
        now_ms: i64,
    ) -> Result<History, StoreError> {
        // The live deployment's id comes from the same query, so the two
        // reads can go out together.
        let (deployments, stats) = tokio::join!(
            self.deployments(Some(service)),
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
        Ok(History {
            deployments,
            live_rolled_back,
            last_rollback_at_ms: last,
            rollbacks_last_day: u32::try_from(day).unwrap_or(u32::MAX),
            paused,
        })
    }

    /// Rollback counts and the pause of a service, in one query.
    async fn stats(&self, service: &str, run: &RunId, now_ms: i64) -> Result<AnyRow, StoreError> {
        Ok(sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM runs WHERE service = $1 AND outcome = 'rollback' AND id <> $2
                  AND rollback_from = (SELECT id FROM deployments WHERE service = $1 AND live = 1)
                  AND NOT EXISTS (SELECT 1 FROM steps WHERE steps.run_id = runs.id AND steps.name = 'rollback' AND steps.status = 'failed')) AS from_live,
               (SELECT MAX(decided_at) FROM runs WHERE service = $1 AND outcome = 'rollback' AND id <> $2) AS last_rollback,
               (SELECT COUNT(*) FROM runs WHERE service = $1 AND outcome = 'rollback' AND id <> $2 AND decided_at >= $3) AS last_day,
               (SELECT COUNT(*) FROM service_pauses WHERE service = $1) AS paused,
               (SELECT MAX(reason) FROM service_pauses WHERE service = $1) AS pause_reason",
        )
        .bind(service)
        .bind(&run.0)
        .bind(now_ms - 86_400_000)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Pauses automatic rollbacks of a service (`None` resumes).
    pub async fn set_paused(&self, service: &str, reason: Option<&str>) -> Result<(), StoreError> {
        match reason {
            Some(reason) => sqlx::query(
                "INSERT INTO service_pauses (service, reason, paused_at) VALUES ($1, $2, $3)
                 ON CONFLICT (service) DO UPDATE SET reason = excluded.reason, paused_at = excluded.paused_at",
            )
            .bind(service)
            .bind(reason)
            .bind(now_ms())
            .execute(&self.pool)
            .await?,
            None => sqlx::query("DELETE FROM service_pauses WHERE service = $1").bind(service).execute(&self.pool).await?,
        };
        Ok(())
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
async fn lock_service(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    service: &str,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
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
           verdict_reason = CASE WHEN verdict = 'unproven' AND alerted_at IS NULL AND promoted_at IS NOT NULL AND $1 - promoted_at >= $2
                                 THEN 'served production for the bake time without a critical alert' ELSE verdict_reason END,
           verdict = CASE WHEN verdict = 'unproven' AND alerted_at IS NULL AND promoted_at IS NOT NULL AND $1 - promoted_at >= $2
                          THEN 'good' ELSE verdict END
         WHERE id = $3",
    )
    .bind(at_ms)
    .bind(bake.as_millis() as i64)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_steps(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    run: &RunId,
    names: &[String],
    first_seq: i64,
) -> Result<(), StoreError> {
    if names.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = (0..names.len())
        .map(|i| format!("($1, ${}, ${}, 'pending')", 2 * i + 2, 2 * i + 3))
        .collect();
    let sql = format!(
        "INSERT INTO steps (run_id, name, seq, status) VALUES {}",
        rows.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(&run.0);
    for (i, name) in names.iter().enumerate() {
        q = q.bind(name).bind(first_seq + i as i64);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Wall-clock Unix ms.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn json_col(row: &AnyRow, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn deployment_from_row(row: &AnyRow) -> Result<Deployment, StoreError> {
    let verdict: String = row.try_get("verdict")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        service: row.try_get("service")?,
        url: row.try_get("url")?,
        release: row.try_get("release")?,
        created_at_ms: row.try_get("created_at")?,
        promoted_at_ms: row.try_get("promoted_at")?,
        superseded_at_ms: row.try_get("superseded_at")?,
        live: row.try_get::<i64, _>("live")? == 1,
        verdict: Verdict::parse(&verdict)
            .ok_or_else(|| StoreError::Corrupt(format!("verdict `{verdict}`")))?,
        verdict_reason: row.try_get("verdict_reason")?,
        alerted_at_ms: row.try_get("alerted_at")?,
    })
}

fn run_from_row(row: &AnyRow) -> Result<Run, StoreError> {
    Ok(Run {
        id: RunId(row.try_get("id")?),
        alert_id: row.try_get("alert_id")?,
        service: row.try_get("service")?,
        status: row.try_get("status")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        decision: json_col(row, "decision")?,
        rollback_from: row.try_get("rollback_from")?,
        rollback_to: row.try_get("rollback_to")?,
        created_at_ms: row.try_get("created_at")?,
        decided_at_ms: row.try_get("decided_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

fn step_from_row(row: &AnyRow) -> Result<Step, StoreError> {
    Ok(Step {
        name: row.try_get("name")?,
        seq: row.try_get("seq")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        output: json_col(row, "output")?,
        error: json_col(row, "error")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

fn attempt_from_row(row: &AnyRow) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        step: row.try_get("step")?,
        attempt: row.try_get("attempt")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        outcome: row.try_get("outcome")?,
        error: json_col(row, "error")?,
    })
}
