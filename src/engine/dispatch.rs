//! The process's one dispatcher: claims runs while it has room (up to
//! `engine.max_concurrent_runs`) and works each in a task of its own, so
//! runs for different services proceed side by side. One run per service
//! at a time still holds (the service claim), and across instances each run
//! is claimed by one of them. Idle, it costs nothing: it waits to be woken
//! by this process's webhooks, and looks for other instances' work once per
//! `engine.poll_interval`.

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::Engine;

impl Engine {
    /// Works runs until `shutdown` resolves, then finishes the runs in hand.
    pub async fn dispatch(self, mut shutdown: watch::Receiver<bool>) {
        let max = usize::try_from(self.settings().engine.max_concurrent_runs).unwrap_or(1);
        if max == 0 {
            return;
        }
        let poll = self.settings().engine.poll_interval;
        // Runs this dispatcher works wait normally until it is told to stop.
        self.inner.stopping.send_replace(false);
        let room = Arc::new(Semaphore::new(max));
        let mut runs = JoinSet::new();
        // Scoring decisions is a sweep over the ledger, every few seconds
        // at most, in a task of its own: it never holds up a claim.
        let score_every = poll.max(std::time::Duration::from_secs(5));
        let mut scored_at: Option<std::time::Instant> = None;
        let mut scoring: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let idle = scoring.as_ref().is_none_or(|t| t.is_finished());
            if idle && scored_at.is_none_or(|t| t.elapsed() >= score_every) {
                scored_at = Some(std::time::Instant::now());
                let engine = self.clone();
                scoring = Some(tokio::spawn(async move {
                    if let Err(e) = engine.score_due().await {
                        tracing::warn!(error = %e, "cannot score decisions; will retry");
                    }
                }));
            }
            // Claim while there is room and work.
            while !*shutdown.borrow() {
                let Ok(place) = room.clone().try_acquire_owned() else {
                    break;
                };
                match self.store().claim_run(self.worker_id(), self.lease()).await {
                    Ok(Some(claimed)) => {
                        let engine = self.clone();
                        runs.spawn(async move {
                            let _place = place;
                            if let Err(e) = engine.process(claimed).await {
                                tracing::warn!(error = %e, "run interrupted; it resumes when its lease lapses");
                            }
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim runs; will retry");
                        break;
                    }
                }
            }
            if *shutdown.borrow() {
                // Runs waiting between attempts stop; the ones mid-attempt
                // finish it.
                self.inner.stopping.send_replace(true);
                break;
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                // A run ended: there is room again (and maybe work waiting).
                Some(_) = runs.join_next(), if !runs.is_empty() => {}
                _ = shutdown.changed() => {}
            }
        }
        while runs.join_next().await.is_some() {}
    }
}
