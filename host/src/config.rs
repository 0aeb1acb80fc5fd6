//! Configuration: defaults, then a TOML file, then `LANES_*` environment variables, validated
//! once so that the rest of the host can trust every value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Tag, Value};
use serde::{Deserialize, Serialize};

use crate::model::{MAX_COUNT, validate_provider_name};

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "lanes.toml";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// A problem with no key to name: a file that is not TOML at all.
    #[error("invalid config: {0}")]
    Parse(String),
    /// One key's problem: a wrong type, an unknown key, or a value out of range.
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Several problems, each naming its key, on one line.
    #[error("invalid config: {} problems: {}", .0.len(), ConfigError::join(.0))]
    Problems(Vec<ConfigError>),
}

impl ConfigError {
    /// What a problem says after `invalid config: `.
    fn detail(&self) -> String {
        match self {
            ConfigError::Missing(_) => self.to_string(),
            ConfigError::Parse(text) => text.clone(),
            ConfigError::Invalid { field, reason } => format!("{field}: {reason}"),
            ConfigError::Problems(problems) => ConfigError::join(problems),
        }
    }

    fn join(problems: &[ConfigError]) -> String {
        let details: Vec<String> = problems.iter().map(ConfigError::detail).collect();
        details.join("; ")
    }

    /// Refuses a config with `problems`, if there are any.
    fn refuse(problems: Vec<ConfigError>) -> Result<(), ConfigError> {
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ConfigError::from_list(problems)),
        }
    }

    /// One error for `problems`: the problem itself when there is one.
    fn from_list(mut problems: Vec<ConfigError>) -> ConfigError {
        match problems.len() {
            1 => problems.remove(0),
            _ => ConfigError::Problems(problems),
        }
    }

    /// Each problem on its own, for a caller that prints one a line.
    pub fn into_list(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Problems(problems) => problems,
            problem => vec![problem],
        }
    }
}

/// A database URL without its password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// A parse error as one line per problem, each naming its key the way the file spells it
/// (figment's own text prefixes an internal profile: "default.fallback_limit").
fn parse_error(e: figment::Error) -> ConfigError {
    let lines: Vec<String> = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (in {s})"))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("{key}: {}{source}", e.kind)
            }
        })
        .collect();
    ConfigError::Parse(lines.join("; "))
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Everything `lanes` can be told. See the README's config reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `sqlite://PATH` (created when missing), or `postgres://...` for a fleet of workers.
    pub database_url: String,
    /// The folder of provider components (`*.wasm`).
    pub plugins_dir: PathBuf,
    /// The limit of a provider that no component and no config describe.
    pub fallback_limit: u32,
    /// `max_attempts` of a submission that does not give one.
    pub default_max_attempts: u32,
    /// How often an idle lane looks for rows that other processes wrote.
    pub poll_interval_ms: u64,
    /// How often the daemon reads limits that `lanes limits set` stored.
    pub limits_refresh_ms: u64,
    /// How long running executions may take to finish after SIGINT or SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How often the daemon looks for new components in `plugins_dir`.
    pub plugins_rescan_ms: u64,
    /// PostgreSQL: how long a worker's claim on a running execution lasts without renewal.
    /// Another worker reclaims the execution once it expires.
    pub lease_ms: u64,
    pub retry: RetryConfig,
    /// Default limits of every component instance; `[providers.NAME.sandbox]` overrides them.
    pub sandbox: SandboxConfig,
    pub engine: EngineConfig,
    pub cache: CacheConfig,
    /// Default outbound HTTP limits; `[providers.NAME]` overrides them.
    pub http: HttpConfig,
    /// How finished attempts are written to the queue.
    pub completer: CompleterConfig,
    /// The HTTP API, metrics and dashboard that `lanes serve` serves.
    pub api: ApiConfig,
    /// Scheduling policies for every provider; `[providers.NAME.policy]` overrides them.
    pub policy: crate::policy::PolicyConfig,
    /// Providers by name: extra names for a component, limits and config values.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routes by name: a submission to a route goes to one of its member providers.
    pub routes: BTreeMap<String, RouteConfig>,
    /// The OpenAI-compatible endpoint (`/openai/v1`).
    pub front_door: FrontDoorConfig,
    /// Streamed answers: how long their deltas are kept.
    pub streams: StreamsConfig,
    /// Tenants by name: their weights under `fairness = "weighted"`.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Prices over the shipped table (`host/prices.toml`), by model, in USD per million
    /// tokens: `[prices."gpt-4o"] input = 2.5` changes one field of a shipped model; a new
    /// model gives at least `input` and `output`.
    pub prices: BTreeMap<String, crate::costs::PriceOverride>,
}

/// `[tenants.NAME]`: one tenant's settings. A tenant needs no entry to submit work: one
/// without takes the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Its share of a lane under `fairness = "weighted"`, against the other tenants with
    /// pending work (default 1): a tenant of weight 2 runs twice as many at once as one of
    /// weight 1 while both have work waiting.
    pub weight: Option<f64>,
    /// The most it may spend in a UTC day, in USD, over every provider: once its spent and
    /// reserved cost reach this, its work waits for the next day (see
    /// `docs/policies.md#spend-caps`).
    pub daily_usd: Option<f64>,
}

/// `[providers.NAME] fairness`: how a lane is shared among the tenants with work in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fairness {
    /// The next start goes to the tenant with the fewest running.
    #[default]
    RoundRobin,
    /// The next start goes to the tenant with the fewest running for its
    /// `[tenants.NAME] weight`.
    Weighted,
}

/// `[streams]`: the deltas of streamed attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// How long an attempt's stored deltas are kept for replay
    /// (`GET /v1/executions/{id}/stream`), in seconds after they were stored.
    pub keep_secs: u64,
    /// A streamed call that receives nothing for this long, in ms, between two pieces of
    /// the answer fails as `unavailable` (and is retried); `[providers.NAME]
    /// stream_idle_timeout_ms` overrides it. Beside `request_timeout_ms`, which bounds the
    /// whole exchange.
    pub idle_timeout_ms: u64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            keep_secs: 3_600,
            idle_timeout_ms: 60_000,
        }
    }
}

