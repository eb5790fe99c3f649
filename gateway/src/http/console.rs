//! The web console's static files (gateway/console/, embedded at build time: no build step,
//! nothing read from disk at run time). They need no auth: the page asks for the operator
//! token and sends it on every `/v1` call itself.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use super::Body;

const INDEX: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// Scripts, styles and API calls only from this origin; no inline script, no framing. The
/// page writes data with `textContent` only, and this makes an injection inert as well.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The file at `name` (the path after `/console`), if it is one of the console's.
pub fn file(name: &str) -> Option<hyper::Response<Body>> {
    let (text, content_type) = match name {
        "" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = hyper::Response::new(BodyExt::boxed(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Served from the binary: a new gateway version brings its own console.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
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
    Some(r)
}
