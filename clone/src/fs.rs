//! The FUSE file system of a clone: the store, passed through, with the
//! relation files of [`crate::lazy`] filling their blocks from the page
//! server on first read.
//!
//! Inode numbers are the store's own (the store's root is inode 1), so
//! they stay right across renames; a map from inode to path, filled by
//! `lookup`, `create`, `mkdir` and `symlink`, turns them back into paths.
//! Open files keep their store file descriptor, so a file unlinked or
//! renamed while open reads and writes on as on a local disk. The kernel
//! checks permissions (`default_permissions`) against the store's owners and
//! modes; other users (PostgreSQL's) reach the mount through `allow_other`.
//! The kernel's page cache is kept across opens (nothing but this file
//! system changes the files), and writes go through it (the writeback
//! cache): the kernel sends dirty pages in large writes, and before any
//! `fsync` it passes on.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, FileTimes, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use parking_lot::RwLock;

use crate::fetcher::Fetcher;
use crate::lazy::{LazyError, LazyFile, Registry, BLCKSZ};
use crate::stats::{add, Stats};

/// How long the kernel may cache names and attributes. Only this file
/// system changes the store, and the kernel updates its own copies on
/// writes through it.
const TTL: Duration = Duration::from_secs(1);

enum Handle {
    File { file: File, lazy: Option<Arc<LazyFile>> },
    Dir { entries: Vec<(u64, FileType, OsString)> },
}

pub struct CloneFs {
    store: PathBuf,
    store_ino: u64,
    paths: RwLock<HashMap<u64, String>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    lazy: Arc<Registry>,
    fetcher: Arc<Fetcher>,
    stats: Arc<Stats>,
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn lazy_errno(e: LazyError) -> Errno {
    match e {
        LazyError::Fetch(_) => Errno::EIO,
        LazyError::Io(e) => errno(e),
    }
}

fn join(parent: &str, name: &OsStr) -> String {
    let name = name.to_string_lossy();
    if parent.is_empty() {
        name.into_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn file_type(md: &Metadata) -> FileType {
    let ft = md.file_type();
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

impl CloneFs {
    pub fn new(store: &Path, lazy: Arc<Registry>, fetcher: Arc<Fetcher>, stats: Arc<Stats>) -> io::Result<CloneFs> {
        let store_ino = std::fs::metadata(store)?.ino();
        let paths = RwLock::new(HashMap::from([(1u64, String::new())]));
        Ok(CloneFs {
            store: store.to_path_buf(),
            store_ino,
            paths,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            lazy,
            fetcher,
            stats,
        })
    }

    fn ino(&self, md: &Metadata) -> u64 {
        if md.ino() == self.store_ino {
            1
        } else {
            md.ino()
        }
    }

    fn attr(&self, md: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.ino(md)),
            size: md.size(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: time(md.ctime(), md.ctime_nsec()),
            kind: file_type(md),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.paths.read().get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn abs(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.store.clone()
        } else {
            self.store.join(rel)
        }
    }

    /// Stats `rel`, remembers its inode's path and returns its attributes.
    fn remember(&self, rel: String) -> Result<FileAttr, Errno> {
        let md = std::fs::symlink_metadata(self.abs(&rel)).map_err(errno)?;
        let attr = self.attr(&md);
        self.paths.write().insert(attr.ino.0, rel);
        Ok(attr)
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.read().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn open_handle(&self, rel: &str, file: File) -> FileHandle {
        self.add_handle(Handle::File { file, lazy: self.lazy.get(rel) })
    }

    fn chown_to(&self, path: &Path, req: &Request) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid()))
    }

    fn forget_path(&self, rel: &str) {
        self.paths.write().retain(|_, p| p != rel && !p.strip_prefix(rel).is_some_and(|r| r.starts_with('/')));
    }

    #[allow(clippy::too_many_arguments)] // setattr's own arguments
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let rel = self.path(ino)?;
        let abs = self.abs(&rel);
        if let Some(mode) = mode {
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&abs, uid, gid).map_err(errno)?;
        }
        if let Some(size) = size {
            let handle = fh.and_then(|fh| self.handle(fh).ok());
            let lazy = match handle.as_deref() {
                Some(Handle::File { lazy, .. }) => lazy.clone(),
                _ => self.lazy.get(&rel),
            };
            match (lazy, handle.as_deref()) {
                (Some(lazy), _) => lazy.set_len(size, &self.fetcher, &self.stats).map_err(lazy_errno)?,
                (None, Some(Handle::File { file, .. })) => file.set_len(size).map_err(errno)?,
                (None, _) => OpenOptions::new().write(true).open(&abs).and_then(|f| f.set_len(size)).map_err(errno)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let resolve = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(resolve(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(resolve(t));
            }
            if !std::fs::symlink_metadata(&abs).map_err(errno)?.file_type().is_symlink() {
                File::open(&abs).and_then(|f| f.set_times(times)).map_err(errno)?;
            }
        }
        self.remember(rel)
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let handle = self.handle(fh)?;
        let Handle::File { file, lazy } = &*handle else { return Err(Errno::EISDIR) };
        add(&self.stats.reads, 1);
        if let (Some(lazy), true) = (lazy, size > 0) {
            let (first, last) = ((offset / BLCKSZ) as u32, ((offset + u64::from(size) - 1) / BLCKSZ) as u32);
            match lazy.ensure(first, last, true, &self.fetcher, &self.stats).map_err(lazy_errno)? {
                0 => add(&self.stats.lazy_reads_local, 1),
                _ => add(&self.stats.lazy_reads_fetched, 1),
            }
            // A sequential reader's next window is fetched while it reads this one.
            let next = lazy.next_window(first, last);
            if !next.is_empty() {
                let (lazy, fetcher, stats) = (lazy.clone(), self.fetcher.clone(), self.stats.clone());
                std::thread::spawn(move || lazy.prefetch(&next, &fetcher, &stats));
            }
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno(e)),
            }
        }
        buf.truncate(done);
        add(&self.stats.read_bytes, done as u64);
        Ok(buf)
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let handle = self.handle(fh)?;
        let Handle::File { file, lazy, .. } = &*handle else { return Err(Errno::EISDIR) };
        add(&self.stats.writes, 1);
        add(&self.stats.write_bytes, data.len() as u64);
        match lazy {
            Some(lazy) => lazy.write(offset, data, &self.fetcher, &self.stats).map_err(lazy_errno),
            None => file.write_all_at(data, offset).map_err(errno),
        }
    }
}

