//! Text from outside the agent (a collector's answer, a path from a flag, a file's contents,
//! an error that quotes them) made safe to log: [`Escaped`] shows control characters
//! (ESC, newline, carriage return, DEL, C1) and invisible bidirectional-text marks as
//! escapes, so a collector cannot colour the terminal or forge log lines, and bounds the
//! length, so an answer cannot flood the log. Clean text is shown unchanged.
//! [`with_causes`] writes an error and its causes on one line. A leaf: it uses no other
//! module of the agent.

use std::fmt;

/// Characters of external text shown at most; the rest is counted, not shown.
pub const MAX_CHARS: usize = 1024;

/// Displays external text escaped and bounded: `\n`, `\r`, `\t`, `\\` and `\u{..}` for other
/// control and bidirectional-formatting characters, cut after [`MAX_CHARS`] characters
/// with `…(N more bytes)`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, (at, c)) in self.0.char_indices().enumerate() {
            if shown == MAX_CHARS {
                return write!(f, "…({} more bytes)", self.0.len() - at);
            }
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

/// Control characters (C0, DEL, C1) and the invisible marks that reorder or hide text
/// (bidirectional overrides and isolates, line and paragraph separators).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `error` and its chain of causes on one line: `outer: cause: root cause`.
///
/// The agent's own errors follow one rule: a message embeds what caused it and does not
/// expose it as a [`source`](std::error::Error::source), so their chain is their message.
/// The chain is walked for other crates' errors (aya, hyper, tonic, the SDK), whose messages
/// often leave their cause out; a cause whose text is already in the line (a crate that
/// both embeds and exposes it) is not repeated.
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escape(text: &str) -> String {
        Escaped(text).to_string()
    }

    #[test]
    fn control_characters_and_line_breaks_are_shown_escaped() {
        assert_eq!(
            escape("oops\x1b[31m red\nFORGED line\r\t\\ \x7f\u{9b}"),
            "oops\\u{1b}[31m red\\nFORGED line\\r\\t\\\\ \\u{7f}\\u{9b}"
        );
        assert_eq!(
            escape("a\u{202e}b\u{2028}c\u{2066}d"),
            "a\\u{202e}b\\u{2028}c\\u{2066}d"
        );
    }

    #[test]
    fn clean_text_is_unchanged() {
        let text = "rejected by the collector: résumé 日本 (quota) 'x' \"y\"";
        assert_eq!(escape(text), text);
    }

    #[test]
    fn long_text_is_cut_and_the_rest_counted() {
        let text = "é".repeat(MAX_CHARS + 10);
        let shown = escape(&text);
        assert_eq!(
            shown,
            format!("{}…(20 more bytes)", "é".repeat(MAX_CHARS)),
            "characters are counted, and bytes left over"
        );
        assert_eq!(escape(&"x".repeat(MAX_CHARS)), "x".repeat(MAX_CHARS));
    }
}
