//! The reference Linux VM: builds its initramfs from the Debian packages on this machine
//! (kernel and modules of `linux-image-amd64`, `busybox-static`, iproute2, nftables,
//! ipvsadm, dnsmasq with their shared libraries) into `target/weft/refvm/`, and turns a
//! [`RefJob`] into the kernel command line its `/init` (`image/refvm/init`) reads. It
//! never downloads anything and never writes outside its output directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::qemu::{MacAddr, QEMU_BINARY};

/// The `/init` script, kept beside the builder's docs in `image/refvm/`.
pub const INIT_SCRIPT: &str = include_str!("../../refvm/init");

/// The console line that marks the reference VM ready (the boot-to-ready mark).
pub const READY_MARKER: &str = "weft-ref: ready";
/// The console line prefix of a setup failure.
pub const FAILED_MARKER: &str = "weft-ref: failed:";

/// Modules the jobs need; their dependencies come from `modules.dep`.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_net",
    "virtio_console",
    "vxlan",
    "bridge",
    "nf_tables",
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_mh",
    "wireguard",
];

/// Tools copied in with their libraries: (program name, where Debian installs it).
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "/usr/sbin/ip"),
    ("bridge", "/usr/sbin/bridge"),
    ("nft", "/usr/sbin/nft"),
    ("ipvsadm", "/usr/sbin/ipvsadm"),
    ("dnsmasq", "/usr/sbin/dnsmasq"),
    ("wg", "/usr/bin/wg"),
];

/// The Debian packages the builder reads (what `.ci/install` installs).
pub const PACKAGES: &str =
    "linux-image-amd64 busybox-static iproute2 nftables ipvsadm dnsmasq-base wireguard-tools";

/// What the builder produced.
#[derive(Clone, Debug)]
pub struct RefVm {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// `qemu-system-x86_64` plus `-initrd`: set as `QemuConfig::qemu`.
    pub qemu_wrapper: PathBuf,
    pub kernel_version: String,
    pub initramfs_bytes: u64,
}

/// `target/weft/refvm/`.
pub fn out_dir() -> PathBuf {
    paths::repo_root().join("target").join("weft").join("refvm")
}

/// The newest `/boot/vmlinuz-VERSION` whose `/lib/modules/VERSION/modules.dep` exists.
pub fn find_kernel() -> Result<(PathBuf, String)> {
    let mut found: Vec<(Vec<u64>, String)> = Vec::new();
    let entries = std::fs::read_dir("/boot").context("reading /boot")?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("vmlinuz-") {
            if Path::new("/lib/modules")
                .join(ver)
                .join("modules.dep")
                .is_file()
            {
                found.push((version_key(ver), ver.to_string()));
            }
        }
    }
    found.sort();
    match found.pop() {
        Some((_, ver)) => Ok((PathBuf::from(format!("/boot/vmlinuz-{ver}")), ver)),
        None => bail!(
            "no /boot/vmlinuz-* with modules in /lib/modules: install the Debian packages \
             ({PACKAGES}), e.g. with .ci/install"
        ),
    }
}

/// Numeric parts of a kernel version, for ordering (`6.1.0-56-amd64` -> 6,1,0,56).
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `modules.dep`: module path -> its dependencies' paths (relative to the version dir).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some((module, deps)) = line.split_once(':') {
            let deps = deps.split_whitespace().map(str::to_string).collect();
            map.insert(module.trim().to_string(), deps);
        }
    }
    map
}

