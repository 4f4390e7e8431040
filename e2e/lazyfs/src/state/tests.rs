//! The file system's semantics without a mount: what a power cut keeps and drops.

use super::*;

fn state(model: Model) -> (tempfile::TempDir, State) {
    let dir = tempfile::tempdir().unwrap();
    let state = State::new(dir.path(), model).unwrap();
    (dir, state)
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Creates `file` in the root with `data`, fsyncs it and the root; returns its node.
fn durable_file(state: &mut State, file: &str, data: &[u8]) -> u64 {
    let (attr, h) = state.create(ROOT, name(file), 0o644, 0).unwrap();
    state.write(h, 0, data).unwrap();
    state.fsync(h, false).unwrap();
    state.release(h);
    state.fsyncdir(ROOT).unwrap();
    attr.ino
}

fn read_all(state: &mut State, ino: u64) -> Vec<u8> {
    let h = state.open(ino, libc::O_RDONLY).unwrap();
    let data = state.read(h, 0, 1 << 20).unwrap();
    state.release(h);
    data
}

#[test]
fn a_cut_drops_unsynced_data_and_keeps_synced_data() {
    let (dir, mut state) = state(Model::Strict);
    let ino = durable_file(&mut state, "f", b"durable");
    let h = state.open(ino, libc::O_RDWR).unwrap();
    state.write(h, 7, b" and not").unwrap();
    state.release(h);
    assert_eq!(
        read_all(&mut state, ino),
        b"durable and not",
        "a close is no sync"
    );
    assert_eq!(state.getattr(ino).unwrap().size, 15);
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"durable");
    let report = state.cut();
    assert_eq!((report.files, report.bytes, report.undone), (1, 8, 0));
    let ino = state.lookup(ROOT, name("f")).unwrap().ino;
    assert_eq!(read_all(&mut state, ino), b"durable");
}

