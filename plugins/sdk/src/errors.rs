//! From HTTP outcomes to `provider-error` cases.

use crate::bindings::lanes::provider::types::{ProviderError, RateLimit};
use crate::http::{HttpError, Response};

/// A transport failure: a denied host, a bad URL or an oversized request or response is
/// permanent; the rest are transient.
pub fn transport(e: HttpError) -> ProviderError {
    match e {
        HttpError::Denied(_) | HttpError::TooLarge(_) | HttpError::RequestTooLarge(_) => {
            ProviderError::Other(e.to_string())
        }
        HttpError::BadUrl(_) => ProviderError::InvalidRequest(e.to_string()),
        other => ProviderError::Unavailable(other.to_string()),
    }
}

/// The common mapping of an error status, with the API's own `message`:
/// 429 rate-limited (with retry-after), 408/409/5xx unavailable, 401/403 unauthorized, and
/// any other 4xx an invalid request. An unavailable answer's `retry-after` (a 503 or 529
/// that says when to come back) is reported to the host through `hints.retry-after`.
pub fn from_status(response: &Response, message: String) -> ProviderError {
    let error = classify_status(response, message);
    report_wait(unavailable_wait(response, &error));
    error
}

/// The wait an `unavailable` answer asked for, in ms (a rate limit carries its own).
pub fn unavailable_wait(response: &Response, error: &ProviderError) -> Option<u64> {
    match error {
        ProviderError::Unavailable(_) => retry_after_ms(response),
        _ => None,
    }
}

/// Tells the host how long the provider asked to wait (`hints.retry-after`).
pub fn report_wait(ms: Option<u64>) {
    if let Some(ms) = ms {
        // Native builds (the SDK's unit tests) have no host to tell.
        #[cfg(target_arch = "wasm32")]
        crate::bindings::lanes::provider::hints::retry_after(ms);
        #[cfg(not(target_arch = "wasm32"))]
        let _ = ms;
    }
}

fn classify_status(response: &Response, message: String) -> ProviderError {
    let message = format!("HTTP {}: {message}", response.status);
    match response.status {
        429 => ProviderError::RateLimited(mark_spent(
            RateLimit {
                retry_after_ms: retry_after_ms(response),
                window_spent: false,
                message,
            },
            spent_window(response),
        )),
        401 | 403 => ProviderError::Unauthorized(message),
        408 | 409 => ProviderError::Unavailable(message),
        s if s >= 500 => ProviderError::Unavailable(message),
        _ => ProviderError::InvalidRequest(message),
    }
}

/// What a rate-limited message carries when the provider said its request or token window
/// is spent: `(window spent: <why>)`. Since WIT 0.2 the host reads `rate-limit.window-spent`
/// (see `docs/policies.md`); the words stay in the message for people and older hosts. A
/// spent window pauses the provider until the window resets, while a 429 without it, that
/// comes while the provider's other calls succeed, is a refusal of the calls over its
/// capacity, which an adaptive lane answers by shrinking its limit, without a pause.
pub const WINDOW_SPENT: &str = "window spent";

/// The headers that say how much of a request or token window is left: OpenAI's,
/// Anthropic's and the IETF draft's. On a 429, one of them at 0 says the window is spent.
const REMAINING: [&str; 8] = [
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
    "ratelimit-remaining",
    "x-ratelimit-remaining",
];

/// The header that says a request or token window is spent (`x-ratelimit-remaining-requests:
/// 0`), as `name: value`, if one does.
pub fn spent_window(response: &Response) -> Option<String> {
    REMAINING.iter().find_map(|name| {
        let value = response.header(name)?.trim();
        (value.parse::<f64>().ok()? <= 0.0).then(|| format!("{name}: {value}"))
    })
}

/// `limit`, marked as a spent window when `why` says so: `window-spent` set, and
/// `(window spent: <why>)` added to its message.
pub fn mark_spent(mut limit: RateLimit, why: Option<String>) -> RateLimit {
    if let Some(why) = why {
        limit.window_spent = true;
        limit.message = format!("{} ({WINDOW_SPENT}: {why})", limit.message);
    }
    limit
}