/// The module's name from its path (`kernel/net/bridge/bridge.ko` -> `bridge`); `-` and
/// `_` are the same in module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.softdep` "pre:" entries resolved to module paths: module name -> paths to
/// load before it (a name may be an alias in `modules.alias`, e.g. `crc32c`).
pub fn parse_softdeps(
    softdep: &str,
    alias: &str,
    deps: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let by_name: BTreeMap<String, &String> = deps.keys().map(|k| (module_name(k), k)).collect();
    let resolve = |name: &str| -> Vec<String> {
        let name = name.replace('-', "_");
        if let Some(p) = by_name.get(&name) {
            return vec![(*p).clone()];
        }
        alias
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("alias")
                    && w.next().map(|a| a.replace('-', "_")) == Some(name.clone()))
                .then(|| w.next())
                .flatten()
            })
            .filter_map(|m| by_name.get(&m.replace('-', "_")).map(|p| (*p).clone()))
            .collect()
    };
    let mut map = BTreeMap::new();
    for line in softdep.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() != Some(&"softdep") || w.len() < 3 {
            continue;
        }
        let mut pre = Vec::new();
        let mut in_pre = false;
        for t in &w[2..] {
            match *t {
                "pre:" => in_pre = true,
                "post:" => in_pre = false,
                m if in_pre => pre.extend(resolve(m)),
                _ => {}
            }
        }
        if !pre.is_empty() {
            map.insert(w[1].replace('-', "_"), pre);
        }
    }
    map
}

/// The load order for `wanted`: every module after all it depends on, each once; its
/// soft dependencies ("pre:") before it, marked optional (`true`): an alias may name
/// several modules, some of which need CPU features the guest lacks.
pub fn load_order(
    deps: &BTreeMap<String, Vec<String>>,
    softdeps: &BTreeMap<String, Vec<String>>,
    wanted: &[&str],
) -> Result<Vec<(String, bool)>> {
    let by_name: BTreeMap<String, &String> = deps.keys().map(|k| (module_name(k), k)).collect();
    struct Walk<'a> {
        deps: &'a BTreeMap<String, Vec<String>>,
        softdeps: &'a BTreeMap<String, Vec<String>>,
        order: Vec<(String, bool)>,
        done: BTreeSet<String>,
    }
    impl Walk<'_> {
        fn visit(&mut self, m: &str, optional: bool, depth: usize) -> Result<()> {
            if depth > 64 {
                bail!("modules.dep: dependency cycle through {m}");
            }
            if self.done.contains(m) {
                return Ok(());
            }
            self.done.insert(m.to_string());
            let soft = self
                .softdeps
                .get(&module_name(m))
                .cloned()
                .unwrap_or_default();
            for d in &soft {
                self.visit(d, true, depth + 1)?;
            }
            let hard = self.deps.get(m).cloned().unwrap_or_default();
            for d in &hard {
                self.visit(d, optional, depth + 1)?;
            }
            self.order.push((m.to_string(), optional));
            Ok(())
        }
    }
    let mut walk = Walk {
        deps,
        softdeps,
        order: Vec::new(),
        done: BTreeSet::new(),
    };
    for w in wanted {
        let path = by_name
            .get(&w.replace('-', "_"))
            .with_context(|| format!("module {w} is not in modules.dep (built in?)"))?;
        walk.visit(path, false, 0)?;
    }
    Ok(walk.order)
}

/// The shared libraries (and the dynamic loader) `ldd` names for a program.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .stdin(Stdio::null())
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Absolute paths from `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`); the vDSO has none.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let target = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line.trim(),
        };
        if let Some(p) = target.split_whitespace().next() {
            if p.starts_with('/') {
                libs.push(PathBuf::from(p));
            }
        }
    }
    libs
}

/// One file of the initramfs: its path inside, mode and contents.
struct Entry {
    path: String,
    mode: u32,
    data: Vec<u8>,
}

