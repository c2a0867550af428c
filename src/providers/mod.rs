//! Clients for the providers Backstop calls. Each sorts every failure into
//! retryable (with an optional `retry_after`) or fatal where the HTTP status
//! is known, and retries a single request a few times with capped,
//! jittered exponential backoff that honours `Retry-After` and rate-limit
//! reset headers. Longer outages are retried durably by the engine.

pub mod ai;
pub mod pagerduty;
pub(crate) mod ratelimit;
pub mod sentry;
pub mod slack;
pub mod vercel;

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Serialize;

/// A failed provider call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// Try again later (timeouts, connection errors, 408/409/429, 5xx).
    #[error("{provider}: {message}")]
    Retryable {
        /// `vercel`, `pagerduty`, `slack`.
        provider: &'static str,
        /// Status and the provider's own words.
        message: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Retrying will not help (other 4xx, invalid responses).
    #[error("{provider}: {message}")]
    Fatal {
        /// `vercel`, `pagerduty`, `slack`.
        provider: &'static str,
        /// The HTTP status, when the provider answered with one.
        status: Option<u16>,
        /// The provider's error code, e.g. `not_found`.
        code: Option<String>,
        /// Status and the provider's own words.
        message: String,
    },
}

/// The stored error envelope `{code, message, retryable}`.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl ProviderError {
    /// True for errors worth another attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Retryable { .. })
    }

    /// The HTTP status of a fatal answer (`404`: the thing does not exist).
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Fatal { status, .. } => *status,
            ProviderError::Retryable { .. } => None,
        }
    }

    /// A fatal error that is not an HTTP answer (a bad response body, a
    /// client that cannot be built).
    pub fn invalid(provider: &'static str, code: &str, message: impl Into<String>) -> Self {
        ProviderError::Fatal {
            provider,
            status: None,
            code: Some(code.into()),
            message: message.into(),
        }
    }

    /// How long the provider asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Retryable { retry_after, .. } => *retry_after,
            ProviderError::Fatal { .. } => None,
        }
    }

    /// The envelope stored with an attempt.
    pub fn envelope(&self) -> Envelope {
        match self {
            ProviderError::Retryable { provider, .. } => Envelope {
                code: format!("{provider}_unavailable"),
                message: self.to_string().chars().take(2000).collect(),
                retryable: true,
            },
            ProviderError::Fatal { provider, code, .. } => Envelope {
                code: code.clone().unwrap_or_else(|| format!("{provider}_error")),
                message: self.to_string().chars().take(2000).collect(),
                retryable: false,
            },
        }
    }

    pub(crate) fn from_reqwest(provider: &'static str, e: &reqwest::Error) -> Self {
        // Timeouts, refused and dropped connections, and bodies cut short
        // may all succeed later. (JSON is parsed separately, from the text.)
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "response cut short"
        } else {
            "request failed"
        };
        let message = format!("{kind}: {}", without_url(e));
        ProviderError::Retryable {
            provider,
            message,
            retry_after: None,
        }
    }
}

/// Sends a request and reads the whole response; transport failures are
/// sorted here, statuses by the caller.
pub(crate) async fn send(
    provider: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, HeaderMap, String), ProviderError> {
    let started = std::time::Instant::now();
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            crate::metrics::provider_call(provider, None, started.elapsed());
            return Err(ProviderError::from_reqwest(provider, &e));
        }
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await;
    crate::metrics::provider_call(
        provider,
        text.is_ok().then_some(status.as_u16()),
        started.elapsed(),
    );
    let text = text.map_err(|e| ProviderError::from_reqwest(provider, &e))?;
    Ok((status, headers, text))
}

/// What every provider client shares: an HTTP client with a timeout, the
/// API's base URL, the per-request retry schedule, and a cap on requests in
/// flight (shared by every clone: one per provider per process).
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub http: reqwest::Client,
    pub base: String,
    pub tries: u32,
    pub backoff: Backoff,
    gate: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

