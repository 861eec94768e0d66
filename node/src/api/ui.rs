//! The dashboard: plain HTML, CSS and JavaScript built into the binary (no build step, no CDN,
//! no third-party code). `GET /` is the page, `/ui/{file}` its assets. They hold no data, so
//! they are served without the API token; the page asks for the token on its first 401 and
//! sends it with every API call (kept in the browser's session storage).
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles and requests only
//! from this origin, no inline script, no framing. The page writes every string that came from
//! a DAG (task ids, outputs, stderr) as text, never as HTML.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
const ICON_SVG: &str = include_str!("ui/icon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change only with the binary; revalidating costs one small request.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(super) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "style.css" => page("text/css; charset=utf-8", STYLE_CSS),
        "icon.svg" => page("image/svg+xml", ICON_SVG),
        _ => super::ApiError::new(StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
    }
}
