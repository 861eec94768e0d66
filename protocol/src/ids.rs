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

#[cfg(test)]
mod tests {
    use super::*;

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
}
