//! Issue 16 end to end: appliances whose sleeve keys come from mutual TLS on TCP 6783
//! (docs/peer-tls.md). The grid's certificates come from openssl, a foreign CA's and
//! another grid's from `weft ca`; configs name the PEM files and reach the appliances
//! through `weft ctl apply`.
//!
//! Nodes 1 and 2 (one grid CA): tshark decodes a TLS 1.3 handshake on TCP 6783, ping and
//! iperf3 cross the sleeve network with nothing in the clear, and the key epochs move on
//! every 2 s under a ping that loses nothing. A third appliance is refused with a
//! certificate of another CA, and with one for another node id; what it sends over
//! sleeve is never accepted. `openssl s_client -tls1_3` completes a handshake with a
//! grid certificate (verify return code 0) and is refused without one, with a foreign
//! one, with one of another grid's CA and with one of the grid's CA for a name of
//! another grid; its keys are `weft ca`'s where the certificate is. Last, iperf3 rounds
//! over the same pair alternate TLS keys (epochs of 2 s and of 120 s) and the grid
//! secret, for the figures beside each other.
//!
//! The three VMs boot once, in parallel, and serve every check.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_image::netns::Netns;
use weft_image::qemu::Machine;
use weft_qemu_tests::grid::{iperf3, on_underlay, set_ctr_mtu, weft_ctl, SLEEVE_MTU};
use weft_qemu_tests::tshark::Tshark;
use weft_qemu_tests::TestVm;

const GRID: &str = "lab";
const PATTERN: &str = "c0ffee15600d";
const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The grid CA and certificates: nodes 1, 2, 4 and 7 of the grid, made with openssl
/// (a TLS stack other than ours makes what the appliance trusts), and `stray`, the
/// grid CA's certificate for `node-5.other.lab.weft.internal` (node 5 of a grid
/// `other.lab`, not of this one); nodes 3 and 9 under a foreign CA of the same grid name
/// and node 9 under the CA of grid `other`, both made with `weft ca` (whose keys
/// `s_client` loads).
struct Pki {
    grid: PathBuf,
    foreign: PathBuf,
    other_grid: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A grid CA as docs/peer-tls.md describes it, and node certificates, with openssl.
fn openssl_grid(dir: &Path, nodes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    openssl_ca(dir);
    for n in nodes {
        openssl_leaf(
            dir,
            &format!("node-{n}"),
            &format!("node-{n}.{GRID}.weft.internal"),
        );
    }
}

/// `ca.key` and `ca.pem` in `dir`: the grid CA.
fn openssl_ca(dir: &Path) {
    let constraint = format!("nameConstraints=critical,permitted;DNS:{GRID}.weft.internal");
    openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", "ca.key"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "30",
            "-out",
            "ca.pem",
            "-subj",
            &format!("/CN=weft grid {GRID}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            &constraint,
        ],
    );
}

/// `<stem>.key` and `<stem>.pem` in `dir`: a certificate of the CA there for `name`,
/// both TLS usages, as a node's.
fn openssl_leaf(dir: &Path, stem: &str, name: &str) {
    let (key, csr, ext, pem) = (
        format!("{stem}.key"),
        format!("{stem}.csr"),
        format!("{stem}.ext"),
        format!("{stem}.pem"),
    );
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n\
                 keyUsage=critical,digitalSignature\n"
        ),
    )
    .unwrap();
    openssl(dir, &["genpkey", "-algorithm", "ed25519", "-out", &key]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={name}"),
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        let grid = dir.join("pki");
        let foreign = dir.join("foreign");
        let other_grid = dir.join("other-grid");
        for d in [&grid, &foreign, &other_grid] {
            let _ = std::fs::remove_dir_all(d);
        }
        openssl_grid(&grid, &[1, 2, 4, 7]);
        openssl_leaf(
            &grid,
            "stray",
            &format!("node-5.other.{GRID}.weft.internal"),
        );
        weft_image::ca::init(GRID, &foreign, 30).expect("weft ca init (foreign)");
        for n in [3, 9] {
            weft_image::ca::issue(n, &foreign, 30).expect("weft ca issue (foreign)");
        }
        weft_image::ca::init("other", &other_grid, 30).expect("weft ca init (other grid)");
        weft_image::ca::issue(9, &other_grid, 30).expect("weft ca issue (other grid)");
        // OpenSSL 3.0 dates a certificate from the second it signs it (no backdating
        // option before 3.4), and an appliance's wall clock is the RTC read in whole
        // seconds at boot: up to a second behind this one. Two seconds on, every
        // certificate is valid on the appliances' clocks too.
        std::thread::sleep(std::time::Duration::from_secs(2));
        Pki {
            grid,
            foreign,
            other_grid,
        }
    }
}

