//! `GET /metrics`: the Prometheus text format. Counters and histograms are fed from the
//! event bus (this worker's attempts); gauges are read at scrape time (the queue's counts
//! are fleet-wide, the lanes this worker's).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::daemon::events::{Event, Outcome};

/// `provider`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

/// `provider`, `outcome` and `error_kind` (empty when there is none).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: String,
    outcome: String,
    error_kind: String,
}

/// `provider` and `direction` (`input` or `output`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    direction: String,
}

/// `provider`, `model`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    provider: String,
    model: String,
}

/// `provider`, `kind`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    provider: String,
    kind: &'static str,
}

/// `provider`, `state` (of a provider batch).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    provider: String,
    state: String,
}

/// `tenant`, `status`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
    status: &'static str,
}

/// The `tenant` label of the executions without one.
pub const NO_TENANT: &str = "(none)";
/// The `tenant` label that sums the tenants past `[api] metrics_tenants`.
pub const OTHER_TENANTS: &str = "(other)";

/// `scope` and `name` of a daily spend cap.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    scope: &'static str,
    name: String,
}

/// `scope` and `level` of a spend cap's notice.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoticeLabels {
    scope: &'static str,
    level: &'static str,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// `file`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabel {
    file: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric family.
pub struct Metrics {
    registry: Registry,
    limit: Family<ProviderLabel, Gauge>,
    effective_limit: Family<ProviderLabel, Gauge>,
    claimable: Family<ProviderLabel, Gauge>,
    running: Family<ProviderLabel, Gauge>,
    pending: Family<ProviderLabel, Gauge>,
    paused: Family<ProviderLabel, Gauge>,
    circuit_open: Family<ProviderLabel, Gauge>,
    budget_requests: Family<ProviderLabel, Gauge>,
    budget_tokens: Family<ProviderLabel, Gauge>,
    tenant_executions: Family<TenantLabels, Gauge>,
    cost: Family<ModelLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    unpriced: Family<ModelLabels, Counter>,
    tokens_total: Family<KindLabels, Counter>,
    cache_hits: Family<ProviderLabel, Counter>,
    spend_usd: Family<SpendLabels, FloatGauge>,
    spend_cap_usd: Family<SpendLabels, FloatGauge>,
    spend_notices: Family<NoticeLabels, Counter>,
    cache_entries: Family<ProviderLabel, Gauge>,
    batches: Family<BatchLabels, Gauge>,
    batched: Family<ProviderLabel, Gauge>,
    batch_resends: Family<ProviderLabel, Gauge>,
    batch_cost: Family<ProviderLabel, FloatGauge>,
    batch_saved: Family<ProviderLabel, FloatGauge>,
    attempts: Family<AttemptLabels, Counter>,
    rate_limited: Family<ProviderLabel, Counter>,
    denied: Family<ProviderLabel, Counter>,
    loads: Family<ProviderLabel, Counter>,
    rejections: Family<FileLabel, Counter>,
    events_lost: Counter,
    pool_size: Gauge,
    pool_in_use: Gauge,
    pool_slots: Gauge,
    pool_held_back: Counter,
    queue_wait: Histograms<ProviderLabel>,
    duration: Histograms<ProviderLabel>,
    tokens: Histograms<TokenLabels>,
}

