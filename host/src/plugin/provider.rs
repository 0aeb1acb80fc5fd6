//! A provider: a name bound to a component with its config values, secrets and limits.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::bindings::{ProviderPre, v01, v02};
use super::engine::LoadedComponent;
use super::sandbox::{self, DeltaSink, GuestView, SandboxLimits};
use crate::attempt::{self, Request};
use crate::model::{Capabilities, ChatInput, ChatOutput};

/// Why a component said a call failed, whichever `lanes:provider` version it speaks. The
/// case tells the host what to do next (see `attempt::classify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    RateLimited {
        retry_after_ms: Option<u64>,
        /// The provider's request or token window is spent until it resets.
        window_spent: bool,
        message: String,
    },
    Unavailable(String),
    InvalidRequest(String),
    Unauthorized(String),
    Other(String),
}

impl From<v01::ProviderError> for ProviderError {
    fn from(e: v01::ProviderError) -> Self {
        match e {
            v01::ProviderError::RateLimited(r) => ProviderError::RateLimited {
                retry_after_ms: r.retry_after_ms,
                // 0.1 has no field for it: the Rust SDK marks the message.
                window_spent: r.message.contains("(window spent"),
                message: r.message,
            },
            v01::ProviderError::Unavailable(m) => ProviderError::Unavailable(m),
            v01::ProviderError::InvalidRequest(m) => ProviderError::InvalidRequest(m),
            v01::ProviderError::Unauthorized(m) => ProviderError::Unauthorized(m),
            v01::ProviderError::Other(m) => ProviderError::Other(m),
        }
    }
}

impl From<v02::ProviderError> for ProviderError {
    fn from(e: v02::ProviderError) -> Self {
        match e {
            v02::ProviderError::RateLimited(r) => ProviderError::RateLimited {
                retry_after_ms: r.retry_after_ms,
                window_spent: r.window_spent || r.message.contains("(window spent"),
                message: r.message,
            },
            v02::ProviderError::Unavailable(m) => ProviderError::Unavailable(m),
            v02::ProviderError::InvalidRequest(m) => ProviderError::InvalidRequest(m),
            v02::ProviderError::Unauthorized(m) => ProviderError::Unauthorized(m),
            v02::ProviderError::Other(m) => ProviderError::Other(m),
        }
    }
}

/// Why one attempt did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The component answered with an error.
    #[error("{0}")]
    Provider(ProviderErrorDisplay),
    #[error("instantiate failed: {0}")]
    Instantiate(String),
    /// Every instance slot of the pool is in use; the attempt is retried.
    #[error("instantiate failed: {0} (engine.max_instances)")]
    PoolExhausted(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("timed out after {0} ms (sandbox.timeout_ms)")]
    Timeout(u128),
    #[error("output of {size} bytes exceeds the cap of {cap} bytes (sandbox.max_output_bytes)")]
    OutputTooLarge { size: usize, cap: usize },
    /// The component tried to reach a host outside its allow-list.
    #[error(
        "outbound request to {target} denied: not in the provider's allowed hosts {allowed:?} \
         (set base_url or allowed_hosts)"
    )]
    Denied {
        target: String,
        allowed: Vec<String>,
    },
}

impl ExecError {
    /// The error with every secret of the provider replaced (see [`GuestView::scrub`]).
    pub fn scrub(self, view: &GuestView) -> ExecError {
        let s = |text: String| view.scrub(&text);
        match self {
            ExecError::Provider(ProviderErrorDisplay(error, hint)) => {
                let error = match error {
                    ProviderError::RateLimited {
                        retry_after_ms,
                        window_spent,
                        message,
                    } => ProviderError::RateLimited {
                        retry_after_ms,
                        window_spent,
                        message: s(message),
                    },
                    ProviderError::Unavailable(m) => ProviderError::Unavailable(s(m)),
                    ProviderError::InvalidRequest(m) => ProviderError::InvalidRequest(s(m)),
                    ProviderError::Unauthorized(m) => ProviderError::Unauthorized(s(m)),
                    ProviderError::Other(m) => ProviderError::Other(s(m)),
                };
                ExecError::Provider(ProviderErrorDisplay(error, hint))
            }
            ExecError::Instantiate(m) => ExecError::Instantiate(s(m)),
            ExecError::PoolExhausted(m) => ExecError::PoolExhausted(s(m)),
            ExecError::Trap(m) => ExecError::Trap(s(m)),
            other => other,
        }
    }
}