impl Endpoint {
    /// Fails when the HTTP client cannot be built (Backstop then refuses
    /// to start: a client without its timeout must never be used).
    pub fn new(
        provider: &'static str,
        base: &str,
        timeout: Duration,
        tries: u32,
        backoff: Backoff,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http_client(provider, timeout)?,
            base: base.trim_end_matches('/').to_string(),
            tries,
            backoff,
            gate: None,
        })
    }

    /// Caps the requests in flight at once (0: no cap). A request waits
    /// for a place before it is sent; waiting counts against nothing but
    /// the step's deadline.
    pub fn set_max_in_flight(&mut self, max: usize) {
        self.gate = (max > 0).then(|| std::sync::Arc::new(tokio::sync::Semaphore::new(max)));
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Replaces the retry schedule (tests use a tiny one).
    pub fn set_retries(&mut self, tries: u32, backoff: Backoff) {
        self.tries = tries.max(1);
        self.backoff = backoff;
    }

    /// Runs `call` with this endpoint's retries, each try holding a place
    /// under the in-flight cap.
    pub async fn retry<T, F, Fut>(&self, call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        self.retry_until(None, call).await
    }

    /// Like [`Endpoint::retry`], making no retry that would end past
    /// `deadline`.
    pub async fn retry_until<T, F, Fut>(
        &self,
        deadline: Option<tokio::time::Instant>,
        mut call: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        with_retries_until(self.tries, self.backoff, deadline, || {
            let attempt = call();
            async move {
                let _place = match &self.gate {
                    Some(gate) => gate.acquire().await.ok(),
                    None => None,
                };
                attempt.await
            }
        })
        .await
    }
}

/// An HTTP client with a per-call timeout and Backstop's user agent.
pub(crate) fn http_client(
    provider: &'static str,
    timeout: Duration,
) -> Result<reqwest::Client, ProviderError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")));
    build_client(provider, builder)
}

/// Builds a client or says why not; never falls back to a default client
/// (which would have no timeout).
fn build_client(
    provider: &'static str,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, ProviderError> {
    builder.build().map_err(|e| {
        ProviderError::invalid(
            provider,
            "client_unavailable",
            format!("cannot build the HTTP client: {}", without_url(&e)),
        )
    })
}

/// `segment` percent-encoded for a URL path (unreserved characters kept).
pub(crate) fn path_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A successful body that must be JSON.
pub(crate) fn json_body(
    provider: &'static str,
    status: reqwest::StatusCode,
    text: &str,
) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(text).map_err(|e| {
        ProviderError::invalid(
            provider,
            "invalid_response",
            format!("HTTP {status} with a body that is not JSON: {e}"),
        )
    })
}

/// reqwest errors name the URL, which may carry tokens in query strings.
fn without_url(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    last.unwrap_or_else(|| "no detail".into())
}

/// Classifies a non-success status. `code`/`message` come from the body.
pub(crate) fn classify(
    provider: &'static str,
    status: reqwest::StatusCode,
    headers: &HeaderMap,
    code: Option<String>,
    message: String,
) -> ProviderError {
    let s = status.as_u16();
    let message = format!(
        "HTTP {s}{}: {message}",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
    );
    if s == 408 || s == 409 || s == 429 || status.is_server_error() {
        // A rate limit's reset says when to come back only on a 429 (Vercel
        // sends its headers on every answer, a 500 included); any other
        // status is waited for only when it says so itself (`Retry-After`).
        let retry_after = match s {
            429 => retry_after(headers),
            _ => seconds(headers, "retry-after").map(Duration::from_secs),
        };
        ProviderError::Retryable {
            provider,
            message,
            retry_after,
        }
    } else {
        ProviderError::Fatal {
            provider,
            status: Some(s),
            code,
            message,
        }
    }
}

/// `Retry-After` (seconds), `X-RateLimit-Reset` (epoch seconds) or
/// `ratelimit-reset` (seconds from now), whichever is present.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| seconds(headers, name);
    if let Some(secs) = num("retry-after") {
        return Some(Duration::from_secs(secs));
    }
    if let Some(reset) = num("x-ratelimit-reset") {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // A small number is a delta, a large one an epoch time.
        return Some(Duration::from_secs(if reset > 1_000_000_000 {
            reset.saturating_sub(now)
        } else {
            reset
        }));
    }
    num("ratelimit-reset").map(Duration::from_secs)
}

/// A header holding a whole number.
fn seconds(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok()
}

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Largest delay (also caps `Retry-After`).
    pub max: Duration,
}

impl Backoff {
    /// Delay before retry number `retry` (0-based): `base * 2^retry` capped at
    /// `max`, with jitter in its upper half; a provider's `retry_after` wins
    /// when longer (still capped).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = exp / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) => ra.min(self.max).max(jittered),
            None => jittered,
        }
    }
}

