//! JSON Lines in and out: `lanes submit --file` loads one execution a line, in lanes' own
//! line format or OpenAI Batch's input format, and `lanes export` writes executions as JSON
//! Lines, in lanes' shape or OpenAI Batch's output shape. Both stream: a load holds one
//! batch of lines at a time, an export one page of rows.
//!
//! A load reads its file twice: the first pass checks every line and loads nothing when
//! one is bad (unless `--skip-bad`); the second queues the good lines, [`BATCH_LINES`] to
//! a transaction. A line's `custom_id`, scoped by the batch's name, becomes its
//! idempotency key ([`BatchKey`]), so a load run again queues nothing twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::model::{
    ChatInput, ChatMessage, ChatOutput, Execution, MAX_COUNT, NewExecution, Role, Status,
    validate_provider_name,
};
use crate::store::{BatchKey, ExecutionFilter, IdempotencyKey, Queue, Submitted};

/// Lines queued in one transaction.
pub const BATCH_LINES: usize = 1000;
/// Rows read a page at a time by an export.
pub const EXPORT_PAGE: u32 = 500;
/// The longest idempotency key, as the API takes them.
const MAX_KEY_CHARS: usize = 255;
/// The longest batch name.
const MAX_NAME_CHARS: usize = 100;

/// What applies to every line of a load unless the line says otherwise.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The file to read.
    pub path: PathBuf,
    /// The batch's name, scoping its `custom_id`s (default: the file's name).
    pub name: Option<String>,
    /// The provider (or route) of a line that names none.
    pub provider: Option<String>,
    pub priority: i32,
    pub max_attempts: i32,
    pub allow_unknown: bool,
    /// Queue the good lines of a file with bad ones.
    pub skip_bad: bool,
    /// The tenant of a line that names none.
    pub tenant: Option<String>,
    /// Whether the response cache may answer a line that does not say (see `responses`).
    pub cache: Option<bool>,
    /// Whether a line that does not say can wait for a provider batch.
    pub deferrable: bool,
    /// The deadline (Unix ms) of a line that names none.
    pub deadline: Option<i64>,
}

/// What a load did.
#[derive(Debug, Default, Serialize)]
pub struct LoadReport {
    /// The batch name scoping the `custom_id`s.
    pub name: String,
    /// New executions.
    pub queued: u64,
    /// Lines whose `custom_id` an earlier load of the same batch queued already.
    pub already_queued: u64,
    /// Every bad line, skipped (with `--skip-bad`) or refusing the load.
    pub bad_lines: Vec<BadLine>,
}

/// A line that cannot be queued, and why.
#[derive(Debug, Clone, Serialize)]
pub struct BadLine {
    pub line: usize,
    pub error: String,
}

/// A lanes line: `{"input": CHAT INPUT, "provider"?, "priority"?, "max_attempts"?,
/// "custom_id"?, "tenant"?, "cache"?, "deferrable"?, "deadline"?}`; the input is what
/// `lanes submit --input` takes, and `deadline` is Unix ms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LanesLine {
    input: Value,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    cache: Option<bool>,
    #[serde(default)]
    deferrable: Option<bool>,
    #[serde(default)]
    deadline: Option<i64>,
}

/// An OpenAI Batch input line: `{"custom_id", "method": "POST", "url":
/// "/v1/chat/completions", "body": CHAT COMPLETIONS REQUEST}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiLine {
    custom_id: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    body: Map<String, Value>,
}

/// The endpoint an OpenAI Batch line must name.
const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// One good line: its execution as submitted (before a route picks a member) and its
/// `custom_id`.
struct Parsed {
    new: NewExecution,
    custom_id: Option<String>,
}

/// The known providers and the defaults a line is checked against.
struct Checker<'a> {
    options: &'a LoadOptions,
    name: &'a str,
    known: &'a BTreeSet<String>,
    config: &'a Config,
    /// What each provider served here takes beyond text.
    declared: &'a crate::plugin::Declared,
}

