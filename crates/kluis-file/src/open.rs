//! Opening sealed files and folders: headers first, one batch unwrap, payloads in parallel.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kluis_core::fast::BlockSink;
use kluis_core::{FileKey, Header, StreamReader, Unwrap, unlock_all};

use crate::atomic::{create_dirs, create_output_dir, start_output, sync_dirs};
use crate::error::{Error, Result};
use crate::file::{absolute, parent_of, payload_error, read_header, reopen_sealed, require_file};
use crate::name::{
    EXTENSION, NameProblem, check_component, check_file_name, safe_relative_folder,
    safe_relative_path,
};
use crate::output::Output;
use crate::pool;
use crate::report::{Event, OpenOptions, Outcome, Report, Shared, Skip, single};
use crate::walk::{Entry, has_extension, walk};

/// Documents per `unlock_all` call (one key server request per batch).
pub(crate) const BATCH: usize = 1000;
/// Most header bytes held at once: a header may be up to 64 KiB, so a batch of hostile
/// headers is cut short rather than allowed to take 64 MiB.
const BATCH_HEADER_BYTES: usize = 8 << 20;
/// Headers read in parallel per step while a batch fills.
const HEADER_STEP: usize = 64;

/// A sealed file listed for opening.
struct Pending {
    input: PathBuf,
    /// Folders inside the opened folder, mirrored below the output folder.
    rel_dir: PathBuf,
    /// Given directly, not found inside a folder: restored under its plain file name only.
    direct: bool,
    report: usize,
}

/// A sealed file whose key was recovered and whose output is decided.
struct Job {
    input: PathBuf,
    header: Header,
    key: FileKey,
    /// An existing folder: the output folder, or the sealed file's own folder.
    root: PathBuf,
    /// The restored path below `root`: normal components only.
    rel: PathBuf,
    output: PathBuf,
    size: Option<u64>,
    modified: Option<SystemTime>,
    report: usize,
    rank: Rank,
    /// Replace the output even without `force`: a newer document restoring to the path an
    /// older one (this report) was opened to in an earlier batch of this run. The older is
    /// reported superseded only once this one is written.
    replaces: Option<usize>,
    /// An empty folder (its stored name ends in `/` and it is empty): `output` is a folder to
    /// create, not a file to write.
    folder: bool,
}

/// Everything a batch needs besides its headers.
struct Run<'a> {
    unwrappers: &'a [&'a dyn Unwrap],
    out_dir: Option<&'a Path>,
    allow_dotfiles: bool,
    shared: Shared<'a>,
    threads: usize,
    inputs: HashSet<PathBuf>,
    /// Outputs decided so far, by absolute path.
    claimed: HashMap<PathBuf, Claim>,
    /// Which batch is being planned.
    batch_no: usize,
}

/// Which document restores to an output path.
struct Claim {
    input: PathBuf,
    rank: Rank,
    report: usize,
    batch_no: usize,
    /// Its index in the current batch's jobs (meaningful while `batch_no` is current).
    index: usize,
}

/// How new a document is, to decide between two that restore to one path: the newest
/// wins. By the modification time sealed in it (none is oldest), then the sealed file's own
/// modification time, then the sealed file's path (so the choice never depends on the
/// order files are listed in).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    sealed_modified: Option<SystemTime>,
    file_modified: Option<SystemTime>,
    input: PathBuf,
}

