//! `backstop check`: the configuration is valid (it loaded), the database
//! answers, and one harmless authenticated call per configured provider
//! works. Prints a table; any failure makes the exit status non-zero.
//! Secrets are never printed: errors carry the provider's words only.

use std::io::Write;

use crate::app;
use crate::config::Settings;
use crate::providers::sentry::SentryClient;

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// `database`, `vercel`, ...
    pub provider: String,
    /// What was tried.
    pub check: String,
    /// Whether it worked.
    pub ok: bool,
    /// What it said, or what to fix.
    pub detail: String,
}

fn row(provider: &str, check: String, result: Result<String, String>) -> Row {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    };
    Row {
        provider: provider.into(),
        check,
        ok,
        detail,
    }
}

/// Runs every check.
pub async fn run(settings: &Settings) -> Vec<Row> {
    let mut rows = vec![row(
        "config",
        "parse and validate".into(),
        settings
            .validate_for_serve()
            .map(|_| "ok".into())
            .map_err(|e| e.to_string()),
    )];
    let db = app::open_store(settings)
        .await
        .map(|s| format!("{:?} reachable, migrations applied", s.backend()))
        .map_err(|e| format!("{e:#}"));
    rows.push(row("database", "connect and migrate".into(), db));
    let providers = match app::providers(settings) {
        Ok(p) => p,
        Err(e) => {
            rows.push(row("http", "build clients".into(), Err(format!("{e:#}"))));
            return rows;
        }
    };
    match &providers.vercel {
        Some(v) => {
            for svc in &settings.services {
                let r = v
                    .last_alias_request(&svc.vercel_project)
                    .await
                    .map(|_| "project readable".to_string())
                    .map_err(|e| e.to_string());
                rows.push(row(
                    "vercel",
                    format!("read project {}", svc.vercel_project),
                    r,
                ));
            }
        }
        None => rows.push(row(
            "vercel",
            "token".into(),
            Err("vercel.token is not set".into()),
        )),
    }
    match &providers.slack {
        Some(s) => rows.push(row(
            "slack",
            "auth.test".into(),
            s.auth_test().await.map_err(|e| e.to_string()),
        )),
        None => rows.push(row(
            "slack",
            "configured".into(),
            Ok("not configured: rollbacks will not be announced".into()),
        )),
    }
    match &providers.pagerduty {
        Some(p) => rows.push(row(
            "pagerduty",
            "credentials".into(),
            p.check().await.map_err(|e| e.to_string()),
        )),
        None => rows.push(row(
            "pagerduty",
            "configured".into(),
            Ok("not configured: nobody will be paged".into()),
        )),
    }
    if let (Some(token), Some(org)) = (&settings.sentry.token, &settings.sentry.org) {
        let base = &settings.sentry.api_base;
        let timeout = settings.vercel.timeout;
        let client = match SentryClient::new(base, token.clone(), org, timeout) {
            Ok(c) => c,
            Err(e) => {
                rows.push(row("sentry", "build client".into(), Err(e.to_string())));
                return rows;
            }
        };
        let slugs = settings
            .services
            .iter()
            .flat_map(|s| s.sentry_projects.iter());
        for slug in slugs {
            let r = client
                .project(slug)
                .await
                .map(|_| "project readable".to_string())
                .map_err(|e| e.to_string());
            rows.push(row("sentry", format!("read project {slug}"), r));
        }
    }
    rows
}

/// Prints the table; true when every row passed.
pub fn print(out: &mut dyn Write, rows: &[Row]) -> std::io::Result<bool> {
    writeln!(out, "{:<10} {:<34} {:<5} DETAIL", "PROVIDER", "CHECK", "OK")?;
    for r in rows {
        writeln!(
            out,
            "{:<10} {:<34} {:<5} {}",
            r.provider,
            r.check,
            if r.ok { "ok" } else { "FAIL" },
            r.detail
        )?;
    }
    let ok = rows.iter().all(|r| r.ok);
    writeln!(
        out,
        "\n{}",
        if ok {
            "everything works"
        } else {
            "fix the rows marked FAIL"
        }
    )?;
    Ok(ok)
}
