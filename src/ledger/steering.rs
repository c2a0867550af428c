//! What people do from where they are: a button pressed on a card becomes a
//! step of the card's run (`undo`, `hold`, `resume`), so a double click,
//! Slack retrying, two people pressing at once or two instances receiving
//! the presses all lead to one action; and the incident a run paged, so
//! PagerDuty's webhooks find their run.

use sqlx::Row;

use super::deployments::lock_service;
use super::records::*;
use super::{Store, StoreError};
use crate::clock::now_ms;

/// What became of a request to act on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Stored: a worker carries it out.
    Stored,
    /// Already requested (by this note's author, when known).
    Already(Option<String>),
    /// No such run.
    NoRun,
}

/// An undo, as the `undo` step hands it to the ledger.
#[derive(Debug, Clone)]
pub struct UndoDone<'a> {
    /// The run's claim.
    pub claim: &'a Claim,
    /// Service.
    pub service: &'a str,
    /// The deployment production is back on (the one rolled back from).
    pub back_on: &'a str,
    /// Who asked.
    pub by: &'a str,
    /// The step's output.
    pub output: &'a serde_json::Value,
}

impl Store {
    /// Adds step `step` to `run` (once: a second request finds it) with a
    /// note saying who asked, and makes the run claimable now. A run being
    /// worked on keeps its claim; the step is picked up when it finishes
    /// (see [`Store::finish_run`]).
    pub async fn request_step(
        &self,
        run: &RunId,
        step: StepName,
        by: &str,
        data: &serde_json::Value,
    ) -> Result<Requested, StoreError> {
        let now = self.backend.now();
        let mut tx = self.pool.begin().await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM runs WHERE id = $1")
            .bind(&run.0)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Ok(Requested::NoRun);
        }
        let added = sqlx::query(
            "INSERT INTO steps (run_id, name, seq, status)
             SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3 FROM steps WHERE run_id = $1
             ON CONFLICT (run_id, name) DO NOTHING",
        )
        .bind(&run.0)
        .bind(step.as_str())
        .bind(StepStatus::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        let kind = format!("asked:{step}");
        // A request that was refused (production could not be read, or had
        // moved) changed nothing: asking again checks again. Anything else
        // already asked for is the same request.
        let revived = added.rows_affected() == 0
            && sqlx::query(
                "UPDATE steps SET status = $3, output = NULL, error = NULL, finished_at = NULL
                 WHERE run_id = $1 AND name = $2 AND status = $4 AND output LIKE '%\"refused\":%'",
            )
            .bind(&run.0)
            .bind(step.as_str())
            .bind(StepStatus::Pending.as_str())
            .bind(StepStatus::Succeeded.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        if added.rows_affected() == 0 && !revived {
            // The latest ask is the one in force (an earlier one may have
            // been refused).
            let who: Option<String> = sqlx::query_scalar(
                "SELECT text FROM run_notes WHERE run_id = $1 AND kind = $2 ORDER BY at DESC LIMIT 1",
            )
            .bind(&run.0)
            .bind(&kind)
            .fetch_optional(&mut *tx)
            .await?;
            return Ok(Requested::Already(who));
        }
        super::services::insert_note(&mut *tx, &run.0, now_ms(), &kind, by, Some(data)).await?;
        sqlx::query(&format!(
            "UPDATE runs SET not_before = {now},
               status = CASE WHEN status IN ($2, $3, $4) THEN $5 ELSE status END
             WHERE id = $1"
        ))
        .bind(&run.0)
        .bind(RunStatus::Done.as_str())
        .bind(RunStatus::Failed.as_str())
        .bind(RunStatus::Watching.as_str())
        .bind(RunStatus::Pending.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Requested::Stored)
    }

    /// Records production back on `back_on` after a person's undo, if the
    /// claim still holds: it is live again, marked `overridden` (neither
    /// good nor bad, never a target), the deployment that was restored is
    /// superseded, the service is held, and the `undo` step succeeds.
    pub async fn complete_undo(&self, done: &UndoDone<'_>) -> Result<(), StoreError> {
        let UndoDone {
            claim,
            service,
            back_on,
            by,
            output,
        } = *done;
        let run = &claim.run;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
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
        sqlx::query("UPDATE deployments SET live = 0, superseded_at = $1, updated_at = $1 WHERE service = $2 AND live = 1")
            .bind(now)
            .bind(service)
            .execute(&mut *tx)
            .await?;
        let moved = sqlx::query(
            "UPDATE deployments SET live = 1, promoted_at = $1, superseded_at = NULL, updated_at = $1,
               verdict = $2, verdict_reason = $3 WHERE id = $4 AND service = $5",
        )
        .bind(now)
        .bind(Verdict::Overridden.as_str())
        .bind(format!("rollback of run {run} undone by {by}"))
        .bind(back_on)
        .bind(service)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!(
                "deployment {back_on} of service {service}"
            )));
        }
        let reason = format!("held after {by} undid the rollback of run {run}");
        super::services::hold(&mut tx, service, &reason, now, by).await?;
        sqlx::query("UPDATE steps SET status = $1, output = $2, finished_at = $3 WHERE run_id = $4 AND name = $5")
            .bind(StepStatus::Succeeded.as_str())
            .bind(output.to_string())
            .bind(now)
            .bind(&run.0)
            .bind(StepName::Undo.as_str())
            .execute(&mut *tx)
            .await?;
        // A recap already written missed the undo: with the undo, in the same
        // transaction (a crash after it cannot lose the second recap), it is
        // pending again.
        sqlx::query(
            "UPDATE steps SET status = $1, output = NULL, error = NULL, finished_at = NULL
             WHERE run_id = $2 AND name = $3 AND status = $4 AND output LIKE '%\"text\":%'",
        )
        .bind(StepStatus::Pending.as_str())
        .bind(&run.0)
        .bind(StepName::Recap.as_str())
        .bind(StepStatus::Succeeded.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remembers the incident `run` paged (the first run to page a key
    /// keeps it; a later page may fill in the incident id).
    pub async fn record_page(
        &self,
        incident_key: &str,
        run: &RunId,
        incident_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pages (incident_key, run_id, incident_id, paged_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (incident_key) DO UPDATE SET incident_id = COALESCE(pages.incident_id, excluded.incident_id)",
        )
        .bind(incident_key)
        .bind(&run.0)
        .bind(incident_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The run that paged an incident, by its key or its id.
    pub async fn run_for_incident(
        &self,
        incident_key: Option<&str>,
        incident_id: Option<&str>,
    ) -> Result<Option<RunId>, StoreError> {
        let row = sqlx::query(
            "SELECT run_id FROM pages WHERE incident_key = $1 OR (incident_id IS NOT NULL AND incident_id = $2)
             ORDER BY paged_at LIMIT 1",
        )
        .bind(incident_key.unwrap_or(""))
        .bind(incident_id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(RunId(r.try_get("run_id")?)),
            None => None,
        })
    }

    /// True when this delivery (`source`, `id`) was handled before.
    pub async fn provider_event_known(&self, source: &str, id: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM provider_events WHERE id = $1")
            .bind(format!("{source}:{id}"))
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// True when this delivery (`source`, `id`) was handled before;
    /// otherwise records it.
    pub async fn provider_event_seen(&self, source: &str, id: &str) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO provider_events (id, source, received_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(format!("{source}:{id}"))
        .bind(source)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(added.rows_affected() == 0)
    }
}
