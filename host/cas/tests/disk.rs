//! Behaviour specific to `DiskStore`: layout, crash leftovers, durability
//! modes, dedup without rewriting, damaged headers and open errors.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{content, HEADER_BYTES, PAGE_BYTES};
use voidbox_cas::{CasError, Corruption, Digest, DiskStore, Durability, OpenOptions, Store};

fn open(dir: &Path, durability: Durability) -> DiskStore {
    DiskStore::open_with(
        dir,
        OpenOptions {
            durability,
            ..Default::default()
        },
    )
    .unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_creates_the_layout_and_blobs_land_in_shards() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/cas");
    let store = DiskStore::open(&root).unwrap();
    assert_eq!(entries(&root), ["blobs", "format", "pins", "tmp"]);
    assert_eq!(
        fs::read_to_string(root.join("format")).unwrap(),
        "voidbox-cas 2\n"
    );
    let digest = store.put(b"layout").unwrap();
    let hex = digest.hex();
    let path = root.join("blobs").join(&hex[..2]).join(&hex[2..]);
    assert_eq!(store.blob_path(&digest), path);
    let raw = fs::read(&path).unwrap();
    assert_eq!(&raw[..8], b"VBXBLOB\x02");
    assert_eq!(u64::from_le_bytes(raw[8..16].try_into().unwrap()), 6);
    assert_eq!(&raw[16..], b"layout");
    store.pin(&digest).unwrap();
    assert!(root.join("pins").join(&hex).exists());
}

/// Reads a blob file's header: magic and recorded length.
fn file_header(path: &Path) -> ([u8; 8], u64) {
    let raw = fs::read(path).unwrap();
    (
        raw[..8].try_into().unwrap(),
        u64::from_le_bytes(raw[8..16].try_into().unwrap()),
    )
}

#[test]
fn large_blobs_start_on_a_page_boundary_from_every_kind_of_put() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let mib = 1 << 20;
    // Just under the threshold, at it, and a streamed one above it.
    let small = content(1, mib - 1);
    let at = content(2, mib);
    let streamed = content(3, 3 * mib + 5);
    let d_small = store.put(&small).unwrap();
    let d_at = store.put(&at).unwrap();
    let (d_streamed, n) = store.put_reader(&mut streamed.as_slice()).unwrap();
    assert_eq!(n, streamed.len() as u64);
    for (digest, data, header) in [
        (d_small, &small, HEADER_BYTES),
        (d_at, &at, PAGE_BYTES),
        (d_streamed, &streamed, PAGE_BYTES),
    ] {
        let path = store.blob_path(&digest);
        let raw = fs::read(&path).unwrap();
        assert_eq!(raw.len() as u64, header + data.len() as u64);
        assert_eq!(file_header(&path), (*b"VBXBLOB\x02", data.len() as u64));
        assert!(raw[16..header as usize].iter().all(|&b| b == 0), "padding");
        assert!(raw[header as usize..] == data[..], "content at {header}");
        assert!(store.get(&digest).unwrap() == *data);
        assert_eq!(store.size(&digest).unwrap(), Some(data.len() as u64));
    }
    assert!(store.verify_all().unwrap().corrupt.is_empty());
    // Putting the same content again is a dedup, not a repair.
    let before = fs::metadata(store.blob_path(&d_at)).unwrap().ino();
    store.put(&at).unwrap();
    assert_eq!(fs::metadata(store.blob_path(&d_at)).unwrap().ino(), before);
    // A large blob cut short by less than its padding is a size mismatch
    // that names its length, not a misread small blob.
    let cut = fs::File::options()
        .write(true)
        .open(store.blob_path(&d_at))
        .unwrap();
    cut.set_len(PAGE_BYTES + mib as u64 - 100).unwrap();
    let err = store.get(&d_at).unwrap_err();
    match err {
        CasError::Corrupt {
            detail: Corruption::SizeMismatch { expected, actual },
            ..
        } => assert_eq!((expected, actual), (mib as u64, mib as u64 - 100)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_store_made_before_format_files_keeps_format_1() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // What an earlier voidbox left: blobs with 16-byte headers, no format
    // file, here one large blob.
    let old = content(4, 2 << 20);
    let digest = Digest::of(&old);
    let hex = digest.hex();
    fs::create_dir_all(root.join("blobs").join(&hex[..2])).unwrap();
    fs::create_dir_all(root.join("pins")).unwrap();
    let mut file = b"VBXBLOB\x01".to_vec();
    file.extend_from_slice(&(old.len() as u64).to_le_bytes());
    file.extend_from_slice(&old);
    fs::write(root.join("blobs").join(&hex[..2]).join(&hex[2..]), &file).unwrap();

    let store = DiskStore::open(root).unwrap();
    assert!(!root.join("format").exists(), "the format is not changed");
    assert!(store.get(&digest).unwrap() == old);
    assert_eq!(store.size(&digest).unwrap(), Some(old.len() as u64));
    let new = content(5, 2 << 20);
    let d_new = store.put(&new).unwrap();
    let path = store.blob_path(&d_new);
    assert_eq!(file_header(&path), (*b"VBXBLOB\x01", new.len() as u64));
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        HEADER_BYTES + new.len() as u64
    );
    assert!(store.verify_all().unwrap().corrupt.is_empty());
    let read_only = DiskStore::open_with(
        root,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(read_only.get(&d_new).unwrap() == new);
}

#[test]
fn a_lost_format_file_stops_reads_with_the_fix_instead_of_condemning_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = DiskStore::open(root).unwrap();
    let digest = store.put(b"kept").unwrap();
    drop(store);
    fs::remove_file(root.join("format")).unwrap();
    let store = DiskStore::open(root).unwrap();
    let err = store.get(&digest).unwrap_err().to_string();
    assert!(
        err.contains("format-2 blob in a store of format 1") && err.contains("`voidbox-cas 2`"),
        "{err}"
    );
    let err = store.verify_all().unwrap_err().to_string();
    assert!(err.contains("restore it to `voidbox-cas 2`"), "{err}");
    drop(store);
    fs::write(root.join("format"), "voidbox-cas 2\n").unwrap();
    let store = DiskStore::open(root).unwrap();
    assert_eq!(store.get(&digest).unwrap(), b"kept");
    assert!(store.verify_all().unwrap().corrupt.is_empty());
}

