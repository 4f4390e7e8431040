//! Volume data I/O: split at object boundaries, resolve each object's owner in the data table.

use super::{Gateway, GatewayError, Result, Volume};
use crate::store::ObjectSpec;
use bytes::Bytes;
use sheepdog_model::ObjectId;

/// One object's part of a volume byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    index: u32,
    /// Offset inside the object.
    offset: u64,
    len: u64,
    /// Offset inside the caller's buffer.
    at: usize,
}

fn segments(object_size: u64, offset: u64, len: u64) -> impl Iterator<Item = Segment> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = pos / object_size;
        let inside = pos % object_size;
        let take = (object_size - inside).min(end - pos);
        let seg = Segment {
            index: index as u32,
            offset: inside,
            len: take,
            at: (pos - offset) as usize,
        };
        pos += take;
        Some(seg)
    })
}

/// What the gateway needs of an inode for one request.
struct Layout {
    vid: u32,
    copies: u8,
    object_size: u64,
}

impl Gateway {
    /// Reads `len` bytes at `offset`; never-written ranges read as zeros.
    pub async fn read(&self, volume: &Volume, offset: u64, len: u64) -> Result<Vec<u8>> {
        let layout = check(volume, offset, len, false)?;
        let mut buf = vec![0u8; len as usize];
        for seg in segments(layout.object_size, offset, len) {
            let owner = owner(volume, seg.index);
            if owner == 0 {
                continue;
            }
            let oid = ObjectId::data(owner, seg.index);
            let data = self
                .replicas
                .read(oid, layout.copies, seg.offset, seg.len as usize)
                .await?;
            buf[seg.at..seg.at + data.len()].copy_from_slice(&data);
        }
        Ok(buf)
    }

    /// Writes `data` at `offset`; with `fua` it is durable when this returns.
    pub async fn write(&self, volume: &Volume, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        let layout = check(volume, offset, data.len() as u64, true)?;
        for seg in segments(layout.object_size, offset, data.len() as u64) {
            let owner = owner(volume, seg.index);
            let oid = ObjectId::data(layout.vid, seg.index);
            let part = data.slice(seg.at..seg.at + seg.len as usize);
            let spec = ObjectSpec {
                capacity: layout.object_size,
                copies: layout.copies,
            };
            self.replicas
                .write(oid, spec, seg.offset, part, fua)
                .await?;
            if owner != layout.vid {
                self.set_owner(volume, seg.index, layout.vid, fua).await?;
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros and frees whole objects (TRIM, WRITE_ZEROES).
    pub async fn zero(&self, volume: &Volume, offset: u64, len: u64, fua: bool) -> Result<()> {
        let layout = check(volume, offset, len, true)?;
        for seg in segments(layout.object_size, offset, len) {
            if owner(volume, seg.index) != layout.vid {
                continue;
            }
            let oid = ObjectId::data(layout.vid, seg.index);
            if seg.len == layout.object_size {
                self.replicas.remove(oid, layout.copies).await?;
                self.set_owner(volume, seg.index, 0, fua).await?;
            } else {
                self.replicas
                    .zero(oid, layout.copies, seg.offset, seg.len, fua)
                    .await?;
            }
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<()> {
        self.replicas.flush().await
    }
}

fn owner(volume: &Volume, index: u32) -> u32 {
    volume
        .inode
        .read()
        .unwrap()
        .data_vids
        .get(index as usize)
        .copied()
        .unwrap_or(0)
}

fn check(volume: &Volume, offset: u64, len: u64, write: bool) -> Result<Layout> {
    let inode = volume.inode.read().unwrap();
    if write && inode.snapshot {
        return Err(GatewayError::ReadOnly {
            name: inode.name.clone(),
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > inode.size) {
        let name = inode.name.clone();
        return Err(GatewayError::OutOfRange {
            name,
            offset,
            len,
            size: inode.size,
        });
    }
    Ok(Layout {
        vid: inode.vid,
        copies: inode.copies,
        object_size: u64::from(inode.object_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_object_boundaries() {
        let segs: Vec<Segment> = segments(100, 250, 120).collect();
        assert_eq!(
            segs,
            vec![
                Segment {
                    index: 2,
                    offset: 50,
                    len: 50,
                    at: 0
                },
                Segment {
                    index: 3,
                    offset: 0,
                    len: 70,
                    at: 50
                },
            ]
        );
        assert_eq!(segments(100, 0, 0).count(), 0);
    }
}
