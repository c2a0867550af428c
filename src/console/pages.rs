//! The console's pages, rendered on the server. Every value from the
//! ledger or a provider is HTML-escaped; nothing secret and no raw alert
//! body is ever written into a page.

use std::fmt::Write as _;

use serde_json::Value;

use crate::clock::{format_time, now_ms};
use crate::config::ServiceSettings;
use crate::http::AppState;
use crate::ingest::sentry::{self, Resource};
use crate::ledger::{Deployment, Outcome, Run, RunDetail, RunFilter, RunId, StepName, StoreError};
use crate::policy::Decision;

/// Runs per page.
pub const PAGE: i64 = 50;

const DAY_MS: i64 = 86_400_000;

/// Escapes text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path or query component.
fn url_part(s: &str) -> String {
    crate::providers::path_segment(s)
}

fn time(ms: Option<i64>) -> String {
    ms.map(|ms| {
        let t = format_time(ms);
        format!("{} UTC", t.get(..19).unwrap_or(&t).replace('T', " "))
    })
    .unwrap_or_else(|| "-".into())
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#1b1f24;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px 24px;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e1e4e8;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
.pill{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff}
.good{background:#2e8540}.bad{background:#d83933}.unproven{background:#6e7781}.overridden{background:#b97a00}
.frozen{background:#8250df}.paused{background:#b97a00}.ok{color:#2e8540}.stop{color:#d83933}
.muted{color:#6e7781}section{margin:16px 0}h1{font-size:20px}h2{font-size:16px}
form.filters{margin:8px 0;display:flex;gap:8px}
svg text{font:11px system-ui,sans-serif}
"#;

const REFRESH: &str = r#"<script>
(function(){var seen=null;async function poll(){try{var r=await fetch('/changes',{credentials:'same-origin',cache:'no-store'});if(r.ok){var t=await r.text();if(seen!==null&&t!==seen){location.reload();return;}seen=t;}}catch(e){}}
poll();setInterval(poll,2000);})();
</script>"#;

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{} · Backstop</title><style>{STYLE}</style></head>\
         <body><header><a href=\"/\">Backstop</a><a href=\"/\">Services</a><a href=\"/runs\">Runs</a><a href=\"/metrics\">Metrics</a></header>\
         <main>{body}</main>{REFRESH}</body></html>",
        esc(title)
    )
}

/// The login form: all that is shown without the token.
pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=stop>{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Backstop · sign in</title><style>{STYLE}</style></head>\
         <body><main><h1>Backstop</h1>{error}<form method=post action=\"/login\" id=login>\
         <label>Admin token <input type=password name=token autocomplete=current-password autofocus></label> \
         <button type=submit>Sign in</button></form></main></body></html>"
    )
}

/// A page saying what went wrong.
pub fn error(text: &str) -> String {
    layout("Error", &format!("<p>{}</p>", esc(text)))
}

fn verdict_pill(v: &str) -> String {
    format!("<span class=\"pill {v}\">{v}</span>", v = esc(v))
}

/// `/`: every service at a glance.
pub async fn services(state: &AppState) -> Result<String, StoreError> {
    let store = state.engine.store();
    let now = now_ms();
    let pauses = store.pauses().await?;
    let scores = store.scores(None, now - 30 * DAY_MS).await?;
    let mut body = String::from("<h1>Services</h1><table id=services><tr><th>Service</th><th>Mode</th><th>Live</th><th>State</th><th>Rollbacks today</th><th>Last rollback</th><th>Decisions scored (30 days)</th></tr>");
    for svc in &state.settings.services {
        let h = store
            .history(&svc.name, &RunId(String::new()), now, svc.bake_time)
            .await?;
        let live = h.deployments.iter().find(|d| d.live);
        let live_cell = match live {
            Some(d) => format!(
                "{} <span class=muted>release {} since {}</span> {}",
                esc(&d.id),
                esc(d.release.as_deref().unwrap_or("?")),
                esc(&time(d.promoted_at_ms)),
                verdict_pill(d.verdict.as_str())
            ),
            None => "<span class=muted>unknown</span>".into(),
        };
        let state_cell = match pauses.iter().find(|p| p.service == svc.name) {
            Some(p) if p.frozen_by_run.is_some() => format!(
                "<span class=\"pill frozen\">frozen</span> {}",
                esc(&p.reason)
            ),
            Some(p) => format!(
                "<span class=\"pill paused\">paused</span> {} <span class=muted>by {}</span>",
                esc(&p.reason),
                esc(p.by.as_deref().unwrap_or("?"))
            ),
            None => "<span class=ok>acting</span>".into(),
        };
        let of: Vec<_> = scores
            .iter()
            .filter(|s| s.service == svc.name)
            .filter_map(|s| s.parsed())
            .collect();
        let record = crate::policy::Report::of(&svc.name, &of);
        let _ = write!(
            body,
            "<tr class=service data-service=\"{n}\"><td><a href=\"/services/{u}\">{n}</a></td><td>{mode}</td><td>{live_cell}</td><td>{state_cell}</td><td>{used} of {max}</td><td>{last}</td><td class=score><span class=record>{tally}</span><br><span class=advice>{advice}</span></td></tr>",
            tally = esc(&record.record()),
            advice = esc(&record.recommendation),
            n = esc(&svc.name),
            u = url_part(&svc.name),
            mode = esc(svc.mode.as_str()),
            used = h.rollbacks_last_day,
            max = svc.max_rollbacks_per_day,
            last = esc(&time(h.last_rollback_at_ms)),
        );
    }
    body.push_str("</table>");
    let recent = store
        .runs_page(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await?;
    body.push_str("<section><h2>Latest runs</h2>");
    body.push_str(&runs_table(&recent));
    body.push_str("<p><a href=\"/runs\">All runs</a></p></section>");
    Ok(layout("Services", &body))
}

/// `/services/{name}`: the timeline over a day or a week, and its runs.
pub async fn service(
    state: &AppState,
    svc: &ServiceSettings,
    days: i64,
) -> Result<String, StoreError> {
    let store = state.engine.store();
    let now = now_ms();
    let start = now - days * DAY_MS;
    let deployments: Vec<Deployment> = store.deployments_since(&svc.name, start).await?;
    let runs = store
        .runs_page(&RunFilter {
            service: Some(svc.name.clone()),
            since_ms: Some(start),
            limit: 500,
            ..Default::default()
        })
        .await?;
    let mut rollbacks = Vec::new();
    for r in runs.iter().filter(|r| r.outcome == Some(Outcome::Rollback)) {
        let d = store.run_detail(&r.id).await?;
        if let (Some(step), Some(from), Some(to)) = (
            d.step(StepName::Rollback)
                .filter(|s| s.status == crate::ledger::StepStatus::Succeeded),
            &r.rollback_from,
            &r.rollback_to,
        ) {
            if let Some(at) = step.finished_at_ms {
                let decision: Option<Decision> = r
                    .decision
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok());
                let to_was_live = decision.and_then(|d| {
                    let since = d.target.as_ref()?.promoted_at_ms?;
                    let until = d.live.as_ref()?.promoted_at_ms?;
                    Some((since, until))
                });
                rollbacks.push(super::timeline::Rollback {
                    at_ms: at,
                    from: from.clone(),
                    to: to.clone(),
                    run: r.id.0.clone(),
                    to_was_live,
                });
            }
        }
    }
    let alerts: Vec<super::timeline::Mark> = runs
        .iter()
        .map(|r| super::timeline::Mark {
            at_ms: r.created_at_ms,
            deployment: r
                .decision
                .as_ref()
                .and_then(|d| d["live"]["id"].as_str())
                .map(str::to_owned),
            title: format!(
                "{} — {}",
                r.outcome.map_or("undecided", |o| o.as_str()),
                r.reason.as_deref().unwrap_or("")
            ),
            run: r.id.0.clone(),
        })
        .collect();
    let svg = super::timeline::svg(&deployments, &alerts, &rollbacks, start, now);
    let window = |d: i64, label: &str| match d == days {
        true => format!("<b>{label}</b>"),
        false => format!(
            "<a href=\"/services/{}?window={label}\">{label}</a>",
            url_part(&svc.name)
        ),
    };
    let mut body = format!(
        "<h1>{}</h1><p>Window: {} · {} · <a href=\"/runs?service={}\">all runs</a></p><section id=timeline>{svg}</section>",
        esc(&svc.name),
        window(1, "24h"),
        window(7, "7d"),
        url_part(&svc.name)
    );
    body.push_str("<section><h2>Deployments</h2><table id=deployments><tr><th>Deployment</th><th>Release</th><th>Verdict</th><th>Promoted</th><th>Superseded</th></tr>");
    for d in deployments.iter().take(50) {
        let _ = write!(
            body,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.id),
            if d.live { " <b>live</b>" } else { "" },
            esc(d.release.as_deref().unwrap_or("-")),
            verdict_pill(d.verdict.as_str()),
            esc(&time(d.promoted_at_ms)),
            esc(&time(d.superseded_at_ms)),
        );
    }
    body.push_str("</table></section><section><h2>Runs in the window</h2>");
    body.push_str(&runs_table(
        &runs.iter().take(PAGE as usize).cloned().collect::<Vec<_>>(),
    ));
    body.push_str("</section>");
    Ok(layout(&svc.name, &body))
}

