//! The writes to one file that are not durable yet: an in-memory overlay over the backing file.
//!
//! The backing file holds what was last fsynced. The overlay holds every change since, as
//! ranges of new bytes or of zeros (punched holes) plus the file's current size and the
//! lowest size it has had (a truncation cuts the backing bytes past it off, even if the file
//! grows again). Reads combine the two; [`Overlay::apply`] writes the changes to the backing
//! file (an fsync); dropping the overlay is a power cut.

use std::collections::BTreeMap;
use std::io;

/// The backing file, as the overlay reads and changes it.
pub trait Backing {
    /// Fills `buf` from `offset`; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros, freeing their space; keeps the size.
    fn punch(&mut self, offset: u64, len: u64) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// What a range of the overlay holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(data) => data.len() as u64,
            Piece::Zeros(len) => *len,
        }
    }

    /// Bytes `from..to` of this piece.
    fn slice(&self, from: u64, to: u64) -> Piece {
        match self {
            Piece::Data(data) => Piece::Data(data[from as usize..to as usize].to_vec()),
            Piece::Zeros(_) => Piece::Zeros(to - from),
        }
    }
}

/// The unsynced state of one file.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Size of the backing file.
    base: u64,
    /// Size of the file now.
    size: u64,
    /// Lowest size since the last sync: backing bytes from here on were truncated away.
    floor: u64,
    /// Changed ranges by offset; they never overlap and all end at or before `size`.
    pieces: BTreeMap<u64, Piece>,
}

