//! What a capture's client reads from the control socket: arbitrary lines into
//! `Event::parse_line`, the base64 data of a capture event into bytes, and arbitrary
//! chunks into the libpcap record reader. Nothing may panic; an event read back from
//! its own line is the same event; records that read are whole and within the chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_appliance::capture::{records, Event};
use weft_netstack::pipeline::capture::RECORD_HEADER_LEN;

fn check_records(chunk: &[u8]) {
    if let Ok(recs) = records(chunk) {
        let total: usize = recs.iter().map(|r| RECORD_HEADER_LEN + r.data.len()).sum();
        assert_eq!(total, chunk.len(), "records that read cover the chunk exactly");
        for r in &recs {
            assert!(r.data.len() as u64 <= u64::from(r.orig_len));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Some(Ok(event)) = Event::parse_line(rest) {
            let again = Event::parse_line(&event.to_line());
            assert_eq!(again, Some(Ok(event.clone())), "an event reads back as itself");
            if let Event::Capture(d) = &event {
                if let Ok(bytes) = d.bytes() {
                    check_records(&bytes);
                }
            }
        }
    } else {
        check_records(rest);
    }
});
