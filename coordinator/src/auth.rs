//! Who may call what. With an auth file every call must carry a bearer token of one of three
//! roles: *worker* tokens lease and run tasks, *client* tokens belong to one tenant and see
//! only that tenant's jobs, *admin* tokens see everything. The file holds only the tokens'
//! SHA-256 hashes, so reading it (or a leaked copy) gives no way in, and nothing here ever
//! logs a token. The file also sets each tenant's limits.
//!
//! Without an auth file the coordinator is open (one machine, `tessera up`): every caller is
//! treated as an admin.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::webhooks::sign::Secret;
use serde::Deserialize;
use tessera_core::job::{Limits, SIZE_MULTIPLE};
use tessera_proto::access::{bearer_token, token_hash, valid_tenant};
use tonic::Status;

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, across tenants.
    Admin,
    /// The `Workers` service only: lease, run and report tasks.
    Worker,
    /// The `Jobs` service, for its own tenant's jobs only.
    Client,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Worker => "worker",
            Role::Client => "client",
        })
    }
}

/// The caller of one request, put into its extensions by [`Gate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// What the token may call: which services, and whose jobs.
    pub role: Role,
    /// The tenant of a client token; `None` for admins and workers.
    pub tenant: Option<String>,
    /// The token's label from the auth file, for logs.
    pub name: String,
}

impl Principal {
    /// The caller of an open coordinator (no auth file).
    pub fn open() -> Principal {
        Principal {
            role: Role::Admin,
            tenant: None,
            name: "open".into(),
        }
    }

    /// The caller of a request that passed the gate.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the request passed no authentication"))
    }

    /// Whether it may see and act on a job of `tenant` ("" for jobs without one).
    pub fn may_access(&self, tenant: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Client => self.tenant.as_deref() == Some(tenant),
            Role::Worker => false,
        }
    }

    /// The tenant its listings are limited to; `None` sees every job.
    pub fn scope(&self) -> Option<&str> {
        match self.role {
            Role::Admin => None,
            _ => Some(self.tenant.as_deref().unwrap_or("")),
        }
    }

    /// The tenant of the jobs and uploads it creates ("" for admins).
    pub fn owner(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }
}

/// One tenant's limits from the auth file; unset fields fall back to the farm's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Jobs still running at once.
    pub jobs_in_flight: Option<u32>,
    /// Jobs submitted per clock minute.
    pub submissions_per_minute: Option<u32>,
    /// Prompts (or pictures) per job.
    pub prompts_per_job: Option<usize>,
    /// Results (prompts x seeds) per job.
    pub results_per_job: Option<usize>,
    /// Characters per prompt.
    pub prompt_chars: Option<usize>,
    /// Width or height of a picture.
    pub side: Option<u32>,
    /// Optimiser steps per render.
    pub iterations: Option<u32>,
    /// The webhook of the tenant's jobs submitted without one.
    pub webhook: Option<String>,
    /// The secret the tenant's webhook deliveries are signed with (see [`crate::webhooks`]).
    pub webhook_secret: Option<Secret>,
}

impl TenantLimits {
    /// Refuses a limit no job could pass (a count of 0, a side below the smallest picture):
    /// better a clear start-up error than a tenant refused everything later.
    fn check(&self) -> Result<(), String> {
        let widen = |n: Option<usize>| n.map(|n| n as u64);
        let counts = [
            ("jobs_in_flight", self.jobs_in_flight.map(u64::from)),
            (
                "submissions_per_minute",
                self.submissions_per_minute.map(u64::from),
            ),
            ("prompts_per_job", widen(self.prompts_per_job)),
            ("results_per_job", widen(self.results_per_job)),
            ("prompt_chars", widen(self.prompt_chars)),
            ("iterations", self.iterations.map(u64::from)),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, value)| *value == Some(0)) {
            return Err(format!(
                "{field} is 0, which refuses every job; give at least 1, or leave it out for \
                 the farm's limit"
            ));
        }
        match self.side {
            Some(side) if side < SIZE_MULTIPLE => Err(format!(
                "side {side} is below {SIZE_MULTIPLE}, the smallest side a picture can have"
            )),
            _ => Ok(()),
        }
    }

    /// The limits of one of its jobs: the tighter of the tenant's and the farm's.
    pub fn job_limits(&self, farm: &Limits) -> Limits {
        fn tighter<T: Ord + Copy>(farm: T, tenant: Option<T>) -> T {
            tenant.map_or(farm, |t| t.min(farm))
        }
        Limits {
            max_prompts: tighter(farm.max_prompts, self.prompts_per_job),
            max_results: tighter(farm.max_results, self.results_per_job),
            max_prompt_chars: tighter(farm.max_prompt_chars, self.prompt_chars),
            max_side: tighter(farm.max_side, self.side),
            max_iterations: tighter(farm.max_iterations, self.iterations),
            ..farm.clone()
        }
    }
}

