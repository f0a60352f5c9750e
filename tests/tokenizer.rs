//! The tokenizer against llama.cpp's token ids for the real SmolLM2 file, and against small
//! synthetic GGUF vocabularies whose right answers can be worked out by hand.

mod common;

use std::sync::OnceLock;

use common::{greedy_cases, model_path};
use sovereign::format::{Array, GgufFile, GgufWriter, Value};
use sovereign::tokenizer::{
    ChatMessage, StreamDecoder, TokenType, Tokenizer, TokenizerError, TokenizerModel,
};

fn smollm() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = GgufFile::open(model_path()).expect("open the test model");
        Tokenizer::from_gguf(file.metadata()).expect("build the SmolLM2 tokenizer")
    })
}

fn ids_of(case: &serde_json::Value, key: &str) -> Vec<u32> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("case has no {key}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Every push's text concatenated with `finish`.
fn stream(tok: &Tokenizer, mut decoder: StreamDecoder, ids: &[u32]) -> String {
    let mut out = String::new();
    for &id in ids {
        out.push_str(&decoder.push(tok, id).unwrap());
    }
    out.push_str(&decoder.finish());
    assert_eq!(decoder.ids(), ids);
    out
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct (gpt2 vocabulary, `smollm` pre-tokenizer) against llama.cpp.

#[test]
fn smollm_metadata() {
    let tok = smollm();
    assert_eq!(tok.model(), TokenizerModel::Gpt2);
    assert_eq!(tok.pre_tokenizer(), Some("smollm"));
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert_eq!(tok.unk(), Some(0));
    assert_eq!(tok.pad(), Some(2));
    assert!(!tok.add_bos());
    assert!(!tok.add_eos());
    assert_eq!(tok.token_text(1), Some("<|im_start|>"));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    assert_eq!(tok.token_text(49152), None);
    assert_eq!(tok.token_type(1), Some(TokenType::Control));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.eot(), Some(2), "<|im_end|> is the end-of-turn token");
}

#[test]
fn smollm_end_of_generation() {
    let tok = smollm();
    assert!(tok.is_end_of_generation(2), "<|im_end|>");
    assert!(tok.is_end_of_generation(0), "<|endoftext|>");
    assert!(!tok.is_end_of_generation(1), "<|im_start|>");
    assert!(!tok.is_end_of_generation(198), "a newline");
    assert!(!tok.is_end_of_generation(u32::MAX));
}

#[test]
fn smollm_prompt_tokens_match_llama_cpp() {
    let tok = smollm();
    let cases = greedy_cases();
    assert!(cases.len() >= 4);
    for case in &cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected = ids_of(case, "prompt_tokens");
        assert_eq!(tok.encode(prompt, false).unwrap(), expected, "{prompt:?}");
        // add_bos_token is false, so adding special tokens adds nothing.
        assert_eq!(tok.encode(prompt, true).unwrap(), expected, "{prompt:?}");
    }
}

#[test]
fn smollm_decode_matches_llama_cpp() {
    let tok = smollm();
    for case in &greedy_cases() {
        let tokens = ids_of(case, "tokens");
        let text = case["text"].as_str().unwrap();
        // The reference text stops before a final end-of-turn token; as a control token it
        // renders as nothing anyway.
        assert_eq!(tok.decode(&tokens).unwrap(), text);
        let visible: Vec<u32> = tokens
            .iter()
            .copied()
            .take_while(|&id| !tok.is_end_of_generation(id))
            .collect();
        assert_eq!(tok.decode(&visible).unwrap(), text);
        // The prompt decodes back to itself, special tokens aside.
        let prompt = case["prompt"].as_str().unwrap();
        let without_specials = prompt.replace("<|im_start|>", "").replace("<|im_end|>", "");
        assert_eq!(
            tok.decode(&ids_of(case, "prompt_tokens")).unwrap(),
            without_specials
        );
    }
}

