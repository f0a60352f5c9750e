//! The paged KV cache's bookkeeping: a pool of fixed-size pages, a block table per sequence,
//! reference-counted pages shared between sequences with a common prefix, copy-on-write at the
//! first page a sequence changes, and a prefix cache that keeps finished sequences' full pages for
//! reuse until the pool needs them (least recently used first). The pages themselves live on the
//! GPU (`model::llama`); this module decides which page holds what.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::model::llama::PageCopy;

/// Identifies a sequence to the cache.
pub type SeqId = u64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("the KV cache is out of pages ({needed} more needed, {available} can be freed)")]
    OutOfPages { needed: usize, available: usize },
    #[error("sequence {0} is not in the KV cache")]
    UnknownSequence(SeqId),
    #[error("sequence {0} is already in the KV cache")]
    DuplicateSequence(SeqId),
    #[error("sequence {id} would grow to {len} positions; a sequence holds at most {max}")]
    TooLong { id: SeqId, len: usize, max: usize },
}

#[derive(Debug, Clone, Default)]
struct Sequence {
    /// Page of each block of positions, in order: the block table.
    pages: Vec<u32>,
    /// The tokens whose K/V the pages hold, in position order.
    tokens: Vec<u32>,
    /// Chain hash of each full page (hash of its tokens and of the previous page's hash).
    hashes: Vec<u64>,
}

/// Page counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    pub pages_total: usize,
    /// Pages some sequence holds.
    pub pages_used: usize,
    /// Pages held only by the prefix cache (reusable, evicted when needed).
    pub pages_cached: usize,
    pub pages_free: usize,
    /// Positions the used pages could hold, and those they hold.
    pub slots_used: usize,
    pub tokens_stored: usize,
}

impl KvStats {
    /// Allocated positions that hold nothing (the unfilled tails of sequences' last pages).
    pub fn wasted(&self) -> usize {
        self.slots_used.saturating_sub(self.tokens_stored)
    }
}

#[derive(Debug)]
pub struct KvCache {
    page_size: usize,
    max_pages_per_seq: usize,
    refcount: Vec<u32>,
    free: Vec<u32>,
    seqs: HashMap<SeqId, Sequence>,
    /// Full pages by chain hash, with the tokens they hold (checked on every hit, so a hash
    /// collision can never hand out the wrong K/V).
    cached: HashMap<u64, (u32, Box<[u32]>)>,
    /// The hash each cached page is registered under.
    page_hash: Vec<Option<u64>>,
    /// Cached pages nobody holds, oldest use first: the eviction order.
    lru: BTreeMap<u64, u32>,
    page_tick: Vec<u64>,
    tick: u64,
}

