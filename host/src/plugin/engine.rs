//! The wasmtime engine (pooling allocator, epoch interruption), the linker, and loading one
//! component file: compile (or take from the cache), check the WIT version and world, and
//! call `info()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Generation, ProviderPre, v01, v02};
use super::cache::{CacheOutcome, CompileCache, sha256_hex};
use super::provider::trap_message;
use super::sandbox::{self, GuestState, GuestView, SandboxLimits};
use super::{ComponentInfo, PluginError, file_name, version};
use crate::config::Config;
use crate::model::{MAX_COUNT, validate_provider_name};

/// A compiled, linked and validated component file.
pub struct LoadedComponent {
    /// The file name inside the plugins folder, such as `stub.wasm`.
    pub file: String,
    pub path: PathBuf,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// What `info()` returned with no config values.
    pub info: ComponentInfo,
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
    pub(crate) pre: ProviderPre<GuestState>,
    /// Its `batch-provider` form, when it exports `batch` (WIT 0.2.1).
    pub(crate) batch: Option<super::bindings::v02b::BatchProviderPre<GuestState>>,
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
    pub(crate) engine: Engine,
    /// Advances `engine`'s epoch while a guest may run.
    pub(crate) ticker: sandbox::EpochTicker,
    linker: Arc<Linker<GuestState>>,
    pub(crate) cache: CompileCache,
    /// Outbound HTTP connections, pooled across every execution.
    pub(crate) client: super::outbound::SharedClient,
    /// The memory of an instance pool slot in MiB, fixed at start; `None` without a pool.
    slot_mb: Option<u64>,
}

/// What is wrong with a file's first bytes, if they are not a component's: said plainly,
/// before the parser's own message (which prints both headers as byte arrays).
fn header_problem(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 8 || !bytes.starts_with(b"\0asm") {
        return Some("not a WebAssembly file (it does not start with `\\0asm`)".to_string());
    }
    // Bytes 6 and 7 are the layer: 0 for a core module, 1 for a component.
    if bytes[6..8] == [0, 0] {
        return Some(
            "a core WebAssembly module, not a component: build it for wasm32-wasip2, \
             or wrap it with `wasm-tools component new`"
                .to_string(),
        );
    }
    None
}

/// A message on one line, its runs of white space folded.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Limits of the `info()` call made when a component loads.
fn info_limits() -> SandboxLimits {
    SandboxLimits {
        timeout: Duration::from_secs(5),
        cpu_ticks: 100,
        memory_bytes: 64 << 20,
        max_output_bytes: 64 << 10,
    }
}