/// An error event inside a streamed answer, whose HTTP status said success, classified by
/// the API's error type or code (such as Anthropic's `overloaded_error` or OpenAI's
/// `rate_limit_exceeded`): a rate limit is `rate-limited`, a refused request or key is
/// `invalid-request` or `unauthorized`, and the rest (overload, server errors, unknown
/// kinds) is `unavailable`, as a cut stream is.
pub fn from_stream_error(kind: &str, message: &str) -> ProviderError {
    let kind = kind.to_ascii_lowercase();
    let described = if kind.is_empty() {
        format!("error in stream: {message}")
    } else {
        format!("error in stream: {kind}: {message}")
    };
    classify_kind(&kind, described)
}

/// An error that came without an HTTP status of its own, such as a failed request in a
/// batch's results, classified by the API's error type or code as [`from_stream_error`]
/// does, with the message `<kind>: <message>`.
pub fn from_error_kind(kind: &str, message: &str) -> ProviderError {
    let kind = kind.to_ascii_lowercase();
    let described = if kind.is_empty() {
        message.to_string()
    } else {
        format!("{kind}: {message}")
    };
    classify_kind(&kind, described)
}

fn classify_kind(kind: &str, described: String) -> ProviderError {
    if kind.contains("rate_limit") {
        ProviderError::RateLimited(RateLimit {
            retry_after_ms: None,
            window_spent: false,
            message: described,
        })
    } else if kind.contains("insufficient_quota") || kind.contains("billing") {
        ProviderError::Other(described)
    } else if kind.contains("authentication") || kind.contains("permission") {
        ProviderError::Unauthorized(described)
    } else if kind.contains("invalid_request")
        || kind.contains("not_found")
        || kind.contains("request_too_large")
        || kind.contains("context_length")
    {
        ProviderError::InvalidRequest(described)
    } else {
        ProviderError::Unavailable(described)
    }
}

/// Applies the server's `x-should-retry` header, which Anthropic and OpenAI send and their
/// official SDKs obey before anything else: `true` makes the error transient, `false` makes
/// it permanent. Without the header (or with another value) `error` stands.
pub fn obey_should_retry(response: &Response, error: ProviderError) -> ProviderError {
    let said = response
        .header("x-should-retry")
        .map(|v| v.trim().to_ascii_lowercase());
    match (said.as_deref(), error) {
        (Some("true"), ProviderError::InvalidRequest(m))
        | (Some("true"), ProviderError::Unauthorized(m))
        | (Some("true"), ProviderError::Other(m)) => {
            ProviderError::Unavailable(format!("{m} (x-should-retry: true)"))
        }
        (Some("false"), ProviderError::RateLimited(RateLimit { message, .. }))
        | (Some("false"), ProviderError::Unavailable(message)) => {
            ProviderError::Other(format!("{message} (x-should-retry: false)"))
        }
        (_, error) => error,
    }
}

/// How long the server asked to wait: `retry-after-ms`, then `retry-after` in seconds or
/// as an HTTP date (RFC 9110), measured against the guest's wall clock.
pub fn retry_after_ms(response: &Response) -> Option<u64> {
    if let Some(ms) = response
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(ms.max(0.0) as u64);
    }
    let value = response.header("retry-after")?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return Some((seconds.max(0.0) * 1000.0) as u64);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// A Go-style duration such as `1s`, `6m0s`, `20ms` or `1.5s`, in milliseconds.
