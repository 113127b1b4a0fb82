//! A full disk under a [`RedbStore`]: writes fail with the I/O error while the disk is full,
//! nothing committed before is lost, and once space is freed the same store writes again,
//! without a restart. The disk is a small tmpfs; mounting one needs root (CI runs as root):
//! elsewhere the test says so and passes without running.

use std::path::{Path, PathBuf};
use std::process::Command;

use hermes_store::{Batch, RedbStore, Store, StoreError};

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: usize) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![7u8; bytes]).unwrap();
}

/// Whether `error` is the disk-full I/O error itself (not redb's "previous I/O error", which
/// means the store did not reopen its file).
fn is_disk_full(error: &StoreError) -> bool {
    let text = error.to_string();
    matches!(error, StoreError::Backend { .. }) && text.contains("No space left on device")
}

#[test]
fn a_full_disk_fails_writes_and_freeing_space_heals_the_same_store() {
    let Some(disk) = SmallDisk::mount(8 << 20) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    // Most of the disk taken by another file, to be freed later.
    let filler = disk.path("filler");
    fill(&filler, 5 << 20);
    let store = RedbStore::open(disk.path("hermes.redb")).expect("opens");
    store.put(b"before", b"kept").unwrap();

    let value = vec![1u8; 64 << 10];
    let mut written = 0;
    let error = loop {
        match store.put(format!("k{written}").as_bytes(), &value) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 200, "an 8 MiB disk never filled");
    };
    assert!(is_disk_full(&error), "{error:?}");
    // A batch names no key: its message names the file (as every store error names the file or
    // the key).
    let mut batch = Batch::new();
    batch.put("batched", value.clone());
    let error = store.write_batch(batch).unwrap_err();
    assert!(is_disk_full(&error), "{error:?}");
    assert!(error.to_string().contains("hermes.redb"), "{error}");
    // Still full: each write fails with the cause, and reads find what was committed.
    for _ in 0..3 {
        let again = store.put(b"while-full", &value).unwrap_err();
        assert!(is_disk_full(&again), "{again:?}");
    }
    assert_eq!(store.get(b"before").unwrap().as_deref(), Some(&b"kept"[..]));

    std::fs::remove_file(&filler).unwrap();
    store
        .put(b"after", b"written")
        .expect("writes once space is freed, without a restart");
    assert_eq!(store.get(b"before").unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(
        store.get(b"after").unwrap().as_deref(),
        Some(&b"written"[..])
    );
    assert_eq!(store.get(b"while-full").unwrap(), None);
    assert_eq!(store.scan_prefix(b"k").unwrap().len(), written);
    store.sync().unwrap();
    drop(store);
    // What the healed store wrote is in the file.
    let reopened = RedbStore::open(disk.path("hermes.redb")).expect("reopens");
    assert_eq!(
        reopened.get(b"after").unwrap().as_deref(),
        Some(&b"written"[..])
    );
}