/// `[front_door]`: the OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontDoorConfig {
    /// How long a request is held for its execution before it is answered 504 (the
    /// execution runs on). Under the SDKs' own 600 s timeout by default.
    pub max_wait_secs: u64,
    /// Names `model` may give besides `PROVIDER` and `PROVIDER/MODEL`: each stands for a
    /// `PROVIDER` or a `PROVIDER/MODEL`.
    pub models: BTreeMap<String, String>,
    /// What a request held `max_wait_secs` gets: `timeout` (504, in the vendor's error
    /// shape, which the SDKs retry) or `accepted` (202 with the execution's id, for clients
    /// that poll `/v1/executions/{id}` themselves).
    pub at_max_wait: AtMaxWait,
}

/// `[front_door] at_max_wait`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtMaxWait {
    #[default]
    Timeout,
    Accepted,
}

impl Default for FrontDoorConfig {
    fn default() -> Self {
        FrontDoorConfig {
            max_wait_secs: 540,
            models: BTreeMap::new(),
            at_max_wait: AtMaxWait::Timeout,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite://lanes.db".to_string(),
            plugins_dir: PathBuf::from("plugins"),
            fallback_limit: 1,
            default_max_attempts: 3,
            poll_interval_ms: 1000,
            limits_refresh_ms: 500,
            shutdown_grace_secs: 30,
            plugins_rescan_ms: 2000,
            lease_ms: 30_000,
            retry: RetryConfig::default(),
            sandbox: SandboxConfig::default(),
            engine: EngineConfig::default(),
            cache: CacheConfig::default(),
            http: HttpConfig::default(),
            completer: CompleterConfig::default(),
            api: ApiConfig::default(),
            policy: Default::default(),
            providers: BTreeMap::new(),
            routes: BTreeMap::new(),
            front_door: FrontDoorConfig::default(),
            streams: StreamsConfig::default(),
            tenants: BTreeMap::new(),
            prices: BTreeMap::new(),
        }
    }
}

/// The HTTP API (`/v1`), the metrics (`/metrics`) and the dashboard (`/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve it at all (`lanes serve --no-api` turns it off too).
    pub enabled: bool,
    /// `IP:PORT` to listen on; port 0 picks a free one (the log says which).
    pub addr: String,
    /// The environment variable holding the bearer token every request but `/healthz`
    /// must carry. A non-loopback `addr` needs a token.
    pub token_env: Option<String>,
    /// A file holding the bearer token (its first line).
    pub token_file: Option<PathBuf>,
    /// The largest request body, in bytes.
    pub max_body_bytes: u64,
    /// The largest image a submission's `image` part may carry, decoded, in bytes. The
    /// cap in force is the smaller of this and `max_body_bytes` (the CLI applies it too).
    pub max_image_bytes: u64,
    /// The most tenants that get a `tenant` label of their own in `/metrics` (those with
    /// the most open work); the rest are summed as `tenant="(other)"`, so a queue with
    /// thousands of tenants does not make thousands of series.
    pub metrics_tenants: usize,
}

impl ApiConfig {
    /// The image cap in force: `max_image_bytes`, never above `max_body_bytes`.
    pub fn image_cap(&self) -> usize {
        usize::try_from(self.max_image_bytes.min(self.max_body_bytes)).unwrap_or(usize::MAX)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            addr: "127.0.0.1:7465".to_string(),
            token_env: None,
            token_file: None,
            max_body_bytes: 4 * 1024 * 1024,
            max_image_bytes: crate::model::DEFAULT_MAX_IMAGE_BYTES as u64,
            metrics_tenants: 100,
        }
    }
}

/// The completer writes finished attempts in batches: one transaction for many rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompleterConfig {
    /// The most results one write takes. On SQLite, whose writes refill the slots they
    /// free, a write also takes at most a quarter of its lanes' slots (at least 16), and
    /// a larger batch goes in parts.
    pub max_batch: u32,
    /// How long a write waits for more results once it has one, in microseconds. 0 writes
    /// at once: results that finish while a write is under way go in the next one, so
    /// batches grow with the load without delaying a quiet lane.
    pub max_wait_us: u64,
    /// Results waiting to be written. When it is full, finished attempts wait (their slots
    /// stay held) until a write makes room; nothing is dropped.
    pub backlog: u32,
}

impl Default for CompleterConfig {
    fn default() -> Self {
        CompleterConfig {
            max_batch: 512,
            max_wait_us: 0,
            backlog: 4096,
        }
    }
}

/// Backoff of retryable errors: `base_ms * 2^(attempt-1)`, capped at `max_ms`, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base_ms: 500,
            max_ms: 60_000,
        }
    }
}

/// What one execution of a component may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Wall-clock limit of one attempt, host calls included.
    pub timeout_ms: u64,
    /// CPU time the guest may spend in its own code per attempt.
    pub cpu_ms: u64,
    /// Linear memory cap per instance.
    pub memory_mb: u64,
    /// The largest answer text accepted.
    pub max_output_bytes: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            timeout_ms: 300_000,
            cpu_ms: 10_000,
            memory_mb: 256,
            max_output_bytes: 4 << 20,
        }
    }
}

impl SandboxConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// These limits with a provider's overrides applied.
    pub fn with(&self, o: &SandboxOverride) -> SandboxConfig {
        SandboxConfig {
            timeout_ms: o.timeout_ms.unwrap_or(self.timeout_ms),
            cpu_ms: o.cpu_ms.unwrap_or(self.cpu_ms),
            memory_mb: o.memory_mb.unwrap_or(self.memory_mb),
            max_output_bytes: o.max_output_bytes.unwrap_or(self.max_output_bytes),
        }
    }
}

/// `[providers.NAME.sandbox]`: any of the `[sandbox]` limits, for one provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxOverride {
    pub timeout_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub max_output_bytes: Option<u64>,
}

/// Outbound HTTP limits of every provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// From sending a request to its response headers.
    pub request_timeout_ms: u64,
    /// The largest response body a component may read.
    pub max_response_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout_ms: 60_000,
            max_response_bytes: 8 << 20,
        }
    }
}

/// The wasm engine's instance pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Pre-allocate instance slots (the pooling allocator): fast instantiation, bounded use.
    pub pooling: bool,
    /// Component instances that executions may hold at once, across every provider. The
    /// claims take one with each slot: executions beyond it wait as pending. The engine
    /// keeps a few slots more for loading components ([`EngineConfig::engine_slots`]).
    pub max_instances: u32,
}

