//! Plain aligned tables for people (no colours: the output is often piped or pasted), and text
//! made safe for a terminal.
//!
//! What the tool prints comes in good part from messages: reasons, subjects, headers and payloads
//! that any client of the server may have written. A terminal acts on some characters instead of
//! showing them: an escape sequence can clear the screen, retitle the window, write to the
//! clipboard or move the cursor over what was printed before, and a carriage return or a
//! bidirectional override can make a line read as something it is not. Every such character is
//! printed as its Rust escape (`\u{1b}`, `\r`, `\u{202e}`); `--json` gives the exact text.

use std::borrow::Cow;
use std::fmt::Write as _;

/// A table: a header row and rows of cells, printed with columns padded to their widest cell.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; each cell is made [`visible`] on one line.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|c| match visible(&c, false) {
                Cow::Borrowed(_) => c,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, the last column not padded.
    pub(crate) fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut l = String::new();
            for (i, cell) in cells.enumerate().take(cols) {
                if i + 1 < cols {
                    l.push_str(cell);
                    l.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
                } else {
                    l.push_str(cell);
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut self.header.iter().copied());
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

/// `true` for a character a terminal may act on instead of showing it: the C0 and C1 controls
/// and DEL (an escape sequence starts with ESC, or with CSI, U+009B, where C1 controls are read),
/// the bidirectional controls that reorder what is shown ("Trojan Source", CVE-2021-42574), and
/// the Unicode line and paragraph separators.
fn acts(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
        )
}

/// `s` with every character a terminal may act on written as its Rust escape (`\u{1b}`, `\r`,
/// `\0`); with `lines`, newlines and tabs are kept as they are. Backslashes are not escaped: the
/// text stays readable (JSON payloads are full of them), and `--json` is exact.
pub(crate) fn visible(s: &str, lines: bool) -> Cow<'_, str> {
    escape(
        s,
        |c| acts(c) && !(lines && (c == '\n' || c == '\t')),
        |out, c| out.extend(c.escape_debug()),
    )
}

/// `s` with each character that `escaped` picks written by `write`; borrowed if there is none.
fn escape<'a>(s: &'a str, escaped: impl Fn(char) -> bool, write: impl Fn(&mut String, char)) -> Cow<'a, str> {
    if !s.chars().any(&escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if escaped(c) {
            write(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A payload for a terminal: its text made [`visible`] (newlines and tabs kept), each byte that
/// is not part of valid UTF-8 written as `\xNN`; and whether it was valid UTF-8.
pub(crate) fn visible_bytes(bytes: &[u8]) -> (String, bool) {
    let mut out = String::with_capacity(bytes.len());
    let mut utf8 = true;
    for chunk in bytes.utf8_chunks() {
        out.push_str(&visible(chunk.valid(), true));
        for b in chunk.invalid() {
            utf8 = false;
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    (out, utf8)
}

/// JSON text with the characters a terminal may act on that JSON leaves as they are (C1
/// controls, bidirectional controls, line separators; serde_json already escapes C0) written as
/// `\uXXXX`. They can only be inside strings, and all are in the basic plane, so the result is
/// the same JSON.
pub(crate) fn visible_json(json: &str) -> Cow<'_, str> {
    escape(
        json,
        |c| acts(c) && c != '\n',
        |out, c| {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        },
    )
}

/// `s` on one line (line breaks as spaces), made [`visible`], cut to `max` characters with an
/// ellipsis when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    let one_line = visible(&one_line, false).into_owned();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut t: String = one_line.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_long_cells_are_cut() {
        let mut t = Table::new(&["SEQ", "HANDLER", "REASON"]);
        t.row(vec!["1".into(), "ledger-book".into(), "x".into()]);
        t.row(vec![
            "1234".into(),
            "a".into(),
            cut("a very long reason\nover lines", 10),
        ]);
        assert_eq!(
            t.render(),
            "SEQ   HANDLER      REASON\n1     ledger-book  x\n1234  a            a very lo…\n"
        );
        assert_eq!(cut("", 3), "");
    }

    #[test]
    fn what_a_terminal_would_act_on_is_shown_escaped() {
        // Clear screen, window title, clipboard (OSC 52), carriage return over the line, NUL,
        // CSI as a C1 control, a right-to-left override.
        let hostile = "a\u{1b}[2Jb\u{1b}]0;title\u{7}c\u{1b}]52;c;ZWNobw==\u{7}d\re\0f\u{9b}31mg\u{202e}h";
        let shown = visible(hostile, false);
        assert!(!shown.chars().any(acts), "{shown}");
        assert_eq!(
            shown,
            r"a\u{1b}[2Jb\u{1b}]0;title\u{7}c\u{1b}]52;c;ZWNobw==\u{7}d\re\0f\u{9b}31mg\u{202e}h"
        );
        // Plain text, other scripts and emoji are left alone, borrowed.
        assert!(matches!(visible("Zürich 東京 ✓ {\"a\\\"b\"}", false), Cow::Borrowed(_)));
        assert_eq!(visible("one\ttwo\nthree", true), "one\ttwo\nthree");
        assert_eq!(visible("one\ttwo\nthree", false), r"one\ttwo\nthree");

        // Table cells are escaped before they are measured: the columns stay aligned.
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["\u{1b}[2J".into(), "x".into()]);
        t.row(vec!["yy".into(), "z".into()]);
        assert_eq!(t.render(), "A          B\n\\u{1b}[2J  x\nyy         z\n");
        assert_eq!(cut("bad\u{1b}[31m\nred", 100), r"bad\u{1b}[31m red");
    }

    #[test]
    fn payloads_that_are_not_utf8_show_their_bytes() {
        assert_eq!(visible_bytes(b"{\"a\": 1}\n"), ("{\"a\": 1}\n".to_owned(), true));
        let (shown, utf8) = visible_bytes(b"\xff\xfe\x00garbage\x1b[2J \xc3\xa9\xc3");
        assert!(!utf8);
        assert_eq!(shown, r"\xff\xfe\0garbage\u{1b}[2J é\xc3");
    }

    #[test]
    fn json_keeps_its_meaning() {
        let value = serde_json::json!({ "reason": "x\u{202e}y\u{85}z\u{2028}", "n": "\u{1b}" });
        let text = serde_json::to_string_pretty(&value).unwrap();
        let shown = visible_json(&text);
        assert!(!shown.chars().any(|c| acts(c) && c != '\n'), "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap(), value);
        assert!(shown.contains(r"\u202e") && shown.contains(r"\u0085"), "{shown}");
    }
}
