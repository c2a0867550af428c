//! Wiring: settings → store (migrated) → engine → HTTP server and the run dispatcher.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::PagerDutyMode;
use crate::config::Settings;
use crate::engine::Engine;
use crate::engine::Providers;
use crate::http::{self, AppState};
use crate::ledger::Store;
use crate::providers::pagerduty::{self, PagerDutyClient};
use crate::providers::sentry::SentryClient;
use crate::providers::slack::{self, SlackClient};
use crate::providers::vercel::VercelClient;

/// A built, bound, not yet serving Backstop.
pub struct Application {
    listener: TcpListener,
    port: u16,
    admin: Option<(TcpListener, u16)>,
    state: AppState,
}

/// Connects and migrates the store named in the settings.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let db = &settings.database;
    let store = Store::connect_with(
        &db.url,
        db.max_connections as u32,
        db.acquire_timeout,
        db.sqlite_full_sync,
    )
    .await
    .context("cannot connect to database.url")?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    Ok(store)
}

/// The Vercel client, when a token is configured.
pub fn vercel_client(settings: &Settings) -> anyhow::Result<Option<VercelClient>> {
    let v = &settings.vercel;
    v.token
        .clone()
        .map(|token| {
            VercelClient::new(&v.api_base, token, v.team_id.clone(), v.timeout)
                .map(|c| c.with_max_in_flight(v.max_in_flight as usize))
        })
        .transpose()
        .context("cannot build the Vercel client")
}

/// The Sentry API client, when a token and an organization are set.
pub fn sentry_client(settings: &Settings) -> anyhow::Result<Option<SentryClient>> {
    let s = &settings.sentry;
    let (Some(token), Some(org)) = (&s.token, &s.org) else {
        return Ok(None);
    };
    // Reads before acting are bounded by `confirm_timeout` on top of this.
    let timeout = std::time::Duration::from_secs(10);
    SentryClient::new(&s.api_base, token.clone(), org, timeout)
        .map(Some)
        .context("cannot build the Sentry client")
}

/// Every configured provider client. Fails (so Backstop does not start)
/// when an HTTP client cannot be built.
pub fn providers(settings: &Settings) -> anyhow::Result<Providers> {
    let pd = &settings.pagerduty;
    let pd_target = match pd.mode {
        PagerDutyMode::Events => pd
            .routing_key
            .clone()
            .map(|routing_key| pagerduty::Target::Events { routing_key }),
        PagerDutyMode::Rest => pd.api_token.clone().map(|token| pagerduty::Target::Rest {
            token,
            from: pd.from.clone().unwrap_or_default(),
            service_id: pd.service_id.clone().unwrap_or_default(),
            escalation_policy_id: pd.escalation_policy_id.clone(),
        }),
    };
    let sl = &settings.slack;
    let slack_target = match (&sl.bot_token, &sl.webhook_url) {
        (Some(token), _) => Some(slack::Target::Bot {
            token: token.clone(),
        }),
        (None, Some(url)) => Some(slack::Target::Webhook { url: url.clone() }),
        (None, None) => None,
    };
    Ok(Providers {
        vercel: vercel_client(settings)?,
        pagerduty: pd_target
            .map(|t| {
                PagerDutyClient::new(pd.base(), t, pd.timeout)
                    .map(|c| c.with_max_in_flight(pd.max_in_flight as usize))
            })
            .transpose()
            .context("cannot build the PagerDuty client")?,
        slack: slack_target
            .map(|t| {
                SlackClient::new(&sl.api_base, t, sl.timeout)
                    .map(|c| c.with_max_in_flight(sl.max_in_flight as usize))
            })
            .transpose()
            .context("cannot build the Slack client")?,
        sentry: sentry_client(settings)?,
        ai: match &settings.ai.base_url {
            Some(base) => Some(
                crate::providers::ai::AiClient::new(
                    base,
                    settings.ai.api_key.clone(),
                    settings.ai.timeout,
                )
                .context("cannot build the AI client")?,
            ),
            None => None,
        },
    })
}

/// The admin listener's connection budget: a few people and a scraper,
/// so a small share of the webhook listener's, counted in the open-files
/// need beside it.
fn admin_max_connections(settings: &Settings) -> u64 {
    settings.server.max_connections.min(64)
}

impl Application {
    /// Validates, connects, migrates and binds `server.listen` (port 0 picks one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate_for_serve()?;
        // The webhook listener's connections, the database pool, and a
        // margin for provider calls and files.
        let pool = match settings.database.url.expose_secret().starts_with("sqlite:") {
            true => 1,
            false => settings.database.max_connections,
        };
        let admin_conns = match settings.admin.listen {
            Some(_) => admin_max_connections(&settings),
            None => 0,
        };
        let need = settings.server.max_connections + admin_conns + pool + 64;
        crate::http::serve::ensure_open_files(need).map_err(|e| anyhow::anyhow!(e))?;
        let store = open_store(&settings).await?;
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on server.listen = {}",
                    settings.server.listen
                )
            })?;
        let port = listener.local_addr()?.port();
        let admin = match settings.admin.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on admin.listen = {addr} (`off` turns the console off)")
                })?;
                let port = l.local_addr()?.port();
                Some((l, port))
            }
            None => None,
        };
        let providers = providers(&settings)?;
        let settings = Arc::new(settings);
        let engine = Engine::new(store, settings.clone(), providers)?;
        Ok(Self {
            listener,
            port,
            admin,
            state: AppState {
                settings,
                engine,
                refusals: Default::default(),
            },
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The console's bound port, when it is on.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(_, p)| *p)
    }

    /// The engine (tests drive it directly).
    pub fn engine(&self) -> Engine {
        self.state.engine.clone()
    }

    /// Serves and works until `shutdown` resolves: then stops taking
    /// requests, lets each worker finish the run in hand, and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let dispatcher = tokio::spawn(self.state.engine.clone().dispatch(stop_rx.clone()));
        let pruner = tokio::spawn(self.state.engine.clone().prune_forever(stop_rx));
        tracing::info!(
            port = self.port,
            max_concurrent_runs = self.state.settings.engine.max_concurrent_runs,
            "backstop serving"
        );
        let app = http::router(self.state.clone());
        let server = &self.state.settings.server;
        let limits = http::serve::Limits {
            header_timeout: server.header_timeout,
            max_connections: usize::try_from(server.max_connections).unwrap_or(usize::MAX),
            // A request in flight at shutdown has its body time and a few
            // seconds of work to finish; no longer.
            drain: server.body_timeout + std::time::Duration::from_secs(10),
        };
        // One shutdown for both listeners.
        let (down_tx, down_rx) = tokio::sync::watch::channel(false);
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|down| *down).await;
        };
        let admin = self.admin.map(|(listener, port)| {
            tracing::info!(port, "console and metrics serving");
            let router = crate::console::router(self.state.clone());
            let limits = http::serve::Limits {
                max_connections: admin_max_connections(&self.state.settings) as usize,
                ..limits
            };
            tokio::spawn(http::serve::serve(
                listener,
                router,
                limits,
                wait(down_rx.clone()),
            ))
        });
        tokio::spawn(async move {
            shutdown.await;
            let _ = down_tx.send(true);
        });
        http::serve::serve(self.listener, app, limits, wait(down_rx))
            .await
            .context("server failed")?;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("shutting down: finishing runs in hand");
        let _ = stop_tx.send(true);
        let _ = dispatcher.await;
        let _ = pruner.await;
        self.state.engine.store().close().await;
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
