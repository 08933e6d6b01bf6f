//! The `tessera` binary against a coordinator with TLS and an auth file: `tessera token` makes
//! tokens the coordinator accepts, and a command needs both the CA and a token to get in.

mod common;

use std::fs;

use common::{finish, tessera, Workers, SMALL};
use tempfile::TempDir;
use tessera_proto::access::{token_hash, Access};
use tessera_tests::tls::Certificates;
use tessera_tests::Service;

/// A token made by `tessera token`, checked against the hash it printed.
async fn new_token(args: &[&str]) -> (String, String) {
    let mut full = vec!["token", "--json"];
    full.extend(args);
    let made = tessera("http://127.0.0.1:1", &full).await.ok().json();
    let token = made["token"].as_str().unwrap().to_string();
    let sha256 = made["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha256, token_hash(&token));
    assert!(token.starts_with("tsr_") && token.len() == 68, "{token}");
    (token, sha256)
}

#[tokio::test]
async fn a_tls_farm_admits_commands_with_the_ca_and_a_token_and_no_others() {
    let dir = TempDir::new().unwrap();
    let (client, client_hash) = new_token(&["--role", "client", "--tenant", "acme"]).await;
    let (worker, worker_hash) = new_token(&["--role", "worker"]).await;
    let auth = dir.path().join("auth.yaml");
    fs::write(
        &auth,
        format!(
            "tokens:\n  - {{sha256: {client_hash}, role: client, tenant: acme}}\n  - {{sha256: {worker_hash}, role: worker}}\n"
        ),
    )
    .unwrap();
    let certificates = Certificates::create(dir.path()).unwrap();
    let mut command =
        std::process::Command::new(tessera_tests::binary("tessera-coordinator").unwrap());
    command
        .args(["--listen", "127.0.0.1:0", "--embedded", "--store"])
        .arg(dir.path().join("store"))
        .args(certificates.server_flags())
        .arg("--auth-file")
        .arg(&auth)
        .env("RUST_LOG", "warn");
    let service = Service::start(command).unwrap();
    let url = format!("https://{}", service.addr);
    let ca = certificates.ca.to_str().unwrap();

    let untrusted = tessera(&url, &["--token", &client, "jobs"]).await;
    assert_eq!(
        untrusted.code, 2,
        "an unknown CA is a connection failure: {untrusted:?}"
    );
    let anonymous = tessera(&url, &["--tls-ca", ca, "jobs"]).await;
    assert_eq!(anonymous.code, 1, "{anonymous:?}");
    assert!(anonymous.stderr.contains("needs a token"), "{anonymous:?}");
    let misplaced = tessera(&url, &["--tls-ca", ca, "--token", &worker, "jobs"]).await;
    assert!(
        misplaced
            .stderr
            .contains("a worker token cannot call the Jobs service"),
        "{misplaced:?}"
    );

    let prompts = dir.path().join("prompts.txt");
    fs::write(&prompts, "a lighthouse in a storm\n").unwrap();
    let token_file = dir.path().join("token");
    fs::write(&token_file, format!("{client}\n")).unwrap();
    let worker_access = Access {
        tls_ca: Some(certificates.ca.clone()),
        token: Some(worker),
    };
    let _workers = Workers::start_at(&url, &worker_access).await;
    let mut args = vec![
        "--tls-ca",
        ca,
        "--token-file",
        token_file.to_str().unwrap(),
        "submit",
        prompts.to_str().unwrap(),
        "--watch",
    ];
    args.extend(SMALL);
    let submitted = finish(common::command(&url, &args).spawn().unwrap()).await;
    assert_eq!(submitted.code, 0, "{submitted:?}");
    assert!(
        submitted.stdout.contains("succeeded: 1 result(s) done"),
        "{submitted:?}"
    );
    let listed = tessera(
        &url,
        &["--tls-ca", ca, "--token", &client, "--json", "jobs"],
    )
    .await
    .ok();
    assert!(listed.stdout.contains("succeeded"), "{listed:?}");
}
