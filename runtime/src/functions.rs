//! The registry of callable task functions: built-ins, command tasks and
//! user-registered Rust functions; and the evaluator of task specs.

use crate::graph::{CmdSpec, Expr};
use crate::value::Data;
use serde_json::{json, Value as Json};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a running task can know about where and how it runs.
pub struct TaskContext<'a> {
    pub key: &'a str,
    /// The worker's own scratch directory (default cwd of commands).
    pub local_directory: &'a std::path::Path,
    /// When the task's `timeout` runs out.
    pub deadline: Option<Instant>,
    /// Told the pid of a command's process once it started, and `None` once
    /// it closed its output (before it is reaped): a cancelled task's
    /// process is killed in between.
    pub spawned: Option<&'a (dyn Fn(Option<u32>) + Sync)>,
    /// The token commands carry in [`COMMAND_TOKEN_VAR`]: the worker's own
    /// (one process may hold several workers, each with its own reaper).
    pub token: &'a str,
}

/// A task function: arguments in, value or error message out.
pub type Function = Arc<dyn Fn(&[&Data], &TaskContext<'_>) -> Result<Data, String> + Send + Sync>;

struct Entry {
    func: Function,
    help: &'static str,
}

const USER_FUNCTION: &str = "user function";

/// The environment variable every command of this process gets, holding
/// [`command_token`]: the worker's reaper finds what to kill by it.
pub const COMMAND_TOKEN_VAR: &str = "TASKFARM_WORKER_TOKEN";

/// A random token for commands run outside any worker (a worker's own is
/// in [`TaskContext::token`]; see [`COMMAND_TOKEN_VAR`]).
pub fn command_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| crate::util::hex(&crate::util::random_bytes(16)))
}

/// Whether `name` is one of taskfarm's built-in functions (every worker has them).
pub fn is_builtin(name: &str) -> bool {
    static BUILTINS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    BUILTINS.get_or_init(|| Registry::with_builtins().funcs.keys().cloned().collect()).iter().any(|b| b == name) || name == "cmd"
}

/// Functions tasks can call by name.
#[derive(Clone)]
pub struct Registry {
    funcs: Arc<BTreeMap<String, Entry>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with_builtins()
    }
}

