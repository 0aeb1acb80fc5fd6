//! The plugin author kit: the templates (Rust, Python, JavaScript) written by `lanes plugins
//! new` and built fresh by `scripts/build-kit`, the Python and JavaScript examples, and the
//! built-in adapters all pass `plugins check` and the conformance suite, its checks of what a
//! 0.2 component declares beyond text (tools, JSON schemas, images, streaming) included; a
//! component that does not behave, or declares what it does not map, fails it; the Python
//! and JavaScript examples run executions in a daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use lanes::model::{ChatInput, ChatMessage, NewExecution, Role, Status};
use serde_json::json;

use crate::mock::{MockApi, Reply};
use crate::support::*;

/// The folder of kit components. `scripts/test` builds them once per run and sets
/// `LANES_TEST_KIT`; without it, the first test that needs them runs the build.
fn kit_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LANES_TEST_KIT") {
            return PathBuf::from(dir);
        }
        let root = repo_root();
        let out = root.join("target/kit");
        std::fs::create_dir_all(&out).expect("creating target/kit");
        // nextest runs each test in a process of its own, so the `OnceLock` alone would let
        // two kit tests build into the same folder at once (one's `npm install` removing
        // what the other's is about to run). The lock makes them take turns, and the run's
        // id lets the second use what the first built.
        let lock = std::fs::File::create(out.join(".lock")).expect("creating target/kit/.lock");
        lock.lock().expect("locking target/kit/.lock");
        let stamp = out.join(".built-for-run");
        let run = std::env::var("NEXTEST_RUN_ID").ok();
        if run.is_some() && std::fs::read_to_string(&stamp).ok() == run {
            return out;
        }
        let status = Command::new("bash")
            .arg(root.join("scripts/build-kit"))
            .arg(env!("CARGO_BIN_EXE_lanes"))
            .arg(&out)
            .status()
            .expect("running scripts/build-kit");
        assert!(status.success(), "scripts/build-kit failed");
        if let Some(run) = run {
            std::fs::write(&stamp, run).expect("writing target/kit/.built-for-run");
        }
        out
    })
}

