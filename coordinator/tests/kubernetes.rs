//! The Kubernetes manifests as a cluster would take them: every overlay builds with
//! `kubectl kustomize` (gpu-cluster from its `.example` env file), every built object validates
//! in strict mode (unknown fields refused) against the schemas of the oldest Kubernetes the
//! README supports and the newest `kubernetes-validate` carries, and the KEDA ScaledObject,
//! the one custom resource, against the fields KEDA 2.16 documents
//! (`deploy/tests/keda-2.16-scaledobject.schema.json`).

use std::process::Command;

use serde_json::{json, Value};
use tempfile::TempDir;
use tessera_tests::dependency;
use tessera_tests::deploy::{deploy_dir, kustomize, overlays};

/// The oldest Kubernetes the README supports (KEDA 2.16's oldest) and the newest
/// `kubernetes-validate` has schemas for.
const KUBERNETES: [&str; 2] = ["1.29.0", "1.37.0"];

/// Custom resources, by kind, and the schema of the version of their operator we support.
const CUSTOM: [(&str, &str); 1] = [("ScaledObject", "keda-2.16-scaledobject.schema.json")];

/// Every overlay's objects, built.
fn built() -> Vec<(String, Vec<Value>)> {
    let names = overlays().unwrap();
    assert!(
        names.len() >= 2,
        "deploy/overlays has dev and gpu-cluster: {names:?}"
    );
    names
        .into_iter()
        .map(|name| {
            let objects = kustomize(&name).unwrap();
            (name, objects)
        })
        .collect()
}

/// Runs `kubernetes-validate --strict` on `objects` for Kubernetes `version`; returns whether
/// it passed and what it said.
fn validate(objects: &[Value], version: &str) -> (bool, String) {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("objects.yaml");
    let documents: Vec<String> = objects.iter().map(|o| o.to_string()).collect();
    std::fs::write(&file, documents.join("\n---\n")).unwrap();
    let output = Command::new(dependency("venv/bin/kubernetes-validate").unwrap())
        .args(["--strict", "--quiet", "-k", version])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

/// Validates `objects` against the JSON schema `schema` (in `deploy/tests/`) with the
/// `jsonschema` package `kubernetes-validate` brings; returns each object's errors.
fn schema_errors(objects: &[&Value], schema: &str) -> Vec<String> {
    const SCRIPT: &str = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft7Validator.check_schema(schema)\n\
        for o in json.load(sys.stdin):\n\
        \x20   print(json.dumps([e.message + ' at ' + e.json_path for e in jsonschema.Draft7Validator(schema).iter_errors(o)]))\n";
    let mut child = Command::new(dependency("venv/bin/python").unwrap())
        .arg("-c")
        .arg(SCRIPT)
        .arg(deploy_dir().join("tests").join(schema))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), objects).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<Vec<String>>(line)
                .unwrap()
                .join("; ")
        })
        .collect()
}

fn is_custom(object: &Value) -> bool {
    CUSTOM.iter().any(|(kind, _)| object["kind"] == *kind)
}

#[test]
fn every_overlay_builds_and_validates_strictly_on_the_oldest_and_newest_kubernetes() {
    for (overlay, objects) in built() {
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for wanted in [
            "Deployment",
            "StatefulSet",
            "Service",
            "ConfigMap",
            "ScaledObject",
        ] {
            assert!(
                kinds.contains(&wanted),
                "{overlay} has a {wanted}: {kinds:?}"
            );
        }
        let core: Vec<Value> = objects.iter().filter(|o| !is_custom(o)).cloned().collect();
        for version in KUBERNETES {
            // Every kind has a schema there: a kind it does not know would pass unchecked.
            let (passed, said) = validate(&core, version);
            assert!(
                passed && !said.contains("Couldn't find schema"),
                "overlays/{overlay} on Kubernetes {version}:\n{said}"
            );
        }
    }
}

#[test]
fn the_validation_is_strict_and_names_kinds_it_has_no_schema_for() {
    // A field Kubernetes does not have, planted in a Deployment, is refused: strict mode
    // catches a misspelt or misplaced field, which a cluster would drop without a word.
    let (_, objects) = built().remove(0);
    let mut deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap()
        .clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    let (passed, said) = validate(&[deployment], KUBERNETES[0]);
    assert!(!passed && said.contains("imagePullPolicyy"), "{said}");
    // A kind without a schema is said, so the check above catches one.
    let unknown =
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    let (_, said) = validate(&[unknown], KUBERNETES[1]);
    assert!(
        said.contains("Couldn't find schema"),
        "an unknown kind is reported: {said}"
    );
}

#[test]
fn the_scaled_object_has_only_the_fields_keda_documents() {
    for (overlay, objects) in built() {
        for (kind, schema) in CUSTOM {
            let custom: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
            assert!(!custom.is_empty(), "{overlay} has a {kind}");
            for (object, errors) in custom.iter().zip(schema_errors(&custom, schema)) {
                assert!(
                    errors.is_empty(),
                    "{overlay}: {kind} {}: {errors}",
                    object["metadata"]["name"]
                );
            }
        }
    }
    // The schema refuses what KEDA would not read: a misspelt field, a number where KEDA
    // takes a string, a trigger without its query.
    let (_, objects) = built().remove(0);
    let scaled = objects
        .iter()
        .find(|o| o["kind"] == "ScaledObject")
        .unwrap();
    let mut misspelt = scaled.clone();
    misspelt["spec"]["maxReplicas"] = json!(4);
    let mut number = scaled.clone();
    number["spec"]["triggers"][0]["metadata"]["threshold"] = json!(1);
    let mut no_query = scaled.clone();
    no_query["spec"]["triggers"][0]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("query");
    let errors = schema_errors(&[&misspelt, &number, &no_query], CUSTOM[0].1);
    for (error, expected) in errors.iter().zip(["maxReplicas", "threshold", "query"]) {
        assert!(error.contains(expected), "{expected}: {error}");
    }
}
