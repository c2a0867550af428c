//! Micro-benchmarks of the hot path: what every webhook costs before it is
//! stored (signature check + parse of a real-sized metric alert), and the
//! decision. Run with `cargo bench --bench hot_path`.

use std::time::Duration;

use backstop::config::Settings;
use backstop::ingest::sentry::{self, Resource};
use backstop::ingest::signature::{sign, verify, Digest};
use backstop::ledger::{Deployment, History, Verdict};
use backstop::policy::{decide, DomainTarget, Inputs};
use backstop::sim::sender::{self, CrashAlert};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const NOW: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

fn settings() -> Settings {
    Settings::from_toml(
        r#"
        [[services]]
        name = "storefront"
        sentry_projects = ["storefront-web"]
        vercel_project = "prj_storefront"
        domains = ["shop.example.com", "www.shop.example.com"]
        "#,
        Vec::new(),
    )
    .expect("bench settings")
}

fn verify_and_parse(c: &mut Criterion) {
    let body = sender::encode(&CrashAlert::critical("storefront-web", "42", NOW - MIN).body());
    let sig = sign(Digest::Sha256, b"client-secret", &body);
    c.bench_function(
        &format!("verify + parse metric alert ({} bytes)", body.len()),
        |b| {
            b.iter(|| {
                assert!(verify(
                    Digest::Sha256,
                    b"client-secret",
                    black_box(&body),
                    black_box(&sig)
                ));
                sentry::parse(Resource::MetricAlert, black_box(&body)).expect("parses")
            })
        },
    );
}

fn history(n: usize) -> History {
    let deployments = (0..n)
        .map(|i| {
            let promoted = NOW - (i as i64 + 1) * 120 * MIN;
            Deployment {
                id: format!("dpl_{i}"),
                service: "storefront".into(),
                url: Some(format!("dpl-{i}.vercel.app")),
                release: Some(format!("{i:07x}")),
                created_at_ms: Some(promoted - MIN),
                promoted_at_ms: Some(if i == 0 { NOW - 10 * MIN } else { promoted }),
                superseded_at_ms: (i > 0).then_some(promoted + 120 * MIN),
                live: i == 0,
                verdict: if i % 3 == 1 {
                    Verdict::Bad
                } else {
                    Verdict::Unproven
                },
                verdict_reason: None,
                alerted_at_ms: None,
            }
        })
        .collect();
    History {
        deployments,
        ..History::default()
    }
}

fn decision(c: &mut Criterion) {
    let s = settings();
    let body = sender::encode(&CrashAlert::critical("storefront-web", "42", NOW - MIN).body());
    let alert = sentry::parse(Resource::MetricAlert, &body).expect("parses");
    let production: Vec<DomainTarget> = s.services[0]
        .domains
        .iter()
        .map(|d| DomainTarget {
            domain: d.clone(),
            deployment_id: Some("dpl_0".into()),
        })
        .collect();
    let policies = s.policies();
    for n in [10, 500] {
        let h = history(n);
        c.bench_function(&format!("decide (rule 21, {n} deployments)"), |b| {
            b.iter(|| {
                decide(Inputs {
                    alert: black_box(&alert),
                    services: &policies,
                    history: black_box(&h),
                    production: Some(&production),
                    readings: None,
                    received_at_ms: NOW,
                    now_ms: NOW,
                })
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = verify_and_parse, decision
}
criterion_main!(benches);
