//! What the compatible front doors (`openai.rs`, `anthropic.rs`) share: which provider a
//! `model` names, the submission with its priority and idempotency headers, the memory that
//! lets an SDK's retry find the execution it repeats, and the wait for the execution's end.
//! Each door maps its vendor's JSON to the chat input and formats the [`Outcome`] in its
//! vendor's shapes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sha2::Digest;

use axum::response::IntoResponse;

use super::AppState;
use super::executions::{Waited, until_ended, validate};
use super::streams::Item;
use super::wire::SubmitRequest;
use crate::config::AtMaxWait;
use crate::model::{ChatOutput, Delta, Execution, ExecutionId, Status};
use crate::store::StreamPosition;
use crate::store::Submitted;
use axum::response::sse::Event as SseEvent;

/// How long a retried request may find the execution of the attempt it repeats (see
/// [`Retries`]).
const RETRY_MEMORY: Duration = Duration::from_secs(900);

/// The executions of calls whose answer was not (or not yet) a success, by the request's
/// fingerprint, so that an SDK's retry finds the call it repeats. The SDKs' retries send no
/// stable key of their own (openai 3.63 and anthropic 2.17 for Python make one and keep it
/// to themselves: their `_idempotency_header` is unset), only `x-stainless-retry-count`. A
/// request that says it is a retry (a count above 0), with the same body and the same
/// credentials as a call whose execution did not answer 200, waits on that execution again
/// instead of queueing the call twice.
///
/// A call is remembered from its submission, not its answer: an SDK also retries its own
/// timeouts and a dropped connection, and those retries come while the first request is
/// still held, or after its handler was dropped. A retry takes the call that the fewest
/// requests hold now ([`Held`]), so that identical calls made at once (samples of one
/// prompt, say) each find their own execution; a 200 forgets it. Kept in this worker's memory for
/// [`RETRY_MEMORY`]: a retry that a load balancer sends to another worker is queued again,
/// which an `idempotency-key` header prevents.
#[derive(Default)]
pub struct Retries {
    by_fingerprint: Mutex<HashMap<[u8; 32], Vec<Entry>>>,
}

struct Entry {
    id: ExecutionId,
    at: Instant,
    /// The requests waiting on it now.
    holds: u32,
}

impl Retries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Vec<Entry>>> {
        self.by_fingerprint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a call just submitted, held by its request.
    fn hold_new(&self, fingerprint: [u8; 32], id: ExecutionId) {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, entries| {
            entries.retain(|e| e.holds > 0 || now.duration_since(e.at) < RETRY_MEMORY);
            !entries.is_empty()
        });
        map.entry(fingerprint).or_default().push(Entry {
            id,
            at: now,
            holds: 1,
        });
    }

    /// Takes the call a retry repeats: one that no request holds, or else the one that the
    /// fewest hold (its first request is still held after the client gave up on it), the
    /// oldest first.
    fn hold_for_retry(&self, fingerprint: &[u8; 32]) -> Option<ExecutionId> {
        let mut map = self.lock();
        let entry = map
            .get_mut(fingerprint)?
            .iter_mut()
            .filter(|e| e.holds > 0 || e.at.elapsed() < RETRY_MEMORY)
            .min_by_key(|e| (e.holds, e.at))?;
        entry.holds += 1;
        entry.at = Instant::now();
        Some(entry.id)
    }

    /// Lets go of a call: forgotten when it was answered 200, else one hold fewer.
    fn release(&self, fingerprint: &[u8; 32], id: ExecutionId, answered: bool) {
        let mut map = self.lock();
        let Some(entries) = map.get_mut(fingerprint) else {
            return;
        };
        if answered {
            entries.retain(|e| e.id != id);
        } else if let Some(e) = entries.iter_mut().find(|e| e.id == id) {
            e.holds = e.holds.saturating_sub(1);
            e.at = Instant::now();
        }
        if entries.is_empty() {
            map.remove(fingerprint);
        }
    }
}

/// A request's hold on its call in [`Retries`]: let go when dropped (the client hung up, or
/// the answer was not a success), or forgotten by [`Held::answered`].
pub(super) struct Held {
    state: AppState,
    fingerprint: [u8; 32],
    pub id: ExecutionId,
    answered: bool,
}

impl Held {
    /// The call was answered 200: a retry of it is a new call.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.state
            .retries
            .release(&self.fingerprint, self.id, self.answered);
    }
}

