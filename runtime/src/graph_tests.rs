//! Tests of the graph format (runtime/src/graph.rs).

use super::*;

fn builtin(name: &str) -> bool {
    ["inc", "add", "noop", "sum", "list", "identity"].contains(&name)
}

fn parse(s: &str) -> Result<Graph, GraphError> {
    Graph::from_json(s, &builtin)
}

#[test]
fn integers_are_exact_or_refused_and_the_empty_key_is_refused() {
    // Within i64::MIN..=u64::MAX: kept as written.
    let g = parse(r#"{"a": 18446744073709551615, "b": -9223372036854775808, "c": {"value": [9223372036854775808]}, "f": 1e19, "s": "99999999999999999999"}"#).unwrap();
    assert_eq!(g.len(), 5);
    // Outside: refused with the place and the literal, wherever it is.
    for (text, col, lit) in [
        (r#"{"a": 18446744073709551616}"#, 7, "18446744073709551616"),
        (r#"{"a": ["inc", -9223372036854775809]}"#, 15, "-9223372036854775809"),
        ("{\"ok\": 1,\n \"a\": {\"value\": {\"k\": [1, 123456789012345678901234567890]}}}", 27, "123456789012345678901234567890"),
    ] {
        let e = parse(text).unwrap_err();
        let line = if text.contains('\n') { 2 } else { 1 };
        assert_eq!(e, GraphError::Integer { line, column: col, message: e.to_string().split_once(": ").unwrap().1.to_string() }, "{text}");
        assert!(e.to_string().contains(&format!("the integer {lit} is outside the range")), "{e}");
    }
    // A float literal of the same size is a float, not an error.
    assert!(parse(r#"{"a": 1.8446744073709552e19, "b": -1e30}"#).is_ok());
    let e = parse(r#"{"": 1}"#).unwrap_err();
    assert!(e.to_string().contains("the empty key \"\" is not allowed"), "{e}");
}

#[test]
fn cull_keeps_what_the_keys_need() {
    let g = parse(r#"{"a": 1, "b": ["inc", "a"], "c": ["inc", "b"], "x": 5, "y": ["add", "x", "a"]}"#).unwrap();
    let g = g.cull(&["c".to_string()]);
    let keys: Vec<&str> = g.tasks.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(g.dep_ids, vec![vec![], vec![0], vec![1]]);
    assert!(g.get("c").is_some() && g.get("y").is_none());
    assert_eq!(g.output_keys(), ["c"]);
}

fn spec(g: &Graph, k: &str) -> Expr {
    bincode::deserialize(&g.get(k).unwrap().spec).unwrap()
}

#[test]
fn a_task_with_many_dependencies_numbers_each_once() {
    let mut g = serde_json::Map::new();
    let mut list = vec![Json::from("list")];
    for i in 0..100 {
        g.insert(format!("x{i}"), Json::from(i));
        list.push(Json::from(format!("x{i}")));
    }
    // repeats, before and after the switch from linear search to lookup
    list.extend(["x5", "x50", "x99", "x0"].map(Json::from));
    g.insert("all".into(), Json::Array(list));
    let g = parse(&Json::Object(g).to_string()).unwrap();
    let all = g.get("all").unwrap();
    assert_eq!(all.deps.len(), 100);
    assert!(all.deps.iter().enumerate().all(|(i, d)| *d == format!("x{i}")));
    let Expr::Call(_, items) = spec(&g, "all") else { panic!("a call of list") };
    let refs: Vec<Expr> = items[100..].to_vec();
    assert_eq!(refs, vec![Expr::Ref(5), Expr::Ref(50), Expr::Ref(99), Expr::Ref(0)]);
}

#[test]
fn seed_graph_parses() {
    let g = parse(r#"{"x": 1, "y": ["inc", "x"], "z": ["add", "y", 10]}"#).unwrap();
    assert_eq!(g.len(), 3);
    assert_eq!(spec(&g, "x"), Expr::Lit("1".into()));
    assert_eq!(spec(&g, "y"), Expr::Call("inc".into(), vec![Expr::Ref(0)]));
    assert_eq!(g.get("y").unwrap().deps, vec!["x"]);
    assert_eq!(spec(&g, "z"), Expr::Call("add".into(), vec![Expr::Ref(0), Expr::Lit("10".into())]));
    assert_eq!(g.output_keys(), vec!["z"]);
    // dependencies are ordered before dependents
    let o = |k: &str| g.get(k).unwrap().order;
    assert!(o("x") < o("y") && o("y") < o("z"));
}

#[test]
fn nesting_lists_and_strings() {
    let g = parse(r#"{"a": 2, "b": ["add", ["inc", "a"], "a"], "c": [1, "a", "text"], "d": "a", "e": "hello"}"#).unwrap();
    assert_eq!(spec(&g, "b"), Expr::Call("add".into(), vec![Expr::Call("inc".into(), vec![Expr::Ref(0)]), Expr::Ref(0)]));
    assert_eq!(g.get("b").unwrap().deps, vec!["a"]);
    assert_eq!(spec(&g, "c"), Expr::List(vec![Expr::Lit("1".into()), Expr::Ref(0), Expr::Lit("\"text\"".into())]));
    assert_eq!(spec(&g, "d"), Expr::Ref(0));
    assert_eq!(spec(&g, "e"), Expr::Lit("\"hello\"".into()));
    assert_eq!(g.output_keys(), vec!["b", "c", "d", "e"]);
}

#[test]
fn long_form_and_annotations() {
    let g = parse(
        r#"{"a": 1, "b": {"cmd": ["echo", "a"], "env": {"X": "a"}, "stdin": "a", "priority": 3, "retries": 2,
             "resources": {"gpus": 1}, "workers": "w1", "timeout": "1m"},
            "c": {"task": ["noop"], "deps": ["b"]}, "d": {"value": {"k": "a"}}}"#,
    )
    .unwrap();
    let b = g.get("b").unwrap();
    assert_eq!(b.annotations.priority, 3);
    assert_eq!(b.annotations.retries, 2);
    assert_eq!(b.annotations.resources, vec![("gpus".to_string(), 1.0)]);
    assert_eq!(b.annotations.workers, vec!["w1"]);
    assert_eq!(b.annotations.timeout, Some(60.0));
    match spec(&g, "b") {
        Expr::Cmd(c) => {
            assert_eq!(c.argv, vec![Expr::Lit("\"echo\"".into()), Expr::Ref(0)]);
            assert_eq!(c.stdin, Some(Expr::Ref(0)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.get("c").unwrap().deps, vec!["b"]);
    assert_eq!(spec(&g, "d"), Expr::Lit(r#"{"k":"a"}"#.into()));
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (r#"{"a": ["incc", 1]}"#, "task 'a': unknown function 'incc'"),
        (r#"{"a": {"task": 1, "colour": 2}}"#, "task 'a': unknown field 'colour'"),
        (r#"{"a": {"task": 1, "cmd": ["x"]}}"#, "exactly one of"),
        (r#"{"a": {"task": 1, "deps": ["zz"]}}"#, "dependency 'zz'"),
        (r#"{"a": {"cmd": "echo hi"}}"#, "not a string"),
        (r#"{"a": {"task": 1, "retries": -1}}"#, "\"retries\" must be"),
        (r#"{"a": {"task": 1, "timeout": "soon"}}"#, "\"timeout\" must be"),
        (r#"[1, 2]"#, "must be a JSON object"),
        (r#"{"a": 1, "b": ["inc", "a"], "a": 2}"#, "task 'a': appears twice in the graph"),
        ("  \n {\"a\": 1} trailing", "malformed JSON at line 2, column 11: trailing characters"),
    ];
    for (text, want) in cases {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: got {e}");
    }
}

#[test]
fn malformed_json_has_line_and_column() {
    let e = parse("{\"a\": 1,\n \"b\": [}").unwrap_err();
    match &e {
        GraphError::Json { line, column, .. } => assert_eq!((*line, *column), (2, 8)),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().starts_with("malformed JSON at line 2, column 8"));
}

#[test]
fn cycles_are_named() {
    let e = parse(r#"{"a": ["inc", "c"], "b": ["inc", "a"], "c": ["inc", "b"], "d": 1}"#).unwrap_err();
    match e {
        GraphError::Cycle(keys) => {
            assert_eq!(keys.len(), 4);
            assert_eq!(keys.first(), keys.last());
            for k in ["a", "b", "c"] {
                assert!(keys.contains(&k.to_string()));
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse(r#"{"a": ["inc", "a"]}"#), Err(GraphError::Cycle(k)) if k == ["a", "a"]));
}

#[test]
fn requested_keys_must_exist() {
    let g = parse(r#"{"a": 1}"#).unwrap();
    assert!(g.check_keys(&["a".into()]).is_ok());
    assert_eq!(g.check_keys(&["b".into()]).unwrap_err().to_string(), "requested key 'b' is not a key of the graph");
}

#[test]
fn order_is_a_permutation_and_respects_dependencies() {
    let mut text = String::from("{");
    for i in 0..50 {
        text.push_str(&format!("\"l{i}\": {i}, "));
    }
    for i in 0..25 {
        text.push_str(&format!("\"s{i}\": [\"add\", \"l{}\", \"l{}\"], ", 2 * i, 2 * i + 1));
    }
    text.push_str("\"t\": [\"sum\", [");
    text.push_str(&(0..25).map(|i| format!("\"s{i}\"")).collect::<Vec<_>>().join(", "));
    text.push_str("]]}");
    let g = parse(&text).unwrap();
    let mut orders: Vec<u32> = g.tasks.iter().map(|t| t.order).collect();
    orders.sort();
    assert_eq!(orders, (0..g.len() as u32).collect::<Vec<_>>());
    for t in &g.tasks {
        for d in &t.deps {
            assert!(g.get(d).unwrap().order < t.order);
        }
    }
    // depth first: s0's leaves are right before s0
    assert_eq!(g.get("s0").unwrap().order, 2);
}
