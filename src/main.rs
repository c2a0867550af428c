//! The `backstop` binary: parse the command line and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = backstop::cli::Cli::parse();
    // The daemon logs its work; one-shot commands only what goes wrong.
    let quiet = !matches!(
        cli.command,
        backstop::cli::Command::Serve | backstop::cli::Command::Sim { .. }
    );
    backstop::telemetry::init(if quiet {
        "warn,sqlx=warn"
    } else {
        "info,sqlx=warn"
    });
    match backstop::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