impl Checker<'_> {
    /// Parses and checks one line's text.
    fn parse(&self, text: &str) -> Result<Parsed, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(object) = &value else {
            return Err("a line must be a JSON object".into());
        };
        let mut tenant = None;
        let mut cache = self.options.cache;
        let mut deferrable = self.options.deferrable;
        let mut deadline = self.options.deadline;
        let (provider, input, priority, max_attempts, custom_id) = if object.contains_key("body") {
            let line: OpenAiLine = serde_json::from_value(value)
                .map_err(|e| format!("not an OpenAI Batch line: {e}"))?;
            if let Some(method) = line.method.as_deref().filter(|m| *m != "POST") {
                return Err(format!("method `{method}`: only POST is taken"));
            }
            if let Some(url) = line.url.as_deref().filter(|u| *u != CHAT_COMPLETIONS) {
                return Err(format!("url `{url}`: only {CHAT_COMPLETIONS} is taken"));
            }
            let input = chat_input_of(line.body)?;
            let (priority, max_attempts) = (self.options.priority, self.options.max_attempts);
            (None, input, priority, max_attempts, Some(line.custom_id))
        } else if object.contains_key("input") {
            let line: LanesLine =
                serde_json::from_value(value).map_err(|e| format!("not a lanes line: {e}"))?;
            let input = ChatInput::from_value_capped(line.input, self.config.api.image_cap())
                .map_err(|e| e.to_string())?;
            let max_attempts = match line.max_attempts {
                None => self.options.max_attempts,
                Some(n) if (1..=MAX_COUNT).contains(&n) => i32::try_from(n)
                    .map_err(|_| format!("max_attempts {n}: the most is {MAX_COUNT}"))?,
                Some(n) => {
                    return Err(format!(
                        "max_attempts {n} is out of range: give 1 to {MAX_COUNT}"
                    ));
                }
            };
            let priority = line.priority.unwrap_or(self.options.priority);
            if let Some(t) = &line.tenant {
                crate::model::check_tenant(t)?;
            }
            tenant = line.tenant;
            cache = line.cache.or(cache);
            deferrable = line.deferrable.unwrap_or(deferrable);
            deadline = line.deadline.or(deadline);
            (line.provider, input, priority, max_attempts, line.custom_id)
        } else {
            return Err(
                "neither a lanes line (with `input`) nor an OpenAI Batch line (with `body`)".into(),
            );
        };
        let provider = match provider.or_else(|| self.options.provider.clone()) {
            Some(p) => p,
            None => return Err("no provider: give `provider` on the line or --provider".into()),
        };
        validate_provider_name(&provider)?;
        if !self.options.allow_unknown && !self.known.contains(&provider) {
            return Err(format!(
                "unknown provider `{provider}`; pass --allow-unknown to queue it until a \
                 component provides it"
            ));
        }
        // As `lanes submit --input` does: what no component this host loads can take is
        // refused here, not queued to fail.
        let members = self
            .config
            .routes
            .get(&provider)
            .map(|r| r.providers.as_slice());
        crate::model::check_capabilities(&input, &provider, members, |name| self.declared.of(name))
            .map_err(|e| e.to_string())?;
        if let Some(id) = &custom_id {
            self.check_custom_id(id)?;
        }
        let mut new = NewExecution {
            provider,
            input,
            priority,
            max_attempts,
            route: None,
            tenant: tenant.or_else(|| self.options.tenant.clone()),
            cache: None,
            defer: crate::model::Defer {
                deferrable,
                deadline,
                hold: false,
            },
        };
        new.cache = crate::responses::plan(self.config, &new, cache);
        Ok(Parsed { new, custom_id })
    }

    fn check_custom_id(&self, id: &str) -> Result<(), String> {
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err("custom_id must be a non-empty string with no control characters".into());
        }
        let key = self.key(id);
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(format!(
                "custom_id is too long: `batch/`, the batch name, `/` and the custom_id make \
                 an idempotency key of at most {MAX_KEY_CHARS} characters"
            ));
        }
        Ok(())
    }

    fn key(&self, custom_id: &str) -> String {
        BatchKey {
            name: self.name,
            custom_id,
        }
        .key()
    }
}

