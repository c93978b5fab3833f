//! The two sides crmsync keeps in step, and a pair of values, one per
//! side. Bottom layer: everything above may name a side.

use std::fmt;
use std::ops::{Index, IndexMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Crm,
    External,
}

impl Side {
    /// Both sides, CRM first.
    pub const BOTH: [Side; 2] = [Side::Crm, Side::External];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Crm => "crm",
            Side::External => "external",
        }
    }

    /// The side across from this one.
    pub fn other(self) -> Side {
        match self {
            Side::Crm => Side::External,
            Side::External => Side::Crm,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value for each side: what the engine holds twice (an endpoint, a
/// table, a write batch) is held here once, and code that takes a `Side`
/// picks its own with `pair[side]` and the other's with
/// `pair[side.other()]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerSide<T> {
    pub crm: T,
    pub external: T,
}

impl<T> PerSide<T> {
    pub fn new(crm: T, external: T) -> Self {
        PerSide { crm, external }
    }

    /// The pair whose `side` value is `mine` and whose other is `theirs`.
    pub fn from_side(side: Side, mine: T, theirs: T) -> Self {
        match side {
            Side::Crm => PerSide::new(mine, theirs),
            Side::External => PerSide::new(theirs, mine),
        }
    }

    pub fn get(&self, side: Side) -> &T {
        match side {
            Side::Crm => &self.crm,
            Side::External => &self.external,
        }
    }

    pub fn get_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Crm => &mut self.crm,
            Side::External => &mut self.external,
        }
    }

    /// This side's value and the other side's.
    pub fn mine_theirs(&self, side: Side) -> (&T, &T) {
        (self.get(side), self.get(side.other()))
    }

    pub fn as_ref(&self) -> PerSide<&T> {
        PerSide::new(&self.crm, &self.external)
    }

    pub fn map<U>(self, mut f: impl FnMut(Side, T) -> U) -> PerSide<U> {
        PerSide::new(f(Side::Crm, self.crm), f(Side::External, self.external))
    }
}

impl<T> Index<Side> for PerSide<T> {
    type Output = T;

    fn index(&self, side: Side) -> &T {
        self.get(side)
    }
}

impl<T> IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        self.get_mut(side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_indexed_by_side() {
        let mut p = PerSide::new(1, 2);
        assert_eq!((p[Side::Crm], p[Side::External]), (1, 2));
        p[Side::External] += 10;
        assert_eq!(p.mine_theirs(Side::External), (&12, &1));
        assert_eq!(
            PerSide::from_side(Side::External, "x", "c"),
            PerSide::new("c", "x")
        );
        assert_eq!(
            PerSide::from_side(Side::Crm, "c", "x"),
            PerSide::new("c", "x")
        );
        let sides = p.map(|s, v| (s, v));
        assert_eq!(sides.crm, (Side::Crm, 1));
        assert_eq!(Side::BOTH.map(Side::other), [Side::External, Side::Crm]);
    }
}