pub fn go_duration_ms(text: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    Some(total.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_headers(headers: &[(&str, &str)]) -> Response {
        Response {
            status: 429,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn an_unavailable_answer_reports_its_wait() {
        let mut busy = with_headers(&[("retry-after", "2")]);
        busy.status = 503;
        let error = from_status(&busy, "overloaded".into());
        assert!(matches!(error, ProviderError::Unavailable(_)));
        assert_eq!(unavailable_wait(&busy, &error), Some(2000));
        let mut limited = with_headers(&[("retry-after", "2")]);
        limited.status = 429;
        let error = from_status(&limited, "slow down".into());
        assert_eq!(
            unavailable_wait(&limited, &error),
            None,
            "a rate limit carries its own"
        );
    }

    #[test]
    fn a_spent_window_is_marked() {
        let limited = |headers: &[(&str, &str)]| match from_status(
            &with_headers(headers),
            "slow down".into(),
        ) {
            ProviderError::RateLimited(r) => {
                assert_eq!(r.window_spent, r.message.contains(WINDOW_SPENT), "{r:?}");
                r.message
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            limited(&[("x-ratelimit-remaining-requests", "0")]),
            "HTTP 429: slow down (window spent: x-ratelimit-remaining-requests: 0)"
        );
        assert!(
            limited(&[
                ("x-ratelimit-remaining-requests", "12"),
                ("x-ratelimit-remaining-tokens", "0")
            ])
            .ends_with("(window spent: x-ratelimit-remaining-tokens: 0)")
        );
        assert!(limited(&[("anthropic-ratelimit-requests-remaining", "0")]).contains(WINDOW_SPENT));
        // Room left in every window, or no word of one: a refusal over a capacity.
        assert_eq!(
            limited(&[("x-ratelimit-remaining-requests", "3")]),
            "HTTP 429: slow down"
        );
        assert_eq!(limited(&[]), "HTTP 429: slow down");
    }

    #[test]
    fn retry_after_in_every_form() {
        let ms = |h: &[(&str, &str)]| retry_after_ms(&with_headers(h));
        assert_eq!(
            ms(&[("retry-after-ms", "250"), ("retry-after", "9")]),
            Some(250)
        );
        assert_eq!(ms(&[("Retry-After", "2")]), Some(2000));
        assert_eq!(ms(&[("retry-after", "0.5")]), Some(500));
        let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
        let date = httpdate::fmt_http_date(ahead);
        let waited = ms(&[("retry-after", &date)]).unwrap();
        assert!((28_000..=30_000).contains(&waited), "{date}: {waited}");
        assert_eq!(
            ms(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Some(0),
            "a date in the past means now"
        );
        assert_eq!(ms(&[("retry-after", "soon")]), None);
        assert_eq!(ms(&[]), None);
    }

    #[test]
    fn should_retry_overrides_the_class() {
        let class = |said: Option<&str>, error: ProviderError| {
            let headers: Vec<(&str, &str)> =
                said.map(|v| ("x-should-retry", v)).into_iter().collect();
            obey_should_retry(&with_headers(&headers), error)
        };
        let invalid = || ProviderError::InvalidRequest("bad".into());
        let busy = || ProviderError::Unavailable("busy".into());
        assert!(matches!(
            class(Some("true"), invalid()),
            ProviderError::Unavailable(_)
        ));
        assert!(
            matches!(class(Some("false"), busy()), ProviderError::Other(m) if m.contains("x-should-retry: false"))
        );
        let limited = ProviderError::RateLimited(RateLimit {
            retry_after_ms: Some(1),
            window_spent: false,
            message: "slow".into(),
        });
        assert!(matches!(
            class(Some("False"), limited),
            ProviderError::Other(_)
        ));
        assert!(matches!(
            class(None, invalid()),
            ProviderError::InvalidRequest(_)
        ));
        assert!(matches!(
            class(Some("maybe"), busy()),
            ProviderError::Unavailable(_)
        ));
    }

    #[test]
    fn stream_errors_by_kind() {
        let class = |kind: &str| match from_stream_error(kind, "m") {
            ProviderError::RateLimited(_) => "rate-limited",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::InvalidRequest(_) => "invalid",
            ProviderError::Unauthorized(_) => "unauthorized",
            ProviderError::Other(_) => "other",
        };
        assert_eq!(class("overloaded_error"), "unavailable");
        assert_eq!(class("api_error"), "unavailable");
        assert_eq!(class("server_error"), "unavailable");
        assert_eq!(class(""), "unavailable");
        assert_eq!(class("rate_limit_error"), "rate-limited");
        assert_eq!(class("rate_limit_exceeded"), "rate-limited");
        assert_eq!(class("invalid_request_error"), "invalid");
        assert_eq!(class("authentication_error"), "unauthorized");
        assert_eq!(class("insufficient_quota"), "other");
    }

    #[test]
    fn errors_without_a_status_by_kind() {
        assert!(matches!(
            from_error_kind("invalid_request_error", "bad"),
            ProviderError::InvalidRequest(m) if m == "invalid_request_error: bad"
        ));
        assert!(matches!(
            from_error_kind("", "gone"),
            ProviderError::Unavailable(m) if m == "gone"
        ));
        assert!(matches!(
            from_error_kind("permission_error", "no"),
            ProviderError::Unauthorized(_)
        ));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("1s"), Some(1000));
        assert_eq!(go_duration_ms("6m0s"), Some(360_000));
        assert_eq!(go_duration_ms("20ms"), Some(20));
        assert_eq!(go_duration_ms("1.5s"), Some(1500));
        assert_eq!(go_duration_ms("soon"), None);
    }
}
