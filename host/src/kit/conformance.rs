//! `lanes plugins test FILE`: runs a component against a scripted local server and checks
//! what every provider must do: a valid `info`, a success mapped, each error class mapped,
//! requests only to the configured host, no secret in an error, and the cost of a call; and
//! for a 0.2 component, what it declares beyond text (`features.rs`): tool calls and
//! results, JSON schemas, images and streaming. A capability it does not declare is
//! skipped, not failed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::features::Api;
use super::server::{Reply, Scripted};
use crate::attempt::classify;
use crate::config::{Config, ConfigValue};
use crate::model::{Capabilities, Capability, ChatInput, ChatOutput, ErrorKind};
use crate::plugin::{CallCost, DeltaSink, ExecError, PluginHost, Provider};

/// The success reply the server gives and what the component must make of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessReply {
    /// The HTTP status (default 200).
    #[serde(default = "ok")]
    pub status: u16,
    /// The JSON body of the API's success reply.
    pub body: serde_json::Value,
    /// What the component must return for it.
    pub expect: Expected,
}

fn ok() -> u16 {
    200
}

/// The response a component must map a success reply to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub text: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub finish_reason: String,
}

/// The text of the success reply (and of the streamed one).
pub const SUCCESS_TEXT: &str = "Hello from the conformance server.";

/// The success reply of the APIs lanes knows, by request path: OpenAI's Chat Completions
/// (and the many servers that speak it), Anthropic's Messages and Ollama's chat.
pub fn known_reply(path: &str) -> Option<SuccessReply> {
    let api = Api::of(path)?;
    Some(SuccessReply {
        status: 200,
        body: api.text_reply(SUCCESS_TEXT, true),
        expect: Expected {
            text: SUCCESS_TEXT.into(),
            input_tokens: 11,
            output_tokens: 7,
            finish_reason: "length".into(),
        },
    })
}

/// What `lanes plugins test` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Config values the component sees, over `base_url` (which points at the server).
    /// `{server}` in a value stands for the server's base URL.
    pub values: Vec<(String, String)>,
    /// Secrets, over the canary `api-key` the suite sets.
    pub secrets: Vec<(String, String)>,
    /// The author's success reply, for an API the suite does not know.
    pub reply: Option<SuccessReply>,
    /// How many successful calls to time.
    pub timed_calls: usize,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not run: the component does not declare what it checks.
    Skip,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    pub provider: Option<String>,
    /// The lanes:provider version it was built against (`0.1` or `0.2`).
    pub wit: Option<&'static str>,
    /// What it declares beyond text.
    pub capabilities: Option<Capabilities>,
    pub checks: Vec<Check>,
    /// Per-call figures of the successful calls.
    pub cost: Option<Cost>,
}

/// What a successful call cost.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub component_bytes: u64,
    pub calls: usize,
    /// Instantiate + execute, median and slowest, in ms.
    pub call_ms_p50: f64,
    pub call_ms_max: f64,
    pub cpu_ms_max: u64,
    pub memory_peak_bytes: usize,
    pub memory_cap_bytes: usize,
    pub cpu_cap_ms: u64,
}

impl Report {
    /// Whether every check passed or was skipped.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.verdict != Verdict::Fail)
    }

    /// The report as a table for a terminal.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(5);
        // Sampling (`top_p`, `seed`) comes with every 0.2 component: it is not declared.
        let declared: Vec<&str> = self
            .capabilities
            .map(|c| c.list())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| *c != Capability::Sampling)
            .map(Capability::as_str)
            .collect();
        let takes = match self.wit {
            Some(wit) if declared.is_empty() => format!(" (wit {wit}, text only)"),
            Some(wit) => format!(" (wit {wit}, declares {})", declared.join(", ")),
            None => String::new(),
        };
        let mut out = format!(
            "{}: provider {}{takes}\n",
            self.file,
            self.provider.as_deref().unwrap_or("?")
        );
        for c in &self.checks {
            let verdict = match c.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            out.push_str(&format!("  {verdict}  {:width$}  {}\n", c.name, c.detail));
        }
        let count = |v: Verdict| self.checks.iter().filter(|c| c.verdict == v).count();
        let skipped = match count(Verdict::Skip) {
            0 => String::new(),
            n => format!(", {n} skipped"),
        };
        out.push_str(&format!(
            "{} checks, {} passed{skipped}, {} failed\n",
            self.checks.len(),
            count(Verdict::Pass),
            count(Verdict::Fail)
        ));
        out
    }
}

