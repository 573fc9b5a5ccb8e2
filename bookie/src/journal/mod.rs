//! The journal: where an add becomes durable.
//!
//! One dedicated thread owns an io_uring [`Ring`] and the current journal file. Adds are queued
//! to it (unbounded channel, bounded by a byte semaphore that adders acquire first: when
//! `max_queued_bytes` are waiting, adders wait). The thread takes everything queued (up to
//! `max_batch_bytes`, waiting at most `max_batch_wait` for more), writes it with one write and
//! one fdatasync linked in a single submission, and only then answers each add. Adds that arrive
//! while a sync is in flight form the next batch: group commit, many small entries per sync.
//!
//! Files are `<id:016x>.journal`, preallocated to `file_bytes` (zeros mark the end of data),
//! starting with a 16-byte header (magic, id). A new file starts when one is full, and after
//! every restart. Files whose records are all covered by a checkpoint are reused or removed.
//!
//! Rotation stays off the add path: while a file fills, a helper thread already creates,
//! preallocates and heads the next one under a `.journal.next` name (which replay ignores), and
//! removes checkpointed files. Rotating is then a rename and a directory sync, done before any
//! record in the new file is acknowledged.
//!
//! Checkpointed files are reused rather than removed, as BookKeeper does with
//! `journalReuseFiles`: up to `reuse_files` of them wait as `<id>.journal.free` files (so
//! are a stopped journal's unused `.next` files) and the helper makes one the next file (renamed,
//! the rename made durable, then its first block rewritten as the new header and zeros). Writes
//! into blocks written before change no file-system metadata, so a commit's fdatasync is a
//! device flush only; into new preallocated space, every commit also commits the file system's
//! journal, and on ext4 that waits for the entry logs' writeback. A reused file holds old records
//! after the new ones, so every commit ends with a zero header (an extra zero block when the
//! records end on a block boundary), and replay also ends a file at the first record whose
//! sequence number does not increase: an old record seen through a torn write.
//!
//! Writes bypass the page cache (O_DIRECT) where the file system allows it, so the kernel
//! does not copy every byte a second time: each group commit is written from a 4 KiB-aligned
//! buffer at the 4 KiB block holding the end of data, as whole blocks: the bytes already in
//! that block, the new records, then zeros up to the block's end (zeros mark the end of data,
//! so the file reads exactly as if only the records were written). The next commit rewrites
//! that last block with more records, as page-cache writeback would. Where O_DIRECT is refused
//! (tmpfs), the same writes go through the page cache.
//!
//! On a write error (a full disk among them) the journal turns read-only: the failed batch and
//! every later add are answered with an error, and nothing is written after the failed offset,
//! so the file never holds garbage before valid records.

pub mod record;
pub mod replay;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{error, info, warn};

pub use record::Record;
pub use replay::Replayed;

use crate::config::JournalConfig;
use crate::error::BookieError;
use crate::metrics::{millis_since, JournalMetrics};
use crate::uring::Ring;
use record::HEADER_LEN;

pub const FILE_MAGIC: &[u8; 8] = b"MGNTJRN1";
pub const FILE_HEADER_LEN: usize = 16;
const FILE_SUFFIX: &str = ".journal";
/// Suffix of the next file while it is prepared; never replayed.
const NEXT_SUFFIX: &str = ".journal.next";
/// Suffix of a checkpointed file kept for reuse; never replayed.
const FREE_SUFFIX: &str = ".journal.free";
/// How often an idle journal thread looks for files to remove.
const IDLE_TICK: Duration = Duration::from_millis(200);
/// Alignment of direct writes: offsets, lengths and buffer addresses (at least the logical
/// block size of any device).
const BLOCK: usize = 4096;

fn file_header(id: u64) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0u8; FILE_HEADER_LEN];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..].copy_from_slice(&id.to_be_bytes());
    header
}

/// The journal file at `path` opened for direct writes, if the file system allows them.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

pub fn file_name(id: u64) -> String {
    format!("{id:016x}{FILE_SUFFIX}")
}

pub fn file_id_of(path: &Path) -> Option<u64> {
    id_with_suffix(path, FILE_SUFFIX)
}

/// The id in a file name `<id:016x><suffix>`.
fn id_with_suffix(path: &Path, suffix: &str) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    u64::from_str_radix(name.strip_suffix(suffix)?, 16).ok()
}

type Reply = oneshot::Sender<Result<(), BookieError>>;