/// Runs `call` up to `tries` times, retrying retryable failures after a
/// capped, jittered backoff or the server's `Retry-After` (a longer one
/// only when there is a `deadline`); a retry whose wait would end past
/// `deadline` is not made: the error in hand is returned (a caller's budget
/// ends with the provider's words, not a bare timeout).
pub(crate) async fn with_retries_until<T, F, Fut>(
    tries: u32,
    backoff: Backoff,
    deadline: Option<tokio::time::Instant>,
    mut call: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut retry = 0;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && retry + 1 < tries => {
                // A provider that names a wait longer than this client's
                // own backoff (a rate-limit window resetting in minutes) is
                // waited out whole when the caller gave a deadline it fits
                // in; without one it is answered now, for the caller (the
                // engine keeps the step's deadline) to schedule. Trying
                // earlier only spends calls.
                let wait = match (e.retry_after(), deadline) {
                    (Some(asked), None) if asked > backoff.max => return Err(e),
                    (Some(asked), Some(_)) if asked > backoff.max => asked,
                    (asked, _) => backoff.delay(retry, asked),
                };
                if deadline.is_some_and(|d| tokio::time::Instant::now() + wait >= d) {
                    return Err(e);
                }
                tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "retrying provider call");
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call answered "429, come back in 60 s" twice, then served;
    /// returns how many tries were made and the outcome.
    async fn rate_limited_twice(deadline: Option<Duration>) -> (u32, Result<(), ProviderError>) {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let backoff = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
        };
        let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
        let result = with_retries_until(4, backoff, deadline, || async {
            match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err(ProviderError::Retryable {
                    provider: "vercel",
                    message: "HTTP 429".into(),
                    retry_after: Some(Duration::from_secs(60)),
                }),
                _ => Ok(()),
            }
        })
        .await;
        (tries.into_inner(), result)
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_is_waited_whole_within_a_deadline_and_handed_back_without_one() {
        let started = tokio::time::Instant::now();
        let (tries, result) = rate_limited_twice(Some(Duration::from_secs(300))).await;
        assert!(result.is_ok());
        assert_eq!(tries, 3);
        assert!(
            started.elapsed() >= Duration::from_secs(120),
            "waited as asked"
        );

        let (tries, result) = rate_limited_twice(None).await;
        assert_eq!(tries, 1, "no deadline: the caller schedules the wait");
        assert_eq!(
            result.unwrap_err().retry_after(),
            Some(Duration::from_secs(60))
        );

        let (tries, result) = rate_limited_twice(Some(Duration::from_secs(90))).await;
        assert_eq!(tries, 2, "the second wait would end past the deadline");
        assert!(result.is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for retry in 0..10 {
            let d = b.delay(retry, None);
            let exp = Duration::from_millis(100 * (1u64 << retry)).min(Duration::from_secs(2));
            assert!(d >= exp / 2 && d <= exp, "retry {retry}: {d:?}");
        }
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn statuses_are_sorted_into_retryable_and_fatal() {
        let h = HeaderMap::new();
        for s in [408, 409, 429, 500, 502, 503] {
            let e = classify(
                "vercel",
                reqwest::StatusCode::from_u16(s).unwrap(),
                &h,
                None,
                "x".into(),
            );
            assert!(e.is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            let e = classify(
                "vercel",
                reqwest::StatusCode::from_u16(s).unwrap(),
                &h,
                Some("c".into()),
                "x".into(),
            );
            assert!(!e.is_retryable(), "{s}");
            assert_eq!(e.envelope().code, "c");
        }
    }

    #[test]
    fn a_client_that_cannot_be_built_is_an_error_not_a_client_without_a_timeout() {
        let broken = reqwest::Client::builder().user_agent("bad\nagent");
        let err = build_client("vercel", broken).unwrap_err();
        assert_eq!(err.envelope().code, "client_unavailable");
        assert!(http_client("vercel", Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_server_error_carrying_rate_limit_headers_is_not_a_rate_limit() {
        let mut h = HeaderMap::new();
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        h.insert("x-ratelimit-remaining", "90".parse().unwrap());
        h.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        let status = |s| reqwest::StatusCode::from_u16(s).unwrap();
        let e = classify("vercel", status(500), &h, None, "x".into());
        assert_eq!(e.retry_after(), None, "retried on the client's backoff");
        let e = classify("vercel", status(429), &h, None, "x".into());
        assert!(e.retry_after().unwrap() > Duration::from_secs(500));
        // A 503 that names its own wait is waited for.
        h.insert("retry-after", "30".parse().unwrap());
        let e = classify("vercel", status(503), &h, None, "x".into());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn retry_after_reads_each_header_style() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        h.insert("x-ratelimit-reset", (now + 30).to_string().parse().unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got <= Duration::from_secs(30) && got >= Duration::from_secs(28),
            "{got:?}"
        );
        let mut h = HeaderMap::new();
        h.insert("ratelimit-reset", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}