impl EngineConfig {
    /// The engine's instance slots: `max_instances` for executions, and a few more kept
    /// for the `info()` calls of components loaded or bound while executions hold every
    /// one of those (1 in 32, from 1 to 8).
    pub fn engine_slots(&self) -> u32 {
        self.max_instances
            .saturating_add((self.max_instances / 32).clamp(1, 8))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            max_instances: 256,
        }
    }
}

/// The on-disk cache of compiled components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Default: `$XDG_CACHE_HOME/lanes`, else `$HOME/.cache/lanes`, else `.lanes-cache`.
    pub dir: Option<PathBuf>,
    /// Entries that no loaded component uses are removed once they have gone unused this
    /// many days (0: never).
    pub prune_after_days: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
            prune_after_days: 14,
        }
    }
}

impl CacheConfig {
    /// How long an unused entry is kept, or `None` to keep entries forever.
    pub fn prune_after(&self) -> Option<std::time::Duration> {
        (self.prune_after_days > 0)
            .then(|| std::time::Duration::from_secs(self.prune_after_days.saturating_mul(86_400)))
    }

    /// The cache folder, or `None` when the cache is off.
    pub fn resolved_dir(&self) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        if let Some(dir) = &self.dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        Some(base.map_or_else(|| PathBuf::from(".lanes-cache"), |b| b.join("lanes")))
    }
}

/// `[providers.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// The component file (in `plugins_dir`) that serves this name. Without it, the name
    /// refers to the component whose `info()` gives this name.
    pub component: Option<String>,
    /// Overrides the component's default limit.
    pub limit: Option<u32>,
    /// The API's base URL. The component reads it as config value `base_url`, and its host
    /// is what the component may reach unless `allowed_hosts` says otherwise.
    pub base_url: Option<String>,
    /// The default model, read by the component as config value `model`.
    pub model: Option<String>,
    /// Hosts (`host` or `host:port`) the component may send HTTP requests to. Default: the
    /// host of `base_url`, or none.
    pub allowed_hosts: Option<Vec<String>>,
    /// Overrides `[http] request_timeout_ms`.
    pub request_timeout_ms: Option<u64>,
    /// Overrides `[http] max_response_bytes`.
    pub max_response_bytes: Option<u64>,
    /// The `user-agent` of the component's requests when it sets none (default
    /// `lanes/VERSION (NAME/COMPONENT-VERSION)`).
    pub user_agent: Option<String>,
    /// Requests per minute across the fleet, beside the concurrency limit: a claim reserves
    /// one request against it.
    pub rpm: Option<u32>,
    /// Tokens per minute across the fleet: a claim reserves an estimate (the request's
    /// `max_tokens` plus its text's length ÷ 4), settled with the real usage at the end.
    pub tpm: Option<u64>,
    /// Values the component reads through the `config` import.
    pub config: BTreeMap<String, ConfigValue>,
    /// The environment variable holding this provider's API key (the `api-key` secret).
    pub api_key_env: Option<String>,
    /// A file holding this provider's API key, read when the component loads.
    pub api_key_file: Option<PathBuf>,
    /// Overrides of the `[sandbox]` limits for this provider.
    pub sandbox: SandboxOverride,
    /// Overrides of `[policy]` for this provider.
    pub policy: crate::policy::PolicyConfig,
    /// Stream every call of this provider (when its component can), not only those
    /// submitted with `stream: true`.
    pub stream: bool,
    /// Overrides `[streams] idle_timeout_ms`.
    pub stream_idle_timeout_ms: Option<u64>,
    /// The most executions of one tenant running at once, across the fleet (none: a tenant
    /// may take the whole lane when no other has work).
    pub tenant_limit: Option<u32>,
    /// How the lane is shared among tenants with pending work (default `round_robin`).
    pub fairness: Fairness,
    /// The exact-match response cache, off unless set (see `responses`).
    pub response_cache: Option<ResponseCacheConfig>,
    /// The batch lane: deferrable work goes through the provider's batch API (see
    /// `daemon/batches.rs`). Off unless set.
    pub batch: Option<BatchConfig>,
    /// Price its answers (default true); `false` leaves `cost` out of its outputs, and
    /// usage totals count them unpriced.
    pub costs: Option<bool>,
    /// The most it may spend in a UTC day, in USD, across the fleet: once its spent and
    /// reserved cost reach this, it claims nothing until the next day (see
    /// `docs/policies.md#spend-caps`).
    pub daily_usd: Option<f64>,
}

/// `[providers.NAME] response_cache = { ttl_secs, max_entries }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// How long an answer is served, in seconds.
    pub ttl_secs: u64,
    /// The most answers kept for the provider; the oldest go first.
    pub max_entries: u64,
}

impl ResponseCacheConfig {
    /// `ttl_secs` in ms, the unit of the queue's times.
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// `[providers.NAME] batch = { enabled, min_items, max_items, max_wait_secs, ... }`: when
/// deferrable work of the provider is sent as one batch through its batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Deferrable submissions wait for a batch (otherwise they run live).
    pub enabled: bool,
    /// A batch is sent once this many wait...
    pub min_items: u32,
    /// ...or once the oldest has waited this long, in seconds.
    pub max_wait_secs: u64,
    /// The most requests in one batch (also capped by the component's own limit).
    pub max_items: u32,
    /// The most batches of the provider open at once.
    pub max_open: u32,
    /// How often an open batch's state is read, in seconds.
    pub poll_secs: u64,
    /// How long the provider may take to end a batch, in seconds (24 h for both batch
    /// APIs): a submission whose deadline comes sooner runs live.
    pub window_secs: u64,
    /// What becomes of a request that expired or was cancelled in its batch: `live` runs it
    /// live, `fail` fails it.
    pub on_expired: OnExpired,
    /// The longest one call of the batch API may take, the transfer of a batch's requests
    /// or results included, in seconds. A worker holds a batch it drives this long past its
    /// last step (plus 10 s), so that no other worker sends it at the same time; another
    /// takes it over once that lease runs out.
    pub transfer_timeout_secs: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            enabled: true,
            min_items: 1000,
            max_wait_secs: 600,
            max_items: 50_000,
            max_open: 4,
            poll_secs: 60,
            window_secs: 86_400,
            on_expired: OnExpired::Live,
            transfer_timeout_secs: 600,
        }
    }
}