/// What a request's `model` names: a provider (or route), and the model to ask it for.
pub(super) fn resolve_model(state: &AppState, model: &str) -> (String, Option<String>) {
    let config = state.control.config();
    let target = config
        .front_door
        .models
        .get(model)
        .map_or(model, String::as_str);
    match target.split_once('/') {
        Some((provider, model)) if !model.is_empty() => {
            (provider.to_string(), Some(model.to_string()))
        }
        Some((provider, _)) => (provider.to_string(), None),
        None => (target.to_string(), None),
    }
}

/// The body's fingerprint for [`Retries`]: the body and the credentials it came with.
/// The header that names the tenant a call runs for (`tenant` of a submission).
pub(super) const TENANT_HEADER: &str = "x-lanes-tenant";

fn fingerprint(headers: &HeaderMap, body: &[u8]) -> [u8; 32] {
    let mut hash = sha2::Sha256::new();
    if let Some(auth) = headers.get("authorization") {
        hash.update(auth.as_bytes());
    }
    hash.update([0]);
    // One tenant's call is never taken for another's retry.
    if let Some(tenant) = headers.get(TENANT_HEADER) {
        hash.update(tenant.as_bytes());
    }
    hash.update([0]);
    hash.update(body);
    hash.finalize().into()
}

/// Whether the request says it is an SDK's retry.
fn is_retry(headers: &HeaderMap) -> bool {
    headers
        .get("x-stainless-retry-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|n| n > 0)
}

/// Why a call was not queued, or how its wait ended short of the execution's end.
pub(super) enum Refused {
    /// The request is wrong; the message names the field.
    Invalid(String),
    /// `model` names no provider, route or alias.
    UnknownModel(String),
    /// The idempotency key went with another request, to execution `.0`.
    Conflict(ExecutionId),
    /// The database did not answer, or lanes is stopping.
    Unavailable(String),
    /// `[front_door] max_wait_secs` passed; the execution runs on.
    MaxWait {
        id: ExecutionId,
        status: String,
        secs: u64,
    },
    /// The provider takes no calls for longer than `max_wait` (a pause after a rate limit,
    /// or an open circuit's cool-down): nothing was queued. Try again in `retry_after_secs`.
    Paused {
        provider: String,
        circuit_open: bool,
        retry_after_secs: u64,
        reason: Option<String>,
    },
}

impl Refused {
    /// The message of a [`Refused::Paused`].
    pub(super) fn paused_message(
        provider: &str,
        circuit_open: bool,
        retry_after_secs: u64,
        reason: Option<&str>,
    ) -> String {
        let what = if circuit_open {
            "its circuit is open"
        } else {
            "it is paused"
        };
        format!(
            "provider `{provider}` takes no calls for {retry_after_secs} s more ({what}{}), \
             longer than [front_door] max_wait_secs: nothing was queued; try again then",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        )
    }
}

/// Refuses a call to `provider` that could not start within `max_wait`: the provider is
/// paused (a rate limit's wait) or its circuit is open, until after the wait would end.
/// A route is left to its members' routing.
async fn check_pause(state: &AppState, provider: &str) -> Result<(), Refused> {
    let config = state.control.config();
    if config.routes.contains_key(provider) {
        return Ok(());
    }
    let max_wait_ms =
        i64::try_from(config.front_door.max_wait_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let (now, states) = state
        .control
        .queue()
        .provider_states()
        .await
        .map_err(|e| Refused::Unavailable(format!("reading the providers' state: {e}")))?;
    let Some(s) = states.get(provider) else {
        return Ok(());
    };
    let left_ms = s.paused_until.saturating_sub(now);
    if left_ms <= max_wait_ms {
        return Ok(());
    }
    Err(Refused::Paused {
        provider: provider.to_string(),
        circuit_open: s.circuit_open,
        retry_after_secs: u64::try_from(left_ms).unwrap_or(0).div_ceil(1000),
        reason: s.reason.clone(),
    })
}

/// Queues a call (or finds the execution an SDK's retry repeats, or an idempotency key's):
/// `provider` with `input` (the door's request mapped to the chat input), whose request
/// came with `headers` and `body`. Returns the request's hold on the execution (see
/// [`Retries`]).
pub(super) async fn submit(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    provider: String,
    input: Value,
) -> Result<Held, Refused> {
    let priority = match headers
        .get("x-lanes-priority")
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<i32>().ok()))
    {
        None => 0,
        Some(Some(p)) => p,
        Some(None) => {
            return Err(Refused::Invalid(
                "`x-lanes-priority` must be an integer".into(),
            ));
        }
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(format!("front-door:{k}")),
        Some(Err(_)) => {
            return Err(Refused::Invalid(
                "`idempotency-key` must be visible ASCII".into(),
            ));
        }
    };
    let tenant = match headers.get(TENANT_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) => {
            crate::model::check_tenant(t)
                .map_err(|e| Refused::Invalid(format!("`{TENANT_HEADER}`: {e}")))?;
            Some(t.to_string())
        }
        Some(Err(_)) => {
            return Err(Refused::Invalid(format!(
                "`{TENANT_HEADER}` must be visible ASCII"
            )));
        }
    };
    let print = fingerprint(headers, body);
    let held = |id| Held {
        state: state.clone(),
        fingerprint: print,
        id,
        answered: false,
    };
    if key.is_none()
        && is_retry(headers)
        && let Some(id) = state.retries.hold_for_retry(&print)
    {
        return Ok(held(id));
    }
    check_pause(state, &provider).await?;
    let request = SubmitRequest {
        provider,
        input,
        priority,
        max_attempts: None,
        idempotency_key: key,
        allow_unknown: false,
        tenant,
        cache: None,
        // A front door answers while the client waits: never a batch's day.
        deferrable: false,
        deadline: None,
    };
    let entry = validate(state, request).await.map_err(|e| {
        if e.starts_with("unknown provider") {
            Refused::UnknownModel(e)
        } else if e.starts_with("cannot check the provider") {
            Refused::Unavailable(e)
        } else {
            Refused::Invalid(e)
        }
    })?;
    let done = state
        .control
        .submit_keyed(&[entry])
        .await
        .map_err(|e| Refused::Unavailable(format!("queueing the call: {e}")))?;
    match done.first() {
        Some(
            s @ (Submitted::Created(_)
            | Submitted::Answered(_)
            | Submitted::Cached(_)
            | Submitted::Repeated(_)),
        ) => {
            let id = s.id();
            state.retries.hold_new(print, id);
            Ok(held(id))
        }
        Some(Submitted::Conflict(id)) => Err(Refused::Conflict(*id)),
        None => Err(Refused::Invalid("nothing was submitted".into())),
    }
}