impl Registry {
    pub fn with_builtins() -> Registry {
        let mut r = Registry { funcs: Arc::new(BTreeMap::new()) };
        r.add_builtin("noop", "noop(...) -> null; ignores its arguments", |_, _| Ok(Data::null()));
        r.add_builtin(crate::cache::LOAD, "__cache_load(path) -> the value of a result-cache entry (put in place of a cached task by --cache)", |a, _| match a {
            [Data::Json(Json::String(p))] => crate::cache::load(std::path::Path::new(p)),
            _ => Err(format!("{} takes the path of a cache entry", crate::cache::LOAD)),
        });
        r.add_builtin("identity", "identity(x) -> x", |a, _| one(a, "identity").cloned());
        r.add_builtin("inc", "inc(x) -> x + 1", |a, _| num_op(one(a, "inc")?, &Data::Json(json!(1)), "inc", |x, y| x + y, i128::checked_add));
        r.add_builtin("add", "add(x, y, ...) -> sum of its numeric arguments", |a, _| fold(a, "add", |x, y| x + y, i128::checked_add));
        r.add_builtin("sub", "sub(x, y) -> x - y", |a, _| {
            let (x, y) = two(a, "sub")?;
            num_op(x, y, "sub", |x, y| x - y, i128::checked_sub)
        });
        r.add_builtin("mul", "mul(x, y, ...) -> product of its numeric arguments", |a, _| fold(a, "mul", |x, y| x * y, i128::checked_mul));
        r.add_builtin("sum", "sum(list) -> sum of the numbers in a list (or of its arguments)", |a, _| {
            match a {
                [Data::Json(Json::Array(items))] if items.is_empty() => Ok(Data::Json(json!(0))),
                [Data::Json(Json::Array(items))] => {
                    let owned: Vec<Data> = items.iter().cloned().map(Data::Json).collect();
                    let refs: Vec<&Data> = owned.iter().collect();
                    fold(&refs, "sum", |x, y| x + y, i128::checked_add)
                }
                [] => Ok(Data::Json(json!(0))),
                _ => fold(a, "sum", |x, y| x + y, i128::checked_add),
            }
        });
        r.add_builtin("list", "list(a, b, ...) -> [a, b, ...]", |a, _| Ok(Data::Json(Json::Array(a.iter().map(|d| d.to_json()).collect()))));
        r.add_builtin("concat", "concat(a, b, ...) -> strings joined, lists concatenated, bytes appended; or concat(list_of_those)", |a, _| {
            match a {
                [Data::Json(Json::Array(items))] if items.iter().all(|i| i.is_string() || i.is_array()) && !items.is_empty() => {
                    let owned: Vec<Data> = items.iter().cloned().map(Data::Json).collect();
                    concat(&owned.iter().collect::<Vec<_>>())
                }
                _ => concat(a),
            }
        });
        r.add_builtin("sleep", "sleep(seconds) -> null after sleeping; respects the task's timeout", |a, ctx| {
            let secs = one(a, "sleep")?;
            let s = as_f64(secs).filter(|s| *s >= 0.0 && s.is_finite()).ok_or_else(|| format!("sleep: expected a number of seconds, got {}", show(secs)))?;
            let want = Duration::from_secs_f64(s);
            match ctx.deadline {
                Some(d) if Instant::now() + want > d => {
                    std::thread::sleep(d.saturating_duration_since(Instant::now()));
                    Err(format!("timed out: sleep({s}) ran past the task's timeout"))
                }
                _ => {
                    std::thread::sleep(want);
                    Ok(Data::null())
                }
            }
        });
        r.add_builtin("fail", "fail(message) -> always an error with that message (for tests)", |a, _| {
            Err(match a.first() {
                Some(Data::Json(Json::String(s))) => s.clone(),
                Some(other) => show(other),
                None => "fail() was called".into(),
            })
        });
        r.add_builtin("zeros", "zeros(n) -> n zero bytes (raw bytes; for tests and benchmarks)", |a, _| {
            let n = one(a, "zeros")?;
            match n {
                Data::Json(Json::Number(x)) => x
                    .as_u64()
                    .filter(|&n| n <= 1 << 40)
                    .map(|n| Data::Bytes(vec![0u8; n as usize]))
                    .ok_or_else(|| format!("zeros: expected a byte count up to 2^40, got {x}")),
                other => Err(format!("zeros: expected a byte count, got {}", show(other))),
            }
        });
        r.add_builtin("len", "len(x) -> length of a string (bytes of UTF-8), bytes value, list or object", |a, _| {
            let n = match one(a, "len")? {
                Data::Bytes(b) => b.len(),
                Data::Json(Json::String(s)) => s.len(),
                Data::Json(Json::Array(v)) => v.len(),
                Data::Json(Json::Object(o)) => o.len(),
                other => return Err(format!("len: expected a string, bytes, list or object, got {}", show(other))),
            };
            Ok(Data::Json(json!(n)))
        });
        r.add_builtin("cmd", "cmd(program, args...) -> stdout of the program (see command tasks)", |_, _| {
            Err("cmd is evaluated by the worker directly".into())
        });
        r
    }

