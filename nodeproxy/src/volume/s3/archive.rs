//! Volume archives: tar streams, compressed with zstd when written, and read back in whichever
//! of zstd, gzip or no compression they come (recognized by their first bytes, not their
//! names, so a seed `.tgz` or a plain `.tar` works too). All of it is blocking code for a
//! `spawn_blocking` thread.
//!
//! - [`pack`]: a directory into a tar stream, never following symlinks.
//! - [`unpack`]: an untrusted tar stream into an empty directory, refusing anything that would
//!   land outside it.

pub mod pack;
pub mod unpack;

use std::io::{self, BufRead, Read, Write};

/// zstd level for snapshots: fast enough to keep up with the network, and app data
/// (databases, JSON, logs) still shrinks well.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive tries to leave the volume; nothing of this entry was written.
    #[error("{0}")]
    Unsafe(String),
    #[error("{0}")]
    Io(String),
}

impl ArchiveError {
    pub fn io(what: impl std::fmt::Display, e: io::Error) -> Self {
        ArchiveError::Io(format!("{what}: {e}"))
    }
}

/// Wraps `out` in a zstd encoder with a content checksum, so a corrupted snapshot is detected
/// when it is restored.
pub fn compressor<W: Write>(out: W) -> io::Result<zstd::Encoder<'static, W>> {
    let mut enc = zstd::Encoder::new(out, ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    Ok(enc)
}

/// How a stream is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

pub fn sniff(head: &[u8]) -> Result<Compression, ArchiveError> {
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Err(ArchiveError::Io(
            "zip archives are not supported; use .tar.zst, .tar.gz or .tar".into(),
        ))
    } else {
        Ok(Compression::None)
    }
}

/// The decompressed tar stream of `input`.
pub fn decompressor<'a, R: BufRead + 'a>(mut input: R) -> Result<Box<dyn Read + 'a>, ArchiveError> {
    let head = input
        .fill_buf()
        .map_err(|e| ArchiveError::io("cannot read the archive", e))?;
    Ok(match sniff(head)? {
        Compression::Zstd => Box::new(
            zstd::Decoder::with_buffer(input)
                .map_err(|e| ArchiveError::io("cannot start zstd", e))?,
        ),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::None => Box::new(input),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_first_bytes() {
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(sniff(&[0x1f, 0x8b, 8]).unwrap(), Compression::Gzip);
        assert_eq!(sniff(b"data/\0\0\0").unwrap(), Compression::None);
        assert_eq!(sniff(b"").unwrap(), Compression::None);
        assert!(sniff(b"PK\x03\x04....").is_err());
    }
}