#[test]
fn smollm_stream_decoder_matches_decode() {
    let tok = smollm();
    for case in &greedy_cases() {
        let tokens = ids_of(case, "tokens");
        let text = case["text"].as_str().unwrap();
        assert_eq!(stream(tok, StreamDecoder::new(), &tokens), text);
        // Byte-level BPE has no prefix space to keep, so both kinds of decoder agree.
        assert_eq!(stream(tok, StreamDecoder::after_prompt(), &tokens), text);
    }
}

#[test]
fn smollm_chat_template_renders_chatml() {
    let tok = smollm();
    assert!(tok.chat_template().is_some());
    let cases = greedy_cases();
    let expected = cases[3]["prompt"].as_str().unwrap();
    let messages = [ChatMessage::user("What is the tallest mountain on Earth?")];
    let rendered = tok.apply_chat_template(&messages, true).unwrap();
    assert_eq!(rendered, expected);
    assert_eq!(
        tok.encode(&rendered, false).unwrap(),
        ids_of(&cases[3], "prompt_tokens")
    );

    // A system message replaces the default one; without the generation prompt the text ends
    // after the last turn.
    let messages = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello!"),
    ];
    assert_eq!(
        tok.apply_chat_template(&messages, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
}

#[test]
fn smollm_digits_are_split_one_by_one() {
    let tok = smollm();
    // Digit tokens are 32 ('0') to 41 ('9') in this vocabulary.
    for d in 0..10u32 {
        assert_eq!(tok.token_text(32 + d), Some(d.to_string().as_str()));
    }
    assert_eq!(
        tok.encode("0123456789", false).unwrap(),
        (32..=41).collect::<Vec<u32>>()
    );
    // The space before a number stays its own token ("Ġ" = 216), as in the reference output.
    assert_eq!(
        tok.encode(" 2018", false).unwrap(),
        vec![216, 34, 32, 33, 40]
    );
    let ids = tok.encode("pi is 3.14159 and 1,000,000", false).unwrap();
    let digits = ids.iter().filter(|&&id| (32..=41).contains(&id)).count();
    assert_eq!(digits, 6 + 7);
    assert!(ids.iter().all(|&id| {
        let t = tok.token_text(id).unwrap();
        !(t.chars().any(|c| c.is_ascii_digit()) && t.chars().count() > 1)
    }));
}

#[test]
fn smollm_special_tokens_in_text() {
    let tok = smollm();
    assert_eq!(tok.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(
        tok.encode("<|im_start|><|im_end|>", false).unwrap(),
        vec![1, 2]
    );
    let mut expected = tok.encode("Hello ", false).unwrap();
    expected.push(1);
    expected.extend(tok.encode(" world", false).unwrap());
    assert_eq!(
        tok.encode("Hello <|im_start|> world", false).unwrap(),
        expected
    );
    // Not quite a special token: plain text.
    let ids = tok.encode("<|im_start", false).unwrap();
    assert!(!ids.contains(&1));
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start");
    // Control tokens render as nothing.
    assert_eq!(tok.decode(&[1, 2, 0]).unwrap(), "");
    assert_eq!(tok.token_bytes(1), Some(&b""[..]));
}

#[test]
fn smollm_round_trips() {
    let tok = smollm();
    let texts = [
        "",
        " ",
        "Hello, world!",
        "héllo wörld — ça va? Ünïcödé",
        "日本語のテキストと中文字符",
        "emoji 🎉👍🏽👨‍👩‍👧‍👦 and flags 🇫🇷",
        "a    b\t\tc   ",
        "line one\n\nline two\r\n\n\n  indented\n",
        "   leading and trailing spaces   ",
        "def f(x):\n    return x ** 2  # comment\n",
        "I'm sure they'll say it's 'quoted' and \"double\"",
        "Mixed: αβγ Ωmega, кириллица, עברית, العربية, हिन्दी",
        "\u{0}\u{1}\u{7f} control chars and a BOM \u{feff}",
        "math 𝕳𝖊𝖑𝖑𝖔 ∑∫√ and a zero-width joiner \u{200d} here",
    ];
    for text in texts {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
        assert_eq!(stream(tok, StreamDecoder::new(), &ids), text);
    }
    assert!(tok.encode("", false).unwrap().is_empty());
    // Runs of spaces become multi-space tokens, not one token per space.
    let ids = tok.encode("a        b", false).unwrap();
    assert!(ids.len() < 6, "{ids:?}");
}

#[test]
fn smollm_stream_holds_back_split_characters() {
    let tok = smollm();
    let mut split_seen = false;
    for text in ["🎉", "𝕳", "ꙮ", "🇫🇷", "👨‍👩‍👧"] {
        let ids = tok.encode(text, false).unwrap();
        let mut decoder = StreamDecoder::new();
        let mut out = String::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = decoder.push(tok, id).unwrap();
            // Text only ever comes out whole.
            assert!(!piece.contains('\u{fffd}'), "{text:?} token {i}: {piece:?}");
            out.push_str(&piece);
        }
        assert!(!decoder.has_pending());
        assert_eq!(decoder.finish(), "");
        assert_eq!(out, text);
        // A character spread over several tokens shows nothing until its last byte arrives.
        if text.chars().count() == 1 && ids.len() > 1 {
            split_seen = true;
            let mut decoder = StreamDecoder::new();
            for &id in &ids[..ids.len() - 1] {
                assert_eq!(decoder.push(tok, id).unwrap(), "");
            }
            assert!(decoder.has_pending());
            assert_eq!(decoder.push(tok, ids[ids.len() - 1]).unwrap(), text);
        }
    }
    assert!(split_seen, "no test character was split across tokens");

    // Stopping in the middle of a character: finish gives what decode gives.
    let ids = tok.encode("🎉", false).unwrap();
    assert!(ids.len() > 1);
    let partial = &ids[..1];
    let mut decoder = StreamDecoder::new();
    let shown = decoder.push(tok, partial[0]).unwrap();
    assert_eq!(shown + &decoder.finish(), tok.decode(partial).unwrap());
    assert_eq!(tok.decode(partial).unwrap(), "\u{fffd}");
}

#[test]
fn smollm_rejects_unknown_ids() {
    let tok = smollm();
    let err = tok.decode(&[1, 49152]).unwrap_err();
    assert!(
        matches!(err, TokenizerError::IdOutOfRange { id: 49152, .. }),
        "{err}"
    );
    let mut decoder = StreamDecoder::new();
    assert!(decoder.push(tok, 1_000_000).is_err());
    assert!(decoder.ids().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Synthetic vocabularies.

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

fn build(entries: Vec<(&str, Value)>) -> Result<Tokenizer, TokenizerError> {
    let mut writer = GgufWriter::new();
    for (key, value) in entries {
        writer = writer.kv(key, value);
    }
    let file = GgufFile::from_bytes(writer.to_bytes()).expect("a valid GGUF file");
    Tokenizer::from_gguf(file.metadata())
}

/// A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then pieces with scores.
/// Scores are chosen so that merge order, not longest match, decides the result.
struct Spm {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
}

const SPM_PIECES: &[(&str, f32)] = &[
    ("▁", -10.0),
    ("h", -10.0),
    ("e", -10.0),
    ("l", -10.0),
    ("o", -10.0),
    ("w", -10.0),
    ("r", -10.0),
    ("d", -10.0),
    ("a", -10.0),
    ("b", -10.0),
    ("he", -1.0),
    ("ll", -2.0),
    ("hell", -3.0),
    ("hello", -4.0),
    ("▁hello", -5.0),
    ("or", -6.0),
    ("▁w", -8.0),
    ("▁wor", -9.0),
    ("ab", -1.5),
    ("▁a", -3.5),
    ("<tool>", 0.0),
];
const SPM_FIRST_PIECE: u32 = 3 + 256;

fn spm_id(piece: &str) -> u32 {
    SPM_FIRST_PIECE + SPM_PIECES.iter().position(|(p, _)| *p == piece).unwrap() as u32
}

fn byte_id(b: u8) -> u32 {
    3 + b as u32
}

impl Spm {
    fn new() -> Spm {
        let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
        let mut scores = vec![0.0, 0.0, 0.0];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(6);
        }
        for (piece, score) in SPM_PIECES {
            tokens.push(piece.to_string());
            scores.push(*score);
            types.push(if *piece == "<tool>" { 4 } else { 1 });
        }
        Spm {
            tokens,
            scores,
            types,
        }
    }

    fn entries(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(Array::String(self.tokens.clone())),
            ),
            (
                "tokenizer.ggml.scores",
                Value::Array(Array::F32(self.scores.clone())),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(Array::I32(self.types.clone())),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ]
    }
}

#[test]
fn spm_merges_by_score() {
    let tok = build(Spm::new().entries()).unwrap();
    assert_eq!(tok.model(), TokenizerModel::Llama);
    assert_eq!(tok.pre_tokenizer(), None);
    assert_eq!(tok.n_vocab(), SPM_FIRST_PIECE as usize + SPM_PIECES.len());
    // he(-1), ll(-2), hell(-3), hello(-4), ▁hello(-5); then or(-6), ▁w(-8), ▁wor(-9); "l d"
    // has no piece.
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        vec![spm_id("▁hello"), spm_id("▁wor"), spm_id("l"), spm_id("d")]
    );
    // "ab" (-1.5) merges before "▁a" (-3.5), although "▁a" is the longer match from the left.
    assert_eq!(
        tok.encode("ab", false).unwrap(),
        vec![spm_id("▁"), spm_id("ab")]
    );
}

