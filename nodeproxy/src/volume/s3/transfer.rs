//! Streaming a volume to and from the store: the archive code runs on a blocking thread, the
//! transfer on the runtime, with at most `CHUNK × QUEUE` bytes between them, and a multipart
//! upload buffering at most a part plus the parts in flight. No archive is ever held whole,
//! in memory or in a temp file.

use std::{
    io::{self, BufReader},
    path::Path,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{sync::mpsc, time::Instant};

use super::{
    archive::{self, pack::PackStats, unpack::UnpackStats, ArchiveError},
    pipe::{ChunkReader, ChunkWriter},
    store::{error_chain, Store, StoreError},
};

/// Size of the pieces between the archive thread and the transfer.
const CHUNK: usize = 1024 * 1024;
/// Pieces queued between them.
const QUEUE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The object to restore does not exist.
    #[error("{0} does not exist")]
    Missing(String),
}

/// What a restore did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestoreReport {
    /// Bytes downloaded (compressed).
    pub downloaded: u64,
    pub unpacked: UnpackStats,
    pub elapsed: Duration,
}

/// What a snapshot upload did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadReport {
    /// Bytes uploaded (compressed).
    pub uploaded: u64,
    pub packed: PackStats,
    pub elapsed: Duration,
}

/// Downloads `key` and unpacks it into `dir`, which should be empty.
/// `limit` bounds the bytes of file content written: a small archive may expand to any size.
pub async fn restore(
    store: &Store,
    key: &str,
    dir: &Path,
    limit: u64,
) -> Result<RestoreReport, TransferError> {
    let started = Instant::now();
    let out = store
        .get(key)
        .await?
        .ok_or_else(|| TransferError::Missing(format!("{key} in bucket {}", store.bucket())))?;
    let mut body = out.body;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    let dst = dir.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || {
        let input = BufReader::with_capacity(256 * 1024, ChunkReader::new(rx));
        archive::unpack::unpack(archive::decompressor(input)?, &dst, limit)
    });
    let mut downloaded = 0u64;
    let mut broke_off = None;
    let mut pending = BytesMut::with_capacity(CHUNK);
    loop {
        match body.try_next().await {
            Ok(Some(b)) => {
                downloaded += b.len() as u64;
                pending.extend_from_slice(&b);
                // A send fails when the unpacker stopped early (a bad entry): its error says why.
                if pending.len() >= CHUNK && tx.send(Ok(pending.split().freeze())).await.is_err() {
                    break;
                }
            }
            Ok(None) => {
                let _ = tx.send(Ok(pending.split().freeze())).await;
                break;
            }
            Err(e) => {
                let message = format!("download of {key} broke off: {}", error_chain(&e));
                let _ = tx.send(Err(io::Error::other(message.clone()))).await;
                broke_off = Some(message);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpacker.await;
    if let Some(message) = broke_off {
        return Err(StoreError::Unavailable(message).into());
    }
    let unpacked =
        unpacked.map_err(|e| ArchiveError::Io(format!("the unpacker failed: {e}")))??;
    Ok(RestoreReport {
        downloaded,
        unpacked,
        elapsed: started.elapsed(),
    })
}

/// Packs `dir` and uploads it under `key`. Nothing is visible under `key` unless the whole
/// archive was written: a failed pack aborts the upload instead of completing it.
pub async fn upload(store: &Store, dir: &Path, key: &str) -> Result<UploadReport, TransferError> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let src = dir.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || {
        let enc = archive::compressor(ChunkWriter::new(tx, CHUNK))
            .map_err(|e| ArchiveError::io("cannot start zstd", e))?;
        let (enc, stats) = archive::pack::pack(&src, enc)?;
        enc.finish()
            .and_then(ChunkWriter::finish)
            .map_err(|e| ArchiveError::io("cannot finish the archive", e))?;
        Ok::<_, ArchiveError>(stats)
    });
    let mut upload = store.upload(key);
    let mut failed = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = upload.push(&chunk).await {
            failed = Some(e);
            break;
        }
    }
    // A packer still writing sees a broken pipe and stops.
    drop(rx);
    let packed = packer.await;
    let packed = match (failed, packed) {
        (None, Ok(Ok(stats))) => stats,
        (Some(e), _) => {
            upload.abort().await;
            return Err(e.into());
        }
        (None, Ok(Err(e))) => {
            upload.abort().await;
            return Err(e.into());
        }
        (None, Err(e)) => {
            upload.abort().await;
            return Err(ArchiveError::Io(format!("the packer failed: {e}")).into());
        }
    };
    let uploaded = upload.finish().await?;
    Ok(UploadReport {
        uploaded,
        packed,
        elapsed: started.elapsed(),
    })
}
