//! What the proxies' Prometheus counters share: per-task series that go with their task, so the
//! label sets do not grow with every task ever served.

use std::collections::HashMap;

use prometheus::{core::Collector, IntCounterVec};

/// Removes every series of `vec` whose `label` value `keep` refuses.
pub fn retain(vec: &IntCounterVec, label: &str, keep: impl Fn(&str) -> bool) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get(label).is_some_and(|v| !keep(v)) {
                let _ = vec.remove(&labels);
            }
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
}
