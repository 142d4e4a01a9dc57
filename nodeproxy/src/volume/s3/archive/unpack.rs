//! An untrusted tar stream into an empty volume directory.
//!
//! Every entry is checked before anything of it is written, and the first bad one stops the
//! restore with [`ArchiveError::Unsafe`] naming it:
//! - paths must be relative and stay inside (`..` and absolute paths are refused);
//! - nothing is written through a symlink: every parent of an entry must be a real directory,
//!   files are created with `O_CREAT|O_EXCL` (which never follows a link), and an existing
//!   entry is unlinked, not opened;
//! - symlinks must point inside the volume, judged from where they sit (absolute targets are
//!   refused); hard links must name a regular file already restored inside the volume;
//! - an entry may not replace a directory.
//!
//! Fifos and device files are skipped with a warning (never created on the host). Modes are
//! restored without setuid/setgid/sticky bits; owners are restored when the node may chown
//! (it runs as root), so an app running as a non-root user can still write its files;
//! directory modes and times are applied last, so a read-only directory can still be filled.

use std::{
    collections::{HashSet, VecDeque},
    ffi::OsString,
    fs::{self, File},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    time::{Duration, SystemTime},
};

use tar::EntryType;

use super::ArchiveError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// Fifos and devices left out.
    pub skipped: u64,
}

