//! The `s3` volume backend against a real S3 server (`s3s-fs`, see `shadow_tests::s3`).
//!
//! Each test starts its own server and its own node data dirs, so they run in parallel.
//! Figures for restore and persist throughput against raw transfers come from the ignored
//! test `throughput_against_raw_transfers` (`--ignored --nocapture`, best with `--release`).

use std::{
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use shadow_common::task::{Task, TaskSpec};
use shadow_nodeproxy::{
    config::NodeConfig,
    volume::{
        s3::{keys, store::Store, S3Volumes},
        Attached, Fence, FenceCheck, FenceError, VolumeBackend, VolumeError,
    },
};
use shadow_tests::s3::{self as s3srv, S3Server};
use tar::EntryType;
use tempfile::TempDir;
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;

async fn backend(s3: &S3Server, data_dir: &Path, keep: u32) -> S3Volumes {
    let mut config = NodeConfig::new("node", "http://127.0.0.1:1", data_dir.to_path_buf());
    s3.configure(&mut config);
    config.snapshot_keep = keep;
    let vols = S3Volumes::from_config(&config)
        .await
        .expect("backend")
        .expect("a bucket is set");
    vols.ensure_bucket().await.expect("bucket");
    vols
}

fn task(seed: Option<&str>) -> Task {
    let mut volume = serde_json::json!({"kind": "s3"});
    if let Some(seed) = seed {
        volume["seed"] = seed.into();
    }
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "name": "t", "domains": ["t.example"], "image": "x", "volume": volume,
    }))
    .expect("spec");
    Task {
        id: uuid::Uuid::new_v4().simple().to_string(),
        spec,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every entry under `root`: relative path, kind, mode, content or link target.
fn listing(root: &Path) -> Vec<(PathBuf, String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((
                    rel,
                    "link".into(),
                    0,
                    t.into_os_string().into_encoded_bytes(),
                ));
            } else if m.is_dir() {
                out.push((rel, "dir".into(), mode, Vec::new()));
                stack.push(p);
            } else {
                out.push((rel, "file".into(), mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A fence whose check can be told to refuse, and that counts how often it was asked.
#[derive(Default)]
struct TestFence {
    refuse: AtomicBool,
    asked: AtomicUsize,
}

#[async_trait]
impl FenceCheck for TestFence {
    async fn still_current(&self, _task: &str, token: u64) -> Result<(), FenceError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            Err(FenceError::Superseded(format!(
                "token {token} was superseded"
            )))
        } else {
            Ok(())
        }
    }
}

/// Deterministic incompressible bytes.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Writes `len` bytes of seeded noise to `path`, 1 MiB at a time.
fn write_noise(path: &Path, seed: u64, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut rng = XorShift(seed | 1);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// A 64-bit checksum of a file (FNV-1a over 8-byte words), read 1 MiB at a time.
fn checksum(path: &Path) -> (u64, u64) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut h: u64 = 0xcbf29ce484222325;
    let mut len = 0;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return (h, len);
        }
        len += n as u64;
        for w in buf[..n].chunks(8) {
            let mut word = [0u8; 8];
            word[..w.len()].copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x100000001b3);
        }
    }
}

/// Tar archives written by hand, byte by byte, so they can hold what `tar::Builder` refuses
/// to write (`..`, absolute paths).
#[derive(Default)]
struct EvilTar(Vec<u8>);

