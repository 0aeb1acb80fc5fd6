//! Provider components: compiling and validating `.wasm` files, binding them to provider
//! names, and running one sandboxed call per attempt.
//!
//! - [`PluginHost`] owns the wasmtime engine and linker; it turns a file into a
//!   [`LoadedComponent`] (compiled, linked, pre-instantiated, `info()` checked).
//! - [`Catalog`] is what one scan of the plugins folder produced: providers by name and a
//!   report of every file, rejected ones included.
//! - [`Provider`] is a name bound to a component with its own config values; its
//!   [`Provider::execute`] runs one attempt in a fresh instance.

pub mod bindings;
pub mod sandbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use self::bindings::{ChatRequest, ChatResponse, ProviderError, ProviderPre};
use self::sandbox::{GuestState, SandboxLimits};
use crate::config::Config;
use crate::model::validate_provider_name;

/// Why a component file was not loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("{file}: cannot read: {reason}")]
    Io { file: String, reason: String },
    #[error("{file}: not a valid WebAssembly component: {reason}")]
    Corrupt { file: String, reason: String },
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
}

/// Why one attempt did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The component answered with an error.
    #[error("{0}")]
    Provider(ProviderErrorDisplay),
    #[error("instantiate failed: {0}")]
    Instantiate(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("timed out after {0} ms (sandbox.timeout_ms)")]
    Timeout(u128),
    #[error("output of {size} bytes exceeds the cap of {cap} bytes (sandbox.max_output_bytes)")]
    OutputTooLarge { size: usize, cap: usize },
}

/// A [`ProviderError`] with a readable `Display`.
#[derive(Debug)]
pub struct ProviderErrorDisplay(pub ProviderError);

impl std::fmt::Display for ProviderErrorDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            ProviderError::RateLimited(r) => match r.retry_after_ms {
                Some(ms) => write!(f, "rate limited (retry after {ms} ms): {}", r.message),
                None => write!(f, "rate limited: {}", r.message),
            },
            ProviderError::Unavailable(m) => write!(f, "unavailable: {m}"),
            ProviderError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            ProviderError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            ProviderError::Other(m) => write!(f, "error: {m}"),
        }
    }
}

/// What a component says about itself, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentInfo {
    pub name: String,
    pub version: String,
    pub default_limit: u32,
    pub description: String,
}

/// A compiled, linked and validated component file.
pub struct LoadedComponent {
    /// The file name inside the plugins folder, such as `stub.wasm`.
    pub file: String,
    pub path: PathBuf,
    /// What `info()` returned with no config values.
    pub info: ComponentInfo,
    pre: ProviderPre<GuestState>,
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("file", &self.file)
            .field("info", &self.info)
            .finish()
    }
}

/// The wasmtime engine and linker shared by every component.
#[derive(Clone)]
pub struct PluginHost {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
}

