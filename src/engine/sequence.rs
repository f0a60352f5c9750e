//! One sequence's generation state: sampling, the text released so far, stop conditions. The
//! single-session path and the batching scheduler both drive sequences through this.

use super::grammar::{GrammarState, Grammars};
use super::sampler::Sampler;
use super::{EngineError, GenerateParams, StopReason};
use crate::Result;
use crate::model::llama::Forward;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Most alternatives a request may ask logprobs for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What the model produced for a sequence's last position.
#[derive(Debug, Clone, Copy)]
pub enum Logits<'a> {
    /// The most likely token, chosen on the GPU (greedy decoding needs nothing else).
    Argmax(u32),
    /// The whole row of logits.
    Row(&'a [f32]),
}

impl<'a> Logits<'a> {
    /// Output row `row` of a step whose rows hold `vocab` logits each, if the step has it.
    pub fn of_row(forward: &'a Forward, row: usize, vocab: usize) -> Option<Self> {
        match forward {
            Forward::Token(t) if row == 0 => Some(Logits::Argmax(*t)),
            Forward::Tokens(ids) => ids.get(row).map(|&t| Logits::Argmax(t)),
            Forward::Logits(l) => l.get(row * vocab..(row + 1) * vocab).map(Logits::Row),
            _ => None,
        }
    }
}

/// A generated token's log-probability and the most likely alternatives at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub text: String,
    /// The token's bytes: a token holding part of a character shows U+FFFD in `text`.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at the step, most likely first.
    pub top: Vec<TopToken>,
}

/// One of the most likely tokens at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct TopToken {
    pub id: u32,
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl TopToken {
    fn new(tokenizer: &Tokenizer, id: u32, logprob: f32) -> TopToken {
        // The token's own bytes, a SentencePiece word's leading space included: generated text
        // keeps that space (decoding the token alone would take it off as a text's first).
        let bytes = tokenizer
            .token_bytes(id)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        TopToken {
            id,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            logprob,
        }
    }
}

/// The outcome of one step for one sequence.
#[derive(Debug, Clone, Default)]
pub struct Advance {
    /// The sampled token, unless the step ended generation without one.
    pub token: Option<u32>,
    /// Text now final (may be empty: held back as a possible stop-string prefix).
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    /// Set when generation is over; the sampled token (if any) is not to be run.
    pub finished: Option<StopReason>,
}

#[derive(Debug)]
pub struct SequenceState {
    params: GenerateParams,
    /// Top alternatives to report per token (0: logprobs off).
    logprobs: Option<usize>,
    sampler: Sampler,
    /// Where generation stands in the request's grammar, if it has one.
    grammar: Option<GrammarState>,
    /// Reused between steps: the logits with the grammar's mask applied.
    masked: Vec<f32>,
    /// How many tokens to draft next, between 1 and `params.draft`: twice as many after drafts
    /// taken whole, one more than were taken after the others. Runs copied from the prompt end
    /// where a guess fails, and text that copies nothing wastes one drafted token a step.
    draft_len: usize,
    /// Prompt and generated tokens: what the penalties see.
    history: Vec<u32>,
    n_prompt: usize,
    decoder: StreamDecoder,
    text: String,
    sent: usize,
}

