#!/usr/bin/env python3
"""kluis against rage, Go age, gpg, `openssl enc` and cp, in one run on the same files.

Run through `benches/compare.sh` (it installs the peers and builds kluis first). Prints a
markdown report to standard output and writes it to `target/compare/results.md`; progress
goes to standard error.

Environment (all optional):
  COMPARE_REPS         timed runs per tool for 100 MiB and the folder (default 5)
  COMPARE_REPS_BIG     timed runs per tool for 1 GiB (default 5 file -> file, 3 -> /dev/null)
  COMPARE_REPS_LOOP    timed runs of the per-file shell loops over the folder (default 1)
  COMPARE_QUICK=1      small sizes and one run each, to check the harness itself
  COMPARE_SKIP_LOAD=1  skip the key server load test
  LOAD_SECONDS         seconds per key server load run (default 5; passed to server_load.sh)
"""

import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "target"
OUT_MD = TARGET / "compare" / "results.md"
WORK = TARGET / "compare" / "work"
INPUTS = TARGET / "compare" / "inputs"  # kept between runs (same size: reused)
KLUIS = TARGET / "release" / "kluis"
SERVER = TARGET / "release" / "kluis-server"
GNU_TIME = "/usr/bin/time"

QUICK = os.environ.get("COMPARE_QUICK") == "1"
REPS = int(os.environ.get("COMPARE_REPS", "1" if QUICK else "5"))
REPS_BIG = os.environ.get("COMPARE_REPS_BIG")
REPS_BIG_FILE = int(REPS_BIG or ("1" if QUICK else "5"))
REPS_BIG_NULL = int(REPS_BIG or ("1" if QUICK else "3"))
REPS_LOOP = int(os.environ.get("COMPARE_REPS_LOOP", "1"))
LOAD_SECONDS = os.environ.get("LOAD_SECONDS", "2" if QUICK else "5")

GIB = 1 << 30
MIB = 1 << 20
BIG = 64 * MIB if QUICK else GIB
MID = 16 * MIB if QUICK else 100 * MIB
FILES = 50 if QUICK else 1000
FILE_SIZE = 10 * 1024
BIG_LABEL = "1 GiB" if BIG == GIB else f"{BIG // MIB} MiB"
MID_LABEL = f"{MID // MIB} MiB"
FF = "file → file"
NUL = "→ /dev/null (stdin → stdout)"
DISK = "durable copy (dd O_DIRECT + fsync)"

GPG_E = (
    "gpg --batch --yes --quiet --trust-model always --compress-algo none "
    "--cipher-algo AES256 -r bench@example.invalid -e"
)
GPG_D = "gpg --batch --yes --quiet -d"
OSSL = "openssl enc -aes-256-ctr -pbkdf2 -pass pass:x"

ENV = {}
report_lines = []
NO_JOURNAL = []  # set by machine(): the files are on ext4 without a journal


def out(line=""):
    """One line of the report: printed now and kept for results.md."""
    print(line, flush=True)
    report_lines.append(line)


def note(msg):
    """Progress on standard error (not part of the report)."""
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def sh(cmd, check=True):
    """Run an untimed shell command (bash, pipefail); returns its standard output."""
    p = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + cmd],
        env=ENV or None,
        capture_output=True,
        text=True,
    )
    if check and p.returncode != 0:
        raise SystemExit(f"compare: command failed ({p.returncode}): {cmd}\n{p.stderr}")
    return p.stdout.strip()


def first_line(cmd):
    lines = sh(cmd, check=False).splitlines()
    return lines[0] if lines else "(not found)"


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def section(title):
    out()
    out(f"## {title}")
    out()
    out(f"Load average before this section (1, 5, 15 min; `uptime`, 2 cores): {loadavg()}.")
    out()


def writeback_mib():
    """Page cache being written to disk right now (`Writeback` in /proc/meminfo), MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Writeback:"):
            return int(line.split()[1]) / 1024
    return 0.0


def settle(limit_mib=16, timeout=5.0):
    """Wait (at most `timeout`) while more than `limit_mib` is being written back, so that
    one run's writes are not billed to the next. (Dirty pages are not waited for: the other
    engineers' builds keep some, and the kernel writes them only after 30 s.)"""
    t = time.time()
    while writeback_mib() > limit_mib and time.time() - t < timeout:
        time.sleep(0.05)
    return time.time() - t


# ---------------------------------------------------------------------------------------------
# Measurement


class Entry:
    """One tool doing one thing: a shell command, timed as a whole. `{OUT}` in the command
    (and in `check`) is replaced with the run's own, empty output folder."""

    def __init__(self, tool, includes, cmd, check=None, loop=False):
        self.tool = tool
        self.includes = includes
        self.cmd = cmd
        self.check = check  # untimed shell command, run after the last run
        self.loop = loop  # a per-file shell loop: REPS_LOOP runs
        self.times, self.rss_kib, self.cpu = [], [], []

    def median(self):
        return statistics.median(self.times)

    def dir_name(self):
        return "".join(c if c.isalnum() else "-" for c in self.tool).strip("-")


