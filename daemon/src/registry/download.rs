//! Downloading one blob into the store: resumable, in parallel ranged parts for large blobs,
//! verified before it becomes visible.
//!
//! The blob is written into `staging/sha256-<hex>.partial` (preallocated to its size) at each
//! part's offset; `staging/sha256-<hex>.parts` records how far each part got, and is written
//! only after the data it claims was fsynced, so a crash (kill -9) loses at most the last second.
//! A resumed part asks for `Range: bytes=<from>-<to>` and accepts only a 206 whose
//! `Content-Range` matches exactly; anything else (a 200, a different range) starts the blob
//! over as one plain stream. When all bytes are in, the file is hashed; only a match is renamed
//! to `blobs/sha256-<hex>` (and the directory fsynced). A mismatch after a resume starts over
//! once; a mismatch of a fresh download fails the pull and leaves nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::{Http, host_port, network_error, stalled, status_error};
use crate::error::{Error, Result};
use crate::store::blobs::{Layout, hash_file, open_partial, sync_dir};
use crate::store::digest::Digest;
use crate::store::downloads::FlightHandle;

/// Bytes gathered before one positional write.
const WRITE_CHUNK: usize = 1 << 20;
/// How long received bytes may wait in memory before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often progress is made durable.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Most parts one blob is split into.
const MAX_PARTS: u64 = 256;

/// A blob to fetch.
#[derive(Debug, Clone)]
pub struct BlobRequest {
    /// Where it is.
    pub url: Url,
    /// What it must hash to.
    pub digest: Digest,
    /// How long it is.
    pub size: u64,
    /// Blobs larger than this are fetched in ranged parts.
    pub part_size: u64,
    /// Parts fetched at once.
    pub parallel: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    start: u64,
    end: u64,
    done: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartsRecord {
    size: u64,
    parts: Vec<Part>,
}

impl PartsRecord {
    fn fresh(size: u64, part_size: u64) -> Self {
        let part = part_size.max(size.div_ceil(MAX_PARTS)).max(1);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < size {
            let end = size.min(start.saturating_add(part));
            parts.push(Part { start, end, done: 0 });
            start = end;
        }
        if parts.is_empty() {
            parts.push(Part { start: 0, end: 0, done: 0 });
        }
        Self { size, parts }
    }

    /// A record read back from disk is used only if it describes this blob consistently.
    fn valid_for(&self, size: u64) -> bool {
        let mut next = 0;
        for p in &self.parts {
            if p.start != next || p.end < p.start || p.done > p.end - p.start {
                return false;
            }
            next = p.end;
        }
        self.size == size && next == size && !self.parts.is_empty()
    }

