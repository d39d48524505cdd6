//! One suite of behaviour every [`Store`] must have, run against `MemStore`
//! and `DiskStore` in both durability modes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{content, DiskHarness, Harness, MemHarness, PatternReader};
use voidbox_cas::{CasError, Corruption, Digest, Durability, MemStore, Store};

/// Sizes around every internal boundary: empty, tiny, the 1 MiB pipeline and
/// stream chunk threshold, and several of a put's 512 KiB units or a
/// stream's chunks, whole and with a ragged end.
const SIZES: &[usize] = &[
    0,
    1,
    4096,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    (3 << 19) + 1,
    2 << 20,
    (3 << 20) + 7,
];

fn put_get_round_trips(h: &dyn Harness) {
    let store = h.store();
    for (seed, &len) in SIZES.iter().enumerate() {
        let data = content(seed as u64, len);
        let digest = store.put(&data).unwrap();
        assert_eq!(digest, Digest::of(&data), "len {len}");
        assert_eq!(store.get(&digest).unwrap(), data, "len {len}");
        assert_eq!(store.size(&digest).unwrap(), Some(len as u64));
        assert!(store.contains(&digest).unwrap());
    }
    assert_eq!(store.list().unwrap().len(), SIZES.len());
}

fn put_reader_streams_with_short_reads(h: &dyn Harness) {
    let store = h.store();
    for (seed, &len) in SIZES.iter().enumerate() {
        let seed = 100 + seed as u64;
        // Odd-sized short reads exercise the chunk-filling loop.
        let mut reader = PatternReader::new(seed, len as u64);
        reader.read_max = 100_003;
        let (digest, n) = store.put_reader(&mut reader).unwrap();
        let expected = content(seed, len);
        assert_eq!(n, len as u64);
        assert_eq!(digest, Digest::of(&expected), "len {len}");
        assert_eq!(store.get(&digest).unwrap(), expected, "len {len}");
    }
}

