//! The CPU-bound kernel behind `cpu_heavy.wasm`.
//!
//! This file is deliberately self-contained and uses nothing beyond `core`
//! (no `use`, no allocation, no I/O), so a native benchmark can compile the
//! *exact same code* and compare wasm against native speed:
//!
//! ```ignore
//! #[path = "../../wasm_modules/src/kernels/cpu.rs"]
//! mod cpu;
//! let checksum = cpu::cpu_kernel(n);
//! ```
//!
//! Each of the `n` rounds steps a xorshift64 generator, runs the value
//! through a multiply/xor-shift integer hash and folds it into an
//! accumulator with a rotate and an add. Every round depends on the
//! previous one (a serial chain through `x` and `acc`), so the optimizer
//! can neither vectorize the loop nor compute it in closed form: run time is
//! linear in `n`. The result is fully deterministic.
//!
//! Reference values: `cpu_kernel(0) == 0`, `cpu_kernel(1) ==
//! 13076818013709336882`, `cpu_kernel(1000) == 2084687214887317516`,
//! `cpu_kernel(1_000_000) == 12833222531948910216`.

/// Runs `n` rounds of the kernel and returns a checksum of all of them.
pub fn cpu_kernel(n: u64) -> u64 {
    // Any non-zero seed works for xorshift64; this is 2^64 / golden ratio.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut acc: u64 = 0;
    let mut i: u64 = 0;
    while i < n {
        // xorshift64 (Marsaglia): a full-period 64-bit generator.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // splitmix64-style finalizer of the generator output mixed with the
        // round number.
        let mut z = x ^ i;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Fold into the accumulator.
        acc = acc.rotate_left(7).wrapping_add(z) ^ (acc >> 3);
        i += 1;
    }
    acc
}
