//! Server side of the replica data channel: one task per connection reads request frames.
//! Small requests (what [`Local`](crate::local::Local) does inline) are answered in
//! that task, in order; larger ones get a task each so that a 4 MiB write does not hold up
//! the 4 KiB ones behind it. Replies go out under the connection's write lock.

use super::PeerApi;
use super::frames::{Op, REPLY_LEN, REQUEST_LEN, Reply, Request, SMALL, Status};
use bytes::Bytes;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex;

/// Serves one data-channel connection until the peer closes it or sends a bad frame.
pub async fn serve(stream: TcpStream, api: Arc<PeerApi>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    let writer = Arc::new(Mutex::new(writer));
    let mut header = [0u8; REQUEST_LEN];
    loop {
        if reader.read_exact(&mut header).await.is_err() {
            return;
        }
        let request = match Request::decode(&header) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(peer, error = %e, "closing a replica data connection");
                return;
            }
        };
        let data = match request.op {
            Op::Write => {
                let mut data = vec![0u8; request.length as usize];
                if reader.read_exact(&mut data).await.is_err() {
                    return;
                }
                Bytes::from(data)
            }
            Op::Read | Op::Flush => Bytes::new(),
        };
        if request.op != Op::Flush && request.length <= SMALL && !request.fua {
            answer(&api, &writer, request, data).await;
        } else {
            let (api, writer) = (api.clone(), writer.clone());
            tokio::spawn(async move { answer(&api, &writer, request, data).await });
        }
    }
}

async fn answer(api: &PeerApi, writer: &Mutex<OwnedWriteHalf>, request: Request, data: Bytes) {
    let result = match request.op {
        Op::Read => api.read_frame(&request).await.map(|b| (Bytes::from(b), 0)),
        Op::Write => api
            .write_frame(&request, data)
            .await
            .map(|newer| (Bytes::new(), newer)),
        Op::Flush => api.flush_frame(&request).await.map(|()| (Bytes::new(), 0)),
    };
    let (status, body, newer) = match result {
        Ok((body, newer)) => (Status::Ok, body, newer),
        Err(e) => {
            tracing::debug!(error = %e, "replica request failed");
            (Status::of(&e), Bytes::from(e.to_string()), 0)
        }
    };
    let reply = Reply {
        status,
        id: request.id,
        epoch: api.view.epoch(),
        length: body.len() as u32,
        newer,
    };
    let small = body.len() <= SMALL as usize;
    let mut frame = Vec::with_capacity(REPLY_LEN + if small { body.len() } else { 0 });
    frame.extend_from_slice(&reply.encode());
    let mut writer = writer.lock().await;
    let sent = if small {
        frame.extend_from_slice(&body);
        writer.write_all(&frame).await
    } else {
        match writer.write_all(&frame).await {
            Ok(()) => writer.write_all(&body).await,
            Err(e) => Err(e),
        }
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot send a replica reply; the peer will retry");
    }
}
