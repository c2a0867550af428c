//! Conformance suite for the ledger: every behaviour of `Store`, once on
//! SQLite and once on Postgres. `deployments` covers the ledger of
//! deployments and verdicts; `runs` alerts, runs, steps and attempts;
//! `claims` leases, takeovers and fencing.

mod claims;
mod deployments;
mod retention;
mod runs;

use std::time::Duration;

use backstop::clock::now_ms;
use backstop::ledger::{
    Claim, DecisionRecord, Ingested, NewAlert, NewDeployment, Outcome, RunId, StepName, Store,
};
use serde_json::json;

use crate::helpers::*;

pub const SERVICE: &str = "storefront";
pub const BAKE: Duration = Duration::from_secs(30 * 60);
pub const LONG_LEASE: Duration = Duration::from_secs(60);

pub async fn fresh(db: Db) -> Option<(TestDatabase, Store)> {
    let database = TestDatabase::new(db).await?;
    let store = database.store().await;
    Some((database, store))
}

pub fn deployment(id: &str) -> NewDeployment {
    NewDeployment {
        id: id.into(),
        service: SERVICE.into(),
        url: Some(format!("storefront-{id}.vercel.app")),
        release: Some(format!("sha-{id}")),
        created_at_ms: Some(1_700_000_000_000),
    }
}

pub async fn record(store: &Store, ids: &[&str]) {
    for id in ids {
        store
            .record_deployment(&deployment(id))
            .await
            .expect("record deployment");
    }
}

pub async fn get(store: &Store, id: &str) -> backstop::ledger::Deployment {
    store
        .deployment(id)
        .await
        .expect("read deployment")
        .unwrap_or_else(|| panic!("{id} is recorded"))
}

pub async fn live_ids(store: &Store, service: &str) -> Vec<String> {
    let all = store.deployments(Some(service)).await.expect("deployments");
    all.into_iter().filter(|d| d.live).map(|d| d.id).collect()
}

pub fn alert(key: &str, service: Option<&str>) -> NewAlert {
    NewAlert {
        dedup_key: key.into(),
        resource: "metric_alert".into(),
        action: "critical".into(),
        service: service.map(str::to_owned),
        body: json!({"key": key}).to_string(),
        received_at_ms: now_ms(),
        decided: None,
    }
}

pub async fn stored_run(store: &Store, key: &str, service: Option<&str>) -> RunId {
    match store
        .ingest_alert(&alert(key, service))
        .await
        .expect("ingest")
    {
        Ingested::Stored(run) => run,
        other => panic!("first delivery of {key} must be stored, got {other:?}"),
    }
}

pub fn decision(
    outcome: Outcome,
    from: Option<&str>,
    to: Option<&str>,
    steps: &[StepName],
) -> DecisionRecord {
    DecisionRecord {
        service: Some(SERVICE.into()),
        outcome,
        reason: format!("{outcome} for the test"),
        detail: json!({"outcome": outcome}),
        rollback_from: from.map(str::to_owned),
        rollback_to: to.map(str::to_owned),
        alerted_live: None,
        steps: steps.to_vec(),
        attempt: None,
        note: None,
    }
}

/// Promotes each `(id, ago)` in order, `ago` ms before now.
pub async fn promote_in_order(store: &Store, promotions: &[(&str, i64)]) {
    let now = now_ms();
    for (id, ago) in promotions {
        store
            .promote(SERVICE, id, now - ago, BAKE)
            .await
            .expect("promote");
    }
}

/// Claims the only pending run as `worker`.
pub async fn claim(store: &Store, worker: &str) -> Claim {
    store
        .claim_run(worker, LONG_LEASE)
        .await
        .expect("claim")
        .expect("a pending run")
        .claim
}

/// `dpl_old` live 3 h ago, `dpl_new` live now, and a run decided to roll
/// back from one to the other, claimed by "worker-decide".
pub async fn decided_to_roll_back(store: &Store, key: &str) -> Claim {
    record(store, &["dpl_old", "dpl_new"]).await;
    promote_in_order(store, &[("dpl_old", 3 * 60 * MIN), ("dpl_new", 10 * MIN)]).await;
    let d = decision(
        Outcome::Rollback,
        Some("dpl_new"),
        Some("dpl_old"),
        &[StepName::Rollback],
    );
    decided_run(store, key, &d).await
}

/// An alert whose run a worker claimed and decided with `d`.
pub async fn decided_run(store: &Store, key: &str, d: &DecisionRecord) -> Claim {
    let run = stored_run(store, key, d.service.as_deref()).await;
    let claim = claim(store, "worker-decide").await;
    assert_eq!(claim.run, run, "the only pending run is claimed");
    store.save_decision(&claim, d).await.expect("save decision");
    claim
}