def remove(path):
    """Remove a run's output and make the removal durable (fsync of its folder), so that the
    freeing is not billed to the next run."""
    if path.exists():
        shutil.rmtree(path)
    sh(f"sync {path.parent}")


def measure(e, outdir):
    """Run `e.cmd` once under GNU time. Returns (wall s, max RSS KiB, user + sys s)."""
    outdir.mkdir(parents=True)
    sh(f"sync {outdir.parent}")
    fd, tpath = tempfile.mkstemp(dir=WORK, prefix="time-")
    os.close(fd)
    cmd = "set -o pipefail; " + e.cmd.replace("{OUT}", str(outdir))
    argv = [GNU_TIME, "-f", "%M %U %S", "-o", tpath, "bash", "-c", cmd]
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    stats = Path(tpath).read_text().split()
    os.unlink(tpath)
    if p.returncode != 0:
        raise SystemExit(f"compare: {e.tool} failed ({p.returncode}): {cmd}\n{p.stderr}")
    return wall, int(stats[-3]), float(stats[-2]) + float(stats[-1])


def run_entries(entries, reps, case, keep=False):
    """Time every entry `reps` times, interleaving the tools (the order rotates each round) so
    that a slow spell on the shared machine hits all of them rather than one. Each run writes
    to its own folder; with `keep` the folders stay until all runs are done (for many small
    files: see the note on ext4 in the report), otherwise each is removed right after its run."""
    rounds = max([REPS_LOOP if e.loop else reps for e in entries])
    base = WORK / "out" / case
    waited = 0.0
    for r in range(rounds):
        order = entries[r % len(entries):] + entries[: r % len(entries)]
        for e in order:
            n = REPS_LOOP if e.loop else reps
            if len(e.times) >= n:
                continue
            d = base / f"{e.dir_name()}-{len(e.times)}"
            waited += settle()
            wall, rss, cpu = measure(e, d)
            e.times.append(wall)
            e.rss_kib.append(rss)
            e.cpu.append(cpu)
            note(f"  {e.tool:<28} {wall:8.3f} s  cpu {cpu:6.2f} s  {rss / 1024:7.1f} MiB  load {loadavg()}")
            if len(e.times) == n and e.check:
                sh(e.check.replace("{OUT}", str(d)))
            if not keep:
                remove(d)
    if keep:
        remove(base)
    return waited


def table(title, entries, nbytes, files=None):
    """One case: every tool's median, spread, throughput, CPU, memory and the kluis ratio."""
    k = entries[0]
    out(f"**{title}**")
    out()
    out(
        "| tool | the time includes | runs | median s | min–max s | "
        + ("files/s" if files else "GB/s")
        + " | CPU s | peak RSS MiB | kluis speed ÷ this |"
    )
    out("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for e in entries:
        m = e.median()
        rate = f"{files / m:,.0f}" if files else f"{nbytes / m / 1e9:.2f}"
        name = f"**{e.tool}**" if e is k else e.tool
        ratio = "—" if e is k else f"{m / k.median():.2f}×"
        out(
            f"| {name} | {e.includes} | {len(e.times)} | {m:.3f} | "
            f"{min(e.times):.3f}–{max(e.times):.3f} | {rate} | "
            f"{statistics.median(e.cpu):.2f} | {max(e.rss_kib) / 1024:.1f} | {ratio} |"
        )
    out()


# ---------------------------------------------------------------------------------------------
# Setup


def make_inputs():
    INPUTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("big.bin", BIG), ("mid.bin", MID)):
        p = INPUTS / name
        if not p.exists() or p.stat().st_size != size:
            note(f"writing {size} random bytes to {p}")
            sh(f"head -c {size} /dev/urandom > {p}")
    folder = INPUTS / f"folder{FILES}"
    if not folder.exists() or len(list(folder.iterdir())) != FILES:
        note(f"writing {FILES} files of {FILE_SIZE} random bytes to {folder}")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for i in range(FILES):
            (folder / f"f{i:04}.bin").write_bytes(os.urandom(FILE_SIZE))
    sh(f"sync {INPUTS}/*.bin {folder}/* {folder} {INPUTS}")
    sh(f"cat {INPUTS}/*.bin {folder}/* > /dev/null")  # cached, whatever happened before
    return INPUTS / "big.bin", INPUTS / "mid.bin", folder


