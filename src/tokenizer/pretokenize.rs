//! The byte-level BPE pre-tokenizers, chosen by `tokenizer.ggml.pre` as llama.cpp chooses them.
//!
//! llama.cpp splits text with a list of regexes applied one after another: each regex cuts every
//! piece into its matches and the gaps between them, and both are kept. That is exactly a chain of
//! `Split(regex, Isolated)` pre-tokenizers, followed by the byte-to-unicode mapping of `ByteLevel`
//! with its own regex switched off.
//!
//! Where llama.cpp rewrote a model's regex only because `std::regex` lacks a feature (case-insensitive
//! groups, `\p{Lu}`-style classes), the model's original regex from its `tokenizer.json` is used
//! instead: fancy-regex understands it, and the original is the definition the model was trained
//! with.

use tokenizers::SplitDelimiterBehavior;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

use super::TokenizerError;

/// GPT-2's regex. llama.cpp drops the final `|\s+`; with isolated splitting that changes nothing,
/// because the only text it would match is a single whitespace character left between matches,
/// which becomes a piece of its own either way.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The original uses possessive quantifiers; llama.cpp made them greedy and so do we, to split
/// the same way it does.
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

const EXAONE_MOE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+";

const FALCON_PUNCT: &str = r"[\p{P}\$\+<=>\^~\|`]+";
const FALCON_WORDS: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

const CJK: &str = r"[一-龥ࠀ-一가-퟿]+";

/// DeepSeek's tokenizer.json spells out, range by range, the code points of the cased letters
/// (general category L&: Lu, Ll, Lt); `\p{LC}` is that set without the risk of a copied range
/// being silently re-normalized into an invalid one.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?\p{LC}+";
const DEEPSEEK_LLM_PUNCT: &str = r"\s?[!-/:-~！-／：-～‘-‟　-。]+";

const DEEPSEEK3_WORDS: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;

/// How one `tokenizer.ggml.pre` value tokenizes, and the llama.cpp flags that come with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreTokenizerSpec {
    /// The name this spec is known by in llama.cpp's table (several `pre` values share one).
    pub name: &'static str,
    /// Applied in order; each splits every piece the previous ones produced.
    pub regexes: &'static [&'static str],
    /// A piece that is already a whole token is taken as is, without running its merges
    /// (Llama 3 and Tekken vocabularies hold tokens their merges cannot build).
    pub ignore_merges: bool,
    /// Whether BOS is added by default when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos: bool,
    /// Whether the vocabulary has no BOS token unless `tokenizer.ggml.bos_token_id` names one.
    pub no_bos: bool,
}

const fn spec(name: &'static str, regexes: &'static [&'static str]) -> PreTokenizerSpec {
    PreTokenizerSpec {
        name,
        regexes,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    }
}

pub(crate) const DEFAULT: PreTokenizerSpec = spec("gpt2", &[GPT2]);

/// The spec for a `tokenizer.ggml.pre` value, or `None` when it is not one we know.
pub(crate) fn lookup(pre: &str) -> Option<PreTokenizerSpec> {
    let llama3 = PreTokenizerSpec {
        ignore_merges: true,
        add_bos: true,
        ..spec("llama3", &[LLAMA3])
    };
    Some(match pre {
        // llama.cpp has a separate, older regex list for "default"; GPT-2's regex is what a
        // byte-level BPE vocabulary of unknown origin most likely expects.
        "default" => DEFAULT,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => llama3,
        "dbrx" | "smaug-bpe" => spec("llama3", &[LLAMA3]),
        "glm4" | "chatglm-bpe" => PreTokenizerSpec {
            no_bos: true,
            ..spec("chatglm4", &[LLAMA3])
        },
        "deepseek-llm" => spec(
            "deepseek-llm",
            &[
                "[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                DEEPSEEK_LLM_PUNCT,
                r"\s+$",
                CJK,
                r"\p{N}+",
            ],
        ),
        "deepseek-coder" => spec(
            "deepseek-coder",
            &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"],
        ),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" => spec(
            "deepseek-v3",
            &[r"\p{N}{1,3}", r"[一-龥぀-ゟ゠-ヿ]+", DEEPSEEK3_WORDS],
        ),
        "falcon" => spec("falcon", &[FALCON_PUNCT, FALCON_WORDS, "[0-9][0-9][0-9]"]),
        "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "phi-2"
        | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0"
        | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "exaone4" => {
            DEFAULT
        }
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            spec("smollm", &[r"\p{N}", GPT2])
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" | "grok-2" => spec("qwen2", &[QWEN2]),
        "qwen35" => spec("qwen35", &[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => spec("bloom", &[BLOOM]),
        "viking" => spec("viking", &[BLOOM, r"\p{N}"]),
        "tekken" => PreTokenizerSpec {
            ignore_merges: true,
            add_bos: true,
            ..spec("tekken", &[TEKKEN])
        },
        "gpt-4o" | "llama4" | "minimax-m2" => spec("gpt-4o", &[GPT4O]),
        "seed-coder" => spec("seed-coder", &[SEED_CODER]),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => spec("bailingmoe", &[BAILINGMOE]),
        "exaone-moe" => spec("exaone-moe", &[EXAONE_MOE]),
        _ => return None,
    })
}

/// The `tokenizers` pre-tokenizer for a spec: one isolated regex split per entry, then the
/// byte-to-unicode mapping.
pub(crate) fn build(spec: &PreTokenizerSpec) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex {regex:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "default",
        "llama3",
        "llama-bpe",
        "dbrx",
        "glm4",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "gpt-2",
        "smollm",
        "starcoder",
        "qwen2",
        "qwen35",
        "bloom",
        "viking",
        "tekken",
        "gpt-4o",
        "seed-coder",
        "bailingmoe",
        "exaone-moe",
    ];

    #[test]
    fn every_regex_compiles() {
        for name in NAMES {
            let spec = lookup(name).unwrap_or_else(|| panic!("{name} missing"));
            build(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn unknown_names_are_none() {
        assert!(lookup("no-such-pre").is_none());
        assert!(lookup("").is_none());
    }

    #[test]
    fn llama3_flags() {
        let s = lookup("llama-bpe").unwrap();
        assert!(s.ignore_merges && s.add_bos);
        let s = lookup("smollm").unwrap();
        assert!(!s.ignore_merges && !s.add_bos);
        assert_eq!(s.regexes.len(), 2);
    }
}
