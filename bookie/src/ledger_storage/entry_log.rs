//! Entry logs: the files checkpoints write entries to, `entry-logs/<id:016x>.log`.
//!
//! A log is append-only. It starts with a 16-byte header (magic `MGNTELG1`, then the log id as
//! u64 BE), followed by records `[len u32 BE][crc32c u32 BE][ledger u64 BE][entry u64 BE][data]`
//! where `len` is the length of `data` and the crc covers ledger, entry and data (every byte of
//! the record after the crc). Nothing in a log says which records are live: the index does.
//! Bytes a crash left after the last indexed record, superseded records and records of deleted
//! ledgers are garbage that GC reclaims.
//!
//! Concurrency: one [`EntryLogWriter`] appends, through the io_uring [`Ring`] it owns; the
//! storage keeps it in its checkpoint mutex, so one thread at a time uses the ring.
//! [`EntryLogReader`] serves positioned reads (`pread`) from any number of threads.
//!
//! Invariants: the writer never appends to a log it has left (after rotation, an error or a
//! restart it starts a new one), and it syncs a log before reporting it written, so a record the
//! index names is complete on disk. Every length read from disk is bounded by
//! [`crate::MAX_ENTRY_SIZE`] and by the file before anything is allocated for it, and every
//! record's crc, ledger and entry are checked before its bytes are used: a mismatch is
//! [`BookieError::Corrupt`] naming the file and offset.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use crate::error::BookieError;
use crate::uring::Ring;
use crate::MAX_ENTRY_SIZE;

pub const LOG_MAGIC: &[u8; 8] = b"MGNTELG1";
/// Magic and log id.
pub const HEADER_LEN: u64 = 16;
/// len, crc, ledger, entry.
pub const RECORD_HEADER_LEN: usize = 24;
const LOG_SUFFIX: &str = ".log";
/// Appends are gathered into writes of about this size, each followed by the start of its
/// writeback. Small enough that a journal fdatasync issued meanwhile waits behind little entry-log
/// data in the device queue: with 4 MiB chunks the add p99 in `magnetar-perf bookie` was 12-13 ms,
/// with 512 KiB 6.5-7.6 ms (ARCHITECTURE.md).
const WRITE_CHUNK_BYTES: usize = 512 * 1024;
/// A scan reads the log in pieces of about this size.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

pub fn file_name(log_id: u64) -> String {
    format!("{log_id:016x}{LOG_SUFFIX}")
}