/// Why the auth file was refused; each names the file and the entry to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read at all.
    #[error("cannot read the auth file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not the expected YAML.
    #[error("auth file {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the YAML parser said.
        detail: String,
    },
    /// A tenant's limits that no job could pass.
    #[error("auth file {path}, tenants.{tenant}: {detail}")]
    Tenant {
        /// The file.
        path: PathBuf,
        /// The tenant's key under `tenants:`, so the user finds the entry to fix.
        tenant: String,
        /// What is wrong.
        detail: String,
    },
    /// A token entry that cannot be right.
    #[error("auth file {path}, tokens[{index}]: {detail}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// Position in `tokens`.
        index: usize,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    sha256: String,
    role: Role,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    name: String,
}

/// The tokens and tenants of an auth file.
#[derive(Debug)]
pub struct Auth {
    by_hash: HashMap<String, Principal>,
    tenants: BTreeMap<String, TenantLimits>,
}

impl Auth {
    /// Reads and checks an auth file (YAML; see the README's "Security" section).
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: AuthFile = serde_norway::from_str(&text).map_err(|e| AuthError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut by_hash = HashMap::new();
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let refuse = |detail: String| AuthError::Entry {
                path: path.to_path_buf(),
                index,
                detail,
            };
            let hash = entry.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(refuse(
                    "sha256 must be 64 hex digits (`tessera token` prints the entry)".into(),
                ));
            }
            match (entry.role, &entry.tenant) {
                (Role::Client, None) => return Err(refuse("a client token needs a tenant".into())),
                (Role::Client, Some(t)) if !valid_tenant(t) => {
                    return Err(refuse(format!(
                        "tenant '{t}' must be 1 to 64 letters, digits, '-' or '_'"
                    )))
                }
                (Role::Admin | Role::Worker, Some(_)) => {
                    return Err(refuse(format!(
                        "a {} token has no tenant (it is not limited to one)",
                        entry.role
                    )))
                }
                _ => {}
            }
            let principal = Principal {
                role: entry.role,
                tenant: entry.tenant,
                name: entry.name,
            };
            if by_hash.insert(hash, principal).is_some() {
                return Err(refuse("the same token is listed twice".into()));
            }
        }
        for (tenant, limits) in &file.tenants {
            limits.check().map_err(|detail| AuthError::Tenant {
                path: path.to_path_buf(),
                tenant: tenant.clone(),
                detail,
            })?;
        }
        Ok(Auth {
            by_hash,
            tenants: file.tenants,
        })
    }

    /// Who holds `token`; refuses a missing or unknown one.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, Status> {
        let token = token.ok_or_else(|| {
            Status::unauthenticated("this coordinator needs a token: pass --token or TESSERA_TOKEN")
        })?;
        self.by_hash
            .get(&token_hash(token))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the token is not known to this coordinator"))
    }

    /// A tenant's limits (none set: the farm's).
    pub fn tenant_limits(&self, tenant: &str) -> TenantLimits {
        self.tenants.get(tenant).cloned().unwrap_or_default()
    }

    /// The secret `tenant`'s webhook deliveries are signed with, when it has its own.
    pub fn webhook_secret(&self, tenant: &str) -> Option<&Secret> {
        self.tenants.get(tenant)?.webhook_secret.as_ref()
    }

    /// The webhook of `tenant`'s jobs submitted without one.
    pub fn webhook_default(&self, tenant: &str) -> Option<&str> {
        self.tenants.get(tenant)?.webhook.as_deref()
    }
}

