//! The S3 calls the backend needs, over one bucket: small objects (the pointer) with
//! conditional writes, streamed downloads, and streamed uploads that switch to a multipart
//! upload with bounded parts once an object outgrows one part. Errors are classified once
//! here: an unreachable or misconfigured store, a failed precondition, or anything else.

use aws_sdk_s3::{
    error::{ProvideErrorMetadata, SdkError},
    operation::get_object::GetObjectOutput,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

/// Multipart part size: the upload buffers at most this much, plus the parts in flight.
pub const PART_SIZE: usize = 16 * 1024 * 1024;
/// Parts uploaded at once, so packing and uploading overlap.
pub const PARTS_IN_FLIGHT: usize = 2;
/// S3 allows at most this many parts (so objects up to PART_SIZE × 10,000 = 156 GiB).
const MAX_PARTS: i32 = 10_000;
/// The pointer is tiny; anything larger is not ours.
const SMALL_OBJECT_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refuses us (network, 5xx, credentials, no bucket).
    #[error("{0}")]
    Unavailable(String),
    /// A conditional write lost: the object changed since it was read.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Other(String),
}

/// An error and its causes on one line, each said once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Turns an SDK error into a [`StoreError`], with the operation and key for context.
fn classify<E>(what: &str, err: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().unwrap_or_default().to_string();
    let message = format!("{what}: {}", error_chain(&err));
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(message)
        }
        _ if status == Some(412) || code == "PreconditionFailed" => {
            StoreError::PreconditionFailed(message)
        }
        _ if status.is_some_and(|s| s >= 500 || s == 401 || s == 403)
            || matches!(
                code.as_str(),
                "NoSuchBucket" | "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
            ) =>
        {
            StoreError::Unavailable(message)
        }
        _ => StoreError::Other(message),
    }
}

/// Whether a GetObject/HeadObject error only says the key does not exist.
fn is_no_such_key<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    matches!(err.code(), Some("NoSuchKey" | "NotFound"))
        || (status == Some(404) && err.code() != Some("NoSuchBucket"))
}

/// A conditional write: only if the object still has this ETag, or only if it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Matches(String),
    Absent,
}

/// One bucket of one S3 (or S3-compatible) service.
#[derive(Clone)]
pub struct Store {
    client: Client,
    bucket: String,
    /// Where the bucket is, for messages: `bucket b at http://…` or `bucket b on AWS`.
    place: String,
}

impl Store {
    /// `endpoint` only names the server in messages (`None` = AWS).
    pub fn new(client: Client, bucket: impl Into<String>, endpoint: Option<&str>) -> Self {
        let bucket = bucket.into();
        let place = match endpoint {
            Some(e) => format!("bucket {bucket} at {e}"),
            None => format!("bucket {bucket} on AWS"),
        };
        Self {
            client,
            bucket,
            place,
        }
    }

    /// `<op> <key> (bucket … at …)`, the start of every message.
    fn what(&self, op: &str, key: &str) -> String {
        format!("{op} {key} ({})", self.place)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket unless it exists (for tests and first set-ups).
    pub async fn ensure_bucket(&self, region: &str) -> Result<(), StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {}
            Err(e) => return Err(classify(&self.what("HeadBucket", ""), e)),
        }
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if region != "us-east-1" {
            req = req.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(region.into())
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou")) => Ok(()),
            Err(e) => Err(classify(&self.what("CreateBucket", ""), e)),
        }
    }

    /// Starts a download; `None` when the key does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<GetObjectOutput>, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) if is_no_such_key(&e) => Ok(None),
            Err(e) => Err(classify(&self.what("GetObject", key), e)),
        }
    }

    /// A small object's bytes and ETag; `None` when the key does not exist.
    pub async fn get_small(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let Some(out) = self.get(key).await? else {
            return Ok(None);
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        let mut body = out.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.try_next().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: {}",
                self.what("GetObject", key),
                error_chain(&e)
            ))
        })? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > SMALL_OBJECT_LIMIT {
                return Err(StoreError::Other(format!(
                    "{key} is larger than {SMALL_OBJECT_LIMIT} bytes"
                )));
            }
        }
        Ok(Some((bytes, etag)))
    }

    /// Writes a small object under a condition. A server that does not implement conditional
    /// writes answers `NotImplemented`; then the write is repeated without one, with a warning.
    pub async fn put_small(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: Option<Condition>,
    ) -> Result<(), StoreError> {
        let bytes = Bytes::from(bytes);
        let req = || {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/json")
                .body(ByteStream::from(bytes.clone()))
        };
        let conditioned = match &condition {
            Some(Condition::Matches(etag)) => req().if_match(etag),
            Some(Condition::Absent) => req().if_none_match("*"),
            None => req(),
        };
        match conditioned.send().await {
            Ok(_) => Ok(()),
            Err(e) if condition.is_some() && e.code() == Some("NotImplemented") => {
                tracing::warn!(
                    bucket = %self.bucket,
                    "the S3 server does not implement conditional writes; writing {key} \
                     with only the lease check to guard it"
                );
                req()
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(&self.what("PutObject", key), e))
            }
            Err(e) => Err(classify(&self.what("PutObject", key), e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&self.what("DeleteObject", key), e))
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(&self.what("ListObjectsV2", prefix), e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(keys),
            }
        }
    }

    /// An upload fed chunk by chunk; nothing is visible under `key` until [`Upload::finish`].
    pub fn upload(&self, key: impl Into<String>) -> Upload {
        Upload {
            store: self.clone(),
            key: key.into(),
            buf: BytesMut::new(),
            multipart: None,
            bytes: 0,
        }
    }
}