impl Overlay {
    /// No change over a backing file of `base` bytes.
    pub fn new(base: u64) -> Self {
        Self {
            base,
            size: base,
            floor: base,
            pieces: BTreeMap::new(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the file reads exactly as its backing file.
    pub fn is_clean(&self) -> bool {
        self.pieces.is_empty() && self.size == self.base && self.floor == self.base
    }

    /// Bytes of written data the overlay holds (what a power cut loses, besides zeroing and
    /// size changes).
    pub fn pending_bytes(&self) -> u64 {
        self.pieces
            .values()
            .map(|p| match p {
                Piece::Data(data) => data.len() as u64,
                Piece::Zeros(_) => 0,
            })
            .sum()
    }

    /// Pages (of `page` bytes) that hold a change of data: a write or a hole.
    pub fn dirty_pages(&self, page: u64) -> std::collections::BTreeSet<u64> {
        let mut pages = std::collections::BTreeSet::new();
        for (&start, piece) in &self.pieces {
            pages.extend(start / page..(start + piece.len()).div_ceil(page));
        }
        pages
    }

    /// Writes `data` at `offset`, growing the file if it ends past its size.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        self.cut_out(offset, end);
        self.pieces.insert(offset, Piece::Data(data.to_vec()));
        self.size = self.size.max(end);
    }

    /// Makes `len` bytes at `offset` read as zeros (a punched hole); the size is kept.
    pub fn zero(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return;
        }
        self.cut_out(offset, end);
        self.pieces.insert(offset, Piece::Zeros(end - offset));
    }

    /// Truncates or extends the file to `len` bytes; new bytes read as zeros.
    pub fn set_len(&mut self, len: u64) {
        if len < self.size {
            self.cut_out(len, self.size);
            self.floor = self.floor.min(len);
        }
        self.size = len;
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the file).
    pub fn read(&self, backing: &impl Backing, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let from_backing = end.min(self.floor).saturating_sub(offset);
        if from_backing > 0 {
            backing.read_at(&mut buf[..from_backing as usize], offset)?;
        }
        for (&start, piece) in self.overlapping(offset, end) {
            let (from, to) = (start.max(offset), (start + piece.len()).min(end));
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            match piece {
                Piece::Data(data) => {
                    dst.copy_from_slice(&data[(from - start) as usize..(to - start) as usize])
                }
                Piece::Zeros(_) => dst.fill(0),
            }
        }
        Ok(buf)
    }

    /// Writes every change to `backing`, which then reads as this overlay does. The caller
    /// syncs the backing file and starts a new overlay over it (`Overlay::new(size)`).
    pub fn apply(&self, backing: &mut impl Backing) -> io::Result<()> {
        if self.floor < self.base {
            backing.set_len(self.floor)?;
        }
        // The backing file now has `floor` bytes (the floor never exceeds the base).
        if self.size != self.floor {
            backing.set_len(self.size)?;
        }
        for (&start, piece) in &self.pieces {
            match piece {
                Piece::Data(data) => backing.write_at(data, start)?,
                // Past the floor the backing file was truncated: it reads as zeros already.
                Piece::Zeros(len) if start < self.floor => {
                    let end = (start + len).min(self.floor);
                    backing.punch(start, end - start)?
                }
                Piece::Zeros(_) => {}
            }
        }
        Ok(())
    }

    /// Pieces overlapping `from..to`, by offset.
    fn overlapping(&self, from: u64, to: u64) -> impl Iterator<Item = (&u64, &Piece)> {
        let first = self
            .pieces
            .range(..from)
            .next_back()
            .filter(|(start, piece)| **start + piece.len() > from)
            .map_or(from, |(start, _)| *start);
        self.pieces.range(first..to)
    }

    /// Removes `from..to` from the pieces, keeping the parts of pieces outside it.
    fn cut_out(&mut self, from: u64, to: u64) {
        let hit: Vec<u64> = self.overlapping(from, to).map(|(s, _)| *s).collect();
        for start in hit {
            let piece = self.pieces.remove(&start).expect("listed just above");
            let end = start + piece.len();
            if start < from {
                self.pieces.insert(start, piece.slice(0, from - start));
            }
            if end > to {
                self.pieces.insert(to, piece.slice(to - start, end - start));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A backing file in memory.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    struct Bytes(Vec<u8>);

    impl Backing for Bytes {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.0.get(offset as usize + i).copied().unwrap_or(0);
            }
            Ok(())
        }
        fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
            let end = offset as usize + data.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn punch(&mut self, offset: u64, len: u64) -> io::Result<()> {
            let end = ((offset + len) as usize).min(self.0.len());
            if (offset as usize) < end {
                self.0[offset as usize..end].fill(0);
            }
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.0.resize(len as usize, 0);
            Ok(())
        }
    }

    fn whole(overlay: &Overlay, backing: &Bytes) -> Vec<u8> {
        overlay.read(backing, 0, u64::MAX / 2).unwrap()
    }

    #[test]
    fn reads_combine_new_writes_with_the_backing_file() {
        let backing = Bytes(vec![1; 10]);
        let mut overlay = Overlay::new(10);
        overlay.write(8, &[2, 2, 2, 2]);
        overlay.write(2, &[3, 3]);
        assert_eq!(
            whole(&overlay, &backing),
            [1, 1, 3, 3, 1, 1, 1, 1, 2, 2, 2, 2]
        );
        assert_eq!(overlay.read(&backing, 3, 2).unwrap(), [3, 1]);
        assert_eq!(overlay.read(&backing, 11, 5).unwrap(), [2]);
        assert!(overlay.read(&backing, 12, 5).unwrap().is_empty());
        assert_eq!(overlay.pending_bytes(), 6);
        assert_eq!(
            overlay.dirty_pages(4).into_iter().collect::<Vec<_>>(),
            [0, 2]
        );
    }

    #[test]
    fn a_truncation_hides_the_backing_bytes_even_after_growing_again() {
        let backing = Bytes(vec![7; 8]);
        let mut overlay = Overlay::new(8);
        overlay.set_len(3);
        overlay.set_len(6);
        overlay.write(7, &[9]);
        assert_eq!(whole(&overlay, &backing), [7, 7, 7, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn apply_makes_the_backing_file_read_as_the_overlay_and_punches_holes() {
        let mut backing = Bytes(vec![5; 16]);
        let mut overlay = Overlay::new(16);
        overlay.zero(2, 4);
        overlay.write(14, &[1, 2, 3, 4]);
        let expected = whole(&overlay, &backing);
        overlay.apply(&mut backing).unwrap();
        assert_eq!(backing.0, expected);
        assert!(!overlay.is_clean());
        assert!(Overlay::new(18).is_clean());
    }

    #[test]
    fn zeroing_keeps_the_size() {
        let backing = Bytes(vec![5; 4]);
        let mut overlay = Overlay::new(4);
        overlay.zero(2, 100);
        assert_eq!(whole(&overlay, &backing), [5, 5, 0, 0]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
        SetLen(u64),
        Read(u64, u64),
        /// fsync: apply, then a fresh overlay.
        Sync,
        /// Power cut: the overlay is dropped.
        Cut,
    }

    fn op() -> impl Strategy<Value = Op> {
        let at = 0u64..3000;
        prop_oneof![
            4 => (at.clone(), 1usize..700, any::<u8>())
                .prop_map(|(o, n, b)| Op::Write(o, (0..n).map(|i| b.wrapping_add(i as u8)).collect())),
            2 => (at.clone(), 0u64..900).prop_map(|(o, n)| Op::Zero(o, n)),
            1 => at.clone().prop_map(Op::SetLen),
            2 => (at, 0u64..1200).prop_map(|(o, n)| Op::Read(o, n)),
            1 => Just(Op::Sync),
            1 => Just(Op::Cut),
        ]
    }

    fn set_len(v: &mut Vec<u8>, len: u64) {
        v.resize(len as usize, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Against a byte array for the file as it reads now and one for what is durable.
        #[test]
        fn behaves_as_a_file_that_loses_unsynced_changes(
            initial in proptest::collection::vec(any::<u8>(), 0..2000),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let mut backing = Bytes(initial.clone());
            let mut overlay = Overlay::new(initial.len() as u64);
            let (mut now, mut durable) = (initial.clone(), initial);
            for op in ops {
                match op {
                    Op::Write(o, data) => {
                        overlay.write(o, &data);
                        let end = o as usize + data.len();
                        if now.len() < end { now.resize(end, 0); }
                        now[o as usize..end].copy_from_slice(&data);
                    }
                    Op::Zero(o, n) => {
                        overlay.zero(o, n);
                        let end = ((o + n) as usize).min(now.len());
                        if (o as usize) < end { now[o as usize..end].fill(0); }
                    }
                    Op::SetLen(n) => {
                        overlay.set_len(n);
                        set_len(&mut now, n);
                    }
                    Op::Read(o, n) => {
                        let got = overlay.read(&backing, o, n).unwrap();
                        let from = (o as usize).min(now.len());
                        let to = ((o + n) as usize).min(now.len());
                        prop_assert_eq!(got, now[from..to].to_vec());
                    }
                    Op::Sync => {
                        overlay.apply(&mut backing).unwrap();
                        prop_assert_eq!(&backing.0, &now);
                        overlay = Overlay::new(backing.0.len() as u64);
                        prop_assert!(overlay.is_clean());
                        durable = now.clone();
                    }
                    Op::Cut => {
                        overlay = Overlay::new(backing.0.len() as u64);
                        now = durable.clone();
                    }
                }
                prop_assert_eq!(overlay.size(), now.len() as u64);
                prop_assert_eq!(whole(&overlay, &backing), now.clone());
                prop_assert_eq!(&backing.0, &durable, "only a sync changes the backing file");
            }
        }
    }
}
