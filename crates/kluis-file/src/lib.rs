//! kluis-file: seal and open files and folders on disk.
//!
//! Four calls: [`seal_file`] and [`open_file`] for one file, [`seal_paths`] and
//! [`open_paths`] for any mix of files and folders. Keys come in as `&[&dyn Unwrap]` (the key
//! server client, a holder's [`kluis_core::Identity`], a [`kluis_core::LabelKey`]) and
//! recipients as `&[Slot]`; this crate does no network I/O.
//!
//! ```
//! use kluis_core::{LabelKey, Recipient, Slot};
//! use kluis_file::{OpenOptions, SealOptions, open_file, seal_file};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let report = dir.path().join("report.docx");
//! std::fs::write(&report, b"confidential")?;
//!
//! let hr = LabelKey::generate("hr", 1)?;
//! let slots = [Slot::single(Recipient::Label(hr.public_key().clone()))];
//! let sealed = seal_file(&report, &slots, &SealOptions::default())?;
//! assert_eq!(sealed.output.as_deref(), Some(dir.path().join("report.docx.kluis").as_path()));
//!
//! // Open into another folder: the name and modification time come from the sealed metadata.
//! let mut options = OpenOptions::default();
//! options.output_dir = Some(dir.path().join("restored"));
//! let opened = open_file(&dir.path().join("report.docx.kluis"), &[&hr], &options)?;
//! assert_eq!(std::fs::read(opened.output.unwrap())?, b"confidential");
//! # Ok(()) }
//! ```
//!
//! # Where outputs go
//!
//! Sealing `report.docx` writes `report.docx.kluis` beside it, or into
//! [`SealOptions::output_dir`]. A folder is walked recursively and, with an output folder,
//! mirrored below it starting with its own name (like `cp -r`): sealing `photos` into `out`
//! gives `out/photos/2024/a.jpg.kluis`. The sealed metadata stores the file name (`a.jpg`).
//!
//! Opening restores each document beside its sealed file, or into [`OpenOptions::output_dir`]
//! with the folders *inside* an opened folder mirrored: opening `out` into `restored` gives
//! `restored/photos/2024/a.jpg`. The restored name always comes from the sealed metadata (a
//! renamed sealed file still opens under its real name); a document that stores no name opens
//! under its file name minus `.kluis`.
//!
//! # Hidden names
//!
//! With [`SealOptions::hide_names`] every output is named `<26 random characters>.kluis`
//! (128 bits from the OS CSPRNG, base32 lowercase), so the cloud provider sees neither file
//! names nor folder names (the DPIA advice that names and paths must not carry personal
//! data). With an output folder, a sealed folder becomes a *flat* set of such files and each
//! stores its relative path (`photos/2024/a.jpg`) in its sealed metadata; no folders are
//! created on the sealed side. This scheme was chosen over a random folder per source folder
//! because it leaks nothing about the tree's shape (depth, fan-out, which files share a
//! folder), needs no extra state, and each document restores its own place alone. An empty
//! folder, which has no file to carry its path, is sealed as an empty document of its own
//! whose stored name is its path ending in `/` (`photos/2025/`), with the folder's
//! modification time; opening creates the folder, and when a folder's and a file's document
//! restore to one path, the newer wins as between two files. (The format leaves the name to
//! the application, docs/FORMAT.md §7; kluis versions before this convention refuse such a
//! document as "an empty path component", without writing anything.) Without
//! an output folder each file is sealed beside itself and stores only its own name. Temporary
//! files are named `.kluis-tmp-<random>` and carry no name either. Sizes still show; set
//! [`SealOptions::pad`] to blur them.
//!
//! # Hostile names
//!
//! A stored name is untrusted input. [`safe_relative_path`] splits it on `/` and refuses any
//! empty, `.` or `..` component, an absolute path, a backslash, a colon, a control character
//! (NUL included), a trailing dot or space, and reserved Windows device names (`CON`,
//! `nul.txt`, `COM1`, ...), on every platform, so a document opens the same everywhere. A
//! refused name fails that one document with [`Error::UnsafeName`], which names the sealed
//! file but never repeats the hostile name; nothing is ever sanitised into a different,
//! possibly colliding, path. Sealing applies the same rules, so it never makes a document
//! that cannot be opened. Folders are never followed through symbolic links, neither while
//! walking inputs nor while creating output folders ([`Error::SymlinkInOutput`]).
//!
//! # Never losing data
//!
//! Each output is written to a temporary file created with `create_new` in its target
//! folder, synced (`sync_all`), then moved into place: without [`SealOptions::force`] by
//! `hard_link` to the final name, which fails atomically if anything exists there (then the
//! temporary name is removed); with `force` by `rename`, which replaces atomically. (File
//! systems without hard links, such as FAT, fall back to check-then-rename, which has a small
//! race.) Folders are synced afterwards. On any error the temporary file is removed by a drop
//! guard, the input is untouched, and nothing exists under the final name. A killed process
//! can leave a `.kluis-tmp-…` file behind (safe to delete; later runs skip it, and remove it
//! once stale), never a partial file under the final name; a plaintext output's temporary
//! file on Linux has no name to leave (below).
//!
//! ## Temporary files of plaintext outputs
//!
//! An opened (plaintext) output's partial temporary file never has a name in a cloud sync
//! folder kluis recognises, where the sync client could upload a partial copy. On Linux it
//! has no name anywhere: it is created with `O_TMPFILE` in the output's folder and linked
//! under its final name (through `/proc/self/fd`) only once complete and synced; with
//! `force`, under a temporary name (locked, like every temporary file) for the instant
//! before the rename over the old output. Nothing shows it while it is written, whether or
//! not the folder is recognised as a sync folder, and a killed process leaves nothing (but
//! the complete file under that temporary name, if killed in that instant). Where the system or file system has no unnamed files, an output inside a sync
//! folder recognised by [`sync_folder`] has its temporary file written in
//! [`OpenOptions::temp_dir`] instead (a private folder, mode 0700, created on demand) when
//! that is the user's own and on the same file system ([`private_temp_dir`]), and fails with
//! [`Error::TempInSyncFolder`] otherwise; elsewhere it is written beside the output as above.
//! See [`TempFile::for_target`].
//!
//! New output folders are synced into their parent folder as they are created. Outputs of
//! 8 MiB and more are written in 4 MiB blocks by a background thread while the next blocks are
//! encrypted: on Linux with `O_DIRECT` (straight from memory to the disk, without a copy into
//! the page cache), elsewhere or where the file system refuses it through the page cache with
//! a `sync_data` every 32 MiB. Either way the final `sync_all` still follows; nothing replaces
//! it.
//!
//! # Re-keying
//!
//! [`replace_header`] puts a new header (from [`kluis_core::Header::rekey`]) in front of a
//! sealed document's unchanged payload: in place, through a redo journal, when the new header
//! has the old one's length (a few hundred bytes whatever the document's size), by a copy
//! renamed over the original otherwise. [`finish_rekey`] finishes a re-keying a crash
//! interrupted; until then opening the document fails with [`Error::RekeyInterrupted`],
//! which says so. See the `rekey` module's source for the crash analysis.
//!
//! [`SealOptions::remove_original`] removes an original only after its sealed copy was opened
//! back with [`SealOptions::verify_with`] (every chunk authenticated) and compared byte for
//! byte with the original, which must still be the same file (size, time, identity). If no
//! key holder can open the copy, the original is kept ([`Outcome::OriginalKept`]).
//!
//! # Permissions
//!
//! Sealed files are ciphertext and are created with the default mode (0666 less the umask).
//! Opened files are plaintext and are created owner-only (0600 on unix) from the first byte,
//! and stay so: the original mode is not stored, and widening access is the user's decision.
//!
//! # Speed and memory
//!
//! Sealing reads each file's plaintext straight into the output's blocks, where
//! [`kluis_core::fast::BlockWriter`] seals it in place; opening reads the ciphertext into the
//! output's blocks, where [`kluis_core::fast::read_into`] decrypts it in place. So
//! neither copies the data but for the read itself. Both seal or open a large payload up to
//! 4 MiB at a time over the available cores, so memory stays at a few MiB per worker whatever
//! the file size.
//! Files are spread over at most [`MAX_THREADS`] worker threads (default: the available
//! cores). Opening reads every header first and recovers all keys with one
//! [`kluis_core::unlock_all`] call per batch of up to 1000 documents (and 8 MiB of headers):
//! one key server round trip per batch, not per file.
//!
//! # Identity files
//!
//! kluis-core turns an identity into the identity file's text and back and does no file-system
//! I/O; [`write_identity_file`] writes the file (owner-only, 0600 on unix, never over an
//! existing file, nothing left under the name on failure) and [`read_identity_file`] reads one
//! (at most [`kluis_core::Identity::MAX_FILE_LEN`] bytes).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod atomic;
mod error;
mod file;
mod identity;
mod name;
mod open;
mod output;
mod pool;
mod private_temp;
mod rekey;
mod rekey_paths;
mod report;
mod seal;
mod stale;
mod sync;
mod walk;

pub use atomic::TempFile;
pub use error::{Error, Result};
pub use identity::{read_identity_file, write_identity_file};
pub use name::{
    EXTENSION, MAX_COMPONENT_LEN, NameKey, NameProblem, TEMP_PREFIX, base32_name,
    safe_relative_path,
};
pub use open::{open_file, open_paths};
pub use pool::MAX_THREADS;
pub use private_temp::private_temp_dir;
pub use rekey::{
    Journal, MAX_JOURNAL_LEN, Recovery, Rewrite, finish_rekey, journal_path, replace_header,
};
pub use rekey_paths::{
    RekeyDoc, RekeyOptions, RekeyOutcome, RekeyReport, RekeyTarget, list_sealed, rekey_paths,
};
pub use report::{Event, OpenOptions, Outcome, Progress, Report, SealOptions, Skip};
pub use seal::{seal_file, seal_paths};
pub use sync::sync_folder;