#[test]
fn spm_byte_fallback_and_space_prefix() {
    let tok = build(Spm::new().entries()).unwrap();
    // "é" has no piece: its UTF-8 bytes C3 A9 become byte tokens.
    assert_eq!(
        tok.encode("é", false).unwrap(),
        vec![spm_id("▁"), byte_id(0xc3), byte_id(0xa9)]
    );
    assert_eq!(
        tok.encode("he\nhe", false).unwrap(),
        vec![spm_id("▁"), spm_id("he"), byte_id(b'\n'), spm_id("he")]
    );
    // BOS by default for llama vocabularies; a space goes before the text and after every
    // special token, as llama.cpp does.
    assert!(tok.add_bos());
    assert_eq!(
        tok.encode("hello", true).unwrap(),
        vec![1, spm_id("▁hello")]
    );
    assert_eq!(
        tok.encode("<s>hello</s>hello", false).unwrap(),
        vec![1, spm_id("▁hello"), 2, spm_id("▁hello")]
    );
    // User-defined tokens are parsed too, and render as written.
    let ids = tok.encode("ab<tool>ab", false).unwrap();
    assert_eq!(
        ids,
        vec![
            spm_id("▁"),
            spm_id("ab"),
            spm_id("<tool>"),
            spm_id("▁"),
            spm_id("ab")
        ]
    );
    assert_eq!(tok.decode(&ids).unwrap(), "ab<tool> ab");

    // Without the prefix space.
    let mut entries = Spm::new().entries();
    entries.push(("tokenizer.ggml.add_space_prefix", Value::Bool(false)));
    entries.push(("tokenizer.ggml.add_bos_token", Value::Bool(false)));
    let tok = build(entries).unwrap();
    assert_eq!(tok.encode("hello", true).unwrap(), vec![spm_id("hello")]);
    assert_eq!(tok.decode(&[spm_id("▁hello")]).unwrap(), " hello");
}

