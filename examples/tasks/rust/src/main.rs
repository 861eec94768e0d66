//! csv_totals: sums one column of a CSV table (on stdin) per value of another.
//!
//!   inputs: [GROUP_COLUMN, SUM_COLUMN]     e.g. ["region", "amount"]
//!   stdin:  the CSV, with a header line
//!   env:    DELIMITER (default ",")
//!   output: one `group<TAB>total` line per group, sorted by group, totals with 2 decimals
//!
//! A bad table is the task failing: a message on stderr and exit status 2.
use std::collections::BTreeMap;
use std::io::Read;
use std::process::exit;

fn fail(message: String) -> ! {
    eprintln!("csv_totals: {message}");
    exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, group_col, sum_col] = args.as_slice() else {
        fail(format!(
            "expected two inputs, GROUP_COLUMN and SUM_COLUMN; got {}",
            args.len().saturating_sub(1)
        ))
    };
    let delimiter = std::env::var("DELIMITER").unwrap_or_else(|_| ",".into());
    let mut csv = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut csv) {
        fail(format!("cannot read stdin: {e}"));
    }
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some(h) => h.split(delimiter.as_str()).map(str::trim).collect(),
        None => fail("stdin is empty; expected a CSV table with a header line".into()),
    };
    let column = |name: &str| {
        header.iter().position(|h| *h == name).unwrap_or_else(|| {
            fail(format!("no column {name:?} in the header {:?}", header.join(&delimiter)))
        })
    };
    let (g, s) = (column(group_col), column(sum_col));
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(delimiter.as_str()).map(str::trim).collect();
        let (Some(group), Some(value)) = (fields.get(g), fields.get(s)) else {
            fail(format!("line {}: too few fields: {line:?}", n + 2));
        };
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| fail(format!("line {}: {value:?} is not a number", n + 2)));
        *totals.entry(group.to_string()).or_default() += value;
    }
    for (group, total) in totals {
        println!("{group}\t{total:.2}");
    }
}
