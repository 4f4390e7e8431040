//! Fixed-newstyle negotiation: greeting, options, and the choice of export.

use super::proto::*;
use crate::gateway::attach::{Access, Attachment};
use crate::gateway::{Gateway, GatewayError, Volume};
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The export a client chose.
pub struct Chosen {
    pub name: String,
    pub volume: Arc<Volume>,
    /// The client's hold on the volume for writing; `None`: it only reads.
    pub attachment: Option<Attachment>,
}

/// Why negotiation ended without an export.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("client asked for unknown export {0:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("refused export {0:?} asked for with NBD_OPT_EXPORT_NAME: {1}")]
    Refused(String, GatewayError),
}

/// Runs option haggling with the client at address `client` (attachments are per client).
/// `Ok(None)`: the client aborted.
pub async fn negotiate<S>(
    stream: &mut S,
    gateway: &Gateway,
    client: &str,
) -> Result<Option<Chosen>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting).await?;
    let no_zeroes = parse_client_flags(stream.read_u32().await?)?;
    loop {
        let mut header = [0u8; OPTION_HEADER_LEN];
        stream.read_exact(&mut header).await?;
        let (option, len) = parse_option_header(&header)?;
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).await?;
        match option {
            OPT_EXPORT_NAME => {
                return export_name(stream, gateway, client, &data, no_zeroes)
                    .await
                    .map(Some);
            }
            OPT_ABORT => {
                reply(stream, option, REP_ACK, &[]).await?;
                return Ok(None);
            }
            OPT_LIST => list(stream, gateway, &data).await?,
            OPT_INFO | OPT_GO => {
                if let Some(chosen) = info(stream, gateway, client, option, &data).await? {
                    return Ok(Some(chosen));
                }
            }
            OPT_STARTTLS => {
                reply_error(
                    stream,
                    option,
                    REP_ERR_POLICY,
                    "TLS is not offered on this port",
                )
                .await?
            }
            _ => reply_error(stream, option, REP_ERR_UNSUP, "option not supported").await?,
        }
    }
}

/// Transmission flags of an export, set truthfully.
pub fn transmission_flags(volume: &Volume, access: Access) -> u16 {
    let base = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_CAN_MULTI_CONN;
    if read_only(volume, access) {
        base | FLAG_READ_ONLY
    } else {
        base
    }
}

fn read_only(volume: &Volume, access: Access) -> bool {
    access == Access::ReadOnly || volume.inode.read().unwrap().snapshot
}

fn export_info(volume: &Volume, access: Access) -> (u64, u16) {
    (
        volume.inode.read().unwrap().size,
        transmission_flags(volume, access),
    )
}

/// Opens export `export` (`NAME`, `NAME@TAG`, `NAME/shared`, `NAME/readonly`).
async fn open(gateway: &Gateway, export: &str) -> Result<(Arc<Volume>, Access), GatewayError> {
    let (name, access) = Access::parse(export);
    Ok((gateway.open_volume(name).await?, access))
}

/// Attaches a volume opened for writing; nothing for one that is only read.
async fn attach(
    gateway: &Gateway,
    client: &str,
    export: &str,
    volume: &Volume,
    access: Access,
) -> Result<Option<Attachment>, GatewayError> {
    if read_only(volume, access) {
        return Ok(None);
    }
    let name = Access::parse(export).0;
    let shared = access == Access::Shared;
    let attachments = gateway.attachments();
    attachments.attach(name, client, shared).await.map(Some)
}

async fn export_name<S>(
    stream: &mut S,
    gateway: &Gateway,
    client: &str,
    data: &[u8],
    no_zeroes: bool,
) -> Result<Chosen, HandshakeError>
where
    S: AsyncWrite + Unpin,
{
    let name = parse_export_name(data).unwrap_or_default();
    let (volume, access) = open(gateway, &name)
        .await
        .map_err(|_| HandshakeError::UnknownExport(name.clone()))?;
    let attachment = attach(gateway, client, &name, &volume, access)
        .await
        .map_err(|e| HandshakeError::Refused(name.clone(), e))?;
    let (size, flags) = export_info(&volume, access);
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    stream.write_all(&out).await?;
    Ok(Chosen {
        name,
        volume,
        attachment,
    })
}

async fn list<S: AsyncWrite + Unpin>(
    stream: &mut S,
    gateway: &Gateway,
    data: &[u8],
) -> io::Result<()> {
    if !data.is_empty() {
        return reply_error(
            stream,
            OPT_LIST,
            REP_ERR_INVALID,
            "NBD_OPT_LIST takes no data",
        )
        .await;
    }
    let dir = gateway.list_volumes().await.unwrap_or_default();
    for inode in dir.visible() {
        let name = if inode.snapshot {
            format!("{}@{}", inode.name, inode.tag)
        } else {
            inode.name.clone()
        };
        let mut entry = (name.len() as u32).to_be_bytes().to_vec();
        entry.extend_from_slice(name.as_bytes());
        reply(stream, OPT_LIST, REP_SERVER, &entry).await?;
    }
    reply(stream, OPT_LIST, REP_ACK, &[]).await
}

async fn info<S>(
    stream: &mut S,
    gateway: &Gateway,
    client: &str,
    option: u32,
    data: &[u8],
) -> io::Result<Option<Chosen>>
where
    S: AsyncWrite + Unpin,
{
    let Some(request) = parse_info_request(data) else {
        reply_error(
            stream,
            option,
            REP_ERR_INVALID,
            "malformed NBD_OPT_INFO/GO data",
        )
        .await?;
        return Ok(None);
    };
    let (volume, access) = match open(gateway, &request.name).await {
        Ok(opened) => opened,
        Err(e @ GatewayError::Store(_)) => {
            reply_error(stream, option, REP_ERR_POLICY, &e.to_string()).await?;
            return Ok(None);
        }
        Err(_) => {
            let msg = format!(
                "no volume named {:?}; `dog vdi list` shows the volumes",
                request.name
            );
            reply_error(stream, option, REP_ERR_UNKNOWN, &msg).await?;
            return Ok(None);
        }
    };
    let attachment = if option == OPT_GO {
        match attach(gateway, client, &request.name, &volume, access).await {
            Ok(attachment) => attachment,
            Err(e) => {
                tracing::warn!(export = %request.name, error = %e, "refused an NBD client");
                reply_error(stream, option, REP_ERR_POLICY, &e.to_string()).await?;
                return Ok(None);
            }
        }
    } else {
        None
    };
    let (size, flags) = export_info(&volume, access);
    let mut export = INFO_EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&size.to_be_bytes());
    export.extend_from_slice(&flags.to_be_bytes());
    reply(stream, option, REP_INFO, &export).await?;
    if request.infos.contains(&INFO_NAME) {
        let mut name = INFO_NAME.to_be_bytes().to_vec();
        name.extend_from_slice(request.name.as_bytes());
        reply(stream, option, REP_INFO, &name).await?;
    }
    if request.infos.contains(&INFO_BLOCK_SIZE) {
        let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for size in [1u32, sheepdog_model::BLOCK_SIZE, MAX_PAYLOAD] {
            sizes.extend_from_slice(&size.to_be_bytes());
        }
        reply(stream, option, REP_INFO, &sizes).await?;
    }
    reply(stream, option, REP_ACK, &[]).await?;
    Ok((option == OPT_GO).then_some(Chosen {
        name: request.name,
        volume,
        attachment,
    }))
}

async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    stream.write_all(&out).await
}

async fn reply_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    kind: u32,
    msg: &str,
) -> io::Result<()> {
    reply(stream, option, kind, msg.as_bytes()).await
}
