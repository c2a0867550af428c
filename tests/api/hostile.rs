//! Hostile and broken input: every request gets its status and leaves no
//! trace; a few malformed-but-signed ones are accepted and handled safely.

use backstop::clock::now_ms;
use backstop::ingest::signature::{sign, Digest};
use serde_json::{json, Value};

use crate::helpers::*;

struct Case {
    name: &'static str,
    body: Vec<u8>,
    /// `None`: sign `body` correctly. `Some(sig)`: send this signature.
    signature: Option<Option<String>>,
    timestamp: Option<String>,
    content_type: &'static str,
    resource: &'static str,
    status: u16,
}

fn case(name: &'static str, body: Vec<u8>, status: u16) -> Case {
    Case {
        name,
        body,
        signature: None,
        timestamp: None,
        content_type: "application/json",
        resource: "metric_alert",
        status,
    }
}

fn nested(depth: usize) -> Vec<u8> {
    let mut s = "[".repeat(depth);
    s.push_str(&"]".repeat(depth));
    s.into_bytes()
}

fn with(mut v: Value, pointer: &str, value: Value) -> Vec<u8> {
    *v.pointer_mut(pointer).unwrap() = value;
    compact(&v)
}

fn without(mut v: Value, parent: &str, key: &str) -> Vec<u8> {
    v.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    compact(&v)
}

fn refused_cases() -> Vec<Case> {
    let alert = crash_alert("801", now_ms() - MIN);
    let good = compact(&alert);
    let sig = sign(Digest::Sha256, SENTRY_SECRET.as_bytes(), &good);
    let other = sign(
        Digest::Sha256,
        SENTRY_SECRET.as_bytes(),
        br#"{"action":"critical"}"#,
    );
    let now = now_ms() / 1000;
    let mut cases = vec![
        Case {
            signature: Some(None),
            ..case("missing signature", good.clone(), 401)
        },
        Case {
            signature: Some(Some(String::new())),
            ..case("empty signature", good.clone(), 401)
        },
        Case {
            signature: Some(Some("0".repeat(64))),
            ..case("wrong signature", good.clone(), 401)
        },
        Case {
            signature: Some(Some(sig.to_uppercase())),
            ..case("uppercase-hex signature", good.clone(), 401)
        },
        Case {
            signature: Some(Some(sig[..40].to_string())),
            ..case("truncated signature", good.clone(), 401)
        },
        Case {
            signature: Some(Some(other)),
            ..case("valid signature over a different body", good.clone(), 401)
        },
        Case {
            timestamp: Some((now - 3600).to_string()),
            ..case("timestamp an hour old", good.clone(), 401)
        },
        Case {
            timestamp: Some((now + 3600).to_string()),
            ..case("timestamp an hour ahead", good.clone(), 401)
        },
        Case {
            timestamp: Some("yesterday".into()),
            ..case("non-numeric timestamp", good.clone(), 401)
        },
        case("non-JSON body", b"action=critical".to_vec(), 400),
        case("truncated JSON", good[..good.len() / 2].to_vec(), 400),
        case("deeply nested JSON", nested(100_000), 400),
        case("a 10 MiB body", vec![b' '; 10 * 1024 * 1024], 413),
        Case {
            content_type: "text/plain",
            ..case("wrong content type", good.clone(), 400)
        },
        Case {
            resource: "issue",
            ..case("unknown resource", good.clone(), 200)
        },
        case(
            "missing identifier",
            without(alert.clone(), "/data/metric_alert", "identifier"),
            400,
        ),
        // A `null` metric_alert is what Sentry sends when serialising
        // times out: accepted (sentry_shapes). A missing key is malformed.
        case(
            "missing metric_alert",
            without(alert.clone(), "/data", "metric_alert"),
            400,
        ),
        case(
            "missing rule id",
            without(alert.clone(), "/data/metric_alert/alert_rule", "id"),
            400,
        ),
        case(
            "missing installation",
            without(alert.clone(), "", "installation"),
            400,
        ),
        case(
            "action of the wrong type",
            with(alert.clone(), "/action", json!(1)),
            400,
        ),
        case(
            "identifier of the wrong type",
            with(
                alert.clone(),
                "/data/metric_alert/identifier",
                json!({"id": 1}),
            ),
            400,
        ),
        case(
            "rule id of the wrong type",
            with(
                alert.clone(),
                "/data/metric_alert/alert_rule/id",
                json!([9]),
            ),
            400,
        ),
        case(
            "data of the wrong type",
            with(alert.clone(), "/data", json!("critical")),
            400,
        ),
    ];
    for c in &mut cases {
        if c.signature.is_none() {
            c.signature = Some(Some(sign(
                Digest::Sha256,
                SENTRY_SECRET.as_bytes(),
                &c.body,
            )));
        }
    }
    cases
}