/// Appends a cpio "newc" header and name (padded to 4 bytes).
fn newc_header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, name: &str) -> Result<()> {
    let size = u32::try_from(size).context("file too large for cpio newc")?;
    let namesize = u32::try_from(name.len() + 1).context("name too long")?;
    let fields = [
        ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0, // uid gid nlink mtime .. check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    Ok(())
}

/// A cpio "newc" archive (what the kernel unpacks as initramfs) of directories and
/// regular files; parents are listed before children.
fn newc_archive(dirs: &BTreeSet<String>, files: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    for d in dirs {
        newc_header(&mut out, ino, 0o040_755, 0, d)?;
        ino += 1;
    }
    for f in files {
        newc_header(&mut out, ino, 0o100_000 | f.mode, f.data.len(), &f.path)?;
        out.extend_from_slice(&f.data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        ino += 1;
    }
    newc_header(&mut out, 0, 0, 0, "TRAILER!!!")?;
    Ok(out)
}

/// Every parent directory of `path` (relative, no leading slash).
fn parents(path: &str, dirs: &mut BTreeSet<String>) {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(p);
        dirs.insert(acc.clone());
    }
}

/// Builds (or reuses, when its inputs did not change) the reference VM in [`out_dir`].
pub fn build(log: &mut dyn FnMut(&str)) -> Result<RefVm> {
    let (kernel_src, version) = find_kernel()?;
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The uncompressed ELF: QEMU boots it through its PVH note, as it boots weft.
    let kernel = dir.join("vmlinux");
    let initramfs = dir.join("initramfs.cpio.gz");
    let qemu_wrapper = dir.join("qemu-ref");
    let stamp_path = dir.join("stamp");

    let modroot = Path::new("/lib/modules").join(&version);
    let dep_text = std::fs::read_to_string(modroot.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modroot.display()))?;
    let read = |name: &str| std::fs::read_to_string(modroot.join(name)).unwrap_or_default();
    let deps = parse_modules_dep(&dep_text);
    let softdeps = parse_softdeps(&read("modules.softdep"), &read("modules.alias"), &deps);
    let order = load_order(&deps, &softdeps, MODULES)?;
    // `?` marks a module whose failure to load is not fatal (see load_order).
    let order_lines: Vec<String> = order
        .iter()
        .map(|(m, optional)| format!("{}{m}", if *optional { "?" } else { "" }))
        .collect();

    let mut tools = Vec::new();
    for (name, path) in TOOLS {
        let p = Path::new(path);
        if !p.is_file() {
            bail!("{name} ({path}) not found: install the Debian packages ({PACKAGES})");
        }
        tools.push(p.to_path_buf());
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox not found: install busybox-static");
    }
    // Reuse when the inputs are the same: kernel version, module list, init script and
    // the sizes of the programs copied in, and the directory itself (the QEMU wrapper
    // names its files by absolute path, so a moved target dir must be rebuilt).
    let mut stamp = format!(
        "{}\n{version}\n{}\n{INIT_SCRIPT}\n",
        dir.display(),
        order_lines.join(" ")
    );
    for p in tools.iter().chain(std::iter::once(&busybox.to_path_buf())) {
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        stamp.push_str(&format!("{} {len}\n", p.display()));
    }
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && initramfs.is_file()
        && kernel.is_file()
        && qemu_wrapper.is_file()
    {
        return Ok(RefVm {
            initramfs_bytes: std::fs::metadata(&initramfs)?.len(),
            kernel,
            initramfs,
            qemu_wrapper,
            kernel_version: version,
        });
    }
    log(&format!(
        "building the reference VM: Linux {version}, {} modules, busybox, {}",
        order.len(),
        TOOLS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
    ));

    let mut files: Vec<Entry> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut add_file = |files: &mut Vec<Entry>, src: &Path, dest: &str, mode: u32| -> Result<()> {
        if !seen.insert(dest.to_string()) {
            return Ok(());
        }
        // fs::read follows symlinks: the archive holds plain files.
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        files.push(Entry {
            path: dest.to_string(),
            mode,
            data,
        });
        Ok(())
    };
    add_file(&mut files, busybox, "bin/busybox", 0o755)?;
    for t in &tools {
        let dest = t.to_string_lossy().trim_start_matches('/').to_string();
        add_file(&mut files, t, &dest, 0o755)?;
        for lib in shared_libraries(t)? {
            let dest = lib.to_string_lossy().trim_start_matches('/').to_string();
            add_file(&mut files, &lib, &dest, 0o755)?;
        }
    }
    for (m, _) in &order {
        add_file(
            &mut files,
            &modroot.join(m),
            &format!("lib/modules/{m}"),
            0o644,
        )?;
    }
    let mut small = |path: &str, text: String, mode: u32| {
        files.push(Entry {
            path: path.to_string(),
            mode,
            data: text.into_bytes(),
        })
    };
    small("init", INIT_SCRIPT.to_string(), 0o755);
    small(
        "etc/modules.order",
        format!("{}\n", order_lines.join("\n")),
        0o644,
    );
    small(
        "etc/passwd",
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".into(),
        0o644,
    );
    small("etc/group", "root:x:0:\nnogroup:x:65534:\n".into(), 0o644);

    let mut dirs: BTreeSet<String> = ["proc", "sys", "dev", "tmp", "run", "bin", "etc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for f in &files {
        parents(&f.path, &mut dirs);
    }
    let archive = newc_archive(&dirs, &files)?;

    let tmp = dir.join("initramfs.cpio.gz.tmp");
    let out = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut gz = Command::new("gzip")
        .arg("-6")
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running gzip")?;
    if let Some(mut stdin) = gz.stdin.take() {
        stdin.write_all(&archive).context("writing to gzip")?;
    }
    let status = gz.wait()?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    std::fs::rename(&tmp, &initramfs)?;
    let bz =
        std::fs::read(&kernel_src).with_context(|| format!("reading {}", kernel_src.display()))?;
    let _ = std::fs::remove_file(&kernel);
    match extract_vmlinux(&bz) {
        Ok(elf) => std::fs::write(&kernel, elf)?,
        Err(e) => {
            // The bzImage boots too, through the firmware and its own decompressor.
            log(&format!(
                "cannot extract the kernel ELF ({e:#}); booting the bzImage (slower)"
            ));
            std::fs::write(&kernel, &bz)?;
        }
    }
    let wrapper = format!(
        "#!/bin/sh\n# The reference VM under the same QEMU as weft: its command line plus the initramfs.\n\
         exec {QEMU_BINARY} -initrd '{}' \"$@\"\n",
        initramfs.display()
    );
    std::fs::write(&qemu_wrapper, wrapper)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&qemu_wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(&stamp_path, stamp)?;
    let initramfs_bytes = std::fs::metadata(&initramfs)?.len();
    log(&format!(
        "reference VM: {} ({} bytes), {} ({initramfs_bytes} bytes)",
        kernel.display(),
        std::fs::metadata(&kernel)?.len(),
        initramfs.display()
    ));
    Ok(RefVm {
        kernel,
        initramfs,
        qemu_wrapper,
        kernel_version: version,
        initramfs_bytes,
    })
}

