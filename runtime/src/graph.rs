//! Task graphs: the JSON format, validation and ordering. No IO here.
//!
//! Compact form (Dask's "graphs are dicts", in JSON):
//! `{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}`
//!
//! * an array whose first element is a string that is not a key of the graph
//!   is a call of the function of that name (an unknown name is an error);
//! * a string equal to a key of the graph is a reference to that key's value;
//! * arrays nest; any other array is a list whose elements follow these rules;
//! * everything else (numbers, other strings, booleans, null, objects nested
//!   inside a task) is a literal.
//!
//! Long form: a top-level object with exactly one of `task`, `cmd` or `value`,
//! plus optional fields (`deps`, `priority`, `retries`, `resources`,
//! `workers`, `timeout`; for `cmd`: `cwd`, `env`, `stdin`).
//! See docs/graph-format.md.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use crate::keys::KeyIndex;
use std::fmt;

/// A task's computation, shipped opaque to the scheduler and evaluated on a
/// worker. References point into the task's dependency list by position, so
/// a spec does not depend on how the scheduler numbers tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// A literal as JSON text (parsed on the worker).
    Lit(String),
    /// The value of dependency number `i`.
    Ref(u32),
    /// A call of a registered function.
    Call(String, Vec<Expr>),
    /// A list whose elements are evaluated.
    List(Vec<Expr>),
    /// A command (subprocess).
    Cmd(Box<CmdSpec>),
    /// A Python call, run by the worker's Python executor processes (see
    /// `worker/python.rs`). Only ever a task's whole expression.
    Py(Box<PyCall>),
    /// A pickled Python object (data scattered by a Python client): the
    /// task's value as it is, no Python needed to make it.
    Pickled(Vec<u8>),
}

/// A Python call as a Python client ships it: opaque pickles the runtime
/// never looks into. The task's dependencies are the pickle's persistent
/// ids `0, 1, ...` in `args` (positions in the task's `deps`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PyCall {
    /// Content hash of `func` (executors cache functions by it).
    pub func_hash: Vec<u8>,
    /// The callable, pickled with cloudpickle.
    pub func: Vec<u8>,
    /// `(args, kwargs)`, pickled, with dependencies as persistent ids.
    pub args: Vec<u8>,
    /// The interpreter the client runs (`sys.executable`): used by a worker
    /// that was given none, when that path exists there.
    pub python: String,
}

