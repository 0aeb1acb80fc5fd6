//! `/v1/executions`: submit (one or a batch, with idempotency keys), read (with a
//! long-poll woken by the event bus), list (filters and cursors) and cancel.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::problem::{Json, Path, Problem, Query};
use super::wire::{
    BatchEntry, BatchRequest, BatchResponse, ExecutionOut, ExecutionPage, GetQuery, ListQuery,
    SubmitRequest,
};
use crate::model::{
    ChatInput, Execution, ExecutionId, MAX_COUNT, NewExecution, Status, check_capabilities,
    validate_provider_name,
};
use crate::store::{Cancelled, ExecutionFilter, IdempotencyKey, Submitted};

/// The most executions one batch takes.
pub const MAX_BATCH: usize = 1000;
/// The longest `?wait=`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// The largest page.
pub const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 100;

/// A submission checked as `lanes submit` checks it, with its idempotency key.
pub(super) async fn validate(
    state: &AppState,
    request: SubmitRequest,
) -> Result<(NewExecution, Option<IdempotencyKey>), String> {
    validate_provider_name(&request.provider)?;
    if let Some(tenant) = &request.tenant {
        crate::model::check_tenant(tenant)?;
    }
    let config = state.control.config();
    let input = ChatInput::from_value_capped(request.input, config.api.image_cap())
        .map_err(|e| e.to_string())?;
    let max_attempts = request.max_attempts.unwrap_or(config.default_max_attempts);
    if max_attempts == 0 || max_attempts > MAX_COUNT {
        return Err(format!(
            "max_attempts {max_attempts} is out of range: give 1 to {MAX_COUNT}"
        ));
    }
    let max_attempts = i32::try_from(max_attempts)
        .map_err(|_| format!("max_attempts {max_attempts}: the most is {MAX_COUNT}"))?;
    if !request.allow_unknown {
        let known = state
            .control
            .knows(&request.provider)
            .await
            .map_err(|e| format!("cannot check the provider: {e}"))?;
        if !known {
            return Err(format!(
                "unknown provider `{}`: no component or config describes it (set \
                 allow_unknown to queue it until one does)",
                request.provider
            ));
        }
    }
    // What the input needs, against what its provider (or a route's members) declares:
    // refused here, so it is never queued to fail later.
    let members = config
        .routes
        .get(&request.provider)
        .map(|r| r.providers.as_slice());
    check_capabilities(&input, &request.provider, members, |name| {
        state.control.capabilities(name)
    })
    .map_err(|e| e.to_string())?;
    if members.is_none()
        && let Some(takes) = state.control.image_media_types(&request.provider)
        && let Some(refused) = input.media_type_refused(&takes)
    {
        return Err(format!(
            "provider `{}` cannot take this input: {refused}",
            request.provider
        ));
    }
    let mut new = NewExecution {
        provider: request.provider,
        input,
        priority: request.priority,
        max_attempts,
        route: None,
        tenant: request.tenant,
        cache: None,
        defer: crate::model::Defer {
            deferrable: request.deferrable,
            deadline: request.deadline,
            hold: false,
        },
    };
    new.cache = crate::responses::plan(&config, &new, request.cache);
    let key = match request.idempotency_key {
        None => None,
        Some(key) => {
            if key.is_empty() || key.chars().count() > 255 || key.chars().any(char::is_control) {
                return Err(
                    "idempotency_key must be 1 to 255 characters, with no control characters"
                        .into(),
                );
            }
            Some(IdempotencyKey::of(key, &new).map_err(|e| e.to_string())?)
        }
    };
    Ok((new, key))
}

fn conflict(key: &str, id: ExecutionId) -> Problem {
    Problem::conflict(
        "idempotency-conflict",
        "Idempotency key reused",
        format!("idempotency key `{key}` was used for execution {id} with a different request"),
    )
}

async fn read(state: &AppState, id: ExecutionId) -> Result<ExecutionOut, Problem> {
    match state.control.queue().get(id).await? {
        Some(e) => Ok(ExecutionOut::from(e)),
        None => Err(Problem::not_found(format!("no execution {id}"))),
    }
}

