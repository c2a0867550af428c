//! An OpenAI-compatible chat-completions client (OpenAI, Azure OpenAI,
//! OpenRouter, a local Ollama, vLLM or llama.cpp server): `POST
//! {base_url}/chat/completions` with a system and a user message, the
//! agent's model and `max_tokens`; the answer is the first choice's
//! content. Tolerant of what such servers differ in: an integer or null
//! `error.code`, a string `error`, no `usage`. A 429 or 5xx is retried after
//! `retry-after-ms` or `retry-after` when the server says how long.

use std::time::Duration;

use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{classify, send, Backoff, Endpoint, ProviderError};

const PROVIDER: &str = "ai";
/// The longest answer kept (Slack's section text and PagerDuty's note both fit it).
pub const MAX_ANSWER: usize = 2_900;

/// A chat-completions client.
#[derive(Clone)]
pub struct AiClient {
    api: Endpoint,
    api_key: Option<SecretString>,
}

impl AiClient {
    /// A client for `base_url` (`https://api.openai.com/v1`).
    pub fn new(
        base_url: &str,
        api_key: Option<SecretString>,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
        };
        Ok(Self {
            api: Endpoint::new(PROVIDER, base_url, timeout, 3, backoff)?,
            api_key,
        })
    }

    /// The request body for one completion.
    pub fn body(model: &str, system: &str, user: &str, max_tokens: u64) -> Value {
        json!({
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": max_tokens,
            "stream": false,
        })
    }

    /// One completion: the answer's text, trimmed and at most
    /// [`MAX_ANSWER`] characters. An empty answer is an error.
    pub async fn complete(
        &self,
        model: &str,
        system: &str,
        user: &str,
        max_tokens: u64,
    ) -> Result<String, ProviderError> {
        self.complete_by(model, system, user, max_tokens, None)
            .await
    }

    /// Like [`AiClient::complete`], retrying only while a retry can end
    /// before `deadline`: past it, the last answer's error is returned.
    pub async fn complete_by(
        &self,
        model: &str,
        system: &str,
        user: &str,
        max_tokens: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<String, ProviderError> {
        let body = Self::body(model, system, user, max_tokens);
        let v = self
            .api
            .retry_until(deadline, || async {
                let mut req = self
                    .api
                    .http
                    .post(self.api.url("/chat/completions"))
                    .json(&body);
                if let Some(key) = &self.api_key {
                    req = req.bearer_auth(key.expose_secret());
                }
                let (status, headers, text) = send(PROVIDER, req).await?;
                if status.is_success() {
                    return serde_json::from_str::<Value>(&text).map_err(|_| {
                        ProviderError::invalid(
                            PROVIDER,
                            "invalid_response",
                            "the answer is not JSON",
                        )
                    });
                }
                Err(classify(
                    PROVIDER,
                    status,
                    &ms_retry(&headers),
                    None,
                    error_text(&text),
                ))
            })
            .await?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::trim)
            .unwrap_or_default();
        if content.is_empty() {
            return Err(ProviderError::invalid(
                PROVIDER,
                "empty_answer",
                "the model answered nothing",
            ));
        }
        Ok(crate::providers::pagerduty::truncate(content, MAX_ANSWER))
    }
}

/// `retry-after-ms` (OpenAI's, milliseconds) as the `Retry-After` the
/// shared classifier reads, in whole seconds rounded up.
fn ms_retry(headers: &HeaderMap) -> HeaderMap {
    let mut h = headers.clone();
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        let secs = (ms / 1000.0).ceil().max(1.0) as u64;
        if let Ok(v) = secs.to_string().parse() {
            h.insert(reqwest::header::RETRY_AFTER, v);
        }
    }
    h
}

/// The server's words: OpenAI's `{"error": {"message", "code"}}` (code a
/// string, an integer or null), Ollama's `{"error": "..."}`, or the text.
fn error_text(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let message = match &v["error"] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    let code = match &v["error"]["code"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (message, code) {
        (Some(m), Some(c)) => format!("{m} ({c})"),
        (Some(m), None) => m,
        _ => text.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_flavour_are_read() {
        let openai = r#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
        assert_eq!(
            error_text(openai),
            "The model `x` does not exist (model_not_found)"
        );
        let llama = include_str!("../../tests/fixtures/openai/error_503_llama_cpp.json");
        assert_eq!(error_text(llama), "Loading model (503)");
        let ollama = r#"{"error": "the model failed to generate a response"}"#;
        assert_eq!(
            error_text(ollama),
            "the model failed to generate a response"
        );
        assert_eq!(error_text("bad gateway"), "bad gateway");
    }

    #[test]
    fn retry_after_ms_becomes_whole_seconds() {
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(ms_retry(&h).get("retry-after").unwrap(), "2");
    }
}
