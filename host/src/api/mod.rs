//! The control plane over HTTP, served by `lanes serve`: the JSON API under `/v1`, the
//! Prometheus metrics at `/metrics`, and the dashboard at `/`.
//!
//! - [`wire`] holds the API's JSON types, apart from the daemon's own;
//! - [`problem`] turns every error, bad input included, into one RFC 9457 shape;
//! - [`observe`] follows the event bus (one subscription) for per-provider numbers, the
//!   metrics and the long-polls;
//! - `executions` and `control` are the routes; [`metrics`] the scrape.
//!
//! The API reaches the daemon only through [`Control`] and its events: it never touches a
//! lane or the completer.

mod anthropic;
mod batches;
mod control;
mod dashboard;
mod executions;
mod front;
pub mod metrics;
pub mod observe;
mod openai;
pub mod problem;
mod streams;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use sha2::Digest;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::info;
use utoipa::OpenApi;

use crate::config::ApiConfig;
use crate::daemon::Control;
use problem::Problem;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.addr `{addr}`: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "api.addr {0} is not a loopback address and no token is set: set api.token_env or \
         api.token_file, or listen on 127.0.0.1"
    )]
    ExposedWithoutToken(SocketAddr),
    #[error("api.token_env: the variable {0} is not set or is empty")]
    TokenEnv(String),
    #[error("api.token_file {path}: {reason}")]
    TokenFile { path: String, reason: String },
}

/// What every handler shares.
struct Inner {
    control: Control,
    token_digest: Option<[u8; 32]>,
    stats: Arc<observe::Stats>,
    metrics: Arc<metrics::Metrics>,
    waiters: Arc<observe::Waiters>,
    /// The executions of the front doors' answers that SDKs retry (see [`front::Retries`]).
    retries: front::Retries,
    /// Ends long-polls and event streams when the server stops.
    stop: CancellationToken,
}

type AppState = Arc<Inner>;

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// The address it listens on (the port chosen, when the config gave 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends long-polls and event streams, and waits for the requests in
    /// flight.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The OpenAPI 3.1 document of the API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "lanes",
        description = "Runs LLM calls from a database queue with per-provider parallelism. \
                       Times are Unix milliseconds; errors are RFC 9457 problem details, \
                       served as `application/problem+json`. A server with a token takes \
                       `Authorization: Bearer <token>` on every route but `/healthz`; one \
                       without a token listens on a loopback address only, and takes \
                       requests with none."
    ),
    paths(
        executions::submit,
        executions::submit_batch,
        executions::get_execution,
        executions::list,
        executions::cancel,
        streams::stream,
        batches::list_batches,
        batches::get_batch,
        control::providers,
        control::tenants,
        control::usage,
        control::clear_cache,
        control::set_limit,
        control::clear_limit,
        control::plugins,
        control::events,
        control::healthz,
        control::readyz,
        control::metrics,
        openapi,
    ),
    modifiers(&BearerAuth),
    // Optional: the one document serves both kinds of server, with a token and without.
    security(("bearer" = []), ()),
)]
pub struct ApiDoc;

/// The bearer scheme, and the 401 of every operation [`auth`] guards: all but those whose
/// own security is only the empty requirement (`/healthz`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let unauthorized = ResponseBuilder::new()
            .description("A token is set, and the request has none or another")
            .content(
                "application/problem+json",
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build();
        let open = utoipa::openapi::security::SecurityRequirement::default();
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                let guarded = op
                    .security
                    .as_ref()
                    .is_none_or(|s| s.iter().any(|r| *r != open));
                if guarded {
                    op.responses
                        .responses
                        .insert("401".into(), unauthorized.clone().into());
                }
            }
        }
    }
}

/// The OpenAPI document as served at `/v1/openapi.json` and checked in as
/// `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut json = doc.to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}

fn read_token(config: &ApiConfig) -> Result<Option<String>, ApiError> {
    if let Some(var) = &config.token_env {
        return match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            _ => Err(ApiError::TokenEnv(var.clone())),
        };
    }
    if let Some(path) = &config.token_file {
        let fail = |reason: String| ApiError::TokenFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(fail("it is empty".into()));
        }
        return Ok(Some(token));
    }
    Ok(None)
}