impl EvilTar {
    fn entry(mut self, path: &str, kind: EntryType, link: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(path, EntryType::Regular, "", data)
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

async fn put(store: &Store, key: &str, bytes: &[u8]) {
    let mut up = store.upload(key);
    up.push(bytes).await.unwrap();
    up.finish().await.unwrap();
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn no_bucket_means_no_backend() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::new("n", "http://127.0.0.1:1", dir.path().to_path_buf());
    assert!(S3Volumes::from_config(&config).await.unwrap().is_none());
}

#[tokio::test]
async fn first_attach_starts_empty_and_open_to_every_user() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let vols = backend(&s3, data.path(), 2).await;
    let t = task(None);
    let attached = vols.attach(&t, &Fence::unchecked(1)).await.unwrap();
    assert!(attached.host_path.is_absolute());
    assert_eq!(attached.host_path, vols.dir(&t.id).canonicalize().unwrap());
    assert_eq!(std::fs::read_dir(&attached.host_path).unwrap().count(), 0);
    assert_eq!(mode(&attached.host_path), 0o777);
    assert!(vols.pointer(&t.id).await.unwrap().is_none());
}

#[tokio::test]
async fn detach_then_attach_elsewhere_keeps_content_modes_links_and_empty_dirs() {
    let s3 = s3srv::spawn().await;
    let (node_a, node_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        backend(&s3, node_a.path(), 2).await,
        backend(&s3, node_b.path(), 2).await,
    );
    let t = task(None);
    let attached = a.attach(&t, &Fence::unchecked(1)).await.unwrap();
    let root = attached.host_path.clone();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/secret.txt"), b"only me").unwrap();
    std::fs::set_permissions(
        root.join("a/b/secret.txt"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("bin/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    std::fs::set_permissions(root.join("empty"), PermissionsExt::from_mode(0o750)).unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    std::os::unix::fs::symlink("a/b/secret.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("../bin", root.join("a/up")).unwrap();
    std::os::unix::fs::symlink("nowhere-yet", root.join("dangling")).unwrap();
    let long = "d".repeat(120);
    std::fs::create_dir_all(root.join(&long).join(&long)).unwrap();
    std::fs::write(root.join(&long).join(&long).join("deep.txt"), b"long names").unwrap();
    let before = listing(&root);
    let mtime = std::fs::metadata(root.join("bin/run.sh")).unwrap().mtime();

    // A checkpoint keeps the volume attached; the detach commits again and lets go of it.
    a.checkpoint(&t, &attached, &Fence::unchecked(1))
        .await
        .unwrap();
    assert!(root.is_dir());
    a.detach(&t, &attached, &Fence::unchecked(1)).await.unwrap();
    assert!(!root.exists(), "detach removes the local copy");
    let (pointer, _) = a.pointer(&t.id).await.unwrap().expect("committed");
    assert_eq!(pointer.token, 1);
    assert!(pointer
        .key
        .starts_with(&format!("tasks/{}/snapshots/1-", t.id)));

    let restored = b.attach(&t, &Fence::unchecked(2)).await.unwrap();
    assert_eq!(listing(&restored.host_path), before);
    assert_eq!(mode(&restored.host_path), 0o777);
    let m = std::fs::metadata(restored.host_path.join("bin/run.sh")).unwrap();
    assert_eq!(m.mtime(), mtime, "modification times survive");
    assert_eq!(
        std::fs::read(restored.host_path.join("a/up/run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
}

#[tokio::test]
async fn a_500_mib_volume_round_trips_with_identical_checksums() {
    let s3 = s3srv::spawn().await;
    let (node_a, node_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        backend(&s3, node_a.path(), 2).await,
        backend(&s3, node_b.path(), 2).await,
    );
    let t = task(None);
    let attached = a.attach(&t, &Fence::unchecked(1)).await.unwrap();
    let root = attached.host_path.clone();
    // 500 MiB: one big file, a few medium ones, a pile of small ones.
    let mut files = vec![("big.bin".to_string(), 400 * MIB)];
    files.extend((0..4).map(|i| (format!("medium/{i}.bin"), 24 * MIB)));
    files.extend((0..64).map(|i| (format!("small/{i}.bin"), 64 * 1024)));
    std::fs::create_dir(root.join("medium")).unwrap();
    std::fs::create_dir(root.join("small")).unwrap();
    let gen = {
        let (root, files) = (root.clone(), files.clone());
        tokio::task::spawn_blocking(move || {
            files
                .iter()
                .enumerate()
                .map(|(i, (name, len))| {
                    write_noise(&root.join(name), i as u64 + 7, *len);
                    (name.clone(), checksum(&root.join(name)))
                })
                .collect::<Vec<_>>()
        })
    };
    let sums = gen.await.unwrap();
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total >= 500 * MIB);

    let started = Instant::now();
    a.detach(&t, &attached, &Fence::unchecked(1)).await.unwrap();
    let persist = started.elapsed();
    let started = Instant::now();
    let restored = b.attach(&t, &Fence::unchecked(2)).await.unwrap();
    let restore = started.elapsed();

    let root = restored.host_path.clone();
    let restored_sums = tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|(name, _)| (name.clone(), checksum(&root.join(name))))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(restored_sums, sums);
    let mib = (total / MIB) as f64;
    println!(
        "{mib:.0} MiB: persist {:.2} s ({:.0} MiB/s), restore {:.2} s ({:.0} MiB/s)",
        persist.as_secs_f64(),
        mib / persist.as_secs_f64(),
        restore.as_secs_f64(),
        mib / restore.as_secs_f64()
    );
}

#[tokio::test]
async fn a_stale_lease_cannot_commit_and_the_pointer_stays() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let vols = backend(&s3, data.path(), 5).await;
    let t = task(None);
    let snapshots = |vols: &S3Volumes| {
        let store = vols.store().clone();
        let prefix = keys::snapshots_prefix(&t.id);
        async move { store.list(&prefix).await.unwrap() }
    };

    // The newest holder (token 5) commits.
    let attached = vols.attach(&t, &Fence::unchecked(5)).await.unwrap();
    std::fs::write(attached.host_path.join("f"), b"newest").unwrap();
    vols.checkpoint(&t, &attached, &Fence::unchecked(5))
        .await
        .unwrap();
    let (committed, _) = vols.pointer(&t.id).await.unwrap().unwrap();
    assert_eq!(snapshots(&vols).await.len(), 1);

    // An older holder (token 3) may neither attach nor commit over it.
    let err = vols.attach(&t, &Fence::unchecked(3)).await.unwrap_err();
    assert!(matches!(err, VolumeError::Fenced { token: 3, .. }), "{err}");
    let stale = Attached::dir(attached.host_path.clone());
    let err = vols
        .checkpoint(&t, &stale, &Fence::unchecked(3))
        .await
        .unwrap_err();
    assert!(matches!(err, VolumeError::Fenced { token: 3, .. }), "{err}");
    assert!(err.to_string().contains("token 5"), "{err}");
    assert_eq!(vols.pointer(&t.id).await.unwrap().unwrap().0, committed);
    assert_eq!(
        snapshots(&vols).await.len(),
        1,
        "the refused upload is deleted"
    );

    // A holder whose lease the master no longer honours is refused at commit time, after its
    // upload: the check is the last thing before the pointer flips.
    let check = Arc::new(TestFence::default());
    check.refuse.store(true, Ordering::SeqCst);
    let fence = Fence::new(6, check.clone());
    let err = vols.detach(&t, &stale, &fence).await.unwrap_err();
    assert!(matches!(err, VolumeError::Fenced { token: 6, .. }), "{err}");
    assert!(err.to_string().contains("superseded"), "{err}");
    assert_eq!(check.asked.load(Ordering::SeqCst), 1);
    assert_eq!(vols.pointer(&t.id).await.unwrap().unwrap().0, committed);
    assert_eq!(snapshots(&vols).await.len(), 1);
    assert!(stale.host_path.is_dir(), "a failed detach keeps the data");

    // Once the master says yes again, the same detach goes through.
    check.refuse.store(false, Ordering::SeqCst);
    vols.detach(&t, &stale, &fence).await.unwrap();
    assert_eq!(vols.pointer(&t.id).await.unwrap().unwrap().0.token, 6);
    assert!(!stale.host_path.exists());

    // A detach with the directory gone never commits an empty volume over the data.
    let (before, _) = vols.pointer(&t.id).await.unwrap().unwrap();
    let err = vols
        .detach(&t, &stale, &Fence::unchecked(6))
        .await
        .unwrap_err();
    assert!(matches!(err, VolumeError::Io { .. }), "{err}");
    assert_eq!(vols.pointer(&t.id).await.unwrap().unwrap().0, before);
}

/// A fence check that, when first asked, commits a newer pointer behind the caller's back:
/// the window between reading the pointer and writing it.
struct Racer {
    store: Store,
    task: String,
    fired: AtomicBool,
}

#[async_trait]
impl FenceCheck for Racer {
    async fn still_current(&self, _task: &str, token: u64) -> Result<(), FenceError> {
        if !self.fired.swap(true, Ordering::SeqCst) {
            let newer = keys::Pointer {
                key: keys::new_snapshot_key(&self.task, token + 1),
                token: token + 1,
                created_ms: 0,
            };
            self.store
                .put_small(&keys::pointer_key(&self.task), newer.to_json(), None)
                .await
                .map_err(|e| FenceError::Unreachable(e.to_string()))?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_pointer_flip_is_a_conditional_write() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let vols = backend(&s3, data.path(), 2).await;
    // Once with no pointer yet (If-None-Match: *), once over an existing one (If-Match).
    for existing in [false, true] {
        let t = task(None);
        let attached = vols.attach(&t, &Fence::unchecked(1)).await.unwrap();
        if existing {
            vols.checkpoint(&t, &attached, &Fence::unchecked(1))
                .await
                .unwrap();
        }
        let racer = Arc::new(Racer {
            store: vols.store().clone(),
            task: t.id.clone(),
            fired: AtomicBool::new(false),
        });
        let err = vols
            .checkpoint(&t, &attached, &Fence::new(1, racer))
            .await
            .unwrap_err();
        assert!(matches!(err, VolumeError::Fenced { token: 1, .. }), "{err}");
        let (p, _) = vols.pointer(&t.id).await.unwrap().unwrap();
        assert_eq!(p.token, 2, "the racer's pointer was not overwritten");
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_snapshots() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let vols = backend(&s3, data.path(), 2).await;
    let t = task(None);
    let attached = vols.attach(&t, &Fence::unchecked(1)).await.unwrap();
    let mut committed = Vec::new();
    for (i, token) in [1, 1, 2, 3, 3].into_iter().enumerate() {
        std::fs::write(attached.host_path.join("n"), i.to_string()).unwrap();
        vols.checkpoint(&t, &attached, &Fence::unchecked(token))
            .await
            .unwrap();
        committed.push(vols.pointer(&t.id).await.unwrap().unwrap().0.key);
    }
    let mut left = vols
        .store()
        .list(&keys::snapshots_prefix(&t.id))
        .await
        .unwrap();
    left.sort();
    let mut newest = committed[3..].to_vec();
    newest.sort();
    assert_eq!(left, newest);
    // And the newest is what a restore gets.
    let b = tempfile::tempdir().unwrap();
    let other = backend(&s3, b.path(), 2).await;
    let restored = other.attach(&t, &Fence::unchecked(4)).await.unwrap();
    assert_eq!(std::fs::read(restored.host_path.join("n")).unwrap(), b"4");
}

/// Attaches a task seeded with `archive` and returns the error, checking that nothing was
/// written outside the volume: not next to it, not in the sentinel dir beside the node's data.
async fn refused(s3: &S3Server, archive: Vec<u8>, sentinel: &Path) -> String {
    let data = tempfile::tempdir().unwrap();
    let vols = backend(s3, data.path(), 2).await;
    let key = format!("seeds/{}.tar", uuid::Uuid::new_v4());
    put(vols.store(), &key, &archive).await;
    let t = task(Some(&key));
    let err = vols.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    let VolumeError::UnsafeArchive { message, .. } = &err else {
        panic!("expected an unsafe archive, got {err}");
    };
    // The half-restored volume is gone, and nothing else appeared in the node's data dir.
    assert!(!vols.dir(&t.id).exists());
    let volumes = data.path().join("s3");
    assert_eq!(std::fs::read_dir(&volumes).unwrap().count(), 0);
    let names: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["s3"]);
    assert_eq!(
        listing(sentinel),
        vec![(
            PathBuf::from("keep"),
            "file".into(),
            0o644,
            b"untouched".to_vec()
        )]
    );
    message.clone()
}

#[tokio::test]
async fn unsafe_archives_are_refused_and_write_nothing_outside() {
    let s3 = s3srv::spawn().await;
    let outside: TempDir = tempfile::tempdir().unwrap();
    let sentinel = outside.path().join("sentinel");
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("keep"), b"untouched").unwrap();
    std::fs::set_permissions(sentinel.join("keep"), PermissionsExt::from_mode(0o644)).unwrap();
    let s = sentinel.display().to_string();

    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "dot-dot",
            EvilTar::default()
                .file("ok.txt", b"fine")
                .file("../x", b"escaped")
                .finish(),
            "entry `../x`".into(),
        ),
        (
            "nested dot-dot",
            EvilTar::default().file("a/../../x", b"escaped").finish(),
            "entry `a/../../x`".into(),
        ),
        (
            "absolute path",
            EvilTar::default()
                .file(&format!("{s}/pwned"), b"escaped")
                .finish(),
            format!("entry `{s}/pwned`"),
        ),
        (
            "absolute /etc",
            EvilTar::default().file("/etc/x", b"escaped").finish(),
            "entry `/etc/x`".into(),
        ),
        (
            "symlink to an absolute dir, then a file through it",
            EvilTar::default()
                .entry("evil", EntryType::Symlink, &s, b"")
                .file("evil/pwned", b"escaped")
                .finish(),
            "entry `evil`: a symlink to".into(),
        ),
        (
            "symlink to /etc, then a file through it",
            EvilTar::default()
                .entry("etc", EntryType::Symlink, "/etc", b"")
                .file("etc/x", b"escaped")
                .finish(),
            "entry `etc`: a symlink to `/etc`".into(),
        ),
        (
            "relative symlink climbing out",
            EvilTar::default()
                .entry("up", EntryType::Symlink, "../../../../../..", b"")
                .file("up/pwned", b"escaped")
                .finish(),
            "entry `up`: a symlink to".into(),
        ),
        (
            "a file through an in-volume symlink",
            EvilTar::default()
                .entry("sub", EntryType::Directory, "", b"")
                .entry("alias", EntryType::Symlink, "sub", b"")
                .file("alias/f", b"through a link")
                .finish(),
            "entry `alias/f`: would be written through the symlink `alias`".into(),
        ),
        (
            "hard link to an absolute path",
            EvilTar::default()
                .entry("h", EntryType::Link, &format!("{s}/keep"), b"")
                .finish(),
            "entry `h`: a hard link to".into(),
        ),
        (
            "hard link climbing out",
            EvilTar::default()
                .entry("h", EntryType::Link, "../../x", b"")
                .finish(),
            "entry `h`: a hard link to".into(),
        ),
        (
            "a chain of symlinks, each inside on its own, leading out",
            EvilTar::default()
                .entry("d", EntryType::Directory, "", b"")
                .entry("d/x", EntryType::Symlink, "..", b"")
                .entry("y", EntryType::Symlink, "d/x/..", b"")
                .finish(),
            "entry `y`: a chain of symlinks through it leads outside the volume".into(),
        ),
        (
            "a symlink loop",
            EvilTar::default()
                .entry("a", EntryType::Symlink, "b", b"")
                .entry("b", EntryType::Symlink, "a", b"")
                .finish(),
            "a chain of symlinks through it leads outside the volume".into(),
        ),
        (
            "replacing a directory",
            EvilTar::default()
                .entry("d", EntryType::Directory, "", b"")
                .file("d/f", b"x")
                .entry("d", EntryType::Symlink, ".", b"")
                .finish(),
            "entry `d`: would replace a directory".into(),
        ),
    ];
    for (name, archive, expected) in cases {
        let message = refused(&s3, archive, &sentinel).await;
        assert!(
            message.contains(&expected),
            "{name}: {message:?} should contain {expected:?}"
        );
    }
    assert!(!Path::new("/etc/x").exists());
}

#[tokio::test]
async fn a_restore_bomb_stops_at_the_free_space_and_seeds_stay_under_their_prefix() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    // Leave 8 MiB usable: the node's reserve is everything else that is free.
    let free_mib = fs4::available_space(data.path()).unwrap() / (1024 * 1024);
    let mut config = NodeConfig::new("node", "http://127.0.0.1:1", data.path().to_path_buf());
    s3.configure(&mut config);
    config.disk_reserve_mb = free_mib - 8;
    let vols = S3Volumes::from_config(&config).await.unwrap().unwrap();
    vols.ensure_bucket().await.unwrap();

    // 64 MiB of zeros: a few KiB compressed.
    let bomb = EvilTar::default()
        .file("small", b"fits")
        .file("zeros", &vec![0u8; 64 * 1024 * 1024])
        .finish();
    let packed = zstd(&bomb);
    assert!(
        packed.len() < 1024 * 1024,
        "a small object: {} bytes",
        packed.len()
    );
    put(vols.store(), "seeds/bomb.tar.zst", &packed).await;
    let t = task(Some("seeds/bomb.tar.zst"));
    let err = vols.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    // Other tests of this file write to the same disk meanwhile: the free space may have gone
    // below the reserve before the restore began, which is refused too (the byte limit itself is
    // unit-tested in archive::unpack).
    let message = err.to_string();
    assert!(
        message.contains("unpacks to more than") || message.contains("not more than its reserve"),
        "a clear refusal: {err}"
    );
    assert!(!vols.dir(&t.id).exists(), "nothing half-restored is left");

    // A seed outside the prefix (another task's snapshot, say) is refused before any read.
    let other = task(None);
    let t = task(Some(&format!("tasks/{}/snapshots/x.tar.zst", other.id)));
    let err = vols.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    assert!(err.to_string().contains("seed prefix"), "{err}");
    assert!(!vols.dir(&t.id).exists(), "a refused seed leaves nothing");

    // A node whose data dir is not made yet still measures its disk (a fresh node).
    let fresh = tempfile::tempdir().unwrap();
    let mut fresh_config = config.clone();
    fresh_config.data_dir = fresh.path().join("not/made/yet");
    fresh_config.disk_reserve_mb = 0;
    let vols2 = S3Volumes::from_config(&fresh_config)
        .await
        .unwrap()
        .unwrap();
    put(
        vols2.store(),
        "seeds/small.tar",
        &EvilTar::default().file("a", b"b").finish(),
    )
    .await;
    let t = task(Some("seeds/small.tar"));
    let attached = vols2
        .attach(&t, &Fence::unchecked(1))
        .await
        .expect("restored");
    assert_eq!(std::fs::read(attached.host_path.join("a")).unwrap(), b"b");

    // A disk with less free than the reserve refuses every restore, and makes nothing.
    config.disk_reserve_mb = u64::MAX / (2 * 1024 * 1024);
    let full = S3Volumes::from_config(&config).await.unwrap().unwrap();
    let t = task(Some("seeds/bomb.tar.zst"));
    let err = full.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    assert!(
        err.to_string().contains("not more than its reserve"),
        "{err}"
    );
    assert!(
        !full.dir(&t.id).exists(),
        "a refused restore leaves nothing"
    );
}

#[tokio::test]
async fn devices_and_fifos_in_an_archive_are_skipped() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let vols = backend(&s3, data.path(), 2).await;
    let archive = EvilTar::default()
        .entry("fifo", EntryType::Fifo, "", b"")
        .entry("null", EntryType::Char, "", b"")
        .file("kept.txt", b"kept")
        .finish();
    put(vols.store(), "seeds/special.tar.zst", &zstd(&archive)).await;
    let t = task(Some("seeds/special.tar.zst"));
    let attached = vols.attach(&t, &Fence::unchecked(1)).await.unwrap();
    assert_eq!(
        listing(&attached.host_path),
        vec![(
            PathBuf::from("kept.txt"),
            "file".into(),
            0o644,
            b"kept".to_vec()
        )]
    );
}

#[tokio::test]
async fn a_seed_is_restored_the_first_time_only() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let vols = backend(&s3, data.path(), 2).await;
    let archive = EvilTar::default()
        .entry("app", EntryType::Directory, "", b"")
        .file("app/hello.txt", b"from the seed")
        .finish();
    put(vols.store(), "seeds/app.tar.gz", &gzip(&archive)).await;
    put(vols.store(), "seeds/app.tar.zst", &zstd(&archive)).await;
    put(vols.store(), "seeds/app.tar", &archive).await;

