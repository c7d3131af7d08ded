//! Union-find over `0..n`, with path halving; the smaller index becomes the root, so group ids
//! are the smallest member and do not depend on the order of the unions.

/// Disjoint sets of the indices `0..n`.
#[derive(Debug, Clone)]
pub struct DisjointSet(Vec<usize>);

impl DisjointSet {
    /// `n` singletons.
    pub fn new(n: usize) -> Self {
        Self((0..n).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The root (smallest member) of `i`'s set.
    pub fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    /// Joins the sets of `a` and `b`.
    pub fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }

    /// Joins consecutive members of `members` (all of them end in one set).
    pub fn union_all(&mut self, members: &[usize]) {
        for w in members.windows(2) {
            self.union(w[0], w[1]);
        }
    }

    /// The root of every index.
    pub fn roots(&mut self) -> Vec<usize> {
        (0..self.0.len()).map(|i| self.find(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_join_transitively_and_roots_are_smallest() {
        let mut s = DisjointSet::new(6);
        s.union(4, 2);
        s.union(2, 5);
        s.union_all(&[1, 3]);
        assert_eq!(s.roots(), vec![0, 1, 2, 1, 2, 2]);
        assert_eq!(s.len(), 6);
    }
}