#[test]
fn spm_decode_and_stream() {
    let tok = build(Spm::new().entries()).unwrap();
    let texts = [
        "hello world",
        "é",
        "he\nhe",
        "  ab  b ",
        "hello wor\u{1F389}ld",
    ];
    for text in texts {
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids[0], 1);
        // BOS renders as nothing and the prefix space comes off the front.
        assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
        assert_eq!(stream(&tok, StreamDecoder::new(), &ids), text);
    }
    // Continuing a prompt, the leading space of the first new token is kept.
    let generated = [spm_id("▁wor"), spm_id("l"), spm_id("d"), 2];
    assert_eq!(tok.decode(&generated).unwrap(), "world");
    assert_eq!(stream(&tok, StreamDecoder::new(), &generated), "world");
    assert_eq!(
        stream(&tok, StreamDecoder::after_prompt(), &generated),
        " world"
    );
    assert!(tok.is_end_of_generation(2));
    assert!(!tok.is_end_of_generation(1));
}

#[test]
fn spm_chat_template_falls_back_to_chatml() {
    let tok = build(Spm::new().entries()).unwrap();
    assert_eq!(tok.chat_template(), None);
    let out = tok
        .apply_chat_template(&[ChatMessage::user("hi")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );

    let mut entries = Spm::new().entries();
    entries.push((
        "tokenizer.chat_template",
        Value::String(
            "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}{{ eos_token }}{% endfor %}".into(),
        ),
    ));
    let tok = build(entries).unwrap();
    let out = tok
        .apply_chat_template(&[ChatMessage::user("  hi  ")], false)
        .unwrap();
    assert_eq!(out, "<s>[user] hi</s>");

    let mut entries = Spm::new().entries();
    entries.push((
        "tokenizer.chat_template",
        Value::String("{{ raise_exception('no system role') }}".into()),
    ));
    let tok = build(entries).unwrap();
    let err = tok.apply_chat_template(&[], false).unwrap_err();
    assert!(matches!(err, TokenizerError::ChatTemplate(_)));
    assert!(err.to_string().contains("no system role"), "{err}");
}

/// GPT-2's byte alphabet, to spell a byte-level vocabulary.
fn byte_char(b: u8) -> char {
    let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    if printable {
        return b as char;
    }
    let offset = (0..b)
        .filter(|&x| !((0x21..=0x7e).contains(&x) || (0xa1..=0xac).contains(&x) || x >= 0xae))
        .count() as u32;
    char::from_u32(256 + offset).unwrap()
}

/// Ids 0..=255 are the bytes; then merged tokens and specials.
fn gpt2_entries(pre: Option<&str>) -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1; 256];
    for (t, ty) in [
        ("he", 1),
        ("ll", 1),
        ("hello", 1),
        ("12", 1),
        ("123", 1),
        ("34", 1),
        ("<|endoftext|>", 3),
        ("<|im_end|>", 1),
        ("<think>", 4),
    ] {
        tokens.push(t.to_string());
        types.push(ty);
    }
    let mut entries = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        (
            "tokenizer.ggml.merges",
            strings(&["3 4", "h e", "l l", "1 2", "12 3"]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(262)),
    ];
    if let Some(pre) = pre {
        entries.push(("tokenizer.ggml.pre", Value::String(pre.into())));
    }
    entries
}