    fn done(&self) -> u64 {
        self.parts.iter().map(|p| p.done).sum()
    }
}

enum Failure {
    /// The server ignored or mangled a Range request: start over as one stream.
    RangeIgnored,
    /// Give up with this error.
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

struct Paths {
    partial: PathBuf,
    record: PathBuf,
    record_tmp: PathBuf,
}

/// One run over the parts of a blob.
struct Transfer {
    http: Arc<Http>,
    request: BlobRequest,
    file: Arc<File>,
    record: Mutex<PartsRecord>,
    paths: Arc<Paths>,
    last_save: Mutex<Instant>,
    flight: FlightHandle,
    /// Whether Range may be left out (one part covering the whole blob, from its start).
    single: bool,
}

/// Fetches `request` into the store. Returns once the verified blob is in place.
pub async fn download(
    http: Arc<Http>,
    layout: Layout,
    request: BlobRequest,
    flight: FlightHandle,
) -> Result<()> {
    let digest = request.digest;
    if layout.has_blob(&digest, request.size) {
        flight.progress.send_modify(|s| s.completed = request.size);
        return Ok(());
    }
    let staging = layout.staging_dir();
    let paths = Arc::new(Paths {
        partial: digest.staging_path(staging, "partial"),
        record: digest.staging_path(staging, "parts"),
        record_tmp: digest.staging_path(staging, "partstmp"),
    });
    let mut saved = load_record(&paths, request.size);
    let mut resumed = saved.as_ref().is_some_and(|r| r.done() > 0);
    let mut ranges = true;
    for _ in 0..3 {
        let record = match saved.take() {
            Some(record) => record,
            None => start_over(&paths, request.size, if ranges { request.part_size } else { u64::MAX })?,
        };
        if resumed {
            tracing::info!(%digest, from = record.done(), of = request.size, "resuming download");
        }
        match run(&http, &request, &paths, record, &flight).await {
            Ok(()) => {}
            Err(Failure::RangeIgnored) => {
                tracing::info!(%digest, host = %host_port(&request.url), "ranges not honoured; starting over as one stream");
                ranges = false;
                resumed = false;
                continue;
            }
            Err(Failure::Fatal(e)) => return Err(e),
        }
        let partial = paths.partial.clone();
        let (got, len) = tokio::task::spawn_blocking(move || hash_file(&partial))
            .await
            .map_err(|e| Error::Internal(format!("hashing task: {e}")))??;
        if got == digest && len == request.size {
            layout.commit(&paths.partial, &digest)?;
            let _ = std::fs::remove_file(&paths.record);
            let _ = sync_dir(staging);
            return Ok(());
        }
        let _ = std::fs::remove_file(&paths.partial);
        let _ = std::fs::remove_file(&paths.record);
        if resumed {
            tracing::warn!(%digest, "resumed download does not match its digest; starting over");
            resumed = false;
            continue;
        }
        return Err(Error::InvalidModel(format!(
            "the blob {digest} from {} does not match its digest (its sha256 is {}); nothing was stored",
            host_port(&request.url),
            got.hex()
        )));
    }
    Err(Error::Registry(format!("the download of {digest} from {} kept failing", host_port(&request.url))))
}

fn load_record(paths: &Paths, size: u64) -> Option<PartsRecord> {
    let text = std::fs::read(&paths.record).ok()?;
    let record: PartsRecord = serde_json::from_slice(&text).ok()?;
    let len = std::fs::metadata(&paths.partial).ok()?.len();
    (record.valid_for(size) && len == size).then_some(record)
}

/// A new, empty staging file of the blob's size (a new inode, so writes of an abandoned run
/// cannot land in it) and its record.
fn start_over(paths: &Paths, size: u64, part_size: u64) -> Result<PartsRecord> {
    let _ = std::fs::remove_file(&paths.partial);
    let file = open_partial(&paths.partial)?;
    file.set_len(size).map_err(Error::io(format!("preallocate {}", paths.partial.display())))?;
    let record = PartsRecord::fresh(size, part_size);
    save_record(paths, &record)?;
    Ok(record)
}

fn save_record(paths: &Paths, record: &PartsRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(|e| Error::Internal(format!("parts record: {e}")))?;
    let mut tmp = open_partial(&paths.record_tmp)?;
    tmp.set_len(0).map_err(Error::io("truncate the parts record"))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(Error::io("write the parts record"))?;
    tmp.sync_all().map_err(Error::io("sync the parts record"))?;
    std::fs::rename(&paths.record_tmp, &paths.record).map_err(Error::io("replace the parts record"))
}

async fn run(
    http: &Arc<Http>,
    request: &BlobRequest,
    paths: &Arc<Paths>,
    record: PartsRecord,
    flight: &FlightHandle,
) -> Result<(), Failure> {
    let file = Arc::new(open_partial(&paths.partial)?);
    let done = record.done();
    flight.progress.send_modify(|s| s.completed = done);
    let pending: Vec<usize> = (0..record.parts.len())
        .filter(|i| {
            let p = record.parts[*i];
            p.start + p.done < p.end
        })
        .collect();
    let single = record.parts.len() == 1;
    let transfer = Arc::new(Transfer {
        http: Arc::clone(http),
        request: request.clone(),
        file,
        record: Mutex::new(record),
        paths: Arc::clone(paths),
        last_save: Mutex::new(Instant::now()),
        flight: flight.clone(),
        single,
    });
    let parts = futures::stream::iter(pending)
        .map(|i| fetch_part(Arc::clone(&transfer), i))
        .buffer_unordered(request.parallel.max(1))
        .try_collect::<Vec<()>>();
    tokio::select! {
        outcome = parts => outcome?,
        _ = flight.cancel.cancelled() => {
            transfer.save(true).await?;
            return Err(Failure::Fatal(Error::Registry("download cancelled".into())));
        }
    };
    transfer.save(true).await?;
    Ok(())
}

impl Transfer {
    fn part(&self, i: usize) -> Part {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).parts[i]
    }

    /// Makes the data durable, then the record that claims it (at most once a second unless
    /// `force`).
    async fn save(&self, force: bool) -> Result<()> {
        {
            let mut last = self.last_save.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.elapsed() < SAVE_EVERY {
                return Ok(());
            }
            *last = Instant::now();
        }
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let file = Arc::clone(&self.file);
        let paths = Arc::clone(&self.paths);
        tokio::task::spawn_blocking(move || {
            file.sync_data().map_err(Error::io("sync a partial download"))?;
            save_record(&paths, &record)
        })
        .await
        .map_err(|e| Error::Internal(format!("saving task: {e}")))?
    }

    /// Writes `bytes` at `offset` (inside part `i`) and accounts for them.
    async fn write(&self, i: usize, offset: u64, bytes: Vec<u8>) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let n = bytes.len() as u64;
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, offset))
            .await
            .map_err(|e| Error::Internal(format!("writing task: {e}")))?
            .map_err(Error::io("write a partial download"))?;
        let total = {
            let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
            record.parts[i].done += n;
            record.done()
        };
        self.flight.progress.send_modify(|s| s.completed = total);
        self.save(false).await
    }

    fn range_header(&self, from: u64, end: u64) -> Option<HeaderValue> {
        if self.single && from == 0 {
            return None;
        }
        HeaderValue::from_str(&format!("bytes={from}-{}", end - 1)).ok()
    }
}

