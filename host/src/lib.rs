//! lanes: runs LLM calls from a database queue, one lane per provider, each lane with its
//! own concurrency limit. Providers are WebAssembly components (see `wit/`).
//!
//! The codemap is `docs/ARCHITECTURE.md`.

pub mod api;
pub mod attempt;
pub mod cli;
pub mod clock;
pub mod config;
pub mod costs;
pub mod daemon;
pub mod demo;
pub mod errors;
pub mod jsonl;
pub mod kit;

pub mod limits;
pub mod logging;
pub mod model;
pub mod plugin;
pub mod policy;
pub mod report;
pub mod responses;
pub mod retry;
pub mod routes;
pub mod store;
#[cfg(unix)]
pub mod systemd;

pub use config::Config;
pub use daemon::Daemon;
pub use model::{ChatInput, Execution, ExecutionId, NewExecution, Status};
pub use store::Queue;
pub use store::sqlite::SqliteQueue;
