//! Dependencies that pass no data, dropped before a task is fetched for or run.

use crate::graph::Expr;
use crate::protocol::ComputeTask;

/// Drop the dependencies a task's expression does not reference (listed in
/// the graph's `"deps"`: they only order the task, and the scheduler sends it
/// only once they finished), renumbering the references to the rest. Their
/// values are then neither fetched nor read back from disk for it.
pub(crate) fn drop_dataless_deps(ct: &mut ComputeTask, expr: &mut Expr) {
    // A Python call gets every dependency (its pickle refers to them by
    // position, out of the runtime's sight).
    if matches!(expr, Expr::Py(_)) {
        return;
    }
    let mut used = vec![false; ct.deps.len()];
    expr.for_each_ref(&mut |i| {
        if let Some(u) = used.get_mut(*i as usize) {
            *u = true;
        }
    });
    if used.iter().all(|&u| u) {
        return;
    }
    let mut renumber = vec![u32::MAX; used.len()];
    for (next, (i, _)) in used.iter().enumerate().filter(|(_, u)| **u).enumerate() {
        renumber[i] = next as u32;
    }
    expr.for_each_ref(&mut |i| {
        if let Some(&n) = renumber.get(*i as usize) {
            *i = n;
        }
    });
    let mut keep = used.iter().copied();
    ct.deps.retain(|_| keep.next().unwrap_or(true));
    if ct.dep_nbytes.len() == used.len() {
        let mut keep = used.iter().copied();
        ct.dep_nbytes.retain(|_| keep.next().unwrap_or(true));
    }
}
