//! `GET /v1/batches` and `GET /v1/batches/{id}`: the provider batches of the batch lane
//! (see `daemon/batches.rs`), each with its state, counts, times and cost.

use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::problem::Problem;
use crate::store::batches::BatchRecord;

/// A provider batch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchOut {
    pub id: i64,
    pub provider: String,
    /// The model of its requests, when they named one.
    pub model: Option<String>,
    /// lanes' state: `open` (its executions are chosen, not sent), `sending`, `sent` (the
    /// provider runs it), `collecting` (its results are being written), `done` or `failed`.
    pub state: String,
    /// The provider's id of it, once sent.
    pub provider_batch_id: Option<String>,
    /// The provider's word for where it is: `validating`, `in_progress`, `finalizing`,
    /// `ended`, `failed`, `expired`, `cancelling` or `cancelled`.
    pub provider_status: Option<String>,
    /// Executions in it.
    pub items: i64,
    /// Requests that succeeded, and that failed, expired or were cancelled, as the provider
    /// counts them (some count only at the end).
    pub succeeded: i64,
    pub failed: i64,
    /// How many times its requests were sent: 2 or more only after a send whose answer
    /// was lost, where the provider's API could not look the batch up (Anthropic).
    pub sends: i64,
    pub created_at: i64,
    pub submitted_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// What its results cost at the batch price, in USD, once written.
    pub cost_usd: Option<f64>,
    /// What the same results would have cost live, less `cost_usd`.
    pub saved_usd: Option<f64>,
    /// Why it failed, or the last error of a call that will be tried again.
    pub error: Option<String>,
    /// The worker that drives it.
    pub owner: Option<String>,
}

impl From<BatchRecord> for BatchOut {
    fn from(b: BatchRecord) -> Self {
        BatchOut {
            id: b.id,
            provider: b.provider,
            model: b.model,
            state: b.state,
            provider_batch_id: b.provider_batch_id,
            provider_status: b.provider_status,
            items: b.items,
            succeeded: b.succeeded,
            failed: b.failed,
            sends: b.sends,
            created_at: b.created_at,
            submitted_at: b.submitted_at,
            ended_at: b.ended_at,
            cost_usd: b.cost_usd,
            saved_usd: b.saved_usd,
            error: b.error,
            owner: b.owner,
        }
    }
}

/// The newest batches.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchesOut {
    pub batches: Vec<BatchOut>,
}

/// `GET /v1/batches` query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BatchesQuery {
    /// The most batches to return, newest first: 1 to 1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/batches", tag = "batches",
    params(BatchesQuery),
    responses(
        (status = 200, description = "The newest provider batches, newest first", body = BatchesOut),
        (status = 400, description = "A bad query", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn list_batches(
    State(state): State<AppState>,
    Query(query): Query<BatchesQuery>,
) -> Result<axum::Json<BatchesOut>, Problem> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit must be 1 to 1000, not {limit}"
        )));
    }
    let batches = state.control.queue().batches(limit).await?;
    Ok(axum::Json(BatchesOut {
        batches: batches.into_iter().map(BatchOut::from).collect(),
    }))
}

#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = i64, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch", body = BatchOut),
        (status = 404, description = "No such batch", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn get_batch(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<BatchOut>, Problem> {
    match state.control.queue().batch(id).await? {
        Some(b) => Ok(axum::Json(b.into())),
        None => Err(Problem::not_found(format!("no batch {id}"))),
    }
}