impl fuser::Filesystem for CloneFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Best effort: a kernel that refuses keeps its defaults.
        // The writeback cache lets the kernel gather PostgreSQL's 8 KiB
        // writes into large ones; fsync still reaches the store (the kernel
        // writes the dirty pages back first).
        let _ = config.add_capabilities(
            InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_BIG_WRITES | InitFlags::FUSE_WRITEBACK_CACHE,
        );
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.lazy.sync_all() {
            eprintln!("pageserver-clone: persisting the remote-block maps at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.path(parent).and_then(|p| self.remember(join(&p, name))) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(Ok(h)) = fh.map(|fh| self.handle(fh)) {
            if let Handle::File { file, .. } = &*h {
                match file.metadata() {
                    Ok(md) => return reply.attr(&TTL, &self.attr(&md)),
                    Err(e) => return reply.error(errno(e)),
                }
            }
        }
        match self.path(ino).and_then(|p| std::fs::symlink_metadata(self.abs(&p)).map_err(errno)) {
            Ok(md) => reply.attr(&TTL, &self.attr(&md)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(|p| std::fs::read_link(self.abs(&p)).map_err(errno)) {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let made = self.path(parent).and_then(|p| {
            let rel = join(&p, name);
            let abs = self.abs(&rel);
            std::fs::create_dir(&abs).map_err(errno)?;
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode & !umask & 0o7777)).map_err(errno)?;
            self.chown_to(&abs, req).map_err(errno)?;
            self.remember(rel)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = self.path(parent).and_then(|p| {
            let rel = join(&p, name);
            std::fs::remove_file(self.abs(&rel)).map_err(errno)?;
            self.lazy.remove(&rel).map_err(errno)?;
            self.forget_path(&rel);
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let done = self.path(parent).and_then(|p| {
            let rel = join(&p, name);
            std::fs::remove_dir(self.abs(&rel)).map_err(errno)?;
            self.forget_path(&rel);
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let made = self.path(parent).and_then(|p| {
            let rel = join(&p, link_name);
            let abs = self.abs(&rel);
            std::os::unix::fs::symlink(target, &abs).map_err(errno)?;
            self.chown_to(&abs, req).map_err(errno)?;
            self.remember(rel)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let done = self.path(parent).and_then(|p| {
            let from = join(&p, name);
            let to = join(&self.path(newparent)?, newname);
            std::fs::rename(self.abs(&from), self.abs(&to)).map_err(errno)?;
            // The replaced file, if any, is gone.
            self.lazy.remove(&to).map_err(errno)?;
            self.forget_path(&to);
            self.lazy.rename(&from, &to).map_err(errno)?;
            let mut paths = self.paths.write();
            for path in paths.values_mut() {
                if *path == from {
                    *path = to.clone();
                } else if let Some(rest) = path.strip_prefix(&from).filter(|r| r.starts_with('/')) {
                    *path = format!("{to}{rest}");
                }
            }
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let made = self.path(ino).and_then(|from| {
            if self.lazy.get(&from).is_some() {
                // Two names for one remote-block map: not needed by PostgreSQL.
                return Err(Errno::EPERM);
            }
            let to = join(&self.path(newparent)?, newname);
            std::fs::hard_link(self.abs(&from), self.abs(&to)).map_err(errno)?;
            self.remember(to)
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self.path(ino).and_then(|rel| {
            // Read and write if at all possible: with the writeback cache the
            // kernel may write dirty pages through any open handle.
            let abs = self.abs(&rel);
            let writable = flags.0 & libc_o::ACCMODE != libc_o::RDONLY;
            let file = match OpenOptions::new().read(true).write(true).open(&abs) {
                Ok(f) => f,
                Err(_) if !writable => File::open(&abs).map_err(errno)?,
                Err(e) => return Err(errno(e)),
            };
            Ok(self.open_handle(&rel, file))
        });
        match opened {
            Ok(fh) => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let made = self.path(parent).and_then(|p| {
            let rel = join(&p, name);
            let abs = self.abs(&rel);
            let mut options = OpenOptions::new();
            options.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc_o::EXCL != 0 {
                options.create_new(true);
            } else {
                options.create(true);
            }
            let file = options.open(&abs).map_err(errno)?;
            if flags & libc_o::TRUNC != 0 {
                match self.lazy.get(&rel) {
                    Some(lazy) => lazy.set_len(0, &self.fetcher, &self.stats).map_err(lazy_errno)?,
                    None => file.set_len(0).map_err(errno)?,
                }
            }
            self.chown_to(&abs, req).map_err(errno)?;
            let attr = self.remember(rel.clone())?;
            Ok((attr, self.open_handle(&rel, file)))
        });
        match made {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.write().remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let synced = self.handle(fh).and_then(|h| match &*h {
            Handle::File { lazy: Some(lazy), .. } => lazy.sync().map_err(errno),
            Handle::File { file, .. } if datasync => file.sync_data().map_err(errno),
            Handle::File { file, .. } => file.sync_all().map_err(errno),
            Handle::Dir { .. } => Err(Errno::EISDIR),
        });
        match synced {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listed = self.path(ino).and_then(|rel| {
            let abs = self.abs(&rel);
            let parent_ino = match rel.rsplit_once('/') {
                Some((parent, _)) => std::fs::metadata(self.abs(parent)).map(|md| self.ino(&md)).unwrap_or(1),
                None => 1,
            };
            let mut entries =
                vec![(ino.0, FileType::Directory, OsString::from(".")), (parent_ino, FileType::Directory, OsString::from(".."))];
            for entry in std::fs::read_dir(&abs).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let ft = entry.file_type().map_err(errno)?;
                let kind = if ft.is_dir() {
                    FileType::Directory
                } else if ft.is_symlink() {
                    FileType::Symlink
                } else {
                    FileType::RegularFile
                };
                entries.push((entry.ino(), kind, entry.file_name()));
            }
            Ok(self.add_handle(Handle::Dir { entries }))
        });
        match listed {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let handle = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir { entries } = &*handle else { return reply.error(Errno::ENOTDIR) };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.handles.write().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.path(ino).and_then(|p| File::open(self.abs(&p)).and_then(|d| d.sync_all()).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.store) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }
}

/// The open(2) flag bits the file system looks at.
mod libc_o {
    pub const ACCMODE: i32 = nix::libc::O_ACCMODE;
    pub const RDONLY: i32 = nix::libc::O_RDONLY;
    pub const EXCL: i32 = nix::libc::O_EXCL;
    pub const TRUNC: i32 = nix::libc::O_TRUNC;
}
