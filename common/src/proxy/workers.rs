//! Worker threads for the proxies' connections: one single-threaded tokio runtime per thread,
//! connections dealt out to them in turn, as nginx deals connections to its worker processes.
//!
//! Why: on a work-stealing runtime one proxied request wakes tasks on other threads several
//! times (the client connection's task, the upstream connection's task hyper's client spawns,
//! the body channel between them), and each cross-thread wake-up is a futex syscall and a
//! context switch. The warm-path profile put about half of each proxy's CPU time in the kernel,
//! largely there. With a connection and everything it spawns on one thread (the forwarder keeps
//! one upstream pool per thread, see `forward`), those wake-ups become queue pushes.
//!
//! Connections only run here: the proxies' background work (following the master, starting and
//! stopping apps) stays on the runtime that called [`serve`](super::serve), which outlives the
//! workers.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// A set of worker threads, each running a current-thread runtime until the set is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `count` worker threads named `<name>-<i>`; `count` 0 means one per CPU.
    pub fn start(count: usize, name: &str) -> io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut workers = Self {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(count),
        };
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop_tx);
            // Not joined: each thread ends by itself once told to stop (and dropping `Workers`
            // may happen on a runtime thread, which must not block). If spawning fails, dropping
            // `workers` stops the threads already running.
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // The runtime runs whatever is spawned on it until told to stop.
                    let _ = runtime.block_on(stop_rx);
                    // Connections still open are dropped here, after the caller's drain.
                    runtime.shutdown_background();
                })?;
        }
        Ok(workers)
    }

    /// How many worker threads there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The runtime to give the next connection to (round robin: long-lived keep-alive
    /// connections spread evenly, and a new one costs one atomic add).
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_is_dealt_round_robin_to_distinct_threads() {
        let workers = Workers::start(2, "test-worker").expect("start workers");
        assert_eq!(workers.len(), 2);
        let mut names = Vec::new();
        for _ in 0..4 {
            let name = workers
                .next()
                .spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .expect("join");
            names.push(name.unwrap_or_default());
        }
        assert_eq!(
            names,
            [
                "test-worker-0",
                "test-worker-1",
                "test-worker-0",
                "test-worker-1"
            ]
        );
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_threads() {
        let workers = Workers::start(1, "test-ending").expect("start workers");
        let (tx, rx) = oneshot::channel::<()>();
        // A task that never finishes on its own: it ends when its runtime shuts down, dropping
        // the sender.
        workers.next().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert!(
            rx.await.is_err(),
            "the task's sender was dropped with its runtime"
        );
    }
}
