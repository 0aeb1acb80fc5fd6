//! The API's JSON: its own types, apart from the daemon's, so that an internal change never
//! changes the contract. Times are Unix milliseconds.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::daemon::events::{Event, Outcome};
use crate::model::{AttemptRecord, Execution};

/// A submission.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The provider that runs it, or a route (`[routes.NAME]`), which picks one of its
    /// members.
    pub provider: String,
    /// The normalized chat input: `{"messages": [{"role": "user", "content": "..."}], ...}`,
    /// or the shorthand `{"prompt": "..."}`; the same validation as `lanes submit`.
    #[schema(value_type = SubmitInputDoc, example = json!({"prompt": "Say hi", "max_tokens": 20}))]
    pub input: serde_json::Value,
    /// Higher runs first; FIFO within one priority.
    #[serde(default)]
    pub priority: i32,
    /// Attempts before it fails (default: the config's `default_max_attempts`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub max_attempts: Option<u32>,
    /// The same key again returns the original execution; with a different request it is
    /// refused (409). 1 to 255 characters.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Queue it even though no component or config knows the provider yet.
    #[serde(default)]
    pub allow_unknown: bool,
    /// The tenant it runs for: 1 to 64 of `a-z A-Z 0-9 _ - . : @`. Tenants share each
    /// lane fairly (`[providers.NAME] fairness`, `tenant_limit`); work without one is a
    /// tenant of its own.
    #[serde(default)]
    #[schema(example = "acme")]
    pub tenant: Option<String>,
    /// Whether the provider's response cache may answer it (when the provider has one):
    /// `true` caches it, `false` never does; absent, only a `temperature` of 0 given
    /// explicitly is cached.
    #[serde(default)]
    pub cache: Option<bool>,
    /// It can wait: with `[providers.NAME] batch` on, it goes through the provider's batch
    /// API (about half the price, results within the batch window) instead of the live
    /// lane. Ignored by a provider without a batch lane, and with the response cache.
    #[serde(default)]
    pub deferrable: bool,
    /// When it must have ended (Unix ms). A deferrable execution whose deadline comes before
    /// a batch could end runs live instead.
    #[serde(default)]
    pub deadline: Option<i64>,
}

/// Up to 1,000 submissions, written in one transaction: all or none.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub executions: Vec<SubmitRequest>,
}

/// One entry of a batch's answer, in the batch's order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchEntry {
    pub id: i64,
    /// False when its idempotency key returned an earlier execution.
    pub created: bool,
}

/// A batch's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResponse {
    pub executions: Vec<BatchEntry>,
}

/// An execution.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutionOut {
    pub id: i64,
    /// The provider it runs on (for a routed execution, the member the route chose, which
    /// a retry may change).
    pub provider: String,
    /// The route it was submitted to, if it named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The tenant it runs for, if it named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[schema(value_type = StatusDoc)]
    pub status: String,
    /// The effective priority: as submitted, plus what aging added (`aged`).
    pub priority: i32,
    pub aged: i32,
    /// The input as stored: a `prompt` shorthand is stored as its one user message.
    #[schema(value_type = ChatInputDoc)]
    pub input: serde_json::Value,
    /// The answer once completed.
    #[schema(value_type = Option<ChatOutputDoc>)]
    pub output: Option<serde_json::Value>,
    /// The last error, when it failed or waits for a retry.
    pub error: Option<String>,
    #[schema(value_type = Option<ErrorKindDoc>)]
    pub error_kind: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Not started before this time (the retry backoff).
    pub not_before: i64,
    /// The worker that ran the last attempt.
    pub worker: Option<String>,
    /// The ended attempts, oldest first (the last 20).
    pub history: Vec<AttemptOut>,
    /// It was submitted as able to wait for a provider batch.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deferrable: bool,
    /// When it must have ended (Unix ms), if the submission said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// The provider batch (`GET /v1/batches/{id}`) that holds it, while `batched`, or that
    /// ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
}

