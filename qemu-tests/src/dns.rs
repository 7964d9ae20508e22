//! DNS fixtures for the QEMU tests: a resolver namespace on an appliance's uplink
//! segment running `dnsmasq` instances (each killed on drop, also while a panic
//! unwinds), `dig` runs from a namespace read into what the tests assert, and raw
//! datagrams to port 53 (python3) for the malformed-query checks. Everything lives in
//! namespaces it creates; nothing is sent anywhere else.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_image::netns::{run, Netns};

use crate::TestVm;

/// A namespace on `vm`'s uplink segment (the "upstream side") with `addresses`.
pub struct ResolverNs {
    pub addresses: Vec<String>,
    pub ns: Netns,
}

impl ResolverNs {
    /// Namespace `{vm prefix}-dns` whose `eth0` is on the uplink bridge, carrying
    /// `cidrs` (e.g. `192.0.2.53/24`).
    pub fn attach(vm: &TestVm, cidrs: &[&str]) -> Result<ResolverNs> {
        let prefix = vm
            .topo
            .names
            .hv_ns
            .strip_suffix("-hv")
            .unwrap_or(&vm.topo.names.hv_ns);
        let name = format!("{prefix}-dns");
        let ns = Netns::create(&name)?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        let hv = &vm.topo.hv;
        let hv_end = "dnsh";
        hv.ip(&[
            "link", "add", hv_end, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])
        .context("veth for the resolver namespace")?;
        hv.ip(&[
            "link",
            "set",
            hv_end,
            "master",
            &vm.topo.names.uplink_bridge,
        ])?;
        hv.ip(&["link", "set", hv_end, "up"])?;
        for cidr in cidrs {
            ns.ip(&["addr", "add", cidr, "dev", "eth0"])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(ResolverNs {
            addresses: cidrs
                .iter()
                .map(|c| c.split('/').next().unwrap_or(c).to_string())
                .collect(),
            ns,
        })
    }
}

/// One `dnsmasq` serving fixed records on one address; killed (and reaped) on drop.
pub struct Dnsmasq {
    pub address: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts `dnsmasq` on `address` port 53 inside `ns`, answering every name under
    /// each `(domain, ipv4)` of `records` (`--address=/domain/ipv4`) and refusing to
    /// recurse (no upstreams of its own). Returns once it answers.
    pub fn start(ns: &Netns, address: &str, records: &[(&str, &str)]) -> Result<Dnsmasq> {
        let mut args = vec!["--log-queries".to_string()];
        args.extend(
            records
                .iter()
                .map(|(domain, ip)| format!("--address=/{domain}/{ip}")),
        );
        let probe = records.first().map(|(d, _)| *d).unwrap_or("localhost");
        Dnsmasq::start_with(ns, address, &args, probe)
    }

    /// `dnsmasq` on `address` with `args` added (e.g. `--addn-hosts=FILE`); returns
    /// once `probe` gets an answer. Queries are logged only if `args` ask for it.
    pub fn start_with(ns: &Netns, address: &str, args: &[String], probe: &str) -> Result<Dnsmasq> {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "weft-dnsmasq-{}-{}-{address}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--log-facility=-",
            "--cache-size=0",
        ])
        .arg(format!("--listen-address={address}"))
        .args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting dnsmasq (apt-get install dnsmasq-base)")?;
        let mut d = Dnsmasq {
            address: address.to_string(),
            child: Some(child),
            log,
        };
        // Ready when it answers a query of its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("dnsmasq on {address} exited ({status}):\n{}", d.log_text());
                }
            }
            if dig(ns, address, &[probe, "+time=1", "+tries=1"]).is_ok() {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                bail!("dnsmasq on {address} does not answer:\n{}", d.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What dnsmasq logged (its queries).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Queries it logged so far.
    pub fn queries(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" query["))
            .count()
    }

    /// Stops it now (the upstream is then down: nothing listens on its address).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("---- dnsmasq {} ----\n{}", self.address, self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One resource record as `dig` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// What one `dig` run saw.