def start_server():
    """A fresh store, label `hr`, a token; `serve` on loopback; the CLI logged in to it."""
    d = WORK / "server"
    d.mkdir(parents=True)
    base = [str(SERVER), "--store", str(d / "store.db"), "--key-file", str(d / "master.key")]

    def admin(*a):
        return subprocess.run(base + list(a), check=True, capture_output=True, text=True).stdout

    admin("init")
    admin("label", "create", "hr", "--user", "bench")
    token = admin("token", "create", "--user", "bench").strip()
    proc = subprocess.Popen(
        base + ["serve", "--listen", "127.0.0.1:0", "--insecure-http", "--rate-limit", "0"],
        stdout=subprocess.PIPE,
        stderr=open(d / "serve.log", "w"),
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"compare: unexpected first line from kluis-server serve: {line!r}")
    ENV["KLUIS_SERVER"] = line.removeprefix("listening on ")
    subprocess.run([str(KLUIS), "-q", "login"], input=token + "\n", env=ENV, check=True, text=True)
    return proc


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def recipient(key_file):
    for line in Path(key_file).read_text().splitlines():
        if line.startswith("# public key: "):
            return line.removeprefix("# public key: ").strip()
    raise SystemExit(f"compare: no public key in {key_file}")


def make_keys():
    """X25519 identities for rage and age; a gpg key (Curve25519, no passphrase)."""
    keys = WORK / "keys"
    keys.mkdir()
    sh(f"rage-keygen -o {keys}/rage.key 2>/dev/null")
    sh(f"age-keygen -o {keys}/age.key 2>/dev/null")
    gnupg = WORK / "gnupg"
    gnupg.mkdir(mode=0o700)
    ENV["GNUPGHOME"] = str(gnupg)
    sh(
        "gpg --batch --quiet --passphrase '' --quick-gen-key "
        "'kluis bench <bench@example.invalid>' future-default default never"
    )
    return {
        "rage_key": keys / "rage.key",
        "rage_r": recipient(keys / "rage.key"),
        "age_key": keys / "age.key",
        "age_r": recipient(keys / "age.key"),
    }


def seal_copies(inp, k):
    """Untimed: each tool's sealed copy of `inp` (also each tool's warm-up run), synced."""
    d = WORK / "sealed" / inp.stem
    d.mkdir(parents=True)
    n = inp.name
    s = {
        "kluis": d / f"{n}.kluis",
        "rage": d / f"{n}.rage.age",
        "age": d / f"{n}.age.age",
        "gpg": d / f"{n}.gpg",
        "openssl": d / f"{n}.enc",
    }
    sh(f"{KLUIS} -q seal --label hr {inp} -o {d}")
    sh(f"rage -r {k['rage_r']} -o {s['rage']} {inp}")
    sh(f"age -r {k['age_r']} -o {s['age']} {inp}")
    sh(f"{GPG_E} -o {s['gpg']} {inp}")
    sh(f"{OSSL} -in {inp} -out {s['openssl']}")
    sh(f"sync {d}/* {d}")
    # kluis writes large outputs around the page cache (O_DIRECT): read every sealed copy
    # once, so that each tool's input is cached alike.
    sh(f"cat {d}/* > /dev/null")
    return s


def seal_folder_copies(src, k):
    """Untimed: each tool's sealed copy of the folder, synced."""
    root = WORK / "sealed" / "folder"
    root.mkdir(parents=True)
    s = {"kluis": root / "kluis"}  # holds <folder>/; opening it restores OUT/<folder>
    sh(f"{KLUIS} -q seal --label hr {src} -o {s['kluis']}")
    for tool in ("rage", "age"):
        s[f"{tool}-tar"] = root / f"{src.name}.{tool}.tar.age"
        sh(f"tar -cf - -C {src.parent} {src.name} | {tool} -r {k[tool + '_r']} -o {s[tool + '-tar']}")
    for tool, cmd in (
        ("rage", f'rage -r {k["rage_r"]} -o "$d/$n.age" "$f"'),
        ("age", f'age -r {k["age_r"]} -o "$d/$n.age" "$f"'),
        ("gpg", f'{GPG_E} -o "$d/$n.gpg" "$f"'),
        ("openssl", f'{OSSL} -in "$f" -out "$d/$n.enc"'),
    ):
        s[tool] = root / tool
        s[tool].mkdir()
        sh(f'd={s[tool]}; for f in {src}/*; do n="${{f##*/}}"; {cmd} || exit 1; done')
    sh(f"find {root} -exec sync {{}} +")
    return s


# ---------------------------------------------------------------------------------------------
# The tools, case by case


