//! Hello in Rust: argv[1] (the task's first input) is the name, env GREETING the greeting.
fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "world".into());
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    println!("{greeting}, {name}! (from Rust)");
}
