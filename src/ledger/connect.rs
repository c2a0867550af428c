//! Opening the store: connecting, migrating, and the administrative calls.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;

use super::{batch, Backend, Store, StoreError};
use crate::clock::now_ms;

/// Forward-only migrations, applied in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../migrations/0001_ledger.sql"),
    ),
    (
        2,
        "fences",
        include_str!("../../migrations/0002_fences.sql"),
    ),
    (3, "watch", include_str!("../../migrations/0003_watch.sql")),
    (
        4,
        "steering",
        include_str!("../../migrations/0004_steering.sql"),
    ),
    (
        5,
        "console",
        include_str!("../../migrations/0005_console.sql"),
    ),
    (
        6,
        "scores",
        include_str!("../../migrations/0006_scores.sql"),
    ),
    (
        7,
        "retention",
        include_str!("../../migrations/0007_retention.sql"),
    ),
    (
        8,
        "runs_by_alert",
        include_str!("../../migrations/0008_runs_by_alert.sql"),
    ),
    (
        9,
        "notes_once",
        include_str!("../../migrations/0009_notes_once.sql"),
    ),
    (
        10,
        "pause_log",
        include_str!("../../migrations/0010_pause_log.sql"),
    ),
    (
        11,
        "scores_told",
        include_str!("../../migrations/0011_scores_told.sql"),
    ),
];

impl Store {
    /// A consistent copy of an SQLite ledger at `path` while it is in use
    /// (`VACUUM INTO`: one read transaction, writers carry on). Postgres has
    /// `pg_dump` for this, and says so.
    pub async fn backup(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.backend != super::Backend::Sqlite {
            return Err(StoreError::Conflict(
                "the ledger is on Postgres: back it up with pg_dump (see the README)".into(),
            ));
        }
        if path.exists() {
            return Err(StoreError::Conflict(format!(
                "{} already exists; a backup never overwrites",
                path.display()
            )));
        }
        let target = path.to_string_lossy().replace('\'', "''");
        sqlx::query(&format!("VACUUM INTO '{target}'"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Connects (creating an SQLite file if needed). Does not migrate.
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, max_connections, Duration::from_secs(5), false).await
    }

    /// Like [`Store::connect`], waiting at most `acquire_timeout` for a
    /// connection before a call fails as unavailable.
    /// `sqlite_full_sync` makes every SQLite commit sync fully, not only
    /// the ingest batch's.
    pub async fn connect_with(
        url: &SecretString,
        max_connections: u32,
        acquire_timeout: Duration,
        sqlite_full_sync: bool,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let raw = url.expose_secret();
        let backend = if raw.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let mut url = raw.to_string();
        let options = AnyPoolOptions::new().acquire_timeout(acquire_timeout);
        let options = match backend {
            Backend::Sqlite => {
                if !url.contains('?') && !url.contains(":memory:") {
                    url.push_str("?mode=rwc");
                }
                // One connection: SQLite has one writer anyway, and deferred
                // transactions on several connections fail with SQLITE_BUSY.
                // synchronous = NORMAL survives a process crash; the ingest
                // batch raises it to FULL so a 202 survives power loss too.
                let pragmas = Backend::sqlite_pragmas(sqlite_full_sync);
                options
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .after_connect(move |conn, _| {
                        let pragmas = pragmas.clone();
                        Box::pin(async move {
                            conn.execute(pragmas.as_str()).await?;
                            Ok(())
                        })
                    })
            }
            Backend::Postgres => options
                .max_connections(max_connections.max(1))
                .min_connections(0),
        };
        let pool = options.connect(&url).await?;
        let ingest = batch::spawn(
            pool.clone(),
            backend == Backend::Sqlite && !sqlite_full_sync,
        );
        Ok(Self {
            pool,
            backend,
            ingest,
        })
    }

    /// Applies forward-only migrations not yet applied. Safe to run from
    /// several instances at once on Postgres (advisory lock).
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let lock = self.backend.migration_lock();
        if let Some((take, _)) = lock {
            conn.execute(take).await?;
        }
        let result = migrate_on(&mut conn).await;
        if let Some((_, release)) = lock {
            conn.execute(release).await?;
        }
        result
    }

    /// True when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Executes one administrative statement (tests create schemas with it).
    pub async fn execute_raw(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::raw_sql(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn migrate_on(conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>, StoreError> {
    conn.execute("CREATE TABLE IF NOT EXISTS backstop_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
        .await?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let done: Option<i64> =
            sqlx::query_scalar("SELECT version FROM backstop_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *conn)
                .await?;
        if done.is_some() {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO backstop_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(*version)
        .bind(*name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        applied.push(*version);
    }
    Ok(applied)
}
