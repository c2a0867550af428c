//! The admin listener: `/metrics` after a rollback, a skip and a failed
//! rollback, in a format Prometheus parses; and the console in a real
//! headless Chromium (Debian's `chromium` and `chromium-driver`) through
//! WebDriver: what a person sees, the page updating by itself, and nothing
//! but a login without the token.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backstop::config::Settings;
use backstop::ledger::RunStatus;
use backstop::sim::config::DEMO;
use backstop::sim::sender::{self, CrashAlert};
use fantoccini::{Client, ClientBuilder, Locator};
use secrecy::SecretString;

use crate::helpers::*;
use crate::on_both;

const ADMIN_TOKEN: &str = "console-test-admin-token";

async fn metrics(app: &SimApp, openmetrics: bool) -> (String, String) {
    let mut req = app
        .http
        .get(format!("{}/metrics", app.admin))
        .bearer_auth(ADMIN_TOKEN);
    if openmetrics {
        req = req.header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (ct, resp.text().await.unwrap())
}

/// Parses the exposition text as Prometheus would: every line a comment
/// (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`) or a sample `name{labels} value`;
/// every sample under a `TYPE` of its family; histogram buckets ascending,
/// ending in `+Inf` equal to `_count`. Returns sample → value.
fn parse_exposition(text: &str, openmetrics: bool) -> BTreeMap<String, f64> {
    assert!(text.ends_with('\n'), "the last line ends with a line feed");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    if openmetrics {
        assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    } else {
        assert!(
            !text.contains("# EOF"),
            "no # EOF in the Prometheus text format"
        );
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in lines {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            match kind {
                "EOF" => continue,
                "HELP" | "TYPE" | "UNIT" => {
                    let name = parts.next().expect("a metric name");
                    assert!(name_ok(name), "bad name in {line}");
                    if kind == "TYPE" {
                        let t = parts.next().expect("a type");
                        assert!(
                            [
                                "counter",
                                "gauge",
                                "histogram",
                                "summary",
                                "untyped",
                                "unknown",
                                "info",
                                "stateset",
                                "gaugehistogram"
                            ]
                            .contains(&t),
                            "bad type in {line}"
                        );
                        types.insert(name.to_string(), t.to_string());
                    }
                }
                other => panic!("unknown comment `{other}` in {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad sample name in {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line}"
                );
                for pair in labels[1..labels.len() - 1]
                    .split(',')
                    .filter(|p| !p.is_empty())
                {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(
                        name_ok(k) && v.starts_with('"') && v.ends_with('"'),
                        "bad label in {line}"
                    );
                }
            }
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let family = types
            .keys()
            .filter(|t| name.starts_with(t.as_str()))
            .max_by_key(|t| t.len());
        assert!(family.is_some(), "sample without a TYPE: {line}");
        samples.insert(series.to_string(), v);
    }
    // Histograms: buckets ascending, +Inf == count.
    for (family, t) in &types {
        if t != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let bucket = format!("{family}_bucket");
        for (series, v) in samples
            .iter()
            .filter(|(s, _)| s.starts_with(&format!("{bucket}{{")))
        {
            let labels = &series[bucket.len() + 1..series.len() - 1];
            let mut le = None;
            let mut rest = Vec::new();
            for pair in labels.split(',') {
                match pair.strip_prefix("le=") {
                    Some(v) => {
                        let v = v.trim_matches('"');
                        le = Some(if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse().unwrap()
                        });
                    }
                    None => rest.push(pair),
                }
            }
            let count = match rest.is_empty() {
                true => format!("{family}_count"),
                false => format!("{family}_count{{{}}}", rest.join(",")),
            };
            by_series
                .entry(count)
                .or_default()
                .push((le.expect("a bucket has le"), *v));
        }
        for (series, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "cumulative buckets: {series}"
            );
            assert_eq!(
                buckets.last().unwrap().0,
                f64::INFINITY,
                "+Inf bucket: {series}"
            );
            assert_eq!(
                Some(&buckets.last().unwrap().1),
                samples.get(&series),
                "{series}"
            );
        }
    }
    samples
}

