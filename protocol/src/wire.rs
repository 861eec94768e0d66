//! The versioned envelope every mesh message travels in, with size limits.
//!
//! The version also lives in the protocol names (`/bx3/rpc/2`, topic `bx3/mesh/2`); inside a
//! version, changes are additive only (new fields carry `#[serde(default)]`, new enum variants
//! are appended, retired ones keep their place). Decoding checks the size before anything
//! else, then the version, then the body, and says which of them was wrong.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The wire version this build speaks.
pub const VERSION: u16 = 2;
/// Gossipsub's own cap is 64 KiB; gossip carries only small periodic messages.
pub const MAX_GOSSIP: usize = 64 * 1024;
/// Requests and responses: assignments carry resolved inputs, results carry outputs (8 MiB).
pub const MAX_RPC: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("message is wire version {got}; this node speaks version {VERSION}")]
    Version { got: u16 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

#[derive(Serialize)]
struct Out<'a, T> {
    v: u16,
    body: &'a T,
}

#[derive(Deserialize)]
struct Head {
    v: u16,
}

#[derive(Deserialize)]
struct In<T> {
    body: T,
}

pub fn encode<T: Serialize>(body: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let bytes = serde_cbor::to_vec(&Out { v: VERSION, body })
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    within(bytes.len(), max)?;
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    within(bytes.len(), max)?;
    // What `encode` writes, `{"v": N, "body": ...}` in that order, is read in one pass:
    // the version from its fixed place, then the body straight from the bytes after it.
    if let Some((v, body)) = split(bytes) {
        if v != VERSION {
            return Err(CodecError::Version { got: v });
        }
        let mut de = serde_cbor::Deserializer::from_slice(body);
        let msg = T::deserialize(&mut de).map_err(malformed)?;
        de.end().map_err(malformed)?;
        return Ok(msg);
    }
    // Any other shape of the same map (keys in another order, more keys).
    decode_general(bytes, max)
}

/// `decode` for any layout of the envelope map: the version first, then the whole message
/// again for the body. Public for the fuzz target that checks `decode` agrees with it.
#[doc(hidden)]
pub fn decode_general<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    within(bytes.len(), max)?;
    let head: Head = serde_cbor::from_slice(bytes).map_err(malformed)?;
    if head.v != VERSION {
        return Err(CodecError::Version { got: head.v });
    }
    let msg: In<T> = serde_cbor::from_slice(bytes).map_err(malformed)?;
    Ok(msg.body)
}

fn within(size: usize, max: usize) -> Result<(), CodecError> {
    if size > max {
        return Err(CodecError::TooLarge { size, max });
    }
    Ok(())
}

fn malformed(e: serde_cbor::Error) -> CodecError {
    CodecError::Malformed(e.to_string())
}

/// `a2 61 'v' <unsigned> 64 'body' <rest>` -> (version, rest): the envelope as `encode`
/// writes it (a two-entry map, "v" first). None for any other layout.
fn split(bytes: &[u8]) -> Option<(u16, &[u8])> {
    let rest = bytes.strip_prefix(b"\xa2\x61v")?;
    let (v, rest) = match *rest.first()? {
        n @ 0x00..=0x17 => (u16::from(n), &rest[1..]),
        0x18 => (u16::from(*rest.get(1)?), rest.get(2..)?),
        0x19 => (
            u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?]),
            rest.get(3..)?,
        ),
        _ => return None,
    };
    Some((v, rest.strip_prefix(b"\x64body")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping { n: u32 },
        Text(String),
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&Msg::Ping { n: 7 }, MAX_GOSSIP).expect("encodes");
        assert_eq!(decode::<Msg>(&bytes, MAX_GOSSIP), Ok(Msg::Ping { n: 7 }));
    }

    #[test]
    fn golden_bytes_stay_decodable() {
        // {"v": 2, "body": {"Ping": {"n": 7}}} as written by version 2. If this breaks, an
        // old node's message no longer decodes: that needs a new wire version, not an edit.
        let golden = hex_bytes("a2 6176 02 64626f6479 a1 6450696e67 a1 616e 07");
        assert_eq!(decode::<Msg>(&golden, MAX_GOSSIP), Ok(Msg::Ping { n: 7 }));
        assert_eq!(
            encode(&Msg::Ping { n: 7 }, MAX_GOSSIP).expect("encodes"),
            golden
        );
    }

    #[test]
    fn rejects_oversize_wrong_version_and_garbage_with_reasons() {
        let big = encode(&Msg::Text("x".repeat(100)), usize::MAX).expect("encodes");
        assert!(matches!(
            decode::<Msg>(&big, 50),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            encode(&Msg::Text("x".repeat(100)), 50),
            Err(CodecError::TooLarge { .. })
        ));

        #[derive(Serialize)]
        struct Future<'a> {
            v: u16,
            body: &'a str,
        }
        let future = serde_cbor::to_vec(&Future { v: 3, body: "hi" }).expect("encodes");
        let err = decode::<Msg>(&future, MAX_GOSSIP).expect_err("future version");
        assert_eq!(err, CodecError::Version { got: 3 });
        assert!(err.to_string().contains("version 3"));
        // A version-1 node's message (bx3 0.1 before this round) is refused with the reason.
        let old = hex_bytes("a2 6176 01 64626f6479 a1 6450696e67 a1 616e 07");
        assert_eq!(
            decode::<Msg>(&old, MAX_GOSSIP),
            Err(CodecError::Version { got: 1 })
        );

        for garbage in [&b""[..], b"\xff\xff\xff", b"hello", b"\xa1\x61v\x02"] {
            assert!(
                matches!(
                    decode::<Msg>(garbage, MAX_GOSSIP),
                    Err(CodecError::Malformed(_))
                ),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn the_one_pass_read_agrees_with_the_general_one() {
        // The layout `encode` writes takes the one-pass path; the same map with its keys
        // swapped or an extra key takes the general path; both give the same answers.
        #[derive(Serialize)]
        struct Swapped<'a> {
            body: &'a Msg,
            v: u16,
        }
        #[derive(Serialize)]
        struct Extra<'a> {
            v: u16,
            body: &'a Msg,
            x: u8,
        }
        let msg = Msg::Text("hello".into());
        let ours = encode(&msg, MAX_GOSSIP).expect("encodes");
        assert!(split(&ours).is_some());
        for v in [2u16, 3, 24, 300] {
            let swapped = serde_cbor::to_vec(&Swapped { body: &msg, v }).expect("encodes");
            let extra = serde_cbor::to_vec(&Extra {
                v,
                body: &msg,
                x: 1,
            })
            .expect("encodes");
            let front = serde_cbor::to_vec(&Out { v, body: &msg }).expect("encodes");
            assert!(split(&swapped).is_none() && split(&extra).is_none());
            assert_eq!(split(&front).map(|(got, _)| got), Some(v));
            let want = if v == VERSION {
                Ok(msg.clone())
            } else {
                Err(CodecError::Version { got: v })
            };
            for bytes in [&swapped, &extra, &front] {
                assert_eq!(decode::<Msg>(bytes, MAX_GOSSIP), want, "{bytes:02x?}");
            }
        }
        // Trailing bytes after the body, or a body cut short, are malformed on either path.
        let mut trailing = ours.clone();
        trailing.push(0);
        let cut = &ours[..ours.len() - 1];
        for bad in [&trailing[..], cut, &ours[..3], &ours[..9]] {
            assert!(
                matches!(
                    decode::<Msg>(bad, MAX_GOSSIP),
                    Err(CodecError::Malformed(_))
                ),
                "{bad:02x?}"
            );
        }
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
