//! `weft test`: the project's one test command. A fixed list of stages (format, lints,
//! unit tests, image build, kernel lints, fuzz check, QEMU tests), run in order, each
//! printed with its outcome; the first failure stops the run. It never edits files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::build::{self, Profile};
use crate::process;

/// What a stage does.
#[derive(Debug)]
pub enum Action {
    /// A command run in a directory; success is exit status 0.
    Run(Command),
    /// `weft build` in-process.
    BuildImage(Profile),
    /// A command run with `WEFT_TEST_RUN=<token>` in its environment; afterwards,
    /// whether it passed or not, nothing that carries the token may still run (every
    /// process a test started inherits it): what is left is listed, killed, and fails
    /// the stage.
    RunAlone(Command),
}

/// The environment variable that marks every process of a test run.
pub const RUN_MARKER: &str = "WEFT_TEST_RUN";

#[derive(Debug)]
pub struct Stage {
    pub name: String,
    pub action: Action,
}

/// How long `weft test` runs each fuzz target.
const FUZZ_SMOKE_SECONDS: &str = "10";

fn cargo(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(build::cargo_program());
    c.current_dir(dir).args(args);
    c
}

/// The stages for the repository at `root`, in order.
pub fn plan(root: &Path) -> Vec<Stage> {
    let kernel = root.join("kernel");
    let mut stages = vec![Stage {
        name: "cargo fmt --all --check".into(),
        action: Action::Run(cargo(root, &["fmt", "--all", "--check"])),
    }];
    if kernel.join("Cargo.toml").is_file() {
        stages.push(Stage {
            name: "kernel: cargo fmt --check".into(),
            action: Action::Run(cargo(&kernel, &["fmt", "--check"])),
        });
    }
    stages.push(Stage {
        name: "cargo clippy --workspace --all-targets -- -D warnings".into(),
        action: Action::Run(cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )),
    });
    stages.push(Stage {
        name: "cargo test --workspace --exclude weft-qemu-tests".into(),
        action: Action::Run(cargo(
            root,
            &["test", "--workspace", "--exclude", "weft-qemu-tests"],
        )),
    });
    stages.push(Stage {
        name: "weft build".into(),
        action: Action::BuildImage(Profile::Debug),
    });
    if kernel.join("Cargo.toml").is_file() {
        let mut c = build::kernel_cargo("clippy", &kernel);
        c.args(["--", "-D", "warnings"]);
        stages.push(Stage {
            name: "kernel: cargo clippy -Zbuild-std ... -- -D warnings".into(),
            action: Action::Run(c),
        });
    }
    let smoke: PathBuf = root.join("fuzz").join("smoke.sh");
    if smoke.is_file() {
        // Builds every fuzz target with coverage instrumentation on the stable toolchain
        // and runs each briefly from the committed seeds: a crash fails the stage.
        let mut c = Command::new("bash");
        c.current_dir(root).arg(&smoke).arg(FUZZ_SMOKE_SECONDS);
        stages.push(Stage {
            name: format!("fuzz smoke: every target for {FUZZ_SMOKE_SECONDS} s"),
            action: Action::Run(c),
        });
    }
    stages.push(Stage {
        name: "cargo test -p weft-qemu-tests -- --test-threads=1".into(),
        // --no-fail-fast: one failing test file should not hide the others' results.
        action: Action::RunAlone(cargo(
            root,
            &[
                "test",
                "-p",
                "weft-qemu-tests",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ],
        )),
    });
    stages
}

/// Outcome of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

impl Summary {
    /// The closing line, alone on its line.
    pub fn line(&self) -> String {
        format!("weft test: {} passed, {} failed", self.passed, self.failed)
    }
}

/// Every command of a run builds without incremental state: a run compiles each crate
/// once, and the state cargo would keep for a next compile is gigabytes of disk.
fn without_incremental(cmd: &mut Command) -> &mut Command {
    cmd.env("CARGO_INCREMENTAL", "0")
}

