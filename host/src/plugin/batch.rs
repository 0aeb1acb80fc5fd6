//! Calls of a component's `batch` export (WIT 0.2.1): send a batch, look one up, read its
//! state and results, cancel it. Each call runs in a fresh instance, as `execute` does, but
//! under the batch limits ([`BatchSandbox`]): a transfer runs longer than one chat call and
//! reads more than one answer, while the component's memory stays capped, since the host
//! feeds the requests and takes the results a piece at a time through `batch-io`
//! ([`BatchIo`]) and a file never sits whole in the guest.

use std::time::Duration;

use super::bindings::v02b::{self, BatchItem, BatchOutcome as WitOutcome, ItemResult};
use super::provider::{ExecError, Provider, ProviderError, ProviderErrorDisplay};
use super::sandbox::{self, GuestState};
use crate::attempt::{self, Request};
use crate::model::ChatOutput;

/// What one batch may hold at a provider, as its component says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BatchLimits {
    /// Requests.
    pub max_items: u32,
    /// Bytes of the upload.
    pub max_bytes: u64,
}

/// Where a provider's batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    InProgress,
    Finalizing,
    Ended,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// Whether the batch will not change any more: its results (if any) can be read.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchStatus::Ended
                | BatchStatus::Failed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }

    /// The name used in the store, the API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Ended => "ended",
            BatchStatus::Failed => "failed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }
}

/// A provider batch's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchState {
    pub status: BatchStatus,
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Why the batch failed as a whole.
    pub message: Option<String>,
}

/// How one request of a batch ended.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    Succeeded(Box<ChatOutput>),
    Failed(ProviderError),
    Expired,
    Cancelled,
}

/// The result of one request of a batch, by its custom id (the execution's id).
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    pub custom_id: String,
    pub outcome: ItemOutcome,
}

/// What the host hands a component during a batch call: the requests while it sends a
/// batch, and a place for the results while it reads them. Both are paged so that neither
/// side holds a whole batch.
#[async_trait::async_trait]
pub trait BatchIo: Send {
    /// The next requests, at most `max`, as (custom id, request); empty when all were given.
    async fn next_items(&mut self, max: u32) -> Vec<(String, Request)>;
    /// Results as the component reads them.
    async fn put_results(&mut self, outcomes: Vec<BatchOutcome>);
    /// Called once the component's call has ended, however it ended: what `put_results`
    /// still had under way is done when this returns.
    async fn finish(&mut self) {}
}

/// The limits a batch call runs under, beside the provider's own sandbox limits (the memory
/// cap and the CPU budget per millisecond stay; the wall clock and the response size grow).
#[derive(Debug, Clone)]
pub struct BatchSandbox {
    /// The most one batch call may take, transfer included.
    pub timeout: Duration,
    /// The CPU the guest may use in one call (a 50,000-line file is parsed in the guest).
    pub cpu: Duration,
    /// The largest response one batch call may read (a results file).
    pub max_response_bytes: u64,
}

impl Default for BatchSandbox {
    fn default() -> Self {
        BatchSandbox {
            timeout: Duration::from_secs(600),
            cpu: Duration::from_secs(300),
            max_response_bytes: 1 << 30,
        }
    }
}

impl batch_io_host::Host for GuestState {
    async fn next_items(&mut self, max: u32) -> Vec<BatchItem> {
        let Some(io) = self.batch_io.as_mut() else {
            return Vec::new();
        };
        io.next_items(max.clamp(1, 10_000))
            .await
            .into_iter()
            .filter_map(|(custom_id, request)| match request {
                Request::V02(request) => Some(BatchItem { custom_id, request }),
                // A batch component speaks 0.2: its provider made only 0.2 requests.
                Request::V01(_) => None,
            })
            .collect()
    }

    async fn put_results(&mut self, outcomes: Vec<WitOutcome>) {
        let Some(io) = self.batch_io.as_mut() else {
            return;
        };
        let outcomes = outcomes
            .into_iter()
            .map(|o| BatchOutcome {
                custom_id: o.custom_id,
                outcome: match o.outcome {
                    ItemResult::Succeeded(response) => {
                        ItemOutcome::Succeeded(Box::new(attempt::output_v02(response)))
                    }
                    ItemResult::Failed(error) => ItemOutcome::Failed(error.into()),
                    ItemResult::Expired => ItemOutcome::Expired,
                    ItemResult::Cancelled => ItemOutcome::Cancelled,
                },
            })
            .collect();
        io.put_results(outcomes).await
    }
}