impl SequenceState {
    /// Checks the request and compiles its grammar (if any) against the model's vocabulary.
    pub fn new(
        prompt: &[u32],
        params: GenerateParams,
        logprobs: Option<usize>,
        grammars: &Grammars,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if let Some(empty) = params.stop.iter().find(|s| s.is_empty()) {
            return Err(EngineError::InvalidParameter {
                name: "stop".into(),
                message: format!("{empty:?}: stop strings must not be empty"),
            }
            .into());
        }
        if logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(EngineError::InvalidParameter {
                name: "top_logprobs".into(),
                message: format!("at most {MAX_TOP_LOGPROBS}"),
            }
            .into());
        }
        let n_vocab = grammars.n_vocab();
        if let Some((id, _)) = params
            .sampling
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= n_vocab)
        {
            return Err(EngineError::InvalidParameter {
                name: "logit_bias".into(),
                message: format!("token id {id} is outside the vocabulary of {n_vocab} tokens"),
            }
            .into());
        }
        let sampler = Sampler::new(params.sampling.clone())?;
        let grammar = match &params.constraint {
            Some(c) => Some(grammars.parser(c)?),
            None => None,
        };
        Ok(SequenceState {
            sampler,
            grammar,
            masked: Vec::new(),
            draft_len: params.draft,
            params,
            logprobs,
            history: prompt.to_vec(),
            n_prompt: prompt.len(),
            // Generated text continues the prompt: a SentencePiece leading space is real here.
            decoder: StreamDecoder::after_prompt(),
            text: String::new(),
            sent: 0,
        })
    }

    /// Whether the GPU's argmax is all this sequence needs (greedy, no penalties, no logprobs,
    /// no grammar).
    pub fn argmax_suffices(&self) -> bool {
        let s = &self.params.sampling;
        s.is_greedy() && !s.has_penalties() && self.logprobs.is_none() && self.grammar.is_none()
    }

    /// Tokens to run after the last sampled one in the same step, as guesses at what the model
    /// will sample next (prompt lookup); at most `room` of them, and no more than generation
    /// may still use.
    pub fn draft(&self, room: usize) -> Vec<u32> {
        super::draft::lookup(&self.history, self.draft_budget(room))
    }

    /// How many tokens to draft now: the length that recent drafts earned, at most `room`,
    /// and no more than generation may still use.
    pub fn draft_budget(&self, room: usize) -> usize {
        let left = self.params.max_tokens.map_or(usize::MAX, |m| {
            (m as usize).saturating_sub(self.generated().len() + 1)
        });
        self.draft_len.min(room).min(left)
    }

    /// Tells the sequence how its last drafts fared: `accepted` of `drafted` were sampled.
    pub fn drafts_checked(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.draft_len = if accepted >= drafted {
            (drafted * 2).min(self.params.draft)
        } else {
            (accepted + 1).min(self.params.draft)
        };
    }

    /// Generated tokens so far.
    pub fn generated(&self) -> &[u32] {
        &self.history[self.n_prompt..]
    }

    pub fn n_prompt(&self) -> usize {
        self.n_prompt
    }

    /// All text generated so far (including any still held back).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Takes the model's output for the last position, samples, and reports what changed.
    /// `room` is false when the sequence cannot grow by another position.
    pub fn advance(
        &mut self,
        tokenizer: &Tokenizer,
        logits: Logits<'_>,
        room: bool,
    ) -> Result<Advance> {
        // A limit of 0 runs the prompt (into the cache) and samples nothing, as in llama.cpp.
        if self.params.max_tokens == Some(0) {
            return Ok(Advance {
                finished: Some(StopReason::MaxTokens),
                ..Default::default()
            });
        }
        let token = match (logits, &mut self.grammar) {
            (Logits::Argmax(t), None) => t,
            (Logits::Row(row), None) => self.sampler.sample(row, &self.history)?,
            (Logits::Argmax(_), Some(_)) => {
                return Err(EngineError::Grammar(
                    "the step gave one token id where the grammar needs every logit".into(),
                )
                .into());
            }
            (Logits::Row(row), Some(grammar)) => {
                grammar.mask(row, &mut self.masked, self.params.ignore_eos)?;
                self.sampler
                    .sample(&self.masked, &self.history)
                    .map_err(|e| match e {
                        EngineError::NoCandidates => EngineError::Grammar(
                            "no token of the vocabulary continues the grammar here".into(),
                        ),
                        other => other,
                    })?
            }
        };
        let logprob = match (logits, self.logprobs) {
            (Logits::Row(row), Some(n)) => Some(token_logprob(tokenizer, row, token, n)),
            _ => None,
        };
        let mut out = Advance {
            logprob,
            ..Default::default()
        };
        // Under a grammar an end-of-generation token ends generation where the grammar may end
        // (the mask allowed it there only if nothing else may follow, with `ignore_eos`);
        // elsewhere the grammar spelled it out, and it is one of its tokens.
        let ends = match &self.grammar {
            Some(g) => g.ends_here(),
            None => !self.params.ignore_eos,
        };
        if ends && tokenizer.is_end_of_generation(token) {
            self.text.push_str(&self.decoder.finish());
            out.text = self.text[self.sent..].to_string();
            self.sent = self.text.len();
            out.finished = Some(StopReason::EndOfGeneration);
            return Ok(out);
        }
        self.history.push(token);
        out.token = Some(token);
        self.text.push_str(&self.decoder.push(tokenizer, token)?);
        if let Some(grammar) = &mut self.grammar {
            grammar.accept(token)?;
        }

        if let Some((at, s)) = find_stop(&self.text, self.sent, &self.params.stop) {
            self.text.truncate(at);
            out.text = self.text[self.sent.min(at)..].to_string();
            self.sent = self.text.len();
            out.finished = Some(StopReason::StopString(s.to_string()));
            return Ok(out);
        }
        let n_generated = self.history.len() - self.n_prompt;
        let finished = if self.grammar.as_ref().is_some_and(GrammarState::is_complete) {
            // Nothing may follow: the text is whole, as if the model had ended it.
            Some(StopReason::EndOfGeneration)
        } else if self
            .params
            .max_tokens
            .is_some_and(|m| n_generated >= m as usize)
        {
            Some(StopReason::MaxTokens)
        } else if !room {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        // Text held back as a possible stop-string prefix is real output once generation ends.
        let safe = if finished.is_some() {
            self.text.push_str(&self.decoder.finish());
            self.text.len()
        } else {
            self.text.len() - partial_stop_suffix(&self.text[self.sent..], &self.params.stop)
        };
        if safe > self.sent {
            out.text = self.text[self.sent..safe].to_string();
            self.sent = safe;
        }
        out.finished = finished;
        Ok(out)
    }
}

