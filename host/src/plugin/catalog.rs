//! One scan of the plugins folder: which component serves which provider name, and the
//! outcome of every file.
//!
//! A rescan reloads only files whose size or modification time changed. A file that fails
//! to load, where a previous version of it had loaded, leaves that previous version serving.
//! A provider name stays with the file that already held it, so a newcomer that claims a
//! taken name is the one rejected.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::engine::{LoadedComponent, PluginHost, secrets_of};
use super::outbound::OutboundRules;
use super::provider::Provider;
use super::sandbox::{GuestView, SandboxLimits};
use super::{ComponentInfo, Fingerprint, PluginError, file_name, wasm_files};
use crate::config::Config;

/// One file's outcome, as `lanes plugins list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: String,
    /// `loaded` or `rejected`.
    pub status: &'static str,
    /// The component serving under this file: the file itself, or the previous version when
    /// the file was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ComponentInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set when the file was rejected and its previous version keeps serving.
    pub serving_previous: bool,
}

/// A file as the last scan left it.
#[derive(Clone)]
struct FileState {
    fingerprint: Fingerprint,
    /// The newest version that loaded (possibly an earlier one, see `error`).
    component: Option<Arc<LoadedComponent>>,
    /// Why the current bytes did not load.
    error: Option<PluginError>,
}

/// What a scan of the plugins folder found.
#[derive(Default)]
pub struct Catalog {
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Every `.wasm` file, loaded or rejected.
    pub files: Vec<FileReport>,
    /// `(provider, file)` for configured providers whose component file is absent.
    pub missing: Vec<(String, String)>,
    /// `(provider, reason)` for names whose component loaded but refused that provider's
    /// config or secrets (for example, its `info()` failed or declared a limit of 0).
    pub rejected: Vec<(String, String)>,
    states: BTreeMap<String, FileState>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("files", &self.files)
            .finish()
    }
}

impl Catalog {
    /// The provider name a file held in this catalog.
    fn holder_name(&self, file: &str) -> Option<&str> {
        let state = self.states.get(file)?;
        let component = state.component.as_ref()?;
        let held = self
            .providers
            .get(&component.info.name)
            .is_some_and(|p| Arc::ptr_eq(&p.component, component));
        held.then_some(component.info.name.as_str())
    }
}

impl PluginHost {
    /// Scans `config.plugins_dir`, reusing from `previous` every file that did not change,
    /// and binds provider names: each component's own name, plus every `[providers.NAME]`
    /// with a `component`.
    pub async fn scan(&self, config: &Config, previous: Option<&Catalog>) -> Catalog {
        let dir = &config.plugins_dir;
        if !dir.is_dir() {
            tracing::warn!("plugins folder {} does not exist", dir.display());
        }
        let mut catalog = Catalog::default();
        let mut changed = Vec::new();
        for (path, fingerprint) in wasm_files(dir) {
            let file = file_name(&path);
            let before = previous.and_then(|p| p.states.get(&file));
            if let Some(same) = before.filter(|s| s.fingerprint == fingerprint) {
                catalog.states.insert(file, same.clone());
                continue;
            }
            changed.push((path, fingerprint, file));
        }
        // The files load together: each is compiled, or taken from the cache, on a blocking
        // thread of its own, so a start with several components waits for about the
        // slowest of them, not for their sum.
        let loads =
            futures_util::future::join_all(changed.iter().map(|(path, ..)| self.load(path))).await;
        for ((_, fingerprint, file), loaded) in changed.into_iter().zip(loads) {
            let before = previous.and_then(|p| p.states.get(&file));
            let state = match loaded {
                Ok(component) => {
                    tracing::info!(
                        "loaded {} ({} {}, compile cache: {:?})",
                        file,
                        component.info.name,
                        component.info.version,
                        component.cache
                    );
                    FileState {
                        fingerprint,
                        component: Some(Arc::new(component)),
                        error: None,
                    }
                }
                Err(error) => {
                    let kept = before.and_then(|s| s.component.clone());
                    match &kept {
                        Some(old) => tracing::error!(
                            "rejected component {error}; the previous version ({} {}) keeps serving",
                            old.info.name,
                            old.info.version
                        ),
                        None => tracing::error!("rejected component {error}"),
                    }
                    FileState {
                        fingerprint,
                        component: kept,
                        error: Some(error),
                    }
                }
            };
            catalog.states.insert(file, state);
        }

        // Files keep the names they held; the others claim names in file order.
        let mut order: Vec<&String> = catalog.states.keys().collect();
        order.sort_by_key(|file| {
            let state = &catalog.states[*file];
            let keeps = previous
                .and_then(|p| p.holder_name(file))
                .is_some_and(|held| {
                    state
                        .component
                        .as_ref()
                        .is_some_and(|c| c.info.name == held)
                });
            !keeps
        });
        // A file that config binds by name serves those names even when another file holds
        // its component's own name: two copies of one component under two names are normal.
        let configured: std::collections::BTreeSet<&str> = config
            .providers
            .values()
            .filter_map(|p| p.component.as_deref())
            .collect();
        let mut by_name: BTreeMap<String, Arc<LoadedComponent>> = BTreeMap::new();
        let mut by_file: BTreeMap<String, Arc<LoadedComponent>> = BTreeMap::new();
        let mut reports: BTreeMap<String, FileReport> = BTreeMap::new();
        for file in order {
            let state = &catalog.states[file];
            let mut error = state.error.clone();
            let mut serving = None;
            if let Some(component) = &state.component {
                match by_name.get(&component.info.name) {
                    Some(_) if configured.contains(file.as_str()) => {
                        by_file.insert(file.clone(), component.clone());
                        serving = Some(component.info.clone());
                    }
                    Some(holder) => {
                        let duplicate = PluginError::Duplicate {
                            file: file.clone(),
                            name: component.info.name.clone(),
                            other: holder.file.clone(),
                        };
                        tracing::error!("rejected component {duplicate}");
                        error = Some(duplicate);
                    }
                    None => {
                        by_name.insert(component.info.name.clone(), component.clone());
                        by_file.insert(file.clone(), component.clone());
                        serving = Some(component.info.clone());
                    }
                }
            }
            reports.insert(
                file.clone(),
                FileReport {
                    file: file.clone(),
                    status: if error.is_none() {
                        "loaded"
                    } else {
                        "rejected"
                    },
                    serving_previous: error.is_some() && serving.is_some(),
                    info: serving,
                    reason: error.map(|e| e.to_string()),
                },
            );
        }
        catalog.files = reports.into_values().collect();

        let mut bindings: Vec<(String, Arc<LoadedComponent>)> = by_name
            .iter()
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect();
        for (name, provider) in &config.providers {
            if let Some(file) = &provider.component {
                match by_file.get(file.as_str()) {
                    // Already served under its own name by this very file.
                    Some(c) if by_name.get(name).is_some_and(|held| Arc::ptr_eq(held, c)) => {}
                    Some(c) => bindings.push((name.clone(), c.clone())),
                    // Present, but it did not load: say so, not that it is absent.
                    None if catalog.states.contains_key(file) => {
                        let reason =
                            format!("its component {file} was rejected (see plugins list)");
                        tracing::error!("provider `{name}`: {reason}");
                        catalog.rejected.push((name.clone(), reason));
                    }
                    None => catalog.missing.push((name.clone(), file.clone())),
                }
            }
        }
        for (name, component) in bindings {
            match self.bind(config, &name, component).await {
                Ok(provider) => {
                    catalog.providers.insert(name, Arc::new(provider));
                }
                Err(e) => {
                    tracing::error!("provider `{name}` rejected: {e}");
                    catalog.rejected.push((name, e.to_string()));
                }
            }
        }
        for (name, file) in &catalog.missing {
            tracing::warn!(
                "provider `{name}`: component {file} is not in {}; its executions stay pending",
                dir.display()
            );
        }
        if let Some(max_age) = config.cache.prune_after() {
            let keep: std::collections::BTreeSet<String> = catalog
                .states
                .values()
                .filter_map(|s| s.component.as_ref().map(|c| c.sha256.clone()))
                .collect();
            let cache = self.cache.clone();
            if let Ok(pruned) =
                tokio::task::spawn_blocking(move || cache.prune(&keep, max_age)).await
                && pruned.files > 0
            {
                tracing::info!(
                    "compile cache: removed {} file(s) unused for {} day(s), {} KiB",
                    pruned.files,
                    config.cache.prune_after_days,
                    pruned.bytes / 1024
                );
            }
        }
        catalog
    }

