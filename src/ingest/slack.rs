//! Slack interactivity: a button pressed on a Backstop card arrives as a
//! `block_actions` request, `application/x-www-form-urlencoded` with one
//! `payload=` field of JSON. `X-Slack-Signature` is `v0=` and the hex
//! HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{raw body}` under the
//! app's signing secret; it is checked on the raw bytes, in constant time,
//! before anything is decoded, and the timestamp must be within 5 minutes.

use std::time::Duration;

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::signature::{self, Digest};
use super::{header, IngestError};

/// Slack's replay window.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// What a button asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickAction {
    /// Put production back on the deployment Backstop rolled back from.
    Undo,
    /// Hold the service: no automatic rollback until resumed.
    Hold,
    /// Resume automatic rollbacks of the service.
    Resume,
}

impl ClickAction {
    /// The button's `action_id`.
    pub fn action_id(self) -> &'static str {
        match self {
            ClickAction::Undo => "backstop_undo",
            ClickAction::Hold => "backstop_hold",
            ClickAction::Resume => "backstop_resume",
        }
    }

    fn from_action_id(id: &str) -> Option<Self> {
        [ClickAction::Undo, ClickAction::Hold, ClickAction::Resume]
            .into_iter()
            .find(|a| a.action_id() == id)
    }

    /// `undo`, `hold`, `resume`.
    pub fn name(self) -> &'static str {
        match self {
            ClickAction::Undo => "undo",
            ClickAction::Hold => "hold",
            ClickAction::Resume => "resume",
        }
    }

    /// From `undo`, `hold`, `resume`.
    pub fn parse(name: &str) -> Option<Self> {
        [ClickAction::Undo, ClickAction::Hold, ClickAction::Resume]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// A verified button press.
#[derive(Debug, Clone, PartialEq)]
pub struct Click {
    /// What was asked.
    pub action: ClickAction,
    /// The run the card belongs to (the button's `value`; checked against
    /// the ledger before anything is done).
    pub run: String,
    /// Slack user id of who pressed.
    pub user_id: String,
    /// Their user name, for people.
    pub user_name: String,
    /// Where an ephemeral answer to the presser goes.
    pub response_url: Option<String>,
}

/// Checks `X-Slack-Signature` and `X-Slack-Request-Timestamp` on the raw body.
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &SecretString,
    now_ms: i64,
) -> Result<(), IngestError> {
    let ts = header(headers, "x-slack-request-timestamp");
    super::check_timestamp(ts, now_ms, TOLERANCE)?;
    let ts = ts.unwrap_or_default().trim();
    let sig = header(headers, "x-slack-signature").ok_or(IngestError::MissingSignature)?;
    let hex = sig
        .trim()
        .strip_prefix("v0=")
        .ok_or(IngestError::BadSignature)?;
    let mut base = Vec::with_capacity(body.len() + ts.len() + 4);
    base.extend_from_slice(b"v0:");
    base.extend_from_slice(ts.as_bytes());
    base.push(b':');
    base.extend_from_slice(body);
    match signature::verify(
        Digest::Sha256,
        secret.expose_secret().as_bytes(),
        &base,
        hex,
    ) {
        true => Ok(()),
        false => Err(IngestError::BadSignature),
    }
}

/// The signature Slack would send for `body` at `ts` (simulator, tests).
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut base = format!("v0:{ts}:").into_bytes();
    base.extend_from_slice(body);
    format!(
        "v0={}",
        signature::sign(Digest::Sha256, secret.as_bytes(), &base)
    )
}