/// Maps an OpenAI Chat Completions request onto lanes' chat input, refusing (with the
/// field's name) what lanes cannot carry.
fn chat_input_of(body: Map<String, Value>) -> Result<ChatInput, String> {
    let mut input = ChatInput::prompt("");
    input.messages.clear();
    let mut max_tokens: Option<(&'static str, u32)> = None;
    for (field, value) in body {
        if value.is_null() {
            continue;
        }
        match field.as_str() {
            "model" => match value {
                Value::String(model) => input.model = Some(model),
                _ => return Err("body.model must be a string".into()),
            },
            "messages" => {
                let Value::Array(messages) = value else {
                    return Err("body.messages must be an array".into());
                };
                for (i, message) in messages.into_iter().enumerate() {
                    input.messages.push(message_of(i, message)?);
                }
            }
            "max_tokens" | "max_completion_tokens" => {
                let name = if field == "max_tokens" {
                    "max_tokens"
                } else {
                    "max_completion_tokens"
                };
                let n = value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("body.{name} must be a whole number below 2^32"))?;
                if let Some((other, m)) = max_tokens
                    && m != n
                {
                    return Err(format!("body.{other} {m} and body.{name} {n} disagree"));
                }
                max_tokens = Some((name, n));
            }
            "temperature" => {
                let t: f32 = serde_json::from_value(value)
                    .map_err(|_| "body.temperature must be a number".to_string())?;
                input.temperature = Some(t);
            }
            "stop" => match value {
                Value::String(s) => input.stop = vec![s],
                Value::Array(items) => {
                    for item in items {
                        match item {
                            Value::String(s) => input.stop.push(s),
                            _ => return Err("body.stop must be a string or strings".into()),
                        }
                    }
                }
                _ => return Err("body.stop must be a string or strings".into()),
            },
            "n" if value.as_u64() == Some(1) => {}
            "n" => {
                return Err("body.n: lanes makes one choice a call; give 1 or leave it out".into());
            }
            "stream" if value == Value::Bool(false) => {}
            "stream" => return Err("body.stream: a batch line is not streamed".into()),
            other => {
                return Err(format!(
                    "body.{other} is not carried by lanes (it carries model, messages with \
                     text content, max_tokens, max_completion_tokens, temperature and stop)"
                ));
            }
        }
    }
    input.max_tokens = max_tokens.map(|(_, n)| n);
    // The checks `--input` gets: messages present, temperature in range.
    let value = serde_json::to_value(&input).map_err(|e| e.to_string())?;
    ChatInput::from_value(value).map_err(|e| format!("body: {e}"))
}

/// One message of a Chat Completions request, with text content.
fn message_of(i: usize, message: Value) -> Result<ChatMessage, String> {
    let Value::Object(fields) = message else {
        return Err(format!("body.messages[{i}] must be an object"));
    };
    let mut role = None;
    let mut content = None;
    for (field, value) in fields {
        match field.as_str() {
            "role" => {
                role = Some(match value.as_str() {
                    Some("system" | "developer") => Role::System,
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    Some(other) => {
                        return Err(format!(
                            "body.messages[{i}].role `{other}` is not carried by lanes (it \
                             carries system, developer, user and assistant)"
                        ));
                    }
                    None => return Err(format!("body.messages[{i}].role must be a string")),
                })
            }
            "content" => content = Some(text_of(i, value)?),
            other => {
                return Err(format!(
                    "body.messages[{i}].{other} is not carried by lanes (a message carries \
                     role and content)"
                ));
            }
        }
    }
    Ok(ChatMessage {
        role: role.ok_or_else(|| format!("body.messages[{i}] has no role"))?,
        content: content
            .ok_or_else(|| format!("body.messages[{i}] has no content"))?
            .into(),
    })
}

/// A message's content: a string, or text parts, joined by newlines.
fn text_of(i: usize, content: Value) -> Result<String, String> {
    match content {
        Value::String(text) => Ok(text),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(text.to_string()),
                    (Some(kind), _) if kind != "text" => {
                        return Err(format!(
                            "body.messages[{i}].content[{j}]: a `{kind}` part is not carried \
                             by lanes (only text)"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "body.messages[{i}].content[{j}] must be {{\"type\": \"text\", \
                             \"text\": ...}}"
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(format!(
            "body.messages[{i}].content must be a string or text parts"
        )),
    }
}

/// One line of a file: its number (from 1), its text or why it is not text, and how many
/// bytes it took with the blank lines before it.
type Line<'a> = (usize, Result<&'a str, String>, u64);

/// The lines of a file, numbered from 1, with how many bytes each took.
struct Lines {
    reader: BufReader<std::fs::File>,
    number: usize,
    buf: Vec<u8>,
}

impl Lines {
    fn open(path: &Path) -> anyhow::Result<(Lines, u64)> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().map_or(0, |m| m.len());
        Ok((
            Lines {
                reader: BufReader::new(file),
                number: 0,
                buf: Vec::new(),
            },
            len,
        ))
    }

    /// The next line: its number, its text (or why it is not text) and its length in bytes.
    /// Blank lines are passed over.
    fn next(&mut self, path: &Path) -> anyhow::Result<Option<Line<'_>>> {
        let mut bytes = 0u64;
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                return Ok(None);
            }
            self.number += 1;
            bytes = bytes.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            if !self.buf.iter().all(u8::is_ascii_whitespace) {
                break;
            }
        }
        let text = std::str::from_utf8(&self.buf)
            .map(str::trim)
            .map_err(|e| format!("not UTF-8: {e}"));
        Ok(Some((self.number, text, bytes)))
    }
}

