//! Backstop: rolls a Vercel production deployment back when Sentry says the
//! live release is making users crash. The README describes the flow and
//! the decision table; modules follow it:
//! [`ingest`] → [`policy`] → [`engine`] (with [`providers`]) on the [`ledger`].

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod engine;
pub mod feed;
pub mod http;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod notice;
pub mod policy;
pub mod providers;
pub mod sim;
pub mod telemetry;
