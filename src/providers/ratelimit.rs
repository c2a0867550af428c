//! What a provider said of its rate limits, per bucket (one of its
//! published limits, such as Vercel's "alias creation"), shared by every
//! clone of a client: how many calls the current window has left and when
//! it resets, read from the headers of each answer (`X-RateLimit-Limit`,
//! `-Remaining`, `-Reset`).
//!
//! Calls are admitted against it a group at a time (a service's domains
//! together), so a spent window turns a whole group away before anything
//! is sent, never half of one, and says when to come back. While a
//! bucket's window is unknown (first use, or it has reset) one group
//! probes it and the others wait for its first answer. A bucket whose
//! answers carry no such headers is not metered. Several instances each
//! keep their own view: what one spends, another learns from the headers
//! or, at worst, from a 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::Notify;

use super::ProviderError;
use crate::clock::{format_time, now_ms};

/// How long a bucket whose answers carry no rate-limit headers is left
/// unmetered before it is probed again.
const UNMETERED_FOR_MS: i64 = 60_000;

/// The longest a group waits for a probe's first answer before probing
/// itself.
const PROBE_WAIT: Duration = Duration::from_secs(30);

/// The rate-limit windows of one provider, per bucket.
#[derive(Clone, Default)]
pub(crate) struct Windows {
    buckets: Arc<Mutex<HashMap<&'static str, Bucket>>>,
    changed: Arc<Notify>,
    /// Buckets where calls may join a probe without waiting for its
    /// answer, up to this many (the provider's published limit): reads,
    /// where a call refused costs a retry and never half a service.
    priors: Arc<HashMap<&'static str, u64>>,
}

#[derive(Debug, Default)]
struct Bucket {
    window: Option<Window>,
    /// A group was sent while the window was unknown; its first answer
    /// tells the window, and until then the others wait.
    probing: bool,
    /// Which probe (a probe's admission, dropped unanswered, frees only
    /// its own).
    probe: u64,
    /// When that group was sent.
    probe_started_ms: i64,
    /// How many calls that group sent.
    probe_size: u64,
    /// Answers carry no rate-limit headers: admitted freely until then.
    unmetered_until_ms: i64,
}

/// One window of a bucket, as counted here: what this process sent into
/// it, and at least what others spent (each answer's count of calls, less
/// everything this process had sent by then). Exact while this process is
/// the only caller, whatever order its answers come back in.
#[derive(Debug, Clone, Copy)]
struct Window {
    limit: u64,
    reset_at_ms: i64,
    sent: u64,
    others: u64,
    /// A 429 said so.
    exhausted: bool,
}

impl Window {
    fn remaining(&self) -> u64 {
        match self.exhausted {
            true => 0,
            false => self.limit.saturating_sub(self.sent + self.others),
        }
    }
}

/// A rate-limit header triple, as one answer gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    limit: u64,
    remaining: u64,
    reset_at_ms: i64,
}

impl Reading {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds), when
    /// the answer has all three.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let num = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        let reset = num("x-ratelimit-reset")?;
        Some(Self {
            limit: num("x-ratelimit-limit")?,
            remaining: num("x-ratelimit-remaining")?,
            reset_at_ms: i64::try_from(reset).ok()?.saturating_mul(1000),
        })
    }
}

/// What an admission decided.
enum Verdict {
    Go,
    /// Go, probing the unknown window (this probe's number).
    Probe(u64),
    WaitForProbe,
    SpentUntil(i64, u64),
}

/// A group's admission, held while its calls are out. A probe dropped
/// before any answer told the window (its calls failed in transit, or were
/// cut off by a deadline) lets the next group probe.
#[must_use]
pub(crate) struct Admission {
    probe: Option<(Windows, &'static str, u64)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((windows, bucket, probe)) = self.probe.take() {
            windows.unanswered(bucket, probe);
        }
    }
}

