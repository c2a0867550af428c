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
}

struct Inner {
    store: Store,
    settings: Arc<Settings>,
    providers: Providers,
    worker: String,
    wake: Notify,
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
                worker,
                wake: Notify::new(),
            }),
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
        &self.inner.worker
    }

    /// Tells an idle worker there is new work.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
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
            if *shutdown.borrow() {
                return;
            }
            match self.run_until_idle().await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "worker pass stopped; will retry"),
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
        let result = self.process_claimed(&claimed).await;
        if let Some(service) = &service {
            self.store().release_service(service, &run).await?;
        }
        result
    }

    async fn process_claimed(&self, claimed: &ClaimedRun) -> Result<(), EngineError> {
        let run = &claimed.run.id;
        let steps = self.store().steps(run).await?;
        if steps
            .iter()
            .any(|s| s.name == "decide" && s.status == step_status::PENDING)
        {
            self.decide(claimed).await?;
        }
        let steps = self.store().steps(run).await?;
        let pending = |name: &str| {
            steps
                .iter()
                .any(|s| s.name == name && s.status == step_status::PENDING)
        };
        let mut ok = true;
        if pending("rollback") {
            ok &= self.rollback(claimed).await?;
        }
        // Page and announce side by side, after the rollback.
        let (paged, announced) = tokio::join!(
            async {
                if pending("page") {
                    self.page(claimed).await
                } else {
                    Ok(true)
                }
            },
            async {
                if pending("announce") {
                    self.announce(claimed).await
                } else {
                    Ok(true)
                }
            },
        );
        ok &= paged? & announced?;
        let steps = self.store().steps(run).await?;
        let failed = !ok || steps.iter().any(|s| s.status == step_status::FAILED);
        let status = if failed {
            run_status::FAILED
        } else {
            run_status::DONE
        };
        self.store().finish_run(run, status).await?;
        tracing::info!(status, "run finished");
        Ok(())
    }
}