/// The request every case sends.
fn request() -> ChatInput {
    ChatInput {
        model: Some("conformance-model".into()),
        system: Some("You answer in one short sentence.".into()),
        max_tokens: Some(16),
        temperature: Some(0.5),
        ..ChatInput::prompt("Say hello to the conformance suite.")
    }
}

/// One call's outcome: the error as the component made it, the wait it told the host.
pub(super) struct Call {
    pub(super) result: Result<ChatOutput, ExecError>,
    elapsed: Duration,
    cost: CallCost,
}

async fn call(provider: &Provider) -> Call {
    call_with(provider, &request(), false, None)
        .await
        .expect("a text request")
}

/// One call of `input`, streamed to `deltas` when `stream`; an error when the host would
/// not hand the input to the component.
pub(super) async fn call_with(
    provider: &Provider,
    input: &ChatInput,
    stream: bool,
    deltas: Option<DeltaSink>,
) -> Result<Call, String> {
    let request = provider.request(input, stream)?;
    let started = Instant::now();
    let (result, cost) = provider.execute_measured(request, deltas).await;
    Ok(Call {
        result,
        elapsed: started.elapsed(),
        cost,
    })
}

/// What a call ended as, in one phrase.
pub(super) fn said(result: &Result<ChatOutput, ExecError>) -> String {
    match result {
        Ok(r) => format!("success ({:?})", r.text),
        Err(e) => {
            let (kind, _) = classify(e);
            let text: String = e.to_string().chars().take(160).collect();
            format!("{kind}: {text}")
        }
    }
}

fn kind_of(result: &Result<ChatOutput, ExecError>) -> Option<ErrorKind> {
    result.as_ref().err().map(|e| classify(e).0)
}

/// The canary secret: unique per run, so that finding it anywhere is proof of an echo.
fn canary() -> String {
    format!("sk-lanes-conformance-{:016x}", rand::random::<u64>())
}