#[derive(Debug, Clone)]
pub struct DigReply {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, `FORMERR`, ...
    pub status: String,
    /// Header flags: `qr`, `aa`, `tc`, `rd`, `ra`.
    pub flags: Vec<String>,
    pub answers: Vec<Rr>,
    pub authority: Vec<Rr>,
    /// `UDP` or `TCP`, from the `;; SERVER:` line.
    pub transport: String,
    pub raw: String,
}

impl DigReply {
    pub fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// The data of the answers of type `rtype`, in order.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect()
    }

    fn parse(raw: &str) -> Result<DigReply> {
        let mut status = None;
        let mut flags = Vec::new();
        let mut answers = Vec::new();
        let mut authority = Vec::new();
        let mut transport = String::new();
        let mut section = "";
        for line in raw.lines() {
            if let Some(rest) = line.split("status: ").nth(1) {
                status = rest.split(',').next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix(";; flags: ") {
                flags = rest
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
            } else if let Some(rest) = line.strip_prefix(";; SERVER: ") {
                transport = rest
                    .rsplit('(')
                    .next()
                    .unwrap_or("")
                    .trim_end_matches(')')
                    .to_string();
            } else if line.starts_with(";; ANSWER SECTION") {
                section = "answer";
            } else if line.starts_with(";; AUTHORITY SECTION") {
                section = "authority";
            } else if line.starts_with(";;") || line.trim().is_empty() {
                section = "";
            } else if !section.is_empty() && !line.starts_with(';') {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 5 {
                    let rr = Rr {
                        name: f[0].to_string(),
                        ttl: f[1].parse().unwrap_or(0),
                        rtype: f[3].to_string(),
                        data: f[4..].join(" "),
                    };
                    if section == "answer" {
                        answers.push(rr);
                    } else {
                        authority.push(rr);
                    }
                }
            }
        }
        let Some(status) = status else {
            bail!("no reply header in dig's output:\n{raw}");
        };
        Ok(DigReply {
            status,
            flags,
            answers,
            authority,
            transport,
            raw: raw.to_string(),
        })
    }
}

impl fmt::Display for DigReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// `dig @server ARGS...` inside `ns` (one try, 5 s, unless `args` say otherwise);
/// an error when no reply came.
pub fn dig(ns: &Netns, server: &str, args: &[&str]) -> Result<DigReply> {
    let out = ns
        .command("dig")
        .arg(format!("@{server}"))
        .args(["+tries=1", "+time=5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running dig (apt-get install bind9-dnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "dig @{server} {} failed ({}):\n{text}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    DigReply::parse(&text)
}

/// Sends each of `datagrams` from one UDP socket in `ns` to `server`:53 and waits up
/// to `wait` for a reply to each; the replies (None: none came).
pub fn raw_udp(
    ns: &Netns,
    server: &str,
    datagrams: &[Vec<u8>],
    wait: Duration,
) -> Result<Vec<Option<Vec<u8>>>> {
    const SCRIPT: &str = r#"
import socket, sys
server, wait = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(wait)
for h in sys.argv[3:]:
    s.sendto(bytes.fromhex(h[1:]), (server, 53))
    try:
        print(s.recv(65535).hex())
    except socket.timeout:
        print("-")
"#;
    let mut cmd = ns.command("python3");
    cmd.args(["-c", SCRIPT, server, &format!("{}", wait.as_secs_f64())]);
    // A leading 'x' so an empty datagram is still an argument.
    for d in datagrams {
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        cmd.arg(format!("x{hex}"));
    }
    let out = run(&mut cmd).context("sending raw datagrams")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let replies = text
        .lines()
        .map(|l| {
            if l == "-" {
                None
            } else {
                (0..l.len() / 2)
                    .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            }
        })
        .collect::<Vec<_>>();
    if replies.len() != datagrams.len() {
        bail!(
            "expected {} lines from the sender, got:\n{text}",
            datagrams.len()
        );
    }
    Ok(replies)
}

/// Runs `dig` from `ns` until `want` holds for its reply (or `timeout` passes);
/// the last reply.
pub fn dig_until(
    ns: &Netns,
    server: &str,
    args: &[&str],
    timeout: Duration,
    want: impl Fn(&DigReply) -> bool,
) -> Result<DigReply> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = dig(ns, server, args);
        match &r {
            Ok(reply) if want(reply) => return r,
            _ if Instant::now() >= deadline => return r,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