#[test]
fn handles_opened_before_a_cut_fail_with_eio() {
    let (_dir, mut state) = state(Model::Strict);
    let ino = durable_file(&mut state, "f", b"x");
    let h = state.open(ino, libc::O_RDWR).unwrap();
    assert_eq!(state.cut().handles, 1);
    let err = state.read(h, 0, 1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    state.release(h);
}

#[test]
fn punch_and_truncate_are_unsynced_too() {
    let (_dir, mut state) = state(Model::Strict);
    let ino = durable_file(&mut state, "f", &[9; 8192]);
    let h = state.open(ino, libc::O_RDWR).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    state.fallocate(h, 0, 4096, punch).unwrap();
    state.set_size(ino, 6000).unwrap();
    let data = state.read(h, 0, 1 << 20).unwrap();
    assert_eq!(data.len(), 6000);
    assert!(data[..4096].iter().all(|&b| b == 0) && data[4096..].iter().all(|&b| b == 9));
    state.cut();
    let ino = state.lookup(ROOT, name("f")).unwrap().ino;
    assert_eq!(read_all(&mut state, ino), vec![9; 8192]);
}

#[test]
fn strict_a_new_name_needs_an_fsync_of_its_directory() {
    let (dir, mut state) = state(Model::Strict);
    let (attr, h) = state.create(ROOT, name("new"), 0o644, 0).unwrap();
    state.write(h, 0, b"data").unwrap();
    state.fsync(h, true).unwrap();
    state.release(h);
    let sub = state.mkdir(ROOT, name("sub"), 0o755).unwrap().ino;
    state.fsyncdir(sub).unwrap(); // the directory itself, not its parent
    assert_eq!(state.cut().undone, 2);
    assert!(
        !dir.path().join("new").exists(),
        "the file's name was not durable"
    );
    assert!(!dir.path().join("sub").exists());
    assert!(state.getattr(attr.ino).is_err());
}

#[test]
fn strict_unlink_and_rename_are_undone_until_the_directory_is_synced() {
    let (dir, mut state) = state(Model::Strict);
    durable_file(&mut state, "a", b"old a");
    durable_file(&mut state, "b", b"old b");
    durable_file(&mut state, "c", b"old c");
    state.rename(ROOT, name("a"), ROOT, name("b"), 0).unwrap();
    state.unlink(ROOT, name("c")).unwrap();
    assert_eq!(state.pending_changes(), 3);
    state.cut();
    for (file, data) in [("a", "old a"), ("b", "old b"), ("c", "old c")] {
        assert_eq!(fs::read_to_string(dir.path().join(file)).unwrap(), data);
    }
    state.rename(ROOT, name("a"), ROOT, name("b"), 0).unwrap();
    state.fsyncdir(ROOT).unwrap();
    state.cut();
    assert!(!dir.path().join("a").exists());
    assert_eq!(fs::read_to_string(dir.path().join("b")).unwrap(), "old a");
    let trash = dir.path().join(trash::NAME);
    assert_eq!(
        fs::read_dir(trash).unwrap().count(),
        0,
        "committed removals are gone"
    );
}

#[test]
fn journal_any_fsync_makes_earlier_names_durable() {
    let (dir, mut state) = state(Model::Journal);
    let (_, h) = state.create(ROOT, name("new"), 0o644, 0).unwrap();
    state.write(h, 0, b"data").unwrap();
    state.fsync(h, true).unwrap();
    state.mkdir(ROOT, name("later"), 0o755).unwrap();
    assert_eq!(state.cut().undone, 1);
    assert_eq!(fs::read(dir.path().join("new")).unwrap(), b"data");
    assert!(!dir.path().join("later").exists());
}

#[test]
fn eager_names_are_durable_at_once_but_data_is_not() {
    let (dir, mut state) = state(Model::Eager);
    let (_, h) = state.create(ROOT, name("new"), 0o644, 0).unwrap();
    state.write(h, 0, b"data").unwrap();
    state.unlink(ROOT, name("new")).unwrap();
    let (_, h2) = state.create(ROOT, name("kept"), 0o644, 0).unwrap();
    state.write(h2, 0, b"lost").unwrap();
    assert_eq!(state.cut().undone, 0);
    assert!(!dir.path().join("new").exists());
    assert_eq!(fs::read(dir.path().join("kept")).unwrap(), b"");
}

#[test]
fn the_trash_is_hidden_and_rename_checks_types() {
    let (_dir, mut state) = state(Model::Strict);
    durable_file(&mut state, "f", b"");
    state.mkdir(ROOT, name("d"), 0o755).unwrap();
    let names: Vec<OsString> = state
        .readdir(ROOT)
        .unwrap()
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(state.lookup(ROOT, name(trash::NAME)).is_err());
    let err = state
        .rename(ROOT, name("f"), ROOT, name("d"), 0)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EISDIR));
    let err = state
        .rename(ROOT, name("d"), ROOT, name("f"), 0)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    let err = state
        .rename(ROOT, name("f"), ROOT, name("d"), libc::RENAME_NOREPLACE)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
}

#[test]
fn a_torn_cut_writes_back_some_whole_pages_and_not_others() {
    let mut kept_some = false;
    let mut dropped_some = false;
    for seed in 0..8 {
        let (dir, mut state) = state(Model::Strict);
        let ino = durable_file(&mut state, "f", &[1; 4 * 4096]);
        let h = state.open(ino, libc::O_RDWR).unwrap();
        state.write(h, 100, &[2; 4 * 4096 - 200]).unwrap();
        state.set_size(ino, 2 * 4096).unwrap(); // not written back
        let report = state.cut_torn(seed);
        let data = fs::read(dir.path().join("f")).unwrap();
        assert_eq!(data.len(), 4 * 4096);
        for (i, page) in data.chunks(4096).enumerate() {
            let new = match i {
                0 => [&[1; 100][..], &[2; 3996]].concat(),
                1 => vec![2; 4096],
                _ => vec![1; 4096], // truncated away: the pages are not written back
            };
            let page = page.to_vec();
            assert!(page == new || page == vec![1; 4096], "seed {seed} page {i}");
            kept_some |= i < 2 && page == new;
            dropped_some |= i < 2 && page != new;
        }
        assert!(report.kept <= 4);
    }
    assert!(kept_some && dropped_some);
}
