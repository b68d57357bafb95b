//! A fixed-size set of operation indices: the "already linearized" part of a search state.

/// A set of indices below a fixed bound, one bit each, hashable so it can key the cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// Adds `index`. Indices are operation positions the checker itself allocated, so an
    /// index out of range is a bug in the checker, not in the input.
    pub(crate) fn insert(&mut self, index: usize) {
        self.words[index / 64] |= 1 << (index % 64);
    }

    pub(crate) fn remove(&mut self, index: usize) {
        self.words[index / 64] &= !(1 << (index % 64));
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, index: usize) -> bool {
        self.words[index / 64] & (1 << (index % 64)) != 0
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
    }
}
