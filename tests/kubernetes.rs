//! herald as it runs on Kubernetes: route scripts and the JWT public key reloaded from volumes
//! the way the kubelet (ConfigMap, Secret) and git-sync update them, readiness during a
//! shutdown, and the manifests in deploy/kubernetes/ rendered, validated against the
//! Kubernetes schemas, and their config checked by `herald check-config`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kubelet::{Checkout, Volume};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const TOPIC: &str = "scripted";

fn script(version: u32) -> Vec<u8> {
    format!("fn route(r) {{ #{{ user_id: r.value.to, payload: #{{ n: r.value.n, version: {version} }} }} }}").into_bytes()
}

/// A config whose topic `scripted` runs `script` (relative to the config's directory).
fn scripted_config(kafka: &Kafka, script: &str) -> String {
    with_kafka(&config_yaml(kafka, None, "routes: {reload_debounce_ms: 100}"), json!({"topics": [{"name": TOPIC, "script": script}]}))
}

/// Produces record `n` for ann and returns the script version that routed it.
async fn routed_by(kafka: &Kafka, c: &mut Clients, n: i64) -> i64 {
    kafka.produce_to(TOPIC, Some(0), None, json!({"to": "ann", "n": n}).to_string().as_bytes()).await;
    let p: Value = c.expect("ann", "notification").await;
    assert_eq!(p["n"], n, "records arrive in order, none lost");
    p["version"].as_i64().unwrap()
}

/// Waits until `series` reaches `value`; returns how long that took.
async fn reaches(h: &HeraldProcess, series: &str, value: f64) -> Duration {
    let since = Instant::now();
    eventually(Duration::from_secs(10), series, async || scrape(&h.url, series).await == value).await;
    since.elapsed()
}

const APPLIED: &str = "herald_route_reloads_total{result=\"applied\"}";
const REJECTED: &str = "herald_route_reloads_total{result=\"rejected\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_updates_reload_the_script_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let other: &[u8] = b"not a script: a second key of the same ConfigMap";
    let mut volume = Volume::create(&dir.path().join("routes"), &[("scripted.rhai", &script(1)), ("README", other)]);
    let kafka = Kafka::start(&[TOPIC]).await;
    let launch = Launch { dir: Some(dir.path().to_path_buf()), ..Launch::default() };
    let h = HeraldProcess::launch(&scripted_config(&kafka, "routes/scripted.rhai"), launch).await;
    let mut c = Clients::start().await;
    c.connect_as("ann", &h.url, "ann").await;
    assert_eq!(routed_by(&kafka, &mut c, 1).await, 1);

    // Two updates in a row: a watch that died with the first swap would miss the second.
    for (applied, version) in [(1.0, 2), (2.0, 3)] {
        volume.update(&[("scripted.rhai", &script(version)), ("README", other)]);
        let took = reaches(&h, APPLIED, applied).await;
        eprintln!("ConfigMap update {version} applied after {took:?}");
        assert!(took < Duration::from_secs(3), "applied within about a second: {took:?}");
        assert_eq!(routed_by(&kafka, &mut c, version.into()).await, version as i64);
    }

    // The script removed from the ConfigMap: rejected once, and the running version stays.
    volume.update(&[("README", other)]);
    eprintln!("removal rejected after {:?}", reaches(&h, REJECTED, 1.0).await);
    assert_eq!(routed_by(&kafka, &mut c, 4).await, 3, "the running version stays");
    // Another update to the volume that still lacks it is not a second rejection.
    volume.update(&[("README", b"changed")]);
    assert_eq!(routed_by(&kafka, &mut c, 5).await, 3);

    // Restored, with new content.
    volume.update(&[("scripted.rhai", &script(4)), ("README", other)]);
    eprintln!("restore applied after {:?}", reaches(&h, APPLIED, 3.0).await);
    assert_eq!(routed_by(&kafka, &mut c, 6).await, 4);
    assert_eq!(scrape(&h.url, REJECTED).await, 1.0, "the removal was counted once");
    assert_eq!(scrape(&h.url, APPLIED).await, 3.0);
    c.stop().await;
    assert!(h.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_sync_worktree_swap_reloads_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let mut checkout = Checkout::create(&dir.path().join("repo"), &[("routes/scripted.rhai", &script(1))]);
    let kafka = Kafka::start(&[TOPIC]).await;
    let launch = Launch { dir: Some(dir.path().to_path_buf()), ..Launch::default() };
    let h = HeraldProcess::launch(&scripted_config(&kafka, "repo/current/routes/scripted.rhai"), launch).await;
    let mut c = Clients::start().await;
    c.connect_as("ann", &h.url, "ann").await;
    assert_eq!(routed_by(&kafka, &mut c, 1).await, 1);
    for (applied, version) in [(1.0, 2), (2.0, 3)] {
        checkout.sync(&[("routes/scripted.rhai", &script(version))]);
        eprintln!("git-sync {version} applied after {:?}", reaches(&h, APPLIED, applied).await);
        assert_eq!(routed_by(&kafka, &mut c, version.into()).await, version as i64);
    }
    // An editor saving in place, in today's worktree, is seen too.
    std::fs::write(checkout.current().join("routes/scripted.rhai"), script(4)).unwrap();
    reaches(&h, APPLIED, 3.0).await;
    assert_eq!(routed_by(&kafka, &mut c, 4).await, 4);
    c.stop().await;
    assert!(h.terminate().await.success());
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)).unwrap()
}

