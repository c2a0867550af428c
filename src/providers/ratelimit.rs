//! What a provider said of its rate limits, per bucket (one of its
//! published limits, such as Vercel's "alias creation"), shared by every
//! clone of a client: how many calls the current window has left and when
//! it resets, read from the headers of each answer (`X-RateLimit-Limit`,
//! `-Remaining`, `-Reset`), and until when a 429 said to stay away.
//!
//! Calls are admitted against it a group at a time (a service's domains
//! together), so a spent window turns a whole group away before anything
//! is sent, never half of one, and says when to come back. While a
//! bucket's window is unknown (first use, or it has reset) one group
//! probes it and the others wait for an answer that tells it; reads may
//! join the probe up to the provider's published limit. A bucket whose
//! successful answers carry no such headers is not metered, until an
//! answer does. Answers about a window older than the one known are
//! ignored. Several instances each keep their own view: what one spends,
//! another learns from the headers or, at worst, from a 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ProviderError;
use crate::clock::{format_time, now_ms};

/// How long a bucket whose answers carry no rate-limit headers is left
/// unmetered before it is probed again.
const UNMETERED_FOR_MS: i64 = 60_000;

/// The longest a group waits for a probe's answer before probing itself.
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
    /// Calls sent (or admitted to be sent) and not answered yet.
    outstanding: u64,
    /// A probe is out: the window is unknown until an answer tells it,
    /// and groups wait (reads join, up to their prior).
    probing: bool,
    /// The current (or last) probe's number.
    probe: u64,
    probe_started: Option<Instant>,
    /// Calls sent since the probe went out.
    probe_sent: u64,
    /// A 429 said to stay away until then (Unix ms), and its limit.
    blocked_until_ms: i64,
    blocked_limit: u64,
    /// Successful answers carry no rate-limit headers: admitted freely.
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
}

impl Window {
    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.sent + self.others)
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
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (Unix seconds; a
    /// small number is seconds from now), when the answer has all three.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let num = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        let reset = i64::try_from(num("x-ratelimit-reset")?).ok()?;
        let reset_at_ms = match reset {
            r if r > 1_000_000_000 => r.saturating_mul(1000),
            r => now_ms() + r.saturating_mul(1000),
        };
        Some(Self {
            limit: num("x-ratelimit-limit")?,
            remaining: num("x-ratelimit-remaining")?,
            reset_at_ms,
        })
    }
}

/// What one call's answer said of its bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// Headers; `true` when it was a 429.
    Headers(Reading, bool),
    /// A 429 without headers, saying when to come back.
    Limited(Duration),
    /// No headers; whether the call succeeded.
    Plain(bool),
    /// No answer (the call failed in transit).
    Lost,
}

impl Answer {
    /// What an answer with this status and these headers says.
    pub fn of(status: reqwest::StatusCode, headers: &HeaderMap) -> Self {
        let limited = status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        match Reading::from_headers(headers) {
            Some(r) => Answer::Headers(r, limited),
            None if limited => {
                Answer::Limited(super::retry_after(headers).unwrap_or(Duration::from_secs(1)))
            }
            None => Answer::Plain(status.is_success()),
        }
    }
}

/// What an admission decided.
enum Verdict {
    /// Go: a member of probe `Some(n)` (whose answers may tell the window).
    Go(Option<u64>),
    /// Go, probing the unknown window (this probe's number).
    Probe(u64),
    WaitForProbe,
    SpentUntil(i64, u64),
}

/// A group's admission, held while its calls are out; each call reports
/// its answer through it ([`Windows::record`]). Dropped with calls still
/// unanswered (cut off by a deadline, or never sent), it takes them off
/// the bucket's count of calls out; a probe dropped before any answer told
/// the window lets the next group probe.
#[must_use]
pub(crate) struct Admission {
    windows: Windows,
    bucket: &'static str,
    /// The probe this group's calls belong to, if any.
    member_of: Option<u64>,
    /// This group is that probe.
    probing: bool,
    /// Calls of the group out and not answered yet.
    unsettled: std::sync::atomic::AtomicU64,
}

