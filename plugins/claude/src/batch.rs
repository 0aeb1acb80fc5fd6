//! Anthropic's Message Batches API (`/v1/messages/batches`): the requests go inline, as
//! `{"requests": [{"custom_id", "params"}, ...]}` (each `params` a live call's body, built by
//! the same code, without `stream`), written into the upload as the host hands them over;
//! the results come back as JSONL from the batch's `results_url`, read line by line.
//!
//! The API keeps no metadata with a batch, so `find` can never look one up. Its batches are
//! `in_progress`, `canceling` or `ended`; a batch that expired or was cancelled also ends
//! `ended`, its requests that did not run `expired` or `canceled` in the results.
//!
//! Config: the live path's `base_url`, `api-key` secret, `auth`, `anthropic_version`,
//! `default_max_tokens` and `thinking`; `batch_max_items` (default 100,000) and
//! `batch_max_bytes` (default 256 MB) lower or raise the caps the API documents.

use lanes_guest::batch::{
    self, BatchAdapter, BatchItem, BatchLimits, BatchState, BatchStatus, ItemResult, Outcomes,
};
use lanes_guest::bindings::lanes::provider::types::ProviderError;
use lanes_guest::errors;
use lanes_guest::http::Method;
use serde_json::{Value, json};

use crate::Claude;

/// The most requests in one batch, as the API documents.
const MAX_ITEMS: u32 = 100_000;

/// The largest batch, 256 MB as the API documents (counted in decimal megabytes, the
/// smaller reading).
const MAX_BYTES: u64 = 256_000_000;

/// How many requests are asked of the host at a time.
const PAGE: u32 = 500;

/// The batches endpoint, after the base URL.
const BATCHES: &str = "/v1/messages/batches";

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

/// One entry of the upload's `requests` array.
fn request_entry(custom_id: &str, params: Value) -> String {
    json!({"custom_id": custom_id, "params": params}).to_string()
}

/// `/v1/messages/batches/{id}`.
fn batch_path(id: &str) -> String {
    format!("{BATCHES}/{}", batch::segment(id))
}

/// A count of `request_counts`.
fn counted(batch: &Value, name: &str) -> u32 {
    lanes_guest::count_at(batch, &format!("/request_counts/{name}"))
}

/// A message batch's state. The API counts requests by their end only once the whole batch
/// ended; until then they are all `processing`.
fn state_of(batch: &Value) -> BatchState {
    let status = match lanes_guest::text_at(batch, "/processing_status").as_str() {
        "ended" => BatchStatus::Ended,
        "canceling" => BatchStatus::Cancelling,
        // `in_progress`, or a status newer than this adapter: still running, as far as lanes
        // can tell, so the host keeps asking.
        _ => BatchStatus::InProgress,
    };
    let succeeded = counted(batch, "succeeded");
    let failed = counted(batch, "errored")
        .saturating_add(counted(batch, "canceled"))
        .saturating_add(counted(batch, "expired"));
    BatchState {
        status,
        total: counted(batch, "processing")
            .saturating_add(succeeded)
            .saturating_add(failed),
        succeeded,
        failed,
        message: None,
    }
}

/// Where the results of `batch` (batch `id`) are: its `results_url` when that is a whole
/// URL, else the results path after the base URL.
fn results_url(batch: &Value, id: &str) -> String {
    match batch.get("results_url").and_then(Value::as_str) {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => url.to_string(),
        _ => batch::url::<Claude>(&format!("{}/results", batch_path(id))),
    }
}

