//! `echo.wasm` — prints its inputs joined by a single space; with no inputs
//! it copies stdin to stdout byte for byte.
//!
//! Used for Unicode round-trip tests, so nothing is added or normalised:
//! no trailing newline is written (the host trims trailing whitespace of
//! every output anyway) and stdin bytes are passed through unchanged, even
//! if they are not valid UTF-8.

use std::io::{self, Write};

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = if inputs.is_empty() {
        io::copy(&mut io::stdin().lock(), &mut out).map(|_| ())
    } else {
        out.write_all(inputs.join(" ").as_bytes())
    };
    if let Err(e) = result.and_then(|()| out.flush()) {
        eprintln!("echo: I/O error: {e}");
        std::process::exit(1);
    }
}