/// The API's socket and token, taken before the daemon starts, so that a bad address, a
/// missing token or a busy port stops `lanes serve` before any lane runs.
pub struct Bound {
    listener: tokio::net::TcpListener,
    token: Option<String>,
    max_body_bytes: u64,
}

/// Reads the token, refuses a non-loopback address without one, and binds.
pub async fn bind(config: &ApiConfig) -> Result<Bound, ApiError> {
    let bind_error = |source| ApiError::Bind {
        addr: config.addr.clone(),
        source,
    };
    let addr: SocketAddr = config.addr.parse().map_err(|e: std::net::AddrParseError| {
        bind_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    let token = read_token(config)?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ApiError::ExposedWithoutToken(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    Ok(Bound {
        listener,
        token,
        max_body_bytes: config.max_body_bytes,
    })
}

impl Bound {
    /// Starts serving the API for `control`.
    pub fn serve(self, control: Control) -> ApiServer {
        let addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let stop = CancellationToken::new();
        let state: AppState = Arc::new(Inner {
            token_digest: self
                .token
                .map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
            stats: Default::default(),
            metrics: Default::default(),
            waiters: Default::default(),
            retries: Default::default(),
            stop: stop.clone(),
            control,
        });
        {
            let events = state.control.subscribe();
            let (stats, metrics, waiters) = (
                state.stats.clone(),
                state.metrics.clone(),
                state.waiters.clone(),
            );
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = observe::observe(events, stats, metrics, waiters) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        let app = router(state, self.max_body_bytes);
        let listener = self.listener;
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!("API server stopped: {e}");
                }
            })
        };
        info!("API listening on http://{addr}");
        ApiServer { addr, stop, task }
    }
}

/// Binds and serves in one step (see [`bind`]).
pub async fn serve(control: Control, config: &ApiConfig) -> Result<ApiServer, ApiError> {
    Ok(bind(config).await?.serve(control))
}

fn router(state: AppState, max_body_bytes: u64) -> Router {
    let guarded = Router::new()
        .route(
            "/v1/executions",
            post(executions::submit).get(executions::list),
        )
        .route("/v1/executions:batch", post(executions::submit_batch))
        .route("/v1/executions/{id}", get(executions::get_execution))
        .route("/v1/executions/{id}/cancel", post(executions::cancel))
        .route("/v1/executions/{id}/stream", get(streams::stream))
        .route("/v1/providers", get(control::providers))
        .route("/v1/tenants", get(control::tenants))
        .route("/v1/batches", get(batches::list_batches))
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/usage", get(control::usage))
        .route("/v1/cache", axum::routing::delete(control::clear_cache))
        .route(
            "/v1/providers/{name}/limit",
            put(control::set_limit).delete(control::clear_limit),
        )
        .route("/v1/plugins", get(control::plugins))
        .route(
            "/openai/v1/chat/completions",
            post(openai::chat_completions),
        )
        .route("/openai/v1/models", get(openai::models))
        .route("/anthropic/v1/messages", post(anthropic::messages))
        .route("/v1/events", get(control::events))
        .route("/v1/openapi.json", get(openapi))
        .route("/readyz", get(control::readyz))
        .route("/metrics", get(control::metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(control::healthz))
        // The page holds no data: every number on it comes from the routes above, with the
        // token the page asks for.
        .route("/", get(dashboard::page))
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(
            usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        ))
        .with_state(state)
}

async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.token_digest {
        // Anthropic's SDKs send their key as `x-api-key`: its front door takes the token
        // there too.
        let api_key = request
            .uri()
            .path()
            .starts_with("/anthropic/")
            .then(|| request.headers().get("x-api-key"))
            .flatten();
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| api_key.and_then(|v| v.to_str().ok()));
        let Some(given) = given else {
            return Problem::unauthorized("send `Authorization: Bearer <token>`").into_response();
        };
        // Digests, so the comparison takes the same time whatever the token's length.
        let given: [u8; 32] = sha2::Sha256::digest(given.trim().as_bytes()).into();
        if !bool::from(given.ct_eq(expected)) {
            return Problem::unauthorized("the bearer token is not this API's").into_response();
        }
    }
    next.run(request).await
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found(request: Request) -> Problem {
    Problem::not_found(format!("no route {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{} does not take {}",
            request.uri().path(),
            request.method()
        ),
    )
}
