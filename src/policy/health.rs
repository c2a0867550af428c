//! Release health from Sentry, as inputs of the decision: is there enough
//! traffic to believe the alert, is the live release still crashing, and is
//! it really the release (or is everything crashing together)? The engine
//! reads them (`HealthQuery` says what to read); the rules here are pure.

use serde::{Deserialize, Serialize};

/// What to read from Sentry's sessions API for a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthQuery {
    /// The live release.
    pub live_release: String,
    /// Window covering the alert, Unix ms.
    pub start_ms: i64,
    /// End of the window (now), Unix ms.
    pub end_ms: i64,
    /// The known-good target's release and its own time live, Unix ms.
    pub target: Option<(String, i64, i64)>,
    /// `session` or `user`, as the alert's rule measures.
    pub unit: String,
}

/// One release's health over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Release.
    pub release: String,
    /// Crash-free rate, percent (Sentry answers a 0–1 fraction).
    pub crash_free: Option<f64>,
    /// Sessions counted.
    pub sessions: u64,
}

impl Reading {
    /// `92.1% over 2,140 sessions`.
    pub fn describe(&self) -> String {
        let rate = self
            .crash_free
            .map(|r| format!("{}%", (r * 100.0).round() / 100.0))
            .unwrap_or_else(|| "?".into());
        format!("{rate} over {} sessions", thousands(self.sessions))
    }
}

/// What Sentry said, or why it could not be asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// The live release over the alert's window.
    pub live: Option<Reading>,
    /// Every other release with sessions in the same window.
    pub others: Vec<Reading>,
    /// The known-good target over its own time live.
    pub target: Option<Reading>,
    /// Sentry could not be read in time: why.
    pub unavailable: Option<String>,
}

/// What to do when the readings cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// Act on the alert alone.
    Rollback,
    /// Page a person instead.
    Escalate,
}

/// A service's confirmation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfirmPolicy {
    /// Read release health before acting (`sentry.token`/`org` set and the
    /// service's `confirm` on).
    pub enabled: bool,
    /// Fewer sessions than this in the window is too little to believe.
    pub min_sessions: u64,
    /// Too little data: roll back anyway, or escalate (default).
    pub on_inconclusive: Fallback,
    /// Sentry unreachable or slow: roll back on the alert alone (default)
    /// or escalate.
    pub on_unavailable: Fallback,
}

impl Default for ConfirmPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            min_sessions: 100,
            on_inconclusive: Fallback::Escalate,
            on_unavailable: Fallback::Rollback,
        }
    }
}

/// `2140` → `2,140`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_read_like_people_write_them() {
        assert_eq!(thousands(2140), "2,140");
        assert_eq!(thousands(37), "37");
        assert_eq!(thousands(1_000_000), "1,000,000");
        let r = Reading {
            release: "a".into(),
            crash_free: Some(99.7),
            sessions: 2140,
        };
        assert_eq!(r.describe(), "99.7% over 2,140 sessions");
    }
}
