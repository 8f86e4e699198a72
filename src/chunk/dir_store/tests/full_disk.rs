use std::process::Command;

use super::*;

// ---- full disk --------------------------------------------------------------------------

const NOSPACE_CHILD_ENV: &str = "USTACK_DIRSTORE_NOSPACE_DIR";
const NOSPACE_MARK: &str = "NOSPACE-CHECKS-PASSED";

/// A full disk: runs itself again in a private mount namespace (`unshare -m`, so the
/// mount disappears with the child whatever happens) on a 4 MiB tmpfs.
#[test]
fn a_full_disk_is_no_space_and_leaves_chunks_whole() {
    if let Some(dir) = std::env::var_os(NOSPACE_CHILD_ENV) {
        no_space_child(Path::new(&dir));
        return;
    }
    if !crate::sys::privileged::root_or_skip("mount a small tmpfs (to fill a disk)") {
        return;
    }
    let dir = TempDir::new("nospace");
    fs::create_dir_all(&dir.0).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&exe)
        .args([
            "--exact",
            "chunk::dir_store::tests::full_disk::a_full_disk_is_no_space_and_leaves_chunks_whole",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(NOSPACE_CHILD_ENV, &dir.0)
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(NOSPACE_MARK),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The mount went away with the child's namespace.
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
}

fn no_space_child(dir: &Path) {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "ustack-test"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.join("store");
    let cfg = config(SyncPolicy::Always);
    let store = DirStore::open(&root, cfg).unwrap();
    let (a, b, c) = (ChunkId(0xa), ChunkId(0xb), ChunkId(0xc));
    let a_data = vec![0xA1u8; 1 << 20];
    store.write(a, 0, &a_data).unwrap();
    store.write(a, 0, b"x").unwrap(); // creates a's log
    let mut a_data = a_data;
    a_data[0] = b'x';

    // A create that does not fit: NoSpace, nothing left behind.
    let err = store.write(b, 0, &vec![0xB2u8; 4 << 20]).unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(id) if id == b), "{err:?}");
    assert_eq!(err.status(), crate::proto::Status::NoSpace);
    assert!(matches!(store.stat(b), Err(StoreError::NotFound(_))));
    assert!(!store.tmp_path(b).exists());

    // An extend that does not fit: the chunk is truncated back to what it was.
    let err = store.write(a, 1 << 20, &vec![0xA3u8; 4 << 20]).unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err:?}");
    assert_eq!(read_all(&store, a).unwrap(), a_data);

    // Fill the disk, then overwrite: the redo record does not fit, the chunk is untouched.
    store.write(c, 0, &vec![0xC4u8; 2_700_000]).unwrap();
    let err = store.write(a, 0, &vec![0xA5u8; 1 << 20]).unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err:?}");
    assert_eq!(read_all(&store, a).unwrap(), a_data);

    // Nothing for recovery to do, and space comes back with a delete.
    drop(store);
    let store = DirStore::open(&root, cfg).unwrap();
    let r = *store.recovery();
    assert_eq!(
        (r.chunks, r.overwrites_replayed, r.extends_rolled_back),
        (2, 0, 0),
        "{r:?}"
    );
    assert_eq!(read_all(&store, a).unwrap(), a_data);
    store.delete(c).unwrap();
    store.write(a, 0, &vec![0xA6u8; 1 << 20]).unwrap();
    assert_eq!(read_all(&store, a).unwrap(), vec![0xA6u8; 1 << 20]);
    println!("{NOSPACE_MARK}");
}
