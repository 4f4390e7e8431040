use super::*;
use sheepdog_model::ObjectId;
use std::io::{Seek, SeekFrom, Write};

const MIB: u64 = 1 << 20;

fn store() -> (tempfile::TempDir, ObjectStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    (dir, store)
}

fn spec(capacity: u64) -> ObjectSpec {
    ObjectSpec {
        capacity,
        copies: 1,
    }
}

fn oid() -> ObjectId {
    ObjectId::data(1, 0)
}

fn read(store: &ObjectStore, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xAA; len];
    store.read(oid(), offset, &mut buf).unwrap();
    buf
}

#[test]
fn missing_objects_and_holes_read_as_zeros() {
    let (_dir, store) = store();
    assert_eq!(read(&store, 0, 8192), vec![0; 8192]);
    store
        .write(oid(), spec(4 * MIB), 3 * MIB, b"tail", false)
        .unwrap();
    assert_eq!(read(&store, 0, 100), vec![0; 100]);
    assert_eq!(read(&store, 3 * MIB, 4), b"tail");
}

#[test]
fn unaligned_writes_merge_with_neighbours() {
    let (_dir, store) = store();
    store
        .write(oid(), spec(4 * MIB), 0, &[1u8; 10000], false)
        .unwrap();
    store
        .write(oid(), spec(4 * MIB), 4000, &[2u8; 200], false)
        .unwrap();
    let got = read(&store, 0, 12288);
    assert!(got[..4000].iter().all(|&b| b == 1));
    assert!(got[4000..4200].iter().all(|&b| b == 2));
    assert!(got[4200..10000].iter().all(|&b| b == 1));
    assert!(got[10000..].iter().all(|&b| b == 0));
}

#[test]
fn zeroing_frees_space_and_whole_objects_disappear() {
    let (_dir, store) = store();
    store
        .write(oid(), spec(4 * MIB), 0, &vec![7u8; 4 * MIB as usize], true)
        .unwrap();
    let full = store.usage().unwrap();
    assert!(full.bytes >= 4 * MIB, "{full:?}");
    store.zero(oid(), 4096 + 100, 2 * MIB, false).unwrap();
    let punched = store.usage().unwrap();
    assert!(punched.bytes < full.bytes - MIB, "{punched:?} vs {full:?}");
    let got = read(&store, 4096, 4096);
    assert!(got[..100].iter().all(|&b| b == 7) && got[100..].iter().all(|&b| b == 0));
    store.zero(oid(), 0, 4 * MIB, false).unwrap();
    assert_eq!(store.usage().unwrap(), Usage::default());
    assert!(!store.contains(oid()));
}

#[test]
fn out_of_range_io_is_refused() {
    let (_dir, store) = store();
    store.write(oid(), spec(4 * MIB), 0, b"x", false).unwrap();
    let err = store
        .write(oid(), spec(4 * MIB), 4 * MIB - 1, b"xy", false)
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err}");
    let mut buf = [0u8; 2];
    assert!(store.read(oid(), u64::MAX, &mut buf).is_err());
}

#[test]
fn a_flipped_bit_is_an_error_naming_the_object() {
    let (dir, store) = store();
    store
        .write(oid(), spec(4 * MIB), 0, &[9u8; 8192], false)
        .unwrap();
    store.flush().unwrap();
    drop(store);
    let path = dir.path().join("obj").join(oid().to_string());
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    let header = ObjectHeader {
        oid: oid(),
        capacity: 4 * MIB,
        copies: 1,
    };
    file.seek(SeekFrom::Start(header.data_offset() + 4096 + 17))
        .unwrap();
    file.write_all(&[8]).unwrap();
    let store = ObjectStore::open(dir.path()).unwrap();
    let mut buf = [0u8; 512];
    store.read(oid(), 0, &mut buf).unwrap();
    let err = store.read(oid(), 4096, &mut buf).unwrap_err();
    assert!(
        err.to_string().contains(&oid().to_string()) && err.to_string().contains("block 1"),
        "{err}"
    );
}

