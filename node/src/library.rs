//! The content-addressed blob store and the in-memory map of which chunks this node holds.
//!
//! Complete files live in `blobs/<BLAKE3 hex>`. A file being downloaded lives in
//! `partial/<BLAKE3 hex>`, written chunk by chunk at its offset; each chunk is verified before it
//! is written (`write_chunk` takes only a [`VerifiedChunk`], and does not hash it again), recorded
//! in SQLite after it is written, and only then served to peers. When every chunk is there the
//! whole file is hashed once more and renamed into `blobs/`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, anyhow, bail};
use lanpatch_protocol::{FileEntry, Hash32, VerifiedChunk, verify_chunk};

use crate::store::Store;

/// What this node holds of one file.
#[derive(Clone, Debug)]
pub struct FileState {
    pub entry: FileEntry,
    pub have: Vec<bool>,
    pub have_count: usize,
    pub complete: bool,
}

impl FileState {
    /// Bytes of it on disk: the whole file, or the chunks a partial one holds.
    fn held_bytes(&self) -> u64 {
        if self.complete { self.entry.size } else { self.have_count as u64 * u64::from(self.entry.chunk_size) }
    }
}

#[derive(Default)]
struct Inner {
    files: HashMap<Hash32, FileState>,
}

#[derive(Clone)]
pub struct Library {
    inner: Arc<RwLock<Inner>>,
    /// Notified whenever a chunk is stored (see [`Library::wait_for_chunk`]).
    stored: Arc<tokio::sync::Notify>,
    blobs: PathBuf,
    partial: PathBuf,
    store: Store,
}

/// How a file was found at registration.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// Chunks recovered from a partial file (verified again at start-up).
    pub resumed_chunks: usize,
    /// Chunks whose recorded data no longer matched and will be fetched again.
    pub dropped_chunks: usize,
}

impl Library {
    pub fn open(data_dir: &Path, store: Store) -> Result<Library> {
        let blobs = data_dir.join("blobs");
        let partial = data_dir.join("partial");
        for d in [&blobs, &partial] {
            crate::fsmode::create_dir(d, crate::fsmode::DIR)?;
        }
        Ok(Library { inner: Arc::default(), stored: Arc::default(), blobs, partial, store })
    }