fn token_logprob(tokenizer: &Tokenizer, row: &[f32], token: u32, n: usize) -> TokenLogprob {
    let lp = crate::reference::log_softmax(row);
    let mut top: Vec<u32> = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let by_logit =
            |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        let k = n.min(idx.len());
        idx.select_nth_unstable_by(k - 1, by_logit);
        idx.truncate(k);
        idx.sort_unstable_by(by_logit);
        top = idx;
    }
    let chosen = TopToken::new(
        tokenizer,
        token,
        lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
    );
    TokenLogprob {
        id: token,
        text: chosen.text,
        bytes: chosen.bytes,
        logprob: chosen.logprob,
        top: top
            .into_iter()
            .map(|id| TopToken::new(tokenizer, id, lp[id as usize]))
            .collect(),
    }
}

/// The first stop string in `text` that ends after `from` (where unsent text begins): its start,
/// and the string. Stop strings that straddle `from` count.
pub(crate) fn find_stop<'a>(
    text: &str,
    from: usize,
    stops: &'a [String],
) -> Option<(usize, &'a str)> {
    stops
        .iter()
        .filter_map(|s| {
            let search_from = floor_char_boundary(text, from.saturating_sub(s.len()));
            text[search_from..]
                .find(s.as_str())
                .map(|i| (search_from + i, s.as_str()))
        })
        .min_by_key(|(at, _)| *at)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string: text that
/// must wait for the next token before it can be shown.
pub(crate) fn partial_stop_suffix(text: &str, stops: &[String]) -> usize {
    let mut longest = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > longest && text.ends_with(&s[..i]) {
                longest = i;
            }
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_pieces() {
        let stops = vec!["\n\n".to_string(), "User:".to_string()];
        assert_eq!(find_stop("abc\n\nd", 4, &stops), Some((3, "\n\n")));
        assert_eq!(find_stop("hello User: x", 0, &stops), Some((6, "User:")));
        assert_eq!(find_stop("hello", 0, &stops), None);
        assert_eq!(partial_stop_suffix("hello Us", &stops), 2);
        assert_eq!(partial_stop_suffix("hello\n", &stops), 1);
        assert_eq!(partial_stop_suffix("hello", &stops), 0);
        // Multi-byte characters: suffixes are cut at character boundaries.
        let stops = vec!["é!".to_string()];
        assert_eq!(partial_stop_suffix("caf\u{e9}", &stops), 2);
        assert_eq!(find_stop("caf\u{e9}!", 4, &stops), Some((3, "é!")));
    }
}