/// A bar of bytes read on stderr, when stderr is a terminal.
fn bytes_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:<9} [{bar:30.cyan/blue}] {bytes}/{total_bytes} ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("█▉ "));
    }
    bar
}

/// The batch name of a load: `--name`, or the file's name.
fn batch_name(options: &LoadOptions) -> anyhow::Result<String> {
    let name = match &options.name {
        Some(name) => name.clone(),
        None => options
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no file name: give --name", options.path.display()))?,
    };
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        bail!(
            "batch name `{name}` is invalid: give --name with 1 to {MAX_NAME_CHARS} characters, \
             no `/` and no control characters"
        );
    }
    Ok(name)
}

/// `lanes submit --file`: checks every line, then queues the good ones a batch at a time.
/// Refuses the whole file when a line is bad, unless `skip_bad`.
pub async fn load(
    config: &Config,
    queue: &dyn Queue,
    known: &BTreeSet<String>,
    declared: &crate::plugin::Declared,
    options: &LoadOptions,
) -> anyhow::Result<LoadReport> {
    let name = batch_name(options)?;
    let path = options.path.as_path();
    let checker = Checker {
        options,
        name: &name,
        known,
        config,
        declared,
    };
    let say = |bar: &ProgressBar, bad: &BadLine| {
        bar.suspend(|| eprintln!("line {}: {}", bad.line, bad.error));
    };

    // First pass: every line checked, nothing queued.
    let (mut lines, len) = Lines::open(path)?;
    let bar = bytes_bar(len);
    bar.set_message("checking");
    let mut report = LoadReport {
        name: name.clone(),
        ..LoadReport::default()
    };
    let mut custom_ids: HashMap<String, usize> = HashMap::new();
    let mut good = 0u64;
    while let Some((number, text, bytes)) = lines.next(path)? {
        bar.inc(bytes);
        let checked = text
            .and_then(|text| checker.parse(text))
            .and_then(|parsed| match parsed.custom_id {
                Some(id) => match custom_ids.get(&id) {
                    Some(first) => Err(format!("custom_id `{id}` is also on line {first}")),
                    None => {
                        custom_ids.insert(id, number);
                        Ok(())
                    }
                },
                None => Ok(()),
            });
        match checked {
            Ok(()) => good += 1,
            Err(error) => {
                let bad = BadLine {
                    line: number,
                    error,
                };
                say(&bar, &bad);
                report.bad_lines.push(bad);
            }
        }
    }
    drop(custom_ids);
    bar.finish_and_clear();
    let file = path.display();
    if !report.bad_lines.is_empty() && !options.skip_bad {
        bail!(
            "{file}: {} bad line(s); nothing was queued (fix them, or pass --skip-bad to \
             queue the {good} good line(s))",
            report.bad_lines.len()
        );
    }
    if good == 0 {
        bail!("{file}: no execution to queue");
    }

    // Second pass: the good lines, a transaction per batch.
    let skip: HashSet<usize> = report.bad_lines.iter().map(|b| b.line).collect();
    let (mut lines, len) = Lines::open(path)?;
    let bar = bytes_bar(len);
    bar.set_message("queueing");
    let mut batch: Vec<(usize, NewExecution, Option<IdempotencyKey>)> =
        Vec::with_capacity(BATCH_LINES);
    while let Some((number, text, bytes)) = lines.next(path)? {
        bar.inc(bytes);
        if skip.contains(&number) {
            continue;
        }
        let parsed = text
            .and_then(|text| checker.parse(text))
            .map_err(|e| anyhow::anyhow!("{file}: line {number} changed while loading: {e}"))?;
        let key = match &parsed.custom_id {
            Some(id) => Some(IdempotencyKey::of(checker.key(id), &parsed.new)?),
            None => None,
        };
        batch.push((number, parsed.new, key));
        if batch.len() >= BATCH_LINES {
            submit_batch(
                config,
                queue,
                &mut batch,
                declared,
                options,
                &mut report,
                &bar,
            )
            .await?;
        }
    }
    if !batch.is_empty() {
        submit_batch(
            config,
            queue,
            &mut batch,
            declared,
            options,
            &mut report,
            &bar,
        )
        .await?;
    }
    bar.finish_and_clear();
    report.bad_lines.sort_by_key(|b| b.line);
    Ok(report)
}