impl PluginHost {
    /// An engine sized by `config` (instance pool, memory slot size), a linker with WASI
    /// and the `lanes:provider` imports, and the compile cache.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true);
        wasm.wasm_component_model(true);
        let slot_mb = config
            .engine
            .pooling
            .then(|| config.max_memory_mb().max(64));
        if let Some(slot_mb) = slot_mb {
            let memory = usize::try_from(slot_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
            let instances = config.engine.engine_slots();
            wasm.memory_init_cow(maps::memory_images(
                u64::from(instances),
                maps::max_map_count(),
            ));
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(8))
                .total_memories(instances.saturating_mul(2))
                .total_tables(instances.saturating_mul(4))
                .total_stacks(instances)
                .max_memories_per_component(4)
                .max_tables_per_component(8)
                .max_core_instances_per_component(16)
                .max_memory_size(memory)
                // A fresh instance per execution makes the slot's reset the hot path.
                // Keep the low pages of each slot mapped and reset them in place, only the
                // pages the guest touched (PAGEMAP_SCAN, where the kernel has it), instead
                // of zeroing a whole megabyte each time; and decommit the rest in batches,
                // since each `madvise` flush interrupts every other core.
                .linear_memory_keep_resident(1 << 20)
                .table_keep_resident(16 << 10)
                .pagemap_scan(wasmtime::Enabled::Auto)
                .decommit_batch_size(64);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine =
            Engine::new(&wasm).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e:#}"))?;
        let ticker = sandbox::EpochTicker::start(&engine);
        let mut linker = Linker::new(&engine);
        sandbox::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking host imports: {e:#}"))?;
        let cache = CompileCache::new(config.cache.resolved_dir(), &engine, &wasm);
        Ok(PluginHost {
            engine,
            ticker,
            linker: Arc::new(linker),
            cache,
            client: super::outbound::SharedClient::new(),
            slot_mb,
        })
    }

    /// The memory of an instance pool slot in MiB, fixed when the engine started: no
    /// instance grows past it, whatever `sandbox.memory_mb` a reload sets. `None` without
    /// a pool.
    pub fn slot_mb(&self) -> Option<u64> {
        self.slot_mb
    }

    /// Compiles (or takes from the cache), links and validates one component file.
    pub async fn load(&self, path: &Path) -> Result<LoadedComponent, PluginError> {
        let file = file_name(path);
        let bytes = tokio::fs::read(path).await.map_err(|e| PluginError::Io {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let sha256 = sha256_hex(&bytes);
        let (engine, cache, hash) = (self.engine.clone(), self.cache.clone(), sha256.clone());
        let corrupt = |reason: String| PluginError::Corrupt {
            file: file.clone(),
            reason: one_line(&reason),
        };
        if let Some(reason) = header_problem(&bytes) {
            return Err(corrupt(reason));
        }
        let (component, cache) =
            tokio::task::spawn_blocking(move || cache.load_or_compile(&engine, &bytes, &hash))
                .await
                .map_err(|e| corrupt(e.to_string()))?
                .map_err(|e| corrupt(format!("{e:#}")))?;

        let generation = version::check(&component, &self.engine)
            .map_err(|reason| PluginError::Version {
                file: file.clone(),
                reason,
            })?
            .unwrap_or(Generation::V02);
        let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
            file: file.clone(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let batch = match generation {
            Generation::V02 => super::batch::batch_pre(instance_pre.clone()),
            Generation::V01 => None,
        };
        let pre = match generation {
            Generation::V01 => {
                ProviderPre::V01(v01::ProviderPre::new(instance_pre).map_err(wrong_world)?)
            }
            Generation::V02 => {
                ProviderPre::V02(v02::ProviderPre::new(instance_pre).map_err(wrong_world)?)
            }
        };
        let mut loaded = LoadedComponent {
            file: file.clone(),
            path: path.to_owned(),
            sha256,
            info: ComponentInfo {
                name: String::new(),
                version: String::new(),
                default_limit: 0,
                description: String::new(),
                wit: "",
                capabilities: crate::model::Capabilities::NONE,
                image_media_types: Vec::new(),
                batch: None,
            },
            cache,
            pre,
            batch,
        };
        loaded.info = self.info(&loaded, GuestView::anonymous(&file)).await?;
        Ok(loaded)
    }

    /// Calls `info()` as provider `view` sees it, and checks the answer.
    pub(crate) async fn info(
        &self,
        component: &LoadedComponent,
        view: GuestView,
    ) -> Result<ComponentInfo, PluginError> {
        let limits = info_limits();
        let (mut store, stderr) = sandbox::new_store(
            &self.engine,
            &self.ticker,
            view.clone(),
            &limits,
            &self.client,
        );
        let call = async {
            match &component.pre {
                ProviderPre::V01(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let info = instance
                        .lanes_provider_adapter()
                        .call_info(&mut store)
                        .await?;
                    Ok(ComponentInfo {
                        name: info.name,
                        version: info.version,
                        default_limit: info.default_limit,
                        description: info.description,
                        wit: "0.1",
                        capabilities: version::CAPABILITIES_0_1,
                        image_media_types: Vec::new(),
                        batch: None,
                    })
                }
                ProviderPre::V02(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let info = instance
                        .lanes_provider_adapter()
                        .call_info(&mut store)
                        .await?;
                    // A batch component says its caps in `batch.limits()` (0.2.1), in an
                    // instance of its own: one store runs one instance.
                    let batch = match &component.batch {
                        Some(pre) => Some(
                            super::batch::limits_at_load(
                                &self.engine,
                                &self.ticker,
                                &self.client,
                                pre,
                                view.clone(),
                                &limits,
                            )
                            .await?,
                        ),
                        None => None,
                    };
                    Ok::<_, wasmtime::Error>(ComponentInfo {
                        name: info.name,
                        version: info.version,
                        default_limit: info.default_limit,
                        description: info.description,
                        wit: "0.2",
                        capabilities: capabilities_of(info.capabilities),
                        image_media_types: info.image_media_types,
                        batch,
                    })
                }
            }
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
        if info.default_limit > MAX_COUNT {
            return Err(bad(format!(
                "provider `{}` declares a default limit of {}; the most lanes stores is {MAX_COUNT}",
                info.name, info.default_limit
            )));
        }
        for media_type in &info.image_media_types {
            if !media_type.starts_with("image/") {
                return Err(bad(format!(
                    "provider `{}` declares image media type `{media_type}`; it must start \
                     with `image/`",
                    info.name
                )));
            }
        }
        Ok(info)
    }
}

/// The capabilities a 0.2 component's `info()` declares, with what every 0.2 component
/// takes.
fn capabilities_of(flags: v02::Capabilities) -> crate::model::Capabilities {
    use crate::model::Capability;
    [
        (v02::Capabilities::TOOLS, Capability::Tools),
        (v02::Capabilities::JSON_SCHEMA, Capability::JsonSchema),
        (v02::Capabilities::IMAGES, Capability::Images),
        (v02::Capabilities::IMAGE_URLS, Capability::ImageUrls),
        (v02::Capabilities::REASONING, Capability::Reasoning),
        (v02::Capabilities::STREAMING, Capability::Streaming),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .fold(version::CAPABILITIES_0_2, |all, (_, c)| all.with(c))
}

/// Reads a provider's secrets (`api-key`) from where the operator put them.
pub(crate) fn secrets_of(
    name: &str,
    provider: Option<&crate::config::ProviderConfig>,
) -> Result<BTreeMap<String, String>, PluginError> {
    let mut secrets = BTreeMap::new();
    let Some(p) = provider else {
        return Ok(secrets);
    };
    let fail = |reason: String| PluginError::Secret {
        name: name.to_string(),
        reason,
    };
    if let Some(var) = &p.api_key_env {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => {
                secrets.insert("api-key".to_string(), key.trim().to_string());
            }
            _ => return Err(fail(format!("api_key_env: variable {var} is not set"))),
        }
    }
    if let Some(path) = &p.api_key_file {
        let key = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("api_key_file {}: {e}", path.display())))?;
        secrets.insert("api-key".to_string(), key.trim().to_string());
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_header_is_named_in_one_line() {
        let junk = header_problem(&[0xfa, 0x9b, 0x60, 0xcd, 1, 2, 3, 4, 5]).unwrap();
        assert!(junk.starts_with("not a WebAssembly file"), "{junk}");
        let core = header_problem(b"\0asm\x01\0\0\0").unwrap();
        assert!(core.contains("core WebAssembly module"), "{core}");
        assert_eq!(header_problem(b"\0asm\x0d\0\x01\0"), None);
        assert_eq!(
            one_line("expected=[\n    0x0,\n    0x61,\n] at"),
            "expected=[ 0x0, 0x61, ] at"
        );
    }
}

/// The memory maps (`/proc/PID/maps` lines) of the instance pool, which the kernel caps per
/// process at `vm.max_map_count` (65,530 by default). Past it, an instance cannot map its
/// memory or its stack, and its execution fails to start.
///
/// A running instance of a component with one memory (the built-in adapters, and Rust
/// components) holds 6 maps with copy-on-write memory images, measured with the OpenAI
/// adapter (scale benchmark); one with more memories holds more, so the figures below are
/// a floor: its stack and the stack's guard page, and in its
/// memory's slot the first pages, the image of its data, the rest of its initial pages and
/// the reserved remainder. Without images its data is copied in at each start, the slot's
/// accessible pages are one map, and it holds 4. Copying costs a few µs per start; at
/// 10,000 instances the images' own mappings (one `mmap` per start among 60,000 maps) cost
/// more: 30,000 calls of 2 s at limit 10,000 ran at 0.48 of the ideal rate with images
/// (58,817 maps, 90% of the cap) and 0.67 without (40,573 maps), in alternated runs; the
/// SQLite no-op figure (limit 256) was within its noise either way (21.0k and 21.3k/s
/// without, 22.0k and 22.6k/s with).
pub(crate) mod maps {
    use tracing::{info, warn};

    /// Maps of a running instance with copy-on-write memory images.
    pub const WITH_IMAGES: u64 = 6;
    /// Maps of a running instance without them.
    pub const WITHOUT_IMAGES: u64 = 4;
    /// Maps of the process besides its instances: code, heaps, threads' stacks.
    pub const OWN: u64 = 2_000;

    /// `vm.max_map_count`, where the kernel says it.
    pub fn max_map_count() -> Option<u64> {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether a pool of `instances` uses copy-on-write memory images: only while a full
    /// pool with them stays within half of `max` (a few thousand instances at the default
    /// cap), so that the images never crowd the cap. Says which it chose when it drops
    /// them, and warns when even without them a full pool would pass the cap.
    pub fn memory_images(instances: u64, max: Option<u64>) -> bool {
        let Some(max) = max else {
            return true;
        };
        let need = |per: u64| instances.saturating_mul(per).saturating_add(OWN);
        if need(WITH_IMAGES) <= max / 2 {
            return true;
        }
        if need(WITHOUT_IMAGES) > max {
            warn!(
                "memory maps: an instance pool of {instances} may need {} memory maps ({} for \
                 each running instance, {OWN} for lanes itself), more than vm.max_map_count \
                 allows ({max}); instances past it fail to start: raise it (`sysctl -w \
                 vm.max_map_count={}`) or lower engine.max_instances",
                need(WITHOUT_IMAGES),
                WITHOUT_IMAGES,
                need(WITHOUT_IMAGES).saturating_mul(2).max(262_144)
            );
        } else {
            info!(
                "memory maps: an instance pool of {instances} copies each component's data \
                 into its memory at start instead of mapping an image, so that a full pool \
                 needs {} memory maps, not {}, of vm.max_map_count {max}",
                need(WITHOUT_IMAGES),
                need(WITH_IMAGES)
            );
        }
        false
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn images_only_while_a_full_pool_stays_within_half_the_cap() {
            // The default pool (256 and 8 spare) keeps them at the default cap.
            assert!(memory_images(264, Some(65_530)));
            assert!(memory_images(5_000, Some(65_530)));
            assert!(!memory_images(5_500, Some(65_530)));
            assert!(!memory_images(10_313, Some(65_530)));
            assert!(memory_images(10_313, Some(262_144)));
            // Unknown cap (not Linux): as wasmtime's default.
            assert!(memory_images(100_000, None));
        }
    }
}