fn kit(name: &str) -> PathBuf {
    let path = kit_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn lanes(args: &[&str]) -> std::process::Output {
    let env = TestEnv::new();
    env.lanes(args)
}

/// The suite's rows for what a 0.2 component declares beyond text, with the capability each
/// needs.
const FEATURE_ROWS: [(&str, &str); 6] = [
    ("tool call", "tools"),
    ("tool result", "tools"),
    ("JSON schema", "json_schema"),
    ("image", "images"),
    ("image URL", "image_urls"),
    ("stream", "streaming"),
];

/// The verdict of each row of a `plugins test --json` report, by name.
fn verdicts(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_template_example_and_builtin_passes_check_and_the_suite() {
    let mut files: Vec<PathBuf> = [
        "rs-template.wasm",
        "py-template.wasm",
        "js-template.wasm",
        "ollama-py.wasm",
        "claude-js.wasm",
    ]
    .iter()
    .map(|f| kit(f))
    .collect();
    files.extend(["ollama.wasm", "claude.wasm", "openai.wasm"].map(component));
    // One thread per component: most of a run is the stalled-body case's wait.
    let runs: Vec<_> = files
        .into_iter()
        .map(|file| {
            std::thread::spawn(move || {
                let path = file.to_str().unwrap().to_string();
                let check = lanes(&["plugins", "check", &path]);
                let test = lanes(&["plugins", "test", &path, "--calls", "3", "--json"]);
                (path, check, test)
            })
        })
        .collect();
    for run in runs {
        let (path, check, test) = run.join().unwrap();
        assert!(check.status.success(), "check {path}: {}", stderr(&check));
        let report: serde_json::Value = serde_json::from_str(&stdout(&test))
            .unwrap_or_else(|e| panic!("{path}: {e}: {}{}", stdout(&test), stderr(&test)));
        let failed: Vec<_> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["verdict"] == "fail")
            .collect();
        assert!(
            test.status.success() && failed.is_empty(),
            "{path}: {failed:#?}"
        );
        let names: Vec<&str> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for expected in [
            "info",
            "success",
            "request",
            "HTTP 400",
            "HTTP 401",
            "HTTP 403",
            "HTTP 429 retry-after",
            "HTTP 429",
            "HTTP 500",
            "HTTP 503 retry-after",
            "HTTP 529",
            "stalled body",
            "non-JSON body",
            "connection refused",
            "cost",
            "allowed hosts",
            "secrets",
        ]
        .into_iter()
        .chain(FEATURE_ROWS.map(|(row, _)| row))
        {
            assert!(
                names.contains(&expected),
                "{path}: no check {expected}: {names:?}"
            );
        }
        // A capability's rows pass when the component declares it and are skipped when not.
        let declared: Vec<&str> = report["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let verdicts = verdicts(&report);
        for (row, capability) in FEATURE_ROWS {
            let expected = if declared.contains(&capability) {
                "pass"
            } else {
                "skip"
            };
            assert_eq!(verdicts[row], expected, "{path}: {row} ({declared:?})");
        }
        // The templates declare nothing; the examples map, and declare, what their API takes.
        let file = Path::new(&path).file_name().unwrap().to_str().unwrap();
        let expected: &[&str] = match file {
            "rs-template.wasm" | "py-template.wasm" | "js-template.wasm" => &["sampling"],
            "ollama-py.wasm" => &[
                "tools",
                "json_schema",
                "images",
                "reasoning",
                "sampling",
                "streaming",
            ],
            "claude-js.wasm" => &[
                "tools",
                "json_schema",
                "images",
                "image_urls",
                "reasoning",
                "sampling",
                "streaming",
            ],
            _ => &declared,
        };
        assert_eq!(declared, expected, "{path}");
        assert!(
            report["cost"]["memory_peak_bytes"].as_u64().unwrap() > 0,
            "{path}"
        );
        eprintln!(
            "{}: {} bytes, call p50 {} ms, memory {} bytes",
            path,
            report["cost"]["component_bytes"],
            report["cost"]["call_ms_p50"],
            report["cost"]["memory_peak_bytes"]
        );
    }
}

#[test]
fn the_suite_fails_a_component_that_does_not_behave_and_says_why() {
    // The stub speaks no HTTP: nothing reaches the server.
    let stub = component("stub.wasm");
    let out = lanes(&["plugins", "test", stub.to_str().unwrap(), "--calls", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let table = stdout(&out);
    assert!(table.contains("FAIL  success"), "{table}");
    assert!(table.contains("no request reached the server"), "{table}");
    assert!(table.contains("failed"), "{table}");

    // An API the suite does not know needs the author's reply; a wrong expectation fails.
    let dir = tempfile::tempdir().unwrap();
    let reply = dir.path().join("reply.json");
    std::fs::write(
        &reply,
        json!({"body": {"model": "m", "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
               "expect": {"text": "Not this", "input_tokens": 1, "output_tokens": 2, "finish_reason": "stop"}})
        .to_string(),
    )
    .unwrap();
    let openai = component("openai.wasm");
    let out = lanes(&[
        "plugins",
        "test",
        openai.to_str().unwrap(),
        "--reply",
        reply.to_str().unwrap(),
        "--calls",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("expected Expected { text: \"Not this\""),
        "{}",
        stdout(&out)
    );

    // A reply file that is not one says so in one line.
    std::fs::write(&reply, "{\"body\": 1}").unwrap();
    let out = lanes(&[
        "plugins",
        "test",
        openai.to_str().unwrap(),
        "--reply",
        reply.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("reply file") && err.contains("expect"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn the_suite_fails_a_component_that_declares_what_it_does_not_map() {
    // The Python template with `capabilities = ["tools", "streaming"]` and nothing mapped.
    let file = kit("py-overclaims.wasm");
    let out = lanes(&[
        "plugins",
        "test",
        file.to_str().unwrap(),
        "--calls",
        "1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let detail = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| {
                (
                    c["verdict"].as_str().unwrap().to_string(),
                    c["detail"].to_string(),
                )
            })
            .unwrap()
    };
    let (verdict, why) = detail("tool call");
    assert_eq!(verdict, "fail");
    assert!(why.contains("does not offer `get_weather`"), "{why}");
    let (verdict, why) = detail("tool result");
    assert_eq!(verdict, "fail");
    assert!(why.contains("no tool call to answer"), "{why}");
    let (verdict, why) = detail("stream");
    assert_eq!(verdict, "fail");
    assert!(why.contains("did not ask to stream"), "{why}");
    for row in ["JSON schema", "image", "image URL"] {
        let (verdict, why) = detail(row);
        assert_eq!(verdict, "skip", "{row}");
        assert!(why.contains("not declared"), "{row}: {why}");
    }
    // Everything else still passes, and the table says what was skipped.
    let verdicts = verdicts(&report);
    let failed: Vec<_> = verdicts.iter().filter(|(_, v)| *v == "fail").collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    let out = lanes(&["plugins", "test", file.to_str().unwrap(), "--calls", "1"]);
    let table = stdout(&out);
    assert!(
        table.contains("(wit 0.2, declares tools, streaming)"),
        "{table}"
    );
    assert!(table.contains("skip  JSON schema"), "{table}");
    assert!(table.contains("3 skipped, 3 failed"), "{table}");
}

#[test]
fn plugins_new_refuses_a_bad_name_and_a_used_folder() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("p");
    let t = target.to_str().unwrap();
    let out = lanes(&["plugins", "new", "Bad Name", "--lang", "python", "--dir", t]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Bad Name"), "{}", stderr(&out));
    let out = lanes(&["plugins", "new", "fine", "--lang", "js", "--dir", t]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("npm install && npm run build"),
        "{}",
        stdout(&out)
    );
    assert!(target.join("app.js").is_file() && target.join("wit/provider.wit").is_file());
    let out = lanes(&["plugins", "new", "fine", "--lang", "js", "--dir", t]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
}

fn input(text: &str) -> ChatInput {
    ChatInput {
        model: None,
        system: Some("Be brief.".into()),
        messages: vec![ChatMessage {
            role: Role::User,
            content: text.into(),
        }],
        max_tokens: Some(20),
        temperature: None,
        stop: vec![],
        extra: Some(
            json!({"options": {"num_ctx": 8192}})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..ChatInput::prompt("")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_js_providers_run_executions_in_a_daemon() {
    let ollama = MockApi::start().await;
    let anthropic = MockApi::start().await;
    ollama.fallback(|r| {
        let prompt = r.body["messages"][1]["content"].as_str().unwrap_or("").to_string();
        Reply::json(
            200,
            json!({"model": "llama3", "message": {"role": "assistant", "content": format!("py: {prompt}")},
                   "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 2}),
        )
    });
    anthropic.fallback(|r| {
        let prompt = r.body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Reply::json(
            200,
            json!({"id": "m", "type": "message", "role": "assistant", "model": "claude-x",
                   "content": [{"type": "text", "text": format!("js: {prompt}")}],
                   "stop_reason": "end_turn", "usage": {"input_tokens": 6, "output_tokens": 3}}),
        )
    });
    let mut env = TestEnv::new();
    for file in ["ollama-py.wasm", "claude-js.wasm"] {
        std::fs::copy(kit(file), env.plugins().join(file)).unwrap();
    }
    env.adapter("ollama-py", "ollama-py.wasm", &ollama.url(), "llama3");
    let claude = env.adapter("claude-js", "claude-js.wasm", &anthropic.url(), "claude-x");
    let key_var = "LANES_KIT_TEST_CLAUDE_KEY";
    // SAFETY: set once, before the daemon reads it; no other test reads this variable.
    unsafe { std::env::set_var(key_var, "sk-kit-test-0123456789") };
    claude.api_key_env = Some(key_var.into());
    let (daemon, queue) = env.start().await;

    let mut ids = Vec::new();
    for i in 0..6 {
        for provider in ["ollama-py", "claude-js"] {
            let id = daemon
                .submit(&NewExecution {
                    tenant: None,
                    cache: None,
                    provider: provider.into(),
                    input: input(&format!("hello {i}")),
                    priority: 0,
                    max_attempts: 3,
                    route: None,
                    defer: Default::default(),
                })
                .await
                .unwrap();
            ids.push((id, provider, i));
        }
    }
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(120),
        "every execution to end",
        |rows| rows.len() == ids.len() && rows.iter().all(|e| e.status.is_terminal()),
    )
    .await;
    for (id, provider, i) in ids {
        let e = rows.iter().find(|e| e.id == id).unwrap();
        assert_eq!(e.status, Status::Completed, "{provider}: {:?}", e.error);
        let out = e.output.as_ref().unwrap();
        let tag = if provider == "ollama-py" { "py" } else { "js" };
        assert_eq!(out["text"], format!("{tag}: hello {i}"), "{out}");
        assert_eq!(out["finish_reason"], "stop");
    }
    // The Python provider merged `extra` deeply and sent what Ollama expects.
    let sent = &ollama.requests()[0];
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(
        sent.body["options"],
        json!({"num_predict": 20, "num_ctx": 8192})
    );
    assert_eq!(sent.body["stream"], json!(false));
    // The JS provider sent the key and the version header Anthropic requires.
    let sent = &anthropic.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-kit-test-0123456789"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["max_tokens"], 20);

    // An error class from each: a 429 with retry-after is retried after the wait.
    anthropic.reply([Reply::json(
        429,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
    )
    .header("retry-after", "1")]);
    let started = std::time::Instant::now();
    let id = daemon
        .submit(&NewExecution {
            tenant: None,
            cache: None,
            provider: "claude-js".into(),
            input: input("again"),
            priority: 0,
            max_attempts: 3,
            route: None,
            defer: Default::default(),
        })
        .await
        .unwrap();
    let rows = wait_until(
        queue.as_ref(),
        None,
        Duration::from_secs(60),
        "the rate-limited execution to end",
        |rows| rows.iter().any(|e| e.id == id && e.status.is_terminal()),
    )
    .await;
    let e = rows.iter().find(|e| e.id == id).unwrap();
    assert_eq!(e.status, Status::Completed, "{:?}", e.error);
    assert_eq!(e.rate_limited, 1, "{e:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}
