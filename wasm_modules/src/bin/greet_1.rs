//! `greet_1.wasm` — prints `Hello, <name>!`.
//!
//! `<name>` is the task's inputs joined by a space (normally a single input:
//! the output of `init`), or `world` when there are no inputs.
//! The greeting word can be overridden with the `GREETING` environment
//! variable (the task's `env` map), e.g. `GREETING: "Hola"` -> `Hola, world!`.
//! `greet_1` says "Hello" and `greet_2` says "Bonjour" by default, so a
//! fan-in of both visibly merges two distinct outputs.

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect(); // argv[0] = file name
    let name = if inputs.is_empty() {
        "world".to_string()
    } else {
        inputs.join(" ")
    };
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
    println!("{greeting}, {name}!");
}
