//! One integration binary: the real app on port 0, a fresh database per test,
//! providers faked at the HTTP boundary.

mod agents;
mod cli;
mod clients;
mod closed_loop;
mod console;
mod engine;
mod faults;
mod first_run;
mod fleet;
mod fuzz;
mod guarantees;
mod helpers;
mod hostile;
mod hostile_clients;
mod ingest;
mod ledger;
mod notify;
mod pipeline;
mod process;
mod rehearse;
mod retention;
mod right_call;
mod sentry_shapes;
mod sim;
mod steer;
mod vercel_client;
