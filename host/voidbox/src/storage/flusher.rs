//! The journal's segment files, their replay at open, and the flusher
//! thread: group commits and segment rotation.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use voidbox_cas::{DiskStore, Store};

use super::tail::Tail;
use super::{journal, Shared, BATCH_WINDOW, CHECKPOINT_BYTES, SEALED_TAILS_MAX};
use crate::error::{Error, Result};

/// One journal segment file, open for appending.
pub(super) struct Segment {
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) sequence: u64,
    pub(super) len: u64,
}

impl Segment {
    pub(super) fn path(dir: &Path, sequence: u64) -> PathBuf {
        dir.join(format!("{sequence:016}.log"))
    }

    pub(super) fn create(dir: &Path, sequence: u64) -> Result<Segment> {
        let path = Segment::path(dir, sequence);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(Error::io(
                &path,
                "check that the data directory is writable",
            ))?;
        // The new name must survive a crash, or the frames in it would not.
        sync_dir(dir)?;
        Ok(Segment {
            file,
            path,
            sequence,
            len: 0,
        })
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir, "check the disk"))
}

/// The sequence numbers of the journal's segments, ascending.
pub(super) fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(Error::io(dir, "check that the data directory is readable"))?
    {
        let entry = entry.map_err(Error::io(dir, "check that the data directory is readable"))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Replays the journal's segments in order into a tail, and returns the
/// sequence number for the next segment. Replay stops at the first torn
/// frame (a crash during a group commit): that segment is cut there and
/// later ones, if any, are removed, so that what survives is always a
/// prefix of what was appended.
pub(super) fn replay_journal(dir: &Path) -> Result<(Tail, u64)> {
    std::fs::create_dir_all(dir)
        .map_err(Error::io(dir, "check that the data directory is writable"))?;
    let mut tail = Tail::presized();
    let mut encoded = Vec::new();
    let sequences = segments(dir)?;
    let mut torn = false;
    for &sequence in &sequences {
        let path = Segment::path(dir, sequence);
        if torn {
            tracing::warn!(path = %path.display(), "removing a journal segment that follows a torn frame");
            std::fs::remove_file(&path).map_err(Error::io(
                &path,
                "check that the data directory is writable",
            ))?;
            continue;
        }
        let bytes = std::fs::read(&path).map_err(Error::io(
            &path,
            "check that the data directory is readable",
        ))?;
        let (records, intact) = journal::replay(&bytes).map_err(|detail| Error::Corrupt {
            what: format!("journal segment {}", path.display()),
            detail: format!(
                "{detail}; move the journal directory away to open the host without the newest receipts"
            ),
        })?;
        if intact < bytes.len() {
            torn = true;
            tracing::warn!(
                path = %path.display(),
                kept = intact,
                dropped = bytes.len() - intact,
                "the journal ends in a torn frame (a crash during a group commit); cutting it off"
            );
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(Error::io(
                    &path,
                    "check that the data directory is writable",
                ))?;
            file.set_len(intact as u64).map_err(Error::io(
                &path,
                "check that the data directory is writable",
            ))?;
            file.sync_all()
                .map_err(Error::io(&path, "check the disk"))?;
        }
        for record in records {
            match record {
                journal::Record::Blob(d, b) => {
                    tail.push_blob(d, &b);
                }
                journal::Record::Outcome {
                    invocation_digest,
                    cacheable,
                    invocation,
                    receipt,
                } => {
                    encoded.clear();
                    journal::put_outcome(
                        &mut encoded,
                        &invocation_digest,
                        cacheable,
                        &invocation,
                        &receipt,
                    );
                    tail.push_outcome(&encoded, receipt.receipt, &invocation_digest, cacheable);
                }
            }
        }
    }
    let next = sequences.last().map_or(1, |s| s + 1);
    Ok((tail, next))
}

/// A tail handed to the checkpointer: it covers every journal segment up
/// to `last_segment`, and answers checkpoint requests up to `ticket`.
pub(super) struct Handover {
    pub(super) tail: Arc<Tail>,
    pub(super) last_segment: u64,
    pub(super) ticket: u64,
}

/// The flusher thread: group commits to the journal, segment rotation.
pub(super) struct Flusher {
    /// Whether frames (and the large blobs before them) are fsynced.
    pub(super) fsync: bool,
    pub(super) disk: Arc<DiskStore>,
    pub(super) shared: Arc<Shared>,
    pub(super) journal_dir: PathBuf,
    pub(super) segment: Segment,
    pub(super) to_checkpointer: crossbeam_channel::Sender<Handover>,
    /// Emptied tails back from the checkpointer, their tables still
    /// allocated: reusing them spares the process large frees and
    /// allocations, whose unmapping would flush the TLB of every core
    /// running an invocation.
    pub(super) recycled: crossbeam_channel::Receiver<Tail>,
}

impl Flusher {
    pub(super) fn run(mut self) {
        let mut spare: Vec<u8> = Vec::with_capacity(1 << 20);
        // Made (or taken back from the checkpointer) outside the lock once
        // the current tail is a quarter full, swapped in at the next
        // rotation. Not sooner: a host that never fills a quarter of a
        // tail (a CLI command) should not map 45 MiB for one. Mapping a
        // fresh one delays that group commit by some milliseconds, once
        // or twice in a host's life (tails are recycled).
        let mut next_tail: Option<Tail> = None;
        let mut handed_ticket = 0;
        loop {
            let mut st = self.shared.lock();
            let mut window_start: Option<Instant> = None;
            loop {
                if st.failed.is_some() {
                    // The checkpointer failed; nothing more may be written.
                    return;
                }
                if st.shutdown
                    || st.flush_wanted
                    || st.prepare_wanted
                    || st.checkpoints_asked > handed_ticket
                {
                    break;
                }
                if st.buffer.is_empty() {
                    st = self.shared.wake.wait(st).expect("storage state poisoned");
                    continue;
                }
                let deadline = *window_start.get_or_insert_with(Instant::now) + BATCH_WINDOW;
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = self
                    .shared
                    .wake
                    .wait_timeout(st, deadline - now)
                    .expect("storage state poisoned")
                    .0;
            }
            // Seal the open generation; appenders go on with a fresh buffer.
            spare.clear();
            let mut payload = std::mem::replace(&mut st.buffer, spare);
            let generation = st.generation;
            st.generation += 1;
            st.flush_wanted = false;
            let ticket = st.checkpoints_asked;
            let shutdown = st.shutdown;
            drop(st);
            // Room for appenders that waited on a full buffer.
            self.shared.done.notify_all();

            let mut result = self.write_frame(&payload);
            if result.is_ok() {
                let mut st = self.shared.lock();
                st.durable = generation;
                if !payload.is_empty() {
                    st.stats.frames += 1;
                    st.stats.synced_frames += u64::from(self.fsync);
                    st.stats.journal_bytes += (payload.len() + journal::FRAME_HEADER_BYTES) as u64;
                }
                let tail_full = st.tail.nearly_full();
                let wanted = std::mem::take(&mut st.prepare_wanted);
                let prepare = next_tail.is_none() && (wanted || st.tail.quarter_full());
                drop(st);
                self.shared.done.notify_all();
                if prepare {
                    // A recycled tail too: it may have been taken early,
                    // before it was filled (and so mapped) throughout.
                    let mut tail = self.reuse_or(Tail::presized);
                    tail.fault_in();
                    next_tail = Some(tail);
                }
                if ticket > handed_ticket
                    || shutdown
                    || self.segment.len >= CHECKPOINT_BYTES
                    || tail_full
                {
                    result = self.rotate(&mut next_tail, ticket, shutdown);
                    handed_ticket = ticket;
                }
            }
            payload.clear();
            spare = payload;
            if let Err(e) = result {
                fail(&self.shared, e);
                return;
            }
            if shutdown {
                return;
            }
        }
    }

    /// Makes the large blobs of the sealed generation durable, then writes
    /// and fsyncs its frame (both without the fsyncs when off).
    fn write_frame(&mut self, payload: &[u8]) -> std::result::Result<(), String> {
        if payload.is_empty() {
            return Ok(());
        }
        // Large blobs named by this frame's receipts must be durable before
        // the receipts are. Every one was put before its receipt was
        // appended, hence before the seal.
        if self.fsync {
            self.disk.sync().map_err(|e| e.to_string())?;
        }
        let header = journal::frame_header(payload);
        let seg = &mut self.segment;
        let io = |e: std::io::Error| format!("journal {}: {e}", seg.path.display());
        seg.file.write_all(&header).map_err(io)?;
        seg.file.write_all(payload).map_err(io)?;
        if self.fsync {
            seg.file.sync_data().map_err(io)?;
        }
        seg.len += (header.len() + payload.len()) as u64;
        Ok(())
    }

    /// A tail the checkpointer handed back, or else a new one from `make`.
    fn reuse_or(&self, make: fn() -> Tail) -> Tail {
        self.recycled.try_recv().unwrap_or_else(|_| make())
    }

    /// Takes the tail (a pointer swap under the lock), hands it to the
    /// checkpointer with the segments it covers, and starts a new segment
    /// (unless the host is closing). Every record in the segments so far
    /// was in the tail when it was taken, because records enter the tail
    /// when they are appended, before any frame holds them.
    fn rotate(
        &mut self,
        next_tail: &mut Option<Tail>,
        ticket: u64,
        last: bool,
    ) -> std::result::Result<(), String> {
        // Without a prepared tail (an early rotation: a flush or a
        // checkpoint asked for), one whose pages fault in as it fills.
        let prepared = next_tail.is_some();
        let fresh = next_tail
            .take()
            .unwrap_or_else(|| self.reuse_or(Tail::presized));
        let tail = {
            let mut st = self.shared.lock();
            // A checkpoint thread far behind (one at low priority on a busy
            // machine) holds the journal back here, and through the flusher
            // the appenders (`BUFFER_BYTES_MAX`), instead of letting taken
            // tails pile up in memory.
            while st.sealed.len() >= SEALED_TAILS_MAX && st.failed.is_none() {
                st = self.shared.done.wait(st).expect("storage state poisoned");
            }
            st.stats.prepared_tails += u64::from(prepared);
            let tail = Arc::new(std::mem::replace(&mut st.tail, fresh));
            st.sealed.push(tail.clone());
            tail
        };
        let last_segment = self.segment.sequence;
        if !last {
            self.segment =
                Segment::create(&self.journal_dir, last_segment + 1).map_err(|e| e.to_string())?;
        }
        self.to_checkpointer
            .send(Handover {
                tail,
                last_segment,
                ticket,
            })
            .map_err(|_| "the checkpoint thread stopped".to_string())
    }
}

/// Marks the storage failed: every later write and wait is refused, since
/// later receipts could name blobs that were never made durable.
pub(super) fn fail(shared: &Shared, e: String) {
    tracing::error!(error = %e, "storage failed; later writes will be refused");
    let mut st = shared.lock();
    if st.failed.is_none() {
        st.failed = Some(e);
    }
    drop(st);
    shared.done.notify_all();
}