/// Records submitted together (in sequence order), answered together.
struct Request {
    records: Vec<(u64, Record)>,
    reply: Reply,
    submitted: Instant,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Request {
    fn encoded_len(&self) -> usize {
        self.records.iter().map(|(_, record)| record.encoded_len()).sum()
    }
}

/// Space in the journal queue, reserved before an add takes the bookie's lock.
pub struct Reservation(OwnedSemaphorePermit);

/// Handle to the journal thread. Dropping it lets the thread finish what is queued and stop.
pub struct Journal {
    sender: Option<mpsc::Sender<Request>>,
    queued: Arc<Semaphore>,
    max_queued: usize,
    checkpointed: Arc<AtomicU64>,
    read_only: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    metrics: JournalMetrics,
}

struct Writer {
    dir: PathBuf,
    config: JournalConfig,
    ring: Ring,
    file: File,
    file_id: u64,
    offset: u64,
    /// Every file and the highest sequence it holds, oldest first (the last is current).
    files: Vec<(u64, u64)>,
    checkpointed: Arc<AtomicU64>,
    read_only: Arc<AtomicBool>,
    buffer: Vec<u8>,
    /// The bytes of the current file from the start of the block holding `offset` up to
    /// `offset`: rewritten, with what follows, by the next commit.
    tail: Vec<u8>,
    /// Whether `file` was opened with O_DIRECT.
    direct: bool,
    /// The next file being prepared off the add path: its id and the helper thread.
    next: Option<(u64, JoinHandle<Result<File, BookieError>>)>,
    /// Free files (checkpointed, kept for reuse), at most `config.reuse_files`.
    free: Vec<PathBuf>,
    metrics: JournalMetrics,
}

fn io_error(path: &Path, source: std::io::Error) -> BookieError {
    BookieError::Io { path: path.display().to_string(), source }
}

impl Journal {
    /// Replays the journal in `dir` after checkpoint `mark`, then starts the journal thread on a
    /// new file. Returns the handle and what replay found.
    pub fn open(dir: &Path, config: JournalConfig, mark: u64) -> Result<(Journal, Replayed), BookieError> {
        Self::open_measured(dir, config, mark, JournalMetrics::default())
    }

    /// As [`Journal::open`], counting into `metrics`.
    pub fn open_measured(
        dir: &Path,
        config: JournalConfig,
        mark: u64,
        metrics: JournalMetrics,
    ) -> Result<(Journal, Replayed), BookieError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut free = free_files(dir, config.reuse_files)?;
        let mut replayed = replay::replay(dir, mark)?;
        let next_id = replayed.files.last().map_or(1, |(id, _)| id + 1);
        let mut ring = Ring::new().map_err(|e| io_error(dir, e))?;
        let (file, offset) = create_file(dir, next_id, config.file_bytes, free.pop(), &mut ring)?;
        replayed.files.retain(|(id, _)| dir.join(file_name(*id)).exists());
        let mut files = replayed.files.clone();
        files.push((next_id, 0));
        let checkpointed = Arc::new(AtomicU64::new(mark));
        let read_only = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = mpsc::channel();
        let mut writer = Writer {
            dir: dir.to_owned(),
            config: config.clone(),
            ring,
            file,
            file_id: next_id,
            offset,
            files,
            checkpointed: checkpointed.clone(),
            read_only: read_only.clone(),
            buffer: Vec::with_capacity(config.max_batch_bytes + crate::MAX_ENTRY_SIZE + 3 * BLOCK),
            tail: Vec::new(),
            direct: false,
            next: None,
            free,
            metrics: metrics.clone(),
        };
        let buffered = writer.file.try_clone().map_err(|e| io_error(dir, e))?;
        writer.start_file(buffered, file_header(next_id).to_vec());
        writer.prepare_next(Vec::new());
        let direct = writer.direct;
        let thread = std::thread::Builder::new()
            .name("journal".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|e| io_error(dir, e))?;
        info!(journal = %dir.display(), file_id = next_id, replayed = replayed.records.len(), direct, "journal open");
        Ok((
            Journal {
                sender: Some(sender),
                queued: Arc::new(Semaphore::new(config.max_queued_bytes)),
                max_queued: config.max_queued_bytes,
                checkpointed,
                read_only,
                thread: Some(thread),
                dir: dir.to_owned(),
                metrics,
            },
            replayed,
        ))
    }

