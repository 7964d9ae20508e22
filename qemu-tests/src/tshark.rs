//! `tshark` as the tests' packet decoder: one builder for what the tests ask of it (a
//! capture file or capture bytes on standard input, decode-as rules, preferences, a
//! display filter, fields), answering one line per packet.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A `tshark -r` invocation being put together.
pub struct Tshark {
    args: Vec<OsString>,
    input: Option<Vec<u8>>,
}

impl Tshark {
    /// Reads the capture file at `path`.
    pub fn file(path: impl AsRef<Path>) -> Tshark {
        Tshark {
            args: vec!["-r".into(), path.as_ref().into(), "-n".into()],
            input: None,
        }
    }

    /// Reads a capture (pcap or pcapng) from `bytes`, given on standard input.
    pub fn bytes(bytes: &[u8]) -> Tshark {
        Tshark {
            args: vec!["-r".into(), "-".into(), "-n".into()],
            input: Some(bytes.to_vec()),
        }
    }

    /// A decode-as rule (`-d`), e.g. `udp.port==4789,vxlan`.
    pub fn decode_as(mut self, rule: &str) -> Tshark {
        self.args.extend(["-d".into(), rule.into()]);
        self
    }

    /// A preference (`-o`), e.g. `tcp.check_checksum:TRUE`.
    pub fn pref(mut self, pref: &str) -> Tshark {
        self.args.extend(["-o".into(), pref.into()]);
        self
    }

    /// The packets matching the display filter `filter`, each as its `fields`
    /// tab-separated, or as tshark's one-line summary when `fields` is empty.
    pub fn lines(&self, filter: &str, fields: &[&str]) -> Result<Vec<String>> {
        let mut cmd = Command::new("tshark");
        cmd.args(&self.args).args(["-Y", filter]);
        if !fields.is_empty() {
            cmd.args(["-T", "fields"]);
            for f in fields {
                cmd.args(["-e", f]);
            }
        }
        let mut child = cmd
            .stdin(if self.input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tshark")?;
        let stdin = child.stdin.take();
        let out = std::thread::scope(|s| {
            // Fed beside the reading of its output, so neither pipe fills up and stalls
            // the other; tshark may stop reading early (a truncated capture), and what it
            // printed still counts.
            if let (Some(mut stdin), Some(bytes)) = (stdin, &self.input) {
                s.spawn(move || {
                    let _ = stdin.write_all(bytes);
                });
            }
            child.wait_with_output()
        })
        .context("running tshark")?;
        if !out.status.success() {
            bail!(
                "tshark {:?} -Y {filter}: {}",
                self.args,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}