/// Open sealed files and folders. Folders are walked recursively (symbolic links are
/// skipped, not followed); files without the `.kluis` extension met inside them are skipped.
///
/// Headers are read first, and keys recovered with one [`kluis_core::unlock_all`] call per
/// batch of up to 1000 documents, so a remote key holder sees one request per batch, not per
/// file. Payloads are then decrypted in parallel. Each document's stored name is checked
/// with [`crate::safe_relative_path`]; a document whose name is unsafe fails on its own. A
/// document given directly (not found in a folder) restores only the last component of its
/// stored name, in the output folder (or beside it), and not a hidden (dot) file unless
/// [`OpenOptions::allow_dotfiles`] is set. No restored name ends in `.kluis`, so even with
/// `force` an opening never replaces a sealed document.
///
/// Returns one report per file met, in walk order; a failure of one file does not stop the
/// others. The `Err` case is for problems with the whole run (an output folder that cannot be
/// created).
pub fn open_paths<P: AsRef<Path>>(
    inputs: &[P],
    unwrappers: &[&dyn Unwrap],
    options: &OpenOptions<'_>,
) -> Result<Vec<Report>> {
    let out_dir = options.output_dir.as_deref();
    if let Some(dir) = out_dir {
        create_output_dir(dir)?;
    }
    let mut listed = Vec::new();
    for input in inputs {
        walk(
            input.as_ref(),
            false,
            &|name| (!has_extension(name)).then_some(Skip::NotSealed),
            &mut listed,
        );
    }
    let shared = Shared {
        force: options.force,
        progress: options.progress,
        temp_dir: options.temp_dir.as_deref(),
    };
    let mut reports = Vec::with_capacity(listed.len());
    let mut pending = Vec::new();
    let mut inputs = HashSet::new();
    let mut bytes = 0u64;
    let mut empty_dirs = Vec::new();
    for entry in listed {
        let (input, outcome) = match entry {
            Entry::EmptyDir(path, rel) => {
                empty_dirs.push((path, rel));
                continue;
            }
            Entry::File(f) => {
                inputs.insert(absolute(&f.path));
                bytes = bytes.saturating_add(f.len);
                pending.push(Pending {
                    input: f.path.clone(),
                    rel_dir: f.rel_dir,
                    direct: f.direct,
                    report: reports.len(),
                });
                (f.path, Outcome::Done)
            }
            Entry::Skipped(input, skip) => (input, Outcome::Skipped(skip)),
            Entry::Failed(input, e) => (input, Outcome::Failed(e)),
        };
        reports.push(Report {
            input,
            output: None,
            bytes: 0,
            outcome,
        });
    }
    // Empty folders are restored too (with an output folder; in place they are there).
    if let Some(out) = out_dir {
        for (path, rel) in empty_dirs {
            if let Err(e) = create_dirs(out, &rel) {
                reports.push(Report {
                    input: path,
                    output: Some(out.join(&rel)),
                    bytes: 0,
                    outcome: Outcome::Failed(e),
                });
            }
        }
    }
    shared.emit(Event::Planned {
        files: pending.len(),
        bytes,
    });
    for r in reports
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Done))
    {
        shared.emit(Event::Finished(r));
    }

    let mut run = Run {
        unwrappers,
        out_dir,
        allow_dotfiles: options.allow_dotfiles,
        shared,
        threads: pool::workers(options.threads, pending.len()),
        inputs,
        claimed: HashMap::new(),
        batch_no: 0,
    };
    let mut batch: Vec<(&Pending, Header)> = Vec::new();
    let mut batch_bytes = 0;
    let mut next = 0;
    while next < pending.len() {
        // Never more than BATCH documents in a batch.
        let step = &pending[next..pending
            .len()
            .min(next + HEADER_STEP.min(BATCH - batch.len()))];
        next += step.len();
        let headers = pool::map(step, run.threads, |p| read_header(&p.input));
        for (p, header) in step.iter().zip(headers) {
            match header {
                Ok(h) => {
                    batch_bytes += h.len();
                    batch.push((p, h));
                }
                Err(e) => {
                    reports[p.report].outcome = Outcome::Failed(e);
                    shared.emit(Event::Finished(&reports[p.report]));
                }
            }
        }
        if batch.len() >= BATCH || batch_bytes >= BATCH_HEADER_BYTES {
            run.batch(std::mem::take(&mut batch), &mut reports);
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        run.batch(batch, &mut reports);
    }
    Ok(reports)
}

/// Open one sealed file. Fails unless it is a regular file; returns its report.
pub fn open_file(
    input: &Path,
    unwrappers: &[&dyn Unwrap],
    options: &OpenOptions<'_>,
) -> Result<Report> {
    require_file(input)?;
    single(open_paths(&[input], unwrappers, options)?, input)
}