    pub fn blob_path(&self, file: &Hash32) -> PathBuf {
        self.blobs.join(file.to_hex())
    }
    fn partial_path(&self, file: &Hash32) -> PathBuf {
        self.partial.join(file.to_hex())
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a file known: complete if its blob is in place, otherwise resumed from its chunk map.
    /// Blocking (reads the partial file to re-verify recorded chunks); call from a blocking task.
    pub fn register(&self, entry: &FileEntry) -> Result<Registered> {
        if self.read_inner().files.contains_key(&entry.hash) {
            return Ok(Registered::default());
        }
        let n = entry.chunks.len();
        let blob = self.blob_path(&entry.hash);
        let mut state = FileState { entry: entry.clone(), have: vec![false; n], have_count: 0, complete: false };
        let mut reg = Registered::default();
        if self.store.is_complete(entry.hash)? && blob.metadata().map(|m| m.len() == entry.size).unwrap_or(false) {
            state.have = vec![true; n];
            state.have_count = n;
            state.complete = true;
        } else {
            let recorded = self.store.chunks(entry.hash)?;
            if !recorded.is_empty() {
                let mut bad = Vec::new();
                match File::open(self.partial_path(&entry.hash)) {
                    Ok(f) => {
                        for idx in recorded {
                            if read_chunk_at(&f, entry, idx).is_ok_and(|b| verify_chunk(entry, idx, &b).is_ok()) {
                                if let Some(slot) = state.have.get_mut(idx as usize)
                                    && !*slot
                                {
                                    *slot = true;
                                    state.have_count += 1;
                                }
                            } else {
                                bad.push(idx);
                            }
                        }
                    }
                    Err(_) => bad = recorded,
                }
                reg.resumed_chunks = state.have_count;
                reg.dropped_chunks = bad.len();
                if !bad.is_empty() {
                    tracing::warn!(file = %entry.hash.short(), chunks = bad.len(), "recorded chunks failed re-verification; fetching them again");
                    self.store.remove_chunks(entry.hash, &bad)?;
                }
            }
            if n == 0 {
                // An empty file is complete by definition.
                File::create(&blob).with_context(|| format!("cannot create {}", blob.display()))?;
                state.complete = true;
            }
        }
        self.write_inner().files.insert(entry.hash, state);
        Ok(reg)
    }

    pub fn file(&self, file: &Hash32) -> Option<FileState> {
        self.read_inner().files.get(file).cloned()
    }

    /// Which chunks of `files` (in order) this node holds, as one flat list.
    pub fn have_flat(&self, files: &[Hash32]) -> Option<Vec<bool>> {
        let inner = self.read_inner();
        let mut out = Vec::new();
        for f in files {
            out.extend_from_slice(&inner.files.get(f)?.have);
        }
        Some(out)
    }

    /// Whether this node holds a chunk: `Some(true)` if it does, `Some(false)` if the file is
    /// being assembled here without it, `None` if the file is unknown.
    pub fn holds(&self, file: &Hash32, idx: u32) -> Option<bool> {
        let inner = self.read_inner();
        let state = inner.files.get(file)?;
        Some(state.complete || state.have.get(idx as usize).copied().unwrap_or(false))
    }

    /// Waits up to `within` for a chunk of a partial file to be stored; returns whether it is
    /// held. A peer that was told this node got a chunk (`ElsewhereAt`) may ask before the chunk
    /// has arrived and been verified here.
    pub async fn wait_for_chunk(&self, file: &Hash32, idx: u32, within: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so a chunk stored in between wakes it.
            let notified = self.stored.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.holds(file, idx) {
                Some(true) => return true,
                None => return false,
                Some(false) => {}
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.holds(file, idx) == Some(true);
            }
        }
    }

    /// Reads a chunk this node holds. Blocking.
    pub fn read_chunk(&self, file: &Hash32, idx: u32) -> Result<Option<Vec<u8>>> {
        let Some(state) = self.file(file) else { return Ok(None) };
        if !state.have.get(idx as usize).copied().unwrap_or(false) {
            return Ok(None);
        }
        let path = if state.complete { self.blob_path(file) } else { self.partial_path(file) };
        let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        read_chunk_at(&f, &state.entry, idx).map(Some)
    }

    /// Stores a verified chunk. Blocking. Returns whether the file is now complete (all chunks
    /// present, not yet finalized).
    ///
    /// The bytes are not hashed again: a [`VerifiedChunk`] matched its signed chunk hash when it
    /// was made, and this file's own entry must expect that same hash at that index and that
    /// length (so a chunk verified against another manifest's entry for the same file hash, with
    /// another chunk list, is refused).
    pub fn write_chunk(&self, file: &Hash32, chunk: VerifiedChunk) -> Result<bool> {
        let idx = chunk.index();
        let state = self.file(file).ok_or_else(|| anyhow!("unknown file {}", file.short()))?;
        if state.complete || state.have.get(idx as usize).copied().unwrap_or(false) {
            return Ok(state.complete);
        }
        let (offset, len) = state.entry.chunk_range(idx).ok_or_else(|| anyhow!("no chunk {idx}"))?;
        if state.entry.chunks.get(idx as usize) != Some(&chunk.hash()) || chunk.len() != len as usize {
            bail!("chunk {idx} was verified against another entry than file {}'s", file.short());
        }
        let bytes = chunk.bytes();
        let path = self.partial_path(file);
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .mode(crate::fsmode::FILE)
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        f.write_all_at(bytes, offset).with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
        // The data is in the file before the chunk map says so; a crash in between only costs a
        // re-fetch of this chunk.
        self.store.add_chunk(*file, idx)?;
        let mut inner = self.write_inner();
        let Some(s) = inner.files.get_mut(file) else { return Ok(false) };
        if let Some(slot) = s.have.get_mut(idx as usize)
            && !*slot
        {
            *slot = true;
            s.have_count += 1;
        }
        let complete = s.have_count == s.have.len();
        drop(inner);
        self.stored.notify_waiters();
        crate::bufpool::give(chunk.into_bytes());
        Ok(complete)
    }

