//! OpenAI's Batch API (`/v1/files` and `/v1/batches`) for Chat Completions: the requests go
//! up as a JSONL file, one `{"custom_id", "method", "url", "body"}` line each (the body is a
//! live call's, built by the same code, without `stream`), a batch is created on the file,
//! and its results come back as JSONL files (the output file, and the error file for
//! requests that failed), read line by line.
//!
//! Config: the live path's `base_url` (the paths below go after it, as
//! `/v1/chat/completions` does), `api-key` secret and `max_tokens_field`; `batch_max_items`
//! (default 50,000) and `batch_max_bytes` (default 200 MB) lower or raise the caps the API
//! documents.

use lanes_guest::batch::{
    self, BatchAdapter, BatchItem, BatchLimits, BatchState, BatchStatus, ItemResult, Outcomes,
};
use lanes_guest::bindings::lanes::provider::types::ProviderError;
use lanes_guest::errors;
use lanes_guest::http::Method;
use serde_json::{Value, json};

use crate::OpenAi;

/// The live endpoint every line of a batch goes to: one endpoint a batch.
const ENDPOINT: &str = "/v1/chat/completions";

/// The most requests in one batch file, as the API documents.
const MAX_ITEMS: u32 = 50_000;

/// The largest batch file, 200 MB as the API documents (counted in decimal megabytes, the
/// smaller reading).
const MAX_BYTES: u64 = 200_000_000;

/// How many requests are asked of the host at a time.
const PAGE: u32 = 500;

/// How many pages of `GET /v1/batches` `find` reads: a lost `submit` is looked up soon after,
/// among the newest batches.
const FIND_PAGES: usize = 5;

/// The multipart boundary of the upload. It cannot occur in the file: a boundary only
/// counts after CR LF, and the file is JSON lines, which hold no CR (JSON escapes it).
const BOUNDARY: &str = "lanes-batch-upload-1b4e28ba2fa1";

/// The form before the file's lines: the `purpose` field, then the `file` field's header.
fn form_head() -> String {
    format!(
        "--{BOUNDARY}\r\n\
         Content-Disposition: form-data; name=\"purpose\"\r\n\r\n\
         batch\r\n\
         --{BOUNDARY}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"batch.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    )
}

/// The form after the file's lines.
fn form_tail() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

/// One line of the batch file, with its line end.
fn upload_line(custom_id: &str, body: Value) -> String {
    let mut line = json!({
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": body,
    })
    .to_string();
    line.push('\n');
    line
}

/// A config value as a cap, or `default` when it is unset or unreadable (`limits` must not
/// fail).
fn cap<T: std::str::FromStr>(key: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    lanes_guest::config_parse(key)
        .ok()
        .flatten()
        .unwrap_or(default)
}

/// The `id` of an object the API returned.
fn id_of(value: &Value, what: &str) -> Result<String, ProviderError> {
    value
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ProviderError::Unavailable(format!("{what} came back without an id")))
}

/// A batch object's state.
fn state_of(batch: &Value) -> BatchState {
    let status = match lanes_guest::text_at(batch, "/status").as_str() {
        "validating" => BatchStatus::Validating,
        "in_progress" => BatchStatus::InProgress,
        "finalizing" => BatchStatus::Finalizing,
        "completed" => BatchStatus::Ended,
        "failed" => BatchStatus::Failed,
        "expired" => BatchStatus::Expired,
        "cancelling" => BatchStatus::Cancelling,
        "cancelled" => BatchStatus::Cancelled,
        // A status newer than this adapter: still running, as far as lanes can tell, so the
        // host keeps asking.
        _ => BatchStatus::InProgress,
    };
    let message = match status {
        BatchStatus::Failed => Some(failure(batch)),
        _ => None,
    };
    BatchState {
        status,
        total: lanes_guest::count_at(batch, "/request_counts/total"),
        succeeded: lanes_guest::count_at(batch, "/request_counts/completed"),
        failed: lanes_guest::count_at(batch, "/request_counts/failed"),
        message,
    }
}

