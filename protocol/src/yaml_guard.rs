//! A linear-time pre-scan of YAML text that bounds what the real parser will do with it.
//!
//! `serde_yaml` parses with libyaml (`unsafe-libyaml`), whose scanner does work proportional
//! to the flow nesting depth for every token (its list of "simple keys" has one entry per
//! open `[`/`{`): 200 KB of `[[[[…` cost about a minute of CPU. And the loader keeps every
//! event in memory (≈180 bytes each), and an alias (`*name`) is expanded by re-reading the
//! anchored node each time it is used. None of that can be bounded from the outside once the
//! parser runs, so [`check`] walks the text first, in one pass and constant memory per byte,
//! and refuses it when the nesting, the number of aliases or the number of values is beyond
//! anything a DAG file needs.
//!
//! The walk mirrors the token boundaries of libyaml's scanner (`scanner.rs` of unsafe-libyaml
//! 0.2.11, itself a translation of libyaml 0.2.5): which characters start a token, where
//! quoted, plain and block scalars end, how block indentation is rolled and unrolled. It has
//! to: a `[` inside a quoted scalar is text, one after it is structure, and only the
//! scanner's rules tell where a quoted scalar starts and ends. It produces no tokens or
//! values, and where libyaml would stop with an error it just keeps going, which can only
//! count more than libyaml would ever reach (the counts are upper bounds; past a syntax error
//! nothing is parsed). The tests compare it with libyaml's own scanner on random text.

use crate::dag::DagError;

/// Deepest accepted nesting (flow collections plus block collections). A DAG file needs
/// about five levels (document, `tasks`, a task, its `inputs` or `env`), JSON included.
pub const MAX_DEPTH: usize = 32;
/// Most aliases (`*name`) accepted in one file. `defaults:` is the way to share settings
/// between many tasks; the expansion itself is also bounded while deserializing.
pub const MAX_ALIASES: usize = 1_000;
/// Most values (scalars, aliases, collections) in one file: about 20 per task at the
/// largest task count. libyaml's loader holds each as an event of ~180 bytes.
pub const MAX_NODES: usize = 20 * crate::dag::MAX_TASKS;
/// Largest accepted YAML text, bytes (the API's submission limit).
pub const MAX_BYTES: usize = 32 * 1024 * 1024;

/// What a scan found; every figure is an upper bound of what libyaml's scanner produces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Deepest flow nesting (open `[` / `{`).
    pub max_flow: usize,
    /// Deepest nesting of flow and block collections together.
    pub max_depth: usize,
    /// Alias tokens (`*name`).
    pub aliases: usize,
    /// Scalars, aliases and collection starts.
    pub nodes: usize,
}

/// Where a limit was first passed: what, the limit, and the 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exceeded {
    what: Limit,
    line: usize,
    column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Depth,
    Aliases,
    Nodes,
}

/// Refuses text whose parse would cost more than a DAG file can need: see the module docs.
/// Runs in linear time; a refusal names the limit and where in the text it was passed.
pub fn check(text: &str) -> Result<(), DagError> {
    if text.len() > MAX_BYTES {
        return Err(DagError::YamlTooLarge {
            bytes: text.len(),
            max: MAX_BYTES,
        });
    }
    let mut scanner = Scanner::new(text.as_bytes(), true);
    scanner.run();
    match scanner.exceeded {
        None => Ok(()),
        Some(Exceeded { what, line, column }) => Err(match what {
            Limit::Depth => DagError::YamlTooDeep {
                line,
                column,
                max: MAX_DEPTH,
            },
            Limit::Aliases => DagError::YamlTooManyAliases {
                line,
                column,
                max: MAX_ALIASES,
            },
            Limit::Nodes => DagError::YamlTooManyNodes {
                line,
                column,
                max: MAX_NODES,
            },
        }),
    }
}

