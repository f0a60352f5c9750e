//! Tokenizers built from GGUF metadata on the `tokenizers` crate, and chat templates.
//!
//! Two GGUF vocabulary types are supported, the two that cover nearly every chat model:
//!
//! - `gpt2`: byte-level BPE (Llama 3, Qwen, SmolLM, Mistral Nemo, ...) with the pre-tokenizer
//!   named by `tokenizer.ggml.pre` (the table is in `pretokenize.rs`).
//! - `llama`: SentencePiece BPE with byte fallback (Llama 2, Mistral 7B, TinyLlama, ...), whose
//!   merges are derived from the piece scores.
//!
//! Encoding runs through `tokenizers`. Decoding does not: it renders each token to bytes from a
//! table built at load time, because a streaming decoder has to see the bytes (a byte-level token
//! can end in the middle of a character) and `tokenizers` only hands out strings.
//!
//! Special tokens follow llama.cpp: control, user-defined and unknown tokens written in the text
//! are always parsed as single tokens; control and unknown tokens render as empty text; tokens
//! that llama.cpp recognises by name as end-of-turn markers end generation.
//!
//! Not done: llama.cpp's `clean_spaces` pass for some old GPT-2-style vocabularies (`" ."` to
//! `"."` after decoding). It rewrites text already shown to the user, so a streaming decoder
//! could only honour it by holding text back, and the models that want it are not chat models.

pub mod bytes;
pub(crate) mod chat;
mod pretokenize;
mod spm;

use std::collections::HashMap;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence};
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::format::{Array, Metadata, Value};

pub use chat::{ChatMessage, render_chat_template};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
const KEY_FIM_PAD: &str = "tokenizer.ggml.fim_pad_token_id";
const KEY_FIM_REP: &str = "tokenizer.ggml.fim_rep_token_id";
const KEY_FIM_SEP: &str = "tokenizer.ggml.fim_sep_token_id";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// What went wrong building a tokenizer or using one.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Metadata that is malformed in a way no other variant names.
    #[error("{0}")]
    Invalid(String),
    #[error("metadata key {0} is missing")]
    MissingKey(&'static str),
    #[error("metadata key {key} holds {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "tokenizer model {0:?} is not supported (supported: \"gpt2\" byte-level BPE, \"llama\" SentencePiece BPE)"
    )]
    UnsupportedModel(String),
    #[error("{KEY_TOKENS} is empty")]
    EmptyVocab,
    #[error("{KEY_TOKENS} has {0} entries, more than 32-bit token ids can address")]
    VocabTooLarge(usize),
    #[error("{key} has {found} entries but {KEY_TOKENS} has {expected}")]
    LengthMismatch {
        key: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("{key} = {id} is outside the vocabulary of {n_vocab} tokens")]
    SpecialIdOutOfRange {
        key: String,
        id: u64,
        n_vocab: usize,
    },
    #[error("{flag} is set but the vocabulary has no {which} token")]
    MissingSpecialToken {
        flag: &'static str,
        which: &'static str,
    },
    #[error("{KEY_MERGES}[{index}] = {merge:?}: {reason}")]
    BadMerge {
        index: usize,
        merge: String,
        reason: &'static str,
    },
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    IdOutOfRange { id: u32, n_vocab: usize },
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// The GGUF vocabulary type (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerModel {
    /// `gpt2`: byte-level BPE with ranked merges.
    Gpt2,
    /// `llama`: SentencePiece BPE with piece scores and byte fallback.
    Llama,
}

impl TokenizerModel {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerModel::Gpt2 => "gpt2",
            TokenizerModel::Llama => "llama",
        }
    }
}

/// A token's type (`tokenizer.ggml.token_type`), numbered as GGUF numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Whether text spelling this token is parsed as the token itself (llama.cpp's special-token
    /// partition with `parse_special`).
    fn is_parsed_in_text(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }
}

