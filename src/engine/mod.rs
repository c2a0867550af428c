//! Durable runs. A worker claims a run under a lease, claims its service (so
//! one service is decided and rolled back by one run at a time, across
//! instances), and executes its steps in order: `decide`, then `rollback`,
//! then the notification steps. Every attempt is stored before and after it
//! runs; a step's outcome is stored before the next starts; a run whose
//! worker died is taken over when its lease lapses and resumes at the first
//! unfinished step.

mod decide;
mod notify;
mod rollback;
mod step;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Settings;
use crate::ledger::{run_status, step_status, ClaimedRun, Store, StoreError};
use crate::providers::vercel::VercelClient;

pub use notify::dedup_key;
pub use step::StepError;

use crate::providers::pagerduty::PagerDutyClient;
use crate::providers::slack::SlackClient;

/// The provider clients the engine calls; `None` where not configured.
#[derive(Clone, Default)]
pub struct Providers {
    /// Vercel (rollback, live state).
    pub vercel: Option<VercelClient>,
    /// PagerDuty (page).
    pub pagerduty: Option<PagerDutyClient>,
    /// Slack (announce).
    pub slack: Option<SlackClient>,
}

/// Why a run could not be worked on now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; the run stays claimed until its lease lapses.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another worker took the run over.
    #[error("lost the claim on run {0}")]
    LostClaim(String),
}

/// Executes runs. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// This worker's claim id: unique per worker, even within a process.
    worker: Arc<str>,
}