def file_entries(direction, inp, sealed, k, to_null):
    """The tools for one file case; `sealed[tool]` is that tool's sealed copy of `inp`."""
    n = inp.name
    E = []
    if to_null:
        if direction == "seal":
            E.append(Entry("kluis", "read file, seal, write to /dev/null", f"{KLUIS} -q seal --label hr < {inp} > /dev/null"))
            E.append(Entry("cat (read limit)", "read file to /dev/null", f"cat {inp} > /dev/null"))
            E.append(Entry("rage", "as kluis", f"rage -r {k['rage_r']} < {inp} > /dev/null"))
            E.append(Entry("age", "as kluis", f"age -r {k['age_r']} < {inp} > /dev/null"))
            E.append(Entry("gpg", "as kluis", f"{GPG_E} -o - < {inp} > /dev/null"))
            E.append(Entry("openssl enc", "as kluis; no authentication", f"{OSSL} -in {inp} > /dev/null"))
        else:
            E.append(Entry("kluis", "read, unwrap via the key server, open, to /dev/null", f"{KLUIS} -q open < {sealed['kluis']} > /dev/null"))
            E.append(Entry("cat (read limit)", "read the plaintext file to /dev/null", f"cat {inp} > /dev/null"))
            E.append(Entry("rage", "read, open, to /dev/null", f"rage -d -i {k['rage_key']} < {sealed['rage']} > /dev/null"))
            E.append(Entry("age", "as rage", f"age -d -i {k['age_key']} < {sealed['age']} > /dev/null"))
            E.append(Entry("gpg", "as rage", f"{GPG_D} -o - < {sealed['gpg']} > /dev/null"))
            E.append(Entry("openssl enc", "as rage; no authentication", f"{OSSL} -d -in {sealed['openssl']} > /dev/null"))
        return E

    cmp = f"cmp {inp} {{OUT}}/{n}"

    def peer(tool, cmd, outfile, check=None, with_sync=True):
        E.append(Entry(tool, "write, no fsync", cmd, check))
        if with_sync:
            E.append(Entry(f"{tool} + fsync", "write, then `sync FILE DIR` (fsync of both)", f"{cmd} && sync {{OUT}}/{outfile} {{OUT}}"))

    # The disk's own limit for a durable write of the same bytes: no encryption, the page cache
    # bypassed as kluis does, the file and its folder fsynced. No tool that fsyncs its output
    # can be faster than this.
    disk = Entry(DISK, "copy of the input, `O_DIRECT` in 4 MiB writes, fsync file and folder", f"dd if={inp} of={{OUT}}/{n} bs=4M oflag=direct conv=fsync status=none && sync {{OUT}}", cmp)
    if direction == "seal":
        E.append(Entry("kluis", "write (8 MiB and more: O_DIRECT, from a second thread), fsync file and folder (always)", f"{KLUIS} -q seal --label hr {inp} -o {{OUT}}"))
        E.append(disk)
        peer("cp", f"cp {inp} {{OUT}}/{n}", n)
        peer("rage", f"rage -r {k['rage_r']} -o {{OUT}}/{n}.age {inp}", f"{n}.age")
        peer("age", f"age -r {k['age_r']} -o {{OUT}}/{n}.age {inp}", f"{n}.age")
        peer("gpg", f"{GPG_E} -o {{OUT}}/{n}.gpg {inp}", f"{n}.gpg", with_sync=False)
        peer("openssl enc", f"{OSSL} -in {inp} -out {{OUT}}/{n}.enc", f"{n}.enc", with_sync=False)
    else:
        E.append(Entry("kluis", "unwrap via the key server, write (8 MiB and more: O_DIRECT, from a second thread), fsync file and folder (always)", f"{KLUIS} -q open {sealed['kluis']} -o {{OUT}}", cmp))
        E.append(disk)
        peer("cp", f"cp {inp} {{OUT}}/{n}", n)
        peer("rage", f"rage -d -i {k['rage_key']} -o {{OUT}}/{n} {sealed['rage']}", n, cmp)
        peer("age", f"age -d -i {k['age_key']} -o {{OUT}}/{n} {sealed['age']}", n, cmp)
        peer("gpg", f"{GPG_D} -o {{OUT}}/{n} {sealed['gpg']}", n, cmp, with_sync=False)
        peer("openssl enc", f"{OSSL} -d -in {sealed['openssl']} -out {{OUT}}/{n}", n, cmp, with_sync=False)
    return E


