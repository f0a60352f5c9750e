//! Token sampling from logits, in llama.cpp's order: penalties, top-k, top-p, min-p,
//! temperature, then a draw from a seeded generator (same seed, same output).

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::EngineError;

/// Sampling settings. The defaults are llama.cpp's.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below): greedy, always the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token seen (OpenAI's presence penalty); 0 is off.
    pub presence_penalty: f32,
    /// Subtracted once per occurrence of a token (OpenAI's frequency penalty); 0 is off.
    pub frequency_penalty: f32,
    /// Seed of the generator; `None` picks one.
    pub seed: Option<u64>,
    /// Added to the logits of these tokens before anything else (OpenAI's `logit_bias`, each in
    /// [-100, 100]; -100 all but bans a token, 100 all but forces it).
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Whether anything changes the logits before the sampler looks at them.
    pub fn has_penalties(&self) -> bool {
        self.repeat_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
    }

    /// Rejects settings that cannot mean anything.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |name: &str, v: f32, range: &str| {
            Err(EngineError::InvalidParameter {
                name: name.to_string(),
                message: format!("{v} is outside {range}"),
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", self.temperature, "[0, inf)");
        }
        // 0 keeps only the most likely token, as in llama.cpp and OpenAI's API.
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", self.top_p, "[0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "[0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "(0, inf)");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", self.presence_penalty, "[-2, 2]");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", self.frequency_penalty, "[-2, 2]");
        }
        if let Some(&(_, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return bad("logit_bias", b, "[-100, 100]");
        }
        Ok(())
    }
}

/// A sampler with its own generator state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Reused between calls: (token, logit) candidates.
    candidates: Vec<(u32, f32)>,
}

/// A seed for runs that asked for none: distinct per run.
fn fresh_seed() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        h.finish()
    }
    #[cfg(target_arch = "wasm32")]
    {
        // No clock without JS bindings here; the web surface passes explicit seeds.
        0x5eed_5eed
    }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, EngineError> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(fresh_seed);
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            candidates: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (n_vocab); `history` is the sequence so far (prompt and
    /// generated tokens), which the penalties look at.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32, EngineError> {
        let p = &self.params;
        let mut logits_owned;
        let logits = if p.has_penalties() {
            logits_owned = logits.to_vec();
            apply_penalties(&mut logits_owned, history, p);
            &logits_owned[..]
        } else {
            logits
        };
        if p.is_greedy() {
            return argmax(logits).ok_or(EngineError::NoCandidates);
        }

        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l)),
        );
        if c.is_empty() {
            return Err(EngineError::NoCandidates);
        }
        // Highest first; equal logits keep the lower id first so runs are reproducible.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit);

        if p.top_p < 1.0 {
            let probs = softmax(c.iter().map(|x| x.1));
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let max = c[0].1;
            // p_i >= min_p * p_max  <=>  l_i >= l_max + ln(min_p)
            let threshold = max + p.min_p.ln();
            let keep = c.iter().take_while(|x| x.1 >= threshold).count();
            c.truncate(keep.max(1));
        }

        let probs = softmax(c.iter().map(|x| x.1 / p.temperature));
        // 53 random bits: a uniform f64 in [0, 1).
        let r = ((u64::from(self.rng.next_u32()) << 21) ^ u64::from(self.rng.next_u32() >> 11))
            as f64
            / (1u64 << 53) as f64;
        let mut cum = 0.0;
        for (i, pr) in probs.iter().enumerate() {
            cum += pr;
            if r < cum {
                return Ok(c[i].0);
            }
        }
        Ok(c[c.len() - 1].0)
    }
}

/// Index of the largest finite value, the lowest among equals.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_finite() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

