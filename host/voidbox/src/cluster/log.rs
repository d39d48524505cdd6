//! The replica's protocol log: the PBFT core's [`Record`]s appended to one
//! file in the order they were written, synced before any message that
//! depends on them leaves (the driver calls [`ProtocolLog::append`] once per
//! step, before sending). After a stable checkpoint the records recovery no
//! longer needs are dropped, with the same rule as
//! [`voidbox_pbft::compact_records`], and the file is rewritten once enough
//! of it is dead.
//!
//! Why a plain file and not the host's database: a step appends a few
//! records and must be durable before its messages leave, nothing else.
//! A database commit per step cost about 70 µs of CPU even without fsync
//! (a tenth of a replica's work per request with one client); one `write`
//! and, with fsync, one `fdatasync` do the same job.
//!
//! The file is a magic header, then frames: a `u32` little-endian length,
//! the first 8 bytes of the blake3 hash of the body, and the body (the
//! record's canonical encoding). Appends go to the end and are synced as a
//! whole, so after a crash only the part written after the last sync can be
//! damaged: reading stops at the first frame that is cut short or fails its
//! hash, and the file is cut there (those records were never synced, so no
//! message depending on them left). A frame whose hash matches but whose
//! record does not decode is another version's file: an error, never
//! skipped, since skipping could forget a promise the replica made.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use voidbox_pbft::Record;

use crate::{Error, Result};

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"VBPLOG01";
/// Length and hash in front of every record.
const FRAME_HEADER: usize = 12;
/// The file is rewritten when its dead bytes exceed both this and the live
/// bytes (so the rewrite's cost stays proportional to what it frees).
const REWRITE_DEAD_BYTES_MIN: u64 = 4 << 20;

/// What compaction needs to know of a record, and its frame for a rewrite.
#[derive(Debug, Clone)]
struct Meta {
    stable: bool,
    view: bool,
    seq: Option<u64>,
    frame: Vec<u8>,
}

impl Meta {
    fn of(r: &Record, frame: Vec<u8>) -> Meta {
        Meta {
            stable: matches!(r, Record::Stable(_)),
            view: matches!(r, Record::View { .. } | Record::NewView(_)),
            seq: r.seq(),
            frame,
        }
    }
}

/// The log.
#[derive(Debug)]
pub struct ProtocolLog {
    file: File,
    path: PathBuf,
    fsync: bool,
    /// The live records, in order.
    metas: Vec<Meta>,
    /// Bytes in the file (header and every frame, live or dead).
    file_bytes: u64,
    /// Bytes of the live records' frames.
    live_bytes: u64,
    /// One step's frames, gathered for one write.
    scratch: Vec<u8>,
}

fn hash8(body: &[u8]) -> [u8; 8] {
    let h = blake3::hash(body);
    let mut out = [0; 8];
    out.copy_from_slice(&h.as_bytes()[..8]);
    out
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&hash8(body));
    f.extend_from_slice(body);
    f
}

/// Reads the frames of `bytes` (the file after its header) and returns the
/// records with their frames, and how many bytes were whole and intact.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<(Record, Vec<u8>)>, usize)> {
    let mut at = 0;
    let mut out = Vec::new();
    while bytes.len() - at >= FRAME_HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(body) = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len) else {
            break;
        };
        if bytes[at + 4..at + FRAME_HEADER] != hash8(body) {
            break;
        }
        let record = Record::decode(body).ok_or_else(|| {
            Error::Cluster(format!(
                "{}: protocol record at byte {} does not decode; this log was written by another version of voidbox",
                path.display(),
                MAGIC.len() + at
            ))
        })?;
        out.push((record, bytes[at..at + FRAME_HEADER + len].to_vec()));
        at += FRAME_HEADER + len;
    }
    Ok((out, at))
}

