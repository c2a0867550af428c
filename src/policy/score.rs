//! Was the decision right? A dry run ("would have rolled back X to Y at T")
//! is scored from what the ledger learns within the service's
//! `score_window` after T: **confirmed** when production left X (a person
//! or CI promoted something else), with the minutes Backstop would have
//! saved; **false alarm** when the alert resolved by itself while X stayed
//! live; **undetermined** when the window passed with neither. A real
//! rollback is scored too: a person undoing it within the window counts
//! against it; otherwise it stands. Pure: the engine gathers the facts.

use serde::{Deserialize, Serialize};

use crate::ledger::Outcome;

/// The facts a score is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreFacts {
    /// The decision's outcome (`dry-run` or `rollback`).
    pub outcome: Outcome,
    /// When it was decided, Unix ms.
    pub decided_at_ms: i64,
    /// How long after it the evidence counts.
    pub window_ms: i64,
    /// Now, Unix ms.
    pub now_ms: i64,
    /// When the deployment live at the decision stopped being live, if it did.
    pub left_production_at_ms: Option<i64>,
    /// When Sentry resolved the alert, if it did.
    pub resolved_at_ms: Option<i64>,
    /// When a person undid the rollback, if they did (with the button, or
    /// by putting the rolled-back deployment live again by hand).
    pub undone_at_ms: Option<i64>,
    /// The rollback was verified (a failed one moved nothing to score).
    pub rolled_back: bool,
}

/// The verdict on a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum Score {
    /// The decision was right. For a dry run: production left the crashing
    /// deployment this many minutes after Backstop would have.
    Confirmed {
        /// Minutes Backstop would have saved (dry runs).
        minutes_saved: Option<f64>,
        /// For people.
        why: String,
    },
    /// The decision was wrong.
    FalseAlarm {
        /// For people.
        why: String,
    },
    /// The window passed without evidence either way.
    Undetermined {
        /// For people.
        why: String,
    },
}

fn minutes(ms: i64) -> f64 {
    (ms.max(0) as f64 / 60_000.0 * 10.0).round() / 10.0
}

/// The score, or `None` while the window is open and nothing decided it.
pub fn score(f: &ScoreFacts) -> Option<Score> {
    let end = f.decided_at_ms + f.window_ms;
    let within = |t: Option<i64>| t.filter(|t| *t >= f.decided_at_ms && *t <= end);
    match f.outcome {
        Outcome::DryRun => {
            let left = within(f.left_production_at_ms);
            let resolved = within(f.resolved_at_ms);
            match (left, resolved) {
                // Whichever came first decides.
                (Some(l), r) if r.is_none_or(|r| l <= r) => {
                    let m = minutes(l - f.decided_at_ms);
                    Some(Score::Confirmed {
                        minutes_saved: Some(m),
                        why: format!("production left the deployment {m} min later: Backstop would have saved {m} min"),
                    })
                }
                (_, Some(r)) => Some(Score::FalseAlarm {
                    why: format!(
                        "the alert resolved by itself {} min later while the deployment stayed live",
                        minutes(r - f.decided_at_ms)
                    ),
                }),
                _ if f.now_ms >= end => Some(Score::Undetermined {
                    why: format!(
                        "neither a rollback by hand nor a resolution within {} min",
                        minutes(f.window_ms)
                    ),
                }),
                _ => None,
            }
        }
        Outcome::Rollback if !f.rolled_back => Some(Score::Undetermined {
            why: "the rollback failed: production did not move".into(),
        }),
        Outcome::Rollback => match within(f.undone_at_ms) {
            Some(u) => Some(Score::FalseAlarm {
                why: format!(
                    "a person undid the rollback {} min later",
                    minutes(u - f.decided_at_ms)
                ),
            }),
            None if f.now_ms >= end => Some(Score::Confirmed {
                minutes_saved: None,
                why: format!("nobody undid it within {} min", minutes(f.window_ms)),
            }),
            None => None,
        },
        _ => Some(Score::Undetermined {
            why: "only dry runs and rollbacks are scored".into(),
        }),
    }
}