fn softmax(logits: impl Iterator<Item = f32> + Clone) -> Vec<f64> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.map(|l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// llama.cpp's repetition penalty and OpenAI's presence/frequency penalties over the last
/// `repeat_last_n` tokens of `history`.
fn apply_penalties(logits: &mut [f32], history: &[u32], p: &SamplingParams) {
    for &(t, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    let window = &history[history.len().saturating_sub(p.repeat_last_n)..];
    let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    for &t in window {
        *counts.entry(t).or_default() += 1;
    }
    for (&t, &n) in &counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if *l > 0.0 {
            *l /= p.repeat_penalty;
        } else {
            *l *= p.repeat_penalty;
        }
        *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 3.0, -1.0, 0.5]
    }

    fn draws(params: SamplingParams, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params).unwrap();
        (0..n).map(|_| s.sample(&logits(), &[]).unwrap()).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(draws(SamplingParams::greedy(), 3), vec![1, 1, 1]);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let p = |seed| SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..Default::default()
        };
        let a = draws(p(7), 64);
        assert_eq!(a, draws(p(7), 64));
        assert_ne!(a, draws(p(8), 64));
        // Every token has some probability at this temperature: all should show up.
        for t in 0..6 {
            assert!(a.contains(&t), "token {t} never drawn: {a:?}");
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let p = SamplingParams {
            temperature: 5.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        };
        let d = draws(p, 200);
        assert!(d.iter().all(|&t| t == 1 || t == 3), "{d:?}");
        assert!(d.contains(&1) && d.contains(&3));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Probabilities of [3, 3, 2, 1, 0.5, -1] at T=1: 0.37, 0.37, 0.14, 0.05, 0.03, 0.007.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            min_p: 0.0,
            seed: Some(2),
            ..Default::default()
        };
        let d = draws(p, 300);
        assert!(d.iter().all(|&t| [1, 2, 3].contains(&t)), "{d:?}");
        // Nothing but the most likely token (the lower id of the two tied at the top).
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.0,
            min_p: 0.0,
            seed: Some(4),
            ..Default::default()
        };
        assert_eq!(draws(p, 50), vec![1; 50]);
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.3,
            seed: Some(3),
            ..Default::default()
        };
        let d = draws(p, 300);
        assert!(d.iter().all(|&t| t == 1 || t == 3 || t == 2), "{d:?}");
        assert!(!d.contains(&0));
    }

    #[test]
    fn repetition_penalty_steers_greedy_away_from_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        // 1 and 3 tie at 3.0; penalizing both leaves 2 (2.0) ahead of 1.5.
        assert_eq!(s.sample(&logits(), &[1, 3]).unwrap(), 2);
        assert_eq!(s.sample(&logits(), &[]).unwrap(), 1);
    }

    #[test]
    fn logit_bias_bans_and_favours_tokens() {
        let with = |bias: Vec<(u32, f32)>| SamplingParams {
            temperature: 0.0,
            logit_bias: bias,
            ..Default::default()
        };
        // 1 and 3 tie at the top: banning 1 leaves 3; lifting 4 (-1.0) by 5 puts it first.
        assert_eq!(draws(with(vec![(1, -100.0)]), 2), vec![3, 3]);
        assert_eq!(draws(with(vec![(4, 5.0)]), 2), vec![4, 4]);
        // An id past the logits changes nothing.
        assert_eq!(draws(with(vec![(99, 100.0)]), 1), vec![1]);
        assert!(Sampler::new(with(vec![(1, 101.0)])).is_err());
        let sampled = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(5),
            logit_bias: vec![(1, -100.0), (3, -100.0)],
            ..Default::default()
        };
        assert!(draws(sampled, 200).iter().all(|&t| t != 1 && t != 3));
    }

    #[test]
    fn invalid_settings_are_refused() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: -0.1,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(p).is_err());
        }
    }

    #[test]
    fn non_finite_logits_never_win() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[f32::NAN, 1.0, f32::INFINITY], &[]).unwrap(), 1);
        assert!(s.sample(&[f32::NAN], &[]).is_err());
    }
}
