//! What is known about a service besides its deployments: whether a person
//! paused it or Backstop froze it, and why.

use sqlx::Row;

use super::records::*;
use super::{Store, StoreError};
use crate::clock::now_ms;

/// What the metrics read from the ledger at each scrape.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Runs pending, running or watching.
    pub unfinished: i64,
    /// Age of the oldest run pending or running, ms.
    pub oldest_unfinished_ms: Option<i64>,
    /// Paused and frozen services.
    pub pauses: Vec<Pause>,
    /// `(service, verdict, count)`.
    pub deployments: Vec<(String, String, i64)>,
}

impl Store {
    /// The ledger's side of the metrics: a few aggregate queries.
    pub async fn metrics_snapshot(&self, now_ms: i64) -> Result<MetricsSnapshot, StoreError> {
        let (pending, running, watching) = (
            RunStatus::Pending.as_str(),
            RunStatus::Running.as_str(),
            RunStatus::Watching.as_str(),
        );
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM runs WHERE status IN ($1, $2, $3)) AS unfinished,
                    (SELECT MIN(created_at) FROM runs WHERE status IN ($1, $2)) AS oldest",
        )
        .bind(pending)
        .bind(running)
        .bind(watching)
        .fetch_one(&self.pool)
        .await?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let deployments = sqlx::query(
            "SELECT service, verdict, COUNT(*) AS n FROM deployments GROUP BY service, verdict",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("service")?,
                r.try_get("verdict")?,
                r.try_get("n")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(MetricsSnapshot {
            unfinished: row.try_get("unfinished")?,
            oldest_unfinished_ms: oldest.map(|t| (now_ms - t).max(0)),
            pauses: self.pauses().await?,
            deployments,
        })
    }

    /// Pauses automatic rollbacks of a service (`None` resumes: lifts a
    /// pause or a freeze). `by` names who paused it.
    pub async fn set_paused(&self, service: &str, reason: Option<&str>) -> Result<(), StoreError> {
        self.pause_by(service, reason, &cli_user()).await
    }

    /// Like [`Store::set_paused`], saying who paused (or resumed) it. Both
    /// ends are kept in the pause log, with who and when.
    pub async fn pause_by(
        &self,
        service: &str,
        reason: Option<&str>,
        by: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        match reason {
            Some(reason) => hold(&mut tx, service, reason, now, by).await?,
            None => {
                let lifted = sqlx::query("DELETE FROM service_pauses WHERE service = $1")
                    .bind(service)
                    .execute(&mut *tx)
                    .await?;
                // A resume of a service that was not held changes nothing: not logged.
                if lifted.rows_affected() > 0 {
                    log_pause(&mut tx, service, now, "resume", Some(by), None).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Who held and resumed services (or `service`), newest first.
    pub async fn pause_log(
        &self,
        service: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PauseEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, at, action, actor, reason FROM pause_log
             WHERE $1 IS NULL OR service = $1 ORDER BY seq DESC, at DESC LIMIT $2",
        )
        .bind(service)
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PauseEvent {
                    service: r.try_get("service")?,
                    at_ms: r.try_get("at")?,
                    action: r.try_get("action")?,
                    by: r.try_get("actor")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// Freezes a service after a rollback that did not help, if the run's
    /// claim still holds: no automatic rollback until a person resumes it.
    /// A person's pause already in place is kept.
    pub async fn freeze(
        &self,
        claim: &Claim,
        service: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO service_pauses (service, reason, paused_at, paused_by, frozen_by_run)
             SELECT $1, $2, $3, NULL, $4 WHERE EXISTS (SELECT 1 FROM runs WHERE id = $4 AND fence = $5 AND status = $6)
             ON CONFLICT (service) DO NOTHING",
        )
        .bind(service)
        .bind(reason)
        .bind(now)
        .bind(&claim.run.0)
        .bind(claim.fence)
        .bind(RunStatus::Running.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            let by = format!("backstop (run {})", claim.run);
            log_pause(&mut tx, service, now, "freeze", Some(&by), Some(reason)).await?;
        }
        tx.commit().await?;
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

    /// Every paused or frozen service.
    pub async fn pauses(&self) -> Result<Vec<Pause>, StoreError> {
        self.read_pauses(None).await
    }

    /// The service's pause or freeze, if any.
    pub async fn pause_of(&self, service: &str) -> Result<Option<Pause>, StoreError> {
        Ok(self.read_pauses(Some(service)).await?.into_iter().next())
    }

    async fn read_pauses(&self, service: Option<&str>) -> Result<Vec<Pause>, StoreError> {
        let rows = sqlx::query(
            "SELECT service, reason, paused_at, paused_by, frozen_by_run FROM service_pauses
             WHERE $1 IS NULL OR service = $1 ORDER BY service",
        )
        .bind(service)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Pause {
                    service: r.try_get("service")?,
                    reason: r
                        .try_get::<Option<String>, _>("reason")?
                        .unwrap_or_default(),
                    at_ms: r.try_get("paused_at")?,
                    by: r.try_get("paused_by")?,
                    frozen_by_run: r.try_get::<Option<String>, _>("frozen_by_run")?.map(RunId),
                })
            })
            .collect()
    }

    /// Records something that happened to a run (not fenced: a note never
    /// changes what the run does).
    pub async fn add_note(
        &self,
        run: &RunId,
        kind: &str,
        text: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.add_note_once(run, kind, text, data).await.map(|_| ())
    }

    /// Notes a PagerDuty event (`kind` `pagerduty:…`) on a run once: true
    /// when this call stored it, false when a delivery before (or beside)
    /// it did. A unique index decides, so racing deliveries note it once.
    /// (Other kinds are not unique: they are always stored.)
    pub async fn add_note_once(
        &self,
        run: &RunId,
        kind: &str,
        text: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<bool, StoreError> {
        insert_note(&self.pool, &run.0, now_ms(), kind, text, data).await
    }

    /// A run's notes, oldest first.
    pub async fn notes(&self, run: &RunId) -> Result<Vec<RunNote>, StoreError> {
        let rows =
            sqlx::query("SELECT at, kind, text, data FROM run_notes WHERE run_id = $1 ORDER BY at")
                .bind(&run.0)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(RunNote {
                    at_ms: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    text: r.try_get("text")?,
                    data: super::rows::json(r, "data")?,
                })
            })
            .collect()
    }
}

