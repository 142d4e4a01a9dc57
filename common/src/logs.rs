//! One line of an app's output as the node keeps it and the master relays it
//! (`GET /tasks/{id}/logs`, newline-delimited JSON).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Grows by one per line of the task on its node (across runs and node restarts).
    pub seq: u64,
    /// When the app wrote it (RFC 3339, from Docker).
    pub ts: String,
    /// The container run it came from (its name, `shadow-<task>-<n>`).
    pub run: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}
