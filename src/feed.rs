//! What feeds the ledger: Vercel deployment webhooks, `backstop sync`, and
//! `backstop deployments record`. Times are Vercel's own (`createdAt`), so
//! late and out-of-order deliveries land where they belong.

use serde::Serialize;

use crate::config::{ServiceSettings, Settings};
use crate::ingest::vercel::DeploymentEvent;
use crate::ledger::{NewDeployment, Promotion, Store, StoreError};
use crate::providers::vercel::VercelClient;
use crate::providers::ProviderError;

/// What a Vercel webhook did to the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Applied {
    /// The delivery id was seen before.
    Duplicate,
    /// No service uses the event's project, or it is not about production.
    Ignored { why: String },
    /// Recorded (not live).
    Recorded,
    /// The deployment is live now.
    Promoted { superseded: Option<String> },
    /// A promotion older than the live one; history filled in.
    OlderPromotion,
}

/// The service that owns a Vercel project.
pub fn service_for_project<'a>(
    settings: &'a Settings,
    project: Option<&str>,
) -> Option<&'a ServiceSettings> {
    let project = project?;
    settings
        .services
        .iter()
        .find(|s| s.vercel_project == project)
}

/// Applies a verified Vercel deployment event.
pub async fn apply_vercel_event(
    store: &Store,
    settings: &Settings,
    e: &DeploymentEvent,
) -> Result<Applied, StoreError> {
    let Some(svc) = service_for_project(settings, e.project_id.as_deref()) else {
        return Ok(Applied::Ignored {
            why: format!(
                "no service uses project {}",
                e.project_id.as_deref().unwrap_or("?")
            ),
        });
    };
    let promoted = e.kind == "deployment.promoted";
    // A promotion without a target is taken as production (older payloads);
    // anything else must say production.
    let production = match e.target.as_deref() {
        Some(t) => t == "production",
        None => promoted,
    };
    if !production {
        return Ok(Applied::Ignored {
            why: format!("{} for a non-production deployment", e.kind),
        });
    }
    if !matches!(
        e.kind.as_str(),
        "deployment.promoted" | "deployment.created" | "deployment.succeeded" | "deployment.ready"
    ) {
        return Ok(Applied::Ignored {
            why: format!("{} does not change the ledger", e.kind),
        });
    }
    if store.vercel_event_seen(&e.event_id).await? {
        return Ok(Applied::Duplicate);
    }
    let applied = apply(store, svc, e, promoted).await?;
    // Recorded last: if applying failed, Vercel's retry applies it again
    // (every write above is idempotent) instead of being a "duplicate".
    store
        .record_vercel_event(&e.event_id, &e.kind, &e.deployment_id, e.created_at_ms)
        .await?;
    Ok(applied)
}

async fn apply(
    store: &Store,
    svc: &ServiceSettings,
    e: &DeploymentEvent,
    promoted: bool,
) -> Result<Applied, StoreError> {
    store
        .record_deployment(&NewDeployment {
            id: e.deployment_id.clone(),
            service: svc.name.clone(),
            url: e.url.clone(),
            release: e.release(&svc.release_meta_key),
            created_at_ms: (!promoted).then_some(e.created_at_ms),
        })
        .await?;
    if !promoted {
        return Ok(Applied::Recorded);
    }
    Ok(
        match store
            .promote(&svc.name, &e.deployment_id, e.created_at_ms, svc.bake_time)
            .await?
        {
            Promotion::Live { superseded } => Applied::Promoted { superseded },
            Promotion::AlreadyLive => Applied::Recorded,
            Promotion::Older => Applied::OlderPromotion,
        },
    )
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Vercel refused or failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The ledger failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a sync found for one service.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// Service name.
    pub service: String,
    /// Production deployments imported or refreshed.
    pub imported: usize,
    /// The deployment the first production domain serves.
    pub live: Option<String>,
}

/// Imports recent READY production deployments and the current alias target.
///
/// Imported history assumes each production deployment served from when it
/// became ready until the next one did (Vercel's default auto-assignment);
/// deployments already in the ledger keep their recorded times.
pub async fn sync_service(
    store: &Store,
    vercel: &VercelClient,
    svc: &ServiceSettings,
    limit: usize,
) -> Result<SyncReport, SyncError> {
    let listed = vercel
        .production_deployments(&svc.vercel_project, limit)
        .await?;
    for d in &listed {
        store
            .record_deployment(&NewDeployment {
                id: d.id.clone(),
                service: svc.name.clone(),
                url: d.url.clone(),
                release: d
                    .meta
                    .get(&svc.release_meta_key)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                created_at_ms: d.created_at_ms,
            })
            .await?;
    }
    let live = match svc.domains.first() {
        Some(domain) => vercel
            .alias_targets(std::slice::from_ref(domain))
            .await?
            .pop()
            .flatten(),
        None => None,
    };
    // Oldest first, so each promotion supersedes the one before it.
    let mut history: Vec<_> = listed
        .iter()
        .filter(|d| d.ready_at_ms.or(d.created_at_ms).is_some())
        .collect();
    history.sort_by_key(|d| d.ready_at_ms.or(d.created_at_ms));
    let known = store.deployments(Some(&svc.name)).await?;
    for d in history {
        let already = known
            .iter()
            .any(|k| k.id == d.id && k.promoted_at_ms.is_some());
        let newer_than_live = live.as_deref().is_some_and(|l| {
            let live_at = listed
                .iter()
                .find(|x| x.id == l)
                .and_then(|x| x.ready_at_ms.or(x.created_at_ms));
            live_at.is_some_and(|la| d.ready_at_ms.or(d.created_at_ms).is_some_and(|at| at > la))
        });
        if already || newer_than_live {
            continue;
        }
        let at = d.ready_at_ms.or(d.created_at_ms).unwrap_or_default();
        store.promote(&svc.name, &d.id, at, svc.bake_time).await?;
    }
    if let Some(live_id) = &live {
        let in_ledger = store.deployment(live_id).await?;
        if in_ledger.as_ref().is_some_and(|d| !d.live) || in_ledger.is_none() {
            if in_ledger.is_none() {
                store
                    .record_deployment(&NewDeployment {
                        id: live_id.clone(),
                        service: svc.name.clone(),
                        ..Default::default()
                    })
                    .await?;
            }
            store
                .promote(&svc.name, live_id, crate::clock::now_ms(), svc.bake_time)
                .await?;
        }
    }
    Ok(SyncReport {
        service: svc.name.clone(),
        imported: listed.len(),
        live,
    })
}
