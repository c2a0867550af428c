//! Sentry REST client: the reads `backstop check` makes with an optional
//! API token.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{classify, json_body, send, ProviderError};

const PROVIDER: &str = "sentry";

/// A Sentry API client.
#[derive(Clone)]
pub struct SentryClient {
    api: super::Endpoint,
    token: SecretString,
    org: String,
}

impl SentryClient {
    /// A client for `base` (`https://sentry.io`).
    pub fn new(
        base: &str,
        token: SecretString,
        org: &str,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let once = super::Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        Ok(Self {
            api: super::Endpoint::new(PROVIDER, base, timeout, 1, once)?,
            token,
            org: org.to_string(),
        })
    }

    /// Reads a project (`GET /api/0/projects/{org}/{slug}/`).
    pub async fn project(&self, slug: &str) -> Result<Value, ProviderError> {
        let req = self
            .api
            .http
            .get(
                self.api
                    .url(&format!("/api/0/projects/{}/{slug}/", self.org)),
            )
            .bearer_auth(self.token.expose_secret());
        let (status, headers, text) = send(PROVIDER, req).await?;
        if status.is_success() {
            return json_body(PROVIDER, status, &text);
        }
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(classify(PROVIDER, status, &headers, None, detail))
    }
}
