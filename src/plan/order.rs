//! Entities that reference each other (`references` on a field): every
//! reference names a configured entity, and entities run parents first.
//!
//! The references form a graph from child to parent. Its strongly
//! connected components are found with Tarjan's algorithm, which emits a
//! component only after every component it references: parents first.
//! A component of more than one entity (or an entity referencing itself)
//! is a cycle; its entities keep their config order here. Whether the
//! cycle can be written at all (one of its references must take NULL, to
//! be written first and filled in later) and in which order is the
//! catalog's to say, not the config's: the schema binding decides it with
//! [`order_within`].

use super::build::Collector;
use super::EntityPlan;

/// Checks that every `references` names a configured entity.
pub(super) fn check_references(c: &mut Collector, entities: &[EntityPlan]) {
    for e in entities {
        for f in &e.fields {
            let Some(r) = &f.references else { continue };
            if index_of(entities, r).is_none() {
                let names: Vec<&str> = entities.iter().map(|e| e.name.as_str()).collect();
                let hint = closest(r, &names)
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                c.push(
                    &format!("entity {:?}, field {:?}", e.name, f.crm),
                    format!(
                        "references = {r:?} names no entity{hint}; name one of the \
                         [[entity]] sections"
                    ),
                );
            }
        }
    }
}

/// An order of `n` entities (indexes `0..n`, in config order) in which
/// every `(child, parent)` of `needs` has the parent first, the earliest
/// in config order taken whenever several may go; or, when `needs` has a
/// cycle, the entities that cannot be placed.
pub fn order_within(n: usize, needs: &[(usize, usize)]) -> Result<Vec<usize>, Vec<usize>> {
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| {
            !placed[i]
                && needs
                    .iter()
                    .all(|&(child, parent)| child != i || placed[parent])
        });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => return Err((0..n).filter(|&i| !placed[i]).collect()),
        }
    }
    Ok(order)
}

/// The entities' indexes, parents before the children that reference
/// them; the members of a cycle stay in config order.
pub fn run_order(entities: &[EntityPlan]) -> Vec<usize> {
    components(entities).into_iter().flatten().collect()
}

/// The cycles among the references: each a list of entity indexes, in
/// config order.
pub fn cycles(entities: &[EntityPlan]) -> Vec<Vec<usize>> {
    components(entities)
        .into_iter()
        .filter(|c| c.len() > 1 || c.first().is_some_and(|&i| refs(entities, i).contains(&i)))
        .collect()
}

fn index_of(entities: &[EntityPlan], name: &str) -> Option<usize> {
    entities
        .iter()
        .position(|e| e.name.eq_ignore_ascii_case(name))
}

/// The entities that entity `i` references.
fn refs(entities: &[EntityPlan], i: usize) -> Vec<usize> {
    let mut out: Vec<usize> = entities[i]
        .fields
        .iter()
        .filter_map(|f| f.references.as_deref())
        .filter_map(|r| index_of(entities, r))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Tarjan's strongly connected components, parents first, each in config
/// order.
fn components(entities: &[EntityPlan]) -> Vec<Vec<usize>> {
    struct Walk<'a> {
        entities: &'a [EntityPlan],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    impl Walk<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for w in refs(self.entities, v) {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                comp.sort_unstable();
                self.out.push(comp);
            }
        }
    }
    let n = entities.len();
    let mut walk = Walk {
        entities,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if walk.index[v].is_none() {
            walk.visit(v);
        }
    }
    walk.out
}

/// The name among `names` closest to `wanted`, when one is close.
fn closest<'a>(wanted: &str, names: &[&'a str]) -> Option<&'a str> {
    let w = wanted.to_lowercase();
    names
        .iter()
        .map(|n| (strsim::levenshtein(&w, &n.to_lowercase()), *n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}