fn rs256(private_key: &str, user: &str) -> String {
    let claims = json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600});
    encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(&fixture(private_key)).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_replaces_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut secret = Volume::create(&dir.path().join("keys"), &[("jwt.pub.pem", &fixture("rsa.pub.pem"))]);
    let kafka = Kafka::start(&[TOPIC]).await;
    let yaml = replace_section(
        &config_yaml(&kafka, None, "routes: {reload_debounce_ms: 100}"),
        "auth",
        "{jwt: {algorithms: [RS256], public_key_file: keys/jwt.pub.pem}}",
    );
    let h = HeraldProcess::launch(&yaml, Launch { dir: Some(dir.path().to_path_buf()), ..Launch::default() }).await;
    let mut c = Clients::start().await;
    let mut connect = async |id: &str, private_key: &str| c.connect(id, &h.url, json!({"auth": {"token": rs256(private_key, id)}})).await;
    connect("old-1", "rsa.pem").await.expect("the first key's tokens are accepted");

    secret.update(&[("jwt.pub.pem", &fixture("rsa2.pub.pem"))]);
    let took = reaches(&h, "herald_auth_key_reloads_total{result=\"applied\"}", 1.0).await;
    eprintln!("key rotation applied after {took:?}");
    connect("new-1", "rsa2.pem").await.expect("the new key's tokens are accepted after the swap");
    assert_eq!(connect("old-2", "rsa.pem").await, Err("invalid token".into()), "the old key is gone");

    // A bad key in the Secret: the key in use stays, and the rejection is counted once.
    secret.update(&[("jwt.pub.pem", b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")]);
    reaches(&h, "herald_auth_key_reloads_total{result=\"rejected\"}", 1.0).await;
    connect("new-2", "rsa2.pem").await.expect("the key in use stays");
    assert_eq!(scrape(&h.url, "herald_auth_key_reloads_total{result=\"applied\"}").await, 1.0);
    c.stop().await;
    assert!(h.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_readyz_unready_at_once_while_sockets_are_still_served() {
    let kafka = Kafka::start(&[common::TOPIC]).await;
    let mut h = HeraldProcess::start(&config_yaml(&kafka, None, "server: {drain_delay_secs: 3}")).await;
    let mut c = Clients::start().await;
    c.connect_as("ann", &h.url, "ann").await;

    h.signal("-TERM");
    let ready = reqwest::get(format!("{}/readyz", h.url)).await.expect("still serving");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    // Still delivering to the sockets it holds until the drain delay is over.
    kafka.notify("ann", json!({"during": "drain"})).await;
    assert_eq!(c.expect("ann", "notification").await["body"], json!({"during": "drain"}));
    assert!(c.disconnected("ann", Duration::from_secs(10)).await.is_some(), "then the sockets are closed");
    let status = tokio::time::timeout(Duration::from_secs(15), h.child.wait()).await.expect("herald exits").unwrap();
    assert!(status.success(), "{status:?}");
    c.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The manifests

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool the test command installs: on PATH, or in the tests' virtualenv.
fn tool(name: &str) -> PathBuf {
    let venv = root().join("tests/client/.venv/bin").join(name);
    if venv.exists() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join(name));
    on_path.into_iter().find(|p| p.exists()).unwrap_or_else(|| panic!("{name} is not installed: scripts/test.sh installs it"))
}

/// `kubectl kustomize DIR`, as objects.
fn render(dir: &str) -> Vec<Value> {
    let out = std::process::Command::new(tool("kubectl")).args(["kustomize", &root().join(dir).to_string_lossy()]).output().unwrap();
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let path = std::env::temp_dir().join(format!("herald-rendered-{}-{}.yaml", std::process::id(), dir.replace('/', "-")));
    std::fs::write(&path, &text).unwrap();
    // Every object against the schemas of the oldest Kubernetes the manifests are for (1.30:
    // the preStop sleep action) and the newest known; unknown fields are errors.
    for version in ["1.30.0", "1.37.0"] {
        let out = std::process::Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(&path)
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !said.contains("ERROR"), "{dir} against Kubernetes {version}:\n{said}");
    }
    std::fs::remove_file(path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}"))
}

#[tokio::test]
async fn manifests_render_validate_and_run_their_config() {
    let base = render("deploy/kubernetes/base");
    let production = render("deploy/kubernetes/overlays/production");
    for objects in [&base, &production] {
        check_deployment(objects);
        check_config_runs(objects).await;
    }
    // What the production overlay adds fits what the base defines.
    let service = find(&production, "Service", "herald");
    let port_name = &service["spec"]["ports"][0]["name"];
    let monitor = find(&production, "ServiceMonitor", "herald");
    assert_eq!(&monitor["spec"]["endpoints"][0]["port"], port_name);
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][key], value, "the ServiceMonitor selects the Service");
    }
    let ingress = find(&production, "Ingress", "herald");
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], service["metadata"]["name"]);
    assert_eq!(&backend["port"]["name"], port_name);
    let annotations = &ingress["metadata"]["annotations"];
    assert!(annotations.get("nginx.ingress.kubernetes.io/affinity").is_none(), "herald needs no affinity");
    assert!(service["spec"].get("sessionAffinity").is_none(), "herald needs no affinity");
    let read_timeout: u64 = annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"].as_str().unwrap().parse().unwrap();
    assert!(read_timeout > 45, "idle WebSockets outlive a heartbeat round");
    let hpa = find(&production, "HorizontalPodAutoscaler", "herald");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "herald");
    assert!(
        find(&production, "Deployment", "herald")["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with("/herald:0.1.0")
    );
}