/// One ended attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptOut {
    pub attempt: i32,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub worker: Option<String>,
    /// `completed`, `retried`, `rate_limited`, `failed`, `returned` (given back without
    /// counting: at shutdown, or a batch's line that expired or was cancelled before it
    /// ran), `interrupted`, `cancelled` or `cached`.
    pub outcome: String,
    #[schema(value_type = Option<ErrorKindDoc>)]
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub retry_delay_ms: Option<i64>,
    /// The provider it ran on, for a routed execution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider batch that ran it (see `GET /v1/batches/{id}`); `worker` is then
    /// `batch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
}

impl From<AttemptRecord> for AttemptOut {
    fn from(a: AttemptRecord) -> Self {
        AttemptOut {
            attempt: a.attempt,
            started_at: a.started_at,
            finished_at: a.finished_at,
            worker: a.worker,
            outcome: a.outcome,
            error_kind: a.error_kind,
            error: a.error,
            retry_delay_ms: a.retry_delay_ms,
            provider: a.provider,
            batch: a.batch,
        }
    }
}

impl From<Execution> for ExecutionOut {
    fn from(e: Execution) -> Self {
        ExecutionOut {
            id: e.id,
            provider: e.provider,
            route: e.route,
            tenant: e.tenant,
            status: e.status.as_str().to_string(),
            priority: e.priority,
            aged: e.aged,
            input: e.input,
            output: e.output,
            error: e.error,
            error_kind: e.error_kind,
            attempts: e.attempts,
            max_attempts: e.max_attempts,
            created_at: e.created_at,
            started_at: e.started_at,
            finished_at: e.finished_at,
            not_before: e.not_before,
            worker: e.worker,
            history: e.history.into_iter().map(AttemptOut::from).collect(),
            deferrable: e.deferrable,
            deadline: e.deadline,
            batch_id: e.batch_id,
        }
    }
}

/// One page of executions, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutionPage {
    pub executions: Vec<ExecutionOut>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next: Option<String>,
}

/// The filters and page of `GET /v1/executions`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub provider: Option<String>,
    #[param(value_type = Option<StatusDoc>)]
    pub status: Option<String>,
    /// Created at or after this time (Unix ms).
    pub created_after: Option<i64>,
    /// Created before this time (Unix ms).
    pub created_before: Option<i64>,
    /// Page size, 1 to 500 (default 100).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/executions/{id}`'s options.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Wait until the execution has ended or this long has passed: `30s`, `500ms`, `2m`,
    /// or seconds; at most 5 minutes.
    pub wait: Option<String>,
}

/// Where a limit came from: `runtime`, `config`, `component` or `fallback`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitsOut {
    /// The component's declared default.
    pub default: Option<u32>,
    /// `[providers.NAME] limit`.
    pub configured: Option<u32>,
    /// Set at run time (`PUT /v1/providers/{name}/limit`, `lanes limits set`).
    pub runtime: Option<u32>,
    /// The adaptive limit, when the provider adapts; it caps the effective one.
    pub adaptive: Option<u32>,
    /// The limit in force: the one its sources give, capped by the adaptive one. On a fleet
    /// it is the fleet's.
    pub effective: u32,
    pub source: String,
    /// The most that may run now, fleet-wide: `effective` after the gates that hold
    /// claims back (0 while paused or while the `rpm` budget is spent, 1 while an open
    /// circuit probes). This worker's claims are also held to its free instances of the
    /// pool (`pool` in `GET /v1/providers`).
    pub claimable: u32,
}

/// The component serving a provider.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ComponentOut {
    pub file: String,
    pub version: String,
}

/// A provider's numbers over the last minute, from this worker's events.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct WindowOut {
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    /// Attempt duration percentiles of completed attempts, in ms.
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
}