impl Expr {
    /// Call `f` on every dependency reference, in place (to read or renumber).
    pub fn for_each_ref(&mut self, f: &mut impl FnMut(&mut u32)) {
        match self {
            Expr::Lit(_) | Expr::Pickled(_) => {}
            Expr::Py(_) => {}
            Expr::Ref(i) => f(i),
            Expr::Call(_, args) | Expr::List(args) => args.iter_mut().for_each(|a| a.for_each_ref(f)),
            Expr::Cmd(c) => {
                let CmdSpec { argv, cwd: _, env, stdin } = &mut **c;
                argv.iter_mut().chain(env.iter_mut().map(|(_, e)| e)).chain(stdin.iter_mut()).for_each(|a| a.for_each_ref(f));
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmdSpec {
    pub argv: Vec<Expr>,
    pub cwd: Option<String>,
    pub env: Vec<(String, Expr)>,
    pub stdin: Option<Expr>,
}

pub use crate::protocol::{Annotations, TaskDef};

/// A validated graph, in file order.
#[derive(Clone, Debug)]
pub struct Graph {
    pub tasks: Vec<TaskDef>,
    /// Positions in `tasks` by key (the keys are not copied).
    index: KeyIndex,
    /// Each task's dependencies as positions in `tasks` (same order as its
    /// `deps`).
    dep_ids: Vec<Vec<usize>>,
}

/// Why a graph was rejected. Every variant names the offending key.
#[derive(Clone, Debug, PartialEq)]
pub enum GraphError {
    Json { line: usize, column: usize, message: String },
    /// An integer literal taskfarm cannot keep exact.
    Integer { line: usize, column: usize, message: String },
    NotAnObject(String),
    Task { key: String, message: String },
    Cycle(Vec<String>),
    UnknownKey { key: String, context: String },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::Json { line, column, message } => {
                write!(f, "malformed JSON at line {line}, column {column}: {message}")
            }
            GraphError::Integer { line, column, message } => write!(f, "at line {line}, column {column}: {message}"),
            GraphError::NotAnObject(found) => write!(
                f,
                "a graph must be a JSON object mapping keys to tasks, e.g. {{\"x\": 1, \"y\": [\"inc\", \"x\"]}}; found {found}"
            ),
            GraphError::Task { key, message } => write!(f, "task '{key}': {message}"),
            GraphError::Cycle(keys) => {
                write!(f, "the graph has a cycle: {} (a task cannot depend on itself, directly or through others)", keys.join(" -> "))
            }
            GraphError::UnknownKey { key, context } => write!(f, "{context} '{key}' is not a key of the graph"),
        }
    }
}

impl std::error::Error for GraphError {}

const LONG_FORM_FIELDS: &[&str] =
    &["task", "cmd", "value", "deps", "priority", "retries", "resources", "workers", "timeout", "cache", "cwd", "env", "stdin"];

impl Graph {
    /// Parse and validate a graph from JSON text. `is_function` tells which
    /// function names exist (built-ins plus registered ones).
    pub fn from_json(text: &str, is_function: &dyn Fn(&str) -> bool) -> Result<Graph, GraphError> {
        let json_error = |e: serde_json::Error| GraphError::Json { line: e.line(), column: e.column(), message: strip_position(&e.to_string()) };
        // The usual case, an object, is read entry by entry in file order
        // (no intermediate JSON object of the whole graph).
        if text.trim_start().starts_with('{') {
            let Entries(entries) = serde_json::from_str(text).map_err(json_error)?;
            return Graph::from_entries(entries, is_function, Some(text));
        }
        let json: Json = serde_json::from_str(text).map_err(json_error)?;
        match json {
            Json::Object(m) => Graph::from_entries(m.into_iter().collect(), is_function, Some(text)),
            other => Err(GraphError::NotAnObject(describe(&other))),
        }
    }

    pub fn from_value(json: Json, is_function: &dyn Fn(&str) -> bool) -> Result<Graph, GraphError> {
        match json {
            Json::Object(m) => Graph::from_entries(m.into_iter().collect(), is_function, None),
            other => Err(GraphError::NotAnObject(describe(&other))),
        }
    }

    /// `text`: the JSON the entries were read from, to tell an integer
    /// literal outside the 64-bit range (which the JSON reader rounds to a
    /// float) from a float literal.
    fn from_entries(map: Vec<(String, Json)>, is_function: &dyn Fn(&str) -> bool, text: Option<&str>) -> Result<Graph, GraphError> {
        // One index of positions, built over the keys where they are now and
        // still valid once they have moved into the tasks.
        let key_of = |i: u32| map[i as usize].0.as_str();
        let mut index = KeyIndex::default();
        index.reserve(map.len(), key_of);
        for (i, (k, _)) in map.iter().enumerate() {
            if k.is_empty() {
                return Err(GraphError::Task { key: k.clone(), message: "the empty key \"\" is not allowed: give every task a name".into() });
            }
            if index.get(k, key_of).is_some() {
                return Err(GraphError::Task { key: k.clone(), message: "appears twice in the graph; each key must be defined once".into() });
            }
            index.insert(k, i as u32, key_of);
        }
        let position = |k: &str| index.get(k, key_of).map(|i| i as usize);
        let mut built = Vec::with_capacity(map.len());
        let mut dep_ids = Vec::with_capacity(map.len());
        let mut rounded = false;
        for (key, value) in &map {
            let mut b = Builder { key, position: &position, is_function, deps: Vec::new(), dep_ids: Vec::new(), dep_lookup: hashbrown::HashMap::new(), rounded: false, calls: Vec::new() };
            let (expr, mut annotations) = b.task(value)?;
            rounded |= b.rounded;
            // Functions beyond the built-ins: only workers that have them may run it.
            annotations.functions = b.calls;
            let spec = bincode::serialize(&expr).expect("Expr always serialises");
            built.push((b.deps, spec, annotations));
            dep_ids.push(b.dep_ids);
        }
        // The keys move into the tasks; the index refers to them there.
        let tasks: Vec<TaskDef> =
            map.into_iter().zip(built).map(|((key, _), (deps, spec, annotations))| TaskDef { key, deps, spec, annotations, order: 0 }).collect();
        if let (true, Some(text)) = (rounded, text) {
            if let Some((line, column, literal)) = out_of_range_integer(text) {
                return Err(GraphError::Integer {
                    line,
                    column,
                    message: format!(
                        "the integer {literal} is outside the range taskfarm keeps exact (-9223372036854775808 to 18446744073709551615); \
                         write it as a string, or as a float such as {literal}.0 if rounding is fine"
                    ),
                });
            }
        }
        let mut graph = Graph { tasks, index, dep_ids };
        graph.check_acyclic()?;
        graph.assign_order();
        Ok(graph)
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.index.get(key, |i| self.tasks[i as usize].key.as_str()).map(|i| i as usize)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&TaskDef> {
        self.position(key).map(|i| &self.tasks[i])
    }

    /// Keys nothing else in the graph depends on, in file order.
    pub fn output_keys(&self) -> Vec<String> {
        let mut needed = vec![false; self.tasks.len()];
        for ds in &self.dep_ids {
            for &d in ds {
                needed[d] = true;
            }
        }
        self.tasks.iter().zip(needed).filter(|(_, n)| !n).map(|(t, _)| t.key.clone()).collect()
    }

    /// Check that every requested key exists.
    pub fn check_keys(&self, keys: &[String]) -> Result<(), GraphError> {
        for k in keys {
            if self.position(k).is_none() {
                return Err(GraphError::UnknownKey { key: k.clone(), context: "requested key".into() });
            }
        }
        Ok(())
    }

    /// Only the tasks `keys` need (the keys and everything they depend on,
    /// as Dask culls a graph before computing it), so that counts and
    /// progress are of the work that will run. Keys must exist
    /// ([`Graph::check_keys`]); the tasks keep their order.
    pub fn cull(self, keys: &[String]) -> Graph {
        let n = self.tasks.len();
        let mut keep = vec![false; n];
        let mut stack: Vec<usize> = keys.iter().filter_map(|k| self.position(k)).collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut keep[i], true) {
                stack.extend(self.dep_ids[i].iter().copied().filter(|&d| !keep[d]));
            }
        }
        if keep.iter().all(|&k| k) {
            return self;
        }
        let mut new_pos = vec![usize::MAX; n];
        let mut next = 0;
        for (i, k) in keep.iter().enumerate() {
            if *k {
                new_pos[i] = next;
                next += 1;
            }
        }
        let Graph { tasks, dep_ids, .. } = self;
        let mut kept_tasks = Vec::with_capacity(next);
        let mut kept_deps = Vec::with_capacity(next);
        for ((t, ds), k) in tasks.into_iter().zip(dep_ids).zip(&keep) {
            if *k {
                kept_tasks.push(t);
                kept_deps.push(ds.into_iter().map(|d| new_pos[d]).collect());
            }
        }
        let mut index = KeyIndex::default();
        {
            let key_of = |i: u32| kept_tasks[i as usize].key.as_str();
            index.reserve(kept_tasks.len(), key_of);
            for (i, t) in kept_tasks.iter().enumerate() {
                index.insert(&t.key, i as u32, key_of);
            }
        }
        Graph { tasks: kept_tasks, index, dep_ids: kept_deps }
    }

    /// Reports the keys on the first cycle found.
    fn check_acyclic(&self) -> Result<(), GraphError> {
        match crate::dag::find_cycle(self.tasks.len(), |i, k| self.dep_ids[i].get(k).map(|&d| Some(d))) {
            Some(cycle) => Err(GraphError::Cycle(cycle.into_iter().map(|t| self.tasks[t].key.clone()).collect())),
            None => Ok(()),
        }
    }

    /// Depth-first post-order from the outputs: a task's dependencies come
    /// right before it, and one output's subtree is finished before the next
    /// one starts, which keeps the number of values held in memory low.
    fn assign_order(&mut self) {
        let n = self.tasks.len();
        let dep_ids = &self.dep_ids;
        let mut is_dep = vec![false; n];
        for ds in dep_ids {
            for &d in ds {
                is_dep[d] = true;
            }
        }
        let mut seen = vec![false; n];
        let mut next_order = 0u32;
        for root in (0..n).filter(|&i| !is_dep[i]) {
            seen[root] = true;
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if let Some(&dep) = dep_ids[node].get(*next) {
                    *next += 1;
                    if !seen[dep] {
                        seen[dep] = true;
                        stack.push((dep, 0));
                    }
                } else {
                    self.tasks[node].order = next_order;
                    next_order += 1;
                    stack.pop();
                }
            }
        }
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn describe(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(_) => "a boolean".into(),
        Json::Number(_) => "a number".into(),
        Json::String(_) => "a string".into(),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

/// The top-level graph object as its entries in file order, duplicates kept
/// (so they can be reported).
struct Entries(Vec<(String, Json)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object mapping keys to tasks")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(entry) = m.next_entry::<String, Json>()? {
                    v.push(entry);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Holds a float of integral value beyond the 64-bit integers: what the
/// JSON reader makes of an integer literal it cannot keep exact.
fn may_be_rounded(v: &Json) -> bool {
    match v {
        Json::Number(n) => n.as_f64().is_some_and(|f| n.is_f64() && f.fract() == 0.0 && !(-9.223372036854775e18..1.844674407370955e19).contains(&f)),
        Json::Array(items) => items.iter().any(may_be_rounded),
        Json::Object(m) => m.values().any(may_be_rounded),
        _ => false,
    }
}

/// The first integer literal (no fraction, no exponent) outside
/// i64::MIN..=u64::MAX in JSON text, outside strings: (line, column, text).
fn out_of_range_integer(text: &str) -> Option<(usize, usize, String)> {
    let b = text.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || matches!(b[i], b'.' | b'e' | b'E' | b'+' | b'-')) {
                i += 1;
            }
            let literal = &text[start..i];
            let integer = !literal.contains(['.', 'e', 'E']);
            if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                let line = text[..start].matches('\n').count() + 1;
                let column = start - text[..start].rfind('\n').map_or(0, |p| p + 1) + 1;
                return Some((line, column, literal.to_string()));
            }
            continue;
        }
        i += 1;
    }
    None
}