/// The kernel ELF inside a bzImage (its payload, xz or zstd compressed), so QEMU can
/// boot it directly through its PVH note as it boots weft, without firmware and
/// without decompressing 60 MB under TCG at every boot.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let find = |magic: &[u8]| bz.windows(magic.len()).position(|w| w == magic);
    let (at, tool, args): (usize, &str, &[&str]) = if let Some(i) = find(b"\xfd7zXZ\x00") {
        (i, "xz", &["-dc", "--single-stream"])
    } else if let Some(i) = find(b"\x28\xb5\x2f\xfd") {
        (i, "zstd", &["-dcq"])
    } else {
        bail!("no xz or zstd payload in the bzImage");
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let payload = bz[at..].to_vec();
    // Feed from a thread: the output is far larger than a pipe buffer.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    // zstd complains about the trailing bytes after the frame; the ELF is what counts.
    let elf = out.stdout;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        bail!("{tool} did not yield an ELF ({})", out.status);
    }
    Ok(elf)
}

/// One WireGuard tunnel (`wg0`, UDP 51820) to one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgJob {
    /// This end's private key (base64).
    pub private_key: String,
    /// This end's tunnel address, CIDR.
    pub address: String,
    pub peer_public_key: String,
    /// The peer's underlay (uplink) address.
    pub peer_endpoint: String,
    /// The peer's tunnel address.
    pub peer_address: String,
}

/// What the reference VM is to do: the `wr.*` keys of its `/init` (image/refvm/README.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefJob {
    pub uplink: String,
    pub gateway: Option<String>,
    pub link: String,
    /// Overlay: VNI and the peers' underlay addresses (their tunnel addresses when
    /// the overlay runs over `wireguard`).
    pub vxlan: Option<(u32, Vec<String>)>,
    /// The overlay's underlay encrypted: VXLAN over a WireGuard tunnel to one peer.
    pub wireguard: Option<WgJob>,
    /// dnsmasq records (name, address) in `domain`.
    pub dns: Option<(String, Vec<(String, String)>)>,
    /// nftables DNAT: (uplink port, container address:port).
    pub publish: Vec<(u16, String)>,
    /// IPVS: VIP:port and backends address:port.
    pub vip: Option<(String, Vec<String>)>,
}

