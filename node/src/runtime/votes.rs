//! Votes signed with the node's libp2p identity key (ed25519). A peer id of an ed25519 key
//! embeds the public key itself, so a vote is checked from the voter's id alone: no key
//! exchange, and a node cannot sign for another.

use bx3_protocol::ids::NodeId;
use bx3_protocol::mesh::{vote_statement, Signature};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

use crate::election::{Term, Votes};

/// The identity multihash code: the digest is the public key itself.
const IDENTITY_MULTIHASH: u64 = 0x00;

pub struct KeyVotes {
    key: Keypair,
}

impl KeyVotes {
    pub fn new(key: Keypair) -> KeyVotes {
        KeyVotes { key }
    }
}

/// The public key inside a peer id, when the id carries one (ed25519 ids do).
fn public_key(id: &NodeId) -> Option<PublicKey> {
    let peer: PeerId = id.as_str().parse().ok()?;
    let mh = peer.as_ref();
    if mh.code() != IDENTITY_MULTIHASH {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    (key.to_peer_id() == peer).then_some(key)
}

impl Votes<NodeId> for KeyVotes {
    fn sign(&self, term: &Term<NodeId>) -> Signature {
        match self
            .key
            .sign(&vote_statement(term.epoch, term.candidate.as_str()))
        {
            Ok(sig) => Signature(sig),
            Err(e) => {
                tracing::warn!(error = ?e.to_string(), "cannot sign a vote");
                Signature::default()
            }
        }
    }

    fn verify(&self, voter: &NodeId, term: &Term<NodeId>, sig: &Signature) -> bool {
        public_key(voter).is_some_and(|key| {
            key.verify(&vote_statement(term.epoch, term.candidate.as_str()), &sig.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vote_checks_against_its_voter_only() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let id = |k: &Keypair| -> NodeId {
            k.public()
                .to_peer_id()
                .to_string()
                .parse()
                .expect("node id")
        };
        let term = Term {
            epoch: 7,
            candidate: id(&b),
        };
        let va = KeyVotes::new(a.clone());
        let sig = va.sign(&term);
        assert!(va.verify(&id(&a), &term, &sig));
        assert!(!va.verify(&id(&b), &term, &sig), "not b's signature");
        let other = Term {
            epoch: 8,
            candidate: id(&b),
        };
        assert!(!va.verify(&id(&a), &other, &sig), "another term");
        assert!(!va.verify(&id(&a), &term, &Signature(vec![0; 64])));
    }
}