#[test]
fn half_written_objects_from_a_crash_are_repaired_at_start() {
    let (dir, store) = store();
    store
        .write(oid(), spec(4 * MIB), 0, &[3u8; 4096], false)
        .unwrap();
    // What a kill between the data and checksum writes leaves: new data, old checksum.
    let path = dir.path().join("obj").join(oid().to_string());
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let header = ObjectHeader {
        oid: oid(),
        capacity: 4 * MIB,
        copies: 1,
    };
    file.write_all_at(&[4u8; 4096], header.data_offset())
        .unwrap();
    std::mem::forget(store); // no clean shutdown: the dirty log still names the object
    let store = ObjectStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, 0, 4096), vec![4u8; 4096]);
}

#[test]
fn flushed_objects_are_not_repaired_after_a_crash() {
    let (dir, store) = store();
    store
        .write(oid(), spec(4 * MIB), 0, b"data", false)
        .unwrap();
    store.flush().unwrap();
    let path = dir.path().join("obj").join(oid().to_string());
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let header = ObjectHeader {
        oid: oid(),
        capacity: 4 * MIB,
        copies: 1,
    };
    file.write_all_at(b"rot!", header.data_offset()).unwrap();
    std::mem::forget(store);
    let store = ObjectStore::open(dir.path()).unwrap();
    let mut buf = [0u8; 4];
    let err = store.read(oid(), 0, &mut buf).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn list_names_every_object() {
    let (_dir, store) = store();
    store
        .write(ObjectId::data(3, 1), spec(MIB), 0, b"a", false)
        .unwrap();
    store
        .write(ObjectId::inode(3), spec(MIB), 0, b"b", false)
        .unwrap();
    let mut listed = store.list();
    listed.sort();
    assert_eq!(
        listed,
        vec![(ObjectId::data(3, 1), 1), (ObjectId::inode(3), 1)]
    );
    drop(store);
    let reopened = ObjectStore::open(_dir.path()).unwrap();
    assert_eq!(
        reopened.list().len(),
        2,
        "the index is rebuilt from the headers"
    );
}

mod model {
    //! The store against a plain byte array, over random operation sequences.
    use super::*;
    use proptest::prelude::*;

    const CAP: u64 = 64 * 1024;

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..CAP, 1usize..9000, any::<u8>()).prop_map(|(o, n, b)| {
                let n = n.min((CAP - o) as usize).max(1);
                Op::Write(o.min(CAP - n as u64), vec![b; n])
            }),
            (0..CAP, 1u64..20000).prop_map(|(o, n)| Op::Zero(o, n.min(CAP - o))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn store_matches_a_byte_array(ops in proptest::collection::vec(op(), 1..25)) {
            let (_dir, store) = store();
            let mut model = vec![0u8; CAP as usize];
            for op in ops {
                match op {
                    Op::Write(o, data) => {
                        store.write(oid(), spec(CAP), o, &data, false).unwrap();
                        model[o as usize..o as usize + data.len()].copy_from_slice(&data);
                    }
                    Op::Zero(o, n) => {
                        store.zero(oid(), o, n, false).unwrap();
                        model[o as usize..(o + n) as usize].fill(0);
                    }
                }
            }
            prop_assert!(read(&store, 0, CAP as usize) == model);
        }
    }
}

#[test]
fn put_and_get_move_whole_objects() {
    let (_dir, store) = store();
    let mut data = vec![0u8; 3 * 4096];
    data[4096..8192].fill(5);
    store
        .put(
            oid(),
            ObjectSpec {
                capacity: MIB,
                copies: 3,
            },
            &data,
        )
        .unwrap();
    let (spec, got) = store.get(oid()).unwrap().unwrap();
    assert_eq!(
        spec,
        ObjectSpec {
            capacity: MIB,
            copies: 3
        }
    );
    assert_eq!(got, data[..8192], "trailing zero blocks are left out");
    assert_eq!(read(&store, 4096, 4096), vec![5; 4096]);
    assert_eq!(store.list(), vec![(oid(), 3)]);
    assert!(store.get(ObjectId::data(9, 9)).unwrap().is_none());
}
