//! The gRPC port carries two protocols: gRPC (HTTP/2, and HTTP/1 for `/metrics`) and the
//! replica data channel. Each accepted connection is told apart by its first four bytes,
//! in a task of its own so that a slow client holds up nobody.

use super::PeerApi;
use super::frames::REQUEST_MAGIC;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a new connection may take to send its first bytes.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Accepts connections on `listener`: data-channel ones are served here, the others come out
/// of the returned stream for the gRPC server. Nagle's algorithm is off on all of them:
/// replica requests are small and latency-bound.
pub fn split(
    listener: TcpListener,
    api: Arc<PeerApi>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection on the gRPC port");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tx, api) = (tx.clone(), api.clone());
            tokio::spawn(async move {
                if stream.set_nodelay(true).is_err() {
                    return;
                }
                let mut first = [0u8; 4];
                match tokio::time::timeout(FIRST_BYTES, stream.peek(&mut first)).await {
                    Ok(Ok(4)) if first == REQUEST_MAGIC => {
                        super::frame_server::serve(stream, api).await
                    }
                    Ok(Ok(_)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    _ => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
