//! `weft build`: compiles the bare-metal kernel with `-Zbuild-std` for the custom
//! target and copies the ELF to the stable image path. It never edits `kernel/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;

/// The custom target spec inside `kernel/` (soft-float off, SSE on; see ARCHITECTURE.md).
pub const TARGET_SPEC: &str = "x86_64-weft.json";
/// The kernel binary name inside `kernel/target/x86_64-weft/<profile>/`.
pub const KERNEL_BIN: &str = "weft-kernel";

/// Cargo profile of the kernel build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn from_release(release: bool) -> Profile {
        if release {
            Profile::Release
        } else {
            Profile::Debug
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// The flags that build `core`/`alloc` for the custom target on stable
/// (`RUSTC_BOOTSTRAP=1` is set by [`kernel_cargo`]).
pub fn build_std_args() -> Vec<String> {
    [
        "-Zbuild-std=core,alloc,compiler_builtins",
        "-Zbuild-std-features=compiler-builtins-mem",
        "-Zjson-target-spec",
        "--target",
        TARGET_SPEC,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `cargo <subcommand> <build-std flags>` with current dir `kernel/`.
pub fn kernel_cargo(subcommand: &str, kernel_dir: &Path) -> Command {
    let mut cmd = Command::new(cargo_program());
    // The kernel always builds into `kernel/target` (where `kernel_elf` looks), also when
    // the caller points the workspace's builds elsewhere with CARGO_TARGET_DIR.
    cmd.current_dir(kernel_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env("RUSTC_BOOTSTRAP", "1")
        .arg(subcommand)
        .args(build_std_args());
    cmd
}

/// The cargo that runs us when there is one (so `cargo run` uses its own toolchain).
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Where cargo leaves the kernel ELF for a profile.
pub fn kernel_elf(kernel_dir: &Path, profile: Profile) -> PathBuf {
    kernel_dir
        .join("target")
        .join("x86_64-weft")
        .join(profile.dir())
        .join(KERNEL_BIN)
}

/// A built image: its stable path and size in bytes.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// Builds the kernel and copies it to [`paths::image_path`]; cargo's output goes to
/// our stdout/stderr.
pub fn build_image(profile: Profile) -> Result<BuiltImage> {
    build_image_with(profile, false)
}

/// [`build_image`]; with `quiet`, cargo's output is kept and shown only on failure.
pub fn build_image_with(profile: Profile, quiet: bool) -> Result<BuiltImage> {
    build(profile, quiet, Incremental::AsConfigured)
}

/// [`build_image`] for a build that is not followed by edits (a test run): cargo keeps
/// no incremental state, hundreds of megabytes that only a next compile would read.
pub fn build_image_once(profile: Profile) -> Result<BuiltImage> {
    build(profile, false, Incremental::Off)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Incremental {
    AsConfigured,
    Off,
}

fn build(profile: Profile, quiet: bool, incremental: Incremental) -> Result<BuiltImage> {
    let kdir = paths::kernel_dir();
    let mut cmd = kernel_cargo("build", &kdir);
    if incremental == Incremental::Off {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    let context = || format!("running cargo build in {}", kdir.display());
    if quiet {
        let out = cmd.output().with_context(context)?;
        if !out.status.success() {
            bail!(
                "kernel build failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        let status = cmd.status().with_context(context)?;
        if !status.success() {
            bail!("kernel build failed ({status})");
        }
    }
    let elf = kernel_elf(&kdir, profile);
    check_pvh_elf(&elf)?;
    let out = paths::image_path();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(&elf, &out)
        .with_context(|| format!("copying {} to {}", elf.display(), out.display()))?;
    let size_bytes = std::fs::metadata(&out)?.len();
    Ok(BuiltImage {
        path: out,
        size_bytes,
    })
}

/// Refuses a file that is not a 64-bit little-endian ELF (QEMU would reject it later
/// with a far less helpful message).
pub fn check_pvh_elf(path: &Path) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading kernel ELF {}", path.display()))?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("{} is not an ELF file", path.display());
    }
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little endian)
    if bytes[4] != 2 || bytes[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_has_the_contract_flags() {
        let cmd = kernel_cargo("build", Path::new("/k"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "build");
        assert!(args.contains(&"-Zbuild-std=core,alloc,compiler_builtins".to_string()));
        assert!(args.contains(&"-Zbuild-std-features=compiler-builtins-mem".to_string()));
        assert!(args.contains(&"-Zjson-target-spec".to_string()));
        let t = args.iter().position(|a| a == "--target").unwrap();
        assert_eq!(args[t + 1], "x86_64-weft.json");
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/k")));
        let boot = cmd
            .get_envs()
            .find(|(k, _)| *k == "RUSTC_BOOTSTRAP")
            .and_then(|(_, v)| v);
        assert_eq!(boot, Some(std::ffi::OsStr::new("1")));
    }

    #[test]
    fn elf_path_per_profile() {
        let d = Path::new("/k");
        assert_eq!(
            kernel_elf(d, Profile::Release),
            Path::new("/k/target/x86_64-weft/release/weft-kernel")
        );
        assert_eq!(
            kernel_elf(d, Profile::Debug),
            Path::new("/k/target/x86_64-weft/debug/weft-kernel")
        );
    }

    #[test]
    fn non_elf_is_refused() {
        let dir = std::env::temp_dir().join(format!("weft-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("not-elf");
        std::fs::write(
            &f,
            b"#!/bin/sh\necho hello, I am not a kernel, padding padding padding padding\n",
        )
        .unwrap();
        assert!(check_pvh_elf(&f).is_err());
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        std::fs::write(&f, &elf).unwrap();
        assert!(check_pvh_elf(&f).is_ok());
        elf[4] = 1;
        std::fs::write(&f, &elf).unwrap();
        assert!(check_pvh_elf(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
