//! The `resync` step: production changed under the ledger (rule 7), so
//! import the service's production deployments and live alias again.

use super::step::StepError;
use super::{Engine, EngineError, RunCtx};
use crate::feed::{self, SyncError};
use crate::ledger::StepName;

/// How many recent production deployments a resync imports.
const RESYNC_LIMIT: usize = 20;

impl Engine {
    /// The `resync` step.
    pub(super) async fn resync(&self, ctx: &RunCtx) -> Result<bool, EngineError> {
        let Some(service) = ctx.claimed.run.service.clone() else {
            return self.skip_step(ctx, StepName::Resync, "no service").await;
        };
        let svc = self.service(&service)?.clone();
        let Some(vercel) = self.inner.providers.vercel.clone() else {
            let why = "vercel.token is not configured";
            return self.skip_step(ctx, StepName::Resync, why).await;
        };
        let deadline = self.settings().engine.step_deadline;
        let (store, svc, vercel) = (self.store(), &svc, &vercel);
        let finished = self
            .attempt_loop(ctx, StepName::Resync, deadline, true, move |_| async move {
                let report = feed::sync_service(store, vercel, svc, RESYNC_LIMIT)
                    .await
                    .map_err(|e| match e {
                        SyncError::Provider(p) => StepError::from(p),
                        other => StepError::retryable("store", other.to_string()),
                    })?;
                Ok(serde_json::json!({"imported": report.imported, "live": report.live}))
            })
            .await?;
        Ok(finished.succeeded())
    }
}
