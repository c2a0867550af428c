//! Prometheus metrics (`GET /metrics` on the admin listener). What happens
//! in this instance is counted as it happens (webhooks, decisions, rollback
//! and ack times, provider calls) and starts from zero at every start;
//! what the ledger knows (unfinished runs, frozen services, deployments by
//! verdict) is read from it at each scrape, so every instance agrees.
//! Labels are low-cardinality: sources, statuses, services, outcomes,
//! providers, verdicts. No secret, user or alert body ever appears.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::Settings;
use crate::ledger::{Store, StoreError, Verdict};

/// A webhook answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `sentry`, `vercel`, `slack`, `pagerduty`.
    pub source: String,
    /// The HTTP status answered.
    pub status: String,
}

/// A decision, by what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The service (`unmapped` when none).
    pub service: String,
    /// `rolled-back`, `rollback-failed`, `escalated`, `dry-run`, `skipped`, `resolved`.
    pub outcome: String,
}

/// Every `outcome` label of `backstop_decisions_total`.
pub const DECISION_FATES: [&str; 6] = [
    "rolled-back",
    "rollback-failed",
    "escalated",
    "dry-run",
    "skipped",
    "resolved",
];

/// One service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service name.
    pub service: String,
}

/// A provider call, by how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOutcomeLabels {
    /// `vercel`, `pagerduty`, `slack`, `sentry`.
    pub provider: String,
    /// `ok`, `4xx`, `429`, `5xx`, `transport`.
    pub outcome: String,
}

/// One provider.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// `vercel`, `pagerduty`, `slack`, `sentry`.
    pub provider: String,
}

/// Deployments of a service with a verdict.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Service name.
    pub service: String,
    /// `unproven`, `good`, `bad`, `overridden`.
    pub verdict: String,
}

type Timing<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric.
pub struct Metrics {
    /// `backstop_webhooks_total{source,status}`.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// `backstop_decisions_total{service,outcome}`.
    pub decisions: Family<DecisionLabels, Counter>,
    /// `backstop_rollback_seconds{service}`: alert received → rollback verified.
    pub rollback_seconds: Timing<ServiceLabels>,
    /// `backstop_ack_seconds{service}`: alert received → a person acked the page.
    pub ack_seconds: Timing<ServiceLabels>,
    /// `backstop_provider_requests_total{provider,outcome}`.
    pub provider_requests: Family<ProviderOutcomeLabels, Counter>,
    /// `backstop_provider_request_seconds{provider}`.
    pub provider_seconds: Timing<ProviderLabels>,
    /// `backstop_runs_in_flight`: runs not finished (pending, running or
    /// watching), from the ledger.
    pub runs_in_flight: Gauge,
    /// `backstop_oldest_unfinished_run_age_seconds`: the oldest run pending
    /// or running (not watching), from the ledger; 0 when none.
    pub oldest_unfinished: Gauge<f64, AtomicU64>,
    /// `backstop_service_frozen{service}`: 1 while Backstop froze it.
    pub frozen: Family<ServiceLabels, Gauge>,
    /// `backstop_service_paused{service}`: 1 while paused or frozen.
    pub paused: Family<ServiceLabels, Gauge>,
    /// `backstop_deployments{service,verdict}`.
    pub deployments: Family<VerdictLabels, Gauge>,
    registry: Registry,
    /// One scrape at a time: the ledger gauges are cleared and refilled.
    rendering: tokio::sync::Mutex<()>,
}

fn rollback_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ])
}

fn ack_histogram() -> Histogram {
    Histogram::new([
        30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    ])
}

fn provider_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Provider calls are counted where they are made, below every client:
/// one set of counters per process, shown by every instance's registry.
fn provider_families() -> &'static (
    Family<ProviderOutcomeLabels, Counter>,
    Timing<ProviderLabels>,
) {
    static FAMILIES: OnceLock<(
        Family<ProviderOutcomeLabels, Counter>,
        Timing<ProviderLabels>,
    )> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        (
            Family::default(),
            Family::new_with_constructor(provider_histogram),
        )
    })
}

/// `calls` held back, not sent: the provider's rate-limit window was
/// spent until further than the caller could wait.
pub fn provider_held(provider: &str, calls: u64) {
    provider_families()
        .0
        .get_or_create(&ProviderOutcomeLabels {
            provider: provider.into(),
            outcome: "held".into(),
        })
        .inc_by(calls);
}