fn wait_histogram() -> Histogram {
    // 1 ms to about 4.4 minutes.
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

fn duration_histogram() -> Histogram {
    // 5 ms to about 5 minutes.
    Histogram::new(exponential_buckets(0.005, 2.5, 13))
}

fn token_histogram() -> Histogram {
    // 16 to about 260k tokens.
    Histogram::new(exponential_buckets(16.0, 4.0, 8))
}

/// One provider's gauges at scrape time.
pub struct GaugeValues {
    pub limit: u32,
    pub effective_limit: u32,
    /// What may run now, fleet-wide (see `LimitsOut::claimable`).
    pub claimable: u32,
    pub running: u64,
    pub pending: u64,
    pub paused: bool,
    pub circuit_open: bool,
    /// Requests and tokens of its budget used in the last minute, when it has one.
    pub budget_used: Option<(i64, i64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lanes");
        let m = Metrics {
            limit: Family::default(),
            effective_limit: Family::default(),
            claimable: Family::default(),
            running: Family::default(),
            pending: Family::default(),
            paused: Family::default(),
            circuit_open: Family::default(),
            budget_requests: Family::default(),
            budget_tokens: Family::default(),
            tenant_executions: Family::default(),
            cost: Family::default(),
            unpriced: Family::default(),
            tokens_total: Family::default(),
            cache_hits: Family::default(),
            spend_usd: Family::default(),
            spend_cap_usd: Family::default(),
            spend_notices: Family::default(),
            cache_entries: Family::default(),
            batches: Family::default(),
            batched: Family::default(),
            batch_resends: Family::default(),
            batch_cost: Family::default(),
            batch_saved: Family::default(),
            attempts: Family::default(),
            rate_limited: Family::default(),
            denied: Family::default(),
            loads: Family::default(),
            rejections: Family::default(),
            events_lost: Counter::default(),
            pool_size: Gauge::default(),
            pool_in_use: Gauge::default(),
            pool_slots: Gauge::default(),
            pool_held_back: Counter::default(),
            queue_wait: Family::new_with_constructor(wait_histogram),
            duration: Family::new_with_constructor(duration_histogram),
            tokens: Family::new_with_constructor(token_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "limit",
            "The provider's limit from its sources (run-time, config, component, fallback)",
            m.limit.clone(),
        );
        registry.register(
            "effective_limit",
            "The limit this worker's lane runs under now",
            m.effective_limit.clone(),
        );
        registry.register(
            "claimable",
            "The most that may run now, fleet-wide: the limit after a pause (0), an open \
             circuit's probe (1) or a spent request budget (0)",
            m.claimable.clone(),
        );
        registry.register(
            "running",
            "Executions running, across every worker of the queue",
            m.running.clone(),
        );
        registry.register(
            "pending",
            "Executions pending, across every worker of the queue",
            m.pending.clone(),
        );
        registry.register(
            "paused",
            "1 when the provider is not serving: no component, a pause, an open circuit, or its spend cap",
            m.paused.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while the provider's circuit is open or half-open",
            m.circuit_open.clone(),
        );
        registry.register(
            "budget_requests",
            "Requests reserved against the provider's rpm budget in the last minute, fleet-wide",
            m.budget_requests.clone(),
        );
        registry.register(
            "budget_tokens",
            "Tokens reserved or used against the provider's tpm budget in the last minute",
            m.budget_tokens.clone(),
        );
        registry.register(
            "tenant_executions",
            "Executions by tenant and status, across every worker of the queue; tenants past \
             [api] metrics_tenants (by open work) are summed as tenant=\"(other)\"",
            m.tenant_executions.clone(),
        );
        registry.register(
            "spend_usd",
            "What each capped provider and tenant spent today (UTC), fleet-wide, in USD",
            m.spend_usd.clone(),
        );
        registry.register(
            "spend_cap_usd",
            "Each daily spend cap ([providers.NAME] daily_usd, [tenants.NAME] daily_usd)",
            m.spend_cap_usd.clone(),
        );
        registry.register(
            "spend_cap_notices",
            "Spend caps 80% spent (level=\"warning\") or spent (level=\"reached\"), each told \
             once across the fleet, by the worker whose attempt crossed it",
            m.spend_notices.clone(),
        );
        registry.register(
            "cost_usd",
            "What this worker's completed attempts cost, in USD, by the model the provider \
             reported (priced by the price table; unpriced ones are not in it)",
            m.cost.clone(),
        );
        registry.register(
            "unpriced",
            "Completed attempts whose model has no price in the price table",
            m.unpriced.clone(),
        );
        registry.register(
            "tokens",
            "Tokens of this worker's completed attempts, by kind: input (every prompt token), \
             output, cache_read and cache_write (of input), reasoning (of output)",
            m.tokens_total.clone(),
        );
        registry.register(
            "cache_hits",
            "Submissions to this worker's API answered from the response cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_entries",
            "Answers in the response cache, by provider",
            m.cache_entries.clone(),
        );
        registry.register(
            "attempts",
            "Attempts this worker ended, by outcome and error kind",
            m.attempts.clone(),
        );
        registry.register(
            "rate_limited",
            "Rate-limited answers from the provider",
            m.rate_limited.clone(),
        );
        registry.register(
            "outbound_denied",
            "Attempts that tried a host outside the provider's allow-list",
            m.denied.clone(),
        );
        registry.register(
            "component_loads",
            "Components that started serving a provider",
            m.loads.clone(),
        );
        registry.register(
            "component_rejections",
            "Component files that were rejected",
            m.rejections.clone(),
        );
        registry.register(
            "batches",
            "Provider batches of the batch lanes by state (open, sending, sent, collecting, \
             done, failed), across the fleet",
            m.batches.clone(),
        );
        registry.register(
            "batched",
            "Executions held for a provider batch or inside one, across the fleet",
            m.batched.clone(),
        );
        registry.register(
            "batch_resends",
            "Batches sent again after a send whose answer was lost, where the provider's API \
             cannot look a batch up (Anthropic): their requests may run twice",
            m.batch_resends.clone(),
        );
        registry.register(
            "batch_cost_usd",
            "What the results of provider batches cost, at the batch price",
            m.batch_cost.clone(),
        );
        registry.register(
            "batch_saved_usd",
            "What the results of provider batches would have cost more live",
            m.batch_saved.clone(),
        );
        registry.register(
            "events_lost",
            "Events the metrics missed because they fell behind",
            m.events_lost.clone(),
        );
        registry.register(
            "instance_pool_size",
            "Component instances this worker's executions may hold at once \
             ([engine] max_instances)",
            m.pool_size.clone(),
        );
        registry.register(
            "instance_pool_in_use",
            "Component instances held by this worker's executions now",
            m.pool_in_use.clone(),
        );
        registry.register(
            "instance_pool_slots",
            "The slots of this worker's lanes, added up: above the pool's size, work waits \
             for an instance",
            m.pool_slots.clone(),
        );
        registry.register(
            "instance_pool_held_back",
            "Claims that took fewer rows than their lane had free slots, for want of an instance",
            m.pool_held_back.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "From submission to the start of an attempt",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        registry.register_with_unit(
            "attempt_duration",
            "How long attempts ran",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "attempt_tokens",
            "Tokens of completed attempts, by direction",
            m.tokens.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn provider(p: &str) -> ProviderLabel {
    ProviderLabel {
        provider: p.to_string(),
    }
}

impl Metrics {
    /// Counts one event.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::Started {
                provider: p,
                queue_wait_ms,
                ..
            } => {
                self.queue_wait
                    .get_or_create(&provider(p))
                    .observe(ms_to_secs(*queue_wait_ms));
            }
            Event::Finished {
                provider: p,
                outcome,
                duration_ms,
                spent,
                batch,
                ..
            } => {
                let (name, kind) = super::wire::outcome_parts(outcome);
                self.attempts
                    .get_or_create(&AttemptLabels {
                        provider: p.to_string(),
                        outcome: name.to_string(),
                        error_kind: kind.unwrap_or("").to_string(),
                    })
                    .inc();
                let kind = match outcome {
                    Outcome::Retried { kind, .. } | Outcome::Failed { kind } => Some(*kind),
                    _ => None,
                };
                match kind {
                    Some(crate::model::ErrorKind::RateLimited) => {
                        self.rate_limited.get_or_create(&provider(p)).inc();
                    }
                    Some(crate::model::ErrorKind::Denied) => {
                        self.denied.get_or_create(&provider(p)).inc();
                    }
                    _ => {}
                }
                // A batch's line took no call of its own.
                if !matches!(outcome, Outcome::Requeued | Outcome::Lost) && batch.is_none() {
                    self.duration
                        .get_or_create(&provider(p))
                        .observe(ms_to_secs(*duration_ms));
                }
                if let Some(spent) = spent {
                    self.spent(p, spent);
                }
            }
            Event::ComponentLoaded { provider: p, .. } => {
                self.loads.get_or_create(&provider(p)).inc();
            }
            Event::ComponentRejected { file, .. } => {
                self.rejections
                    .get_or_create(&FileLabel { file: file.clone() })
                    .inc();
            }
            Event::SpendCap(notice) => {
                self.spend_notices
                    .get_or_create(&NoticeLabels {
                        scope: notice.scope.as_str(),
                        level: if notice.reached { "reached" } else { "warning" },
                    })
                    .inc();
            }
            Event::Cached { provider: p, .. } => {
                self.cache_hits.get_or_create(&provider(p)).inc();
            }
            Event::Claimed { .. }
            | Event::LimitChanged { .. }
            | Event::LanePaused { .. }
            | Event::CircuitChanged { .. } => {}
        }
    }

    /// Counts what a completed attempt used and cost.
    fn spent(&self, p: &str, spent: &crate::daemon::events::Spent) {
        let u = &spent.usage;
        for (direction, n) in [("input", u.input_tokens), ("output", u.output_tokens)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    provider: p.to_string(),
                    direction: direction.to_string(),
                })
                .observe(f64::from(n));
        }
        for (kind, n) in [
            ("input", Some(u.input_tokens)),
            ("output", Some(u.output_tokens)),
            ("cache_read", u.cache_read_tokens),
            ("cache_write", u.cache_write_tokens),
            ("reasoning", u.reasoning_tokens),
        ] {
            if let Some(n) = n.filter(|n| *n > 0) {
                self.tokens_total
                    .get_or_create(&KindLabels {
                        provider: p.to_string(),
                        kind,
                    })
                    .inc_by(u64::from(n));
            }
        }
        let labels = ModelLabels {
            provider: p.to_string(),
            model: spent.model.clone(),
        };
        match spent.cost_usd {
            Some(usd) => {
                self.cost.get_or_create(&labels).inc_by(usd);
            }
            None => {
                self.unpriced.get_or_create(&labels).inc();
            }
        }
    }

    /// Sets the response cache's sizes.
    pub fn set_cache_entries(&self, entries: &std::collections::BTreeMap<String, u64>) {
        self.cache_entries.clear();
        for (name, n) in entries {
            self.cache_entries
                .get_or_create(&provider(name))
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Sets each cap and the day's spend of it: `(scope, name, cap, spent)`.
    pub fn set_spend(&self, caps: &[(crate::store::SpendScope, String, f64, f64)]) {
        self.spend_usd.clear();
        self.spend_cap_usd.clear();
        for (scope, name, cap, spent) in caps {
            let labels = SpendLabels {
                scope: scope.as_str(),
                name: if name.is_empty() {
                    NO_TENANT.to_string()
                } else {
                    name.clone()
                },
            };
            self.spend_usd.get_or_create(&labels).set(*spent);
            self.spend_cap_usd.get_or_create(&labels).set(*cap);
        }
    }

    /// Sets the batch lanes' gauges from the stored batches and each provider's
    /// `batched` executions.
    pub fn set_batches(
        &self,
        batches: &[crate::store::batches::BatchRecord],
        batched: &std::collections::BTreeMap<String, u64>,
    ) {
        self.batches.clear();
        self.batch_resends.clear();
        self.batch_cost.clear();
        self.batch_saved.clear();
        for b in batches {
            self.batches
                .get_or_create(&BatchLabels {
                    provider: b.provider.clone(),
                    state: b.state.clone(),
                })
                .inc();
            let label = provider(&b.provider);
            self.batch_resends
                .get_or_create(&label)
                .inc_by((b.sends - 1).max(0));
            self.batch_cost
                .get_or_create(&label)
                .inc_by(b.cost_usd.unwrap_or(0.0));
            self.batch_saved
                .get_or_create(&label)
                .inc_by(b.saved_usd.unwrap_or(0.0));
        }
        self.batched.clear();
        for (name, n) in batched {
            self.batched
                .get_or_create(&provider(name))
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Counts events the metrics missed.
    pub fn events_lost(&self, n: u64) {
        self.events_lost.inc_by(n);
    }

    /// Sets one provider's gauges.
    pub fn set_gauges(&self, name: &str, values: &GaugeValues) {
        let label = provider(name);
        let set = |family: &Family<ProviderLabel, Gauge>, v: u64| {
            family
                .get_or_create(&label)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.limit, u64::from(values.limit));
        set(&self.effective_limit, u64::from(values.effective_limit));
        set(&self.claimable, u64::from(values.claimable));
        set(&self.running, values.running);
        set(&self.pending, values.pending);
        set(&self.paused, u64::from(values.paused));
        set(&self.circuit_open, u64::from(values.circuit_open));
        if let Some((requests, tokens)) = values.budget_used {
            self.budget_requests.get_or_create(&label).set(requests);
            self.budget_tokens.get_or_create(&label).set(tokens);
        }
    }

    /// Sets the tenants' gauges: the `cap` tenants with the most open work by name, the
    /// rest summed as [`OTHER_TENANTS`]. Tenants no longer shown lose their series.
    pub fn set_tenants(&self, tenants: &[super::wire::TenantOut], cap: usize) {
        let mut rows: Vec<&super::wire::TenantOut> = tenants.iter().collect();
        rows.sort_by_key(|t| std::cmp::Reverse(t.pending.saturating_add(t.running)));
        let mut other = [0u64; 5];
        self.tenant_executions.clear();
        for (i, t) in rows.into_iter().enumerate() {
            let values = [t.pending, t.running, t.completed, t.failed, t.cancelled];
            if i >= cap {
                for (sum, v) in other.iter_mut().zip(values) {
                    *sum = sum.saturating_add(v);
                }
                continue;
            }
            let name = t.tenant.as_deref().unwrap_or(NO_TENANT);
            self.set_tenant(name, values);
        }
        if tenants.len() > cap {
            self.set_tenant(OTHER_TENANTS, other);
        }
    }

    fn set_tenant(&self, tenant: &str, values: [u64; 5]) {
        const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];
        for (status, v) in STATUSES.into_iter().zip(values) {
            self.tenant_executions
                .get_or_create(&TenantLabels {
                    tenant: tenant.to_string(),
                    status,
                })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// Sets the instance pool's figures (see [`super::wire::PoolOut`]).
    pub fn set_pool(&self, pool: &super::wire::PoolOut) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.pool_size.set(gauge(u64::from(pool.size)));
        self.pool_in_use.set(gauge(u64::from(pool.in_use)));
        self.pool_slots.set(gauge(pool.slots));
        // A counter follows the pool's own count, which only grows.
        let seen = self.pool_held_back.get();
        self.pool_held_back
            .inc_by(pool.held_back.saturating_sub(seen));
    }

    /// The scrape, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn ms_to_secs(ms: i64) -> f64 {
    // Millisecond counts far below 2^53: exact as f64.
    Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)).as_secs_f64()
}

use std::time::Duration;