const HE: u32 = 256;
const LL: u32 = 257;
const HELLO: u32 = 258;
const T12: u32 = 259;
const T123: u32 = 260;
const T34: u32 = 261;
const ENDOFTEXT: u32 = 262;
const IM_END: u32 = 263;
const THINK: u32 = 264;

fn b(c: char) -> u32 {
    c as u32
}

#[test]
fn gpt2_pre_tokenizers_follow_llama_cpp() {
    // GPT-2: "12345" is one piece; merge ranks decide.
    let tok = build(gpt2_entries(Some("gpt-2"))).unwrap();
    assert_eq!(tok.pre_tokenizer(), Some("gpt2"));
    assert_eq!(tok.encode("12345", false).unwrap(), vec![T12, T34, b('5')]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![HE, LL, b('o')]);
    assert!(!tok.add_bos());

    // SmolLM: every digit on its own.
    let tok = build(gpt2_entries(Some("smollm"))).unwrap();
    assert_eq!(tok.pre_tokenizer(), Some("smollm"));
    assert_eq!(
        tok.encode("12345", false).unwrap(),
        "12345".chars().map(b).collect::<Vec<_>>()
    );

    // Llama 3: digits in groups of three, and a piece that is already a token is used whole
    // even though no merge builds it.
    let mut entries = gpt2_entries(Some("llama-bpe"));
    entries.push(("tokenizer.ggml.bos_token_id", Value::U32(ENDOFTEXT)));
    let tok = build(entries).unwrap();
    assert_eq!(tok.pre_tokenizer(), Some("llama3"));
    assert_eq!(
        tok.encode("12345", false).unwrap(),
        vec![T123, b('4'), b('5')]
    );
    assert_eq!(tok.encode("hello", false).unwrap(), vec![HELLO]);
    assert!(tok.add_bos(), "llama3 vocabularies add BOS by default");
    assert_eq!(tok.encode("hello", true).unwrap(), vec![ENDOFTEXT, HELLO]);

    // Unknown or missing names fall back to GPT-2's regex.
    for pre in [Some("no-such-pre-tokenizer"), None] {
        let tok = build(gpt2_entries(pre)).unwrap();
        assert_eq!(tok.pre_tokenizer(), Some("gpt2"));
        assert_eq!(tok.encode("12345", false).unwrap(), vec![T12, T34, b('5')]);
    }
}

