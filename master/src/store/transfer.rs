//! `shadow-master export` and `shadow-master import`: the whole durable state (tasks with their
//! secrets, nodes, leases and the next fencing token, ACME records and account, usage rows and
//! report marks) as one JSON document, and back into an empty data dir. For backups, and for
//! moving a master's state to another store.

use serde::{Deserialize, Serialize};
use shadow_common::usage::UsageDelta;

use super::{Snapshot, StoreError};
use crate::{usage::ReportMark, MasterConfig};

/// What the export file says it is, so an import can refuse anything else.
pub const FORMAT: &str = "shadow-master-export";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub format: String,
    pub version: u32,
    pub state: Snapshot,
    pub usage: Vec<UsageDelta>,
    pub usage_reports: Vec<ReportMark>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is not a shadow-master export ({1}); export one with `shadow-master export`")]
    NotAnExport(String, String),
    #[error("the store ({0}) already holds state ({1}); import into an empty data dir or database, then point the master at it")]
    NotEmpty(String, String),
}

/// Reads the whole state of the master `config` names (it may be running). Blocking.
pub fn export(config: &MasterConfig) -> Result<Export, TransferError> {
    let (mut store, mut usage) = crate::open_stores(config)?;
    let mut state = store.snapshot()?;
    // Sorted, so an export of an imported state is the same file.
    state.tasks.sort_by(|a, b| a.id.cmp(&b.id));
    state.nodes.sort_by(|a, b| a.id.cmp(&b.id));
    state.leases.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    state.acme.sort_by_key(|r| r.key());
    Ok(Export {
        format: FORMAT.into(),
        version: VERSION,
        state,
        usage: usage.query(None, 0, u64::MAX)?,
        usage_reports: usage.reports()?,
    })
}

/// Parses an export file's text.
pub fn parse(name: &str, text: &str) -> Result<Export, TransferError> {
    let e: Export = serde_json::from_str(text)
        .map_err(|e| TransferError::NotAnExport(name.into(), e.to_string()))?;
    if e.format != FORMAT || e.version != VERSION {
        return Err(TransferError::NotAnExport(
            name.into(),
            format!(
                "format {:?} version {}; this master reads {FORMAT:?} version {VERSION}",
                e.format, e.version
            ),
        ));
    }
    Ok(e)
}

/// Loads an export into the empty store `config` names; changes nothing if it is not empty.
/// Blocking.
pub fn import(config: &MasterConfig, e: &Export) -> Result<(), TransferError> {
    let (mut store, mut usage) = crate::open_stores(config)?;
    let here = store.snapshot()?;
    let dir = config.database_url.as_ref().map_or_else(
        || config.data_dir.display().to_string(),
        |_| "database".into(),
    );
    let held = [
        (here.tasks.len(), "tasks"),
        (here.nodes.len(), "nodes"),
        (here.leases.len(), "leases"),
        (here.acme.len(), "ACME records"),
        (usage.query(None, 0, u64::MAX)?.len(), "usage rows"),
    ];
    if let Some((n, what)) = held.iter().find(|(n, _)| *n > 0) {
        return Err(TransferError::NotEmpty(dir, format!("{n} {what}")));
    }
    if here.next_token > 1 || here.acme_account.is_some() {
        return Err(TransferError::NotEmpty(
            dir,
            "leases were granted there".into(),
        ));
    }
    store.import(&e.state)?;
    usage.import(&e.usage, &e.usage_reports)?;
    Ok(())
}
