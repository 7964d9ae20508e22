//! The virtio features each VM negotiated, read from its console after boot, so the
//! table says what each side used (issue 18: Linux's offloads against weft's plain
//! frames). weft's kernel logs `NAME: WHERE irq N, ... virtio features 0xTAKEN of
//! 0xOFFERED` per device; the reference VM's `/init` prints `weft-ref: virtio NAME BITS`
//! with the sysfs `features` string (one '0'/'1' per bit, bit 0 first). Names follow
//! virtio 1.2 (5.1.3 network, 5.3.3 console, 6 reserved bits).

use serde_json::{json, Value};

/// One device's negotiated features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFeatures {
    /// `uplink`, `link` or `control`.
    pub device: String,
    pub taken: u64,
    /// What the device offered, where the guest says.
    pub offered: Option<u64>,
}

impl DeviceFeatures {
    pub fn to_json(&self) -> Value {
        let mut o = json!({
            "device": self.device,
            "taken": format!("{:#x}", self.taken),
            "names": names(&self.device, self.taken),
        });
        if let Some(off) = self.offered {
            o["offered"] = json!(format!("{off:#x}"));
        }
        o
    }

    /// `uplink: MAC EVENT_IDX VERSION_1`.
    pub fn line(&self) -> String {
        format!(
            "{}: {}",
            self.device,
            names(&self.device, self.taken).join(" ")
        )
    }
}

const COMMON: &[(u32, &str)] = &[
    (24, "NOTIFY_ON_EMPTY"),
    (27, "ANY_LAYOUT"),
    (28, "RING_INDIRECT_DESC"),
    (29, "RING_EVENT_IDX"),
    (32, "VERSION_1"),
    (33, "ACCESS_PLATFORM"),
    (34, "RING_PACKED"),
    (35, "IN_ORDER"),
    (36, "ORDER_PLATFORM"),
    (37, "SR_IOV"),
    (38, "NOTIFICATION_DATA"),
    (40, "RING_RESET"),
];

const NET: &[(u32, &str)] = &[
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (2, "CTRL_GUEST_OFFLOADS"),
    (3, "MTU"),
    (5, "MAC"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (9, "GUEST_ECN"),
    (10, "GUEST_UFO"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (13, "HOST_ECN"),
    (14, "HOST_UFO"),
    (15, "MRG_RXBUF"),
    (16, "STATUS"),
    (17, "CTRL_VQ"),
    (18, "CTRL_RX"),
    (19, "CTRL_VLAN"),
    (21, "GUEST_ANNOUNCE"),
    (22, "MQ"),
    (23, "CTRL_MAC_ADDR"),
];

const CONSOLE: &[(u32, &str)] = &[(0, "SIZE"), (1, "MULTIPORT"), (2, "EMERG_WRITE")];

/// The names of the set bits (`BIT<n>` for bits virtio does not name here).
pub fn names(device: &str, bits: u64) -> Vec<String> {
    let own = if device == "control" { CONSOLE } else { NET };
    (0..64)
        .filter(|b| bits & (1u64 << b) != 0)
        .map(|b| {
            own.iter()
                .chain(COMMON)
                .find(|(n, _)| *n == b)
                .map(|(_, name)| name.to_string())
                .unwrap_or_else(|| format!("BIT{b}"))
        })
        .collect()
}

/// weft's devices from its console (the kernel's per-device boot lines).
pub fn from_weft_console(console: &str) -> Vec<DeviceFeatures> {
    let mut out = Vec::new();
    for line in console.lines() {
        let Some(at) = line.find("virtio features ") else {
            continue;
        };
        let device = ["uplink", "link", "control"]
            .into_iter()
            .find(|d| line.contains(&format!(" {d}: ")));
        let Some(device) = device else {
            continue;
        };
        let mut nums = line[at + "virtio features ".len()..]
            .split(" of ")
            .map(|s| s.trim().trim_start_matches("0x"))
            .map(|s| u64::from_str_radix(s.split_whitespace().next().unwrap_or(""), 16));
        if let Some(Ok(taken)) = nums.next() {
            out.push(DeviceFeatures {
                device: device.to_string(),
                taken,
                offered: nums.next().and_then(Result::ok),
            });
        }
    }
    out
}

/// The reference VM's devices from its console (`weft-ref: virtio NAME BITS` lines).
pub fn from_linux_console(console: &str) -> Vec<DeviceFeatures> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("weft-ref: virtio "))
        .filter_map(|rest| {
            let (device, bits) = rest.split_once(' ')?;
            let taken = bits
                .trim()
                .bytes()
                .take(64)
                .enumerate()
                .filter(|(_, c)| *c == b'1')
                .fold(0u64, |acc, (i, _)| acc | 1 << i);
            Some(DeviceFeatures {
                device: device.to_string(),
                taken,
                offered: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weft_console_lines_are_read() {
        let log = "[    0.011] INFO  weft_kernel::mainloop: uplink: virtio-mmio 0xfeb00e00 irq 12, mac 52-54-00-00-00-01, virtio features 0x120000020 of 0x10130bf8024\n\
[    0.012] INFO  weft_kernel::mainloop: link: pci 00:04.0 irq 10, mac 52-54-00-00-00-02, virtio features 0x120000020 of 0x10130bf8024\n\
[    0.013] INFO  weft_kernel::mainloop: control: virtio-mmio 0xfeb00a00 irq 10, virtio features 0x100000002 of 0x10130000006\n";
        let f = from_weft_console(log);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].device, "uplink");
        assert_eq!(f[0].taken, 0x1_2000_0020);
        assert_eq!(f[0].offered, Some(0x101_30bf_8024));
        assert_eq!(f[1].device, "link");
        assert_eq!(f[0].line(), "uplink: MAC RING_EVENT_IDX VERSION_1");
        assert_eq!(f[2].line(), "control: MULTIPORT VERSION_1");
    }

    #[test]
    fn linux_sysfs_bit_strings_are_read() {
        // CSUM, GUEST_CSUM, MAC, GUEST_TSO4, ... as the kernel prints them (bit 0 first).
        let log = "weft-ref: virtio uplink 1110010110000000000000000000000000000000000000000000000000000000\nweft-ref: ready\n";
        let f = from_linux_console(log);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].device, "uplink");
        assert_eq!(
            names("uplink", f[0].taken),
            [
                "CSUM",
                "GUEST_CSUM",
                "CTRL_GUEST_OFFLOADS",
                "MAC",
                "GUEST_TSO4",
                "GUEST_TSO6"
            ]
        );
    }
}
