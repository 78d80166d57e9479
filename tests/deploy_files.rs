//! Checks on the deployment files (Dockerfile, docker-compose.yml, deploy/): the Grafana
//! dashboard only queries metrics herald exports, and the compose stack, the Prometheus config
//! and the image keep the properties the README relies on. No Docker engine is needed.

use std::collections::BTreeSet;
use std::path::Path;

use herald::metrics::{CATALOG, DELIVERY_LATENCY, Kind};
use serde_json::Value;

const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `herald_[a-z_]+` identifier in a PromQL expression.
fn herald_identifiers(expr: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("herald_") {
        let preceded_by_ident = rest[..start].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let len = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
        if !preceded_by_ident {
            found.push(&tail[..len]);
        }
        rest = &tail[len..];
    }
    found
}

/// The exported metric a series name belongs to: itself, or a histogram for its suffixed series.
fn metric_of(series: &str) -> Option<&'static str> {
    let histogram = |name: &str| CATALOG.iter().find(|m| m.name == name && m.kind == Kind::Histogram).map(|m| m.name);
    if let Some(m) = CATALOG.iter().find(|m| m.name == series && m.kind != Kind::Histogram) {
        return Some(m.name);
    }
    HISTOGRAM_SUFFIXES.iter().filter_map(|s| series.strip_suffix(s)).find_map(histogram)
}

/// Every PromQL expression of the dashboard: panel targets (rows included) and variable queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(target["expr"].as_str().expect("every target has an expr").to_owned());
            }
            walk(&panel["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let query = &var["query"];
        if let Some(q) = query.as_str().or(query["query"].as_str()) {
            exprs.push(q.to_owned());
        }
    }
    exprs
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/dashboards/herald.json")).expect("dashboard is JSON");
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for expr in dashboard_exprs(&dashboard) {
        for series in herald_identifiers(&expr) {
            match metric_of(series) {
                Some(metric) => {
                    used.insert(metric);
                }
                None => unknown.push(format!("{series} (in `{expr}`)")),
            }
        }
    }
    assert!(unknown.is_empty(), "dashboard queries series herald does not export:\n{}", unknown.join("\n"));
    assert!(used.len() >= 8, "only {} distinct herald metrics used: {used:?}", used.len());

    // Panels must point at the datasource Grafana is provisioned with.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uids: Vec<&str> = datasources["datasources"].as_array().unwrap().iter().filter_map(|d| d["uid"].as_str()).collect();
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        let uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
        assert!(uids.contains(&uid), "panel {:?} uses datasource {uid:?}, provisioned: {uids:?}", panel["title"]);
    }
}

#[test]
fn identifier_extraction() {
    assert_eq!(
        herald_identifiers(r#"histogram_quantile(0.9, sum by (le) (rate(herald_delivery_latency_seconds_bucket{job="herald"}[1m])))"#),
        ["herald_delivery_latency_seconds_bucket"]
    );
    assert_eq!(herald_identifiers("not_herald_x + herald_gateway_users"), ["herald_gateway_users"]);
    assert_eq!(metric_of("herald_delivery_latency_seconds_count"), Some(DELIVERY_LATENCY));
    assert_eq!(metric_of("herald_delivery_latency_seconds"), None, "a histogram has no bare series");
    assert_eq!(metric_of("herald_gateway_sockets_count"), None, "only histograms have suffixed series");
    assert_eq!(metric_of("herald_gateway_sockets"), Some("herald_gateway_sockets"));
}

#[test]
fn compose_runs_two_heralds_on_kraft_with_monitoring() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    for name in ["kafka", "redis", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "no `{name}` service");
    }
    let roles = services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str().unwrap_or_default();
    assert!(roles.contains("controller"), "Kafka is not a KRaft controller: KAFKA_PROCESS_ROLES={roles:?}");
    assert!(!services.keys().any(|k| k.contains("zookeeper")), "KRaft needs no ZooKeeper");

    let heralds: Vec<&String> = services.keys().filter(|k| k.starts_with("herald")).collect();
    assert!(heralds.len() >= 2, "want two herald services, found {heralds:?}");
    let mut host_ports = BTreeSet::new();
    for name in &heralds {
        let service = &services[name.as_str()];
        let env = &service["environment"];
        assert_eq!(env["HERALD_KAFKA_BROKERS"], "kafka:9092", "{name}");
        assert_eq!(env["HERALD_REDIS_URL"], "redis://redis:6379", "{name}");
        assert!(env["HERALD_JWT_SECRET"].as_str().is_some_and(|s| s.starts_with("${HERALD_JWT_SECRET")), "{name}");
        assert!(service["healthcheck"].is_object(), "{name} has no healthcheck");
        assert!(service["depends_on"].is_object(), "{name} has no depends_on");
        let ports = service["ports"].as_array().unwrap_or_else(|| panic!("{name} publishes no port"));
        host_ports.extend(ports.iter().filter_map(|p| p.as_str()?.split(':').next()));
    }
    assert_eq!(host_ports.len(), heralds.len(), "each herald needs its own host port: {host_ports:?}");

    // Prometheus scrapes every herald service on its in-network port.
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let targets: Vec<&str> = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| job["static_configs"].as_array().into_iter().flatten())
        .flat_map(|sc| sc["targets"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for name in &heralds {
        assert!(targets.contains(&format!("{name}:3000").as_str()), "Prometheus does not scrape {name}:3000 ({targets:?})");
    }
}

#[test]
fn dockerfile_runs_unprivileged_with_health_check() {
    let dockerfile = read("Dockerfile");
    // Instructions of the final stage, continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    let last_stage = joined.rsplit_once("\nFROM ").expect("a multi-stage build").1;
    let instructions: Vec<&str> = last_stage.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let find = |keyword: &str| instructions.iter().rev().find(|l| l.starts_with(keyword)).copied();

    let user = find("USER ").expect("the runtime stage sets a USER");
    let user = user["USER ".len()..].trim();
    assert!(!["root", "0"].contains(&user.split(':').next().unwrap()), "runs as root: {user}");

    let healthcheck = find("HEALTHCHECK ").expect("a HEALTHCHECK");
    assert!(healthcheck.contains("/healthz"), "{healthcheck}");

    let entrypoint = find("ENTRYPOINT ").expect("an ENTRYPOINT");
    assert!(entrypoint["ENTRYPOINT ".len()..].trim().starts_with("[\""), "ENTRYPOINT must be in exec form: {entrypoint}");
}

/// The Dockerfile caches dependencies by building stub sources: every workspace member's
/// manifest must be copied in and every bench target a manifest declares needs its stub, or
/// `docker build` fails at that step.
#[test]
fn dockerfile_stubs_every_member_and_bench_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let members = cargo.split("members = [").nth(1).expect("a [workspace] with members").split(']').next().unwrap();
    let members: Vec<&str> = members.split('"').skip(1).step_by(2).collect();
    assert!(members.len() > 1, "{members:?}");
    let mut benches = 0;
    for member in members {
        let prefix = if member == "." { String::new() } else { format!("{member}/") };
        if member != "." {
            assert!(dockerfile.contains(&format!("COPY {member}/Cargo.toml")), "Dockerfile does not copy {member}/Cargo.toml");
        }
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        for bench in manifest.split("[[bench]]").skip(1).filter_map(|s| s.split('"').nth(1)) {
            benches += 1;
            let stub = format!("> {prefix}benches/{bench}.rs");
            assert!(dockerfile.contains(&stub), "Dockerfile has no stub for bench `{bench}` of `{member}` ({stub})");
        }
    }
    assert!(benches > 0);
}