#[test]
fn gpt2_special_tokens() {
    let tok = build(gpt2_entries(Some("gpt-2"))).unwrap();
    let ids = tok
        .encode("a<think>b<|endoftext|><|im_end|>", false)
        .unwrap();
    assert_eq!(ids, vec![b('a'), THINK, b('b'), ENDOFTEXT, IM_END]);
    // Control tokens vanish; user-defined ones show as written.
    assert_eq!(tok.decode(&ids).unwrap(), "a<think>b");
    // <|im_end|> was typed as normal text, but is an end-of-turn marker: it becomes a control
    // token and ends generation, like the EOS.
    assert_eq!(tok.token_type(IM_END), Some(TokenType::Control));
    assert!(tok.is_end_of_generation(IM_END));
    assert!(tok.is_end_of_generation(ENDOFTEXT));
    assert!(!tok.is_end_of_generation(THINK));
    assert_eq!(tok.eot(), Some(IM_END));
    // Spaces and newlines map through GPT-2's byte alphabet (id = byte value here).
    let ids = tok.encode(" \n", false).unwrap();
    assert_eq!(ids, vec![u32::from(b' '), u32::from(b'\n')]);
    assert_eq!(tok.decode(&ids).unwrap(), " \n");
    // A character split over byte tokens streams out whole.
    let ids = tok.encode("é🎉", false).unwrap();
    assert_eq!(ids.len(), 6);
    let mut decoder = StreamDecoder::new();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| decoder.push(&tok, id).unwrap())
        .collect();
    assert_eq!(pieces, vec!["", "é", "", "", "", "🎉"]);
}

// ---------------------------------------------------------------------------------------------
// Bad metadata.

fn replace(entries: &mut Vec<(&'static str, Value)>, key: &'static str, value: Value) {
    entries.retain(|(k, _)| *k != key);
    entries.push((key, value));
}

#[test]
fn special_id_outside_the_vocabulary() {
    let spm = Spm::new();
    let n = spm.tokens.len();
    let mut entries = spm.entries();
    replace(
        &mut entries,
        "tokenizer.ggml.bos_token_id",
        Value::U32(9999),
    );
    let err = build(entries).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::SpecialIdOutOfRange { key, id: 9999, n_vocab } if key == "tokenizer.ggml.bos_token_id" && *n_vocab == n),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.ggml.bos_token_id") && msg.contains("9999"),
        "{msg}"
    );

    // Any special-token key is checked, including ones the tokenizer does not otherwise use.
    let mut entries = Spm::new().entries();
    entries.push(("tokenizer.ggml.seperator_token_id", Value::U32(n as u32)));
    let err = build(entries).unwrap_err();
    assert!(
        err.to_string()
            .contains("tokenizer.ggml.seperator_token_id"),
        "{err}"
    );

    let mut entries = gpt2_entries(Some("gpt-2"));
    replace(&mut entries, "tokenizer.ggml.eos_token_id", Value::U32(265));
    let err = build(entries).unwrap_err();
    assert!(
        matches!(err, TokenizerError::SpecialIdOutOfRange { id: 265, .. }),
        "{err}"
    );
}