struct Inner {
    store: Store,
    settings: Arc<Settings>,
    providers: Providers,
    wake: Notify,
    failpoint: Option<String>,
    /// Runs whose lease a heartbeat failed to renew: another instance may own them now.
    lost: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Engine {
    /// An engine for this process.
    pub fn new(store: Store, settings: Arc<Settings>, providers: Providers) -> Self {
        let worker = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                providers,
                wake: Notify::new(),
                failpoint: std::env::var("BACKSTOP_FAILPOINT")
                    .ok()
                    .filter(|f| !f.is_empty()),
                lost: Default::default(),
            }),
            worker: worker.into(),
        }
    }

    /// The store behind the engine.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// This worker's claim id.
    pub fn worker_id(&self) -> &str {
        &self.worker
    }

    /// The same engine under another worker id (one per background worker).
    pub fn for_worker(&self, n: u64) -> Engine {
        Engine {
            inner: self.inner.clone(),
            worker: format!("{}-w{n}", self.worker).into(),
        }
    }

    /// Tells an idle worker there is new work.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Stores a verified alert with its run (or names the run of an earlier
    /// delivery) and wakes a worker. When the alert alone settles the
    /// decision (not critical, unmapped, not a crash alert) the run is
    /// stored decided and finished, in the same transaction.
    pub async fn ingest(
        &self,
        resource: &str,
        alert: &crate::ingest::sentry::Alert,
        body: &str,
        received_at_ms: i64,
    ) -> Result<crate::ledger::Ingested, StoreError> {
        let services = &self.settings().services;
        let decided = crate::policy::decide_from_alert(alert, services, received_at_ms)
            .map(|d| self.record(&d));
        let new = crate::ledger::NewAlert {
            dedup_key: alert.dedup_key(),
            resource: resource.to_string(),
            action: alert.action.clone(),
            service: crate::policy::map_service(alert, services).map(|s| s.name.clone()),
            body: body.to_string(),
            received_at_ms,
            decided,
        };
        let result = self.store().ingest_alert(&new).await?;
        if matches!(result, crate::ledger::Ingested::Stored(_)) && new.decided.is_none() {
            self.wake();
        }
        Ok(result)
    }

    /// Works until no run is claimable; returns how many runs it worked on.
    pub async fn run_until_idle(&self) -> Result<usize, EngineError> {
        let mut worked = 0;
        while let Some(claimed) = self
            .store()
            .claim_run(self.worker_id(), self.lease())
            .await?
        {
            self.process(claimed).await?;
            worked += 1;
        }
        Ok(worked)
    }

    /// The background worker: runs until `shutdown` resolves, finishing the
    /// run in hand first.
    pub async fn work(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let poll = self.settings().engine.poll_interval;
        loop {
            // One run at a time, so a shutdown waits for at most the run in hand.
            while !*shutdown.borrow() {
                match self.store().claim_run(self.worker_id(), self.lease()).await {
                    Ok(Some(claimed)) => {
                        if let Err(e) = self.process(claimed).await {
                            tracing::warn!(error = %e, "run interrupted; it resumes when its lease lapses");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim runs; will retry");
                        break;
                    }
                }
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn lease(&self) -> Duration {
        self.settings().engine.lease
    }

    /// Works one claimed run as far as it can go.
    #[tracing::instrument(skip_all, fields(run.id = %claimed.run.id, service = claimed.run.service.as_deref().unwrap_or("-")))]
    async fn process(&self, claimed: ClaimedRun) -> Result<(), EngineError> {
        let run = claimed.run.id.clone();
        let service = claimed.run.service.clone();
        if let Some(service) = &service {
            if !self
                .store()
                .claim_service(service, &run, self.lease())
                .await?
            {
                // Another run of this service is deciding or rolling back.
                self.store()
                    .defer_run(&run, self.worker_id(), Duration::from_millis(200))
                    .await?;
                return Ok(());
            }
        }
        let heartbeat = self.heartbeat(&run);
        let result = self.process_held(&claimed, service.as_deref()).await;
        heartbeat.abort();
        self.inner
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run.0);
        result
    }

    async fn process_held(
        &self,
        claimed: &ClaimedRun,
        service: Option<&str>,
    ) -> Result<(), EngineError> {
        let run = claimed.run.id.clone();
        // Deciding and rolling back hold the service; notifying does not.
        let acted = self.decide_and_roll_back(claimed).await;
        if let Some(service) = service {
            self.store().release_service(service, &run).await?;
        }
        let ok = acted? & self.notify(claimed).await?;
        self.failpoint("before-finish").await;
        let steps = self.store().steps(&run).await?;
        let failed = !ok || steps.iter().any(|s| s.status == step_status::FAILED);
        let status = if failed {
            run_status::FAILED
        } else {
            run_status::DONE
        };
        if !self
            .store()
            .finish_run(&run, status, self.worker_id())
            .await?
        {
            return Err(EngineError::LostClaim(run.to_string()));
        }
        tracing::info!(status, "run finished");
        Ok(())
    }

    /// The `decide` and `rollback` steps, whichever are unfinished; false
    /// when the rollback failed.
    async fn decide_and_roll_back(&self, claimed: &ClaimedRun) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        // Not decided yet: only `decide` exists, no need to read the steps.
        let mut pending = match claimed.run.decided_at_ms {
            None => std::iter::once("decide".to_string()).collect(),
            Some(_) => self.pending(run).await?,
        };
        let mut plan = None;
        if pending.contains("decide") {
            let record = self.decide(claimed).await?;
            self.failpoint("after-decide").await;
            // Just stored: its steps are the pending ones.
            pending = record.steps.iter().cloned().collect();
            if let (Some(s), Some(f), Some(t)) =
                (record.service, record.rollback_from, record.rollback_to)
            {
                plan = Some((s, f, t));
            }
        }
        if pending.contains("rollback") {
            return self.rollback(claimed, plan).await;
        }
        if pending.contains("resync") {
            return self.resync(claimed).await;
        }
        Ok(true)
    }

    /// `page` and `announce` side by side, then `followup`; false when one failed.
    async fn notify(&self, claimed: &ClaimedRun) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        let pending = self.pending(run).await?;
        let (paged, announced) = tokio::join!(
            async {
                if pending.contains("page") {
                    self.page(claimed).await
                } else {
                    Ok(true)
                }
            },
            async {
                if pending.contains("announce") {
                    self.announce(claimed).await
                } else {
                    Ok(true)
                }
            },
        );
        let mut ok = paged? & announced?;
        if pending.contains("followup") {
            ok &= self.followup(claimed).await?;
        }
        Ok(ok)
    }

    /// The `resync` step: production changed under the ledger (rule 7), so
    /// import the service's production deployments and live alias again.
    async fn resync(&self, claimed: &ClaimedRun) -> Result<bool, EngineError> {
        let run = &claimed.run.id;
        let service = claimed.run.service.clone().unwrap_or_default();
        let (Some(svc), Some(vercel)) = (
            self.settings().service(&service).cloned(),
            self.inner.providers.vercel.clone(),
        ) else {
            return Ok(true);
        };
        let deadline = self.settings().engine.step_deadline;
        let (store, svc, vercel) = (self.store(), &svc, &vercel);
        let finished = self
            .attempt_loop(run, "resync", deadline, true, move |_| async move {
                let report = crate::feed::sync_service(store, vercel, svc, 20)
                    .await
                    .map_err(|e| match e {
                        crate::feed::SyncError::Provider(p) => StepError::from(p),
                        other => StepError::retryable("store", other.to_string()),
                    })?;
                Ok(serde_json::json!({"imported": report.imported, "live": report.live}))
            })
            .await?;
        Ok(matches!(finished, step::Finished::Succeeded(..)))
    }

    /// Names of the run's unfinished steps.
    async fn pending(
        &self,
        run: &crate::ledger::RunId,
    ) -> Result<std::collections::HashSet<String>, EngineError> {
        let steps = self.store().steps(run).await?;
        Ok(steps
            .into_iter()
            .filter(|s| s.status == step_status::PENDING)
            .map(|s| s.name)
            .collect())
    }

    /// Renews the run's lease (and its service claim) every third of a
    /// lease while the run is worked on, however long one attempt takes. If
    /// a renewal finds the claim gone, the run is marked lost: its next
    /// attempt stops instead of acting beside the new owner.
    fn heartbeat(&self, run: &crate::ledger::RunId) -> tokio::task::JoinHandle<()> {
        let (engine, run) = (self.clone(), run.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(engine.lease() / 3).await;
                match engine
                    .store()
                    .renew_run(&run, engine.worker_id(), engine.lease())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(run.id = %run, "lease lost; another instance owns this run now");
                        engine
                            .inner
                            .lost
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(run.0.clone());
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(run.id = %run, error = %e, "cannot renew the lease; will retry")
                    }
                }
            }
        })
    }

    /// True when a heartbeat found this worker's claim on `run` gone.
    pub(crate) fn is_lost(&self, run: &crate::ledger::RunId) -> bool {
        self.inner
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&run.0)
    }

    /// A test hook: with `BACKSTOP_FAILPOINT=<name>` set, the run in hand
    /// stops dead at that point (and says so on stderr) so a test can kill
    /// the process there. Names: `after-decide`, `rollback-accepted`,
    /// `after-rollback`, `page-accepted`, `announce-accepted`, `before-finish`.
    pub(crate) async fn failpoint(&self, name: &str) {
        if self.inner.failpoint.as_deref() == Some(name) {
            eprintln!("BACKSTOP_FAILPOINT {name} reached");
            std::future::pending::<()>().await;
        }
    }
}
