//! What the proxies' Prometheus counters share: per-task series that go with their task, so the
//! label sets do not grow with every task ever served, and the per-request counter of requests
//! by task and status ([`TaskRequests`]), which every request of both proxies counts into.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{core::Collector, IntCounter, IntCounterVec, Opts};
use thread_local::ThreadLocal;

use crate::task::Task;

/// Removes every series of `vec` whose `label` value `keep` refuses; says how many went.
/// Its one caller is [`TaskRequests::retain`], which must also drop the threads' handles.
fn retain(vec: &IntCounterVec, label: &str, keep: impl Fn(&str) -> bool) -> usize {
    let mut removed = 0;
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get(label).is_some_and(|v| !keep(v)) && vec.remove(&labels).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Requests by task (`task` id and `app` name) and `status`.
///
/// Each thread keeps the counter handles it used, by task and status: `with_label_values`
/// hashes the three labels and takes the vector's lock, ~270 instructions on every request of
/// each proxy, where the thread's own map is one lookup by the task's address. The handles
/// are dropped when [`TaskRequests::retain`] removes series (so no count goes to a removed
/// series), and when a thread has kept [`MAX_HANDLES`] of them.
#[derive(Clone)]
pub struct TaskRequests {
    vec: IntCounterVec,
    /// Moves on whenever series are removed; a thread's handles from before are stale.
    generation: Arc<AtomicU64>,
    handles: Arc<ThreadLocal<RefCell<Handles>>>,
}

/// Handles a thread keeps at most before it starts over.
pub const MAX_HANDLES: usize = 4096;

/// One thread's counter handles, by the task's address and the status. The entry holds the
/// task, so the address cannot be reused by another task while the entry lives.
#[derive(Default)]
struct Handles {
    generation: u64,
    by_task: HashMap<HandleKey, (Arc<Task>, IntCounter), BuildHasherDefault<AddressHasher>>,
}

/// The task's address and the status code.
type HandleKey = (usize, u16);

/// A multiply-and-rotate hash of the keys' words: the keys are addresses and status codes,
/// not chosen by clients, so the default DoS-resistant hasher's cost buys nothing here.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u16(&mut self, word: u16) {
        self.write_u64(u64::from(word));
    }
    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

impl TaskRequests {
    /// The counter `name`, labelled `task`, `app` and `status`; register [`Self::collector`].
    pub fn new(name: &str, help: &str) -> Result<Self, prometheus::Error> {
        Ok(Self {
            vec: IntCounterVec::new(Opts::new(name, help), &["task", "app", "status"])?,
            generation: Arc::new(AtomicU64::new(0)),
            handles: Arc::new(ThreadLocal::new()),
        })
    }

    /// The vector, to register with a registry.
    pub fn collector(&self) -> IntCounterVec {
        self.vec.clone()
    }

    /// Counts one request of `task` answered with `status`.
    pub fn inc(&self, task: &Arc<Task>, status: http::StatusCode) {
        let generation = self.generation.load(Ordering::Acquire);
        let mut handles = self.handles.get_or_default().borrow_mut();
        if handles.generation != generation || handles.by_task.len() >= MAX_HANDLES {
            handles.by_task.clear();
            handles.generation = generation;
        }
        let key = (Arc::as_ptr(task) as usize, status.as_u16());
        let (_, counter) = handles.by_task.entry(key).or_insert_with(|| {
            let counter =
                self.vec
                    .with_label_values(&[task.id.as_str(), &task.spec.name, status.as_str()]);
            (task.clone(), counter)
        });
        counter.inc();
    }

    /// Removes the series of the tasks `keep` refuses (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if retain(&self.vec, "task", keep) > 0 {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_tasks_series_are_removed_and_others_kept() {
        let v =
            IntCounterVec::new(prometheus::Opts::new("t", "t"), &["task", "status"]).expect("vec");
        v.with_label_values(&["a", "200"]).inc();
        v.with_label_values(&["a", "502"]).inc();
        v.with_label_values(&["b", "200"]).inc();
        retain(&v, "task", |t| t != "a");
        let left: Vec<String> = v.collect()[0]
            .get_metric()
            .iter()
            .map(|m| {
                m.get_label()
                    .iter()
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        // Labels come in name order: status, task.
        assert_eq!(left, vec!["200/b"]);
    }

    fn task(id: &str, name: &str) -> Arc<Task> {
        let spec = serde_json::json!({"name": name, "domains": [format!("{id}.example")], "image": "app:1"});
        Arc::new(Task {
            id: id.into(),
            spec: crate::task::TaskSpec::from_json(spec.to_string().as_bytes()).expect("spec"),
        })
    }

    /// Every series of `r`, as "task/app/status=count", sorted.
    fn series(r: &TaskRequests) -> Vec<String> {
        let mut out: Vec<String> = r.collector().collect()[0]
            .get_metric()
            .iter()
            .map(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                let count = m.get_counter().get_value();
                format!(
                    "{}/{}/{}={count}",
                    label("task"),
                    label("app"),
                    label("status")
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn requests_are_counted_by_task_and_status() {
        let r = TaskRequests::new("r", "r").expect("counter");
        let (a, b) = (task("a", "shop"), task("b", "blog"));
        for _ in 0..3 {
            r.inc(&a, http::StatusCode::OK);
        }
        r.inc(&a, http::StatusCode::BAD_GATEWAY);
        r.inc(&b, http::StatusCode::OK);
        assert_eq!(series(&r), ["a/shop/200=3", "a/shop/502=1", "b/blog/200=1"]);
        // Another thread counts into the same series through its own handles.
        let (r2, a2) = (r.clone(), a.clone());
        std::thread::spawn(move || r2.inc(&a2, http::StatusCode::OK))
            .join()
            .expect("thread");
        assert_eq!(series(&r)[0], "a/shop/200=4");
    }

    #[test]
    fn a_removed_tasks_series_starts_again_from_zero() {
        let r = TaskRequests::new("r", "r").expect("counter");
        let (a, b) = (task("a", "shop"), task("b", "blog"));
        r.inc(&a, http::StatusCode::OK);
        r.inc(&b, http::StatusCode::OK);
        r.retain(|t| t != "a");
        assert_eq!(series(&r), ["b/blog/200=1"]);
        // The thread's handle for `a` went with its series: a new count is seen, from 1.
        r.inc(&a, http::StatusCode::OK);
        r.inc(&b, http::StatusCode::OK);
        assert_eq!(series(&r), ["a/shop/200=1", "b/blog/200=2"]);
    }

    #[test]
    fn a_changed_task_counts_under_its_new_name() {
        let r = TaskRequests::new("r", "r").expect("counter");
        r.inc(&task("a", "shop"), http::StatusCode::OK);
        r.inc(&task("a", "store"), http::StatusCode::OK);
        assert_eq!(series(&r), ["a/shop/200=1", "a/store/200=1"]);
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_handles() {
        let r = TaskRequests::new("r", "r").expect("counter");
        let tasks: Vec<_> = (0..MAX_HANDLES + 10)
            .map(|i| task(&format!("t{i}"), "app"))
            .collect();
        for t in &tasks {
            r.inc(t, http::StatusCode::OK);
        }
        let kept = r
            .handles
            .get()
            .expect("this thread's")
            .borrow()
            .by_task
            .len();
        assert!(kept <= MAX_HANDLES, "{kept} handles kept");
        assert_eq!(
            series(&r).len(),
            MAX_HANDLES + 10,
            "every request still counted"
        );
    }
}
