//! Requests to a peer on the transfer protocol (wire.rs): one request per stream, a bounded
//! response frame.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures::AsyncWriteExt;
use libp2p::PeerId;
use tokio::time::timeout;

use crate::net::NetHandle;
use crate::wire::{self, Request, Response};

pub async fn open(net: &NetHandle, peer: PeerId) -> Result<libp2p::Stream> {
    let mut control = net.control.clone();
    control.open_stream(peer, net.protocol.clone()).await.map_err(|e| anyhow!("open stream to {peer}: {e}"))
}

/// One small request on a fresh stream, and its (bounded) response frame.
pub async fn ask(net: &NetHandle, peer: PeerId, req: &Request) -> Result<Response> {
    let mut stream = open(net, peer).await?;
    wire::write_frame(&mut stream, req).await?;
    stream.flush().await?;
    let resp = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await?;
    let _ = stream.close().await;
    Ok(resp)
}

/// Fetches every signed envelope a peer holds.
pub async fn catalog(net: &NetHandle, peer: PeerId) -> Result<Vec<Vec<u8>>> {
    let fut = async {
        match ask(net, peer, &Request::Catalog).await? {
            Response::Catalog { items } if items.len() <= wire::MAX_CATALOG_ITEMS => {
                Ok(items.into_iter().map(|b| b.into_vec()).collect())
            }
            Response::Catalog { items } => {
                bail!("peer sent {} catalog items, the limit is {}", items.len(), wire::MAX_CATALOG_ITEMS)
            }
            other => bail!("unexpected catalog response {other:?}"),
        }
    };
    timeout(Duration::from_secs(10), fut).await.map_err(|_| anyhow!("catalog request timed out"))?
}

/// Peer exchange: the peers a peer knows, with their listen addresses (bounded, unparseable
/// entries dropped).
pub async fn peers(net: &NetHandle, peer: PeerId) -> Result<Vec<(PeerId, Vec<libp2p::Multiaddr>)>> {
    let fut = async {
        let Response::Peers { peers } = ask(net, peer, &Request::Peers).await? else {
            bail!("unexpected peer-exchange response")
        };
        Ok(peers
            .into_iter()
            .take(wire::MAX_PEERS)
            .filter_map(|(id, addrs)| {
                let id = id.parse::<PeerId>().ok()?;
                let addrs = addrs.iter().take(wire::MAX_ADDRS_PER_PEER).filter_map(|a| a.parse().ok()).collect();
                Some((id, addrs))
            })
            .collect())
    };
    timeout(Duration::from_secs(10), fut).await.map_err(|_| anyhow!("peer exchange timed out"))?
}
