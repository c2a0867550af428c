//! Raw webhook bytes and headers in, verified and parsed events out.
//! Signatures are checked on the raw body before anything is parsed.

pub mod pagerduty;
pub mod sentry;
pub mod signature;
pub mod slack;
pub mod vercel;

/// Why a webhook was refused. Maps one-to-one onto an HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// No signature header.
    #[error("missing signature header")]
    MissingSignature,
    /// The signature does not match the body.
    #[error("signature does not match the body")]
    BadSignature,
    /// The timestamp is missing, not a number, or outside the tolerance.
    #[error("timestamp missing or outside the tolerance")]
    StaleTimestamp,
    /// The body is not the expected JSON.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// A header's value, when present and text.
pub fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every provider sends `application/json`; anything else is malformed.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), IngestError> {
    let ct = header(headers, "content-type").unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(IngestError::Malformed(format!(
            "content type must be application/json, not `{ct}`"
        )))
    }
}

/// Checks `Sentry-Hook-Timestamp` (Unix seconds) against `now` within `tolerance`.
pub fn check_timestamp(
    header: Option<&str>,
    now_ms: i64,
    tolerance: std::time::Duration,
) -> Result<(), IngestError> {
    let secs: i64 = header
        .and_then(|h| h.trim().parse::<i64>().ok())
        .ok_or(IngestError::StaleTimestamp)?;
    let skew_ms = secs
        .saturating_mul(1000)
        .saturating_sub(now_ms)
        .unsigned_abs();
    if u128::from(skew_ms) > tolerance.as_millis() {
        return Err(IngestError::StaleTimestamp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let now = 1_700_000_000_000;
        let tol = Duration::from_secs(300);
        assert!(check_timestamp(Some("1700000000"), now, tol).is_ok());
        assert!(check_timestamp(Some("1699999800"), now, tol).is_ok());
        assert!(check_timestamp(Some("1699999000"), now, tol).is_err());
        assert!(check_timestamp(Some("1700001000"), now, tol).is_err());
        assert!(check_timestamp(Some("soon"), now, tol).is_err());
        assert!(check_timestamp(None, now, tol).is_err());
        assert!(check_timestamp(Some("-9223372036854775808"), now, tol).is_err());
    }
}