/// Whether a `Content-Range` says exactly `bytes from-(end-1)/size`.
fn content_range_matches(response: &Response, from: u64, end: u64, size: u64) -> bool {
    response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == format!("bytes {from}-{}/{size}", end - 1))
}

async fn fetch_part(t: Arc<Transfer>, i: usize) -> Result<(), Failure> {
    let url = t.request.url.clone();
    let size = t.request.size;
    let mut failures = 0u32;
    loop {
        let part = t.part(i);
        let from = part.start + part.done;
        if from >= part.end {
            return Ok(());
        }
        let mut headers = HeaderMap::new();
        let range = t.range_header(from, part.end);
        if let Some(range) = &range {
            headers.insert(RANGE, range.clone());
        }
        let outcome = match t.http.get(&url, headers).await {
            Ok(response) => match response.status() {
                StatusCode::PARTIAL_CONTENT
                    if range.is_some() && content_range_matches(&response, from, part.end, size) =>
                {
                    stream_into(&t, i, response, from, part.end).await
                }
                StatusCode::PARTIAL_CONTENT => return Err(Failure::RangeIgnored),
                StatusCode::OK if from == 0 && part.end == size => {
                    stream_into(&t, i, response, from, part.end).await
                }
                StatusCode::OK => return Err(Failure::RangeIgnored),
                status => {
                    let body = t.http.small_body(response, 64 << 10, &url).await.unwrap_or_default();
                    let error = status_error(status, &url, &format!("blob {}", t.request.digest), &body);
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(Failure::Fatal(error));
                    }
                    Err(error)
                }
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(Error::InvalidModel(m)) => return Err(Failure::Fatal(Error::InvalidModel(m))),
            Err(e) if failures >= t.http.retries => return Err(Failure::Fatal(e)),
            Err(e) => {
                failures += 1;
                let pause = Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)));
                tracing::info!(digest = %t.request.digest, error = %e, attempt = failures, "retrying part");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = t.flight.cancel.cancelled() => return Err(Failure::Fatal(e)),
                }
            }
        }
    }
}

/// Streams a response body into part `i` from `from`; `end` is the part's end.
async fn stream_into(t: &Transfer, i: usize, mut response: Response, from: u64, end: u64) -> Result<()> {
    let url = &t.request.url;
    let mut offset = from;
    let mut buffer = Vec::with_capacity(WRITE_CHUNK);
    let mut flushed = Instant::now();
    let result = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(t.http.stall, response.chunk()) => next,
            _ = t.flight.cancel.cancelled() => break Err(Error::Registry("download cancelled".into())),
        };
        match next {
            Ok(Ok(Some(bytes))) => {
                let at = offset + buffer.len() as u64;
                if at + bytes.len() as u64 > end {
                    break Err(Error::InvalidModel(format!(
                        "{} sent more than the {} bytes of blob {}; nothing was stored",
                        host_port(url),
                        t.request.size,
                        t.request.digest
                    )));
                }
                buffer.extend_from_slice(&bytes);
                // Slow transfers are written (and so made resumable) at least a few times a second.
                if buffer.len() >= WRITE_CHUNK || flushed.elapsed() >= FLUSH_EVERY {
                    let n = buffer.len() as u64;
                    t.write(i, offset, std::mem::take(&mut buffer)).await?;
                    offset += n;
                    flushed = Instant::now();
                }
            }
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(e)) => break Err(network_error(&e, url)),
            Err(_) => break Err(stalled(url, t.http.stall)),
        }
    };
    let n = buffer.len() as u64;
    t.write(i, offset, buffer).await?;
    offset += n;
    result?;
    if offset < end {
        return Err(Error::Registry(format!(
            "{} ended the transfer of blob {} early, at byte {offset} of {}",
            host_port(url),
            t.request.digest.short(),
            t.request.size
        )));
    }
    Ok(())
}

/// Removes what an abandoned download left in staging (used when a pull is refused after the
/// fact, e.g. for a bad model file).
pub fn discard_partial(staging: &Path, digest: &Digest) {
    for suffix in ["partial", "parts", "partstmp"] {
        let _ = std::fs::remove_file(digest.staging_path(staging, suffix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_split_large_blobs_and_bound_the_part_count() {
        let r = PartsRecord::fresh(250, 100);
        assert_eq!(
            r.parts.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(),
            vec![(0, 100), (100, 200), (200, 250)]
        );
        assert!(r.valid_for(250));
        assert_eq!(PartsRecord::fresh(10, 100).parts.len(), 1);
        assert_eq!(PartsRecord::fresh(1 << 40, 1 << 20).parts.len(), 256);
        assert_eq!(PartsRecord::fresh(0, 100).parts.len(), 1);
    }

    #[test]
    fn damaged_records_are_not_trusted() {
        let mut r = PartsRecord::fresh(250, 100);
        r.parts[1].done = 101;
        assert!(!r.valid_for(250));
        let mut r = PartsRecord::fresh(250, 100);
        r.parts.remove(1);
        assert!(!r.valid_for(250));
        assert!(!PartsRecord::fresh(250, 100).valid_for(251));
    }
}