/// A provider, its limits, its queue and its recent numbers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProviderOut {
    pub name: String,
    pub component: Option<ComponentOut>,
    pub limits: LimitsOut,
    /// Running across every worker.
    pub running: u64,
    /// Pending, due or waiting for a retry.
    pub pending: u64,
    /// Held for a provider batch or inside one (see `GET /v1/batches`).
    #[serde(default)]
    pub batched: u64,
    pub last_minute: WindowOut,
    /// Completed attempts per 10 seconds over the last 5 minutes, oldest first (30 values).
    pub throughput_5m: Vec<u64>,
    /// Failed and retried attempts per 10 seconds over the last 5 minutes, oldest first.
    pub errors_5m: Vec<u64>,
    /// `serving`; `no_component` (work waits for one); `paused` (a rate limit's wait);
    /// `open` (the circuit's cool-down) or `half_open` (one probe at a time); `capped` (its
    /// `daily_usd` is spent or reserved: claims take nothing, see `reason`).
    pub state: String,
    /// Until when it is paused or open.
    pub paused_until: Option<i64>,
    /// Why it is paused or open.
    pub reason: Option<String>,
    /// Its `rpm`/`tpm` budget and what the last minute used of it, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetOut>,
    /// Its `daily_usd` and what today (UTC) spent of it, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendOut>,
    /// On PostgreSQL: the live workers that serve it. Each runs at most an even share of
    /// the effective limit, rounded up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
}

/// A provider's budget per minute, fleet-wide, and its use over the last minute.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetOut {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Requests reserved in the last minute.
    pub requests: i64,
    /// Tokens reserved (estimates) or used (settled) in the last minute.
    pub tokens: i64,
}

/// A daily spend cap and the day's use of it, fleet-wide.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SpendOut {
    /// The cap, in USD per UTC day.
    pub daily_usd: f64,
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// What ended attempts cost today, in USD.
    pub spent_usd: f64,
    /// What running attempts have reserved (their estimates), in USD.
    pub reserved_usd: f64,
    /// Spent and reserved reach the cap: no claims take its work until the next day, or
    /// until running attempts settle below their estimates.
    pub capped: bool,
}

/// `DELETE /v1/cache`'s query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CacheQuery {
    /// Only this provider's answers (default: every provider's).
    pub provider: Option<String>,
}

/// The answer of `DELETE /v1/cache`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CacheCleared {
    /// How many answers were dropped.
    pub dropped: u64,
}

/// `GET /v1/usage`'s query.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `provider` (default), `model` (as the provider reported it) or `tenant`.
    #[serde(default)]
    #[param(value_type = Option<String>, example = "model")]
    pub by: Option<String>,
    /// From (included): RFC 3339, a duration back from now (`90s`, `30m`, `1h`, `2d`) or
    /// Unix ms. Default 24 hours ago.
    #[serde(default)]
    pub since: Option<String>,
    /// Until (not included), in the same forms. Default now.
    #[serde(default)]
    pub until: Option<String>,
}

/// One group's usage and cost.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageRowOut {
    /// The provider, model or tenant; `null` for executions without a tenant (or whose
    /// answer named no model).
    pub key: Option<String>,
    /// Completed executions.
    pub executions: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// The priced executions' cost, in USD.
    pub cost_usd: f64,
    /// Completed executions without a price (a model the price table lacks, or completed
    /// before lanes priced answers): their cost is not in `cost_usd`.
    pub unpriced: u64,
    /// What the answers from provider batches saved against the live price, in USD (in
    /// `cost_usd` at the batch price).
    pub saved_usd: f64,
}

impl From<crate::store::UsageRow> for UsageRowOut {
    fn from(r: crate::store::UsageRow) -> Self {
        UsageRowOut {
            key: (!r.key.is_empty()).then_some(r.key),
            executions: r.executions,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_usd: r.cost_usd,
            unpriced: r.unpriced,
            saved_usd: r.saved_usd,
        }
    }
}

/// The answer of `GET /v1/usage`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageOut {
    /// `provider`, `model` or `tenant`.
    pub by: String,
    /// Unix ms, included.
    pub since: i64,
    /// Unix ms, not included.
    pub until: i64,
    pub rows: Vec<UsageRowOut>,
    /// Every row added up (`key` is null).
    pub total: UsageRowOut,
}