impl RefJob {
    /// The kernel command line: a quiet serial console and the job.
    pub fn cmdline(&self, uplink_mac: MacAddr, link_mac: MacAddr) -> String {
        let mut a = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "loglevel=1".into(),
            "panic=-1".into(),
            "tsc=reliable".into(),
            format!("wr.upmac={uplink_mac}"),
            format!("wr.lkmac={link_mac}"),
            format!("wr.up={}", self.uplink),
            format!("wr.link={}", self.link),
        ];
        if let Some(gw) = &self.gateway {
            a.push(format!("wr.gw={gw}"));
        }
        if let Some((vni, peers)) = &self.vxlan {
            a.push(format!("wr.vni={vni}"));
            a.push(format!("wr.peers={}", peers.join(",")));
        }
        if let Some(wg) = &self.wireguard {
            a.push(format!("wr.wgkey={}", wg.private_key));
            a.push(format!("wr.wgip={}", wg.address));
            a.push(format!("wr.wgpeer={}", wg.peer_public_key));
            a.push(format!("wr.wgend={}", wg.peer_endpoint));
            a.push(format!("wr.wgpeerip={}", wg.peer_address));
        }
        if let Some((domain, records)) = &self.dns {
            a.push(format!("wr.domain={domain}"));
            let r: Vec<String> = records.iter().map(|(n, ip)| format!("{n}:{ip}")).collect();
            a.push(format!("wr.dns={}", r.join(",")));
        }
        if !self.publish.is_empty() {
            let r: Vec<String> = self
                .publish
                .iter()
                .map(|(p, to)| format!("{p}:{to}"))
                .collect();
            a.push(format!("wr.publish={}", r.join(",")));
        }
        if let Some((vip, backends)) = &self.vip {
            a.push(format!("wr.vip={vip}"));
            a.push(format!("wr.backends={}", backends.join(",")));
        }
        a.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/a/virtio_net.ko: kernel/a/net_failover.ko kernel/a/failover.ko kernel/v/virtio.ko kernel/v/virtio_ring.ko\n\
kernel/a/net_failover.ko: kernel/a/failover.ko\n\
kernel/a/failover.ko:\n\
kernel/v/virtio.ko: kernel/v/virtio_ring.ko\n\
kernel/v/virtio_ring.ko:\n\
kernel/n/nf-nat.ko: kernel/v/virtio.ko\n\
kernel/c/crc32c-intel.ko:\n\
kernel/c/crc32c_generic.ko:\n";

    #[test]
    fn load_order_puts_dependencies_first_and_once() {
        let deps = parse_modules_dep(DEP);
        let soft = parse_softdeps(
            "# comment\nsoftdep nf-nat pre: crc32c post: nothing\n",
            "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias other x\n",
            &deps,
        );
        assert_eq!(
            soft.get("nf_nat").map(Vec::as_slice),
            Some(
                &[
                    "kernel/c/crc32c-intel.ko".to_string(),
                    "kernel/c/crc32c_generic.ko".to_string()
                ][..]
            )
        );
        let order = load_order(&deps, &soft, &["virtio_net", "nf_nat"]).unwrap();
        let pos = |m: &str| order.iter().position(|o| o.0.ends_with(m)).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        // Soft dependencies load first and may fail; hard ones may not.
        assert!(pos("/crc32c_generic.ko") < pos("/nf-nat.ko"));
        assert!(order[pos("/crc32c-intel.ko")].1);
        assert!(!order[pos("/virtio.ko")].1);
        assert!(pos("/failover.ko") < pos("/net_failover.ko"));
        assert!(pos("/net_failover.ko") < pos("/virtio_net.ko"));
        assert!(pos("/virtio_ring.ko") < pos("/virtio.ko"));
        assert!(pos("/virtio.ko") < pos("/virtio_net.ko"));
        assert!(pos("/virtio.ko") < pos("/nf-nat.ko"));
        assert!(load_order(&deps, &soft, &["no_such_module"]).is_err());
    }

