//! `dog vdi ...`: volume commands.

use super::client::{failed, volumes};
use super::{Target, print_json};
use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use sheepdog_api::v1;
use sheepdog_model::size;
use std::io::{Read, Write};
use std::time::{Duration, UNIX_EPOCH};

/// Bytes moved per request by `vdi read` and `vdi write`.
const CHUNK: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum VdiCommand {
    /// Create a volume, e.g. `dog vdi create -c 3 vm1 10G`.
    Create {
        /// Copies of each object (default: the cluster's).
        #[arg(short = 'c', long = "copies")]
        copies: Option<u8>,
        /// Object size, a power of two from 64K to 64M (default 4M).
        #[arg(long = "object-size", value_parser = parse_size)]
        object_size: Option<u64>,
        name: String,
        #[arg(value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        target: Target,
    },
    /// List volumes.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Delete a volume and free its space.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Change a volume's size.
    Resize {
        name: String,
        #[arg(value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Copy a volume's data to stdout.
    Read {
        name: String,
        #[arg(value_parser = parse_size)]
        offset: Option<u64>,
        #[arg(value_parser = parse_size)]
        len: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Copy stdin into a volume; durable when the command returns.
    Write {
        name: String,
        #[arg(value_parser = parse_size)]
        offset: Option<u64>,
        #[arg(value_parser = parse_size)]
        len: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    size::parse(s).map_err(|e| e.to_string())
}

pub async fn run(cmd: VdiCommand) -> anyhow::Result<()> {
    match cmd {
        VdiCommand::Create {
            copies,
            object_size,
            name,
            size,
            target,
        } => {
            let object_size = u32::try_from(object_size.unwrap_or(0))
                .context("object size must be at most 64M")?;
            let req = v1::CreateVolumeRequest {
                name,
                size,
                copies: u32::from(copies.unwrap_or(0)),
                object_size,
            };
            let vol = volumes(&target)
                .await?
                .create_volume(req)
                .await
                .map_err(failed)?
                .into_inner();
            show(&[vol], target.json)
        }
        VdiCommand::List { target } => {
            let list = volumes(&target)
                .await?
                .list_volumes(v1::ListVolumesRequest {})
                .await
                .map_err(failed)?;
            show(&list.into_inner().volumes, target.json)
        }
        VdiCommand::Delete { name, target } => {
            let req = v1::DeleteVolumeRequest { name };
            volumes(&target)
                .await?
                .delete_volume(req)
                .await
                .map_err(failed)?;
            Ok(())
        }
        VdiCommand::Resize { name, size, target } => {
            let req = v1::ResizeVolumeRequest { name, size };
            let vol = volumes(&target)
                .await?
                .resize_volume(req)
                .await
                .map_err(failed)?
                .into_inner();
            show(&[vol], target.json)
        }
        VdiCommand::Read {
            name,
            offset,
            len,
            target,
        } => read(name, offset, len, target).await,
        VdiCommand::Write {
            name,
            offset,
            len,
            target,
        } => write(name, offset, len, target).await,
    }
}

async fn read(
    name: String,
    offset: Option<u64>,
    len: Option<u64>,
    target: Target,
) -> anyhow::Result<()> {
    let mut client = volumes(&target).await?;
    let vol = client
        .get_volume(v1::GetVolumeRequest { name: name.clone() })
        .await
        .map_err(failed)?
        .into_inner();
    let start = offset.unwrap_or(0);
    let end = match len {
        Some(len) => start
            .checked_add(len)
            .context("offset + length overflows")?,
        None => vol.size,
    };
    anyhow::ensure!(
        start <= end && end <= vol.size,
        "range {start}..{end} is outside volume {name:?} of {} bytes",
        vol.size
    );
    let mut out = std::io::stdout().lock();
    let mut pos = start;
    while pos < end {
        let length = (end - pos).min(CHUNK) as u32;
        let req = v1::ReadVolumeRequest {
            name: name.clone(),
            offset: pos,
            length,
        };
        let data = client
            .read_volume(req)
            .await
            .map_err(failed)?
            .into_inner()
            .data;
        out.write_all(&data)?;
        pos += u64::from(length);
    }
    out.flush()?;
    Ok(())
}

async fn write(
    name: String,
    offset: Option<u64>,
    len: Option<u64>,
    target: Target,
) -> anyhow::Result<()> {
    let mut client = volumes(&target).await?;
    let mut input = std::io::stdin().lock();
    let mut pos = offset.unwrap_or(0);
    let mut left = len.unwrap_or(u64::MAX);
    loop {
        let mut chunk = Vec::with_capacity(CHUNK as usize);
        (&mut input).take(CHUNK.min(left)).read_to_end(&mut chunk)?;
        left -= chunk.len() as u64;
        let last = chunk.len() < CHUNK as usize || left == 0;
        if len.is_some() && last && left > 0 {
            anyhow::bail!("stdin ended {left} bytes short of the requested length");
        }
        let written = chunk.len() as u64;
        let req = v1::WriteVolumeRequest {
            name: name.clone(),
            offset: pos,
            data: chunk.into(),
            fua: last,
        };
        client.write_volume(req).await.map_err(failed)?;
        pos += written;
        if last {
            return Ok(());
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeRow<'a> {
    name: &'a str,
    vid: u32,
    size: u64,
    used: u64,
    shared: u64,
    copies: u32,
    object_size: u32,
    snapshot: bool,
    tag: &'a str,
    created: String,
}

fn show(vols: &[v1::Volume], json: bool) -> anyhow::Result<()> {
    let rows: Vec<VolumeRow> = vols
        .iter()
        .map(|v| VolumeRow {
            name: &v.name,
            vid: v.vid,
            size: v.size,
            used: v.allocated_bytes,
            shared: 0,
            copies: v.copies,
            object_size: v.object_size,
            snapshot: v.snapshot,
            tag: &v.tag,
            created: humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_nanos(v.ctime_ns),
            )
            .to_string(),
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    println!(
        "  {:<20} {:>4} {:>10} {:>10} {:>10} {:<20} {:>8} {:>6} Tag",
        "Name", "Id", "Size", "Used", "Shared", "Creation time", "VDI id", "Copies"
    );
    for r in rows {
        let kind = if r.snapshot { 's' } else { ' ' };
        println!(
            "{kind} {:<20} {:>4} {:>10} {:>10} {:>10} {:<20} {:>8x} {:>6} {}",
            r.name,
            0,
            size::format(r.size),
            size::format(r.used),
            size::format(r.shared),
            r.created,
            r.vid,
            r.copies,
            r.tag
        );
    }
    Ok(())
}
