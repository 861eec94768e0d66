//! Length-prefixed CBOR frames between the node and its executor processes (over pipes).
//!
//! `u32` big-endian length, then that many bytes of CBOR. Both ends enforce `MAX_FRAME` so a
//! confused peer cannot make the other allocate without bound.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Inputs of one task can carry several upstream outputs (8 MiB each); a task's linear memory
/// limit bounds what it could accept anyway.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// One task for an executor process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub module_hash: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    #[serde(with = "serde_bytes_compat")]
    pub stdin: Vec<u8>,
    pub memory_bytes: u64,
    pub max_stdout: usize,
    pub max_stderr_tail: usize,
}

/// What an executor process reports back for one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Success {
        #[serde(with = "serde_bytes_compat")]
        stdout: Vec<u8>,
        run_us: u64,
        #[serde(default)]
        stderr_tail: String,
    },
    Exit {
        code: u32,
        stderr_tail: String,
    },
    Trap {
        message: String,
        stderr_tail: String,
    },
    MemoryExceeded {
        limit_bytes: u64,
        stderr_tail: String,
    },
    OutputTooLarge {
        limit_bytes: usize,
    },
    /// The module could not be loaded or instantiated (host-side problem).
    Error {
        message: String,
    },
}

/// Encodes `Vec<u8>` as a CBOR byte string instead of an array of integers.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        serde_cbor::value::Value::deserialize(d).and_then(|v| match v {
            serde_cbor::value::Value::Bytes(b) => Ok(b),
            _ => Err(serde::de::Error::custom("expected a byte string")),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("could not encode frame: {0}")]
    Encode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_cbor::to_vec(value).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_cbor::from_slice(body).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Blocking read of one frame; `Ok(None)` on a clean end of stream.
pub fn read_blocking<R: std::io::Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Async read of one frame; EOF is an error here (the executor died).
pub async fn read_async<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    use tokio::io::AsyncReadExt;
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_limits() {
        let req = Request {
            module_hash: "ab".repeat(32),
            argv: vec!["m.wasm".into(), "héllo wörld".into()],
            env: vec![("K".into(), "V".into())],
            stdin: b"in".to_vec(),
            memory_bytes: 1 << 20,
            max_stdout: 10,
            max_stderr_tail: 10,
        };
        let bytes = encode(&req).expect("encodes");
        let mut cursor = std::io::Cursor::new(bytes);
        let body = read_blocking(&mut cursor)
            .expect("reads")
            .expect("one frame");
        let back: Request = decode(&body).expect("decodes");
        assert_eq!(back.argv, req.argv);
        assert_eq!(back.stdin, b"in");
        assert!(read_blocking(&mut cursor).expect("clean eof").is_none());

        let mut huge = std::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(matches!(
            read_blocking(&mut huge),
            Err(FrameError::TooLarge(_))
        ));
        assert!(decode::<Request>(b"\xff\x00garbage").is_err());
    }
}