pub fn log_id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let hex = name.strip_suffix(LOG_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub fn io_error(path: &Path, source: io::Error) -> BookieError {
    BookieError::Io { path: path.display().to_string(), source }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> BookieError {
    BookieError::Corrupt { what: format!("entry log {} at offset {offset}", path.display()), reason: reason.into() }
}

/// The entry logs in `dir`, by id. Files with other names are left alone.
pub fn list_logs(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BookieError> {
    let mut logs = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|source| io_error(dir, source))? {
        let path = item.map_err(|source| io_error(dir, source))?.path();
        if let Some(log_id) = log_id_of(&path) {
            logs.push((log_id, path));
        }
    }
    logs.sort_unstable();
    Ok(logs)
}

/// Where a record is: its log, the offset of its header, the length of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub log_id: u64,
    pub offset: u64,
    pub len: u32,
}

impl Location {
    /// Bytes the whole record takes in the log.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Appends one record to `out`.
pub fn encode_record(out: &mut Vec<u8>, ledger_id: u64, entry_id: u64, data: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&ledger_id.to_be_bytes());
    out.extend_from_slice(&entry_id.to_be_bytes());
    out.extend_from_slice(data);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

struct RecordHeader {
    len: u32,
    crc: u32,
    ledger_id: u64,
    entry_id: u64,
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut value = [0u8; 4];
    value.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(value)
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(value)
}

/// `bytes` holds at least [`RECORD_HEADER_LEN`] bytes.
fn parse_header(bytes: &[u8]) -> RecordHeader {
    RecordHeader {
        len: be_u32(bytes, 0),
        crc: be_u32(bytes, 4),
        ledger_id: be_u64(bytes, 8),
        entry_id: be_u64(bytes, 16),
    }
}

/// One log the writer appends to. `buffer` holds appended bytes not yet written; they belong
/// at `written`.
struct OpenLog {
    log_id: u64,
    path: PathBuf,
    file: File,
    written: u64,
    buffer: Vec<u8>,
    /// Appended to since the last `finish`.
    dirty: bool,
}

impl OpenLog {
    fn end(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    fn write_buffer(&mut self, ring: &mut Ring, sync: bool) -> Result<(), BookieError> {
        if !self.buffer.is_empty() {
            ring.write_at(&self.file, &self.buffer, self.written, sync).map_err(|e| io_error(&self.path, e))?;
            if !sync {
                // Spread the flush's disk writes over its course instead of one burst at its sync.
                ring.start_writeback(&self.file, self.written, self.buffer.len() as u32)
                    .map_err(|e| io_error(&self.path, e))?;
            }
            self.written += self.buffer.len() as u64;
            self.buffer.clear();
        } else if sync {
            ring.fdatasync(&self.file).map_err(|e| io_error(&self.path, e))?;
        }
        Ok(())
    }
}

/// Appends records to the current entry log, starting a new one when it is full.
pub struct EntryLogWriter {
    dir: PathBuf,
    ring: Ring,
    rotate_at: u64,
    next_log_id: u64,
    current: Option<OpenLog>,
    /// Logs left since the last `finish` (synced), with the end of what was written there.
    left: Vec<(u64, u64)>,
}

impl EntryLogWriter {
    /// A writer whose first log (created on the first append) gets id `next_log_id`.
    pub fn new(dir: PathBuf, ring: Ring, rotate_at: u64, next_log_id: u64) -> Self {
        EntryLogWriter { dir, ring, rotate_at, next_log_id, current: None, left: Vec::new() }
    }

    /// The log appends go to; GC leaves it alone.
    pub fn current_log_id(&self) -> Option<u64> {
        self.current.as_ref().map(|log| log.log_id)
    }

    /// Appends a record; it is durable only after [`finish`](Self::finish). After an error the
    /// current log is abandoned (its unsynced tail is garbage) and the next append starts anew.
    pub fn append(&mut self, ledger_id: u64, entry_id: u64, data: &[u8]) -> Result<Location, BookieError> {
        if data.len() > MAX_ENTRY_SIZE {
            return Err(BookieError::InvalidRequest {
                reason: format!(
                    "entry {entry_id} of ledger {ledger_id} has {} bytes, more than the limit of {MAX_ENTRY_SIZE}",
                    data.len()
                ),
            });
        }
        let result = self.try_append(ledger_id, entry_id, data);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn try_append(&mut self, ledger_id: u64, entry_id: u64, data: &[u8]) -> Result<Location, BookieError> {
        let record_bytes = (RECORD_HEADER_LEN + data.len()) as u64;
        if let Some(log) = self.current.as_mut() {
            let end = log.end();
            // Every log holds at least one record, however large.
            if end > HEADER_LEN && end + record_bytes > self.rotate_at {
                log.write_buffer(&mut self.ring, true)?;
                if log.dirty {
                    self.left.push((log.log_id, log.written));
                }
                self.current = None;
            }
        }
        let log = match self.current.take() {
            Some(log) => log,
            None => self.create_log()?,
        };
        let log = self.current.insert(log);
        let offset = log.end();
        encode_record(&mut log.buffer, ledger_id, entry_id, data);
        log.dirty = true;
        if log.buffer.len() >= WRITE_CHUNK_BYTES {
            log.write_buffer(&mut self.ring, false)?;
        }
        Ok(Location { log_id: log.log_id, offset, len: data.len() as u32 })
    }

    fn create_log(&mut self) -> Result<OpenLog, BookieError> {
        let log_id = self.next_log_id;
        self.next_log_id += 1;
        let path = self.dir.join(file_name(log_id));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| io_error(&path, e))?;
        // The new name must survive a crash as surely as the records the index will point to.
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|e| io_error(&self.dir, e))?;
        let mut buffer = Vec::with_capacity(WRITE_CHUNK_BYTES);
        buffer.extend_from_slice(LOG_MAGIC);
        buffer.extend_from_slice(&log_id.to_be_bytes());
        Ok(OpenLog { log_id, path, file, written: 0, buffer, dirty: false })
    }

    /// Writes what is buffered and fdatasyncs; returns every log appended to since the last
    /// finish with the end of its records, all of it now durable.
    pub fn finish(&mut self) -> Result<Vec<(u64, u64)>, BookieError> {
        if let Some(log) = self.current.as_mut() {
            if log.dirty {
                if let Err(error) = log.write_buffer(&mut self.ring, true) {
                    self.abandon();
                    return Err(error);
                }
                log.dirty = false;
                self.left.push((log.log_id, log.written));
            }
        }
        Ok(std::mem::take(&mut self.left))
    }

    fn abandon(&mut self) {
        self.current = None;
        self.left.clear();
    }
}

/// Positioned reads of entry logs, from any thread.
pub struct EntryLogReader {
    dir: PathBuf,
    /// Open files by log id; a log removed by GC is forgotten after its file is gone.
    files: RwLock<HashMap<u64, Arc<File>>>,
}

impl EntryLogReader {
    pub fn new(dir: PathBuf) -> Self {
        EntryLogReader { dir, files: RwLock::new(HashMap::new()) }
    }

    pub fn path(&self, log_id: u64) -> PathBuf {
        self.dir.join(file_name(log_id))
    }

    /// The open file, None if the log no longer exists.
    fn file(&self, log_id: u64) -> Result<Option<Arc<File>>, BookieError> {
        if let Some(file) = self.files.read().get(&log_id) {
            return Ok(Some(file.clone()));
        }
        // Opening under the write lock orders it with `forget`: a file opened before its removal
        // is forgotten by it, one opened after finds nothing.
        let mut files = self.files.write();
        if let Some(file) = files.get(&log_id) {
            return Ok(Some(file.clone()));
        }
        let path = self.path(log_id);
        match File::open(&path) {
            Ok(file) => {
                let file = Arc::new(file);
                files.insert(log_id, file.clone());
                Ok(Some(file))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(&path, error)),
        }
    }

    /// Closes the log's file; called after the file was removed.
    pub fn forget(&self, log_id: u64) {
        self.files.write().remove(&log_id);
    }

    /// Reads records of `ledger_id` that lie back to back in one log, starting at `run[0]`'s
    /// offset, with one read; returns their data in order. The first record must be sound (else
    /// Corrupt); the others are read ahead, so the answer stops before the first that is not
    /// (it is reported when read for itself). None if the log no longer exists (GC moved its
    /// records: look them up again).
    pub fn read_run(&self, ledger_id: u64, run: &[(u64, Location)]) -> Result<Option<Vec<Bytes>>, BookieError> {
        let Some(&(first_entry, first)) = run.first() else { return Ok(Some(Vec::new())) };
        if first.len as usize > MAX_ENTRY_SIZE {
            return Err(BookieError::Corrupt {
                what: format!("index entry of ledger {ledger_id} entry {first_entry}"),
                reason: format!("length {} exceeds the limit of {MAX_ENTRY_SIZE}", first.len),
            });
        }
        let Some(file) = self.file(first.log_id)? else { return Ok(None) };
        let path = self.path(first.log_id);
        let size = file.metadata().map_err(|e| io_error(&path, e))?.len();
        if first.offset < HEADER_LEN || first.offset.saturating_add(first.record_bytes()) > size {
            return Err(corrupt(
                &path,
                first.offset,
                format!(
                    "entry {first_entry} of ledger {ledger_id}: {} bytes do not fit in a file of {size}",
                    first.len
                ),
            ));
        }
        // Read-ahead takes what fits in the file and the entry size limit.
        let mut span = 0u64;
        let mut count = 0;
        for (_, location) in run {
            let end = first.offset + span + location.record_bytes();
            if location.len as usize > MAX_ENTRY_SIZE || end > size {
                break;
            }
            span += location.record_bytes();
            count += 1;
        }
        let mut buffer = vec![0u8; span as usize];
        file.read_exact_at(&mut buffer, first.offset).map_err(|e| io_error(&path, e))?;
        let buffer = Bytes::from(buffer);
        let mut out = Vec::with_capacity(count);
        let mut at = 0usize;
        for &(entry_id, location) in &run[..count] {
            let end = at + RECORD_HEADER_LEN + location.len as usize;
            match check_record(&buffer[at..end], ledger_id, entry_id) {
                Ok(()) => out.push(buffer.slice(at + RECORD_HEADER_LEN..end)),
                Err(reason) if out.is_empty() => return Err(corrupt(&path, first.offset + at as u64, reason)),
                Err(reason) => {
                    warn!(path = %path.display(), offset = first.offset + at as u64, %reason, "read-ahead stopped at a bad record");
                    break;
                }
            }
            at = end;
        }
        Ok(Some(out))
    }
}

/// Checks that `record` (header and data, its length as the index says) is the entry's and
/// its crc matches; the reason if not.
fn check_record(record: &[u8], ledger_id: u64, entry_id: u64) -> Result<(), String> {
    let header = parse_header(record);
    let len = record.len() - RECORD_HEADER_LEN;
    if header.len as usize != len || header.ledger_id != ledger_id || header.entry_id != entry_id {
        return Err(format!(
            "expected entry {entry_id} of ledger {ledger_id} with {len} bytes, found entry {} of ledger {} with {} bytes",
            header.entry_id, header.ledger_id, header.len
        ));
    }
    let crc = crc32c::crc32c(&record[8..]);
    if crc != header.crc {
        return Err(format!("crc32c {crc:#010x}, record says {:#010x}", header.crc));
    }
    Ok(())
}

/// A record a scan found.
pub struct ScannedRecord<'a> {
    pub offset: u64,
    pub ledger_id: u64,
    pub entry_id: u64,
    pub data: &'a [u8],
}

/// Bytes of a file held in memory while a scan walks it: `bytes` are the file's bytes at `start`.
struct ScanWindow<'a> {
    file: &'a File,
    path: &'a Path,
    end: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl ScanWindow<'_> {
    /// The `len` bytes at `offset`; the caller checked that `offset + len <= end` and that `len`
    /// is bounded.
    fn get(&mut self, offset: u64, len: usize) -> Result<&[u8], BookieError> {
        let have = offset >= self.start && offset + len as u64 <= self.start + self.bytes.len() as u64;
        if !have {
            let want = len.max(SCAN_CHUNK_BYTES).min((self.end - offset) as usize);
            self.bytes.resize(want, 0);
            self.file.read_exact_at(&mut self.bytes, offset).map_err(|e| io_error(self.path, e))?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.bytes[at..at + len])
    }
}