/// How a node's config file gets its keys.
enum Keys<'a> {
    /// `auth = "tls"` with the CA and node certificate under `dir`, sleeve epochs of
    /// `rekey_secs`.
    Tls {
        dir: &'a Path,
        cert_node: u8,
        rekey_secs: u32,
    },
    Secret,
}

/// The config file of node `n` on `vm` (uplink `192.0.2.1<vm's number>`), with one
/// sleeve network and `peers` (node `p` at `192.0.2.1<p>`).
fn config_file(vm: &TestVm, n: u8, keys: Keys<'_>, peers: &[u8]) -> PathBuf {
    let at = vm.test.rsplit('w').next().unwrap_or("0");
    let mut text = format!(
        "[uplink]\naddress = \"192.0.2.1{at}/24\"\ngateway = \"192.0.2.1\"\n\n\
         [link]\naddress = \"10.81.0.{n}/16\"\n\n[grid]\nnode = {n}\n"
    );
    match keys {
        Keys::Tls {
            dir,
            cert_node,
            rekey_secs,
        } => {
            text += &format!(
                "auth = \"tls\"\n\n[grid.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\n\
                 key_file = \"{}\"\nrekey_secs = {rekey_secs}\n",
                dir.join("ca.pem").display(),
                dir.join(format!("node-{cert_node}.pem")).display(),
                dir.join(format!("node-{cert_node}.key")).display(),
            );
        }
        Keys::Secret => text += &format!("secret = \"{SECRET}\"\n"),
    }
    text += "\n[[networks]]\nname = \"grid\"\nvni = 100\nmode = \"sleeve\"\n";
    for p in peers {
        text += &format!(
            "\n[[peers]]\nnode = {p}\naddress = \"192.0.2.1{p}\"\nnetworks = [\"grid\"]\n"
        );
    }
    let path = vm.dir.join(format!("node-{n}.toml"));
    std::fs::write(&path, text).expect("writing the config file");
    path
}

fn apply_file(vm: &TestVm, file: &Path) {
    let (code, out, err) = weft_ctl(&vm.control, &["apply", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{}: weft ctl apply: {out}{err}", vm.test);
}

fn status(vm: &TestVm) -> Value {
    match vm.client().call("status", None) {
        Ok(r) => r
            .outcome
            .unwrap_or_else(|e| panic!("{}: status: {e}", vm.test)),
        Err(e) => panic!("{}: status: {e}", vm.test),
    }
}

fn peer_tls(vm: &TestVm) -> Value {
    status(vm)["peer_tls"].clone()
}

fn tls_peer(vm: &TestVm, node: u8) -> Value {
    let s = peer_tls(vm);
    s["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node"] == node).cloned())
        .unwrap_or_else(|| panic!("{}: no peer {node} in {s}", vm.test))
}

