//! [`RemoteStorage`]: puts, gets, deletes and lists on one store, and the
//! file transfers built on them. A file of up to [`SINGLE_PUT_MAX`] bytes
//! (every layer file of the default `target_file_size`) goes up in one PUT,
//! read whole into memory; a larger one as a multipart upload in parts of
//! [`CHUNK_BYTES`], at most [`UPLOAD_CONCURRENCY`] in flight (64 MiB at
//! most in memory). The uploads of one [`RemoteStorage`] share a memory
//! budget of [`UPLOAD_MEMORY_BUDGET`]: an upload waits for its share
//! before it reads. Against moto, with files of 4 to 128 MiB 4 at a time,
//! one PUT per file ran at 0.9 to 1.0 of plain PUTs of the same bytes
//! from memory; multipart above 32 MiB (16 MiB parts, 3 in flight) at 0.6
//! to 0.85, and 32 MiB parts, 4 in flight, at 0.7: the server pays per
//! part and for assembling them. A download is written to
//! `<target>.download` (flushed to disk as it arrives, see
//! [`EarlyWriteback`]), checked (size and CRC32C), fsynced and renamed, so
//! the target name only ever holds verified bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{RemoteError, Result};

/// Bytes read from a file, or written to the store, per step (also the
/// part size of multipart uploads; S3 wants at least 5 MiB).
pub const CHUNK_BYTES: usize = 16 << 20;
/// Files up to this size go up in one PUT (read whole into memory).
pub const SINGLE_PUT_MAX: usize = 128 << 20;
/// Bytes all uploads of one [`RemoteStorage`] may hold in memory at once.
pub const UPLOAD_MEMORY_BUDGET: usize = 256 << 20;
/// What a multipart upload holds at most: the parts in flight and the one
/// being read.
const MULTIPART_MEMORY: usize = (UPLOAD_CONCURRENCY + 1) * CHUNK_BYTES;
/// Bytes of a download gathered before they are written.
const DOWNLOAD_BUFFER: usize = 4 << 20;
/// Parts of one multipart upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 3;

/// Bytes moved and their CRC32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transferred {
    pub size: u64,
    pub crc32c: u32,
}

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub path: ObjectPath,
    pub size: u64,
}

/// One object store, under its prefix.
#[derive(Clone)]
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    description: String,
    /// [`UPLOAD_MEMORY_BUDGET`] in MiB permits.
    upload_memory: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteStorage({})", self.description)
    }
}