#[test]
fn an_unknown_or_damaged_format_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    drop(DiskStore::open(root).unwrap());
    fs::write(root.join("format"), "voidbox-cas 9\n").unwrap();
    let err = DiskStore::open(root).unwrap_err().to_string();
    assert!(err.contains("format 9") && err.contains("newer"), "{err}");
    assert!(
        err.contains(&root.join("format").display().to_string()),
        "{err}"
    );
    fs::write(root.join("format"), "garbage").unwrap();
    let err = DiskStore::open(root).unwrap_err().to_string();
    assert!(
        err.contains("voidbox-cas N") && err.contains("garbage"),
        "{err}"
    );
}

#[test]
fn leftover_temp_files_of_a_crashed_instance_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    drop(DiskStore::open(root).unwrap());
    let tmp = root.join("tmp");
    assert!(entries(&tmp).is_empty(), "a clean close leaves nothing");
    // What a killed process leaves: its lock file (unlocked, since the
    // process is gone), its temp directory with a half-written blob, and
    // a temp directory whose lock file was already removed.
    fs::write(tmp.join("4242-1-0.lock"), b"").unwrap();
    fs::create_dir(tmp.join("4242-1-0")).unwrap();
    fs::write(tmp.join("4242-1-0/0"), b"half a blob").unwrap();
    fs::create_dir(tmp.join("4242-2-0")).unwrap();
    fs::write(tmp.join("4242-2-0/7"), b"another half").unwrap();
    fs::write(tmp.join("stray"), b"junk").unwrap();

    let store = DiskStore::open(root).unwrap();
    let left = entries(&tmp);
    assert_eq!(
        left.len(),
        2,
        "only the new instance's lock and dir: {left:?}"
    );
    assert!(
        left.iter().all(|name| !name.starts_with("4242-")),
        "{left:?}"
    );
    assert!(
        store.list().unwrap().is_empty(),
        "no half blob became a blob"
    );
}

#[test]
fn a_live_instance_keeps_its_temp_files_when_another_opens() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), Durability::Deferred);
    let digest = first.put(b"pending in the first instance").unwrap();
    assert_eq!(first.pending_count(), 1);
    // A second opener (in another process this would be the same) must not
    // take the first one's temp files for a crash's leftovers.
    let second = open(dir.path(), Durability::Immediate);
    assert_eq!(
        first.get(&digest).unwrap(),
        b"pending in the first instance"
    );
    // Deferred blobs are not visible to other instances until synced.
    assert!(!second.contains(&digest).unwrap());
    first.sync().unwrap();
    assert_eq!(first.pending_count(), 0);
    assert_eq!(
        second.get(&digest).unwrap(),
        b"pending in the first instance"
    );
}