impl BatchConfig {
    /// Whether a submission with `deadline` (Unix ms) at `now` can wait for a batch: its
    /// deadline, if any, comes after the longest wait for a batch to be sent and to end.
    pub fn holds(&self, now: i64, deadline: Option<i64>) -> bool {
        let longest = i64::try_from(
            self.max_wait_secs
                .saturating_add(self.window_secs)
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        self.enabled && deadline.is_none_or(|d| d >= now.saturating_add(longest))
    }
}

/// What becomes of a batch request that expired or was cancelled at the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExpired {
    /// Run it live.
    #[default]
    Live,
    /// Fail it.
    Fail,
}

/// A config value: TOML strings, numbers and booleans all reach the component as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::String(s) => f.write_str(s),
            ConfigValue::Integer(i) => write!(f, "{i}"),
            ConfigValue::Float(x) => write!(f, "{x}"),
            ConfigValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl ProviderConfig {
    /// The config values as the component sees them: `config`, plus `base_url` and `model`.
    pub fn values(&self) -> BTreeMap<String, String> {
        let mut values: BTreeMap<String, String> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        if let Some(url) = &self.base_url {
            values.insert("base_url".into(), url.trim_end_matches('/').to_string());
        }
        if let Some(model) = &self.model {
            values.insert("model".into(), model.clone());
        }
        values
    }

    /// The hosts the component may reach: `allowed_hosts`, else the host of `base_url`.
    pub fn allowed_hosts(&self) -> Vec<String> {
        if let Some(hosts) = &self.allowed_hosts {
            return hosts.clone();
        }
        self.base_url
            .as_deref()
            .and_then(base_url_authority)
            .into_iter()
            .collect()
    }
}

/// `host:port` of an `http(s)://` URL, the port made explicit; `None` when it is not one.
pub fn base_url_authority(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let default_port = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host().filter(|h| !h.is_empty())?;
    Some(format!("{host}:{}", uri.port_u16().unwrap_or(default_port)))
}

/// The top-level keys, so that unrelated `LANES_*` variables (such as `LANES_LOG`) are not
/// mistaken for settings.
const KEYS: &[&str] = &[
    "database_url",
    "plugins_dir",
    "fallback_limit",
    "default_max_attempts",
    "poll_interval_ms",
    "limits_refresh_ms",
    "shutdown_grace_secs",
    "plugins_rescan_ms",
    "lease_ms",
    "retry",
    "sandbox",
    "engine",
    "cache",
    "http",
    "completer",
    "api",
    "policy",
    "providers",
    "routes",
];

/// A config read with every problem found in it.
#[derive(Debug)]
pub struct Checked {
    /// The config, with each key that could not be read left at its default, so that the
    /// checks of the other keys still run.
    pub config: Config,
    /// Every problem, each naming its key: the keys that could not be read (a wrong type,
    /// an unknown key), then what types alone cannot catch ([`Config::problems`]).
    pub problems: Vec<ConfigError>,
}

impl Checked {
    /// Deserializes what `figment` merged. serde stops at the first error, so each error's
    /// key is noted and taken out, and the rest is deserialized again until it reads: one
    /// round per problem, and each round has a key fewer, so it ends.
    fn read(figment: &Figment) -> Result<Checked, ConfigError> {
        let mut dict: Dict = figment.extract().map_err(parse_error)?;
        let mut problems = Vec::new();
        let config = loop {
            let error = match Config::deserialize(&Value::Dict(Tag::Default, dict.clone())) {
                Ok(config) => break config,
                Err(error) => error,
            };
            let reason = match &error.kind {
                // figment's text repeats the key, which the line already names.
                figment::error::Kind::UnknownField(_, expected) => {
                    format!("unknown key, expected one of: {}", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            let reason = format!("{reason}{}", source_of(figment, &error.path));
            let key = key_name(&dict, &error.path);
            let removed = remove(&mut dict, &error.path);
            problems.push(match key.is_empty() {
                true => ConfigError::Parse(reason),
                false => invalid(key, reason),
            });
            if !removed {
                // Nothing to take out: no further problem can be found behind this one.
                return Err(ConfigError::from_list(problems));
            }
        };
        problems.extend(config.problems());
        Ok(Checked { config, problems })
    }
}

/// Where the value at `path` (or the array holding it) came from: ` (in FILE)`, ` (from
/// `LANES_` environment variable(s))`, or nothing when figment does not know.
fn source_of(figment: &Figment, path: &[String]) -> String {
    (1..=path.len())
        .rev()
        .find_map(|len| figment.find_metadata(&path[..len].join(".")))
        .map(|m| match &m.source {
            Some(source @ figment::Source::File(_)) => format!(" (in {source})"),
            // The variables, or a string in code: a line of lanes' source would not help.
            _ => format!(" (from {})", m.name),
        })
        .unwrap_or_default()
}

/// `path` as the file spells it: `providers.a.allowed_hosts[0]`.
fn key_name(dict: &Dict, path: &[String]) -> String {
    let mut name = String::new();
    let mut at = dict.get(path.first().map_or("", String::as_str));
    if let Some(first) = path.first() {
        name.push_str(first);
    }
    for part in path.iter().skip(1) {
        match at {
            Some(Value::Array(_, items)) => {
                name.push_str(&format!("[{part}]"));
                at = part.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            Some(Value::Dict(_, inner)) => {
                name.push('.');
                name.push_str(part);
                at = inner.get(part);
            }
            _ => {
                name.push('.');
                name.push_str(part);
                at = None;
            }
        }
    }
    name
}

/// Takes the value at `path` out of `dict`, or the whole array or value that holds it; false
/// when there is nothing there.
fn remove(dict: &mut Dict, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match dict.get_mut(first) {
        Some(Value::Dict(_, inner)) if !rest.is_empty() => remove(inner, rest),
        Some(_) => dict.remove(first).is_some(),
        None => false,
    }
}

impl Config {
    /// The policies of `provider`: its own, then `[policy]`, then the defaults.
    pub fn policy_for(&self, provider: &str) -> crate::policy::Policy {
        let own = self.providers.get(provider);
        let mut policy = crate::policy::Policy::resolve(
            own.map(|p| &p.policy).unwrap_or(&Default::default()),
            &self.policy,
        );
        policy.budget =
            own.filter(|p| p.rpm.is_some() || p.tpm.is_some())
                .map(|p| crate::store::Budget {
                    rpm: p.rpm,
                    tpm: p.tpm,
                });
        policy.tenants = crate::store::Tenants {
            limit: own.and_then(|p| p.tenant_limit),
            weights: own
                .filter(|p| p.fairness == Fairness::Weighted)
                .map(|_| self.tenant_weights()),
        };
        policy.spend = self.spend_caps(provider);
        policy
    }

    /// The spend caps that bear on `provider`'s claims: its own `daily_usd` and every
    /// tenant's, with the prices of its configured model to estimate a claim by. `None`
    /// when there are none. Its `day` is 0: each claim sets its own.
    fn spend_caps(&self, provider: &str) -> Option<crate::store::Spend> {
        let own = self.providers.get(provider);
        let provider_usd = own.and_then(|p| p.daily_usd);
        let tenants: BTreeMap<String, f64> = self
            .tenants
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), t.daily_usd?)))
            .collect();
        if provider_usd.is_none() && tenants.is_empty() {
            return None;
        }
        let price = own
            .and_then(|p| p.model.as_deref())
            .and_then(|model| self.price_table().lookup(model).map(|(_, price)| *price));
        Some(crate::store::Spend {
            day: 0,
            provider_usd,
            tenants: std::sync::Arc::new(tenants),
            price,
        })
    }

