//! Route scripts: a sandboxed Rhai engine, compiled scripts, and one call per record.
//!
//! Scripts are compiled once (at start-up or reload) and the compiled form is evaluated per
//! record. The sandbox has no file, network or process access (no module imports, no `eval`),
//! and every call is bounded in operations, call depth, data sizes and wall-clock time.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Position, Scope};

use super::record::Record;

/// Bounds on one script call.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_operations: u64,
    pub timeout: Duration,
}

/// Fixed bounds: generous for routing, tight enough that a runaway script is stopped at once.
const MAX_CALL_DEPTH: usize = 32;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_STRING_BYTES: usize = 1 << 20;
const MAX_COLLECTION_LEN: usize = 100_000;
/// How many operations pass between wall-clock checks (reading the clock costs ~20 ns).
const CLOCK_CHECK_EVERY: u64 = 256;

thread_local! {
    /// The deadline of the script call running on this thread.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The sandboxed engine every script runs in.
pub fn engine(limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
        .disable_symbol("eval")
        .set_strict_variables(true)
        // Interning map keys costs more than it saves for short-lived per-record values.
        .set_max_strings_interned(0)
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(MAX_CALL_DEPTH)
        .set_max_expr_depths(MAX_EXPR_DEPTH, MAX_EXPR_DEPTH)
        .set_max_string_size(MAX_STRING_BYTES)
        .set_max_array_size(MAX_COLLECTION_LEN)
        .set_max_map_size(MAX_COLLECTION_LEN)
        .on_print(|text| tracing::debug!(target: "herald::route::script", "{text}"))
        .on_debug(|text, source, pos| tracing::debug!(target: "herald::route::script", source, line = pos.line(), "{text}"))
        .on_progress(|ops| {
            if ops % CLOCK_CHECK_EVERY == 0 && DEADLINE.get().is_some_and(|d| Instant::now() > d) {
                return Some(Dynamic::from("timeout"));
            }
            None
        });
    // Native helpers for what every route does and Rhai's interpreter does slowly, key by key.
    engine.register_fn("remove_keys_starting_with", remove_keys_starting_with);
    engine
}

/// `map.remove_keys_starting_with("_")`: drops internal fields in one native pass, where a
/// `for key in map.keys()` loop costs an interpreted call or two per key.
fn remove_keys_starting_with(map: &mut Map, prefix: &str) {
    map.retain(|key, _| !key.starts_with(prefix));
}

/// A compiled route script.
pub struct Script {
    /// The file name, used as the `route` metric label.
    pub name: String,
    pub path: PathBuf,
    /// The source it was compiled from, to skip reloads that change nothing.
    pub source: String,
    ast: AST,
}

impl Script {
    /// Reads and compiles a script; the error names `file:line:col`.
    pub fn load(engine: &Engine, path: &Path) -> Result<Self, String> {
        let source = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::compile(engine, path, source)
    }

    pub fn compile(engine: &Engine, path: &Path, source: String) -> Result<Self, String> {
        let ast = engine.compile(&source).map_err(|e| format!("{}: {}", at(path, e.position()), e.err_type()))?;
        if !ast.iter_functions().any(|f| f.name == "route" && f.params.len() == 1) {
            return Err(format!("{}: the script must define `fn route(record)`", path.display()));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Self { name, path: path.to_path_buf(), source, ast })
    }

    /// Calls `route(record)`. Errors and limit hits come back as text naming `file:line:col`.
    pub fn call(&self, engine: &Engine, limits: &Limits, record: &Record<'_>) -> Result<Dynamic, String> {
        let arg = record_to_dynamic(record);
        DEADLINE.set(Some(Instant::now() + limits.timeout));
        let result =
            engine.call_fn_with_options::<Dynamic>(CallFnOptions::new().eval_ast(false), &mut Scope::new(), &self.ast, "route", (arg,));
        DEADLINE.set(None);
        result.map_err(|e| self.describe(&e, limits))
    }

    fn describe(&self, error: &EvalAltResult, limits: &Limits) -> String {
        let position = at(&self.path, innermost_position(error));
        match error {
            EvalAltResult::ErrorTerminated(..) => format!("{position}: exceeded the {} ms time budget", limits.timeout.as_millis()),
            EvalAltResult::ErrorTooManyOperations(..) => format!("{position}: exceeded {} operations", limits.max_operations),
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => self.describe(inner, limits),
            other => format!("{position}: {}", other.to_string().split(" (line ").next().unwrap_or_default()),
        }
    }
}

/// The position where an error really happened (inside the function, not at its call).
fn innermost_position(error: &EvalAltResult) -> Position {
    match error {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) => innermost_position(inner),
        other => other.position(),
    }
}

fn at(path: &Path, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(line), Some(col)) => format!("{}:{line}:{col}", path.display()),
        (Some(line), None) => format!("{}:{line}", path.display()),
        _ => path.display().to_string(),
    }
}

