//! The OpenAI-compatible chat client: the request on the wire, the
//! published answer read, and failures kept as what they are.

use std::time::{Duration, Instant};

use backstop::providers::ai::AiClient;
use secrecy::SecretString;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

const CHAT_200: &str = include_str!("../../fixtures/openai/chat_completions_200.json");
const KEY: &str = "sk-test-key-3c9e";

fn ai(server: &MockServer) -> AiClient {
    AiClient::new(
        &format!("{}/v1", server.uri()),
        Some(SecretString::from(KEY)),
        Duration::from_secs(5),
    )
    .expect("client builds")
}

#[tokio::test]
async fn a_completion_is_asked_as_openai_documents_and_its_answer_read() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(json_response(200, CHAT_200))
        .mount(&server)
        .await;
    let answer = ai(&server)
        .complete("gpt-4o-mini", "You write briefs.", "What broke?", 400)
        .await
        .expect("answered");
    assert_eq!(answer, "Hello! How can I assist you today?");
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(header(&reqs[0], "authorization"), format!("Bearer {KEY}"));
    assert!(header(&reqs[0], "content-type").starts_with("application/json"));
    let sent = body(&reqs[0]);
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["max_tokens"], 400);
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][0]["content"], "You write briefs.");
    assert_eq!(sent["messages"][1]["role"], "user");
    assert_eq!(sent["messages"][1]["content"], "What broke?");
}

#[tokio::test]
async fn a_429_waits_the_servers_retry_after_then_answers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_raw(
                    r#"{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}"#,
                    "application/json",
                ),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(json_response(200, CHAT_200))
        .mount(&server)
        .await;
    let started = Instant::now();
    let answer = ai(&server)
        .complete("m", "s", "u", 10)
        .await
        .expect("answered");
    assert_eq!(answer, "Hello! How can I assist you today?");
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2, "retried once");
    // What a user checks: the second try came after the server's second.
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn only_what_retrying_can_fix_is_retried_and_a_refusal_keeps_the_servers_words() {
    for (status, body, retryable, words) in [
        (
            500,
            r#"{"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": null}}"#,
            true,
            "HTTP 500",
        ),
        (
            429,
            r#"{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}"#,
            true,
            "Rate limit reached",
        ),
        (
            404,
            r#"{"error": {"message": "The model `nope` does not exist or you do not have access to it.", "type": "invalid_request_error", "code": "model_not_found"}}"#,
            false,
            "model_not_found",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", "0")
                    .set_body_raw(body, "application/json"),
            )
            .mount(&server)
            .await;
        // Bounded as the engine bounds it (ai.timeout): retries stop there.
        let client = ai(&server);
        let e = match tokio::time::timeout(
            Duration::from_secs(3),
            client.complete("nope", "s", "u", 10),
        )
        .await
        {
            Ok(r) => r.expect_err("fails"),
            Err(_) => {
                assert!(retryable, "{status}: a fatal error is not retried");
                assert!(requests(&server).await.len() > 1, "{status}: retried");
                continue;
            }
        };
        assert_eq!(e.is_retryable(), retryable, "{status}: {e}");
        let text = e.to_string();
        assert!(text.contains(words), "{status}: {text}");
        assert!(!text.contains(KEY), "{status}: {text}");
        if !retryable {
            assert_eq!(requests(&server).await.len(), 1, "{status}: not retried");
        }
    }
}