impl Score {
    /// `confirmed`, `false-alarm`, `undetermined`.
    pub fn verdict(&self) -> &'static str {
        match self {
            Score::Confirmed { .. } => "confirmed",
            Score::FalseAlarm { .. } => "false-alarm",
            Score::Undetermined { .. } => "undetermined",
        }
    }

    /// For people.
    pub fn why(&self) -> &str {
        match self {
            Score::Confirmed { why, .. }
            | Score::FalseAlarm { why }
            | Score::Undetermined { why } => why,
        }
    }
}

/// One service's record, for `backstop report` and the console.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Service.
    pub service: String,
    /// Dry runs and rollbacks scored.
    pub decisions: u64,
    /// Of which dry runs.
    pub dry_runs: u64,
    /// Of which real rollbacks.
    pub rollbacks: u64,
    /// Confirmed.
    pub confirmed: u64,
    /// False alarms.
    pub false_alarms: u64,
    /// Undetermined.
    pub undetermined: u64,
    /// confirmed / (confirmed + false alarms), when there were any.
    pub precision: Option<f64>,
    /// Median minutes a confirmed dry run would have saved.
    pub median_minutes_saved: Option<f64>,
    /// One line of advice.
    pub recommendation: String,
}

/// Fewer scored decisions than this say nothing.
pub const ENOUGH: u64 = 5;

impl Report {
    /// Tallies `scores` of `service`, each with its decision's outcome.
    pub fn of(service: &str, scores: &[(Outcome, Score)]) -> Self {
        let mut r = Report {
            service: service.into(),
            decisions: scores.len() as u64,
            ..Default::default()
        };
        let mut saved = Vec::new();
        for (outcome, s) in scores {
            match outcome {
                Outcome::DryRun => r.dry_runs += 1,
                _ => r.rollbacks += 1,
            }
            match s {
                Score::Confirmed { minutes_saved, .. } => {
                    r.confirmed += 1;
                    saved.extend(*minutes_saved);
                }
                Score::FalseAlarm { .. } => r.false_alarms += 1,
                Score::Undetermined { .. } => r.undetermined += 1,
            }
        }
        let judged = r.confirmed + r.false_alarms;
        r.precision = (judged > 0).then(|| r.confirmed as f64 / judged as f64);
        saved.sort_by(|a, b| a.total_cmp(b));
        r.median_minutes_saved = match saved.len() {
            0 => None,
            n if n % 2 == 1 => Some(saved[n / 2]),
            n => Some((saved[n / 2 - 1] + saved[n / 2]) / 2.0),
        };
        r.recommendation = match (r.decisions, r.false_alarms) {
            (1, _) => "1 decision: too few decisions to say".into(),
            (d, _) if d < ENOUGH => format!("{d} decisions: too few decisions to say"),
            (d, 0) if r.confirmed >= ENOUGH => format!(
                "{d} decisions, {} confirmed, 0 false alarms: ready for auto",
                r.confirmed
            ),
            (d, 0) => format!(
                "{d} decisions, {} confirmed, 0 false alarms, {} undetermined: not enough evidence yet",
                r.confirmed, r.undetermined
            ),
            (d, f) => format!(
                "{d} decisions, {} confirmed, {f} false alarm{}: look at them before auto",
                r.confirmed,
                if f == 1 { "" } else { "s" }
            ),
        };
        r
    }