fn put_reader_reports_input_errors(h: &dyn Harness) {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("pipe broke"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    for before_failure in [10, 3 << 20] {
        let err = h
            .store()
            .put_reader(&mut Failing(before_failure))
            .unwrap_err();
        assert!(matches!(err, CasError::Input(_)), "{err:?}");
        assert!(err.to_string().contains("pipe broke"), "{err}");
    }
    assert!(h.store().list().unwrap().is_empty(), "nothing half-stored");
}

fn dedup_keeps_one_copy(h: &dyn Harness) {
    let store = h.store();
    for len in [5, 3 << 20] {
        let data = content(7, len);
        let a = store.put(&data).unwrap();
        let b = store.put(&data).unwrap();
        let (c, _) = store.put_reader(&mut &data[..]).unwrap();
        assert_eq!((a, b), (c, c));
    }
    assert_eq!(store.list().unwrap().len(), 2);
}

fn copy_to_and_get_to_file_round_trip(h: &dyn Harness) {
    let store = h.store();
    let out_dir = tempfile::tempdir().unwrap();
    for (seed, &len) in SIZES.iter().enumerate() {
        let data = content(200 + seed as u64, len);
        let digest = store.put(&data).unwrap();
        let mut out = Vec::new();
        assert_eq!(store.copy_to(&digest, &mut out).unwrap(), len as u64);
        assert_eq!(out, data);
        let path = out_dir.path().join(format!("out-{len}"));
        std::fs::write(&path, b"old content").unwrap();
        assert_eq!(store.get_to_file(&digest, &path).unwrap(), len as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
    // Only the outputs remain: no temp files next to them.
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        SIZES.len()
    );
}

fn missing_blobs_are_not_found(h: &dyn Harness) {
    let store = h.store();
    let missing = Digest::of(b"never stored");
    for err in [
        store.get(&missing).unwrap_err(),
        store.copy_to(&missing, &mut Vec::new()).unwrap_err(),
        store.pin(&missing).unwrap_err(),
    ] {
        assert!(
            matches!(err, CasError::NotFound(d) if d == missing),
            "{err:?}"
        );
        assert!(err.to_string().contains(&missing.to_string()), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let err = store.get_to_file(&missing, &path).unwrap_err();
    assert!(matches!(err, CasError::NotFound(_)), "{err:?}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    assert_eq!(store.size(&missing).unwrap(), None);
    assert!(!store.contains(&missing).unwrap());
    assert!(!store.remove(&missing).unwrap());
    assert!(!store.unpin(&missing).unwrap());
}

fn list_is_sorted_with_sizes(h: &dyn Harness) {
    let store = h.store();
    let mut expected = Vec::new();
    for seed in 0..20u64 {
        let data = content(seed, seed as usize * 3);
        expected.push((store.put(&data).unwrap(), data.len() as u64));
    }
    expected.sort();
    expected.dedup();
    assert_eq!(store.list().unwrap(), expected);
}

fn pins_and_remove(h: &dyn Harness) {
    let store = h.store();
    let a = store.put(b"pinned").unwrap();
    let b = store.put(b"loose").unwrap();
    store.pin(&a).unwrap();
    store.pin(&a).unwrap();
    assert_eq!(store.pins().unwrap(), vec![a]);
    let err = store.remove(&a).unwrap_err();
    assert!(matches!(err, CasError::Pinned(d) if d == a), "{err:?}");
    assert!(err.to_string().contains("unpin"), "{err}");
    assert!(store.remove(&b).unwrap());
    assert!(!store.contains(&b).unwrap());
    assert!(store.unpin(&a).unwrap());
    assert!(!store.unpin(&a).unwrap());
    assert!(store.pins().unwrap().is_empty());
    assert!(store.remove(&a).unwrap());
    assert!(store.list().unwrap().is_empty());
}

fn gc_keeps_pins_and_roots(h: &dyn Harness) {
    let store = h.store();
    let pinned = store.put(b"pinned").unwrap();
    let rooted = store.put(b"rooted").unwrap();
    let garbage_small = store.put(b"garbage").unwrap();
    let garbage_large = store.put(&content(1, 3 << 20)).unwrap();
    store.pin(&pinned).unwrap();
    let roots = BTreeSet::from([rooted, Digest::of(b"a root that is not stored")]);
    let report = store.gc(&roots).unwrap();
    assert_eq!(report.kept, 2);
    assert_eq!(report.removed, 2);
    assert_eq!(report.bytes_freed, 7 + (3 << 20));
    assert!(store.contains(&pinned).unwrap());
    assert!(store.contains(&rooted).unwrap());
    assert!(!store.contains(&garbage_small).unwrap());
    assert!(!store.contains(&garbage_large).unwrap());
    assert_eq!(store.get(&rooted).unwrap(), b"rooted");
    // Nothing left to collect; then without roots only the pin survives.
    assert_eq!(store.gc(&roots).unwrap().removed, 0);
    let report = store.gc(&BTreeSet::new()).unwrap();
    assert_eq!((report.kept, report.removed), (1, 1));
    assert_eq!(store.list().unwrap(), vec![(pinned, 6)]);
}

/// A damaged blob is reported by every read and by `verify_all`, and its
/// bytes never reach the caller.
fn corruption_is_detected_and_never_handed_out(h: &dyn Harness) {
    let store = h.store();
    let good = store.put(&content(1, 10_000)).unwrap();
    for len in [100usize, (3 << 20) + 5] {
        let flipped = store.put(&content(2 + len as u64, len)).unwrap();
        let truncated = store.put(&content(3 + len as u64, len)).unwrap();
        h.flip_byte(&flipped, len as u64 / 2);
        h.truncate(&truncated, 3);
        for (digest, is_truncation) in [(flipped, false), (truncated, true)] {
            let expect_detail = |detail: &Corruption| match detail {
                Corruption::SizeMismatch { expected, actual } => {
                    assert!(h.records_sizes() && is_truncation, "{detail:?}");
                    assert_eq!((*expected, *actual), (len as u64, len as u64 - 3));
                }
                Corruption::ContentChanged { actual } => {
                    assert!(!(h.records_sizes() && is_truncation), "{detail:?}");
                    assert_ne!(*actual, digest);
                }
                Corruption::BadHeader => panic!("unexpected {detail:?}"),
            };
            let check = |err: CasError| match err {
                CasError::Corrupt {
                    digest: d,
                    ref detail,
                } => {
                    assert_eq!(d, digest);
                    expect_detail(detail);
                    let msg = err.to_string();
                    assert!(msg.contains(&digest.to_string()), "{msg}");
                    assert!(msg.contains("voidbox cas verify"), "{msg}");
                }
                other => panic!("expected Corrupt, got {other:?}"),
            };
            check(store.get(&digest).unwrap_err());
            let mut out = Vec::new();
            check(store.copy_to(&digest, &mut out).unwrap_err());
            assert!(out.is_empty(), "copy_to wrote {} bad bytes", out.len());
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("out");
            std::fs::write(&path, b"previous").unwrap();
            check(store.get_to_file(&digest, &path).unwrap_err());
            assert_eq!(std::fs::read(&path).unwrap(), b"previous");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
        let report = store.verify_all().unwrap();
        let bad: BTreeSet<Digest> = report.corrupt.iter().map(|(d, _)| *d).collect();
        assert!(
            bad.contains(&flipped) && bad.contains(&truncated),
            "{report:?}"
        );
        assert!(!bad.contains(&good));
        for (digest, detail) in &report.corrupt {
            if *digest == truncated && h.records_sizes() {
                assert!(detail.to_string().starts_with("truncated"), "{detail}");
            }
            if *digest == flipped {
                assert!(
                    detail.to_string().starts_with("content changed"),
                    "{detail}"
                );
            }
        }
        // Putting the original content again repairs a truncated blob.
        store.put(&content(3 + len as u64, len)).unwrap();
        assert_eq!(store.get(&truncated).unwrap(), content(3 + len as u64, len));
    }
    assert_eq!(store.get(&good).unwrap(), content(1, 10_000));
    // Remove works on a corrupt blob, so that it can be replaced.
    let (flipped, _) = store.verify_all().unwrap().corrupt[0].clone();
    assert!(store.remove(&flipped).unwrap());
}

fn verify_all_counts_a_healthy_store(h: &dyn Harness) {
    let store = h.store();
    for len in [0, 10, 2 << 20] {
        store.put(&content(9, len)).unwrap();
    }
    let report = store.verify_all().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 3);
    assert_eq!(report.bytes, 10 + (2 << 20));
}

fn shared_across_threads(h: &dyn Harness) {
    let store = h.store();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            scope.spawn(move || {
                for i in 0..10u64 {
                    let same = store.put(b"every thread puts this").unwrap();
                    assert_eq!(store.get(&same).unwrap(), b"every thread puts this");
                    let own = content(t * 1000 + i, (i as usize) * 50_000);
                    let digest = store.put(&own).unwrap();
                    assert_eq!(store.get(&digest).unwrap(), own);
                }
            });
        }
    });
    assert_eq!(store.list().unwrap().len(), 1 + 4 * 10 - 3); // 4 empty blobs dedup to 1
    assert!(store.verify_all().unwrap().is_ok());
}

macro_rules! suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            fn harness() -> Box<dyn Harness> {
                Box::new($make)
            }
            #[test]
            fn put_get_round_trips() {
                super::put_get_round_trips(&*harness());
            }
            #[test]
            fn put_reader_streams_with_short_reads() {
                super::put_reader_streams_with_short_reads(&*harness());
            }
            #[test]
            fn put_reader_reports_input_errors() {
                super::put_reader_reports_input_errors(&*harness());
            }
            #[test]
            fn dedup_keeps_one_copy() {
                super::dedup_keeps_one_copy(&*harness());
            }
            #[test]
            fn copy_to_and_get_to_file_round_trip() {
                super::copy_to_and_get_to_file_round_trip(&*harness());
            }
            #[test]
            fn missing_blobs_are_not_found() {
                super::missing_blobs_are_not_found(&*harness());
            }
            #[test]
            fn list_is_sorted_with_sizes() {
                super::list_is_sorted_with_sizes(&*harness());
            }
            #[test]
            fn pins_and_remove() {
                super::pins_and_remove(&*harness());
            }
            #[test]
            fn gc_keeps_pins_and_roots() {
                super::gc_keeps_pins_and_roots(&*harness());
            }
            #[test]
            fn corruption_is_detected_and_never_handed_out() {
                super::corruption_is_detected_and_never_handed_out(&*harness());
            }
            #[test]
            fn verify_all_counts_a_healthy_store() {
                super::verify_all_counts_a_healthy_store(&*harness());
            }
            #[test]
            fn shared_across_threads() {
                super::shared_across_threads(&*harness());
            }
        }
    };
}

suite!(mem, MemHarness(MemStore::new()));
suite!(disk_immediate, DiskHarness::new(Durability::Immediate));
suite!(disk_deferred, DiskHarness::new(Durability::Deferred));

#[test]
fn the_trait_is_object_safe_and_shareable() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(MemStore::new()),
        Arc::new(voidbox_cas::DiskStore::open(dir.path()).unwrap()),
    ];
    for store in stores {
        let digest = store.put(b"shared").unwrap();
        let clone = Arc::clone(&store);
        let back = std::thread::spawn(move || clone.get(&digest).unwrap())
            .join()
            .unwrap();
        assert_eq!(back, b"shared");
    }
}
