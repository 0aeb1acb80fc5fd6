//! Host bindings of the `lanes:provider` world, generated from `wit/`.

wasmtime::component::bindgen!({
    world: "provider",
    path: "../wit",
    exports: { default: async },
});

pub use lanes::provider::types::{
    ChatRequest, ChatResponse, FinishReason, Message, ProviderError, ProviderInfo, RateLimit, Role,
    Usage,
};