#[test]
fn deferred_puts_stay_out_of_blobs_until_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Deferred);
    // Many small blobs (flushed by several threads) and a large one.
    let mut digests = Vec::new();
    for seed in 0..40u64 {
        digests.push(store.put(&content(seed, 1000 + seed as usize)).unwrap());
    }
    let large = store.put(&content(99, 3 << 20)).unwrap();
    for digest in digests.iter().chain([&large]) {
        // Until sync, a crash must not find anything under the digest.
        assert!(!store.blob_path(digest).exists());
        assert!(store.contains(digest).unwrap());
    }
    assert_eq!(store.list().unwrap().len(), 41);
    assert_eq!(store.get(&large).unwrap(), content(99, 3 << 20));
    store.sync().unwrap();
    assert_eq!(store.pending_count(), 0);
    for digest in digests.iter().chain([&large]) {
        assert!(store.blob_path(digest).exists());
    }
    assert!(store.verify_all().unwrap().is_ok());
    // A batch of one is flushed inline.
    let one = store.put(b"one more").unwrap();
    store.sync().unwrap();
    assert!(store.blob_path(&one).exists());
}

#[test]
fn dropping_a_deferred_store_syncs_it() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let store = open(dir.path(), Durability::Deferred);
        store.put(b"synced on drop").unwrap()
    };
    let store = DiskStore::open(dir.path()).unwrap();
    assert_eq!(store.get(&digest).unwrap(), b"synced on drop");
    assert!(entries(&dir.path().join("tmp")).len() == 2);
}

#[test]
fn removing_and_collecting_pending_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Deferred);
    let a = store.put(b"removed while pending").unwrap();
    let b = store.put(b"collected while pending").unwrap();
    assert!(store.remove(&a).unwrap());
    let report = store.gc(&Default::default()).unwrap();
    assert_eq!((report.removed, report.bytes_freed), (1, 23));
    assert!(!store.contains(&b).unwrap());
    store.sync().unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(!store.blob_path(&a).exists() && !store.blob_path(&b).exists());
}

#[test]
fn putting_existing_content_does_not_rewrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let tmp = dir.path().join("tmp");
    for data in [content(1, 100), content(2, 3 << 20)] {
        let digest = store.put(&data).unwrap();
        let path = store.blob_path(&digest);
        let before = fs::metadata(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.put(&data).unwrap();
        store.put_reader(&mut &data[..]).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(before.ino(), after.ino(), "the blob file was replaced");
        assert_eq!(
            before.mtime_nsec(),
            after.mtime_nsec(),
            "the blob was rewritten"
        );
        if data.len() < 1 << 20 {
            // And no temp file of the discarded duplicates is left behind.
            // (A large put may leave one it made ahead for the next; that
            // it leaves no other is a unit test of the `disk` module.)
            for name in entries(&tmp) {
                if !name.ends_with(".lock") {
                    assert!(entries(&tmp.join(&name)).is_empty(), "{name}");
                }
            }
        }
    }
    // Closing the store removes its temp directory, the file made ahead
    // included.
    drop(store);
    assert!(entries(&tmp).is_empty(), "{:?}", entries(&tmp));
}

