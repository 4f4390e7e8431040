//! Client side of the replica data channel: one TCP connection per peer, shared by every
//! request to it. A caller writes its request frame itself, under the connection's write lock;
//! a reader task matches replies to waiting callers by request id. A broken connection fails
//! every request waiting on it as unreachable and is replaced on the next request.

use super::ReplicaError;
use super::frames::{REPLY_LEN, Reply, Request, SMALL};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

/// A reply: its header and the bytes that followed it.
type Answer = (Reply, Bytes);

pub struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
    broken: AtomicBool,
}

impl Connection {
    /// Connects to a peer's data port (its gRPC port) within `timeout`.
    pub async fn open(addr: &str, timeout: Duration) -> std::io::Result<Arc<Self>> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let conn = Arc::new(Self {
            writer: tokio::sync::Mutex::new(writer),
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
            broken: AtomicBool::new(false),
        });
        tokio::spawn(read_replies(BufReader::new(reader), Arc::downgrade(&conn)));
        Ok(conn)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Sends `request` (its id is set here) with `payload`, and waits up to `timeout` for the
    /// reply.
    pub async fn call(
        &self,
        node: &str,
        mut request: Request,
        payload: &Bytes,
        timeout: Duration,
    ) -> Result<Answer, ReplicaError> {
        let unreachable = |reason: String| ReplicaError::Unreachable {
            node: node.to_owned(),
            reason,
        };
        request.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(request.id, tx);
        let sent = tokio::time::timeout(timeout, async {
            let mut writer = self.writer.lock().await;
            let header = request.encode();
            if payload.len() <= SMALL as usize {
                let mut frame = Vec::with_capacity(header.len() + payload.len());
                frame.extend_from_slice(&header);
                frame.extend_from_slice(payload);
                writer.write_all(&frame).await
            } else {
                writer.write_all(&header).await?;
                writer.write_all(payload).await
            }
        })
        .await;
        let failure = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("sending the request timed out".to_owned()),
        };
        if let Some(reason) = failure {
            self.waiting.lock().unwrap().remove(&request.id);
            self.broken.store(true, Ordering::Relaxed);
            return Err(unreachable(reason));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(unreachable("the connection closed".into())),
            Err(_) => {
                // A connection that stopped answering (a partition can leave it half open
                // for good) is replaced on the next request.
                self.waiting.lock().unwrap().remove(&request.id);
                self.broken.store(true, Ordering::Relaxed);
                Err(unreachable(format!("no reply within {timeout:?}")))
            }
        }
    }
}

/// Hands each reply to its caller until the connection ends; then fails every waiting call.
async fn read_replies(
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    conn: std::sync::Weak<Connection>,
) {
    let mut header = [0u8; REPLY_LEN];
    loop {
        if reader.read_exact(&mut header).await.is_err() {
            break;
        }
        let Ok(reply) = Reply::decode(&header) else {
            tracing::warn!("a peer sent a malformed reply frame; closing the connection");
            break;
        };
        let mut body = vec![0u8; reply.length as usize];
        if reader.read_exact(&mut body).await.is_err() {
            break;
        }
        let Some(conn) = conn.upgrade() else { return };
        let waiter = conn.waiting.lock().unwrap().remove(&reply.id);
        if let Some(waiter) = waiter {
            let _ = waiter.send((reply, Bytes::from(body)));
        }
    }
    if let Some(conn) = conn.upgrade() {
        conn.broken.store(true, Ordering::Relaxed);
        conn.waiting.lock().unwrap().clear();
    }
}
