//! The ollama, claude and openai components against local servers that speak each API's
//! wire format: exact requests, outcomes, error classes, retries, the allow-list, the
//! sandbox, timeouts and connection reuse.

use std::time::Duration;

use lanes::model::{ChatInput, ChatMessage, NewExecution, Role, Status};
use serde_json::json;

use lanes::config::ConfigValue;

use crate::mock::{MockApi, Reply};
use crate::support::*;

fn full_input(extra: Option<serde_json::Value>) -> ChatInput {
    ChatInput {
        model: None,
        system: Some("Be brief.".into()),
        messages: vec![ChatMessage {
            role: Role::User,
            content: "Hello?".into(),
        }],
        max_tokens: Some(50),
        temperature: Some(0.2),
        stop: vec!["END".into()],
        extra: extra.and_then(|e| e.as_object().cloned()),
        ..ChatInput::prompt("")
    }
}

fn adapter_policy() -> lanes::policy::PolicyConfig {
    lanes::policy::PolicyConfig {
        max_rate_limited: Some(1),
        breaker_failures: Some(0),
        resume_spread_ms: Some(0),
        ..Default::default()
    }
}

fn execution(provider: &str, input: ChatInput, max_attempts: i32) -> NewExecution {
    NewExecution {
        tenant: None,
        cache: None,
        provider: provider.into(),
        input,
        priority: 0,
        max_attempts,
        route: None,
        defer: Default::default(),
    }
}

async fn run_one(daemon: &lanes::Daemon, queue: &dyn Queue, new: NewExecution) -> lanes::Execution {
    let id = daemon.submit(&new).await.unwrap();
    wait_until(
        queue,
        None,
        Duration::from_secs(30),
        "the execution to end",
        |rows| rows.iter().any(|e| e.id == id && e.status.is_terminal()),
    )
    .await
    .into_iter()
    .find(|e| e.id == id)
    .unwrap()
}

