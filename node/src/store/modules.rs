//! Module bytes, content-addressed by SHA-256, as plain files under `<data-dir>/modules/`.
//!
//! Files rather than sled values because executor processes read them directly (sled allows
//! one process per database), and because a module is immutable once named by its hash.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct ModuleStore {
    dir: PathBuf,
    /// Hashes known to be on disk. Modules are immutable and never removed by the node, so
    /// once seen a module stays: `contains` (asked for every job) skips the file system.
    known: Arc<Mutex<HashSet<String>>>,
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
        Ok(ModuleStore {
            dir,
            known: Arc::default(),
        })
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

    pub fn contains(&self, hash: &str) -> bool {
        if !is_hash(hash) {
            return false;
        }
        if self.known().contains(hash) {
            return true;
        }
        let present = self.path(hash).is_file();
        if present {
            self.known().insert(hash.to_string());
        }
        present
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

    /// Stores `bytes` under their hash: written to a temporary file, synced, then renamed, so
    /// a crash never leaves a partial module under a valid name.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let hash = sha256_hex(bytes);
        let path = self.path(&hash);
        if path.is_file() {
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
