//! Putting values into ClickHouse SQL safely, for servers of every version:
//! query parameters (`{name:Type}`) came after Debian 12's 18.16, so every
//! user-given string becomes a quoted literal here, and nothing else ever
//! reaches a statement unquoted (identifiers are checked against a fixed
//! alphabet; numbers are formatted from integers).

/// `s` as a single-quoted ClickHouse string literal: backslash and quote
/// escaped, and control characters written as escapes (a statement stays
/// one line, whatever the input).
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A `LIKE` pattern that matches `s` literally (`%`, `_` and `\` escaped),
/// before it is quoted with [`string`].
pub fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A database or table name: ASCII letters, digits and `_`, not starting
/// with a digit, at most 64 characters (so it is never quoted). A clap
/// value parser.
pub fn identifier(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?} is not a plain name (letters, digits and _, e.g. portcullis)")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_end_early() {
        assert_eq!(string("team-a"), "'team-a'");
        assert_eq!(string("it's"), r"'it\'s'");
        assert_eq!(string(r"a\'b"), r"'a\\\'b'");
        assert_eq!(string("x' OR 1=1 --"), r"'x\' OR 1=1 --'");
        assert_eq!(string("a\nb\0c\u{1b}d"), r"'a\nb\0c\x1Bd'");
        assert_eq!(string("\u{85}"), r"'\xC2\x85'");
        assert_eq!(string("ünï"), "'ünï'");
        // Every quote inside is escaped: counting unescaped quotes leaves
        // exactly the two around it.
        for nasty in [r"\", r"\\'", "'''", r"\'\'", "';DROP TABLE x;--"] {
            let lit = string(nasty);
            let (mut quotes, mut esc) = (0, false);
            for c in lit.chars() {
                match (c, esc) {
                    ('\\', false) => esc = true,
                    ('\'', false) => quotes += 1,
                    _ => esc = false,
                }
            }
            assert_eq!(quotes, 2, "{nasty} -> {lit}");
        }
    }

    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(like_literal("a_b%c\\d"), r"a\_b\%c\\d");
    }

    #[test]
    fn identifiers() {
        for ok in ["portcullis", "blocked", "allowed_by_rule", "_x1"] {
            assert_eq!(identifier(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "1x", "a.b", "a b", "a`b", "a;DROP", "ä", &"x".repeat(65)] {
            assert!(identifier(bad).is_err(), "{bad}");
        }
    }
}
