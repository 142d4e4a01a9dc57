//! Bridges between the blocking archive code (on a `spawn_blocking` thread) and the async S3
//! transfers: bounded channels of chunks, so neither side ever holds a whole archive.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// A `Write` that hands out `chunk`-sized pieces over a bounded channel, blocking while the
/// receiver is behind. Call [`ChunkWriter::finish`] to send the last, shorter piece.
pub struct ChunkWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    chunk: usize,
}

impl ChunkWriter {
    pub fn new(tx: mpsc::Sender<Bytes>, chunk: usize) -> Self {
        Self {
            tx,
            buf: BytesMut::with_capacity(chunk),
            chunk,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let piece = self.buf.split().freeze();
        self.buf.reserve(self.chunk);
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends what is left; the channel closes when the writer is dropped.
    pub fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Read` over a channel of chunks; a closed channel is the end of the stream, an `Err` item
/// is a failed download.
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.cur = b,
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writer_chunks_and_reader_reassembles() {
        let (tx, mut rx) = mpsc::channel(2);
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter::new(tx, 4);
            w.write_all(b"abcdefghij").unwrap();
            w.finish().unwrap();
        });
        let mut pieces = Vec::new();
        while let Some(p) = rx.recv().await {
            pieces.push(p);
        }
        writer.await.unwrap();
        assert_eq!(pieces, vec!["abcd", "efgh", "ij"]);

        let (tx, rx) = mpsc::channel(4);
        for p in pieces {
            tx.send(Ok(p)).await.unwrap();
        }
        tx.send(Err(io::Error::other("cut"))).await.unwrap();
        drop(tx);
        let read = tokio::task::spawn_blocking(move || {
            let mut r = ChunkReader::new(rx);
            let mut s = Vec::new();
            let err = r.read_to_end(&mut s).unwrap_err();
            (s, err.to_string())
        })
        .await
        .unwrap();
        assert_eq!(read, (b"abcdefghij".to_vec(), "cut".to_string()));
    }
}