    fn add_builtin(&mut self, name: &str, help: &'static str, f: impl Fn(&[&Data], &TaskContext<'_>) -> Result<Data, String> + Send + Sync + 'static) {
        Arc::get_mut(&mut self.funcs).expect("registry not shared yet").insert(name.to_string(), Entry { func: Arc::new(f), help });
    }

    /// Register a user function under `name` (replacing any of that name).
    pub fn register(&mut self, name: &str, f: impl Fn(&[&Data], &TaskContext<'_>) -> Result<Data, String> + Send + Sync + 'static) {
        let mut map: BTreeMap<String, Entry> = self.funcs.iter().map(|(k, e)| (k.clone(), Entry { func: e.func.clone(), help: e.help })).collect();
        map.insert(name.to_string(), Entry { func: Arc::new(f), help: USER_FUNCTION });
        self.funcs = Arc::new(map);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    /// The functions registered on top of the built-ins (what a worker
    /// announces, so that tasks calling them go only to workers that have them).
    pub fn user_functions(&self) -> Vec<String> {
        self.funcs.iter().filter(|(name, e)| e.help == USER_FUNCTION || !is_builtin(name)).map(|(k, _)| k.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Function> {
        self.funcs.get(name).map(|e| &e.func)
    }

    /// (name, one-line help) of every function.
    pub fn describe(&self) -> Vec<(String, &'static str)> {
        self.funcs.iter().map(|(k, e)| (k.clone(), e.help)).collect()
    }
}

fn show(d: &Data) -> String {
    match d {
        Data::Json(j) => j.to_string(),
        Data::Bytes(b) => format!("<{} bytes>", b.len()),
        Data::Pickle(b) => format!("<pickled Python object, {} bytes>", b.len()),
    }
}

fn one<'a>(a: &[&'a Data], name: &str) -> Result<&'a Data, String> {
    match a {
        [x] => Ok(x),
        _ => Err(format!("{name}: expected 1 argument, got {}", a.len())),
    }
}

fn two<'a>(a: &[&'a Data], name: &str) -> Result<(&'a Data, &'a Data), String> {
    match a {
        [x, y] => Ok((x, y)),
        _ => Err(format!("{name}: expected 2 arguments, got {}", a.len())),
    }
}

fn as_f64(d: &Data) -> Option<f64> {
    match d {
        Data::Json(Json::Number(n)) => n.as_f64(),
        _ => None,
    }
}