/// Restores the tar stream `input` into `root`, which should be empty, writing at most
/// `limit` bytes of file content. On error, what was written so far stays (inside `root`); the
/// caller removes it.
pub fn unpack<R: Read>(input: R, root: &Path, limit: u64) -> Result<UnpackStats, ArchiveError> {
    let mut ar = tar::Archive::new(input);
    let mut u = Unpacker {
        root,
        known_dirs: HashSet::new(),
        deferred: Vec::new(),
        stats: UnpackStats::default(),
        can_chown: true,
        buf: vec![0; 256 * 1024],
        limit,
        links: Vec::new(),
    };
    let entries = ar
        .entries()
        .map_err(|e| ArchiveError::io("cannot read the archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::io("cannot read the archive", e))?;
        u.entry(&mut entry)?;
    }
    u.finish_dirs()?;
    // Each link passed the textual check where it stood; a chain of them (a link through a
    // link) can still lead out, so every one is resolved again, component by component.
    for link in &u.links {
        if leads_outside(root, link)? {
            return Err(unsafe_entry(
                &link.display().to_string(),
                "a chain of symlinks through it leads outside the volume",
            ));
        }
    }
    let stats = u.stats;
    // Read to the end, so a compressed stream's checksum is verified and the sender finishes.
    io::copy(&mut ar.into_inner(), &mut io::sink())
        .map_err(|e| ArchiveError::io("cannot read the archive's end", e))?;
    Ok(stats)
}

/// `path` as a relative path inside the volume, or why it is not one.
pub fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` is not allowed in archive paths"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed in archives")
            }
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry` (relative to the volume) pointing at `target` stays inside
/// the volume, judged by its text: absolute targets and targets that climb above the volume
/// are out. (The node never follows links inside a volume; this keeps them from pointing a
/// later reader on the host elsewhere.)
pub fn link_stays_inside(entry: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() {
        return false;
    }
    let mut depth = entry.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

struct DirMeta {
    rel: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: Option<u64>,
}

struct Unpacker<'a> {
    root: &'a Path,
    /// Relative paths known to be real directories (made or checked by us). Directories are
    /// never replaced during a restore, so this never goes stale.
    known_dirs: HashSet<PathBuf>,
    deferred: Vec<DirMeta>,
    stats: UnpackStats,
    can_chown: bool,
    buf: Vec<u8>,
    /// The most file content bytes the restore may write.
    limit: u64,
    /// Every symlink made, relative to the root, for the check of chains at the end.
    links: Vec<PathBuf>,
}

/// The most symlinks one resolution follows, as the kernel's own limit (`ELOOP`).
const MAX_HOPS: u32 = 40;

/// One step of a path walk: up to the parent, or into a name.
enum Step {
    Up,
    Name(OsString),
}

/// A link target as steps, or `None` when it is absolute (outside by definition).
fn steps(target: &Path) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(Step::Name(n.to_os_string())),
            Component::ParentDir => out.push(Step::Up),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The target of the symlink at `rel` below `root`, or `None` when it is not a symlink.
fn link_at(root: &Path, rel: &[OsString]) -> Result<Option<PathBuf>, ArchiveError> {
    let full: PathBuf = rel.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    match fs::symlink_metadata(&full) {
        Ok(m) if m.file_type().is_symlink() => fs::read_link(&full)
            .map(Some)
            .map_err(|e| ArchiveError::io(format!("cannot read the link `{}`", full.display()), e)),
        _ => Ok(None),
    }
}

/// Whether resolving the symlink `link` (relative to `root`) as the kernel would, following
/// every symlink on the way, ever climbs above `root`, turns absolute, or loops.
pub fn leads_outside(root: &Path, link: &Path) -> Result<bool, ArchiveError> {
    let mut at: Vec<OsString> = link
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let Some(target) = link_at(root, &at)? else {
        return Ok(false);
    };
    // A link's target is walked from the directory the link sits in.
    at.pop();
    let Some(first) = steps(&target) else {
        return Ok(true);
    };
    let mut rest: VecDeque<Step> = first.into();
    let mut hops = 1;
    while let Some(step) = rest.pop_front() {
        match step {
            Step::Up => {
                if at.pop().is_none() {
                    return Ok(true);
                }
            }
            Step::Name(n) => {
                at.push(n);
                if let Some(t) = link_at(root, &at)? {
                    at.pop();
                    hops += 1;
                    let Some(more) = steps(&t).filter(|_| hops <= MAX_HOPS) else {
                        return Ok(true);
                    };
                    for s in more.into_iter().rev() {
                        rest.push_front(s);
                    }
                }
            }
        }
    }
    Ok(false)
}

fn unsafe_entry(shown: &str, why: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Unsafe(format!("entry `{shown}`: {why}"))
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let kind = e.header().entry_type();
        let raw = e
            .path()
            .map_err(|err| ArchiveError::io("cannot read an entry's path", err))?
            .into_owned();
        let shown = raw.display().to_string();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let rel = safe_relative(&raw).map_err(|why| unsafe_entry(&shown, why))?;
        if rel.as_os_str().is_empty() {
            // The volume's own directory: its mode is the node's business.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(unsafe_entry(&shown, "would replace the volume itself"))
            };
        }
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o777;
        let owner = h
            .uid()
            .ok()
            .zip(h.gid().ok())
            .and_then(|(u, g)| Some((u32::try_from(u).ok()?, u32::try_from(g).ok()?)));
        let mtime = h.mtime().ok();
        match kind {
            EntryType::Directory => {
                self.parents(&rel, &shown)?;
                self.make_dir(&rel, &shown)?;
                self.deferred.push(DirMeta {
                    rel,
                    mode,
                    owner,
                    mtime,
                });
                self.stats.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.parents(&rel, &shown)?;
                self.clear(&rel, &shown)?;
                self.file(e, &rel, &shown, mode, owner, mtime)?;
            }
            EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(|err| ArchiveError::io(format!("entry `{shown}`"), err))?
                    .ok_or_else(|| unsafe_entry(&shown, "a symlink without a target"))?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(unsafe_entry(
                        &shown,
                        format!("a symlink to `{}`, outside the volume", target.display()),
                    ));
                }
                self.parents(&rel, &shown)?;
                self.clear(&rel, &shown)?;
                let full = self.root.join(&rel);
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(|err| ArchiveError::io(format!("cannot create `{shown}`"), err))?;
                self.links.push(rel.clone());
                if let Some((uid, gid)) = owner {
                    self.chown(|| std::os::unix::fs::lchown(&full, Some(uid), Some(gid)))?;
                }
                self.stats.symlinks += 1;
            }
            EntryType::Link => {
                let target = e
                    .link_name()
                    .map_err(|err| ArchiveError::io(format!("entry `{shown}`"), err))?
                    .ok_or_else(|| unsafe_entry(&shown, "a hard link without a target"))?
                    .into_owned();
                let outside = || {
                    unsafe_entry(
                        &shown,
                        format!(
                            "a hard link to `{}`, which is not a file inside the volume",
                            target.display()
                        ),
                    )
                };
                let target_rel = safe_relative(&target).map_err(|_| outside())?;
                if target_rel.as_os_str().is_empty() || !self.is_plain_file(&target_rel)? {
                    return Err(outside());
                }
                self.parents(&rel, &shown)?;
                self.clear(&rel, &shown)?;
                fs::hard_link(self.root.join(&target_rel), self.root.join(&rel))
                    .map_err(|err| ArchiveError::io(format!("cannot create `{shown}`"), err))?;
                self.stats.hardlinks += 1;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                tracing::warn!(entry = %shown, "skipping a device or fifo in the archive");
                self.stats.skipped += 1;
            }
            other => {
                tracing::debug!(entry = %shown, kind = ?other, "skipping an archive entry of an unknown kind");
                self.stats.skipped += 1;
            }
        }
        Ok(())
    }

    /// Makes sure every parent of `rel` is a real directory inside the volume, creating the
    /// missing ones; a symlink or a file on the way is refused.
    fn parents(&mut self, rel: &Path, shown: &str) -> Result<(), ArchiveError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut cur = PathBuf::new();
        for c in parent.components() {
            cur.push(c);
            if self.known_dirs.contains(&cur) {
                continue;
            }
            let full = self.root.join(&cur);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(
                        shown,
                        format!("would be written through the symlink `{}`", cur.display()),
                    ))
                }
                Ok(_) => {
                    return Err(unsafe_entry(
                        shown,
                        format!("`{}` is not a directory", cur.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&full).map_err(|e| {
                    ArchiveError::io(format!("cannot create `{}`", cur.display()), e)
                })?,
                Err(e) => {
                    return Err(ArchiveError::io(
                        format!("cannot check `{}`", cur.display()),
                        e,
                    ))
                }
            }
            self.known_dirs.insert(cur.clone());
        }
        Ok(())
    }

    /// Removes whatever sits at `rel` (a later entry wins, as in tar), without following it;
    /// a directory is never replaced.
    fn clear(&mut self, rel: &Path, shown: &str) -> Result<(), ArchiveError> {
        let full = self.root.join(rel);
        match fs::symlink_metadata(&full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArchiveError::io(format!("cannot check `{shown}`"), e)),
            Ok(m) if m.is_dir() => Err(unsafe_entry(shown, "would replace a directory")),
            Ok(_) => fs::remove_file(&full)
                .map_err(|e| ArchiveError::io(format!("cannot replace `{shown}`"), e)),
        }
    }

    fn make_dir(&mut self, rel: &Path, shown: &str) -> Result<(), ArchiveError> {
        if !self.known_dirs.contains(rel) {
            let full = self.root.join(rel);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    self.clear(rel, shown)?;
                    mkdir(&full)
                        .map_err(|e| ArchiveError::io(format!("cannot create `{shown}`"), e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&full)
                    .map_err(|e| ArchiveError::io(format!("cannot create `{shown}`"), e))?,
                Err(e) => return Err(ArchiveError::io(format!("cannot check `{shown}`"), e)),
            }
            self.known_dirs.insert(rel.to_path_buf());
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        rel: &Path,
        shown: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        mtime: Option<u64>,
    ) -> Result<(), ArchiveError> {
        let full = self.root.join(rel);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(|err| ArchiveError::io(format!("cannot create `{shown}`"), err))?;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(ArchiveError::io(format!("cannot read `{shown}`"), err)),
            };
            if self.stats.bytes + n as u64 > self.limit {
                return Err(ArchiveError::Unsafe(format!(
                    "entry `{shown}`: the archive unpacks to more than {} MiB (the volume's size_gb, or the node's free disk less its reserve); restore refused",
                    self.limit / (1024 * 1024)
                )));
            }
            f.write_all(&self.buf[..n])
                .map_err(|err| ArchiveError::io(format!("cannot write `{shown}`"), err))?;
            self.stats.bytes += n as u64;
        }
        if let Some((uid, gid)) = owner {
            self.chown(|| std::os::unix::fs::fchown(&f, Some(uid), Some(gid)))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|err| ArchiveError::io(format!("cannot set the mode of `{shown}`"), err))?;
        if let Some(t) = mtime {
            // Times are a courtesy; a file system that refuses them loses nothing.
            let _ = f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t));
        }
        self.stats.files += 1;
        Ok(())
    }

    fn is_plain_file(&mut self, rel: &Path) -> Result<bool, ArchiveError> {
        if let Some(parent) = rel.parent() {
            let mut cur = PathBuf::new();
            for c in parent.components() {
                cur.push(c);
                if !self.known_dirs.contains(&cur) {
                    match fs::symlink_metadata(self.root.join(&cur)) {
                        Ok(m) if m.is_dir() => {
                            self.known_dirs.insert(cur.clone());
                        }
                        _ => return Ok(false),
                    }
                }
            }
        }
        Ok(fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_file()))
    }

    /// Runs a chown unless an earlier one showed the node may not; other errors are errors.
    fn chown(&mut self, f: impl FnOnce() -> io::Result<()>) -> Result<(), ArchiveError> {
        if !self.can_chown {
            return Ok(());
        }
        match f() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                tracing::debug!("not restoring owners: the node may not chown");
                self.can_chown = false;
                Ok(())
            }
            Err(e) => Err(ArchiveError::io("cannot restore an owner", e)),
        }
    }

    /// Applies directory owners, modes and times, deepest first.
    fn finish_dirs(&mut self) -> Result<(), ArchiveError> {
        let mut dirs = std::mem::take(&mut self.deferred);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
        for d in dirs {
            let full = self.root.join(&d.rel);
            let shown = d.rel.display().to_string();
            if let Some((uid, gid)) = d.owner {
                self.chown(|| std::os::unix::fs::lchown(&full, Some(uid), Some(gid)))?;
            }
            if let Some(t) = d.mtime {
                if let Ok(f) = File::open(&full) {
                    let _ = f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(t));
                }
            }
            fs::set_permissions(&full, fs::Permissions::from_mode(d.mode))
                .map_err(|e| ArchiveError::io(format!("cannot set the mode of `{shown}`"), e))?;
        }
        Ok(())
    }
}