def folder_entries(direction, src, sealed, k):
    b = src.name
    loop = 'for f in {}/*; do n="${{f##*/}}"; {} || exit 1; done'
    E = []
    if direction == "seal":
        E.append(Entry("kluis", "seal the folder (label key from the cache), fsync every file and folder", f"{KLUIS} -q seal --label hr {src} -o {{OUT}}"))
        E.append(Entry("cp -r", "one process, no fsync", f"cp -r {src} {{OUT}}/"))
        E.append(Entry("cp -r + fsync", "then `sync` every file and folder", f"cp -r {src} {{OUT}}/ && sync {{OUT}}/{b}/* {{OUT}}/{b} {{OUT}}"))
        for tool in ("rage", "age"):
            tar = f"tar -cf - -C {src.parent} {b} | {tool} -r {k[tool + '_r']} -o {{OUT}}/{b}.tar.age"
            E.append(Entry(f"tar \\| {tool}", "one archive, two processes, no fsync", tar))
            E.append(Entry(f"tar \\| {tool} + fsync", "then `sync` the archive and folder", f"{tar} && sync {{OUT}}/{b}.tar.age {{OUT}}"))
        for tool, cmd in (
            ("rage", f'rage -r {k["rage_r"]} -o {{OUT}}/"$n".age "$f"'),
            ("age", f'age -r {k["age_r"]} -o {{OUT}}/"$n".age "$f"'),
            ("gpg", f'{GPG_E} -o {{OUT}}/"$n".gpg "$f"'),
            ("openssl enc", f'{OSSL} -in "$f" -out {{OUT}}/"$n".enc'),
        ):
            E.append(Entry(f"{tool} (loop)", "one process per file, no fsync", loop.format(src, cmd), loop=True))
    else:
        chk = f"diff -r {src} {{OUT}}/{b}"
        E.append(Entry("kluis", "open the folder: one batch unwrap via the key server, fsync every file and folder", f"{KLUIS} -q open {sealed['kluis']} -o {{OUT}}", chk))
        E.append(Entry("cp -r", "one process, no fsync", f"cp -r {src} {{OUT}}/"))
        E.append(Entry("cp -r + fsync", "then `sync` every file and folder", f"cp -r {src} {{OUT}}/ && sync {{OUT}}/{b}/* {{OUT}}/{b} {{OUT}}"))
        for tool in ("rage", "age"):
            untar = f"{tool} -d -i {k[tool + '_key']} {sealed[tool + '-tar']} | tar -xf - -C {{OUT}}"
            E.append(Entry(f"{tool} \\| tar", "one archive, two processes, no fsync", untar, chk))
            E.append(Entry(f"{tool} \\| tar + fsync", "then `sync` every file and folder", f"{untar} && sync {{OUT}}/{b}/* {{OUT}}/{b} {{OUT}}"))
        for tool, key, cmd in (
            ("rage", "rage", f'rage -d -i {k["rage_key"]} -o {{OUT}}/{b}/"${{n%.age}}" "$f"'),
            ("age", "age", f'age -d -i {k["age_key"]} -o {{OUT}}/{b}/"${{n%.age}}" "$f"'),
            ("gpg", "gpg", f'{GPG_D} -o {{OUT}}/{b}/"${{n%.gpg}}" "$f"'),
            ("openssl enc", "openssl", f'{OSSL} -d -in "$f" -out {{OUT}}/{b}/"${{n%.enc}}"'),
        ):
            cmd = f"mkdir {{OUT}}/{b} && " + loop.format(sealed[key], cmd)
            E.append(Entry(f"{tool} (loop)", "one process per file, no fsync", cmd, chk, loop=True))
    return E


# ---------------------------------------------------------------------------------------------
# The report


