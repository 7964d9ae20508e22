//! Issue 6 end to end in one booted appliance: ports published on the uplink address
//! reach a server in the container namespace with the client's real address (TCP and
//! UDP, with socat), containers reach a server in the uplink-side namespace as the
//! uplink address with distinct masquerade ports, hairpin to the host's own published
//! port, refused runtime publishes that change nothing, and (issue 7) a service VIP
//! answered by proxy ARP and translated to its backend.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_image::configfile;
use weft_image::netns::Netns;
use weft_qemu_tests::{TestVm, LINK_ADDR, UPLINK_ADDR};

const CTR_ADDR: &str = "10.81.128.2";
const HOST_ADDR: &str = "192.0.2.1";

/// A background process, killed and reaped on drop (also while a test panics).
struct Server(Child);

impl Server {
    fn start(ns: &Netns, args: &[&str]) -> Server {
        let child = ns
            .command("socat")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `socat` as a client in `ns` with `input` on stdin; its stdout, trimmed.
fn socat(ns: &Netns, input: &str, target: &str) -> String {
    let mut c: Command = ns.command("socat");
    // -t 5: after stdin's EOF socat half-closes and by default waits only 0.5 s for
    // the answer, which an emulated (TCG) path under load can exceed.
    c.args(["-t", "5", "-T", "5", "-", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("socat client starts");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().expect("socat client ends");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Retries `f` until it returns a non-empty answer (the server may still be starting,
/// ARP still resolving), for up to 20 s.
fn until_answer(f: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = f();
        if !out.is_empty() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn published_ports_masquerade_and_hairpin() {
    let vm = TestVm::boot("publish");
    let mut cfg = configfile::default_config();
    cfg.publish = serde_json::from_value(json!([
        {"proto": "tcp", "host_port": 8080, "container_address": CTR_ADDR, "container_port": 8080},
        {"proto": "udp", "host_port": 5353, "container_address": CTR_ADDR, "container_port": 5353},
    ]))
    .unwrap();
    let mut c = vm.client();
    assert!(c.apply(&cfg).unwrap().changed);
    drop(c);
    vm.assert_pings();

    // Servers that answer with the address (and port) they see.
    let _tcp = Server::start(
        vm.ctr(),
        &[
            "TCP-LISTEN:8080,fork,reuseaddr",
            "SYSTEM:echo $SOCAT_PEERADDR",
        ],
    );
    let _udp = Server::start(
        vm.ctr(),
        &["UDP-RECVFROM:5353,fork", "SYSTEM:echo $SOCAT_PEERADDR"],
    );
    let _outside = Server::start(
        vm.host(),
        &[
            "TCP-LISTEN:9090,fork,reuseaddr,backlog=128",
            "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT",
        ],
    );

    // 1. TCP published port: the container sees the client's real address.
    let target = format!("TCP:{UPLINK_ADDR}:8080");
    let seen = until_answer(|| socat(vm.host(), "", &target));
    assert_eq!(seen, HOST_ADDR, "TCP via the published port");

    // 2. UDP published port, both ways.
    let target = format!("UDP:{UPLINK_ADDR}:5353");
    let seen = until_answer(|| socat(vm.host(), "hello\n", &target));
    assert_eq!(seen, HOST_ADDR, "UDP via the published port");

    // 3. Masquerade: the outside server sees the uplink address; 50 parallel
    // connections get 50 distinct ports from 32768-60999.
    let target = format!("TCP:{HOST_ADDR}:9090");
    let first = until_answer(|| socat(vm.ctr(), "", &target));
    assert!(
        first.starts_with(&format!("{UPLINK_ADDR} ")),
        "egress seen as {first:?}"
    );
    let seen: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(|| socat(vm.ctr(), "", &target)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports = Vec::new();
    for line in &seen {
        let (addr, port) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("egress answer {line:?} (all: {seen:?})"));
        assert_eq!(addr, UPLINK_ADDR);
        let port: u16 = port.parse().unwrap();
        assert!((32768..=60999).contains(&port), "masquerade port {port}");
        ports.push(port);
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 50, "distinct masquerade ports: {seen:?}");

    // 4. Hairpin: the container reaches its own published port on the host address;
    // the server sees the node address (so the reply comes back through the NAT).
    let target = format!("TCP:{UPLINK_ADDR}:8080");
    let seen = until_answer(|| socat(vm.ctr(), "", &target));
    assert_eq!(seen, LINK_ADDR, "hairpin");

    // 5. A service VIP in the container subnet (issue 7): proxy ARP and DNAT to its
    // backend, here the container's own server.
    let mut c = vm.client();
    let reply = c
        .call(
            "service-add",
            Some(
                json!({"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                "backends": [{"address": CTR_ADDR, "port": 8080}]}),
            ),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    drop(c);
    let seen = until_answer(|| socat(vm.ctr(), "", "TCP:10.81.255.1:80"));
    // The backend sees the node address (the NAT's source for service traffic from
    // the grid), so its reply comes back through the appliance.
    assert_eq!(seen, LINK_ADDR, "through the VIP");

    // 6. Refused publishes name the field and change nothing.
    let mut c = vm.client();
    let before = c.config().unwrap();
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "udp", "host_port": 53, "container_address": CTR_ADDR, "container_port": 53})),
        )
        .unwrap();
    let err = reply.outcome.expect_err("port 53 is refused");
    assert_eq!(err.field.as_deref(), Some("host_port"), "{err:?}");
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "tcp", "host_port": 8080, "container_address": "10.81.128.9", "container_port": 80})),
        )
        .unwrap();
    let err = reply.outcome.expect_err("a duplicate is refused");
    assert_eq!(err.field.as_deref(), Some("host_port"), "{err:?}");
    assert_eq!(c.config().unwrap(), before);

    // Runtime add and remove take effect.
    let reply = c
        .call(
            "publish-add",
            Some(json!({"proto": "tcp", "host_port": 8081, "container_address": CTR_ADDR, "container_port": 8080})),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    drop(c);
    let target = format!("TCP:{UPLINK_ADDR}:8081");
    assert_eq!(until_answer(|| socat(vm.host(), "", &target)), HOST_ADDR);
    let mut c = vm.client();
    let reply = c
        .call(
            "publish-remove",
            Some(json!({"proto": "tcp", "host_port": 8081})),
        )
        .unwrap();
    assert!(reply.outcome.is_ok(), "{:?}", reply.raw);
    let flows = c
        .call("flows", Some(json!({"limit": 500, "proto": "tcp"})))
        .unwrap();
    let flows = flows.outcome.expect("flows");
    assert!(!flows.as_array().unwrap().is_empty(), "{flows}");
    drop(c);
    assert_eq!(socat(vm.host(), "", &target), "", "removed port still open");

    let st = vm.status();
    let nat = st.nat.expect("nat status");
    assert!(nat.dnat_flows >= 3, "{nat:?}");
    assert!(nat.snat_flows >= 51, "{nat:?}");
    assert!(nat.hairpin_flows >= 1, "{nat:?}");
    assert!(nat.router.forwarded > 0, "{nat:?}");
}