/// Why a batch failed as a whole: its first error (`errors.data[0]`), as
/// `<code>: <message> (line <n>)`.
fn failure(batch: &Value) -> String {
    let Some(first) = batch.pointer("/errors/data/0") else {
        return "the batch failed".to_string();
    };
    let code = lanes_guest::text_at(first, "/code");
    let message = lanes_guest::text_at(first, "/message");
    let mut text = match (code.is_empty(), message.is_empty()) {
        (true, true) => "the batch failed".to_string(),
        (true, false) => message,
        (false, true) => code,
        (false, false) => format!("{code}: {message}"),
    };
    if let Some(line) = first.get("line").and_then(Value::as_u64) {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

/// The id of the batch on a page of `GET /v1/batches` whose `metadata.lanes_batch` is
/// `tag`.
fn tagged(page: &Value, tag: &str) -> Option<String> {
    page.get("data")?
        .as_array()?
        .iter()
        .find(|b| b.pointer("/metadata/lanes_batch").and_then(Value::as_str) == Some(tag))
        .and_then(|b| b.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The cursor of the page after `page`, if there is one.
fn next_cursor(page: &Value) -> Option<String> {
    if page.get("has_more").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    page.get("last_id")
        .and_then(Value::as_str)
        .or_else(|| page.get("data")?.as_array()?.last()?.get("id")?.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// One line of an output or error file as (custom id, result); `None` for a line that is
/// not JSON or names no request.
fn line_outcome(line: &str) -> Option<(String, ItemResult)> {
    let value: Value = serde_json::from_str(line).ok()?;
    let custom_id = value.get("custom_id")?.as_str()?.to_string();
    let error = value.get("error").filter(|e| !e.is_null());
    let code = error.map(|e| lanes_guest::text_at(e, "/code"));
    let result = match (
        code.as_deref(),
        value.get("response").filter(|r| !r.is_null()),
    ) {
        (Some("batch_expired"), _) => ItemResult::Expired,
        (Some("batch_cancelled"), _) => ItemResult::Cancelled,
        (_, Some(response)) => {
            let status = response
                .get("status_code")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok());
            match status {
                Some(status) => batch::http_outcome_with::<OpenAi>(
                    status,
                    response.get("body").unwrap_or(&Value::Null),
                    crate::parse_value,
                ),
                None => ItemResult::Failed(ProviderError::Unavailable(
                    "a result line without a status code".into(),
                )),
            }
        }
        // A failure without an HTTP answer: classified by its code, as a stream's error is.
        (Some(code), None) => {
            let message = error.map_or_else(String::new, |e| lanes_guest::text_at(e, "/message"));
            ItemResult::Failed(lanes_guest::scrub(errors::from_error_kind(code, &message)))
        }
        (None, None) => ItemResult::Failed(ProviderError::Unavailable(
            "a result line with neither a response nor an error".into(),
        )),
    };
    Some((custom_id, result))
}

/// `/v1/batches/{id}`.
fn batch_path(id: &str) -> String {
    format!("/v1/batches/{}", batch::segment(id))
}

impl BatchAdapter for OpenAi {
    fn limits() -> BatchLimits {
        BatchLimits {
            max_items: cap("batch_max_items", MAX_ITEMS),
            max_bytes: cap("batch_max_bytes", MAX_BYTES),
        }
    }

    fn batch_headers() -> Result<Vec<(String, String)>, ProviderError> {
        // What `HttpRequest::bearer_auth` adds to a live call.
        Ok(lanes_guest::secret("api-key")
            .map(|key| ("authorization".to_string(), format!("Bearer {key}")))
            .into_iter()
            .collect())
    }

    fn submit(tag: &str) -> Result<String, ProviderError> {
        let mut items = batch::items(PAGE);
        // An empty batch is refused before anything is uploaded.
        let first = items
            .next()
            .ok_or_else(|| lanes_guest::refuse("a batch needs at least one request"))?;
        let mut upload = batch::upload::<OpenAi>(
            Method::Post,
            "/v1/files",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )?;
        upload.write(form_head().as_bytes())?;
        let mut count = 0u64;
        for BatchItem { custom_id, request } in std::iter::once(first).chain(items) {
            let built = batch::item_request::<OpenAi>(&custom_id, request)?;
            upload.write(upload_line(&custom_id, built.body).as_bytes())?;
            count += 1;
        }
        upload.write(form_tail().as_bytes())?;
        let bytes = upload.written();
        let file = id_of(&upload.finish()?, "the uploaded batch file")?;
        let created = batch::call::<OpenAi>(
            Method::Post,
            "/v1/batches",
            Some(&json!({
                "input_file_id": file,
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "metadata": {"lanes_batch": tag},
            })),
        )?;
        let id = id_of(&created, "the batch")?;
        lanes_guest::info!("batch {id}: {count} requests sent in file {file} ({bytes} bytes)");
        Ok(id)
    }

    fn find(tag: &str) -> Result<Option<String>, ProviderError> {
        let mut path = "/v1/batches?limit=100".to_string();
        for _ in 0..FIND_PAGES {
            let page = batch::call::<OpenAi>(Method::Get, &path, None)?;
            if let Some(id) = tagged(&page, tag) {
                return Ok(Some(id));
            }
            let Some(after) = next_cursor(&page) else {
                break;
            };
            path = format!("/v1/batches?limit=100&after={}", batch::segment(&after));
        }
        Ok(None)
    }

    fn status(id: &str) -> Result<BatchState, ProviderError> {
        let value = batch::call::<OpenAi>(Method::Get, &batch_path(id), None)?;
        Ok(state_of(&value))
    }

    fn results(id: &str) -> Result<(), ProviderError> {
        let value = batch::call::<OpenAi>(Method::Get, &batch_path(id), None)?;
        let mut outcomes = Outcomes::new();
        for field in ["output_file_id", "error_file_id"] {
            let Some(file) = value
                .get(field)
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty())
            else {
                continue;
            };
            let url = batch::url::<OpenAi>(&format!("/v1/files/{}/content", batch::segment(file)));
            let mut lines = batch::download::<OpenAi>(&url)?;
            outcomes.read(&mut lines, line_outcome)?;
        }
        outcomes.finish(id);
        // The input file is lanes' own upload, of no use once the batch has ended: it would
        // stay in the account's storage until deleted. (The output and error files stay: a
        // worker that takes the batch over reads them again if the results were not all
        // written.) A failed delete only says so.
        if let Some(file) = value
            .get("input_file_id")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
        {
            let path = format!("/v1/files/{}", batch::segment(file));
            if let Err(e) = batch::call::<OpenAi>(Method::Delete, &path, None) {
                lanes_guest::warn!("batch {id}: its input file {file} was not deleted: {e:?}");
            }
        }
        Ok(())
    }

    fn cancel(id: &str) -> Result<(), ProviderError> {
        batch::call::<OpenAi>(Method::Post, &format!("{}/cancel", batch_path(id)), None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::types::{ContentPart, FinishReason};

    #[test]
    fn the_upload_is_a_form_of_jsonl_lines() {
        let line = upload_line("exec-1", json!({"model": "m", "messages": []}));
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains(['\n', '\r']));
        let value: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(
            value,
            json!({"custom_id": "exec-1", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "m", "messages": []}})
        );
        let form = format!("{}{line}{}", form_head(), form_tail());
        assert!(form.starts_with(&format!("--{BOUNDARY}\r\n")));
        assert!(form.contains(
            "name=\"file\"; filename=\"batch.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{"
        ));
        assert!(form.contains("name=\"purpose\"\r\n\r\nbatch\r\n"));
        assert!(form.ends_with(&format!("}}\n\r\n--{BOUNDARY}--\r\n")));
    }

    #[test]
    fn states() {
        let state = state_of(&json!({
            "id": "batch_1", "status": "in_progress",
            "request_counts": {"total": 10, "completed": 4, "failed": 1}
        }));
        assert_eq!(
            state,
            BatchState {
                status: BatchStatus::InProgress,
                total: 10,
                succeeded: 4,
                failed: 1,
                message: None
            }
        );
        for (name, status) in [
            ("validating", BatchStatus::Validating),
            ("finalizing", BatchStatus::Finalizing),
            ("completed", BatchStatus::Ended),
            ("expired", BatchStatus::Expired),
            ("cancelling", BatchStatus::Cancelling),
            ("cancelled", BatchStatus::Cancelled),
            ("something_new", BatchStatus::InProgress),
        ] {
            assert_eq!(state_of(&json!({"status": name})).status, status, "{name}");
        }
        let failed = state_of(&json!({
            "status": "failed",
            "errors": {"object": "list", "data": [
                {"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.", "param": null, "line": 2}
            ]}
        }));
        assert_eq!(failed.status, BatchStatus::Failed);
        assert_eq!(
            failed.message.as_deref(),
            Some("invalid_json_line: This line is not parseable as valid JSON. (line 2)")
        );
        assert_eq!(
            state_of(&json!({"status": "failed"})).message.as_deref(),
            Some("the batch failed")
        );
    }

    #[test]
    fn a_batch_is_found_by_its_tag_across_pages() {
        let page = json!({"object": "list", "data": [
            {"id": "batch_a", "metadata": {"lanes_batch": "other"}},
            {"id": "batch_b", "metadata": null},
            {"id": "batch_c", "metadata": {"lanes_batch": "b-42"}}
        ], "first_id": "batch_a", "last_id": "batch_c", "has_more": true});
        assert_eq!(tagged(&page, "b-42").as_deref(), Some("batch_c"));
        assert_eq!(tagged(&page, "b-43"), None);
        assert_eq!(next_cursor(&page).as_deref(), Some("batch_c"));
        assert_eq!(
            next_cursor(&json!({"data": [{"id": "x"}], "has_more": true})).as_deref(),
            Some("x")
        );
        assert_eq!(next_cursor(&json!({"data": [], "has_more": false})), None);
    }

    #[test]
    fn result_lines() {
        let ok = r#"{"id":"batch_req_1","custom_id":"exec-1","response":{"status_code":200,"request_id":"req_1","body":{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}},"error":null}"#;
        let (id, result) = line_outcome(ok).unwrap();
        assert_eq!(id, "exec-1");
        let ItemResult::Succeeded(response) = result else {
            panic!("{result:?}")
        };
        assert_eq!(response.content, vec![ContentPart::Text("Hi".into())]);
        assert_eq!(response.finish_reason, FinishReason::Stop);
        assert_eq!(response.usage.input_tokens, 3);

        let refused = r#"{"custom_id":"exec-2","response":{"status_code":400,"body":{"error":{"message":"bad model","type":"invalid_request_error","code":"model_not_found"}}},"error":null}"#;
        assert!(matches!(
            line_outcome(refused),
            Some((_, ItemResult::Failed(ProviderError::InvalidRequest(m)))) if m == "HTTP 400: model_not_found: bad model"
        ));
        let limited = r#"{"custom_id":"exec-3","response":{"status_code":429,"body":{"error":{"message":"slow","code":"rate_limit_exceeded"}}}}"#;
        assert!(matches!(
            line_outcome(limited),
            Some((_, ItemResult::Failed(ProviderError::RateLimited(_))))
        ));
        let busy = r#"{"custom_id":"exec-4","response":{"status_code":500,"body":{"error":{"message":"oops"}}}}"#;
        assert!(matches!(
            line_outcome(busy),
            Some((_, ItemResult::Failed(ProviderError::Unavailable(_))))
        ));
        let expired = r#"{"custom_id":"exec-5","response":null,"error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."}}"#;
        assert_eq!(line_outcome(expired).unwrap().1, ItemResult::Expired);
        let cancelled = r#"{"custom_id":"exec-6","response":null,"error":{"code":"batch_cancelled","message":"cancelled"}}"#;
        assert_eq!(line_outcome(cancelled).unwrap().1, ItemResult::Cancelled);
        let other = r#"{"custom_id":"exec-7","response":null,"error":{"code":"server_error","message":"boom"}}"#;
        assert!(matches!(
            line_outcome(other),
            Some((_, ItemResult::Failed(ProviderError::Unavailable(m)))) if m == "server_error: boom"
        ));
        assert!(matches!(
            line_outcome(r#"{"custom_id":"exec-8"}"#),
            Some((_, ItemResult::Failed(ProviderError::Unavailable(_))))
        ));
        assert!(line_outcome("not json").is_none());
        assert!(line_outcome(r#"{"response":{"status_code":200}}"#).is_none());
    }
}