/// Runs the suite against `file` under `config`'s engine and sandbox settings.
pub async fn run(config: &Config, file: &Path, options: Options) -> anyhow::Result<Report> {
    let mut report = Report {
        file: crate::plugin::file_name(file),
        provider: None,
        wit: None,
        capabilities: None,
        checks: Vec::new(),
        cost: None,
    };
    let checks = std::cell::RefCell::new(Vec::new());
    let record = |name: &str, verdict: Verdict, detail: String| {
        checks.borrow_mut().push(Check {
            name: name.to_string(),
            verdict,
            detail,
        });
    };
    let check = |name: &str, pass: bool, detail: String| {
        let verdict = if pass { Verdict::Pass } else { Verdict::Fail };
        record(name, verdict, detail)
    };
    let host = PluginHost::new(config)?;
    let component = match host.load(file).await {
        Ok(component) => Arc::new(component),
        Err(e) => {
            check("load", false, e.to_string());
            report.checks = checks.into_inner();
            return Ok(report);
        }
    };
    let info = component.info.clone();
    let version_ok = semver_like(&info.version);
    check(
        "info",
        version_ok,
        format!(
            "name `{}`, version {}{}, default limit {}",
            info.name,
            info.version,
            if version_ok {
                ""
            } else {
                " (not MAJOR.MINOR.PATCH)"
            },
            info.default_limit
        ),
    );

    let secret = canary();
    let server = Scripted::start(secret.clone()).await?;
    let bind = |base_url: String| {
        let mut config = config.clone();
        let entry = config.providers.entry(info.name.clone()).or_default();
        let mut values: BTreeMap<String, ConfigValue> = BTreeMap::new();
        values.insert("base_url".into(), ConfigValue::String(base_url.clone()));
        for (k, v) in &options.values {
            values.insert(
                k.clone(),
                ConfigValue::String(v.replace("{server}", &base_url)),
            );
        }
        entry.config = values;
        entry.base_url = Some(base_url);
        entry.allowed_hosts = None;
        // A stalled body must end in seconds, not the default minutes.
        entry.request_timeout_ms = Some(entry.request_timeout_ms.unwrap_or(2_000).min(5_000));
        entry.api_key_env = None;
        entry.api_key_file = None;
        config
    };
    let secrets: BTreeMap<String, String> =
        std::iter::once(("api-key".to_string(), secret.clone()))
            .chain(options.secrets.iter().cloned())
            .collect();
    let mut provider = host
        .bind(&bind(server.url()), &info.name, component.clone())
        .await?;
    provider.view.secrets = Arc::new(secrets.clone());

    let mut denied = Vec::new();
    let mut echoed = Vec::new();
    let mut hosts = Vec::new();
    let own_reply = options.reply.map(Arc::new);
    let mut note = |name: &str, call: &Call, seen: &[super::server::Seen]| {
        if let Err(e) = &call.result {
            if let ExecError::Denied { target, .. } = e {
                denied.push(format!("{name}: {target}"));
            }
            if e.to_string().contains(secret.as_str()) {
                echoed.push(name.to_string());
            }
        }
        for s in seen {
            if s.host.as_deref() != Some(server.addr.to_string().as_str()) {
                hosts.push(format!("{name}: host {:?}", s.host));
            }
        }
    };

    // Success.
    server.set(Reply::Success(own_reply.clone()));
    let first = call(&provider).await;
    let seen = server.seen();
    note("success", &first, &seen);
    let expected = own_reply.as_ref().map(|r| r.expect.clone()).or_else(|| {
        seen.first()
            .and_then(|s| known_reply(&s.path))
            .map(|r| r.expect)
    });
    match (&first.result, &expected, seen.first()) {
        (_, _, None) => check(
            "success",
            false,
            format!("no request reached the server ({})", said(&first.result)),
        ),
        (_, None, Some(s)) => check(
            "success",
            false,
            format!(
                "{} {}: an API the suite does not know; pass --reply FILE with its success reply",
                s.method, s.path
            ),
        ),
        (Ok(response), Some(expected), Some(s)) => {
            let output = response.clone();
            let got = Expected {
                text: output.text,
                input_tokens: output.usage.input_tokens,
                output_tokens: output.usage.output_tokens,
                finish_reason: output.finish_reason,
            };
            check(
                "success",
                &got == expected,
                if &got == expected {
                    format!(
                        "{} {}: text, usage {}/{} and finish reason `{}` mapped",
                        s.method, s.path, got.input_tokens, got.output_tokens, got.finish_reason
                    )
                } else {
                    format!("expected {expected:?}, got {got:?}")
                },
            );
        }
        (Err(_), Some(_), Some(s)) => check(
            "success",
            false,
            format!("{} {}: {}", s.method, s.path, said(&first.result)),
        ),
    }
    if let Some(s) = seen.first() {
        let sent_prompt = String::from_utf8_lossy(&s.body).contains("conformance suite");
        let length = s
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        check(
            "request",
            sent_prompt && !s.chunked,
            match (sent_prompt, length || !s.chunked) {
                (true, true) => format!(
                    "{} {} with the prompt, a content-length and user-agent {:?}",
                    s.method,
                    s.path,
                    s.headers
                        .iter()
                        .find(|(n, _)| n == "user-agent")
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("none")
                ),
                (false, _) => "the request body does not hold the user's message".to_string(),
                (true, false) => "the body was sent chunked: send a content-length".to_string(),
            },
        );
    }

    // What a 0.2 component declares beyond text, in the wire format of the API it spoke.
    let api = match (&own_reply, seen.first()) {
        (Some(_), _) => Err(
            "`--reply` stands for an API whose wire format the suite does \
                             not speak"
                .to_string(),
        ),
        (None, None) => Err("no request reached the server in the success check".to_string()),
        (None, Some(s)) => Api::of(&s.path).ok_or_else(|| {
            format!(
                "the suite speaks OpenAI's, Anthropic's and Ollama's wire formats, not {} {}'s",
                s.method, s.path
            )
        }),
    };
    super::features::run(
        &provider,
        &server,
        api,
        &info,
        &mut |name, verdict, detail| record(name, verdict, detail),
        &mut note,
    )
    .await;

    // Error classes: (case, status, retry-after in seconds, message, expected class).
    let cases: [(&str, u16, Option<u64>, &str, ErrorKind); 8] = [
        (
            "400",
            400,
            None,
            "conformance: bad request",
            ErrorKind::InvalidRequest,
        ),
        (
            "401",
            401,
            None,
            "Incorrect API key provided: {sent_key}",
            ErrorKind::Unauthorized,
        ),
        (
            "403",
            403,
            None,
            "conformance: forbidden",
            ErrorKind::Unauthorized,
        ),
        (
            "429 retry-after",
            429,
            Some(7),
            "conformance: rate limited",
            ErrorKind::RateLimited,
        ),
        (
            "429",
            429,
            None,
            "conformance: rate limited",
            ErrorKind::RateLimited,
        ),
        (
            "500",
            500,
            None,
            "conformance: server error",
            ErrorKind::Unavailable,
        ),
        (
            "503 retry-after",
            503,
            Some(3),
            "conformance: unavailable",
            ErrorKind::Unavailable,
        ),
        (
            "529",
            529,
            None,
            "conformance: overloaded",
            ErrorKind::Unavailable,
        ),
    ];
    for (name, status, retry_after, message, expected) in cases {
        server.set(Reply::Error {
            status,
            headers: retry_after
                .map(|s| ("retry-after", s.to_string()))
                .into_iter()
                .collect(),
            body: json!({"type": "error",
                         "error": {"type": "conformance_error", "message": message}})
            .to_string(),
        });
        let outcome = call(&provider).await;
        note(name, &outcome, &server.seen());
        let waited = outcome.result.as_ref().err().and_then(|e| classify(e).1);
        let kind_ok = kind_of(&outcome.result) == Some(expected);
        let wait = retry_after.map(Duration::from_secs);
        let wait_ok = wait.is_none() || waited == wait;
        let detail = match (kind_ok, wait_ok) {
            (true, true) => said(&outcome.result),
            (false, _) => format!("expected {expected}, got {}", said(&outcome.result)),
            (true, false) => format!(
                "expected a wait of {wait:?} (from retry-after), got {waited:?}: {}",
                said(&outcome.result)
            ),
        };
        check(&format!("HTTP {name}"), kind_ok && wait_ok, detail);
    }

    // A body that stops arriving.
    server.set(Reply::Stall);
    let stalled = call(&provider).await;
    note("stalled body", &stalled, &server.seen());
    let retryable = matches!(
        kind_of(&stalled.result),
        Some(ErrorKind::Unavailable | ErrorKind::Timeout)
    );
    check(
        "stalled body",
        retryable,
        format!(
            "{} after {} ms{}",
            said(&stalled.result),
            stalled.elapsed.as_millis(),
            if retryable {
                ""
            } else {
                " (expected unavailable or a timeout)"
            }
        ),
    );

    // A body that is not JSON.
    server.set(Reply::NotJson);
    let html = call(&provider).await;
    note("not JSON", &html, &server.seen());
    let handled = matches!(
        kind_of(&html.result),
        Some(ErrorKind::Unavailable | ErrorKind::Other | ErrorKind::InvalidRequest)
    );
    check(
        "non-JSON body",
        handled,
        if handled {
            said(&html.result)
        } else {
            format!(
                "expected a provider error (unavailable), got {}",
                said(&html.result)
            )
        },
    );

    // Nothing listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let mut refused_provider = host
        .bind(
            &bind(format!("http://{closed}")),
            &info.name,
            component.clone(),
        )
        .await?;
    refused_provider.view.secrets = Arc::new(secrets.clone());
    let refused = call(&refused_provider).await;
    note("connection refused", &refused, &[]);
    let transient = kind_of(&refused.result) == Some(ErrorKind::Unavailable);
    check(
        "connection refused",
        transient,
        if transient {
            said(&refused.result)
        } else {
            format!("expected unavailable, got {}", said(&refused.result))
        },
    );

    // Timed successful calls.
    server.set(Reply::Success(own_reply.clone()));
    let mut times = Vec::new();
    let mut cost = first.cost;
    let mut successes = 0;
    for _ in 0..options.timed_calls.max(1) {
        let timed = call(&provider).await;
        note("timed call", &timed, &server.seen());
        if timed.result.is_ok() {
            successes += 1;
        }
        times.push(timed.elapsed.as_secs_f64() * 1e3);
        cost.memory_peak = cost.memory_peak.max(timed.cost.memory_peak);
        cost.cpu_ms = cost.cpu_ms.max(timed.cost.cpu_ms);
    }
    times.sort_by(f64::total_cmp);
    let figures = Cost {
        component_bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        calls: times.len(),
        call_ms_p50: times[times.len() / 2],
        call_ms_max: times[times.len() - 1],
        cpu_ms_max: cost.cpu_ms,
        memory_peak_bytes: cost.memory_peak,
        memory_cap_bytes: provider.sandbox.memory_bytes,
        cpu_cap_ms: provider.sandbox.cpu_ticks,
    };
    let within = cost.memory_peak * 2 <= figures.memory_cap_bytes
        && cost.cpu_ms * 2 <= figures.cpu_cap_ms
        && successes == times.len();
    check(
        "cost",
        within,
        format!(
            "{} calls: {:.1} ms p50, {:.1} ms max, {} ms CPU, {:.1} MiB memory (caps {} ms CPU, \
             {} MiB; a call must stay within half){}",
            times.len(),
            figures.call_ms_p50,
            figures.call_ms_max,
            figures.cpu_ms_max,
            mib(figures.memory_peak_bytes),
            figures.cpu_cap_ms,
            figures.memory_cap_bytes >> 20,
            if successes == times.len() {
                String::new()
            } else {
                format!("; {} of them failed", times.len() - successes)
            }
        ),
    );

    check(
        "allowed hosts",
        denied.is_empty() && hosts.is_empty(),
        if denied.is_empty() && hosts.is_empty() {
            format!("every request went to the configured {}", server.addr)
        } else {
            denied
                .into_iter()
                .chain(hosts)
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    check(
        "secrets",
        echoed.is_empty(),
        if echoed.is_empty() {
            "the API key reached no error (the 401 reply echoes the key it was sent)".to_string()
        } else {
            format!(
                "the API key appears in the error of: {} (the host redacts it before storing, \
                 but a component must not echo secrets)",
                echoed.join(", ")
            )
        },
    );
    report.provider = Some(info.name.clone());
    report.wit = Some(info.wit);
    report.capabilities = Some(info.capabilities);
    report.cost = Some(figures);
    report.checks = checks.into_inner();
    Ok(report)
}

fn mib(bytes: usize) -> f64 {
    // Display only: a memory size in MiB with a fraction.
    #[allow(clippy::cast_precision_loss)]
    let value = bytes as f64 / f64::from(1u32 << 20);
    value
}

fn semver_like(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads a `--reply FILE`.
pub fn read_reply(path: &Path) -> anyhow::Result<SuccessReply> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the reply file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("reply file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_must_have_three_numbers() {
        assert!(semver_like("0.1.0"));
        assert!(semver_like("1.2.3-beta.1"));
        assert!(!semver_like("1.2"));
        assert!(!semver_like("v1.2.3"));
        assert!(!semver_like(""));
    }

    #[test]
    fn the_known_apis_have_replies() {
        for path in ["/v1/chat/completions", "/v1/messages", "/api/chat"] {
            assert_eq!(
                known_reply(path).map(|r| r.expect.text),
                Some(SUCCESS_TEXT.into())
            );
        }
        assert!(known_reply("/v2/generate").is_none());
    }
}
