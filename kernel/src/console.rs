//! The serial console (COM1): the `log` backend and the emergency writer that exception
//! handlers use. Never carries the control protocol (that is the virtio console).

use core::fmt::{self, Write};
use log::{Level, LevelFilter, Log, Metadata, Record};
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

static COM1: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

struct Writer<'a>(&'a mut Uart16550<PioBackend>);

impl Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Whole runs between newlines at once: the UART fills its FIFO per status check,
        // where a byte at a time cost a status read (a VM exit) per byte.
        let mut lines = s.split('\n');
        if let Some(first) = lines.next() {
            self.0.send_bytes_exact(first.as_bytes());
        }
        for line in lines {
            self.0.send_bytes_exact(b"\r\n");
            self.0.send_bytes_exact(line.as_bytes());
        }
        Ok(())
    }
}

pub fn init() {
    // SAFETY: 0x3f8 is COM1 on every PC-compatible machine and only this module uses it.
    if let Ok(mut uart) = unsafe { Uart16550::new_port(0x3f8) } {
        if uart.init(Config::default()).is_ok() {
            *COM1.lock() = Some(uart);
        }
    }
}

pub fn print(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = COM1.lock().as_mut() {
            let _ = Writer(uart).write_fmt(args);
        }
    });
}

/// For fatal paths: writes even if the console lock is held (we are about to stop).
pub fn emergency(args: fmt::Arguments) {
    // SAFETY: same port as `init`; the machine halts after this, so a concurrent user of
    // the locked instance cannot observe the interleaving for long.
    if let Ok(mut uart) = unsafe { Uart16550::new_port(0x3f8) } {
        let _ = Writer(&mut uart).write_fmt(args);
    }
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // virtio-drivers narrates device setup at info; the kernel says what matters in
        // its own lines (each line on the serial port costs boot time).
        !metadata.target().starts_with("virtio_drivers") || log::max_level() >= Level::Debug
    }
    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = crate::time::micros();
        print(format_args!(
            "[{:>5}.{:06}] {:<5} {}: {}\n",
            us / 1_000_000,
            us % 1_000_000,
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_log(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