    /// Waits for room in the queue for a record of `len` bytes.
    pub async fn reserve(&self, len: usize) -> Result<Reservation, BookieError> {
        let bytes = len.clamp(1, self.max_queued) as u32;
        let permit = self
            .queued
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| BookieError::Stopped { what: "journal" })?;
        Ok(Reservation(permit))
    }

    /// Queues a record; the receiver answers once it is durable. Never blocks: call it under
    /// the lock that orders sequence numbers. Small records (keys, fences) may go without a
    /// reservation.
    pub fn submit(
        &self,
        sequence: u64,
        record: Record,
        reservation: Option<Reservation>,
    ) -> oneshot::Receiver<Result<(), BookieError>> {
        self.submit_all(vec![(sequence, record)], reservation)
    }

    /// Queues records with their sequence numbers, in increasing order; the receiver answers
    /// once all of them are durable (they are written in one group commit). As `submit`.
    pub fn submit_all(
        &self,
        records: Vec<(u64, Record)>,
        reservation: Option<Reservation>,
    ) -> oneshot::Receiver<Result<(), BookieError>> {
        let (reply, answer) = oneshot::channel();
        let request = Request { records, reply, submitted: Instant::now(), _permit: reservation.map(|r| r.0) };
        match &self.sender {
            Some(sender) => {
                self.metrics.queue_size.inc();
                if let Err(mpsc::SendError(request)) = sender.send(request) {
                    self.metrics.queue_size.dec();
                    let _ = request.reply.send(Err(BookieError::Stopped { what: "journal" }));
                }
            }
            None => {
                let _ = request.reply.send(Err(BookieError::Stopped { what: "journal" }));
            }
        }
        answer
    }

    /// Tells the journal that every record up to `mark` is in ledger storage; files holding
    /// nothing newer are removed by the journal thread.
    pub fn checkpointed(&self, mark: u64) {
        self.checkpointed.fetch_max(mark, Ordering::SeqCst);
    }

    /// True once a write failed: the journal accepts nothing more.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), BookieError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// Makes journal file `id` (of at least `size` bytes, headed and synced) from the free file
/// `reuse` or, without one, anew; returns it and the offset after the header. The directory is
/// synced so the file survives a crash.
fn create_file(
    dir: &Path,
    id: u64,
    size: u64,
    reuse: Option<PathBuf>,
    ring: &mut Ring,
) -> Result<(File, u64), BookieError> {
    let file = make_file(dir, &dir.join(file_name(id)), id, size, reuse, ring)?;
    sync_dir(dir)?;
    Ok((file, FILE_HEADER_LEN as u64))
}

/// Makes `path` journal file `id` of at least `size` bytes, headed and synced: the free file
/// `reuse` if it can be reused, else a new one.
fn make_file(
    dir: &Path,
    path: &Path,
    id: u64,
    size: u64,
    reuse: Option<PathBuf>,
    ring: &mut Ring,
) -> Result<File, BookieError> {
    if let Some(free) = reuse {
        match reuse_file(dir, &free, path, id, size, ring) {
            Ok(file) => return Ok(file),
            Err(error) => {
                warn!(journal = %free.display(), %error, "cannot reuse a free journal file; creating a new one");
                remove_files(&[free, path.to_owned()]);
            }
        }
    }
    create_headed(path, id, size, ring)
}

/// Renames the free file `free` to `path` and makes it file `id`: the rename is made durable
/// first (a crash leaves a free or `.next` file, never a journal file whose header names another
/// id), then the first block becomes the header and zeros, the end of data, synced. What follows
/// is old records, left for commits to overwrite.
fn reuse_file(dir: &Path, free: &Path, path: &Path, id: u64, size: u64, ring: &mut Ring) -> Result<File, BookieError> {
    std::fs::rename(free, path).map_err(|e| io_error(path, e))?;
    sync_dir(dir)?;
    let file = File::options().read(true).write(true).open(path).map_err(|e| io_error(path, e))?;
    if file.metadata().map_err(|e| io_error(path, e))?.len() < size {
        ring.fallocate(&file, size).map_err(|e| io_error(path, e))?;
    }
    let mut block = vec![0u8; BLOCK];
    block[..FILE_HEADER_LEN].copy_from_slice(&file_header(id));
    ring.write_at(&file, &block, 0, true).map_err(|e| io_error(path, e))?;
    Ok(file)
}

/// Creates `path`, preallocates it to `size` and writes and syncs the header of file `id`.
fn create_headed(path: &Path, id: u64, size: u64, ring: &mut Ring) -> Result<File, BookieError> {
    let file = File::options().create_new(true).read(true).write(true).open(path).map_err(|e| io_error(path, e))?;
    ring.fallocate(&file, size).map_err(|e| io_error(path, e))?;
    ring.write_at(&file, &file_header(id), 0, true).map_err(|e| io_error(path, e))?;
    Ok(file)
}

fn next_file_name(id: u64) -> String {
    format!("{id:016x}{NEXT_SUFFIX}")
}

