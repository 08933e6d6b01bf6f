//! `tessera token`: a new random token and the auth-file entry that admits it. The coordinator
//! keeps only the entry's SHA-256, so the token is shown once, here.

use rand::RngCore;
use tessera_proto::access::{token_hash, valid_tenant};

use crate::args::TokenArgs;
use crate::output::print_json;

/// Prints a fresh token and its auth-file entry.
pub fn new_token(args: &TokenArgs, json: bool) -> anyhow::Result<()> {
    let tenant = match (args.role.as_str(), &args.tenant) {
        ("client", Some(t)) if !valid_tenant(t) => {
            anyhow::bail!("--tenant '{t}' must be 1 to 64 letters, digits, '-' or '_'")
        }
        ("client", tenant) => tenant.clone(),
        (role, Some(_)) => {
            anyhow::bail!("a {role} token has no --tenant: it is not limited to one")
        }
        (_, None) => None,
    };
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token: String = std::iter::once("tsr_".to_string())
        .chain(secret.iter().map(|b| format!("{b:02x}")))
        .collect();
    let sha256 = token_hash(&token);
    if json {
        print_json(&serde_json::json!({
            "token": token, "sha256": sha256, "role": args.role, "tenant": tenant, "name": args.name,
        }));
        return Ok(());
    }
    let tenant = tenant.map(|t| format!(", tenant: {t}")).unwrap_or_default();
    println!("token: {token}");
    println!("add under `tokens:` in the coordinator's auth file (it keeps only the hash):");
    println!(
        "  - {{sha256: {sha256}, role: {}{tenant}, name: {:?}}}",
        args.role, args.name
    );
    Ok(())
}
