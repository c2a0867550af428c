//! Test helpers: a fresh database per test (`db`), the real app with
//! providers faked at the HTTP boundary (`app`, `fakes`), the real app on
//! the stateful simulator (`sim`), and a TCP proxy to take the database
//! away (`proxy`). Settings and alerts come from the same builders the demo
//! and the simulator use (`backstop::sim::config`, `backstop::sim::sender`).

mod app;
mod db;
mod fakes;
pub mod procs;
mod proxy;
mod sim;
pub mod vercel_fake;

pub use app::*;
pub use db::*;
pub use fakes::*;
pub use proxy::*;
pub use sim::*;

pub use backstop::ledger::{AttemptOutcome, Outcome, RunStatus, StepName, StepStatus};
use backstop::sim::config::Creds;

pub const SENTRY_SECRET: &str = "sentry-client-secret-4f1b2c";
pub const VERCEL_SECRET: &str = "vercel-webhook-secret-9a8b7c";
pub const VERCEL_TOKEN: &str = "vercel-token-31415926";
pub const PROJECT: &str = backstop::sim::config::PROJECT;
pub const DOMAINS: [&str; 2] = backstop::sim::config::DOMAINS;
pub const MIN: i64 = 60_000;
pub const ROUTING_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";
pub const SLACK_TOKEN: &str = "xoxb-test-2718281828";
pub const SLACK_TS: &str = "1503435956.000247";

/// The test suite's credentials: none of them may ever appear in output.
pub const TEST_CREDS: Creds = Creds {
    sentry_secret: SENTRY_SECRET,
    vercel_token: VERCEL_TOKEN,
    vercel_webhook_secret: VERCEL_SECRET,
    routing_key: ROUTING_KEY,
    pagerduty_token: "pagerduty-rest-token-5772156",
    slack_token: SLACK_TOKEN,
    sentry_token: "sentry-api-token-1414213",
};

/// Runs each scenario once per backend: `mod sqlite` and `mod postgres`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name($crate::helpers::Db::Sqlite).await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name($crate::helpers::Db::Postgres).await } )* }
    };
}