def machine():
    cpu = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if ":" in line:
            key, v = (x.strip() for x in line.split(":", 1))
            cpu.setdefault(key, v)
    flags = set(cpu.get("flags", "").split())
    wanted = [f for f in ("aes", "vaes", "vpclmulqdq", "avx2", "avx512f", "sha_ni") if f in flags]
    mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    dev = sh(f"findmnt -no SOURCE -T {WORK}")
    fstype = sh(f"findmnt -no FSTYPE -T {WORK}")
    journal = ""
    if fstype == "ext4":
        jbd2 = Path("/proc/fs/jbd2")
        name = Path(dev).name
        has = jbd2.exists() and any(p.name.startswith(name + "-") for p in jbd2.iterdir())
        if not has:
            NO_JOURNAL.append(True)
        journal = ", with a journal" if has else ", **without a journal** (no jbd2 for it: fsync writes the data and the inode, no journal commit)"
    balloon = ""
    for feat in Path("/sys/bus/virtio/drivers/virtio_balloon").glob("virtio*/features"):
        bits = feat.read_text().strip()
        if len(bits) > 5 and bits[5] == "1":  # VIRTIO_BALLOON_F_REPORTING
            order = Path("/sys/module/page_reporting/parameters/page_reporting_order")
            o = order.read_text().strip() if order.exists() else "?"
            balloon = f"; virtio-balloon free page reporting on (order {o}): freed memory goes back to the host and faults in again when reused"
    head = sh(f"git -C {REPO} rev-parse --short HEAD")
    dirty = sh(f"git -C {REPO} status --porcelain --untracked-files=no")
    out(f"- Machine: `nproc` = {os.cpu_count()}, CPU \"{cpu.get('model name')}\" (family {cpu.get('cpu family')}, model {cpu.get('model')}; {' '.join(wanted)}), {int(mem.split()[1]) / (1 << 20):.1f} GiB RAM, Linux {platform.release()}{balloon}")
    out(f"- Files: `{WORK.relative_to(REPO)}` on {dev}, {fstype}{journal}, mounted `{sh(f'findmnt -no OPTIONS -T {WORK}')}`")
    out(f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit `{head}`{' plus uncommitted changes' if dirty else ''}")
    out("- Versions:")
    out(f"  - {first_line(f'{KLUIS} --version')} and {first_line(f'{SERVER} --version')} (release build), {first_line('rustc -V')}")
    out(f"  - {first_line('rage --version')} (`cargo install rage --locked`); Go age {first_line('age --version')} (Debian package)")
    out(f"  - {first_line('gpg --version')}, {sh('gpg --version').splitlines()[1]}")
    out(f"  - {first_line('openssl version')}; {first_line('cp --version')}")


def explain():
    out("How to read this:")
    out()
    out(f"- Every figure is the median of the runs shown: 1 GiB file → file {REPS_BIG_FILE}, 1 GiB → /dev/null {REPS_BIG_NULL}, 100 MiB and the folder {REPS}, per-file shell loops {REPS_LOOP}. The tools are interleaved and the order rotates each round. Wall time is taken around `/usr/bin/time -f '%M %U %S' bash -c CMD` (about 2 ms of start-up, the same for every tool). Peak RSS is GNU time's `%M`: the largest single process (for a pipe or a loop, the largest of them, not the sum). CPU s is user + system time of all its processes (above the wall time: more than one core was busy).")
    out("- Throughput is plaintext bytes ÷ median wall time, in GB/s (10⁹ B/s; 1 GiB = 1.074 GB), for sealing and for opening alike. **kluis speed ÷ this** is this tool's median time ÷ kluis's: above 1, kluis is faster.")
    out("- Page cache warm: every input is read once, untimed, before it is timed, and stays cached (far more RAM than files). Caches are not dropped: `/proc/sys/vm/drop_caches` is writable here, but dropping would evict the other engineers' builds on this shared machine and would time the virtual disk's reads rather than the tools. Before each run the harness waits (at most 5 s) while more than 16 MiB is being written back; each run writes into its own new folder.")
    out("- kluis always fsyncs each output file and its folder before linking the file into place. rage, age, gpg, openssl and cp do not. The peers' rows are shown as they are, and cp, rage and age again followed by `sync FILE DIR` (coreutils `sync` with arguments: an fsync of exactly those, the same work kluis does; not a whole-system sync). gpg and openssl get no fsync row: they are slower than kluis without it.")
    out(f"- `{DISK}` (file → file rows) is the disk's own limit for a durable write: `dd` copies the plaintext input with `O_DIRECT` in 4 MiB writes and fsyncs the file and its folder, with no encryption. kluis writes the same way (plus 16 bytes per 64 KiB and a header); no tool that fsyncs its output can beat this row, so `rage ÷ durable copy` is the most any such tool can reach against rage in this run.")
    out("- kluis: a real `kluis-server` on loopback (fresh SQLite store, audit trail on, `--rate-limit 0`), label `hr`, the CLI logged in. Sealing uses the cached label key; every `kluis open` unwraps through the key server (one request per document; one batch request for a folder).")
    out("- Peers: rage and age with an X25519 recipient (`rage-keygen`, `age-keygen`; ChaCha20-Poly1305). gpg with a public key (`--quick-gen-key … future-default`: Curve25519, no passphrase, agent-held secret key), `--compress-algo none --cipher-algo AES256`, so OpenPGP AES-256-CFB with an SHA-1 MDC (gpg's default would also zlib-compress). `openssl enc -aes-256-ctr -pbkdf2 -pass pass:x`: **no authentication at all**, and a passphrase through PBKDF2 per run. cp is the physical limit for file → file, `cat > /dev/null` (a page-cache read) for → /dev/null.")


def report(big, mid, folder, k):
    out("# kluis against rage, Go age, gpg, openssl enc and cp")
    out()
    machine()
    out()
    explain()

    section("Setup")
    t = time.time()
    note("sealing the inputs with every tool (untimed)")
    sh(f"cat {big} {mid} {folder}/* > /dev/null")
    sealed_big = seal_copies(big, k)
    sealed_mid = seal_copies(mid, k)
    sealed_folder = seal_folder_copies(folder, k)
    took = time.time() - t
    waited = settle(timeout=30)
    out(f"Inputs (random bytes, kept in `target/compare/inputs`) and every tool's sealed copies written and synced, untimed, in {took:.0f} s (then {waited:.1f} s waiting for writeback); this is also every tool's warm-up run.")
    kluis_rss = []
    results = {}

    # The folder first: many small files are the most sensitive to what ran before (see below).
    section(f"Folder of {FILES:,} × {FILE_SIZE // 1024} KiB files")
    out(f"kluis seals the folder in one process ({min(os.cpu_count() or 1, 8)} worker threads, label key from the cache) and opens it with one batch unwrap request to the key server. The `(loop)` rows run one peer process per file in a shell loop: how they are used on a folder, paying process start-up (and for openssl PBKDF2, for gpg the agent) per file. `tar | rage` and `tar | age` are the fairer one-archive figure. Each per-file loop is already a sum of "
        + f"{FILES:,} runs, so it runs {REPS_LOOP} time(s).")
    out()
    if NO_JOURNAL:
        out("This file system is ext4 without a journal, where creating a file skips every inode of its block group deleted in the last 60–300 s (`recently_deleted()` in `fs/ext4/ialloc.c`, which reads the inode table block of each): creating many files soon after many were deleted costs far more system time. So the outputs of this section are kept until its last run, and it runs before anything else is deleted. Other engineers' builds on the same disk still delete files; `cp -r` shows what creating the files costs at the time.")
        out()
    for direction in ("seal", "open"):
        note(f"folder {direction}")
        E = folder_entries(direction, folder, sealed_folder, k)
        run_entries(E, REPS, f"folder-{direction}", keep=True)
        table(f"{direction}, {FILES:,} × {FILE_SIZE // 1024} KiB", E, FILES * FILE_SIZE, files=FILES)
        results[("folder", "", direction)] = (E, FILES * FILE_SIZE)
        kluis_rss += E[0].rss_kib

    for label, inp, sealed, to_null, reps in (
        (BIG_LABEL, big, sealed_big, True, REPS_BIG_NULL),
        (MID_LABEL, mid, sealed_mid, True, REPS),
        (MID_LABEL, mid, sealed_mid, False, REPS),
        (BIG_LABEL, big, sealed_big, False, REPS_BIG_FILE),
    ):
        where = NUL if to_null else FF
        section(f"{label}, {where}")
        for direction in ("seal", "open"):
            note(f"{label} {where} {direction}")
            E = file_entries(direction, inp, sealed, k, to_null)
            waited = run_entries(E, reps, f"{inp.stem}-{'null' if to_null else 'file'}-{direction}")
            table(f"{direction}, {label}, {where}", E, inp.stat().st_size)
            if waited > 1:
                out(f"(Waited {waited:.1f} s in all for writeback before runs.)")
                out()
            results[(label, where, direction)] = (E, inp.stat().st_size)
            kluis_rss += E[0].rss_kib

    summary(results, kluis_rss)


def summary(results, kluis_rss):
    section("Summary: kluis speed ÷ peer, medians (above 1: kluis faster)")
    cols = ["cp / cat", "cp + fsync", DISK, "rage", "rage + fsync", "age", "age + fsync", "gpg", "openssl enc"]
    out("| case | kluis s | kluis GB/s | " + " | ".join(cols) + " |")
    out("|---|---:|---:|" + "---:|" * len(cols))

    def find(E, *names):
        return next((e for n in names for e in E if e.tool == n), None)

    order = [(BIG_LABEL, FF), (BIG_LABEL, NUL), (MID_LABEL, FF), (MID_LABEL, NUL), ("folder", "")]
    for label, where in order:
        for direction in ("seal", "open"):
            E, nbytes = results[(label, where, direction)]
            k = E[0]
            cells = []
            for c in cols:
                if c == "cp / cat":
                    p = find(E, "cp", "cat (read limit)", "cp -r")
                elif c == "cp + fsync":
                    p = find(E, "cp + fsync", "cp -r + fsync")
                elif label == "folder" and c in ("rage", "age", "rage + fsync", "age + fsync"):
                    t, fs = c.split()[0], " + fsync" if "fsync" in c else ""
                    p = find(E, f"tar \\| {t}{fs}", f"{t} \\| tar{fs}")
                else:
                    p = find(E, c, f"{c} (loop)")
                cells.append(f"{p.median() / k.median():.2f}" if p else "")
            name = f"{direction} {label} {where}" if label != "folder" else f"{direction} folder {FILES:,} × 10 KiB"
            out(f"| {name} | {k.median():.3f} | {nbytes / k.median() / 1e9:.2f} | " + " | ".join(cells) + " |")
    out()
    out("Folder rows: rage and age are `tar | rage` and `tar | age` (one archive); gpg and openssl are per-file loops.")
    out()

    def ratios(where, direction, peer):
        E, _ = results[(BIG_LABEL, where, direction)]
        p = next(e for e in E if e.tool == peer)
        return p.median() / E[0].median(), min(p.times) / min(E[0].times)

    def yes(v, want):
        return "yes" if v >= want else "no"

    out(f"**Against the targets** ({BIG_LABEL}, this run; ratios of medians, and of each tool's fastest run in brackets)")
    out()
    out("| target | measured | met? |")
    out("|---|---|---|")
    for direction in ("seal", "open"):
        (r, rb), (s, sb) = ratios(FF, direction, "cp"), ratios(FF, direction, "cp + fsync")
        out(f"| {direction} file → file ≥ 0.8× cp | {r:.2f}× cp ({rb:.2f}×); {s:.2f}× cp + fsync ({sb:.2f}×) | {yes(r, 0.8)}; against cp + fsync {yes(s, 0.8)} |")
    for direction in ("seal", "open"):
        d, db = ratios(FF, direction, DISK)
        r, rb = ratios(FF, direction, "rage")
        lim, limb = r / d, rb / db
        out(f"| (the disk's limit) {direction} file → file: kluis vs a durable copy; the most any tool that fsyncs could reach against rage | {d:.2f}× durable copy ({db:.2f}×); rage ÷ durable copy {lim:.2f}× ({limb:.2f}×) | {'3× rage is within the disk' if lim >= 3 else 'no tool that fsyncs can reach 3× rage on this disk'} |")
    for peer, want in (("rage", 3.0), ("age", 1.5)):
        for direction in ("seal", "open"):
            (r, rb), (s, sb) = ratios(FF, direction, peer), ratios(FF, direction, f"{peer} + fsync")
            n, nb = ratios(NUL, direction, peer)
            out(f"| {direction} file → file ≥ {want:g}× {peer} | {r:.2f}× {peer} ({rb:.2f}×); {s:.2f}× {peer} + fsync ({sb:.2f}×); → /dev/null {n:.2f}× ({nb:.2f}×) | {yes(r, want)}; with fsync {yes(s, want)}; → /dev/null {yes(n, want)} |")
    E, nbytes = results[(BIG_LABEL, NUL, "seal")]
    gbs, best = nbytes / E[0].median() / 1e9, nbytes / min(E[0].times) / 1e9
    out(f"| seal → /dev/null ≥ 4 GB/s | {gbs:.2f} GB/s ({best:.2f} fastest run) | {yes(gbs, 4)} |")
    for direction in ("seal", "open"):
        E, _ = results[("folder", "", direction)]
        m = E[0].median()
        out(f"| folder of {FILES:,} × 10 KiB, {direction}, ≤ 1 s | {m:.3f} s ({min(E[0].times):.3f} fastest) | {'yes' if m <= 1 else 'no'} |")
    peak = max(kluis_rss) / 1024
    out(f"| kluis peak memory ≤ 64 MiB | {peak:.1f} MiB (largest of all kluis runs) | {'yes' if peak <= 64 else 'no'} |")
    out()


def main():
    t_start = time.time()
    for p in (KLUIS, SERVER, Path(GNU_TIME)):
        if not p.exists():
            raise SystemExit(f"compare: {p} is missing; run benches/compare.sh")
    ENV.update(os.environ)
    ENV["PATH"] = f"{Path.home() / '.cargo' / 'bin'}:{ENV.get('PATH', '')}"
    ENV["KLUIS_CONFIG_DIR"] = str(WORK / "kluis-config")
    ENV["KLUIS_CACHE_DIR"] = str(WORK / "kluis-cache")
    for var in ("KLUIS_LABEL", "KLUIS_IDENTITY", "KLUIS_CONFIG", "KLUIS_SERVER"):
        ENV.pop(var, None)
    for tool in ("rage", "rage-keygen", "age", "age-keygen", "gpg", "gpgconf", "openssl"):
        if shutil.which(tool, path=ENV["PATH"]) is None:
            raise SystemExit(f"compare: {tool} is missing; run benches/compare.sh")

    if WORK.exists():  # left by an interrupted run
        if (WORK / "gnupg").exists():
            sh(f"GNUPGHOME={WORK / 'gnupg'} gpgconf --kill gpg-agent", check=False)
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    if sh(f"findmnt -no FSTYPE -T {WORK}") == "tmpfs":
        raise SystemExit(f"compare: {WORK} is on tmpfs; the files must be on a real disk")

    big, mid, folder = make_inputs()
    proc = start_server()
    try:
        k = make_keys()
        report(big, mid, folder, k)
    finally:
        stop_server(proc)
        if "GNUPGHOME" in ENV:
            sh("gpgconf --kill gpg-agent", check=False)

    if os.environ.get("COMPARE_SKIP_LOAD") != "1":
        section("Key server load test (`benches/server_load.sh`)")
        out(f"`LOAD_SECONDS={LOAD_SECONDS} benches/server_load.sh`, its own output (wrk against a fresh `kluis-server`, audit trail on):")
        out()
        p = subprocess.run(
            [str(REPO / "benches" / "server_load.sh")],
            env=dict(os.environ, LOAD_SECONDS=LOAD_SECONDS),
            stdout=subprocess.PIPE,
            text=True,
        )
        out("```")
        for line in p.stdout.rstrip().splitlines():
            out(line)
        out("```")
        if p.returncode != 0:
            out(f"(server_load.sh exited with status {p.returncode})")
    out()
    out(f"Whole harness: {time.time() - t_start:.0f} s (`benches/compare.sh`).")
    OUT_MD.parent.mkdir(parents=True, exist_ok=True)
    OUT_MD.write_text("\n".join(report_lines) + "\n")
    note(f"report written to {OUT_MD}")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