/// One tenant's executions, across providers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantOut {
    /// The tenant; `null` for the executions submitted without one, which share each lane
    /// as one tenant.
    pub tenant: Option<String>,
    pub pending: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Its `[tenants.NAME] weight` (1 when it sets none), for providers with `fairness =
    /// "weighted"`.
    pub weight: f64,
    /// `serving`, or `capped`: its `daily_usd` is spent or reserved, and its work waits.
    pub state: String,
    /// Why it is capped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its `[tenants.NAME] daily_usd` and what today (UTC) spent of it, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendOut>,
}

/// The answer of `GET /v1/tenants`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantsOut {
    /// Every tenant with executions in the queue, and every tenant the config names, by
    /// name (the executions without a tenant first).
    pub tenants: Vec<TenantOut>,
}

/// The answer of `GET /v1/providers`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProvidersOut {
    pub providers: Vec<ProviderOut>,
    /// This worker's instance pool; absent when the engine does not pool instances
    /// (`[engine] pooling = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolOut>,
}

/// A worker's instance pool. Each running execution holds one instance, taken with its
/// slot when it is claimed: when the lanes' slots add up to more than `size`, the work
/// beyond the pool waits as pending.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolOut {
    /// Instances executions may hold at once: `[engine] max_instances`.
    pub size: u32,
    /// The engine's instance slots: `size`, and a few more kept for loading components.
    pub max_instances: u32,
    /// Instances held by executions now.
    pub in_use: u32,
    /// The slots of this worker's lanes, added up.
    pub slots: u64,
    /// Whether `slots` is more than `size`: some lanes cannot fill their limits at once.
    pub over: bool,
    /// Lanes waiting for a free instance now.
    pub waiting_lanes: u32,
    /// Claims since start that took fewer rows than their lane had free slots, for want of
    /// an instance.
    pub held_back: u64,
}

/// A run-time limit to set.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    /// 1 to 2147483647.
    #[schema(minimum = 1, maximum = 2147483647)]
    pub limit: u32,
}

/// A provider's limits after a change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitResponse {
    pub provider: String,
    pub limits: LimitsOut,
}

/// A file of the plugins folder, as the last scan left it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginOut {
    pub file: String,
    /// `loaded` or `rejected`.
    pub status: String,
    /// The component's `info()`: name, version, default limit, description.
    pub name: Option<String>,
    pub version: Option<String>,
    pub default_limit: Option<u32>,
    pub description: Option<String>,
    /// The `lanes:provider` version it was built against: `0.1` or `0.2`.
    pub wit: Option<String>,
    /// What it takes beyond text: `tools`, `json_schema`, `images`, `image_urls`,
    /// `reasoning`, `sampling` (`top_p`, `seed`) and `streaming`.
    pub capabilities: Option<Vec<String>>,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Rejected, and its previous version keeps serving.
    pub serving_previous: bool,
}

/// The answer of `GET /v1/plugins`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginsOut {
    pub plugins: Vec<PluginOut>,
}

/// A health or readiness answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthOut {
    /// `ok` or `ready`.
    pub status: String,
}

/// `GET /v1/events`'s options.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this provider's events.
    pub provider: Option<String>,
}

