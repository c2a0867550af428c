//! One integration binary: the real app on port 0, a fresh database per test,
//! providers faked at the HTTP boundary.

mod helpers;
mod ledger;
mod pipeline;
mod vercel_client;