impl Run<'_> {
    /// Recover the keys of a batch in one call, decide the outputs, decrypt in parallel.
    fn batch(&mut self, batch: Vec<(&Pending, Header)>, reports: &mut [Report]) {
        self.batch_no += 1;
        self.shared.emit(Event::Unlocking {
            documents: batch.len(),
        });
        let refs: Vec<&Header> = batch.iter().map(|(_, h)| h).collect();
        let keys = unlock_all(&refs, self.unwrappers);
        let mut jobs = Vec::new();
        for ((p, header), key) in batch.into_iter().zip(keys) {
            let job = key
                .map_err(|e| Error::format(&p.input, e))
                .and_then(|key| self.plan(p, header, key));
            match job {
                // A folder's document claims its path like a file's: when both restore to
                // one path, the newer is restored and the other reported superseded.
                Ok(job) => self.claim(job, &mut jobs, reports),
                Err(e) => {
                    reports[p.report].outcome = Outcome::Failed(e);
                    self.shared.emit(Event::Finished(&reports[p.report]));
                }
            }
        }
        let shared = self.shared;
        let results = pool::map(&jobs, self.threads, |job| {
            let report = match open_one(job, shared) {
                Ok(bytes) => Report {
                    input: job.input.clone(),
                    output: Some(job.output.clone()),
                    bytes,
                    outcome: Outcome::Done,
                },
                Err(e) => Report {
                    input: job.input.clone(),
                    output: Some(job.output.clone()),
                    bytes: 0,
                    outcome: Outcome::Failed(e),
                },
            };
            shared.emit(Event::Finished(&report));
            report
        });
        let mut dirs = Vec::new();
        for (job, report) in jobs.iter().zip(results) {
            if matches!(report.outcome, Outcome::Done) {
                dirs.push(parent_of(&job.output));
                // Its output replaced the older document's (opened in an earlier batch).
                if let Some(older) = job.replaces {
                    reports[older].outcome = Outcome::Superseded(job.input.clone());
                }
            }
            reports[job.report] = report;
        }
        sync_dirs(dirs.into_iter(), reports);
    }

    /// Add `job` unless a newer document of this run restores to the same path; when `job`
    /// is the newer one, the older is reported [`Outcome::Superseded`] (and, if it was
    /// opened in an earlier batch already, its output is replaced).
    fn claim(&mut self, mut job: Job, jobs: &mut Vec<Job>, reports: &mut [Report]) {
        let key = absolute(&job.output);
        let superseded = |reports: &mut [Report], report: usize, newer: &Path| {
            reports[report].outcome = Outcome::Superseded(newer.to_path_buf());
        };
        match self.claimed.get(&key) {
            Some(c) if c.rank >= job.rank => {
                superseded(reports, job.report, &c.input);
                reports[job.report].output = Some(job.output.clone());
                self.shared.emit(Event::Finished(&reports[job.report]));
                return;
            }
            Some(c) if c.batch_no == self.batch_no => {
                // The older one is not opened yet: this one takes its place.
                let older = std::mem::replace(&mut jobs[c.index], job);
                superseded(reports, older.report, &jobs[c.index].input);
                self.shared.emit(Event::Finished(&reports[older.report]));
                let index = c.index;
                let job = &jobs[index];
                reports[job.report].output = Some(job.output.clone());
                self.claimed.insert(
                    key,
                    Claim {
                        input: job.input.clone(),
                        rank: job.rank.clone(),
                        report: job.report,
                        batch_no: self.batch_no,
                        index,
                    },
                );
                return;
            }
            Some(c) => {
                // Opened in an earlier batch: replace its output, but only if that opening
                // wrote it. If it failed (say, because a file was there before the run and
                // `force` is not set), this one must not replace what it did not write.
                if matches!(reports[c.report].outcome, Outcome::Done) {
                    job.replaces = Some(c.report);
                }
            }
            None => {}
        }
        reports[job.report].output = Some(job.output.clone());
        self.claimed.insert(
            key,
            Claim {
                input: job.input.clone(),
                rank: job.rank.clone(),
                report: job.report,
                batch_no: self.batch_no,
                index: jobs.len(),
            },
        );
        jobs.push(job);
    }

    /// Decide where a document goes: its stored name, checked, below the output root.
    fn plan(&mut self, p: &Pending, header: Header, key: FileKey) -> Result<Job> {
        let metadata = header
            .metadata(&key)
            .map_err(|e| Error::format(&p.input, e))?;
        let unsafe_name = |problem| Error::UnsafeName {
            sealed: p.input.clone(),
            problem,
        };
        // A stored name ending in `/` stands for an empty folder; its document is empty.
        let folder_name = metadata.name.strip_suffix('/');
        if folder_name.is_some() && metadata.size != Some(0) {
            return Err(unsafe_name(NameProblem::EmptyComponent));
        }
        let name = if let Some(folder) = folder_name {
            safe_relative_folder(folder).map_err(unsafe_name)?
        } else if metadata.name.is_empty() {
            // No stored name: the file name without `.kluis`.
            let file = p.input.file_name().unwrap_or_default();
            if !has_extension(file) {
                return Err(Error::NoOutputName {
                    sealed: p.input.clone(),
                });
            }
            let file = file.to_str().ok_or_else(|| Error::NoOutputName {
                sealed: p.input.clone(),
            })?;
            let stem = &file[..file.len() - EXTENSION.len() - 1];
            check_component(stem).map_err(unsafe_name)?;
            check_file_name(stem).map_err(unsafe_name)?;
            PathBuf::from(stem)
        } else {
            safe_relative_path(&metadata.name).map_err(unsafe_name)?
        };
        // A document given on its own restores a plain file name in the output folder: its
        // last component only (the folders it was sealed from are not created), and no
        // hidden file unless asked for.
        let name = match p.direct {
            true => {
                let file = PathBuf::from(name.file_name().unwrap_or_default());
                if !self.allow_dotfiles && file.as_os_str().as_encoded_bytes().starts_with(b".") {
                    return Err(Error::DotFile {
                        sealed: p.input.clone(),
                    });
                }
                file
            }
            false => name,
        };
        let (root, rel) = match self.out_dir {
            Some(out) => (out.to_path_buf(), p.rel_dir.join(name)),
            None => (parent_of(&p.input), name),
        };
        let output = root.join(&rel);
        let key_path = absolute(&output);
        if self.inputs.contains(&key_path) {
            return Err(Error::OutputIsInput {
                path: p.input.clone(),
            });
        }
        let rank = Rank {
            sealed_modified: metadata.modified,
            file_modified: std::fs::metadata(&p.input).and_then(|m| m.modified()).ok(),
            input: p.input.clone(),
        };
        Ok(Job {
            input: p.input.clone(),
            header,
            key,
            root,
            rel,
            output,
            size: metadata.size,
            modified: metadata.modified,
            report: p.report,
            rank,
            replaces: None,
            folder: folder_name.is_some(),
        })
    }
}

