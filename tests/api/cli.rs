//! The `backstop` binary as an operator uses it.

use std::path::Path;
use std::process::{Command, Output};

use backstop::clock::now_ms;
use serde_json::Value;

use crate::helpers::*;

fn backstop(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("BACKSTOP_CONFIG")
        .output()
        .expect("backstop runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn all_output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_config(dir: &Path, db_url: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string("examples/backstop.toml")
        .unwrap()
        .replace("sqlite://backstop.db", db_url)
        .replace(
            "replace-with-the-internal-integration-client-secret",
            SENTRY_SECRET,
        )
        .replace("replace-with-a-vercel-token", VERCEL_TOKEN);
    let path = dir.join("backstop.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn pause_and_resume_are_recorded_with_who_and_when() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let config = write_config(dir.path(), &db);
    let as_alice = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_backstop"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("USER", "alice")
            .env_remove("BACKSTOP_CONFIG")
            .output()
            .expect("backstop runs")
    };
    assert!(as_alice(&["migrate"]).status.success());
    let out = as_alice(&[
        "deployments",
        "record",
        "--service",
        "storefront",
        "--id",
        "dpl_a",
        "--live",
    ]);
    assert!(out.status.success(), "{}", all_output(&out));
    let before = now_ms();
    let out = as_alice(&["pause", "storefront", "--reason", "launch day"]);
    assert!(out.status.success(), "{}", all_output(&out));
    // While held, every deployment of the service says so (scripts read it).
    let out = as_alice(&["deployments", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json list");
    assert_eq!(list[0]["id"], "dpl_a");
    assert_eq!(list[0]["held"]["reason"], "launch day");
    assert_eq!(list[0]["held"]["by"], "cli (alice)");
    let out = as_alice(&["resume", "storefront"]);
    assert!(out.status.success(), "{}", all_output(&out));
    let out = as_alice(&["deployments", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list[0]["held"].is_null(), "{list:?}");

    let out = as_alice(&["pauses", "--json"]);
    let log: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json log");
    let seen: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![("resume", "cli (alice)"), ("pause", "cli (alice)")]
    );
    assert!(log.iter().all(|e| e["at_ms"].as_i64().unwrap() >= before));
    // A service the config does not know is named, not reported empty.
    let out = as_alice(&["report", "--service", "storefrnt"]);
    assert!(!out.status.success());
    let said = all_output(&out);
    assert!(
        said.contains("no service named `storefrnt`") && said.contains("storefront"),
        "{said}"
    );
    let table = stdout(&as_alice(&["pauses", "--service", "storefront"]));
    assert!(
        table.contains("storefront") && table.contains("pause") && table.contains("launch day"),
        "{table}"
    );
}

#[test]
fn deployments_can_be_recorded_marked_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let config = write_config(dir.path(), &db);

    let out = backstop(&config, &["migrate"]);
    assert!(out.status.success(), "{}", all_output(&out));
    for (id, release) in [("dpl_a", "aaa"), ("dpl_b", "bbb")] {
        let out = backstop(
            &config,
            &[
                "deployments",
                "record",
                "--service",
                "storefront",
                "--id",
                id,
                "--release",
                release,
                "--live",
            ],
        );
        assert!(out.status.success(), "{}", all_output(&out));
    }
    let out = backstop(
        &config,
        &[
            "deployments",
            "mark",
            "dpl_a",
            "good",
            "--reason",
            "verified by QA",
        ],
    );
    assert!(
        stdout(&out).contains("dpl_a (storefront) is now good: verified by QA"),
        "{}",
        all_output(&out)
    );

    let out = backstop(&config, &["deployments", "list", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json list");
    let live: Vec<_> = list
        .iter()
        .filter(|d| d["live"] == true)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(live, vec!["dpl_b"], "exactly one live deployment");
    let a = list.iter().find(|d| d["id"] == "dpl_a").unwrap();
    assert_eq!(
        (a["verdict"].as_str(), a["release"].as_str()),
        (Some("good"), Some("aaa"))
    );

    let table = stdout(&backstop(&config, &["deployments", "list"]));
    assert!(table.contains("dpl_b") && table.contains("yes"), "{table}");

    let out = backstop(&config, &["deployments", "mark", "dpl_nope", "bad"]);
    assert!(!out.status.success());
    assert!(all_output(&out).contains("deployment dpl_nope not found"));
    let out = backstop(&config, &["deployments", "mark", "dpl_a", "meh"]);
    assert!(!out.status.success() && all_output(&out).contains("`good` or `bad`"));
    let out = backstop(
        &config,
        &["deployments", "record", "--service", "nope", "--id", "x"],
    );
    assert!(!out.status.success() && all_output(&out).contains("no service named `nope`"));
}

#[test]
fn bad_config_fails_naming_the_key_and_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let config = write_config(dir.path(), &db);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("cooldown = \"1h\"", "cooldown = \"an hour\"");
    std::fs::write(&config, text).unwrap();
    let out = backstop(&config, &["runs", "list"]);
    assert!(!out.status.success());
    let all = all_output(&out);
    assert!(all.contains("services[0].cooldown"), "{all}");
    for secret in [SENTRY_SECRET, VERCEL_TOKEN] {
        assert!(!all.contains(secret), "secret leaked: {all}");
    }
    let out = backstop(&dir.path().join("missing.toml"), &["runs", "list"]);
    assert!(!out.status.success() && all_output(&out).contains("missing.toml"));
}

#[test]
fn help_lists_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&out);
    for cmd in [
        "serve",
        "migrate",
        "sync",
        "deployments",
        "runs",
        "pause",
        "resume",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help:\n{help}");
    }
}

#[tokio::test]
async fn runs_show_explains_a_rollback_without_printing_secrets() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    app.seed_history().await;
    app.vercel_rollback_works("dpl_new", "dpl_old").await;
    let resp = app
        .post_sentry(
            "metric_alert",
            &compact(&crash_alert("601", now_ms() - MIN)),
        )
        .await;
    let run = resp.json::<Value>().await.unwrap()["run"]
        .as_str()
        .unwrap()
        .to_string();
    app.engine.run_until_idle().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &app.db_url);
    let out = backstop(&config, &["runs", "show", &run]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    for part in [
        "outcome    rollback: roll back dpl_new to known-good dpl_old",
        "pass fresh",
        "pass production unchanged",
        "rollback  succeeded",
        "page      succeeded",
        "announce  succeeded",
    ] {
        assert!(text.contains(part), "`{part}` missing from:\n{text}");
    }
    let listed = stdout(&backstop(&config, &["runs", "list", "--json"]));
    let runs: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(runs[0]["outcome"], "rollback");
    let json = all_output(&backstop(&config, &["runs", "show", &run, "--json"]));
    for secret in [SENTRY_SECRET, VERCEL_TOKEN, ROUTING_KEY, SLACK_TOKEN] {
        assert!(
            !text.contains(secret) && !json.contains(secret),
            "secret in CLI output"
        );
    }
}
