//! The `taskfarm` command on one machine: `run`, validation, exit codes, help.

mod common;
use common::*;

#[test]
fn seed_graph_runs_with_no_setup() {
    let d = TempDir::new("seed");
    let g = d.write("g.json", r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#);
    let o = taskfarm(&["run", g.to_str().unwrap()]);
    assert_eq!(stdout(&o), "{\"z\": 12}\n", "stderr: {}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn keys_option_selects_and_orders_output() {
    let d = TempDir::new("keys");
    let g = d.write("g.json", r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#);
    let o = taskfarm(&["run", g.to_str().unwrap(), "--keys", "z,x", "--workers", "2", "--nthreads", "1"]);
    assert_eq!(stdout(&o), "{\"z\": 12, \"x\": 1}\n");
}

#[test]
fn graph_from_stdin() {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(["run", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(br#"{"a": ["sum", [1, 2, 3]], "b": ["mul", "a", 2]}"#).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "{\"b\": 12}\n");
}

#[test]
fn every_builtin_works_in_a_graph() {
    let d = TempDir::new("builtins");
    let g = d.write(
        "g.json",
        r#"{"n": ["noop", 1], "i": ["identity", "n"], "a": ["add", 1, 2, 3], "s": ["sub", 10, "a"], "m": ["mul", "s", 3],
            "t": ["sum", ["list", "a", "s", "m"]], "c": ["concat", ["list", "x", "y"]], "l": ["list", "i", "c"],
            "z": ["sleep", 0.01], "out": ["list", "t", "l", "z"]}"#,
    );
    let o = taskfarm(&["run", g.to_str().unwrap()]);
    assert_eq!(stdout(&o), "{\"out\": [22, [null, \"xy\"], null]}\n", "{}", stderr(&o));
}

#[test]
fn command_tasks_take_dependency_values_as_arguments_stdin_and_env() {
    let d = TempDir::new("cmd");
    let g = d.write(
        "g.json",
        r#"{"name": "world",
            "greet": {"cmd": ["sh", "-c", "printf 'hello %s' \"$1\"", "sh", "name"]},
            "upper": {"cmd": ["tr", "a-z", "A-Z"], "stdin": "greet"},
            "env": {"cmd": ["sh", "-c", "printf '%s:%s' \"$WHO\" \"$TASKFARM_KEY\""], "env": {"WHO": "name"}},
            "compact": ["cmd", "printf", "%s!", "upper"],
            "out": ["list", "compact", "env"]}"#,
    );
    let o = taskfarm(&["run", g.to_str().unwrap()]);
    assert_eq!(stdout(&o), "{\"out\": [\"HELLO WORLD!\", \"world:env\"]}\n", "{}", stderr(&o));
}

#[test]
fn failing_task_exits_1_names_the_key_and_others_complete() {
    let d = TempDir::new("fail");
    let g = d.write(
        "g.json",
        r#"{"bad": ["fail", "disk on fire"], "after": ["inc", "bad"], "good": ["add", 1, 1],
            "cmdbad": {"cmd": ["sh", "-c", "echo broken pipe dream >&2; exit 7"]}}"#,
    );
    let o = taskfarm(&["run", g.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "{\"good\": 2}\n");
    let e = stderr(&o);
    assert!(e.contains("task 'after' failed: dependency 'bad' failed: fail: disk on fire"), "{e}");
    assert!(e.contains("task 'cmdbad' failed: command 'sh' exited with status 7; stderr: broken pipe dream"), "{e}");
    assert!(!e.contains("panicked") && !e.contains("backtrace"), "{e}");
}

#[test]
fn validation_errors_exit_2_and_name_the_key() {
    let d = TempDir::new("invalid");
    let cases: &[(&str, &str)] = &[
        (r#"{"a": ["inc", "c"], "b": ["inc", "a"], "c": ["inc", "b"]}"#, "cycle: "),
        (r#"{"a": 1, "b": ["incr", "a"]}"#, "task 'b': unknown function 'incr'"),
        (r#"{"a": 1, "b": {"task": ["inc", "a"], "deps": ["ghost"]}}"#, "task 'b': dependency 'ghost'"),
        ("{\"a\": 1,\n \"b\": [\"inc\" \"a\"]}", "malformed JSON at line 2, column 14"),
        (r#"{"a": {"cmd": "ls -l"}}"#, "task 'a': \"cmd\" must be an argument list"),
        (r#"{"a": {"task": 1, "retries": "many"}}"#, "task 'a': \"retries\" must be"),
        (r#"{}"#, "the graph has no tasks"),
    ];
    for (text, want) in cases {
        let g = d.write("g.json", text);
        for cmd in ["run", "submit"] {
            // submit validates before looking for a scheduler: none exists here.
            let o = taskfarm(&[cmd, g.to_str().unwrap(), "--scheduler-file", d.join("none.json").to_str().unwrap()][..if cmd == "run" { 2 } else { 4 }]);
            assert_eq!(o.status.code(), Some(2), "{cmd} {text}: {}", stderr(&o));
            assert!(stderr(&o).contains(want), "{cmd} {text}: want '{want}' in: {}", stderr(&o));
            assert!(stdout(&o).is_empty());
        }
    }
    let cyc = stderr(&taskfarm(&["run", d.write("c.json", r#"{"a": ["inc", "b"], "b": ["inc", "a"]}"#).to_str().unwrap()]));
    assert!(cyc.contains("a -> b -> a") || cyc.contains("b -> a -> b"), "{cyc}");
    let g = d.write("ok.json", r#"{"a": 1}"#);
    let o = taskfarm(&["run", g.to_str().unwrap(), "--keys", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("requested key 'nope' is not a key of the graph"));
    let o = taskfarm(&["run", d.join("missing.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read graph file"));
}

#[test]
fn bad_flags_exit_2_with_usage() {
    for args in [&["run"][..], &["run", "g.json", "--workers", "many"], &["frobnicate"], &["scheduler", "--idle-timeout", "soon"]] {
        let o = taskfarm(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("Usage") || stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
    let o = taskfarm(&["scheduler", "--idle-timeout", "soon"]);
    assert!(stderr(&o).contains("not a duration"), "{}", stderr(&o));
}

#[test]
fn help_explains_every_command_and_flag() {
    let top = stdout(&taskfarm(&["--help"]));
    for c in ["run", "scheduler", "worker", "submit", "status", "shutdown"] {
        assert!(top.contains(c), "top-level help lists {c}");
    }
    let expect: &[(&str, &[&str])] = &[
        ("run", &["--workers", "--nthreads", "--keys"]),
        ("scheduler", &["--scheduler-file", "--host", "--port", "--idle-timeout", "--pid-file"]),
        ("worker", &["--scheduler-file", "--nthreads", "--name", "--local-directory", "--death-timeout", "--pid-file"]),
        ("submit", &["--scheduler-file", "--keys"]),
        ("status", &["--scheduler-file", "--json"]),
        ("shutdown", &["--scheduler-file"]),
    ];
    for (cmd, flags) in expect {
        let h = stdout(&taskfarm(&[cmd, "--help"]));
        for f in *flags {
            assert!(h.contains(f), "{cmd} --help mentions {f}:\n{h}");
        }
    }
}

#[test]
fn functions_lists_the_builtins() {
    let out = stdout(&taskfarm(&["functions"]));
    for f in ["noop", "identity", "inc", "add", "sub", "mul", "sum", "list", "concat", "sleep", "fail", "cmd", "zeros", "len"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("{f} "))), "{f} missing from:\n{out}");
    }
}

#[test]
fn readme_examples_print_what_the_readme_says() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (example, expected) in [("seed.json", "{\"z\": 12}"), ("commands.json", "{\"both\": [\"TO BE OR NOT TO BE\", \"6\\n\"]}")] {
        assert!(readme.contains(expected), "README shows {expected}");
        let o = taskfarm(&["run", root.join("examples").join(example).to_str().unwrap()]);
        assert_eq!(stdout(&o).trim_end(), expected, "{example}: {}", stderr(&o));
    }
}

#[test]
fn topology_shows_cores_and_a_plan() {
    let o = taskfarm(&["topology", "--local-size", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for want in ["source: ", "cores: ", "allowed for this job: CPUs ", "plan for 2 processes on this node with --bind cores:", "local rank 0: CPUs ", "local rank 1: CPUs "] {
        assert!(out.contains(want), "{want} in:\n{out}");
    }
    let o = taskfarm(&["topology", "--bind", "sideways"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a binding policy"));
}

#[test]
fn environment_failures_exit_4_and_say_what_failed() {
    let d = TempDir::new("env4");
    // A scheduler file that cannot be written.
    let o = taskfarm(&["scheduler", "--scheduler-file", d.join("no/such/dir/s.json").to_str().unwrap(), "--host", "127.0.0.1"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot write scheduler file") && stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = taskfarm(&["scheduler", "--scheduler-file", d.join("s.json").to_str().unwrap(), "--host", "127.0.0.1", "--port", &port]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("cannot listen on 127.0.0.1:{port}")), "{}", stderr(&o));
    // A flag checked before connecting is a usage error, at once.
    let start = std::time::Instant::now();
    let o = taskfarm(&["worker", "--scheduler-file", d.join("none.json").to_str().unwrap(), "--nthreads", "0", "--death-timeout", "60s"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--nthreads must be at least 1") && start.elapsed() < std::time::Duration::from_secs(30), "{}", stderr(&o));
}

#[test]
fn output_that_cannot_be_written_is_an_error_and_a_closed_stderr_stops_nothing() {
    let d = TempDir::new("full");
    let g = d.write("g.json", r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#);
    for args in [vec!["run", g.to_str().unwrap()], vec!["functions"]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = std::process::Command::new(bin()).args(&args).stdout(full).output().unwrap();
        assert_eq!(o.status.code(), Some(4), "{args:?}: a lost result must not look like success: {}", stderr(&o));
        assert!(stderr(&o).contains("cannot write to standard output"), "{}", stderr(&o));
    }
    // Logging at debug with stderr closed: the run completes, prints its result, exits 0.
    let script = format!("exec 2>&-; TASKFARM_LOG=debug {} run {}", bin(), g.display());
    let o = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "{\"z\": 12}\n");
}