#[test]
fn array_lengths_must_agree() {
    let spm = Spm::new();
    let mut entries = spm.entries();
    let mut scores = spm.scores.clone();
    scores.pop();
    replace(
        &mut entries,
        "tokenizer.ggml.scores",
        Value::Array(Array::F32(scores)),
    );
    let err = build(entries).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.scores",
                ..
            }
        ),
        "{err}"
    );

    let mut entries = spm.entries();
    let mut types = spm.types.clone();
    types.push(1);
    replace(
        &mut entries,
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(types)),
    );
    let err = build(entries).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.token_type",
                ..
            }
        ),
        "{err}"
    );

    // A merge naming something that is not in the vocabulary.
    let mut entries = gpt2_entries(Some("gpt-2"));
    replace(
        &mut entries,
        "tokenizer.ggml.merges",
        strings(&["h e", "he llo"]),
    );
    let err = build(entries).unwrap_err();
    assert!(
        matches!(err, TokenizerError::BadMerge { index: 1, .. }),
        "{err}"
    );
    let mut entries = gpt2_entries(Some("gpt-2"));
    replace(&mut entries, "tokenizer.ggml.merges", strings(&["he"]));
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::BadMerge { index: 0, .. }
    ));
}

#[test]
fn missing_or_mistyped_keys() {
    let mut entries = Spm::new().entries();
    entries.retain(|(k, _)| *k != "tokenizer.ggml.tokens");
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::MissingKey("tokenizer.ggml.tokens")
    ));

    let mut entries = Spm::new().entries();
    replace(&mut entries, "tokenizer.ggml.tokens", strings(&[]));
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::EmptyVocab
    ));

    let mut entries = Spm::new().entries();
    replace(&mut entries, "tokenizer.ggml.tokens", Value::U32(3));
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::WrongType { .. }
    ));

    let mut entries = Spm::new().entries();
    entries.retain(|(k, _)| *k != "tokenizer.ggml.scores");
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::MissingKey("tokenizer.ggml.scores")
    ));

    let mut entries = gpt2_entries(Some("gpt-2"));
    entries.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::MissingKey("tokenizer.ggml.merges")
    ));

    let mut entries = Spm::new().entries();
    entries.retain(|(k, _)| *k != "tokenizer.ggml.model");
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::MissingKey("tokenizer.ggml.model")
    ));

    // A model that must add BOS but has none.
    let mut entries = gpt2_entries(Some("gpt-2"));
    entries.push(("tokenizer.ggml.add_bos_token", Value::Bool(true)));
    assert!(matches!(
        build(entries).unwrap_err(),
        TokenizerError::MissingSpecialToken { .. }
    ));
}

#[test]
fn unsupported_tokenizer_models_are_named() {
    for model in ["bert", "t5", "rwkv", "no_vocab"] {
        let mut entries = Spm::new().entries();
        replace(
            &mut entries,
            "tokenizer.ggml.model",
            Value::String(model.into()),
        );
        let err = build(entries).unwrap_err();
        assert!(
            matches!(&err, TokenizerError::UnsupportedModel(m) if m == model),
            "{err}"
        );
        assert!(err.to_string().contains(model), "{err}");
    }
}

#[test]
fn errors_convert_into_the_crate_error() {
    let err: sovereign::Error = TokenizerError::EmptyVocab.into();
    assert!(matches!(err, sovereign::Error::Tokenizer(_)));
}