struct Multipart {
    upload_id: String,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart, StoreError>>,
    done: Vec<CompletedPart>,
}

/// A streamed upload: a single PutObject when everything fits in one part, otherwise a
/// multipart upload with [`PART_SIZE`] parts, [`PARTS_IN_FLIGHT`] at a time. Dropping it
/// unfinished leaves an incomplete multipart upload behind, which the store discards after its
/// lifecycle rule (or [`Upload::abort`] cleans it at once).
pub struct Upload {
    store: Store,
    key: String,
    buf: BytesMut,
    multipart: Option<Multipart>,
    bytes: u64,
}

impl Upload {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds bytes; uploads a part whenever one is full.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.bytes += chunk.len() as u64;
        let mut chunk = chunk;
        while !chunk.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve(PART_SIZE);
            }
            let n = chunk.len().min(PART_SIZE - self.buf.len());
            self.buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.buf.len() == PART_SIZE {
                let part = self.buf.split().freeze();
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<(), StoreError> {
        if self.multipart.is_none() {
            let out = self
                .store
                .client
                .create_multipart_upload()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .send()
                .await
                .map_err(|e| classify(&self.store.what("CreateMultipartUpload", &self.key), e))?;
            let upload_id = out.upload_id().unwrap_or_default().to_string();
            self.multipart = Some(Multipart {
                upload_id,
                next_part: 1,
                in_flight: JoinSet::new(),
                done: Vec::new(),
            });
        }
        let Some(mp) = self.multipart.as_mut() else {
            return Ok(());
        };
        while mp.in_flight.len() >= PARTS_IN_FLIGHT {
            collect_one(mp).await?;
        }
        let number = mp.next_part;
        if number > MAX_PARTS {
            return Err(StoreError::Other(format!(
                "{} would need more than {MAX_PARTS} parts of {PART_SIZE} bytes",
                self.key
            )));
        }
        mp.next_part += 1;
        let client = self.store.client.clone();
        let bucket = self.store.bucket.clone();
        let key = self.key.clone();
        let what = self
            .store
            .what("UploadPart", &format!("{} #{number}", self.key));
        let upload_id = mp.upload_id.clone();
        mp.in_flight.spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(part))
                .customize()
                // The archive carries its own checksum, verified on restore; hashing each part
                // for the signature would only slow the upload.
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify(&what, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    /// Uploads what is left and makes the object visible; returns its size in bytes.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        let rest = self.buf.split().freeze();
        let Some(_) = self.multipart else {
            self.store
                .client
                .put_object()
                .bucket(&self.store.bucket)
                .key(&self.key)
                .body(ByteStream::from(rest))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| classify(&self.store.what("PutObject", &self.key), e))?;
            return Ok(self.bytes);
        };
        let result = self.complete(rest).await;
        if result.is_err() {
            self.abort().await;
        }
        result.map(|()| self.bytes)
    }

    async fn complete(&mut self, rest: Bytes) -> Result<(), StoreError> {
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        let Some(mp) = self.multipart.as_mut() else {
            return Ok(());
        };
        while !mp.in_flight.is_empty() {
            collect_one(mp).await?;
        }
        let mut parts = std::mem::take(&mut mp.done);
        parts.sort_by_key(|p| p.part_number());
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&mp.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(&self.store.what("CompleteMultipartUpload", &self.key), e))?;
        Ok(())
    }

    /// Gives up: stops the parts in flight and discards the uploaded ones (best effort).
    pub async fn abort(&mut self) {
        let Some(mut mp) = self.multipart.take() else {
            return;
        };
        mp.in_flight.shutdown().await;
        if let Err(e) = self
            .store
            .client
            .abort_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.key)
            .upload_id(&mp.upload_id)
            .send()
            .await
        {
            tracing::warn!(
                key = %self.key,
                error = %error_chain(&e),
                "cannot abort a multipart upload; the bucket's lifecycle rule must clean it"
            );
        }
    }
}

async fn collect_one(mp: &mut Multipart) -> Result<(), StoreError> {
    match mp.in_flight.join_next().await {
        Some(Ok(Ok(part))) => {
            mp.done.push(part);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e),
        Some(Err(join)) => Err(StoreError::Other(format!("an upload task failed: {join}"))),
        None => Ok(()),
    }
}