/// An integer's exact value (JSON integers are signed or unsigned 64-bit).
fn as_int(n: &serde_json::Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// Integer arithmetic when both are integers (exact over the whole signed
/// and unsigned 64-bit range, erroring when the result leaves it), float
/// otherwise.
fn num_op(x: &Data, y: &Data, name: &str, f: fn(f64, f64) -> f64, i: fn(i128, i128) -> Option<i128>) -> Result<Data, String> {
    match (x, y) {
        (Data::Json(Json::Number(a)), Data::Json(Json::Number(b))) => {
            if let (Some(a), Some(b)) = (as_int(a), as_int(b)) {
                let exact = i(a, b).and_then(|r| i64::try_from(r).map(|v| json!(v)).or_else(|_| u64::try_from(r).map(|v| json!(v))).ok());
                return exact.map(Data::Json).ok_or_else(|| format!("{name}: integer overflow on {a} and {b} (integers are kept exact from -2^63 to 2^64-1)"));
            }
            let r = f(a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            serde_json::Number::from_f64(r).map(|n| Data::Json(Json::Number(n))).ok_or_else(|| format!("{name}: result is not a finite number"))
        }
        _ => Err(format!("{name}: expected numbers, got {} and {}", show(x), show(y))),
    }
}

fn fold(a: &[&Data], name: &str, f: fn(f64, f64) -> f64, i: fn(i128, i128) -> Option<i128>) -> Result<Data, String> {
    let (first, rest) = a.split_first().ok_or_else(|| format!("{name}: expected at least 1 argument"))?;
    if as_f64(first).is_none() {
        return Err(format!("{name}: expected numbers, got {}", show(first)));
    }
    let mut acc = (*first).clone();
    for x in rest {
        acc = num_op(&acc, x, name, f, i)?;
    }
    Ok(acc)
}

fn concat(a: &[&Data]) -> Result<Data, String> {
    if a.iter().all(|d| matches!(d, Data::Json(Json::String(_)))) {
        return Ok(Data::Json(Json::String(a.iter().map(|d| if let Data::Json(Json::String(s)) = d { s.as_str() } else { "" }).collect())));
    }
    if a.iter().all(|d| matches!(d, Data::Json(Json::Array(_)))) {
        let mut out = Vec::new();
        for d in a {
            if let Data::Json(Json::Array(items)) = d {
                out.extend(items.iter().cloned());
            }
        }
        return Ok(Data::Json(Json::Array(out)));
    }
    if a.iter().all(|d| matches!(d, Data::Bytes(_) | Data::Json(Json::String(_)))) {
        let mut out = Vec::new();
        for d in a {
            out.extend_from_slice(&d.to_text_bytes());
        }
        return Ok(Data::Bytes(out));
    }
    Err(format!("concat: arguments must be all strings/bytes or all lists, got {}", a.iter().map(|d| show(d)).collect::<Vec<_>>().join(", ")))
}

// ---- evaluation ---------------------------------------------------------------

/// Evaluate a task spec against its dependencies' values.
pub fn evaluate<'a>(expr: &Expr, deps: &'a [&'a Data], reg: &Registry, ctx: &TaskContext<'_>) -> Result<Cow<'a, Data>, String> {
    Ok(match expr {
        Expr::Lit(text) => Cow::Owned(Data::Json(serde_json::from_str(text).map_err(|e| format!("bad literal {text}: {e}"))?)),
        Expr::Ref(i) => Cow::Borrowed(*deps.get(*i as usize).ok_or_else(|| format!("reference to dependency #{i}, which was not provided"))?),
        Expr::List(items) => {
            let vals = items.iter().map(|e| evaluate(e, deps, reg, ctx)).collect::<Result<Vec<_>, _>>()?;
            Cow::Owned(Data::Json(Json::Array(vals.iter().map(|v| v.to_json()).collect())))
        }
        Expr::Call(name, args) => {
            let f = reg.get(name).ok_or_else(|| format!("function '{name}' is not registered on this worker"))?;
            let vals = args.iter().map(|e| evaluate(e, deps, reg, ctx)).collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&Data> = vals.iter().map(|v| v.as_ref()).collect();
            Cow::Owned(f(&refs, ctx).map_err(|e| if e.starts_with(name.as_str()) { e } else { format!("{name}: {e}") })?)
        }
        Expr::Cmd(spec) => Cow::Owned(run_command(spec, deps, reg, ctx)?),
        Expr::Pickled(bytes) => Cow::Owned(Data::Pickle(bytes.clone().into())),
        Expr::Py(_) => return Err("a Python call can only be a task's whole expression (it is run by the worker's Python executors)".into()),
    })
}

const STDERR_TAIL: usize = 2000;

/// "; stderr: ..." with the last lines of a command's stderr (at most about
/// STDERR_TAIL bytes, starting at a line), and how much was left out.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim_end();
    if text.is_empty() {
        return String::new();
    }
    if text.len() <= STDERR_TAIL {
        return format!("; stderr: {text}");
    }
    let mut cut = text.len() - STDERR_TAIL;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    // Start at the next whole line when there is one in the tail.
    if let Some(nl) = text[cut..].find('\n').filter(|&nl| nl + 1 < text.len() - cut) {
        cut += nl + 1;
    }
    let dropped = text[..cut].lines().count();
    format!("; stderr (last {} bytes; {dropped} earlier line(s) left out): {}", text.len() - cut, &text[cut..])
}

