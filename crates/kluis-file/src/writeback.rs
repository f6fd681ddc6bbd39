//! Early writeback: a large output is pushed to the disk while it is still being written,
//! so the final fsync has little left to do.
//!
//! Every [`WINDOW`] bytes, a background thread calls `sync_data` on a second handle of the
//! file (only one such call at a time; the writer never waits for it). The disk then works
//! while the next megabytes are encrypted, instead of all at the end. This adds syncs; it
//! never replaces the final `sync_all` of [`crate::atomic`]'s commit.

use std::fs::File;
use std::io::{self, Write};
use std::thread::JoinHandle;

/// Bytes written between two background syncs.
pub(crate) const WINDOW: u64 = 32 * 1024 * 1024;

/// A writer to `file` that syncs in the background as it goes. Call [`Writeback::finish`]
/// to wait for the last background sync and learn whether any failed.
pub(crate) struct Writeback<'a> {
    file: &'a File,
    unsynced: u64,
    running: Option<JoinHandle<io::Result<()>>>,
    error: Option<io::Error>,
}

impl<'a> Writeback<'a> {
    pub(crate) fn new(file: &'a File) -> Self {
        Writeback {
            file,
            unsynced: 0,
            running: None,
            error: None,
        }
    }

    /// Collect the result of a finished (or, with `wait`, any) background sync.
    fn reap(&mut self, wait: bool) {
        if let Some(h) = self.running.take_if(|h| wait || h.is_finished()) {
            let result = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread")));
            if let Err(e) = result {
                self.error.get_or_insert(e);
            }
        }
    }

    fn start_sync(&mut self) {
        self.reap(false);
        if self.running.is_some() {
            return; // the disk is still busy with the last window: let it be
        }
        match self.file.try_clone() {
            Ok(f) => {
                self.unsynced = 0;
                self.running = Some(std::thread::spawn(move || f.sync_data()));
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Wait for the background sync, if any; return the first error one of them had.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.reap(true);
        self.error.take().map_or(Ok(()), Err)
    }
}

impl Write for Writeback<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let n = (&mut &*self.file).write(data)?;
        self.unsynced += n as u64;
        if self.unsynced >= WINDOW {
            self.start_sync();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Writeback<'_> {
    fn drop(&mut self) {
        // Never leave a thread holding the file behind an error return.
        self.reap(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_everything_in_order_across_windows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..(WINDOW as usize * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut w = Writeback::new(&file);
        for piece in data.chunks(1 << 20) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn a_failing_write_is_reported() {
        // A read-only handle: `write` fails at once, before any sync.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"x").unwrap();
        let file = File::open(&path).unwrap();
        let mut w = Writeback::new(&file);
        assert!(w.write_all(&[0; 10]).is_err());
    }
}
