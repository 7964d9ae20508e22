//! `weft`: the host tool. `build` the image, `boot` it under QEMU, talk to it with
//! `ctl`, run the host `agent`, `install-cni` the plugin, run the `demo`, run every
//! `test`. The work is in the library; this file only parses the command line and
//! maps outcomes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use weft_appliance::protocol::{Applied, Status};
use weft_appliance::Config;
use weft_control::client::{code_name, Client, Reply};
use weft_control::document;
use weft_control::document::InvalidConfig;
use weft_image::build::{self, Profile};
use weft_image::qemu::{Accel, MacAddr, Machine, MemoryMib, NetBackend, Nic, QemuConfig, Serial};
use weft_image::{demo, paths, stages, status};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "weft: a unikernel network appliance (host tool)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel and write the bootable ELF to target/weft/weft.elf.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Boot the appliance under QEMU (foreground; Ctrl-C stops it).
    Boot {
        /// Uplink NIC backend, e.g. tap:weft0.
        #[arg(long)]
        uplink: NetBackend,
        /// Container link NIC backend, e.g. tap:weft1.
        #[arg(long)]
        link: NetBackend,
        /// Unix socket path for the control socket (QEMU listens there).
        #[arg(long)]
        control: PathBuf,
        /// TOML config applied once the appliance greets.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serial console to this file instead of stdio.
        #[arg(long)]
        serial: Option<PathBuf>,
        #[arg(long, default_value = "128M")]
        memory: MemoryMib,
        #[arg(long, value_enum, default_value = "tcg")]
        accel: Accel,
        /// QEMU machine: q35 (virtio-pci) or microvm (virtio-mmio, no PCI, no ACPI).
        #[arg(long, value_enum, default_value = "q35")]
        machine: Machine,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        append: String,
        /// Uplink MAC (default: derived from the tap name).
        #[arg(long)]
        uplink_mac: Option<MacAddr>,
        /// Link MAC (default: derived from the tap name).
        #[arg(long)]
        link_mac: Option<MacAddr>,
        /// Kernel image (default: target/weft/weft.elf).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Seconds to wait for the greeting.
        #[arg(long, default_value_t = 60)]
        greeting_timeout: u64,
    },
    /// Talk to a running appliance over its control socket.
    Ctl {
        #[arg(long)]
        socket: PathBuf,
        /// Print the raw JSON reply line.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the greeting and the reply.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[command(subcommand)]
        cmd: CtlCmd,
    },
    /// Build a small topology in network namespaces, boot, ping, show status, clean up.
    Demo {
        #[arg(long)]
        release: bool,
        #[arg(long, value_enum, default_value = "tcg")]
        accel: Accel,
    },
    /// The host agent: keeps the grid in etcd (or a file) and makes the appliance
    /// follow it; serves the API socket; boots and supervises the appliance with --image.
    Agent(AgentArgs),
    /// Install the CNI plugin (weft-cni, built beside weft) as `weft` where runtimes look.
    InstallCni {
        #[arg(long, default_value = weft_image::install_cni::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Run every check of the project (fmt, clippy, unit tests, image, QEMU tests).
    Test,
    /// The grid's certificate authority: certificates for `[grid] auth = "tls"`.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// weft against a reference Linux VM doing the same job (docs/PERFORMANCE.md).
    Bench(weft_image::bench::BenchArgs),
    /// One grid (two wefts and a Linux VTEP) under every kind of load at once for a
    /// set time, sampled: heap trend, conntrack, drops, failures (docs/RELIABILITY.md).
    Soak(weft_image::bench::soak::SoakArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The node's own config (TOML); `[grid] node` may be left out (then allocated).
    #[arg(long)]
    config: PathBuf,
    /// The appliance's control socket.
    #[arg(long)]
    control: PathBuf,
    /// The agent's API socket (the same protocol; any number of clients).
    #[arg(long)]
    api: PathBuf,
    /// Where the grid lives: etcd:http://HOST:2379[,http://...] or file:PATH.
    #[arg(long)]
    store: weft_agent::StoreSpec,
    /// The node's name in the grid (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// The grid's name, the store prefix /weft/<grid>/ (default: [dns] grid, else weft).
    #[arg(long)]
    grid: Option<String>,
    /// Seconds the node's live entry outlives its agent.
    #[arg(long, default_value_t = weft_agent::DEFAULT_TTL.as_secs())]
    ttl: u64,
    /// The address nodes of this node's region reach it at (default: the uplink's).
    #[arg(long)]
    private_address: Option<std::net::Ipv4Addr>,
    /// The address nodes of other regions reach it at (default: the uplink's).
    #[arg(long)]
    public_address: Option<std::net::Ipv4Addr>,
    /// Boot and supervise the appliance from this kernel image (with --uplink, --link).
    #[arg(long, requires_all = ["uplink", "link"])]
    image: Option<PathBuf>,
    /// Uplink NIC backend for the supervised appliance, e.g. tap:weft0.
    #[arg(long, requires = "image")]
    uplink: Option<NetBackend>,
    /// Container link NIC backend for the supervised appliance, e.g. tap:weft1.
    #[arg(long, requires = "image")]
    link: Option<NetBackend>,
    /// Memory of the supervised appliance.
    #[arg(long, requires = "image")]
    memory: Option<MemoryMib>,
    /// The supervised appliance's serial console to this file.
    #[arg(long, requires = "image")]
    serial: Option<PathBuf>,
    /// The supervised appliance's QEMU accelerator (default: tcg).
    #[arg(long, value_enum, requires = "image")]
    accel: Option<Accel>,
    /// Serve Prometheus metrics (the appliance's and the agent's) at
    /// http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make the CA of grid NAME: DIR/ca.pem and DIR/ca.key (keep the key off the nodes).
    Init {
        #[arg(long)]
        grid: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = weft_image::ca::CA_DAYS)]
        days: u32,
    },
    /// Issue node N's certificate: DIR/node-N.pem and DIR/node-N.key.
    Issue {
        #[arg(long)]
        node: u32,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = weft_image::ca::NODE_DAYS)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Version, uptime, interfaces and counters.
    Status,
    /// The running configuration.
    Config,
    /// Apply a TOML config document (validated as a whole; invalid changes nothing).
    Apply { file: PathBuf },
    /// Liveness check.
    Ping,
    /// Any command, its arguments as one JSON object, e.g.
    /// `call peer-add '{"node":2,"address":"192.0.2.12","networks":["grid"]}'`
    /// (overlay: peer-add, peer-remove, network-add, network-remove, fdb-add, fdb-remove).
    Call {
        cmd: String,
        /// The `args` object (JSON); omitted for commands without arguments.
        args: Option<String>,
    },
    /// Every counter and gauge of the appliance, as Prometheus text.
    Metrics,
    /// Capture what the appliance sees as pcapng (or pcap), e.g.
    /// `capture --iface overlay:grid --count 10 -w - | tshark -r -`.
    Capture(CaptureArgs),
}