    for seed in ["seeds/app.tar.gz", "seeds/app.tar.zst", "seeds/app.tar"] {
        let t = task(Some(seed));
        let attached = vols.attach(&t, &Fence::unchecked(1)).await.unwrap();
        let hello = attached.host_path.join("app/hello.txt");
        assert_eq!(std::fs::read(&hello).unwrap(), b"from the seed", "{seed}");
        std::fs::write(&hello, b"changed by the app").unwrap();
        vols.detach(&t, &attached, &Fence::unchecked(1))
            .await
            .unwrap();

        let again = vols.attach(&t, &Fence::unchecked(2)).await.unwrap();
        let hello = again.host_path.join("app/hello.txt");
        assert_eq!(
            std::fs::read(&hello).unwrap(),
            b"changed by the app",
            "{seed}"
        );
    }

    // A seed that is not there is an error, not an empty start.
    let t = task(Some("seeds/missing.tar.zst"));
    let err = vols.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    assert!(err.to_string().contains("seeds/missing.tar.zst"), "{err}");
    // Zip is not supported, and says so.
    put(vols.store(), "seeds/app.zip", b"PK\x03\x04rest-of-a-zip").await;
    let t = task(Some("seeds/app.zip"));
    let err = vols.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    assert!(
        err.to_string().contains("zip archives are not supported"),
        "{err}"
    );
}

