//! Slack: `chat.postMessage` with a bot token (threads supported), or an
//! incoming webhook. The Web API answers HTTP 200 even on failure, so `ok`
//! is always checked; `ratelimited` and HTTP 429 are retried after
//! `Retry-After`, every other error is fatal and kept.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{json, Value};

use super::{classify, json_body, send, Backoff, Endpoint, ProviderError};

const PROVIDER: &str = "slack";
/// Slack's limit on blocks per message.
pub const MAX_BLOCKS: usize = 50;

/// How messages reach Slack.
#[derive(Clone)]
pub enum Target {
    /// Web API with a bot token.
    Bot {
        /// `xoxb-...`
        token: SecretString,
    },
    /// An incoming-webhook URL (no threads).
    Webhook {
        /// `https://hooks.slack.com/services/...`
        url: SecretString,
    },
}

/// A Slack client.
#[derive(Clone)]
pub struct SlackClient {
    api: Endpoint,
    target: Target,
}

/// A message as posted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Posted {
    /// Channel id (empty for webhooks).
    pub channel: String,
    /// Message timestamp (empty for webhooks).
    pub ts: String,
}

impl SlackClient {
    /// A client for `base` (`https://slack.com/api`).
    pub fn new(base: &str, target: Target, timeout: Duration) -> Result<Self, ProviderError> {
        let backoff = Backoff {
            base: Duration::from_millis(300),
            max: Duration::from_secs(30),
        };
        Ok(Self {
            api: Endpoint::new(PROVIDER, base, timeout, 3, backoff)?,
            target,
        })
    }

