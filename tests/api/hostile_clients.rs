//! The public webhook port under hostile clients: more slow connections
//! than the connection budget, against a `backstop serve` whose open-files
//! limit is low (`prlimit`), must neither lock a real alert out nor stay
//! open past the header timeout.

use std::process::Command;
use std::time::{Duration, Instant};

use backstop::clock::now_ms;
use backstop::sim::sender::{self, CrashAlert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::procs::*;

/// `backstop serve` with at most `nofile` open files.
fn spawn_limited(w: &World, nofile: u32) -> Proc {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg(env!("CARGO_BIN_EXE_backstop"));
    Proc::start(cmd, &w.config, None)
}

async fn limited_world() -> World {
    world_with(None, |c| {
        c.sections.push((
            "server",
            "max_connections = 100\nheader_timeout = \"2s\"".into(),
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_beyond_the_connection_budget_do_not_lock_out_a_real_alert() {
    let w = limited_world().await;
    let p = spawn_limited(&w, 256);
    let addr = format!("127.0.0.1:{}", p.port);
    // More clients than the server has file descriptors, sending their
    // headers a byte at a time.
    let opened = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..300 {
        let stream = TcpStream::connect(&addr).await.expect("connect");
        let (read, mut write) = stream.into_split();
        readers.push(read);
        tokio::spawn(async move {
            let head = b"POST /webhooks/sentry HTTP/1.1\r\nHost: backstop\r\nX-Slow: ";
            // Forever: the header never ends, the client never gives up.
            for b in head.iter().chain(std::iter::repeat(&b'a')) {
                if write.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    // A real, signed alert beside them gets in and is stored.
    let alert = CrashAlert::critical("storefront-web", "5151", now_ms() - 30_000).body();
    // Sentry gives up after a few seconds; so does this client.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (status, _) = sender::deliver(&client, &p.url(), SENTRY, "metric_alert", &alert)
        .await
        .expect("the real alert gets a connection and an answer");
    assert_eq!(status, 202, "{}", p.output());
    // By the header timeout and a margin, the server closed every slow one.
    let margin = Duration::from_secs(2);
    let by = opened + Duration::from_secs(2) + margin;
    tokio::time::sleep_until(by.into()).await;
    for (i, mut read) in readers.into_iter().enumerate() {
        let mut buf = [0u8; 512];
        let closed =
            match tokio::time::timeout(Duration::from_millis(200), read.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => true,
                // A 408 or 400 from hyper, then EOF.
                Ok(Ok(_)) => matches!(
                    tokio::time::timeout(Duration::from_millis(200), read.read(&mut buf)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                ),
                Err(_) => false,
            };
        assert!(
            closed,
            "slow connection {i} still open after the header timeout"
        );
    }
    let out = p.output();
    assert!(
        out.contains("open-files limit"),
        "the limits are logged: {out}"
    );
}

#[test]
fn a_connection_budget_that_does_not_fit_the_open_files_limit_fails_at_start() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let w = rt.block_on(world_with(None, |c| {
        c.sections.push(("server", "max_connections = 5000".into()))
    }));
    let out = Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(env!("CARGO_BIN_EXE_backstop"))
        .args(["serve", "--config"])
        .arg(&w.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.max_connections") && err.contains("256"),
        "{err}"
    );
}

/// Refusals that need no body are answered before any of it is sent: an
/// unknown path, a wrong method, a missing signature header, a declared
/// length over the limit. (The body timeout is set far beyond the test's
/// bound, so an answer can only come from not waiting for the body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheap_refusals_come_before_the_body_is_read() {
    let Some(app) = patient_server(None).await else {
        return;
    };
    let addr = app.address.trim_start_matches("http://").to_string();
    let huge = 5 * 1024 * 1024;
    for (request, status) in [
        (
            "POST /webhooks/sentry HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nSentry-Hook-Resource: metric_alert\r\nContent-Length: 500000\r\n\r\n".to_string(),
            "401",
        ),
        (
            format!("POST /webhooks/sentry HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nSentry-Hook-Resource: metric_alert\r\nSentry-Hook-Signature: 00\r\nContent-Length: {huge}\r\n\r\n"),
            "413",
        ),
        (
            "POST /webhooks/vercel HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n".to_string(),
            "401",
        ),
        (
            "POST /nowhere HTTP/1.1\r\nHost: b\r\nContent-Length: 500000\r\n\r\n".to_string(),
            "404",
        ),
        (
            "PUT /webhooks/sentry HTTP/1.1\r\nHost: b\r\nContent-Length: 500000\r\n\r\n".to_string(),
            "405",
        ),
    ] {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // Not one byte of the body: the answer must come anyway.
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer without the body: {request}"))
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{request}\n→ {head}"
        );
    }
    assert_eq!(app.store.count_runs().await.unwrap(), 0, "nothing stored");
}

/// Slow bodies hold places but do no work: when they fill the connection
/// budget, the one trickling longest is shed, and a real alert gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_filling_the_budget_are_shed_for_a_real_alert() {
    let Some(app) = patient_server(Some(20)).await else {
        return;
    };
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // Signed-looking and within the limit: it passes every cheap check
        // and then sends its body a byte at a time, never finishing.
        stream
            .write_all(b"POST /webhooks/sentry HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nSentry-Hook-Resource: metric_alert\r\nSentry-Hook-Signature: 00\r\nContent-Length: 100000\r\n\r\n{")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Every place is taken by a request waiting on its body.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alert = CrashAlert::critical("storefront-web", "slowbody", now_ms() - 30_000).body();
    let url = format!("{}/webhooks/sentry", app.address);
    let status = loop {
        // A fresh connection each try (reqwest would reuse a pooled one).
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        match sender::deliver(
            &client,
            &url,
            backstop::sim::config::DEMO.sentry_secret,
            "metric_alert",
            &alert,
        )
        .await
        {
            Ok((status, _)) => break status,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the real alert never got in: {e}"
            ),
        }
    };
    assert_eq!(status, 202);
    // And the connection shed for it was one of the slow bodies.
    let mut closed = 0;
    for mut s in slow {
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no slow body was shed");
}

/// An instance on the simulator that would wait ten minutes for a body
/// (so a test's answer cannot come from a body timeout), with at most
/// `max_connections` when given.
async fn patient_server(max_connections: Option<u64>) -> Option<crate::helpers::SimApp> {
    crate::helpers::spawn_on_sim(crate::helpers::Db::Sqlite, move |s| {
        if let Some(n) = max_connections {
            s.server.max_connections = n;
        }
        s.server.body_timeout = Duration::from_secs(600);
        s.server.min_body_rate = 1;
    })
    .await
}
