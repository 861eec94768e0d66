//! `big_output.wasm` — prints exactly N bytes of a deterministic pattern.
//!
//! N is the first input (default 1048576 = 1 MiB). The output is
//! `abcdefghijklmnopqrstuvwxyz0123456789` repeated and cut to N bytes — no
//! whitespace at all, so the host's trailing-whitespace trim never changes
//! it. Byte i of the output is `PATTERN[i % 36]`.

use std::io::Write;

const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const DEFAULT_LEN: usize = 1 << 20;

fn main() {
    let n = match std::env::args().nth(1) {
        None => DEFAULT_LEN,
        Some(s) => s.trim().parse::<usize>().unwrap_or_else(|_| {
            eprintln!("big_output: expected a byte count, got {s:?}");
            std::process::exit(2);
        }),
    };

    // One 36 KiB block (a multiple of the pattern length, so blocks join up
    // seamlessly), written as many times as needed, then the remainder.
    let block: Vec<u8> = PATTERN
        .iter()
        .copied()
        .cycle()
        .take(PATTERN.len() * 1024)
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut left = n;
    let result = (|| {
        while left > 0 {
            let chunk = left.min(block.len());
            out.write_all(&block[..chunk])?;
            left -= chunk;
        }
        out.flush()
    })();
    if let Err(e) = result {
        eprintln!("big_output: write failed: {e}");
        std::process::exit(1);
    }
}