/// Holds `service` (a person's pause, replacing any pause or freeze) and
/// logs it, inside `tx`: the pause and its log line go together.
pub(super) async fn hold(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    service: &str,
    reason: &str,
    now: i64,
    by: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO service_pauses (service, reason, paused_at, paused_by, frozen_by_run) VALUES ($1, $2, $3, $4, NULL)
         ON CONFLICT (service) DO UPDATE SET reason = excluded.reason, paused_at = excluded.paused_at,
           paused_by = excluded.paused_by, frozen_by_run = NULL",
    )
    .bind(service)
    .bind(reason)
    .bind(now)
    .bind(by)
    .execute(&mut **tx)
    .await?;
    log_pause(tx, service, now, "pause", Some(by), Some(reason)).await
}

/// Stores a run note through `e` (the pool, or a transaction): true when
/// stored, false when the unique index on once-only kinds already had it.
pub(super) async fn insert_note<'e, E>(
    e: E,
    run: &str,
    at: i64,
    kind: &str,
    text: &str,
    data: Option<&serde_json::Value>,
) -> Result<bool, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "INSERT INTO run_notes (run_id, at, kind, text, data) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(run)
    .bind(at)
    .bind(kind)
    .bind(text)
    .bind(data.map(|d| d.to_string()))
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One line of the pause log.
pub(super) async fn log_pause(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    service: &str,
    at: i64,
    action: &str,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    // In the order written (several in one millisecond included).
    sqlx::query(
        "INSERT INTO pause_log (seq, service, at, action, actor, reason)
         SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5 FROM pause_log",
    )
    .bind(service)
    .bind(at)
    .bind(action)
    .bind(by)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A person at the command line, as the ledger names them: `cli (<user>)`.
pub fn cli_user() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".into());
    format!("cli ({user})")
}
