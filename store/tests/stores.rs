//! One behavioural suite run against every `Store`, plus redb-specific tests (persistence,
//! open errors, a real process crash).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use hermes_store::{Batch, Durability, MemoryStore, Op, Store};

/// A store under test, plus whatever must outlive it (a temporary directory).
struct Fixture {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
    }
}

#[cfg(feature = "redb")]
fn redb() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = hermes_store::RedbStore::open(dir.path().join("suite.redb")).expect("open redb");
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

/// The generic suite: every case is a function of a `&dyn Store`.
mod cases {
    use super::*;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    pub fn missing_key_is_none(s: &dyn Store) {
        assert_eq!(s.get(b"nope").unwrap(), None);
        assert!(s.scan_prefix(b"").unwrap().is_empty());
    }

    pub fn put_get_overwrite_delete(s: &dyn Store) {
        s.put(b"k", b"1").unwrap();
        assert_eq!(s.get(b"k").unwrap(), v("1"));
        s.put(b"k", b"2").unwrap();
        assert_eq!(s.get(b"k").unwrap(), v("2"));
        s.delete(b"k").unwrap();
        assert_eq!(s.get(b"k").unwrap(), None);
        // Deleting an absent key is fine.
        s.delete(b"k").unwrap();
        s.delete(b"never").unwrap();
    }

    pub fn odd_keys_and_values(s: &dyn Store) {
        let big = vec![0xabu8; 1 << 20];
        s.put(b"", b"empty key").unwrap();
        s.put(b"empty value", b"").unwrap();
        s.put(&[0, 0xff, 0], &big).unwrap();
        assert_eq!(s.get(b"").unwrap(), v("empty key"));
        assert_eq!(s.get(b"empty value").unwrap(), Some(Vec::new()));
        assert_eq!(s.get(&[0, 0xff, 0]).unwrap(), Some(big));
        assert_eq!(s.get(&[0, 0xff]).unwrap(), None);
    }

    pub fn scan_prefix_is_ordered_and_bounded(s: &dyn Store) {
        let keys: [&[u8]; 10] = [
            b"b",
            b"a/2",
            b"a\xff",
            b"a/10",
            b"",
            b"a/",
            b"\xff\xff",
            b"a",
            b"a/1",
            b"a0",
        ];
        for (i, k) in keys.iter().enumerate() {
            s.put(k, i.to_string().as_bytes()).unwrap();
        }
        let scan = |p: &[u8]| -> Vec<Vec<u8>> {
            s.scan_prefix(p)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let owned = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
        assert_eq!(scan(b"a/"), owned(&[b"a/", b"a/1", b"a/10", b"a/2"]));
        assert_eq!(
            scan(b"a"),
            owned(&[b"a", b"a/", b"a/1", b"a/10", b"a/2", b"a0", b"a\xff"])
        );
        assert_eq!(scan(b"\xff"), owned(&[b"\xff\xff"]));
        assert!(scan(b"c").is_empty());
        assert!(scan(b"a/3").is_empty());
        let mut all = owned(&keys);
        all.sort();
        assert_eq!(scan(b""), all);
        // Values come with their keys.
        let pairs = s.scan_prefix(b"a/1").unwrap();
        assert_eq!(
            pairs,
            vec![
                (b"a/1".to_vec(), b"8".to_vec()),
                (b"a/10".to_vec(), b"3".to_vec())
            ]
        );
    }

    pub fn batch_applies_in_order(s: &dyn Store) {
        s.put(b"gone", b"x").unwrap();
        let mut b = Batch::new();
        b.put("k1", "a")
            .put("k2", "b")
            .delete("k1")
            .put("k3", "old")
            .push(Op::Put {
                key: b"k3".to_vec(),
                value: b"new".to_vec(),
            })
            .delete("gone");
        assert_eq!(b.len(), 6);
        s.write_batch(b).unwrap();
        assert_eq!(s.get(b"k1").unwrap(), None);
        assert_eq!(s.get(b"k2").unwrap(), v("b"));
        assert_eq!(s.get(b"k3").unwrap(), v("new"));
        assert_eq!(s.get(b"gone").unwrap(), None);
        // Empty batches are fine; deferred batches are visible at once, and sync works.
        s.write_batch(Batch::new()).unwrap();
        let mut b = Batch::new();
        b.put("deferred", "yes")
            .set_durability(Durability::Deferred);
        s.write_batch(b).unwrap();
        assert_eq!(s.get(b"deferred").unwrap(), v("yes"));
        s.sync().unwrap();
        assert_eq!(s.get(b"deferred").unwrap(), v("yes"));
    }

    /// Readers never see part of a batch: every snapshot has all ten keys of one generation.
    pub fn batch_is_atomic_to_readers(s: &Arc<dyn Store>) {
        const KEYS: usize = 10;
        const GENERATIONS: u32 = 60;
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let s = Arc::clone(s);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let mut snapshots = 0u32;
                while !done.load(Ordering::Acquire) || snapshots == 0 {
                    let rows = s.scan_prefix(b"gen/").unwrap();
                    assert!(
                        rows.is_empty() || rows.len() == KEYS,
                        "saw {} of {KEYS} keys",
                        rows.len()
                    );
                    if let Some((_, first)) = rows.first() {
                        assert!(
                            rows.iter().all(|(_, v)| v == first),
                            "mixed generations: {rows:?}"
                        );
                    }
                    snapshots += 1;
                }
                snapshots
            })
        };
        for generation in 0..GENERATIONS {
            let mut b = Batch::with_capacity(KEYS);
            // Alternate the order so no key order hides a partial write.
            for i in 0..KEYS {
                let i = if generation % 2 == 0 { i } else { KEYS - 1 - i };
                b.put(format!("gen/{i}"), generation.to_le_bytes());
            }
            b.set_durability(Durability::Deferred);
            s.write_batch(b).unwrap();
        }
        done.store(true, Ordering::Release);
        let snapshots = reader.join().expect("reader saw a torn batch");
        assert!(snapshots > 0);
        let last = s.scan_prefix(b"gen/").unwrap();
        assert_eq!(last.len(), KEYS);
        assert!(
            last.iter()
                .all(|(_, v)| v == &(GENERATIONS - 1).to_le_bytes())
        );
    }

    pub fn concurrent_writers(s: &Arc<dyn Store>) {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = Arc::clone(s);
                thread::spawn(move || {
                    for i in 0..25 {
                        s.put(format!("t{t}/{i:02}").as_bytes(), b"v").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.scan_prefix(b"t").unwrap().len(), 100);
        assert_eq!(s.scan_prefix(b"t3/").unwrap().len(), 25);
    }
}

macro_rules! store_suite {
    ($name:ident, $fixture:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn missing_key_is_none() {
                cases::missing_key_is_none(&*$fixture.store);
            }
            #[test]
            fn put_get_overwrite_delete() {
                cases::put_get_overwrite_delete(&*$fixture.store);
            }
            #[test]
            fn odd_keys_and_values() {
                cases::odd_keys_and_values(&*$fixture.store);
            }
            #[test]
            fn scan_prefix_is_ordered_and_bounded() {
                cases::scan_prefix_is_ordered_and_bounded(&*$fixture.store);
            }
            #[test]
            fn batch_applies_in_order() {
                cases::batch_applies_in_order(&*$fixture.store);
            }
            #[test]
            fn batch_is_atomic_to_readers() {
                cases::batch_is_atomic_to_readers(&$fixture.store);
            }
            #[test]
            fn concurrent_writers() {
                cases::concurrent_writers(&$fixture.store);
            }
        }
    };
}