    /// Checks the whole file hash of a file whose chunks are all present and moves it into
    /// `blobs/`. Blocking.
    pub fn finalize(&self, file: &Hash32) -> Result<()> {
        let state = self.file(file).ok_or_else(|| anyhow!("unknown file {}", file.short()))?;
        if state.complete {
            return Ok(());
        }
        if state.have_count != state.have.len() {
            bail!("file {} is missing chunks", file.short());
        }
        let partial = self.partial_path(file);
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(File::open(&partial)?).with_context(|| format!("cannot read {}", partial.display()))?;
        let actual: Hash32 = hasher.finalize().into();
        if actual != *file {
            // Cannot happen with verified chunks unless the disk lies; start over.
            let _ = fs::remove_file(&partial);
            self.store.reset_file(*file)?;
            if let Some(s) = self.write_inner().files.get_mut(file) {
                s.have.fill(false);
                s.have_count = 0;
            }
            bail!("file {} hashed to {} after assembly; discarded", file.short(), actual.short());
        }
        File::open(&partial)?.sync_all()?;
        fs::rename(&partial, self.blob_path(file)).context("cannot move finished file into blobs/")?;
        self.store.complete_file(*file, state.entry.size)?;
        if let Some(s) = self.write_inner().files.get_mut(file) {
            s.complete = true;
        }
        Ok(())
    }

    /// Starts the disk writes of a partial file's chunks so far and waits for them (fdatasync).
    /// A download calls it in the background every `SYNC_STEP` bytes stored (download.rs), so that
    /// `finalize`'s sync finds little left to write: at the end of a distribution every node
    /// flushing its whole copy at once was a visible part of the last node's time. Blocking.
    pub fn sync_partial(&self, file: &Hash32) -> Result<()> {
        let path = self.partial_path(file);
        File::open(&path).and_then(|f| f.sync_data()).with_context(|| format!("cannot sync {}", path.display()))
    }

    /// Imports a local file (a bundle being published), verifying every chunk on the way in.
    /// Blocking.
    pub fn import(&self, entry: &FileEntry, src: &Path) -> Result<()> {
        self.register(entry)?;
        if self.file(&entry.hash).is_some_and(|s| s.complete) {
            return Ok(());
        }
        let f = crate::fsmode::open_regular(src)?;
        let len = f.metadata()?.len();
        if len != entry.size {
            bail!("{} is {len} bytes, the manifest says {}", src.display(), entry.size);
        }
        for idx in 0..entry.chunks.len() as u32 {
            let bytes = read_chunk_at(&f, entry, idx)?;
            let chunk = VerifiedChunk::verify(entry, idx, bytes)
                .map_err(|(e, _)| e)
                .with_context(|| format!("{} does not match the signed manifest", src.display()))?;
            self.write_chunk(&entry.hash, chunk)?;
        }
        self.finalize(&entry.hash)
    }

