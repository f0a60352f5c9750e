//! llama.cpp's grammar format (GBNF) read into llguidance's Lark syntax, so that grammars
//! written for llama.cpp (`root ::= ...`) constrain generation here too.
//!
//! What GBNF has: rules `name ::= ...` (names of letters, digits and `-`; the start is `root`),
//! strings `"..."`, character classes `[a-z]` and `[^...]`, `.` for any character, groups,
//! alternatives `|`, the repetitions `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}` and `#` comments.
//! Escapes are `\n \r \t \\ \" \[ \]`, `\xHH`, `\uHHHH` and `\UHHHHHHHH` (and `\-`, which
//! llama.cpp refuses). A rule may span lines.
//!
//! In Lark, a lowercase name is a rule, `[...]` is optional and a newline ends a rule; so every
//! rule is renamed (`g-` and its name, capitals as `_` and the letter), every class becomes a
//! regular expression and every rule is written on one line.

use std::collections::HashSet;
use std::fmt::Write as _;

/// Whether `grammar` is GBNF rather than Lark: some line defines a rule with `::=`, which Lark
/// never writes.
pub fn is_gbnf(grammar: &str) -> bool {
    grammar.lines().any(|line| {
        let line = line.trim_start();
        let name_len = line
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
            .count();
        name_len > 0 && line[name_len..].trim_start().starts_with("::=")
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Define,
    Str(String),
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    Any,
    Open,
    Close,
    Bar,
    Op(char),
    Repeat(Option<u32>, Option<u32>),
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    src: &'a str,
}

/// A fault at byte `at` of `src`, named by its line.
fn fault(src: &str, at: usize, msg: impl std::fmt::Display) -> String {
    let line = src[..at.min(src.len())].matches('\n').count() + 1;
    format!("GBNF line {line}: {msg}")
}

impl Lexer<'_> {
    fn err(&self, at: usize, msg: impl std::fmt::Display) -> String {
        fault(self.src, at, msg)
    }

    fn hex(&mut self, at: usize, digits: usize) -> Result<char, String> {
        let mut code = 0u32;
        for _ in 0..digits {
            let d = self
                .chars
                .next()
                .and_then(|(_, c)| c.to_digit(16))
                .ok_or_else(|| self.err(at, format!("an escape wants {digits} hex digits")))?;
            code = code * 16 + d;
        }
        char::from_u32(code).ok_or_else(|| self.err(at, format!("U+{code:X} is not a character")))
    }

    /// One character of a string or class, escapes read.
    fn char(&mut self, at: usize) -> Result<char, String> {
        let (_, c) = self
            .chars
            .next()
            .ok_or_else(|| self.err(at, "unterminated string or class"))?;
        if c != '\\' {
            return Ok(c);
        }
        let (_, e) = self
            .chars
            .next()
            .ok_or_else(|| self.err(at, "unterminated escape"))?;
        Ok(match e {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '\\' | '"' | '[' | ']' | '-' => e,
            'x' => self.hex(at, 2)?,
            'u' => self.hex(at, 4)?,
            'U' => self.hex(at, 8)?,
            other => return Err(self.err(at, format!("unknown escape \\{other}"))),
        })
    }

    fn number(&mut self) -> Option<u32> {
        let mut n: Option<u32> = None;
        while let Some(&(_, c)) = self.chars.peek() {
            let Some(d) = c.to_digit(10) else { break };
            self.chars.next();
            n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d));
        }
        n
    }

    fn skip_spaces(&mut self) {
        while let Some(&(_, c)) = self.chars.peek() {
            if c == ' ' || c == '\t' {
                self.chars.next();
            } else {
                break;
            }
        }
    }

    fn tokens(mut self) -> Result<Vec<(usize, Tok)>, String> {
        let mut out = Vec::new();
        while let Some((at, c)) = self.chars.next() {
            let tok = match c {
                c if c.is_whitespace() => continue,
                '#' => {
                    while self.chars.next_if(|&(_, c)| c != '\n').is_some() {}
                    continue;
                }
                '"' => {
                    let mut s = String::new();
                    loop {
                        match self.chars.peek() {
                            Some(&(_, '"')) => {
                                self.chars.next();
                                break;
                            }
                            Some(_) => s.push(self.char(at)?),
                            None => return Err(self.err(at, "unterminated string")),
                        }
                    }
                    Tok::Str(s)
                }
                '[' => {
                    let negated = self.chars.next_if(|&(_, c)| c == '^').is_some();
                    let mut items = Vec::new();
                    loop {
                        match self.chars.peek() {
                            Some(&(_, ']')) => {
                                self.chars.next();
                                break;
                            }
                            Some(_) => {
                                let lo = self.char(at)?;
                                let hi = match self.chars.peek() {
                                    Some(&(_, '-')) => {
                                        self.chars.next();
                                        if self.chars.peek().is_some_and(|&(_, c)| c == ']') {
                                            // A dash before `]` is itself.
                                            items.push((lo, lo));
                                            items.push(('-', '-'));
                                            continue;
                                        }
                                        self.char(at)?
                                    }
                                    _ => lo,
                                };
                                if hi < lo {
                                    return Err(
                                        self.err(at, format!("range {lo:?}-{hi:?} is reversed"))
                                    );
                                }
                                items.push((lo, hi));
                            }
                            None => return Err(self.err(at, "unterminated character class")),
                        }
                    }
                    Tok::Class { negated, items }
                }
                ':' => {
                    if self.chars.next().map(|(_, c)| c) == Some(':')
                        && self.chars.next().map(|(_, c)| c) == Some('=')
                    {
                        Tok::Define
                    } else {
                        return Err(self.err(at, "expected ::="));
                    }
                }
                '.' => Tok::Any,
                '(' => Tok::Open,
                ')' => Tok::Close,
                '|' => Tok::Bar,
                '*' | '+' | '?' => Tok::Op(c),
                '{' => {
                    self.skip_spaces();
                    let min = self.number();
                    self.skip_spaces();
                    let max = if self.chars.next_if(|&(_, c)| c == ',').is_some() {
                        self.skip_spaces();
                        let max = self.number();
                        self.skip_spaces();
                        max
                    } else {
                        Some(min.ok_or_else(|| self.err(at, "a repetition wants a count"))?)
                    };
                    if self.chars.next().map(|(_, c)| c) != Some('}') {
                        return Err(self.err(at, "a repetition ends with }"));
                    }
                    if let (Some(lo), Some(hi)) = (min, max)
                        && hi < lo
                    {
                        return Err(self.err(at, format!("repetition {{{lo},{hi}}} is reversed")));
                    }
                    Tok::Repeat(min, max)
                }
                c if c.is_ascii_alphanumeric() || c == '-' => {
                    let mut name = c.to_string();
                    while let Some((_, c)) = self
                        .chars
                        .next_if(|&(_, c)| c.is_ascii_alphanumeric() || c == '-')
                    {
                        name.push(c);
                    }
                    Tok::Name(name)
                }
                other => return Err(self.err(at, format!("unexpected {other:?}"))),
            };
            out.push((at, tok));
        }
        Ok(out)
    }
}

