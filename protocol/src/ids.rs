//! Identifiers that cross process boundaries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A DAG's id: 48 bits of creation time (ms since the Unix epoch) then 32 random bits.
///
/// Time first so that ids, and the big-endian store keys made from them, sort by submission
/// time; the random part keeps ids unique across nodes without coordination. Shown as 20
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DagId([u8; 10]);

impl DagId {
    pub const LEN: usize = 10;

    pub fn new(now_ms: u64, random: u32) -> DagId {
        let mut b = [0u8; 10];
        b[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random.to_be_bytes());
        DagId(b)
    }

    pub fn as_bytes(&self) -> &[u8; 10] {
        &self.0
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<DagId> {
        <[u8; 10]>::try_from(bytes).ok().map(DagId)
    }

    /// Creation time encoded in the id (ms since the Unix epoch).
    pub fn created_ms(&self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(b)
    }
}

impl fmt::Display for DagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DagId({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a DAG id (expected 20 hex digits)")]
pub struct BadDagId(pub String);

impl FromStr for DagId {
    type Err = BadDagId;
    fn from_str(s: &str) -> Result<DagId, BadDagId> {
        let bad = || BadDagId(s.chars().take(64).collect());
        if s.len() != 20 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut b = [0u8; 10];
        for (i, slot) in b.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(DagId(b))
    }
}

/// A node's id: its libp2p peer id in text form (`12D3KooW...`). Peers send these inside
/// messages (a term's candidate, an announcement's leader), so a value is checked where it is
/// decoded: 1 to [`NodeId::MAX_LEN`] characters, ASCII letters and digits only. That it names a
/// real peer is for the network layer to say (it authenticates the sender of every message).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Longer than any peer id libp2p makes (ed25519 ids are 52 characters).
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a node id (1 to 128 ASCII letters and digits)")]
pub struct BadNodeId(pub String);

impl TryFrom<String> for NodeId {
    type Error = BadNodeId;
    fn try_from(s: String) -> Result<NodeId, BadNodeId> {
        if s.is_empty()
            || s.len() > NodeId::MAX_LEN
            || !s.bytes().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(BadNodeId(s.chars().take(64).collect()));
        }
        Ok(NodeId(s))
    }
}

impl FromStr for NodeId {
    type Err = BadNodeId;
    fn from_str(s: &str) -> Result<NodeId, BadNodeId> {
        NodeId::try_from(s.to_string())
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A module's SHA-256, as 64 lowercase hex digits: how modules are named everywhere (store
/// files, DAG specs, fetches between nodes). Checked where it is decoded.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleHash(String);

impl ModuleHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a module hash (expected 64 lowercase hex digits of SHA-256)")]
pub struct BadModuleHash(pub String);

impl TryFrom<String> for ModuleHash {
    type Error = BadModuleHash;
    fn try_from(s: String) -> Result<ModuleHash, BadModuleHash> {
        if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(BadModuleHash(s.chars().take(80).collect()));
        }
        Ok(ModuleHash(s))
    }
}

impl FromStr for ModuleHash {
    type Err = BadModuleHash;
    fn from_str(s: &str) -> Result<ModuleHash, BadModuleHash> {
        ModuleHash::try_from(s.to_string())
    }
}

impl From<ModuleHash> for String {
    fn from(h: ModuleHash) -> String {
        h.0
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The start of a DAG id, as people type it (like a short git hash): at least
/// [`DagIdPrefix::MIN_LEN`] hex digits, at most all 20.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagIdPrefix {
    /// The whole bytes of the prefix (two hex digits each).
    bytes: Vec<u8>,
    /// A last, odd hex digit: the high nibble of the next byte.
    half: Option<u8>,
}

/// A string that is neither a DAG id nor a usable prefix of one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a DAG id or a prefix of one (DAG ids are 20 hex digits; give at least 4 of \
     the first ones)"
)]
pub struct BadDagIdPrefix(pub String);

impl DagIdPrefix {
    /// Shorter prefixes match too much to be useful (ids start with their creation time).
    pub const MIN_LEN: usize = 4;

