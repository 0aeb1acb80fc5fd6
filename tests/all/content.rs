//! The chat input and output contract: every 0.1 input shape still taken and stored as it
//! was, text parts reaching a 0.1 component, each bad field named (API 422, CLI error),
//! and an input that needs a capability its provider lacks refused at submission, from
//! the API and the CLI, with nothing queued. Every answer is checked against
//! `docs/openapi.json` (`replay.rs`), whose `input` and `output` are real schemas now.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use lanes::routes::{RouteConfig, Strategy};

use crate::api::{Api, problem, start};
use crate::support::*;

/// Submits `input` to `provider`, waits for its end, and gives the execution.
async fn run(api: &Api, provider: &str, input: Value) -> Value {
    let created = api
        .post(
            "/v1/executions",
            json!({"provider": provider, "input": input}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_i64().unwrap();
    let done = api.get(&format!("/v1/executions/{id}?wait=20s")).await;
    assert_eq!(done.body["status"], "completed", "{done:?}");
    done.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_shapes_are_stored_as_before_and_text_parts_reach_a_0_1_component() {
    let mut env = TestEnv::new();
    env.text_only("stub", Some(4));
    let (_daemon, _server, api) = start(&env).await;

    // Every 0.1 shape, and what is stored (and served) for it.
    let shapes = [
        (
            json!({"prompt": "hi"}),
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            json!({"prompt": "hi", "model": "m", "system": "s", "max_tokens": 5,
                   "temperature": 0.5, "stop": ["x"], "extra": {"k": 1}}),
            json!({"model": "m", "system": "s", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 5, "temperature": 0.5, "stop": ["x"], "extra": {"k": 1}}),
        ),
        (
            json!({"messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "a"},
                                {"role": "assistant", "content": "b"},
                                {"role": "user", "content": "hi"}]}),
            json!({"messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "a"},
                                {"role": "assistant", "content": "b"},
                                {"role": "user", "content": "hi"}]}),
        ),
    ];
    for (given, stored) in shapes {
        let done = run(&api, "stub", given).await;
        assert_eq!(done["input"], stored);
        let output = &done["output"];
        assert_eq!(output["text"], "wit-0-1-2 echoes: hi", "{output}");
        // A 0.1 component's answer: its text, and the same as one text part.
        assert_eq!(
            output["content"],
            json!([{"type": "text", "text": "wit-0-1-2 echoes: hi"}])
        );
        assert!(output["usage"]["input_tokens"].is_u64(), "{output}");
        assert!(
            output["usage"].get("cache_read_tokens").is_none(),
            "{output}"
        );
    }

    // New shapes that need no capability: text parts (joined by newlines for a 0.1
    // component), `tool_choice: "none"`, `parallel_tool_calls`, a text response format.
    let given = json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}],
        "tool_choice": "none",
        "parallel_tool_calls": false,
        "response_format": {"type": "text"}
    });
    let done = run(&api, "stub", given.clone()).await;
    assert_eq!(done["input"], given, "stored and served unchanged");
    assert_eq!(done["output"]["text"], "wit-0-1-2 echoes: first\nsecond");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fields_are_named_and_rich_input_is_refused_at_submit() {
    let mut env = TestEnv::new();
    env.text_only("stub", Some(4));
    env.text_only("other", Some(4));
    env.config.api.max_image_bytes = 4;
    env.config.routes.insert(
        "both".into(),
        RouteConfig {
            providers: vec!["stub".into(), "other".into()],
            strategy: Strategy::Ordered,
        },
    );
    let (daemon, _server, api) = start(&env).await;
    let queue = daemon.queue().clone();

    let call = json!({"role": "assistant", "content": [
        {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": "{}"}]});
    let bad = [
        (
            json!({"prompt": "x", "tools": [{"name": "get weather"}]}),
            "tools[0].name",
        ),
        (
            json!({"prompt": "x", "tools": [{"name": "f", "parameters": "{}"}]}),
            "tools[0].parameters",
        ),
        (
            json!({"prompt": "x", "tools": [{"name": "f"}], "tool_choice": {"name": "g"}}),
            "tool_choice",
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "json_schema", "name": "s",
                   "schema": {"type": 12}}}),
            "response_format.schema",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "image", "data": "%%%", "media_type": "image/png"}]}]}),
            "messages[0].content[0].data",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "image", "data": "AAAAAAAA", "media_type": "image/png"}]}]}),
            "messages[0].content[0].data",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "image", "data": "AAAA", "media_type": "image/bmp"}]}]}),
            "messages[0].content[0].media_type",
        ),
        (
            json!({"messages": [call.clone(), {"role": "tool", "content": [
                {"type": "tool_result", "call_id": "call_2", "content": "18C"}]}]}),
            "messages[1].content[0].call_id",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "sound"}]}]}),
            "messages[0].content[0].type",
        ),
    ];
    for (input, field) in &bad {
        let answer = api
            .post(
                "/v1/executions",
                json!({"provider": "stub", "input": input}),
            )
            .await;
        problem(&answer, 422, &format!("`{field}`"));
        let out = env.lanes(&[
            "submit",
            "--provider",
            "stub",
            "--input",
            &input.to_string(),
        ]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(&format!("`{field}`")), "{input}: {err}");
    }

    // Valid, but each needs a capability no 0.1 component has: refused at submission,
    // naming the capability and the provider (or the route's members).
    let png = "iVBO";
    let rich = [
        (
            json!({"prompt": "x", "tools": [{"name": "get_weather",
                "parameters": {"type": "object"}}]}),
            "tools",
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "json_object"}}),
            "json_schema",
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "json_schema", "name": "w",
                   "schema": {"type": "object"}, "strict": true}}),
            "json_schema",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image", "data": png, "media_type": "image/png"}]}]}),
            "images",
        ),
        (
            json!({"prompt": "x", "reasoning": {"effort": "high"}}),
            "reasoning",
        ),
        (
            json!({"messages": [
                {"role": "user", "content": "Weather in Paris?"},
                call,
                {"role": "tool", "content": [
                    {"type": "tool_result", "call_id": "call_1", "content": "18C"}]}]}),
            "tools",
        ),
        (json!({"prompt": "x", "seed": 3}), "sampling"),
    ];
    for (input, capability) in &rich {
        let needle = format!("the `{capability}` capability");
        let answer = api
            .post(
                "/v1/executions",
                json!({"provider": "stub", "input": input}),
            )
            .await;
        problem(&answer, 422, &needle);
        problem(&answer, 422, "provider `stub`");
        let answer = api
            .post(
                "/v1/executions",
                json!({"provider": "both", "input": input}),
            )
            .await;
        problem(&answer, 422, "no member of route `both` (stub, other)");
        let answer = api
            .post(
                "/v1/executions:batch",
                json!({"executions": [
                    {"provider": "stub", "input": {"prompt": "fine"}},
                    {"provider": "stub", "input": input}]}),
            )
            .await;
        problem(&answer, 422, &needle);
        for provider in ["stub", "both"] {
            let out = env.lanes(&[
                "submit",
                "--provider",
                provider,
                "--input",
                &input.to_string(),
            ]);
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(err.contains(&needle), "{input}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
    }

    // Nothing of it was queued.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(queue.list(None).await.unwrap().is_empty());

    // A provider no component serves here may be served by one that takes it (0.2, or on
    // another host of the fleet): its work waits for it.
    let answer = api
        .post(
            "/v1/executions",
            json!({"provider": "nobody", "allow_unknown": true, "input": rich[0].0}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
}

/// Work that needs a capability and reaches a worker anyway (queued before the check, or
/// for a component since replaced) fails when claimed, naming it, and never runs without
/// it. Read back through the API, its rich input validates against the document's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_work_that_reaches_a_0_1_component_fails_when_claimed_naming_the_capability() {
    let mut env = TestEnv::new();
    env.text_only("stub", Some(4));
    let (daemon, _server, api) = start(&env).await;
    let queue = daemon.queue().clone();
    let input = json!({
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather where this was taken?"},
                {"type": "image", "data": "iVBO", "media_type": "image/png"},
                {"type": "image", "url": "https://example.com/a.jpg"}]},
            {"role": "assistant", "content": [
                {"type": "reasoning", "text": "Paris, by the tower.", "signature": "c2ln"},
                {"type": "tool_call", "id": "call_1", "name": "get_weather",
                 "arguments": "{\"city\":\"Paris\"}"}]},
            {"role": "tool", "content": [
                {"type": "tool_result", "call_id": "call_1", "is_error": false,
                 "content": [{"type": "text", "text": "18C"}]}]}],
        "tools": [{"name": "get_weather", "description": "Weather of a city", "strict": true,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "response_format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}},
        "reasoning": {"budget_tokens": 2048},
        "top_p": 0.9,
        "seed": 1
    });
    let id = queue
        .submit(&lanes::NewExecution {
            tenant: None,
            cache: None,
            provider: "stub".into(),
            input: lanes::ChatInput::from_value(input.clone()).unwrap(),
            priority: 0,
            max_attempts: 3,
            route: None,
            defer: Default::default(),
        })
        .await
        .unwrap();
    let done = api.get(&format!("/v1/executions/{id}?wait=20s")).await;
    assert_eq!(done.body["status"], "failed", "{done:?}");
    assert_eq!(done.body["error_kind"], "bad_input");
    assert_eq!(
        done.body["attempts"], 1,
        "one attempt, refused before any call"
    );
    let error = done.body["error"].as_str().unwrap();
    assert!(
        error.contains("`tools` needs the `tools` capability")
            && error.contains("the `images` capability"),
        "{error}"
    );
    assert_eq!(done.body["input"], input, "stored unchanged");

    // `lanes submit --file` holds its lines to the same check.
    let file = env.dir.path().join("rich.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n",
            json!({"custom_id": "a", "input": {"prompt": "x", "reasoning": {"effort": "low"}}})
        ),
    )
    .unwrap();
    let out = env.lanes(&[
        "submit",
        "--provider",
        "stub",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the `reasoning` capability"), "{err}");
    assert_eq!(
        queue.list(None).await.unwrap().len(),
        1,
        "nothing more queued"
    );
}

/// A route sends work only to members whose component takes what it needs: a tool call
/// skips the text-only first member of an ordered route, plain text does not, and the CLI
/// and a JSONL load route the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_skips_members_without_the_capability() {
    let mut env = TestEnv::new();
    env.text_only("plain", Some(4));
    env.stub("rich", Some(4), &[]);
    env.config.routes.insert(
        "chat".into(),
        RouteConfig {
            providers: vec!["plain".into(), "rich".into()],
            strategy: Strategy::Ordered,
        },
    );
    let (_daemon, _server, api) = start(&env).await;
    let tools = json!({"messages": [{"role": "user", "content": "call:get_weather {}"}],
                       "tools": [{"name": "get_weather"}]});
    for (input, member, text) in [
        (tools.clone(), "rich", ""),
        (json!({"prompt": "hi"}), "plain", "wit-0-1-2 echoes: hi"),
    ] {
        let done = run(&api, "chat", input).await;
        assert_eq!(done["provider"], member, "{done}");
        assert_eq!(done["route"], "chat");
        assert_eq!(done["output"]["text"], text);
    }
    let out = env.lanes(&[
        "submit",
        "--provider",
        "chat",
        "--input",
        &tools.to_string(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = serde_json::from_str::<Value>(&stdout(&out)).unwrap()["id"]
        .as_i64()
        .unwrap();
    let done = api.get(&format!("/v1/executions/{id}?wait=20s")).await;
    assert_eq!(done.body["provider"], "rich", "{done:?}");
    assert_eq!(done.body["status"], "completed", "{done:?}");
}

/// An image of a media type its provider's component does not take (Ollama's adapter takes
/// PNG and JPEG) is refused at submission, the field and the types it takes named; one it
/// takes is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_type_the_component_does_not_take_is_refused_at_submit() {
    let mut env = TestEnv::new();
    env.adapter("ol", "ollama.wasm", "http://127.0.0.1:9", "m");
    env.add_component("ollama.wasm");
    let (_daemon, _server, api) = start(&env).await;
    let image = |media_type: &str| {
        json!({"provider": "ol", "input": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is it?"},
            {"type": "image", "data": "R0lGODlh", "media_type": media_type}]}]}})
    };
    let answer = api.post("/v1/executions", image("image/gif")).await;
    problem(&answer, 422, "`messages[0].content[1].media_type`");
    problem(&answer, 422, "image/png, image/jpeg");
    let answer = api.post("/v1/executions", image("image/png")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
}