impl ProtocolLog {
    /// Opens (or creates) the log at `path` and returns it with the records
    /// it holds, in order. A damaged tail (a write a crash cut short, never
    /// synced) is cut off.
    pub fn open(path: &Path, fsync: bool) -> Result<(ProtocolLog, Vec<Record>)> {
        let io = |hint| Error::io(path, hint);
        // A rewrite that a crash interrupted before its rename: the log
        // itself is still whole.
        let _ = std::fs::remove_file(tmp_path(path));
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io("cannot create the protocol log"))?;
                f.write_all(MAGIC)
                    .map_err(io("cannot write the protocol log"))?;
                if fsync {
                    f.sync_all().map_err(io("cannot sync the protocol log"))?;
                    sync_dir(path)?;
                }
                f
            }
            Err(e) => return Err(io("cannot open the protocol log")(e)),
        };
        let mut bytes = Vec::new();
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(io("cannot seek in the protocol log"))?;
        file.read_to_end(&mut bytes)
            .map_err(io("cannot read the protocol log"))?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::Cluster(format!(
                "{} is not a voidbox protocol log (wrong header); was it written by another version of voidbox?",
                path.display()
            )));
        }
        let (parsed, intact) = parse(path, &bytes[MAGIC.len()..])?;
        let good = (MAGIC.len() + intact) as u64;
        if good < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                kept = good,
                cut = bytes.len() as u64 - good,
                "the protocol log ends in a write a crash cut short; cutting it off"
            );
            file.set_len(good)
                .map_err(io("cannot cut the protocol log's damaged tail"))?;
            if fsync {
                file.sync_all()
                    .map_err(io("cannot sync the protocol log"))?;
            }
        }
        // Appends go after the last good frame.
        file.seek(std::io::SeekFrom::Start(good))
            .map_err(io("cannot seek in the protocol log"))?;
        let mut records = Vec::with_capacity(parsed.len());
        let mut metas = Vec::with_capacity(parsed.len());
        let mut live_bytes = 0;
        for (record, frame) in parsed {
            live_bytes += frame.len() as u64;
            metas.push(Meta::of(&record, frame));
            records.push(record);
        }
        let mut log = ProtocolLog {
            file,
            path: path.to_path_buf(),
            fsync,
            metas,
            file_bytes: good,
            live_bytes,
            scratch: Vec::new(),
        };
        // What a crash before the last compaction's rewrite left behind.
        if log.metas.iter().any(|m| m.stable) {
            log.compact();
            log.maybe_rewrite()?;
        }
        Ok((log, records))
    }

    /// Appends records with one write, synced when the cluster runs with
    /// fsync. Compacts after a stable checkpoint.
    pub fn append(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.scratch.clear();
        let mut stable = false;
        for r in records {
            let frame = frame_of(&r.encode());
            self.scratch.extend_from_slice(&frame);
            let meta = Meta::of(r, frame);
            stable |= meta.stable;
            self.live_bytes += meta.frame.len() as u64;
            self.metas.push(meta);
        }
        let io = |hint| Error::io(&self.path, hint);
        self.file
            .write_all(&self.scratch)
            .map_err(io("cannot append to the protocol log"))?;
        self.file_bytes += self.scratch.len() as u64;
        if self.fsync {
            self.file
                .sync_data()
                .map_err(io("cannot sync the protocol log"))?;
        }
        if stable {
            self.compact();
            self.maybe_rewrite()?;
        }
        Ok(())
    }

    /// Records held (after compaction).
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Drops from `metas` what recovery no longer needs: keep the latest
    /// stable checkpoint, the latest view record, and every record about a
    /// sequence number above the stable checkpoint.
    fn compact(&mut self) {
        let stable = self.metas.iter().rposition(|m| m.stable);
        let stable_seq = stable.and_then(|i| self.metas[i].seq).unwrap_or(0);
        let view = self.metas.iter().rposition(|m| m.view);
        let mut i = 0;
        let mut dropped = 0;
        self.metas.retain(|m| {
            let keep = Some(i) == stable
                || Some(i) == view
                || (!m.stable && m.seq.is_some_and(|s| s > stable_seq));
            i += 1;
            if !keep {
                dropped += m.frame.len() as u64;
            }
            keep
        });
        self.live_bytes -= dropped;
    }

    /// Rewrites the file with the live records only, once the dead ones
    /// outweigh them: into a new file, synced, renamed over the log (the
    /// old file stays whole until the rename).
    fn maybe_rewrite(&mut self) -> Result<()> {
        let dead = self
            .file_bytes
            .saturating_sub(MAGIC.len() as u64 + self.live_bytes);
        if dead < REWRITE_DEAD_BYTES_MIN.max(self.live_bytes) {
            return Ok(());
        }
        self.rewrite()
    }

    fn rewrite(&mut self) -> Result<()> {
        let tmp = tmp_path(&self.path);
        let io = |hint| Error::io(&tmp, hint);
        let mut bytes = Vec::with_capacity(MAGIC.len() + self.live_bytes as usize);
        bytes.extend_from_slice(MAGIC);
        for m in &self.metas {
            bytes.extend_from_slice(&m.frame);
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io("cannot create the protocol log's rewrite"))?;
        f.write_all(&bytes)
            .map_err(io("cannot write the protocol log's rewrite"))?;
        if self.fsync {
            f.sync_all()
                .map_err(io("cannot sync the protocol log's rewrite"))?;
        }
        std::fs::rename(&tmp, &self.path)
            .map_err(io("cannot rename the protocol log's rewrite"))?;
        if self.fsync {
            sync_dir(&self.path)?;
        }
        tracing::debug!(
            before = self.file_bytes,
            after = bytes.len(),
            "protocol log rewritten"
        );
        self.file = f;
        self.file_bytes = bytes.len() as u64;
        Ok(())
    }
}