    /// The record in one line, for the console: what was scored and how.
    pub fn record(&self) -> String {
        if self.decisions == 0 {
            return "nothing scored yet".into();
        }
        let plural = |n: u64, one: &str, many: &str| match n {
            1 => format!("1 {one}"),
            n => format!("{n} {many}"),
        };
        let mut parts = vec![format!(
            "{} ({}, {}): {} confirmed, {}, {} undetermined",
            plural(self.decisions, "decision", "decisions"),
            plural(self.dry_runs, "dry run", "dry runs"),
            plural(self.rollbacks, "rollback", "rollbacks"),
            self.confirmed,
            plural(self.false_alarms, "false alarm", "false alarms"),
            self.undetermined
        )];
        if let Some(p) = self.precision {
            parts.push(format!("precision {:.0}%", p * 100.0));
        }
        if let Some(m) = self.median_minutes_saved {
            parts.push(format!("median {m} min saved"));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    fn dry(now: i64) -> ScoreFacts {
        ScoreFacts {
            outcome: Outcome::DryRun,
            decided_at_ms: T,
            window_ms: 60 * MIN,
            now_ms: now,
            left_production_at_ms: None,
            resolved_at_ms: None,
            undone_at_ms: None,
            rolled_back: true,
        }
    }

    #[test]
    fn a_person_rolling_back_within_the_window_confirms_a_dry_run_with_minutes_saved() {
        let mut f = dry(T + 20 * MIN);
        f.left_production_at_ms = Some(T + 14 * MIN);
        let s = score(&f).unwrap();
        assert_eq!(s.verdict(), "confirmed");
        assert!(matches!(s, Score::Confirmed { minutes_saved: Some(m), .. } if m == 14.0));
        assert!(s.why().contains("would have saved 14 min"), "{}", s.why());
        // A resolution after the person's rollback changes nothing.
        f.resolved_at_ms = Some(T + 30 * MIN);
        assert_eq!(score(&f).unwrap().verdict(), "confirmed");
    }

    #[test]
    fn an_alert_that_resolves_while_the_deployment_stays_live_is_a_false_alarm() {
        let mut f = dry(T + 20 * MIN);
        f.resolved_at_ms = Some(T + 9 * MIN);
        assert_eq!(score(&f).unwrap().verdict(), "false-alarm");
        // Production left later than the resolution: still a false alarm.
        f.left_production_at_ms = Some(T + 40 * MIN);
        assert_eq!(score(&f).unwrap().verdict(), "false-alarm");
    }

    #[test]
    fn nothing_within_the_window_waits_then_is_undetermined() {
        assert_eq!(score(&dry(T + 59 * MIN)), None, "the window is still open");
        let mut f = dry(T + 61 * MIN);
        // What happened after the window does not count.
        f.left_production_at_ms = Some(T + 61 * MIN);
        assert_eq!(score(&f).unwrap().verdict(), "undetermined");
    }

    #[test]
    fn a_rollback_undone_within_the_window_counts_against_it() {
        let mut f = dry(T + 5 * MIN);
        f.outcome = Outcome::Rollback;
        assert_eq!(score(&f), None);
        f.undone_at_ms = Some(T + 3 * MIN);
        assert_eq!(score(&f).unwrap().verdict(), "false-alarm");
        f.undone_at_ms = None;
        f.now_ms = T + 60 * MIN;
        assert_eq!(score(&f).unwrap().verdict(), "confirmed");
        // A rollback that failed moved nothing: nothing to confirm.
        f.rolled_back = false;
        assert_eq!(score(&f).unwrap().verdict(), "undetermined");
    }

    #[test]
    fn a_report_tallies_and_recommends() {
        let c = |m: f64| Score::Confirmed {
            minutes_saved: Some(m),
            why: String::new(),
        };
        let few = Report::of("web", &[(Outcome::DryRun, c(3.0))]);
        assert_eq!(few.recommendation, "1 decision: too few decisions to say");
        let many: Vec<(Outcome, Score)> = [4.0, 14.0, 6.0, 10.0, 8.0]
            .into_iter()
            .map(|m| (Outcome::DryRun, c(m)))
            .collect();
        let r = Report::of("web", &many);
        assert_eq!((r.decisions, r.confirmed, r.false_alarms), (5, 5, 0));
        assert_eq!((r.dry_runs, r.rollbacks), (5, 0));
        assert_eq!(r.precision, Some(1.0));
        assert_eq!(r.median_minutes_saved, Some(8.0));
        assert_eq!(
            r.recommendation,
            "5 decisions, 5 confirmed, 0 false alarms: ready for auto"
        );
        let mut mixed = many.clone();
        mixed.push((Outcome::Rollback, Score::FalseAlarm { why: String::new() }));
        mixed.push((Outcome::DryRun, Score::Undetermined { why: String::new() }));
        let r = Report::of("web", &mixed);
        assert_eq!((r.dry_runs, r.rollbacks), (6, 1));
        assert_eq!(r.precision, Some(5.0 / 6.0));
        assert!(
            r.recommendation.contains("1 false alarm: look at them"),
            "{}",
            r.recommendation
        );
        assert_eq!(
            r.record(),
            "7 decisions (6 dry runs, 1 rollback): 5 confirmed, 1 false alarm, 1 undetermined; precision 83%; median 8 min saved"
        );
        assert_eq!(Report::of("web", &[]).record(), "nothing scored yet");
    }
}