/// The error of an `errored` result (`{"type": "error", "error": {"type", "message"}}`),
/// mapped by its type as a live call's error event is: `invalid_request_error` is
/// `invalid-request`, `rate_limit_error` `rate-limited`, `authentication_error`
/// `unauthorized`, `overloaded_error` and `api_error` `unavailable`. A spend limit is not
/// lifted by waiting, as for a live 429.
fn item_error(error: &Value) -> ProviderError {
    let inner = error
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or(error);
    let kind = lanes_guest::text_at(inner, "/type");
    let message = lanes_guest::text_at(inner, "/message");
    let spend_limit = lanes_guest::text_at(inner, "/details/error_code")
        == "enforced_spend_limit_reached"
        || message.to_ascii_lowercase().contains("spend limit");
    let class = if spend_limit {
        ProviderError::Other(format!("{kind}: {message}"))
    } else {
        errors::from_error_kind(&kind, &message)
    };
    lanes_guest::scrub(class)
}

/// One line of the results as (custom id, result); `None` for a line that is not JSON or
/// names no request.
fn line_outcome(line: &str) -> Option<(String, ItemResult)> {
    let value: Value = serde_json::from_str(line).ok()?;
    let custom_id = value.get("custom_id")?.as_str()?.to_string();
    let result = value.get("result").unwrap_or(&Value::Null);
    let outcome = match lanes_guest::text_at(result, "/type").as_str() {
        // The message is a live call's answer.
        "succeeded" => batch::http_outcome_with::<Claude>(
            200,
            result.get("message").unwrap_or(&Value::Null),
            crate::parse_value,
        ),
        "errored" => ItemResult::Failed(item_error(result.get("error").unwrap_or(&Value::Null))),
        "canceled" => ItemResult::Cancelled,
        "expired" => ItemResult::Expired,
        other => ItemResult::Failed(ProviderError::Other(format!(
            "a result of an unknown type `{other}`"
        ))),
    };
    Some((custom_id, outcome))
}

impl BatchAdapter for Claude {
    fn limits() -> BatchLimits {
        BatchLimits {
            max_items: cap("batch_max_items", MAX_ITEMS),
            max_bytes: cap("batch_max_bytes", MAX_BYTES),
        }
    }

    fn batch_headers() -> Result<Vec<(String, String)>, ProviderError> {
        crate::headers()
    }

