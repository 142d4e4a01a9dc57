//! Loop devices standing in for cloud block volumes, for the `ebs` and `do` tests.
//!
//! Each fake cloud volume gets a sparse file and a loop device (`losetup`); the fake cloud
//! exposes it to a node by a symlink, named as the cloud names it, in the device dir the node is
//! configured with (`SHADOW_BLOCK_DEVICE_DIR`). This needs root and `/dev/loop-control`;
//! [`skip_reason`] says why a test cannot run elsewhere.
//!
//! - [`LoopDisk`]: one file-backed loop device, unmounted and detached on drop.
//! - [`MotoDisks`]: follows moto's EC2 volumes and links each attached volume's loop device
//!   into its instance's device dir, as the kernel would show an attached EBS volume.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_ec2::{types::VolumeAttachmentState, Client};
use shadow_nodeproxy::volume::ebs::{nitro_device_name, MOVED_FROM_TAG};
use tempfile::TempDir;

/// Size of every fake disk; sparse, so it costs only what is written.
pub const DISK_MB: u64 = 64;

/// Why the block storage tests cannot run here, or `None` when they can.
pub fn skip_reason() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!(
            "block storage tests need root (loop devices, mount); running as uid {uid}"
        ));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("block storage tests need loop devices; /dev/loop-control is missing".into());
    }
    for tool in ["losetup", "mkfs.ext4", "blkid", "mount", "umount"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "block storage tests need {tool}, which is not installed"
            ));
        }
    }
    None
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Where `dev` is mounted, from `/proc/self/mountinfo`.
pub fn mounts_of(dev: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dev = dev.to_string_lossy();
    info.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let source = tail.split(' ').nth(1)?;
            let at = head.split(' ').nth(4)?;
            (source == dev).then(|| PathBuf::from(at))
        })
        .collect()
}

/// A file-backed loop device.
pub struct LoopDisk {
    pub file: PathBuf,
    pub dev: PathBuf,
}

impl LoopDisk {
    /// A blank disk of [`DISK_MB`] in a new sparse `file`.
    pub fn blank(file: PathBuf) -> LoopDisk {
        let f = std::fs::File::create(&file).expect("create disk file");
        f.set_len(DISK_MB * 1024 * 1024)
            .expect("size the disk file");
        Self::on(file)
    }

    /// A loop device on an existing file.
    pub fn on(file: PathBuf) -> LoopDisk {
        let dev = run("losetup", &["--find", "--show", &file.to_string_lossy()]);
        LoopDisk {
            file,
            dev: PathBuf::from(dev),
        }
    }

    /// The filesystem type on the disk, if any (`blkid -p`).
    pub fn fs_type(&self) -> Option<String> {
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(&self.dev)
            .output()
            .expect("blkid runs");
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!t.is_empty()).then_some(t)
    }

    /// The filesystem's UUID, if any: changes when a disk is reformatted.
    pub fn fs_uuid(&self) -> Option<String> {
        let out = Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(&self.dev)
            .output()
            .expect("blkid runs");
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!t.is_empty()).then_some(t)
    }

    /// Formats the disk and writes `files` into it, as an app that used it before would have.
    pub fn format_with(&self, files: &[(&str, &str)]) {
        run("mkfs.ext4", &["-q", "-F", &self.dev.to_string_lossy()]);
        let at = tempfile::tempdir().expect("temp mount point");
        run(
            "mount",
            &[&self.dev.to_string_lossy(), &at.path().to_string_lossy()],
        );
        for (name, content) in files {
            std::fs::write(at.path().join(name), content).expect("write into the disk");
        }
        run("umount", &[&at.path().to_string_lossy()]);
    }

    /// Links the device as `link` (replacing what is there), as the kernel shows an attached disk.
    pub fn link(&self, link: &Path) {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&self.dev, link).expect("link the device");
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // A node killed in a test leaves its mount behind; nothing else will unmount it.
        for m in mounts_of(&self.dev) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[derive(Default)]
struct Disks {
    /// Volume id → its disk; kept after the volume is deleted, for a move's copy.
    disks: HashMap<String, LoopDisk>,
    /// Instance id → the device dir of the node that plays it.
    dirs: HashMap<String, PathBuf>,
}

/// Follows moto's volumes: a loop device per volume, linked into the device dir of the instance
/// it is attached to, unlinked once detached. A volume moved by snapshot (tagged
/// `shadow-moved-from`) starts as a copy of the old volume's disk, as EBS restores a snapshot.
pub struct MotoDisks {
    state: Arc<Mutex<Disks>>,
    task: tokio::task::JoinHandle<()>,
    dir: TempDir,
}

impl MotoDisks {
    pub fn start(ec2: Client) -> MotoDisks {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = Arc::new(Mutex::new(Disks::default()));
        let task = tokio::spawn(follow(ec2, state.clone(), dir.path().to_path_buf()));
        MotoDisks { state, task, dir }
    }

    /// A device dir for the node playing `instance`.
    pub fn device_dir(&self, instance: &str) -> PathBuf {
        let d = self.dir.path().join(format!("dev-{instance}"));
        std::fs::create_dir_all(&d).expect("device dir");
        let mut s = self.state.lock().expect("lock");
        s.dirs.insert(instance.to_string(), d.clone());
        d
    }

    /// The loop device of a volume, once seen.
    pub fn device_of(&self, volume: &str) -> Option<PathBuf> {
        let s = self.state.lock().expect("lock");
        s.disks.get(volume).map(|d| d.dev.clone())
    }

    /// The filesystem type on a volume's disk.
    pub fn fs_type_of(&self, volume: &str) -> Option<String> {
        let s = self.state.lock().expect("lock");
        s.disks.get(volume).and_then(LoopDisk::fs_type)
    }
}

impl Drop for MotoDisks {
    fn drop(&mut self) {
        self.task.abort();
        let disks: Vec<LoopDisk> = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.disks.drain().map(|(_, d)| d).collect()
        };
        drop(disks);
    }
}

async fn follow(ec2: Client, state: Arc<Mutex<Disks>>, files: PathBuf) {
    loop {
        if let Ok(out) = ec2.describe_volumes().send().await {
            let mut s = state.lock().expect("lock");
            for v in out.volumes() {
                let Some(id) = v.volume_id() else { continue };
                if !s.disks.contains_key(id) {
                    let file = files.join(format!("{id}.img"));
                    let from = v
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(MOVED_FROM_TAG))
                        .and_then(|t| t.value())
                        .and_then(|old| s.disks.get(old))
                        .map(|d| d.file.clone());
                    let disk = match from {
                        Some(old) => {
                            std::fs::copy(&old, &file).expect("copy the old volume's disk");
                            LoopDisk::on(file)
                        }
                        None => LoopDisk::blank(file),
                    };
                    s.disks.insert(id.to_string(), disk);
                }
                let at = v
                    .attachments()
                    .iter()
                    .find(|a| a.state() == Some(&VolumeAttachmentState::Attached))
                    .and_then(|a| a.instance_id())
                    .map(str::to_string);
                let name = nitro_device_name(id);
                for (instance, dir) in &s.dirs {
                    let link = dir.join(&name);
                    if at.as_deref() == Some(instance.as_str()) {
                        if std::fs::symlink_metadata(&link).is_err() {
                            s.disks[id].link(&link);
                        }
                    } else {
                        let _ = std::fs::remove_file(&link);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
