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
    /// Delete a volume, or with `-s` one of its snapshots; frees every object nothing
    /// reads any more.
    Delete {
        /// Delete the snapshot with this tag instead of the volume.
        #[arg(short = 's', long = "snapshot")]
        tag: Option<String>,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Take a read-only snapshot of a volume, e.g. `dog vdi snapshot -s before-upgrade vm1`.
    /// It holds every write acknowledged before the command; the volume stays writable.
    Snapshot {
        /// Tag of the snapshot (default: the next free number).
        #[arg(short = 's', long = "snapshot")]
        tag: Option<String>,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Make a new writable volume from a snapshot, instantly, e.g.
    /// `dog vdi clone -s golden base vm2`.
    Clone {
        /// Tag of the source snapshot.
        #[arg(short = 's', long = "snapshot")]
        tag: String,
        source: String,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Give a volume the content of one of its snapshots again; writes since are dropped.
    Rollback {
        /// Tag of the snapshot to go back to.
        #[arg(short = 's', long = "snapshot")]
        tag: String,
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show volumes, snapshots and clones as a tree.
    Tree {
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
        VdiCommand::Delete { tag, name, target } => {
            let req = v1::DeleteVolumeRequest {
                name,
                tag: tag.unwrap_or_default(),
            };
            volumes(&target)
                .await?
                .delete_volume(req)
                .await
                .map_err(failed)?;
            Ok(())
        }
        VdiCommand::Snapshot { tag, name, target } => {
            let req = v1::SnapshotVolumeRequest {
                name,
                tag: tag.unwrap_or_default(),
            };
            let mut client = volumes(&target).await?;
            let vol = client.snapshot_volume(req).await.map_err(failed)?;
            show(&[vol.into_inner()], target.json)
        }
        VdiCommand::Clone {
            tag,
            source,
            name,
            target,
        } => {
            let req = v1::CloneVolumeRequest { source, tag, name };
            let mut client = volumes(&target).await?;
            let vol = client.clone_volume(req).await.map_err(failed)?;
            show(&[vol.into_inner()], target.json)
        }
        VdiCommand::Rollback { tag, name, target } => {
            let req = v1::RollbackVolumeRequest { name, tag };
            let mut client = volumes(&target).await?;
            let vol = client.rollback_volume(req).await.map_err(failed)?;
            show(&[vol.into_inner()], target.json)
        }
        VdiCommand::Tree { target } => {
            let list = volumes(&target)
                .await?
                .list_volumes(v1::ListVolumesRequest {})
                .await
                .map_err(failed)?;
            print!("{}", tree(&list.into_inner().volumes));
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
    clone: bool,
    tag: &'a str,
    parent_vid: u32,
    created: String,
}

/// Whether `v` is a clone: a writable volume whose parent is another volume's snapshot.
fn is_clone(v: &v1::Volume, all: &[v1::Volume]) -> bool {
    !v.snapshot
        && all
            .iter()
            .any(|p| p.vid == v.parent_vid && p.name != v.name)
}

/// Volumes, snapshots and clones as an indented tree: children under their parent snapshot.
fn tree(vols: &[v1::Volume]) -> String {
    fn label(v: &v1::Volume) -> String {
        let created =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(v.ctime_ns));
        if v.snapshot {
            format!("{}@{} [{created}]", v.name, v.tag)
        } else {
            format!("{} (writable) [{created}]", v.name)
        }
    }
    fn walk(v: &v1::Volume, vols: &[v1::Volume], prefix: &str, last: bool, out: &mut String) {
        let branch = if last { "└─ " } else { "├─ " };
        out.push_str(&format!("{prefix}{branch}{}\n", label(v)));
        let children: Vec<&v1::Volume> = vols.iter().filter(|c| c.parent_vid == v.vid).collect();
        let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
        for (i, child) in children.iter().enumerate() {
            walk(child, vols, &deeper, i + 1 == children.len(), out);
        }
    }
    let mut out = String::new();
    let roots: Vec<&v1::Volume> = vols
        .iter()
        .filter(|v| !vols.iter().any(|p| p.vid == v.parent_vid))
        .collect();
    for (i, root) in roots.iter().enumerate() {
        walk(root, vols, "", i + 1 == roots.len(), &mut out);
    }
    out
}

fn show(vols: &[v1::Volume], json: bool) -> anyhow::Result<()> {
    let rows: Vec<VolumeRow> = vols
        .iter()
        .map(|v| VolumeRow {
            name: &v.name,
            vid: v.vid,
            size: v.size,
            used: v.allocated_bytes,
            shared: v.shared_bytes,
            copies: v.copies,
            object_size: v.object_size,
            snapshot: v.snapshot,
            clone: is_clone(v, vols),
            tag: &v.tag,
            parent_vid: v.parent_vid,
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
        "  {:<20} {:>4} {:>10} {:>10} {:>10} {:<20} {:>8} {:>6} Parent",
        "Name", "Tag", "Size", "Used", "Shared", "Creation time", "VDI id", "Copies"
    );
    for r in rows {
        let kind = match (r.snapshot, r.clone) {
            (true, _) => 's',
            (false, true) => 'c',
            (false, false) => ' ',
        };
        println!(
            "{kind} {:<20} {:>4} {:>10} {:>10} {:>10} {:<20} {:>8x} {:>6} {:x}",
            r.name,
            if r.snapshot { r.tag } else { "" },
            size::format(r.size),
            size::format(r.used),
            size::format(r.shared),
            r.created,
            r.vid,
            r.copies,
            r.parent_vid
        );
    }
    Ok(())
}
