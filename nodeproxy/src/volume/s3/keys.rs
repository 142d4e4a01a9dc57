//! Where a task's snapshots live in the bucket, the pointer that names the current one, and
//! which old snapshots retention may delete.
//!
//! ```text
//! tasks/<task id>/current                                  the pointer (JSON, below)
//! tasks/<task id>/snapshots/<token>-<uuid v7>.tar.zst      one snapshot per commit
//! ```
//!
//! A snapshot key carries the lease token it was written under and a time-ordered UUID, so the
//! newest snapshots sort first by `(token, uuid)` without asking the store for dates.

use serde::{Deserialize, Serialize};

/// The object a task's snapshots are reached through; replaced only after a new snapshot is
/// completely uploaded, so a reader never sees a torn one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The snapshot's key, in the same bucket.
    pub key: String,
    /// The lease token the snapshot was committed under.
    pub token: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl Pointer {
    /// Parses a pointer read from the store; a pointer that does not parse is an error, never
    /// "no data yet" (starting empty would later overwrite the real data).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the snapshot pointer is corrupt: {e}"))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Task ids become key and directory names, so they must be plain names.
pub fn check_task_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "task id {id:?} is not a plain name (letters, digits, '-', '_')"
        ))
    }
}

pub fn pointer_key(task_id: &str) -> String {
    format!("tasks/{task_id}/current")
}

pub fn snapshots_prefix(task_id: &str) -> String {
    format!("tasks/{task_id}/snapshots/")
}

/// A fresh key for a snapshot written under `token`.
pub fn new_snapshot_key(task_id: &str, token: u64) -> String {
    format!(
        "{}{token}-{}.tar.zst",
        snapshots_prefix(task_id),
        uuid::Uuid::now_v7()
    )
}

/// `(token, uuid)` of a key made by [`new_snapshot_key`]; `None` for anything else.
fn snapshot_order(prefix: &str, key: &str) -> Option<(u64, String)> {
    let name = key.strip_prefix(prefix)?.strip_suffix(".tar.zst")?;
    let (token, id) = name.split_once('-')?;
    Some((token.parse().ok()?, id.to_string()))
}

/// The snapshots to delete: all but the newest `keep` (at least one) and never `current`.
/// Keys that are not snapshot keys are left alone.
pub fn retention_victims(
    task_id: &str,
    keys: &[String],
    keep: usize,
    current: &str,
) -> Vec<String> {
    let prefix = snapshots_prefix(task_id);
    let mut snapshots: Vec<((u64, String), &String)> = keys
        .iter()
        .filter_map(|k| snapshot_order(&prefix, k).map(|o| (o, k)))
        .collect();
    snapshots.sort_by(|a, b| b.0.cmp(&a.0));
    snapshots
        .into_iter()
        .skip(keep.max(1))
        .map(|(_, k)| k.clone())
        .filter(|k| k != current)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_keys_sort_by_token_then_time() {
        let a = new_snapshot_key("t1", 3);
        let b = new_snapshot_key("t1", 3);
        let c = new_snapshot_key("t1", 10);
        let p = snapshots_prefix("t1");
        assert!(snapshot_order(&p, &a) < snapshot_order(&p, &b));
        // Numeric, not lexical: token 10 is newer than token 3.
        assert!(snapshot_order(&p, &b) < snapshot_order(&p, &c));
    }

    #[test]
    fn retention_keeps_newest_and_the_current_one() {
        let old = new_snapshot_key("t", 1);
        let mid = new_snapshot_key("t", 2);
        let new = new_snapshot_key("t", 2);
        let foreign = "tasks/t/snapshots/notes.txt".to_string();
        let keys = vec![new.clone(), old.clone(), foreign, mid.clone()];
        assert_eq!(retention_victims("t", &keys, 2, &new), vec![old.clone()]);
        // The pointer's snapshot survives even when it is not among the newest.
        assert_eq!(retention_victims("t", &keys, 1, &old), vec![mid.clone()]);
        // Zero means one.
        assert_eq!(retention_victims("t", &keys, 0, &new).len(), 2);
    }

    #[test]
    fn pointer_round_trips_and_corruption_is_an_error() {
        let p = Pointer {
            key: "tasks/t/snapshots/1-x.tar.zst".into(),
            token: 1,
            created_ms: 5,
        };
        assert_eq!(Pointer::from_json(&p.to_json()).unwrap(), p);
        assert!(Pointer::from_json(b"{\"key\":").is_err());
    }

    #[test]
    fn task_ids_must_be_plain_names() {
        assert!(check_task_id("0f3a_b-c").is_ok());
        for bad in ["", "..", "a/b", "a b", "x\0"] {
            assert!(check_task_id(bad).is_err(), "{bad:?}");
        }
    }
}
