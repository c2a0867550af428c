//! Slack: the Web API and incoming webhooks.

use std::time::{Duration, Instant};

use backstop::providers::slack::Posted;
use serde_json::json;
use wiremock::{MockServer, ResponseTemplate};

use super::*;

// ----------------------------------------------------------- Slack Web API

#[tokio::test]
async fn slack_post_sends_chat_post_message_and_returns_channel_and_ts() {
    let server = MockServer::start().await;
    always(
        &server,
        "/chat.postMessage",
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;
    let client = bot_client(&server);

    let top = client
        .post("C123ABC456", "Rolled back storefront", &blocks(3), None)
        .await
        .expect("ok: true");
    let reply = client
        .post(
            "C123ABC456",
            "Verified",
            &blocks(1),
            Some("1503435956.000247"),
        )
        .await
        .expect("ok: true");

    let posted = Posted {
        channel: "C123ABC456".into(),
        ts: "1503435956.000247".into(),
    };
    assert_eq!(top, posted);
    assert_eq!(reply, posted);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
    for req in &reqs {
        assert_eq!(req.method.as_str(), "POST");
        assert_eq!(req.url.path(), "/chat.postMessage");
        assert_eq!(header(req, "authorization"), "Bearer xoxb-test");
        assert!(header(req, "content-type").starts_with("application/json"));
    }
    let first = body(&reqs[0]);
    assert_eq!(first["channel"], "C123ABC456");
    assert_eq!(first["text"], "Rolled back storefront");
    assert_eq!(first["blocks"], json!(blocks(3)));
    assert!(
        first.get("thread_ts").is_none(),
        "no thread unless asked: {first}"
    );
    let second = body(&reqs[1]);
    assert_eq!(second["text"], "Verified");
    assert_eq!(second["blocks"], json!(blocks(1)));
    assert_eq!(second["thread_ts"], "1503435956.000247");
}

#[tokio::test]
async fn slack_update_replaces_the_card_by_channel_and_ts() {
    let server = MockServer::start().await;
    always(&server, "/chat.update", json_response(200, CHAT_UPDATE_200)).await;
    bot_client(&server)
        .update(
            "C024BE91L",
            "1401383885.000061",
            "Undone by <@U1>",
            &blocks(2),
        )
        .await
        .expect("ok: true");
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method.as_str(), "POST");
    assert_eq!(header(&reqs[0], "authorization"), "Bearer xoxb-test");
    assert!(header(&reqs[0], "content-type").starts_with("application/json"));
    let sent = body(&reqs[0]);
    assert_eq!(sent["channel"], "C024BE91L");
    assert_eq!(sent["ts"], "1401383885.000061");
    assert_eq!(sent["text"], "Undone by <@U1>");
    assert_eq!(sent["blocks"], json!(blocks(2)));
}