fn chain_hash(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl KvCache {
    /// A pool of `n_pages` pages of `page_size` positions; a sequence spans at most
    /// `max_pages_per_seq` pages.
    pub fn new(n_pages: u32, page_size: u32, max_pages_per_seq: u32) -> Self {
        KvCache {
            page_size: page_size.max(1) as usize,
            max_pages_per_seq: max_pages_per_seq as usize,
            refcount: vec![0; n_pages as usize],
            // Popped from the end: hand out low page numbers first.
            free: (0..n_pages).rev().collect(),
            seqs: HashMap::new(),
            cached: HashMap::new(),
            page_hash: vec![None; n_pages as usize],
            lru: BTreeMap::new(),
            page_tick: vec![0; n_pages as usize],
            tick: 0,
        }
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn stats(&self) -> KvStats {
        let used = self.refcount.iter().filter(|&&r| r > 0).count();
        KvStats {
            pages_total: self.refcount.len(),
            pages_used: used,
            pages_cached: self.lru.len(),
            pages_free: self.free.len(),
            slots_used: used * self.page_size,
            tokens_stored: self.distinct_tokens(),
        }
    }

    /// Positions held in used pages, counting a shared page once.
    fn distinct_tokens(&self) -> usize {
        let mut filled: HashMap<u32, usize> = HashMap::new();
        for s in self.seqs.values() {
            for (i, &p) in s.pages.iter().enumerate() {
                let n =
                    (s.tokens.len() - (i * self.page_size).min(s.tokens.len())).min(self.page_size);
                let e = filled.entry(p).or_default();
                *e = (*e).max(n);
            }
        }
        filled.values().sum()
    }

    /// Positions of `id` whose K/V are in the cache.
    pub fn len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.tokens.len())
    }

    /// The block table of `id`.
    pub fn pages(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| &s.pages[..])
    }

    /// Pages that can be had right now: free ones and cached ones nobody holds.
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    fn touch(&mut self, page: u32) {
        self.tick += 1;
        self.page_tick[page as usize] = self.tick;
    }

    fn hold(&mut self, page: u32) {
        let p = page as usize;
        if self.refcount[p] == 0 {
            self.lru.remove(&self.page_tick[p]);
        }
        self.refcount[p] += 1;
        self.touch(page);
    }

    fn drop_ref(&mut self, page: u32) {
        let p = page as usize;
        self.refcount[p] = self.refcount[p].saturating_sub(1);
        if self.refcount[p] == 0 {
            if self.page_hash[p].is_some() {
                self.touch(page);
                self.lru.insert(self.page_tick[p], page);
            } else {
                self.free.push(page);
            }
        }
    }

    /// A page for new K/V: a free one, else the least recently used cached one.
    fn allocate(&mut self) -> Option<u32> {
        let page = match self.free.pop() {
            Some(p) => p,
            None => {
                let (_, page) = self.lru.pop_first()?;
                if let Some(h) = self.page_hash[page as usize].take() {
                    self.cached.remove(&h);
                }
                page
            }
        };
        self.refcount[page as usize] = 1;
        self.touch(page);
        Some(page)
    }

    /// Starts sequence `id` whose first tokens will be `tokens`, sharing the pages of any cached
    /// prefix. Returns how many leading tokens are already in the cache; at least the last token
    /// is always left to compute (its logits are needed).
    pub fn add_sequence(&mut self, id: SeqId, tokens: &[u32]) -> Result<usize, KvError> {
        if self.seqs.contains_key(&id) {
            return Err(KvError::DuplicateSequence(id));
        }
        let mut seq = Sequence::default();
        let reusable = tokens.len().saturating_sub(1) / self.page_size;
        let mut prev = 0u64;
        for block in tokens.chunks_exact(self.page_size).take(reusable) {
            let h = chain_hash(prev, block);
            let Some((page, held)) = self.cached.get(&h) else {
                break;
            };
            if **held != *block {
                break;
            }
            let page = *page;
            self.hold(page);
            seq.pages.push(page);
            seq.tokens.extend_from_slice(block);
            seq.hashes.push(h);
            prev = h;
        }
        let n = seq.tokens.len();
        self.seqs.insert(id, seq);
        Ok(n)
    }

    /// Makes room for `id` to grow to `new_len` positions: new pages for new blocks, and a
    /// private copy of a shared page that the growth writes into (copy on write). Returns the
    /// copies the GPU must make before the step. On failure nothing changed.
    pub fn reserve(&mut self, id: SeqId, new_len: usize) -> Result<Vec<PageCopy>, KvError> {
        let seq = self.seqs.get(&id).ok_or(KvError::UnknownSequence(id))?;
        let len = seq.tokens.len();
        if new_len <= len {
            return Ok(Vec::new());
        }
        let max = self.max_pages_per_seq * self.page_size;
        if new_len > max {
            return Err(KvError::TooLong {
                id,
                len: new_len,
                max,
            });
        }
        let have = seq.pages.len();
        let need_pages = new_len.div_ceil(self.page_size);
        // The page holding position `len` gets written if it is partly filled.
        let first_written = len / self.page_size;
        let cow = first_written < have && self.refcount[seq.pages[first_written] as usize] > 1;
        let needed = need_pages.saturating_sub(have) + usize::from(cow);
        if needed > self.available() {
            return Err(KvError::OutOfPages {
                needed,
                available: self.available(),
            });
        }
        let mut copies = Vec::new();
        let mut new_pages = Vec::with_capacity(needed);
        for _ in 0..needed {
            // `available()` counted these: allocation cannot fail here.
            if let Some(p) = self.allocate() {
                new_pages.push(p);
            }
        }
        let mut new_pages = new_pages.into_iter();
        let seq_pages = {
            let seq = self.seqs.get(&id).ok_or(KvError::UnknownSequence(id))?;
            seq.pages.clone()
        };
        let mut pages = seq_pages;
        let mut released = None;
        if cow && let Some(dst) = new_pages.next() {
            let src = pages[first_written];
            copies.push(PageCopy { src, dst });
            pages[first_written] = dst;
            released = Some(src);
        }
        pages.extend(new_pages);
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.pages = pages;
        }
        if let Some(src) = released {
            self.drop_ref(src);
        }
        Ok(copies)
    }

    /// Records that `tokens` were written at the end of `id` (after a step), and offers its newly
    /// filled pages to the prefix cache.
    pub fn commit(&mut self, id: SeqId, tokens: &[u32]) -> Result<(), KvError> {
        let page_size = self.page_size;
        let seq = self.seqs.get_mut(&id).ok_or(KvError::UnknownSequence(id))?;
        seq.tokens.extend_from_slice(tokens);
        let full = seq.tokens.len() / page_size;
        let mut register = Vec::new();
        while seq.hashes.len() < full && seq.hashes.len() < seq.pages.len() {
            let i = seq.hashes.len();
            let prev = if i == 0 { 0 } else { seq.hashes[i - 1] };
            let block: Box<[u32]> = seq.tokens[i * page_size..(i + 1) * page_size].into();
            let h = chain_hash(prev, &block);
            seq.hashes.push(h);
            register.push((h, seq.pages[i], block));
        }
        for (h, page, block) in register {
            // A page already registered for this content keeps its place.
            if self.cached.contains_key(&h) || self.page_hash[page as usize].is_some() {
                continue;
            }
            self.page_hash[page as usize] = Some(h);
            self.cached.insert(h, (page, block));
        }
        Ok(())
    }

    /// Gives back the pages `id` holds past its last position (taken for drafted tokens that
    /// were not kept).
    pub fn trim(&mut self, id: SeqId) -> Result<(), KvError> {
        let page_size = self.page_size;
        let seq = self.seqs.get_mut(&id).ok_or(KvError::UnknownSequence(id))?;
        let keep = seq.tokens.len().div_ceil(page_size);
        if seq.pages.len() <= keep {
            return Ok(());
        }
        let dropped: Vec<u32> = seq.pages.drain(keep..).collect();
        for p in dropped {
            self.drop_ref(p);
        }
        Ok(())
    }

    /// Shrinks `id` back to `len` positions (dropping what a step wrote but the sequence did
    /// not keep). Pages past the new end are released.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<(), KvError> {
        let page_size = self.page_size;
        let seq = self.seqs.get_mut(&id).ok_or(KvError::UnknownSequence(id))?;
        if len >= seq.tokens.len() {
            return Ok(());
        }
        seq.tokens.truncate(len);
        seq.hashes.truncate(len / page_size);
        let keep = len.div_ceil(page_size);
        let dropped: Vec<u32> = seq.pages.drain(keep..).collect();
        for p in dropped {
            self.drop_ref(p);
        }
        Ok(())
    }

    /// A new sequence `new` sharing every page of `id` (both may then diverge: the first write
    /// into a shared page copies it).
    pub fn fork(&mut self, id: SeqId, new: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&new) {
            return Err(KvError::DuplicateSequence(new));
        }
        let seq = self
            .seqs
            .get(&id)
            .ok_or(KvError::UnknownSequence(id))?
            .clone();
        for &p in &seq.pages {
            self.hold(p);
        }
        self.seqs.insert(new, seq);
        Ok(())
    }

    /// Ends `id`: its pages go back to the pool, full ones stay in the prefix cache.
    pub fn release(&mut self, id: SeqId) -> Result<(), KvError> {
        let seq = self.seqs.remove(&id).ok_or(KvError::UnknownSequence(id))?;
        for p in seq.pages {
            self.drop_ref(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn pages_are_allocated_as_sequences_grow_and_freed_on_release() {
        let mut kv = KvCache::new(8, 4, 8);
        assert_eq!(kv.add_sequence(1, &toks(0..6)).unwrap(), 0);
        assert!(kv.reserve(1, 6).unwrap().is_empty());
        assert_eq!(kv.pages(1).unwrap().len(), 2);
        kv.commit(1, &toks(0..6)).unwrap();
        kv.reserve(1, 9).unwrap();
        kv.commit(1, &toks(6..9)).unwrap();
        assert_eq!(kv.pages(1).unwrap().len(), 3);
        let s = kv.stats();
        assert_eq!((s.pages_used, s.tokens_stored, s.wasted()), (3, 9, 3));
        kv.release(1).unwrap();
        // Two full pages stay cached for reuse, the partial one is free again.
        let s = kv.stats();
        assert_eq!((s.pages_used, s.pages_cached, s.pages_free), (0, 2, 6));
    }

    #[test]
    fn pages_reserved_past_the_end_go_back_on_trim() {
        let mut kv = KvCache::new(8, 4, 8);
        kv.add_sequence(1, &toks(0..5)).unwrap();
        kv.reserve(1, 5).unwrap();
        kv.commit(1, &toks(0..5)).unwrap();
        // Room for six drafted positions past the fifth: two more pages.
        kv.reserve(1, 12).unwrap();
        assert_eq!(kv.pages(1).unwrap().len(), 3);
        // One draft kept: six positions need the two pages held before the drafts.
        kv.commit(1, &[5]).unwrap();
        kv.trim(1).unwrap();
        assert_eq!(kv.pages(1).unwrap().len(), 2);
        assert_eq!(kv.stats().pages_free, 6);
        kv.trim(1).unwrap();
        assert_eq!(kv.pages(1).unwrap().len(), 2);
        assert!(kv.trim(9).is_err());
    }

    #[test]
    fn a_shared_prefix_reuses_pages_and_leaves_the_last_token_to_compute() {
        let mut kv = KvCache::new(16, 4, 16);
        let prompt = toks(100..110);
        kv.add_sequence(1, &prompt).unwrap();
        kv.reserve(1, 10).unwrap();
        kv.commit(1, &prompt).unwrap();
        let a = kv.pages(1).unwrap().to_vec();
        // Same 10 tokens: the two full pages (8 tokens) are shared.
        assert_eq!(kv.add_sequence(2, &prompt).unwrap(), 8);
        assert_eq!(&kv.pages(2).unwrap()[..2], &a[..2]);
        // Exactly 8 tokens: at most one page, so that the 8th token is computed.
        assert_eq!(kv.add_sequence(3, &prompt[..8]).unwrap(), 4);
        // A divergent second block shares only the first page.
        let mut other = prompt.clone();
        other[5] = 7;
        assert_eq!(kv.add_sequence(4, &other).unwrap(), 4);
        // Finished sequences leave their full pages cached: a later request still hits.
        for id in 1..=4 {
            kv.release(id).unwrap();
        }
        assert_eq!(kv.add_sequence(5, &prompt).unwrap(), 8);
    }

    #[test]
    fn writing_into_a_shared_page_copies_it_first() {
        let mut kv = KvCache::new(8, 4, 8);
        kv.add_sequence(1, &toks(0..6)).unwrap();
        kv.reserve(1, 6).unwrap();
        kv.commit(1, &toks(0..6)).unwrap();
        kv.fork(1, 2).unwrap();
        let shared = kv.pages(1).unwrap().to_vec();
        assert_eq!(kv.pages(2).unwrap(), &shared[..]);
        // Sequence 2 appends into the half-full second page: it gets a copy of that page.
        let copies = kv.reserve(2, 7).unwrap();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].src, shared[1]);
        let mine = kv.pages(2).unwrap().to_vec();
        assert_eq!(mine[0], shared[0]);
        assert_eq!(mine[1], copies[0].dst);
        assert_ne!(mine[1], shared[1]);
        // Sequence 1 still owns the original, now unshared: no copy for it.
        assert_eq!(kv.pages(1).unwrap(), &shared[..]);
        assert!(kv.reserve(1, 7).unwrap().is_empty());
    }

    #[test]
    fn cached_pages_are_evicted_least_recently_used_first_and_exhaustion_is_an_error() {
        let mut kv = KvCache::new(4, 2, 8);
        for (id, start) in [(1u64, 0u32), (2, 10)] {
            let t = toks(start..start + 4);
            kv.add_sequence(id, &t).unwrap();
            kv.reserve(id, 4).unwrap();
            kv.commit(id, &t).unwrap();
            kv.release(id).unwrap();
        }
        assert_eq!(kv.stats().pages_cached, 4);
        // Three new pages: sequence 1's two (older) and one of sequence 2's are evicted.
        kv.add_sequence(3, &toks(50..56)).unwrap();
        kv.reserve(3, 6).unwrap();
        assert_eq!(kv.stats().pages_cached, 1);
        // Sequence 1's prefix is gone, sequence 2's second page survived but its first did not.
        assert_eq!(kv.add_sequence(4, &toks(0..5)).unwrap(), 0);
        assert_eq!(kv.add_sequence(5, &toks(10..15)).unwrap(), 0);
        // One cached page left; a sequence needing two more fails and changes nothing.
        let before = kv.stats();
        assert_eq!(
            kv.reserve(3, 9),
            Err(KvError::OutOfPages {
                needed: 2,
                available: 1
            })
        );
        assert_eq!(kv.stats(), before);
        assert!(matches!(kv.reserve(3, 17), Err(KvError::TooLong { .. })));
    }

    #[test]
    fn truncate_releases_pages_past_the_end() {
        let mut kv = KvCache::new(8, 4, 8);
        kv.add_sequence(1, &toks(0..10)).unwrap();
        kv.reserve(1, 10).unwrap();
        kv.commit(1, &toks(0..10)).unwrap();
        kv.truncate(1, 5).unwrap();
        assert_eq!(
            (kv.len(1), kv.pages(1).map(<[u32]>::len)),
            (Some(5), Some(2))
        );
        assert_eq!(kv.stats().pages_free, 6);
    }
}
