//! SIMD state: SSE is on before any Rust runs (`boot`); this module turns on XSAVE
//! (CR4.OSXSAVE) and AVX in XCR0 where CPUID offers them, so that code which picks its
//! implementation at run time (`cpufeatures`: the ChaCha20 AVX2 backend)
//! sees AVX2 where the CPU has it and SSE2 otherwise. AVX-512 state stays off (nothing
//! here uses it, and it would make every saved context 2.5 KiB larger).
//!
//! Interrupt entry and this state: the kernel itself is compiled for SSE2 only (the target
//! has `-avx,-avx2`); only `#[target_feature(enable = "avx2")]` functions of the crypto
//! crates execute VEX-encoded instructions, and never in an interrupt handler. Handlers
//! are `extern "x86-interrupt"` functions, for which the compiler saves and restores
//! every XMM register they or their callees may write; the legacy-SSE instructions they
//! consist of leave bits 255:128 of the YMM registers unchanged (Intel SDM vol. 1,
//! 14.1.3). So an interrupted AVX2 computation finds its YMM registers intact without an
//! XSAVE per interrupt. `cpu` must keep it that way: no handler may call code compiled
//! with AVX enabled.

use core::arch::x86_64::{__cpuid, __cpuid_count};
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::xcontrol::{XCr0, XCr0Flags};

/// CPUID.1:ECX bits.
const CPUID1_XSAVE: u32 = 1 << 26;
const CPUID1_AVX: u32 = 1 << 28;
/// CPUID.7.0:EBX bit.
const CPUID7_AVX2: u32 = 1 << 5;

/// What the CPU may execute after [`init`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Sse2,
    Avx,
    Avx2,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Sse2 => "SSE2",
            Level::Avx => "AVX",
            Level::Avx2 => "AVX2",
        }
    }
}

cpufeatures::new!(avx2_cpuid, "avx2");

/// The backends the `chacha20` crate picks, by the same run-time test it makes
/// (`cpufeatures`: CPUID and XCR0), and Poly1305's, which the build fixes to its
/// portable one (`kernel/.cargo/config.toml`). Call after [`init`].
pub fn crypto_backends() -> &'static str {
    if avx2_cpuid::get() {
        "ChaCha20 AVX2, Poly1305 portable"
    } else {
        "ChaCha20 SSE2, Poly1305 portable"
    }
}

/// Enables XSAVE and the AVX state where the CPU has them; returns the widest SIMD
/// level now usable.
pub fn init() -> Level {
    let leaf1 = __cpuid(1);
    if leaf1.ecx & CPUID1_XSAVE == 0 {
        return Level::Sse2;
    }
    // SAFETY: CPUID says XSAVE exists, so CR4.OSXSAVE may be set; it only makes XGETBV,
    // XSETBV and the XSAVE family available.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::OSXSAVE)) };
    // Leaf 0xD sub-leaf 0, EAX: the XCR0 bits the CPU supports (low half).
    let supported = u64::from(__cpuid_count(0xd, 0).eax);
    let mut xcr0 = XCr0Flags::X87 | XCr0Flags::SSE;
    let avx = leaf1.ecx & CPUID1_AVX != 0 && supported & XCr0Flags::AVX.bits() != 0;
    if avx {
        xcr0 |= XCr0Flags::AVX;
    }
    // SAFETY: x87 and SSE state are always valid XCR0 bits with XSAVE; AVX only where
    // CPUID leaf 0xD lists it. Only register state visibility changes, no memory.
    unsafe { XCr0::write(xcr0) };
    if !avx {
        Level::Sse2
    } else if __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & CPUID7_AVX2 != 0 {
        Level::Avx2
    } else {
        Level::Avx
    }
}