/// The Lark name of a GBNF rule: lowercase is what Lark takes for a rule, and `_` never occurs
/// in GBNF names, so no two names meet.
fn lark_name(name: &str) -> String {
    let mut out = String::from("g-");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A string in the JSON syntax Lark reads.
fn lark_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A character inside a regular expression's class: letters and digits as they are, the rest
/// by code, so nothing in it is taken for syntax (or ends the `/.../`).
fn class_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:x}}}", c as u32);
    }
}

/// `grammar` (GBNF) in llguidance's Lark syntax, or what is wrong with it.
pub fn gbnf_to_lark(grammar: &str) -> Result<String, String> {
    let lexer = Lexer {
        chars: grammar.char_indices().peekable(),
        src: grammar,
    };
    let err_at = |at: usize, msg: String| fault(grammar, at, msg);
    let tokens = lexer.tokens()?;
    // Rules start at `name ::=`; everything up to the next such pair is the rule's body.
    let starts: Vec<usize> = (0..tokens.len())
        .filter(|&i| {
            matches!(tokens[i].1, Tok::Name(_))
                && tokens.get(i + 1).is_some_and(|t| t.1 == Tok::Define)
        })
        .collect();
    match starts.first() {
        None => return Err("GBNF: no rule (`name ::= ...`)".into()),
        Some(&first) if first > 0 => {
            return Err(err_at(tokens[0].0, "text before the first rule".into()));
        }
        _ => {}
    }
    let mut defined = HashSet::new();
    let mut used: Vec<(usize, String)> = Vec::new();
    let mut out = String::from("start: g-root\n");
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(tokens.len());
        let Tok::Name(name) = &tokens[start].1 else {
            continue;
        };
        if !defined.insert(name.clone()) {
            return Err(err_at(
                tokens[start].0,
                format!("rule {name} is defined twice"),
            ));
        }
        out.push_str(&lark_name(name));
        out.push(':');
        // Where each open group starts in `out`, and where the last item starts (None where
        // nothing may be repeated: at the start, after `|` or `(`).
        let mut groups: Vec<usize> = Vec::new();
        let mut last_item: Option<usize> = None;
        for (at, tok) in &tokens[start + 2..end] {
            let item_start = out.len();
            match tok {
                Tok::Name(n) => {
                    used.push((*at, n.clone()));
                    out.push(' ');
                    out.push_str(&lark_name(n));
                }
                Tok::Str(s) if s.is_empty() => {
                    // Nothing to match; Lark takes an empty sequence for it.
                    last_item = None;
                    continue;
                }
                Tok::Str(s) if s.chars().count() == 1 => {
                    out.push(' ');
                    lark_string(s, &mut out);
                }
                Tok::Str(s) => {
                    // One literal per character: Lark's lexer takes the longest literal it can
                    // and never goes back, so `"null"` whole would refuse `nul` followed by
                    // another rule's `x`, which llama.cpp's character-level parser allows.
                    out.push_str(" (");
                    for c in s.chars() {
                        out.push(' ');
                        lark_string(c.encode_utf8(&mut [0; 4]), &mut out);
                    }
                    out.push_str(" )");
                }
                Tok::Class { negated, items } => {
                    if items.is_empty() {
                        return Err(err_at(*at, "an empty character class".into()));
                    }
                    out.push_str(" /[");
                    if *negated {
                        out.push('^');
                    }
                    for &(lo, hi) in items {
                        class_char(lo, &mut out);
                        if hi != lo {
                            out.push('-');
                            class_char(hi, &mut out);
                        }
                    }
                    out.push_str("]/");
                }
                Tok::Any => out.push_str(" /(?s:.)/"),
                Tok::Open => {
                    groups.push(out.len());
                    out.push_str(" (");
                    last_item = None;
                    continue;
                }
                Tok::Close => {
                    let open = groups
                        .pop()
                        .ok_or_else(|| err_at(*at, "unmatched )".into()))?;
                    out.push_str(" )");
                    last_item = Some(open);
                    continue;
                }
                Tok::Bar => {
                    out.push_str(" |");
                    last_item = None;
                    continue;
                }
                Tok::Op(_) | Tok::Repeat(..) => {
                    let Some(item) = last_item else {
                        return Err(err_at(*at, "a repetition follows nothing".into()));
                    };
                    let suffix = match tok {
                        Tok::Op(op) => op.to_string(),
                        Tok::Repeat(min, max) => match (min.unwrap_or(0), max) {
                            // Zero times: the item matches nothing.
                            (_, Some(0)) => {
                                out.truncate(item);
                                last_item = None;
                                continue;
                            }
                            (lo, Some(hi)) if lo == *hi => format!("{{{lo}}}"),
                            (lo, Some(hi)) => format!("{{{lo},{hi}}}"),
                            (lo, None) => format!("{{{lo},}}"),
                        },
                        _ => String::new(),
                    };
                    // A repeated item repeated again (`"a"+?`) is grouped first.
                    if out[item..].ends_with(|c: char| "*+?}".contains(c)) {
                        out.insert_str(item, " (");
                        out.push_str(" )");
                    }
                    out.push_str(&suffix);
                    last_item = Some(item);
                    continue;
                }
                Tok::Define => return Err(err_at(*at, "::= where no rule starts".into())),
            }
            last_item = Some(item_start);
        }
        let depth = groups.len();
        if depth > 0 {
            return Err(err_at(tokens[start].0, format!("rule {name}: unclosed (")));
        }
        out.push('\n');
    }
    if !defined.contains("root") {
        return Err("GBNF: no root rule (`root ::= ...`), where generation starts".into());
    }
    if let Some((at, name)) = used.iter().find(|(_, n)| !defined.contains(n)) {
        return Err(err_at(
            *at,
            format!("rule {name} is used but never defined"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_classes_and_repetitions_become_lark() {
        let g = "# yes or no\nroot ::= answer \"!\"{1,3}\nanswer ::= (\"yes\" |\n  \"no\") [a-z\\-]* [^\\n\"/]? .\nMixed-Case ::= \"\\x41\\u00e9\\U0001F355\\t\"{2,} root{3} \"a\"+? \"z\"{0} \"b\"\n";
        let lark = gbnf_to_lark(g).unwrap();
        assert_eq!(
            lark,
            "start: g-root\n\
             g-root: g-answer \"!\"{1,3}\n\
             g-answer: ( ( \"y\" \"e\" \"s\" ) | ( \"n\" \"o\" ) ) /[a-z\\x{2d}]/* /[^\\x{a}\\x{22}\\x{2f}]/? /(?s:.)/\n\
             g-_mixed-_case: ( \"A\" \"\u{e9}\" \"\u{1f355}\" \"\\u0009\" ){2,} g-root{3} ( \"a\"+ )? \"b\"\n"
        );
        assert!(is_gbnf(g));
        assert!(!is_gbnf("start: \"a\" // x ::= y\n"));
    }

    #[test]
    fn faults_name_their_line() {
        for (g, want) in [
            ("root ::= x", "rule x is used but never defined"),
            ("a ::= \"x\"", "no root rule"),
            (
                "root ::= \"x\"\nroot ::= \"y\"",
                "line 2: rule root is defined twice",
            ),
            ("root ::= (\"x\"", "unclosed ("),
            ("root ::= \"x\")", "unmatched )"),
            ("root ::= * \"x\"", "follows nothing"),
            ("root ::= [] \"x\"", "empty character class"),
            ("root ::= \"x\\q\"", "unknown escape \\q"),
            ("root ::= [z-a]", "reversed"),
            ("root ::= \"x\"{3,1}", "reversed"),
            ("root ::= \"open", "unterminated"),
            ("\"x\" root ::= \"y\"", "before the first rule"),
            ("", "no rule"),
        ] {
            let e = gbnf_to_lark(g).unwrap_err();
            assert!(e.contains(want), "{g:?}: {e}");
        }
    }
}
