//! The command line: parse, load settings, call into the library, print.
//! No SQL and no decisions here.

pub mod bench;
pub mod check;
pub mod demo;
pub mod report;
pub mod show;
pub mod test_alert;
pub mod undo;
pub use show::explain;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::app::{self, Application};
use crate::config::Settings;
use crate::feed;
use crate::ledger::{NewDeployment, RunId, Verdict};

/// Backstop rolls a Vercel production deployment back when Sentry says the
/// live release is making users crash, then pages and announces it.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about)]
pub struct Cli {
    /// Configuration file (default: $BACKSTOP_CONFIG, else ./backstop.toml).
    #[arg(long, global = true, env = "BACKSTOP_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: webhooks, workers, resumption of unfinished runs.
    Serve,
    /// The whole flow on simulated providers, no setup.
    Demo {
        /// Leave Backstop and the simulator running afterwards.
        #[arg(long)]
        keep: bool,
        /// Turn the agents on (the simulator's OpenAI-compatible server):
        /// the brief and the recap appear in the card's thread.
        #[arg(long)]
        ai: bool,
    },
    /// Validate the config and make one harmless call to every provider.
    Check,
    /// Decide (and, without --dry-run, act) on a sample Sentry webhook body.
    TestAlert {
        /// A Sentry webhook body (JSON); no signature needed.
        file: PathBuf,
        /// Decide and print only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Act without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Measure: drive a real `backstop serve` with signed webhooks and report latency, throughput and RSS.
    Bench(bench::BenchOpts),
    /// Run the provider simulator, or send a signed alert the way Sentry does.
    Sim {
        /// Where the simulator listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
        /// Print a complete backstop.toml for this simulator and exit.
        #[arg(long)]
        print_config: bool,
        /// Send an alert instead of serving.
        #[command(subcommand)]
        command: Option<SimCommand>,
    },
    /// Apply database migrations.
    Migrate,
    /// Import production deployments and the live alias target from Vercel.
    Sync {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// How many recent production deployments to import per service.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Inspect and edit the deployment ledger.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Inspect runs: what was decided, why, and every attempt.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Stop automatic rollbacks of a service (alerts are escalated instead).
    Pause {
        /// Service name.
        service: String,
        /// Why, shown in escalations.
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
    /// Allow automatic rollbacks of a paused service again.
    Resume {
        /// Service name.
        service: String,
    },
    /// Who held, resumed or froze which service, and when (newest first).
    Pauses {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// How right the decisions were, per service: dry runs and rollbacks
    /// scored confirmed, false alarm or undetermined, and a recommendation.
    Report {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Decisions made this far back, e.g. `30d`.
        #[arg(long, default_value = "30d")]
        since: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prune the ledger once now, as `[retention]` says; print what went.
    Prune {
        /// Count what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a consistent copy of an SQLite ledger (while `serve` runs).
    Backup {
        /// Where (must not exist).
        file: PathBuf,
    },
    /// Print a Sentry metric-alert webhook body for a service, to rehearse
    /// with `backstop test-alert FILE --dry-run`.
    SampleAlert {
        /// Service name.
        #[arg(long)]
        service: String,
        /// `critical`, `warning` or `resolved`.
        #[arg(long, default_value = "critical")]
        action: String,
        /// How long ago Sentry detected it, e.g. `2m`.
        #[arg(long, default_value = "2m")]
        started_ago: String,
    },
    /// Undo a run's rollback: production back on the deployment it rolled
    /// back from, that deployment marked overridden, the service held.
    Undo {
        /// The run whose rollback to undo.
        run: String,
        /// Act without asking.
        #[arg(long)]
        yes: bool,
    },
}

/// `backstop sim ...`
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Build, sign and send a crash-free metric alert exactly as Sentry does.
    SendAlert {
        /// Backstop's Sentry webhook URL.
        #[arg(long)]
        url: String,
        /// The integration's client secret.
        #[arg(long, env = "BACKSTOP_SENTRY__CLIENT_SECRET", hide_env_values = true)]
        secret: String,
        /// Incident identifier (a new one is a new incident).
        #[arg(long, default_value = "1")]
        identifier: String,
        /// Sentry project slug.
        #[arg(long, default_value = "storefront-web")]
        project: String,
        /// `critical`, `warning` or `resolved`.
        #[arg(long, default_value = "critical")]
        action: String,
        /// How long ago the incident started, e.g. `1m`.
        #[arg(long, default_value = "1m")]
        started_ago: String,
    },
    /// Press a button on a Backstop card, signed exactly as Slack signs it.
    Click {
        /// Backstop's interactivity URL (`.../webhooks/slack/interactions`).
        #[arg(long)]
        url: String,
        /// The Slack app's signing secret.
        #[arg(long, env = "BACKSTOP_SLACK__SIGNING_SECRET", hide_env_values = true)]
        secret: String,
        /// The run whose card carries the button.
        #[arg(long)]
        run: String,
        /// `undo`, `hold` or `resume`.
        #[arg(long)]
        action: String,
        /// Slack user id of who presses.
        #[arg(long, default_value = "U0SIMUSER")]
        user: String,
    },
    /// Send a signed PagerDuty Webhooks v3 incident event (an ack, ...).
    PdEvent {
        /// Backstop's PagerDuty webhook URL (`.../webhooks/pagerduty`).
        #[arg(long)]
        url: String,
        /// The webhook subscription's secret.
        #[arg(
            long,
            env = "BACKSTOP_PAGERDUTY__WEBHOOK_SECRET",
            hide_env_values = true
        )]
        secret: String,
        /// The incident key Backstop paged with (`backstop/<service>/<deployment>`).
        #[arg(long)]
        incident_key: String,
        /// `acknowledged`, `resolved` or `reassigned`.
        #[arg(long, default_value = "acknowledged")]
        event: String,
        /// Who did it.
        #[arg(long, default_value = "Ana Ops")]
        agent: String,
    },
}

/// `backstop deployments ...`
#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// List deployments, newest first.
    List {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only deployments older than this one (the next page).
        #[arg(long)]
        before: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record a deployment made outside Vercel's webhooks.
    Record {
        /// Service name.
        #[arg(long)]
        service: String,
        /// Vercel deployment id.
        #[arg(long)]
        id: String,
        /// Sentry release.
        #[arg(long)]
        release: Option<String>,
        /// Deployment URL.
        #[arg(long)]
        url: Option<String>,
        /// It is live now (supersedes the live one).
        #[arg(long)]
        live: bool,
    },
    /// Set a deployment's verdict by hand.
    Mark {
        /// Vercel deployment id.
        id: String,
        /// `good` or `bad`.
        verdict: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `backstop runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The newest runs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One run: the alert, the decision and its checks, every step and attempt.
    Show {
        /// Run id.
        run: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Loads settings from `--config`, `BACKSTOP_CONFIG` or `./backstop.toml`.
pub fn load_settings(path: Option<PathBuf>) -> anyhow::Result<Settings> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (PathBuf::from("backstop.toml"), false),
    };
    Ok(Settings::load(&path, required, std::env::vars())?)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // These need no configuration.
    match cli.command {
        Command::Demo { keep, ai } => {
            let mut out = std::io::stdout();
            demo::run_with(&mut out, demo::Options { keep, ai }).await?;
            return Ok(());
        }
        Command::Sim {
            listen,
            print_config: true,
            ..
        } => {
            print!(
                "{}",
                crate::sim::config::ready_config(
                    &format!("http://{listen}"),
                    "sqlite://backstop-sim.db",
                    std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                )
            );
            return Ok(());
        }
        Command::Sim {
            listen, command, ..
        } => return sim(listen, command).await,
        Command::Bench(opts) => {
            println!("{}", bench::run(opts).await?);
            return Ok(());
        }
        _ => {}
    }
    let settings = load_settings(cli.config)?;
    match cli.command {
        Command::Demo { .. } | Command::Sim { .. } | Command::Bench(_) => {
            unreachable!("handled above")
        }
        Command::Check => {
            let rows = check::run(&settings).await;
            if !check::print(&mut std::io::stdout(), &rows)? {
                bail!("some checks failed");
            }
            Ok(())
        }
        Command::TestAlert { file, dry_run, yes } => {
            let opts = test_alert::Options {
                file: &file,
                dry_run,
                yes,
            };
            test_alert::run(
                settings,
                opts,
                &mut std::io::stdout(),
                &mut std::io::stdin().lock(),
            )
            .await
        }
        Command::Serve => {
            let app = Application::build(settings).await?;
            app.run_until(app::shutdown_signal()).await
        }
        Command::Migrate => {
            let store = app::open_store(&settings).await?;
            println!(
                "migrations applied; database is at the latest version ({:?})",
                store.backend()
            );
            Ok(())
        }
        Command::Sync { service, limit } => sync(&settings, service.as_deref(), limit).await,
        Command::Deployments(cmd) => deployments(&settings, cmd).await,
        Command::Runs(RunsCommand::List { json, limit }) => {
            let store = app::open_store(&settings).await?;
            show::runs_list(&store.list_runs(limit).await?, json)
        }
        Command::Runs(RunsCommand::Show { run, json }) => {
            let store = app::open_store(&settings).await?;
            show::run_detail(&store.run_detail(&RunId(run)).await?, json)
        }
        Command::Pause { service, reason } => {
            known_service(&settings, &service)?;
            app::open_store(&settings)
                .await?
                .set_paused(&service, Some(&reason))
                .await?;
            println!(
                "{service}: paused ({reason}); critical alerts will page instead of rolling back"
            );
            Ok(())
        }
        Command::Report {
            service,
            since,
            json,
        } => {
            let since = humantime::parse_duration(&since)
                .with_context(|| format!("--since `{since}` is not a duration like 30d"))?;
            if let Some(name) = &service {
                known_service(&settings, name)?;
            }
            let store = app::open_store(&settings).await?;
            let from = crate::clock::now_ms() - since.as_millis() as i64;
            let reports = report::reports(&store, &settings, service.as_deref(), from).await?;
            report::print(&mut std::io::stdout(), &reports, json)
        }
        Command::Prune { dry_run } => {
            let store = app::open_store(&settings).await?;
            let engine = crate::engine::Engine::new(
                store,
                std::sync::Arc::new(settings),
                crate::engine::Providers::default(),
            )?;
            match engine.prune(dry_run).await? {
                Some(p) => println!(
                    "{} {} runs (with their alerts, steps, attempts, notes) and {} delivery ids",
                    if dry_run { "would remove" } else { "removed" },
                    p.runs,
                    p.deliveries
                ),
                None => println!("another instance is pruning now; nothing done"),
            }
            Ok(())
        }
        Command::Backup { file } => {
            let store = app::open_store(&settings).await?;
            store.backup(&file).await?;
            println!(
                "wrote a consistent copy of the ledger to {}",
                file.display()
            );
            Ok(())
        }
        Command::SampleAlert {
            service,
            action,
            started_ago,
        } => {
            let ago = humantime::parse_duration(&started_ago)
                .with_context(|| format!("--started-ago `{started_ago}` is not a duration"))?;
            let body = report::sample_alert(&settings, &service, &action, ago.as_millis() as i64)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            Ok(())
        }
        Command::Undo { run, yes } => {
            let stdin = std::io::stdin();
            undo::run(
                settings,
                &RunId(run),
                yes,
                &mut std::io::stdout(),
                &mut stdin.lock(),
            )
            .await
        }
        Command::Pauses {
            service,
            limit,
            json,
        } => {
            let store = app::open_store(&settings).await?;
            show::pause_log(&store.pause_log(service.as_deref(), limit).await?, json)
        }
        Command::Resume { service } => {
            known_service(&settings, &service)?;
            app::open_store(&settings)
                .await?
                .set_paused(&service, None)
                .await?;
            println!("{service}: automatic rollbacks resumed");
            Ok(())
        }
    }
}

async fn sim(listen: std::net::SocketAddr, command: Option<SimCommand>) -> anyhow::Result<()> {
    match command {
        Some(SimCommand::SendAlert {
            url,
            secret,
            identifier,
            project,
            action,
            started_ago,
        }) => {
            let ago = humantime::parse_duration(&started_ago)
                .with_context(|| format!("--started-ago `{started_ago}` is not a duration"))?;
            let mut alert = crate::sim::sender::CrashAlert::critical(
                &project,
                &identifier,
                crate::clock::now_ms() - ago.as_millis() as i64,
            );
            alert.action = action;
            let (status, body) = crate::sim::sender::deliver(
                &reqwest::Client::new(),
                &url,
                &secret,
                "metric_alert",
                &alert.body(),
            )
            .await?;
            println!("HTTP {status} {body}");
            Ok(())
        }
        Some(SimCommand::Click {
            url,
            secret,
            run,
            action,
            user,
        }) => {
            let Some(action) = crate::ingest::slack::ClickAction::parse(&action) else {
                bail!("--action must be undo, hold or resume");
            };
            let click = crate::sim::sender::Click {
                run,
                action,
                user_name: user.to_lowercase(),
                user_id: user,
                response_url: None,
            };
            let status = click
                .deliver(&reqwest::Client::new(), &url, &secret)
                .await?;
            println!("HTTP {status}");
            Ok(())
        }
        Some(SimCommand::PdEvent {
            url,
            secret,
            incident_key,
            event,
            agent,
        }) => {
            let body = crate::sim::sender::pagerduty_event(
                &format!("incident.{event}"),
                &incident_key,
                "PSIMINC",
                &agent,
            );
            let id = uuid::Uuid::now_v7().to_string();
            let status = crate::sim::sender::deliver_pagerduty(
                &reqwest::Client::new(),
                &url,
                &secret,
                &body,
                &id,
            )
            .await?;
            println!("HTTP {status}");
            Ok(())
        }
        None => {
            let running = crate::sim::config::world(&crate::sim::config::DEMO)
                .start(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!(
                "simulator serving at {} (state: {}/_sim/state)",
                running.base, running.base
            );
            for p in [
                crate::sim::Provider::Vercel,
                crate::sim::Provider::Pagerduty,
                crate::sim::Provider::Slack,
                crate::sim::Provider::Sentry,
            ] {
                println!(
                    "  {:<10} api_base = \"{}\"",
                    format!("{p:?}").to_lowercase(),
                    running.api_base(p)
                );
            }
            println!(
                "a backstop.toml that works with it as it is: `backstop sim --listen {listen} --print-config > backstop.toml`; Ctrl-C to stop"
            );
            app::shutdown_signal().await;
            Ok(())
        }
    }
}

fn known_service<'a>(
    settings: &'a Settings,
    name: &str,
) -> anyhow::Result<&'a crate::config::ServiceSettings> {
    settings.service(name).with_context(|| {
        let names: Vec<_> = settings.services.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no service named `{name}` in the config (known: {})",
            names.join(", ")
        )
    })
}

async fn sync(settings: &Settings, only: Option<&str>, limit: usize) -> anyhow::Result<()> {
    let vercel = app::vercel_client(settings)?.context("vercel.token is required for sync")?;
    let store = app::open_store(settings).await?;
    if let Some(name) = only {
        known_service(settings, name)?;
    }
    for svc in settings
        .services
        .iter()
        .filter(|s| only.is_none_or(|o| o == s.name))
    {
        let report = feed::sync_service(&store, &vercel, svc, limit)
            .await
            .with_context(|| format!("sync of {} failed", svc.name))?;
        println!(
            "{}: imported {} production deployments; live: {}",
            report.service,
            report.imported,
            report.live.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}

async fn deployments(settings: &Settings, cmd: DeploymentsCommand) -> anyhow::Result<()> {
    let store = app::open_store(settings).await?;
    match cmd {
        DeploymentsCommand::List {
            service,
            limit,
            before,
            json,
        } => {
            let mut pauses = store.pauses().await?;
            pauses.retain(|p| service.as_ref().is_none_or(|s| *s == p.service));
            let page = store
                .deployments_page(service.as_deref(), before.as_deref(), limit)
                .await?;
            show::deployments(&page, &pauses, json)?;
            if !json && page.len() as i64 == limit {
                if let Some(last) = page.last() {
                    println!("(more: --before {})", last.id);
                }
            }
            Ok(())
        }
        DeploymentsCommand::Record {
            service,
            id,
            release,
            url,
            live,
        } => {
            let svc = known_service(settings, &service)?;
            let now = crate::clock::now_ms();
            store
                .record_deployment(&NewDeployment {
                    id: id.clone(),
                    service: service.clone(),
                    url,
                    release,
                    created_at_ms: Some(now),
                })
                .await?;
            if live {
                store.promote(&service, &id, now, svc.bake_time).await?;
            }
            println!(
                "recorded {id} for {service}{}",
                if live { " (live)" } else { "" }
            );
            Ok(())
        }
        DeploymentsCommand::Mark {
            id,
            verdict,
            reason,
        } => {
            let v = match Verdict::parse(&verdict) {
                Some(v @ (Verdict::Good | Verdict::Bad)) => v,
                _ => bail!("verdict must be `good` or `bad`, not `{verdict}`"),
            };
            let reason = reason.unwrap_or_else(|| format!("marked {verdict} by a person"));
            let d = store.mark(&id, v, &reason).await?;
            println!(
                "{} ({}) is now {}: {reason}",
                d.id,
                d.service,
                d.verdict.as_str()
            );
            Ok(())
        }
    }
}