#[tokio::test]
async fn hostile_requests_get_their_status_and_leave_no_trace() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_serves("dpl_new").await;
    for c in refused_cases() {
        let ts = c
            .timestamp
            .clone()
            .unwrap_or_else(|| (now_ms() / 1000).to_string());
        let resp = app
            .http
            .post(format!("{}/webhooks/sentry", app.address))
            .header("content-type", c.content_type)
            .header("sentry-hook-resource", c.resource)
            .header("sentry-hook-timestamp", ts)
            .header("request-id", "a".repeat(32));
        let resp = match c.signature.clone().flatten() {
            Some(sig) => resp.header("sentry-hook-signature", sig),
            None => resp,
        };
        let status = resp
            .body(c.body.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, c.status, "{}", c.name);
    }
    assert_eq!(app.store.count_alerts().await.unwrap(), 0, "nothing stored");
    assert_eq!(app.store.count_runs().await.unwrap(), 0, "nothing executed");
    assert!(app.alias_writes().await.is_empty());
    assert!(bodies(&app.pagerduty, "/v2/enqueue").await.is_empty());
    assert!(bodies(&app.slack, "/chat.postMessage").await.is_empty());
}

#[tokio::test]
async fn malformed_dates_and_string_ids_are_accepted_and_handled_safely() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let mut alert = crash_alert("802", now_ms() - MIN);
    for k in ["date_started", "date_detected", "date_created"] {
        alert["data"]["metric_alert"][k] = json!("2025-07-14T11:41:32+053096Z");
    }
    alert["data"]["metric_alert"]["alert_rule"]["id"] = json!("177111");
    alert["data"]["metric_alert"]["identifier"] = json!("802");
    alert["data"]["metric_alert"]["alert_rule"]["triggers"][0]["alert_threshold"] =
        json!("not a number");
    let resp = app.post_sentry("metric_alert", &compact(&alert)).await;
    assert_eq!(resp.status(), 202);
    app.engine.run_until_idle().await.unwrap();
    let run = &app.store.list_runs(1).await.unwrap()[0];
    // An unreadable start counts as when it arrived: after the promotion, so fresh.
    assert_eq!(run.status, RunStatus::Done);
    assert_eq!(run.outcome, Some(Outcome::Rollback));
    let decision = run.decision.as_ref().unwrap();
    assert!(decision["alert_started_at_ms"].as_i64().unwrap() >= run.created_at_ms);
    let mut numeric = crash_alert("803", now_ms() - MIN);
    numeric["data"]["metric_alert"]["identifier"] = json!(803);
    numeric["data"]["metric_alert"]["alert_rule"]["id"] = json!(177111);
    assert_eq!(
        app.post_sentry("metric_alert", &compact(&numeric))
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn hostile_vercel_webhooks_are_refused() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let url = format!("{}/webhooks/vercel", app.address);
    let good = compact(&promoted("dpl_h", "hhh", now_ms()));
    let sig = sign(Digest::Sha1, VERCEL_SECRET.as_bytes(), &good);
    // (name, body, signature, content type, status)
    type VercelCase = (&'static str, Vec<u8>, Option<String>, &'static str, u16);
    let cases: Vec<VercelCase> = vec![
        (
            "missing signature",
            good.clone(),
            None,
            "application/json",
            401,
        ),
        (
            "uppercase signature",
            good.clone(),
            Some(sig.to_uppercase()),
            "application/json",
            401,
        ),
        (
            "sha256 instead of sha1",
            good.clone(),
            Some(sign(Digest::Sha256, VERCEL_SECRET.as_bytes(), &good)),
            "application/json",
            401,
        ),
        (
            "non-JSON",
            b"nope".to_vec(),
            Some(sign(Digest::Sha1, VERCEL_SECRET.as_bytes(), b"nope")),
            "application/json",
            400,
        ),
        (
            "wrong content type",
            good.clone(),
            Some(sig.clone()),
            "text/plain",
            400,
        ),
        (
            "too large",
            vec![b' '; 2 * 1024 * 1024],
            None,
            "application/json",
            413,
        ),
    ];
    for (name, body, sig, ct, status) in cases {
        let mut req = app.http.post(&url).header("content-type", ct).body(body);
        if let Some(sig) = sig {
            req = req.header("x-vercel-signature", sig);
        }
        assert_eq!(
            req.send().await.unwrap().status().as_u16(),
            status,
            "{name}"
        );
    }
    assert!(app.store.deployments(None).await.unwrap().is_empty());
}