/// Visits every record of log `log_id` from its header up to `end` (the end of its indexed
/// records), checking each. A bad header, length or crc is Corrupt and stops the scan: nothing
/// after it can be trusted to be a record boundary.
pub fn scan(
    path: &Path,
    log_id: u64,
    end: u64,
    mut visit: impl FnMut(ScannedRecord<'_>) -> Result<(), BookieError>,
) -> Result<(), BookieError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    if end > size || end < HEADER_LEN {
        return Err(corrupt(path, 0, format!("records end at {end} by the index, the file has {size} bytes")));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0).map_err(|e| io_error(path, e))?;
    if &header[..8] != LOG_MAGIC || be_u64(&header, 8) != log_id {
        return Err(corrupt(path, 0, format!("bad file header, expected magic and log id {log_id}")));
    }
    let mut window = ScanWindow { file: &file, path, end, start: 0, bytes: Vec::new() };
    let mut offset = HEADER_LEN;
    while offset < end {
        if end - offset < RECORD_HEADER_LEN as u64 {
            return Err(corrupt(path, offset, "truncated record header"));
        }
        let header = parse_header(window.get(offset, RECORD_HEADER_LEN)?);
        let record_bytes = RECORD_HEADER_LEN + header.len as usize;
        if header.len as usize > MAX_ENTRY_SIZE || offset + record_bytes as u64 > end {
            return Err(corrupt(path, offset, format!("record length {} does not fit", header.len)));
        }
        let record = window.get(offset, record_bytes)?;
        let crc = crc32c::crc32c(&record[8..]);
        if crc != header.crc {
            return Err(corrupt(path, offset, format!("crc32c {crc:#010x}, record says {:#010x}", header.crc)));
        }
        visit(ScannedRecord {
            offset,
            ledger_id: header.ledger_id,
            entry_id: header.entry_id,
            data: &record[RECORD_HEADER_LEN..],
        })?;
        offset += record_bytes as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path, rotate_at: u64) -> EntryLogWriter {
        EntryLogWriter::new(dir.to_path_buf(), Ring::new().expect("io_uring"), rotate_at, 1)
    }

    #[test]
    fn records_round_trip_through_writer_and_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer(dir.path(), 1 << 30);
        let locations: Vec<(u64, Location)> = (0..100u64)
            .map(|entry| (entry, writer.append(9, entry, format!("data {entry}").as_bytes()).expect("append")))
            .collect();
        assert_eq!(
            writer.finish().expect("finish"),
            vec![(1, locations[99].1.offset + locations[99].1.record_bytes())]
        );
        let reader = EntryLogReader::new(dir.path().to_path_buf());
        let data = reader.read_run(9, &locations[10..20]).expect("read").expect("log exists");
        for (i, bytes) in data.iter().enumerate() {
            assert_eq!(bytes.as_ref(), format!("data {}", i + 10).as_bytes());
        }
        let mut scanned = Vec::new();
        let end = locations[99].1.offset + locations[99].1.record_bytes();
        scan(&reader.path(1), 1, end, |record| {
            scanned.push((record.offset, record.entry_id, record.data.to_vec()));
            Ok(())
        })
        .expect("scan");
        assert_eq!(scanned.len(), 100);
        assert_eq!(scanned[42], (locations[42].1.offset, 42, b"data 42".to_vec()));
    }

    #[test]
    fn rotates_when_the_log_is_full_and_reports_every_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer(dir.path(), 200);
        let mut logs = Vec::new();
        for entry in 0..10u64 {
            logs.push(writer.append(1, entry, &[7u8; 60]).expect("append").log_id);
        }
        let finished = writer.finish().expect("finish");
        // 16 header + two records of 84 fit in 200.
        assert_eq!(logs, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        assert_eq!(finished, (1..=5).map(|id| (id, 16 + 2 * 84)).collect::<Vec<_>>());
        assert_eq!(list_logs(dir.path()).expect("list").len(), 5);
        assert!(writer.finish().expect("nothing new").is_empty());
        assert_eq!(writer.current_log_id(), Some(5));
    }

    #[test]
    fn record_larger_than_the_log_size_gets_a_log_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer(dir.path(), 100);
        let big = writer.append(1, 0, &[1u8; 500]).expect("append");
        let next = writer.append(1, 1, b"x").expect("append");
        assert_eq!((big.log_id, next.log_id), (1, 2));
        writer.finish().expect("finish");
    }

    #[test]
    fn flipped_byte_is_corrupt_naming_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer(dir.path(), 1 << 30);
        let first = writer.append(3, 0, b"hello").expect("append");
        let second = writer.append(3, 1, b"world").expect("append");
        writer.finish().expect("finish");
        let reader = EntryLogReader::new(dir.path().to_path_buf());
        let path = reader.path(1);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(b"W", second.offset + RECORD_HEADER_LEN as u64).expect("damage");
        let run = reader.read_run(3, &[(0, first), (1, second)]).expect("first is sound").expect("exists");
        assert_eq!(run, vec![Bytes::from_static(b"hello")], "read-ahead stops before the bad record");
        let error = reader.read_run(3, &[(1, second)]).expect_err("corrupt");
        match error {
            BookieError::Corrupt { what, .. } => {
                assert!(what.contains(&file_name(1)) && what.contains(&format!("offset {}", second.offset)), "{what}")
            }
            other => panic!("expected Corrupt, got {other}"),
        }
        assert_eq!(reader.read_run(3, &[(0, first)]).expect("first is intact").expect("exists")[0].as_ref(), b"hello");
        let end = second.offset + second.record_bytes();
        let mut seen = 0;
        let scanned = scan(&path, 1, end, |_| {
            seen += 1;
            Ok(())
        });
        assert!(matches!(scanned, Err(BookieError::Corrupt { .. })));
        assert_eq!(seen, 1);
    }

    #[test]
    fn absurd_lengths_are_corrupt_before_any_allocation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer(dir.path(), 1 << 30);
        let location = writer.append(3, 0, b"hello").expect("append");
        writer.finish().expect("finish");
        let reader = EntryLogReader::new(dir.path().to_path_buf());
        let path = reader.path(1);
        let huge = Location { len: u32::MAX, ..location };
        assert!(matches!(reader.read_run(3, &[(0, huge)]), Err(BookieError::Corrupt { .. })));
        let past_end = Location { len: 1000, ..location };
        assert!(matches!(reader.read_run(3, &[(0, past_end)]), Err(BookieError::Corrupt { .. })));
        let ahead_past_end = reader.read_run(3, &[(0, location), (1, past_end)]).expect("first is sound");
        assert_eq!(ahead_past_end.expect("exists"), vec![Bytes::from_static(b"hello")]);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&u32::MAX.to_be_bytes(), location.offset).expect("damage length");
        let scanned = scan(&path, 1, location.offset + location.record_bytes(), |_| Ok(()));
        assert!(matches!(scanned, Err(BookieError::Corrupt { .. })));
    }

    #[test]
    fn missing_log_reads_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reader = EntryLogReader::new(dir.path().to_path_buf());
        let location = Location { log_id: 5, offset: HEADER_LEN, len: 1 };
        assert!(reader.read_run(1, &[(0, location)]).expect("no error").is_none());
    }

    #[test]
    fn log_names_round_trip() {
        assert_eq!(log_id_of(Path::new(&file_name(0xabc))), Some(0xabc));
        assert_eq!(log_id_of(Path::new("abc.log")), None);
        assert_eq!(log_id_of(Path::new("0000000000000001.journal")), None);
    }

    proptest::proptest! {
        #[test]
        fn any_record_decodes_to_what_was_encoded(
            ledger in proptest::prelude::any::<u64>(),
            entry in proptest::prelude::any::<u64>(),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let mut out = Vec::new();
            encode_record(&mut out, ledger, entry, &data);
            let header = parse_header(&out);
            proptest::prop_assert_eq!(out.len(), RECORD_HEADER_LEN + data.len());
            proptest::prop_assert_eq!((header.len as usize, header.ledger_id, header.entry_id), (data.len(), ledger, entry));
            proptest::prop_assert_eq!(header.crc, crc32c::crc32c(&out[8..]));
            proptest::prop_assert_eq!(&out[RECORD_HEADER_LEN..], &data[..]);
        }
    }
}