/// Queues one batch in one transaction, routed as `lanes submit` routes, and empties it.
/// A `custom_id` loaded before with another request rolls the batch back: with
/// `skip_bad` its line is set aside and the rest queued again; without, the load stops.
async fn submit_batch(
    config: &Config,
    queue: &dyn Queue,
    batch: &mut Vec<(usize, NewExecution, Option<IdempotencyKey>)>,
    declared: &crate::plugin::Declared,
    options: &LoadOptions,
    report: &mut LoadReport,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    crate::daemon::routing::assign(
        queue,
        config,
        batch.iter_mut().map(|(_, new, _)| new),
        |new, member| declared.takes(&new.input, member),
    )
    .await?;
    crate::daemon::batches::hold(config, batch.iter_mut().map(|(_, new, _)| new));
    loop {
        let entries: Vec<(NewExecution, Option<IdempotencyKey>)> = batch
            .iter()
            .map(|(_, new, key)| (new.clone(), key.clone()))
            .collect();
        let done = queue.submit_keyed(&entries).await?;
        let conflicts: Vec<usize> = done
            .iter()
            .enumerate()
            .filter_map(|(i, s)| matches!(s, Submitted::Conflict(_)).then_some(i))
            .collect();
        if conflicts.is_empty() {
            for s in done {
                match s {
                    Submitted::Created(_) | Submitted::Answered(_) | Submitted::Cached(_) => {
                        report.queued += 1
                    }
                    Submitted::Repeated(_) => report.already_queued += 1,
                    Submitted::Conflict(_) => {}
                }
            }
            batch.clear();
            return Ok(());
        }
        for &i in &conflicts {
            let (line, _, key) = &batch[i];
            let id = done[i].id();
            let custom_id = key
                .as_ref()
                .and_then(|k| BatchKey::parse(&k.key).map(|b| b.custom_id.to_string()))
                .unwrap_or_default();
            let bad = BadLine {
                line: *line,
                error: format!(
                    "custom_id `{custom_id}` of batch `{}` was queued before with another \
                     request (execution {id})",
                    report.name
                ),
            };
            bar.suspend(|| eprintln!("line {}: {}", bad.line, bad.error));
            report.bad_lines.push(bad);
        }
        if !options.skip_bad {
            let first = batch.first().map_or(0, |b| b.0);
            let last = batch.last().map_or(0, |b| b.0);
            bail!(
                "{}: nothing of lines {first} to {last} was queued; the {} execution(s) \
                 queued from the lines before stay queued ({} were already); pass --skip-bad \
                 to queue the rest, or give these lines another custom_id or batch --name",
                options.path.display(),
                report.queued,
                report.already_queued
            );
        }
        let set_aside: HashSet<usize> = conflicts.into_iter().collect();
        let mut i = 0;
        batch.retain(|_| {
            let keep = !set_aside.contains(&i);
            i += 1;
            keep
        });
        if batch.is_empty() {
            return Ok(());
        }
    }
}

/// The shape `lanes export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// lanes' own line (see `docs/jsonl.md`).
    Lanes,
    /// OpenAI Batch's output line; executions that have not ended are left out.
    Openai,
}

/// `lanes export` options.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Only executions in this status: pending, running, completed, failed or cancelled.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// Only executions of this provider (where they ran, for a route's).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only executions that ended at or after this time: RFC 3339
    /// (`2026-05-01T12:00:00Z`) or a duration back from now (`90s`, `30m`, `1h`, `2d`).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "lanes")]
    pub format: ExportFormat,
}

