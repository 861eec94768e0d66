//! `len.wasm` — prints the length in bytes (not characters) of its first
//! input, or of stdin when it has no inputs.
//!
//! Paired with `big_output.wasm` to check that a 1 MiB upstream output
//! arrives intact: `len.wasm <big_output>` -> `1048576`.

use std::io::Read;

fn main() {
    let len = match std::env::args().nth(1) {
        Some(input) => input.len(),
        None => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                eprintln!("len: cannot read stdin: {e}");
                std::process::exit(1);
            }
            buf.len()
        }
    };
    println!("{len}");
}