    fn submit(_tag: &str) -> Result<String, ProviderError> {
        let mut items = batch::items(PAGE);
        // An empty batch is refused before anything is uploaded.
        let first = items
            .next()
            .ok_or_else(|| lanes_guest::refuse("a batch needs at least one request"))?;
        let mut upload = batch::upload::<Claude>(Method::Post, BATCHES, "application/json")?;
        upload.write(b"{\"requests\":[")?;
        let mut count = 0u64;
        for BatchItem { custom_id, request } in std::iter::once(first).chain(items) {
            let built = batch::item_request::<Claude>(&custom_id, request)?;
            if count > 0 {
                upload.write(b",")?;
            }
            upload.write(request_entry(&custom_id, built.body).as_bytes())?;
            count += 1;
        }
        upload.write(b"]}")?;
        let bytes = upload.written();
        let created = upload.finish()?;
        let id = created
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ProviderError::Unavailable("the batch came back without an id".into()))?
            .to_string();
        lanes_guest::info!("batch {id}: {count} requests sent ({bytes} bytes)");
        Ok(id)
    }

    fn find(_tag: &str) -> Result<Option<String>, ProviderError> {
        // The API keeps nothing of ours with a batch to look it up by.
        Ok(None)
    }

    fn status(id: &str) -> Result<BatchState, ProviderError> {
        let value = batch::call::<Claude>(Method::Get, &batch_path(id), None)?;
        Ok(state_of(&value))
    }

    fn results(id: &str) -> Result<(), ProviderError> {
        let value = batch::call::<Claude>(Method::Get, &batch_path(id), None)?;
        let mut lines = batch::download::<Claude>(&results_url(&value, id))?;
        let mut outcomes = Outcomes::new();
        outcomes.read(&mut lines, line_outcome)?;
        outcomes.finish(id);
        Ok(())
    }

    fn cancel(id: &str) -> Result<(), ProviderError> {
        batch::call::<Claude>(Method::Post, &format!("{}/cancel", batch_path(id)), None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_guest::bindings::lanes::provider::types::{ContentPart, FinishReason};

    #[test]
    fn an_entry_of_the_upload() {
        let entry = request_entry("exec-1", json!({"model": "m", "max_tokens": 5}));
        assert_eq!(
            serde_json::from_str::<Value>(&entry).unwrap(),
            json!({"custom_id": "exec-1", "params": {"model": "m", "max_tokens": 5}})
        );
        // The pieces `submit` writes make one JSON document.
        let whole = format!("{{\"requests\":[{entry},{entry}]}}");
        let value: Value = serde_json::from_str(&whole).unwrap();
        assert_eq!(value["requests"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn states() {
        let running = state_of(&json!({
            "id": "msgbatch_1", "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": 5, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
            "results_url": null
        }));
        assert_eq!(
            running,
            BatchState {
                status: BatchStatus::InProgress,
                total: 5,
                succeeded: 0,
                failed: 0,
                message: None
            }
        );
        let ended = state_of(&json!({
            "processing_status": "ended", "cancel_initiated_at": "2026-01-01T00:00:00Z",
            "request_counts": {"processing": 0, "succeeded": 3, "errored": 1, "canceled": 2, "expired": 1}
        }));
        assert_eq!(ended.status, BatchStatus::Ended);
        assert_eq!((ended.total, ended.succeeded, ended.failed), (7, 3, 4));
        assert_eq!(
            state_of(&json!({"processing_status": "canceling"})).status,
            BatchStatus::Cancelling
        );
    }

    #[test]
    fn result_lines() {
        let ok = r#"{"custom_id":"exec-1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}}}"#;
        let (id, result) = line_outcome(ok).unwrap();
        assert_eq!(id, "exec-1");
        let ItemResult::Succeeded(response) = result else {
            panic!("{result:?}")
        };
        assert_eq!(response.content, vec![ContentPart::Text("Hi".into())]);
        assert_eq!(response.finish_reason, FinishReason::Stop);
        assert_eq!(response.model, "claude-x");

        let errored = |kind: &str| {
            let line = json!({"custom_id": "exec-2", "result": {"type": "errored", "error": {
                "type": "error", "error": {"type": kind, "message": "m"}}}})
            .to_string();
            match line_outcome(&line) {
                Some((_, ItemResult::Failed(e))) => e,
                other => panic!("{other:?}"),
            }
        };
        assert!(matches!(
            errored("invalid_request_error"),
            ProviderError::InvalidRequest(m) if m == "invalid_request_error: m"
        ));
        assert!(matches!(
            errored("overloaded_error"),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            errored("api_error"),
            ProviderError::Unavailable(_)
        ));
        assert!(matches!(
            errored("rate_limit_error"),
            ProviderError::RateLimited(_)
        ));
        assert!(matches!(
            errored("authentication_error"),
            ProviderError::Unauthorized(_)
        ));
        let spend = json!({"custom_id": "exec-3", "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": "rate_limit_error",
            "message": "You have reached your spend limit"}}}})
        .to_string();
        assert!(matches!(
            line_outcome(&spend),
            Some((_, ItemResult::Failed(ProviderError::Other(_))))
        ));
        assert_eq!(
            line_outcome(r#"{"custom_id":"exec-4","result":{"type":"canceled"}}"#)
                .unwrap()
                .1,
            ItemResult::Cancelled
        );
        assert_eq!(
            line_outcome(r#"{"custom_id":"exec-5","result":{"type":"expired"}}"#)
                .unwrap()
                .1,
            ItemResult::Expired
        );
        assert!(matches!(
            line_outcome(r#"{"custom_id":"exec-6","result":{"type":"new"}}"#),
            Some((_, ItemResult::Failed(ProviderError::Other(_))))
        ));
        assert!(line_outcome("{").is_none());
        assert!(line_outcome(r#"{"result":{"type":"expired"}}"#).is_none());
    }

    #[test]
    fn the_results_url() {
        let absolute = json!({"results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results"});
        assert_eq!(
            results_url(&absolute, "msgbatch_1"),
            "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results"
        );
    }
}