#[tokio::test]
async fn slack_update_refused_keeps_slacks_code_and_is_not_retried() {
    let server = MockServer::start().await;
    always(
        &server,
        "/chat.update",
        json_response(200, CHAT_UPDATE_ERROR),
    )
    .await;
    let err = bot_client(&server)
        .update("C024BE91L", "1401383885.000061", "x", &[])
        .await
        .expect_err("ok: false fails");
    assert_eq!(err.envelope().code, "cant_update_message");
    assert!(!err.is_retryable());
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn slack_usergroup_members_are_read_with_the_group_id() {
    let server = MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/usergroups.users.list"))
        .respond_with(json_response(200, USERGROUP_USERS_200))
        .mount(&server)
        .await;
    let members = bot_client(&server)
        .usergroup_members("S0614TZR7")
        .await
        .expect("ok: true");
    assert_eq!(members, ["U060R4BJ4", "W123A4BC5"]);
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(header(&reqs[0], "authorization"), "Bearer xoxb-test");
    let query: Vec<(String, String)> = reqs[0].url.query_pairs().into_owned().collect();
    assert_eq!(query, [("usergroup".to_string(), "S0614TZR7".to_string())]);
}

#[tokio::test]
async fn slack_post_cuts_more_than_50_blocks_to_50() {
    let server = MockServer::start().await;
    always(
        &server,
        "/chat.postMessage",
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(60), None)
        .await
        .expect("ok: true");

    let sent = body(&requests(&server).await[0]);
    assert_eq!(
        sent["blocks"],
        json!(blocks(50)),
        "the first 50 blocks, in order"
    );
}

#[tokio::test]
async fn slack_ok_false_errors_are_fatal_not_retried_and_keep_slacks_code() {
    let reference = fixture(CHAT_POST_MESSAGE_ERROR);
    for code in [
        "too_many_attachments",
        "channel_not_found",
        "not_in_channel",
        "invalid_auth",
    ] {
        let mut answer = reference.clone();
        answer["error"] = json!(code);
        let server = MockServer::start().await;
        always(
            &server,
            "/chat.postMessage",
            json_response(200, &answer.to_string()),
        )
        .await;

        let err = bot_client(&server)
            .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
            .await
            .expect_err("ok: false fails");

        assert!(!err.is_retryable(), "{code}: {err}");
        assert_eq!(requests(&server).await.len(), 1, "{code} is not retried");
        let envelope = err.envelope();
        assert_eq!(envelope.code, code);
        assert!(!envelope.retryable);
        assert!(err.to_string().contains(code), "{code}: {err}");
    }
}

#[tokio::test]
async fn slack_http_429_waits_retry_after_then_posts() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/chat.postMessage",
        ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    let started = Instant::now();
    let posted = bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
        .await
        .expect("retried to success");
    let took = started.elapsed();

    assert_eq!(posted.ts, "1503435956.000247");
    assert_eq!(requests(&server).await.len(), 2);
    assert!(took >= Duration::from_millis(900), "waited only {took:?}");
}

#[tokio::test]
async fn slack_ok_false_ratelimited_is_retried_then_posts() {
    let server = MockServer::start().await;
    let mut ratelimited = fixture(CHAT_POST_MESSAGE_ERROR);
    ratelimited["error"] = json!("ratelimited");
    once_then(
        &server,
        "/chat.postMessage",
        json_response(200, &ratelimited.to_string()),
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    let posted = bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
        .await
        .expect("retried to success");

    assert_eq!(posted.channel, "C123ABC456");
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn slack_http_500_is_retried_then_posts() {
    let server = MockServer::start().await;
    once_then(
        &server,
        "/chat.postMessage",
        ResponseTemplate::new(500),
        json_response(200, CHAT_POST_MESSAGE_200),
    )
    .await;

    let posted = bot_client(&server)
        .post("C123ABC456", "Rolled back storefront", &blocks(1), None)
        .await
        .expect("retried to success");

    assert_eq!(posted.channel, "C123ABC456");
    assert_eq!(requests(&server).await.len(), 2);
}

// ------------------------------------------------------ Slack webhooks

#[tokio::test]
async fn slack_webhook_posts_text_and_blocks_to_the_hook_url() {
    let server = MockServer::start().await;
    always(&server, "/services/T/B/X", text_response(200, WEBHOOK_200)).await;

    let posted = webhook_client(&server)
        .post("ignored", "Rolled back storefront", &blocks(2), None)
        .await
        .expect("200 ok");

    assert_eq!(
        posted,
        Posted {
            channel: String::new(),
            ts: String::new()
        }
    );
    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method.as_str(), "POST");
    assert_eq!(reqs[0].url.path(), "/services/T/B/X");
    assert!(header(&reqs[0], "content-type").starts_with("application/json"));
    let sent = body(&reqs[0]);
    assert_eq!(
        keys(&sent),
        BTreeSet::from(["text".to_string(), "blocks".to_string()])
    );
    assert!(keys(&fixture(WEBHOOK_REQUEST)).is_subset(&keys(&sent)));
    assert_eq!(sent["text"], "Rolled back storefront");
    assert_eq!(sent["blocks"], json!(blocks(2)));
}

#[tokio::test]
async fn slack_webhook_404_no_team_is_fatal_with_its_code() {
    let server = MockServer::start().await;
    always(&server, "/services/T/B/X", text_response(404, WEBHOOK_404)).await;

    let err = webhook_client(&server)
        .post("ignored", "Rolled back storefront", &blocks(1), None)
        .await
        .expect_err("404 fails");

    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.envelope().code, "no_team");
    assert_eq!(
        requests(&server).await.len(),
        1,
        "a dead hook is not retried"
    );
}
