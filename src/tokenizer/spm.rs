//! BPE merges for a SentencePiece vocabulary, and checking a byte-level BPE merge list.
//!
//! A SentencePiece BPE model stores no merges, only a score per piece: at each step the adjacent
//! pair whose concatenation is the best-scoring piece merges. Listing every way to cut every piece
//! into two pieces, ranked by the piece's score, turns that into an ordinary BPE merge table. This
//! is the conversion Hugging Face uses for Llama-family tokenizers, so ties break the same way:
//! by score, then by vocabulary order, then by the ids of the two halves.

use std::collections::{HashMap, HashSet};

use super::TokenizerError;

/// Merges from piece scores, best first.
pub(crate) fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
    ids: &HashMap<&str, u32>,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
    let mut local = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        local.clear();
        for (cut, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(cut);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                local.push((score, l, r, left, right));
            }
        }
        local.sort_by_key(|&(_, l, r, _, _)| (l, r));
        ranked.extend_from_slice(&local);
    }
    // Stable, so equal scores keep vocabulary order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

/// Parses `tokenizer.ggml.merges` ("left right" strings) and checks each against the vocabulary.
///
/// The split is at the first space after the first character, as llama.cpp splits, so a left
/// half that is itself a space survives. A repeated pair keeps its first (best) rank.
pub(crate) fn parse_merges(
    merges: &[String],
    ids: &HashMap<&str, u32>,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut seen = HashSet::with_capacity(merges.len());
    let mut out = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        let bad = |reason: &'static str| TokenizerError::BadMerge {
            index,
            merge: merge.clone(),
            reason,
        };
        let cut = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(i, _)| i)
            .ok_or_else(|| bad("it is not two tokens separated by a space"))?;
        let (left, right) = (&merge[..cut], &merge[cut + 1..]);
        if !ids.contains_key(left) || !ids.contains_key(right) {
            return Err(bad("a half is not in the vocabulary"));
        }
        if !ids.contains_key(format!("{left}{right}").as_str()) {
            return Err(bad("the merged token is not in the vocabulary"));
        }
        if seen.insert((left, right)) {
            out.push((left.to_string(), right.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tokens: &[String]) -> HashMap<&str, u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect()
    }

    #[test]
    fn merges_follow_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let merges = merges_from_scores(&tokens, &scores, &ids(&tokens));
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        // "bc" scores best; "abc" splits two ways, ordered by the ids of the halves.
        assert_eq!(
            pairs,
            vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]
        );
    }

    #[test]
    fn merge_parsing() {
        let tokens: Vec<String> = ["a", "b", "ab", "Ġ", "Ġa"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ids = ids(&tokens);
        let ok = ["a b", "Ġ a", "a b"].map(String::from);
        assert_eq!(
            parse_merges(&ok, &ids).unwrap(),
            vec![("a".into(), "b".into()), ("Ġ".into(), "a".into())]
        );
        for bad in ["ab", "a c", "b a"] {
            let err = parse_merges(&[bad.to_string()], &ids).unwrap_err();
            assert!(
                matches!(err, TokenizerError::BadMerge { index: 0, .. }),
                "{err}"
            );
        }
    }
}
