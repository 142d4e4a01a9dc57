//! The count, kept in `$DATA_DIR/count` as a decimal number and a newline.
//!
//! Every increment is written to `count.tmp`, fsynced, renamed over `count`, and the directory is
//! fsynced, so a stop or crash at any moment leaves either the old or the new value on disk, never
//! a torn one: the tests of "no lost data on a clean stop" rely on it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

pub struct Counter {
    dir: PathBuf,
    /// The value on disk. Held across the write so concurrent increments never lose an update.
    value: Arc<Mutex<u64>>,
}

impl Counter {
    /// Reads the count from `dir/count`; a missing file (or directory) is a count of 0.
    pub fn load(dir: PathBuf) -> Result<Self, String> {
        let path = dir.join("count");
        let value = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e| {
                format!(
                    "{} holds {:?}, not a count: {e}",
                    path.display(),
                    text.trim()
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self {
            dir,
            value: Arc::new(Mutex::new(value)),
        })
    }

    pub async fn get(&self) -> u64 {
        *self.value.lock().await
    }

    /// Adds one, durably, and returns the new value.
    pub async fn increment(&self) -> io::Result<u64> {
        // The guard moves into the blocking task: if the request is dropped mid-write, the lock is
        // still held until the write is done, so two writes never race on `count.tmp`.
        let mut guard = self.value.clone().lock_owned().await;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let next = *guard + 1;
            write_atomically(&dir, next)?;
            *guard = next;
            Ok(next)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Waits until no write is in flight and returns the value; used before exiting.
    pub async fn quiesce(&self) -> u64 {
        self.get().await
    }
}

fn write_atomically(dir: &Path, value: u64) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join("count.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{value}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join("count"))?;
    // The rename is only durable once the directory entry is.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_increments_are_all_kept() {
        let dir = std::env::temp_dir().join(format!("counter-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let counter = Arc::new(Counter::load(dir.clone()).unwrap());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let counter = counter.clone();
                tokio::spawn(async move { counter.increment().await.unwrap() })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(counter.get().await, 20);
        assert_eq!(Counter::load(dir.clone()).unwrap().get().await, 20);
        assert_eq!(fs::read_to_string(dir.join("count")).unwrap(), "20\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("counter-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("count"), "twelve").unwrap();
        let err = Counter::load(dir.clone()).err().unwrap();
        assert!(err.contains("count") && err.contains("twelve"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