/// The properties the README and the comments promise of the Deployment.
fn check_deployment(objects: &[Value]) {
    let deployment = find(objects, "Deployment", "herald");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(container["resources"]["requests"]["memory"].is_string() && container["resources"]["limits"]["memory"].is_string());
    assert!(!pod["topologySpreadConstraints"].as_array().unwrap().is_empty());
    assert!(deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "herald");

    // The routes ConfigMap is mounted by its fixed name (no hash), whole (no subPath): edits
    // reach running pods. The config's name carries a hash: a change rolls the pods.
    let volume = |name: &str| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["configMap"]["name"].clone();
    assert_eq!(volume("routes"), "herald-routes");
    assert_ne!(volume("config"), "herald-config", "the config's ConfigMap name carries its hash");
    find(objects, "ConfigMap", volume("config").as_str().unwrap());
    assert!(container["volumeMounts"].as_array().unwrap().iter().all(|m| m.get("subPath").is_none()), "subPath mounts never update");

    // The kubelet's countdown covers the preStop sleep and herald's own grace period.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().expect("a preStop sleep");
    let config: Value = serde_saphyr::from_str(config_text(objects)).unwrap();
    let grace = config["server"]["shutdown_grace_secs"].as_u64().unwrap() + config["server"]["drain_delay_secs"].as_u64().unwrap_or(0);
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination > pre_stop + grace, "terminationGracePeriodSeconds {termination} <= preStop {pre_stop} + grace {grace}");
}

fn config_text(objects: &[Value]) -> &str {
    find(objects, "ConfigMap", "herald-config")["data"]["config.yaml"].as_str().unwrap()
}

/// The rendered config and scripts, laid out as the pod mounts them, pass `herald
/// check-config` with the Deployment's environment.
async fn check_config_runs(objects: &[Value]) {
    let deployment = find(objects, "Deployment", "herald");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| mounts.iter().find(|m| m["name"] == volume).unwrap()["mountPath"].as_str().unwrap().to_owned();
    let pod_root = tempfile::tempdir().unwrap();
    let at = |path: &str| pod_root.path().join(path.trim_start_matches('/'));
    for (volume, configmap) in [("config", config_map_name(deployment, "config")), ("routes", "herald-routes".into())] {
        let dir = at(&mount_of(volume));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in find(objects, "ConfigMap", &configmap)["data"].as_object().unwrap() {
            std::fs::write(dir.join(file), content.as_str().unwrap()).unwrap();
        }
    }
    let mut command = herald(&["check-config"]);
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap();
        let value = match var["value"].as_str() {
            Some(value) if name == "HERALD_CONFIG" => at(value).to_string_lossy().into_owned(),
            Some(value) => value.to_owned(),
            None => "a-secret-from-the-secret-of-at-least-16-characters".into(), // secretKeyRef
        };
        command.env(name, value);
    }
    let out = command.output().await.unwrap();
    assert!(out.status.success(), "check-config: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn config_map_name(deployment: &Value, volume: &str) -> String {
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    volumes.iter().find(|v| v["name"] == volume).unwrap()["configMap"]["name"].as_str().unwrap().to_owned()
}
