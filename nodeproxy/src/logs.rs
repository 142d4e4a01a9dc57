//! Each app's recent output, kept on the node after its container is gone.
//!
//! While a container runs, its stdout and stderr are followed and appended, a JSON line each
//! ([`LogLine`]: sequence number, Docker's timestamp, the run, the stream), to
//! `<data dir>/logs/<task>.log`. A file that passes `max_bytes` is renamed to `<task>.log.1`
//! (replacing the older one), so a task keeps at most twice that. The files survive the node's
//! restart. Readers get the last lines from the files and, to follow, the lines appended after
//! them from a broadcast channel (subscribed before the files are read; the sequence numbers
//! drop the overlap).

use std::{
    collections::HashMap,
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use shadow_common::{logs::LogLine, proxy::ProxyBody};
use tokio::sync::broadcast;

use crate::runtime::{ContainerRuntime, OutputLine};

/// Lines a follower may lag behind before it misses some.
const FOLLOW_BUFFER: usize = 1024;

struct TaskLog {
    /// The next line's sequence number; `None` until read from the file's last line. Held
    /// while a line is written, so one task's lines stay in order; other tasks' writes go on.
    next_seq: Mutex<Option<u64>>,
    tx: broadcast::Sender<Arc<LogLine>>,
}

pub struct LogStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Held only to find a task's log, never over a file.
    tasks: Mutex<HashMap<String, Arc<TaskLog>>>,
}

impl LogStore {
    pub fn new(data_dir: &Path, max_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            dir: data_dir.join("logs"),
            max_bytes: max_bytes.max(1024),
            tasks: Mutex::default(),
        })
    }

    fn path(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.log"))
    }

    fn older(&self, task: &str) -> PathBuf {
        self.dir.join(format!("{task}.log.1"))
    }

    /// Appends one line of `run`'s output; a line that cannot be written is logged and lost
    /// (the app goes on).
    pub fn append(&self, task: &str, run: &str, out: &OutputLine) {
        let entry = self.task_log(task);
        let mut next_seq = entry.next_seq.lock().unwrap_or_else(|e| e.into_inner());
        let seq = *next_seq.get_or_insert_with(|| {
            read_lines(&self.path(task))
                .pop()
                .or_else(|| read_lines(&self.older(task)).pop())
                .map_or(1, |l| l.seq + 1)
        });
        *next_seq = Some(seq + 1);
        let line = LogLine {
            seq,
            ts: out.ts.clone(),
            run: run.to_owned(),
            stream: if out.stderr { "stderr" } else { "stdout" }.to_owned(),
            line: out.text.clone(),
        };
        // Written under the task's own lock: its lines stay in order in the file.
        if let Err(e) = self.write(task, &line) {
            tracing::warn!(task, error = %e, "cannot keep the app's output");
        }
        let _ = entry.tx.send(Arc::new(line));
    }

    fn write(&self, task: &str, line: &LogLine) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(task);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= self.max_bytes) {
            std::fs::rename(&path, self.older(task))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
        text.push('\n');
        file.write_all(text.as_bytes())
    }

    /// The last `n` lines kept for `task`, oldest first.
    pub fn tail(&self, task: &str, n: usize) -> Vec<LogLine> {
        let mut lines = read_lines(&self.older(task));
        lines.extend(read_lines(&self.path(task)));
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// New lines of `task` from now on.
    pub fn subscribe(&self, task: &str) -> broadcast::Receiver<Arc<LogLine>> {
        self.task_log(task).tx.subscribe()
    }

    fn task_log(&self, task: &str) -> Arc<TaskLog> {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.to_owned())
            .or_insert_with(|| {
                Arc::new(TaskLog {
                    next_seq: Mutex::new(None),
                    tx: broadcast::channel(FOLLOW_BUFFER).0,
                })
            })
            .clone()
    }

    /// Removes what is kept of a deleted task.
    pub fn forget(&self, task: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task);
        let _ = std::fs::remove_file(self.path(task));
        let _ = std::fs::remove_file(self.older(task));
    }

    /// Follows container `id` (run `run` of `task`) in the background until its output ends.
    pub fn collect(
        self: &Arc<Self>,
        runtime: Arc<dyn ContainerRuntime>,
        task: String,
        id: String,
        run: String,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let follow = tokio::spawn(async move { runtime.follow_logs(&id, tx).await });
        let store = self.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let store = store.clone();
                let (task, run) = (task.clone(), run.clone());
                // File writes block; a burst of output must not stall the node's threads.
                let _ = tokio::task::spawn_blocking(move || store.append(&task, &run, &out)).await;
            }
            if let Ok(Err(e)) = follow.await {
                tracing::debug!(error = %e, "the app's output stopped early");
            }
        });
    }
}

/// The answer to the node's `/_shadow/logs/<task>?tail=N&follow=true`: the last `tail` lines
/// as JSON lines, then, with `follow`, every new one as it comes, until the client goes.
pub fn answer(store: &Arc<LogStore>, task: &str, tail: usize, follow: bool) -> ProxyBody {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let rx = store.subscribe(task);
    let lines = store.tail(task, tail);
    let last = lines.last().map_or(0, |l| l.seq);
    let mut text = String::new();
    for l in &lines {
        text.push_str(&serde_json::to_string(l).unwrap_or_default());
        text.push('\n');
    }
    if !follow {
        return shadow_common::proxy::full(text);
    }
    let first = futures_util::stream::once(async move { bytes::Bytes::from(text) });
    let rest = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(l) if l.seq <= last => continue,
                Ok(l) => {
                    let mut t = serde_json::to_string(&*l).unwrap_or_default();
                    t.push('\n');
                    return Some((bytes::Bytes::from(t), rx));
                }
                // A follower too slow for the app's output skips what it missed.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let frames = first
        .chain(rest)
        .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
    ProxyBody::new(http_body_util::StreamBody::new(frames).map_err(|never| match never {}))
}

/// Now, in RFC 3339 as Docker stamps lines.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn read_lines(path: &Path) -> Vec<LogLine> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        // A line cut by a crash mid-write is skipped, not fatal.
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str) -> OutputLine {
        OutputLine {
            stderr: false,
            ts: "2026-11-27T00:00:00Z".into(),
            text: text.into(),
        }
    }

    #[test]
    fn lines_are_numbered_rotated_and_survive_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path(), 1024);
        for i in 0..100 {
            store.append(
                "t",
                "run-1",
                &out(&format!("line {i:03} {}", "x".repeat(40))),
            );
        }
        let tail = store.tail("t", 5);
        assert_eq!(tail.len(), 5);
        assert_eq!(tail[4].seq, 100);
        assert!(tail[4].line.starts_with("line 099"));
        // Rotated: at most two files' worth is kept, and the oldest lines are gone.
        let kept = store.tail("t", usize::MAX);
        assert!(kept.len() < 100 && kept.len() > 10, "{}", kept.len());
        assert!(kept.windows(2).all(|w| w[1].seq == w[0].seq + 1));

        // A restarted node goes on numbering where the files end.
        let again = LogStore::new(dir.path(), 1024);
        again.append("t", "run-2", &out("after restart"));
        let last = again.tail("t", 1).remove(0);
        assert_eq!((last.seq, last.run.as_str()), (101, "run-2"));
    }
}
