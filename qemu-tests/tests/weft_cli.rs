//! The `weft` binary as the README uses it: `weft boot --uplink tap:.. --link tap:..
//! --control .. --config ..` in a namespace, `weft ctl` against it, and Ctrl-C
//! (SIGINT) stopping the appliance and QEMU with it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_image::netns::Netns;
use weft_qemu_tests::grid::weft_binary;

#[test]
fn boot_with_config_then_ctl_then_ctrl_c() {
    let image = weft_qemu_tests::preflight();
    let weft = weft_binary();
    let ns_name = format!("wqcli{:05x}", std::process::id() & 0xf_ffff);
    let ns = Netns::create(&ns_name).unwrap();
    let dir = std::env::temp_dir().join(format!("weft-qt-{ns_name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("control.sock");
    let cfg = dir.join("weft.toml");
    std::fs::write(&cfg, weft_image::configfile::DEFAULT_CONFIG_TOML).unwrap();

    // Taps absent: QEMU creates them inside the namespace.
    let boot = ns
        .command(weft.to_str().unwrap())
        .args([
            "boot",
            "--uplink",
            "tap:cli0",
            "--link",
            "tap:cli1",
            "--control",
        ])
        .arg(&sock)
        .arg("--config")
        .arg(&cfg)
        .arg("--serial")
        .arg(dir.join("serial.log"))
        .arg("--image")
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let boot_pid = boot.id();
    let mut boot_guard = Kill(boot);

    // `weft ctl status` succeeds once boot has applied the config.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = Command::new(&weft)
            .args(["ctl", "--socket"])
            .arg(&sock)
            .args(["--timeout", "5", "status"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("192.0.2.2/24") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no configured status: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(status.contains("configured"), "{status}");
    let out = Command::new(&weft)
        .args(["ctl", "--json", "--socket"])
        .arg(&sock)
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"10.81.0.1/16\""));

    // Ctrl-C: weft stops QEMU and exits successfully.
    // SAFETY: kill(2) on our own child's pid (not yet reaped).
    unsafe {
        libc::kill(boot_pid as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = boot_guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "weft boot did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = boot_guard.0.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(exit.success(), "weft boot exited with {exit}: {err}");
    assert!(err.contains("greeted after"), "{err}");
    assert!(err.contains("applied"), "{err}");
    // QEMU is gone: its taps (created by QEMU, not persistent) went with it.
    assert!(
        ns.ip(&["link", "show", "cli0"]).is_err(),
        "tap cli0 still exists after weft boot stopped"
    );
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}
