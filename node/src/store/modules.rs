//! Module bytes, content-addressed by SHA-256, as plain files under `<data-dir>/modules/`.
//!
//! Files rather than sled values because executor processes read them directly (sled allows
//! one process per database), and because a module is immutable once named by its hash.
//!
//! The set of hashes present is read once when the store opens and kept in memory (the node
//! is the only writer and never deletes a module), so `contains` — asked for every job and
//! every submission, on async threads — never touches the disk; reading and writing bytes
//! have `_async` forms that run on the blocking pool.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

#[derive(Clone)]
pub struct ModuleStore {
    dir: PathBuf,
    /// Hashes on disk: listed at `open`, added to by `put`. Modules are immutable and never
    /// removed by the node, so this is the answer to `contains`.
    known: Arc<Mutex<HashSet<String>>>,
    /// The node's compile service: modules that arrive from peers are compiled through it
    /// (`None` in tools and tests that only store bytes).
    compiler: Option<crate::executor::compile::Compiler>,
}

impl std::fmt::Debug for ModuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleStore")
            .field("dir", &self.dir)
            .finish()
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A hash as the API accepts it: 64 lowercase hex digits (also keeps paths safe).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl ModuleStore {
    pub fn open(dir: PathBuf) -> std::io::Result<ModuleStore> {
        std::fs::create_dir_all(&dir)?;
        let mut known = HashSet::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name();
            if let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".wasm")) {
                if is_hash(hash) {
                    known.insert(hash.to_string());
                }
            }
        }
        Ok(ModuleStore {
            dir,
            known: Arc::new(Mutex::new(known)),
            compiler: None,
        })
    }

    /// Compiles modules stored from peers through `compiler` (see `put_and_compile`).
    pub fn with_compiler(mut self, compiler: crate::executor::compile::Compiler) -> ModuleStore {
        self.compiler = Some(compiler);
        self
    }

    pub fn compiler(&self) -> Option<&crate::executor::compile::Compiler> {
        self.compiler.as_ref()
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where compiled modules are cached (`<data-dir>/compiled`, beside `modules/`), shared
    /// with the executor processes.
    pub fn compiled_dir(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).join("compiled")
    }

    /// Whether the module is here; memory only (see the module docs).
    pub fn contains(&self, hash: &str) -> bool {
        is_hash(hash) && self.known().contains(hash)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set is only ever inserted into: a panic elsewhere cannot leave it inconsistent.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, hash: &str) -> std::io::Result<Option<Vec<u8>>> {
        if !is_hash(hash) {
            return Ok(None);
        }
        match std::fs::read(self.path(hash)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `get` on the blocking pool.
    pub async fn get_async(&self, hash: &str) -> std::io::Result<Option<Vec<u8>>> {
        let (store, hash) = (self.clone(), hash.to_string());
        tokio::task::spawn_blocking(move || store.get(&hash))
            .await
            .map_err(std::io::Error::other)?
    }

    /// `put` on the blocking pool.
    pub async fn put_async(&self, bytes: Arc<Vec<u8>>) -> std::io::Result<String> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.put(&bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Stores module bytes that arrived from a peer (their hash already checked) and hands
    /// them to the compile service in the background, so the first task finds them compiled.
    /// A module that does not compile is logged here and fails its tasks with the reason.
    pub async fn put_and_compile(&self, bytes: Vec<u8>) -> std::io::Result<String> {
        let bytes = Arc::new(bytes);
        let hash = self.put_async(Arc::clone(&bytes)).await?;
        if let Some(compiler) = self.compiler.clone() {
            let h = hash.clone();
            tokio::spawn(async move {
                if let Err(e) = compiler.compile(&h, bytes).await {
                    tracing::warn!(hash = %h, error = ?e.to_string(), "a module fetched from a peer does not compile");
                }
            });
        }
        Ok(hash)
    }

    /// Stores `bytes` under their hash: written to a temporary file, synced, then renamed, so
    /// a crash never leaves a partial module under a valid name.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let hash = sha256_hex(bytes);
        let path = self.path(&hash);
        if path.is_file() {
            self.known().insert(hash.clone());
            return Ok(hash);
        }
        // A name of its own per writer: two tasks of this process may store the same module
        // at once (a replication fetch and an assignment's fetch).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{hash}.{}.{n}.tmp", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            if !path.is_file() {
                return Err(e);
            }
        }
        self.known().insert(hash.clone());
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_puts_of_one_module_both_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModuleStore::open(dir.path().join("m")).expect("open");
        let bytes = vec![7u8; 1 << 20];
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (s, b) = (store.clone(), bytes.clone());
                std::thread::spawn(move || s.put(&b))
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("every writer succeeds");
        }
        assert_eq!(store.get(&sha256_hex(&bytes)).expect("get"), Some(bytes));
    }

    #[test]
    fn contains_knows_modules_from_before_a_restart_without_touching_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hash = ModuleStore::open(dir.path().join("m"))
            .expect("open")
            .put(b"\0asm\x01\0\0\0")
            .expect("put");
        std::fs::write(dir.path().join("m").join("notes.txt"), "x").expect("write");
        let store = ModuleStore::open(dir.path().join("m")).expect("reopen");
        assert!(store.contains(&hash));
        assert!(!store.contains("notes"));
        // The answer comes from memory: a file removed behind the node's back is still
        // "known" (the node never removes modules; reading it reports the problem).
        std::fs::remove_file(store.path(&hash)).expect("rm");
        assert!(store.contains(&hash));
        assert_eq!(store.get(&hash).expect("get"), None);
    }

    #[test]
    fn put_get_by_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ModuleStore::open(dir.path().join("m")).expect("open");
        let hash = store.put(b"\0asm\x01\0\0\0").expect("put");
        assert!(is_hash(&hash));
        assert!(store.contains(&hash));
        assert_eq!(
            store.get(&hash).expect("get").as_deref(),
            Some(&b"\0asm\x01\0\0\0"[..])
        );
        assert_eq!(store.get(&"0".repeat(64)).expect("get"), None);
        assert_eq!(
            store.get("../../etc/passwd").expect("get"),
            None,
            "not a hash, not a path"
        );
    }
}