use v02b::lanes::provider::batch_io as batch_io_host;

/// The `batch` export's calls.
enum Call<'a> {
    Submit(&'a str),
    Find(&'a str),
    Status(&'a str),
    Results(&'a str),
    Cancel(&'a str),
}

/// What a call returned.
enum Answer {
    Submitted(String),
    Found(Option<String>),
    Status(BatchState),
    Done,
}

fn state_of(s: v02b::BatchState) -> BatchState {
    use v02b::BatchStatus as W;
    BatchState {
        status: match s.status {
            W::Validating => BatchStatus::Validating,
            W::InProgress => BatchStatus::InProgress,
            W::Finalizing => BatchStatus::Finalizing,
            W::Ended => BatchStatus::Ended,
            W::Failed => BatchStatus::Failed,
            W::Expired => BatchStatus::Expired,
            W::Cancelling => BatchStatus::Cancelling,
            W::Cancelled => BatchStatus::Cancelled,
        },
        total: s.total,
        succeeded: s.succeeded,
        failed: s.failed,
        message: s.message,
    }
}

/// Calls `limits()` of a batch component when it loads, in a throwaway instance.
pub(crate) async fn limits_at_load(
    engine: &wasmtime::Engine,
    ticker: &sandbox::EpochTicker,
    client: &super::outbound::SharedClient,
    pre: &v02b::BatchProviderPre<GuestState>,
    view: sandbox::GuestView,
    limits: &sandbox::SandboxLimits,
) -> wasmtime::Result<BatchLimits> {
    let (mut store, _stderr) = sandbox::new_store(engine, ticker, view, limits, client);
    let instance = pre.instantiate_async(&mut store).await?;
    let l = instance
        .lanes_provider_batch()
        .call_limits(&mut store)
        .await?;
    Ok(BatchLimits {
        max_items: l.max_items,
        max_bytes: l.max_bytes,
    })
}

impl Provider {
    /// The provider's batch caps, or `None` when its component cannot send batches.
    pub fn batch_limits(&self) -> Option<BatchLimits> {
        self.component.info.batch
    }

    /// Sends a new batch of the requests `io` hands over; returns the provider's id of it.
    /// `tag` is lanes' id of the batch (see `batch.find`).
    pub async fn batch_submit(
        &self,
        tag: &str,
        io: Box<dyn BatchIo>,
        limits: &BatchSandbox,
    ) -> Result<String, ExecError> {
        match self.batch_call(Call::Submit(tag), Some(io), limits).await? {
            Answer::Submitted(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    /// The id of a batch sent earlier with `tag`, when the provider's API can find one.
    pub async fn batch_find(
        &self,
        tag: &str,
        limits: &BatchSandbox,
    ) -> Result<Option<String>, ExecError> {
        match self.batch_call(Call::Find(tag), None, limits).await? {
            Answer::Found(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    /// The state of the provider's batch `id`.
    pub async fn batch_status(
        &self,
        id: &str,
        limits: &BatchSandbox,
    ) -> Result<BatchState, ExecError> {
        match self.batch_call(Call::Status(id), None, limits).await? {
            Answer::Status(state) => Ok(state),
            _ => Err(unexpected()),
        }
    }

    /// Reads the results of the provider's batch `id` into `io`.
    pub async fn batch_results(
        &self,
        id: &str,
        io: Box<dyn BatchIo>,
        limits: &BatchSandbox,
    ) -> Result<(), ExecError> {
        self.batch_call(Call::Results(id), Some(io), limits)
            .await
            .map(|_| ())
    }

    /// Asks the provider to cancel its batch `id`.
    pub async fn batch_cancel(&self, id: &str, limits: &BatchSandbox) -> Result<(), ExecError> {
        self.batch_call(Call::Cancel(id), None, limits)
            .await
            .map(|_| ())
    }

    async fn batch_call(
        &self,
        call: Call<'_>,
        io: Option<Box<dyn BatchIo>>,
        batch: &BatchSandbox,
    ) -> Result<Answer, ExecError> {
        let Some(pre) = self.component.batch.as_ref() else {
            return Err(ExecError::Provider(ProviderErrorDisplay(
                ProviderError::InvalidRequest(format!(
                    "{} cannot send batches (its component does not export lanes:provider/batch)",
                    self.label()
                )),
                None,
            )));
        };
        let mut view = self.view.clone();
        view.outbound.max_response_bytes =
            usize::try_from(batch.max_response_bytes).unwrap_or(usize::MAX);
        view.outbound.request_timeout = view.outbound.request_timeout.max(batch.timeout);
        // An upload streams through, up to the component's own cap and a margin for its
        // framing (a multipart upload's headers).
        view.outbound.stream_request_up_to = Some(
            self.batch_limits()
                .map_or(0, |l| l.max_bytes)
                .saturating_add(1 << 20),
        );
        let mut limits = self.sandbox.clone();
        limits.timeout = batch.timeout;
        limits.cpu_ticks = u64::try_from(batch.cpu.as_millis())
            .unwrap_or(u64::MAX)
            .div_ceil(sandbox::EPOCH_TICK_MS)
            .max(limits.cpu_ticks);
        let (mut store, stderr) =
            sandbox::new_store(&self.engine, &self.ticker, view, &limits, &self.client);
        store.data_mut().batch_io = io;
        let denied = store.data().outbound.denied.clone();
        let run = async {
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| ExecError::Instantiate(super::provider::trap_message(&e, &stderr)))?;
            let api = instance.lanes_provider_batch();
            let trap =
                |e: wasmtime::Error| ExecError::Trap(super::provider::trap_message(&e, &stderr));
            let answer: Result<Answer, v02b::lanes::provider::types::ProviderError> = match call {
                Call::Submit(tag) => api
                    .call_submit(&mut store, tag)
                    .await
                    .map_err(trap)?
                    .map(Answer::Submitted),
                Call::Find(tag) => api
                    .call_find(&mut store, tag)
                    .await
                    .map_err(trap)?
                    .map(Answer::Found),
                Call::Status(id) => api
                    .call_status(&mut store, id)
                    .await
                    .map_err(trap)?
                    .map(|s| Answer::Status(state_of(s))),
                Call::Results(id) => api
                    .call_results(&mut store, id)
                    .await
                    .map_err(trap)?
                    .map(|()| Answer::Done),
                Call::Cancel(id) => api
                    .call_cancel(&mut store, id)
                    .await
                    .map_err(trap)?
                    .map(|()| Answer::Done),
            };
            Ok::<_, ExecError>(answer)
        };
        let outcome = tokio::time::timeout(batch.timeout, run).await;
        // The caller reads what was written as soon as this returns.
        if let Some(mut io) = store.data_mut().batch_io.take() {
            io.finish().await;
        }
        let denied = denied.lock().ok().and_then(|d| d.clone());
        let result = match (outcome, denied) {
            (Ok(Ok(Ok(answer))), _) => Ok(answer),
            (_, Some(target)) => Err(ExecError::Denied {
                target,
                allowed: self.view.outbound.allowed_hosts.to_vec(),
            }),
            (Err(_), None) => Err(ExecError::Timeout(batch.timeout.as_millis())),
            (Ok(Err(e)), None) => Err(e),
            (Ok(Ok(Err(e))), None) => Err(ExecError::Provider(ProviderErrorDisplay(
                e.into(),
                store.data().retry_after_hint,
            ))),
        };
        result.map_err(|e| e.scrub(&self.view))
    }
}

fn unexpected() -> ExecError {
    ExecError::Trap("the batch call answered another call's shape".into())
}

/// Whether `component` exports `batch` (WIT 0.2.1), and its pre-instantiated form if so.
pub(crate) fn batch_pre(
    instance_pre: wasmtime::component::InstancePre<GuestState>,
) -> Option<v02b::BatchProviderPre<GuestState>> {
    v02b::BatchProviderPre::new(instance_pre).ok()
}