fn runs_table(runs: &[Run]) -> String {
    let mut t = String::from("<table class=runs><tr><th>Run</th><th>Received</th><th>Service</th><th>Status</th><th>Outcome</th><th>Reason</th></tr>");
    for r in runs {
        let _ = write!(
            t,
            "<tr class=run data-run=\"{id}\"><td><a href=\"/runs/{id}\">{short}</a></td><td>{at}</td><td>{svc}</td><td>{status}</td><td>{outcome}</td><td>{reason}</td></tr>",
            id = esc(&r.id.0),
            short = esc(r.id.0.get(..13).unwrap_or(&r.id.0)),
            at = esc(&time(Some(r.created_at_ms))),
            svc = esc(r.service.as_deref().unwrap_or("-")),
            status = esc(r.status.as_str()),
            outcome = esc(r.outcome.map_or("-", |o| o.as_str())),
            reason = esc(r.reason.as_deref().unwrap_or("")),
        );
    }
    t.push_str("</table>");
    t
}

/// `/runs`: newest first, filtered, a page at a time.
pub async fn runs(state: &AppState, f: &RunFilter) -> Result<String, StoreError> {
    let runs = state.engine.store().runs_page(f).await?;
    let mut body = String::from("<h1>Runs</h1><form class=filters method=get action=\"/runs\"><select name=service><option value=\"\">every service</option>");
    for svc in &state.settings.services {
        let selected = if f.service.as_deref() == Some(svc.name.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{}</option>", esc(&svc.name));
    }
    body.push_str("</select><select name=outcome><option value=\"\">every outcome</option>");
    for o in [
        Outcome::Rollback,
        Outcome::Escalate,
        Outcome::DryRun,
        Outcome::Skip,
        Outcome::Resolution,
    ] {
        let selected = if f.outcome == Some(o) {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option{selected}>{}</option>", o.as_str());
    }
    body.push_str("</select><button type=submit>Filter</button></form>");
    body.push_str(&runs_table(&runs));
    if runs.len() as i64 == f.limit {
        if let Some(last) = runs.last() {
            let mut next = format!("/runs?before={}", url_part(&last.id.0));
            if let Some(s) = &f.service {
                let _ = write!(next, "&service={}", url_part(s));
            }
            if let Some(o) = f.outcome {
                let _ = write!(next, "&outcome={}", o.as_str());
            }
            let _ = write!(body, "<p><a href=\"{}\">Older runs</a></p>", esc(&next));
        }
    }
    Ok(layout("Runs", &body))
}

fn link(href: &str, text: &str) -> String {
    let href = match href.starts_with("http") {
        true => href.to_string(),
        false => format!("https://{href}"),
    };
    format!(
        "<a href=\"{}\" rel=noreferrer>{}</a>",
        esc(&href),
        esc(text)
    )
}

/// `/runs/{id}`: the alert (its facts, not its body), every check, every
/// step with its attempts, and links out.
pub fn run(state: &AppState, d: &RunDetail) -> String {
    let r = &d.run;
    let mut body = format!(
        "<h1>Run <span id=run-id>{}</span></h1><p>{} · {} · service {}</p><p><b>{}</b>: {}</p>",
        esc(&r.id.0),
        esc(r.status.as_str()),
        esc(&time(Some(r.created_at_ms))),
        esc(r.service.as_deref().unwrap_or("(unmapped)")),
        esc(r.outcome.map_or("undecided", |o| o.as_str())),
        esc(r.reason.as_deref().unwrap_or("")),
    );
    // The alert as parsed: its facts, never its raw body.
    let resource = match d.dedup_key.contains("event_alert:") {
        true => Resource::EventAlert,
        false => Resource::MetricAlert,
    };
    let raw = serde_json::to_vec(&d.alert).unwrap_or_default();
    let mut links = Vec::new();
    if let Ok(a) = sentry::parse(resource, &raw) {
        let _ = write!(
            body,
            "<section><h2>Alert</h2><table><tr><th>Rule</th><td>{}</td></tr><tr><th>Action</th><td>{}</td></tr><tr><th>Projects</th><td>{}</td></tr><tr><th>Environment</th><td>{}</td></tr><tr><th>Crash-free</th><td>{} (threshold {})</td></tr><tr><th>Detected</th><td>{}</td></tr></table></section>",
            esc(a.rule_name.as_deref().unwrap_or(&a.rule_id)),
            esc(&a.action),
            esc(&a.projects.join(", ")),
            esc(a.environment.as_deref().unwrap_or("-")),
            a.measured.map(|m| format!("{m}%")).unwrap_or_else(|| "?".into()),
            a.threshold.map(|m| format!("{m}%")).unwrap_or_else(|| "?".into()),
            esc(&time(a.detected_at_ms)),
        );
        if let Some(url) = &a.web_url {
            links.push(link(url, "Sentry alert"));
        }
    }
    let decision: Option<Decision> = r
        .decision
        .clone()
        .and_then(|v| serde_json::from_value(v).ok());
    if let Some(dec) = &decision {
        for (label, dep) in [("Live (from)", &dec.live), ("Target (to)", &dec.target)] {
            if let Some(dep) = dep {
                if let Some(url) = &dep.url {
                    links.push(link(url, &format!("{label}: {}", dep.id)));
                }
            }
        }
        if let Some(h) = &dec.readings {
            let _ = write!(
                body,
                "<p>Release health (Sentry): {}</p>",
                esc(&crate::notice::health_text(h))
            );
        }
        body.push_str("<section><h2>Checks</h2><ul id=checks>");
        for c in &dec.checks {
            let (class, mark) = match c.passed {
                true => ("ok", "✓"),
                false => ("stop", "✗"),
            };
            let _ = write!(
                body,
                "<li class=\"check {class}\">{mark} {:>2} <b>{}</b> — {}</li>",
                c.rule.number(),
                esc(&c.name),
                esc(&c.detail)
            );
        }
        body.push_str("</ul></section>");
    }
    if let Some(page) = d.output_of(StepName::Page) {
        if let Some(url) = page["html_url"].as_str() {
            links.push(link(url, "PagerDuty incident"));
        }
    }
    if let Some(card) = d.output_of(StepName::Announce) {
        if let (Some(ch), Some(ts)) = (card["channel"].as_str(), card["ts"].as_str()) {
            if !ch.is_empty() && !ts.is_empty() {
                let url = format!(
                    "https://slack.com/archives/{}/p{}",
                    url_part(ch),
                    ts.replace('.', "")
                );
                links.push(link(&url, "Slack message"));
            }
        }
    }
    if !links.is_empty() {
        let _ = write!(body, "<p id=links>{}</p>", links.join(" · "));
    }
    body.push_str("<section><h2>Steps</h2><table id=steps><tr><th>Step</th><th>Status</th><th>Attempts</th><th>Started</th><th>Finished</th><th>Error / result</th></tr>");
    for s in &d.steps {
        let result = match (&s.error, &s.output) {
            (Some(e), _) => format!("<span class=stop>{}</span>", esc(&e.message)),
            (None, Some(o)) => esc(&summary(o)),
            _ => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{result}</td></tr>",
            esc(s.name.as_str()),
            esc(s.status.as_str()),
            s.attempts,
            esc(&time(s.started_at_ms)),
            esc(&time(s.finished_at_ms)),
        );
        for a in d.attempts.iter().filter(|a| a.step == s.name) {
            let took = a
                .finished_at_ms
                .map(|f| format!("{} ms", f - a.started_at_ms))
                .unwrap_or_else(|| "in flight".into());
            let _ = write!(
                body,
                "<tr class=muted><td>&nbsp;&nbsp;#{}</td><td>{}</td><td></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.attempt,
                esc(a.outcome.map_or("in flight", |o| o.as_str())),
                esc(&time(Some(a.started_at_ms))),
                esc(&took),
                esc(a.error.as_ref().map_or("", |e| e.message.as_str())),
            );
        }
    }
    body.push_str("</table></section>");
    if !d.notes.is_empty() {
        body.push_str("<section><h2>Notes</h2><ul id=notes>");
        for n in &d.notes {
            let _ = write!(
                body,
                "<li>{} <b>{}</b> {}</li>",
                esc(&time(Some(n.at_ms))),
                esc(&n.kind),
                esc(&n.text)
            );
        }
        body.push_str("</ul></section>");
    }
    let _ = state;
    layout(&format!("Run {}", r.id), &body)
}

/// A step's output in one line, without anything that could be a secret
/// (outputs hold provider answers, never credentials).
fn summary(o: &Value) -> String {
    for key in ["refused", "skipped", "look", "summary", "text"] {
        if let Some(s) = o[key].as_str() {
            return s.chars().take(200).collect();
        }
    }
    if let Some(ms) = o["alert_to_verified_ms"].as_i64() {
        return format!("verified {ms} ms after the alert");
    }
    String::new()
}
