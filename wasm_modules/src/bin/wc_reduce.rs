//! `wc_reduce.wasm` — the "reduce" half of the word-count example.
//!
//! Every input (or stdin, when there are no inputs) is a `wc_map` output:
//! lines of `word<TAB>count`. Counts of the same word are added up and the
//! result is printed as `word<TAB>count` lines sorted by count (descending),
//! then by word (ascending). Blank lines are ignored (an empty map output is
//! fine); a malformed line is reported on stderr and the task exits with 2.

use std::collections::BTreeMap;
use std::io::Read;

fn fail(msg: String) -> ! {
    eprintln!("wc_reduce: {msg}");
    std::process::exit(2);
}

/// Merges one `wc_map` output into `totals`; `which` names it in errors.
fn merge(which: &str, text: &str, totals: &mut BTreeMap<String, u64>) {
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((word, count)) = line.rsplit_once('\t') else {
            fail(format!(
                "{which}, line {}: expected `word<TAB>count`, got {line:?}",
                n + 1
            ));
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            fail(format!("{which}, line {}: bad count in {line:?}", n + 1));
        };
        let total = totals.entry(word.to_string()).or_insert(0);
        *total = total
            .checked_add(count)
            .unwrap_or_else(|| fail(format!("count of {word:?} overflows u64")));
    }
}

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let mut totals = BTreeMap::new();
    if inputs.is_empty() {
        let mut buf = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut buf) {
            fail(format!("cannot read stdin: {e}"));
        }
        merge("stdin", &buf, &mut totals);
    } else {
        for (i, input) in inputs.iter().enumerate() {
            merge(&format!("input {}", i + 1), input, &mut totals);
        }
    }
    let mut rows: Vec<(String, u64)> = totals.into_iter().collect();
    rows.sort_by(|(wa, ca), (wb, cb)| cb.cmp(ca).then_with(|| wa.cmp(wb)));
    let mut out = String::new();
    for (word, count) in &rows {
        out.push_str(&format!("{word}\t{count}\n"));
    }
    print!("{out}");
}