/// The `record` argument: topic, partition, offset, key, headers, timestamp, value.
fn record_to_dynamic(record: &Record<'_>) -> Dynamic {
    let key = record.key.map(|k| Dynamic::from(String::from_utf8_lossy(k).into_owned())).unwrap_or(Dynamic::UNIT);
    let headers: Map = record.headers.iter().map(|(k, v)| ((*k).into(), Dynamic::from(String::from_utf8_lossy(v).into_owned()))).collect();
    let value = match record.value.map(std::str::from_utf8) {
        None => Dynamic::UNIT,
        Some(Ok(text)) => super::json::to_dynamic(text).unwrap_or_else(|_| text.into()),
        Some(Err(_)) => Dynamic::from(String::from_utf8_lossy(record.value.unwrap_or_default()).into_owned()),
    };
    // In key order, so the map is bulk-built rather than inserted into field by field.
    let fields = [
        ("headers", headers.into()),
        ("key", key),
        ("offset", record.offset.into()),
        ("partition", (record.partition as i64).into()),
        ("timestamp", record.timestamp_ms.map(Dynamic::from).unwrap_or(Dynamic::UNIT)),
        ("topic", record.topic.into()),
        ("value", value),
    ];
    Dynamic::from_map(fields.into_iter().map(|(name, field)| (name.into(), field)).collect::<Map>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time budget no test script reaches: what stops a runaway is then the operations limit
    /// (or a fixed bound), never the clock, whatever the machine's speed.
    fn limits() -> Limits {
        Limits { max_operations: 100_000, timeout: Duration::from_secs(60) }
    }

    fn record(value: &[u8]) -> Record<'_> {
        Record {
            topic: "t",
            partition: 1,
            offset: 2,
            key: Some(b"k"),
            value: Some(value),
            timestamp_ms: Some(3),
            headers: &[],
            trace: None,
        }
    }

    fn run(source: &str, value: &[u8]) -> Result<Dynamic, String> {
        let e = engine(&limits());
        let s = Script::compile(&e, Path::new("r.rhai"), source.into())?;
        s.call(&e, &limits(), &record(value))
    }

    #[test]
    fn sees_every_record_field() {
        let out =
            run("fn route(r) { `${r.topic}/${r.partition}/${r.offset}/${r.key}/${r.timestamp}/${r.value.a}` }", br#"{"a":[1,2]}"#).unwrap();
        assert_eq!(out.into_string().unwrap(), "t/1/2/k/3/[1, 2]");
        let raw = run("fn route(r) { r.value }", b"not json").unwrap();
        assert_eq!(raw.into_string().unwrap(), "not json");
    }

    #[test]
    fn removes_keys_by_prefix_natively() {
        let out = run(r#"fn route(r) { let v = r.value; v.remove_keys_starting_with("_"); v }"#, br#"{"_a":1,"b":{"_c":2},"_":3}"#);
        let map = out.unwrap().cast::<Map>();
        assert_eq!(map.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["b"], "top level only");
    }

    #[test]
    fn compile_errors_name_file_line_and_column() {
        let e = engine(&limits());
        let err = Script::compile(&e, Path::new("routes/x.rhai"), "fn route(r) {\n  usr.id\n}".into()).err().unwrap();
        assert!(err.starts_with("routes/x.rhai:2:3: "), "{err}");
        let err = Script::compile(&e, Path::new("x.rhai"), "fn other(r) { 1 }".into()).err().unwrap();
        assert!(err.contains("must define `fn route(record)`"), "{err}");
    }

    #[test]
    fn runtime_errors_name_the_line_inside_route() {
        let err = run("fn route(r) {\n  let x = 1;\n  x.nope()\n}", b"{}").unwrap_err();
        assert!(err.starts_with("r.rhai:3:"), "{err}");
    }

    #[test]
    fn runaway_scripts_are_stopped() {
        let err = run("fn route(r) { loop { } }", b"{}").unwrap_err();
        assert!(err.ends_with("exceeded 100000 operations"), "the operations limit: {err}");
        let err = run("fn f(n) { f(n + 1) } fn route(r) { f(0) }", b"{}").unwrap_err();
        assert!(err.contains("Stack overflow"), "the call depth limit: {err}");
        let err = run("fn route(r) { let s = \"x\"; loop { s += s; } }", b"{}").unwrap_err();
        assert!(err.contains("Length of string too large"), "the string size limit: {err}");
    }

    #[test]
    fn the_wall_clock_budget_stops_slow_scripts() {
        let e = engine(&Limits { max_operations: u64::MAX / 2, timeout: Duration::from_millis(20) });
        let s = Script::compile(&e, Path::new("slow.rhai"), "fn route(r) { loop { } }".into()).unwrap();
        let started = Instant::now();
        let err = s.call(&e, &Limits { max_operations: u64::MAX / 2, timeout: Duration::from_millis(20) }, &record(b"{}")).unwrap_err();
        assert!(err.contains("time budget"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_sandbox_has_no_imports_or_eval() {
        let e = engine(&limits());
        assert!(Script::compile(&e, Path::new("x.rhai"), "fn route(r) { eval(\"1\") }".into()).is_err());
        let err = run("fn route(r) { import \"/etc/hostname\" as h; h::x }", b"{}").unwrap_err();
        assert!(err.contains("Module not found: /etc/hostname"), "imports resolve to nothing: {err}");
    }
}
