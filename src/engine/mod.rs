//! Durable runs. A worker claims a run under a lease, claims its service (so
//! one service is decided and rolled back by one run at a time, across
//! instances), and executes its steps phase by phase (see
//! [`StepName::phase`]): `decide`, then `rollback` or `resync`, then `page`
//! and `announce` side by side, then `followup`. Every attempt is stored
//! before and after it runs; a step's outcome is stored before the next
//! phase starts; every write carries the run's claim, so a worker whose
//! claim was taken over changes nothing ([`EngineError::LostClaim`]); a run
//! whose worker died is taken over when its lease lapses and resumes at the
//! first unfinished step.
//!
//! Adding a step: a variant of [`StepName`] (with its phase), a line in
//! `policy::plan`, its own file here, and its arm in [`Engine::run_step`].

mod agents;
mod announce;
mod decide;
mod dispatch;
mod facts;
mod page;
mod record;
mod resync;
mod retention;
mod rollback;
mod score;
mod steer;
mod step;
mod watch;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Settings;
use crate::ledger::{
    ClaimedRun, DecisionRecord, Phase, RunId, RunStatus, StepName, StepStatus, Store, StoreError,
};
use crate::notice::Templates;
use crate::providers::pagerduty::PagerDutyClient;
use crate::providers::sentry::SentryClient;
use crate::providers::slack::SlackClient;
use crate::providers::vercel::VercelClient;

pub use page::incident_key;
pub use steer::Asker;
pub use step::StepError;

/// The provider clients the engine calls; `None` where not configured.
#[derive(Clone, Default)]
pub struct Providers {
    /// Vercel (rollback, live state).
    pub vercel: Option<VercelClient>,
    /// PagerDuty (page).
    pub pagerduty: Option<PagerDutyClient>,
    /// Slack (announce).
    pub slack: Option<SlackClient>,
    /// Sentry's API (release health, deploys), when a token and an
    /// organization are configured.
    pub sentry: Option<SentryClient>,
    /// The OpenAI-compatible endpoint of the agents, when `[ai]` is on.
    pub ai: Option<crate::providers::ai::AiClient>,
}

/// Why a run could not be worked on now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed; the run stays claimed until its lease lapses.
    #[error(transparent)]
    Store(StoreError),
    /// Another worker took the run over; this one stopped and changed nothing.
    #[error("lost the claim on run {0}")]
    LostClaim(RunId),
    /// The run's service is no longer in the configuration.
    #[error("service `{0}` is no longer configured")]
    ServiceGone(String),
    /// A configured template does not compile.
    #[error("templates: {0}")]
    Templates(String),
    /// The process is shutting down: the run stopped between attempts and
    /// resumes at the next start (or on another instance, after its lease).
    #[error("shutting down: the run resumes at the next start")]
    ShuttingDown,
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LostClaim(run) => EngineError::LostClaim(run),
            other => EngineError::Store(other),
        }
    }
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
    templates: Templates,
    wake: Notify,
    failpoint: Option<String>,
    groups: steer::Groups,
    metrics: crate::metrics::Metrics,
    /// Set when the process shuts down: runs waiting between attempts stop.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// A run being worked on: the claim, what the heartbeat learned, and the
/// decision once it is made (so later steps need not read it back).
pub(crate) struct RunCtx {
    claimed: ClaimedRun,
    lost: Arc<AtomicBool>,
    decided: Mutex<Option<DecisionRecord>>,
    /// A step changed the run's plan (a decision made again): the pending
    /// steps must be read again.
    replanned: AtomicBool,
    /// The watch handed the run back until its next look: stop here,
    /// without finishing it.
    later: AtomicBool,
}