/// Moves the records of a log kept by an older voidbox in a redb file
/// (`old`) into a new log file at `path`, synced, then removes `old`. A
/// replica must not forget what it promised across an upgrade.
pub fn migrate_redb_log(old: &Path, path: &Path) -> Result<()> {
    use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
    const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("pbft_records");
    let db_err = |e: &dyn std::fmt::Display| Error::Db {
        path: old.to_path_buf(),
        detail: format!("{e}; cannot read the older protocol log to move it"),
    };
    let records = {
        let db = Database::open(old).map_err(|e| db_err(&e))?;
        let txn = db.begin_read().map_err(|e| db_err(&e))?;
        let mut records = Vec::new();
        match txn.open_table(RECORDS) {
            Ok(table) => {
                for row in table.iter().map_err(|e| db_err(&e))? {
                    let (k, v) = row.map_err(|e| db_err(&e))?;
                    let r = Record::decode(v.value()).ok_or_else(|| {
                        Error::Cluster(format!(
                            "{}: protocol record {} does not decode; this log was written by another version of voidbox",
                            old.display(),
                            k.value()
                        ))
                    })?;
                    records.push(r);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(&e)),
        }
        records
    };
    let _ = std::fs::remove_file(path);
    let (mut log, _) = ProtocolLog::open(path, true)?;
    log.append(&records)?;
    drop(log);
    std::fs::remove_file(old).map_err(Error::io(old, "cannot remove the older protocol log"))?;
    sync_dir(path)?;
    tracing::info!(
        records = records.len(),
        "moved the protocol log out of redb"
    );
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".rewrite");
    path.with_file_name(name)
}

