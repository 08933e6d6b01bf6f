//! The Prometheus configuration and alert rules of every built overlay, checked by `promtool`
//! (Debian's `prometheus` package): the rules parse (`check rules`), each alert fires on series
//! that should fire it and stays quiet on series that should not (`test rules` with
//! `deploy/tests/alerts.test.yml`), and the configuration with its rules passes
//! `check config`. Debian builds Prometheus without Kubernetes discovery, so `check config`
//! sees the pod discovery replaced by the targets it would find (`local_scrape_config`);
//! every other line is the deployed one.

use std::collections::BTreeSet;

use serde_json::Value;
use tempfile::TempDir;
use tessera_tests::deploy::{
    config_map_entry, deploy_dir, kustomize, local_scrape_config, overlays, yaml_documents,
    PodStandIn,
};
use tessera_tests::prometheus::promtool;

/// The alert names in a rules file.
fn alerts(rules: &Value) -> BTreeSet<String> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

/// The alerts the unit tests expect to fire (`firing`) and to stay quiet (not `firing`) at
/// some evaluation.
fn tested(tests: &Value, firing: bool) -> BTreeSet<String> {
    tests["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|case| {
            let expected = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            expected == firing
        })
        .filter_map(|case| case["alertname"].as_str().map(String::from))
        .collect()
}

#[test]
fn promtool_passes_the_rules_their_unit_tests_and_the_configuration_of_every_overlay() {
    let unit_tests = std::fs::read_to_string(deploy_dir().join("tests/alerts.test.yml")).unwrap();
    for overlay in overlays().unwrap() {
        let objects = kustomize(&overlay).unwrap();
        let dir = TempDir::new().unwrap();
        let rules = config_map_entry(&objects, "prometheus", "rules.yml").unwrap();
        std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
        std::fs::write(dir.path().join("alerts.test.yml"), &unit_tests).unwrap();

        let names = alerts(&yaml_documents(rules).unwrap()[0]);
        let checked = promtool(dir.path(), &["check", "rules", "rules.yml"]).unwrap();
        assert!(
            checked.contains(&format!("SUCCESS: {} rules found", names.len())),
            "{overlay}: {checked}"
        );
        // Every alert has a case where it must fire and one where it must not.
        let tests = &yaml_documents(&unit_tests).unwrap()[0];
        assert_eq!(tested(tests, true), names, "alerts tested firing");
        assert_eq!(tested(tests, false), names, "alerts tested quiet");
        let ran = promtool(dir.path(), &["test", "rules", "alerts.test.yml"]).unwrap();
        assert!(ran.contains("SUCCESS"), "{overlay}: {ran}");

        let config = config_map_entry(&objects, "prometheus", "prometheus.yml").unwrap();
        let scraped: Vec<PodStandIn> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .filter(|o| {
                o["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            })
            .map(|deployment| PodStandIn {
                deployment,
                pod: format!("{}-0", deployment["metadata"]["name"].as_str().unwrap()),
                metrics: "127.0.0.1:9464".parse().unwrap(),
            })
            .collect();
        assert_eq!(
            scraped.len(),
            2,
            "{overlay}: coordinators and workers are scraped"
        );
        let local = local_scrape_config(config, &scraped).unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), local.to_string()).unwrap();
        let checked = promtool(dir.path(), &["check", "config", "prometheus.yml"]).unwrap();
        assert!(
            checked.contains("SUCCESS: prometheus.yml is valid")
                && checked.contains(&format!("SUCCESS: {} rules found", names.len())),
            "{overlay}: {checked}"
        );
    }
}
