//! Every difference between SQLite and Postgres lives here: the database's
//! clock, row locks, advisory locks, and which statements can be written as
//! one. Everything else in the ledger is one SQL text for both.

use sqlx::any::AnyArguments;
use sqlx::Arguments;

use super::records::{Claim, RunStatus};
use super::StoreError;

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, single writer.
    Sqlite,
    /// Shared by several instances.
    Postgres,
}

impl Backend {
    /// The database's clock in Unix ms, as an SQL expression. Leases are
    /// computed and compared with it, never with a host's clock: two
    /// instances on one Postgres whose clocks disagree still agree on who
    /// holds a run. (SQLite runs on one host; its clock is that host's.)
    pub fn now(self) -> &'static str {
        match self {
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// Appended to the claim's pick: other instances skip rows being claimed.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    /// Appended to a fence check: a share lock on the run's row, so a
    /// takeover waits for the write's transaction (and then sees it), or the
    /// write waits for the takeover (and then matches nothing). SQLite has
    /// one writer, so its statements never interleave.
    pub fn share_lock(self) -> &'static str {
        match self {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        }
    }

    /// The statement serialising changes to one service's deployments
    /// inside a transaction (Postgres); SQLite's single writer already does.
    pub fn service_lock(self) -> Option<&'static str> {
        match self {
            Backend::Postgres => Some("SELECT pg_advisory_xact_lock(hashtext($1))"),
            Backend::Sqlite => None,
        }
    }

    /// Statements that take and release the migration lock (Postgres).
    pub fn migration_lock(self) -> Option<(&'static str, &'static str)> {
        match self {
            Backend::Postgres => Some((
                "SELECT pg_advisory_lock(7215553)",
                "SELECT pg_advisory_unlock(7215553)",
            )),
            Backend::Sqlite => None,
        }
    }

    /// True when several data-modifying statements can be one round trip
    /// (Postgres' data-modifying CTEs, and `RETURNING` that sees joins).
    pub fn one_statement_writes(self) -> bool {
        self == Backend::Postgres
    }

    /// Statements run on every new SQLite connection.
    pub fn sqlite_pragmas(full_sync: bool) -> String {
        let sync = if full_sync { "FULL" } else { "NORMAL" };
        format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON")
    }

    /// True for errors worth retrying: the database is restarting,
    /// unreachable, busy or asked us to retry (by SQLSTATE on Postgres, by
    /// result code on SQLite), never by matching message text.
    pub fn is_transient(code: &str) -> bool {
        // Postgres: 08 connection exception, 57P01-03 shutdown and
        // cannot-connect-now, 53300 too many connections, 40001
        // serialization failure, 40P01 deadlock. SQLite: 5 SQLITE_BUSY and
        // 6 SQLITE_LOCKED with their extended codes (low byte 5 or 6).
        code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
            )
            || code
                .parse::<u32>()
                .is_ok_and(|n| n & 0xff == 5 || n & 0xff == 6)
    }
}

/// A statement with `$n` placeholders numbered as values are bound.
/// (sqlx's `QueryBuilder` writes `?` placeholders for the `Any` driver,
/// which Postgres rejects; this writes `$n`, which both accept.)
pub struct Sql {
    text: String,
    args: AnyArguments<'static>,
    error: Option<String>,
}

impl Sql {
    /// A statement starting with `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            args: AnyArguments::default(),
            error: None,
        }
    }

    /// Appends raw SQL.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds a value and appends its placeholder.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'static + sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e.to_string());
        }
        let n = self.args.len();
        self.text.push('$');
        self.text.push_str(&n.to_string());
        self
    }

    /// Appends `(..), (..)`: one parenthesised row per item, whose values
    /// `row` binds through the [`Values`] it is handed.
    pub fn push_values<I, F>(&mut self, items: I, mut row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(&mut Values<'_>, I::Item),
    {
        for (i, item) in items.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            let mut values = Values {
                sql: self,
                first: true,
            };
            row(&mut values, item);
            self.push(")");
        }
        self
    }

    /// `EXISTS (...)`, true while `claim` still holds its run.
    pub fn push_held(&mut self, backend: Backend, claim: &Claim) -> &mut Self {
        self.push("EXISTS (SELECT 1 FROM runs WHERE id = ")
            .bind(claim.run.0.clone())
            .push(" AND fence = ")
            .bind(claim.fence)
            .push(" AND status = ")
            .bind(RunStatus::Running.as_str().to_string())
            .push(backend.share_lock())
            .push(")")
    }

    /// The text and its arguments, ready for `sqlx::query_with`.
    pub fn build(self) -> Result<(String, AnyArguments<'static>), StoreError> {
        match self.error {
            Some(e) => Err(StoreError::Corrupt(format!("cannot bind a value: {e}"))),
            None => Ok((self.text, self.args)),
        }
    }
}

/// The values of one row in [`Sql::push_values`].
pub struct Values<'a> {
    sql: &'a mut Sql,
    first: bool,
}

impl Values<'_> {
    /// Binds the next value of the row.
    pub fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'static + sqlx::Encode<'static, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        if !self.first {
            self.sql.push(", ");
        }
        self.first = false;
        self.sql.bind(value);
        self
    }

    /// Appends a raw SQL value (e.g. the database's clock).
    pub fn push(&mut self, text: &str) -> &mut Self {
        if !self.first {
            self.sql.push(", ");
        }
        self.first = false;
        self.sql.push(text);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_numbered_in_the_order_they_are_bound() {
        let mut sql = Sql::new("INSERT INTO t (a, b) VALUES ");
        sql.push_values([(1i64, "x"), (2, "y")], |row, (a, b)| {
            row.bind(a).bind(b.to_string());
        });
        sql.push(" RETURNING ").bind(7i64);
        let (text, _) = sql.build().unwrap();
        assert_eq!(
            text,
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING $5"
        );
    }

    #[test]
    fn transient_errors_are_known_by_their_codes() {
        for code in ["08006", "57P01", "40001", "40P01", "5", "517", "6", "262"] {
            assert!(Backend::is_transient(code), "{code}");
        }
        for code in ["23505", "42P01", "1", "19", "2067"] {
            assert!(!Backend::is_transient(code), "{code}");
        }
    }
}
