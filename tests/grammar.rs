//! Constrained sampling: whatever the logits say, sampled text follows the request's grammar,
//! and generation ends exactly when the grammar allows it to.

mod common;

use std::sync::{Arc, OnceLock};

use common::model_path;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};
use sovereign::engine::{
    Constraint, GenerateParams, Grammars, Logits, SamplingParams, SequenceState, StopReason,
};
use sovereign::format::GgufFile;
use sovereign::tokenizer::Tokenizer;

fn smollm() -> &'static (Arc<Tokenizer>, Grammars) {
    static T: OnceLock<(Arc<Tokenizer>, Grammars)> = OnceLock::new();
    T.get_or_init(|| {
        let file = GgufFile::open(model_path()).expect("open the test model");
        let tokenizer =
            Arc::new(Tokenizer::from_gguf(file.metadata()).expect("build the SmolLM2 tokenizer"));
        let grammars = Grammars::new(Arc::clone(&tokenizer));
        (tokenizer, grammars)
    })
}

fn sampled(seed: u64, constraint: Constraint) -> GenerateParams {
    GenerateParams {
        max_tokens: Some(400),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..Default::default()
        },
        constraint: Some(constraint),
        ..Default::default()
    }
}

/// Generates with random logits in which every end-of-generation token is `eog_bias` above the
/// rest and every token of one byte among `favoured` 12 above; returns the text, the number of
/// generated tokens and why it stopped.
fn generate_biased(
    params: GenerateParams,
    logit_seed: u64,
    eog_bias: f32,
    favoured: &[u8],
) -> (String, usize, StopReason) {
    let (tokenizer, grammars) = smollm();
    let mut rng = ChaCha8Rng::seed_from_u64(logit_seed);
    let mut seq = SequenceState::new(&[1], params, None, grammars).expect("compile the grammar");
    assert!(!seq.argmax_suffices(), "a grammar needs the logits");
    let mut row = vec![0f32; tokenizer.n_vocab()];
    for _ in 0..1000 {
        for l in row.iter_mut() {
            *l = (rng.next_u32() as f32 / u32::MAX as f32) * 8.0;
        }
        for &id in tokenizer.end_of_generation_ids() {
            row[id as usize] += eog_bias;
        }
        for (id, l) in row.iter_mut().enumerate() {
            if let Some([b]) = tokenizer.token_bytes(id as u32)
                && favoured.contains(b)
            {
                *l += 12.0;
            }
        }
        let step = seq
            .advance(tokenizer, Logits::Row(&row), true)
            .expect("advance");
        if let Some(stop) = step.finished {
            return (seq.text().to_string(), seq.generated().len(), stop);
        }
    }
    panic!("no end after 1000 steps: {:?}", seq.text());
}

fn generate(params: GenerateParams, logit_seed: u64, eog_bias: f32) -> (String, usize, StopReason) {
    generate_biased(params, logit_seed, eog_bias, b"")
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue"]},
                "maxItems": 3
            },
            "alive": {"type": "boolean"}
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": false
    })
}

/// The checks `person_schema` asks for, written out.
fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text:?}"));
    for key in o.keys() {
        assert!(
            ["name", "age", "tags", "alive"].contains(&key.as_str()),
            "{key:?} is not in the schema: {text:?}"
        );
    }
    let name = o["name"]
        .as_str()
        .unwrap_or_else(|| panic!("name: {text:?}"));
    assert!(name.chars().count() <= 12, "name too long: {text:?}");
    let age = o["age"].as_i64().unwrap_or_else(|| panic!("age: {text:?}"));
    assert!((0..=120).contains(&age), "age: {text:?}");
    let tags = o["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags: {text:?}"));
    assert!(tags.len() <= 3, "tags: {text:?}");
    for t in tags {
        assert!(
            ["red", "green", "blue"].contains(&t.as_str().unwrap_or_default()),
            "tag {t}: {text:?}"
        );
    }
    if let Some(alive) = o.get("alive") {
        assert!(alive.is_boolean(), "alive: {text:?}");
    }
}

#[test]
fn random_logits_sample_only_what_the_schema_allows() {
    for seed in 0..12 {
        // An end token far ahead of the rest would win at every step it were allowed.
        let (text, _, stop) = generate(
            sampled(seed, Constraint::JsonSchema(person_schema())),
            seed,
            30.0,
        );
        assert_eq!(stop, StopReason::EndOfGeneration, "{text:?}");
        check_person(&text);
    }
    // The same logits without the grammar give no JSON at all.
    let mut free = sampled(0, Constraint::JsonObject);
    free.constraint = None;
    free.max_tokens = Some(20);
    let (text, _, _) = generate(free, 0, 0.0);
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text:?}");
}

#[test]
fn the_schema_true_allows_any_json_value() {
    for seed in 0..3 {
        let (text, _, stop) = generate_biased(
            sampled(seed, Constraint::JsonSchema(json!(true))),
            200 + seed,
            0.0,
            b"\"}]",
        );
        assert_eq!(stop, StopReason::EndOfGeneration, "{text:?}");
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    }
}

