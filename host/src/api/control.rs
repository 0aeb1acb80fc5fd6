//! Providers, limits, plugins, the event stream, health and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use futures_util::StreamExt;

use super::AppState;
use super::metrics::GaugeValues;
use super::problem::{Json, Path, Problem, Query};
use super::wire::{
    BudgetOut, CacheCleared, CacheQuery, ComponentOut, EventOut, EventsQuery, HealthOut,
    LimitRequest, LimitResponse, LimitsOut, PluginOut, PluginsOut, PoolOut, ProviderOut,
    ProvidersOut, SpendOut, TenantOut, TenantsOut, UsageOut, UsageQuery,
};
use crate::limits::{LimitInputs, LimitView, Stored, claim_cap};
use crate::model::{MAX_COUNT, validate_provider_name};

fn limits_out(view: &LimitView, claimable: u32) -> LimitsOut {
    LimitsOut {
        claimable,
        default: view.default,
        configured: view.configured,
        runtime: view.runtime,
        adaptive: view.adaptive,
        effective: view.effective,
        source: serde_json::to_value(view.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    }
}

fn pool_out(pool: crate::daemon::pool::PoolUse) -> PoolOut {
    PoolOut {
        size: pool.size,
        max_instances: pool.engine,
        in_use: pool.in_use,
        slots: pool.slots,
        over: pool.slots > u64::from(pool.size),
        waiting_lanes: pool.waiting,
        held_back: pool.held_back,
    }
}

/// Every provider known to this worker, the config or the queue, as the API shows it, with
/// the gauges the metrics need.
async fn provider_rows(state: &AppState) -> Result<Vec<(ProviderOut, u32)>, Problem> {
    let queue = state.control.queue();
    let stored = Stored::read(queue.as_ref()).await?;
    let counts = queue.counts().await?;
    let (now, runtime, states) = (stored.now, &stored.runtime, &stored.states);
    let records: BTreeMap<String, crate::store::ProviderRecord> = queue
        .providers()
        .await?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let config = state.control.config();
    let budgeted = config
        .providers
        .values()
        .any(|p| p.rpm.is_some() || p.tpm.is_some());
    let used = if budgeted {
        queue.budget_usage().await?
    } else {
        BTreeMap::new()
    };
    let workers = queue.workers().await?;
    let spend = spend_today(state).await?;
    let lanes: BTreeMap<String, crate::daemon::LaneView> = state
        .control
        .lanes(runtime)
        .into_iter()
        .map(|l| (l.provider.clone(), l))
        .collect();
    let names: BTreeSet<&String> = lanes
        .keys()
        .chain(config.providers.keys())
        .chain(counts.keys())
        .chain(records.keys())
        .collect();
    let mut rows = Vec::with_capacity(names.len());
    for name in names {
        let lane = lanes.get(name);
        let serving = lane.and_then(|l| l.component.clone());
        let policy = crate::policy::PolicyState::of(states.get(name), now);
        // The limit's owner resolves it from the stored inputs; this worker's own
        // component, when it serves the provider, gives the default.
        let mut inputs = LimitInputs::stored(name, &config, &stored);
        if let Some(default) = lane.and_then(|l| l.limits.as_ref()).and_then(|v| v.default) {
            inputs.default = Some(default);
        }
        let view = inputs.resolve();
        let claimable = if crate::limits::budget_spent(&config, name, &used) {
            0
        } else {
            claim_cap(view.effective, stored.states.get(name), stored.now)
        };
        let count = counts.get(name).cloned().unwrap_or_default();
        let recent = state.stats.recent(name);
        let lane_limit = lane.map_or(view.effective, |l| l.effective);
        let provider_spend = config
            .providers
            .get(name)
            .and_then(|p| p.daily_usd)
            .map(|cap| spend.out(crate::store::SpendScope::Provider, name, cap));
        let capped = provider_spend.as_ref().and_then(cap_reason);
        rows.push((
            ProviderOut {
                name: name.clone(),
                component: serving
                    .clone()
                    .or_else(|| {
                        records
                            .get(name)
                            .map(|r| (r.component.clone(), r.version.clone()))
                    })
                    .map(|(file, version)| ComponentOut { file, version }),
                limits: limits_out(&view, if capped.is_some() { 0 } else { claimable }),
                running: count.running,
                pending: count.pending,
                batched: count.batched,
                last_minute: recent.last_minute,
                throughput_5m: recent.throughput_5m,
                errors_5m: recent.errors_5m,
                state: match (&serving, &capped) {
                    (None, _) => "no_component",
                    (Some(_), Some(_)) if policy.kind == "serving" => "capped",
                    _ => policy.kind,
                }
                .to_string(),
                paused_until: policy.until,
                reason: match capped {
                    Some(why) if policy.kind == "serving" => Some(why),
                    _ => policy.reason,
                },
                budget: config.policy_for(name).budget.map(|b| {
                    let (requests, tokens) = used.get(name).copied().unwrap_or_default();
                    BudgetOut {
                        rpm: b.rpm,
                        tpm: b.tpm,
                        requests,
                        tokens,
                    }
                }),
                spend: provider_spend,
                workers: workers.as_ref().map(|w| w.get(name).copied().unwrap_or(0)),
            },
            lane_limit,
        ));
    }
    Ok(rows)
}

/// Why a cap holds its provider's or tenant's work back, when it does: spent, or spent and
/// reserved by running attempts.
fn cap_reason(s: &SpendOut) -> Option<String> {
    if !s.capped {
        return None;
    }
    Some(if crate::store::spend::reaches(s.spent_usd, s.daily_usd) {
        format!(
            "daily_usd {:.2} spent ({:.2} USD on {} UTC): its work waits for the next UTC day",
            s.daily_usd, s.spent_usd, s.day
        )
    } else {
        format!(
            "daily_usd {:.2}: {:.2} USD spent and {:.2} reserved by running attempts on {} \
             UTC: its work waits for them to settle",
            s.daily_usd, s.spent_usd, s.reserved_usd, s.day
        )
    })
}

/// The day's spend (UTC, on the caps' clock), read only when the config sets a cap.
struct SpendToday {
    day: i64,
    rows: BTreeMap<(crate::store::SpendScope, String), crate::store::SpendRow>,
}

impl SpendToday {
    /// A cap of `cap` USD on `scope`'s `name`, with the day's use of it.
    fn out(&self, scope: crate::store::SpendScope, name: &str, cap: f64) -> SpendOut {
        let row = self.rows.get(&(scope, name.to_string()));
        let spent = row.map_or(0.0, |r| r.spent_usd);
        let reserved = row.map_or(0.0, |r| r.reserved_usd);
        SpendOut {
            daily_usd: cap,
            day: crate::clock::date(self.day),
            spent_usd: spent,
            reserved_usd: reserved,
            capped: crate::store::spend::reaches(spent + reserved, cap),
        }
    }
}

async fn spend_today(state: &AppState) -> Result<SpendToday, Problem> {
    let config = state.control.config();
    let capped = config.providers.values().any(|p| p.daily_usd.is_some())
        || config.tenants.values().any(|t| t.daily_usd.is_some());
    let day = crate::clock::day();
    let rows = if capped {
        state.control.queue().spend(day).await?
    } else {
        Vec::new()
    };
    Ok(SpendToday {
        day,
        rows: rows
            .into_iter()
            .map(|r| ((r.scope, r.name.clone()), r))
            .collect(),
    })
}

/// Every tenant's counts (the queue's and the config's tenants), as the API and the
/// metrics show them.
pub(super) async fn tenant_rows(state: &AppState) -> Result<Vec<TenantOut>, Problem> {
    let mut counts = state.control.queue().tenant_counts().await?;
    let config = state.control.config();
    for name in config.tenants.keys() {
        counts.entry(name.clone()).or_default();
    }
    let today = spend_today(state).await?;
    Ok(counts
        .into_iter()
        .map(|(tenant, c)| {
            let config_of = config.tenants.get(&tenant);
            let spend = config_of
                .and_then(|t| t.daily_usd)
                .map(|cap| today.out(crate::store::SpendScope::Tenant, &tenant, cap));
            let reason = spend.as_ref().and_then(cap_reason);
            TenantOut {
                weight: config_of.and_then(|t| t.weight).unwrap_or(1.0),
                state: if reason.is_some() {
                    "capped"
                } else {
                    "serving"
                }
                .to_string(),
                reason,
                spend,
                tenant: (!tenant.is_empty()).then_some(tenant),
                pending: c.pending,
                running: c.running,
                completed: c.completed,
                failed: c.failed,
                cancelled: c.cancelled,
            }
        })
        .collect())
}

#[utoipa::path(
    get, path = "/v1/usage", tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "Usage and cost of the executions completed in the range, grouped", body = UsageOut),
        (status = 400, description = "A bad `by`, `since` or `until`", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    Query(query): Query<UsageQuery>,
) -> Result<axum::Json<UsageOut>, Problem> {
    use crate::store::UsageBy;
    let by = match query.by.as_deref().unwrap_or("provider") {
        "provider" => UsageBy::Provider,
        "model" => UsageBy::Model,
        "tenant" => UsageBy::Tenant,
        other => {
            return Err(Problem::bad_request(format!(
                "by `{other}`: give provider, model or tenant"
            )));
        }
    };
    let now = crate::model::now_ms();
    let time = |name: &str, text: Option<&str>, default: i64| match text {
        None => Ok(default),
        Some(t) => crate::jsonl::parse_since(t, now)
            .map_err(|e| Problem::bad_request(e.replace("--since", name))),
    };
    let since = time("since", query.since.as_deref(), now - 24 * 3_600_000)?;
    let until = time("until", query.until.as_deref(), now)?;
    let rows = state.control.queue().usage(by, since, until).await?;
    let total = crate::store::UsageRow::total(&rows);
    Ok(axum::Json(UsageOut {
        by: query.by.unwrap_or_else(|| "provider".into()),
        since,
        until,
        rows: rows.into_iter().map(Into::into).collect(),
        total: total.into(),
    }))
}