/// One server-sent event's data; the SSE `event:` field is its `type`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventOut {
    /// An attempt began.
    Started {
        id: i64,
        provider: String,
        attempt: i32,
        queue_wait_ms: i64,
    },
    /// An attempt's end was written.
    Finished {
        id: i64,
        provider: String,
        attempt: i32,
        /// `completed`, `retried`, `failed`, `requeued`, `lost` or `cancelled`.
        outcome: String,
        #[schema(value_type = Option<ErrorKindDoc>)]
        error_kind: Option<String>,
        duration_ms: i64,
        input_tokens: Option<u32>,
        output_tokens: Option<u32>,
        /// What a completed attempt cost, in USD, when its model has a price.
        #[serde(skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        /// The provider batch that ran it (`GET /v1/batches/{id}`); `duration_ms` is then 0.
        #[serde(skip_serializing_if = "Option::is_none")]
        batch_id: Option<i64>,
    },
    /// A lane's limit changed.
    LimitChanged {
        provider: String,
        old: u32,
        new: u32,
    },
    /// A component now serves a provider.
    ComponentLoaded {
        provider: String,
        file: String,
        version: String,
    },
    /// A component file was rejected.
    ComponentRejected { file: String, reason: String },
    /// A lane stopped claiming: `no_component`, `rate_limited` or `unavailable` (with
    /// `for_ms`, the wait the provider asked for), or `spend_cap` (with `for_ms`, the wait
    /// for the next UTC day).
    LanePaused {
        provider: String,
        reason: String,
        for_ms: Option<i64>,
    },
    /// A provider's circuit opened or closed.
    CircuitChanged {
        provider: String,
        open: bool,
        reason: String,
    },
    /// 80% of a daily spend cap is spent (`level`: `warning`), or all of it (`reached`):
    /// told once across the fleet. `scope` is `provider` or `tenant` (`name` `""`: the
    /// executions without one).
    SpendCap {
        scope: String,
        name: String,
        level: String,
        spent_usd: f64,
        cap_usd: f64,
    },
    /// This stream fell behind and lost events; re-read what you track.
    Lagged { missed: u64 },
}

impl EventOut {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            EventOut::Started { .. } => "started",
            EventOut::Finished { .. } => "finished",
            EventOut::LimitChanged { .. } => "limit_changed",
            EventOut::ComponentLoaded { .. } => "component_loaded",
            EventOut::ComponentRejected { .. } => "component_rejected",
            EventOut::LanePaused { .. } => "lane_paused",
            EventOut::CircuitChanged { .. } => "circuit_changed",
            EventOut::SpendCap { .. } => "spend_cap",
            EventOut::Lagged { .. } => "lagged",
        }
    }

    /// The wire form of an event; `None` for those the stream does not carry (claims, and
    /// cache hits, which the metrics count and the execution's history shows).
    pub fn from_event(event: &Event) -> Option<EventOut> {
        Some(match event {
            Event::Claimed { .. } | Event::Cached { .. } => return None,
            Event::Started {
                id,
                provider,
                attempt,
                queue_wait_ms,
            } => EventOut::Started {
                id: *id,
                provider: provider.to_string(),
                attempt: *attempt,
                queue_wait_ms: *queue_wait_ms,
            },
            Event::Finished {
                id,
                provider,
                attempt,
                outcome,
                duration_ms,
                spent,
                batch,
                ..
            } => {
                let (outcome, kind) = outcome_parts(outcome);
                EventOut::Finished {
                    id: *id,
                    provider: provider.to_string(),
                    attempt: *attempt,
                    outcome: outcome.to_string(),
                    error_kind: kind.map(str::to_string),
                    duration_ms: *duration_ms,
                    input_tokens: spent.as_ref().map(|s| s.usage.input_tokens),
                    output_tokens: spent.as_ref().map(|s| s.usage.output_tokens),
                    cost_usd: spent.as_ref().and_then(|s| s.cost_usd),
                    batch_id: *batch,
                }
            }
            Event::LimitChanged { provider, old, new } => EventOut::LimitChanged {
                provider: provider.to_string(),
                old: *old,
                new: *new,
            },
            Event::ComponentLoaded {
                provider,
                file,
                version,
            } => EventOut::ComponentLoaded {
                provider: provider.to_string(),
                file: file.clone(),
                version: version.clone(),
            },
            Event::ComponentRejected { file, reason } => EventOut::ComponentRejected {
                file: file.clone(),
                reason: reason.clone(),
            },
            Event::LanePaused { provider, reason } => {
                use crate::daemon::events::PauseReason;
                let (reason, for_ms) = match reason {
                    PauseReason::NoComponent => ("no_component", None),
                    PauseReason::RateLimited { for_ms } => ("rate_limited", Some(*for_ms)),
                    PauseReason::Unavailable { for_ms } => ("unavailable", Some(*for_ms)),
                    PauseReason::SpendCap { for_ms } => ("spend_cap", Some(*for_ms)),
                };
                EventOut::LanePaused {
                    provider: provider.to_string(),
                    reason: reason.into(),
                    for_ms,
                }
            }
            Event::CircuitChanged {
                provider,
                open,
                reason,
            } => EventOut::CircuitChanged {
                provider: provider.to_string(),
                open: *open,
                reason: reason.clone(),
            },
            Event::SpendCap(n) => EventOut::SpendCap {
                scope: n.scope.as_str().to_string(),
                name: n.name.clone(),
                level: if n.reached { "reached" } else { "warning" }.to_string(),
                spent_usd: n.spent_usd,
                cap_usd: n.cap_usd,
            },
        })
    }
}