impl Windows {
    /// Windows where calls to `priors`' buckets join a probe, up to the
    /// number given, instead of waiting for its answer.
    pub fn with_priors(priors: &[(&'static str, u64)]) -> Self {
        Self {
            priors: Arc::new(priors.iter().copied().collect()),
            ..Self::default()
        }
    }

    /// Admits a group of `n` calls to `bucket`, waiting for a probe's
    /// answer, or for a window's reset no further away than `max_wait`.
    /// A window that stays spent past that is a retryable error saying
    /// when it resets (with that wait as `retry_after`): nothing is sent.
    pub async fn admit(
        &self,
        provider: &'static str,
        bucket: &'static str,
        n: u64,
        max_wait: Duration,
    ) -> Result<Admission, ProviderError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.decide(bucket, n, now_ms()) {
                Verdict::Go => return Ok(Admission { probe: None }),
                Verdict::Probe(probe) => {
                    return Ok(Admission {
                        probe: Some((self.clone(), bucket, probe)),
                    })
                }
                Verdict::WaitForProbe => {
                    // Bounded: a probe is itself bounded by its client's
                    // timeout, and its admission frees the bucket when it ends.
                    let _ = tokio::time::timeout(PROBE_WAIT, changed).await;
                    self.unanswered_after(bucket, PROBE_WAIT);
                }
                Verdict::SpentUntil(reset_at_ms, limit) => {
                    let wait = Duration::from_millis((reset_at_ms - now_ms()).max(0) as u64);
                    if wait > max_wait {
                        crate::metrics::provider_held(provider);
                        let size = match limit {
                            0 => String::new(),
                            l => format!(" ({l} a window)"),
                        };
                        return Err(ProviderError::Retryable {
                            provider,
                            message: format!(
                                "the {bucket} rate limit{size} is spent until {}; nothing was sent",
                                format_time(reset_at_ms)
                            ),
                            retry_after: Some(wait),
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn decide(&self, bucket: &'static str, n: u64, now: i64) -> Verdict {
        let mut buckets = self.lock();
        let b = buckets.entry(bucket).or_default();
        if now < b.unmetered_until_ms {
            return Verdict::Go;
        }
        match &mut b.window {
            Some(w) if now < w.reset_at_ms => {
                // A group larger than a whole window goes when it is whole.
                let need = if w.limit > 0 {
                    n.min(w.limit)
                } else {
                    n.max(1)
                };
                if w.remaining() >= need {
                    w.sent += need;
                    Verdict::Go
                } else {
                    Verdict::SpentUntil(w.reset_at_ms, w.limit)
                }
            }
            _ if b.probing => match self.priors.get(bucket) {
                Some(prior) if b.probe_size + n <= *prior => {
                    b.probe_size += n;
                    Verdict::Go
                }
                _ => Verdict::WaitForProbe,
            },
            _ => {
                b.window = None;
                b.probing = true;
                b.probe += 1;
                b.probe_started_ms = now;
                b.probe_size = n;
                Verdict::Probe(b.probe)
            }
        }
    }

    /// A probe out longer than `stale` is given up on (its answer is not
    /// coming): the next group probes.
    fn unanswered_after(&self, bucket: &'static str, stale: Duration) {
        let probe = {
            let buckets = self.lock();
            match buckets.get(bucket) {
                Some(b)
                    if b.probing && now_ms() - b.probe_started_ms >= stale.as_millis() as i64 =>
                {
                    b.probe
                }
                _ => return,
            }
        };
        self.unanswered(bucket, probe);
    }

    /// Learns from one answer to a call to `bucket`: its headers, or that
    /// it was a 429 (the window is spent until `retry_after`, if no header
    /// says), or that it carried nothing (the bucket is not metered).
    pub fn record(
        &self,
        bucket: &'static str,
        reading: Option<Reading>,
        rate_limited: Option<Duration>,
    ) {
        let now = now_ms();
        let mut buckets = self.lock();
        let b = buckets.entry(bucket).or_default();
        let was_probing = std::mem::take(&mut b.probing);
        match (reading, rate_limited) {
            (Some(r), _) => {
                let used = r.limit.saturating_sub(r.remaining);
                let w = match b.window {
                    Some(w) if w.reset_at_ms == r.reset_at_ms => w,
                    // A new window: the probing group is what this process
                    // sent into it (else just this call).
                    _ => Window {
                        limit: r.limit,
                        reset_at_ms: r.reset_at_ms,
                        sent: if was_probing { b.probe_size } else { 1 },
                        others: 0,
                        exhausted: false,
                    },
                };
                b.window = Some(Window {
                    limit: r.limit,
                    others: w.others.max(used.saturating_sub(w.sent)),
                    exhausted: w.exhausted || rate_limited.is_some(),
                    ..w
                });
            }
            (None, Some(wait)) => {
                b.window = Some(Window {
                    limit: b.window.map_or(0, |w| w.limit),
                    reset_at_ms: now + wait.as_millis() as i64,
                    sent: 0,
                    others: 0,
                    exhausted: true,
                });
            }
            (None, None) if was_probing || b.window.is_none() => {
                b.unmetered_until_ms = now + UNMETERED_FOR_MS;
            }
            (None, None) => {}
        }
        if was_probing {
            self.changed.notify_waiters();
        }
    }

    /// Probe `probe` ended without an answer: the next group probes.
    fn unanswered(&self, bucket: &'static str, probe: u64) {
        let mut buckets = self.lock();
        if let Some(b) = buckets.get_mut(bucket) {
            if b.probing && b.probe == probe {
                b.probing = false;
                self.changed.notify_waiters();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<&'static str, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "alias creation";

    fn reading(limit: u64, remaining: u64, reset_at_ms: i64) -> Option<Reading> {
        Some(Reading {
            limit,
            remaining,
            reset_at_ms,
        })
    }

    fn go(w: &Windows, n: u64, now: i64) -> bool {
        matches!(w.decide(B, n, now), Verdict::Go | Verdict::Probe(_))
    }

    #[test]
    fn a_probe_goes_alone_and_its_answers_count_its_whole_group_in_any_order() {
        for first_seen in [8, 6] {
            let w = Windows::default();
            assert!(go(&w, 3, 0), "the first group probes");
            assert!(
                matches!(w.decide(B, 3, 0), Verdict::WaitForProbe),
                "the next waits for the probe's answer"
            );
            // The server counted one, or all three, of the probe's calls by
            // the answer seen first: 6 are left for the others either way.
            let reset = now_ms() + 600_000;
            w.record(B, reading(9, first_seen, reset), None);
            assert!(go(&w, 3, 0));
            assert!(go(&w, 3, 0));
            assert!(
                matches!(w.decide(B, 3, 0), Verdict::SpentUntil(r, 9) if r == reset),
                "a third group would be cut in half: it waits whole"
            );
        }
    }

    #[test]
    fn reads_join_a_probe_up_to_the_published_limit_and_are_counted() {
        let w = Windows::with_priors(&[(B, 5)]);
        assert!(matches!(w.decide(B, 2, 0), Verdict::Probe(_)));
        assert!(matches!(w.decide(B, 3, 0), Verdict::Go), "joins, 5 sent");
        assert!(
            matches!(w.decide(B, 1, 0), Verdict::WaitForProbe),
            "past the prior it waits"
        );
        // The first answer counted one call; all five sent are ours.
        w.record(B, reading(8, 7, now_ms() + 60_000), None);
        assert!(go(&w, 3, 0));
        assert!(!go(&w, 1, 0));
    }

    #[test]
    fn what_others_spend_is_learned_from_the_answers() {
        let w = Windows::default();
        let reset = now_ms() + 600_000;
        assert!(go(&w, 1, 0));
        w.record(B, reading(10, 9, reset), None);
        assert!(go(&w, 5, 0)); // 6 sent here, 4 left
        w.record(B, reading(10, 8, reset), None); // an answer from before those five
        assert!(!go(&w, 5, 0), "still 4 left, not 8");
        // Someone else spent the window: 9 counted, 6 of them ours.
        w.record(B, reading(10, 1, reset), None);
        assert!(!go(&w, 2, 0));
        assert!(go(&w, 1, 0));
        assert!(!go(&w, 1, 0));
    }

    #[test]
    fn a_429_spends_the_window_and_a_reset_window_is_probed_again() {
        let w = Windows::default();
        let reset = now_ms() + 2_000;
        assert!(go(&w, 1, 0));
        w.record(B, reading(120, 0, reset), Some(Duration::from_secs(2)));
        assert!(matches!(w.decide(B, 1, 0), Verdict::SpentUntil(r, 120) if r == reset));
        // After the reset the window is unknown: one probe, the rest wait.
        assert!(go(&w, 1, reset));
        assert!(matches!(w.decide(B, 1, reset), Verdict::WaitForProbe));
    }

    #[test]
    fn a_bucket_whose_answers_carry_no_headers_is_not_metered() {
        let w = Windows::default();
        assert!(go(&w, 2, 0));
        w.record(B, None, None);
        for _ in 0..100 {
            assert!(go(&w, 2, now_ms()));
        }
    }

    #[tokio::test]
    async fn a_probe_dropped_unanswered_lets_the_next_group_probe_and_only_its_own() {
        let w = Windows::default();
        let first = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        assert!(matches!(w.decide(B, 1, 0), Verdict::WaitForProbe));
        drop(first);
        let second = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        assert!(matches!(w.decide(B, 1, 0), Verdict::WaitForProbe));
        // An old probe's end does not free the current one.
        w.unanswered(B, 1);
        assert!(matches!(w.decide(B, 1, 0), Verdict::WaitForProbe));
        drop(second);
        assert!(go(&w, 1, 0), "the next group probes");
    }

    #[tokio::test]
    async fn a_group_waiting_for_a_probe_goes_on_its_first_answer() {
        let w = Windows::default();
        let probe = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.admit("vercel", B, 2, Duration::ZERO).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        w.record(B, reading(120, 119, now_ms() + 600_000), None);
        waiting.await.unwrap().unwrap();
        drop(probe);
        assert!(
            matches!(w.decide(B, 117, 0), Verdict::Go),
            "119 left less the two the waiting group took"
        );
    }

    #[tokio::test]
    async fn a_window_spent_past_the_wait_allowed_is_an_error_saying_when() {
        let w = Windows::default();
        let _probe = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        let reset_s = now_ms() / 1000 + 600;
        w.record(B, reading(120, 0, reset_s * 1000), None);
        let Err(err) = w.admit("vercel", B, 3, Duration::from_secs(10)).await else {
            panic!("admitted into a spent window");
        };
        assert!(err.is_retryable());
        let ra = err.retry_after().unwrap();
        assert!(
            ra > Duration::from_secs(590) && ra <= Duration::from_secs(600),
            "{ra:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("alias creation rate limit (120 a window) is spent until")
                && msg.contains("nothing was sent"),
            "{msg}"
        );
    }
}
