//! io_uring for the bookie's sequential writes: journal appends with their fdatasync, entry log
//! writes, file preallocation. The only module with `unsafe`.
//!
//! A [`Ring`] belongs to one thread (the journal thread, the flush thread). Every method submits
//! its operations and waits for their completions before returning, so the buffers it hands the
//! kernel outlive the operations: nothing is ever left in flight, which also means no future or
//! cancellation can abandon an operation halfway (io_uring operations are not cancel-safe).

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue depth: a ring only ever has a couple of operations in flight.
const RING_ENTRIES: u32 = 8;

pub struct Ring {
    ring: IoUring,
}

fn check(result: i32, what: &str) -> io::Result<u32> {
    if result < 0 {
        let error = io::Error::from_raw_os_error(-result);
        Err(io::Error::new(error.kind(), format!("{what}: {error}")))
    } else {
        Ok(result as u32)
    }
}

impl Ring {
    pub fn new() -> io::Result<Self> {
        Ok(Ring { ring: IoUring::new(RING_ENTRIES)? })
    }

    /// Submits `entries` and waits for all their completions; returns their results in order
    /// of `user_data` (0..n).
    fn run(&mut self, entries: &[squeue::Entry]) -> io::Result<Vec<i32>> {
        {
            let mut submission = self.ring.submission();
            for entry in entries {
                // SAFETY: every buffer an entry points to is borrowed by the caller for the whole
                // call, and this call returns only after all completions arrived, so the kernel
                // never touches memory the caller has released.
                unsafe { submission.push(entry) }.map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        let mut results = vec![0i32; entries.len()];
        let mut done = 0;
        while done < entries.len() {
            match self.ring.submit_and_wait(entries.len() - done) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            for completion in self.ring.completion() {
                let index = completion.user_data() as usize;
                if index < results.len() {
                    results[index] = completion.result();
                    done += 1;
                }
            }
        }
        Ok(results)
    }

    /// Writes all of `buf` at `offset`, then, if `sync`, fdatasyncs the file. The write and the
    /// sync are linked in one submission, so one system call covers both in the common case.
    pub fn write_at(&mut self, file: &File, buf: &[u8], offset: u64, sync: bool) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let mut written = 0usize;
        while written < buf.len() {
            let rest = &buf[written..];
            let length = rest.len().min(u32::MAX as usize / 2) as u32;
            let write = opcode::Write::new(fd, rest.as_ptr(), length).offset(offset + written as u64).build();
            let whole = length as usize == rest.len();
            if sync && whole {
                let write = write.flags(squeue::Flags::IO_LINK).user_data(0);
                let fsync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(1);
                let results = self.run(&[write, fsync])?;
                let n = check(results[0], "journal write")? as usize;
                if n == rest.len() {
                    check(results[1], "fdatasync")?;
                    return Ok(());
                }
                // A short write cancels the linked sync; write the rest and sync below.
                written += n;
                continue;
            }
            let results = self.run(&[write.user_data(0)])?;
            let n = check(results[0], "write")? as usize;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write made no progress"));
            }
            written += n;
        }
        if sync {
            self.fdatasync(file)?;
        }
        Ok(())
    }

    pub fn fdatasync(&mut self, file: &File) -> io::Result<()> {
        let fsync =
            opcode::Fsync::new(types::Fd(file.as_raw_fd())).flags(types::FsyncFlags::DATASYNC).build().user_data(0);
        let results = self.run(&[fsync])?;
        check(results[0], "fdatasync").map(|_| ())
    }

    /// Starts writeback of `len` bytes at `offset` without waiting for it (sync_file_range with
    /// SYNC_FILE_RANGE_WRITE). A large flush that starts writeback as it goes leaves no burst
    /// for its final fdatasync to push out in front of the journal's syncs. It makes nothing
    /// durable by itself.
    pub fn start_writeback(&mut self, file: &File, offset: u64, len: u32) -> io::Result<()> {
        let range = opcode::SyncFileRange::new(types::Fd(file.as_raw_fd()), len)
            .offset(offset)
            .flags(libc::SYNC_FILE_RANGE_WRITE)
            .build()
            .user_data(0);
        let results = self.run(&[range])?;
        check(results[0], "sync_file_range").map(|_| ())
    }

    /// Reserves `len` bytes of disk for the file (mode 0: the file grows to `len`, zero-filled),
    /// so that later appends cannot fail for lack of space and need no metadata updates.
    pub fn fallocate(&mut self, file: &File, len: u64) -> io::Result<()> {
        let fallocate = opcode::Fallocate::new(types::Fd(file.as_raw_fd()), len).offset(0).mode(0).build().user_data(0);
        let results = self.run(&[fallocate])?;
        check(results[0], "fallocate").map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn writes_syncs_and_preallocates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = File::options().create_new(true).read(true).write(true).open(&path).expect("open");
        let mut ring = Ring::new().expect("io_uring is available");
        ring.fallocate(&file, 1 << 20).expect("fallocate");
        assert_eq!(file.metadata().expect("metadata").len(), 1 << 20);
        ring.write_at(&file, b"hello ", 0, false).expect("write");
        ring.write_at(&file, b"world", 6, true).expect("write and sync");
        let mut content = vec![0u8; 11];
        File::open(&path).expect("open").read_exact(&mut content).expect("read");
        assert_eq!(&content, b"hello world");
    }
}