/// An outcome's wire name and error kind.
pub fn outcome_parts(outcome: &Outcome) -> (&'static str, Option<&'static str>) {
    match outcome {
        Outcome::Completed => ("completed", None),
        Outcome::Retried { kind, .. } => ("retried", Some(kind.as_str())),
        Outcome::Failed { kind } => ("failed", Some(kind.as_str())),
        Outcome::Requeued => ("requeued", None),
        Outcome::Lost => ("lost", None),
        Outcome::Cancelled => ("cancelled", None),
    }
}

// The chat input and output, as documents: the schemas of `input` and `output`. The API
// takes and serves them as JSON values, checked by `model::ChatInput` (the one validation,
// shared with `lanes submit`) and stored as `model::ChatOutput` writes them; these types
// only describe that JSON, field for field, and `tests/all/replay.rs` checks every answer
// against them.

/// The chat input's schema, with `$first` (its messages or its prompt) before the
/// request's options, which both forms share.
macro_rules! input_doc {
    ($(#[$meta:meta])* $name:ident as $as:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Serialize, ToSchema)]
        #[schema(as = $as)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// The model; the provider's configured default when absent.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub model: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub system: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(minimum = 0)]
            pub max_tokens: Option<u32>,
            /// 0 to 2.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(minimum = 0, maximum = 2)]
            pub temperature: Option<f32>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub stop: Vec<String>,
            /// 0 to 1. Needs the `sampling` capability.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(minimum = 0, maximum = 1)]
            pub top_p: Option<f32>,
            /// Needs the `sampling` capability.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub seed: Option<i64>,
            /// Tools the model may call, with unique names. Needs the `tools` capability.
            #[serde(skip_serializing_if = "Vec::is_empty")]
            pub tools: Vec<ToolDoc>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub tool_choice: Option<ToolChoiceDoc>,
            /// Whether the model may call several tools in one turn.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub parallel_tool_calls: Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub response_format: Option<ResponseFormatDoc>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub reasoning: Option<ReasoningDoc>,
            /// Stream the answer's deltas (`GET /v1/executions/{id}/stream`) when the
            /// provider's component can; the output is stored whole either way.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub stream: Option<bool>,
            /// Provider-specific options, passed to the component as JSON.
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(value_type = Option<Object>)]
            pub extra: Option<serde_json::Value>,
        }
    };
}

input_doc! {
    /// The normalized chat input, as stored and served (a `prompt` becomes one user
    /// message). Unknown fields are refused.
    ChatInputDoc as ChatInput {
        /// At least one.
        messages: Vec<MessageDoc>,
    }
}

input_doc! {
    /// The shorthand of a submission: `prompt` is one user message.
    PromptInputDoc as PromptInput {
        prompt: String,
    }
}

/// A submission's `input`: the chat input, or the `prompt` shorthand.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = SubmitInput)]
pub enum SubmitInputDoc {
    Messages(ChatInputDoc),
    Prompt(PromptInputDoc),
}

/// Who wrote a message. A `tool` message holds `tool_result` parts (and needs the `tools`
/// capability).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Role)]
pub enum RoleDoc {
    System,
    User,
    Assistant,
    Tool,
}

/// One message.
#[derive(Serialize, ToSchema)]
#[schema(as = Message)]
pub struct MessageDoc {
    pub role: RoleDoc,
    pub content: ContentDoc,
}