fn run_command(spec: &CmdSpec, deps: &[&Data], reg: &Registry, ctx: &TaskContext<'_>) -> Result<Data, String> {
    let text = |e: &Expr| -> Result<Vec<u8>, String> { Ok(evaluate(e, deps, reg, ctx)?.to_text_bytes()) };
    let argv: Vec<Vec<u8>> = spec.argv.iter().map(text).collect::<Result<_, _>>()?;
    use std::os::unix::ffi::OsStrExt;
    let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    if argv[0].contains(&0) || argv.iter().any(|a| a.contains(&0)) {
        return Err("command arguments cannot contain NUL bytes".into());
    }
    let program = String::from_utf8_lossy(&argv[0]).into_owned();
    let mut cmd = Command::new(os(&argv[0]));
    cmd.args(argv[1..].iter().map(|a| os(a)));
    let cwd = match &spec.cwd {
        Some(c) => ctx.local_directory.join(c),
        None => PathBuf::from(ctx.local_directory),
    };
    cmd.current_dir(&cwd);
    for (name, value) in &spec.env {
        cmd.env(name, os(&text(value)?));
    }
    cmd.env("TASKFARM_KEY", ctx.key);
    cmd.env(COMMAND_TOKEN_VAR, ctx.token);
    let stdin = spec.stdin.as_ref().map(text).transpose()?;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // A process group of its own (still posix_spawn): a timeout, a cancel
    // or the worker's end kills whatever the command started too.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start command '{program}' in {}: {e}", cwd.display()))?;
    if let Some(f) = ctx.spawned {
        f(Some(child.id()));
    }
    let feeder = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })),
        _ => None,
    };
    let out_pipe = child.stdout.take().expect("piped");
    let err_pipe = child.stderr.take().expect("piped");
    // Both pipes are read from this thread (no reader threads to start per
    // command); at the deadline the command is killed and what it wrote
    // until then is still collected.
    let mut timed_out = false;
    let [stdout, stderr] = drain_pipes([out_pipe.as_raw_fd(), err_pipe.as_raw_fd()], ctx.deadline, || {
        timed_out = true;
        // SAFETY: the child is not reaped yet, so its group id is its own.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    });
    drop((out_pipe, err_pipe));
    if let Some(f) = ctx.spawned {
        f(None);
    }
    let status = child.wait().map_err(|e| format!("waiting for '{program}': {e}"))?;
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let tail = stderr_tail(&stderr);
    if timed_out {
        return Err(format!("command '{program}' timed out and was killed{tail}"));
    }
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        return Err(match (status.code(), status.signal()) {
            (Some(code), _) => format!("command '{program}' exited with status {code}{tail}"),
            (None, Some(sig)) => format!("command '{program}' was killed by signal {sig}{tail}"),
            _ => format!("command '{program}' failed{tail}"),
        });
    }
    Ok(match String::from_utf8(stdout) {
        Ok(s) => Data::Json(Json::String(s)),
        Err(e) => Data::Bytes(e.into_bytes()),
    })
}

