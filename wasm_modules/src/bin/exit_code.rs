//! `exit_code.wasm` — failure fixture: a clean, non-zero exit.
//!
//! Writes `something went wrong: <inputs joined by a space>` to stderr and
//! exits with status 3 (`std::process::exit` is WASI `proc_exit(3)`).
//! Nothing is written to stdout.

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    eprintln!("something went wrong: {}", inputs.join(" "));
    std::process::exit(3);
}
