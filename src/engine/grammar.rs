//! Constrained sampling: a grammar (any JSON object, a JSON schema, a Lark grammar or a regular
//! expression) decides at every step which tokens may come next, and the sampler draws only
//! among those. The grammar engine is llguidance; this module gives it the model's vocabulary
//! and keeps one parser per sequence.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::EngineError;
use crate::tokenizer::{TokenType, Tokenizer};

/// What generated text must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `json_object` response format).
    JsonObject,
    /// A JSON value valid against this JSON schema.
    JsonSchema(Value),
    /// Text derived from this grammar in llguidance's Lark syntax (`start: ...`).
    Lark(String),
    /// Text derived from this grammar in llama.cpp's GBNF (`root ::= ...`).
    Gbnf(String),
    /// Text that matches this regular expression whole.
    Regex(String),
}

/// JSON is written on one line with a space after `,` and `:`. Free whitespace lets a small
/// model fill its output with newlines and never close the object.
fn compact_json() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

impl Constraint {
    /// A grammar in either syntax: GBNF where a rule is defined with `::=`, else Lark.
    pub fn grammar(text: impl Into<String>) -> Self {
        let text = text.into();
        if super::gbnf::is_gbnf(&text) {
            Constraint::Gbnf(text)
        } else {
            Constraint::Lark(text)
        }
    }

    fn top_level(&self) -> Result<TopLevelGrammar, EngineError> {
        Ok(match self {
            Constraint::JsonObject => {
                let mut schema = serde_json::json!({ "type": "object" });
                schema["x-guidance"] = compact_json();
                TopLevelGrammar::from_json_schema(schema)
            }
            Constraint::JsonSchema(schema) => {
                let mut fields = match schema {
                    Value::Object(fields) => fields.clone(),
                    // `true` is the schema every value is valid against.
                    Value::Bool(true) => serde_json::Map::new(),
                    Value::Bool(false) => {
                        return Err(EngineError::Grammar(
                            "the schema false allows no value at all".into(),
                        ));
                    }
                    _ => {
                        return Err(EngineError::Grammar(
                            "a JSON schema must be an object (or true)".into(),
                        ));
                    }
                };
                // A schema that says how to lay out its JSON (llguidance's own key) keeps its say.
                fields.entry("x-guidance").or_insert_with(compact_json);
                TopLevelGrammar::from_json_schema(Value::Object(fields))
            }
            Constraint::Lark(grammar) => {
                if grammar.trim().is_empty() {
                    return Err(EngineError::Grammar("the grammar is empty".into()));
                }
                TopLevelGrammar::from_lark(grammar.clone())
            }
            Constraint::Gbnf(grammar) => TopLevelGrammar::from_lark(
                super::gbnf::gbnf_to_lark(grammar).map_err(EngineError::Grammar)?,
            ),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
        })
    }
}

/// The model's vocabulary as the grammar engine sees it, built on first use (a pass over every
/// token) and shared by every sequence of the model.
pub struct Grammars {
    tokenizer: Arc<Tokenizer>,
    factory: OnceLock<Result<Arc<ParserFactory>, String>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("built", &self.factory.get().is_some())
            .finish()
    }
}

impl Grammars {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Grammars {
            tokenizer,
            factory: OnceLock::new(),
        }
    }

    /// Tokens in the vocabulary the grammars are compiled against.
    pub fn n_vocab(&self) -> usize {
        self.tokenizer.n_vocab()
    }

    fn factory(&self) -> Result<&Arc<ParserFactory>, EngineError> {
        self.factory
            .get_or_init(|| build_factory(&self.tokenizer))
            .as_ref()
            .map_err(|e| EngineError::Grammar(e.clone()))
    }

    /// Compiles `constraint` into a parser for one sequence. Errors name what is wrong with the
    /// grammar or schema.
    pub fn parser(&self, constraint: &Constraint) -> Result<GrammarState, EngineError> {
        let factory = self.factory()?;
        let grammar = constraint.top_level()?;
        let parser = factory.create_parser(grammar).map_err(|e| {
            let mut message = e.to_string();
            if matches!(constraint, Constraint::Lark(g) if g.contains("::=")) {
                // llama.cpp's grammars are GBNF; the message alone would not say so.
                message.push_str(
                    " (this looks like GBNF: rules here are Lark's `name: ...`, starting at `start`)",
                );
            }
            EngineError::Grammar(message)
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Grammar(e));
        }
        Ok(GrammarState {
            matcher,
            end_of_generation: self.tokenizer.end_of_generation_ids().to_vec(),
            may_end: false,
        })
    }
}

