//! `init.wasm` — root of the `hello_fanout` example.
//!
//! Outputs the name that the downstream `greet_*` tasks will greet:
//! the first input (trimmed), or `world` when there is none / it is blank.
//!
//!   init.wasm            -> world
//!   init.wasm "  Ada "   -> Ada

fn main() {
    let name = std::env::args()
        .nth(1) // argv[0] is the module file name
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "world".to_string());
    println!("{name}");
}