fn free_file_name(id: u64) -> String {
    format!("{id:016x}{FREE_SUFFIX}")
}

/// Removes next files a stopped journal had prepared but never used.
fn remove_unused_next_files(dir: &Path) -> Result<(), BookieError> {
    for item in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = item.map_err(|e| io_error(dir, e))?.path();
        if path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.ends_with(NEXT_SUFFIX)) {
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

/// At start-up: the free files in `dir`, with the `.next` files a stopped journal prepared but
/// never used among them (renamed to free files); beyond `keep` of them, the rest are removed.
fn free_files(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BookieError> {
    let mut free = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = item.map_err(|e| io_error(dir, e))?.path();
        let (path, id) = if let Some(id) = id_with_suffix(&path, NEXT_SUFFIX) {
            let to = dir.join(free_file_name(id));
            std::fs::rename(&path, &to).map_err(|e| io_error(&to, e))?;
            (to, id)
        } else if let Some(id) = id_with_suffix(&path, FREE_SUFFIX) {
            (path, id)
        } else {
            continue;
        };
        if !free.iter().any(|(known, _)| *known == id) {
            free.push((id, path));
        }
    }
    free.sort();
    let extra = free.len().saturating_sub(keep);
    for (_, path) in free.drain(..extra) {
        std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
    }
    Ok(free.into_iter().map(|(_, path)| path).collect())
}

fn remove_files(paths: &[PathBuf]) {
    for path in paths {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => warn!(journal = %path.display(), %error, "cannot remove a checkpointed journal file"),
        }
    }
}

