//! How a [`DiskStore`](crate::DiskStore)'s blob files are laid out: the
//! header before the content, by the store's format. Pure: no file system
//! here, only the bytes and the arithmetic, so both formats are tested alone.
//!
//! Format 1 (stores made before format 2 existed, which keep it): a 16-byte
//! header, `VBXBLOB\x01` and the content length as a little-endian u64, then
//! the content.
//!
//! Format 2 (new stores): the same 16 bytes with `VBXBLOB\x02` for blobs
//! under [`PAGE_ALIGNED_MIN_BYTES`]; from that size on, the header is padded
//! with zeros to [`PAGE_BYTES`], so the content starts on a page boundary of
//! the file. Why: the kernel copies a `write` into the page cache at the
//! file offset's place within the page, and large buffers from mimalloc
//! (the `voidbox` binary's allocator) start on a page boundary, so with the
//! content at offset 16 every byte moved 16 bytes forward within its page.
//! On the AMD machine of the project's benchmarks that copy ran at a third
//! of its speed for such a source, and a 16 MiB put took twice as long
//! (BENCHMARKS.md, issue #2, session 19). A source 16 bytes into a page
//! (the system allocator's) is as fast against either layout.
//! Small blobs keep the 16-byte header, so they do not take an extra block.

/// The content of blobs at least this large starts at [`PAGE_BYTES`] in a
/// format-2 store. The same size as the pipeline's threshold: below it a
/// blob is one write, and its copy is too short to matter.
pub(crate) const PAGE_ALIGNED_MIN_BYTES: u64 = crate::pipeline::PIPELINE_MIN_BYTES as u64;

/// A page of the page cache on the platforms the store runs on.
pub(crate) const PAGE_BYTES: u64 = 4096;

/// The short header: magic and length.
const SHORT_HEADER_BYTES: u64 = 16;

/// A header's magic: these bytes, then the format's number as one byte.
const MAGIC_PREFIX: &[u8; 7] = b"VBXBLOB";

/// A store's blob layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Format 1: every header is 16 bytes.
    V1,
    /// Format 2: large blobs' content is page-aligned.
    V2,
}

impl Layout {
    /// The layout a new store is made with.
    pub(crate) const CURRENT: Layout = Layout::V2;

    /// The layout of a store format, `None` for one this build does not know.
    pub(crate) fn of_format(format: u32) -> Option<Layout> {
        match format {
            1 => Some(Layout::V1),
            2 => Some(Layout::V2),
            _ => None,
        }
    }

    fn magic(self) -> [u8; 8] {
        let mut magic = [0u8; 8];
        magic[..7].copy_from_slice(MAGIC_PREFIX);
        // Formats are small numbers, so the cast is exact.
        magic[7] = self.format() as u8;
        magic
    }

    /// Bytes before the content of a blob of `len` bytes.
    pub(crate) fn header_bytes(self, len: u64) -> u64 {
        match self {
            Layout::V2 if len >= PAGE_ALIGNED_MIN_BYTES => PAGE_BYTES,
            _ => SHORT_HEADER_BYTES,
        }
    }

    /// The header of a blob of `len` bytes.
    pub(crate) fn header(self, len: u64) -> Vec<u8> {
        // Bounded by PAGE_BYTES, so the cast is exact.
        let mut header = vec![0u8; self.header_bytes(len) as usize];
        header[..8].copy_from_slice(&self.magic());
        header[8..16].copy_from_slice(&len.to_le_bytes());
        header
    }