/// Scans the whole text without stopping at a limit (for tests and fuzzing).
pub fn scan(text: &str) -> Stats {
    let mut scanner = Scanner::new(text.as_bytes(), false);
    scanner.run();
    scanner.stats
}

/// libyaml's "simple key": a token that may turn out to be a mapping key when a `:` follows on
/// the same line. Only the block-level one matters here (it decides block indentation); keys
/// inside flow collections never change how the text splits into tokens.
#[derive(Debug, Clone, Copy, Default)]
struct SimpleKey {
    possible: bool,
    line: u64,
    index: usize,
    column: i64,
}

struct Scanner<'a> {
    b: &'a [u8],
    /// Byte offset (libyaml's `mark.index` counts bytes too).
    pos: usize,
    /// Characters since the start of the line (libyaml's `mark.column`).
    column: i64,
    line: u64,
    flow: usize,
    /// Column of the innermost block collection; -1 at the top.
    indent: i64,
    indents: Vec<i64>,
    simple_key_allowed: bool,
    key: SimpleKey,
    stats: Stats,
    /// Stop at the first limit passed (`check`) or scan everything (`scan`).
    stop_at_limit: bool,
    exceeded: Option<Exceeded>,
}

const fn is_alpha(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Characters of a tag (`!foo`), libyaml's `yaml_parser_scan_tag_uri` without `uri_char`.
const fn is_tag_char(c: u8) -> bool {
    is_alpha(c)
        || matches!(
            c,
            b';' | b'/'
                | b'?'
                | b':'
                | b'@'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b'.'
                | b'%'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
        )
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8], stop_at_limit: bool) -> Scanner<'a> {
        Scanner {
            b,
            pos: 0,
            column: 0,
            line: 0,
            flow: 0,
            indent: -1,
            indents: Vec::new(),
            simple_key_allowed: true,
            key: SimpleKey::default(),
            stats: Stats::default(),
            stop_at_limit,
            exceeded: None,
        }
    }

    // --- the reader: bytes of UTF-8, as libyaml's buffer -------------------------------

    /// The byte `k` bytes ahead, 0 past the end (libyaml's buffer ends in NUL; a NUL in the
    /// text itself is refused by libyaml's reader, after which nothing counts).
    fn at(&self, k: usize) -> u8 {
        self.b.get(self.pos + k).copied().unwrap_or(0)
    }

    fn is_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    /// Width in bytes of the line break at `pos + k`, or 0: CR, LF, NEL, LS, PS.
    fn break_at(&self, k: usize) -> usize {
        match self.at(k) {
            b'\r' | b'\n' => 1,
            0xC2 if self.at(k + 1) == 0x85 => 2,
            0xE2 if self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_break(&self) -> bool {
        self.break_at(0) > 0
    }

    fn is_blank_at(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    fn is_blank(&self) -> bool {
        self.is_blank_at(0)
    }

    /// Blank, line break or end of text, `k` bytes ahead. Only called with `k` at a
    /// character boundary after ASCII characters, as libyaml's `IS_BLANKZ_AT` is.
    fn is_blankz_at(&self, k: usize) -> bool {
        self.is_blank_at(k) || self.break_at(k) > 0 || self.pos + k >= self.b.len()
    }

    fn is_blankz(&self) -> bool {
        self.is_blankz_at(0)
    }

    fn is_breakz(&self) -> bool {
        self.is_break() || self.is_end()
    }

    /// Skips one character (libyaml's `SKIP`).
    fn skip(&mut self) {
        if self.is_end() {
            return;
        }
        let width = match self.at(0) {
            c if c < 0x80 => 1,
            c if c & 0xE0 == 0xC0 => 2,
            c if c & 0xF0 == 0xE0 => 3,
            _ => 4,
        };
        self.pos = (self.pos + width).min(self.b.len());
        self.column += 1;
    }

    /// Skips a line break (libyaml's `SKIP_LINE`; CR LF counts as one).
    fn skip_line(&mut self) {
        let width = if self.at(0) == b'\r' && self.at(1) == b'\n' {
            2
        } else {
            self.break_at(0)
        };
        if width > 0 {
            self.pos += width;
            self.column = 0;
            self.line += 1;
        }
    }

    fn document_indicator(&self) -> bool {
        self.column == 0
            && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && self.is_blankz_at(3)
    }

    // --- bookkeeping -------------------------------------------------------------------

    fn note(&mut self, what: Limit) {
        if self.exceeded.is_none() {
            self.exceeded = Some(Exceeded {
                what,
                line: usize::try_from(self.line)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
                column: usize::try_from(self.column)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            });
        }
    }

    fn depth_changed(&mut self) {
        let depth = self.flow + self.indents.len();
        self.stats.max_flow = self.stats.max_flow.max(self.flow);
        self.stats.max_depth = self.stats.max_depth.max(depth);
        if depth > MAX_DEPTH {
            self.note(Limit::Depth);
        }
    }

    fn node(&mut self) {
        self.stats.nodes += 1;
        if self.stats.nodes > MAX_NODES {
            self.note(Limit::Nodes);
        }
    }

    fn roll_indent(&mut self, column: i64) {
        if self.flow == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
            self.node();
            self.depth_changed();
        }
    }

    fn unroll_indent(&mut self, column: i64) {
        if self.flow != 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn save_simple_key(&mut self) {
        if self.flow == 0 && self.simple_key_allowed {
            self.key = SimpleKey {
                possible: true,
                line: self.line,
                index: self.pos,
                column: self.column,
            };
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow == 0 {
            self.key.possible = false;
        }
    }

    fn stale_simple_keys(&mut self) {
        if self.key.possible
            && (self.key.line < self.line || self.key.index.saturating_add(1024) < self.pos)
        {
            self.key.possible = false;
        }
    }

    // --- the token loop (libyaml's `yaml_parser_fetch_next_token`) ----------------------

    fn run(&mut self) {
        while !self.is_end() {
            if self.stop_at_limit && self.exceeded.is_some() {
                return;
            }
            self.scan_to_next_token();
            self.stale_simple_keys();
            self.unroll_indent(self.column);
            if self.is_end() {
                return;
            }
            self.next_token();
        }
    }

    fn scan_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.at(0) == 0xEF && self.at(1) == 0xBB && self.at(2) == 0xBF {
                self.skip();
            }
            while self.at(0) == b' '
                || ((self.flow != 0 || !self.simple_key_allowed) && self.at(0) == b'\t')
            {
                self.skip();
            }
            if self.at(0) == b'#' {
                while !self.is_breakz() {
                    self.skip();
                }
            }
            if !self.is_break() {
                return;
            }
            self.skip_line();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn next_token(&mut self) {
        let c = self.at(0);
        if self.column == 0 && c == b'%' {
            // A directive: libyaml reads it to the end of its line (or stops on an error).
            self.unroll_indent(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            while !self.is_breakz() {
                self.skip();
            }
            self.skip_line();
            return;
        }
        if self.document_indicator() {
            self.unroll_indent(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            self.skip();
            self.skip();
            self.skip();
            return;
        }
        match c {
            b'[' | b'{' => {
                self.save_simple_key();
                self.flow += 1;
                self.node();
                self.depth_changed();
                self.simple_key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.remove_simple_key();
                self.flow = self.flow.saturating_sub(1);
                self.simple_key_allowed = false;
                self.skip();
            }
            b',' => {
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'-' if self.is_blankz_at(1) => {
                self.roll_indent(self.column);
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'?' if self.flow != 0 || self.is_blankz_at(1) => {
                self.roll_indent(self.column);
                self.remove_simple_key();
                self.simple_key_allowed = self.flow == 0;
                self.skip();
            }
            b':' if self.flow != 0 || self.is_blankz_at(1) => {
                if self.flow == 0 {
                    if self.key.possible {
                        self.roll_indent(self.key.column);
                        self.key.possible = false;
                        self.simple_key_allowed = false;
                    } else {
                        self.roll_indent(self.column);
                        self.simple_key_allowed = true;
                    }
                } else {
                    self.simple_key_allowed = false;
                }
                self.skip();
            }
            b'*' | b'&' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.skip();
                while is_alpha(self.at(0)) {
                    self.skip();
                }
                if c == b'*' {
                    self.node();
                    self.stats.aliases += 1;
                    if self.stats.aliases > MAX_ALIASES {
                        self.note(Limit::Aliases);
                    }
                }
            }
            b'!' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.scan_tag();
            }
            b'|' | b'>' if self.flow == 0 => {
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.node();
                self.scan_block_scalar();
            }
            b'\'' | b'"' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.node();
                self.scan_flow_scalar(c == b'\'');
            }
            _ => {
                let starts_plain = !(self.is_blankz()
                    || matches!(
                        c,
                        b'-' | b'?'
                            | b':'
                            | b','
                            | b'['
                            | b']'
                            | b'{'
                            | b'}'
                            | b'#'
                            | b'&'
                            | b'*'
                            | b'!'
                            | b'|'
                            | b'>'
                            | b'\''
                            | b'"'
                            | b'%'
                            | b'@'
                            | b'`'
                    ))
                    || (c == b'-' && !self.is_blank_at(1))
                    || (self.flow == 0 && matches!(c, b'?' | b':') && !self.is_blankz_at(1));
                if starts_plain {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.node();
                    if self.scan_plain_scalar() {
                        self.simple_key_allowed = true;
                    }
                } else {
                    // libyaml stops here ("found character that cannot start any token").
                    self.skip();
                }
            }
        }
    }

    /// `!tag`, `!handle!suffix` or `!<verbatim>` (libyaml's `yaml_parser_scan_tag`).
    fn scan_tag(&mut self) {
        if self.at(1) == b'<' {
            self.skip();
            self.skip();
            while is_tag_char(self.at(0)) || matches!(self.at(0), b',' | b'[' | b']') {
                self.skip();
            }
            if self.at(0) == b'>' {
                self.skip();
            }
        } else {
            self.skip();
            while is_tag_char(self.at(0)) {
                self.skip();
            }
        }
    }

    /// `'…'` or `"…"` (libyaml's `yaml_parser_scan_flow_scalar`).
    fn scan_flow_scalar(&mut self, single: bool) {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        loop {
            if self.document_indicator() || self.is_end() {
                // libyaml stops with an error here.
                return;
            }
            while !self.is_blankz() {
                let c = self.at(0);
                if single && c == b'\'' && self.at(1) == b'\'' {
                    self.skip();
                    self.skip();
                } else if c == quote {
                    self.skip();
                    return;
                } else if !single && c == b'\\' && self.break_at(1) > 0 {
                    self.skip();
                    self.skip_line();
                    break;
                } else if !single && c == b'\\' {
                    self.skip();
                    self.skip();
                } else {
                    self.skip();
                }
            }
            while self.is_blank() || self.is_break() {
                if self.is_blank() {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    /// A plain scalar (libyaml's `yaml_parser_scan_plain_scalar`). Returns whether it ended
    /// after line breaks (then a simple key is allowed again).
    fn scan_plain_scalar(&mut self) -> bool {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.document_indicator() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz() {
                let c = self.at(0);
                if self.flow != 0
                    && c == b':'
                    && matches!(self.at(1), b',' | b'?' | b'[' | b']' | b'{' | b'}')
                {
                    // libyaml stops here ("found unexpected ':'").
                    return leading_blanks;
                }
                if (c == b':' && self.is_blankz_at(1))
                    || (self.flow != 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}'))
                {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(self.is_blank() || self.is_break()) {
                break;
            }
            while self.is_blank() || self.is_break() {
                if self.is_blank() {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && self.column < indent {
                break;
            }
        }
        leading_blanks
    }

    /// `|` or `>` and the lines that belong to it (libyaml's `yaml_parser_scan_block_scalar`).
    fn scan_block_scalar(&mut self) {
        self.skip();
        let mut increment = 0i64;
        if matches!(self.at(0), b'+' | b'-') {
            self.skip();
            if self.at(0).is_ascii_digit() {
                increment = i64::from(self.at(0) - b'0');
                self.skip();
            }
        } else if self.at(0).is_ascii_digit() {
            increment = i64::from(self.at(0) - b'0');
            self.skip();
            if matches!(self.at(0), b'+' | b'-') {
                self.skip();
            }
        }
        while self.is_blank() {
            self.skip();
        }
        if self.at(0) == b'#' {
            while !self.is_breakz() {
                self.skip();
            }
        }
        if !self.is_breakz() {
            // libyaml stops here ("did not find expected comment or line break"); an
            // indentation indicator of 0 also ends up here.
            return;
        }
        self.skip_line();
        let mut indent = if increment != 0 {
            if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            }
        } else {
            0
        };
        if !self.block_scalar_breaks(&mut indent) {
            return;
        }
        while self.column == indent && !self.is_end() {
            while !self.is_breakz() {
                self.skip();
            }
            self.skip_line();
            if !self.block_scalar_breaks(&mut indent) {
                return;
            }
        }
    }

    /// Empty lines and indentation before a block scalar's next line; fixes the indentation
    /// from the first non-empty line when it was not given. False where libyaml stops with an
    /// error (a tab where indentation is expected).
    fn block_scalar_breaks(&mut self, indent: &mut i64) -> bool {
        let mut max_indent = 0i64;
        loop {
            while (*indent == 0 || self.column < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column);
            if (*indent == 0 || self.column < *indent) && self.at(0) == b'\t' {
                return false;
            }
            if !self.is_break() {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        true
    }
}

/// libyaml's own scanner, as a reference for [`scan`]: the same figures, counted from the
/// tokens that unsafe-libyaml (the scanner `serde_yaml` uses) produces, up to the end of the
/// stream or its first error. Tests and the fuzz target check that [`scan`] never counts
/// less (and counts exactly the same on text libyaml scans to the end).
#[cfg(any(test, feature = "libyaml-oracle"))]
pub mod oracle {
    use std::mem::MaybeUninit;

    use unsafe_libyaml as unsafe_y;

    /// The figures of [`super::Stats`] from libyaml's tokens, and whether it reached the
    /// end of the stream without an error.
    pub fn scan(text: &str) -> (super::Stats, bool) {
        let mut stats = super::Stats::default();
        let (mut flow, mut block) = (0usize, 0usize);
        let mut clean = false;
        // SAFETY: the parser is initialized before use and deleted once; `text` outlives it
        // (it is borrowed for the whole function); every token is deleted after it is read.
        unsafe {
            let mut parser = MaybeUninit::<unsafe_y::yaml_parser_t>::uninit();
            if unsafe_y::yaml_parser_initialize(parser.as_mut_ptr()).fail {
                return (stats, false);
            }
            let parser = parser.as_mut_ptr();
            unsafe_y::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as u64);
            loop {
                let mut token = MaybeUninit::<unsafe_y::yaml_token_t>::uninit();
                if unsafe_y::yaml_parser_scan(parser, token.as_mut_ptr()).fail {
                    break;
                }
                let token = token.as_mut_ptr();
                let kind = (*token).type_;
                unsafe_y::yaml_token_delete(token);
                match kind {
                    unsafe_y::YAML_NO_TOKEN => break,
                    unsafe_y::YAML_STREAM_END_TOKEN => {
                        clean = true;
                        break;
                    }
                    unsafe_y::YAML_FLOW_SEQUENCE_START_TOKEN
                    | unsafe_y::YAML_FLOW_MAPPING_START_TOKEN => {
                        flow += 1;
                        stats.nodes += 1;
                    }
                    unsafe_y::YAML_FLOW_SEQUENCE_END_TOKEN
                    | unsafe_y::YAML_FLOW_MAPPING_END_TOKEN => {
                        flow = flow.saturating_sub(1);
                    }
                    unsafe_y::YAML_BLOCK_SEQUENCE_START_TOKEN
                    | unsafe_y::YAML_BLOCK_MAPPING_START_TOKEN => {
                        block += 1;
                        stats.nodes += 1;
                    }
                    unsafe_y::YAML_BLOCK_END_TOKEN => block = block.saturating_sub(1),
                    unsafe_y::YAML_SCALAR_TOKEN => stats.nodes += 1,
                    unsafe_y::YAML_ALIAS_TOKEN => {
                        stats.aliases += 1;
                        stats.nodes += 1;
                    }
                    _ => {}
                }
                stats.max_flow = stats.max_flow.max(flow);
                stats.max_depth = stats.max_depth.max(flow + block);
            }
            unsafe_y::yaml_parser_delete(parser);
        }
        (stats, clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `scan` against libyaml on one text: never less, and the same when libyaml scans the
    /// whole text without an error.
    fn agrees(text: &str) -> Result<(), TestCaseError> {
        let ours = scan(text);
        let (theirs, clean) = oracle::scan(text);
        prop_assert!(
            ours.max_flow >= theirs.max_flow,
            "flow depth: ours {ours:?}, libyaml {theirs:?}\n{text:?}"
        );
        prop_assert!(
            ours.aliases >= theirs.aliases,
            "aliases: ours {ours:?}, libyaml {theirs:?}\n{text:?}"
        );
        prop_assert!(
            ours.nodes >= theirs.nodes,
            "nodes: ours {ours:?}, libyaml {theirs:?}\n{text:?}"
        );
        if clean {
            prop_assert_eq!(
                ours.max_flow,
                theirs.max_flow,
                "flow depth differs on clean text {:?}",
                text
            );
            prop_assert_eq!(
                ours.aliases,
                theirs.aliases,
                "aliases differ on clean text {:?}",
                text
            );
            prop_assert_eq!(
                ours.nodes,
                theirs.nodes,
                "nodes differ on clean text {:?}",
                text
            );
        }
        Ok(())
    }

    #[test]
    fn example_dags_scan_exactly_like_libyaml() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dags");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("dags/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("read");
                let (theirs, clean) = oracle::scan(&text);
                assert!(clean, "{}", path.display());
                assert_eq!(scan(&text), theirs, "{}", path.display());
                check(&text).expect("example DAGs pass");
                seen += 1;
            }
        }
        assert!(seen >= 5, "found only {seen} example DAGs");
    }

    #[test]
    fn tricky_texts_agree_with_libyaml() {
        let cases = [
            // Brackets inside quoted, plain and block scalars are text.
            "a: \"[[[[\"\nb: '[[{{'\nc: x[[[y\nd: |\n  [[[[\n  {{{{\ne: >-\n  ]]]]\n",
            // A quote in the middle of a plain scalar is text; one after a token is not.
            "k: [a \"b]\", c]\n",
            "k: [a \"b]\"]\n",
            "- it's [here]\n- 'it''s' [there]\n",
            // Multi-line plain scalars (continuation lines) in block context.
            "key: abc\n  [[[[ def\nnext: [x]\n",
            "key: abc\n[[[[ def\n",
            // Block scalar indentation: explicit, auto, and less-indented lines ending it.
            "- |2\n   [[\n  ]]\n- >\n    x\n   y\n- z\n",
            "a:\n  b: |\n    [[[\n  c: [1, [2, [3]]]\n",
            // Tags, anchors and aliases in both contexts.
            "a: &x [1, *x, !tag [2], !<tag:[x]> 3, &y {k: *y}]\n*x : v\n",
            // Comments, documents and directives.
            "%YAML 1.1\n--- # [[[\n[a, # ]]]\n b]\n...\n--- {x: [y]}\n",
            // Double-quoted escapes and line continuations.
            "a: \"\\\"[\\\\\" [\nb: \"x\\\n  [y\"\n",
            // Tabs, carriage returns, Unicode line separators.
            "a:\t[b,\r\n c]\r\nd: \u{2028}[e]\u{85}f: [g]\n",
            // Deep, then unbalanced.
            "[[[[[[[[[[]]]]]]]]]]\n]]]]\n[[[[",
            "{a: {b: {c: [d, {e: f}]}}}",
            // Simple keys far away (over 1024 bytes) or over lines.
            &format!("{}: [x]\n", "k".repeat(1100)),
            "? [a, b]\n: [c]\n",
            "[a, b]: [c, [d]]\n",
            // A block scalar's lines must be indented deeper than its parent collection.
            "a:\n  b: |\n [[x]]\n",
            "a:\n  b: >\n\n   x\n [[y]]\n",
        ];
        for text in cases {
            agrees(text).expect("agrees with libyaml");
        }
    }

    #[test]
    fn limits_are_refused_quickly_with_where() {
        let deep = format!(
            "name: x\ntasks: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let err = check(&deep).expect_err("too deep");
        assert!(
            matches!(err, DagError::YamlTooDeep { line: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("line 2"), "{err}");

        let mut aliases = String::from(
            "name: x\ntasks:\n  - id: t0\n    module: m.wasm\n    inputs: &l [a, b]\n",
        );
        for i in 1..=MAX_ALIASES + 1 {
            aliases.push_str(&format!("  - {{id: t{i}, module: m.wasm, inputs: *l}}\n"));
        }
        let err = check(&aliases).expect_err("too many aliases");
        assert!(matches!(err, DagError::YamlTooManyAliases { .. }), "{err}");

        let many = format!("name: x\ntasks: [{}]\n", "a,".repeat(MAX_NODES + 1));
        let err = check(&many).expect_err("too many values");
        assert!(matches!(err, DagError::YamlTooManyNodes { .. }), "{err}");
        // Not a timing assertion: a quadratic scan would take minutes here, not seconds.
        eprintln!("three refusals in {:?}", started.elapsed());

        let huge = " ".repeat(MAX_BYTES + 1);
        assert!(matches!(check(&huge), Err(DagError::YamlTooLarge { .. })));
    }

    /// Text built from the characters and fragments that change how YAML splits into
    /// tokens: indicators, quotes, escapes, comments, line breaks, indentation.
    fn yamlish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just(": ".to_string()),
            Just(":".to_string()),
            Just("- ".to_string()),
            Just("? ".to_string()),
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("''".to_string()),
            Just("\\\"".to_string()),
            Just("\\".to_string()),
            Just("#".to_string()),
            Just(" #".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("\n  ".to_string()),
            Just("\n    ".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("|".to_string()),
            Just(">-".to_string()),
            Just("|2".to_string()),
            Just("*a".to_string()),
            Just("&a ".to_string()),
            Just("!t ".to_string()),
            Just("!<x> ".to_string()),
            Just("---".to_string()),
            Just("...".to_string()),
            Just("%YAML 1.1".to_string()),
            Just("\u{2028}".to_string()),
            Just("\u{85}".to_string()),
            Just("é".to_string()),
            Just("%".to_string()),
            "[a-z]{1,4}",
            "[a-z]{1030}",
        ];
        prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// The guard never counts less nesting, fewer aliases or fewer values than libyaml
        /// scans (so a text it lets through cannot cost libyaml more than the limits allow),
        /// and counts exactly as many on text libyaml scans without an error. The long fuzz
        /// run (`fuzz/`, target `yaml_guard`) checks the same on coverage-guided input.
        #[test]
        fn scan_bounds_libyaml_on_yamlish_text(text in yamlish()) {
            agrees(&text)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn scan_bounds_libyaml_on_any_text(text in any::<String>()) {
            agrees(&text)?;
        }
    }
}