impl Admission {
    fn new(
        windows: &Windows,
        bucket: &'static str,
        n: u64,
        member_of: Option<u64>,
        probing: bool,
    ) -> Self {
        Self {
            windows: windows.clone(),
            bucket,
            member_of,
            probing,
            unsettled: n.into(),
        }
    }

    /// Counts one answer; false when every call was already counted.
    fn settle(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.unsettled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let left = *self.unsettled.get_mut();
        let mut buckets = self.windows.lock();
        if let Some(b) = buckets.get_mut(self.bucket) {
            b.outstanding = b.outstanding.saturating_sub(left);
        }
        drop(buckets);
        if let (true, Some(probe)) = (self.probing, self.member_of) {
            self.windows.end_probe(self.bucket, probe);
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
                Verdict::Go(member_of) => {
                    return Ok(Admission::new(self, bucket, n, member_of, false))
                }
                Verdict::Probe(probe) => {
                    return Ok(Admission::new(self, bucket, n, Some(probe), true))
                }
                Verdict::WaitForProbe => {
                    // Bounded: a probe is itself bounded by its client's
                    // timeout, and its admission frees the bucket when it ends.
                    let _ = tokio::time::timeout(PROBE_WAIT, changed).await;
                    self.give_up_stale_probe(bucket);
                }
                Verdict::SpentUntil(until_ms, limit) => {
                    let wait = Duration::from_millis((until_ms - now_ms()).max(0) as u64);
                    if wait > max_wait {
                        crate::metrics::provider_held(provider, n);
                        let size = match limit {
                            0 => String::new(),
                            l => format!(" ({l} a window)"),
                        };
                        return Err(ProviderError::Retryable {
                            provider,
                            message: format!(
                                "the {bucket} rate limit{size} is spent until {}; nothing was sent",
                                format_time(until_ms)
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
        if now < b.blocked_until_ms {
            let limit = b.window.map_or(b.blocked_limit, |w| w.limit);
            return Verdict::SpentUntil(b.blocked_until_ms, limit);
        }
        if now < b.unmetered_until_ms {
            b.outstanding += n;
            return Verdict::Go(None);
        }
        match &mut b.window {
            Some(w) if now < w.reset_at_ms => {
                // A group larger than a whole window goes when it is whole.
                let need = n.min(w.limit.max(1));
                if w.remaining() >= need {
                    w.sent += need;
                    b.outstanding += n;
                    Verdict::Go(None)
                } else {
                    Verdict::SpentUntil(w.reset_at_ms, w.limit)
                }
            }
            _ if b.probing => match self.priors.get(bucket) {
                Some(prior) if b.probe_sent + n <= *prior => {
                    b.probe_sent += n;
                    b.outstanding += n;
                    Verdict::Go(Some(b.probe))
                }
                _ => Verdict::WaitForProbe,
            },
            _ => {
                b.window = None;
                b.probing = true;
                b.probe += 1;
                b.probe_started = Some(Instant::now());
                b.probe_sent = n;
                b.outstanding += n;
                Verdict::Probe(b.probe)
            }
        }
    }

    /// A call of `group` is sent again (a retry): one more out.
    pub fn resending(&self, group: &Admission) {
        group
            .unsettled
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.lock().entry(group.bucket).or_default().outstanding += 1;
    }

    /// Learns from the answer to one call of `group`.
    pub fn record(&self, group: &Admission, answer: Answer) {
        let settled = group.settle();
        self.record_in(group.bucket, group.member_of, settled, answer);
    }

    /// Learns from the answer to one call to `bucket`, a member of probe
    /// `probe` if it was one; `settled`: it was counted out.
    fn record_in(&self, bucket: &'static str, probe: Option<u64>, settled: bool, answer: Answer) {
        let now = now_ms();
        let mut buckets = self.lock();
        let b = buckets.entry(bucket).or_default();
        // This call among them: what else of ours a new window holds.
        let ours = b.outstanding.max(1);
        if settled {
            b.outstanding = b.outstanding.saturating_sub(1);
        }
        let of_the_probe = b.probing && probe == Some(b.probe);
        let mut window_known = false;
        match answer {
            Answer::Headers(r, limited) => {
                b.unmetered_until_ms = 0;
                let used = r.limit.saturating_sub(r.remaining);
                match &mut b.window {
                    // An answer about an earlier window, or one already over.
                    Some(w) if r.reset_at_ms < w.reset_at_ms => {}
                    _ if r.reset_at_ms <= now => {}
                    Some(w) if r.reset_at_ms == w.reset_at_ms => {
                        w.limit = r.limit;
                        w.others = w.others.max(used.saturating_sub(w.sent));
                        window_known = true;
                    }
                    // A new window: all of ours still out may land in it.
                    _ => {
                        b.window = Some(Window {
                            limit: r.limit,
                            reset_at_ms: r.reset_at_ms,
                            sent: ours,
                            others: used.saturating_sub(ours),
                        });
                        window_known = true;
                    }
                }
                if limited && r.reset_at_ms > now {
                    b.blocked_until_ms = b.blocked_until_ms.max(r.reset_at_ms);
                    b.blocked_limit = r.limit;
                }
            }
            Answer::Limited(wait) => {
                b.blocked_until_ms = b.blocked_until_ms.max(now + wait.as_millis() as i64);
            }
            Answer::Plain(true) if of_the_probe || b.window.is_none() => {
                b.unmetered_until_ms = now + UNMETERED_FOR_MS;
                window_known = true;
            }
            Answer::Plain(_) | Answer::Lost => {}
        }
        // The probe ends with its own answer, or with any answer that
        // told the window (the others need not wait for the probe's).
        if b.probing && (of_the_probe || window_known) {
            b.probing = false;
            self.changed.notify_waiters();
        }
    }

    /// Probe `probe` is over (its admission was dropped): if no answer
    /// told the window, the next group probes.
    fn end_probe(&self, bucket: &'static str, probe: u64) {
        let mut buckets = self.lock();
        if let Some(b) = buckets.get_mut(bucket) {
            if b.probing && b.probe == probe {
                b.probing = false;
                self.changed.notify_waiters();
            }
        }
    }

    /// A probe out longer than [`PROBE_WAIT`] is given up on (its answer
    /// is not coming): the next group probes.
    fn give_up_stale_probe(&self, bucket: &'static str) {
        let probe = {
            let buckets = self.lock();
            match buckets.get(bucket) {
                Some(b)
                    if b.probing && b.probe_started.is_some_and(|t| t.elapsed() >= PROBE_WAIT) =>
                {
                    b.probe
                }
                _ => return,
            }
        };
        self.end_probe(bucket, probe);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<&'static str, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "alias creation";

    fn headers(limit: u64, remaining: u64, reset_at_ms: i64) -> Answer {
        Answer::Headers(
            Reading {
                limit,
                remaining,
                reset_at_ms,
            },
            false,
        )
    }

    /// Admits (or not) at `now`, as a probe or not; the probe number of
    /// the admitted calls.
    fn admit(w: &Windows, n: u64, now: i64) -> Option<Option<u64>> {
        match w.decide(B, n, now) {
            Verdict::Go(member) => Some(member),
            Verdict::Probe(p) => Some(Some(p)),
            _ => None,
        }
    }

    fn soon() -> i64 {
        now_ms() + 600_000
    }

    #[test]
    fn a_probe_goes_alone_and_its_answers_count_its_whole_group_in_any_order() {
        for first_seen in [8, 6] {
            let w = Windows::default();
            let probe = admit(&w, 3, 0).expect("the first group probes");
            assert!(
                matches!(w.decide(B, 3, 0), Verdict::WaitForProbe),
                "the next waits for the probe's answer"
            );
            // The server counted one, or all three, of the probe's calls by
            // the answer seen first: 6 are left for the others either way.
            let reset = soon();
            w.record_in(B, probe, true, headers(9, first_seen, reset));
            assert!(admit(&w, 3, 0).is_some());
            assert!(admit(&w, 3, 0).is_some());
            assert!(
                matches!(w.decide(B, 3, 0), Verdict::SpentUntil(r, 9) if r == reset),
                "a third group would be cut in half: it waits whole"
            );
        }
    }

    #[test]
    fn what_others_spend_is_learned_from_the_answers() {
        let w = Windows::default();
        let reset = soon();
        let probe = admit(&w, 1, 0).unwrap();
        w.record_in(B, probe, true, headers(10, 9, reset));
        assert!(admit(&w, 5, 0).is_some()); // 6 sent here, 4 left
        w.record_in(B, None, true, headers(10, 8, reset)); // from before those five
        assert!(admit(&w, 5, 0).is_none(), "still 4 left, not 8");
        // Someone else spent the window: 9 counted, 6 of them ours.
        w.record_in(B, None, true, headers(10, 1, reset));
        assert!(admit(&w, 2, 0).is_none());
        assert!(admit(&w, 1, 0).is_some());
        assert!(admit(&w, 1, 0).is_none());
    }

    #[test]
    fn an_answer_about_an_earlier_window_changes_nothing() {
        let w = Windows::default();
        let reset = soon();
        let probe = admit(&w, 1, 0).unwrap();
        w.record_in(B, probe, true, headers(10, 9, reset));
        assert!(admit(&w, 6, 0).is_some()); // 3 left
                                            // A straggler from the window before: "10 left", resetting earlier.
        w.record_in(B, None, true, headers(10, 10, reset - 60_000));
        assert!(admit(&w, 4, 0).is_none(), "still 3 left");
        assert!(admit(&w, 3, 0).is_some());
    }

    #[test]
    fn a_429_blocks_until_it_says_even_inside_a_known_window() {
        let w = Windows::default();
        let probe = admit(&w, 1, 0).unwrap();
        let reset = soon();
        w.record_in(B, probe, true, headers(120, 100, reset));
        // Someone else's calls, then a 429 saying: back in two seconds.
        let back = now_ms() + 2_000;
        w.record_in(B, None, true, Answer::Limited(Duration::from_secs(2)));
        assert!(matches!(w.decide(B, 1, now_ms()), Verdict::SpentUntil(u, 120) if u >= back));
        assert!(
            admit(&w, 1, back + 10).is_some(),
            "after it, the window again"
        );
    }

    #[test]
    fn a_429_with_headers_spends_the_window_and_a_reset_window_is_probed_again() {
        let w = Windows::default();
        let probe = admit(&w, 1, 0).unwrap();
        let reset = now_ms() + 2_000;
        w.record_in(
            B,
            probe,
            true,
            Answer::Headers(
                Reading {
                    limit: 120,
                    remaining: 0,
                    reset_at_ms: reset,
                },
                true,
            ),
        );
        assert!(matches!(w.decide(B, 1, now_ms()), Verdict::SpentUntil(r, 120) if r == reset));
        // After the reset the window is unknown: one probe, the rest wait.
        assert!(matches!(w.decide(B, 1, reset), Verdict::Probe(_)));
        assert!(matches!(w.decide(B, 1, reset), Verdict::WaitForProbe));
    }

    #[test]
    fn only_a_successful_answer_without_headers_unmeters_a_bucket_until_one_has_them() {
        let w = Windows::default();
        let probe = admit(&w, 2, 0).unwrap();
        // A failure without headers (an edge 5xx) says nothing of limits.
        w.record_in(B, probe, true, Answer::Plain(false));
        assert!(
            matches!(w.decide(B, 1, now_ms()), Verdict::Probe(_)),
            "the probe ended, unanswered: the next group probes"
        );
        let probe = Some(2);
        w.record_in(B, probe, true, Answer::Plain(true));
        for _ in 0..100 {
            assert!(matches!(w.decide(B, 2, now_ms()), Verdict::Go(None)));
        }
        // An answer with headers meters it again.
        w.record_in(B, None, true, headers(10, 0, soon()));
        assert!(matches!(w.decide(B, 1, now_ms()), Verdict::SpentUntil(..)));
    }

    #[tokio::test]
    async fn calls_cut_off_before_their_answer_are_not_counted_out_for_good() {
        let w = Windows::default();
        let probe = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        let reset = soon();
        w.record(&probe, headers(1000, 999, reset));
        drop(probe);
        // Forty groups of three cut off by a deadline, never answered.
        for _ in 0..40 {
            let group = w.admit("vercel", B, 3, Duration::ZERO).await.unwrap();
            drop(group);
        }
        assert_eq!(w.lock()[B].outstanding, 0, "nothing is left counted out");
        // So the next window is counted from what is really out: the probe.
        let Verdict::Probe(p) = w.decide(B, 1, reset) else {
            panic!("a new window is probed");
        };
        w.record_in(B, Some(p), true, headers(120, 119, reset + 600_000));
        assert!(matches!(w.decide(B, 119, reset), Verdict::Go(None)));
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
        w.end_probe(B, 1);
        assert!(matches!(w.decide(B, 1, 0), Verdict::WaitForProbe));
        drop(second);
        assert!(matches!(w.decide(B, 1, 0), Verdict::Probe(_)));
    }

    #[tokio::test]
    async fn a_group_waiting_for_a_probe_goes_when_an_answer_tells_the_window() {
        use futures_util::FutureExt;
        let w = Windows::default();
        let probe = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        let mut waiting = Box::pin(w.admit("vercel", B, 2, Duration::ZERO));
        assert!(
            (&mut waiting).now_or_never().is_none(),
            "it waits for the probe"
        );
        w.record(&probe, headers(120, 119, soon()));
        // Woken by the answer, not by the probe's 30 s give-up.
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the answer")
            .unwrap();
        assert_eq!(admitted.member_of, None, "admitted from the known window");
        assert!(
            matches!(w.decide(B, 117, 0), Verdict::Go(None)),
            "119 left less the two the waiting group took"
        );
    }

    #[test]
    fn reads_join_a_probe_up_to_the_published_limit_and_are_counted() {
        let w = Windows::with_priors(&[(B, 5)]);
        let Verdict::Probe(p) = w.decide(B, 2, 0) else {
            panic!("the first read probes");
        };
        assert!(
            matches!(w.decide(B, 3, 0), Verdict::Go(Some(q)) if q == p),
            "joins, 5 sent"
        );
        assert!(
            matches!(w.decide(B, 1, 0), Verdict::WaitForProbe),
            "past the prior it waits"
        );
        // The first answer counted one call; all five sent are ours.
        w.record_in(B, Some(p), true, headers(8, 7, soon()));
        assert!(admit(&w, 3, 0).is_some());
        assert!(admit(&w, 1, 0).is_none());
    }

    #[tokio::test]
    async fn a_window_spent_past_the_wait_allowed_is_an_error_saying_when() {
        let w = Windows::default();
        let probe = w.admit("vercel", B, 1, Duration::ZERO).await.unwrap();
        let reset_s = now_ms() / 1000 + 600;
        w.record(&probe, headers(120, 0, reset_s * 1000));
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

    #[test]
    fn a_reset_given_as_seconds_from_now_is_read_as_such() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", "120".parse().unwrap());
        h.insert("x-ratelimit-remaining", "3".parse().unwrap());
        h.insert("x-ratelimit-reset", "30".parse().unwrap());
        let r = Reading::from_headers(&h).unwrap();
        let ahead = r.reset_at_ms - now_ms();
        assert!((29_000..=30_000).contains(&ahead), "{ahead}");
        h.insert("x-ratelimit-reset", "1900000000".parse().unwrap());
        assert_eq!(
            Reading::from_headers(&h).unwrap().reset_at_ms,
            1_900_000_000_000
        );
    }
}
