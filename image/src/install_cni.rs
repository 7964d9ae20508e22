//! `weft install-cni`: puts the CNI plugin where container runtimes look for it. The
//! plugin is the `weft-cni` binary built beside `weft`; runtimes run the plugin named
//! after the network config's `"type": "weft"`, so it is installed as `weft`. The copy
//! goes to a temporary name in the directory first and is renamed over the old one, so
//! a runtime never runs a half-written plugin. It touches nothing else.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The plugin's name in the runtime's plugin directory (the config's `type`).
pub const PLUGIN_NAME: &str = "weft";
/// The plugin binary as cargo builds it.
pub const PLUGIN_BINARY: &str = "weft-cni";
/// Where runtimes look by default.
pub const DEFAULT_DIR: &str = "/opt/cni/bin";

/// The `weft-cni` binary beside the running `weft`.
pub fn plugin_beside_me() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding the weft binary")?;
    let dir = me.parent().unwrap_or(Path::new("."));
    let plugin = dir.join(PLUGIN_BINARY);
    if !plugin.is_file() {
        bail!(
            "{} not found beside {}: build it with `cargo build --release -p weft-cni` (same profile as weft)",
            plugin.display(),
            me.display()
        );
    }
    Ok(plugin)
}

/// Copies `plugin` into `dir` as `weft` (mode 0755); the installed path.
pub fn install(plugin: &Path, dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(PLUGIN_NAME);
    let tmp = dir.join(format!(".{PLUGIN_NAME}.{}.tmp", std::process::id()));
    std::fs::copy(plugin, &tmp)
        .with_context(|| format!("copying {} to {}", plugin.display(), tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("installing {}", target.display()));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_lands_as_weft_executable_and_replaces_an_old_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-install-cni-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = dir.join("src-plugin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&src, b"#!/bin/sh\necho new\n").unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("weft"), b"old").unwrap();
        let at = install(&src, &bin).unwrap();
        assert_eq!(at, bin.join("weft"));
        assert_eq!(std::fs::read(&at).unwrap(), b"#!/bin/sh\necho new\n");
        let mode = std::fs::metadata(&at).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_dir(&bin).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(install(&dir.join("missing"), &bin).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
