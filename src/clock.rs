//! The process clock, for what people read: when an alert arrived, when a
//! step started, RFC 3339 in messages. Leases are never computed from it:
//! they use the database's clock (see `ledger::dialect`), so instances whose
//! clocks disagree still agree on who holds a run.

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Unix ms to RFC 3339 (empty when out of range).
pub fn format_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// RFC 3339 / ISO 8601 to Unix ms; `None` when malformed.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A duration in words for people: `850 ms`, `2.3s`, `6 min`, `2 h 5 min`.
pub fn human_ms(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{} ms", ms.max(0)),
        ms if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => {
            let (m, s) = (ms / 60_000, (ms % 60_000) / 1000);
            if s == 0 {
                format!("{m} min")
            } else {
                format!("{m} min {s} s")
            }
        }
        ms => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_malformed_ones_are_none() {
        let t = format_time(1_600_000_000_123);
        assert_eq!(t, "2020-09-13T12:26:40.123Z");
        assert_eq!(parse_time(&t), Some(1_600_000_000_123));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(2_300), "2.3s");
        assert_eq!(human_ms(130_000), "2 min 10 s");
        assert_eq!(human_ms(360_000), "6 min");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
    }
}
