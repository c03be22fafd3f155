//! Text for the terminal: strings that servers send (why an instance was ejected, a log's last
//! error, a status message, addresses and names they report) are printed with their control
//! characters escaped, so that none of them can move the cursor, recolour or clear the screen,
//! or retitle the window (ANSI escape sequences), or break a table's lines.
//!
//! JSON output needs none of this: serde_json escapes control characters in strings.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) written as Rust escapes it: `\n`, `\t`,
/// `\u{1b}`. Other characters are kept as they are.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert!(matches!(
            printable("plain: é, ☃"),
            Cow::Borrowed("plain: é, ☃")
        ));
        assert_eq!(
            printable("\x1b[2J\x1b]0;owned\x07red\x1b[31m"),
            r"\u{1b}[2J\u{1b}]0;owned\u{7}red\u{1b}[31m"
        );
        assert_eq!(printable("a\nb\tc\rd"), r"a\nb\tc\rd");
        // DEL and C1 (0x9b is a one-character CSI on some terminals).
        assert_eq!(printable("\u{7f}\u{9b}31m"), r"\u{7f}\u{9b}31m");
        // Quotes and backslashes stay as they are: only control characters are escaped.
        assert_eq!(printable(r#"it's "x" \ y"#), r#"it's "x" \ y"#);
    }
}