#[test]
fn damaged_headers_and_stray_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let short = store.put(b"cut into the header").unwrap();
    let overwritten = store.put(b"magic overwritten").unwrap();
    let grown = store.put(b"grown").unwrap();
    fs::File::options()
        .write(true)
        .open(store.blob_path(&short))
        .unwrap()
        .set_len(5)
        .unwrap();
    let path = store.blob_path(&overwritten);
    let mut raw = fs::read(&path).unwrap();
    raw[0] = b'X';
    fs::write(&path, raw).unwrap();
    let path = store.blob_path(&grown);
    let mut raw = fs::read(&path).unwrap();
    raw.extend_from_slice(b"+extra");
    fs::write(&path, raw).unwrap();
    let stray = dir.path().join("blobs").join("zz");
    fs::write(&stray, b"not a shard").unwrap();

    for digest in [short, overwritten] {
        let err = store.get(&digest).unwrap_err();
        assert!(
            matches!(
                err,
                CasError::Corrupt {
                    detail: Corruption::BadHeader,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let err = store.get(&grown).unwrap_err();
    assert!(
        err.to_string()
            .contains("size mismatch: it should hold 5 bytes but holds 11"),
        "{err}"
    );
    // A length field rewritten to the largest u64 is a size mismatch too.
    let huge = store.put(b"huge length").unwrap();
    let path = store.blob_path(&huge);
    let mut raw = fs::read(&path).unwrap();
    raw[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&path, raw).unwrap();
    let err = store.get(&huge).unwrap_err();
    assert!(
        matches!(
            err,
            CasError::Corrupt {
                detail: Corruption::SizeMismatch {
                    expected: u64::MAX,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    let report = store.verify_all().unwrap();
    assert_eq!(report.corrupt.len(), 4, "{report:?}");
    assert_eq!(report.stray_files, vec![stray]);
}

#[test]
fn large_blobs_stream_through_copy_to_and_get_to_file_verified() {
    // Above the in-memory limit of copy_to (32 MiB), so it verifies in one
    // pass and streams in a second.
    let len = 33 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path().join("cas")).unwrap();
    let data = content(5, len);
    let digest = store.put(&data).unwrap();
    let mut out = Vec::new();
    assert_eq!(store.copy_to(&digest, &mut out).unwrap(), len as u64);
    assert!(out == data);
    let file = dir.path().join("out");
    store.get_to_file(&digest, &file).unwrap();
    assert!(fs::read(&file).unwrap() == data);

    // Damage the last byte: nothing may be written before it is found.
    let blob = fs::File::options()
        .write(true)
        .open(store.blob_path(&digest))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&blob, b"!", PAGE_BYTES + len as u64 - 1).unwrap();
    let mut out = Vec::new();
    let err = store.copy_to(&digest, &mut out).unwrap_err();
    assert!(matches!(err, CasError::Corrupt { .. }), "{err:?}");
    assert!(out.is_empty(), "copy_to handed out {} bytes", out.len());
    let err = store.get_to_file(&digest, &file).unwrap_err();
    assert!(matches!(err, CasError::Corrupt { .. }), "{err:?}");
    assert!(
        fs::read(&file).unwrap() == data,
        "the previous output is intact"
    );
    assert_eq!(entries(dir.path()), ["cas", "out"], "no temp file left");
}

#[test]
fn open_errors_name_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"in the way").unwrap();
    let err = DiskStore::open(&file).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CasError::Io { .. }), "{err:?}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("choose another data directory"), "{msg}");

    let below_a_file = file.join("cas");
    let msg = DiskStore::open(&below_a_file).unwrap_err().to_string();
    assert!(msg.contains(&below_a_file.display().to_string()), "{msg}");

    let missing = dir.path().join("missing");
    let read_only = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let msg = DiskStore::open_with(&missing, read_only.clone())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(
        !missing.exists(),
        "read-only open must not create the store"
    );
}

#[test]
fn a_read_only_store_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let digest = DiskStore::open(dir.path()).unwrap().put(b"kept").unwrap();
    let store = DiskStore::open_with(
        dir.path(),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(store.get(&digest).unwrap(), b"kept");
    assert!(store.verify_all().unwrap().is_ok());
    for err in [
        store.put(b"new").unwrap_err(),
        store.remove(&digest).unwrap_err(),
        store.pin(&digest).unwrap_err(),
        store.gc(&Default::default()).unwrap_err(),
    ] {
        assert!(matches!(err, CasError::ReadOnly { .. }), "{err:?}");
        assert!(err.to_string().contains("read-only"), "{err}");
    }
    assert_eq!(store.list().unwrap(), vec![(digest, 4)]);
}

#[test]
fn digests_in_file_names_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).unwrap();
    let digest = store.put(b"name").unwrap();
    let path = store.blob_path(&digest);
    let shard = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let rest = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        format!("blake3:{shard}{rest}").parse::<Digest>().unwrap(),
        digest
    );
}

/// Copies a directory tree: the state a crash would leave on disk, taken
/// while the store that wrote it is still open (so its locks are not copied).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_crash_before_sync_loses_deferred_blobs_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let crashed = dir.path().join("crashed");
    let store = open(&live, Durability::Deferred);
    let durable = store.put(b"synced before the crash").unwrap();
    store.sync().unwrap();
    let lost = store.put(b"put after the last sync").unwrap();
    let lost_large = store.put(&content(3, 3 << 20)).unwrap();
    copy_tree(&live, &crashed);

    let recovered = DiskStore::open(&crashed).unwrap();
    assert_eq!(recovered.list().unwrap(), vec![(durable, 23)]);
    assert!(!recovered.contains(&lost).unwrap());
    assert!(!recovered.contains(&lost_large).unwrap());
    assert!(recovered.verify_all().unwrap().is_ok());
    // The crashed instance's temp directory is gone; only ours remains.
    assert_eq!(entries(&crashed.join("tmp")).len(), 2);
    // The live store still has everything.
    assert_eq!(store.get(&lost).unwrap(), b"put after the last sync");
}

#[test]
fn reads_racing_a_sync_always_find_deferred_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Deferred);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(Digest, Vec<u8>)>();
        let store = &store;
        let stop = &stop;
        scope.spawn(move || {
            // Every blob handed over must stay readable while `sync` moves
            // it from the temp directory into place.
            for (digest, data) in rx {
                for _ in 0..3 {
                    assert_eq!(store.get(&digest).unwrap(), data);
                    assert_eq!(store.size(&digest).unwrap(), Some(data.len() as u64));
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        scope.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.sync().unwrap();
            }
        });
        for seed in 0..300u64 {
            let data = content(seed, 100 + seed as usize);
            tx.send((store.put(&data).unwrap(), data)).unwrap();
        }
    });
    store.sync().unwrap();
    assert_eq!(store.list().unwrap().len(), 300);
    assert_eq!(store.pending_count(), 0);
}