/// Tokens that llama.cpp takes as end of generation by their text; converters rarely mark all of
/// them in the metadata.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
];
/// Candidates for the end-of-turn token when the metadata names none, best first.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
/// Fill-in-the-middle padding, repository and file separators: a model that emits one has left
/// the completion it was asked for, so llama.cpp stops there too.
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// A text tokenizer for one model: encode, decode, special tokens, chat template.
pub struct Tokenizer {
    inner: HfTokenizer,
    model: TokenizerModel,
    /// The pre-tokenizer actually used (`gpt2` models), by llama.cpp's name for it.
    pre: Option<&'static str>,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// Each token rendered as the bytes it stands for in decoded text.
    pieces: Vec<Box<[u8]>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece: a space is put before the text, and taken off the front of decoded text.
    add_space_prefix: bool,
    /// Sorted.
    eog: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
            .field("n_vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("eom", &self.eom)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("eog", &self.eog)
            .field("chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

fn value_type_name(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("an array of {}", a.element_type().name()),
        other => format!("a {}", other.value_type().name()),
    }
}

fn opt_string_array<'m>(
    meta: &'m Metadata,
    key: &str,
) -> Result<Option<&'m [String]>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Array(Array::String(v))) => Ok(Some(v)),
        Some(other) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            expected: "an array of strings",
            found: value_type_name(other),
        }),
    }
}

fn opt_str<'m>(meta: &'m Metadata, key: &str) -> Result<Option<&'m str>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            expected: "a string",
            found: value_type_name(other),
        }),
    }
}

fn opt_bool(meta: &Metadata, key: &str) -> Result<Option<bool>, TokenizerError> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(TokenizerError::WrongType {
            key: key.to_string(),
            expected: "a bool",
            found: value_type_name(other),
        }),
    }
}

/// A numeric array with one entry per token, converted by `convert` (`None` for the wrong element
/// type).
fn opt_per_token<T>(
    meta: &Metadata,
    key: &'static str,
    n_vocab: usize,
    convert: impl Fn(&Array) -> Option<Vec<T>>,
) -> Result<Option<Vec<T>>, TokenizerError> {
    let wrong = |found: String| TokenizerError::WrongType {
        key: key.to_string(),
        expected: "an array of numbers",
        found,
    };
    let array = match meta.get(key) {
        None => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(wrong(value_type_name(other))),
    };
    let values = convert(array)
        .ok_or_else(|| wrong(format!("an array of {}", array.element_type().name())))?;
    if values.len() != n_vocab {
        return Err(TokenizerError::LengthMismatch {
            key,
            found: values.len(),
            expected: n_vocab,
        });
    }
    Ok(Some(values))
}

/// Checks every `tokenizer.ggml.*_token_id` key, including ones this tokenizer does not use, so
/// a file that points any special token past the vocabulary is rejected by name.
fn check_special_ids(meta: &Metadata, n_vocab: usize) -> Result<(), TokenizerError> {
    for (key, value) in meta.iter() {
        if !(key.starts_with("tokenizer.ggml.") && key.ends_with("_token_id")) {
            continue;
        }
        let id = value.as_u64().ok_or_else(|| TokenizerError::WrongType {
            key: key.to_string(),
            expected: "a non-negative integer",
            found: format!("{} {value}", value.value_type().name()),
        })?;
        if id >= n_vocab as u64 {
            return Err(TokenizerError::SpecialIdOutOfRange {
                key: key.to_string(),
                id,
                n_vocab,
            });
        }
    }
    Ok(())
}

