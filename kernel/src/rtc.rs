//! The CMOS real-time clock, read once at boot for the wall-clock time (QEMU sets it from
//! the host clock by default). Used only to make identifiers grow across reboots, never
//! for measuring time (that is the TSC, `time`).

use x86_64::instructions::port::Port;

fn read(reg: u8) -> u8 {
    let mut index: Port<u8> = Port::new(0x70);
    let mut data: Port<u8> = Port::new(0x71);
    // SAFETY: 0x70/0x71 are the CMOS index/data ports; reading the clock registers has no
    // side effects (bit 7 of the index, NMI disable, stays clear).
    unsafe {
        index.write(reg & 0x7f);
        data.read()
    }
}

fn updating() -> bool {
    read(0x0a) & 0x80 != 0
}

/// Seconds since the Unix epoch, or None if the clock reads as nonsense.
pub fn unix_time() -> Option<u64> {
    // Read twice until two reads agree and no update was in progress (the usual dance).
    let snapshot = || {
        while updating() {
            core::hint::spin_loop();
        }
        [
            read(0x00),
            read(0x02),
            read(0x04),
            read(0x07),
            read(0x08),
            read(0x09),
            read(0x32),
        ]
    };
    let mut a = snapshot();
    loop {
        let b = snapshot();
        if a == b {
            break;
        }
        a = b;
    }
    let status_b = read(0x0b);
    let bcd = status_b & 0x04 == 0;
    let dec = |v: u8| if bcd { (v & 0x0f) + (v >> 4) * 10 } else { v };
    let [sec, min, hour_raw, day, month, year, century] = a;
    let pm = hour_raw & 0x80 != 0;
    let mut hour = dec(hour_raw & 0x7f) as u64;
    if status_b & 0x02 == 0 && pm {
        hour = (hour % 12) + 12; // 12-hour mode
    }
    let century = if century == 0 {
        20
    } else {
        dec(century) as u64
    };
    let year = century * 100 + dec(year) as u64;
    let (month, day) = (dec(month) as u64, dec(day) as u64);
    if !(1970..2200).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(
        days_from_civil(year, month, day) * 86_400
            + hour * 3600
            + dec(min) as u64 * 60
            + dec(sec) as u64,
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
