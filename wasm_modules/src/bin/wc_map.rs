//! `wc_map.wasm` — the "map" half of the word-count example.
//!
//! Counts the words of all its inputs together (or of stdin when it has no
//! inputs). A word is a maximal run of alphanumeric characters (Unicode
//! aware: `café`, `naïve`, `日本語`, `42` are words), compared lowercased.
//!
//! Output: one `word<TAB>count` line per distinct word, sorted by word
//! (Unicode code point order). Empty text gives empty output.
//!
//!   wc_map.wasm "The cat, the hat."  ->  cat\t1
//!                                        hat\t1
//!                                        the\t2

use std::collections::BTreeMap;
use std::io::Read;

/// Adds the words of `text` to `counts`.
fn count_words(text: &str, counts: &mut BTreeMap<String, u64>) {
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_insert(0) += 1;
    }
}

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let mut counts = BTreeMap::new();
    if inputs.is_empty() {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("wc_map: cannot read stdin: {e}");
            std::process::exit(1);
        }
        count_words(&String::from_utf8_lossy(&buf), &mut counts);
    } else {
        for input in &inputs {
            count_words(input, &mut counts);
        }
    }
    // BTreeMap iterates in key order, which is exactly the required sort.
    let mut out = String::new();
    for (word, count) in &counts {
        out.push_str(&format!("{word}\t{count}\n"));
    }
    print!("{out}");
}