/// A backend on `data_dir` whose endpoint is a closed port: nothing listens there.
async fn unreachable(s3: &S3Server, data_dir: &Path) -> (S3Volumes, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = NodeConfig::new("node", "http://127.0.0.1:1", data_dir.to_path_buf());
    s3.configure(&mut config);
    config.s3_endpoint = Some(format!("http://127.0.0.1:{port}"));
    (
        S3Volumes::from_config(&config).await.unwrap().unwrap(),
        port,
    )
}

#[tokio::test]
async fn an_unreachable_store_is_unavailable() {
    let s3 = s3srv::spawn().await;
    let data = tempfile::tempdir().unwrap();
    let (vols, port) = unreachable(&s3, data.path()).await;
    let t = task(None);
    let started = Instant::now();
    let err = vols.attach(&t, &Fence::unchecked(1)).await.unwrap_err();
    assert!(matches!(err, VolumeError::Unavailable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("is unreachable"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Nothing was prepared for a volume that could not be read.
    assert!(!vols.dir(&t.id).exists());
}

#[tokio::test]
async fn a_copy_not_yet_written_back_is_kept_until_another_node_commits() {
    let s3 = s3srv::spawn().await;
    let (node_a, node_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = backend(&s3, node_a.path(), 2).await;
    let b = backend(&s3, node_b.path(), 2).await;
    // The same node, while S3 is out of reach.
    let (a_cut_off, _) = unreachable(&s3, node_a.path()).await;
    let t = task(None);
    let read = |at: &Attached| std::fs::read_to_string(at.host_path.join("f")).unwrap();

    let attached = a.attach(&t, &Fence::unchecked(1)).await.unwrap();
    std::fs::write(attached.host_path.join("f"), "checkpointed").unwrap();
    a.checkpoint(&t, &attached, &Fence::unchecked(1))
        .await
        .unwrap();
    std::fs::write(attached.host_path.join("f"), "not in S3 yet").unwrap();
    let err = a_cut_off
        .detach(&t, &attached, &Fence::unchecked(1))
        .await
        .unwrap_err();
    assert!(matches!(err, VolumeError::Unavailable { .. }), "{err}");
    assert_eq!(
        read(&attached),
        "not in S3 yet",
        "a failed detach keeps the data"
    );

    // The node attaches again: its copy is newer than the last snapshot, so it is kept.
    let again = a.attach(&t, &Fence::unchecked(2)).await.unwrap();
    assert_eq!(read(&again), "not in S3 yet");
    assert_eq!(mode(&again.host_path), 0o777);
    std::fs::write(again.host_path.join("f"), "left behind").unwrap();
    a_cut_off
        .detach(&t, &again, &Fence::unchecked(2))
        .await
        .unwrap_err();

    // Another node takes over from the last snapshot and commits; the leftover copy on the
    // first node is stale from then on and gives way to the newer snapshot.
    let on_b = b.attach(&t, &Fence::unchecked(3)).await.unwrap();
    assert_eq!(read(&on_b), "checkpointed");
    std::fs::write(on_b.host_path.join("f"), "from b").unwrap();
    b.detach(&t, &on_b, &Fence::unchecked(3)).await.unwrap();
    let back = a.attach(&t, &Fence::unchecked(4)).await.unwrap();
    assert_eq!(read(&back), "from b");
}

/// Restore and persist throughput against a raw PUT/GET of the same bytes on the same server,
/// for incompressible ("noise") and compressible ("text") data. The raw PUT reads the file from
/// disk and the raw GET writes it to disk, as a persist reads the volume and a restore writes it.
/// Sizes in MiB from `SHADOW_BENCH_SIZES_MIB` (comma-separated, default 100,500); each size and
/// kind is measured `SHADOW_BENCH_REPEAT` times (default 3), Shadow and raw alternating, and the
/// median of each is printed as one machine-readable
/// `BENCH-S3 size_mib=.. kind=.. persist_s=.. raw_put_s=.. restore_s=.. raw_get_s=..` line, which
/// `contrib/bench/run.sh` puts in docs/benchmarks.md.
/// Run: `cargo test -p shadow-nodeproxy --release --test s3_volume -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures, asserts nothing about time"]
async fn throughput_against_raw_transfers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s3 = s3srv::spawn().await;
    let sizes: Vec<u64> = std::env::var("SHADOW_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "100,500".to_owned())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SHADOW_BENCH_SIZES_MIB: sizes in MiB")
        })
        .collect();
    let repeat: usize = std::env::var("SHADOW_BENCH_REPEAT")
        .ok()
        .map(|r| r.parse().expect("SHADOW_BENCH_REPEAT: a count"))
        .unwrap_or(3)
        .max(1);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    for size_mib in sizes {
        for kind in ["noise", "text"] {
            let t = task(None);
            let raw_key = format!("bench/{}", t.id);
            let scratch = tempfile::tempdir().unwrap();
            let raw_file = scratch.path().join("raw.bin");
            // The volume moves from node to node: each round persists it from the node that
            // holds it and restores it on a fresh one, as a move between nodes does.
            let mut dir = tempfile::tempdir().unwrap();
            let mut node = backend(&s3, dir.path(), 2).await;
            let mut token = 1;
            let mut attached = node.attach(&t, &Fence::unchecked(token)).await.unwrap();
            let file = attached.host_path.join("data.bin");
            {
                let file = file.clone();
                tokio::task::spawn_blocking(move || match kind {
                    "noise" => write_noise(&file, size_mib, size_mib * MIB),
                    _ => write_text(&file, size_mib * MIB),
                })
                .await
                .unwrap();
            }
            let (mut persists, mut restores, mut puts, mut gets) = (vec![], vec![], vec![], vec![]);
            for _ in 0..repeat {
                // Raw PUT: the file's bytes, read from disk, in the same multipart upload.
                let source = attached.host_path.join("data.bin");
                let started = Instant::now();
                let mut up = node.store().upload(&raw_key);
                let mut f = tokio::fs::File::open(&source).await.unwrap();
                let mut buf = vec![0u8; MIB as usize];
                loop {
                    let n = f.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    up.push(&buf[..n]).await.unwrap();
                }
                up.finish().await.unwrap();
                puts.push(started.elapsed());

                let started = Instant::now();
                node.detach(&t, &attached, &Fence::unchecked(token))
                    .await
                    .unwrap();
                persists.push(started.elapsed());

                // Raw GET: the object's bytes, written to a file.
                let started = Instant::now();
                let mut body = node.store().get(&raw_key).await.unwrap().unwrap().body;
                let mut out = tokio::fs::File::create(&raw_file).await.unwrap();
                let mut got = 0u64;
                while let Some(chunk) = body.try_next().await.unwrap() {
                    got += chunk.len() as u64;
                    out.write_all(&chunk).await.unwrap();
                }
                out.flush().await.unwrap();
                drop(out);
                assert_eq!(got, size_mib * MIB);
                gets.push(started.elapsed());

                let next_dir = tempfile::tempdir().unwrap();
                let next = backend(&s3, next_dir.path(), 2).await;
                token += 1;
                let started = Instant::now();
                let restored = next.attach(&t, &Fence::unchecked(token)).await.unwrap();
                restores.push(started.elapsed());
                assert_eq!(
                    std::fs::metadata(restored.host_path.join("data.bin"))
                        .unwrap()
                        .len(),
                    size_mib * MIB
                );
                (dir, node, attached) = (next_dir, next, restored);
            }
            drop(dir);
            let (persist, raw_put, restore, raw_get) = (
                median(persists),
                median(puts),
                median(restores),
                median(gets),
            );
            let rate = |d: Duration| size_mib as f64 / d.as_secs_f64();
            println!(
                "{size_mib} MiB {kind} (median of {repeat}): persist {:.2} s ({:.0} MiB/s) vs raw PUT \
                 {:.2} s ({:.0} MiB/s); restore {:.2} s ({:.0} MiB/s) vs raw GET {:.2} s ({:.0} MiB/s)",
                persist.as_secs_f64(),
                rate(persist),
                raw_put.as_secs_f64(),
                rate(raw_put),
                restore.as_secs_f64(),
                rate(restore),
                raw_get.as_secs_f64(),
                rate(raw_get),
            );
            println!(
                "BENCH-S3 size_mib={size_mib} kind={kind} persist_s={:.3} raw_put_s={:.3} \
                 restore_s={:.3} raw_get_s={:.3}",
                persist.as_secs_f64(),
                raw_put.as_secs_f64(),
                restore.as_secs_f64(),
                raw_get.as_secs_f64(),
            );
        }
    }
}

/// Compressible bytes: numbered lines of text, as logs or a small database's pages might hold.
fn write_text(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0u64;
    let mut i = 0u64;
    while written < len {
        let line = format!(
            "{i:012} user={} status=ok the quick brown fox jumps over the lazy dog\n",
            i % 977
        );
        let n = (line.len() as u64).min(len - written) as usize;
        f.write_all(&line.as_bytes()[..n]).unwrap();
        written += n as u64;
        i += 1;
    }
    f.flush().unwrap();
}
