//! What one guest instance may see and use: its own config values and secrets, a WASI
//! context with no files, no environment and no sockets, outbound HTTP to its allowed hosts
//! only, a linear-memory cap and a CPU budget.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::outbound::{Outbound, OutboundRules, SharedClient};

use super::bindings::v01::lanes::provider::{config, hints, logging, types};
use super::bindings::{v01, v02, v02b};
use crate::config::SandboxConfig;

/// How often the engine's epoch advances; the unit of the CPU budget.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(EPOCH_TICK_MS);

/// [`EPOCH_TICK`] in milliseconds.
pub const EPOCH_TICK_MS: u64 = 1;

/// How much of a guest's stderr is kept to explain a trap.
const STDERR_CAPTURE: usize = 16 * 1024;

/// The limits of one instance, resolved from config.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    pub timeout: std::time::Duration,
    pub cpu_ticks: u64,
    pub memory_bytes: usize,
    pub max_output_bytes: usize,
}

impl From<&SandboxConfig> for SandboxLimits {
    fn from(c: &SandboxConfig) -> Self {
        SandboxLimits {
            timeout: c.timeout(),
            cpu_ticks: c.cpu_ms.div_ceil(EPOCH_TICK_MS).max(1),
            memory_bytes: usize::try_from(c.memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            max_output_bytes: usize::try_from(c.max_output_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// Caps the total linear memory of all of an instance's memories.
struct MemoryCap {
    cap: usize,
    used: usize,
    /// The most `used` has been, for `lanes plugins test`.
    peak: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.cap {
            return Err(wasmtime::format_err!(
                "memory limit exceeded: the guest asked for {} MiB, the cap is {} MiB",
                total.div_ceil(1 << 20),
                self.cap >> 20
            ));
        }
        self.used = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// What one provider's guests may read: its name (for log records), its config values and
/// its secrets. Cheap to clone into every store.
#[derive(Debug, Clone)]
pub struct GuestView {
    pub provider: Arc<str>,
    pub config: Arc<BTreeMap<String, String>>,
    pub secrets: Arc<BTreeMap<String, String>>,
    pub outbound: OutboundRules,
}

/// What stands for a secret in errors and logs.
pub const REDACTED: &str = "[secret redacted]";

impl GuestView {
    /// `text` with every secret value of this provider replaced by [`REDACTED`]: a provider
    /// that echoes the key in an error ("Incorrect API key provided: sk-…") must not get it
    /// stored in the execution's error or written to the log. Values shorter than 4
    /// characters are left alone: they would redact ordinary words.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.values() {
            let secret = secret.trim();
            if secret.chars().count() >= 4 && out.contains(secret) {
                out = out.replace(secret, REDACTED);
            }
        }
        out
    }

    /// A view with no values, used to ask a file's `info()` before any name is bound.
    pub fn anonymous(label: &str) -> Self {
        GuestView {
            provider: Arc::from(label),
            config: Arc::default(),
            secrets: Arc::default(),
            outbound: OutboundRules {
                allowed_hosts: Arc::from(Vec::new()),
                request_timeout: std::time::Duration::from_secs(5),
                idle_timeout: std::time::Duration::from_secs(5),
                max_response_bytes: 0,
                user_agent: None,
                stream_request_up_to: None,
            },
        }
    }
}

/// Takes the deltas of a streaming call as the component emits them. It must not block:
/// the guest waits for it.
pub type DeltaSink = Arc<dyn Fn(crate::model::Delta) + Send + Sync>;

/// The data of one guest's store.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    cpu_ticks_left: u64,
    cpu_ticks: u64,
    view: GuestView,
    http: WasiHttpCtx,
    pub(crate) outbound: Outbound,
    /// The wait the component asked for through `hints.retry-after`, in ms.
    pub(crate) retry_after_hint: Option<u64>,
    /// Where `stream.emit` sends the deltas of the call; `None` drops them.
    pub(crate) deltas: Option<DeltaSink>,
    /// During a batch call: where `batch-io` takes requests from and hands results to.
    pub(crate) batch_io: Option<Box<dyn super::batch::BatchIo>>,
    /// Keeps the epoch advancing while the store lives; `None` for the bare reference store,
    /// which has no CPU budget.
    _ticking: Option<TickerHold>,
}

impl GuestState {
    /// What the instance used so far: its largest total linear memory, in bytes, and its
    /// CPU time in epoch ticks (milliseconds).
    pub(crate) fn cost(&self) -> (usize, u64) {
        (self.memory.peak, self.cpu_ticks - self.cpu_ticks_left)
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl logging::Host for GuestState {
    fn log(&mut self, level: logging::Level, message: String) {
        let message = self.view.scrub(&message);
        let provider = &*self.view.provider;
        match level {
            logging::Level::Trace => tracing::trace!(provider, "{message}"),
            logging::Level::Debug => tracing::debug!(provider, "{message}"),
            logging::Level::Info => tracing::info!(provider, "{message}"),
            logging::Level::Warn => tracing::warn!(provider, "{message}"),
            logging::Level::Error => tracing::error!(provider, "{message}"),
        }
    }
}

impl types::Host for GuestState {}

impl hints::Host for GuestState {
    fn retry_after(&mut self, ms: u64) {
        self.retry_after_hint = Some(ms);
    }
}

impl config::Host for GuestState {
    fn get(&mut self, key: String) -> Option<String> {
        self.view.config.get(&key).cloned()
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.view.secrets.get(&name).cloned()
    }
}

// The 0.2 imports do what their 0.1 namesakes do.
mod imports_v02 {
    use super::GuestState;
    use crate::model::Delta;
    use crate::plugin::bindings::v02::lanes::provider::{config, hints, logging, stream, types};

    impl types::Host for GuestState {}

    impl logging::Host for GuestState {
        fn log(&mut self, level: logging::Level, message: String) {
            use crate::plugin::bindings::v01::lanes::provider::logging::{Host, Level};
            let level = match level {
                logging::Level::Trace => Level::Trace,
                logging::Level::Debug => Level::Debug,
                logging::Level::Info => Level::Info,
                logging::Level::Warn => Level::Warn,
                logging::Level::Error => Level::Error,
            };
            Host::log(self, level, message)
        }
    }

    impl hints::Host for GuestState {
        fn retry_after(&mut self, ms: u64) {
            super::hints::Host::retry_after(self, ms)
        }
    }

    impl config::Host for GuestState {
        fn get(&mut self, key: String) -> Option<String> {
            super::config::Host::get(self, key)
        }

        fn secret(&mut self, name: String) -> Option<String> {
            super::config::Host::secret(self, name)
        }
    }

    impl stream::Host for GuestState {
        fn emit(&mut self, delta: stream::Delta) {
            let Some(sink) = &self.deltas else {
                return;
            };
            sink(match delta {
                stream::Delta::Text(text) => Delta::Text { text },
                stream::Delta::Reasoning(text) => Delta::Reasoning { text },
                stream::Delta::ToolCallStart(s) => Delta::ToolCallStart {
                    index: s.index,
                    id: s.id,
                    name: s.name,
                },
                stream::Delta::ToolCallArguments(a) => Delta::ToolCallArguments {
                    index: a.index,
                    fragment: a.fragment,
                },
                stream::Delta::Usage(u) => Delta::Usage { usage: u.into() },
            })
        }
    }
}

/// Adds WASI and the `lanes:provider` imports to `linker`.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    // Both worlds' imports: their interfaces differ in version (0.1.x and 0.2.x), so a
    // component of either generation finds its own.
    v01::Provider::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    v02::Provider::add_to_linker::<GuestState, HasSelf<GuestState>>(linker, |s| s)?;
    // 0.2.1's `batch-io`, for components that send batches; others do not import it.
    v02b::lanes::provider::batch_io::add_to_linker::<GuestState, HasSelf<GuestState>>(
        linker,
        |s| s,
    )?;
    Ok(())
}

/// A fresh store for one call, with the guest's stderr captured.
pub fn new_store(
    engine: &Engine,
    ticker: &EpochTicker,
    view: GuestView,
    limits: &SandboxLimits,
    client: &SharedClient,
) -> (Store<GuestState>, MemoryOutputPipe) {
    let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
    // No preopened directories, no environment, no arguments and no network: a guest sees
    // only its clock, randomness and the lanes imports.
    let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
    let state = GuestState {
        wasi,
        table: ResourceTable::new(),
        memory: MemoryCap {
            cap: limits.memory_bytes,
            used: 0,
            peak: 0,
        },
        cpu_ticks_left: limits.cpu_ticks,
        cpu_ticks: limits.cpu_ticks,
        http: WasiHttpCtx::new(),
        outbound: Outbound::new(view.provider.clone(), view.outbound.clone(), client.clone()),
        retry_after_hint: None,
        deltas: None,
        batch_io: None,
        view,
        _ticking: Some(ticker.hold()),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(1);
    // Called each time the guest runs past an epoch tick (every millisecond). Yielding keeps
    // a spinning guest from holding a runtime thread: `yield_now` puts it behind every task
    // that is ready, where a plain wake would let it run again at once. Counting the calls
    // approximates the guest's CPU time, since a guest blocked in a host call (a sleep,
    // HTTP) is charged at most one tick for it.
    store.epoch_deadline_callback(|mut ctx: StoreContextMut<'_, GuestState>| {
        let state = ctx.data_mut();
        if state.cpu_ticks_left == 0 {
            return Err(wasmtime::format_err!(
                "CPU limit exceeded: the guest ran for more than {} ms",
                state.cpu_ticks.saturating_mul(EPOCH_TICK_MS)
            ));
        }
        state.cpu_ticks_left -= 1;
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    (store, stderr)
}

/// A store with nothing of lanes' sandbox: no memory limiter, no CPU accounting, no stderr
/// capture, no deadline. Only the benchmark's reference for the cost of the sandbox uses it.
#[doc(hidden)]
pub fn bare_store(engine: &Engine, view: GuestView, client: &SharedClient) -> Store<GuestState> {
    let state = GuestState {
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        memory: MemoryCap {
            cap: usize::MAX,
            used: 0,
            peak: 0,
        },
        cpu_ticks_left: u64::MAX,
        cpu_ticks: u64::MAX,
        http: WasiHttpCtx::new(),
        outbound: Outbound::new(view.provider.clone(), view.outbound.clone(), client.clone()),
        retry_after_hint: None,
        deltas: None,
        batch_io: None,
        view,
        _ticking: None,
    };
    let mut store = Store::new(engine, state);
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// The thread that advances an engine's epoch, the clock of every guest's CPU budget. It
/// ticks only while some store holds it ([`EpochTicker::hold`]): an idle daemon that ticked
/// every millisecond woke about a thousand times a second and spent about 3% of a core
/// doing it. Cheap to clone. Made only by [`EpochTicker::start`]: a ticker without its
/// thread would never stop a spinning guest.
#[derive(Clone)]
pub struct EpochTicker {
    shared: Arc<TickerShared>,
}

#[derive(Default)]
struct TickerShared {
    /// Stores alive that hold the ticker.
    holders: AtomicUsize,
    /// The ticker's thread, woken when the first holder comes.
    thread: OnceLock<std::thread::Thread>,
    /// Ticks so far, for tests.
    ticks: AtomicU64,
}

/// While alive, the ticker ticks. Each store holds one, so a guest is always on the clock.
pub struct TickerHold {
    shared: Arc<TickerShared>,
}

impl Drop for TickerHold {
    fn drop(&mut self) {
        self.shared.holders.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long the idle ticker sleeps between checks that its engine still exists: it wakes at
/// once when a store comes, and ends within this long of the engine's drop.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl EpochTicker {
    /// Starts the thread that advances `engine`'s epoch; it ends when the engine is dropped.
    pub fn start(engine: &Engine) -> EpochTicker {
        let ticker = EpochTicker {
            shared: Arc::new(TickerShared::default()),
        };
        let weak = engine.weak();
        let shared = ticker.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("lanes-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    drop(engine);
                    if shared.holders.load(Ordering::Acquire) == 0 {
                        // A hold that comes between the check and the park leaves the
                        // thread's token set, and the park returns at once.
                        std::thread::park_timeout(IDLE_CHECK);
                        continue;
                    }
                    // The tick after a wait, not before it: a guest that starts after a
                    // quiet spell is not charged a tick the moment it starts.
                    std::thread::sleep(EPOCH_TICK);
                    if let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        shared.ticks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        match spawned {
            Ok(handle) => {
                let _ = ticker.shared.thread.set(handle.thread().clone());
            }
            Err(e) => {
                tracing::error!("could not start the epoch thread, CPU limits will not apply: {e}")
            }
        }
        ticker
    }

    /// Keeps the ticker ticking until the hold is dropped.
    pub fn hold(&self) -> TickerHold {
        if self.shared.holders.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = self.shared.thread.get()
        {
            thread.unpark();
        }
        TickerHold {
            shared: self.shared.clone(),
        }
    }

    /// How many times the epoch has advanced.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Waits until `ticker` has ticked past `after`; false if it has not within 10 s.
    fn ticks_past(ticker: &EpochTicker, after: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ticker.ticks() > after {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_epoch_advances_only_while_a_store_holds_the_ticker() {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine");
        let ticker = EpochTicker::start(&engine);

        // Idle from the start: no ticks at all.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticker.ticks(), 0, "the ticker ticked with no store alive");

        // A hold wakes it, and it keeps ticking while held; two holds, one dropped, still
        // keep it ticking.
        let first = ticker.hold();
        assert!(ticks_past(&ticker, 0), "a hold did not wake the ticker");
        let second = ticker.hold();
        drop(first);
        let now = ticker.ticks();
        assert!(
            ticks_past(&ticker, now + 2),
            "the ticker stopped with a hold left"
        );

        // The last hold gone, it stops once the tick it was sleeping towards is done: some
        // 30 ms soon passes without a tick (ticking, it would tick about 30 times in each).
        drop(second);
        let stopped = (0..20)
            .find_map(|_| {
                let before = ticker.ticks();
                std::thread::sleep(Duration::from_millis(30));
                (ticker.ticks() == before).then_some(before)
            })
            .expect("the ticker kept ticking with no hold");

        // And it wakes again for the next store.
        let again = ticker.hold();
        assert!(
            ticks_past(&ticker, stopped),
            "the ticker did not wake a second time"
        );
        drop(again);
    }
}
