//! Drafting by prompt lookup: the tokens that followed the latest earlier occurrence of a
//! sequence's last few tokens are a guess at what comes next. Text that repeats its prompt
//! (summaries, edits of code, quotes) repeats whole runs of tokens, and one step checks a run
//! of guesses for little more than the cost of one token; no second model is needed.

/// Longest and shortest tail searched for, longest first: one shared token is too weak a hint.
const NGRAM_MAX: usize = 4;
const NGRAM_MIN: usize = 2;

/// Up to `max` tokens that followed the latest earlier occurrence of the longest tail of
/// `history` (from `NGRAM_MAX` down to `NGRAM_MIN` tokens) found again in it; empty when none is.
pub fn lookup(history: &[u32], max: usize) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let len = history.len();
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if len <= n {
            continue;
        }
        let tail = &history[len - n..];
        // Latest first: the most recent context is the likeliest to go on the same way.
        if let Some(at) = (0..len - n).rev().find(|&i| &history[i..i + n] == tail) {
            let from = at + n;
            return history[from..(from + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_longest_match_gives_what_followed_it() {
        // "1 2 3" appears twice before the tail; the later one (followed by 9) wins.
        let h = [1, 2, 3, 4, 5, 1, 2, 3, 9, 8, 7, 1, 2, 3];
        assert_eq!(lookup(&h, 2), vec![9, 8]);
        assert_eq!(lookup(&h, 10), vec![9, 8, 7, 1, 2, 3]);
        assert_eq!(lookup(&h, 0), Vec::<u32>::new());
        // A longer tail beats a later shorter one: "7 8" matches twice, "6 7 8" once.
        let h = [6, 7, 8, 1, 7, 8, 2, 6, 7, 8];
        assert_eq!(lookup(&h, 1), vec![1]);
        // One shared token is not enough, and the tail itself is no match.
        assert!(lookup(&[5, 1, 6, 1], 3).is_empty());
        assert!(lookup(&[1, 2], 3).is_empty());
        assert!(lookup(&[], 3).is_empty());
        // Overlapping repeats: "1 1" found one place back gives the tokens after it.
        assert_eq!(lookup(&[1, 1, 1], 4), vec![1]);
    }
}