/// A [`ProviderError`] with a readable `Display`, and the wait the component asked for
/// through `hints.retry-after` (for an error that is not a rate limit), in ms.
#[derive(Debug)]
pub struct ProviderErrorDisplay(pub ProviderError, pub Option<u64>);

impl std::fmt::Display for ProviderErrorDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ProviderError::RateLimited {
                retry_after_ms,
                message,
                ..
            } => match retry_after_ms {
                Some(ms) => write!(f, "rate limited (retry after {ms} ms): {message}"),
                None => write!(f, "rate limited: {message}"),
            },
            ProviderError::Unavailable(m) => match self.1 {
                Some(ms) => write!(f, "unavailable (retry after {ms} ms): {m}"),
                None => write!(f, "unavailable: {m}"),
            },
            ProviderError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            ProviderError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            ProviderError::Other(m) => write!(f, "error: {m}"),
        }
    }
}

/// What one call cost, as the sandbox counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallCost {
    /// The largest total linear memory of the instance, in bytes.
    pub memory_peak: usize,
    /// CPU time, in milliseconds (epoch ticks).
    pub cpu_ms: u64,
}

/// A provider name bound to a component, with that provider's values and limits.
pub struct Provider {
    pub name: Arc<str>,
    /// The component's `info()` limit under this provider's config values.
    pub default_limit: u32,
    pub component: Arc<LoadedComponent>,
    pub(crate) view: GuestView,
    pub(crate) sandbox: SandboxLimits,
    /// Its scheduling policies under the config it was bound with.
    pub policy: crate::policy::Policy,
    /// `[providers.NAME] stream`: every call streams, not only those that ask.
    pub stream: bool,
    /// How its answers are priced.
    pub pricing: crate::costs::Pricing,
    /// `[providers.NAME] response_cache`, when it has one.
    pub response_cache: Option<crate::config::ResponseCacheConfig>,
    pub(crate) engine: Engine,
    pub(crate) ticker: super::sandbox::EpochTicker,
    pub(crate) client: super::outbound::SharedClient,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("component", &self.component.file)
            .finish()
    }
}

impl Provider {
    /// How errors about this provider name it: "provider `fast` (stub.wasm 0.1.0)".
    pub fn label(&self) -> String {
        format!(
            "provider `{}` ({} {})",
            self.name, self.component.file, self.component.info.version
        )
    }

    /// What this provider's component takes beyond text.
    pub fn capabilities(&self) -> Capabilities {
        self.component.info.capabilities
    }

    /// Whether a call with `input` streams: it asks to (`stream: true`), or the provider
    /// streams every call, and the component can.
    pub fn streams(&self, input: &ChatInput) -> bool {
        (self.stream || input.stream == Some(true))
            && self.capabilities().has(crate::model::Capability::Streaming)
    }

    /// What the component is asked for `input`, in the WIT version it speaks, or why it
    /// cannot take it (a capability it lacks, named). `stream` asks it to stream its
    /// deltas; a component that cannot is asked without.
    pub fn request(&self, input: &ChatInput, stream: bool) -> Result<Request, String> {
        let info = &self.component.info;
        attempt::to_request(
            input,
            self.component.pre.generation(),
            info.capabilities,
            &info.image_media_types,
            stream && info.capabilities.has(crate::model::Capability::Streaming),
        )
    }

    /// Runs one attempt in a fresh instance, under the sandbox limits. The store, and with
    /// it the instance, is dropped afterwards whatever happened: a trapped instance is never
    /// entered again. The component's deltas, when it streams, go to `deltas`.
    pub async fn execute(
        &self,
        request: Request,
        deltas: Option<DeltaSink>,
    ) -> Result<ChatOutput, ExecError> {
        self.execute_measured(request, deltas)
            .await
            .0
            .map_err(|e| e.scrub(&self.view))
    }

    /// One attempt as [`Provider::execute`] runs it, but with the error as the component
    /// made it (not scrubbed of secrets) and what the call cost: `lanes plugins test` checks
    /// both.
    pub(crate) async fn execute_measured(
        &self,
        request: Request,
        deltas: Option<DeltaSink>,
    ) -> (Result<ChatOutput, ExecError>, CallCost) {
        let (mut store, stderr) = sandbox::new_store(
            &self.engine,
            &self.ticker,
            self.view.clone(),
            &self.sandbox,
            &self.client,
        );
        store.data_mut().deltas = deltas;
        let result = self.call(&mut store, &stderr, request).await;
        let (memory_peak, cpu_ms) = store.data().cost();
        (
            result,
            CallCost {
                memory_peak,
                cpu_ms,
            },
        )
    }