fn parse_status(text: &str) -> Result<Status, String> {
    text.parse()
}

/// `--since`: an RFC 3339 time, a duration back from `now` (Unix ms), or Unix ms, as Unix
/// ms.
pub fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|_| format!("--since `{text}` is too large for Unix ms"));
    }
    if let Some(ago) = parse_ago(t) {
        return ago.and_then(|ms| {
            now.checked_sub(ms)
                .ok_or_else(|| format!("--since `{text}` is too long ago"))
        });
    }
    parse_rfc3339(t).ok_or_else(|| {
        format!(
            "--since `{text}` is neither an RFC 3339 time (2026-05-01T12:00:00Z), a \
             duration (90s, 30m, 1h, 2d) nor Unix ms"
        )
    })
}

/// A duration such as `90s`, `30m`, `1h` or `2d`, in ms; `None` when it is not one.
pub(crate) fn parse_ago(t: &str) -> Option<Result<i64, String>> {
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = t.split_at(split);
    let unit_ms: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    Some(
        number
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .ok_or_else(|| format!("--since `{t}` is too long ago")),
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as Unix ms.
fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = t.get(range)?;
        if digits.bytes().all(|c| c.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        let digits = format!("{:0<3}", t.get(start..i.min(start + 3))?);
        millis = digits.parse().ok()?;
    }
    let offset_min = match t.get(i..)? {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && zone.as_bytes()[3] == b':' => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?)
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Some(seconds * 1_000 + millis)
}

/// A line of `lanes export` in lanes' shape.
#[derive(Serialize)]
struct LanesOut<'a> {
    id: i64,
    /// The line's `custom_id`, for an execution a batch load queued.
    custom_id: Option<&'a str>,
    /// The batch name of that load.
    batch: Option<&'a str>,
    provider: &'a str,
    route: Option<&'a str>,
    /// Left out for an execution without a tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    status: Status,
    priority: i32,
    attempts: i32,
    input: &'a Value,
    output: Option<&'a Value>,
    error: Option<&'a str>,
    error_kind: Option<&'a str>,
    created_at: i64,
    finished_at: Option<i64>,
}

/// A line of `lanes export --format openai`, or `None` for an execution that has not ended.
fn openai_line(e: &Execution, custom_id: Option<&str>) -> Option<Value> {
    let error = |code: &str, message: &str| {
        serde_json::json!({
            "id": format!("batch_req_lanes_{}", e.id),
            "custom_id": custom_id,
            "response": null,
            "error": {"code": code, "message": message},
        })
    };
    match e.status {
        Status::Pending | Status::Running | Status::Batched => None,
        Status::Cancelled => Some(error("cancelled", "the execution was cancelled")),
        Status::Failed => Some(error(
            e.error_kind.as_deref().unwrap_or("failed"),
            e.error.as_deref().unwrap_or("the execution failed"),
        )),
        Status::Completed => {
            let output = e
                .output
                .clone()
                .map(serde_json::from_value::<ChatOutput>)
                .transpose();
            let output = match output {
                Ok(Some(output)) => output,
                Ok(None) => return Some(error("no_output", "the execution stored no output")),
                Err(err) => {
                    return Some(error(
                        "unreadable_output",
                        &format!("the stored output is not a chat output: {err}"),
                    ));
                }
            };
            let created = e.finished_at.unwrap_or(e.created_at).div_euclid(1000);
            let prompt = u64::from(output.usage.input_tokens);
            let completion = u64::from(output.usage.output_tokens);
            Some(serde_json::json!({
                "id": format!("batch_req_lanes_{}", e.id),
                "custom_id": custom_id,
                "response": {
                    "status_code": 200,
                    "request_id": format!("req_lanes_{}", e.id),
                    "body": {
                        "id": format!("chatcmpl-lanes-{}", e.id),
                        "object": "chat.completion",
                        "created": created,
                        "model": output.model,
                        "choices": [{
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": output.text,
                                "refusal": null,
                            },
                            "finish_reason": output.finish_reason,
                            "logprobs": null,
                        }],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                        },
                    },
                },
                "error": null,
            }))
        }
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub written: u64,
    /// Executions left out of an OpenAI export because they have not ended.
    pub not_ended: u64,
}

