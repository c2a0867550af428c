//! Pruning the ledger (see `ledger::retention` for what is kept): one
//! instance at a time (a job lease), in batches of short transactions with
//! a pause between them, so webhooks keep being answered.

use std::time::Duration;

use super::{Engine, EngineError};
use crate::clock::now_ms;
use crate::ledger::{Keep, Pruned};

/// Runs per batch (one short transaction each).
pub const BATCH: i64 = 100;
const JOB: &str = "retention";

impl Engine {
    /// What to keep, from the settings.
    pub fn keep(&self) -> Keep {
        let s = self.settings();
        Keep {
            runs: s.retention.runs,
            settled: s.retention.settled_alerts,
            cooldown: s
                .services
                .iter()
                .map(|x| x.cooldown)
                .max()
                .unwrap_or_default(),
        }
    }

    /// One pass now (`backstop prune`, and the background job): what went,
    /// or with `dry_run` what would. Skipped (`None`) while another
    /// instance prunes.
    pub async fn prune(&self, dry_run: bool) -> Result<Option<Pruned>, EngineError> {
        let keep = self.keep();
        let store = self.store();
        if dry_run {
            let now = now_ms();
            return Ok(Some(Pruned {
                runs: store.count_prunable(&keep, now).await?,
                deliveries: store.prune_deliveries(now, true).await?,
            }));
        }
        let lease = Duration::from_secs(120);
        if !store.take_job(JOB, self.worker_id(), lease).await? {
            return Ok(None);
        }
        let mut pruned = Pruned::default();
        let mut after = String::new();
        loop {
            let (n, next) = store.prune_after(&keep, now_ms(), &after, BATCH).await?;
            after = next;
            pruned.runs += n;
            if n < BATCH as u64 {
                break;
            }
            // Keep the job while working (or stop: another instance has
            // it now), and let ingest breathe.
            if !store.take_job(JOB, self.worker_id(), lease).await? {
                tracing::warn!("lost the pruning job to another instance; stopping this pass");
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        pruned.deliveries = store.prune_deliveries(now_ms(), false).await?;
        store.release_job(JOB, self.worker_id()).await?;
        if pruned != Pruned::default() {
            tracing::info!(
                runs = pruned.runs,
                deliveries = pruned.deliveries,
                "pruned the ledger"
            );
        }
        Ok(Some(pruned))
    }

    /// Prunes every `retention.interval` until `stop` says so.
    pub async fn prune_forever(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = self.settings().retention.interval;
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // A pass stopped mid-batch rolls that batch back: nothing half-done.
            tokio::select! {
                r = self.prune(false) => if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot prune the ledger; will retry");
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
