//! A fresh, empty database per test: an SQLite file, or a Postgres schema
//! of its own on the server named by `BACKSTOP_TEST_POSTGRES_URL`.

use backstop::ledger::Store;
use secrecy::SecretString;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The Postgres server for tests: `BACKSTOP_TEST_POSTGRES_URL`. Missing is a
/// skip on a laptop and a failure under CI.
pub fn postgres_url() -> Option<String> {
    match std::env::var("BACKSTOP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but BACKSTOP_TEST_POSTGRES_URL is not: Postgres-backed tests must run in CI")
        }
        _ => {
            eprintln!("skipping: set BACKSTOP_TEST_POSTGRES_URL to run Postgres-backed tests");
            None
        }
    }
}

/// A fresh, empty database. Holds the SQLite temp dir alive.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// `None` when Postgres is not available outside CI.
    pub async fn new(db: Db) -> Option<Self> {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("backstop.db").display());
                Some(Self {
                    url,
                    _dir: Some(dir),
                })
            }
            Db::Postgres => {
                let base = postgres_url()?;
                let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
                let admin = Store::connect(&SecretString::from(base.clone()), 1)
                    .await
                    .expect("connect to test Postgres");
                admin
                    .execute_raw(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .expect("create schema");
                admin.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                Some(Self {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    _dir: None,
                })
            }
        }
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&SecretString::from(self.url.clone()), 5)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}
