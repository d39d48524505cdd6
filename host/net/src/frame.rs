//! Length-delimited frames: a `u32` big-endian length, then that many bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The body buffer grows in steps of at least this many bytes, so a peer that
/// announces a large frame and then sends little makes us allocate little.
const BODY_STEP_BYTES: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the receiver accepts.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; send smaller frames or raise \
         Limits::frame_bytes_max on both ends"
    )]
    Oversized {
        /// The announced (or attempted) length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The stream ended inside a frame.
    #[error(
        "connection closed in the middle of a frame ({want} bytes announced); the peer crashed \
         or closed its side early"
    )]
    Truncated {
        /// Bytes the frame (or its header) should have had.
        want: usize,
    },
    /// The socket failed.
    #[error("frame I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame of at most `max` bytes.
///
/// Returns `Ok(None)` when the stream ends cleanly between frames. A length
/// above `max` is refused before any body byte is read or allocated; the
/// caller should close the connection, because the stream is no longer in
/// step with frame boundaries. Not cancel-safe: dropping the future in the
/// middle of a frame loses the bytes read so far.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < FRAME_HEADER_BYTES {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                want: FRAME_HEADER_BYTES,
            });
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::Oversized {
            len: len as u64,
            max: max as u64,
        });
    }
    // Grow with the bytes that actually arrive instead of trusting the
    // announced length: each step at most doubles what was received.
    let mut body = Vec::new();
    while body.len() < len {
        let start = body.len();
        let step = (len - start).min(start.max(BODY_STEP_BYTES));
        body.resize(start + step, 0);
        if let Err(e) = r.read_exact(&mut body[start..]).await {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(FrameError::Truncated { want: len });
            }
            return Err(e.into());
        }
    }
    Ok(Some(body))
}

/// Writes one frame (length prefix and body) without flushing.
///
/// Meant for a `BufWriter`: several frames then leave in one write, and the
/// caller flushes when it has nothing more to send.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(frame.len()).map_err(|_| FrameError::Oversized {
        len: frame.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(f)
    }

    #[test]
    fn frames_round_trip_and_clean_eof_is_none() {
        block_on(async {
            let mut buf = Vec::new();
            for frame in [&b""[..], b"a", &[7u8; 200_000][..]] {
                write_frame(&mut buf, frame).await.unwrap();
            }
            let mut r = &buf[..];
            assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap().unwrap(), b"");
            assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap().unwrap(), b"a");
            assert_eq!(
                read_frame(&mut r, 1 << 20).await.unwrap().unwrap(),
                vec![7u8; 200_000]
            );
            assert!(read_frame(&mut r, 1 << 20).await.unwrap().is_none());
        });
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        block_on(async {
            // The header claims 4 GiB - 1 and no body follows: an allocation of
            // the claimed size would abort the test process.
            let mut r = &[0xff, 0xff, 0xff, 0xff][..];
            match read_frame(&mut r, 1024).await {
                Err(FrameError::Oversized { len, max }) => {
                    assert_eq!(len, u64::from(u32::MAX));
                    assert_eq!(max, 1024);
                }
                other => panic!("expected Oversized, got {other:?}"),
            }
        });
    }

    #[test]
    fn a_frame_at_the_limit_is_accepted_and_one_above_is_not() {
        block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, &[1u8; 100]).await.unwrap();
            assert_eq!(
                read_frame(&mut &buf[..], 100).await.unwrap().unwrap().len(),
                100
            );
            assert!(matches!(
                read_frame(&mut &buf[..], 99).await,
                Err(FrameError::Oversized { len: 100, max: 99 })
            ));
        });
    }

    #[test]
    fn truncated_header_and_body_are_errors() {
        block_on(async {
            assert!(matches!(
                read_frame(&mut &[0u8, 0][..], 100).await,
                Err(FrameError::Truncated { want: 4 })
            ));
            assert!(matches!(
                read_frame(&mut &[0u8, 0, 0, 10, 1, 2, 3][..], 100).await,
                Err(FrameError::Truncated { want: 10 })
            ));
            // A large announced body that never arrives fails the same way,
            // after allocating only what arrived (at most one step).
            assert!(matches!(
                read_frame(&mut &[0u8, 0x10, 0, 0, 1][..], 16 << 20).await,
                Err(FrameError::Truncated { want: 0x10_0000 })
            ));
        });
    }
}