#[derive(clap::Args)]
struct CaptureArgs {
    /// Where to look: uplink, link, or overlay:<network> (inner frames, sleeve in the clear).
    #[arg(long)]
    iface: String,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<u32>,
    /// Bytes kept of each frame (default 65535).
    #[arg(long)]
    snaplen: Option<u32>,
    /// pcapng (names the interface) or pcap.
    #[arg(long, value_enum, default_value = "pcapng")]
    format: CaptureFormat,
    /// The file to write, or - for standard output (live: `-w - | tshark -r -`).
    #[arg(short = 'w', long = "write")]
    write: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CaptureFormat {
    Pcapng,
    Pcap,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Build { release } => cmd_build(release),
        Cmd::Boot {
            uplink,
            link,
            control,
            config,
            serial,
            memory,
            accel,
            machine,
            append,
            uplink_mac,
            link_mac,
            image,
            greeting_timeout,
        } => {
            let mut uplink = Nic::new(uplink);
            if let Some(m) = uplink_mac {
                uplink.mac = m;
            }
            let mut link = Nic::new(link);
            if let Some(m) = link_mac {
                link.mac = m;
            }
            let mut cfg = QemuConfig::new(
                image.unwrap_or_else(paths::image_path),
                uplink,
                link,
                control,
            );
            cfg.memory = memory;
            cfg.accel = accel;
            cfg.machine = machine;
            cfg.append = append;
            cfg.serial = serial.map(Serial::File).unwrap_or(Serial::Stdio);
            cmd_boot(cfg, config, Duration::from_secs(greeting_timeout))
        }
        Cmd::Ctl {
            socket,
            json,
            timeout,
            cmd,
        } => return cmd_ctl(&socket, json, Duration::from_secs(timeout), cmd),
        Cmd::Demo { release, accel } => cmd_demo(release, accel),
        Cmd::Agent(args) => cmd_agent(args),
        Cmd::InstallCni { dir } => {
            use weft_image::install_cni::{install, plugin_beside_me};
            plugin_beside_me()
                .and_then(|p| install(&p, &dir))
                .map(|at| println!("{}", at.display()))
        }
        Cmd::Test => return cmd_test(),
        Cmd::Ca { cmd } => cmd_ca(cmd),
        Cmd::Bench(args) => return weft_image::bench::main(args),
        Cmd::Soak(args) => return weft_image::bench::soak::main(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_ca(cmd: CaCmd) -> Result<()> {
    let written = match cmd {
        CaCmd::Init { grid, dir, days } => weft_image::ca::init(&grid, &dir, days)?,
        CaCmd::Issue { node, dir, days } => weft_image::ca::issue(node, &dir, days)?,
    };
    println!("{}", written.cert.display());
    println!("{}", written.key.display());
    Ok(())
}

fn cmd_build(release: bool) -> Result<()> {
    let img = build::build_image(Profile::from_release(release))?;
    println!("{}", img.path.display());
    println!("{} bytes", img.size_bytes);
    Ok(())
}

/// Ctrl-C / SIGTERM set a flag instead of killing us, so guards run.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if let Err(e) = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst)) {
        eprintln!("weft: cannot install the Ctrl-C handler: {e}");
    }
    flag
}

fn cmd_boot(cfg: QemuConfig, config: Option<PathBuf>, greeting_timeout: Duration) -> Result<()> {
    // Read the config before starting anything: a bad file must not leave a VM running.
    let doc = config.as_deref().map(document::load).transpose()?;
    let interrupted = interrupt_flag();
    eprintln!(
        "weft: booting {} on {} (uplink {} {}, link {} {}, control {})",
        cfg.kernel.display(),
        cfg.machine,
        cfg.uplink.backend,
        cfg.uplink.mac,
        cfg.link.backend,
        cfg.link.mac,
        cfg.control.display()
    );
    let mut qemu = cfg.spawn()?;
    let (mut client, took) = match qemu.greet(&cfg.control, greeting_timeout) {
        Ok(x) => x,
        Err(e) => {
            qemu.stop(Duration::from_secs(2));
            return Err(e).context("waiting for the appliance to greet");
        }
    };
    eprintln!(
        "weft: appliance greeted after {} ms (weft {}, protocol {})",
        took.as_millis(),
        client.greeting().weft.version,
        client.greeting().weft.protocol
    );
    if let (Some(doc), Some(path)) = (doc, config.as_ref()) {
        match client.apply(&doc) {
            Ok(_) => eprintln!("weft: applied {}", path.display()),
            Err(e) => {
                qemu.stop(Duration::from_secs(2));
                return Err(e).with_context(|| format!("applying {}", path.display()));
            }
        }
    }
    // QEMU serves one control client at a time: let `weft ctl` in.
    drop(client);
    eprintln!("weft: running; Ctrl-C stops the appliance");
    loop {
        if let Some(status) = qemu.try_wait()? {
            eprintln!("weft: QEMU exited ({status})");
            return if status.success() {
                Ok(())
            } else {
                anyhow::bail!("QEMU exited with {status}")
            };
        }
        if interrupted.load(Ordering::SeqCst) {
            eprintln!("weft: stopping the appliance");
            qemu.stop(Duration::from_secs(5));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cmd_ctl(socket: &std::path::Path, json: bool, timeout: Duration, cmd: CtlCmd) -> ExitCode {
    if let CtlCmd::Capture(args) = &cmd {
        return match cmd_capture(socket, timeout, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft: error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let run = || -> Result<(&str, Reply)> {
        let (name, args) = match &cmd {
            CtlCmd::Status => ("status", None),
            CtlCmd::Config => ("config", None),
            CtlCmd::Ping => ("ping", None),
            CtlCmd::Metrics => ("metrics", None),
            CtlCmd::Capture(_) => unreachable!("captures stream, handled above"),
            CtlCmd::Apply { file } => {
                let doc = document::load(file)?;
                ("apply", Some(doc.json().clone()))
            }
            CtlCmd::Call { cmd, args } => {
                let args = args
                    .as_deref()
                    .map(serde_json::from_str::<serde_json::Value>)
                    .transpose()
                    .context("the arguments are not JSON")?;
                (cmd.as_str(), args)
            }
        };
        if !socket.exists() {
            anyhow::bail!(
                "cannot connect to {}: no such socket (is the appliance running?)",
                socket.display()
            );
        }
        let mut client = Client::connect(socket, timeout)?;
        // A document goes in parts when it is too long for one line.
        let reply = match (name, &args) {
            ("apply", Some(doc)) => client.apply_reply(doc)?,
            _ => client.call(name, args)?,
        };
        Ok((name, reply))
    };
    let (name, reply) = match run() {
        Ok(x) => x,
        Err(e) => {
            if let Some(inv) = e.downcast_ref::<InvalidConfig>() {
                print_error_body("invalid_config", Some(&inv.0.field), &inv.0.message);
                return ExitCode::from(1);
            }
            eprintln!("weft: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", reply.raw);
    }
    match reply.outcome {
        Ok(v) => {
            if !json {
                print!("{}", render(name, v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error_body(&code_name(e.code), e.field.as_deref(), &e.message);
            ExitCode::from(1)
        }
    }
}

fn print_error_body(code: &str, field: Option<&str>, message: &str) {
    eprintln!("weft: error: {code}");
    if let Some(f) = field.filter(|f| !f.is_empty()) {
        eprintln!("  field:   {f}");
    }
    eprintln!("  message: {message}");
}

/// The readable form of a result; pretty JSON when it has an unexpected shape.
fn render(name: &str, v: serde_json::Value) -> String {
    let pretty = |v: &serde_json::Value| {
        format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
    };
    match name {
        "status" => match serde_json::from_value::<Status>(v.clone()) {
            Ok(s) => status::render_status(&s),
            Err(_) => pretty(&v),
        },
        "config" => match serde_json::from_value::<Option<Config>>(v.clone()) {
            Ok(c) => status::render_config(c.as_ref()),
            Err(_) => pretty(&v),
        },
        "apply" | "peer-add" | "peer-remove" | "network-add" | "network-remove" | "fdb-add"
        | "fdb-remove" => match serde_json::from_value::<Applied>(v.clone()) {
            Ok(a) if a.changed => "applied\n".to_string(),
            Ok(_) => "applied (no change)\n".to_string(),
            Err(_) => pretty(&v),
        },
        "ping" => "pong\n".to_string(),
        "metrics" => match v["text"].as_str() {
            Some(text) => text.to_string(),
            None => pretty(&v),
        },
        _ => pretty(&v),
    }
}

/// `weft ctl capture`: the frames go to the file (or standard output) as they come; the
/// summary goes to standard error. Ctrl-C stops the capture and keeps what arrived.
fn cmd_capture(socket: &std::path::Path, timeout: Duration, a: &CaptureArgs) -> Result<()> {
    use weft_appliance::capture::CaptureStart;
    use weft_control::capture::{self, Format, Writer};
    if !socket.exists() {
        anyhow::bail!(
            "cannot connect to {}: no such socket (is the appliance running?)",
            socket.display()
        );
    }
    let interrupted = interrupt_flag();
    let mut client = Client::connect(socket, timeout)?;
    let args = CaptureStart {
        iface: a.iface.clone(),
        snaplen: a.snaplen,
        count: a.count,
        seconds: a.seconds,
    };
    let started = capture::start(&mut client, &args).map_err(|e| match e {
        weft_control::client::ControlError::Remote(body) => {
            anyhow::anyhow!("{}", weft_control::client::remote_line(&body))
        }
        other => anyhow::Error::new(other),
    })?;
    let format = match a.format {
        CaptureFormat::Pcapng => Format::Pcapng,
        CaptureFormat::Pcap => Format::Pcap,
    };
    let out: Box<dyn std::io::Write> = if a.write.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&a.write)
                .with_context(|| format!("creating {}", a.write.display()))?,
        ))
    };
    let mut writer = Writer::new(out, format, &started)?;
    writer.flush()?;
    eprintln!(
        "weft: capturing on {} (capture {}, snaplen {})",
        started.iface, started.capture, started.snaplen
    );
    let end = capture::stream(&mut client, &started, &mut writer, &interrupted)?;
    eprintln!(
        "weft: capture ended ({}): {} frames, {} bytes, {} dropped",
        serde_json::to_value(end.reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        end.frames,
        end.bytes,
        end.dropped
    );
    Ok(())
}

fn cmd_agent(a: AgentArgs) -> Result<()> {
    let boot = match (a.image, a.uplink, a.link) {
        (Some(image), Some(uplink), Some(link)) => Some(weft_agent::BootSpec {
            exe: std::env::current_exe().context("finding the weft binary")?,
            image,
            uplink: uplink.to_string(),
            link: link.to_string(),
            memory: a.memory.map(|m| m.to_string()),
            serial: a.serial,
            accel: a.accel.map(|x| x.as_str().to_string()),
        }),
        _ => None,
    };
    weft_agent::run(weft_agent::AgentOptions {
        config: a.config,
        control: a.control,
        api: a.api,
        store: a.store,
        name: a.name,
        grid: a.grid,
        ttl: Duration::from_secs(a.ttl.max(1)),
        private_address: a.private_address,
        public_address: a.public_address,
        boot,
        metrics: a.metrics,
    })
}

fn cmd_demo(release: bool, accel: Accel) -> Result<()> {
    let opts = demo::DemoOptions {
        profile: Profile::from_release(release),
        accel,
        weft: std::env::current_exe().context("finding the weft binary")?,
        interrupted: interrupt_flag(),
    };
    demo::run(&opts).map(|_| ())
}

fn cmd_test() -> ExitCode {
    let summary = stages::run(stages::plan(&paths::repo_root()));
    println!("{}", summary.line());
    if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
