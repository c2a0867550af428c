//! Property-based fuzzing of everything that touches untrusted bytes: the
//! Sentry and Vercel parsers, the signature check and the timestamp check.
//! 256 cases per target in the normal suite; for a million each:
//! `PROPTEST_CASES=1000000 cargo test --release --test api fuzz::`

use backstop::ingest::sentry::{self, Resource};
use backstop::ingest::signature::{sign, verify, Digest};
use backstop::ingest::{check_timestamp, vercel};
use proptest::prelude::*;
use serde_json::{json, Value};

const KEYS: &[&str] = &[
    "action",
    "installation",
    "uuid",
    "data",
    "metric_alert",
    "identifier",
    "alert_rule",
    "id",
    "projects",
    "date_started",
    "date_detected",
    "date_created",
    "triggers",
    "label",
    "alert_threshold",
    "aggregate",
    "environment",
    "description_text",
    "web_url",
    "event",
    "release",
    "issue_id",
    "triggered_rule",
    "url",
    "tags",
    "type",
    "createdAt",
    "payload",
    "deployment",
    "project",
    "target",
    "meta",
    "githubCommitSha",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("critical"),
            Just("resolved"),
            Just("2025-07-14T11:41:32+053096Z"),
            Just("deployment.promoted"),
            Just("production")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A real alert with one field replaced by anything.
fn mutated_alert() -> impl Strategy<Value = Vec<u8>> {
    let pointers = prop::sample::select(vec![
        "/action",
        "/installation",
        "/data",
        "/data/metric_alert",
        "/data/metric_alert/identifier",
        "/data/metric_alert/projects",
        "/data/metric_alert/date_started",
        "/data/metric_alert/alert_rule",
        "/data/metric_alert/alert_rule/id",
        "/data/metric_alert/alert_rule/triggers",
        "/data/metric_alert/alert_rule/environment",
        "/data/description_text",
    ]);
    (pointers, json_value()).prop_map(|(pointer, value)| {
        let mut alert = crate::helpers::crash_alert("1", 1_700_000_000_000);
        if let Some(slot) = alert.pointer_mut(pointer) {
            *slot = value;
        }
        serde_json::to_vec(&alert).unwrap()
    })
}

proptest! {
    #[test]
    fn sentry_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = sentry::parse(Resource::MetricAlert, &bytes);
        let _ = sentry::parse(Resource::EventAlert, &bytes);
    }

    #[test]
    fn sentry_parser_never_panics_on_json(v in json_value()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        for resource in [Resource::MetricAlert, Resource::EventAlert] {
            if let Ok(alert) = sentry::parse(resource, &bytes) {
                prop_assert!(alert.dedup_key().contains(&alert.identifier));
            }
        }
    }

    #[test]
    fn sentry_parser_never_panics_on_mutated_alerts(bytes in mutated_alert()) {
        if let Ok(alert) = sentry::parse(Resource::MetricAlert, &bytes) {
            prop_assert!(!alert.rule_id.is_empty() && !alert.identifier.is_empty());
            let _ = (alert.is_critical(), alert.is_crash_free_rate());
        }
    }

    #[test]
    fn vercel_parser_never_panics(v in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = vercel::parse(&bytes);
        if let Ok(Some(e)) = vercel::parse(&serde_json::to_vec(&v).unwrap()) {
            prop_assert!(e.kind.starts_with("deployment."));
        }
    }

    #[test]
    fn signature_check_accepts_exactly_the_right_signature(
        secret in prop::collection::vec(any::<u8>(), 0..64),
        body in prop::collection::vec(any::<u8>(), 0..512),
        forged in ".{0,80}",
    ) {
        for digest in [Digest::Sha256, Digest::Sha1] {
            let right = sign(digest, &secret, &body);
            prop_assert!(verify(digest, &secret, &body, &right));
            prop_assert_eq!(verify(digest, &secret, &body, &forged), forged.trim() == right);
        }
    }

    #[test]
    fn timestamp_check_never_panics(header in ".{0,30}", now in any::<i64>()) {
        let _ = check_timestamp(Some(&header), now, std::time::Duration::from_secs(300));
    }
}
