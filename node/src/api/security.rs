//! What keeps web pages (and, with a token, everyone else) out of the HTTP API.
//!
//! The API listens on loopback by default, but a browser on the same machine runs code from
//! any web site, and a page can reach `127.0.0.1` two ways:
//!
//! * **A "simple" cross-origin request**: a `POST` with `Content-Type: text/plain` (or a
//!   form) is sent without a CORS preflight; the page cannot read the answer, but the DAG
//!   it submitted runs. Every request that changes something must therefore carry
//!   `Content-Type: application/json` (module uploads: `application/wasm` or
//!   `application/octet-stream`), which a browser only sends cross-origin after a preflight
//!   we never approve, and no `Origin` other than the API's own.
//! * **DNS rebinding**: `attacker.example` resolves to 127.0.0.1 after the page loaded, so
//!   its requests are same-origin for the browser and it can read answers. They carry
//!   `Host: attacker.example`, so only `Host` values naming loopback (`localhost`,
//!   127.0.0.0/8, `[::1]`) or the address the API is bound to are served. An IP literal
//!   cannot be rebound, so when the API is bound to every interface (`0.0.0.0`), any IP
//!   literal with the API's port is accepted too.
//!
//! With a token (`BX3_API_TOKEN` or `--api-token-file`), every request also needs
//! `Authorization: Bearer <token>` (401 otherwise; compared in constant time), except the
//! dashboard's page and static assets (`GET /`, `GET /ui/...`), which hold no data and ask
//! for the token themselves. These checks wrap every route, whoever adds it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;

/// Shortest token accepted: a guessable token is no protection on a LAN.
pub const MIN_TOKEN_LEN: usize = 16;

/// The checks of one API listener.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

struct Inner {
    /// The address the listener is bound to (after binding, so port 0 is resolved).
    bind: SocketAddr,
    /// SHA-256 of the token, if one is required. Comparing digests makes the comparison
    /// independent of the presented token's length as well as its content.
    token: Option<[u8; 32]>,
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the API token is empty")]
    Empty,
    #[error("the API token is {0} characters; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)")]
    TooShort(usize),
    #[error("the API token must be printable ASCII without spaces (it travels in an HTTP header)")]
    NotPrintable,
}

/// Checks a token as given (surrounding whitespace, e.g. a file's final newline, removed).
pub fn parse_token(raw: &str) -> Result<String, TokenError> {
    let token = raw.trim();
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotPrintable);
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort(token.len()));
    }
    Ok(token.to_string())
}

impl Policy {
    pub fn new(bind: SocketAddr, token: Option<&str>) -> Policy {
        Policy {
            inner: Arc::new(Inner {
                bind,
                token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            }),
        }
    }

    /// Whether a `Host` header value names this API: loopback by name or address (any
    /// port), the bound address itself, or, when bound to every interface, any IP literal
    /// with the bound port.
    pub fn host_allowed(&self, host: &str) -> bool {
        let (name, port) = split_host(host);
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let Some(ip) = parse_ip(name) else {
            return false;
        };
        if ip.is_loopback() {
            return true;
        }
        // No port in `Host` means the scheme's default, 80.
        let bind = self.inner.bind;
        let port_ok = port.unwrap_or(80) == bind.port();
        port_ok && (ip == bind.ip() || bind.ip().is_unspecified())
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.inner.token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(expected))
    }
}

/// `host[:port]`, `[v6]` or `[v6]:port` into the name (brackets removed) and the port.
fn split_host(host: &str) -> (&str, Option<u16>) {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((name, after)) => (name, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        // One colon: name and port. More than one without brackets is not a valid Host.
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        // An IPv6 address must be bracketed in `Host`; a bare one names nothing.
        Some(_) => ("", None),
        None => (host, None),
    }
}

fn parse_ip(name: &str) -> Option<IpAddr> {
    name.parse().ok()
}

/// The dashboard's page and static assets: served without a token (they hold no data; the
/// page asks for the token and sends it with every API call), still under the Host rule.
fn is_public_asset(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path == "/" || path.starts_with("/ui/"))
}

/// Methods that change something need a content type a browser cannot send cross-origin
/// without a preflight.
fn needs_content_type(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or("").trim();
    Some(essence.to_ascii_lowercase())
}

fn refuse(status: StatusCode, message: String) -> Response {
    ApiError::new(status, message).into_response()
}