fn build_factory(tokenizer: &Tokenizer) -> Result<Arc<ParserFactory>, String> {
    let n_vocab = tokenizer.n_vocab();
    let eos = tokenizer
        .eot()
        .or(tokenizer.eos())
        .or_else(|| tokenizer.end_of_generation_ids().first().copied())
        .ok_or("the model has no end-of-generation token, so no grammar can end")?;
    let words: Vec<Vec<u8>> = (0..n_vocab as u32)
        .map(|id| {
            let bytes = tokenizer.token_bytes(id).unwrap_or_default();
            let special = matches!(
                tokenizer.token_type(id),
                Some(TokenType::Control | TokenType::Unknown)
            ) || bytes.is_empty();
            if special {
                // The engine's mark for a token that text never spells: grammars see it only by
                // name, and byte-level matching never produces it.
                let name = tokenizer.token_text(id).unwrap_or_default();
                let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                word.extend_from_slice(name.as_bytes());
                word
            } else {
                bytes.to_vec()
            }
        })
        .collect();
    let mut info = TokRxInfo::new(n_vocab as u32, eos);
    info.tok_bos = tokenizer.bos();
    info.tok_unk = tokenizer.unk();
    info.tok_pad = tokenizer.pad();
    info.tok_end_of_turn = tokenizer.eot();
    let trie = TokTrie::from(&info, &words);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
    // Warnings go to the error the caller sees, not to standard error.
    factory.quiet();
    Ok(Arc::new(factory))
}

/// One sequence's place in its grammar.
pub struct GrammarState {
    matcher: Matcher,
    end_of_generation: Vec<u32>,
    /// Whether the grammar could end where the last mask was computed: an end-of-generation
    /// token sampled there ends generation; elsewhere the grammar itself asked for it.
    may_end: bool,
}

impl std::fmt::Debug for GrammarState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarState")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl GrammarState {
    /// Whether the grammar is complete and allows nothing more: generation ends here.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Writes `row` into `out` with minus infinity for every token the grammar does not allow
    /// next. End-of-generation tokens are allowed where the grammar may end (with `ignore_eos`,
    /// only if nothing else may follow) and where the grammar names them itself.
    pub fn mask(
        &mut self,
        row: &[f32],
        out: &mut Vec<f32>,
        ignore_eos: bool,
    ) -> Result<(), EngineError> {
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| EngineError::Grammar(e.to_string()))?;
        self.may_end = self.matcher.is_accepting().unwrap_or(false);
        out.clear();
        out.resize(row.len(), f32::NEG_INFINITY);
        // Masks are sparse: copy the allowed logits rather than test every token.
        let end_of_generation = &self.end_of_generation;
        let mut others = false;
        mask.iter_set_entries(|id| {
            if let (Some(o), Some(&l)) = (out.get_mut(id), row.get(id)) {
                *o = l;
                others |= end_of_generation.binary_search(&(id as u32)).is_err();
            }
        });
        for &id in end_of_generation {
            let allowed = if self.may_end {
                !ignore_eos || !others
            } else {
                // A grammar that spells out an end token (`... <|im_end|>`) gets it.
                mask.is_allowed(id)
            };
            if let (Some(o), Some(&l)) = (out.get_mut(id as usize), row.get(id as usize)) {
                *o = if allowed { l } else { f32::NEG_INFINITY };
            }
        }
        Ok(())
    }

    /// Whether an end-of-generation token sampled from the last mask ends generation (the
    /// grammar could end there) rather than being one of the grammar's own tokens.
    pub fn ends_here(&self) -> bool {
        self.may_end
    }

    /// Moves past a sampled token (one the mask allowed).
    pub fn accept(&mut self, token: u32) -> Result<(), EngineError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| EngineError::Grammar(e.to_string()))
    }
}