#[utoipa::path(
    delete, path = "/v1/cache", tag = "cache",
    params(CacheQuery),
    responses(
        (status = 200, description = "The answers dropped from the response cache", body = CacheCleared),
        (status = 400, description = "Not a provider name", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn clear_cache(
    State(state): State<AppState>,
    Query(query): Query<CacheQuery>,
) -> Result<axum::Json<CacheCleared>, Problem> {
    if let Some(name) = &query.provider {
        validate_provider_name(name).map_err(Problem::bad_request)?;
    }
    let dropped = state
        .control
        .queue()
        .clear_cache(query.provider.as_deref())
        .await?;
    tracing::info!(
        "response cache cleared{}: {dropped} answer(s) dropped",
        query
            .provider
            .as_deref()
            .map(|p| format!(" for provider {p}"))
            .unwrap_or_default()
    );
    Ok(axum::Json(CacheCleared { dropped }))
}

#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants",
    responses(
        (status = 200, description = "Every tenant's executions", body = TenantsOut),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn tenants(State(state): State<AppState>) -> Result<axum::Json<TenantsOut>, Problem> {
    Ok(axum::Json(TenantsOut {
        tenants: tenant_rows(&state).await?,
    }))
}

#[utoipa::path(
    get, path = "/v1/providers", tag = "providers",
    responses(
        (status = 200, description = "Every provider", body = ProvidersOut),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn providers(State(state): State<AppState>) -> Result<axum::Json<ProvidersOut>, Problem> {
    let providers = provider_rows(&state)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    Ok(axum::Json(ProvidersOut {
        providers,
        pool: state.control.pool().map(pool_out),
    }))
}

async fn known_provider(state: &AppState, name: &str) -> Result<(), Problem> {
    validate_provider_name(name).map_err(Problem::bad_request)?;
    let queued = state.control.queue().counts().await?.contains_key(name);
    if queued || state.control.knows(name).await? {
        Ok(())
    } else {
        Err(Problem::not_found(format!(
            "unknown provider `{name}`: no component, config or queued work names it"
        )))
    }
}

async fn limit_reply(state: &AppState, name: &str) -> Result<axum::Json<LimitResponse>, Problem> {
    let rows = provider_rows(state).await?;
    let row = rows
        .into_iter()
        .find(|(p, _)| p.name == name)
        .ok_or_else(|| Problem::not_found(format!("unknown provider `{name}`")))?;
    Ok(axum::Json(LimitResponse {
        provider: name.to_string(),
        limits: row.0.limits,
    }))
}

/// Set a provider's run-time limit. This worker applies it at once, the rest of the fleet
/// within `limits_refresh_ms`.
#[utoipa::path(
    put, path = "/v1/providers/{name}/limit", tag = "providers",
    params(("name" = String, Path, description = "The provider")),
    request_body = LimitRequest,
    responses(
        (status = 200, description = "The provider's limits now", body = LimitResponse),
        (status = 400, description = "Not a provider name, or the body is not JSON", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "Unknown provider", content_type = "application/problem+json", body = Problem),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", content_type = "application/problem+json", body = Problem),
        (status = 415, description = "The body's content type is not `application/json`", content_type = "application/problem+json", body = Problem),
        (status = 422, description = "Not a limit from 1 to 2147483647", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn set_limit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(request): Json<LimitRequest>,
) -> Result<axum::Json<LimitResponse>, Problem> {
    known_provider(&state, &name).await?;
    if request.limit == 0 || request.limit > MAX_COUNT {
        return Err(Problem::invalid(format!(
            "limit {} is out of range: give 1 to {MAX_COUNT}",
            request.limit
        )));
    }
    state.control.set_limit(&name, Some(request.limit)).await?;
    limit_reply(&state, &name).await
}

/// Clear a provider's run-time limit: config or the component's default applies again.
#[utoipa::path(
    delete, path = "/v1/providers/{name}/limit", tag = "providers",
    params(("name" = String, Path, description = "The provider")),
    responses(
        (status = 200, description = "The provider's limits now", body = LimitResponse),
        (status = 400, description = "Not a provider name", content_type = "application/problem+json", body = Problem),
        (status = 404, description = "Unknown provider", content_type = "application/problem+json", body = Problem),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn clear_limit(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<LimitResponse>, Problem> {
    known_provider(&state, &name).await?;
    state.control.set_limit(&name, None).await?;
    limit_reply(&state, &name).await
}

/// Every file of the plugins folder, as the last scan left it.
#[utoipa::path(
    get, path = "/v1/plugins", tag = "providers",
    responses((status = 200, description = "Every component file", body = PluginsOut))
)]
pub async fn plugins(State(state): State<AppState>) -> axum::Json<PluginsOut> {
    let plugins = state
        .control
        .plugin_files()
        .await
        .into_iter()
        .map(|f| PluginOut {
            file: f.file,
            status: f.status.to_string(),
            name: f.info.as_ref().map(|i| i.name.clone()),
            version: f.info.as_ref().map(|i| i.version.clone()),
            default_limit: f.info.as_ref().map(|i| i.default_limit),
            description: f.info.as_ref().map(|i| i.description.clone()),
            wit: f.info.as_ref().map(|i| i.wit.to_string()),
            capabilities: f.info.as_ref().map(|i| {
                i.capabilities
                    .list()
                    .iter()
                    .map(|c| c.as_str().to_string())
                    .collect()
            }),
            reason: f.reason,
            serving_previous: f.serving_previous,
        })
        .collect();
    axum::Json(PluginsOut { plugins })
}

/// Server-sent events: started, finished, limit changed, component loaded or rejected,
/// lane paused; a comment every 15 s keeps the stream alive.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "An event stream; each event's data is JSON", content_type = "text/event-stream", body = EventOut),
        (status = 400, description = "Not a provider name", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    if let Some(p) = &query.provider {
        validate_provider_name(p).map_err(Problem::bad_request)?;
    }
    let subscription = state.control.subscribe();
    let only = query.provider;
    let stream = futures_util::stream::unfold(subscription, move |mut sub| {
        let only = only.clone();
        async move {
            loop {
                let out = match sub.recv().await? {
                    Ok(event) => {
                        if only.as_deref().is_some_and(|p| event.provider() != Some(p)) {
                            continue;
                        }
                        match EventOut::from_event(&event) {
                            Some(out) => out,
                            None => continue,
                        }
                    }
                    Err(lagged) => EventOut::Lagged { missed: lagged.0 },
                };
                let sse = SseEvent::default()
                    .event(out.name())
                    .json_data(&out)
                    .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                return Some((Ok(sse), sub));
            }
        }
    })
    .take_until(state.stop.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Liveness: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "Alive", body = HealthOut))
)]
pub async fn healthz() -> axum::Json<HealthOut> {
    axum::Json(HealthOut {
        status: "ok".into(),
    })
}

/// Readiness: the database answers and the plugins folder has been scanned.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthOut),
        (status = 503, description = "Not ready, and why", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<axum::Json<HealthOut>, Problem> {
    // The API starts once the daemon has scanned its plugins; only the database can fail.
    state.control.queue().ping().await.map_err(|e| Problem {
        kind: "urn:lanes:problem:not-ready".into(),
        title: "Not ready".into(),
        ..Problem::from(e)
    })?;
    Ok(axum::Json(HealthOut {
        status: "ready".into(),
    }))
}

/// Prometheus metrics, in the text format.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "The database did not answer", content_type = "application/problem+json", body = Problem),
    )
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, Problem> {
    let providers = provider_rows(&state).await?;
    for (p, lane_limit) in &providers {
        state.metrics.set_gauges(
            &p.name,
            &GaugeValues {
                limit: p.limits.effective,
                effective_limit: *lane_limit,
                claimable: p.limits.claimable,
                running: p.running,
                pending: p.pending,
                paused: p.state != "serving",
                circuit_open: p.state == "open" || p.state == "half_open",
                budget_used: p.budget.as_ref().map(|b| (b.requests, b.tokens)),
            },
        );
    }
    if let Some(pool) = state.control.pool().map(pool_out) {
        state.metrics.set_pool(&pool);
    }
    let cap = state.control.config().api.metrics_tenants;
    let tenants = tenant_rows(&state).await?;
    state.metrics.set_tenants(&tenants, cap);
    let mut caps: Vec<(crate::store::SpendScope, String, f64, f64)> = providers
        .iter()
        .filter_map(|(p, _)| {
            let s = p.spend.as_ref()?;
            Some((
                crate::store::SpendScope::Provider,
                p.name.clone(),
                s.daily_usd,
                s.spent_usd,
            ))
        })
        .collect();
    caps.extend(tenants.iter().filter_map(|t| {
        let s = t.spend.as_ref()?;
        let name = t.tenant.clone().unwrap_or_default();
        Some((
            crate::store::SpendScope::Tenant,
            name,
            s.daily_usd,
            s.spent_usd,
        ))
    }));
    state.metrics.set_spend(&caps);
    state
        .metrics
        .set_cache_entries(&state.control.queue().cache_entries().await?);
    let queue = state.control.queue();
    let batched = queue
        .counts()
        .await?
        .into_iter()
        .filter(|(_, c)| c.batched > 0)
        .map(|(p, c)| (p, c.batched))
        .collect();
    state
        .metrics
        .set_batches(&queue.batches(1000).await?, &batched);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.encode(),
    )
        .into_response())
}