    /// The byte prefix every matching id's key starts with.
    pub fn key_prefix(&self) -> &[u8] {
        &self.bytes
    }

    pub fn matches(&self, id: &DagId) -> bool {
        let b = id.as_bytes();
        b.starts_with(&self.bytes)
            && self
                .half
                .is_none_or(|h| b.get(self.bytes.len()).is_some_and(|next| next >> 4 == h))
    }

    /// The full id, when the prefix is one.
    pub fn as_id(&self) -> Option<DagId> {
        match self.half {
            None => DagId::from_bytes(&self.bytes),
            Some(_) => None,
        }
    }
}

impl FromStr for DagIdPrefix {
    type Err = BadDagIdPrefix;
    fn from_str(s: &str) -> Result<DagIdPrefix, BadDagIdPrefix> {
        let bad = || BadDagIdPrefix(s.chars().take(64).collect());
        let digits: Option<Vec<u8>> = s
            .bytes()
            .map(|c| (c as char).to_digit(16).map(|d| d as u8))
            .collect();
        let digits = digits.ok_or_else(bad)?;
        if digits.len() < Self::MIN_LEN || digits.len() > 2 * DagId::LEN {
            return Err(bad());
        }
        let bytes = digits.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
        let half = (digits.len() % 2 == 1).then(|| digits[digits.len() - 1]);
        Ok(DagIdPrefix { bytes, half })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_like_short_git_hashes() {
        let id: DagId = "01a231d7ac28aabbccdd".parse().expect("id");
        let other: DagId = "01a231d7ac29aabbccdd".parse().expect("id");
        for (prefix, hit, hit_other) in [
            ("01a2", true, true),
            ("01a23", true, true),
            ("01a231d7ac28", true, false),
            ("01a231d7ac2", true, true),
            ("01A231D7AC28", true, false),
            ("01a231d7ac28aabbccdd", true, false),
            ("01a3", false, false),
            ("01a24", false, false),
        ] {
            let p: DagIdPrefix = prefix.parse().expect(prefix);
            assert_eq!(p.matches(&id), hit, "{prefix}");
            assert_eq!(p.matches(&other), hit_other, "{prefix}");
        }
        let full: DagIdPrefix = "01a231d7ac28aabbccdd".parse().expect("full");
        assert_eq!(full.as_id(), Some(id));
        assert_eq!("01a23".parse::<DagIdPrefix>().expect("odd").as_id(), None);
        for bad in ["", "01a", "xyz1", "01a231d7ac28aabbccdd0", "01a2 ", "é1a2"] {
            assert!(bad.parse::<DagIdPrefix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_parse_round_trip_and_time_order() {
        let a = DagId::new(1_700_000_000_000, 0xdead_beef);
        let b = DagId::new(1_700_000_000_001, 0);
        let s = a.to_string();
        assert_eq!(s.len(), 20);
        assert_eq!(s.parse::<DagId>(), Ok(a));
        assert_eq!(a.created_ms(), 1_700_000_000_000);
        assert!(a < b, "ids sort by creation time");
        assert!(
            a.as_bytes() < b.as_bytes(),
            "store keys sort by creation time"
        );
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "xyz",
            "0123456789abcdef012",
            "0123456789abcdef012g",
            "é123456789abcdef012",
        ] {
            assert!(bad.parse::<DagId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_ids_and_module_hashes_are_checked_where_they_are_decoded() {
        assert!("12D3KooWAbc".parse::<NodeId>().is_ok());
        for bad in ["", "a b", "a\nERROR", &"x".repeat(129)] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
            let cbor = serde_cbor::to_vec(&bad.to_string()).expect("encodes");
            assert!(serde_cbor::from_slice::<NodeId>(&cbor).is_err(), "{bad:?}");
        }
        let h = "ab".repeat(32);
        assert!(h.parse::<ModuleHash>().is_ok());
        for bad in [
            "",
            "AB".repeat(32).as_str(),
            "../etc/passwd",
            &"a".repeat(63),
        ] {
            assert!(bad.parse::<ModuleHash>().is_err(), "{bad:?}");
        }
    }
}
