//! Backstop: rolls a Vercel production deployment back when Sentry says the
//! live release is making users crash. See `DESIGN.md` in the shared docs and
//! the README for the flow; modules follow it:
//! [`ingest`] → [`policy`] → [`engine`] (with [`providers`]) on the [`ledger`].

pub mod app;
pub mod cli;
pub mod config;
pub mod engine;
pub mod feed;
pub mod http;
pub mod ingest;
pub mod ledger;
pub mod notify;
pub mod policy;
pub mod providers;
pub mod sim;
pub mod telemetry;