/// Counts the bytes read through it, for progress events.
struct Counting<'c, R> {
    inner: R,
    count: &'c Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Decrypt one document into an owner-only temporary file beside its output, restore the
/// modification time, then link it into place (an empty folder's document: create the
/// folder). Returns the plaintext size.
fn open_one(job: &Job, shared: Shared<'_>) -> Result<u64> {
    shared.emit(Event::Started { input: &job.input });
    if job.folder {
        // An empty folder's document: create the folder (never through a link).
        create_dirs(&job.root, &job.rel)?;
        return Ok(0);
    }
    let rel_dir = job.rel.parent().unwrap_or(Path::new(""));
    let force = shared.force || job.replaces.is_some();
    let tmp = start_output(
        &job.root,
        rel_dir,
        &job.output,
        force,
        true,
        shared.temp_dir,
    )?;
    let count = Cell::new(job.header.len() as u64);
    let file = reopen_sealed(&job.input, &job.header)?;
    // The plaintext size, or (sealed without one) the sealed size, which is a little more.
    let size = job
        .size
        .unwrap_or_else(|| file.metadata().map_or(0, |m| m.len()));
    let input = Counting {
        inner: file,
        count: &count,
    };
    let mut reader = StreamReader::new(&job.header, &job.key, input)
        .map_err(|e| Error::format(&job.input, e))?;
    let mut out = Output::new(tmp.file(), size).map_err(|e| Error::io(&job.output, "write", e))?;
    let mut total = 0u64;
    loop {
        // Writes the block out once it is full (the reader only fills what is spare).
        out.spare()
            .map_err(|e| Error::io(&job.output, "write", e))?;
        // Read the ciphertext into the output's block and decrypt it there. 0: the whole
        // payload is authenticated. Its errors are the input's: it never makes `out` write
        // (the call above left spare space, and it fills no more than that).
        let n = kluis_core::fast::read_into(&mut reader, &mut out)
            .map_err(|e| payload_error(&job.input, e))?;
        total += n as u64;
        shared.emit(Event::Read {
            input: &job.input,
            bytes: count.take(),
        });
        if n == 0 {
            break;
        }
    }
    out.finish()
        .map_err(|e| Error::io(&job.output, "write", e))?;
    if let Some(t) = job.modified {
        tmp.file()
            .set_modified(t)
            .map_err(|e| Error::io(&job.output, "set the modification time of", e))?;
    }
    tmp.commit(&job.output, force)?;
    Ok(total)
}