/// Decodes a verified `block_actions` request. `Ok(None)` for a payload
/// that is not a Backstop button (another interaction type or action).
pub fn parse(body: &[u8]) -> Result<Option<Click>, IngestError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| IngestError::Malformed("body is not UTF-8".into()))?;
    let payload = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "payload")
        .map(|(_, v)| v)
        .ok_or_else(|| IngestError::Malformed("no `payload` field".into()))?;
    let decoded = form_decode(payload)
        .ok_or_else(|| IngestError::Malformed("`payload` is not URL-encoded UTF-8".into()))?;
    let v: Value = serde_json::from_str(&decoded)
        .map_err(|e| IngestError::Malformed(format!("`payload` is not JSON: {e}")))?;
    if v["type"].as_str() != Some("block_actions") {
        return Ok(None);
    }
    let Some(action) = v["actions"].as_array().and_then(|a| a.first()) else {
        return Err(IngestError::Malformed(
            "block_actions without actions".into(),
        ));
    };
    let Some(kind) = action["action_id"]
        .as_str()
        .and_then(ClickAction::from_action_id)
    else {
        return Ok(None);
    };
    let run = action["value"]
        .as_str()
        .filter(|r| !r.is_empty() && r.len() <= 64)
        .ok_or_else(|| IngestError::Malformed("the button carries no run".into()))?;
    let user_id = v["user"]["id"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| IngestError::Malformed("no user".into()))?;
    let user_name = v["user"]["username"]
        .as_str()
        .or_else(|| v["user"]["name"].as_str())
        .unwrap_or(user_id);
    Ok(Some(Click {
        action: kind,
        run: run.to_string(),
        user_id: user_id.to_string(),
        user_name: user_name.to_string(),
        response_url: v["response_url"].as_str().map(str::to_owned),
    }))
}

/// `application/x-www-form-urlencoded` value decoding (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Form-encodes `value` as Slack does (for the simulator's clicks).
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const VECTOR: &str = include_str!("../../tests/fixtures/slack/request_signing_vector.json");
    const BOLT_FORM: &str = include_str!("../../tests/fixtures/slack/block_actions_form_body.txt");

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-slack-request-timestamp",
            HeaderValue::from_str(ts).unwrap(),
        );
        h.insert("x-slack-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn slacks_own_signing_vector_verifies_and_a_changed_byte_does_not() {
        let v: Value = serde_json::from_str(VECTOR).unwrap();
        let secret = SecretString::from(v["signing_secret"].as_str().unwrap().to_string());
        let ts = v["headers"]["X-Slack-Request-Timestamp"].as_str().unwrap();
        let sig = v["headers"]["X-Slack-Signature"].as_str().unwrap();
        let body = v["body"].as_str().unwrap().as_bytes();
        let now = ts.parse::<i64>().unwrap() * 1000 + 10_000;
        assert!(verify(&headers(ts, sig), body, &secret, now).is_ok());
        assert_eq!(
            sign(
                v["signing_secret"].as_str().unwrap(),
                ts.parse().unwrap(),
                body
            ),
            v["expected_signature"].as_str().unwrap()
        );
        let mut forged = body.to_vec();
        forged[10] ^= 1;
        assert!(matches!(
            verify(&headers(ts, sig), &forged, &secret, now),
            Err(IngestError::BadSignature)
        ));
        // Replayed six minutes later.
        let late = now + 6 * 60_000;
        assert!(matches!(
            verify(&headers(ts, sig), body, &secret, late),
            Err(IngestError::StaleTimestamp)
        ));
        let no_prefix = sig.trim_start_matches("v0=");
        assert!(verify(&headers(ts, no_prefix), body, &secret, now).is_err());
    }

    #[test]
    fn a_bolt_block_actions_body_decodes_and_foreign_buttons_are_not_ours() {
        // Bolt's test payload: a button with another app's action_id.
        assert_eq!(parse(BOLT_FORM.trim().as_bytes()).unwrap(), None);
        let encoded = BOLT_FORM.trim().trim_start_matches("payload=");
        let mut v: Value = serde_json::from_str(&form_decode(encoded).unwrap()).unwrap();
        v["actions"][0]["action_id"] = "backstop_undo".into();
        v["actions"][0]["value"] = "01abc".into();
        let body = format!("payload={}", form_encode(&v.to_string()));
        let click = parse(body.as_bytes()).unwrap().unwrap();
        assert_eq!(click.action, ClickAction::Undo);
        assert_eq!(click.run, "01abc");
        assert_eq!(click.user_id, "W111");
        assert_eq!(click.user_name, "primary-owner");
        assert_eq!(
            click.response_url.as_deref(),
            Some("https://hooks.slack.com/actions/T111/111/random-value")
        );
        assert!(parse(b"payload=%7Bnot-json").is_err());
        assert!(parse(b"nothing=here").is_err());
    }
}
