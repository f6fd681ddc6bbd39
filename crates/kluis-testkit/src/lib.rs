//! Test support shared by the end-to-end tests of kluis-client and the `kluis` command.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The `kluis-server` binary, built once per test run.
///
/// Cargo builds only the binaries of the package under test, so the server's binary is
/// built here with `cargo build -p kluis-server --bin kluis-server` into the same target
/// directory and profile as this test (a no-op when it is up to date). `KLUIS_SERVER_BIN`
/// points at a prebuilt binary instead.
pub fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KLUIS_SERVER_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/<test binary>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Cargo sets these for the test; build scripts (ring's) watch some of them, and
        // inheriting them would make the outer and this build rebuild each other's crates.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || matches!(
                    &*k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&*k);
            }
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "kluis-server",
                "--bin",
                "kluis-server",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let out = cmd.output().expect("run cargo to build kluis-server");
        assert!(
            out.status.success(),
            "building kluis-server failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join(format!("kluis-server{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// Start `command` (a `kluis-server … serve --listen 127.0.0.1:0 …` command line; the caller
/// chooses where its standard error goes) and wait for its first line, `listening on URL`.
/// Returns the running server and its URL.
pub fn spawn_serve(mut command: Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
        .to_owned();
    (child, url)
}