#[test]
fn any_json_object_is_one_object_on_one_line() {
    for seed in 0..8 {
        // Random tokens open more than they close: here quotes and closing brackets come up
        // often, so that strings and objects end.
        let (text, _, stop) = generate_biased(
            sampled(seed, Constraint::JsonObject),
            100 + seed,
            0.0,
            b"\"}]",
        );
        assert_eq!(stop, StopReason::EndOfGeneration, "{text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(v.is_object(), "{text:?}");
        assert!(!text.contains('\n'), "{text:?}");
    }
}

#[test]
fn the_end_waits_for_the_grammar_and_comes_when_it_is_complete() {
    let digits = || Constraint::Lark(r#"start: /[0-9]{3}-[0-9]{4}/"#.into());
    let phone = |t: &str| {
        let b = t.as_bytes();
        b.len() == 8
            && b[3] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 3 || c.is_ascii_digit())
    };
    for seed in 0..6 {
        // An end token wanted at every step is held back until the grammar is complete...
        let (text, _, stop) = generate(sampled(seed, digits()), seed, 50.0);
        assert!(phone(&text), "{text:?}");
        assert_eq!(stop, StopReason::EndOfGeneration);
        // ...and a complete grammar ends generation even for a run that ignores end tokens.
        let mut params = sampled(seed, digits());
        params.ignore_eos = true;
        let (text, _, stop) = generate(params, seed, -50.0);
        assert!(phone(&text), "{text:?}");
        assert_eq!(stop, StopReason::EndOfGeneration);
    }
    // A grammar that may end or go on: an eager end token ends it at its first chance, an
    // unwanted one lets it go on to the token limit.
    let repeated = || Constraint::Lark(r#"start: ("ab")+"#.into());
    let (text, _, stop) = generate(sampled(1, repeated()), 1, 50.0);
    assert_eq!((text.as_str(), stop), ("ab", StopReason::EndOfGeneration));
    // With `ignore_eos` an end token wanted at every step waits for a grammar that nothing
    // may follow; this one may always go on.
    let mut params = sampled(1, repeated());
    params.ignore_eos = true;
    params.max_tokens = Some(10);
    let (text, n, stop) = generate(params, 1, 50.0);
    assert_eq!((n, stop), (10, StopReason::MaxTokens), "{text:?}");
    let mut params = sampled(1, repeated());
    params.max_tokens = Some(6);
    let (text, n, stop) = generate(params, 1, -50.0);
    assert_eq!((n, stop), (6, StopReason::MaxTokens), "{text:?}");
    // Six tokens of "ab"s, the last perhaps cut after its "a".
    assert!(
        text.len() >= 6 && "ab".repeat(text.len()).starts_with(&text),
        "{text:?}"
    );
}

/// A grammar may spell out an end-of-generation token itself: it is sampled where the grammar
/// puts it, though the grammar cannot end before it.
#[test]
fn a_grammar_may_name_an_end_token() {
    let (text, _, stop) = generate(
        sampled(2, Constraint::Lark("start: \"a\" <|im_end|>".into())),
        2,
        0.0,
    );
    assert_eq!((text.as_str(), stop), ("a", StopReason::EndOfGeneration));
}

#[test]
fn a_regex_constraint_matches_whole() {
    for seed in 0..4 {
        let (text, _, stop) = generate(
            sampled(
                seed,
                Constraint::Regex("(yes|no), because [a-z ]{1,20}\\.".into()),
            ),
            seed,
            0.0,
        );
        assert_eq!(stop, StopReason::EndOfGeneration, "{text:?}");
        let rest = text
            .strip_prefix("yes, because ")
            .or_else(|| text.strip_prefix("no, because "))
            .unwrap_or_else(|| panic!("{text:?}"));
        let words = rest.strip_suffix('.').unwrap_or_else(|| panic!("{text:?}"));
        assert!(
            (1..=20).contains(&words.len())
                && words.chars().all(|c| c == ' ' || c.is_ascii_lowercase()),
            "{text:?}"
        );
    }
}

/// A JSON value in llama.cpp's grammar format: rules across lines, comments, classes with
/// escapes and negation, bounded repetitions.
const JSON_GBNF: &str = r#"
# Any JSON object; one space at most where whitespace may go.
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::=
  "{" ws (
    string ":" ws value
    ("," ws string ":" ws value)*
  )? "}"
array  ::= "[" ws ( value ("," ws value)* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= "-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})?
ws     ::= " "?
"#;

#[test]
fn gbnf_grammars_hold_as_llama_cpp_reads_them() {
    assert!(matches!(
        Constraint::grammar(JSON_GBNF),
        Constraint::Gbnf(_)
    ));
    for seed in 0..6 {
        let (text, _, stop) = generate_biased(
            sampled(seed, Constraint::grammar(JSON_GBNF)),
            300 + seed,
            0.0,
            b"\"}]",
        );
        assert_eq!(stop, StopReason::EndOfGeneration, "{text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(v.is_object(), "{text:?}");
    }
    // Rule names in capitals, a rule repeated by count, alternatives.
    let greeting = "root ::= Greeting \" \" Name{1,2} \"!\"\nGreeting ::= \"Hello\" | \"Hi\"\nName ::= [A-Z] [a-z]{2,6}\n";
    for seed in 0..6 {
        let (text, _, stop) = generate(sampled(seed, Constraint::grammar(greeting)), seed, 0.0);
        assert_eq!(stop, StopReason::EndOfGeneration, "{text:?}");
        let names = text
            .strip_prefix("Hello ")
            .or_else(|| text.strip_prefix("Hi "))
            .and_then(|t| t.strip_suffix('!'))
            .unwrap_or_else(|| panic!("{text:?}"));
        // One or two names, each a capital and 2 to 6 small letters.
        let starts: Vec<usize> = names
            .char_indices()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .map(|(i, _)| i)
            .collect();
        assert!(
            starts.first() == Some(&0) && (1..=2).contains(&starts.len()),
            "{text:?}"
        );
        let mut bounds = starts.clone();
        bounds.push(names.len());
        for w in bounds.windows(2) {
            let name = &names[w[0]..w[1]];
            assert!(
                (3..=7).contains(&name.len()) && name[1..].chars().all(|c| c.is_ascii_lowercase()),
                "{text:?}"
            );
        }
    }
}

/// Whether `constraint` takes `text` whole, fed one character (one token) at a time.
fn accepts(constraint: &Constraint, text: &str) -> bool {
    let (tokenizer, grammars) = smollm();
    let mut state = grammars.parser(constraint).expect("compile the grammar");
    let mut row = vec![0f32; tokenizer.n_vocab()];
    let mut masked = Vec::new();
    for c in text.chars() {
        let ids = tokenizer.encode(&c.to_string(), false).unwrap();
        assert_eq!(ids.len(), 1, "{c:?} is not one token");
        if state.is_complete() {
            return false;
        }
        row.iter_mut().for_each(|l| *l = 0.0);
        state.mask(&row, &mut masked, false).unwrap();
        if masked[ids[0] as usize] == f32::NEG_INFINITY || state.accept(ids[0]).is_err() {
            return false;
        }
    }
    if state.is_complete() {
        return true;
    }
    state.mask(&row, &mut masked, false).unwrap();
    state.ends_here()
}

/// Where one literal is the start of what another rule allows, llama.cpp reads on character by
/// character; so does the grammar here.
#[test]
fn gbnf_literals_that_start_other_text_do_not_shut_it_out() {
    let g = Constraint::grammar(
        "root ::= key \": \" val\nkey ::= [a-z]+\nval ::= \"null\" | \"nullable\" | [a-z]+\n",
    );
    for text in [
        "x: nul",
        "x: nux",
        "x: nullx",
        "x: null",
        "x: nullable",
        "x: ab",
    ] {
        assert!(accepts(&g, text), "{text:?} refused");
    }
    for text in ["x: ", "x:nul", "X: a", "x: a1"] {
        assert!(!accepts(&g, text), "{text:?} accepted");
    }
    let g = Constraint::grammar("root ::= (\"a\" | \"ab\") \"bc\"");
    assert!(accepts(&g, "abc") && accepts(&g, "abbc") && !accepts(&g, "ab"));
}

#[test]
fn bad_grammars_are_refused_with_their_reason() {
    let (_, grammars) = smollm();
    let refused = |c: Constraint| {
        let params = GenerateParams {
            constraint: Some(c.clone()),
            ..Default::default()
        };
        match SequenceState::new(&[1], params, None, grammars) {
            Ok(_) => panic!("{c:?} was accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = refused(Constraint::JsonSchema(json!({"type": "strnig"})));
    assert!(
        e.starts_with("invalid grammar: ") && e.contains("strnig"),
        "{e}"
    );
    let e = refused(Constraint::JsonSchema(json!([1, 2])));
    assert!(e.contains("must be an object"), "{e}");
    let e = refused(Constraint::JsonSchema(json!(false)));
    assert!(e.contains("allows no value"), "{e}");
    let e = refused(Constraint::JsonSchema(
        json!({"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/nowhere"}}}),
    ));
    assert!(e.contains("nowhere"), "{e}");
    let e = refused(Constraint::Lark("start: (".into()));
    assert!(e.starts_with("invalid grammar: "), "{e}");
    let e = refused(Constraint::Lark(r#"root ::= "yes" | "no""#.into()));
    assert!(e.contains("looks like GBNF"), "{e}");
    let e = refused(Constraint::grammar("root ::= answer\nanswr ::= \"yes\""));
    assert!(
        e.contains("line 1: rule answer is used but never defined"),
        "{e}"
    );
    let e = refused(Constraint::Gbnf("start ::= \"yes\"".into()));
    assert!(e.contains("no root rule"), "{e}");
    let e = refused(Constraint::Lark("  \n".into()));
    assert!(e.contains("empty"), "{e}");
    let e = refused(Constraint::Regex("(unclosed".into()));
    assert!(e.starts_with("invalid grammar: "), "{e}");
}