/// A provider call ended (`status` when it was answered).
pub fn provider_call(provider: &str, status: Option<u16>, took: Duration) {
    let outcome = match status {
        None => "transport",
        Some(429) => "429",
        Some(s) if s < 400 => "ok",
        Some(s) if s < 500 => "4xx",
        Some(_) => "5xx",
    };
    let (requests, seconds) = provider_families();
    requests
        .get_or_create(&ProviderOutcomeLabels {
            provider: provider.into(),
            outcome: outcome.into(),
        })
        .inc();
    seconds
        .get_or_create(&ProviderLabels {
            provider: provider.into(),
        })
        .observe(took.as_secs_f64());
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry of its own (one per running instance), the provider
    /// counters shared.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("backstop");
        let (provider_requests, provider_seconds) = provider_families().clone();
        let m = Self {
            webhooks: Family::default(),
            decisions: Family::default(),
            rollback_seconds: Family::new_with_constructor(rollback_histogram),
            ack_seconds: Family::new_with_constructor(ack_histogram),
            provider_requests,
            provider_seconds,
            runs_in_flight: Gauge::default(),
            oldest_unfinished: Gauge::default(),
            frozen: Family::default(),
            paused: Family::default(),
            deployments: Family::default(),
            registry: Registry::default(),
            rendering: tokio::sync::Mutex::new(()),
        };
        registry.register(
            "webhooks",
            "Webhooks answered, by source and HTTP status",
            m.webhooks.clone(),
        );
        registry.register(
            "decisions",
            "Decisions made by this process, by service and what became of them",
            m.decisions.clone(),
        );
        registry.register(
            "rollback_seconds",
            "Alert received to rollback verified",
            m.rollback_seconds.clone(),
        );
        registry.register(
            "ack_seconds",
            "Alert received to a person acknowledging the page",
            m.ack_seconds.clone(),
        );
        registry.register(
            "provider_requests",
            "Provider API requests, by how they ended",
            m.provider_requests.clone(),
        );
        registry.register(
            "provider_request_seconds",
            "Provider API request duration",
            m.provider_seconds.clone(),
        );
        registry.register(
            "runs_in_flight",
            "Runs not finished (pending, running or watching), from the ledger",
            m.runs_in_flight.clone(),
        );
        registry.register(
            "oldest_unfinished_run_age_seconds",
            "Age of the oldest run pending or running, from the ledger (0: none)",
            m.oldest_unfinished.clone(),
        );
        registry.register(
            "service_frozen",
            "1 while Backstop froze the service after a rollback that did not help",
            m.frozen.clone(),
        );
        registry.register(
            "service_paused",
            "1 while the service is paused (by a person) or frozen",
            m.paused.clone(),
        );
        registry.register(
            "deployments",
            "Deployments in the ledger, by service and verdict",
            m.deployments.clone(),
        );
        Self { registry, ..m }
    }

    /// A webhook was answered with `status`.
    pub fn webhook(&self, source: &str, status: u16) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                source: source.into(),
                status: status.to_string(),
            })
            .inc();
    }

    /// A decision's fate.
    pub fn decided(&self, service: Option<&str>, outcome: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                service: service.unwrap_or("unmapped").into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A verified rollback, `ms` after the alert was received.
    pub fn rolled_back(&self, service: &str, ms: i64) {
        self.rollback_seconds
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .observe(ms.max(0) as f64 / 1000.0);
    }

    /// A person acked the page `ms` after the alert was received.
    pub fn acked(&self, service: &str, ms: i64) {
        self.ack_seconds
            .get_or_create(&ServiceLabels {
                service: service.into(),
            })
            .observe(ms.max(0) as f64 / 1000.0);
    }

    /// Reads what the ledger knows into the gauges, then encodes every
    /// metric in the OpenMetrics text format.
    pub async fn render(&self, store: &Store, settings: &Settings) -> Result<String, StoreError> {
        let _one_at_a_time = self.rendering.lock().await;
        let snap = store.metrics_snapshot(crate::clock::now_ms()).await?;
        self.runs_in_flight.set(snap.unfinished);
        self.oldest_unfinished.set(
            snap.oldest_unfinished_ms
                .map_or(0.0, |ms| ms as f64 / 1000.0),
        );
        self.frozen.clear();
        self.paused.clear();
        self.deployments.clear();
        for svc in &settings.services {
            let labels = ServiceLabels {
                service: svc.name.clone(),
            };
            let pause = snap.pauses.iter().find(|p| p.service == svc.name);
            let frozen = pause.is_some_and(|p| p.frozen_by_run.is_some());
            self.frozen.get_or_create(&labels).set(frozen as i64);
            self.paused
                .get_or_create(&labels)
                .set(pause.is_some() as i64);
            // Every fate at 0 from the first scrape, so an alerting rule on
            // `increase(...)` sees the first rollback-failed after a restart.
            for outcome in DECISION_FATES {
                let _zero = self.decisions.get_or_create(&DecisionLabels {
                    service: svc.name.clone(),
                    outcome: outcome.into(),
                });
            }
            // Every verdict, so a series exists before its first deployment.
            for verdict in [
                Verdict::Unproven,
                Verdict::Good,
                Verdict::Bad,
                Verdict::Overridden,
            ] {
                let n = snap
                    .deployments
                    .iter()
                    .find(|(s, v, _)| *s == svc.name && *v == verdict.as_str())
                    .map_or(0, |(_, _, n)| *n);
                self.deployments
                    .get_or_create(&VerdictLabels {
                        service: svc.name.clone(),
                        verdict: verdict.as_str().into(),
                    })
                    .set(n);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        Ok(out)
    }
}

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The OpenMetrics text as the Prometheus text format 0.0.4: no `# EOF`
/// or `# UNIT` lines, and a counter's `HELP`/`TYPE` name its `_total`
/// series.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series_in_the_prometheus_format() {
        let om = "# HELP backstop_webhooks Webhooks answered.\n# TYPE backstop_webhooks counter\nbackstop_webhooks_total{source=\"sentry\",status=\"202\"} 3\n# HELP backstop_runs_in_flight Runs.\n# TYPE backstop_runs_in_flight gauge\nbackstop_runs_in_flight 0\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP backstop_webhooks_total Webhooks answered.\n# TYPE backstop_webhooks_total counter\nbackstop_webhooks_total{source=\"sentry\",status=\"202\"} 3\n# HELP backstop_runs_in_flight Runs.\n# TYPE backstop_runs_in_flight gauge\nbackstop_runs_in_flight 0\n"
        );
    }
}
