//! Errors as RFC 9457 problem details: every error the API returns has one shape, with a
//! `type` that names the kind of problem, and extractors that turn bad input (a malformed
//! body, unknown fields, a bad path or query) into the same shape.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// A problem detail (RFC 9457), served as `application/problem+json`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:lanes:problem:<kind>`: what kind of problem it is (see `docs/api.md`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, in one line.
    pub detail: String,
}

impl Problem {
    /// A problem of kind `kind` with status `status`.
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:lanes:problem:{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
        }
    }

    /// 400: the request is malformed (syntax, path or query).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 422: the request is well-formed but its values are not acceptable.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "Invalid request",
            detail,
        )
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409.
    pub fn conflict(kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, title, detail)
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 500 or 503: the daemon could not do it; the cause chain is in the detail.
    pub fn internal(status: StatusCode, error: &(dyn std::error::Error + 'static)) -> Self {
        let detail = crate::errors::say_once(std::iter::successors(Some(error), |e| e.source()));
        Self::new(status, "internal", "The daemon could not do it", detail)
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(
            "API: {}",
            crate::errors::say_once(std::iter::successors(
                Some(&e as &(dyn std::error::Error + 'static)),
                |e| e.source()
            ))
        );
        Problem::internal(StatusCode::SERVICE_UNAVAILABLE, &e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lanes\""),
            );
        }
        response
    }
}

/// A JSON body whose rejections are problems: 400 for malformed JSON, 415 without a JSON
/// content type, 413 over the size cap, 422 for a body of the wrong shape.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    let status = rejection.status();
    let text = rejection.body_text();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            status,
            "too-large",
            "Request body too large",
            "the request body is larger than api.max_body_bytes",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
            status,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON, with `content-type: application/json`",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => Problem::invalid(strip_axum_prefix(&text)),
        _ => Problem::bad_request(strip_axum_prefix(&text)),
    }
}

/// axum's rejection texts start with a sentence about axum; the cause after it, with where
/// it was found, is what a client needs.
fn strip_axum_prefix(text: &str) -> String {
    for (prefix, place) in [
        (
            "Failed to deserialize the JSON body into the target type: ",
            "body",
        ),
        (
            "Failed to parse the request body as JSON: ",
            "body is not JSON",
        ),
        ("Failed to deserialize query string: ", "query"),
        ("Invalid URL: ", "path"),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return format!("{place}: {rest}");
        }
    }
    text.to_string()
}

/// Query parameters whose rejection is a 400 problem.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(query_problem(rejection)),
        }
    }
}

fn query_problem(rejection: QueryRejection) -> Problem {
    Problem::bad_request(strip_axum_prefix(&rejection.body_text()))
}

/// Path parameters whose rejection is a 400 problem.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(path_problem(rejection)),
        }
    }
}

fn path_problem(rejection: PathRejection) -> Problem {
    Problem::bad_request(strip_axum_prefix(&rejection.body_text()))
}