    /// The price table in force: the shipped one with `[prices]` laid over it (checked
    /// when the config was loaded, so an override that cannot apply is not met here).
    pub fn price_table(&self) -> crate::costs::PriceTable {
        crate::costs::PriceTable::with_overrides(&self.prices)
            .unwrap_or_else(|_| crate::costs::PriceTable::shipped())
    }

    /// The weights of the tenants that set one, as the claim takes them: a JSON object.
    fn tenant_weights(&self) -> std::sync::Arc<str> {
        let weights: serde_json::Map<String, serde_json::Value> = self
            .tenants
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), serde_json::json!(t.weight?))))
            .collect();
        std::sync::Arc::from(serde_json::Value::Object(weights).to_string())
    }

    /// Loads defaults, then `path` (or `lanes.toml` when present), then `LANES_*` variables
    /// (`LANES_PROVIDERS__CLAUDE__LIMIT=5` sets `providers.claude.limit`). A config with any
    /// problem is refused, with every problem named.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let checked = Self::check(path)?;
        ConfigError::refuse(checked.problems)?;
        Ok(checked.config)
    }

    /// Reads the config as [`Config::load`] does, and finds every problem in it instead of
    /// refusing it: for `lanes config check`. Fails only when nothing can be read (no file,
    /// or text that is not TOML).
    pub fn check(path: Option<&Path>) -> Result<Checked, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(path) if !path.exists() => return Err(ConfigError::Missing(path.to_owned())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE))
            }
            None => {}
        }
        figment = figment.merge(Env::prefixed("LANES_").split("__").filter(|key| {
            let first = key.as_str().split('.').next().unwrap_or_default();
            KEYS.iter().any(|k| first.eq_ignore_ascii_case(k))
        }));
        Checked::read(&figment)
    }

    /// The config as `lanes config show` prints it: every value in effect, with the
    /// password of `database_url` hidden. (Secrets themselves never appear in the config:
    /// it names the variable or file they come from.)
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        shown.database_url = redact_url(&self.database_url);
        shown
    }

    /// Parses a TOML document on its own (no file, no environment); refused with every
    /// problem named.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        let checked = Checked::read(&figment)?;
        ConfigError::refuse(checked.problems)?;
        Ok(checked.config)
    }

    /// Checks what types alone cannot; every problem, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::refuse(self.problems())
    }

    /// Every problem that types alone cannot catch, each naming its key, in key order.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let url = &self.database_url;
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            problems.push(invalid(
                "database_url",
                format!("`{url}` is not supported: use sqlite://PATH or postgres://..."),
            ));
        }
        for (field, value) in [
            ("fallback_limit", self.fallback_limit),
            ("default_max_attempts", self.default_max_attempts),
        ] {
            if value > MAX_COUNT {
                problems.push(invalid(
                    field,
                    format!("{value} is too large: the most lanes stores is {MAX_COUNT}"),
                ));
            }
        }
        let positive = [
            ("fallback_limit", u64::from(self.fallback_limit)),
            ("default_max_attempts", u64::from(self.default_max_attempts)),
            ("poll_interval_ms", self.poll_interval_ms),
            ("limits_refresh_ms", self.limits_refresh_ms),
            ("plugins_rescan_ms", self.plugins_rescan_ms),
            ("lease_ms", self.lease_ms),
            ("retry.base_ms", self.retry.base_ms),
            ("retry.max_ms", self.retry.max_ms),
            ("sandbox.timeout_ms", self.sandbox.timeout_ms),
            ("sandbox.cpu_ms", self.sandbox.cpu_ms),
            ("sandbox.memory_mb", self.sandbox.memory_mb),
            ("sandbox.max_output_bytes", self.sandbox.max_output_bytes),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("http.max_response_bytes", self.http.max_response_bytes),
        ];
        for (field, value) in positive {
            if value == 0 {
                problems.push(invalid(field, "must be at least 1"));
            }
        }
        if let Err(e) = self.api.addr.parse::<std::net::SocketAddr>() {
            problems.push(invalid(
                "api.addr",
                format!("`{}` is not IP:PORT: {e}", self.api.addr),
            ));
        }
        if self.api.token_env.is_some() && self.api.token_file.is_some() {
            problems.push(invalid("api", "set token_env or token_file, not both"));
        }
        if self.api.max_body_bytes == 0 {
            problems.push(invalid("api.max_body_bytes", "must be at least 1"));
        }
        if self.api.max_image_bytes == 0 {
            problems.push(invalid("api.max_image_bytes", "must be at least 1"));
        }
        if self.streams.keep_secs == 0 {
            problems.push(invalid("streams.keep_secs", "must be at least 1"));
        }
        if self.streams.idle_timeout_ms == 0 {
            problems.push(invalid("streams.idle_timeout_ms", "must be at least 1"));
        }
        if !(1..=3_600).contains(&self.front_door.max_wait_secs) {
            problems.push(invalid(
                "front_door.max_wait_secs",
                "must be from 1 to 3600",
            ));
        }
        if !(1..=10_000).contains(&self.completer.max_batch) {
            problems.push(invalid("completer.max_batch", "must be from 1 to 10000"));
        }
        if self.completer.backlog < self.completer.max_batch {
            problems.push(invalid(
                "completer.backlog",
                format!(
                    "must be at least completer.max_batch ({})",
                    self.completer.max_batch
                ),
            ));
        }
        if self.completer.max_wait_us > 1_000_000 {
            problems.push(invalid(
                "completer.max_wait_us",
                "must be at most 1000000 (1 s): results hold their slots while they wait",
            ));
        }
        if self.engine.max_instances == 0 {
            problems.push(invalid("engine.max_instances", "must be at least 1"));
        }
        for (key, reason) in self.policy.problems() {
            problems.push(invalid(format!("policy.{key}"), reason));
        }
        for (name, route) in &self.routes {
            for (key, reason) in route.problems(name, self) {
                let field = if key.is_empty() {
                    format!("routes.{name}")
                } else {
                    format!("routes.{name}.{key}")
                };
                problems.push(invalid(field, reason));
            }
        }
        if let Err(e) = crate::costs::PriceTable::with_overrides(&self.prices) {
            let key = match &e {
                crate::costs::PriceError::Missing { model, field }
                | crate::costs::PriceError::Invalid { model, field, .. } => {
                    format!("prices.{model}.{field}")
                }
                _ => "prices".to_string(),
            };
            problems.push(invalid(key, e.to_string()));
        }
        for (name, tenant) in &self.tenants {
            if let Err(e) = crate::model::check_tenant(name) {
                problems.push(invalid(format!("tenants.{name}"), e));
            }
            if let Some(w) = tenant.weight
                && !(w.is_finite() && w > 0.0 && w <= 1e6)
            {
                problems.push(invalid(
                    format!("tenants.{name}.weight"),
                    "must be above 0 and at most 1000000",
                ));
            }
            if let Some(usd) = tenant.daily_usd
                && !(usd.is_finite() && usd > 0.0)
            {
                problems.push(invalid(
                    format!("tenants.{name}.daily_usd"),
                    "must be a number of USD above 0",
                ));
            }
        }
        for (name, provider) in &self.providers {
            for (key, reason) in provider.policy.problems() {
                problems.push(invalid(format!("providers.{name}.policy.{key}"), reason));
            }
            if let Err(e) = validate_provider_name(name) {
                problems.push(invalid(format!("providers.{name}"), e));
            }
            if let Some(c) = &provider.response_cache {
                if c.ttl_secs == 0 || c.ttl_secs > 366 * 86_400 {
                    problems.push(invalid(
                        format!("providers.{name}.response_cache.ttl_secs"),
                        "must be 1 to 31622400 (a year)",
                    ));
                }
                if c.max_entries == 0 || c.max_entries > 100_000_000 {
                    problems.push(invalid(
                        format!("providers.{name}.response_cache.max_entries"),
                        "must be 1 to 100000000",
                    ));
                }
            }
            if let Some(b) = &provider.batch {
                let mut check = |field: &str, ok: bool, reason: &str| {
                    if !ok {
                        problems.push(invalid(format!("providers.{name}.batch.{field}"), reason));
                    }
                };
                check(
                    "min_items",
                    (1..=1_000_000).contains(&b.min_items),
                    "must be 1 to 1000000",
                );
                check(
                    "max_items",
                    (1..=1_000_000).contains(&b.max_items),
                    "must be 1 to 1000000",
                );
                check(
                    "max_wait_secs",
                    b.max_wait_secs <= 7 * 86_400,
                    "must be 0 to 604800 (a week)",
                );
                check(
                    "max_open",
                    (1..=1000).contains(&b.max_open),
                    "must be 1 to 1000",
                );
                check(
                    "poll_secs",
                    (1..=86_400).contains(&b.poll_secs),
                    "must be 1 to 86400",
                );
                check(
                    "transfer_timeout_secs",
                    (1..=86_400).contains(&b.transfer_timeout_secs),
                    "must be 1 to 86400",
                );
                check(
                    "window_secs",
                    b.window_secs <= 7 * 86_400,
                    "must be 0 to 604800 (a week)",
                );
            }
            if let Some(usd) = provider.daily_usd {
                if !(usd.is_finite() && usd > 0.0) {
                    problems.push(invalid(
                        format!("providers.{name}.daily_usd"),
                        "must be a number of USD above 0",
                    ));
                } else if provider.costs == Some(false) {
                    problems.push(invalid(
                        format!("providers.{name}.daily_usd"),
                        "needs its answers priced, and `costs = false` leaves them unpriced",
                    ));
                } else if !provider.model.as_deref().is_some_and(|model| {
                    crate::costs::PriceTable::with_overrides(&self.prices)
                        .is_ok_and(|table| table.lookup(model).is_some())
                }) {
                    problems.push(invalid(
                        format!("providers.{name}.daily_usd"),
                        "needs the provider's `model` set to a model with a price (in the \
                         shipped table or `[prices.\"MODEL\"]`): a claim reserves its \
                         estimate at that model's prices",
                    ));
                }
            }
            if provider.tenant_limit == Some(0) {
                problems.push(invalid(
                    format!("providers.{name}.tenant_limit"),
                    "must be at least 1 (leave it out for no tenant limit)",
                ));
            }
            if provider.rpm == Some(0) {
                problems.push(invalid(
                    format!("providers.{name}.rpm"),
                    "must be at least 1 (leave it out for no request budget)",
                ));
            }
            if provider.tpm == Some(0) {
                problems.push(invalid(
                    format!("providers.{name}.tpm"),
                    "must be at least 1 (leave it out for no token budget)",
                ));
            }
            if provider.limit == Some(0) {
                problems.push(invalid(
                    format!("providers.{name}.limit"),
                    "must be at least 1 (a limit of 0 would never run anything)",
                ));
            }
            if let Some(limit) = provider.limit
                && limit > MAX_COUNT
            {
                problems.push(invalid(
                    format!("providers.{name}.limit"),
                    format!("{limit} is too large: the most lanes stores is {MAX_COUNT}"),
                ));
            }
            let sandbox = &provider.sandbox;
            for (field, value) in [
                ("timeout_ms", sandbox.timeout_ms),
                ("cpu_ms", sandbox.cpu_ms),
                ("memory_mb", sandbox.memory_mb),
                ("max_output_bytes", sandbox.max_output_bytes),
            ] {
                if value == Some(0) {
                    problems.push(invalid(
                        format!("providers.{name}.sandbox.{field}"),
                        "must be at least 1",
                    ));
                }
            }
            if let Some(agent) = &provider.user_agent
                && (agent.is_empty() || http::HeaderValue::from_str(agent).is_err())
            {
                problems.push(invalid(
                    format!("providers.{name}.user_agent"),
                    "must be a non-empty header value (visible ASCII and spaces)",
                ));
            }
            if let Some(url) = &provider.base_url
                && base_url_authority(url).is_none()
            {
                problems.push(invalid(
                    format!("providers.{name}.base_url"),
                    format!("`{url}` is not an http:// or https:// URL with a host"),
                ));
            }
            for (field, value) in [
                ("request_timeout_ms", provider.request_timeout_ms),
                ("max_response_bytes", provider.max_response_bytes),
                ("stream_idle_timeout_ms", provider.stream_idle_timeout_ms),
            ] {
                if value == Some(0) {
                    problems.push(invalid(
                        format!("providers.{name}.{field}"),
                        "must be at least 1",
                    ));
                }
            }
            if provider.api_key_env.is_some() && provider.api_key_file.is_some() {
                problems.push(invalid(
                    format!("providers.{name}"),
                    "set api_key_env or api_key_file, not both",
                ));
            }
            if let Some(component) = &provider.component
                && (component.contains('/') || !component.ends_with(".wasm"))
            {
                problems.push(invalid(
                    format!("providers.{name}.component"),
                    format!("`{component}` must be a `.wasm` file name inside plugins_dir"),
                ));
            }
        }
        problems
    }

    /// The SQLite file of `database_url`.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.database_url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }

    /// The sandbox limits of provider `name`.
    pub fn sandbox_for(&self, name: &str) -> SandboxConfig {
        match self.providers.get(name) {
            Some(p) => self.sandbox.with(&p.sandbox),
            None => self.sandbox.clone(),
        }
    }

    /// The largest memory cap of any provider: the size of an instance pool slot.
    pub fn max_memory_mb(&self) -> u64 {
        self.providers
            .values()
            .filter_map(|p| p.sandbox.memory_mb)
            .fold(self.sandbox.memory_mb, u64::max)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// How a route picks its member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The member with the most free share of its effective limit, skipping paused and open
    /// members.
    #[default]
    Capacity,
    /// The first healthy member, falling back in order.
    Ordered,
}