/// Read two pipes to their ends, in one thread, with `poll`. When
/// `deadline` passes, `on_deadline` is called once (it kills the writer) and
/// reading continues to the ends.
fn drain_pipes(fds: [RawFd; 2], deadline: Option<Instant>, mut on_deadline: impl FnMut()) -> [Vec<u8>; 2] {
    let mut bufs = [Vec::new(), Vec::new()];
    let mut open = [true, true];
    let mut deadline = deadline;
    let mut chunk = vec![0u8; 64 << 10];
    while open[0] || open[1] {
        let mut pfds = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; 2];
        let mut npfds = 0;
        for i in (0..2).filter(|&i| open[i]) {
            pfds[npfds].fd = fds[i];
            npfds += 1;
        }
        let timeout = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).as_millis().saturating_add(1).min(i32::MAX as u128) as i32,
            None => -1,
        };
        // SAFETY: `pfds` holds at least `npfds` valid pollfd entries.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), npfds as libc::nfds_t, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                deadline = None;
                on_deadline();
            }
            continue;
        }
        for p in &pfds[..npfds] {
            if p.revents == 0 {
                continue;
            }
            let i = if p.fd == fds[0] { 0 } else { 1 };
            // SAFETY: reading into a buffer we own, of the given length.
            let got = unsafe { libc::read(p.fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if got > 0 {
                bufs[i].extend_from_slice(&chunk[..got as usize]);
            } else if got == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                open[i] = false;
            }
        }
    }
    bufs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &std::path::Path) -> TaskContext<'_> {
        TaskContext { key: "k", local_directory: dir, deadline: None, spawned: None, token: command_token() }
    }

    fn call(name: &str, args: &[Data]) -> Result<Data, String> {
        let r = Registry::with_builtins();
        let refs: Vec<&Data> = args.iter().collect();
        let d = std::env::temp_dir();
        r.get(name).unwrap()(&refs, &ctx(&d))
    }

    fn j(v: Json) -> Data {
        Data::Json(v)
    }

    #[test]
    fn long_stderr_is_cut_at_a_line_and_says_so() {
        assert_eq!(stderr_tail(b""), "");
        assert_eq!(stderr_tail(b"oops\n"), "; stderr: oops");
        let long: String = (0..500).map(|i| format!("line {i}\n")).collect();
        let t = stderr_tail(long.as_bytes());
        let shown = t.split_once("): ").unwrap().1;
        assert!(shown.starts_with("line ") && shown.ends_with("line 499"), "{t}");
        let dropped: usize = t.split_once("; ").unwrap().1.split_once(" earlier").unwrap().0.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(dropped + shown.lines().count(), 500, "{t}");
        assert!(t.starts_with("; stderr (last "), "{t}");
    }

    #[test]
    fn arithmetic() {
        assert_eq!(call("inc", &[j(json!(1))]).unwrap(), j(json!(2)));
        assert_eq!(call("add", &[j(json!(11)), j(json!(1))]).unwrap(), j(json!(12)));
        assert_eq!(call("add", &[j(json!(1)), j(json!(0.5))]).unwrap(), j(json!(1.5)));
        assert_eq!(call("sub", &[j(json!(5)), j(json!(7))]).unwrap(), j(json!(-2)));
        assert_eq!(call("mul", &[j(json!(3)), j(json!(4)), j(json!(2))]).unwrap(), j(json!(24)));
        assert_eq!(call("sum", &[j(json!([1, 2, 3]))]).unwrap(), j(json!(6)));
        assert_eq!(call("sum", &[j(json!([]))]).unwrap(), j(json!(0)));
        assert_eq!(call("add", &[j(json!(i64::MAX)), j(json!(1))]).unwrap(), j(json!(9223372036854775808u64)));
        assert!(call("inc", &[j(json!("a"))]).unwrap_err().contains("expected numbers"));
        // Exact across the unsigned range, an error (not a float) beyond it.
        assert_eq!(call("inc", &[j(json!(9223372036854775807i64))]).unwrap(), j(json!(9223372036854775808u64)));
        assert_eq!(call("sub", &[j(json!(u64::MAX)), j(json!(u64::MAX))]).unwrap(), j(json!(0)));
        assert_eq!(call("add", &[j(json!(i64::MIN)), j(json!(u64::MAX))]).unwrap(), j(json!(i64::MAX as u64)));
        assert!(call("inc", &[j(json!(u64::MAX))]).unwrap_err().contains("integer overflow"));
        assert!(call("sub", &[j(json!(1))]).unwrap_err().contains("expected 2 arguments"));
    }

    #[test]
    fn lists_and_concat() {
        assert_eq!(call("list", &[j(json!(1)), j(json!("a"))]).unwrap(), j(json!([1, "a"])));
        assert_eq!(call("concat", &[j(json!("ab")), j(json!("c"))]).unwrap(), j(json!("abc")));
        assert_eq!(call("concat", &[j(json!([1])), j(json!([2, 3]))]).unwrap(), j(json!([1, 2, 3])));
        assert_eq!(call("concat", &[j(json!(["x", "y"]))]).unwrap(), j(json!("xy")));
        assert_eq!(call("concat", &[Data::Bytes(vec![1]), j(json!("a"))]).unwrap(), Data::Bytes(vec![1, b'a']));
        assert!(call("concat", &[j(json!(1)), j(json!([2]))]).is_err());
        assert_eq!(call("noop", &[j(json!(1))]).unwrap(), Data::null());
        assert_eq!(call("zeros", &[j(json!(3))]).unwrap(), Data::Bytes(vec![0, 0, 0]));
        assert!(call("zeros", &[j(json!(-1))]).is_err());
        assert_eq!(call("len", &[Data::Bytes(vec![1, 2])]).unwrap(), j(json!(2)));
        assert_eq!(call("len", &[j(json!("héllo"))]).unwrap(), j(json!(6)));
        assert_eq!(call("len", &[j(json!([1, 2, 3]))]).unwrap(), j(json!(3)));
        assert!(call("len", &[j(json!(5))]).is_err());
        assert_eq!(call("fail", &[j(json!("boom"))]).unwrap_err(), "boom");
    }

    #[test]
    fn evaluate_nested_with_refs() {
        let r = Registry::with_builtins();
        let x = j(json!(2));
        let deps = [&x];
        let e = Expr::Call("add".into(), vec![Expr::Call("inc".into(), vec![Expr::Ref(0)]), Expr::Lit("10".into())]);
        let d = std::env::temp_dir();
        assert_eq!(evaluate(&e, &deps, &r, &ctx(&d)).unwrap().into_owned(), j(json!(13)));
        assert!(matches!(evaluate(&Expr::Ref(0), &deps, &r, &ctx(&d)).unwrap(), Cow::Borrowed(_)));
        assert!(evaluate(&Expr::Ref(1), &deps, &r, &ctx(&d)).is_err());
    }

    #[test]
    fn commands_capture_stdout_pass_values_and_report_failures() {
        let r = Registry::with_builtins();
        let d = std::env::temp_dir();
        let v = j(json!("world"));
        let deps = [&v];
        let lit = |s: &str| Expr::Lit(Json::String(s.into()).to_string());
        let spec = CmdSpec {
            argv: vec![lit("sh"), lit("-c"), lit("printf '%s %s %s' \"$1\" \"$GREETING\" \"$(cat)\""), lit("sh"), Expr::Ref(0)],
            cwd: None,
            env: vec![("GREETING".into(), lit("hi"))],
            stdin: Some(Expr::Ref(0)),
        };
        let out = evaluate(&Expr::Cmd(Box::new(spec)), &deps, &r, &ctx(&d)).unwrap();
        assert_eq!(out.into_owned(), j(json!("world hi world")));

        let bad = CmdSpec { argv: vec![lit("sh"), lit("-c"), lit("echo oops >&2; exit 3")], cwd: None, env: vec![], stdin: None };
        let e = evaluate(&Expr::Cmd(Box::new(bad)), &deps, &r, &ctx(&d)).unwrap_err();
        assert_eq!(e, "command 'sh' exited with status 3; stderr: oops");

        let missing = CmdSpec { argv: vec![lit("/no/such/program")], cwd: None, env: vec![], stdin: None };
        assert!(evaluate(&Expr::Cmd(Box::new(missing)), &deps, &r, &ctx(&d)).unwrap_err().contains("cannot start command"));

        let slow = CmdSpec { argv: vec![lit("sleep"), lit("30")], cwd: None, env: vec![], stdin: None };
        let c = TaskContext { key: "k", local_directory: &d, deadline: Some(Instant::now() + Duration::from_millis(100)), spawned: None, token: command_token() };
        let e = evaluate(&Expr::Cmd(Box::new(slow)), &deps, &r, &c).unwrap_err();
        assert!(e.contains("timed out and was killed"), "{e}");

        // Both pipes read from one thread: far more than a pipe's buffer on
        // each, interleaved, must neither block nor lose bytes.
        let loud = CmdSpec {
            argv: vec![lit("sh"), lit("-c"), lit("for i in 1 2 3 4; do head -c 100000 /dev/zero | tr '\\0' a; head -c 100000 /dev/zero | tr '\\0' b >&2; done; echo end >&2")],
            cwd: None,
            env: vec![],
            stdin: None,
        };
        let out = evaluate(&Expr::Cmd(Box::new(loud)), &deps, &r, &ctx(&d)).unwrap().into_owned();
        assert_eq!(out, j(json!("a".repeat(400_000))));

        // What a command wrote before its deadline is kept for the error.
        let partial = CmdSpec { argv: vec![lit("sh"), lit("-c"), lit("echo started >&2; exec sleep 30")], cwd: None, env: vec![], stdin: None };
        let c = TaskContext { key: "k", local_directory: &d, deadline: Some(Instant::now() + Duration::from_millis(1000)), spawned: None, token: command_token() };
        let e = evaluate(&Expr::Cmd(Box::new(partial)), &deps, &r, &c).unwrap_err();
        assert!(e.contains("timed out") && e.contains("stderr: started"), "{e}");
    }

    #[test]
    fn user_functions_can_be_registered() {
        let mut r = Registry::with_builtins();
        r.register("double", |a, _| Ok(Data::Json(json!(as_f64(a[0]).unwrap() * 2.0))));
        assert!(r.contains("double") && r.contains("inc"));
        let d = std::env::temp_dir();
        let x = j(json!(4));
        assert_eq!(r.get("double").unwrap()(&[&x], &ctx(&d)).unwrap(), j(json!(8.0)));
    }
}
