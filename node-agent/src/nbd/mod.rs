//! The NBD server: fixed newstyle, on TCP and on a unix socket; export name = volume name.

pub(crate) mod errors;
mod handshake;
pub mod proto;
mod transmission;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Accepts NBD clients on a TCP listener until the task is dropped.
pub async fn serve_tcp(listener: TcpListener, gateway: Arc<Gateway>, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    gateway.clone(),
                    metrics.clone(),
                    peer.to_string(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "cannot accept an NBD connection"),
        }
    }
}

/// Accepts NBD clients on a unix socket until the task is dropped.
pub async fn serve_unix(listener: UnixListener, gateway: Arc<Gateway>, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // A process is a client here: every local client shares one address.
                let pid = stream.peer_cred().ok().and_then(|c| c.pid());
                let client = pid.map_or_else(|| "unix".to_owned(), |pid| format!("unix-pid{pid}"));
                tokio::spawn(connection(stream, gateway.clone(), metrics.clone(), client));
            }
            Err(e) => tracing::warn!(error = %e, "cannot accept an NBD connection"),
        }
    }
}

async fn connection<S>(mut stream: S, gateway: Arc<Gateway>, metrics: Arc<Metrics>, peer: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A client is its address without the port (or its process, on the unix socket): its
    // connections share one attachment.
    let client = match peer.rsplit_once(':') {
        Some((ip, port)) if port.parse::<u16>().is_ok() => ip,
        _ => peer.as_str(),
    };
    let chosen = match handshake::negotiate(&mut stream, &gateway, client).await {
        Ok(Some(chosen)) => chosen,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(client = %peer, error = %e, "NBD negotiation ended");
            return;
        }
    };
    tracing::info!(client = %peer, volume.name = %chosen.name, "NBD client attached");
    let name = chosen.name.clone();
    if let Err(e) = transmission::serve(stream, gateway, metrics, chosen).await {
        tracing::info!(client = %peer, volume.name = %name, error = %e, "NBD connection closed");
    }
}
