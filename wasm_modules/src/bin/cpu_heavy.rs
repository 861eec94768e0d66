//! `cpu_heavy.wasm` — CPU-bound task for load and scheduling tests.
//!
//! Runs `cpu_kernel(N)` (see `src/kernels/cpu.rs`, shared verbatim with the
//! native benchmark) and prints the checksum in decimal. N is the first
//! input; the default takes roughly half a second natively.

#[path = "../kernels/cpu.rs"]
mod cpu;

/// Rounds used when no N is given (~0.47 s natively on the x86-64 dev machine;
/// checksum 17439915267416967717).
const DEFAULT_ROUNDS: u64 = 160_000_000;

fn main() {
    let n = match std::env::args().nth(1) {
        None => DEFAULT_ROUNDS,
        Some(s) => s.trim().parse::<u64>().unwrap_or_else(|_| {
            eprintln!("cpu_heavy: expected a round count, got {s:?}");
            std::process::exit(2);
        }),
    };
    println!("{}", cpu::cpu_kernel(n));
}