impl RemoteStorage {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, description: String) -> RemoteStorage {
        let upload_memory = Arc::new(tokio::sync::Semaphore::new(UPLOAD_MEMORY_BUDGET >> 20));
        RemoteStorage { store, description, upload_memory }
    }

    /// The URL and option keys (no secrets), for messages.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub async fn put_bytes(&self, path: &ObjectPath, bytes: Bytes) -> Result<()> {
        self.store.put(path, PutPayload::from(bytes)).await.map_err(|e| RemoteError::store("put", path, e))?;
        Ok(())
    }

    pub async fn get_bytes(&self, path: &ObjectPath) -> Result<Bytes> {
        let result = self.store.get(path).await.map_err(|e| RemoteError::store("get", path, e))?;
        result.bytes().await.map_err(|e| RemoteError::store("get", path, e))
    }

    /// Deletes an object; deleting one that does not exist succeeds (a
    /// repeated deletion after a crash is not an error).
    pub async fn delete(&self, path: &ObjectPath) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(RemoteError::store("delete", path, e)),
        }
    }

    /// The size of an object, or `NotFound`.
    pub async fn head(&self, path: &ObjectPath) -> Result<u64> {
        let meta = self.store.head(path).await.map_err(|e| RemoteError::store("head", path, e))?;
        Ok(meta.size)
    }

    /// Every object under `prefix`, in no particular order.
    pub async fn list(&self, prefix: &ObjectPath) -> Result<Vec<ObjectInfo>> {
        let mut stream = self.store.list(Some(prefix));
        let mut objects = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| RemoteError::store("list", prefix, e))?;
            objects.push(ObjectInfo { path: meta.location, size: meta.size });
        }
        Ok(objects)
    }

    /// The "directories" right under `prefix` (common prefixes up to the next
    /// `/`), e.g. the timelines of a tenant.
    pub async fn list_dirs(&self, prefix: &ObjectPath) -> Result<Vec<ObjectPath>> {
        let listing = self.store.list_with_delimiter(Some(prefix)).await.map_err(|e| RemoteError::store("list", prefix, e))?;
        Ok(listing.common_prefixes)
    }

    /// Uploads a local file as `path`, returning its size and CRC32C.
    pub async fn upload_file(&self, local: &Path, path: &ObjectPath) -> Result<Transferred> {
        let mut file = tokio::fs::File::open(local).await.map_err(RemoteError::local("opening", local))?;
        let size = file.metadata().await.map_err(RemoteError::local("reading the size of", local))?.len() as usize;
        let holds = if size <= SINGLE_PUT_MAX { size } else { MULTIPART_MEMORY };
        let _memory = self
            .upload_memory
            .acquire_many(holds.div_ceil(1 << 20).max(1) as u32)
            .await
            .expect("the upload memory semaphore is never closed");
        // A file that grew since its size was read (layer files never do)
        // still goes up whole: as a multipart upload.
        let first = read_chunk(&mut file, local, if size <= SINGLE_PUT_MAX { SINGLE_PUT_MAX + 1 } else { CHUNK_BYTES }).await?;
        if size <= SINGLE_PUT_MAX && first.len() <= SINGLE_PUT_MAX {
            let sent = Transferred { size: first.len() as u64, crc32c: crc32c::crc32c(&first) };
            self.put_bytes(path, first).await?;
            return Ok(sent);
        }
        let mut sent = Transferred { size: first.len() as u64, crc32c: crc32c::crc32c(&first) };
        let upload = self.store.put_multipart(path).await.map_err(|e| RemoteError::store("put", path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK_BYTES);
        writer.put(first);
        let result: Result<()> = async {
            loop {
                writer.wait_for_capacity(UPLOAD_CONCURRENCY).await.map_err(|e| RemoteError::store("put", path, e))?;
                let chunk = read_chunk(&mut file, local, CHUNK_BYTES).await?;
                if chunk.is_empty() {
                    return Ok(());
                }
                sent.size += chunk.len() as u64;
                sent.crc32c = crc32c::crc32c_append(sent.crc32c, &chunk);
                writer.put(chunk);
            }
        }
        .await;
        match result {
            Ok(()) => {
                writer.finish().await.map_err(|e| RemoteError::store("put", path, e))?;
                Ok(sent)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads `path` into `local`, checking it against `expected` (size
    /// and CRC32C) when given; returns what it received. Nothing is left
    /// under `local` unless the check passed.
    pub async fn download_file(&self, path: &ObjectPath, local: &Path, expected: Option<Transferred>) -> Result<Transferred> {
        let partial = partial_path(local);
        let outcome = self.download_into(path, &partial, expected).await;
        match outcome {
            Ok(got) => {
                tokio::fs::rename(&partial, local).await.map_err(RemoteError::local("renaming the download to", local))?;
                if let Some(dir) = local.parent() {
                    sync_dir(dir).await?;
                }
                Ok(got)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }

    async fn download_into(&self, path: &ObjectPath, partial: &Path, expected: Option<Transferred>) -> Result<Transferred> {
        let result = self.store.get(path).await.map_err(|e| RemoteError::store("get", path, e))?;
        let mut stream = result.into_stream();
        let file = tokio::fs::File::create(partial).await.map_err(RemoteError::local("creating", partial))?;
        // The stream's chunks are small; each write of a tokio file is a
        // trip to the blocking pool, so they are gathered first.
        let mut file = tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
        let mut writeback = EarlyWriteback::default();
        let mut got = Transferred { size: 0, crc32c: 0 };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RemoteError::store("get", path, e))?;
            got.size += chunk.len() as u64;
            got.crc32c = crc32c::crc32c_append(got.crc32c, &chunk);
            if let Some(expected) = expected {
                if got.size > expected.size {
                    return Err(RemoteError::Corrupt {
                        path: path.to_string(),
                        what: format!("more than the {} bytes the index says", expected.size),
                    });
                }
            }
            file.write_all(&chunk).await.map_err(RemoteError::local("writing", partial))?;
            writeback.wrote(file.get_ref(), chunk.len()).await.map_err(RemoteError::local("syncing", partial))?;
        }
        if let Some(expected) = expected {
            if got.size != expected.size {
                return Err(RemoteError::Corrupt {
                    path: path.to_string(),
                    what: format!("{} bytes, the index says {}", got.size, expected.size),
                });
            }
            if got.crc32c != expected.crc32c {
                return Err(RemoteError::Corrupt {
                    path: path.to_string(),
                    what: format!("CRC32C {:08x}, the index says {:08x}", got.crc32c, expected.crc32c),
                });
            }
        }
        file.flush().await.map_err(RemoteError::local("writing", partial))?;
        writeback.finish().await.map_err(RemoteError::local("syncing", partial))?;
        file.get_ref().sync_all().await.map_err(RemoteError::local("syncing", partial))?;
        Ok(got)
    }
}

/// Bytes of a download written between two background flushes.
const WRITEBACK_EVERY: usize = 16 << 20;

/// Flushes a download to disk while it is still arriving: every
/// [`WRITEBACK_EVERY`] bytes, an `fdatasync` of what is written so far
/// starts on the blocking pool (one at a time), so the disk works while the
/// network does and the last `fsync` has only the tail left. Without it,
/// the final `fsync` of each file waited for all of it (downloads from moto
/// ran at 0.73 of plain GETs into memory, 0.95 with no `fsync` at all).
#[derive(Default)]
struct EarlyWriteback {
    since_last: usize,
    in_flight: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl EarlyWriteback {
    async fn wrote(&mut self, file: &tokio::fs::File, bytes: usize) -> std::io::Result<()> {
        self.since_last += bytes;
        if self.since_last < WRITEBACK_EVERY || self.in_flight.as_ref().is_some_and(|sync| !sync.is_finished()) {
            return Ok(());
        }
        self.finish().await?;
        self.since_last = 0;
        let clone = file.try_clone().await?.into_std().await;
        self.in_flight = Some(tokio::task::spawn_blocking(move || clone.sync_data()));
        Ok(())
    }

    /// Waits for the flush in flight, if any.
    async fn finish(&mut self) -> std::io::Result<()> {
        match self.in_flight.take() {
            Some(sync) => sync.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

fn partial_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_os_string();
    name.push(".download");
    local.with_file_name(name)
}

/// Up to `limit` bytes (fewer only at the end of the file).
async fn read_chunk(file: &mut tokio::fs::File, local: &Path, limit: usize) -> Result<Bytes> {
    let mut buf = Vec::with_capacity(limit.min(CHUNK_BYTES));
    while buf.len() < limit {
        let read =
            (&mut *file).take((limit - buf.len()) as u64).read_to_end(&mut buf).await.map_err(RemoteError::local("reading", local))?;
        if read == 0 {
            break;
        }
    }
    Ok(Bytes::from(buf))
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(RemoteError::local("syncing directory", &dir))
    })
    .await
    .expect("directory sync does not panic")
}
