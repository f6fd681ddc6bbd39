//! Writing an output file: in blocks, up to 256 KiB for a small output, written as they
//! fill; for a large one, 4 MiB written from a background thread, so the disk works while
//! the next megabytes are encrypted.
//!
//! A large output is gathered into 4 MiB blocks, aligned in memory, which a background thread
//! writes with `O_DIRECT` on Linux: the bytes go from this buffer to the disk without being
//! copied into the page cache first (a copy that costs as much CPU as the encryption, and
//! whose cost varies several-fold from run to run on virtual machines). Where `O_DIRECT` is
//! not available (another OS, a file system that refuses it), the thread writes
//! through the page cache instead and calls `sync_data` every 32 MiB, so the final fsync has
//! little left to do. The last partial block goes through the page cache either way.
//!
//! This never replaces the final `sync_all` of [`crate::atomic`]'s commit, which makes both
//! the data and the file's size durable (and on ext4 flushes the disk's write cache).

use std::fs::File;
use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use kluis_core::fast::BlockSink;
use zeroize::Zeroizing;

use crate::file::buf_len;

/// Outputs of at least this size go through the background thread.
pub(crate) const LARGE: u64 = 8 * 1024 * 1024;
/// Bytes per block handed to the thread.
const BLOCK: usize = 4 * 1024 * 1024;
/// Memory alignment (and size multiple) for `O_DIRECT`: the largest logical block size
/// in common use.
const ALIGN: usize = 4096;
/// Blocks in memory at most: one being filled, one being written, one waiting.
const BLOCKS: usize = 3;
/// Bytes written through the page cache between two `sync_data` calls.
const SYNC_WINDOW: u64 = 32 * 1024 * 1024;

/// A block of memory at an aligned address, wiped on drop (an opened document's is
/// plaintext).
struct Block {
    mem: Zeroizing<Vec<u8>>,
    start: usize,
}

impl Block {
    fn new(len: usize) -> Block {
        let mem = Zeroizing::new(vec![0u8; len + ALIGN]);
        let start = (ALIGN - mem.as_ptr() as usize % ALIGN) % ALIGN;
        Block { mem, start }
    }

    /// The usable length (the allocation less the alignment slack).
    fn len(&self) -> usize {
        self.mem.len() - ALIGN
    }

    fn bytes(&mut self) -> &mut [u8] {
        let end = self.start + self.len();
        &mut self.mem[self.start..end]
    }
}

/// Where an output's bytes go: gathered into a block, which is written when full (by the
/// background thread for a large output; see the module documentation). Bytes are read or
/// sealed straight into it through [`BlockSink`] (`spare`, then `advance`); then call
/// [`Output::finish`] to write the rest and learn whether anything failed.
pub(crate) struct Output<'a> {
    file: &'a File,
    block: Block,
    filled: usize,
    /// Bytes written, or handed to the thread, so far: where the block goes in the file.
    done: u64,
    thread: Option<Pipeline>,
}

/// The background thread of a large output and the blocks going to and fro.
struct Pipeline {
    made: usize,
    full: Option<mpsc::SyncSender<(Block, u64)>>,
    free: mpsc::Receiver<Block>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl<'a> Output<'a> {
    /// A writer for `file`, which will receive about `size` bytes. `file` must be empty and
    /// open for writing.
    pub(crate) fn new(file: &'a File, size: u64) -> io::Result<Output<'a>> {
        Output::with_direct(file, size, || open_direct(file))
    }

    /// [`Output::new`], with the `O_DIRECT` handle (if any) from `direct`, asked for only
    /// when the output is large.
    fn with_direct(
        file: &'a File,
        size: u64,
        direct: impl FnOnce() -> Option<File>,
    ) -> io::Result<Output<'a>> {
        let thread = match size >= LARGE {
            true => Pipeline::start(file, direct())?,
            false => None,
        };
        let len = match thread {
            Some(_) => BLOCK,
            None => buf_len(size),
        };
        Ok(Output {
            file,
            block: Block::new(len),
            filled: 0,
            done: 0,
            thread,
        })
    }

    /// Write the full block: hand it to the thread (taking an empty one), or write it here.
    fn write_block(&mut self) -> io::Result<()> {
        let len = self.block.len();
        match &mut self.thread {
            None => write_at(self.file, self.block.bytes(), self.done)?,
            Some(p) => {
                let next = if p.made < BLOCKS {
                    p.made += 1;
                    Block::new(BLOCK)
                } else {
                    match p.free.recv() {
                        Ok(b) => b,
                        Err(_) => return Err(p.stop().err().unwrap_or_else(thread_gone)),
                    }
                };
                let full = std::mem::replace(&mut self.block, next);
                let sent = p.full.as_ref().map(|tx| tx.send((full, self.done)));
                if !matches!(sent, Some(Ok(()))) {
                    return Err(p.stop().err().unwrap_or_else(thread_gone));
                }
            }
        }
        self.done += len as u64;
        self.filled = 0;
        Ok(())
    }

    /// Wait for the thread, write what is left; return the first error anything had.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if let Some(p) = &mut self.thread {
            p.stop()?;
        }
        let tail = self.filled;
        write_at(self.file, &self.block.bytes()[..tail], self.done)
    }
}

