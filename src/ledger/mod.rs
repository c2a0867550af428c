//! The ledger: deployments and their verdicts, alerts, runs, steps and every
//! attempt. All SQL lives here.
//!
//! One [`Store`] serves both backends through sqlx's `Any` driver: the schema
//! and queries are written in the common subset of SQLite and Postgres (TEXT
//! and BIGINT only), and every place where the dialects differ is in
//! [`dialect`]. The conformance suite in `tests/api/ledger/` runs every
//! behaviour against both.
//!
//! Invariants: at most one live deployment per service (a partial unique
//! index); an alert's dedup key is unique, and the alert and its run are
//! written in one transaction; every write that belongs to a run is fenced
//! by the run's claim ([`Claim`]), so a worker whose claim was taken over
//! changes nothing; leases are computed on the database's clock.

mod batch;
mod connect;
mod console;
mod deployments;
pub mod dialect;
mod fill;
mod records;
mod retention;
mod rows;
mod runs;
mod scores;
mod services;
mod steering;
mod steps;

pub use console::RunFilter;
pub use dialect::Backend;
pub use records::*;
pub use retention::{Keep, Pruned, FLOOR as RETENTION_FLOOR};
pub use scores::StoredScore;
pub use services::{cli_user, MetricsSnapshot};
pub use steering::{Requested, UndoDone};

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached, timed out or asked to retry.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A query failed for another reason.
    #[error("store query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// The named record does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A stored value could not be read back.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A request contradicts the ledger (e.g. two live deployments).
    #[error("{0}")]
    Conflict(String),
    /// The writer no longer holds the run's claim: another worker took the
    /// run over, and this write changed nothing.
    #[error("lost the claim on run {0}")]
    LostClaim(RunId),
    /// The store could not be reached (a copy of an error shared by a batch).
    #[error("store unavailable: {0}")]
    Unreachable(String),
    /// A query failed (a copy of an error shared by a batch).
    #[error("store query failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// The same error for another caller (sqlx errors cannot be cloned).
    pub fn replicate(&self) -> StoreError {
        match self {
            StoreError::Unavailable(e) => StoreError::Unreachable(e.to_string()),
            StoreError::Unreachable(m) => StoreError::Unreachable(m.clone()),
            StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::LostClaim(r) => StoreError::LostClaim(r.clone()),
            other => StoreError::Failed(other.to_string()),
        }
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Unreachable(_)
        )
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_string())
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| Backend::is_transient(&c)) => {
                StoreError::Unavailable(e)
            }
            _ => StoreError::Query(e),
        }
    }
}

/// The ledger. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: sqlx::AnyPool,
    backend: Backend,
    ingest: tokio::sync::mpsc::Sender<batch::Job>,
}

impl Store {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}