/// The interceptor in front of one service: authenticates the token, refuses roles the
/// service is not for, and hands the [`Principal`] to the handler.
#[derive(Clone)]
pub struct Gate {
    auth: Option<Arc<Auth>>,
    service: &'static str,
    roles: &'static [Role],
}

impl Gate {
    /// The gate of `service`, open to `roles`; without `auth` it lets everyone in.
    pub fn new(auth: Option<Arc<Auth>>, service: &'static str, roles: &'static [Role]) -> Gate {
        Gate {
            auth,
            service,
            roles,
        }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let principal = match &self.auth {
            None => Principal::open(),
            Some(auth) => {
                let principal = auth.authenticate(bearer_token(&request))?;
                if !self.roles.contains(&principal.role) {
                    return Err(Status::permission_denied(format!(
                        "a {} token cannot call the {} service",
                        principal.role, self.service
                    )));
                }
                principal
            }
        };
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_file(text: &str) -> Result<Auth, AuthError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.yaml");
        std::fs::write(&path, text).unwrap();
        Auth::load(&path)
    }

    #[test]
    fn tokens_are_matched_by_hash_and_carry_their_role_and_tenant() {
        let auth = auth_file(&format!(
            "tokens:\n  - {{sha256: {}, role: client, tenant: acme, name: ci}}\n  - {{sha256: {}, role: worker}}\n",
            token_hash("tsr_a"),
            token_hash("tsr_w")
        ))
        .unwrap();
        let client = auth.authenticate(Some("tsr_a")).unwrap();
        assert_eq!(
            (client.role, client.tenant.as_deref()),
            (Role::Client, Some("acme"))
        );
        assert_eq!(auth.authenticate(Some("tsr_w")).unwrap().role, Role::Worker);
        for refused in [None, Some("tsr_b"), Some("")] {
            let status = auth.authenticate(refused).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
        assert!(client.may_access("acme") && !client.may_access("other"));
        assert!(Principal::open().may_access("acme"));
    }

    #[test]
    fn a_bad_entry_names_its_place_and_the_fix() {
        let cases = [
            (
                "tokens:\n  - {sha256: abc, role: admin}\n",
                "tokens[0]: sha256 must be 64 hex",
            ),
            (
                &format!(
                    "tokens:\n  - {{sha256: {}, role: client}}\n",
                    token_hash("x")
                ),
                "tokens[0]: a client token needs a tenant",
            ),
            (
                &format!(
                    "tokens:\n  - {{sha256: {}, role: worker, tenant: acme}}\n",
                    token_hash("x")
                ),
                "a worker token has no tenant",
            ),
            (
                &format!(
                    "tokens:\n  - {{sha256: {}, role: client, tenant: 'a b'}}\n",
                    token_hash("x")
                ),
                "tenant 'a b' must be",
            ),
            (
                "tokens: []\ntenants:\n  acme: {jobs: 3}\n",
                "unknown field `jobs`",
            ),
            (
                "tokens:\n  - {sha256: x, role: root}\n",
                "unknown variant `root`",
            ),
            (
                "tokens: []\ntenants:\n  acme: {side: 512, prompts_per_job: 0}\n",
                "tenants.acme: prompts_per_job is 0, which refuses every job",
            ),
            (
                "tokens: []\ntenants:\n  acme: {side: 8}\n",
                "tenants.acme: side 8 is below 16",
            ),
        ];
        for (text, expected) in cases {
            let e = auth_file(text).unwrap_err().to_string();
            assert!(e.contains(expected) && e.contains("auth.yaml"), "{e}");
        }
    }

    #[test]
    fn tenant_limits_only_tighten_the_farm_limits() {
        let farm = Limits::default();
        let tenant = TenantLimits {
            side: Some(512),
            iterations: Some(farm.max_iterations + 1),
            ..TenantLimits::default()
        };
        let limits = tenant.job_limits(&farm);
        assert_eq!(limits.max_side, 512);
        assert_eq!(limits.max_iterations, farm.max_iterations);
        assert_eq!(limits.max_prompts, farm.max_prompts);
    }
}
