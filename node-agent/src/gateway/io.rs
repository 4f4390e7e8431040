//! Volume data I/O: split at object boundaries, resolve each object's owner in the data table.
//!
//! Copy-on-write: the first write to an object that an ancestor snapshot owns reads that
//! object whole, writes it with the new data merged in under the volume's own vid, and only
//! then points the table entry at it. A crash between the two leaves an unreferenced object
//! that the next write replaces. Writes hold the volume's freeze gate while they run.

use super::{Gateway, GatewayError, Result, Volume};
use crate::freeze::Entered;
use crate::store::ObjectSpec;
use bytes::Bytes;
use sheepdog_model::{BLOCK_SIZE, ObjectId};

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

impl Layout {
    fn spec(&self) -> ObjectSpec {
        ObjectSpec {
            capacity: self.object_size,
            copies: self.copies,
        }
    }
}

impl Gateway {
    /// Reads `len` bytes at `offset`; never-written ranges read as zeros.
    pub async fn read(&self, volume: &Volume, offset: u64, len: u64) -> Result<Vec<u8>> {
        let vid = volume.vid();
        if let Some(change) = self.freezer.change(vid)
            && !volume.inode.read().unwrap().snapshot
        {
            self.follow(volume, vid, change).await?;
        }
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
        let _entered = self.enter(volume).await?;
        let layout = check(volume, offset, data.len() as u64, true)?;
        for seg in segments(layout.object_size, offset, data.len() as u64) {
            let part = data.slice(seg.at..seg.at + seg.len as usize);
            match owner(volume, seg.index) {
                owner if owner == layout.vid => {
                    self.write_own(&layout, seg, part, fua).await?;
                }
                0 => {
                    self.write_own(&layout, seg, part, fua).await?;
                    self.set_owner(volume, seg.index, layout.vid, fua).await?;
                }
                _ => {
                    self.copy_on_write(volume, &layout, seg, Some(part), fua)
                        .await?
                }
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros and frees whole objects (TRIM, WRITE_ZEROES).
    pub async fn zero(&self, volume: &Volume, offset: u64, len: u64, fua: bool) -> Result<()> {
        let _entered = self.enter(volume).await?;
        let layout = check(volume, offset, len, true)?;
        for seg in segments(layout.object_size, offset, len) {
            let owner = owner(volume, seg.index);
            let whole = seg.len == layout.object_size;
            if owner == 0 {
                continue;
            }
            if owner != layout.vid {
                if whole {
                    // The ancestor keeps its object; this volume just stops reading it.
                    self.set_owner(volume, seg.index, 0, fua).await?;
                } else {
                    self.copy_on_write(volume, &layout, seg, None, fua).await?;
                }
                continue;
            }
            let oid = ObjectId::data(layout.vid, seg.index);
            if whole {
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

    /// Holds the volume's freeze gate, following the volume to a new vid if a snapshot or
    /// rollback replaced it.
    async fn enter(&self, volume: &Volume) -> Result<Entered> {
        loop {
            {
                // A snapshot's handle never follows its old working volume.
                let inode = volume.inode.read().unwrap();
                if inode.snapshot {
                    let name = inode.name.clone();
                    return Err(GatewayError::ReadOnly { name });
                }
            }
            let vid = volume.vid();
            match self.freezer.enter(vid).await {
                Ok(entered) if volume.vid() == vid => return Ok(entered),
                Ok(_) => continue,
                Err(change) => self.follow(volume, vid, change).await?,
            }
        }
    }

    async fn write_own(&self, layout: &Layout, seg: Segment, part: Bytes, fua: bool) -> Result<()> {
        let oid = ObjectId::data(layout.vid, seg.index);
        self.replicas
            .write(oid, layout.spec(), seg.offset, part, fua)
            .await
    }

    /// Copies an ancestor's object into this volume with `part` (or zeros) merged in, then
    /// points the table entry at the copy.
    async fn copy_on_write(
        &self,
        volume: &Volume,
        layout: &Layout,
        seg: Segment,
        part: Option<Bytes>,
        fua: bool,
    ) -> Result<()> {
        let stripe = (seg.index as usize ^ layout.vid as usize) % self.cow_locks.len();
        let _cow = self.cow_locks[stripe].lock().await;
        let source = owner(volume, seg.index);
        if source == layout.vid || source == 0 {
            // Another write copied it meanwhile (or it was freed): write in place.
            return match part {
                Some(part) => {
                    self.write_own(layout, seg, part, fua).await?;
                    if source == 0 {
                        self.set_owner(volume, seg.index, layout.vid, fua).await?;
                    }
                    Ok(())
                }
                None if source == 0 => Ok(()),
                None => {
                    let oid = ObjectId::data(layout.vid, seg.index);
                    self.replicas
                        .zero(oid, layout.copies, seg.offset, seg.len, fua)
                        .await
                }
            };
        }
        let from = ObjectId::data(source, seg.index);
        let mut object = self
            .replicas
            .read(from, layout.copies, 0, layout.object_size as usize)
            .await?;
        object.resize(layout.object_size as usize, 0);
        let range = seg.offset as usize..(seg.offset + seg.len) as usize;
        match part {
            Some(part) => object[range].copy_from_slice(&part),
            None => object[range].fill(0),
        }
        let oid = ObjectId::data(layout.vid, seg.index);
        // A copy left by an interrupted earlier attempt must not show through the holes.
        self.replicas.remove(oid, layout.copies).await?;
        let runs = nonzero_runs(&object);
        if runs.is_empty() {
            return self.set_owner(volume, seg.index, 0, fua).await;
        }
        let object = Bytes::from(object);
        for run in runs {
            let data = object.slice(run.clone());
            self.replicas
                .write(oid, layout.spec(), run.start as u64, data, fua)
                .await?;
        }
        self.set_owner(volume, seg.index, layout.vid, fua).await
    }
}

/// The byte ranges of `object` to write so that the copy reads the same, holes left out:
/// runs of non-zero 4 KiB blocks, or the whole object when it is too fragmented to be worth it.
fn nonzero_runs(object: &[u8]) -> Vec<std::ops::Range<usize>> {
    const MOST_RUNS: usize = 16;
    let block = BLOCK_SIZE as usize;
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, chunk) in object.chunks(block).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        let start = i * block;
        let end = start + chunk.len();
        match runs.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => runs.push(start..end),
        }
    }
    if runs.len() > MOST_RUNS {
        runs.clear();
        runs.push(0..object.len());
    }
    runs
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

    #[test]
    fn copies_leave_zero_blocks_out() {
        let mut object = vec![0u8; 64 << 10];
        assert!(nonzero_runs(&object).is_empty());
        object[5000] = 1;
        object[8192] = 1;
        object[40000] = 1;
        assert_eq!(nonzero_runs(&object), vec![4096..12288, 36864..40960]);
        object.resize(4 << 20, 0);
        for i in (0..object.len()).step_by(8192) {
            object[i] = 1;
        }
        assert_eq!(nonzero_runs(&object), vec![0..object.len()]);
    }
}