/// Queue one execution.
#[utoipa::path(
    post, path = "/v1/executions", tag = "executions",
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "Queued", body = ExecutionOut),
        (status = 200, description = "The idempotency key's earlier execution", body = ExecutionOut),
        (status = 400, description = "The body is not JSON", content_type = "application/problem+json", body = Problem),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", content_type = "application/problem+json", body = Problem),
        (status = 415, description = "The body's content type is not `application/json`", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "The idempotency key was used with another request", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Invalid input (the field named), an unknown provider, or an input that needs a capability its provider lacks", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    Json(request): Json<SubmitRequest>,
) -> Result<Response, Problem> {
    let entry = validate(&state, request).await.map_err(Problem::invalid)?;
    let key = entry.1.as_ref().map(|k| k.key.clone());
    let done = state.control.submit_keyed(&[entry]).await?;
    let (id, status, answered) = match done.into_iter().next() {
        Some(Submitted::Created(id) | Submitted::Cached(id)) => (id, StatusCode::CREATED, None),
        Some(Submitted::Answered(e)) => (e.id, StatusCode::CREATED, Some(*e)),
        Some(Submitted::Repeated(id)) => (id, StatusCode::OK, None),
        Some(Submitted::Conflict(id)) => {
            return Err(conflict(key.as_deref().unwrap_or(""), id));
        }
        None => return Err(Problem::invalid("nothing was submitted")),
    };
    let execution = match answered {
        Some(e) => ExecutionOut::from(e),
        None => read(&state, id).await?,
    };
    Ok((
        status,
        [(header::LOCATION, format!("/v1/executions/{id}"))],
        axum::Json(execution),
    )
        .into_response())
}

/// Queue up to 1,000 executions in one transaction: all or none.
#[utoipa::path(
    post, path = "/v1/executions:batch", tag = "executions",
    request_body = BatchRequest,
    responses(
        (status = 201, description = "Queued (some may be earlier executions of their keys)", body = BatchResponse),
        (status = 200, description = "Every entry was an earlier execution of its key", body = BatchResponse),
        (status = 400, description = "The body is not JSON", content_type = "application/problem+json", body = Problem),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", content_type = "application/problem+json", body = Problem),
        (status = 415, description = "The body's content type is not `application/json`", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "An idempotency key was used with another request; nothing was queued", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "The batch or an entry is invalid; nothing was queued", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn submit_batch(
    State(state): State<AppState>,
    Json(request): Json<BatchRequest>,
) -> Result<Response, Problem> {
    let n = request.executions.len();
    if n == 0 || n > MAX_BATCH {
        return Err(Problem::invalid(format!(
            "a batch holds 1 to {MAX_BATCH} executions, not {n}"
        )));
    }
    let mut entries = Vec::with_capacity(n);
    for (i, r) in request.executions.into_iter().enumerate() {
        entries.push(
            validate(&state, r)
                .await
                .map_err(|e| Problem::invalid(format!("executions[{i}]: {e}")))?,
        );
    }
    let done = state.control.submit_keyed(&entries).await?;
    let mut out = Vec::with_capacity(n);
    for (i, (s, (_, key))) in done.iter().zip(&entries).enumerate() {
        match s {
            Submitted::Created(_) | Submitted::Answered(_) | Submitted::Cached(_) => {
                out.push(BatchEntry {
                    id: s.id(),
                    created: true,
                })
            }
            Submitted::Repeated(id) => out.push(BatchEntry {
                id: *id,
                created: false,
            }),
            Submitted::Conflict(id) => {
                let key = key.as_ref().map_or("", |k| k.key.as_str());
                let p = conflict(key, *id);
                return Err(Problem {
                    detail: format!("executions[{i}]: {}; nothing was queued", p.detail),
                    ..p
                });
            }
        }
    }
    let status = if out.iter().any(|e| e.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(BatchResponse { executions: out })).into_response())
}

/// Parses `30s`, `500ms`, `2m` or a number of seconds.
fn parse_wait(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("wait `{text}` is not a duration such as 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("wait `{text}`: the unit must be ms, s or m")),
    };
    let wait = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("wait `{text}` is not a duration such as 30s, 500ms or 2m"))?;
    if wait > MAX_WAIT {
        return Err(format!("wait `{text}` is longer than the most, 5m"));
    }
    Ok(wait)
}