/// Makes a file's creation or rename in its directory durable.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir, "cannot sync the replica's data directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use voidbox_pbft::{compact_records, Digest};

    fn committed(seq: u64) -> Record {
        Record::Committed {
            view: 0,
            seq,
            digest: Digest::default(),
        }
    }

    fn view(view: u64) -> Record {
        Record::View { view, active: true }
    }

    #[test]
    fn records_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        let written = vec![view(0), committed(1), committed(2)];
        {
            let (mut log, old) = ProtocolLog::open(&path, true).unwrap();
            assert!(old.is_empty());
            log.append(&written[..1]).unwrap();
            log.append(&written[1..]).unwrap();
        }
        let (mut log, read) = ProtocolLog::open(&path, true).unwrap();
        assert_eq!(read, written);
        assert_eq!(log.len(), 3);
        // Appends after a reopen follow the old records.
        log.append(&[committed(3)]).unwrap();
        drop(log);
        let (_, read) = ProtocolLog::open(&path, false).unwrap();
        assert_eq!(read.len(), 4);
        assert_eq!(read[3], committed(3));
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        {
            let (mut log, _) = ProtocolLog::open(&path, true).unwrap();
            log.append(&[view(0), committed(1)]).unwrap();
            log.append(&[committed(2)]).unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        // Every cut inside the last frame, and a flipped byte in its body.
        for cut in 1..FRAME_HEADER + 10 {
            std::fs::write(&path, &whole[..whole.len() - cut]).unwrap();
            let (_, read) = ProtocolLog::open(&path, true).unwrap();
            assert_eq!(read, vec![view(0), committed(1)], "cut {cut}");
        }
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let (mut log, read) = ProtocolLog::open(&path, true).unwrap();
        assert_eq!(read, vec![view(0), committed(1)]);
        log.append(&[committed(7)]).unwrap();
        drop(log);
        let (_, read) = ProtocolLog::open(&path, true).unwrap();
        assert_eq!(read, vec![view(0), committed(1), committed(7)]);
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&frame_of(b"\xff\xff\xff\xff not a record"));
        std::fs::write(&path, &bytes).unwrap();
        let e = ProtocolLog::open(&path, true).unwrap_err().to_string();
        assert!(e.contains("does not decode"), "{e}");
        std::fs::write(&path, b"something else entirely").unwrap();
        let e = ProtocolLog::open(&path, true).unwrap_err().to_string();
        assert!(e.contains("not a voidbox protocol log"), "{e}");
    }

    #[test]
    fn compaction_keeps_what_the_core_would_keep_and_survives_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pbft.log");
        let mut records = vec![view(0), committed(1), committed(2), committed(3)];
        let (mut log, _) = ProtocolLog::open(&path, true).unwrap();
        log.append(&records).unwrap();
        // A "stable" marker at seq 2, in metadata (building a real
        // StateTransfer record needs a whole signed proof); its frame is
        // a committed record's, so the rewritten file can be read back.
        let marker = committed(2);
        let mut meta = Meta::of(&marker, frame_of(&marker.encode()));
        meta.stable = true;
        log.live_bytes += meta.frame.len() as u64;
        log.metas.push(meta);
        log.compact();
        let kept: Vec<Option<u64>> = log.metas.iter().map(|m| m.seq).collect();
        // The view record, seq 3, the marker.
        assert_eq!(kept, vec![None, Some(3), Some(2)]);
        log.rewrite().unwrap();
        log.append(&[committed(4)]).unwrap();
        drop(log);
        let (log, read) = ProtocolLog::open(&path, true).unwrap();
        assert_eq!(
            read,
            vec![view(0), committed(3), committed(2), committed(4)]
        );
        assert_eq!(log.len(), 4);
        assert!(!tmp_path(&path).exists());
        // The core's rule on the same records without the marker keeps all.
        compact_records(&mut records);
        assert_eq!(records.len(), 4);
    }

    #[test]
    fn a_redb_log_of_an_older_version_is_moved_over() {
        use redb::{Database, TableDefinition};
        const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("pbft_records");
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("pbft.redb");
        let path = dir.path().join("pbft.log");
        let written = vec![view(0), committed(1), committed(2)];
        {
            let db = Database::create(&old).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(RECORDS).unwrap();
                for (i, r) in written.iter().enumerate() {
                    t.insert(i as u64, r.encode().as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        migrate_redb_log(&old, &path).unwrap();
        assert!(!old.exists());
        let (_, read) = ProtocolLog::open(&path, true).unwrap();
        assert_eq!(read, written);
    }
}
