//! How the CLI and the workers reach a coordinator: the endpoint (TLS when the URL is
//! `https://`, trusting a given CA or the system's roots) and the bearer token every call
//! carries. Kept here so both clients connect the same way.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::transfer::{CONNECTION_WINDOW, STREAM_WINDOW};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// What a client needs beyond the URL: the CA that signed the coordinator's certificate and
/// the token that says who it is. `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct Access {
    /// PEM file of the CA to trust for `https://` URLs (default: the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// The bearer token, when the coordinator asks for one.
    pub token: Option<String>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("tls_ca", &self.tls_ca)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Why a client could not be set up; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The coordinator address does not parse.
    #[error(
        "--coordinator '{url}' {why}: give a URL such as http://127.0.0.1:7470 or \
         https://farm:7470"
    )]
    BadUrl {
        /// The address given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A CA was given for a plain-text URL, where it would silently do nothing.
    #[error("--tls-ca is given but --coordinator '{0}' is not an https:// URL")]
    CaWithoutTls(String),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        /// Which file it is.
        what: &'static str,
        /// The path as given, so the user sees which flag or variable to fix.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token cannot travel in a header.
    #[error("the token is empty or has characters other than printable ASCII")]
    BadToken,
    /// The TLS settings were refused.
    #[error("TLS set-up for '{url}': {source}")]
    Tls {
        /// The coordinator address.
        url: String,
        /// Tonic's reason.
        source: tonic::transport::Error,
    },
}

/// Bytes of a token file read at most: a token is a line, and a mistaken path (`/dev/zero`)
/// must not fill the memory.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

fn read_token_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_TOKEN_FILE_BYTES} bytes, so not a token"),
        ));
    }
    Ok(text)
}

impl Access {
    /// Access from a token given directly, or read from `token_file` (a mounted secret; its
    /// surrounding whitespace is dropped), and an optional CA file.
    pub fn load(
        token: Option<String>,
        token_file: Option<&Path>,
        tls_ca: Option<PathBuf>,
    ) -> Result<Access, AccessError> {
        let token = match (token, token_file) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(
                read_token_file(path)
                    .map_err(|source| AccessError::Unreadable {
                        what: "token file",
                        path: path.to_path_buf(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(Access { tls_ca, token })
    }

    /// The endpoint for `url`, with the windows large transfers need and TLS for `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, AccessError> {
        let bad_url = |why| AccessError::BadUrl {
            url: url.to_string(),
            why,
        };
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|_| bad_url("is not a URL"))?
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let uri = endpoint.uri();
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad_url("is not an http:// or https:// URL"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // A password in a URL ends up in shell history and process lists; tokens go in
            // --token-file instead.
            return Err(bad_url(
                "holds a user name or password, which a coordinator does not take (use --token-file)",
            ));
        }
        if !url.starts_with("https://") {
            return match self.tls_ca {
                Some(_) => Err(AccessError::CaWithoutTls(url.to_string())),
                None => Ok(endpoint),
            };
        }
        let tls = match &self.tls_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| AccessError::Unreadable {
                    what: "CA certificate",
                    path: path.clone(),
                    source,
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint.tls_config(tls).map_err(|source| AccessError::Tls {
            url: url.to_string(),
            source,
        })
    }

    /// An interceptor adding the token to every call, after `inner`'s own metadata.
    pub fn interceptor<I: Interceptor>(&self, inner: I) -> Result<Bearer<I>, AccessError> {
        let header = self
            .token
            .as_ref()
            .map(|token| {
                let mut value: AsciiMetadataValue = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| AccessError::BadToken)?;
                if token.is_empty() {
                    return Err(AccessError::BadToken);
                }
                // Not indexed by HPACK, not shown by tonic's and hyper's debug output.
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        Ok(Bearer { header, inner })
    }
}

/// Adds `authorization: Bearer <token>` to each request, after the inner interceptor.
#[derive(Clone)]
pub struct Bearer<I> {
    header: Option<AsciiMetadataValue>,
    inner: I,
}

impl<I: Interceptor> Interceptor for Bearer<I> {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = self.inner.call(request)?;
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

/// The SHA-256 of a token as auth files keep it (64 lower-case hex digits): a copy of the
/// file gives no way in.
pub fn token_hash(token: &str) -> String {
    tessera_core::task::sha256_hex(token.as_bytes())
}

/// Whether a tenant name is acceptable: 1 to 64 letters, digits, `-` or `_`, so it is safe in
/// storage keys and messages.
pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

/// The token of a request's `authorization: Bearer <token>` header, if it has one.
pub fn bearer_token<T>(request: &tonic::Request<T>) -> Option<&str> {
    request
        .metadata()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_metadata(r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        Ok(r)
    }

    #[test]
    fn the_token_travels_as_a_bearer_header_and_never_in_debug_output() {
        let access = Access {
            tls_ca: None,
            token: Some("tsr_secret".into()),
        };
        let sent = access
            .interceptor(no_metadata)
            .unwrap()
            .call(tonic::Request::new(()))
            .unwrap();
        assert_eq!(bearer_token(&sent), Some("tsr_secret"));
        assert!(!format!("{access:?}").contains("tsr_secret"));
        assert!(!format!("{:?}", sent.metadata()).contains("tsr_secret"));
    }

    #[test]
    fn bad_settings_name_what_to_fix() {
        let access = Access {
            tls_ca: Some("ca.pem".into()),
            token: Some("two\nlines".into()),
        };
        let e = access.endpoint("http://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("not an https:// URL"), "{e}");
        let open = Access::default();
        for (url, why) in [
            ("ftp://127.0.0.1:1", "is not an http:// or https:// URL"),
            (
                "http://user:pw@127.0.0.1:1",
                "holds a user name or password",
            ),
            ("not a url", "is not a URL"),
        ] {
            let e = open.endpoint(url).unwrap_err().to_string();
            assert!(e.contains(&format!("'{url}' {why}")), "{e}");
        }
        let e = access.endpoint("https://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("CA certificate ca.pem"), "{e}");
        assert!(matches!(
            access.interceptor(no_metadata),
            Err(AccessError::BadToken)
        ));
        let e = Access::load(None, Some(Path::new("/no/such/token")), None).unwrap_err();
        assert!(e.to_string().contains("token file /no/such/token"), "{e}");
        let e = Access::load(None, Some(Path::new("/dev/zero")), None).unwrap_err();
        assert!(e.to_string().contains("larger than 4096 bytes"), "{e}");
    }

    #[test]
    fn a_token_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("tessera-token-{}", std::process::id()));
        std::fs::write(&path, "tsr_abc\n").unwrap();
        let access = Access::load(None, Some(&path), None).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(access.token.as_deref(), Some("tsr_abc"));
    }
}
