//! Load generators of the benchmark, all run inside namespaces the bench created:
//! a connections/s client and a one-byte TCP server (Rust threads that enter a network
//! namespace with setns), `iperf3` TCP throughput and `dnsperf` queries/s. Every loop
//! is bounded in time and stops by itself; every process started is reaped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// Moves the calling thread into the network namespace `ns` (`/run/netns/NAME`);
/// sockets it opens afterwards live there.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns({ns})"))
}

/// A TCP server in a namespace: every connection gets one byte, then is closed.
/// Stopped (and joined) on drop.
pub struct ByteServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub accepted: Arc<AtomicU64>,
}

impl ByteServer {
    pub fn start(ns: &str, port: u16) -> Result<ByteServer> {
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, acc2, ns) = (stop.clone(), accepted.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            let listener = match enter_netns(&ns).and_then(|()| {
                let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                        let _ = s.write_all(b"w");
                        acc2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("the byte server did not start")??;
        Ok(ByteServer {
            stop,
            thread: Some(thread),
            accepted,
        })
    }
}

impl Drop for ByteServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: connect, read the byte, close.
fn one_connection(to: SocketAddr, timeout: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut b = [0u8; 1];
    let n = s.read(&mut b)?;
    if n != 1 {
        bail!("closed without the byte");
    }
    Ok(())
}

/// Tries single connections from `ns` to `to` until one works (the path is up) or
/// `within` passes.
pub fn wait_connectable(ns: &str, to: SocketAddr, within: Duration) -> Result<()> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<()> {
        enter_netns(&ns)?;
        let deadline = Instant::now() + within;
        loop {
            match one_connection(to, Duration::from_secs(2)) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("no connection from {ns} to {to} within {within:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .join()
    .map_err(|_| anyhow::anyhow!("connect probe thread panicked"))?
}

/// What a connections/s run measured.
#[derive(Clone, Copy, Debug)]
pub struct ConnRate {
    pub ok: u64,
    pub failed: u64,
    pub per_second: f64,
}

/// `parallel` workers in `ns`, each connecting to `to`, reading one byte and closing,
/// for `duration`; completed connections per second.
pub fn connections_per_second(
    ns: &str,
    to: SocketAddr,
    parallel: usize,
    duration: Duration,
) -> Result<ConnRate> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for _ in 0..parallel.max(1) {
        let (ok, failed, ns) = (ok.clone(), failed.clone(), ns.to_string());
        workers.push(std::thread::spawn(move || -> Result<()> {
            enter_netns(&ns)?;
            while Instant::now() < deadline {
                match one_connection(to, Duration::from_secs(2)) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
            Ok(())
        }));
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("connection worker panicked"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if ok == 0 {
        bail!("no connection to {to} completed ({failed} failed)");
    }
    Ok(ConnRate {
        ok,
        failed,
        per_second: ok as f64 / elapsed,
    })
}

/// An `iperf3` TCP run of `secs` seconds from `client` to a one-off server in `server`
/// bound to `addr`; received Mbit/s.
pub fn iperf3(server: &Netns, client: &Netns, addr: &str, secs: u32) -> Result<f64> {
    iperf3_run(server, client, addr, secs, false).map(|r| r.mbit_per_s)
}

/// What one `iperf3` client run measured.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub mbit_per_s: f64,
}

/// An `iperf3` TCP run of `secs` seconds from `client` to a one-off server started in
/// `server` on `addr` (`reverse`: the server sends). Errors carry iperf3's own message.
pub fn iperf3_run(
    server: &Netns,
    client: &Netns,
    addr: &str,
    secs: u32,
    reverse: bool,
) -> Result<Iperf> {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-B", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = client.command("iperf3");
            c.args([
                "-c",
                addr,
                "-t",
                &secs.to_string(),
                "-J",
                "--connect-timeout",
                "5000",
            ]);
            if reverse {
                c.arg("-R");
            }
            let out = c
                .stdin(Stdio::null())
                .output()
                .context("running iperf3 -c")?;
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let error = json["error"].as_str().map(str::to_string);
            if out.status.success() && error.is_none() {
                let end = &json["end"];
                return Ok(Iperf {
                    sent_bytes: end["sum_sent"]["bytes"].as_u64().unwrap_or(0),
                    received_bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
                    mbit_per_s: end["sum_received"]["bits_per_second"]
                        .as_f64()
                        .unwrap_or(0.0)
                        / 1e6,
                });
            }
            let why = error.unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into());
            // The server may not listen yet.
            if why.contains("connect") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            bail!("iperf3 -c {addr} from {}: {why}", client.name());
        }
    })();
    let _ = srv.kill();
    let _ = srv.wait();
    result
}

/// `dnsperf` from `ns` against `server` for `secs` seconds over the query file; the
/// queries/s it reports, refusing a run in which answers were lost or not NOERROR /
/// NXDOMAIN as listed.
pub fn dnsperf(ns: &Netns, server: &str, queries: &std::path::Path, secs: u32) -> Result<f64> {
    let out = ns
        .command("dnsperf")
        .args(["-s", server, "-l", &secs.to_string(), "-q", "64", "-t", "2"])
        .arg("-d")
        .arg(queries)
        .stdin(Stdio::null())
        .output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "dnsperf failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_dnsperf(&text)
}

/// The number on dnsperf's statistics line that starts with `name` ("Queries lost:
/// 3 (0.01%)" gives 3).
pub fn dnsperf_field(text: &str, name: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with(name))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The figures of a dnsperf report: queries/s, refusing runs with no completed query.
pub fn parse_dnsperf(text: &str) -> Result<f64> {
    let field = |name| dnsperf_field(text, name);
    let completed = field("Queries completed").unwrap_or(0.0);
    if completed == 0.0 {
        bail!("dnsperf: no query answered:\n{text}");
    }
    if text.contains("SERVFAIL") || text.contains("REFUSED") {
        bail!("dnsperf: the server answered SERVFAIL/REFUSED:\n{text}");
    }
    field("Queries per second").context("dnsperf: no 'Queries per second' line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_report_is_read() {
        let report = "Statistics:\n\n  Queries sent:         1000\n  Queries completed:    1000 (100.00%)\n  Queries lost:         0 (0.00%)\n\n  Response codes:       NOERROR 900 (90.00%), NXDOMAIN 100 (10.00%)\n  Average packet size:  request 40, response 56\n  Run time (s):         2.000000\n  Queries per second:   500.000000\n";
        assert_eq!(parse_dnsperf(report).unwrap(), 500.0);
        let lost = report.replace("Queries completed:    1000", "Queries completed:    0");
        assert!(parse_dnsperf(&lost).is_err());
        let refused = report.replace("NXDOMAIN 100", "REFUSED 100");
        assert!(parse_dnsperf(&refused).is_err());
    }
}
