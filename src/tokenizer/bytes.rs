//! Token text to bytes: GPT-2's byte-to-unicode alphabet, SentencePiece's `▁` and `<0xXX>`.

use std::sync::LazyLock;

/// GPT-2 spells every byte as a printable character so that a vocabulary is plain text: the
/// printable Latin-1 bytes stand for themselves, the other 68 are moved to U+0100 and up, in order.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let b = byte as u32;
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let code = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every code is below U+0144, so it is a valid scalar value.
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The inverse table, indexed by code point (all of which are below 0x144).
static CHAR_TO_BYTE: LazyLock<Vec<Option<u8>>> = LazyLock::new(|| {
    let mut inverse = vec![None; 0x144];
    for (byte, c) in byte_to_char().iter().enumerate() {
        if let Some(slot) = inverse.get_mut(*c as usize) {
            *slot = Some(byte as u8);
        }
    }
    inverse
});

/// The bytes a byte-level BPE token stands for. A character outside the alphabet cannot come from
/// a well-formed vocabulary; it is kept as its own UTF-8 rather than dropped, so nothing vanishes.
pub(crate) fn byte_level_decode(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match CHAR_TO_BYTE.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// The byte of a SentencePiece byte token, `<0xXX>`.
pub(crate) fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A SentencePiece piece as text: `▁` marks a space.
pub(crate) fn spm_decode(token: &str) -> Vec<u8> {
    token.replace('\u{2581}', " ").into_bytes()
}

/// Moves the longest decodable prefix of `pending` into a string. Invalid sequences become
/// U+FFFD exactly as `String::from_utf8_lossy` would replace them; an incomplete character at the
/// end stays in `pending`, since the next bytes may complete it.
pub(crate) fn take_complete_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < pending.len() {
        let rest = &pending[start..];
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                start = pending.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start += valid + bad;
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        let table = byte_to_char();
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[0xad], 'Ń');
        let mut seen: Vec<char> = table.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        for (b, c) in table.iter().enumerate() {
            assert_eq!(byte_level_decode(&c.to_string()), vec![b as u8]);
        }
        assert_eq!(byte_level_decode("ĠParis"), b" Paris");
        assert_eq!(byte_level_decode("é"), vec![0xe9]);
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xff));
        assert_eq!(parse_byte_token("<0x0A"), None);
        assert_eq!(parse_byte_token("<0x>"), None);
        assert_eq!(parse_byte_token("<0x123>"), None);
        assert_eq!(spm_decode("▁Hello▁world"), b" Hello world");
    }

    /// Feeding bytes one at a time must give what `from_utf8_lossy` gives for the whole buffer.
    #[test]
    fn streaming_matches_lossy() {
        let cases: &[&[u8]] = &[
            "héllo wörld 🎉 日本".as_bytes(),
            &[0xe2, 0x82],
            &[
                0xe2, 0x82, b'A', 0xff, 0xf0, 0x9f, 0x8e, 0x89, 0xed, 0xa0, 0x80, b'z',
            ],
            &[0xc3],
            &[0x80, 0x80, 0xf4, 0x90, 0x80, 0x80],
        ];
        for bytes in cases {
            for chunk in 1..=4 {
                let mut pending = Vec::new();
                let mut out = String::new();
                for piece in bytes.chunks(chunk) {
                    pending.extend_from_slice(piece);
                    out.push_str(&take_complete_utf8(&mut pending));
                }
                assert!(pending.len() < 4);
                out.push_str(&String::from_utf8_lossy(&pending));
                assert_eq!(out, String::from_utf8_lossy(bytes), "{bytes:x?} by {chunk}");
            }
        }
    }
}