/// Read one execution; with `wait`, answer once it has ended or the wait is over.
#[utoipa::path(
    get, path = "/v1/executions/{id}", tag = "executions",
    params(("id" = i64, Path, description = "The execution's id"), GetQuery),
    responses(
        (status = 200, description = "The execution (when waiting: ended, or as it is when the wait is over)", body = ExecutionOut),
        (status = 400, description = "The id is not a number, or a bad `wait`", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such execution", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn get_execution(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<GetQuery>,
) -> Result<axum::Json<ExecutionOut>, Problem> {
    let wait = match &query.wait {
        Some(w) => parse_wait(w).map_err(Problem::bad_request)?,
        None => Duration::ZERO,
    };
    if wait.is_zero() {
        return Ok(axum::Json(read(&state, id).await?));
    }
    let deadline = tokio::time::Instant::now() + wait;
    match until_ended(&state, id, deadline).await? {
        Waited::Ended(e) | Waited::Deadline(e) | Waited::Stopping(e) => {
            Ok(axum::Json(ExecutionOut::from(e)))
        }
    }
}

/// How a wait for an execution's end ended.
pub(super) enum Waited {
    /// It ended (completed, failed or cancelled).
    Ended(Execution),
    /// The deadline came first; as it was then.
    Deadline(Execution),
    /// The server is stopping; as it was then.
    Stopping(Execution),
}

/// Waits for execution `id` to end, or `deadline`, woken by the event bus (`Waiters`), not
/// by polling; an execution that another worker of a fleet runs is read again every second
/// too, since that worker's events are not this one's. The long-poll and the front doors'
/// held requests both wait here.
pub(super) async fn until_ended(
    state: &AppState,
    id: ExecutionId,
    deadline: tokio::time::Instant,
) -> Result<Waited, Problem> {
    let waiter = state.waiters.register(id);
    let fallback = if state.control.queue().shared() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    loop {
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(execution) = state.control.queue().get(id).await? else {
            return Err(Problem::not_found(format!("no execution {id}")));
        };
        if execution.status.is_terminal() {
            return Ok(Waited::Ended(execution));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Waited::Deadline(execution));
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + fallback)) => {}
            _ = state.stop.cancelled() => return Ok(Waited::Stopping(execution)),
        }
    }
}

const CURSOR_PREFIX: &str = "c1.";

fn cursor_of(id: ExecutionId) -> String {
    format!("{CURSOR_PREFIX}{id:x}")
}

fn parse_cursor(cursor: &str) -> Result<ExecutionId, Problem> {
    cursor
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "cursor `{cursor}` is not one this API returned: pass a page's `next`"
            ))
        })
}

/// List executions, newest first, filtered, a page at a time.
#[utoipa::path(
    get, path = "/v1/executions", tag = "executions",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = ExecutionPage),
        (status = 400, description = "A bad filter, limit or cursor", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<ExecutionPage>, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit {limit} is out of range: give 1 to {MAX_PAGE}"
        )));
    }
    let status = query
        .status
        .as_deref()
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(Problem::bad_request)?;
    if let Some(p) = &query.provider {
        validate_provider_name(p).map_err(Problem::bad_request)?;
    }
    let before_id = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let rows = state
        .control
        .queue()
        .list_page(&ExecutionFilter {
            provider: query.provider,
            status,
            created_after: query.created_after,
            created_before: query.created_before,
            finished_after: None,
            before_id,
            // One more than asked tells whether another page follows.
            limit: limit + 1,
        })
        .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let executions: Vec<ExecutionOut> = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(ExecutionOut::from)
        .collect();
    let next = if more {
        executions.last().map(|e| cursor_of(e.id))
    } else {
        None
    };
    Ok(axum::Json(ExecutionPage { executions, next }))
}

/// Cancel a pending or running execution. A running one's attempt is stopped and its
/// result discarded.
#[utoipa::path(
    post, path = "/v1/executions/{id}/cancel", tag = "executions",
    params(("id" = i64, Path, description = "The execution's id")),
    responses(
        (status = 200, description = "Cancelled", body = ExecutionOut),
        (status = 400, description = "The id is not a number", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "No such execution", content_type = "application/problem+json", body = Problem),
        (status = 409, description = "It had already ended", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<ExecutionOut>, Problem> {
    match state.control.cancel(id).await? {
        Cancelled::Pending | Cancelled::Running { .. } => {
            state.waiters.wake(id);
            Ok(axum::Json(read(&state, id).await?))
        }
        Cancelled::Terminal(status) => Err(Problem::conflict(
            "already-ended",
            "Execution already ended",
            format!("execution {id} is {status}: only pending or running ones can be cancelled"),
        )),
        Cancelled::NotFound => Err(Problem::not_found(format!("no execution {id}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_cursors_parse_or_say_why_not() {
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_wait("7"), Ok(Duration::from_secs(7)));
        assert!(parse_wait("6m").unwrap_err().contains("longer"));
        assert!(parse_wait("soon").unwrap_err().contains("not a duration"));
        assert!(parse_wait("3h").unwrap_err().contains("unit"));
        assert_eq!(parse_cursor(&cursor_of(1234)).ok(), Some(1234));
        assert!(parse_cursor("garbage").is_err());
        assert!(parse_cursor("c1.zz").is_err());
    }
}
