//! The block device on this node: wait for it to appear, tell a blank one from a used one, make
//! a filesystem on a blank one, mount and unmount it.
//!
//! These call the system tools (`blkid`, `mkfs.ext4`, `mount`, `umount`, `sync`) through
//! `tokio::process::Command` rather than syscalls: the tools know every filesystem and
//! partition-table signature, and their messages are what an operator can act on. The node runs
//! as root for this.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{process::Command, time::Instant};

/// First and longest wait between checks for a device.
const POLL_FIRST: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);

/// Runs a tool; on failure says which command failed and what it printed.
async fn run(program: &str, args: &[&str]) -> Result<std::process::Output, String> {
    Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program} ({e}); is it installed on the node?"))
}

fn describe(program: &str, args: &[&str], out: &std::process::Output) -> String {
    format!(
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Waits until one of `candidates` exists (symlinks followed) and returns the real device it
/// points at. The cloud's API may say "attached" before the kernel shows the disk.
pub async fn wait_for(candidates: &[PathBuf], limit: Duration) -> Result<PathBuf, String> {
    let deadline = Instant::now() + limit;
    let mut waits = shadow_common::backoff::Backoff::new(POLL_FIRST, POLL_MAX);
    loop {
        for c in candidates {
            if tokio::fs::metadata(c).await.is_ok() {
                return tokio::fs::canonicalize(c)
                    .await
                    .map_err(|e| format!("cannot resolve {}: {e}", c.display()));
            }
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            return Err(format!(
                "the volume is attached but no device appeared within {limit:?} (looked for {}); \
                 check the node's block device dir (SHADOW_BLOCK_DEVICE_DIR) and `dmesg`",
                names.join(", ")
            ));
        }
        tokio::time::sleep(waits.next_delay()).await;
    }
}

/// Whether the device holds no filesystem and no partition table (`blkid -p` finds nothing).
pub async fn is_blank(device: &Path) -> Result<bool, String> {
    let dev = device.to_string_lossy();
    let args = ["-p", dev.as_ref()];
    let out = run("blkid", &args).await?;
    match out.status.code() {
        Some(0) => Ok(false),
        // blkid's "nothing found".
        Some(2) => Ok(true),
        _ => Err(describe("blkid", &args, &out)),
    }
}

/// The filesystem type `blkid` sees on the device, if any.
pub async fn fs_type(device: &Path) -> Result<Option<String>, String> {
    let dev = device.to_string_lossy();
    let args = ["-p", "-o", "value", "-s", "TYPE", dev.as_ref()];
    let out = run("blkid", &args).await?;
    match out.status.code() {
        Some(0) => {
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok((!t.is_empty()).then_some(t))
        }
        Some(2) => Ok(None),
        _ => Err(describe("blkid", &args, &out)),
    }
}

/// Makes an ext4 filesystem. Call only on a device [`is_blank`] called blank.
pub async fn make_ext4(device: &Path) -> Result<(), String> {
    let dev = device.to_string_lossy();
    // -F: the device is whole-disk, not a partition; mkfs would otherwise ask.
    let args = ["-q", "-F", dev.as_ref()];
    let out = run("mkfs.ext4", &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(describe("mkfs.ext4", &args, &out))
    }
}

/// Whether `dir` is a mount point, from `/proc/self/mountinfo`.
pub async fn is_mounted(dir: &Path) -> Result<bool, String> {
    let info = tokio::fs::read_to_string("/proc/self/mountinfo")
        .await
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let want = dir.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Mounts `device` on `dir` (created if missing) unless something is mounted there already.
pub async fn mount(device: &Path, dir: &Path) -> Result<(), String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if is_mounted(dir).await? {
        return Ok(());
    }
    let (dev, at) = (device.to_string_lossy(), dir.to_string_lossy());
    let args = [dev.as_ref(), at.as_ref()];
    let out = run("mount", &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}; the device is not blank, so it was not reformatted: check what is on it",
            describe("mount", &args, &out)
        ))
    }
}

/// Flushes the filesystem on `dir` to the device.
pub async fn sync(dir: &Path) -> Result<(), String> {
    let at = dir.to_string_lossy();
    let args = ["-f", at.as_ref()];
    let out = run("sync", &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(describe("sync", &args, &out))
    }
}

/// Unmounts `dir`; nothing mounted there is not an error.
pub async fn unmount(dir: &Path) -> Result<(), String> {
    if !is_mounted(dir).await? {
        return Ok(());
    }
    let at = dir.to_string_lossy();
    let args = [at.as_ref()];
    let out = run("umount", &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}; is a process still using the volume?",
            describe("umount", &args, &out)
        ))
    }
}

/// Unmounts `dir` even while busy (lazily), for letting go after the lease was lost.
pub async fn unmount_lazy(dir: &Path) -> Result<(), String> {
    if unmount(dir).await.is_ok() {
        return Ok(());
    }
    let at = dir.to_string_lossy();
    let args = ["-l", at.as_ref()];
    let out = run("umount", &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(describe("umount", &args, &out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
