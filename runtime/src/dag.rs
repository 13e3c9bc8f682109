//! Graph algorithms shared by the graph parser and the scheduler.

/// A cycle among nodes `0..n`, if there is one: the nodes on it, the first
/// repeated at the end (`[a, b, a]`). `dep(i, k)` is the `k`-th dependency of
/// node `i`: `None` past the last one, `Some(None)` for one outside `0..n`
/// (it cannot be on a cycle), `Some(Some(d))` for node `d`. Iterative
/// three-colour depth-first search: O(nodes + edges), no recursion, no
/// allocation per node.
pub fn find_cycle(n: usize, dep: impl Fn(usize, usize) -> Option<Option<usize>>) -> Option<Vec<usize>> {
    const NEW: u8 = 0;
    const ON_STACK: u8 = 1;
    const DONE: u8 = 2;
    let mut colour = vec![NEW; n];
    // (node, the position of the next dependency to visit)
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if colour[root] != NEW {
            continue;
        }
        colour[root] = ON_STACK;
        stack.push((root, 0));
        while let Some((node, next)) = stack.last_mut() {
            let Some(d) = dep(*node, *next) else {
                colour[*node] = DONE;
                stack.pop();
                continue;
            };
            *next += 1;
            let Some(d) = d else { continue };
            match colour[d] {
                NEW => {
                    colour[d] = ON_STACK;
                    stack.push((d, 0));
                }
                ON_STACK => {
                    let start = stack.iter().position(|&(x, _)| x == d).expect("a node on the stack");
                    let mut cycle: Vec<usize> = stack[start..].iter().map(|&(x, _)| x).collect();
                    cycle.push(d);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle_of(edges: &[&[usize]]) -> Option<Vec<usize>> {
        find_cycle(edges.len(), |i, k| edges[i].get(k).map(|&d| Some(d)))
    }

    #[test]
    fn cycles_are_found_and_named_in_order() {
        assert_eq!(cycle_of(&[&[1], &[2], &[]]), None);
        assert_eq!(cycle_of(&[&[1], &[0]]), Some(vec![0, 1, 0]));
        assert_eq!(cycle_of(&[&[0]]), Some(vec![0, 0]), "a node depending on itself");
        assert_eq!(cycle_of(&[&[1, 2], &[3], &[3], &[]]), None, "a diamond is not a cycle");
        assert_eq!(cycle_of(&[&[], &[2], &[3], &[1]]), Some(vec![1, 2, 3, 1]));
        // Deep chains need no recursion.
        let n = 200_000;
        assert_eq!(find_cycle(n, |i, k| (k == 0 && i + 1 < n).then_some(Some(i + 1))), None);
        // Dependencies outside the nodes are skipped.
        assert_eq!(find_cycle(2, |i, k| [[None, Some(1)], [Some(0), None]][i].get(k).copied()), Some(vec![0, 1, 0]));
    }
}
