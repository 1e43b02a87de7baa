//! Names a workload controls (the host it looked up, its process name) and
//! names it may influence (pod names) are escaped before they reach a log
//! line or a terminal: a DNS label can carry any byte, so a name with a
//! newline must not forge a second record, and one with an ANSI escape
//! must not recolour (or retitle, or scroll) the on-call engineer's
//! terminal when `portcullis blocked` prints its table.

use std::borrow::Cow;

/// Characters that are not shown as themselves: C0 and C1 controls and DEL
/// (`char::is_control`), and the invisible formatting characters that
/// reorder or hide text (bidirectional overrides and isolates, zero-width
/// characters, line and paragraph separators, the byte-order mark,
/// interlinear annotations).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// `s` with every unsafe character written as `\u{XX}` (hex code point),
/// unchanged (borrowed) when it has none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Escapes `s` in place.
pub fn escape_in_place(s: &mut String) {
    if let Cow::Owned(e) = escape(s) {
        *s = e;
    }
}

/// Escapes an optional name in place.
pub fn escape_opt(s: &mut Option<String>) {
    if let Some(s) = s {
        escape_in_place(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisible_formatting_are_escaped() {
        assert_eq!(escape("api.example.test"), "api.example.test");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb"), "a\\u{a}b");
        assert_eq!(escape("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escape("x\r\ty"), "x\\u{d}\\u{9}y");
        assert_eq!(escape("del\u{7f}"), "del\\u{7f}");
        assert_eq!(escape("csi\u{9b}31m"), "csi\\u{9b}31m", "C1 CSI");
        assert_eq!(escape("moc.\u{202e}evil"), "moc.\\u{202e}evil", "right-to-left override");
        assert_eq!(escape("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(escape("bom\u{feff}"), "bom\\u{feff}");
        // Printable non-ASCII stays as it is.
        assert_eq!(escape("bücher.example"), "bücher.example");
        let mut s = Some("a\u{1b}b".to_owned());
        escape_opt(&mut s);
        assert_eq!(s.as_deref(), Some("a\\u{1b}b"));
    }

    #[test]
    fn an_escaped_name_has_no_unsafe_character_left() {
        let nasty: String = (0u32..0x300).chain(0x2000..0x2070).chain([0xfeff, 0xfff9]).filter_map(char::from_u32).collect();
        assert!(!escape(&nasty).chars().any(is_unsafe));
        assert!(!escape(&nasty).contains('\n'));
    }
}
