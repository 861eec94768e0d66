//! `sum.wasm` — prints the sum of all integers in its inputs.
//!
//! Each input may hold several whitespace-separated integers, each possibly
//! negative (or with a leading `+`). With no inputs the integers are read
//! from stdin. The sum is computed in `i128`, so it can add up full-range
//! `u64` values such as `cpu_heavy` checksums. An empty input list sums to 0.
//!
//! A token that is not an integer (or an overflowing sum) is reported on
//! stderr, naming the offending input, and the task exits with status 2.

use std::io::Read;

fn fail(msg: String) -> ! {
    eprintln!("sum: {msg}");
    std::process::exit(2);
}

fn main() {
    let mut inputs: Vec<(String, String)> = std::env::args()
        .skip(1)
        .enumerate()
        .map(|(i, s)| (format!("input {}", i + 1), s))
        .collect();
    if inputs.is_empty() {
        let mut buf = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut buf) {
            fail(format!("cannot read stdin: {e}"));
        }
        inputs.push(("stdin".to_string(), buf));
    }

    let mut total: i128 = 0;
    for (name, text) in &inputs {
        for token in text.split_whitespace() {
            let Ok(value) = token.parse::<i128>() else {
                fail(format!("{name} is not an integer: {token:?} (in {text:?})"));
            };
            total = total
                .checked_add(value)
                .unwrap_or_else(|| fail(format!("sum overflows at {name} ({token})")));
        }
    }
    println!("{total}");
}