/// Every file the code compiles in (`include_str!`, `include_bytes!`) reaches the builder stage:
/// copied by a `COPY` there and not kept out by `.dockerignore`, or `docker build` fails.
#[test]
fn dockerfile_copies_every_file_compiled_in() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let builder = dockerfile.split("\nFROM ").find(|stage| stage.contains(" AS builder")).expect("a builder stage");
    let copied: Vec<String> = builder
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|args| !args.contains("--from"))
        .flat_map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            words[..words.len() - 1].iter().map(|w| w.trim_end_matches('/').to_owned()).collect::<Vec<_>>()
        })
        .collect();
    let ignored: Vec<String> =
        read(".dockerignore").lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();

    let mut included = Vec::new();
    let mut sources = vec![root.join("src"), root.join("crates")];
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let calls = ["include_str!(\"", "include_bytes!(\""];
            for rest in calls.iter().flat_map(|call| text.split(call).skip(1)) {
                let relative = rest.split('"').next().unwrap();
                let resolved = path.parent().unwrap().join(relative);
                let resolved = resolved.canonicalize().unwrap_or_else(|e| panic!("{}: {relative}: {e}", path.display()));
                included.push(resolved.strip_prefix(root.canonicalize().unwrap()).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(included.iter().any(|p| p == "docs/openapi.yaml"), "found: {included:?}");
    for file in &included {
        assert!(copied.iter().any(|c| file == c || file.starts_with(&format!("{c}/"))), "the builder stage does not COPY {file}");
        let kept_out = ignored.iter().find(|pattern| {
            let pattern = pattern.trim_start_matches("**/").trim_start_matches('/');
            match pattern.strip_prefix('*') {
                Some(suffix) => file.ends_with(suffix),
                None => file == pattern.trim_end_matches('/') || file.starts_with(pattern) || file.contains(&format!("/{pattern}")),
            }
        });
        assert!(kept_out.is_none(), ".dockerignore keeps {file} out of the build ({kept_out:?})");
    }
}

/// The builder compiles the dependencies from the manifest alone before it copies the sources,
/// so that layer is reused until Cargo.lock changes; the runtime image carries the config and
/// the route scripts in /etc/herald, where the README says to mount your own.
#[test]
fn dockerfile_caches_dependencies_and_ships_config_and_routes() {
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let builder = dockerfile.split("\nFROM ").find(|stage| stage.contains(" AS builder")).expect("a builder stage");
    let position = |needle: &str| builder.find(needle).unwrap_or_else(|| panic!("the builder stage has no `{needle}`"));
    let manifest = position("COPY Cargo.toml Cargo.lock");
    let sources = position("COPY src ");
    let first_build = position("cargo build --release --locked");
    assert!(manifest < first_build && first_build < sources, "dependencies are built before the sources are copied");
    let runtime = dockerfile.rsplit_once("\nFROM ").unwrap().1;
    assert!(runtime.contains("COPY config.yaml /etc/herald/config.yaml"), "the runtime image has no config");
    assert!(runtime.contains("COPY routes /etc/herald/routes"), "the runtime image has no route scripts");
    assert!(runtime.contains("HERALD_CONFIG=/etc/herald/config.yaml"), "subcommands find the config");
    assert!(read("README.md").contains("/etc/herald"), "the README says where to mount config and routes");
}
