//! Reading journal files back at start-up.
//!
//! Files are read in id order. In each, records are read until the zeros that mark the end of
//! written data. A record that is torn or fails its checksum can only be the tail of the last
//! file (a new file is started only after the previous one's last write was synced): there it
//! is cut off with a warning and the file truncated, and it was never acknowledged. The same
//! damage in an older file means the disk lost acknowledged data, and the bookie refuses to
//! start rather than serve holes. Sequence numbers increase from record to record across
//! files; a record whose number does not is an old record of a reused file, seen where a torn
//! write lost the new blocks and their end marker, and is treated as such damage. Above the
//! checkpoint mark they increase by one: every number above it was journaled in order and
//! nothing above it was removed, so a record whose number skips means records before it were
//! lost (an older file cut short or zeroed): refused wherever it shows, the last file too (a
//! skip is no torn tail, and cutting the file there would throw away good records).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::record::{self, Decoded, Record, HEADER_LEN, MAX_BODY_LEN};
use super::{file_id_of, FILE_HEADER_LEN, FILE_MAGIC};
use crate::error::BookieError;

/// What replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Records after the checkpoint mark, in order.
    pub records: Vec<(u64, Record)>,
    /// Highest sequence number seen (0: none).
    pub last_sequence: u64,
    /// Every journal file with the highest sequence it holds, in id order.
    pub files: Vec<(u64, u64)>,
}

fn io_error(path: &Path, source: std::io::Error) -> BookieError {
    BookieError::Io { path: path.display().to_string(), source }
}

/// Journal files in `dir`, sorted by id.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, BookieError> {
    let mut files = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let item = item.map_err(|e| io_error(dir, e))?;
        if let Some(id) = file_id_of(&item.path()) {
            files.push((id, item.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every journal file in `dir`, keeping records with a sequence above `mark`.
pub fn replay(dir: &Path, mark: u64) -> Result<Replayed, BookieError> {
    let files = list_files(dir)?;
    let mut replayed = Replayed { last_sequence: mark, ..Replayed::default() };
    let count = files.len();
    // The sequence of the record read last (0: none yet; sequences start at 1).
    let mut previous = 0;
    for (index, (id, path)) in files.into_iter().enumerate() {
        let last_file = index + 1 == count;
        let max_sequence = replay_file(id, &path, mark, last_file, &mut previous, &mut replayed)?;
        replayed.files.push((id, max_sequence));
    }
    Ok(replayed)
}

fn replay_file(
    id: u64,
    path: &Path,
    mark: u64,
    last_file: bool,
    previous: &mut u64,
    replayed: &mut Replayed,
) -> Result<u64, BookieError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let size = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; FILE_HEADER_LEN];
    let corrupt = |offset: u64, reason: &str| BookieError::Corrupt {
        what: format!("journal {} at offset {offset}", path.display()),
        reason: reason.to_owned(),
    };
    if reader.read_exact(&mut header).is_err() || header[..8] != FILE_MAGIC[..] || header[8..16] != id.to_be_bytes() {
        if last_file {
            warn!(journal = %path.display(), "journal file header is torn; removing the file (nothing in it was acknowledged)");
            std::fs::remove_file(path).map_err(|e| io_error(path, e))?;
            return Ok(0);
        }
        return Err(corrupt(0, "bad file header"));
    }
    let mut offset = FILE_HEADER_LEN as u64;
    let mut max_sequence = 0;
    let mut body = Vec::new();
    loop {
        if offset == size {
            // A file truncated after a torn tail ends right after its last record.
            break;
        }
        let mut head = [0u8; HEADER_LEN];
        let problem = if offset + HEADER_LEN as u64 > size || reader.read_exact(&mut head).is_err() {
            // Running into the end of the file without the zeros of preallocated space.
            Some("truncated header")
        } else {
            match record::header(&head) {
                Some((0, 0)) => break,
                Some((len, crc)) if len > 0 && len <= MAX_BODY_LEN && offset + (HEADER_LEN + len) as u64 <= size => {
                    body.resize(len, 0);
                    match reader.read_exact(&mut body) {
                        Err(_) => Some("truncated body"),
                        Ok(()) => match record::decode_body(&body, crc) {
                            Decoded::Record { sequence, .. } if sequence <= *previous => {
                                Some("sequence number does not increase (an old record of a reused file)")
                            }
                            Decoded::Record { sequence, .. }
                                if sequence > mark && sequence != (*previous).max(mark) + 1 =>
                            {
                                // Never a torn tail, even in the last file: what is missing
                                // came before this record, and cutting here would lose more.
                                return Err(corrupt(
                                    offset,
                                    &format!(
                                        "sequence number skips from {} to {sequence}: the records between are missing \
                                         (an older journal file lost data)",
                                        (*previous).max(mark)
                                    ),
                                ));
                            }
                            Decoded::Record { sequence, record, len } => {
                                *previous = sequence;
                                offset += len as u64;
                                max_sequence = max_sequence.max(sequence);
                                replayed.last_sequence = replayed.last_sequence.max(sequence);
                                if sequence > mark {
                                    replayed.records.push((sequence, record));
                                }
                                continue;
                            }
                            Decoded::Invalid(reason) => Some(reason),
                            Decoded::End => Some("unexpected end marker"),
                        },
                    }
                }
                _ => Some("impossible record length"),
            }
        };
        let reason = problem.unwrap_or("unreadable record");
        if !last_file {
            return Err(corrupt(offset, reason));
        }
        warn!(
            journal = %path.display(),
            offset,
            reason,
            "torn journal tail; truncating it (the records there were never acknowledged)"
        );
        let file = File::options().write(true).open(path).map_err(|e| io_error(path, e))?;
        file.set_len(offset).map_err(|e| io_error(path, e))?;
        file.sync_all().map_err(|e| io_error(path, e))?;
        break;
    }
    Ok(max_sequence)
}