fn mkdir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar holding one file of `len` zeros.
    fn tar_of(len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "zeros", std::io::repeat(0).take(len as u64))
            .expect("append");
        b.into_inner().expect("tar")
    }

    #[test]
    fn a_restore_stops_at_its_byte_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let archive = tar_of(3 * 1024 * 1024);
        let err = unpack(&archive[..], dir.path(), 1024 * 1024).expect_err("over the limit");
        assert!(
            err.to_string().contains("unpacks to more than 1 MiB"),
            "{err}"
        );
        let written = fs::metadata(dir.path().join("zeros")).map_or(0, |m| m.len());
        assert!(written <= 1024 * 1024, "{written} bytes written");
        let fits = tempfile::tempdir().expect("tmp");
        let stats = unpack(&archive[..], fits.path(), 3 * 1024 * 1024).expect("exactly fits");
        assert_eq!(stats.bytes, 3 * 1024 * 1024);
    }

    #[test]
    fn relative_paths_only() {
        assert_eq!(safe_relative(Path::new("./a/b")).unwrap(), Path::new("a/b"));
        assert_eq!(safe_relative(Path::new(".")).unwrap(), Path::new(""));
        assert!(safe_relative(Path::new("a/../../x")).is_err());
        assert!(safe_relative(Path::new("../x")).is_err());
        assert!(safe_relative(Path::new("/etc/x")).is_err());
    }

    #[test]
    fn symlinks_judged_from_where_they_sit() {
        assert!(link_stays_inside(Path::new("a/l"), Path::new("../b")));
        assert!(link_stays_inside(Path::new("l"), Path::new("a/./b")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("a/l"), Path::new("../../b")));
        assert!(!link_stays_inside(
            Path::new("a/l"),
            Path::new("x/../../../b")
        ));
        assert!(!link_stays_inside(Path::new("l"), Path::new("/etc")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("")));
    }
}
