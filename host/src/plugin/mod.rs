//! Provider components: compiling and validating `.wasm` files, binding them to provider
//! names, and running one sandboxed call per attempt.
//!
//! - [`PluginHost`] (`engine.rs`) owns the wasmtime engine, its instance pool, the linker
//!   and the compile cache; it turns a file into a [`LoadedComponent`].
//! - [`Catalog`] (`catalog.rs`) is what a scan of the plugins folder produced: providers by
//!   name and a report of every file. A rescan reuses what did not change and keeps a
//!   previous version serving when its replacement is rejected.
//! - [`Provider`] (`provider.rs`) is a name bound to a component with its own config values,
//!   secrets and limits; [`Provider::execute`] runs one attempt in a fresh instance.
//! - `sandbox.rs` is what a guest may see and use; `version.rs` which WIT versions load;
//!   `cache.rs` the compiled components on disk.

pub mod bindings;
pub mod cache;
pub mod catalog;
pub mod engine;
pub mod outbound;
pub mod provider;
pub mod sandbox;
pub mod version;

use std::path::PathBuf;

use serde::Serialize;

pub use self::catalog::{Catalog, FileReport};
pub use self::engine::{LoadedComponent, PluginHost};
pub use self::provider::{CallCost, ExecError, Provider, ProviderErrorDisplay};

/// Why a component file (or a provider name bound to one) was not loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("{file}: cannot read: {reason}")]
    Io { file: String, reason: String },
    #[error("{file}: not a valid WebAssembly component: {reason}")]
    Corrupt { file: String, reason: String },
    #[error("{file}: {reason}")]
    Version { file: String, reason: String },
    #[error(
        "{file}: not a lanes provider component (world lanes:provider/provider@0.1.x): {reason}"
    )]
    WrongWorld { file: String, reason: String },
    #[error("{file}: info() failed: {reason}")]
    Info { file: String, reason: String },
    #[error("{file}: info() is invalid: {reason}")]
    BadInfo { file: String, reason: String },
    #[error("{file}: provider name `{name}` is already provided by {other}")]
    Duplicate {
        file: String,
        name: String,
        other: String,
    },
    #[error("provider `{name}`: {reason}")]
    Secret { name: String, reason: String },
}

/// What a component says about itself, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentInfo {
    pub name: String,
    pub version: String,
    pub default_limit: u32,
    pub description: String,
}

/// The file name of `path`, for messages.
pub(crate) fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The `(size, modified)` of a file: when it changes, the file is loaded again.
pub type Fingerprint = (u64, Option<std::time::SystemTime>);

/// The `*.wasm` files of `dir` with their fingerprints, sorted by name.
pub fn wasm_files(dir: &std::path::Path) -> Vec<(PathBuf, Fingerprint)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, Fingerprint)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.path(), (meta.len(), meta.modified().ok())))
        })
        .collect();
    files.sort();
    files
}