impl Writer {
    fn run(&mut self, receiver: mpsc::Receiver<Request>) {
        let mut batch: Vec<Request> = Vec::new();
        loop {
            let first = match receiver.recv_timeout(IDLE_TICK) {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => {
                    self.remove_checkpointed_files();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.metrics.queue_size.dec();
            let mut bytes = first.encoded_len();
            batch.push(first);
            let deadline = Instant::now() + self.config.max_batch_wait;
            while bytes < self.config.max_batch_bytes {
                let next = match receiver.try_recv() {
                    Ok(request) => Some(request),
                    Err(mpsc::TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            None
                        } else {
                            receiver.recv_timeout(deadline - now).ok()
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => None,
                };
                let Some(request) = next else { break };
                self.metrics.queue_size.dec();
                bytes += request.encoded_len();
                batch.push(request);
            }
            let result = self.write_batch(&batch);
            for request in batch.drain(..) {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(reason) => Err(BookieError::ReadOnly { reason: reason.clone() }),
                };
                self.metrics.add_entry.observe(millis_since(request.submitted));
                let _ = request.reply.send(answer);
            }
        }
        info!(journal = %self.dir.display(), "journal thread stopped");
    }

    /// Makes `file` (headed and synced, with `offset` right after the header) the current
    /// file, reopened for direct writes where possible.
    fn start_file(&mut self, file: File, header: Vec<u8>) {
        let path = self.dir.join(file_name(self.file_id));
        match open_direct(&path) {
            Some(direct) => {
                self.file = direct;
                self.direct = true;
            }
            None => {
                self.file = file;
                self.direct = false;
            }
        }
        self.offset = header.len() as u64;
        self.tail = header;
    }

    /// Writes and syncs one batch; on failure the journal turns read-only.
    fn write_batch(&mut self, batch: &[Request]) -> Result<(), String> {
        if self.read_only.load(Ordering::SeqCst) {
            return Err("journal is read-only after an earlier write failure".to_owned());
        }
        let records: usize = batch.iter().map(Request::encoded_len).sum();
        if self.offset + (records + HEADER_LEN) as u64 > self.config.file_bytes {
            if let Err(error) = self.rotate(records as u64) {
                return Err(self.fail(&error.to_string()));
            }
        }
        // [tail of the last block][records][zeros to a block end, at least a header's worth: the
        // end marker, before whatever an earlier use of the file left], from a 4 KiB-aligned
        // address: the buffer has room for all of it, so encoding never moves it.
        self.buffer.clear();
        self.buffer.reserve(BLOCK + self.tail.len() + records + BLOCK);
        let skip = self.buffer.as_ptr().align_offset(BLOCK);
        self.buffer.resize(skip, 0);
        self.buffer.extend_from_slice(&self.tail);
        for (sequence, record) in batch.iter().flat_map(|request| &request.records) {
            record.encode(*sequence, &mut self.buffer);
        }
        let end = self.buffer.len() - skip;
        self.buffer.resize(skip + (end + HEADER_LEN).next_multiple_of(BLOCK), 0);
        let block_start = self.offset - self.tail.len() as u64;
        let path = self.dir.join(file_name(self.file_id));
        let started = Instant::now();
        let mut written = self.ring.write_at(&self.file, &self.buffer[skip..], block_start, true);
        if self.direct && written.as_ref().is_err_and(|error| error.raw_os_error() == Some(libc::EINVAL)) {
            // Opened but refused: go through the page cache from now on.
            match File::options().write(true).open(&path) {
                Ok(buffered) => {
                    warn!(journal = %self.dir.display(), "a direct write was refused; journal writes go through the page cache");
                    self.file = buffered;
                    self.direct = false;
                    written = self.ring.write_at(&self.file, &self.buffer[skip..], block_start, true);
                }
                Err(error) => written = Err(error),
            }
        }
        if let Err(error) = written {
            return Err(self.fail(&format!("write to {}: {error}", path.display())));
        }
        self.metrics.sync.observe(millis_since(started));
        self.metrics.batch_entries.observe(batch.iter().map(|request| request.records.len()).sum::<usize>() as f64);
        self.metrics.batch_bytes.observe(records as f64);
        self.metrics.written_bytes.inc_by(records as u64);
        self.offset = block_start + end as u64;
        let last_block = skip + end / BLOCK * BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&self.buffer[last_block..skip + end]);
        if let (Some(last), Some(request)) =
            (self.files.last_mut(), batch.iter().flat_map(|r| &r.records).map(|(sequence, _)| *sequence).max())
        {
            last.1 = last.1.max(request);
        }
        Ok(())
    }

    fn fail(&mut self, reason: &str) -> String {
        if !self.read_only.swap(true, Ordering::SeqCst) {
            error!(journal = %self.dir.display(), reason, "journal write failed; the bookie is read-only now");
        }
        format!("journal write failed: {reason}")
    }

    /// Starts the next file: the prepared one if it is big enough, else one made here. A batch
    /// larger than a whole file still gets a file of its own.
    fn rotate(&mut self, needed: u64) -> Result<(), BookieError> {
        let id = self.file_id + 1;
        let size = self.config.file_bytes.max(FILE_HEADER_LEN as u64 + needed + BLOCK as u64);
        let prepared = match self.next.take() {
            Some((next_id, helper)) if next_id == id => match helper.join() {
                Ok(Ok(file)) if size <= self.config.file_bytes => {
                    let (from, to) = (self.dir.join(next_file_name(id)), self.dir.join(file_name(id)));
                    std::fs::rename(&from, &to).map_err(|e| io_error(&to, e))?;
                    sync_dir(&self.dir)?;
                    Some(file)
                }
                Ok(Ok(_too_small)) => {
                    let unused = self.dir.join(next_file_name(id));
                    std::fs::remove_file(&unused).map_err(|e| io_error(&unused, e))?;
                    None
                }
                Ok(Err(error)) => {
                    // Made here instead; if the disk is the trouble, that fails with its error.
                    warn!(journal = %self.dir.display(), %error, "preparing the next journal file failed");
                    remove_unused_next_files(&self.dir)?;
                    None
                }
                Err(_) => None,
            },
            _ => None,
        };
        let file = match prepared {
            Some(file) => file,
            None => {
                let reuse = if size <= self.config.file_bytes { self.free.pop() } else { None };
                create_file(&self.dir, id, size, reuse, &mut self.ring)?.0
            }
        };
        self.file_id = id;
        self.start_file(file, file_header(id).to_vec());
        self.files.push((id, 0));
        let checkpointed = self.take_checkpointed_files();
        let removable = self.recycle(checkpointed);
        self.prepare_next(removable);
        Ok(())
    }

    /// Starts a helper thread that prepares the file after the current one (from a free file
    /// if there is one) and removes `removable`. Without a thread, the next rotation makes its
    /// file itself.
    fn prepare_next(&mut self, removable: Vec<PathBuf>) {
        let (id, dir, size) = (self.file_id + 1, self.dir.clone(), self.config.file_bytes);
        let reuse = self.free.pop();
        let kept = reuse.clone();
        let helper = std::thread::Builder::new().name("journal-next".to_owned()).spawn(move || {
            remove_files(&removable);
            let mut ring = Ring::new().map_err(|e| io_error(&dir, e))?;
            make_file(&dir, &dir.join(next_file_name(id)), id, size, reuse, &mut ring)
        });
        match helper {
            Ok(helper) => self.next = Some((id, helper)),
            Err(error) => {
                warn!(journal = %self.dir.display(), %error, "cannot start the journal file helper");
                self.free.extend(kept);
            }
        }
    }

    /// Recycles files (other than the current one) whose records a checkpoint covers.
    fn remove_checkpointed_files(&mut self) {
        let checkpointed = self.take_checkpointed_files();
        let removable = self.recycle(checkpointed);
        remove_files(&removable);
    }

    /// Keeps checkpointed files for reuse (renamed to free files) while fewer than
    /// `reuse_files` are kept; returns the others, to be removed. A rename lost in a crash
    /// brings the file back as a journal file whose records the checkpoint covers.
    fn recycle(&mut self, checkpointed: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut removable = Vec::new();
        for path in checkpointed {
            if self.free.len() < self.config.reuse_files {
                if let Some(id) = file_id_of(&path) {
                    let free = self.dir.join(free_file_name(id));
                    match std::fs::rename(&path, &free) {
                        Ok(()) => {
                            self.free.push(free);
                            continue;
                        }
                        Err(error) => {
                            warn!(journal = %path.display(), %error, "cannot keep a checkpointed journal file for reuse")
                        }
                    }
                }
            }
            removable.push(path);
        }
        removable
    }

    /// Forgets files (other than the current one) whose records a checkpoint covers and
    /// returns their paths, to be removed.
    fn take_checkpointed_files(&mut self) -> Vec<PathBuf> {
        let mark = self.checkpointed.load(Ordering::SeqCst);
        let current = self.file_id;
        let mut removable = Vec::new();
        self.files.retain(|(id, max_sequence)| {
            if *id == current || *max_sequence > mark {
                return true;
            }
            removable.push(self.dir.join(file_name(*id)));
            false
        });
        removable
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn config() -> JournalConfig {
        JournalConfig { file_bytes: 1024 * 1024, ..JournalConfig::default() }
    }

    fn add(ledger_id: u64, entry_id: u64, size: usize) -> Record {
        Record::Add {
            ledger_id,
            entry_id,
            last_add_confirmed: entry_id as i64 - 1,
            payload: Bytes::from(vec![entry_id as u8; size]),
        }
    }

    async fn append(journal: &Journal, sequence: u64, record: Record) -> Result<(), BookieError> {
        let reservation = journal.reserve(record.encoded_len()).await?;
        journal.submit(sequence, record, Some(reservation)).await.map_err(|_| BookieError::Stopped { what: "reply" })?
    }

    #[tokio::test]
    async fn appended_records_replay_after_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (journal, replayed) = Journal::open(dir.path(), config(), 0).expect("open");
            assert!(replayed.records.is_empty());
            let mut answers = Vec::new();
            for entry in 0..100u64 {
                let reservation = journal.reserve(1100).await.expect("reserve");
                answers.push(journal.submit(entry + 1, add(7, entry, 1000), Some(reservation)));
            }
            for answer in answers {
                answer.await.expect("answered").expect("durable");
            }
        }
        let (_journal, replayed) = Journal::open(dir.path(), config(), 40).expect("reopen");
        let sequences: Vec<u64> = replayed.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, (41..=100).collect::<Vec<_>>());
        assert_eq!(replayed.last_sequence, 100);
        assert_eq!(replayed.records[0].1, add(7, 40, 1000));
    }

    #[tokio::test]
    async fn commits_that_rewrite_a_partial_block_keep_every_earlier_record() {
        // One record per commit, of sizes that end commits anywhere inside 4 KiB blocks: each
        // commit rewrites the block the previous one ended in.
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes: Vec<usize> = (0..120u64).map(|i| (i as usize * 397) % 5000 + 1).collect();
        {
            let (journal, _) = Journal::open(dir.path(), config(), 0).expect("open");
            for (entry, size) in sizes.iter().enumerate() {
                append(&journal, entry as u64 + 1, add(3, entry as u64, *size)).await.expect("durable");
            }
        }
        let (_journal, replayed) = Journal::open(dir.path(), config(), 0).expect("reopen");
        assert_eq!(replayed.records.len(), sizes.len());
        for (entry, (size, (sequence, record))) in sizes.iter().zip(&replayed.records).enumerate() {
            assert_eq!(*sequence, entry as u64 + 1);
            assert_eq!(*record, add(3, entry as u64, *size), "record {entry} byte for byte");
        }
    }

    #[tokio::test]
    async fn prepared_next_files_take_over_on_rotation_and_are_never_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (journal, _) = Journal::open(dir.path(), config(), 0).expect("open");
            for entry in 0..30u64 {
                append(&journal, entry + 1, add(2, entry, 100_000)).await.expect("durable");
            }
        }
        // The stopped journal leaves the file it prepared; it holds only a header.
        let next_files = || {
            std::fs::read_dir(dir.path())
                .expect("read dir")
                .filter(|item| item.as_ref().expect("item").file_name().to_string_lossy().ends_with(NEXT_SUFFIX))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while next_files() == 0 {
            assert!(Instant::now() < deadline, "no next file was prepared");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_journal, replayed) = Journal::open(dir.path(), config(), 0).expect("reopen");
        let sequences: Vec<u64> = replayed.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, (1..=30).collect::<Vec<_>>(), "every record once, in order, across rotations");
        let ids: Vec<u64> = replay::list_files(dir.path()).expect("list").into_iter().map(|(id, _)| id).collect();
        assert!(ids.windows(2).all(|pair| pair[1] == pair[0] + 1), "file ids follow each other: {ids:?}");
    }

    /// Names in `dir` ending with `suffix`.
    fn count_suffix(dir: &Path, suffix: &str) -> usize {
        std::fs::read_dir(dir)
            .expect("read dir")
            .filter(|item| item.as_ref().expect("item").file_name().to_string_lossy().ends_with(suffix))
            .count()
    }

    #[tokio::test]
    async fn files_rotate_and_checkpointed_ones_are_kept_for_reuse_or_removed() {
        for reuse_files in [2, 0] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (journal, _) = Journal::open(dir.path(), JournalConfig { reuse_files, ..config() }, 0).expect("open");
            for entry in 0..40u64 {
                append(&journal, entry + 1, add(1, entry, 100_000)).await.expect("durable");
            }
            let files = replay::list_files(dir.path()).expect("list");
            assert!(files.len() >= 4, "4 MB over 1 MiB files rotates: {files:?}");
            journal.checkpointed(40);
            append(&journal, 41, add(1, 40, 10)).await.expect("durable");
            let deadline = Instant::now() + Duration::from_secs(10);
            while replay::list_files(dir.path()).expect("list").len() > 1 {
                assert!(Instant::now() < deadline, "checkpointed files were not recycled");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(count_suffix(dir.path(), FREE_SUFFIX), reuse_files, "free files kept");
        }
    }

    /// The inode of `path`.
    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("metadata").ino()
    }

    #[tokio::test]
    async fn a_reused_file_replays_only_its_new_records_even_when_they_end_on_a_block_boundary() {
        // An add of this payload, right after a file header, ends exactly at 4096.
        let aligned = BLOCK - FILE_HEADER_LEN - add(0, 0, 0).encoded_len();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = JournalConfig { reuse_files: 1, ..config() };
        let first_inode;
        {
            let (journal, _) = Journal::open(dir.path(), config.clone(), 0).expect("open");
            first_inode = inode(&dir.path().join(file_name(1)));
            // File 1: sequence 1 ends at 4096, so an old record starts at 4096 (sequence 2);
            // ten adds of 100 kB fill a 1 MiB file.
            append(&journal, 1, add(5, 0, aligned)).await.expect("durable");
            for sequence in 2..=31u64 {
                append(&journal, sequence, add(5, sequence - 1, 100_000)).await.expect("durable");
                if sequence == 12 {
                    // Sequence 12 started file 2 (and file 3 was prepared, new). File 1 is
                    // covered now: the rotation to file 3 keeps it and prepares file 4 from it.
                    journal.checkpointed(11);
                }
            }
            // Filled up to 1000 bytes before its end, file 3 has no room for an add of
            // `aligned`: the first add in file 4 ends exactly on a block boundary, before file
            // 1's old record of sequence 2.
            let used = FILE_HEADER_LEN + 10 * add(5, 0, 100_000).encoded_len();
            let filler = config.file_bytes as usize - used - 1000 - add(0, 0, 0).encoded_len();
            append(&journal, 32, add(5, 31, filler)).await.expect("durable");
            append(&journal, 33, add(5, 32, aligned)).await.expect("durable");
        }
        let reused = dir.path().join(file_name(4));
        assert_eq!(inode(&reused), first_inode, "file 4 is file 1 reused");
        let size = std::fs::metadata(&reused).expect("metadata").len();
        let expected: Vec<u64> = (12..=33).collect();
        let (journal, replayed) = Journal::open(dir.path(), config.clone(), 11).expect("reopen");
        let sequences: Vec<u64> = replayed.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, expected);
        assert_eq!(replayed.records.last().expect("records").1, add(5, 32, aligned), "byte for byte");
        assert_eq!(std::fs::metadata(&reused).expect("metadata").len(), size, "a clean end: nothing truncated");
        drop(journal);
        // File 4 is an older file now: its end must read as clean, not as damage.
        let (_journal, replayed) = Journal::open(dir.path(), config, 11).expect("third open");
        assert_eq!(replayed.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(), expected);
    }

    /// Journals `count` adds of 500 bytes (sequences from 1) in `dir` and stops; returns the
    /// path and the bytes of the file they are in.
    async fn journal_of_adds(dir: &Path, count: u64) -> (PathBuf, Vec<u8>) {
        {
            let (journal, _) = Journal::open(dir, config(), 0).expect("open");
            for entry in 0..count {
                append(&journal, entry + 1, add(3, entry, 500)).await.expect("durable");
            }
        }
        let (_, path) = replay::list_files(dir).expect("list").pop().expect("a file");
        let data = std::fs::read(&path).expect("read");
        (path, data)
    }

    #[tokio::test]
    async fn an_old_record_after_the_new_ones_ends_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What a torn write into a reused file can leave: after the last new record, an old
        // one whose checksum is fine (here a copy of the second record).
        let (path, mut data) = journal_of_adds(dir.path(), 5).await;
        let len = add(3, 0, 500).encoded_len();
        let end = FILE_HEADER_LEN + 5 * len;
        let second = data[FILE_HEADER_LEN + len..FILE_HEADER_LEN + 2 * len].to_vec();
        data[end..end + len].copy_from_slice(&second);
        std::fs::write(&path, data).expect("write");
        let (_journal, replayed) = Journal::open(dir.path(), config(), 0).expect("reopen");
        let sequences: Vec<u64> = replayed.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, (1..=5).collect::<Vec<_>>(), "the old record is not replayed");
        assert_eq!(std::fs::metadata(&path).expect("metadata").len(), end as u64, "cut off after the new records");
    }

    #[tokio::test]
    async fn next_files_left_by_a_stop_are_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (journal, _) = Journal::open(dir.path(), config(), 0).expect("open");
            append(&journal, 1, add(1, 0, 100)).await.expect("durable");
            let deadline = Instant::now() + Duration::from_secs(10);
            while count_suffix(dir.path(), NEXT_SUFFIX) == 0 {
                assert!(Instant::now() < deadline, "no next file was prepared");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let next = dir.path().join(next_file_name(2));
        let next_inode = inode(&next);
        // The reopened journal starts file 2 from it; replay still finds the record.
        let (journal, replayed) = Journal::open(dir.path(), config(), 0).expect("reopen");
        assert_eq!(replayed.records.len(), 1);
        assert_eq!(inode(&dir.path().join(file_name(2))), next_inode);
        append(&journal, 2, add(1, 1, 100)).await.expect("durable");
        drop(journal);
        let (_journal, replayed) = Journal::open(dir.path(), config(), 0).expect("third open");
        assert_eq!(replayed.records.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_with_earlier_records_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Tear the last record: cut its last bytes as a crash inside a write would.
        let (path, data) = journal_of_adds(dir.path(), 10).await;
        let end = FILE_HEADER_LEN + 10 * add(3, 0, 500).encoded_len();
        let mut torn = data[..end - 7].to_vec();
        torn.resize(data.len(), 0xee);
        std::fs::write(&path, torn).expect("write");
        let (journal, replayed) = Journal::open(dir.path(), config(), 0).expect("reopen after a torn tail");
        assert_eq!(replayed.records.len(), 9, "the torn record is dropped, the others kept");
        // The bookie numbers on from the last record kept, as the torn one never counted.
        append(&journal, replayed.last_sequence + 1, add(3, 10, 500)).await.expect("writes go on");
        drop(journal);
        let (_, replayed) = Journal::open(dir.path(), config(), 0).expect("third open");
        assert_eq!(replayed.records.len(), 10);
    }

    #[tokio::test]
    async fn corruption_in_an_older_file_refuses_to_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (journal, _) = Journal::open(dir.path(), config(), 0).expect("open");
            append(&journal, 1, add(1, 0, 100)).await.expect("durable");
        }
        {
            let (journal, _) = Journal::open(dir.path(), config(), 0).expect("reopen");
            append(&journal, 2, add(1, 1, 100)).await.expect("durable");
        }
        let (_, first) = replay::list_files(dir.path()).expect("list").remove(0);
        let mut data = std::fs::read(&first).expect("read");
        data[FILE_HEADER_LEN + 20] ^= 0xff;
        std::fs::write(&first, data).expect("write");
        match Journal::open(dir.path(), config(), 0) {
            Err(BookieError::Corrupt { what, .. }) => assert!(what.contains(&file_name(1)), "{what}"),
            other => panic!("expected a corruption error, got {:?}", other.map(|_| ())),
        }
    }
}
