//! The first population of a clone's store, from the page service's
//! `clonebackup` at the clone's LSN: every file but relation data is
//! written whole; each relation segment file of the manifest becomes a
//! sparse file of its size with all its blocks remote ([`crate::lazy`]).
//! `pg_wal` is moved out of the store to `<dir>/wal` and replaced by a
//! symlink to it, as `initdb --waldir` does: the kernel resolves the link,
//! so the clone's WAL (a scan's hint-bit full-page images, every commit)
//! is written to local disk without passing through the FUSE server. It is
//! never fetched, so nothing is lost by keeping it out of the mount.
//! Everything is owned by the clone directory's owner, who runs PostgreSQL.
//! `store.ready` is written last: a store without it is populated again
//! from scratch.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use storage::backup::{CloneFile, CLONE_MANIFEST, CLONE_MANIFEST_HEADER};

use crate::layout::CloneDir;
use crate::lazy::{Registry, BLCKSZ};

/// What a population wrote.
#[derive(Debug, Default)]
pub struct Populated {
    pub files: u64,
    pub tar_bytes: u64,
    pub rel_files: u64,
    pub rel_blocks: u64,
}

/// Fills `dir`'s store from the bytes of a `clonebackup` tar.
pub fn populate(dir: &CloneDir, tar_bytes: &[u8]) -> Result<Populated> {
    let store = dir.store();
    for partial in [&store, &dir.lazy(), &dir.wal()] {
        crate::layout::remove_if_present(partial)?;
    }
    std::fs::create_dir_all(&store)?;
    let owner = std::fs::metadata(&dir.root)?;
    let mut done = Populated { tar_bytes: tar_bytes.len() as u64, ..Default::default() };
    let mut manifest = None;
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    for entry in archive.entries().context("reading the clonebackup tar")? {
        let mut entry = entry.context("reading the clonebackup tar")?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == CLONE_MANIFEST {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            manifest = Some(text);
            continue;
        }
        if !entry.unpack_in(&store).with_context(|| format!("unpacking {path}"))? {
            bail!("the clonebackup tar has an entry outside the data directory: {path}");
        }
        done.files += 1;
    }
    let Some(manifest) = manifest else { bail!("the clonebackup tar has no {CLONE_MANIFEST}: is the page server older than this tool?") };
    let mut lines = manifest.lines();
    if lines.next() != Some(CLONE_MANIFEST_HEADER) {
        bail!("{CLONE_MANIFEST} is of an unknown version");
    }
    let files: Vec<CloneFile> = lines.map(CloneFile::parse_line).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    for f in &files {
        let path = store.join(&f.path);
        let file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path).with_context(|| format!("creating {}", path.display()))?;
        file.set_len(u64::from(f.nblocks) * BLCKSZ)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        done.rel_files += 1;
        done.rel_blocks += u64::from(f.nblocks);
    }
    Registry::create(&dir.lazy(), &files)?;
    let store_wal = store.join("pg_wal");
    if !store_wal.is_dir() {
        bail!("the clonebackup tar has no pg_wal directory");
    }
    std::fs::rename(&store_wal, dir.wal()).with_context(|| format!("moving {} to {}", store_wal.display(), dir.wal().display()))?;
    std::os::unix::fs::symlink(dir.wal(), &store_wal).with_context(|| format!("linking {}", store_wal.display()))?;
    chown_tree(&store, owner.uid(), owner.gid())?;
    chown_tree(&dir.wal(), owner.uid(), owner.gid())?;
    std::fs::set_permissions(dir.wal(), std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700))?;
    let mut to_sync = vec![dir.root.clone()]; // its new entries
    for tree in [&store, &dir.wal(), &dir.lazy()] {
        list_tree(tree, &mut to_sync)?;
    }
    sync_all(&to_sync)?;
    crate::layout::write_durably(&dir.store_ready(), b"")?;
    Ok(done)
}

/// Threads fsyncing the populated store at once.
const SYNC_THREADS: usize = 16;

/// fsyncs `paths` (files and directories). Thousands of small files:
/// fsyncs on several threads at once share the file system's journal
/// commits. Not `syncfs`, whose cost includes every other program's
/// unwritten data on the same file system (a primary's dirty pages made a
/// clone's mount take 2.3 s instead of 0.7 in `clone_bench`).
fn sync_all(paths: &[std::path::PathBuf]) -> Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SYNC_THREADS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while let Some(path) = paths.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        std::fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("fsync of {}", path.display()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("an fsync thread panicked"))
    })
}

/// Every file and directory under `path`, `path` included (symlinks are not followed).
fn list_tree(path: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let md = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if md.is_dir() {
        for entry in std::fs::read_dir(path)? {
            list_tree(&entry?.path(), out)?;
        }
    }
    if md.is_dir() || md.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