impl RunCtx {
    /// The decision made in this process, if any.
    pub(crate) fn decided(&self) -> Option<DecisionRecord> {
        self.decided
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps the decision just stored; `replanned` when it replaces one.
    pub(crate) fn set_decided(&self, record: DecisionRecord, replanned: bool) {
        *self.decided.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
        if replanned {
            self.replanned.store(true, Ordering::SeqCst);
        }
    }

    /// `LostClaim` once a heartbeat found the claim gone: the next attempt
    /// would act beside the new owner, so it does not start.
    pub(crate) fn still_held(&self) -> Result<(), EngineError> {
        match self.lost.load(Ordering::SeqCst) {
            true => Err(EngineError::LostClaim(self.claimed.run.id.clone())),
            false => Ok(()),
        }
    }
}

impl Engine {
    /// An engine for this process. Fails when a template does not compile.
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        providers: Providers,
    ) -> Result<Self, EngineError> {
        let templates =
            Templates::compile(&settings).map_err(|e| EngineError::Templates(e.to_string()))?;
        let worker = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                settings,
                providers,
                templates,
                wake: Notify::new(),
                failpoint: std::env::var("BACKSTOP_FAILPOINT")
                    .ok()
                    .filter(|f| !f.is_empty()),
                groups: steer::Groups::default(),
                metrics: crate::metrics::Metrics::new(),
                stopping: tokio::sync::watch::Sender::new(false),
            }),
            worker: worker.into(),
        })
    }

    /// The store behind the engine.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// This worker's claim id.
    pub fn worker_id(&self) -> &str {
        &self.worker
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
        let policies = self.settings().policies();
        let decided = crate::policy::decide_from_alert(alert, &policies, received_at_ms)
            .map(|d| self.record(&d));
        let new = crate::ledger::NewAlert {
            dedup_key: alert.dedup_key(),
            resource: resource.to_string(),
            action: alert.action.clone(),
            service: crate::policy::map_service(alert, &policies).map(|s| s.name.to_string()),
            body: body.to_string(),
            received_at_ms,
            decided,
        };
        let result = self.store().ingest_alert(&new).await?;
        if let (crate::ledger::Ingested::Stored(_), Some(d)) = (&result, &new.decided) {
            let fate = match d.outcome {
                crate::ledger::Outcome::Resolution => "resolved",
                _ => "skipped",
            };
            self.metrics().decided(d.service.as_deref(), fate);
        }
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

    /// Works one run (and no other) until it is finished or watching its
    /// rollback recover (the dispatcher takes the looks from there);
    /// `backstop test-alert` uses this, so a rehearsal never executes other
    /// alerts.
    pub async fn run_one(&self, run: &RunId) -> Result<(), EngineError> {
        let deadline = std::time::Instant::now() + 4 * self.lease();
        loop {
            let status = self.store().run(run).await?.status;
            if matches!(
                status,
                RunStatus::Done | RunStatus::Failed | RunStatus::Watching
            ) {
                return Ok(());
            }
            let claimed = self
                .store()
                .claim_run_by_id(run, self.worker_id(), self.lease())
                .await?;
            match claimed {
                Some(claimed) => self.process(claimed).await?,
                // Another run of the service holds it: wait for it, bounded.
                None if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                None => {
                    let why = format!("run {run} stayed held by another worker");
                    return Err(EngineError::Store(StoreError::Conflict(why)));
                }
            }
        }
    }

    pub(crate) fn lease(&self) -> Duration {
        self.settings().engine.lease
    }

    /// Works one claimed run as far as it can go.
    #[tracing::instrument(skip_all, fields(run.id = %claimed.run.id, service = claimed.run.service.as_deref().unwrap_or("-")))]
    pub(crate) async fn process(&self, claimed: ClaimedRun) -> Result<(), EngineError> {
        let claim = claimed.claim.clone();
        let ctx = RunCtx {
            claimed,
            lost: Arc::new(AtomicBool::new(false)),
            decided: Mutex::new(None),
            replanned: AtomicBool::new(false),
            later: AtomicBool::new(false),
        };
        // Not decided yet: only `decide` exists, no need to read the steps.
        let pending: BTreeSet<StepName> = match ctx.claimed.run.decided_at_ms {
            None => [StepName::Decide].into(),
            Some(_) => self.pending(&ctx).await?,
        };
        // The service is claimed only to decide and act (so a run past that,
        // such as one watching its rollback recover, never waits for it).
        let service = ctx
            .claimed
            .run
            .service
            .clone()
            .filter(|_| pending.iter().any(|s| s.phase().holds_service()));
        if let (Some(left), None) = (&ctx.claimed.run.service, &service) {
            // A worker that died between acting and telling may have left
            // this run's service claim behind: the heartbeat must not keep
            // it alive while nothing here needs it.
            self.store().release_service(left, &claim).await?;
        }
        if let Some(service) = &service {
            if !self
                .store()
                .claim_service(service, &claim, self.lease())
                .await?
            {
                // Another run of this service is deciding or rolling back.
                self.store()
                    .defer_run(&claim, Duration::from_millis(200))
                    .await?;
                return Ok(());
            }
        }
        let heartbeat = self.heartbeat(&ctx);
        let result = self.process_held(&ctx, pending, service.as_deref()).await;
        heartbeat.abort();
        result
    }

    /// Runs the unfinished steps phase by phase, earliest phase first; the
    /// service is held while deciding and acting, and released before
    /// telling. A step that makes the decision again (after a resync) adds
    /// steps, which are read back and run in their phase. A watch that
    /// looks again later leaves the run unfinished.
    async fn process_held(
        &self,
        ctx: &RunCtx,
        mut pending: BTreeSet<StepName>,
        service: Option<&str>,
    ) -> Result<(), EngineError> {
        let claim = &ctx.claimed.claim;
        let mut ok = true;
        let mut holding = service;
        while let Some(phase) = pending.iter().map(|s| s.phase()).min() {
            if let (Some(s), false) = (holding, phase.holds_service()) {
                self.store().release_service(s, claim).await?;
                holding = None;
            }
            let steps: Vec<StepName> = pending
                .iter()
                .copied()
                .filter(|s| s.phase() == phase)
                .collect();
            let results =
                futures_util::future::join_all(steps.iter().map(|s| self.run_step(ctx, *s))).await;
            for r in results {
                ok &= r?;
            }
            if ctx.later.load(Ordering::SeqCst) {
                if let Some(s) = holding {
                    self.store().release_service(s, claim).await?;
                }
                return Ok(());
            }
            pending.retain(|s| !steps.contains(s));
            if phase == Phase::Decide {
                self.failpoint("after-decide").await;
                // Just stored: its steps are the pending ones.
                pending = ctx
                    .decided()
                    .map(|d| d.steps.iter().copied().collect())
                    .unwrap_or_default();
            }
            if ctx.replanned.swap(false, Ordering::SeqCst) {
                pending = self.pending(ctx).await?;
            }
        }
        if let Some(s) = holding {
            self.store().release_service(s, claim).await?;
        }
        self.failpoint("before-finish").await;
        // An agent that could not write does not fail the run: it only adds.
        let failed = !ok
            || self.store().steps(&claim.run).await?.iter().any(|s| {
                s.status == StepStatus::Failed
                    && !matches!(s.name, StepName::Brief | StepName::Recap)
            });
        let status = match failed {
            true => RunStatus::Failed,
            false => RunStatus::Done,
        };
        self.store().finish_run(claim, status).await?;
        tracing::info!(status = %status, "run finished");
        Ok(())
    }

    /// The one dispatcher: every step, by name. True when it succeeded.
    async fn run_step(&self, ctx: &RunCtx, step: StepName) -> Result<bool, EngineError> {
        match step {
            StepName::Decide => self.decide(ctx).await,
            StepName::Rollback => self.rollback(ctx).await,
            StepName::Resync => self.resync(ctx).await,
            StepName::Page => self.page(ctx).await,
            StepName::Announce => self.announce(ctx).await,
            StepName::Followup => self.followup(ctx).await,
            StepName::Record => self.record_change(ctx).await,
            StepName::Watch => self.watch(ctx).await,
            StepName::Undo => self.undo(ctx).await,
            StepName::Hold => self.hold(ctx).await,
            StepName::Resume => self.resume(ctx).await,
            StepName::Brief => self.brief(ctx).await,
            StepName::Recap => self.recap(ctx).await,
        }
    }

    /// The run's unfinished steps.
    async fn pending(&self, ctx: &RunCtx) -> Result<BTreeSet<StepName>, EngineError> {
        let steps = self.store().steps(&ctx.claimed.run.id).await?;
        Ok(steps
            .into_iter()
            .filter(|s| s.status == StepStatus::Pending)
            .map(|s| s.name)
            .collect())
    }

    /// Renews the run's lease (and its service claim) every third of a
    /// lease while the run is worked on, however long one attempt takes. If
    /// a renewal finds the claim gone, the run is marked lost: its next
    /// attempt does not start (and any write it tries is fenced anyway).
    fn heartbeat(&self, ctx: &RunCtx) -> tokio::task::JoinHandle<()> {
        let (engine, claim, lost) = (self.clone(), ctx.claimed.claim.clone(), ctx.lost.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(engine.lease() / 3).await;
                match engine.store().renew_run(&claim, engine.lease()).await {
                    Ok(()) => {}
                    Err(StoreError::LostClaim(_)) => {
                        tracing::warn!(run.id = %claim.run, "lease lost; another instance owns this run now");
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(run.id = %claim.run, error = %e, "cannot renew the lease; will retry")
                    }
                }
            }
        })
    }

    /// A test hook: with `BACKSTOP_FAILPOINT=<name>` set, the run in hand
    /// stops dead at that point (and says so on stderr) so a test can kill
    /// the process there. Names: `after-decide`, `rollback-accepted`,
    /// `after-rollback`, `page-accepted`, `announce-accepted`, `before-finish`,
    /// `watch-frozen` (the watch froze the service, before paging again).
    pub(crate) async fn failpoint(&self, name: &str) {
        if self.inner.failpoint.as_deref() == Some(name) {
            eprintln!("BACKSTOP_FAILPOINT {name} reached");
            std::future::pending::<()>().await;
        }
    }

    /// The configured service `name`, or `ServiceGone`.
    pub(crate) fn service(
        &self,
        name: &str,
    ) -> Result<&crate::config::ServiceSettings, EngineError> {
        self.settings()
            .service(name)
            .ok_or_else(|| EngineError::ServiceGone(name.to_string()))
    }

    /// The compiled templates.
    pub(crate) fn templates(&self) -> &Templates {
        &self.inner.templates
    }
}