store_suite!(memory_store, memory());
#[cfg(feature = "redb")]
store_suite!(redb_store, redb());

#[cfg(feature = "redb")]
mod redb_only {
    use std::process::Command;

    use hermes_store::{GroupCommit, GroupCommitConfig, RedbOptions, RedbStore, Store, StoreError};

    use super::*;

    #[test]
    fn open_creates_the_file_and_reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("persist.redb");
        assert!(!path.exists());
        {
            let s = RedbStore::open(&path).unwrap();
            assert!(path.exists());
            assert_eq!(s.path(), path);
            s.put(b"a", b"1").unwrap();
            s.put(b"b", b"2").unwrap();
            s.delete(b"b").unwrap();
            let mut batch = Batch::new();
            batch.put("c", "3").put("d", "4");
            s.write_batch(batch).unwrap();
            let mut batch = Batch::new();
            batch
                .put("e", "deferred")
                .set_durability(Durability::Deferred);
            s.write_batch(batch).unwrap();
            s.sync().unwrap();
        }
        let s =
            RedbStore::open_with(&path, &RedbOptions::new().check_integrity_on_open(true)).unwrap();
        let keys: Vec<_> = s
            .scan_prefix(b"")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            keys,
            [("a", "1"), ("c", "3"), ("d", "4"), ("e", "deferred")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn open_in_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/x.redb");
        let err = RedbStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("create its directory"), "{msg}");
    }

    #[test]
    fn second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.redb");
        let _first = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
        assert!(err.to_string().contains("already open"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.redb");
        std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::Open { .. } | StoreError::Corrupt { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("garbage.redb"), "{msg}");
        assert!(msg.contains("not a store file"), "{msg}");
    }

    /// Environment variable telling the child half of the crash test where to write.
    const CRASH_ENV: &str = "HERMES_STORE_CRASH_CHILD_PATH";

    /// Child half of `committed_writes_survive_a_process_crash`; does nothing in a normal run.
    #[test]
    fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_ENV) else {
            return;
        };
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        store.put(b"direct", b"1").unwrap();
        let commits = GroupCommit::start(store.clone(), GroupCommitConfig::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        commits.put("grouped", "2", move |r| tx.send(r).unwrap());
        rx.recv().unwrap().unwrap();
        // Acknowledged: now die without any cleanup.
        std::process::abort();
    }

    #[test]
    fn committed_writes_survive_a_process_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash.redb");
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "redb_only::crash_child", "--test-threads=1"])
            .env(CRASH_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get(b"direct").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(b"grouped").unwrap(), Some(b"2".to_vec()));
    }
}
