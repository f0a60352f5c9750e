//! Embeddings: the final norm's output at each position of an input, pooled into one vector and
//! normalized, as llama.cpp's embedding mode does for a decoder model. One difference: where
//! the file names no pooling, llama.cpp returns a row per position (and its OpenAI endpoint
//! refuses); here such models are mean-pooled, so every endpoint gives one vector per input.

use super::EngineError;
use crate::format::Metadata;

/// How the positions of an input become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The average over every position.
    #[default]
    Mean,
    /// The first position's (the model's classification token).
    Cls,
    /// The last position's: the only one that has seen the whole input in a causal model.
    Last,
}

impl Pooling {
    /// llama.cpp's names, as its `--pooling` option takes them.
    pub fn parse(name: &str) -> Result<Pooling, EngineError> {
        match name {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "last" => Ok(Pooling::Last),
            other => Err(EngineError::InvalidParameter {
                name: "pooling".into(),
                message: format!("unknown pooling {other:?}; expected mean, cls or last"),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }

    /// The pooling an embedding model's file asks for (`{arch}.pooling_type`: 1 mean, 2 cls,
    /// 3 last). Generative models name none (0) or one this engine has no use for (4, rank):
    /// those get mean pooling.
    pub fn of_model(meta: &Metadata, arch: &str) -> Pooling {
        match meta.get_u64(&format!("{arch}.pooling_type")) {
            Some(2) => Pooling::Cls,
            Some(3) => Pooling::Last,
            _ => Pooling::Mean,
        }
    }
}

/// How an embedding is scaled, with llama.cpp's numbering (`--embd-normalize`): -1 none, 0 the
/// largest magnitude to 32760 (int16), 1 taxicab, 2 Euclidean (unit length, the default), and
/// p > 2 the p-norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalize(pub i32);

impl Default for Normalize {
    fn default() -> Self {
        Normalize::EUCLIDEAN
    }
}

impl Normalize {
    pub const NONE: Normalize = Normalize(-1);
    pub const EUCLIDEAN: Normalize = Normalize(2);

    pub fn new(p: i32) -> Result<Normalize, EngineError> {
        if p < -1 {
            return Err(EngineError::InvalidParameter {
                name: "embd_normalize".into(),
                message: format!(
                    "{p}: expected -1 (none), 0 (int16), 1 (taxicab), 2 (Euclidean) or a p-norm above 2"
                ),
            });
        }
        Ok(Normalize(p))
    }

    /// Scales `v` in place. A zero vector stays zero.
    pub fn apply(self, v: &mut [f32]) {
        let norm = match self.0 {
            i32::MIN..=-1 => return,
            0 => v.iter().fold(0.0f64, |m, x| m.max(f64::from(x.abs()))) / 32760.0,
            1 => v.iter().map(|x| f64::from(x.abs())).sum(),
            2 => v
                .iter()
                .map(|x| f64::from(*x) * f64::from(*x))
                .sum::<f64>()
                .sqrt(),
            p => v
                .iter()
                .map(|x| f64::from(x.abs()).powi(p))
                .sum::<f64>()
                .powf(1.0 / f64::from(p)),
        };
        if norm > 0.0 {
            let scale = 1.0 / norm;
            for x in v {
                *x = (f64::from(*x) * scale) as f32;
            }
        }
    }
}

/// Pools the rows of one input as the steps that run it hand them over, in order.
#[derive(Debug, Clone)]
pub struct Pooler {
    pooling: Pooling,
    n_embd: usize,
    /// A running sum (mean), or the row kept (cls, last).
    acc: Vec<f64>,
    rows: usize,
}

impl Pooler {
    pub fn new(pooling: Pooling, n_embd: usize) -> Pooler {
        Pooler {
            pooling,
            n_embd,
            acc: vec![0.0; n_embd],
            rows: 0,
        }
    }

    /// The next positions' rows, `n_embd` values each.
    pub fn add(&mut self, rows: &[f32]) {
        for row in rows.chunks_exact(self.n_embd) {
            let keep = match self.pooling {
                Pooling::Mean => {
                    for (a, &x) in self.acc.iter_mut().zip(row) {
                        *a += f64::from(x);
                    }
                    false
                }
                Pooling::Cls => self.rows == 0,
                Pooling::Last => true,
            };
            if keep {
                for (a, &x) in self.acc.iter_mut().zip(row) {
                    *a = f64::from(x);
                }
            }
            self.rows += 1;
        }
    }

    /// Positions pooled so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The pooled vector, scaled by `normalize`.
    pub fn finish(self, normalize: Normalize) -> Vec<f32> {
        let div = match self.pooling {
            Pooling::Mean => self.rows.max(1) as f64,
            Pooling::Cls | Pooling::Last => 1.0,
        };
        let mut v: Vec<f32> = self.acc.iter().map(|a| (a / div) as f32).collect();
        normalize.apply(&mut v);
        v
    }
}

/// The embedding of one input and the tokens it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub values: Vec<f32>,
    pub n_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled(pooling: Pooling, rows: &[[f32; 3]], split: usize) -> Vec<f32> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let mut p = Pooler::new(pooling, 3);
        // Rows arrive in steps; where a step ends must not matter.
        let (a, b) = flat.split_at(split * 3);
        p.add(a);
        p.add(b);
        assert_eq!(p.rows(), rows.len());
        p.finish(Normalize::NONE)
    }

    #[test]
    fn pooling_takes_the_mean_the_first_or_the_last_row() {
        let rows = [[1.0, 2.0, 3.0], [3.0, -2.0, 5.0], [2.0, 0.0, -8.0]];
        for split in 0..=3 {
            assert_eq!(pooled(Pooling::Mean, &rows, split), [2.0, 0.0, 0.0]);
            assert_eq!(pooled(Pooling::Cls, &rows, split), [1.0, 2.0, 3.0]);
            assert_eq!(pooled(Pooling::Last, &rows, split), [2.0, 0.0, -8.0]);
        }
    }

    #[test]
    fn normalizations_follow_llama_cpp() {
        let v = [3.0f32, -4.0];
        let scaled = |p: i32| {
            let mut x = v;
            Normalize::new(p).unwrap().apply(&mut x);
            x
        };
        assert_eq!(scaled(-1), [3.0, -4.0]);
        assert_eq!(scaled(0), [24570.0, -32760.0]);
        assert_eq!(scaled(1), [3.0 / 7.0, -4.0 / 7.0]);
        assert_eq!(scaled(2), [0.6, -0.8]);
        let n3 = (27.0f64 + 64.0).powf(1.0 / 3.0);
        assert_eq!(scaled(3), [(3.0 / n3) as f32, (-4.0 / n3) as f32]);
        let mut zero = [0.0f32; 4];
        Normalize::EUCLIDEAN.apply(&mut zero);
        assert_eq!(zero, [0.0; 4]);
        assert!(Normalize::new(-2).is_err());
    }

    #[test]
    fn pooling_names_parse() {
        for p in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
            assert_eq!(Pooling::parse(p.name()).unwrap(), p);
        }
        let err = Pooling::parse("rank").unwrap_err().to_string();
        assert!(
            err.contains("rank") && err.contains("mean, cls or last"),
            "{err}"
        );
    }
}