/// A message's content: a string, or a list of parts. A `system` message holds text; a
/// `user` message text and images; an `assistant` message text, tool calls and
/// reasoning; a `tool` message tool results.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = Content)]
pub enum ContentDoc {
    Text(String),
    Parts(Vec<PartDoc>),
}

/// A content part, by `type`.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = Part)]
pub enum PartDoc {
    Text {
        text: String,
    },
    /// `url` (http or https), or `data` (base64, no `data:` prefix) with `media_type`; at
    /// most `[api] max_image_bytes` decoded. Needs the `images` capability.
    Image {
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        media_type: Option<MediaTypeDoc>,
    },
    /// A call the model made; `arguments` is JSON text, as the model wrote it. Needs the
    /// `tools` capability.
    ToolCall {
        id: String,
        /// 1 to 64 of `a-z A-Z 0-9 _ -`.
        name: String,
        arguments: String,
    },
    /// The answer to the earlier `tool_call` whose `id` is `call_id`. Needs the `tools`
    /// capability.
    ToolResult {
        call_id: String,
        content: ResultContentDoc,
        #[serde(skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
    /// The model's reasoning; pass `signature` back unchanged, and `redacted` (reasoning
    /// the provider returned encrypted; `text` is then empty). Needs the `reasoning`
    /// capability.
    Reasoning {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        redacted: Option<String>,
    },
}

/// A tool result's content: a string, or text and image parts.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = ResultContent)]
pub enum ResultContentDoc {
    Text(String),
    Parts(Vec<ResultPartDoc>),
}

/// A part of a tool result.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = ResultPart)]
pub enum ResultPartDoc {
    Text {
        text: String,
    },
    Image {
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        media_type: Option<MediaTypeDoc>,
    },
}

/// The media types an image may have.
#[derive(Serialize, ToSchema)]
#[schema(as = MediaType)]
pub enum MediaTypeDoc {
    #[serde(rename = "image/png")]
    Png,
    #[serde(rename = "image/jpeg")]
    Jpeg,
    #[serde(rename = "image/gif")]
    Gif,
    #[serde(rename = "image/webp")]
    Webp,
}

/// A tool the model may call.
#[derive(Serialize, ToSchema)]
#[schema(as = Tool)]
pub struct ToolDoc {
    /// 1 to 64 of `a-z A-Z 0-9 _ -`, unique among the tools.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema object (draft 2020-12 unless its `$schema` says otherwise) for the
    /// arguments; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Ask the provider to hold the arguments to the schema exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `auto`, `none`, `required` (needs `tools`), or one tool by name (one of `tools`).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = ToolChoice)]
pub enum ToolChoiceDoc {
    Mode(ToolModeDoc),
    Named(NamedToolDoc),
}

/// How the model may use its tools.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = ToolMode)]
pub enum ToolModeDoc {
    Auto,
    None,
    Required,
}

/// The one tool the model must call.
#[derive(Serialize, ToSchema)]
#[schema(as = NamedTool)]
pub struct NamedToolDoc {
    pub name: String,
}

/// The form of the answer. `json_object` and `json_schema` need the `json_schema`
/// capability.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = ResponseFormat)]
pub enum ResponseFormatDoc {
    Text,
    JsonObject,
    JsonSchema {
        /// 1 to 64 of `a-z A-Z 0-9 _ -`.
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// A JSON Schema object.
        #[schema(value_type = Object)]
        schema: serde_json::Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

/// How much the model reasons: `effort` or `budget_tokens`, one of the two. Needs the
/// `reasoning` capability.
#[derive(Serialize, ToSchema)]
#[schema(as = Reasoning)]
pub struct ReasoningDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effort: Option<EffortDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub budget_tokens: Option<u32>,
}

/// A reasoning effort.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Effort)]
pub enum EffortDoc {
    Low,
    Medium,
    High,
}

/// What a completed execution produced.
#[derive(Serialize, ToSchema)]
#[schema(as = ChatOutput)]
pub struct ChatOutputDoc {
    /// The text parts of `content`, joined with nothing between them.
    pub text: String,
    /// The answer's parts: `text`, `tool_call` and `reasoning`, in order. A component on
    /// lanes:provider 0.1.x answers one text part (none for an empty answer). Absent from
    /// outputs stored before lanes carried parts: read it as one text part of `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<OutputPartDoc>>,
    /// The model's refusal, when it refused (`finish_reason` `refusal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub model: String,
    pub usage: UsageDoc,
    /// `stop`, `length`, `content_filter`, `tool_calls`, `refusal`, `pause`,
    /// `context_window`, or the provider's own word.
    #[schema(examples("stop", "length", "tool_calls"))]
    pub finish_reason: String,
    /// What it cost, priced when its attempt ended (absent in outputs stored before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostDoc>,
    /// Served from the response cache: no provider call was made for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
}

/// What an answer cost.
#[derive(Serialize, ToSchema)]
#[schema(as = Cost)]
pub struct CostDoc {
    /// In USD; absent when its model has no price (see `unpriced`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The price table's entry it was priced by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priced_as: Option<String>,
    /// The price table's version.
    pub prices: String,
    /// Why it has no price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpriced: Option<String>,
    /// An answer from a provider batch: what the same answer would have cost live, less
    /// `usd` (the batch discount), in USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_usd: Option<f64>,
}

/// A part of an answer, by `type`: the input's part shapes, so an answer's `content` goes
/// back as an assistant message's.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = OutputPart)]
pub enum OutputPartDoc {
    Text {
        text: String,
    },
    /// A tool the model calls; `arguments` is JSON text, as the model wrote it (it may not
    /// parse, or not match the tool's schema, unless the tool is `strict`).
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The model's reasoning; pass it back with `signature` and `redacted` unchanged
    /// (`redacted`: reasoning the provider returned encrypted, with an empty `text`).
    Reasoning {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        redacted: Option<String>,
    },
}

/// One piece of a streamed answer (`GET /v1/executions/{id}/stream`), tagged by `type`.
/// Joined in order, the pieces of each kind make the output's parts of that kind.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = Delta)]
pub enum DeltaDoc {
    Text {
        text: String,
    },
    Reasoning {
        text: String,
    },
    /// The start of the answer's tool call number `index` (from 0).
    ToolCallStart {
        index: u32,
        id: String,
        name: String,
    },
    /// A piece of the arguments (JSON text) of tool call `index`.
    ToolCallArguments {
        index: u32,
        fragment: String,
    },
    /// Tokens so far; the last one is the closest to the output's `usage`.
    Usage {
        usage: UsageDoc,
    },
}

/// The data of an event of `GET /v1/executions/{id}/stream`, by its name: `delta` a
/// [`DeltaDoc`], `attempt` `{"attempt": N}` (a stream begins: after a retry, drop what the
/// earlier attempt sent), `lag` `{"behind": N}` (the reader is N deltas behind), and last
/// `end`, the ended execution.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[schema(as = StreamEvent)]
pub enum StreamEventDoc {
    Delta(DeltaDoc),
    Attempt { attempt: i64 },
    Lag { behind: u64 },
    End(Box<ExecutionOut>),
}

/// Token counts, the same way for every provider: `input_tokens` counts every prompt
/// token, cache reads and writes included; the optional fields break the counts down.
#[derive(Serialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageDoc {
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u32>,
    /// Of `input_tokens`, those written to the provider's prompt cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u32>,
    /// Of `output_tokens`, those spent reasoning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u32>,
}

/// Where an execution is in its life.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Status)]
pub enum StatusDoc {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Held for a provider batch (`deferrable`): waiting to be sent, or inside the batch
    /// `batch_id`. Outside the lane's limit.
    Batched,
}

/// The class of an error.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ErrorKind)]
pub enum ErrorKindDoc {
    RateLimited,
    Unavailable,
    InvalidRequest,
    Unauthorized,
    Other,
    Trap,
    Timeout,
    BadInput,
    Instantiate,
    OutputTooLarge,
    Interrupted,
    Denied,
}