    /// The store format number of this layout.
    pub(crate) fn format(self) -> u32 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
        }
    }

    /// The content length a header records, if `raw` (the file's first 16
    /// bytes) is one of this layout's.
    pub(crate) fn recorded_len(self, raw: &[u8; 16]) -> Option<u64> {
        (raw[..8] == self.magic()).then(|| u64::from_le_bytes(raw[8..].try_into().expect("8")))
    }

    /// The content length of a well-formed blob file of `file_len` bytes,
    /// from its size alone (listings and size checks do not open files).
    /// `None` for a size no blob of this layout has: shorter than a header,
    /// or (format 2) between a small blob's largest and a large one's
    /// smallest.
    pub(crate) fn content_len(self, file_len: u64) -> Option<u64> {
        let short = file_len.checked_sub(SHORT_HEADER_BYTES)?;
        if self.header_bytes(short) == SHORT_HEADER_BYTES {
            return Some(short);
        }
        file_len
            .checked_sub(PAGE_BYTES)
            .filter(|&len| self.header_bytes(len) == PAGE_BYTES)
    }

    /// The content length shown for a blob file of `file_len` bytes in
    /// listings: [`Layout::content_len`], or for a size no blob has (a
    /// damaged file, which a read or `verify` reports), the bytes after a
    /// short header.
    pub(crate) fn listed_len(self, file_len: u64) -> u64 {
        self.content_len(file_len)
            .unwrap_or(file_len.saturating_sub(SHORT_HEADER_BYTES))
    }

    /// The file size of a blob of `len` bytes (saturating: a damaged
    /// header may record any length).
    pub(crate) fn file_len(self, len: u64) -> u64 {
        self.header_bytes(len).saturating_add(len)
    }
}

/// The known format a blob header names, whatever the store's: a blob of
/// another format than its store's means the store's format file was lost
/// or changed, not that the blob is damaged.
pub(crate) fn named_format(raw: &[u8; 16]) -> Option<Layout> {
    if raw[..7] != *MAGIC_PREFIX {
        return None;
    }
    Layout::of_format(u32::from(raw[7]))
}

/// The text of a store's format file.
pub(crate) fn format_file_text(format: u32) -> String {
    format!("voidbox-cas {format}\n")
}

/// The format a format file names, `None` if the text is not one.
pub(crate) fn parse_format_file(text: &str) -> Option<u32> {
    text.strip_prefix("voidbox-cas ")?.trim_end().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: u64 = PAGE_ALIGNED_MIN_BYTES;

    #[test]
    fn format_1_has_a_16_byte_header_for_every_size() {
        for len in [0, 1, BIG - 1, BIG, 16 << 20] {
            assert_eq!(Layout::V1.header_bytes(len), 16);
            assert_eq!(Layout::V1.header(len).len(), 16);
            assert_eq!(Layout::V1.content_len(len + 16), Some(len));
        }
        assert_eq!(&Layout::V1.header(5)[..8], b"VBXBLOB\x01");
    }

    #[test]
    fn format_2_pads_large_blobs_to_a_page() {
        assert_eq!(Layout::V2.header_bytes(BIG - 1), 16);
        assert_eq!(Layout::V2.header_bytes(BIG), 4096);
        let h = Layout::V2.header(BIG + 7);
        assert_eq!(h.len(), 4096);
        assert_eq!(&h[..8], b"VBXBLOB\x02");
        assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), BIG + 7);
        assert!(h[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn format_2_sizes_map_back_to_lengths_and_gaps_are_refused() {
        for len in [0, 1, BIG - 1, BIG, BIG + 1, 16 << 20] {
            let file_len = Layout::V2.file_len(len);
            assert_eq!(Layout::V2.content_len(file_len), Some(len), "{len}");
        }
        // A large blob truncated to less than a large blob's file, or a
        // file shorter than any header, has no length.
        assert_eq!(Layout::V2.content_len(BIG + 16), None);
        assert_eq!(Layout::V2.content_len(BIG + 4095), None);
        assert_eq!(Layout::V2.content_len(15), None);
        // A damaged header's length does not overflow the arithmetic.
        assert_eq!(Layout::V2.file_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_header_is_read_only_by_its_own_layout() {
        let raw: [u8; 16] = Layout::V2.header(3)[..16].try_into().unwrap();
        assert_eq!(Layout::V2.recorded_len(&raw), Some(3));
        assert_eq!(Layout::V1.recorded_len(&raw), None);
        assert_eq!(named_format(&raw), Some(Layout::V2));
        let mut unknown = raw;
        unknown[7] = 9;
        assert_eq!(named_format(&unknown), None);
    }

    #[test]
    fn format_files_round_trip_and_junk_is_refused() {
        assert_eq!(parse_format_file(&format_file_text(2)), Some(2));
        assert_eq!(parse_format_file("voidbox-cas 7"), Some(7));
        assert_eq!(parse_format_file("something else\n"), None);
        assert_eq!(Layout::of_format(3), None);
    }
}