/// Waits for execution `id` to end, up to `[front_door] max_wait_secs`, as the long-poll
/// does (woken by the event bus; on a fleet, read again every second too). A client that
/// says how long it reads (`x-stainless-read-timeout` or `x-stainless-timeout`, in
/// seconds, which the SDKs send) is
/// answered 2 s before that, so that it gets lanes' 504, not a timeout of its own.
pub(super) async fn wait(
    state: &AppState,
    id: ExecutionId,
    headers: &HeaderMap,
) -> Result<Execution, Refused> {
    let mut max_wait = Duration::from_secs(state.control.config().front_door.max_wait_secs);
    // Python's SDKs say `x-stainless-read-timeout`, the npm ones `x-stainless-timeout`.
    if let Some(read) = headers
        .get("x-stainless-read-timeout")
        .or_else(|| headers.get("x-stainless-timeout"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 3.0)
    {
        max_wait = max_wait.min(Duration::from_secs_f64((read - 2.0).min(86_400.0)));
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    match until_ended(state, id, deadline).await {
        Ok(Waited::Ended(execution)) => Ok(execution),
        Ok(Waited::Deadline(execution)) => Err(Refused::MaxWait {
            id,
            status: execution.status.as_str().to_string(),
            secs: max_wait.as_secs(),
        }),
        Ok(Waited::Stopping(_)) => Err(Refused::Unavailable(format!(
            "lanes is stopping; execution {id} is kept and runs on"
        ))),
        Err(problem) => Err(Refused::Unavailable(format!(
            "reading execution {id}: {}",
            problem.detail
        ))),
    }
}

/// What an ended execution answers, whatever the door.
pub(super) enum Ended {
    Output(Box<ChatOutput>),
    Cancelled(String),
    /// Failed: the status its error kind answers with (429 `rate_limited`, 401
    /// `unauthorized`, 400 `bad_input` and `invalid_request`, 504 `timeout`, 503
    /// `unavailable`, 500 else), the kind, and the message.
    Failed {
        status: StatusCode,
        kind: String,
        message: String,
    },
    /// Completed, with an output lanes cannot read.
    Unreadable(String),
}

impl Ended {
    /// The output, or what a stream's error says instead.
    pub(super) fn output(self) -> Result<ChatOutput, String> {
        match self {
            Ended::Output(output) => Ok(*output),
            Ended::Cancelled(message)
            | Ended::Failed { message, .. }
            | Ended::Unreadable(message) => Err(message),
        }
    }
}

/// How `execution`, ended, answers.
pub(super) fn ended(execution: &Execution) -> Ended {
    let id = execution.id;
    match execution.status {
        Status::Completed => {}
        Status::Cancelled => return Ended::Cancelled(format!("execution {id} was cancelled")),
        _ => {
            let kind = execution.error_kind.as_deref().unwrap_or("other");
            let status = match kind {
                "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
                "unauthorized" => StatusCode::UNAUTHORIZED,
                "bad_input" | "invalid_request" => StatusCode::BAD_REQUEST,
                "timeout" => StatusCode::GATEWAY_TIMEOUT,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return Ended::Failed {
                status,
                kind: kind.to_string(),
                message: format!(
                    "execution {id} failed after {} attempt(s) ({kind}): {}",
                    execution.attempts,
                    execution.error.as_deref().unwrap_or("no error recorded")
                ),
            };
        }
    }
    match execution
        .output
        .clone()
        .and_then(|o| serde_json::from_value(o).ok())
    {
        Some(output) => Ended::Output(Box::new(output)),
        None => Ended::Unreadable(format!(
            "execution {id} completed without an output lanes can read"
        )),
    }
}

/// The message of a wait that passed `max_wait`.
pub(super) fn max_wait_message(id: ExecutionId, status: &str, secs: u64) -> String {
    format!(
        "execution {id} is still {status} after {secs} s ([front_door] max_wait_secs); it runs \
         on: poll GET /v1/executions/{id}, or send the same request again"
    )
}

/// Marks an answer that will not change if asked again (a failed or cancelled execution, a
/// key's conflict): the SDKs retry 409, 429 and 5xx unless told not to.
pub(super) fn final_answer(mut answer: axum::response::Response) -> axum::response::Response {
    answer.headers_mut().insert(
        "x-should-retry",
        axum::http::HeaderValue::from_static("false"),
    );
    answer
}

/// A 429 or 503 that says when to come back (`retry-after`, whole seconds, which the SDKs
/// honour).
pub(super) fn with_retry_after(
    mut answer: axum::response::Response,
    secs: u64,
) -> axum::response::Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        answer.headers_mut().insert("retry-after", value);
    }
    answer
}

/// A door's mapping of a request body (and the model asked of the provider) to the chat
/// input, or why not.
pub(super) type ToInput =
    fn(&serde_json::Map<String, Value>, Option<String>) -> Result<Value, String>;

/// A compatible door: how its vendor's request becomes the chat input, and how its answers
/// are worded. [`handle`] does the rest, the same for every door.
pub(super) struct Door {
    /// A 400 in the vendor's error shape.
    pub invalid: fn(String) -> axum::response::Response,
    /// The chat input of a request body, or why not (the field named); the model the
    /// provider is asked for, when `model` named one.
    pub to_input: ToInput,
    /// A call not queued, or a wait that ended first, in the vendor's shape.
    pub refusal: fn(Refused, &str) -> axum::response::Response,
    /// The answer for an ended execution.
    pub ended: fn(&Execution, &str) -> axum::response::Response,
    /// The vendor's stream for a request that asks to stream (`stream: true`): its request
    /// body, the `model` it named, and the execution.
    pub relay: MakeRelay,
}

/// Makes a door's [`Relay`] for a request body, the `model` it named, and the execution.
pub(super) type MakeRelay =
    fn(&serde_json::Map<String, Value>, &str, ExecutionId) -> Box<dyn Relay>;

/// A vendor's stream of one call: lanes' deltas in, the vendor's SSE events out.
pub(super) trait Relay: Send {
    /// The events of one delta.
    fn delta(&mut self, delta: Delta) -> Vec<SseEvent>;
    /// The events that close the stream of `execution`, ended. A component that did not
    /// stream sent no delta: the whole answer goes out here.
    fn end(&mut self, execution: &Execution) -> Vec<SseEvent>;
    /// The events that close the stream with an error: `message` says why.
    fn fail(&mut self, message: &str) -> Vec<SseEvent>;
}

/// Streams the call of `held` in the door's shape: its deltas as they come (from the
/// worker that runs it, or the store), then its end. A retry after part of the answer went
/// out cannot be taken back in the vendor's protocol: the stream then ends with an error.
fn relay_stream(
    mut relay: Box<dyn Relay>,
    state: AppState,
    held: Held,
) -> axum::response::Response {
    let id = held.id;
    let mut items = super::streams::spawn_follow(state, id, StreamPosition::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let mut sent = false;
        let mut ended = false;
        loop {
            // A client that hangs up ends this task (and its follower) at once.
            let item = tokio::select! {
                item = items.recv() => item,
                _ = tx.closed() => return,
            };
            let Some(item) = item else {
                break;
            };
            let (events, done) = match item {
                Item::Attempt(_) if sent => {
                    let message = format!(
                        "execution {id} was retried after part of its answer was streamed; its \
                         new answer streams at GET /v1/executions/{id}/stream"
                    );
                    (relay.fail(&message), true)
                }
                Item::Attempt(_) | Item::Lag(_) => continue,
                Item::Deltas { jsons, .. } => {
                    let mut events = Vec::new();
                    for json in jsons {
                        if let Ok(delta) = serde_json::from_str::<Delta>(&json) {
                            sent = true;
                            events.extend(relay.delta(delta));
                        }
                    }
                    (events, false)
                }
                Item::End(execution) => {
                    ended = true;
                    (relay.end(&execution), true)
                }
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if done {
                break;
            }
        }
        if ended {
            // Sent to the end: a retry of the request is a new call.
            held.answered();
        } else {
            // The follower stopped (the server stops, or the store failed): say so, so
            // that the client does not take what it has for the whole answer.
            let message = format!(
                "the stream of execution {id} was cut before its end; it runs on: \
                 GET /v1/executions/{id}"
            );
            for event in relay.fail(&message) {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, std::convert::Infallible>(event), rx))
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// A door's request, start to end: the body read, `model` resolved, the call queued (or
/// the one it repeats found), held until it ends or `max_wait`, answered, and named in
/// `x-lanes-execution-id`.
pub(super) async fn handle(
    door: &Door,
    state: AppState,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (door.invalid)(format!("the body is not JSON: {e}")),
    };
    let Some(object) = value.as_object() else {
        return (door.invalid)("the body must be a JSON object".into());
    };
    let Some(model) = object.get("model").and_then(Value::as_str) else {
        return (door.invalid)(
            "`model` is missing: name a provider, PROVIDER/MODEL or an alias".into(),
        );
    };
    let (provider, provider_model) = resolve_model(&state, model);
    let input = match (door.to_input)(object, provider_model) {
        Ok(input) => input,
        Err(e) => return (door.invalid)(e),
    };
    let streams = object.get("stream") == Some(&Value::Bool(true));
    let held = match submit(&state, &headers, &body, provider, input).await {
        Ok(held) => held,
        Err(refused) => return (door.refusal)(refused, model),
    };
    let id = held.id;
    if streams {
        let relay = (door.relay)(object, model, id);
        let mut answer = relay_stream(relay, state, held);
        if let Ok(value) = axum::http::HeaderValue::from_str(&id.to_string()) {
            answer.headers_mut().insert("x-lanes-execution-id", value);
        }
        return answer;
    }
    let accept = state.control.config().front_door.at_max_wait == AtMaxWait::Accepted;
    let mut answer = match wait(&state, id, &headers).await {
        Ok(execution) => (door.ended)(&execution, model),
        Err(Refused::MaxWait { id, status, .. }) if accept => {
            let poll = format!("/v1/executions/{id}");
            (
                StatusCode::ACCEPTED,
                [(axum::http::header::LOCATION, poll.clone())],
                axum::Json(serde_json::json!({"id": id, "status": status, "poll": poll})),
            )
                .into_response()
        }
        Err(refused) => (door.refusal)(refused, model),
    };
    if answer.status() == StatusCode::OK {
        held.answered();
    } else {
        drop(held);
    }
    if let Ok(value) = axum::http::HeaderValue::from_str(&id.to_string()) {
        answer.headers_mut().insert("x-lanes-execution-id", value);
    }
    answer
}