/// The middleware: Host, then Origin, then the token, then the content type.
pub async fn check(State(policy): State<Policy>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let method = request.method().clone();
    let path = request.uri().path().to_string();

    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let Some(host) = host.clone().filter(|h| policy.host_allowed(h)) else {
        tracing::debug!(host = ?host, %method, path = ?path, "API request refused: Host");
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "Host {:?} is not this node's API: it answers requests for localhost, 127.0.0.1, \
                 [::1] or {} only (protection against DNS rebinding)",
                host.unwrap_or_default(),
                policy.inner.bind
            ),
        );
    };

    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = format!("http://{host}");
        let ok = origin
            .to_str()
            .is_ok_and(|o| o.trim_end_matches('/').eq_ignore_ascii_case(&own));
        if !ok {
            tracing::debug!(origin = ?origin, %method, path = ?path, "API request refused: Origin");
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from web pages of other origins are refused (Origin {:?}, this API \
                     is {own})",
                    origin.to_str().unwrap_or("?")
                ),
            );
        }
    }
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "cross-site requests from web pages are refused".into(),
        );
    }

    if !is_public_asset(&method, &path) && !policy.token_ok(headers) {
        tracing::debug!(%method, path = ?path, "API request refused: no valid token");
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            "this node's API needs a token: send `Authorization: Bearer <token>` (the CLI sends \
             BX3_API_TOKEN, or the file given with --api-token-file)"
                .into(),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }

    if needs_content_type(&method) {
        let media = media_type(headers);
        let upload = path == "/v1/modules";
        let ok = match media.as_deref() {
            Some("application/json") => true,
            Some("application/wasm" | "application/octet-stream") => upload,
            _ => false,
        };
        if !ok {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{method} {path} needs `Content-Type: application/json`{} (got {:?}); other \
                     types are refused because web pages can send them to any address",
                    if upload { " or application/wasm" } else { "" },
                    media.unwrap_or_default()
                ),
            );
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_rule() {
        let local = Policy::new("127.0.0.1:7420".parse().expect("addr"), None);
        for ok in [
            "127.0.0.1:7420",
            "127.0.0.1",
            "127.9.8.7:1",
            "localhost:7420",
            "LOCALHOST",
            "[::1]:7420",
            "[::1]",
        ] {
            assert!(local.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7420",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:7420",
            "192.168.1.5:7420",
            "",
            "[::1",
            "::1",
        ] {
            assert!(!local.host_allowed(bad), "{bad}");
        }

        let lan = Policy::new("192.168.1.5:7420".parse().expect("addr"), None);
        assert!(lan.host_allowed("192.168.1.5:7420"));
        assert!(
            !lan.host_allowed("192.168.1.5"),
            "port 80, not this listener"
        );
        let port80 = Policy::new("192.168.1.5:80".parse().expect("addr"), None);
        assert!(port80.host_allowed("192.168.1.5"));
        assert!(!lan.host_allowed("192.168.1.5:8000"));
        assert!(!lan.host_allowed("192.168.1.6:7420"));
        assert!(
            !lan.host_allowed("mynode.lan:7420"),
            "a name could be rebound"
        );

        let all = Policy::new("0.0.0.0:7420".parse().expect("addr"), None);
        assert!(all.host_allowed("10.0.0.2:7420"));
        assert!(all.host_allowed("[fe80::1]:7420"));
        assert!(!all.host_allowed("10.0.0.2:80"));
        assert!(
            !all.host_allowed("10.0.0.2"),
            "no port: not necessarily this listener"
        );
        assert!(!all.host_allowed("node.example:7420"));
    }

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token(" abcdefghijklmnop\n"),
            Ok("abcdefghijklmnop".into())
        );
        assert_eq!(parse_token("short"), Err(TokenError::TooShort(5)));
        assert_eq!(parse_token("  \n"), Err(TokenError::Empty));
        assert_eq!(
            parse_token("with space inside!!"),
            Err(TokenError::NotPrintable)
        );
        let p = Policy::new(
            "127.0.0.1:1".parse().expect("addr"),
            Some("abcdefghijklmnop"),
        );
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
            h
        };
        assert!(p.token_ok(&with("Bearer abcdefghijklmnop")));
        assert!(p.token_ok(&with("bearer  abcdefghijklmnop ")));
        assert!(!p.token_ok(&with("Bearer abcdefghijklmnoq")));
        assert!(!p.token_ok(&with("Bearer abcdefghijklmnopq")));
        assert!(!p.token_ok(&with("Basic abcdefghijklmnop")));
        assert!(!p.token_ok(&HeaderMap::new()));
        let open = Policy::new("127.0.0.1:1".parse().expect("addr"), None);
        assert!(open.token_ok(&HeaderMap::new()));
    }
}
