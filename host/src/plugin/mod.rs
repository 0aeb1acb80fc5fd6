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

pub mod batch;
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
pub use self::provider::{CallCost, ExecError, Provider, ProviderError, ProviderErrorDisplay};
pub use self::sandbox::DeltaSink;

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
        "{file}: not a lanes provider component (world lanes:provider/provider@0.2.x or \
         @0.1.x): {reason}"
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
    /// The `lanes:provider` version it was built against: `0.1` or `0.2`.
    pub wit: &'static str,
    /// What it takes beyond text (none for a 0.1 component).
    pub capabilities: crate::model::Capabilities,
    /// The media types of the images it takes; empty for the usual four.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_media_types: Vec<String>,
    /// Its batch caps, when it can send batches (exports `batch`, WIT 0.2.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<batch::BatchLimits>,
}

impl ComponentInfo {
    /// Its WIT version, default limit and capabilities, for a line of `lanes plugins list`:
    /// `wit 0.2, default limit 8, takes tools, json_schema`.
    pub fn summary(&self) -> String {
        let takes = self.capabilities.list();
        let takes = if takes.is_empty() {
            "text only".to_string()
        } else {
            let names: Vec<&str> = takes.iter().map(|c| c.as_str()).collect();
            format!("takes {}", names.join(", "))
        };
        format!(
            "wit {}, default limit {}, {takes}",
            self.wit, self.default_limit
        )
    }
}

/// What each provider of a plugins folder takes beyond text, for the CLI, which checks
/// a submission as the API does but runs no daemon.
#[derive(Debug, Clone, Default)]
pub struct Declared(std::collections::BTreeMap<String, crate::model::Capabilities>);

impl Declared {
    /// Scans the plugins folder of `config` (the compile cache makes it cheap after the
    /// daemon's first load).
    pub async fn scan(config: &crate::config::Config) -> anyhow::Result<Declared> {
        let host = PluginHost::new(config)?;
        let catalog = host.scan(config, None).await;
        Ok(Declared(
            catalog
                .providers
                .iter()
                .map(|(name, p)| (name.clone(), p.capabilities()))
                .collect(),
        ))
    }

    /// What `provider` takes: its component's capabilities, or, for a provider no
    /// component serves here, the most any component may declare (another host may serve
    /// it).
    pub fn of(&self, provider: &str) -> crate::model::Capabilities {
        self.0
            .get(provider)
            .copied()
            .unwrap_or(version::HOST_CAPABILITIES)
    }

    /// Whether `provider` takes everything `input` needs.
    pub fn takes(&self, input: &crate::model::ChatInput, provider: &str) -> bool {
        let has = self.of(provider);
        input.needs().iter().all(|n| has.has(n.capability))
    }
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