fn ollama_reply(text: &str) -> Reply {
    Reply::json(
        200,
        json!({"model": "llama3", "created_at": "2026-11-30T00:00:00Z",
               "message": {"role": "assistant", "content": text}, "done": true,
               "done_reason": "stop", "total_duration": 1, "prompt_eval_count": 7, "eval_count": 3}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_speaks_the_chat_api() {
    let api = MockApi::start().await;
    let mut env = TestEnv::new();
    env.add_component("ollama.wasm");
    env.adapter("ollama", "ollama.wasm", &api.url(), "llama3");
    env.config.retry.base_ms = 10;
    // These tests map each answer to its class: one rate-limited retry, no breaker, and
    // waits as asked.
    env.config.policy = adapter_policy();
    let (daemon, queue) = env.start().await;

    api.reply([ollama_reply("Hi!")]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", full_input(None), 1),
    )
    .await;
    assert_eq!(e.status, Status::Completed, "{:?}", e.error);
    let out = unpriced(e.output.unwrap(), "llama3");
    assert_eq!(
        out,
        json!({"text": "Hi!", "content": [{"type": "text", "text": "Hi!"}], "model": "llama3", "finish_reason": "stop",
                           "usage": {"input_tokens": 7, "output_tokens": 3}})
    );
    let req = &api.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/chat")
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    // Sent with its length, not chunked, and saying who calls.
    let length: usize = req.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, serde_json::to_vec(&req.body).unwrap().len());
    assert_eq!(req.header("transfer-encoding"), None);
    assert_eq!(
        req.header("user-agent"),
        Some(format!("lanes/{} (ollama/0.1.0)", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(
        req.body,
        json!({"model": "llama3", "stream": false,
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}],
               "options": {"temperature": 0.2, "num_predict": 50, "stop": ["END"]}})
    );

    // `extra` merges deeply: a nested `options` adds to the adapter's, it does not replace
    // them (num_predict, temperature and stop used to vanish).
    api.reply([ollama_reply("Hi!")]);
    run_one(
        &daemon,
        queue.as_ref(),
        execution(
            "ollama",
            full_input(Some(
                json!({"options": {"num_ctx": 8192}, "keep_alive": "5m"}),
            )),
            1,
        ),
    )
    .await;
    let req = api.requests().last().unwrap().clone();
    assert_eq!(
        req.body["options"],
        json!({"temperature": 0.2, "num_predict": 50, "stop": ["END"], "num_ctx": 8192})
    );
    assert_eq!(req.body["keep_alive"], "5m");

    // Without "stream": false the real server streams NDJSON; the adapter joins it.
    api.fallback(|req| {
        if req.body.get("stream") == Some(&json!(false)) {
            return Reply::json(400, json!({"error": "test expected streaming"}));
        }
        let lines = [
            json!({"model": "llama3", "message": {"role": "assistant", "content": "Hel"}, "done": false}),
            json!({"model": "llama3", "message": {"role": "assistant", "content": "lo"}, "done": false}),
            json!({"model": "llama3", "message": {"role": "assistant", "content": ""}, "done": true,
                   "done_reason": "length", "prompt_eval_count": 4, "eval_count": 2}),
        ];
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
            body: lines.iter().map(|l| format!("{l}\n")).collect(),
            hang: false,
            stall_after: None,
        }
    });
    let streamed = full_input(Some(json!({"stream": true})));
    let e = run_one(&daemon, queue.as_ref(), execution("ollama", streamed, 1)).await;
    let out = e.output.unwrap();
    assert_eq!(
        (out["text"].as_str(), out["finish_reason"].as_str()),
        (Some("Hello"), Some("length"))
    );
    assert_eq!(out["usage"], json!({"input_tokens": 4, "output_tokens": 2}));

    // Errors come as {"error": "..."}.
    api.reply([Reply::json(
        404,
        json!({"error": "model \"nope\" not found, try pulling it first"}),
    )]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", full_input(None), 3),
    )
    .await;
    assert_eq!((e.status, e.attempts), (Status::Failed, 1));
    assert_eq!(e.error_kind.as_deref(), Some("invalid_request"));
    assert!(e.error.unwrap().contains("model \"nope\" not found"));

    // Every error status Ollama sends, with its body.
    let cases = [
        (400, "invalid_request", 1),
        (401, "unauthorized", 1),
        (403, "unauthorized", 1),
        (429, "rate_limited", 2),
        (502, "unavailable", 2),
    ];
    for (status, kind, attempts) in cases {
        let reply = Reply::json(status, json!({"error": format!("status {status}")}))
            .header("retry-after", "0");
        api.reply(std::iter::repeat_n(reply, attempts));
        let e = run_one(
            &daemon,
            queue.as_ref(),
            execution("ollama", full_input(None), 2),
        )
        .await;
        assert_eq!(
            (e.status, e.error_kind.as_deref()),
            (Status::Failed, Some(kind))
        );
        // A rate-limited call is not an attempt: it is counted apart.
        assert_eq!((e.attempts + e.rate_limited) as usize, attempts, "{status}");
        assert!(
            e.error
                .unwrap()
                .contains(&format!("HTTP {status}: status {status}"))
        );
    }
    api.reply([
        Reply::json(429, json!({"error": "busy"})).header("retry-after", "1"),
        ollama_reply("after waiting"),
    ]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", full_input(None), 2),
    )
    .await;
    assert_eq!(
        (e.status, e.attempts, e.rate_limited),
        (Status::Completed, 1, 1),
        "a 429 is not an attempt"
    );
    assert!(
        e.started_at.unwrap() - e.created_at >= 1000,
        "retry-after honored"
    );

    api.reply([
        Reply::json(500, json!({"error": "out of memory"})),
        ollama_reply("recovered"),
    ]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", full_input(None), 3),
    )
    .await;
    assert_eq!(
        (e.status, e.attempts),
        (Status::Completed, 2),
        "5xx is retried"
    );
    // The row shows no error once completed; the failed try is in its history.
    assert_eq!(e.error, None);
    assert!(
        e.history.iter().any(|h| h
            .error
            .as_deref()
            .is_some_and(|m| m.contains("out of memory"))),
        "{:?}",
        e.history
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

fn claude_reply() -> Reply {
    Reply::json(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
               "stop_reason": "max_tokens", "stop_sequence": null,
               "usage": {"input_tokens": 11, "output_tokens": 5,
                         "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}),
    )
    .header("request-id", "req_1")
}

fn claude_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_x"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_speaks_the_messages_api() {
    let api = MockApi::start().await;
    let mut env = TestEnv::new();
    env.add_component("claude.wasm");
    let key_file = env.dir.path().join("claude.key");
    std::fs::write(&key_file, "sk-ant-test-secret\n").unwrap();
    env.adapter("claude", "claude.wasm", &api.url(), "claude-x")
        .api_key_file = Some(key_file.clone());
    // A second provider from the same component: the classic version and auth header.
    let classic = env.adapter("claude-classic", "claude.wasm", &api.url(), "claude-y");
    classic.api_key_file = Some(key_file);
    classic.config.insert(
        "anthropic_version".into(),
        ConfigValue::String("2023-06-01".into()),
    );
    classic
        .config
        .insert("auth".into(), ConfigValue::String("x-api-key".into()));
    env.config.retry.base_ms = 10;
    // These tests map each answer to its class: one rate-limited retry, no breaker, and
    // waits as asked.
    env.config.policy = adapter_policy();
    let (daemon, queue) = env.start().await;

    api.reply([claude_reply()]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("claude", full_input(None), 1),
    )
    .await;
    assert_eq!(e.status, Status::Completed, "{:?}", e.error);
    assert_eq!(
        without_cost(e.output.clone().unwrap()),
        json!({"text": "Hi there",
               // Each text block is a part of its own; `text` joins them.
               "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
               "model": "claude-x", "finish_reason": "length",
               // Anthropic's `input_tokens` leaves out the cache's: lanes counts them all,
               // and says how many were read from and written to the cache.
               "usage": {"input_tokens": 131, "output_tokens": 5,
                         "cache_read_tokens": 100, "cache_write_tokens": 20}})
    );
    let req = &api.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(req.header("anthropic-version"), Some("2026-10-21"));
    assert_eq!(
        req.header("authorization"),
        Some("Bearer sk-ant-test-secret")
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.body,
        json!({"model": "claude-x", "max_tokens": 50, "system": "Be brief.",
               "messages": [{"role": "user", "content": "Hello?"}],
               "stop_sequences": ["END"], "temperature": 0.2})
    );

    // No temperature unless asked; max_tokens falls back to the configured default.
    api.reply([claude_reply()]);
    run_one(
        &daemon,
        queue.as_ref(),
        execution("claude", ChatInput::prompt("x"), 1),
    )
    .await;
    let body = &api.requests()[1].body;
    assert!(body.get("temperature").is_none(), "{body}");
    assert_eq!(body["max_tokens"], 1024);

    api.reply([claude_reply()]);
    run_one(
        &daemon,
        queue.as_ref(),
        execution("claude-classic", ChatInput::prompt("x"), 1),
    )
    .await;
    let req = &api.requests()[2];
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(req.header("x-api-key"), Some("sk-ant-test-secret"));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.body["model"], "claude-y");

    // The error table.
    let cases = [
        (
            claude_error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
            ),
            "rate_limited",
            2,
        ),
        (
            claude_error(
                429,
                "rate_limit_error",
                "You have reached your specified API usage limits. Your spend limit is exhausted.",
            ),
            "other",
            1,
        ),
        // The spend limit by its error code, whatever the words.
        (
            Reply::json(
                429,
                json!({"type": "error", "request_id": "req_x",
                       "error": {"type": "rate_limit_error", "message": "Usage blocked.",
                                 "details": {"error_code": "enforced_spend_limit_reached"}}}),
            ),
            "other",
            1,
        ),
        (
            claude_error(529, "overloaded_error", "Overloaded"),
            "unavailable",
            2,
        ),
        (
            claude_error(500, "api_error", "Internal server error"),
            "unavailable",
            2,
        ),
        (
            claude_error(400, "invalid_request_error", "temperature: not supported"),
            "invalid_request",
            1,
        ),
        (
            claude_error(401, "authentication_error", "invalid x-api-key"),
            "unauthorized",
            1,
        ),
        (
            claude_error(403, "permission_error", "no access"),
            "unauthorized",
            1,
        ),
        // The server's x-should-retry decides first, as in the official SDKs.
        (
            claude_error(500, "api_error", "do not retry").header("x-should-retry", "false"),
            "other",
            1,
        ),
        (
            claude_error(400, "invalid_request_error", "try again")
                .header("x-should-retry", "true"),
            "unavailable",
            2,
        ),
    ];
    for (reply, kind, attempts) in cases {
        let reply = reply.header("retry-after", "0");
        api.reply(std::iter::repeat_n(reply, attempts as usize));
        let e = run_one(
            &daemon,
            queue.as_ref(),
            execution("claude", ChatInput::prompt("x"), 2),
        )
        .await;
        assert_eq!(e.status, Status::Failed);
        assert_eq!(e.error_kind.as_deref(), Some(kind), "{:?}", e.error);
        assert_eq!(
            e.attempts + e.rate_limited,
            attempts,
            "{kind}: retried only when retryable"
        );
    }

    // retry-after is honored, then the call succeeds.
    api.reply([
        claude_error(429, "rate_limit_error", "slow down").header("retry-after", "1"),
        claude_reply(),
    ]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("claude", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!(
        (e.status, e.attempts, e.rate_limited),
        (Status::Completed, 1, 1),
        "a 429 is not an attempt"
    );
    let waited = e.started_at.unwrap() - e.created_at;
    assert!(waited >= 1000, "retry-after: 1 honored, waited {waited} ms");

    // An overloaded answer that says when to come back is waited for as asked (it used to
    // be retried after the 10-20 ms backoff).
    api.reply([
        claude_error(529, "overloaded_error", "Overloaded").header("retry-after", "1"),
        claude_reply(),
    ]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("claude", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!((e.status, e.attempts), (Status::Completed, 2));
    let waited = e.started_at.unwrap() - e.created_at;
    assert!(
        waited >= 1000,
        "529 with retry-after: 1 honored, waited {waited} ms"
    );

    // The key appears nowhere: rows, status, the plugins report.
    let rows = serde_json::to_string(&queue.list(None).await.unwrap()).unwrap();
    assert!(!rows.contains("sk-ant-test-secret"));
    for args in [
        vec!["status", "--json"],
        vec!["plugins", "list", "--json"],
        vec!["limits", "--json"],
    ] {
        let out = env.lanes(&args);
        assert!(
            !stdout(&out).contains("sk-ant-test-secret")
                && !stderr(&out).contains("sk-ant-test-secret")
        );
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

fn openai_reply() -> Reply {
    Reply::json(
        200,
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                            "finish_reason": "content_filter", "logprobs": null}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}),
    )
}

fn openai_error(status: u16, code: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": {"message": format!("{code} happened"), "type": "requests", "param": null, "code": code}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_speaks_chat_completions() {
    let api = MockApi::start().await;
    let mut env = TestEnv::new();
    env.add_component("openai.wasm");
    // The key from an environment variable of the host, never visible to the component's env.
    // SAFETY: tests in this binary run in processes of their own under nextest.
    unsafe { std::env::set_var("LANES_TEST_OPENAI_KEY", "sk-openai-test") };
    let p = env.adapter("openai", "openai.wasm", &api.url(), "gpt-x");
    p.api_key_env = Some("LANES_TEST_OPENAI_KEY".into());
    // The operator's user-agent replaces lanes' own.
    p.user_agent = Some("acme-batch/2 (ops@example.com)".into());
    env.config.retry.base_ms = 10;
    // These tests map each answer to its class: one rate-limited retry, no breaker, and
    // waits as asked.
    env.config.policy = adapter_policy();
    let (daemon, queue) = env.start().await;

    api.reply([openai_reply()]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("openai", full_input(None), 1),
    )
    .await;
    assert_eq!(
        unpriced(e.output.unwrap(), "gpt-x"),
        json!({"text": "Hello!", "content": [{"type": "text", "text": "Hello!"}], "model": "gpt-x", "finish_reason": "content_filter",
               "usage": {"input_tokens": 9, "output_tokens": 2}})
    );
    let req = &api.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(req.header("authorization"), Some("Bearer sk-openai-test"));
    assert_eq!(
        req.header("user-agent"),
        Some("acme-batch/2 (ops@example.com)")
    );
    assert_eq!(
        req.body,
        json!({"model": "gpt-x", "max_completion_tokens": 50, "temperature": 0.2, "stop": ["END"],
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]})
    );

    // A 429 is rate-limited, waiting for x-ratelimit-reset-*; insufficient_quota is permanent.
    api.reply([
        openai_error(429, "rate_limit_exceeded").header("x-ratelimit-reset-requests", "1s"),
        openai_reply(),
    ]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("openai", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!(
        (e.status, e.attempts, e.rate_limited),
        (Status::Completed, 1, 1),
        "a 429 is not an attempt"
    );
    assert!(
        e.started_at.unwrap() - e.created_at >= 1000,
        "x-ratelimit-reset-requests honored"
    );
    // retry-after as an HTTP date (whole seconds): 2 s ahead means at least 1 s of waiting.
    let at = std::time::SystemTime::now() + Duration::from_secs(2);
    api.reply([
        openai_error(429, "rate_limit_exceeded")
            .header("retry-after", &httpdate::fmt_http_date(at)),
        openai_reply(),
    ]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("openai", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!(
        (e.status, e.attempts, e.rate_limited),
        (Status::Completed, 1, 1),
        "a 429 is not an attempt"
    );
    let waited = e.started_at.unwrap() - e.created_at;
    assert!(
        (1000..10_000).contains(&waited),
        "retry-after as an HTTP date honored, waited {waited} ms"
    );
    api.reply([openai_error(429, "insufficient_quota")]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("openai", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!(
        (e.status, e.attempts, e.error_kind.as_deref()),
        (Status::Failed, 1, Some("other"))
    );
    for (status, code, kind) in [
        (400, "invalid_value", "invalid_request"),
        (500, "server_error", "unavailable"),
    ] {
        api.reply([openai_error(status, code)]);
        let e = run_one(
            &daemon,
            queue.as_ref(),
            execution("openai", ChatInput::prompt("x"), 1),
        )
        .await;
        assert_eq!(e.error_kind.as_deref(), Some(kind), "{status}");
    }
    api.reply([openai_error(401, "invalid_api_key")]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("openai", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!(e.error_kind.as_deref(), Some("unauthorized"));
    assert!(!e.error.unwrap().contains("sk-openai-test"));
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_outside_the_allow_list_are_denied_and_named() {
    let api = MockApi::start().await;
    let mut env = TestEnv::new();
    env.add_component("ollama.wasm");
    env.adapter("ollama", "ollama.wasm", &api.url(), "llama3")
        .allowed_hosts = Some(vec!["api.example.com".into()]);
    let (daemon, queue) = env.start().await;
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!((e.status, e.attempts), (Status::Failed, 1));
    assert_eq!(e.error_kind.as_deref(), Some("denied"));
    let error = e.error.unwrap();
    assert!(
        error.contains(&format!("outbound request to {} denied", api.addr)),
        "{error}"
    );
    assert!(api.requests().is_empty(), "nothing reached the server");
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_cannot_read_host_files_or_environment() {
    let mut env = TestEnv::new();
    env.stub("probe", Some(1), &[]);
    let (daemon, queue) = env.start().await;
    let secret_file = env.dir.path().join("secret.txt");
    std::fs::write(&secret_file, "top secret").unwrap();
    // SAFETY: see openai_speaks_chat_completions.
    unsafe { std::env::set_var("LANES_TEST_SECRET_ENV", "top secret") };
    for extra in [
        json!({"probe_file": secret_file.to_str().unwrap()}),
        json!({"probe_file": "/etc/hostname"}),
        json!({"probe_env": "LANES_TEST_SECRET_ENV"}),
        json!({"probe_env": "PATH"}),
    ] {
        let e = run_one(
            &daemon,
            queue.as_ref(),
            execution("probe", ChatInput::prompt("x").with_extra(extra.clone()), 1),
        )
        .await;
        let text = e.output.unwrap()["text"].as_str().unwrap().to_string();
        assert!(text.contains("denied"), "{extra}: {text}");
        assert!(!text.contains("top secret"));
    }
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_hits_the_request_timeout() {
    let api = MockApi::start().await;
    let mut env = TestEnv::new();
    env.add_component("ollama.wasm");
    env.adapter("ollama", "ollama.wasm", &api.url(), "llama3")
        .request_timeout_ms = Some(500);
    let (daemon, queue) = env.start().await;
    api.reply([Reply::hang()]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", ChatInput::prompt("x"), 1),
    )
    .await;
    assert_eq!(e.status, Status::Failed);
    assert_eq!(
        e.error_kind.as_deref(),
        Some("unavailable"),
        "a timeout is transient"
    );
    assert!(e.error.unwrap().contains("timed out"));
    let took = e.finished_at.unwrap() - e.started_at.unwrap();
    assert!(
        (400..5000).contains(&took),
        "took {took} ms for a 500 ms timeout"
    );
    // Headers and half a body, then silence: the same timeout ends the attempt.
    let reply = ollama_reply("never finished");
    let half = reply.body.len() / 2;
    api.reply([reply.stall_after(half)]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", ChatInput::prompt("x"), 1),
    )
    .await;
    assert_eq!(
        e.error_kind.as_deref(),
        Some("unavailable"),
        "{:?}",
        e.error
    );
    let error = e.error.unwrap();
    assert!(
        error.contains("timed out") && error.contains("reading the body"),
        "{error}"
    );
    let took = e.finished_at.unwrap() - e.started_at.unwrap();
    assert!(
        (400..5000).contains(&took),
        "a stalled body took {took} ms for a 500 ms timeout"
    );
    // The lane keeps running.
    api.reply([ollama_reply("still here")]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", ChatInput::prompt("x"), 1),
    )
    .await;
    assert_eq!(e.output.unwrap()["text"], "still here");
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_over_the_cap_fail_the_attempt() {
    let api = MockApi::start().await;
    let mut env = TestEnv::new();
    env.add_component("ollama.wasm");
    env.adapter("ollama", "ollama.wasm", &api.url(), "llama3")
        .max_response_bytes = Some(1000);
    let (daemon, queue) = env.start().await;
    api.reply([ollama_reply(&"x".repeat(5000))]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", ChatInput::prompt("x"), 3),
    )
    .await;
    assert_eq!((e.status, e.attempts), (Status::Failed, 1), "not retried");
    let error = e.error.unwrap();
    assert!(
        error.contains("response too large")
            && error.contains("1000 bytes")
            && error.contains("max_response_bytes"),
        "{error}"
    );
    api.reply([ollama_reply("small")]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", ChatInput::prompt("x"), 1),
    )
    .await;
    assert_eq!(e.output.unwrap()["text"], "small");
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_from_one_component_with_pooled_connections() {
    let (a, b) = (MockApi::start().await, MockApi::start().await);
    a.fallback(|_| ollama_reply("from a"));
    b.fallback(|_| ollama_reply("from b"));
    let mut env = TestEnv::new();
    env.add_component("ollama.wasm");
    env.adapter("ollama-a", "ollama.wasm", &a.url(), "llama3")
        .limit = Some(1);
    env.adapter("ollama-b", "ollama.wasm", &b.url(), "qwen")
        .limit = Some(3);
    let (daemon, queue) = env.start().await;
    assert_eq!(
        (daemon.lanes()["ollama-a"].0, daemon.lanes()["ollama-b"].0),
        (1, 3)
    );
    for _ in 0..10 {
        let e = run_one(
            &daemon,
            queue.as_ref(),
            execution("ollama-a", ChatInput::prompt("x"), 1),
        )
        .await;
        assert_eq!(e.output.unwrap()["text"], "from a");
    }
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama-b", ChatInput::prompt("x"), 1),
    )
    .await;
    assert_eq!(e.output.unwrap()["text"], "from b");
    assert_eq!(a.requests().len(), 10);
    assert!(a.requests().iter().all(|r| r.body["model"] == "llama3"));
    assert_eq!(b.requests()[0].body["model"], "qwen");
    println!(
        "10 sequential executions opened {} connection(s)",
        a.connections()
    );
    assert!(
        a.connections() < 10,
        "executions reuse pooled connections: {}",
        a.connections()
    );
    daemon.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_logs() {
    let api = MockApi::start().await;
    api.fallback(|_| claude_error(401, "authentication_error", "invalid x-api-key"));
    let mut env = TestEnv::new();
    env.add_component("claude.wasm");
    env.adapter("claude", "claude.wasm", &api.url(), "claude-x")
        .api_key_env = Some("LANES_TEST_CLAUDE_KEY".into());
    let config = env.write_config();
    let log = std::fs::File::create(env.dir.path().join("serve.log")).unwrap();
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_lanes"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("LANES_TEST_CLAUDE_KEY", "sk-ant-never-logged")
        .env("RUST_LOG", "debug")
        .stderr(log)
        .spawn()
        .unwrap();
    let out = env.lanes(&[
        "submit",
        "--provider",
        "claude",
        "--input",
        r#"{"prompt": "x"}"#,
    ]);
    let id = stdout(&out).trim().to_string();
    let out = env.lanes(&["wait", &id, "--timeout", "20"]);
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        api.requests()[0].header("authorization"),
        Some("Bearer sk-ant-never-logged")
    );
    let log = env.serve_log();
    assert!(log.contains("unauthorized"), "{log}");
    assert!(
        !log.contains("sk-ant-never-logged"),
        "the key leaked into the log"
    );
    assert!(
        !stderr(&out).contains("sk-ant-never-logged")
            && !stdout(&out).contains("sk-ant-never-logged")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_base_url_is_allowed_by_its_own_default_entry() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: this machine has no IPv6 loopback ([::1])");
        return;
    }
    let api = MockApi::start_on("[::1]:0").await;
    assert!(api.url().starts_with("http://[::1]:"), "{}", api.url());
    let mut env = TestEnv::new();
    env.add_component("ollama.wasm");
    env.adapter("ollama", "ollama.wasm", &api.url(), "llama3");
    let (daemon, queue) = env.start().await;
    api.reply([ollama_reply("Hi over IPv6")]);
    let e = run_one(
        &daemon,
        queue.as_ref(),
        execution("ollama", full_input(None), 1),
    )
    .await;
    assert_eq!(e.status, Status::Completed, "{:?}", e.error);
    assert_eq!(e.output.unwrap()["text"], "Hi over IPv6");
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// `output` without its `cost` (the prices are `costs.rs`'s to check).
fn without_cost(mut output: serde_json::Value) -> serde_json::Value {
    if let Some(o) = output.as_object_mut() {
        o.remove("cost");
    }
    output
}

/// `output` without its `cost`, which must say that `model` has no price.
fn unpriced(output: serde_json::Value, model: &str) -> serde_json::Value {
    let why = output["cost"]["unpriced"].as_str().unwrap_or_default();
    assert!(
        why.starts_with(&format!("no price for model \"{model}\""))
            && output["cost"].get("usd").is_none(),
        "{output}"
    );
    without_cost(output)
}
