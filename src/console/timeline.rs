//! A service's timeline as SVG, drawn on the server: one lane per
//! deployment, its time live as a bar coloured by verdict; alerts as marks
//! on the lane of the deployment that was live; rollbacks as arrows from
//! the deployment rolled back from to the one restored.

use std::fmt::Write as _;

use super::pages::esc;
use crate::clock::format_time;
use crate::ledger::Deployment;

/// An alert on the timeline.
pub struct Mark {
    /// When it was received.
    pub at_ms: i64,
    /// The deployment live when it was decided, if known.
    pub deployment: Option<String>,
    /// Hover text.
    pub title: String,
    /// Its run.
    pub run: String,
}

/// A verified rollback on the timeline.
pub struct Rollback {
    /// When it was verified.
    pub at_ms: i64,
    /// Rolled back from.
    pub from: String,
    /// Restored.
    pub to: String,
    /// Its run.
    pub run: String,
    /// When the restored deployment had been live before (as the decision
    /// saw it): the ledger keeps only its latest time live.
    pub to_was_live: Option<(i64, i64)>,
}

const WIDTH: f64 = 1000.0;
const LABEL: f64 = 190.0;
const LANE: f64 = 22.0;
const TOP: f64 = 24.0;

fn colour(verdict: &str) -> &'static str {
    match verdict {
        "good" => "#2e8540",
        "bad" => "#d83933",
        "overridden" => "#b97a00",
        _ => "#8c959f",
    }
}

/// The SVG for `[start, end]`.
pub fn svg(
    deployments: &[Deployment],
    alerts: &[Mark],
    rollbacks: &[Rollback],
    start: i64,
    end: i64,
) -> String {
    let span = (end - start).max(1) as f64;
    let x = |t: i64| LABEL + ((t.clamp(start, end) - start) as f64 / span) * (WIDTH - LABEL - 10.0);
    // Deployments live in the window, or named by a rollback in it, oldest first.
    let mut shown: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| {
            let live_in = d.promoted_at_ms.is_some_and(|p| p <= end)
                && d.superseded_at_ms.is_none_or(|s| s >= start);
            live_in || rollbacks.iter().any(|r| r.from == d.id || r.to == d.id)
        })
        .collect();
    shown.sort_by_key(|d| (d.created_at_ms.or(d.promoted_at_ms), d.id.clone()));
    let lane = |id: &str| shown.iter().position(|d| d.id == id);
    let y = |i: usize| TOP + i as f64 * LANE;
    let height = TOP + shown.len().max(1) as f64 * LANE + 24.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=img aria-label=\"deployments, alerts and rollbacks\">\
         <defs><marker id=arrow viewBox=\"0 0 10 10\" refX=9 refY=5 markerWidth=7 markerHeight=7 orient=auto-start-reverse><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#1b1f24\"/></marker></defs>"
    );
    // Time axis: start, middle, end.
    for (t, anchor) in [
        (start, "start"),
        (start + (end - start) / 2, "middle"),
        (end, "end"),
    ] {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"14\" text-anchor={anchor} fill=\"#6e7781\">{}</text>",
            x(t),
            esc(&format_time(t)[5..16].replace('T', " "))
        );
    }
    if shown.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{LABEL}\" y=\"{}\" fill=\"#6e7781\">no deployment was live in this window</text>",
            TOP + 14.0
        );
    }
    for (i, d) in shown.iter().enumerate() {
        let name = match &d.release {
            Some(r) => format!("{} {}", r.chars().take(7).collect::<String>(), d.id),
            None => d.id.clone(),
        };
        let label: String = name.chars().take(28).collect();
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{:.1}\">{}</text>",
            y(i) + 14.0,
            esc(&label)
        );
        if let Some(p) = d.promoted_at_ms.filter(|p| *p <= end) {
            let stop = d.superseded_at_ms.unwrap_or(end);
            if stop >= start {
                let (x0, x1) = (x(p), x(stop));
                let _ = write!(
                    s,
                    "<rect class=\"deployment {v}\" data-deployment=\"{id}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" rx=3 fill=\"{c}\"><title>{id}: {v}, live {} – {}</title></rect>",
                    y(i) + 3.0,
                    (x1 - x0).max(4.0),
                    esc(&format_time(p)),
                    esc(&d.superseded_at_ms.map(format_time).unwrap_or_else(|| "now".into())),
                    v = esc(d.verdict.as_str()),
                    id = esc(&d.id),
                    c = colour(d.verdict.as_str()),
                );
            }
        }
    }
    // Earlier times live of restored deployments, from the decisions.
    for r in rollbacks {
        let (Some(i), Some((from, to))) = (lane(&r.to), r.to_was_live) else {
            continue;
        };
        if to < start || from > end {
            continue;
        }
        let (x0, x1) = (x(from), x(to));
        let _ = write!(
            s,
            "<rect class=\"deployment earlier\" data-deployment=\"{id}\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" rx=3 fill=\"{c}\" opacity=\"0.55\"><title>{id}: live {} – {}</title></rect>",
            y(i) + 3.0,
            (x1 - x0).max(4.0),
            esc(&format_time(from)),
            esc(&format_time(to)),
            id = esc(&r.to),
            c = colour("good"),
        );
    }
    for a in alerts.iter().filter(|a| a.at_ms >= start && a.at_ms <= end) {
        let i = a.deployment.as_deref().and_then(lane).unwrap_or(0);
        let _ = write!(
            s,
            "<a href=\"/runs/{run}\"><circle class=alert data-run=\"{run}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#fff\" stroke=\"#d83933\" stroke-width=\"2\"><title>alert {}: {}</title></circle></a>",
            x(a.at_ms),
            y(i) + 10.0,
            esc(&format_time(a.at_ms)),
            esc(&a.title),
            run = esc(&a.run),
        );
    }
    for r in rollbacks {
        let (Some(from), Some(to)) = (lane(&r.from), lane(&r.to)) else {
            continue;
        };
        let xr = x(r.at_ms);
        let _ = write!(
            s,
            "<a href=\"/runs/{run}\"><line class=rollback data-run=\"{run}\" x1=\"{xr:.1}\" y1=\"{:.1}\" x2=\"{xr:.1}\" y2=\"{:.1}\" stroke=\"#1b1f24\" stroke-width=\"2\" marker-end=\"url(#arrow)\"><title>rolled back from {} to {} at {}</title></line></a>",
            y(from) + 10.0,
            y(to) + 10.0,
            esc(&r.from),
            esc(&r.to),
            esc(&format_time(r.at_ms)),
            run = esc(&r.run),
        );
    }
    s.push_str("</svg>");
    s
}
