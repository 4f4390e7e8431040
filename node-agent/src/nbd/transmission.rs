//! The transmission phase: requests are served concurrently, replies go out as they finish.
//!
//! Memory is bounded: each request takes permits from a per-connection budget in proportion to
//! its payload before its data is read or allocated, so a client (or a slow replica) cannot
//! make the server buffer without limit.

use super::errors::errno;
use super::handshake::Chosen;
use super::proto::*;
use crate::gateway::attach::Attachment;
use crate::gateway::{Gateway, GatewayError, Volume};
use crate::metrics::{Metrics, Op};
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc};

/// Budget of in-flight payload per connection, in KiB.
const BUDGET_KIB: u32 = 128 * 1024;
/// Smallest charge of one request, in KiB: at most 2048 requests in flight.
const MIN_CHARGE_KIB: u32 = 64;

struct Reply {
    handle: u64,
    error: u32,
    data: Option<Vec<u8>>,
}

/// Serves requests until the client disconnects; returns once every reply is sent.
pub async fn serve<S>(
    stream: S,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    chosen: Chosen,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let replies = tokio::spawn(write_replies(writer, rx));
    let budget = Arc::new(Semaphore::new(BUDGET_KIB as usize));
    let (name, volume) = (Arc::<str>::from(chosen.name), chosen.volume);
    let attachment = Arc::new(chosen.attachment);
    let result = loop {
        let mut header = [0u8; REQUEST_LEN];
        if let Err(e) = reader.read_exact(&mut header).await {
            break if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let request = match Request::parse(&header) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(volume.name = %name, error = %e, "closing NBD connection: the client broke the protocol");
                break Ok(());
            }
        };
        if request.kind == CMD_DISC {
            break Ok(());
        }
        if request.length > MAX_PAYLOAD {
            tracing::warn!(volume.name = %name, length = request.length, "refused NBD request larger than 32 MiB");
            if let Err(e) = discard(&mut reader, request.payload_len()).await {
                break Err(e);
            }
            let _ = tx.send(Reply {
                handle: request.handle,
                error: EINVAL,
                data: None,
            });
            continue;
        }
        let charge = (request.length / 1024).max(MIN_CHARGE_KIB);
        let permit = budget
            .clone()
            .acquire_many_owned(charge)
            .await
            .expect("budget is never closed");
        let payload = match read_payload(&mut reader, request.payload_len()).await {
            Ok(payload) => payload,
            Err(e) => break Err(e),
        };
        let (tx, gateway, volume, name) =
            (tx.clone(), gateway.clone(), volume.clone(), name.clone());
        let attachment = attachment.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let reply = handle(&gateway, &volume, &attachment, &name, request, payload).await;
            let bytes = match request.kind {
                CMD_READ | CMD_WRITE => u64::from(request.length),
                _ => 0,
            };
            metrics.request(op(request.kind), bytes, started.elapsed(), reply.error != 0);
            let _ = tx.send(reply);
            drop(permit);
        });
    };
    drop(tx);
    let written = replies.await.unwrap_or_else(|e| Err(io::Error::other(e)));
    result.and(written)
}

fn op(kind: u16) -> Op {
    match kind {
        CMD_READ => Op::Read,
        CMD_WRITE => Op::Write,
        CMD_FLUSH => Op::Flush,
        CMD_TRIM => Op::Trim,
        CMD_WRITE_ZEROES => Op::WriteZeroes,
        _ => Op::Other,
    }
}

async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len as usize);
    reader.read_exact(&mut buf).await?;
    Ok(buf.freeze())
}

async fn discard<R: AsyncRead + Unpin>(reader: &mut R, len: u32) -> io::Result<()> {
    let copied = tokio::io::copy(&mut reader.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

async fn handle(
    gateway: &Gateway,
    volume: &Volume,
    attachment: &Option<Attachment>,
    name: &str,
    req: Request,
    payload: Bytes,
) -> Reply {
    let reply = |error, data| Reply {
        handle: req.handle,
        error,
        data,
    };
    let allowed = match req.kind {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => CMD_FLAG_FUA,
    };
    if req.flags & !allowed != 0 {
        tracing::warn!(
            volume.name = name,
            flags = req.flags,
            kind = req.kind,
            "refused NBD request with unsupported flags"
        );
        return reply(EINVAL, None);
    }
    if matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        let allowed = match attachment {
            Some(attachment) => attachment.check(),
            None => Err(GatewayError::ReadOnly { name: name.into() }),
        };
        if let Err(e) = allowed {
            tracing::warn!(volume.name = name, kind = req.kind, error = %e, "refused an NBD write");
            return reply(errno(&e, req.kind), None);
        }
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (req.offset, u64::from(req.length));
    let result = match req.kind {
        CMD_READ => gateway.read(volume, offset, len).await.map(Some),
        CMD_WRITE => gateway
            .write(volume, offset, payload, fua)
            .await
            .map(|()| None),
        CMD_FLUSH => gateway.flush().await.map(|()| None),
        CMD_TRIM => gateway.zero(volume, offset, len, fua).await.map(|()| None),
        CMD_WRITE_ZEROES if req.flags & CMD_FLAG_NO_HOLE != 0 => {
            let zeros = Bytes::from(vec![0u8; req.length as usize]);
            gateway
                .write(volume, offset, zeros, fua)
                .await
                .map(|()| None)
        }
        CMD_WRITE_ZEROES => gateway.zero(volume, offset, len, fua).await.map(|()| None),
        other => {
            tracing::warn!(
                volume.name = name,
                kind = other,
                "refused unknown NBD command"
            );
            return reply(EINVAL, None);
        }
    };
    match result {
        Ok(data) => reply(0, data),
        Err(e) => {
            tracing::warn!(volume.name = name, kind = req.kind, offset, len, error = %e, "NBD request failed");
            reply(errno(&e, req.kind), None)
        }
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(256 << 10, writer);
    while let Some(mut reply) = rx.recv().await {
        loop {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            header[4..8].copy_from_slice(&reply.error.to_be_bytes());
            header[8..16].copy_from_slice(&reply.handle.to_be_bytes());
            out.write_all(&header).await?;
            if let Some(data) = &reply.data {
                out.write_all(data).await?;
            }
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        out.flush().await?;
    }
    out.shutdown().await
}