impl PluginHost {
    /// An engine with epoch interruption for CPU limits, and a linker with WASI and the
    /// `lanes:provider` imports.
    pub fn new() -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e:#}"))?;
        sandbox::start_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking host imports: {e:#}"))?;
        Ok(PluginHost {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compiles, links and validates one component file.
    pub async fn load(&self, path: &Path) -> Result<LoadedComponent, PluginError> {
        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bytes = tokio::fs::read(path).await.map_err(|e| PluginError::Io {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let engine = self.engine.clone();
        let component =
            tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
                .await
                .map_err(|e| PluginError::Corrupt {
                    file: file.clone(),
                    reason: e.to_string(),
                })?
                .map_err(|e| PluginError::Corrupt {
                    file: file.clone(),
                    reason: format!("{e:#}"),
                })?;
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            file: file.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = ProviderPre::new(instance_pre).map_err(wrong_world)?;
        let mut loaded = LoadedComponent {
            file: file.clone(),
            path: path.to_owned(),
            info: ComponentInfo {
                name: String::new(),
                version: String::new(),
                default_limit: 0,
                description: String::new(),
            },
            pre,
        };
        loaded.info = self.info(&loaded, "", Arc::default()).await?;
        Ok(loaded)
    }

    /// Calls `info()` with the config values of provider `name`, and checks the answer.
    async fn info(
        &self,
        component: &LoadedComponent,
        name: &str,
        config: Arc<BTreeMap<String, String>>,
    ) -> Result<ComponentInfo, PluginError> {
        let limits = SandboxLimits {
            timeout: std::time::Duration::from_secs(5),
            cpu_ticks: 100,
            memory_bytes: 64 << 20,
            max_output_bytes: 64 << 10,
        };
        let label: Arc<str> = if name.is_empty() {
            Arc::from(component.file.as_str())
        } else {
            Arc::from(name)
        };
        let (mut store, stderr) = sandbox::new_store(&self.engine, label, config, &limits);
        let call = async {
            let instance = component.pre.instantiate_async(&mut store).await?;
            instance
                .lanes_provider_adapter()
                .call_info(&mut store)
                .await
        };
        let info = match tokio::time::timeout(limits.timeout, call).await {
            Err(_) => Err(format!("did not return within {:?}", limits.timeout)),
            Ok(Err(e)) => Err(trap_message(&e, &stderr)),
            Ok(Ok(info)) => Ok(info),
        }
        .map_err(|reason| PluginError::Info {
            file: component.file.clone(),
            reason,
        })?;
        let bad = |reason: String| PluginError::BadInfo {
            file: component.file.clone(),
            reason,
        };
        validate_provider_name(&info.name).map_err(bad)?;
        if info.default_limit == 0 {
            return Err(bad(format!(
                "provider `{}` declares a default limit of 0; it must be at least 1",
                info.name
            )));
        }
        Ok(ComponentInfo {
            name: info.name,
            version: info.version,
            default_limit: info.default_limit,
            description: info.description,
        })
    }

    /// Loads every `*.wasm` in `config.plugins_dir` and binds provider names: each
    /// component's own name, plus every `[providers.NAME]` with a `component`.
    pub async fn scan(&self, config: &Config) -> Catalog {
        let dir = &config.plugins_dir;
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
                .collect(),
            Err(e) => {
                tracing::warn!("plugins folder {} cannot be read: {e}", dir.display());
                Vec::new()
            }
        };
        files.sort();
        let mut catalog = Catalog::default();
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        let mut by_file: BTreeMap<String, Arc<LoadedComponent>> = BTreeMap::new();
        for path in files {
            let report = match self.load(&path).await {
                Ok(component) => match by_name.get(&component.info.name) {
                    Some(other) => Err(PluginError::Duplicate {
                        file: component.file.clone(),
                        name: component.info.name.clone(),
                        other: other.clone(),
                    }),
                    None => {
                        by_name.insert(component.info.name.clone(), component.file.clone());
                        let component = Arc::new(component);
                        by_file.insert(component.file.clone(), component.clone());
                        Ok(component)
                    }
                },
                Err(e) => Err(e),
            };
            match report {
                Ok(component) => catalog.files.push(FileReport::loaded(&component)),
                Err(error) => {
                    tracing::error!("rejected component {error}");
                    catalog.files.push(FileReport::rejected(&path, &error));
                }
            }
        }

        // Each component under its own name, then every configured name with a component.
        let mut bindings: Vec<(String, Arc<LoadedComponent>)> = by_file
            .values()
            .map(|c| (c.info.name.clone(), c.clone()))
            .collect();
        for (name, provider) in &config.providers {
            if let Some(file) = &provider.component {
                match by_file.get(file) {
                    Some(c) if c.info.name != *name => bindings.push((name.clone(), c.clone())),
                    Some(_) => {}
                    None => catalog.missing.push((name.clone(), file.clone())),
                }
            }
        }
        let sandbox = SandboxLimits::from(&config.sandbox);
        for (name, component) in bindings {
            let values = Arc::new(
                config
                    .providers
                    .get(&name)
                    .map(|p| p.values())
                    .unwrap_or_default(),
            );
            match self.info(&component, &name, values.clone()).await {
                Ok(info) => {
                    catalog.providers.insert(
                        name.clone(),
                        Arc::new(Provider {
                            name: Arc::from(name.as_str()),
                            default_limit: info.default_limit,
                            component,
                            config: values,
                            sandbox: sandbox.clone(),
                            engine: self.engine.clone(),
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!("provider `{name}` rejected: {e}");
                    catalog.rejected.push((name.clone(), e.to_string()));
                }
            }
        }
        for (name, file) in &catalog.missing {
            tracing::warn!(
                "provider `{name}`: component {file} is not in {}; its executions stay pending",
                dir.display()
            );
        }
        catalog
    }
}

/// A provider name bound to a component, with that provider's config values and limits.
pub struct Provider {
    pub name: Arc<str>,
    /// The component's `info()` limit under this provider's config values.
    pub default_limit: u32,
    pub component: Arc<LoadedComponent>,
    config: Arc<BTreeMap<String, String>>,
    sandbox: SandboxLimits,
    engine: Engine,
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

    /// Runs one attempt in a fresh instance, under the sandbox limits.
    pub async fn execute(&self, request: ChatRequest) -> Result<ChatResponse, ExecError> {
        let (mut store, stderr) = sandbox::new_store(
            &self.engine,
            self.name.clone(),
            self.config.clone(),
            &self.sandbox,
        );
        let call = async {
            let instance = self
                .component
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| ExecError::Instantiate(format!("{e:#}")))?;
            instance
                .lanes_provider_adapter()
                .call_execute(&mut store, &request)
                .await
                .map_err(|e| ExecError::Trap(trap_message(&e, &stderr)))
        };
        let response = match tokio::time::timeout(self.sandbox.timeout, call).await {
            Err(_) => return Err(ExecError::Timeout(self.sandbox.timeout.as_millis())),
            Ok(result) => result?.map_err(|e| ExecError::Provider(ProviderErrorDisplay(e)))?,
        };
        if response.text.len() > self.sandbox.max_output_bytes {
            return Err(ExecError::OutputTooLarge {
                size: response.text.len(),
                cap: self.sandbox.max_output_bytes,
            });
        }
        Ok(response)
    }
}

/// A trap's message, with the last line the guest wrote to stderr (a panic message).
fn trap_message(e: &wasmtime::Error, stderr: &wasmtime_wasi::p2::pipe::MemoryOutputPipe) -> String {
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

/// What one scan of the plugins folder found.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Every `.wasm` file, loaded or rejected.
    pub files: Vec<FileReport>,
    /// `(provider, file)` for configured providers whose component file is absent.
    pub missing: Vec<(String, String)>,
    /// `(provider, reason)` for names whose component loaded but refused that provider's
    /// config (its `info()` failed or declared a limit of 0).
    pub rejected: Vec<(String, String)>,
}

/// One file's outcome, as `lanes plugins list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: String,
    /// `loaded` or `rejected`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ComponentInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FileReport {
    fn loaded(c: &LoadedComponent) -> Self {
        FileReport {
            file: c.file.clone(),
            status: "loaded",
            info: Some(c.info.clone()),
            reason: None,
        }
    }

    fn rejected(path: &Path, error: &PluginError) -> Self {
        FileReport {
            file: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            status: "rejected",
            info: None,
            reason: Some(error.to_string()),
        }
    }
}