    #[test]
    fn ldd_lines_give_absolute_paths_only() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
\tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f)\n\
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libmnl.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn newc_archive_is_well_formed() {
        let mut dirs = BTreeSet::new();
        parents("usr/sbin/ip", &mut dirs);
        assert_eq!(dirs.iter().collect::<Vec<_>>(), ["usr", "usr/sbin"]);
        let files = [Entry {
            path: "usr/sbin/ip".into(),
            mode: 0o755,
            data: b"hello".to_vec(),
        }];
        let a = newc_archive(&dirs, &files).unwrap();
        assert_eq!(a.len() % 4, 0);
        // Walk the records back: magic, name size, file size, padding.
        let mut off = 0;
        let mut names = Vec::new();
        while off < a.len() {
            assert_eq!(&a[off..off + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[off + 6 + i * 8..off + 14 + i * 8]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6), field(11));
            let name = &a[off + 110..off + 110 + namesize - 1];
            names.push(String::from_utf8(name.to_vec()).unwrap());
            let data_at = (off + 110 + namesize).next_multiple_of(4);
            if names.last().unwrap() == "usr/sbin/ip" {
                assert_eq!(&a[data_at..data_at + size], b"hello");
                assert_eq!(field(1), 0o100_755);
            }
            off = (data_at + size).next_multiple_of(4);
        }
        assert_eq!(names, ["usr", "usr/sbin", "usr/sbin/ip", "TRAILER!!!"]);
    }

    #[test]
    fn cmdline_carries_the_job() {
        let job = RefJob {
            uplink: "192.0.2.11/24".into(),
            gateway: Some("192.0.2.1".into()),
            link: "10.81.0.1/16".into(),
            vxlan: Some((100, vec!["192.0.2.12".into(), "192.0.2.13".into()])),
            dns: Some((
                "bench.weft".into(),
                vec![("web-1.bench.weft".into(), "10.81.128.2".into())],
            )),
            publish: vec![(8080, "10.81.128.2:80".into())],
            vip: Some((
                "192.0.2.100:80".into(),
                vec!["10.81.128.2:80".into(), "10.81.128.3:80".into()],
            )),
            wireguard: Some(WgJob {
                private_key: "CAyFgo3BwHCY+bbD62/BFR7NT5bai2Ie7hqWtrSYgH4=".into(),
                address: "10.99.0.1/24".into(),
                peer_public_key: "BYArR9AKX4RgJyHpl3JjU7o4QCgeAJrepz7S/K/9fyE=".into(),
                peer_endpoint: "192.0.2.12".into(),
                peer_address: "10.99.0.2".into(),
            }),
        };
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let c = job.cmdline(mac, "52:54:00:00:00:02".parse().unwrap());
        for want in [
            "console=ttyS0",
            "wr.upmac=52:54:00:00:00:01",
            "wr.lkmac=52:54:00:00:00:02",
            "wr.up=192.0.2.11/24",
            "wr.gw=192.0.2.1",
            "wr.link=10.81.0.1/16",
            "wr.vni=100",
            "wr.peers=192.0.2.12,192.0.2.13",
            "wr.domain=bench.weft",
            "wr.dns=web-1.bench.weft:10.81.128.2",
            "wr.publish=8080:10.81.128.2:80",
            "wr.vip=192.0.2.100:80",
            "wr.backends=10.81.128.2:80,10.81.128.3:80",
            "wr.wgkey=CAyFgo3BwHCY+bbD62/BFR7NT5bai2Ie7hqWtrSYgH4=",
            "wr.wgip=10.99.0.1/24",
            "wr.wgpeer=BYArR9AKX4RgJyHpl3JjU7o4QCgeAJrepz7S/K/9fyE=",
            "wr.wgend=192.0.2.12",
            "wr.wgpeerip=10.99.0.2",
        ] {
            assert!(c.split(' ').any(|w| w == want), "{want} missing in {c}");
        }
        // The init script reads exactly these keys.
        for key in [
            "upmac", "lkmac", "up", "gw", "link", "vni", "peers", "domain", "dns", "publish",
            "vip", "backends", "wgkey", "wgip", "wgpeer", "wgend", "wgpeerip",
        ] {
            assert!(INIT_SCRIPT.contains(&format!("WR_{key}")), "{key}");
        }
    }
}
