//! Mesh keys: the pre-shared key of a private mesh, in the `swarm.key` file format of libp2p
//! private networks (the same file go-libp2p and IPFS read):
//!
//! ```text
//! /key/swarm/psk/1.0.0/
//! /base16/
//! <64 hex digits: 256 random bits>
//! ```
//!
//! `bx3-node keygen FILE` writes one (mode 0600, never over an existing file); `--mesh-key
//! FILE` reads it and the transport runs behind libp2p `pnet` with it.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::PreSharedKey;

const HEADER: &str = "/key/swarm/psk/1.0.0/";
const ENCODING: &str = "/base16/";
/// A key file is three short lines; anything much longer is not one (and is not read whole).
const MAX_FILE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("mesh key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} already exists; not overwriting a mesh key (remove it first, or pick another file)"
    )]
    Exists { path: PathBuf },
    #[error("mesh key file {path} is not a swarm key: {reason} (expected three lines: {HEADER}, {ENCODING}, 64 hex digits; `bx3-node keygen FILE` writes one)")]
    Format { path: PathBuf, reason: String },
}

/// Writes a new random key to `path`, mode 0600, refusing to overwrite anything. Returns
/// the key (for its fingerprint).
pub fn generate_file(path: &Path) -> Result<PreSharedKey, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let key = PreSharedKey::new(bytes);
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_path_buf(),
            },
            _ => io(e),
        })?;
    file.write_all(key.to_key_file().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

/// Reads a key file. Errors say what is wrong with it; the key itself never appears in an
/// error or a log line (its fingerprint does).
pub fn load(path: &Path) -> Result<PreSharedKey, KeyError> {
    use std::io::Read;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => KeyError::Format {
                path: path.to_path_buf(),
                reason: "it is not text".into(),
            },
            _ => io(e),
        })?;
    parse(&text).map_err(|reason| KeyError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// Whether others than the owner may read the file (worth a warning: the key is the whole
/// of a private mesh's access control).
pub fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

fn parse(text: &str) -> Result<PreSharedKey, String> {
    if text.len() as u64 > MAX_FILE {
        return Err(format!("it is larger than {MAX_FILE} bytes"));
    }
    // Tolerates CRLF and trailing blank lines (a file edited on another system).
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let lines: Vec<&str> = match lines.iter().rposition(|l| !l.is_empty()) {
        Some(last) => lines[..=last].to_vec(),
        None => return Err("it is empty".into()),
    };
    let [header, encoding, hex] = lines.as_slice() else {
        return Err(format!("it has {} lines, not 3", lines.len()));
    };
    if *header != HEADER {
        return Err(format!("the first line is not {HEADER}"));
    }
    if *encoding != ENCODING {
        return Err(format!(
            "the second line is not {ENCODING} (the only encoding supported)"
        ));
    }
    if hex.len() != 64 {
        return Err(format!(
            "the key has {} characters, not 64 hex digits",
            hex.len()
        ));
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = hex
            .get(2 * i..2 * i + 2)
            .and_then(|d| u8::from_str_radix(d, 16).ok())
            .ok_or_else(|| "the key has characters that are not hex digits".to_string())?;
    }
    Ok(PreSharedKey::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_file_that_loads_back_and_is_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("swarm.key");
        let key = generate_file(&path).expect("keygen");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!readable_by_others(&path));
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], [HEADER, ENCODING]);
        assert_eq!(lines[2].len(), 64);
        assert!(lines[2].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(load(&path).expect("loads"), key);
        // libp2p's own parser agrees.
        assert_eq!(text.parse::<PreSharedKey>().expect("libp2p parses"), key);

        let err = generate_file(&path).expect_err("exists");
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(load(&path).expect("still the same key"), key);
        let other = generate_file(&dir.path().join("other.key")).expect("keygen");
        assert_ne!(other, key, "random");
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let hex = "ab".repeat(32);
        let ok = format!("{HEADER}\r\n{ENCODING}\r\n{hex}\r\n\r\n");
        assert!(
            parse(&ok).is_ok(),
            "CRLF and a trailing blank line are fine"
        );
        let cases = [
            (String::new(), "empty"),
            (format!("{HEADER}\n{ENCODING}\n"), "2 lines"),
            (
                format!("/key/swarm/psk/2.0.0/\n{ENCODING}\n{hex}"),
                "first line",
            ),
            (format!("{HEADER}\n/base64/\n{hex}"), "second line"),
            (
                format!("{HEADER}\n{ENCODING}\n{}", "ab".repeat(31)),
                "62 characters",
            ),
            (
                format!("{HEADER}\n{ENCODING}\n{}zz", "ab".repeat(31)),
                "not hex",
            ),
            (
                format!("{HEADER}\n{ENCODING}\n{}é", "ab".repeat(31)),
                "not hex",
            ),
            ("x".repeat(5000), "larger"),
        ];
        for (text, want) in cases {
            let err = parse(&text).expect_err(want);
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(&dir.path().join("missing")).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe, 0]).expect("write");
        let err = load(&bin).expect_err("binary");
        assert!(err.to_string().contains("not text"), "{err}");
    }
}