/// `[routes.NAME]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The member providers, in order.
    pub providers: Vec<String>,
    pub strategy: Strategy,
}

impl RouteConfig {
    /// What is wrong with this route, as `(key, reason)`.
    pub fn problems(&self, name: &str, config: &Config) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = crate::model::validate_provider_name(name) {
            problems.push((String::new(), e));
        }
        if config.providers.contains_key(name) {
            problems.push((
                String::new(),
                format!("`{name}` is also a provider: a route needs a name of its own"),
            ));
        }
        if self.providers.is_empty() {
            problems.push(("providers".into(), "must name at least one provider".into()));
        }
        for (i, member) in self.providers.iter().enumerate() {
            if let Err(e) = crate::model::validate_provider_name(member) {
                problems.push((format!("providers[{i}]"), e));
            } else if self.providers[..i].contains(member) {
                problems.push((
                    format!("providers[{i}]"),
                    format!("`{member}` is named twice"),
                ));
            } else if config.routes.contains_key(member) {
                problems.push((
                    format!("providers[{i}]"),
                    format!("`{member}` is a route: members must be providers"),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_what_the_database_stores_are_refused_with_their_key() {
        for (text, key) in [
            ("default_max_attempts = 2147483648", "default_max_attempts"),
            ("fallback_limit = 4294967295", "fallback_limit"),
            ("[providers.big]\nlimit = 2147483648", "providers.big.limit"),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("2147483647"),
                "{text}: {err}"
            );
        }
        let ok = Config::from_toml("default_max_attempts = 2147483647").unwrap();
        assert_eq!(ok.default_max_attempts, 2_147_483_647);
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn provider_tables_parse() {
        let config = Config::from_toml(
            r#"
            fallback_limit = 2
            [providers.fast]
            component = "stub.wasm"
            limit = 8
            config = { latency_ms = 20, model = "m" }
            "#,
        )
        .unwrap();
        let fast = &config.providers["fast"];
        assert_eq!(fast.limit, Some(8));
        assert_eq!(fast.values()["latency_ms"], "20");
        assert_eq!(config.fallback_limit, 2);
    }

    #[test]
    fn errors_name_the_field() {
        let err = Config::from_toml("[providers.claude]\nlimit = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.claude.limit"), "{err}");
        let err = Config::from_toml("fallback_limit = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fallback_limit"), "{err}");
        assert!(
            !err.contains("default."),
            "no internal profile prefix: {err}"
        );
        let err = Config::from_toml("polll_interval_ms = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("polll_interval_ms"), "{err}");
        let err = Config::from_toml("database_url = \"mysql://x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
    }

    #[test]
    fn type_errors_and_unknown_keys_are_found_beside_every_other_problem() {
        let text = "polll_interval_ms = 5\npoll_interval_ms = \"soon\"\nfallback_limit = 0\n\
                    [providers.x]\nlimit = \"many\"\nallowed_hosts = [\"a\", 1]\n\
                    [providers.y.sandbox]\nmemory_mb = -1\n[api]\nmax_body_bytes = 0\n";
        let problems = Config::from_toml(text).unwrap_err().into_list();
        let keys: Vec<String> = problems
            .iter()
            .map(|p| match p {
                ConfigError::Invalid { field, .. } => field.clone(),
                other => panic!("a problem without its key: {other}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "poll_interval_ms",
                "polll_interval_ms",
                "providers.x.allowed_hosts[1]",
                "providers.x.limit",
                "providers.y.sandbox.memory_mb",
                "fallback_limit",
                "api.max_body_bytes",
            ]
        );
        // One line for all of them, each said once, for `serve` and a reload.
        let text = Config::from_toml(text).unwrap_err().to_string();
        assert!(text.starts_with("invalid config: 7 problems: "), "{text}");
        assert!(!text.contains('\n'), "{text}");
        // A bad key falls back to its default, so the checks of the others still run.
        let checked = Checked::read(
            &Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::string("poll_interval_ms = \"soon\"\nlease_ms = 7")),
        )
        .unwrap();
        assert_eq!(checked.config.poll_interval_ms, 1000);
        assert_eq!(checked.config.lease_ms, 7);
        assert_eq!(checked.problems.len(), 1);
    }

    #[test]
    fn text_that_is_not_toml_is_one_problem() {
        let problems = Config::from_toml("poll_interval_ms = = 3")
            .unwrap_err()
            .into_list();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(matches!(problems[0], ConfigError::Parse(_)), "{problems:?}");
    }

    #[test]
    fn base_urls_become_allowed_hosts() {
        let config = Config::from_toml(
            "[providers.a]\nbase_url = \"https://api.example.com/\"\n\
             [providers.b]\nbase_url = \"http://127.0.0.1:11434\"\n\
             [providers.c]\nbase_url = \"http://x:1\"\nallowed_hosts = [\"y\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.providers["a"].allowed_hosts(),
            vec!["api.example.com:443"]
        );
        assert_eq!(
            config.providers["a"].values()["base_url"],
            "https://api.example.com"
        );
        assert_eq!(
            config.providers["b"].allowed_hosts(),
            vec!["127.0.0.1:11434"]
        );
        assert_eq!(config.providers["c"].allowed_hosts(), vec!["y"]);
        assert!(ProviderConfig::default().allowed_hosts().is_empty());
        let err = Config::from_toml("[providers.a]\nbase_url = \"ftp://x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.a.base_url"), "{err}");
    }

    #[test]
    fn api_settings_are_checked_with_their_key() {
        for (text, key) in [
            ("[api]\naddr = \"localhost\"", "api.addr"),
            ("[api]\ntoken_env = \"A\"\ntoken_file = \"/b\"", "api"),
            ("[api]\nmax_body_bytes = 0", "api.max_body_bytes"),
            ("[api]\nport = 1", "port"),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let ok = Config::from_toml("[api]\naddr = \"[::1]:0\"\nenabled = false").unwrap();
        assert!(!ok.api.enabled);
    }

    #[test]
    fn bad_policies_are_refused_with_their_key() {
        for (text, key) in [
            ("[policy]\nbreaker_ratio = 1.5", "policy.breaker_ratio"),
            ("[policy]\nbreaker_window = 0", "policy.breaker_window"),
            (
                "[policy]\nmax_retry_after_secs = 0",
                "policy.max_retry_after_secs",
            ),
            ("[policy]\nadaptive_floor = 0", "policy.adaptive_floor"),
            (
                "[policy]\nadaptive_latency_ratio = 0.5",
                "policy.adaptive_latency_ratio",
            ),
            (
                "[policy]\nbreaker_cooldown_ms = 500\nbreaker_max_cooldown_ms = 100",
                "policy.breaker_max_cooldown_ms",
            ),
            (
                "[providers.x.policy]\nresume_spread_ms = 900000",
                "providers.x.policy.resume_spread_ms",
            ),
            ("[providers.x.policy]\npuase = true", "puase"),
            ("[policy]\nbreaker_failures = -1", "policy.breaker_failures"),
            ("[providers.x]\nrpm = 0", "providers.x.rpm"),
            ("[providers.x]\ntpm = 0", "providers.x.tpm"),
            ("[providers.x]\nrpm = -5", "providers.x.rpm"),
            ("[providers.x]\ntpm = \"lots\"", "providers.x.tpm"),
            (
                "[providers.x]\ntenant_limit = 0",
                "providers.x.tenant_limit",
            ),
            ("[providers.x]\nfairness = \"fifo\"", "providers.x.fairness"),
            ("[providers.x]\ndaily_usd = 0", "providers.x.daily_usd"),
            ("[providers.x]\ndaily_usd = 5", "providers.x.daily_usd"),
            (
                "[providers.x]\ndaily_usd = 5\nmodel = \"no-such-model\"",
                "providers.x.daily_usd",
            ),
            (
                "[providers.x]\ndaily_usd = 5\ncosts = false",
                "providers.x.daily_usd",
            ),
            ("[tenants.acme]\ndaily_usd = -1", "tenants.acme.daily_usd"),
            ("[tenants.\"a b\"]\nweight = 1", "tenants.a b"),
            ("[tenants.acme]\nweight = 0", "tenants.acme.weight"),
            ("[tenants.acme]\nweight = -2", "tenants.acme.weight"),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let c = Config::from_toml(
            "[policy]\nbreaker_failures = 2\nmax_rate_limited = 9\n\
             [providers.x.policy]\nbreaker_failures = 0",
        )
        .unwrap();
        assert_eq!(
            c.policy_for("x").breaker_failures,
            0,
            "the provider's own wins"
        );
        assert_eq!(c.policy_for("x").max_rate_limited, 9, "then [policy]");
        assert_eq!(c.policy_for("y").breaker_failures, 2);
        assert_eq!(c.policy_for("y").breaker_window, 20, "then the default");
        let b = Config::from_toml("[providers.x]\nrpm = 60\ntpm = 90000").unwrap();
        assert_eq!(
            b.policy_for("x").budget,
            Some(crate::store::Budget {
                rpm: Some(60),
                tpm: Some(90_000)
            })
        );
        assert_eq!(b.policy_for("y").budget, None);
        let t = Config::from_toml(
            "[providers.x]\ntenant_limit = 3\nfairness = \"weighted\"\n\
             [providers.y]\ntenant_limit = 2\n\
             [tenants.acme]\nweight = 2.5\n[tenants.idle]",
        )
        .unwrap();
        let x = t.policy_for("x").tenants;
        assert_eq!(x.limit, Some(3));
        assert_eq!(x.weights.as_deref(), Some(r#"{"acme":2.5}"#));
        let y = t.policy_for("y").tenants;
        assert_eq!(
            (y.limit, y.weights),
            (Some(2), None),
            "round robin: no weights"
        );
    }

    #[test]
    fn sqlite_path_forms() {
        let mut c = Config::default();
        assert_eq!(c.sqlite_path(), Some(PathBuf::from("lanes.db")));
        c.database_url = "sqlite:///tmp/x.db?mode=rwc".into();
        assert_eq!(c.sqlite_path(), Some(PathBuf::from("/tmp/x.db")));
    }
}