fn with_admin_token(s: &mut Settings) {
    s.admin.token = Some(SecretString::from(ADMIN_TOKEN));
}

async fn metrics_after_a_rollback_a_skip_and_a_failed_rollback(db: Db) {
    let Some(app) = spawn_on_sim(db, with_admin_token).await else {
        return;
    };
    // A failed rollback first: the known-good deployment is gone at Vercel.
    let good = app.sim.sim.world().deployments.remove(SIM_GOOD).unwrap();
    assert_eq!(app.alert("m1", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;
    // Then it is back, and a new alert about the same release rolls back.
    app.sim
        .sim
        .world()
        .deployments
        .insert(SIM_GOOD.into(), good);
    assert_eq!(app.alert("m2", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;
    assert_eq!(app.serving(), vec![Some(SIM_GOOD.to_string()); 2]);
    // And a stale one is skipped.
    assert_eq!(app.alert("m3", 10 * MIN).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;

    // Without the token: nothing.
    let anon = app
        .http
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    let (ct, text) = metrics(&app, false).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let m = parse_exposition(&text, false);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    assert_eq!(
        get("backstop_decisions_total{service=\"storefront\",outcome=\"rollback-failed\"}"),
        1.0
    );
    assert_eq!(
        get("backstop_decisions_total{service=\"storefront\",outcome=\"rolled-back\"}"),
        1.0
    );
    assert_eq!(
        get("backstop_decisions_total{service=\"storefront\",outcome=\"skipped\"}"),
        1.0
    );
    assert_eq!(
        get("backstop_rollback_seconds_count{service=\"storefront\"}"),
        1.0
    );
    assert!(get("backstop_rollback_seconds_sum{service=\"storefront\"}") > 0.0);
    assert_eq!(
        get("backstop_webhooks_total{source=\"sentry\",status=\"202\"}"),
        3.0
    );
    assert_eq!(
        get("backstop_deployments{service=\"storefront\",verdict=\"bad\"}"),
        1.0
    );
    assert_eq!(
        get("backstop_deployments{service=\"storefront\",verdict=\"overridden\"}"),
        0.0
    );
    assert_eq!(get("backstop_service_frozen{service=\"storefront\"}"), 0.0);
    assert_eq!(get("backstop_runs_in_flight"), 0.0);
    assert_eq!(get("backstop_oldest_unfinished_run_age_seconds"), 0.0);
    assert!(get("backstop_provider_requests_total{provider=\"vercel\",outcome=\"ok\"}") >= 6.0);
    assert!(m
        .keys()
        .any(|k| k.starts_with("backstop_provider_request_seconds_count{provider=\"vercel\"")));
    assert!(!text.contains(ADMIN_TOKEN) && !text.contains(DEMO.vercel_token));

    // The same, as OpenMetrics when the scraper asks for it.
    let (ct, om) = metrics(&app, true).await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = parse_exposition(&om, true);
    assert_eq!(
        m.get("backstop_decisions_total{service=\"storefront\",outcome=\"rolled-back\"}"),
        Some(&1.0)
    );
}

on_both!(metrics_after_a_rollback_a_skip_and_a_failed_rollback);

/// A headless Chromium driven through `chromedriver`. `None` (the test
/// skips) when they are not installed, outside CI.
struct Browser {
    driver: Child,
    client: Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn browser() -> Option<Browser> {
    let installed = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !installed("chromedriver") || !installed("chromium") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium/chromium-driver are not installed (.ci/run installs them)"
        );
        eprintln!("skipping: chromium and chromium-driver are not installed");
        return None;
    }
    // fantoccini speaks to chromedriver over plain HTTP, but its client
    // wants a TLS provider chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut driver = Some(driver);
    loop {
        let attempt = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(client) => {
                return Some(Browser {
                    driver: driver.take().unwrap(),
                    client,
                })
            }
            Err(e) if Instant::now() > deadline => panic!("chromedriver did not start: {e}"),
            // Not listening yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The text of the element `css` inside `el`.
async fn text_within(el: &fantoccini::elements::Element, css: &str) -> String {
    let found = el.find(Locator::Css(css)).await;
    found
        .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits (bounded, 15 s) for an element, re-reading the page as it is.
async fn eventually(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}` never appeared: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser_shows_the_rollback_and_updates_by_itself() {
    let Some(b) = browser().await else {
        return;
    };
    let Some(app) = spawn_on_sim(Db::Sqlite, |_| {}).await else {
        return;
    };
    assert_eq!(app.alert("b1", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;
    let run = app.store.list_runs(1).await.unwrap().remove(0);
    let c = &b.client;

    // Services: the live deployment is the restored one.
    c.goto(&format!("{}/", app.admin)).await.unwrap();
    let row = eventually(c, "tr.service[data-service=storefront]").await;
    let text = row.text().await.unwrap();
    assert!(text.contains(SIM_GOOD), "{text}");
    assert!(text.contains("1 of 3"), "one rollback today: {text}");

    // The timeline: the bad deployment's bar, and the rollback's arrow.
    c.goto(&format!("{}/services/storefront", app.admin))
        .await
        .unwrap();
    eventually(c, &format!("svg line.rollback[data-run=\"{}\"]", run.id)).await;
    eventually(
        c,
        &format!("svg rect.deployment.bad[data-deployment=\"{SIM_LIVE}\"]"),
    )
    .await;
    eventually(
        c,
        &format!("svg rect.deployment.good[data-deployment=\"{SIM_GOOD}\"]"),
    )
    .await;
    eventually(c, &format!("svg circle.alert[data-run=\"{}\"]", run.id)).await;

    // The run: every check, and the steps.
    c.goto(&format!("{}/runs/{}", app.admin, run.id))
        .await
        .unwrap();
    eventually(c, "#checks").await;
    let checks = c
        .find_all(Locator::Css("#checks li.check.ok"))
        .await
        .unwrap();
    assert!(checks.len() >= 16, "every check passed: {}", checks.len());
    let steps = c
        .find(Locator::Css("#steps"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        steps.contains("rollback") && steps.contains("succeeded"),
        "{steps}"
    );
    let page = c.source().await.unwrap();
    assert!(
        !page.contains("\"metric_alert\""),
        "no raw alert body on the page"
    );

    // The runs page updates by itself when a new alert arrives.
    c.goto(&format!("{}/runs", app.admin)).await.unwrap();
    eventually(c, &format!("tr.run[data-run=\"{}\"]", run.id)).await;
    let body =
        CrashAlert::critical("storefront-web", "b2", backstop::clock::now_ms() - 10 * MIN).body();
    let (status, answer) = sender::deliver(
        &app.http,
        &format!("{}/webhooks/sentry", app.address),
        DEMO.sentry_secret,
        "metric_alert",
        &body,
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    let new_run = answer["run"].as_str().unwrap().to_string();
    let row = eventually(c, &format!("tr.run[data-run=\"{new_run}\"]")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !row
        .text()
        .await
        .map(|t| t.contains("skip"))
        .unwrap_or(false)
    {
        // The row is replaced by each reload; find it again.
        let row = eventually(c, &format!("tr.run[data-run=\"{new_run}\"]")).await;
        if row.text().await.unwrap_or_default().contains("skip") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new run's outcome never showed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.store
            .run(&backstop::ledger::RunId(new_run))
            .await
            .unwrap()
            .status,
        RunStatus::Done
    );
    b.client.clone().close().await.unwrap();
}

/// A week of dry runs shows on the services page as the record it is, not
/// only the advice drawn from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_each_services_scored_record() {
    let Some(b) = browser().await else {
        return;
    };
    let Some(app) = spawn_on_sim(Db::Sqlite, |s| {
        s.services[0].mode = backstop::policy::Mode::DryRun;
        s.services[0].score_window = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    assert_eq!(app.alert("sc1", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;
    // A person rolls back by hand: the dry run is confirmed.
    app.promoted(SIM_GOOD, "9be1c07").await;
    app.engine.score_due().await.unwrap();
    assert_eq!(app.store.scores(None, 0).await.unwrap().len(), 1);
    let c = &b.client;
    c.goto(&format!("{}/", app.admin)).await.unwrap();
    let cell = eventually(c, "tr.service[data-service=storefront] td.score").await;
    let record = text_within(&cell, ".record").await;
    assert!(
        record.starts_with("1 decision (1 dry run, 0 rollbacks): 1 confirmed, 0 false alarms, 0 undetermined; precision 100%; median "),
        "{record}"
    );
    let advice = text_within(&cell, ".advice").await;
    assert_eq!(advice, "1 decision: too few decisions to say");
    let mode = eventually(c, "tr.service[data-service=storefront]")
        .await
        .text()
        .await
        .unwrap();
    assert!(mode.contains("dry-run"), "{mode}");
    b.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_the_console_shows_only_a_login() {
    let Some(b) = browser().await else {
        return;
    };
    let Some(app) = spawn_on_sim(Db::Sqlite, with_admin_token).await else {
        return;
    };
    assert_eq!(app.alert("t1", 30_000).await, 202);
    app.until_runs_finish(Duration::from_secs(20)).await;
    let run = app.store.list_runs(1).await.unwrap().remove(0);
    let c = &b.client;
    for path in [
        "/".to_string(),
        "/services/storefront".into(),
        format!("/runs/{}", run.id),
    ] {
        c.goto(&format!("{}{path}", app.admin)).await.unwrap();
        eventually(c, "form#login").await;
        let page = c.source().await.unwrap();
        assert!(
            !page.contains("storefront") && !page.contains(SIM_GOOD) && !page.contains(&run.id.0),
            "{path} shows nothing but the login: {page}"
        );
    }
    // A wrong token changes nothing; the right one opens the console.
    let field = c
        .find(Locator::Css("form#login input[name=token]"))
        .await
        .unwrap();
    field.send_keys("not-it").await.unwrap();
    c.find(Locator::Css("form#login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let said = eventually(c, "form#login ~ p.stop, p.stop").await;
    assert!(said.text().await.unwrap().contains("That is not the token"));
    let field = c
        .find(Locator::Css("form#login input[name=token]"))
        .await
        .unwrap();
    field.send_keys(ADMIN_TOKEN).await.unwrap();
    c.find(Locator::Css("form#login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = eventually(c, "tr.service[data-service=storefront]").await;
    assert!(row.text().await.unwrap().contains(SIM_GOOD));
    assert!(
        !c.source().await.unwrap().contains(ADMIN_TOKEN),
        "the token is never on a page"
    );
    b.client.clone().close().await.unwrap();
}

#[test]
fn a_console_open_to_the_network_needs_a_token_named_at_start() {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let config = backstop::sim::config::Config::new(
        DEMO,
        backstop::sim::config::Bases::closed(),
        "sqlite://x.db",
        listen,
    );
    let mut s = config.settings().unwrap();
    s.admin.listen = Some("0.0.0.0:9091".parse().unwrap());
    let e = s.validate().unwrap_err().to_string();
    assert!(e.contains("admin.token"), "{e}");
    s.admin.token = Some(SecretString::from(ADMIN_TOKEN));
    s.validate().unwrap();
    // Loopback needs none; `off` turns it off.
    let text = config.toml().replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"off\"",
    );
    let off = backstop::config::Settings::from_toml(&text, Vec::new()).unwrap();
    assert_eq!(off.admin.listen, None);
}