fn run_stage(action: Action) -> Result<()> {
    match action {
        Action::Run(mut cmd) => {
            let status = without_incremental(&mut cmd).status()?;
            if !status.success() {
                bail!("{status}");
            }
            Ok(())
        }
        Action::BuildImage(profile) => {
            let img = build::build_image_once(profile)?;
            println!("image {} ({} bytes)", img.path.display(), img.size_bytes);
            Ok(())
        }
        Action::RunAlone(mut cmd) => {
            let token = format!("{}-{}", std::process::id(), unix_nanos());
            let status = without_incremental(&mut cmd)
                .env(RUN_MARKER, &token)
                .status()?;
            let left = leftovers(&token, Duration::from_secs(10));
            if !left.is_empty() {
                println!("==> processes the tests left running (killed now):");
                for f in &left {
                    println!("    {} {}", f.pid, f.cmdline);
                    process::signal(f.pid, process::Signal::SIGKILL);
                }
            }
            if !status.success() {
                bail!("{status}");
            }
            if !left.is_empty() {
                bail!("{} processes of the tests were still running", left.len());
            }
            Ok(())
        }
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The processes marked with `token` still there after up to `grace` (a guard that
/// stops a process may still be reaping it when the test binary exits).
fn leftovers(token: &str, grace: Duration) -> Vec<process::Found> {
    let deadline = Instant::now() + grace;
    loop {
        let left = process::marked(RUN_MARKER, token);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the stages in order, stopping at the first failure.
pub fn run(stages: Vec<Stage>) -> Summary {
    let total = stages.len();
    let mut summary = Summary {
        passed: 0,
        failed: 0,
    };
    for (i, stage) in stages.into_iter().enumerate() {
        println!("\n==> weft test [{}/{total}] {}", i + 1, stage.name);
        let t = Instant::now();
        let res = run_stage(stage.action);
        let secs = t.elapsed().as_secs_f64();
        match res {
            Ok(()) => {
                println!("==> ok: {} ({secs:.1} s)", stage.name);
                summary.passed += 1;
            }
            Err(e) => {
                println!("==> FAILED: {} ({secs:.1} s): {e:#}", stage.name);
                summary.failed += 1;
                break;
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_order_ends_with_the_qemu_tests() {
        let root = crate::paths::repo_root();
        let names: Vec<String> = plan(&root).into_iter().map(|s| s.name).collect();
        assert_eq!(names[0], "cargo fmt --all --check");
        let pos = |n: &str| names.iter().position(|s| s.starts_with(n)).unwrap();
        assert!(pos("cargo clippy") < pos("cargo test --workspace"));
        assert!(pos("cargo test --workspace") < pos("weft build"));
        assert!(pos("weft build") < pos("kernel: cargo clippy"));
        assert_eq!(
            names.last().unwrap(),
            "cargo test -p weft-qemu-tests -- --test-threads=1"
        );
    }

    /// A stage whose command leaves a process behind fails, and the process is gone.
    #[test]
    fn a_process_left_by_the_tests_fails_the_stage_and_is_killed() {
        let mut c = Command::new("sh");
        // The background sleep outlives sh; it inherits the marker.
        c.args(["-c", "sleep 60 >/dev/null 2>&1 & echo started"]);
        let s = run(vec![Stage {
            name: "leaves a sleep".into(),
            action: Action::RunAlone(c),
        }]);
        assert_eq!(s.failed, 1);
        let mut clean = Command::new("sh");
        clean.args(["-c", "sleep 0.1"]);
        let s = run(vec![Stage {
            name: "clean".into(),
            action: Action::RunAlone(clean),
        }]);
        assert_eq!(s.passed, 1);
    }

    #[test]
    fn run_stops_at_the_first_failure() {
        let mk = |name: &str, prog: &str| Stage {
            name: name.into(),
            action: Action::Run(Command::new(prog)),
        };
        let s = run(vec![mk("a", "true"), mk("b", "false"), mk("c", "true")]);
        assert_eq!(
            s,
            Summary {
                passed: 1,
                failed: 1
            }
        );
        assert_eq!(s.line(), "weft test: 1 passed, 1 failed");
        let s = run(vec![mk("a", "true"), mk("c", "true")]);
        assert_eq!(s.line(), "weft test: 2 passed, 0 failed");
    }
}
