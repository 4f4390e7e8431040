//! Volume data I/O: split at object boundaries, resolve each object's owner in the data table.
//!
//! **Coherence between gateways.** Any number of gateways may have a volume open. A data-table
//! entry only ever moves toward the volume's own vid (0 -> vid on a first write, ancestor -> vid
//! on a copy-on-write); a whole-object TRIM leaves the entry and removes the object, which then
//! reads as zeros. So a cached entry equal to the volume's vid is always right, and any other
//! cached entry is read again from the inode's replicas before it is used: a gateway sees
//! another's first writes and copies as soon as they are acknowledged.
//!
//! Copy-on-write: the first write to an object that an ancestor snapshot owns reads that
//! object whole and creates the volume's own copy on every replica that has none (at the
//! copy version, older than any write, so a copy another gateway made first is kept with its
//! writes),
//! then writes the new data over it and points the table entry at it. Reads and writes of a
//! working volume hold its freeze gate while they run.

use super::{Gateway, GatewayError, Result, Volume};
use crate::freeze::{Change, Entered};
use crate::peer::ReplicaError;
use crate::store::ObjectSpec;
use bytes::Bytes;
use sheepdog_model::{BLOCK_SIZE, Inode, ObjectId};

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
        let snapshot = volume.inode.read().unwrap().snapshot;
        if !snapshot && self.replicas.view().sealed.contains(vid) {
            // This working handle missed the freeze that replaced its vid.
            self.follow(volume, vid, Change::Unknown).await?;
        }
        // A working volume's read waits at the gate as a write does: while a snapshot,
        // rollback or delete holds the vid frozen here, a gateway thawed first may already
        // have acknowledged writes to the new vid, which the old one does not hold.
        let _entered = match snapshot {
            true => None,
            false => Some(self.enter(volume).await?),
        };
        let layout = check(volume, offset, len, false)?;
        let owners = self.owners(volume, &layout, offset, len).await?;
        let mut buf = vec![0u8; len as usize];
        for (seg, owner) in segments(layout.object_size, offset, len).zip(owners) {
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
        self.on_working_vid(volume, || {
            self.write_once(volume, offset, data.clone(), fua)
        })
        .await
    }

    /// Makes `len` bytes at `offset` read as zeros and frees whole objects (TRIM, WRITE_ZEROES).
    pub async fn zero(&self, volume: &Volume, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.on_working_vid(volume, || self.zero_once(volume, offset, len, fua))
            .await
    }

    /// Runs a change, and again on the volume's new vid if replicas refuse the old one as
    /// sealed: this gateway missed the freeze of a snapshot, rollback or delete (it was cut
    /// off), so it looks the volume up again. Nothing was changed on a sealed vid.
    async fn on_working_vid<F: Future<Output = Result<()>>>(
        &self,
        volume: &Volume,
        change: impl Fn() -> F,
    ) -> Result<()> {
        let mut attempts = 0;
        loop {
            match change().await {
                Err(GatewayError::Replica(ReplicaError::Sealed { .. })) if attempts < 3 => {
                    attempts += 1;
                    let vid = volume.vid();
                    tracing::info!(
                        vdi.id = vid,
                        "the volume moved on while this gateway was away; following it"
                    );
                    self.follow(volume, vid, Change::Unknown).await?;
                }
                other => return other,
            }
        }
    }

    async fn write_once(&self, volume: &Volume, offset: u64, data: Bytes, fua: bool) -> Result<()> {
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

    async fn zero_once(&self, volume: &Volume, offset: u64, len: u64, fua: bool) -> Result<()> {
        let _entered = self.enter(volume).await?;
        let layout = check(volume, offset, len, true)?;
        let owners = self.owners(volume, &layout, offset, len).await?;
        for (seg, owner) in segments(layout.object_size, offset, len).zip(owners) {
            let whole = seg.len == layout.object_size;
            let oid = ObjectId::data(layout.vid, seg.index);
            if owner == 0 {
                continue;
            }
            if owner == layout.vid && whole {
                self.replicas.remove(oid, layout.spec()).await?;
            } else if owner == layout.vid {
                self.replicas
                    .zero(oid, layout.spec(), seg.offset, seg.len, fua)
                    .await?;
            } else if whole {
                // The ancestor keeps its object; this volume owns an empty one from now on.
                self.replicas.remove(oid, layout.spec()).await?;
                self.set_owner(volume, seg.index, layout.vid, fua).await?;
            } else {
                self.copy_on_write(volume, &layout, seg, None, fua).await?;
            }
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<()> {
        self.replicas.flush().await
    }

    /// The owner of every object `offset..offset+len` touches. Entries cached as the volume's
    /// own are final; the others are read again from the inode's replicas (another gateway
    /// may have written or copied the object since), and the cache learns what they say.
    async fn owners(
        &self,
        volume: &Volume,
        layout: &Layout,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u32>> {
        let cached: Vec<u32> = segments(layout.object_size, offset, len)
            .map(|seg| owner(volume, seg.index))
            .collect();
        let (Some(first), Some(last)) = (
            cached.iter().position(|&o| o != layout.vid),
            cached.iter().rposition(|&o| o != layout.vid),
        ) else {
            return Ok(cached);
        };
        if volume.inode.read().unwrap().snapshot {
            // A snapshot's table never changes.
            return Ok(cached);
        }
        let index = (offset / layout.object_size) as u32;
        let (from, count) = (index + first as u32, last - first + 1);
        let fresh = self
            .replicas
            .read(
                ObjectId::inode(layout.vid),
                layout.copies,
                Inode::table_offset(from),
                4 * count,
            )
            .await?;
        let mut owners = cached;
        for (k, entry) in fresh.chunks(4).enumerate() {
            let entry = u32::from_le_bytes(entry.try_into().unwrap());
            if owners[first + k] != layout.vid {
                owners[first + k] = entry;
                learn_owner(volume, from + k as u32, entry);
            }
        }
        Ok(owners)
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

    /// Copies an ancestor's object into this volume where no gateway has yet, writes `part`
    /// (or zeros) over it, then points the table entry at the copy.
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
        let range = seg.offset..seg.offset + seg.len;
        let source = self
            .owners(volume, layout, u64::from(seg.index) * layout.object_size, 1)
            .await?[0];
        let oid = ObjectId::data(layout.vid, seg.index);
        if source != layout.vid && source != 0 {
            let from = ObjectId::data(source, seg.index);
            let mut object = self
                .replicas
                .read(from, layout.copies, 0, layout.object_size as usize)
                .await?;
            let used = object
                .chunks(BLOCK_SIZE as usize)
                .rposition(|b| b.iter().any(|&x| x != 0));
            object.truncate(used.map_or(0, |i| (i + 1) * BLOCK_SIZE as usize));
            self.replicas
                .put_if_absent(oid, layout.spec(), Bytes::from(object))
                .await?;
        }
        match part {
            Some(part) => self.write_own(layout, seg, part, fua).await?,
            None if source == 0 => return Ok(()),
            None => {
                self.replicas
                    .zero(oid, layout.spec(), range.start, seg.len, fua)
                    .await?
            }
        }
        if source != layout.vid {
            self.set_owner(volume, seg.index, layout.vid, fua).await?;
        }
        Ok(())
    }
}

/// Records in the cache what the stored table says of object `index`, when that is the
/// volume's own vid (entries only ever move toward it).
fn learn_owner(volume: &Volume, index: u32, entry: u32) {
    let mut inode = volume.inode.write().unwrap();
    let vid = inode.vid;
    if entry == vid
        && let Some(slot) = inode.data_vids.get_mut(index as usize)
    {
        *slot = vid;
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