    async fn call(
        &self,
        store: &mut wasmtime::Store<sandbox::GuestState>,
        stderr: &MemoryOutputPipe,
        request: Request,
    ) -> Result<ChatOutput, ExecError> {
        let denied = store.data().outbound.denied.clone();
        let instantiate_error = |e: wasmtime::Error| {
            if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                ExecError::PoolExhausted(format!("{e:#}"))
            } else {
                ExecError::Instantiate(trap_message(&e, stderr))
            }
        };
        let trap = |e: wasmtime::Error| ExecError::Trap(trap_message(&e, stderr));
        // One body for both generations: their bindings differ in type, not in shape.
        macro_rules! run {
            ($pre:expr, $request:expr, $output:path) => {{
                let instance = $pre
                    .instantiate_async(&mut *store)
                    .await
                    .map_err(instantiate_error)?;
                Ok(instance
                    .lanes_provider_adapter()
                    .call_execute(&mut *store, &$request)
                    .await
                    .map_err(trap)?
                    .map($output)
                    .map_err(ProviderError::from))
            }};
        }
        let call = async {
            match (&self.component.pre, request) {
                (ProviderPre::V01(pre), Request::V01(request)) => {
                    run!(pre, request, attempt::output_v01)
                }
                (ProviderPre::V02(pre), Request::V02(request)) => {
                    run!(pre, request, attempt::output_v02)
                }
                // `request` is made by this provider, for its own component.
                _ => Err(ExecError::Instantiate(
                    "the request was made for a component of another lanes:provider version".into(),
                )),
            }
        };
        let outcome = tokio::time::timeout(self.sandbox.timeout, call).await;
        // A denied request explains whatever error the component made of it.
        let denied = denied.lock().ok().and_then(|d| d.clone());
        let hint = store.data().retry_after_hint;
        let output = match (outcome, denied) {
            (Ok(Ok(Ok(output))), _) => output,
            (_, Some(target)) => {
                return Err(ExecError::Denied {
                    target,
                    allowed: self.view.outbound.allowed_hosts.to_vec(),
                });
            }
            (Err(_), None) => return Err(ExecError::Timeout(self.sandbox.timeout.as_millis())),
            (Ok(result), None) => {
                result?.map_err(|e| ExecError::Provider(ProviderErrorDisplay(e, hint)))?
            }
        };
        let size = attempt::output_bytes(&output);
        if size > self.sandbox.max_output_bytes {
            return Err(ExecError::OutputTooLarge {
                size,
                cap: self.sandbox.max_output_bytes,
            });
        }
        Ok(output)
    }
}

impl Provider {
    /// One call the bare wasmtime way: a plain store, `instantiate_async` and `execute`,
    /// without lanes' sandbox. The benchmark compares [`Provider::execute`] with it.
    #[doc(hidden)]
    pub async fn execute_bare(&self, request: &Request) -> wasmtime::Result<()> {
        let mut store = sandbox::bare_store(&self.engine, self.view.clone(), &self.client);
        match (&self.component.pre, request) {
            (ProviderPre::V01(pre), Request::V01(request)) => {
                let instance = pre.instantiate_async(&mut store).await?;
                let _ = instance
                    .lanes_provider_adapter()
                    .call_execute(&mut store, request)
                    .await?;
            }
            (ProviderPre::V02(pre), Request::V02(request)) => {
                let instance = pre.instantiate_async(&mut store).await?;
                let _ = instance
                    .lanes_provider_adapter()
                    .call_execute(&mut store, request)
                    .await?;
            }
            _ => wasmtime::bail!("the request was made for another lanes:provider version"),
        }
        Ok(())
    }
}

/// A trap's message, with the end of what the guest wrote to stderr (a panic message).
pub(crate) fn trap_message(e: &wasmtime::Error, stderr: &MemoryOutputPipe) -> String {
    // The outer layers are a wasm backtrace; the root cause says what happened (a trap code,
    // or the CPU or memory limit that stopped the guest).
    let mut message = e.root_cause().to_string();
    let captured = stderr.contents();
    let text = String::from_utf8_lossy(&captured);
    // A Rust panic prints "thread ... panicked at FILE:LINE:" and the message on the next
    // line, then a note about RUST_BACKTRACE that explains nothing here.
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if !lines.is_empty() {
        let tail = lines[lines.len().saturating_sub(2)..].join(" ");
        let tail: String = tail.chars().take(500).collect();
        message.push_str(&format!(" (guest stderr: {tail})"));
    }
    message
}
