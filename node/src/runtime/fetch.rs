//! Modules between nodes: fetching what this node lacks (by SHA-256, checked before it is
//! stored) and serving what peers ask for.

use bx3_protocol::ids::ModuleHash;
use bx3_protocol::mesh::{self, Bytes, Refusal, Request, Response};
use libp2p::PeerId;
use tokio::sync::oneshot;

use crate::net;
use crate::store::modules::sha256_hex;
use crate::store::ModuleStore;

/// Answers a peer's module fetch from the module store (off the async threads).
pub fn serve(modules: ModuleStore, hash: ModuleHash, reply: oneshot::Sender<Vec<u8>>) {
    tokio::task::spawn_blocking(move || {
        let resp = match modules.get(hash.as_str()) {
            Ok(Some(bytes)) => Response::Module {
                bytes: Bytes(bytes),
            },
            Ok(None) => Response::Refused(Refusal::NotFound(format!("module {hash}"))),
            Err(e) => {
                Response::Refused(Refusal::Internal(format!("cannot read module {hash}: {e}")))
            }
        };
        super::respond(reply, &resp);
    });
}

/// Fetches every module of `hashes` this node lacks, trying each peer in turn for what is
/// still missing.
pub async fn from_any(
    net: &net::Client,
    peers: &[PeerId],
    modules: &ModuleStore,
    hashes: &[ModuleHash],
) -> Result<(), String> {
    let mut last = String::from("no peer to fetch from");
    for peer in peers {
        match from_peer(net, *peer, modules, hashes).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    let missing: Vec<&ModuleHash> = hashes
        .iter()
        .filter(|h| !modules.contains(h.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(last)
}

/// Fetches from `peer` every module in `hashes` that is not in `modules`, checking each
/// against its hash before storing it. Bytes that do not match are refused, never run.
async fn from_peer(
    net: &net::Client,
    peer: PeerId,
    modules: &ModuleStore,
    hashes: &[ModuleHash],
) -> Result<(), String> {
    for hash in hashes {
        if modules.contains(hash.as_str()) {
            continue;
        }
        let req = mesh::encode_rpc(&Request::FetchModule { hash: hash.clone() })
            .map_err(|e| e.to_string())?;
        let reply = net
            .request(peer, req)
            .await
            .map_err(|e| format!("fetching module {hash} from {peer}: {e}"))?;
        match mesh::decode_rpc::<Response>(&reply).map_err(|e| e.to_string())? {
            Response::Module { bytes } => {
                let actual = sha256_hex(&bytes.0);
                if actual != hash.as_str() {
                    return Err(format!(
                        "peer {peer} sent bytes with hash {actual} for module {hash}; refused"
                    ));
                }
                // Stored (and synced) off the async threads before we answer; compiled in
                // the background by the node's one bounded compile service (a limited child
                // process at low priority), not on a thread of its own per module.
                modules
                    .put_and_compile(bytes.0)
                    .await
                    .map_err(|e| format!("cannot store module {hash}: {e}"))?;
                tracing::debug!(%hash, %peer, "fetched module");
            }
            other => return Err(format!("peer {peer} has no module {hash}: {other:?}")),
        }
    }
    Ok(())
}
