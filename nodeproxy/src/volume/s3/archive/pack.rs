//! A volume directory into a tar stream: regular files, directories and symlinks with their
//! modes, owners and modification times, paths relative to the volume.
//!
//! The app may still be running (periodic checkpoints), so the walk tolerates a live tree:
//! entries that vanish are skipped, a file is stored with the length it had when it was
//! opened (padded or cut), and a path swapped for a symlink between looking and opening is
//! never followed (`O_NOFOLLOW`, then the opened file is compared with what was looked at).
//!
//! Left out, with a warning: fifos, sockets and devices (an app has no business keeping them
//! in `/data`, and restoring them on the host would be a hazard), and symlinks that point out
//! of the volume (the unpacker refuses those, and a snapshot must always restore). Hard links
//! are stored as separate files.

use std::{
    fs::{self, Metadata},
    io::{self, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use tar::{Builder, EntryType, Header, HeaderMode};

use super::{unpack::link_stays_inside, ArchiveError};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PackStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// File content bytes, before compression.
    pub bytes: u64,
    /// Entries left out (special files, links out of the volume).
    pub skipped: u64,
}

/// Writes the tar stream of everything under `root` (not `root` itself) to `out`, and returns
/// `out` once the archive's end is written.
pub fn pack<W: Write>(root: &Path, out: W) -> Result<(W, PackStats), ArchiveError> {
    let mut builder = Builder::new(out);
    let mut stats = PackStats::default();
    // Depth first, names sorted, so the same tree packs the same way.
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let mut names = match fs::read_dir(root.join(&rel_dir)) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| ArchiveError::io(format!("cannot list {}", rel_dir.display()), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel_dir.as_os_str().is_empty() => {
                continue
            }
            Err(e) => {
                return Err(ArchiveError::io(
                    format!("cannot list {}", root.join(&rel_dir).display()),
                    e,
                ))
            }
        };
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel_dir.join(&name);
            let full = root.join(&rel);
            let meta = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ArchiveError::io(
                        format!("cannot stat {}", rel.display()),
                        e,
                    ))
                }
            };
            let ft = meta.file_type();
            let appended = if ft.is_dir() {
                append_dir(&mut builder, &rel, &meta)?;
                subdirs.push(rel);
                stats.dirs += 1;
                Ok(())
            } else if ft.is_file() {
                append_file(&mut builder, &rel, &full, &meta, &mut stats)
            } else if ft.is_symlink() {
                append_symlink(&mut builder, &rel, &full, &meta, &mut stats)
            } else {
                tracing::warn!(entry = %rel.display(), "not packing a fifo, socket or device");
                stats.skipped += 1;
                Ok(())
            };
            match appended {
                Ok(()) => {}
                Err(Skip::Vanished) => {}
                Err(Skip::Failed(e)) => return Err(e),
            }
        }
        // Reverse, so popping visits them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    let out = builder
        .into_inner()
        .map_err(|e| ArchiveError::io("cannot finish the archive", e))?;
    Ok((out, stats))
}

/// Why an entry was not appended.
enum Skip {
    /// It disappeared while we looked (a live app); nothing to store.
    Vanished,
    Failed(ArchiveError),
}

impl From<ArchiveError> for Skip {
    fn from(e: ArchiveError) -> Self {
        Skip::Failed(e)
    }
}

fn header_for(meta: &Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_metadata_in_mode(meta, HeaderMode::Complete);
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h
}

fn append_dir<W: Write>(
    b: &mut Builder<W>,
    rel: &Path,
    meta: &Metadata,
) -> Result<(), ArchiveError> {
    let mut h = header_for(meta, EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, rel, io::empty())
        .map_err(|e| ArchiveError::io(format!("cannot archive {}", rel.display()), e))
}

fn append_file<W: Write>(
    b: &mut Builder<W>,
    rel: &Path,
    full: &Path,
    looked: &Metadata,
    stats: &mut PackStats,
) -> Result<(), Skip> {
    let file = match fs::OpenOptions::new()
        .read(true)
        // Never through a symlink, and never hang on a fifo swapped in since we looked.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(full)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Skip::Vanished),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(Skip::Vanished),
        Err(e) => return Err(ArchiveError::io(format!("cannot open {}", rel.display()), e).into()),
    };
    let meta = file
        .metadata()
        .map_err(|e| ArchiveError::io(format!("cannot stat {}", rel.display()), e))?;
    if !meta.is_file() || meta.ino() != looked.ino() || meta.dev() != looked.dev() {
        // Replaced between the look and the open: the next checkpoint gets the new one.
        return Err(Skip::Vanished);
    }
    let mut h = header_for(&meta, EntryType::Regular);
    let len = meta.len();
    h.set_size(len);
    b.append_data(&mut h, rel, ExactLen::new(file, len))
        .map_err(|e| ArchiveError::io(format!("cannot archive {}", rel.display()), e))?;
    stats.files += 1;
    stats.bytes += len;
    Ok(())
}

fn append_symlink<W: Write>(
    b: &mut Builder<W>,
    rel: &Path,
    full: &Path,
    meta: &Metadata,
    stats: &mut PackStats,
) -> Result<(), Skip> {
    let target = match fs::read_link(full) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Skip::Vanished),
        Err(e) => {
            return Err(ArchiveError::io(format!("cannot read link {}", rel.display()), e).into())
        }
    };
    if !link_stays_inside(rel, &target) {
        tracing::warn!(
            entry = %rel.display(),
            target = %target.display(),
            "not packing a symlink that points out of the volume"
        );
        stats.skipped += 1;
        return Ok(());
    }
    let mut h = header_for(meta, EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, rel, &target)
        .map_err(|e| ArchiveError::io(format!("cannot archive {}", rel.display()), e))?;
    stats.symlinks += 1;
    Ok(())
}

/// Exactly `len` bytes of `inner`: cut if the file grew since it was measured, padded with
/// zeros if it shrank, so the tar header never lies about the entry's size.
struct ExactLen<R> {
    inner: R,
    left: u64,
    eof: bool,
}

impl<R: Read> ExactLen<R> {
    fn new(inner: R, len: u64) -> Self {
        Self {
            inner,
            left: len,
            eof: false,
        }
    }
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = (out.len() as u64).min(self.left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = if self.eof {
            0
        } else {
            self.inner.read(&mut out[..want])?
        };
        let n = if n == 0 {
            self.eof = true;
            out[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_len_cuts_and_pads() {
        let mut v = Vec::new();
        ExactLen::new(&b"abcdef"[..], 4)
            .read_to_end(&mut v)
            .unwrap();
        assert_eq!(v, b"abcd");
        v.clear();
        ExactLen::new(&b"ab"[..], 4).read_to_end(&mut v).unwrap();
        assert_eq!(v, b"ab\0\0");
    }
}
