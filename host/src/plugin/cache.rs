//! Compiled components on disk, so a restart with unchanged plugins does not recompile.
//!
//! An entry is keyed by the component's content hash and the engine's compatibility hash
//! (wasmtime version, target and settings). Each artifact is written with the SHA-256 of its
//! own bytes beside it; an entry whose bytes do not match, or that wasmtime refuses, is
//! stale or corrupt: it is ignored and rebuilt.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

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

/// A folder of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CompileCache {
    /// A cache in `dir` (`None`: always compile).
    pub fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        CompileCache { dir, engine_key }
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
            return Ok((Component::from_binary(engine, bytes)?, CacheOutcome::Miss));
        };
        let outcome = match read_verified(&artifact, &checksum) {
            Ok(Some(compiled)) => {
                // SAFETY: the bytes are an artifact this host wrote (the checksum beside it
                // matches), and wasmtime checks that it fits this engine before using it.
                match unsafe { Component::deserialize(engine, &compiled) } {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
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
        let compiled = engine.precompile_component(bytes)?;
        if let Err(e) = write_entry(&artifact, &checksum, &compiled) {
            tracing::warn!("compile cache: cannot write {}: {e}", artifact.display());
        }
        // SAFETY: `compiled` was produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, outcome))
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
