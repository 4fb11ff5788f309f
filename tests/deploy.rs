//! `deploy/`, checked as far as a machine without Docker or Kubernetes
//! can: every YAML file parses, the manifests agree with each other and
//! with leadscore's settings, the ConfigMap's configuration passes `check`,
//! and promtool accepts the Prometheus configuration and alert rules. (That
//! every metric the dashboard and alerts query exists is checked against a
//! real scrape in `tests/ops.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

mod common;
use common::promtool;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
}

fn load(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_yaml_file_parses() {
    let mut files = Vec::new();
    yaml_files(&deploy(""), &mut files);
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!docs.is_empty(), "{} is empty", file.display());
    }
}

#[test]
fn kubernetes_manifests_agree_with_leadscore() {
    let configmap = &load("kubernetes/configmap.yaml")[0];
    let toml = configmap["data"]["leadscore.toml"].as_str().unwrap();
    let config = leadscore::config::parse(toml, Path::new("configmap.yaml"), &[])
        .unwrap_or_else(|e| panic!("the ConfigMap's configuration fails check: {e}"));
    let port: i64 = config
        .http
        .listen
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(
        config.http.listen.starts_with("0.0.0.0:"),
        "reachable by probes"
    );

    let deployment = &load("kubernetes/deployment.yaml")[0];
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(port));
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"].as_str(),
        configmap["metadata"]["name"].as_str()
    );
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        ["run", "--config", &format!("{mount}/leadscore.toml")]
    );
    // The query API's token comes from a Secret (the API is off without it).
    let token = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("LEADSCORE_HTTP_TOKEN"))
        .expect("LEADSCORE_HTTP_TOKEN in the container's env");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["key"].as_str(),
        Some("query-token")
    );
    let selector = &deployment["spec"]["selector"]["matchLabels"];

    for (file, kind) in [
        ("kubernetes/service.yaml", "Service"),
        ("kubernetes/pdb.yaml", "PodDisruptionBudget"),
        ("kubernetes/hpa.yaml", "HorizontalPodAutoscaler"),
    ] {
        let doc = &load(file)[0];
        assert_eq!(doc["kind"].as_str(), Some(kind), "{file}");
        let targets_pods = match kind {
            "Service" => &doc["spec"]["selector"],
            "PodDisruptionBudget" => &doc["spec"]["selector"]["matchLabels"],
            _ => &Yaml::Null,
        };
        if !targets_pods.is_null() {
            assert_eq!(targets_pods, selector, "{file} selects the pods");
        }
    }
    let hpa = &load("kubernetes/hpa.yaml")[0];
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        deployment["metadata"]["name"].as_str()
    );
    let service = &load("kubernetes/service.yaml")[0];
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(port));

    let kustomization = &load("kubernetes/kustomization.yaml")[0];
    for resource in kustomization["resources"].as_vec().unwrap() {
        let name = resource.as_str().unwrap();
        assert!(
            deploy(&format!("kubernetes/{name}")).exists(),
            "{name} listed"
        );
    }
}

#[test]
fn compose_wires_kafka_leadscore_prometheus_and_grafana() {
    let compose = &load("compose.yaml")[0];
    let services = &compose["services"];
    for name in ["kafka", "leadscore", "prometheus", "grafana"] {
        assert!(!services[name].is_badvalue(), "service {name}");
    }
    let leadscore = &services["leadscore"];
    assert_eq!(
        leadscore["environment"]["LEADSCORE_KAFKA_BOOTSTRAP_SERVERS"].as_str(),
        Some("kafka:9092")
    );
    let dockerfile = leadscore["build"]["dockerfile"].as_str().unwrap();
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dockerfile)
        .exists());
    let prometheus = &load("prometheus/prometheus.yml")[0];
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("leadscore:9464")
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/dashboards/leadscore.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
}

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules() {
    for (what, file) in [
        ("rules", "prometheus/alerts.yml"),
        ("config", "prometheus/prometheus.yml"),
    ] {
        let out = Command::new(promtool())
            .args(["check", what])
            .arg(deploy(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check {what} {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
