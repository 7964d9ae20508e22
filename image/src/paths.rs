//! Where things live in the repository: the root, the kernel package and the stable
//! path of the bootable image. Owns no files; it only names them.

use std::path::{Path, PathBuf};

/// The repository root (the workspace that holds `image/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The standalone kernel package (`kernel/`, outside the workspace).
pub fn kernel_dir() -> PathBuf {
    repo_root().join("kernel")
}

/// The stable path of the bootable PVH ELF that `weft build` writes:
/// `target/weft/weft.elf` under the repository root.
pub fn image_path() -> PathBuf {
    repo_root().join("target").join("weft").join("weft.elf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_holds_the_workspace_and_the_kernel() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("image").join("Cargo.toml").is_file());
        assert!(kernel_dir().join("Cargo.toml").is_file());
        assert!(image_path().ends_with("target/weft/weft.elf"));
    }
}