fn counter(v: &Value, key: &str) -> u64 {
    v["counters"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {key} in {v}"))
}

/// Polls until `done` holds on `vm`'s status, or `secs` pass; the last status.
fn wait_for(vm: &TestVm, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = status(vm);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `w3`, at node 3's address, takes node `as_node`'s certificate from `dir` and dials
/// `w1`: `w1` moves its `refusal` counter and keeps no channel to node 3.
fn node_3_is_refused(w1: &TestVm, w3: &TestVm, dir: &Path, as_node: u8, refusal: &str) {
    let before = peer_tls(w1);
    let keys = Keys::Tls {
        dir,
        cert_node: as_node,
        rekey_secs: 2,
    };
    apply_file(w3, &config_file(w3, as_node, keys, &[1]));
    let after = wait_for(w1, 60, |s| {
        counter(&s["peer_tls"], refusal) > counter(&before, refusal)
    });
    assert!(
        counter(&after["peer_tls"], refusal) > counter(&before, refusal),
        "{refusal}: {}",
        after["peer_tls"]
    );
    assert!(!established(&after, 3), "{}", after["peer_tls"]);
}

fn established(s: &Value, node: u8) -> bool {
    s["peer_tls"]["peers"].as_array().is_some_and(|a| {
        a.iter()
            .any(|p| p["node"] == node && p["state"] == "established")
    })
}

fn ping(ns: &Netns, to: &str, count: u32, interval: &str) -> (bool, String) {
    let out = ns
        .command("ping")
        .args(["-n", "-c", &count.to_string(), "-i", interval, "-w", "30"])
        .args(["-p", PATTERN, to])
        .output()
        .expect("running ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `openssl s_client -tls1_3` from `ns` to `addr:6783` with `args`; its whole output
/// (it waits 3 s before closing, so an alert after the handshake arrives).
fn s_client(ns: &Netns, addr: &str, ca: &Path, args: &[String]) -> String {
    let cmd = format!(
        "sleep 3 | timeout 20 openssl s_client -connect {addr}:6783 -tls1_3 -CAfile {} \
         -verify_hostname node-2.{GRID}.weft.internal -servername node-2.{GRID}.weft.internal {}",
        ca.display(),
        args.join(" ")
    );
    let out = ns
        .command("sh")
        .args(["-c", &cmd])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pattern_bytes() -> Vec<u8> {
    (0..PATTERN.len() / 2)
        .map(|i| u8::from_str_radix(&PATTERN[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn mutual_tls_keys_the_sleeve_and_refuses_strangers() {
    let test = "peer_tls";
    let ([w1, w2, w3], ul) = on_underlay(
        test,
        Machine::Q35,
        ["10.81.128.11/16", "10.81.128.12/16", "10.81.128.13/16"],
        None,
    );
    set_ctr_mtu(&[&w1, &w2, &w3], SLEEVE_MTU);
    let pki = Pki::create(&w1.dir);
    let tls = |n: u8| Keys::Tls {
        dir: &pki.grid,
        cert_node: n,
        rekey_secs: 2,
    };

    // Nodes 1 and 2, one grid CA; node 1 also lists node 3 (refused below).
    let cap_path = w1.dir.join("tls.pcap");
    let mut cap = ul.capture(&cap_path).expect("tcpdump on the underlay");
    apply_file(&w1, &config_file(&w1, 1, tls(1), &[2, 3]));
    apply_file(&w2, &config_file(&w2, 2, tls(2), &[1]));
    let config = w1.client().call("config", None).unwrap().outcome.unwrap();
    assert_eq!(config["grid"]["tls"]["key_pem"], "set", "{config}");
    assert!(!config.to_string().contains("PRIVATE KEY"), "{config}");
    let s1 = wait_for(&w1, 60, |s| established(s, 2));
    assert!(
        established(&s1, 2),
        "node 1 never established with node 2: {s1}"
    );
    let s2 = wait_for(&w2, 30, |s| established(s, 1));
    assert!(established(&s2, 1), "{s2}");
    let p12 = tls_peer(&w1, 2);
    assert_eq!(p12["subject"], "CN=node-2.lab.weft.internal", "{p12}");
    assert!(
        p12["dialer"].as_bool().unwrap(),
        "the lower id dials: {p12}"
    );
    let handshake_ms = p12["handshake_ms"].as_u64().unwrap_or(0);
    eprintln!("{test}: handshake node 1 -> node 2 under TCG: {handshake_ms} ms");

    // Traffic, and epochs moving on every 2 s without a lost ping.
    let (c1, c2, c3) = (w1.ctr(), w2.ctr(), w3.ctr());
    let (ok, out) = ping(c1, "10.81.128.12", 3, "0.3");
    assert!(ok, "node 1 -> node 2 over TLS-keyed sleeve: {out}");
    let epoch = |vm: &TestVm, node: u8| tls_peer(vm, node)["tx_epoch"].as_u64().unwrap_or(0);
    let (e1, e2) = (epoch(&w1, 2), epoch(&w2, 1));
    let (ok, out) = ping(c1, "10.81.128.12", 24, "0.25");
    assert!(
        ok && out.contains(" 0% packet loss"),
        "pings lost across rekeys: {out}"
    );
    let (f1, f2) = (epoch(&w1, 2), epoch(&w2, 1));
    assert!(
        f1 >= e1 + 2 && f2 >= e2 + 2,
        "epochs {e1}->{f1}, {e2}->{f2}"
    );
    let p12 = tls_peer(&w1, 2);
    assert!(
        p12["last_rekey_ms"].as_u64().unwrap_or(u64::MAX) < 5000,
        "{p12}"
    );
    let r = iperf3(c2, c1, "10.81.128.12", 3, false).unwrap_or_else(|e| panic!("iperf3: {e:#}"));
    assert!(r.sent_bytes > 0 && r.received_bytes > 0, "{r:?}");
    cap.stop();

    // On the wire: a TLS 1.3 handshake on TCP 6783, sleeve on UDP 6783, nothing clear.
    let bytes = std::fs::read(&cap_path).expect("reading the capture");
    let pattern = pattern_bytes();
    assert!(
        !bytes.windows(pattern.len()).any(|w| w == pattern),
        "the echo payload pattern is in the clear on the underlay"
    );
    let decoded = Tshark::file(&cap_path).decode_as("tcp.port==6783,tls");
    let tshark = |filter: &str, field: &str| -> Vec<String> {
        decoded
            .lines(filter, &[field])
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let hellos = tshark(
        "tcp.port == 6783 && tls.handshake.type == 2",
        "tls.handshake.extensions.supported_version",
    );
    assert!(
        hellos.iter().any(|v| v.contains("0x0304")),
        "no TLS 1.3 ServerHello on TCP 6783: {hellos:?}"
    );
    let suites = tshark(
        "tcp.port == 6783 && tls.handshake.type == 2",
        "tls.handshake.ciphersuite",
    );
    assert!(suites.iter().any(|s| s.contains("0x1303")), "{suites:?}");
    let sleeve = tshark("udp.dstport == 6783", "frame.number");
    assert!(sleeve.len() >= 20, "{} sleeve datagrams", sleeve.len());
    assert!(
        tshark("udp.port == 4789", "frame.number").is_empty(),
        "VXLAN on a sleeve network"
    );

    // A third appliance as node 3 with a certificate of another CA: node 1 refuses it.
    node_3_is_refused(&w1, &w3, &pki.foreign, 3, "refused_unknown_ca");
    let (ok, out) = ping(c3, "10.81.128.11", 3, "0.3");
    assert!(!ok, "node 3 (foreign CA) reached node 1: {out}");

    // Node 3 sealing with a grid secret instead: node 1 has no key for it and opens
    // nothing it sends.
    let opened = |vm: &TestVm| {
        status(vm)["overlay"]["sleeve"]["opened_frames"]
            .as_u64()
            .unwrap_or(0)
    };
    let unkeyed = |vm: &TestVm| {
        let s = status(vm);
        s["overlay"]["sleeve"]["drops"]["key_unavailable"]
            .as_u64()
            .unwrap_or(0)
            + s["overlay"]["sleeve"]["drops"]["auth_failed"]
                .as_u64()
                .unwrap_or(0)
    };
    apply_file(&w3, &config_file(&w3, 3, Keys::Secret, &[1]));
    let (opened_before, refused_before) = (opened(&w1), unkeyed(&w1));
    let (ok, out) = ping(c3, "10.81.128.11", 3, "0.3");
    assert!(!ok, "node 3 (secret) reached node 1 (tls): {out}");
    let refused = unkeyed(&w1) - refused_before;
    assert!(refused >= 1, "node 3's sleeve datagrams were not refused");
    // What node 1 opened meanwhile came from node 2 only.
    let from_2 = opened(&w1) - opened_before;
    eprintln!("{test}: node 1 refused {refused} datagrams of node 3, opened {from_2} (node 2)");

    // Node 3's address with a certificate of the grid for node 4: not node 3.
    node_3_is_refused(&w1, &w3, &pki.grid, 4, "refused_wrong_name");

    // openssl s_client against node 2, from node 1's host namespace.
    let host = w1.host();
    let ca = pki.grid.join("ca.pem");
    let before = peer_tls(&w2);
    let cert_args = |dir: &Path, stem: &str| {
        vec![
            format!("-cert {}", dir.join(format!("{stem}.pem")).display()),
            format!("-key {}", dir.join(format!("{stem}.key")).display()),
        ]
    };
    let out = s_client(host, "192.0.2.12", &ca, &cert_args(&pki.grid, "node-7"));
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(
        out.contains("TLSv1.3") && out.contains("TLS_CHACHA20_POLY1305_SHA256"),
        "{out}"
    );
    let out = s_client(host, "192.0.2.12", &ca, &[]);
    assert!(
        out.to_lowercase().contains("certificate required"),
        "without a certificate: {out}"
    );
    // A foreign CA of the same grid name, and the CA of grid `other`, with keys from
    // `weft ca`: neither chains to the grid CA.
    for (dir, what) in [
        (&pki.foreign, "a foreign"),
        (&pki.other_grid, "another grid's"),
    ] {
        let out = s_client(host, "192.0.2.12", &ca, &cert_args(dir, "node-9"));
        assert!(!out.contains("Could not read"), "{what} key: {out}");
        // The foreign CA bears the grid CA's name, so webpki checks its signature
        // against the grid CA's key and fails it (RFC 8446 answers that with
        // decrypt_error); the other grid's CA is simply unknown.
        let lower = out.to_lowercase();
        assert!(
            lower.contains("unknown ca") || lower.contains("alert decrypt error"),
            "{what} certificate: {out}"
        );
    }
    // The grid CA's certificate for a node of another grid: it chains, names no node
    // of this grid.
    s_client(host, "192.0.2.12", &ca, &cert_args(&pki.grid, "stray"));
    let after = wait_for(&w2, 20, |s| {
        counter(&s["peer_tls"], "refused_unknown_ca") >= counter(&before, "refused_unknown_ca") + 2
            && counter(&s["peer_tls"], "refused_wrong_grid")
                > counter(&before, "refused_wrong_grid")
    })["peer_tls"]
        .clone();
    // Node 7's certificate is the grid's, but node 7 is no peer of node 2.
    assert_eq!(
        counter(&after, "refused_not_a_peer"),
        counter(&before, "refused_not_a_peer") + 1,
        "{after}"
    );
    assert_eq!(
        counter(&after, "refused_no_certificate"),
        counter(&before, "refused_no_certificate") + 1,
        "{after}"
    );
    assert_eq!(
        counter(&after, "refused_unknown_ca"),
        counter(&before, "refused_unknown_ca") + 2,
        "{after}"
    );
    assert_eq!(
        counter(&after, "refused_wrong_grid"),
        counter(&before, "refused_wrong_grid") + 1,
        "{after}"
    );
    assert!(
        established(&status(&w2), 1),
        "node 1's channel survived: {after}"
    );

    // iperf3 over sleeve with TLS-derived keys (epochs every 2 s as above, and the
    // default 120 s) beside the grid secret: the pair re-applied in each mode, rounds
    // alternating the order, no capture running (docs/PERFORMANCE.md).
    const ROUNDS: usize = 3;
    let modes: [(&str, Option<u32>); 3] = [
        ("TLS keys, epochs of 2 s", Some(2)),
        ("TLS keys, epochs of 120 s", Some(120)),
        ("grid secret", None),
    ];
    let mut mbit: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..ROUNDS {
        for i in (0..modes.len()).map(|i| (i + round) % modes.len()) {
            let (name, rekey) = modes[i];
            let keys = |n: u8| match rekey {
                Some(rekey_secs) => Keys::Tls {
                    dir: &pki.grid,
                    cert_node: n,
                    rekey_secs,
                },
                None => Keys::Secret,
            };
            apply_file(&w1, &config_file(&w1, 1, keys(1), &[2]));
            apply_file(&w2, &config_file(&w2, 2, keys(2), &[1]));
            if rekey.is_some() {
                let s = wait_for(&w1, 60, |s| established(s, 2));
                assert!(established(&s, 2), "{name}: {}", s["peer_tls"]);
            }
            let (ok, out) = ping(c1, "10.81.128.12", 3, "0.3");
            assert!(ok, "{name}: {out}");
            let r = iperf3(c2, c1, "10.81.128.12", 5, false)
                .unwrap_or_else(|e| panic!("{name}: iperf3: {e:#}"));
            mbit[i].push(r.mbit_per_s);
        }
    }
    for ((name, _), runs) in modes.iter().zip(&mbit) {
        let mean = runs.iter().sum::<f64>() / runs.len() as f64;
        eprintln!("{test}: iperf3 over sleeve, {name}: {runs:.1?} Mbit/s, mean {mean:.1}");
    }
}
