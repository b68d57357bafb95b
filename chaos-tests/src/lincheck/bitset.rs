//! A fixed-size set of operation indices: the "already linearized" part of a search state,
//! and a row of the precedence relation.

/// A set of indices below a fixed bound, one bit each, hashable so it can key the cache.
///
/// Indices are operation positions the checker itself allocated, so an index out of range
/// is a bug in the checker, not in the input; the methods index without checking.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    pub(crate) fn new(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)] }
    }

    pub(crate) fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    pub(crate) fn remove(&mut self, index: usize) {
        self.words[index / 64] &= !(1 << (index % 64));
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
    }

    /// Adds every member of `other`, which must have the same bound.
    pub(crate) fn union_with(&mut self, other: &Bitset) {
        for (word, theirs) in self.words.iter_mut().zip(&other.words) {
            *word |= theirs;
        }
    }

    /// Whether some index is in all three sets.
    pub(crate) fn meets(&self, b: &Bitset, c: &Bitset) -> Option<usize> {
        self.words.iter().zip(&b.words).zip(&c.words).enumerate().find_map(|(i, ((a, b), c))| {
            let both = a & b & c;
            (both != 0).then(|| i * 64 + both.trailing_zeros() as usize)
        })
    }

    /// The members, in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(i, &word)| (0..64).filter(move |bit| word & (1 << bit) != 0).map(move |bit| i * 64 + bit))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_across_words() {
        let mut set = Bitset::new(130);
        for i in [0, 63, 64, 129] {
            set.insert(i);
        }
        assert_eq!(set.len(), 4);
        assert!(set.contains(64) && !set.contains(65));
        set.remove(64);
        assert!(!set.contains(64));
        assert_eq!(set.len(), 3);
        let mut other = Bitset::new(130);
        for i in [0, 63, 129] {
            other.insert(i);
        }
        assert_eq!(set, other);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 63, 129]);
        let mut third = Bitset::new(130);
        third.insert(129);
        assert_eq!(set.meets(&other, &third), Some(129));
        third.remove(129);
        assert_eq!(set.meets(&other, &third), None);
        third.insert(5);
        set.union_with(&third);
        assert!(set.contains(5));
    }
}