    /// Removes the partial file of an incomplete file and forgets its chunks (after the disk
    /// filled up: the space goes back, the download is not resumable). Blocking.
    pub fn discard_partial(&self, file: &Hash32) -> Result<()> {
        if self.file(file).is_some_and(|s| s.complete) {
            return Ok(());
        }
        match fs::remove_file(self.partial_path(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", self.partial_path(file).display())),
        }
        if let Some(s) = self.write_inner().files.get_mut(file) {
            s.have.fill(false);
            s.have_count = 0;
        }
        self.store.reset_file(*file)
    }

    /// Removes a complete file's blob and forgets it (retention evicted its release): peers are
    /// told this node no longer has it, and a later download fetches it again. Returns the bytes
    /// freed. Blocking.
    pub fn evict(&self, file: &Hash32) -> Result<u64> {
        let Some(state) = self.file(file).filter(|s| s.complete) else { return Ok(0) };
        match fs::remove_file(self.blob_path(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", self.blob_path(file).display())),
        }
        self.write_inner().files.remove(file);
        self.store.forget_file(*file)?;
        Ok(state.entry.size)
    }

    /// Bytes held in complete files and in partial ones, from the in-memory map (no
    /// directory walk).
    pub fn held_by_kind(&self) -> (u64, u64) {
        let inner = self.read_inner();
        let complete = inner.files.values().filter(|f| f.complete).map(FileState::held_bytes).sum();
        let partial = inner.files.values().filter(|f| !f.complete).map(FileState::held_bytes).sum();
        (complete, partial)
    }

    /// Bytes held in complete and partial files.
    pub fn used_bytes(&self) -> u64 {
        self.read_inner().files.values().map(FileState::held_bytes).sum()
    }

    /// Bytes of these files already held (complete, or the chunks of a partial one).
    pub fn release_bytes_held(&self, files: &[lanpatch_protocol::FileEntry]) -> u64 {
        let inner = self.read_inner();
        files.iter().filter_map(|e| inner.files.get(&e.hash)).map(FileState::held_bytes).sum()
    }
}

fn read_chunk_at(f: &File, entry: &FileEntry, idx: u32) -> Result<Vec<u8>> {
    let (offset, len) = entry.chunk_range(idx).ok_or_else(|| anyhow!("no chunk {idx} in {}", entry.path))?;
    let mut buf = crate::bufpool::for_overwrite(len as usize);
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Whether an error comes from a full disk (ENOSPC, or EDQUOT).
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
                || io.raw_os_error() == Some(28)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_protocol::FileHasher;

    fn entry(bytes: &[u8], chunk_size: u32) -> FileEntry {
        let mut h = FileHasher::new(chunk_size);
        h.update(bytes);
        h.finish("pkg.deb".parse().unwrap(), false)
    }

    fn library(dir: &Path) -> Library {
        Library::open(dir, Store::open(&dir.join("state.db")).unwrap()).unwrap()
    }

    #[test]
    fn verified_chunks_are_stored_and_the_assembled_file_finalizes() {
        let dir = tempfile::tempdir().unwrap();
        let lib = library(dir.path());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let e = entry(&data, 4096);
        lib.register(&e).unwrap();
        let mut complete = false;
        for idx in 0..e.chunks.len() as u32 {
            let (off, len) = e.chunk_range(idx).unwrap();
            let chunk =
                VerifiedChunk::verify(&e, idx, data[off as usize..(off + u64::from(len)) as usize].to_vec()).unwrap();
            complete = lib.write_chunk(&e.hash, chunk).unwrap();
        }
        assert!(complete);
        lib.finalize(&e.hash).unwrap();
        assert_eq!(fs::read(lib.blob_path(&e.hash)).unwrap(), data);
    }

    #[test]
    fn a_chunk_verified_against_another_entry_for_the_same_file_hash_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let lib = library(dir.path());
        let data = vec![7u8; 8192];
        let e = entry(&data, 4096);
        lib.register(&e).unwrap();
        // Another (signed) entry claims the same file hash with other chunk hashes: bytes that
        // match its chunk 0 must not land in this file's chunk 0.
        let other_bytes = vec![9u8; 4096];
        let mut other = e.clone();
        other.chunks[0] = Hash32::of(&other_bytes);
        let chunk = VerifiedChunk::verify(&other, 0, other_bytes).unwrap();
        let err = lib.write_chunk(&e.hash, chunk).unwrap_err();
        assert!(err.to_string().contains("verified against another entry"), "{err}");
        assert_eq!(lib.file(&e.hash).unwrap().have_count, 0, "nothing recorded");
        assert!(lib.read_chunk(&e.hash, 0).unwrap().is_none(), "nothing served");
    }
}