    /// Binds provider `name` to `component` with that provider's values, secrets and limits.
    pub async fn bind(
        &self,
        config: &Config,
        name: &str,
        component: Arc<LoadedComponent>,
    ) -> Result<Provider, PluginError> {
        let provider_config = config.providers.get(name);
        let http = &config.http;
        let view = GuestView {
            provider: Arc::from(name),
            config: Arc::new(provider_config.map(|p| p.values()).unwrap_or_default()),
            secrets: Arc::new(secrets_of(name, provider_config)?),
            outbound: OutboundRules {
                allowed_hosts: Arc::from(
                    provider_config
                        .map(|p| p.allowed_hosts())
                        .unwrap_or_default(),
                ),
                request_timeout: std::time::Duration::from_millis(
                    provider_config
                        .and_then(|p| p.request_timeout_ms)
                        .unwrap_or(http.request_timeout_ms),
                ),
                idle_timeout: std::time::Duration::from_millis(
                    provider_config
                        .and_then(|p| p.stream_idle_timeout_ms)
                        .unwrap_or(config.streams.idle_timeout_ms),
                ),
                max_response_bytes: usize::try_from(
                    provider_config
                        .and_then(|p| p.max_response_bytes)
                        .unwrap_or(http.max_response_bytes),
                )
                .unwrap_or(usize::MAX),
                user_agent: http::HeaderValue::from_str(
                    &provider_config
                        .and_then(|p| p.user_agent.clone())
                        .unwrap_or_else(|| {
                            format!(
                                "lanes/{} ({name}/{})",
                                env!("CARGO_PKG_VERSION"),
                                component.info.version
                            )
                        }),
                )
                .ok(),
                stream_request_up_to: None,
            },
        };
        let info = self.info(&component, view.clone()).await?;
        Ok(Provider {
            name: Arc::from(name),
            default_limit: info.default_limit,
            component,
            view,
            sandbox: SandboxLimits::from(&config.sandbox_for(name)),
            policy: config.policy_for(name),
            stream: provider_config.is_some_and(|p| p.stream),
            pricing: crate::costs::Pricing {
                table: Arc::new(config.price_table()),
                configured_model: provider_config.and_then(|p| p.model.clone()),
                enabled: provider_config.and_then(|p| p.costs).unwrap_or(true),
            },
            response_cache: provider_config.and_then(|p| p.response_cache),
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            client: self.client.clone(),
        })
    }
}
