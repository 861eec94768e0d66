//! `aggregate.wasm` — fan-in of the `hello_fanout` example.
//!
//! Prints a header `<N> greetings:` (or `1 greeting:`) followed by every
//! input on its own line, in input order:
//!
//!   aggregate.wasm "Hello, world!" "Bonjour, world!"
//!   -> 2 greetings:
//!      Hello, world!
//!      Bonjour, world!

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let noun = if inputs.len() == 1 {
        "greeting"
    } else {
        "greetings"
    };
    let mut out = format!("{} {noun}:\n", inputs.len());
    for input in &inputs {
        out.push_str(input);
        out.push('\n');
    }
    print!("{out}");
}
