//! Compiled components on disk, so a restart with unchanged plugins does not recompile.
//!
//! An entry is keyed by the component's content hash and the engine's compatibility hash
//! (wasmtime version, target and settings). Each artifact is written with the SHA-256 of its
//! own bytes beside it; an entry whose bytes do not match, or that wasmtime refuses, is
//! stale or corrupt: it is ignored and rebuilt.
//!
//! After each scan the host prunes the folder: entries that no loaded component uses go once
//! they have been unused for `cache.prune_after_days` (an entry's modification time is
//! refreshed on every hit), and so do the leftovers of an interrupted write. Entries of
//! another engine configuration count as unused here. Files that are not entries are never
//! touched, so the folder may be shared.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled now (no entry, or the cache is off).
    Miss,
    /// Compiled now because the entry was stale or corrupt.
    Rebuilt,
}

/// Feeds `Hash` output into SHA-256, for a key that is stable across runs.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        // Only `write` is used; the digest is read with `finalize` instead.
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// What a prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub files: usize,
    pub bytes: u64,
}

/// A temporary file left by a write that never finished is removed after this long.
const ABANDONED_WRITE: Duration = Duration::from_secs(3600);

/// A folder of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
    /// The engine's settings for a compile of its own (see [`CompileCache::compile`]).
    compiler: wasmtime::Config,
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CompileCache {
    /// A cache in `dir` (`None`: always compile) for `engine`, which `config` made.
    pub fn new(dir: Option<PathBuf>, engine: &Engine, config: &wasmtime::Config) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        // Compiling needs no instance pool, only the settings that make code compatible.
        // Functions are compiled one after another, on the loading thread: a parallel
        // compile leaves its worker threads, their stacks and their heaps behind. Four
        // small components then compile in 1.4–1.6 s instead of 0.9–1.0 s (2 cores), once
        // per component version, and the daemon idles at 33–36 MiB instead of 42–44.
        let mut compiler = config.clone();
        compiler
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand)
            .parallel_compilation(false);
        CompileCache {
            dir,
            engine_key,
            compiler,
        }
    }

    /// `bytes` compiled for the engine, by an engine of its own that is dropped afterwards.
    /// An engine keeps its compiler's working memory for the next compile: megabytes that a
    /// daemon, which compiles at start or on a reload and then only runs, would carry for
    /// good.
    fn compile(&self, bytes: &[u8]) -> Result<Vec<u8>, wasmtime::Error> {
        Engine::new(&self.compiler)?.precompile_component(bytes)
    }

    fn entry(&self, content_hash: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = self.dir.as_ref()?;
        let stem = format!("{content_hash}-{}", self.engine_key);
        Some((
            dir.join(format!("{stem}.cwasm")),
            dir.join(format!("{stem}.sha256")),
        ))
    }

    /// The compiled form of `bytes` (whose SHA-256 is `content_hash`), from the cache when a
    /// valid entry exists, else compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> Result<(Component, CacheOutcome), wasmtime::Error> {
        let Some((artifact, checksum)) = self.entry(content_hash) else {
            let compiled = self.compile(bytes)?;
            // SAFETY: `compiled` was produced a moment ago with this engine's settings, and
            // wasmtime checks that it fits the engine before using it.
            let component = unsafe { Component::deserialize(engine, &compiled)? };
            return Ok((component, CacheOutcome::Miss));
        };
        let outcome = match read_verified(&artifact, &checksum) {
            Ok(Some(compiled)) => {
                // SAFETY: the bytes are an artifact this host wrote (the checksum beside it
                // matches), and wasmtime checks that it fits this engine before using it.
                match unsafe { Component::deserialize(engine, &compiled) } {
                    Ok(component) => {
                        // In use: a prune by another host sharing the folder keeps it.
                        touch(&artifact);
                        touch(&checksum);
                        return Ok((component, CacheOutcome::Hit));
                    }
                    Err(e) => {
                        tracing::warn!(
                            "compile cache entry {} refused ({e}); rebuilding",
                            artifact.display()
                        );
                        CacheOutcome::Rebuilt
                    }
                }
            }
            Ok(None) => CacheOutcome::Miss,
            Err(reason) => {
                tracing::warn!(
                    "compile cache entry {} is corrupt ({reason}); rebuilding",
                    artifact.display()
                );
                CacheOutcome::Rebuilt
            }
        };
        let compiled = self.compile(bytes)?;
        if let Err(e) = write_entry(&artifact, &checksum, &compiled) {
            tracing::warn!("compile cache: cannot write {}: {e}", artifact.display());
        }
        // SAFETY: as above.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, outcome))
    }
}

impl CompileCache {
    /// Removes the entries of components not in `keep` (content hashes) that have gone
    /// unused for `max_age`, entries of another engine configuration likewise, and
    /// temporary files of writes that never finished. Errors are skipped: a prune is only
    /// housekeeping.
    pub fn prune(&self, keep: &BTreeSet<String>, max_age: Duration) -> Pruned {
        let mut pruned = Pruned::default();
        let Some(dir) = &self.dir else {
            return pruned;
        };
        let Ok(listing) = std::fs::read_dir(dir) else {
            return pruned;
        };
        let now = SystemTime::now();
        for entry in listing.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some((stem, extension)) = name.rsplit_once('.') else {
                continue;
            };
            let Some((content_hash, engine_key)) = stem.split_once('-') else {
                continue;
            };
            let is_entry = content_hash.len() == 64
                && content_hash.bytes().all(|b| b.is_ascii_hexdigit())
                && engine_key.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_entry {
                continue;
            }
            let age_limit = match extension {
                "cwasm" | "sha256" => {
                    if engine_key == self.engine_key && keep.contains(content_hash) {
                        continue;
                    }
                    max_age
                }
                tmp if tmp.starts_with("tmp") => ABANDONED_WRITE,
                _ => continue,
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let unused_for = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if meta.is_file() && unused_for >= age_limit && std::fs::remove_file(&path).is_ok() {
                pruned.files += 1;
                pruned.bytes += meta.len();
            }
        }
        pruned
    }
}

/// Sets a file's modification time to now, where the file system allows it.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// The artifact's bytes if the entry exists and matches its checksum; `Err` if it is
/// present but damaged.
fn read_verified(artifact: &Path, checksum: &Path) -> Result<Option<Vec<u8>>, String> {
    let Ok(bytes) = std::fs::read(artifact) else {
        return Ok(None);
    };
    let expected = std::fs::read_to_string(checksum).map_err(|e| format!("checksum: {e}"))?;
    if sha256_hex(&bytes) != expected.trim() {
        return Err("checksum mismatch".to_string());
    }
    Ok(Some(bytes))
}

/// Writes an entry so that no reader ever sees half of it: a temporary file, then a rename;
/// the checksum goes last, so an artifact without one reads as damaged, never as valid.
fn write_entry(artifact: &Path, checksum: &Path, compiled: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = artifact.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(checksum);
    let tmp = artifact.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, artifact)?;
    let tmp = checksum.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, sha256_hex(compiled))?;
    std::fs::rename(&tmp, checksum)
}