/// A special token id from its key (already range-checked), else the default when it fits.
fn special_id(meta: &Metadata, key: &str, default: Option<u32>, n_vocab: usize) -> Option<u32> {
    match meta.get_u64(key) {
        Some(id) => u32::try_from(id).ok(),
        None => default.filter(|&id| (id as usize) < n_vocab),
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let model_name = opt_str(meta, KEY_MODEL)?.ok_or(TokenizerError::MissingKey(KEY_MODEL))?;
        let model = match model_name {
            "gpt2" => TokenizerModel::Gpt2,
            "llama" => TokenizerModel::Llama,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };

        let raw_tokens =
            opt_string_array(meta, KEY_TOKENS)?.ok_or(TokenizerError::MissingKey(KEY_TOKENS))?;
        let n_vocab = raw_tokens.len();
        if n_vocab == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n_vocab).is_err() {
            return Err(TokenizerError::VocabTooLarge(n_vocab));
        }
        // An empty token could never be produced or matched; llama.cpp gives it a placeholder
        // name, and so do we, so that every id keeps a distinct text.
        let tokens: Vec<String> = raw_tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();

        let mut types: Vec<TokenType> =
            match opt_per_token(meta, KEY_TYPES, n_vocab, Array::to_i64_vec)? {
                Some(raw) => raw.into_iter().map(TokenType::from_gguf).collect(),
                None => vec![TokenType::Normal; n_vocab],
            };
        let scores = opt_per_token(meta, KEY_SCORES, n_vocab, Array::to_f32_vec)?;

        check_special_ids(meta, n_vocab)?;

        // Later duplicates win, as in llama.cpp's text-to-id map.
        let ids: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();

        let pre_spec = match model {
            TokenizerModel::Gpt2 => Some(match opt_str(meta, KEY_PRE)? {
                Some(name) => match pretokenize::lookup(name) {
                    Some(spec) => spec,
                    None => {
                        tracing::warn!(
                            "unknown pre-tokenizer {KEY_PRE} = {name:?}; using GPT-2's, so text may split differently from the model's own tokenizer"
                        );
                        pretokenize::DEFAULT
                    }
                },
                None => {
                    tracing::warn!("{KEY_PRE} is missing; using GPT-2's pre-tokenizer");
                    pretokenize::DEFAULT
                }
            }),
            TokenizerModel::Llama => None,
        };

        let (default_bos, default_eos, default_unk, default_add_bos) = match model {
            TokenizerModel::Llama => (Some(1), Some(2), Some(0), true),
            TokenizerModel::Gpt2 => (None, None, None, pre_spec.is_some_and(|s| s.add_bos)),
        };
        let default_bos = default_bos.filter(|_| !pre_spec.is_some_and(|s| s.no_bos));
        let bos = special_id(meta, KEY_BOS, default_bos, n_vocab);
        let eos = special_id(meta, KEY_EOS, default_eos, n_vocab);
        let unk = special_id(meta, KEY_UNK, default_unk, n_vocab);
        let pad = special_id(meta, KEY_PAD, None, n_vocab);
        let add_bos = opt_bool(meta, KEY_ADD_BOS)?.unwrap_or(default_add_bos);
        let add_eos = opt_bool(meta, KEY_ADD_EOS)?.unwrap_or(false);
        let add_space_prefix =
            model == TokenizerModel::Llama && opt_bool(meta, KEY_ADD_SPACE_PREFIX)?.unwrap_or(true);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: KEY_ADD_BOS,
                which: "BOS",
            });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: KEY_ADD_EOS,
                which: "EOS",
            });
        }

        let find = |texts: &[&str]| texts.iter().find_map(|t| ids.get(t).copied());
        let by_key = |key: &str| special_id(meta, key, None, n_vocab);
        let eot = by_key(KEY_EOT).or_else(|| find(EOT_TEXTS));
        let eom = by_key(KEY_EOM).or_else(|| find(EOM_TEXTS));
        let fim_pad = by_key(KEY_FIM_PAD).or_else(|| find(FIM_PAD_TEXTS));
        let fim_rep = by_key(KEY_FIM_REP).or_else(|| find(FIM_REP_TEXTS));
        let fim_sep = by_key(KEY_FIM_SEP).or_else(|| find(FIM_SEP_TEXTS));

        // Tokens recognised by name must never be spelled out, nor split when they appear in a
        // prompt; converters sometimes leave them typed as text, and llama.cpp fixes that up too.
        let named = [
            EOG_TEXTS,
            EOT_TEXTS,
            EOM_TEXTS,
            FIM_PAD_TEXTS,
            FIM_REP_TEXTS,
            FIM_SEP_TEXTS,
        ];
        for text in named.iter().flat_map(|list| list.iter()) {
            if let Some(&id) = ids.get(text) {
                let ty = &mut types[id as usize];
                if *ty != TokenType::Control {
                    tracing::warn!(
                        "token {id} {text:?} looks like a control token but is typed {ty:?}; treating it as one"
                    );
                    *ty = TokenType::Control;
                }
            }
        }

        let mut eog: Vec<u32> = EOG_TEXTS
            .iter()
            .filter_map(|t| ids.get(t).copied())
            .chain(
                [eos, eot, eom, fim_pad, fim_rep, fim_sep]
                    .into_iter()
                    .flatten(),
            )
            .collect();
        eog.sort_unstable();
        eog.dedup();
        // gpt-oss and Solar Open close a message with <|end|> and go on generating; their turns
        // end at <|return|> / <|call|> (<|flush|> / <|calls|>), and <|end|> is shown as text.
        let has = |t: &str| ids.contains_key(t);
        let harmony =
            (has("<|return|>") && has("<|call|>")) || (has("<|flush|>") && has("<|calls|>"));
        if let (true, Some(&end)) = (harmony, ids.get("<|end|>")) {
            eog.retain(|&id| id != end);
            types[end as usize] = TokenType::UserDefined;
        }

        let vocab: Vocab = ids.iter().map(|(t, &id)| (t.to_string(), id)).collect();
        let bpe = match model {
            TokenizerModel::Gpt2 => {
                let merges = opt_string_array(meta, KEY_MERGES)?
                    .ok_or(TokenizerError::MissingKey(KEY_MERGES))?;
                let merges = spm::parse_merges(merges, &ids)?;
                BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(pre_spec.is_some_and(|s| s.ignore_merges))
                    .build()
            }
            TokenizerModel::Llama => {
                let scores = scores.ok_or(TokenizerError::MissingKey(KEY_SCORES))?;
                let merges = spm::merges_from_scores(&tokens, &scores, &ids);
                let mut builder = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                if let Some(unk) = unk {
                    builder = builder.unk_token(tokens[unk as usize].clone());
                }
                builder.build()
            }
        }
        .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let mut inner = HfTokenizer::new(bpe);
        match (model, pre_spec) {
            (TokenizerModel::Gpt2, Some(spec)) => {
                inner.with_pre_tokenizer(Some(pretokenize::build(&spec)?));
            }
            _ => {
                // SentencePiece sees spaces as `▁`. The normalizer runs on each stretch of text
                // between special tokens, so the prefix space goes at the start and after every
                // special token: where llama.cpp puts it.
                let mut steps: Vec<NormalizerWrapper> = Vec::new();
                if add_space_prefix {
                    steps.push(Prepend::new("\u{2581}".to_string()).into());
                }
                let replace = Replace::new(" ", "\u{2581}")
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                steps.push(replace.into());
                inner
                    .with_normalizer(Some(Sequence::new(steps)))
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
            }
        }
        let added: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(ty, _)| ty.is_parsed_in_text())
            .map(|(ty, text)| {
                AddedToken::from(text.as_str(), *ty != TokenType::UserDefined).normalized(false)
            })
            .collect();
        inner
            .add_tokens(added)
            .map_err(|e| TokenizerError::Build(e.to_string()))?;

        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(text, ty)| render_piece(model, *ty, text).into_boxed_slice())
            .collect();

        let chat_template = opt_str(meta, KEY_CHAT_TEMPLATE)?.map(str::to_string);

        Ok(Tokenizer {
            inner,
            model,
            pre: pre_spec.map(|s| s.name),
            tokens,
            types,
            pieces,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
            chat_template,
        })
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) are always
    /// parsed; `add_special` adds BOS / EOS as the model's `add_bos_token` / `add_eos_token` ask.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = Vec::with_capacity(encoding.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// The text of `ids`. Control tokens render as nothing; bytes that do not form valid UTF-8
    /// become U+FFFD. A SentencePiece model's prefix space is taken off the front.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        let mut started = false;
        for &id in ids {
            self.append_piece(id, &mut started, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Appends the bytes of one token. `started` says whether any text came before: the first
    /// text loses the space the encoder put in front of it.
    pub(crate) fn append_piece(
        &self,
        id: u32,
        started: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TokenizerError> {
        let mut piece = self.token_bytes(id).ok_or(TokenizerError::IdOutOfRange {
            id,
            n_vocab: self.n_vocab(),
        })?;
        if !*started && !piece.is_empty() {
            *started = true;
            if self.add_space_prefix {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
        }
        out.extend_from_slice(piece);
        Ok(())
    }

    /// The bytes one token contributes to decoded text (empty for control tokens), or `None`
    /// for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| &p[..])
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn model(&self) -> TokenizerModel {
        self.model
    }

    /// The pre-tokenizer in use for byte-level BPE, by llama.cpp's name (`smollm`, `llama3`, ...).
    pub fn pre_tokenizer(&self) -> Option<&'static str> {
        self.pre
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End of turn: from the metadata, else found by name (`<|im_end|>`, `<|eot_id|>`, ...).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    /// End of message (Llama 3.1 tool calls).
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(_, true)` puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(_, true)` puts EOS last.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends the turn: EOS, EOT, EOM, and the end-of-turn markers llama.cpp
    /// recognises by name (`<|im_end|>`, `<|endoftext|>`, ...).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Every end-of-generation id, ascending.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The vocabulary entry for `id`, as stored in the file (`Ġthe`, `▁the`, `<|im_start|>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id whose vocabulary entry is exactly `text`.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The Jinja chat template stored in the file (`tokenizer.chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// What one token contributes to decoded text, following llama.cpp's `token_to_piece` without
/// `special`: control, unknown and unused tokens contribute nothing, user-defined tokens their
/// text as written.
fn render_piece(model: TokenizerModel, ty: TokenType, text: &str) -> Vec<u8> {
    match (ty, model) {
        (TokenType::Control | TokenType::Unknown | TokenType::Unused | TokenType::Undefined, _) => {
            Vec::new()
        }
        (TokenType::UserDefined, _) => text.as_bytes().to_vec(),
        (TokenType::Byte, TokenizerModel::Llama) => match bytes::parse_byte_token(text) {
            Some(b) => vec![b],
            None => bytes::spm_decode(text),
        },
        (TokenType::Normal, TokenizerModel::Llama) => bytes::spm_decode(text),
        (TokenType::Normal | TokenType::Byte, TokenizerModel::Gpt2) => {
            bytes::byte_level_decode(text)
        }
    }
}

/// Turns generated token ids into text as they arrive.
///
/// Byte-level BPE can split one character across tokens, so the bytes of an unfinished character
/// are held back until the token that completes it. The concatenation of everything `push` and
/// `finish` return equals `decode` of all the ids.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    pending: Vec<u8>,
    started: bool,
}

impl StreamDecoder {
    /// A decoder for text that starts here, exactly like [`Tokenizer::decode`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder for tokens that continue a prompt: a SentencePiece model's leading space is kept
    /// (` Paris` after `The capital of France is`), since it separates the new text from the
    /// prompt's.
    pub fn after_prompt() -> Self {
        StreamDecoder {
            started: true,
            ..Self::default()
        }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        tok.append_piece(id, &mut self.started, &mut self.pending)?;
        self.ids.push(id);
        Ok(bytes::take_complete_utf8(&mut self.pending))
    }

    /// Whatever is still held back, as text (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Whether bytes of an unfinished character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}