struct Builder<'a> {
    key: &'a str,
    /// Position of a key of the graph.
    position: &'a dyn Fn(&str) -> Option<usize>,
    is_function: &'a dyn Fn(&str) -> bool,
    deps: Vec<String>,
    /// Positions of `deps` in the graph.
    dep_ids: Vec<usize>,
    /// A literal holds a float that an out-of-range integer literal would
    /// also have become.
    rounded: bool,
    /// The functions it calls that are not built in.
    calls: Vec<String>,
    /// Position in the graph -> reference number, once a task has more
    /// dependencies than a linear search should scan (a task gathering
    /// 100,000 keys took a second with the search alone).
    dep_lookup: hashbrown::HashMap<usize, u32>,
}

/// Dependencies of one task up to which `dep_index` searches linearly.
const LINEAR_DEPS: usize = 32;

impl Builder<'_> {
    fn err(&self, message: impl Into<String>) -> GraphError {
        GraphError::Task { key: self.key.to_string(), message: message.into() }
    }

    /// The reference number of dependency `key` (at position `at` in the
    /// graph), adding it on first use.
    fn dep_index(&mut self, key: &str, at: usize) -> u32 {
        let found = if self.dep_ids.len() <= LINEAR_DEPS {
            self.dep_ids.iter().position(|&d| d == at).map(|i| i as u32)
        } else {
            if self.dep_lookup.is_empty() {
                self.dep_lookup.extend(self.dep_ids.iter().enumerate().map(|(i, &d)| (d, i as u32)));
            }
            self.dep_lookup.get(&at).copied()
        };
        found.unwrap_or_else(|| {
            let i = self.deps.len() as u32;
            self.deps.push(key.to_string());
            self.dep_ids.push(at);
            if !self.dep_lookup.is_empty() {
                self.dep_lookup.insert(at, i);
            }
            i
        })
    }

    fn task(&mut self, v: &Json) -> Result<(Expr, Annotations), GraphError> {
        match v {
            Json::Object(m) => self.long_form(m),
            other => Ok((self.expr(other)?, Annotations::default())),
        }
    }

    fn expr(&mut self, v: &Json) -> Result<Expr, GraphError> {
        Ok(match v {
            Json::String(s) if let Some(at) = (self.position)(s) => Expr::Ref(self.dep_index(s, at)),
            Json::Array(items) => match items.first() {
                Some(Json::String(name)) if (self.position)(name).is_none() => {
                    let args = items[1..].iter().map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?;
                    if name == "cmd" {
                        if args.is_empty() {
                            return Err(self.err("[\"cmd\", PROGRAM, ARGS...] needs at least a program"));
                        }
                        Expr::Cmd(Box::new(CmdSpec { argv: args, cwd: None, env: Vec::new(), stdin: None }))
                    } else if (self.is_function)(name) {
                        if !crate::functions::is_builtin(name) && !self.calls.contains(name) {
                            self.calls.push(name.clone());
                        }
                        Expr::Call(name.clone(), args)
                    } else {
                        return Err(self.err(format!(
                            "unknown function '{name}' (an array whose first element is a string that is not a key is a call; \
                             check the spelling, see `taskfarm functions` for the built-ins, or write a list of strings as \
                             [\"list\", \"a\", \"b\"] or {{\"value\": [...]}})"
                        )));
                    }
                }
                _ => Expr::List(items.iter().map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?),
            },
            other => {
                self.rounded |= may_be_rounded(other);
                Expr::Lit(other.to_string())
            }
        })
    }

    fn long_form(&mut self, m: &Map<String, Json>) -> Result<(Expr, Annotations), GraphError> {
        for field in m.keys() {
            if !LONG_FORM_FIELDS.contains(&field.as_str()) {
                return Err(self.err(format!(
                    "unknown field '{field}' in long-form task; allowed fields: {} (to use an object as a literal value, write {{\"value\": {{...}}}})",
                    LONG_FORM_FIELDS.join(", ")
                )));
            }
        }
        let kinds: Vec<&str> = ["task", "cmd", "value"].into_iter().filter(|k| m.contains_key(*k)).collect();
        if kinds.len() != 1 {
            return Err(self.err(format!(
                "a long-form task needs exactly one of \"task\", \"cmd\" or \"value\" (found {})",
                if kinds.is_empty() { "none".to_string() } else { kinds.join(" and ") }
            )));
        }
        if kinds[0] != "cmd" {
            for f in ["cwd", "env", "stdin"] {
                if m.contains_key(f) {
                    return Err(self.err(format!("field '{f}' only applies to command tasks (\"cmd\")")));
                }
            }
        }
        let expr = match kinds[0] {
            "task" => self.expr(&m["task"])?,
            "value" => {
                self.rounded |= may_be_rounded(&m["value"]);
                Expr::Lit(m["value"].to_string())
            }
            _ => self.cmd(m)?,
        };
        let mut a = Annotations::default();
        if let Some(deps) = m.get("deps") {
            for d in self.string_list(deps, "deps")? {
                let Some(at) = (self.position)(&d) else {
                    return Err(self.err(format!("dependency '{d}' in \"deps\" is not a key of the graph")));
                };
                self.dep_index(&d, at);
            }
        }
        if let Some(p) = m.get("priority") {
            a.priority = p
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| self.err(format!("\"priority\" must be an integer, found {p}")))?;
        }
        if let Some(r) = m.get("retries") {
            a.retries = r
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| self.err(format!("\"retries\" must be a non-negative integer, found {r}")))?;
        }
        if let Some(r) = m.get("resources") {
            let obj = r.as_object().ok_or_else(|| self.err("\"resources\" must be an object such as {\"cpus\": 4, \"gpus\": 1}"))?;
            for (name, amount) in obj {
                match amount.as_f64() {
                    Some(x) if x >= 0.0 && x.is_finite() => a.resources.push((name.clone(), x)),
                    _ => return Err(self.err(format!("resource '{name}' must be a non-negative number, found {amount}"))),
                }
            }
        }
        if let Some(w) = m.get("workers") {
            a.workers = self.string_list(w, "workers")?;
        }
        if let Some(c) = m.get("cache") {
            a.cache = Some(c.as_bool().ok_or_else(|| {
                self.err(format!("\"cache\" must be true (cache this command's output with --cache) or false (never cache this task), found {c}"))
            })?);
        }
        if let Some(t) = m.get("timeout") {
            let secs = match t {
                Json::Number(n) => n.as_f64(),
                Json::String(s) => crate::util::parse_duration(s).ok().map(|d| d.as_secs_f64()),
                _ => None,
            };
            match secs {
                Some(s) if s > 0.0 && s.is_finite() => a.timeout = Some(s),
                _ => return Err(self.err(format!("\"timeout\" must be a positive number of seconds or a duration like \"90s\", found {t}"))),
            }
        }
        Ok((expr, a))
    }

    fn cmd(&mut self, m: &Map<String, Json>) -> Result<Expr, GraphError> {
        let argv = match &m["cmd"] {
            Json::Array(items) if !items.is_empty() => items.iter().map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?,
            Json::String(s) => {
                return Err(self.err(format!(
                    "\"cmd\" must be an argument list such as [\"sh\", \"-c\", \"...\"], not a string (found \"{s}\")"
                )))
            }
            other => return Err(self.err(format!("\"cmd\" must be a non-empty argument list, found {other}"))),
        };
        let cwd = match m.get("cwd") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => return Err(self.err(format!("\"cwd\" must be a string, found {other}"))),
        };
        let mut env = Vec::new();
        if let Some(e) = m.get("env") {
            let obj = e.as_object().ok_or_else(|| self.err("\"env\" must be an object of NAME: value"))?;
            for (name, v) in obj {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    return Err(self.err(format!("environment variable name '{name}' is not valid")));
                }
                env.push((name.clone(), self.expr(v)?));
            }
        }
        let stdin = m.get("stdin").map(|s| self.expr(s)).transpose()?;
        Ok(Expr::Cmd(Box::new(CmdSpec { argv, cwd, env, stdin })))
    }

    fn string_list(&self, v: &Json, field: &str) -> Result<Vec<String>, GraphError> {
        match v {
            Json::String(s) => Ok(vec![s.clone()]),
            Json::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| self.err(format!("\"{field}\" must list strings, found {i}"))))
                .collect(),
            other => Err(self.err(format!("\"{field}\" must be a string or a list of strings, found {other}"))),
        }
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