impl Pipeline {
    /// Start the thread that writes `file`'s blocks (with `direct` while it works). Without a
    /// thread (the OS refused one) the blocks are written inline instead.
    fn start(file: &File, direct: Option<File>) -> io::Result<Option<Pipeline>> {
        let buffered = file.try_clone()?;
        let (full_tx, full_rx) = mpsc::sync_channel::<(Block, u64)>(BLOCKS - 2);
        let (free_tx, free_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kluis-output".into())
            .spawn(move || write_blocks(direct, buffered, full_rx, free_tx));
        Ok(thread.ok().map(|handle| Pipeline {
            made: 1,
            full: Some(full_tx),
            free: free_rx,
            handle: Some(handle),
        }))
    }

    /// Tell the thread there is no more and wait for it.
    fn stop(&mut self) -> io::Result<()> {
        self.full = None;
        match self.handle.take() {
            Some(h) => h.join().unwrap_or_else(|_| Err(thread_gone())),
            None => Ok(()),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Never leave a thread writing to the file behind an error return.
        let _ = self.stop();
    }
}

/// Sealing and opening work straight in the blocks.
impl BlockSink for Output<'_> {
    /// The free rest of the block (never empty). Writes the block first if it is full.
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.filled == self.block.len() {
            self.write_block()?;
        }
        let at = self.filled;
        Ok(&mut self.block.bytes()[at..])
    }

    /// Count `n` bytes put into the spare space (at most its length).
    fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.block.len());
    }
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, at)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut at: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, at)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => (buf, at) = (&buf[n..], at + n as u64),
        }
    }
    Ok(())
}

#[cfg(not(any(unix, windows)))]
fn write_at(mut file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    use std::io::{Seek, Write};
    file.seek(io::SeekFrom::Start(at))?;
    file.write_all(buf)
}

fn thread_gone() -> io::Error {
    io::Error::other("the output writer thread stopped")
}

/// A second handle on `file` that bypasses the page cache, where the OS offers one.
#[cfg(target_os = "linux")]
fn open_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // Through /proc: the same file, whatever has happened to its name since.
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &File) -> Option<File> {
    None
}

/// The background thread: write each block at its offset, with `direct` while it works,
/// otherwise through `buffered` with a `sync_data` every [`SYNC_WINDOW`]; hand the block
/// back. Stops at the first error.
fn write_blocks(
    mut direct: Option<File>,
    buffered: File,
    full: mpsc::Receiver<(Block, u64)>,
    free: mpsc::Sender<Block>,
) -> io::Result<()> {
    let mut unsynced = 0;
    for (mut block, at) in full {
        let len = block.len() as u64;
        let bytes = block.bytes();
        let written = match &direct {
            Some(d) => match write_at(d, bytes, at) {
                // The file system refuses this alignment or direct I/O altogether.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    direct = None;
                    None
                }
                r => Some(r),
            },
            None => None,
        };
        match written {
            Some(r) => r?,
            None => {
                write_at(&buffered, bytes, at)?;
                unsynced += len;
                if unsynced >= SYNC_WINDOW {
                    buffered.sync_data()?;
                    unsynced = 0;
                }
            }
        }
        let _ = free.send(block);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All of `data` into `out`, through its spare space.
    fn put(out: &mut Output<'_>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let space = out.spare()?;
            let n = data.len().min(space.len());
            space[..n].copy_from_slice(&data[..n]);
            out.advance(n);
            data = &data[n..];
        }
        Ok(())
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// Every size around the block edges, written in uneven pieces, reads back the same:
    /// with `O_DIRECT` where the test's temporary folder allows it, and through the page cache
    /// (as where it is refused).
    #[test]
    fn writes_everything_in_order_with_and_without_direct_io() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0,
            1,
            LARGE as usize,
            BLOCK * 3,
            BLOCK * 3 + 1,
            BLOCK * 7 + 4095,
            BLOCK * 12 + 12_345,
        ] {
            for direct in [true, false] {
                let path = dir.path().join("out");
                let file = File::create(&path).unwrap();
                let want = data(size);
                let mut out = Output::with_direct(&file, size as u64, || {
                    direct.then(|| open_direct(&file)).flatten()
                })
                .unwrap();
                for piece in want.chunks(256 * 1024 + 16) {
                    put(&mut out, piece).unwrap();
                }
                out.finish().unwrap();
                let back = std::fs::read(&path).unwrap();
                assert!(back == want, "{size} bytes, O_DIRECT {direct}");
            }
        }
    }

    /// `spare` and `advance`, as opening uses them (a read straight into the spare space),
    /// write the same bytes.
    #[test]
    fn reading_into_the_spare_space_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        for size in [5, BLOCK * 2 + 777] {
            let path = dir.path().join("spare");
            let file = File::create(&path).unwrap();
            let want = data(size);
            let mut out = Output::new(&file, size as u64).unwrap();
            let mut input = &want[..];
            loop {
                let space = out.spare().unwrap();
                let n = std::io::Read::read(&mut input, space).unwrap();
                if n == 0 {
                    break;
                }
                out.advance(n);
            }
            out.finish().unwrap();
            assert!(std::fs::read(&path).unwrap() == want, "{size} bytes");
        }
    }

    /// `/dev/full` refuses every write (ENOSPC): the error comes out, at once or at `finish`.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_failing_write_is_reported() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        for size in [10, LARGE] {
            let mut out = Output::new(&file, size).unwrap();
            let wrote = put(&mut out, &data(size as usize));
            assert!(wrote.is_err() || out.finish().is_err(), "{size} bytes");
        }
    }
}
