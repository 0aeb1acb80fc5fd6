//! Host bindings of the `lanes:provider` worlds this host speaks: 0.1.x (from the frozen
//! 0.1.2 text, the last 0.1 release) and 0.2.x (from `wit/`). A component is built against
//! one of them; [`Generation`] says which, and the host adapts its JSON to either.

/// `lanes:provider@0.1.2`: text in, text out.
pub mod v01 {
    wasmtime::component::bindgen!({
        world: "provider",
        path: "../wit/frozen/0.1.2",
        exports: { default: async },
    });

    pub use lanes::provider::types::{
        ChatRequest, ChatResponse, FinishReason, Message, ProviderError, ProviderInfo, RateLimit,
        Role, Usage,
    };
}

/// `lanes:provider@0.2.0`: content parts, tools, formats, reasoning and streaming.
pub mod v02 {
    wasmtime::component::bindgen!({
        world: "provider",
        path: "../wit",
        exports: { default: async },
    });

    pub use lanes::provider::stream::Delta;
    pub use lanes::provider::types::{
        Capabilities, ChatRequest, ChatResponse, ContentPart, FinishReason, Image, ImageSource,
        Message, ProviderError, ProviderInfo, RateLimit, Role, Usage,
    };
}

/// `lanes:provider@0.2.1`'s `batch-provider` world: a 0.2 component that also exports
/// `batch`. The interfaces it shares with `provider` are `v02`'s, so one `GuestState`
/// implements them once; only `batch-io` (async: it reads and writes the queue) and the
/// `batch` export are new here.
pub mod v02b {
    wasmtime::component::bindgen!({
        world: "batch-provider",
        path: "../wit",
        imports: { "lanes:provider/batch-io": async },
        exports: { default: async },
        with: {
            "lanes:provider/types": super::v02::lanes::provider::types,
            "lanes:provider/logging": super::v02::lanes::provider::logging,
            "lanes:provider/config": super::v02::lanes::provider::config,
            "lanes:provider/hints": super::v02::lanes::provider::hints,
            "lanes:provider/stream": super::v02::lanes::provider::stream,
        },
    });

    pub use exports::lanes::provider::batch::{BatchLimits, BatchState, BatchStatus};
    pub use lanes::provider::batch_io::{BatchItem, BatchOutcome, ItemResult};
}

/// Which `lanes:provider` minor version a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// 0.1.x: text only.
    V01,
    /// 0.2.x.
    V02,
}

/// A component's pre-instantiated form, in its generation's bindings.
pub enum ProviderPre<T: 'static> {
    V01(v01::ProviderPre<T>),
    V02(v02::ProviderPre<T>),
}

impl<T: 'static> ProviderPre<T> {
    /// Its generation.
    pub fn generation(&self) -> Generation {
        match self {
            ProviderPre::V01(_) => Generation::V01,
            ProviderPre::V02(_) => Generation::V02,
        }
    }
}