impl ExportArgs {
    /// The first page's filter, checked before the database is opened.
    pub fn filter(&self) -> anyhow::Result<ExecutionFilter> {
        if let Some(p) = &self.provider {
            validate_provider_name(p).map_err(anyhow::Error::msg)?;
        }
        let since = self
            .since
            .as_deref()
            .map(|s| parse_since(s, crate::model::now_ms()))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        Ok(ExecutionFilter {
            provider: self.provider.clone(),
            status: self.status,
            finished_after: since,
            limit: EXPORT_PAGE,
            ..ExecutionFilter::default()
        })
    }
}

/// `lanes export`: the executions `filter` selects (see [`ExportArgs::filter`]), newest
/// first, one JSON line each in `format` on `out`, read a page at a time.
pub async fn export(
    queue: &dyn Queue,
    mut filter: ExecutionFilter,
    format: ExportFormat,
    out: &mut impl Write,
) -> anyhow::Result<ExportReport> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} exported {pos} ({per_sec})") {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut report = ExportReport::default();
    let page_len = usize::try_from(filter.limit).unwrap_or(usize::MAX);
    loop {
        let page = queue.list_page(&filter).await?;
        let ids: Vec<i64> = page.iter().map(|e| e.id).collect();
        let keys = queue.idempotency_keys(&ids).await?;
        for e in &page {
            let batch = keys.get(&e.id).and_then(|k| BatchKey::parse(k));
            let custom_id = batch.as_ref().map(|b| b.custom_id);
            let line = match format {
                ExportFormat::Lanes => serde_json::to_value(LanesOut {
                    id: e.id,
                    custom_id,
                    batch: batch.as_ref().map(|b| b.name),
                    provider: &e.provider,
                    route: e.route.as_deref(),
                    tenant: e.tenant.as_deref(),
                    status: e.status,
                    priority: e.priority,
                    attempts: e.attempts,
                    input: &e.input,
                    output: e.output.as_ref(),
                    error: e.error.as_deref(),
                    error_kind: e.error_kind.as_deref(),
                    created_at: e.created_at,
                    finished_at: e.finished_at,
                })?,
                ExportFormat::Openai => match openai_line(e, custom_id) {
                    Some(line) => line,
                    None => {
                        report.not_ended += 1;
                        continue;
                    }
                },
            };
            serde_json::to_writer(&mut *out, &line).context("writing the export")?;
            out.write_all(b"\n").context("writing the export")?;
            report.written += 1;
            bar.inc(1);
        }
        out.flush().context("writing the export")?;
        match page.last() {
            Some(last) if page.len() >= page_len => filter.before_id = Some(last.id),
            _ => break,
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_and_durations() {
        assert_eq!(parse_since("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(
            parse_since("2026-05-01T12:00:00.25+02:00", 0),
            Ok(1_777_629_600_250)
        );
        assert_eq!(parse_since("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(parse_since("90s", 100_000), Ok(10_000));
        assert!(parse_since("2026-02-30T00:00:00Z", 0).is_err());
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("99999999999999999d", 0).is_err());
    }

    #[test]
    fn openai_bodies_map_or_name_the_field() {
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        let input = chat_input_of(body(serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}
            ],
            "max_completion_tokens": 20, "temperature": 0.5, "stop": "END", "n": 1
        })))
        .unwrap();
        assert_eq!(input.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(input.messages[0].role, Role::System);
        assert_eq!(input.messages[1].content, "hi".into());
        assert_eq!(input.max_tokens, Some(20));
        assert_eq!(input.stop, vec!["END".to_string()]);
        let err = chat_input_of(body(serde_json::json!({
            "messages": [{"role": "user", "content": "x"}], "tools": []
        })))
        .unwrap_err();
        assert!(err.contains("body.tools"), "{err}");
        let err = chat_input_of(body(serde_json::json!({
            "messages": [{"role": "user", "content": [{"type": "image_url"}]}]
        })))
        .unwrap_err();
        assert!(err.contains("body.messages[0].content[0]"), "{err}");
    }

    #[test]
    fn batch_keys_round_trip() {
        let key = BatchKey {
            name: "a.jsonl",
            custom_id: "x/y",
        }
        .key();
        let parsed = BatchKey::parse(&key).unwrap();
        assert_eq!((parsed.name, parsed.custom_id), ("a.jsonl", "x/y"));
        assert_eq!(BatchKey::parse("client-key"), None);
    }
}
