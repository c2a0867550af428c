//! The ledger: deployments and their verdicts, alerts, runs, steps and every
//! attempt. All SQL lives here.
//!
//! One [`Store`] serves both backends through sqlx's `Any` driver: the schema
//! and queries are written in the common subset of SQLite and Postgres (TEXT
//! and BIGINT only), and the few places where the dialects differ (row locks
//! for claims, migration locking) branch on [`Backend`]. The conformance
//! suite in `tests/api/ledger.rs` runs every behaviour against both.
//!
//! Invariants: at most one live deployment per service (a partial unique
//! index); an alert's dedup key is unique, and the alert and its run are
//! written in one transaction; a run or a service is worked on only by the
//! holder of an unexpired lease.

mod batch;
mod records;
mod store;

pub use records::*;
pub use store::{now_ms, Backend, Store};

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or timed out: retry later.
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
            other => StoreError::Failed(other.to_string()),
        }
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
            sqlx::Error::Database(db) if is_transient(db.message()) => StoreError::Unavailable(e),
            _ => StoreError::Query(e),
        }
    }
}

fn is_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("database is locked")
        || m.contains("terminating connection")
        || m.contains("the database system is")
        || m.contains("could not serialize")
}