    /// Caps the requests in flight at once from this client and its clones.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.api.set_max_in_flight(max);
        self
    }

    /// Overrides the per-request retry schedule.
    pub fn with_retries(mut self, tries: u32, backoff: Backoff) -> Self {
        self.api.set_retries(tries, backoff);
        self
    }

    /// True when replies can be threaded (bot token).
    pub fn threads(&self) -> bool {
        matches!(self.target, Target::Bot { .. })
    }

    /// Posts `text` (the notification fallback) with `blocks` to `channel`,
    /// in the thread `thread_ts` when given.
    pub async fn post(
        &self,
        channel: &str,
        text: &str,
        blocks: &[Value],
        thread_ts: Option<&str>,
    ) -> Result<Posted, ProviderError> {
        self.post_tagged(channel, text, blocks, thread_ts, None)
            .await
    }

    /// Posts a run's message at most once across crashes: the message
    /// carries `tag` (the run and step) in its metadata, and when `look_first` (an earlier
    /// attempt may have posted before its result was stored) the channel or
    /// thread is searched for it first. The search needs the channel's ID
    /// (`C...`) and the `channels:history` (or `groups:history`) scope; when
    /// it cannot be made, the message is posted (at least once).
    pub async fn post_for_run(
        &self,
        channel: &str,
        text: &str,
        blocks: &[Value],
        thread_ts: Option<&str>,
        tag: &str,
        look_first: bool,
    ) -> Result<Posted, ProviderError> {
        let metadata = json!({"event_type": "backstop_run", "event_payload": {"tag": tag}});
        let blocks: Vec<&Value> = blocks.iter().take(MAX_BLOCKS).collect();
        let mut tries = 0;
        self.api.retry(|| {
            // Any try after the first may follow a post whose answer was lost.
            let look = (look_first || tries > 0) && self.threads();
            tries += 1;
            let (blocks, metadata) = (&blocks, &metadata);
            async move {
                if look {
                    match self.find_run_message(channel, thread_ts, tag).await {
                        Ok(Some(found)) => return Ok(found),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot look for an earlier post of this run; posting again"),
                    }
                }
                self.post_once(channel, text, blocks, thread_ts, Some(metadata)).await
            }
        })
        .await
    }

    async fn post_tagged(
        &self,
        channel: &str,
        text: &str,
        blocks: &[Value],
        thread_ts: Option<&str>,
        metadata: Option<&Value>,
    ) -> Result<Posted, ProviderError> {
        let blocks: Vec<&Value> = blocks.iter().take(MAX_BLOCKS).collect();
        self.api
            .retry(|| self.post_once(channel, text, &blocks, thread_ts, metadata))
            .await
    }

    async fn post_once(
        &self,
        channel: &str,
        text: &str,
        blocks: &[&Value],
        thread_ts: Option<&str>,
        metadata: Option<&Value>,
    ) -> Result<Posted, ProviderError> {
        match &self.target {
            Target::Bot { token } => {
                let mut body = json!({"channel": channel, "text": text, "blocks": blocks, "unfurl_links": false});
                if let Some(ts) = thread_ts {
                    body["thread_ts"] = json!(ts);
                }
                if let Some(m) = metadata {
                    body["metadata"] = m.clone();
                }
                let req = self
                    .api
                    .http
                    .post(self.api.url("/chat.postMessage"))
                    .bearer_auth(token.expose_secret())
                    .json(&body);
                let v = web_api(req).await?;
                let field = |k: &str| {
                    v.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                Ok(Posted {
                    channel: field("channel"),
                    ts: field("ts"),
                })
            }
            Target::Webhook { url } => self.post_webhook(url, text, blocks).await,
        }
    }

    /// The message tagged `tag` in the channel (or the thread), if it was posted.
    async fn find_run_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        tag: &str,
    ) -> Result<Option<Posted>, ProviderError> {
        let Target::Bot { token } = &self.target else {
            return Ok(None);
        };
        let (method, mut query) = match thread_ts {
            Some(ts) => ("conversations.replies", vec![("ts", ts.to_string())]),
            None => ("conversations.history", vec![]),
        };
        query.extend([
            ("channel", channel.to_string()),
            ("limit", "200".into()),
            ("include_all_metadata", "true".into()),
        ]);
        let req = self
            .api
            .http
            .get(self.api.url(&format!("/{method}")))
            .bearer_auth(token.expose_secret())
            .query(&query);
        let v = web_api(req).await?;
        let found = v["messages"].as_array().into_iter().flatten().find(|m| {
            m.pointer("/metadata/event_type").and_then(Value::as_str) == Some("backstop_run")
                && m.pointer("/metadata/event_payload/tag")
                    .and_then(Value::as_str)
                    == Some(tag)
        });
        Ok(found.map(|m| Posted {
            channel: v["channel"].as_str().unwrap_or(channel).to_string(),
            ts: m["ts"].as_str().unwrap_or_default().to_string(),
        }))
    }

    /// Replaces a posted message (`chat.update`): the card after a person
    /// acted on it, its buttons gone.
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &[Value],
    ) -> Result<(), ProviderError> {
        let Target::Bot { token } = &self.target else {
            return Ok(());
        };
        let blocks: Vec<&Value> = blocks.iter().take(MAX_BLOCKS).collect();
        let body = json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks});
        self.api
            .retry(|| async {
                let req = self
                    .api
                    .http
                    .post(self.api.url("/chat.update"))
                    .bearer_auth(token.expose_secret())
                    .json(&body);
                web_api(req).await.map(|_| ())
            })
            .await
    }

    /// An answer only the person who pressed a button sees: a POST of
    /// `{"response_type": "ephemeral", ...}` to the interaction's
    /// `response_url` (no token; the URL is the credential).
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), ProviderError> {
        let body = json!({"response_type": "ephemeral", "replace_original": false, "text": text});
        let req = self.api.http.post(response_url).json(&body);
        let (status, headers, text) = send(PROVIDER, req).await?;
        match status.is_success() {
            true => Ok(()),
            false => Err(classify(PROVIDER, status, &headers, None, text)),
        }
    }

    /// The user ids in a user group (`usergroups.users.list`, scope
    /// `usergroups:read`).
    pub async fn usergroup_members(&self, group: &str) -> Result<Vec<String>, ProviderError> {
        let Target::Bot { token } = &self.target else {
            return Ok(Vec::new());
        };
        let v = self
            .api
            .retry(|| async {
                let req = self
                    .api
                    .http
                    .get(self.api.url("/usergroups.users.list"))
                    .bearer_auth(token.expose_secret())
                    .query(&[("usergroup", group)]);
                web_api(req).await
            })
            .await?;
        Ok(v["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect())
    }

    /// `auth.test`: proves the bot token works (webhooks cannot be checked
    /// without posting).
    pub async fn auth_test(&self) -> Result<String, ProviderError> {
        let Target::Bot { token } = &self.target else {
            return Ok("incoming webhook: not checked (posting is its only call)".into());
        };
        let v = web_api(
            self.api
                .http
                .post(self.api.url("/auth.test"))
                .bearer_auth(token.expose_secret()),
        )
        .await?;
        Ok(format!(
            "bot {} in team {}",
            v["user"].as_str().unwrap_or("?"),
            v["team"].as_str().unwrap_or("?")
        ))
    }

    async fn post_webhook(
        &self,
        url: &SecretString,
        text: &str,
        blocks: &[&Value],
    ) -> Result<Posted, ProviderError> {
        let req = self
            .api
            .http
            .post(url.expose_secret())
            .json(&json!({"text": text, "blocks": blocks}));
        let (status, headers, body) = send(PROVIDER, req).await?;
        if status.is_success() {
            return Ok(Posted {
                channel: String::new(),
                ts: String::new(),
            });
        }
        // Incoming webhooks answer plain-text error codes (`no_team`, `invalid_payload`, ...).
        let code = body.trim().to_string();
        Err(classify(
            PROVIDER,
            status,
            &headers,
            Some(code.clone()),
            code,
        ))
    }
}

/// One Web API call: HTTP errors and `ok: false` sorted into retryable
/// (`ratelimited`, Slack-side failures, 429, 5xx) and fatal (the rest, with
/// Slack's error code kept).
async fn web_api(req: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
    let (status, headers, text) = send(PROVIDER, req).await?;
    if !status.is_success() {
        return Err(classify(
            PROVIDER,
            status,
            &headers,
            None,
            text.chars().take(300).collect(),
        ));
    }
    let v = json_body(PROVIDER, status, &text)?;
    if v.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(v);
    }
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error")
        .to_string();
    if matches!(
        error.as_str(),
        "ratelimited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout"
    ) {
        return Err(ProviderError::Retryable {
            provider: PROVIDER,
            message: format!("ok=false: {error}"),
            retry_after: super::retry_after(&headers),
        });
    }
    Err(ProviderError::invalid(
        PROVIDER,
        &error,
        format!("ok=false: {error}"),
    ))
}
