//! Every failure of the local API as one JSON shape, `{success: false, error, code, timestamp}`
//! plus optional fields, with its status code; [`handle_rejection`] is the one place that
//! turns rejections (ours and warp's) into it.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::MAX_BODY;

/// A failure with its HTTP status and stable code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the body (e.g. `command`, `rule`).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
    pub fn reject(self) -> Rejection {
        warp::reject::custom(self)
    }

    /// The body and status as sent.
    pub fn into_response(self) -> warp::reply::Response {
        let mut body = serde_json::Map::new();
        body.insert("success".into(), false.into());
        body.insert("error".into(), self.message.into());
        body.insert("code".into(), self.code.into());
        body.insert("timestamp".into(), crate::now_rfc3339().into());
        body.extend(self.extra);
        warp::reply::with_status(
            warp::reply::json(&serde_json::Value::Object(body)),
            self.status,
        )
        .into_response()
    }
}

impl From<crate::services::ShuttingDown> for ApiError {
    fn from(e: crate::services::ShuttingDown) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        )
    }
}

impl From<crate::docker::Error> for ApiError {
    fn from(e: crate::docker::Error) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "docker_unavailable",
            e.to_string(),
        )
    }
}

impl From<crate::services::diagnostics::Error> for ApiError {
    fn from(e: crate::services::diagnostics::Error) -> ApiError {
        use crate::services::diagnostics::Error;
        match e {
            Error::BadLines(_) => ApiError::bad_request(format!("query parameter {e}")),
            Error::Docker(d) => d.into(),
            Error::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        }
    }
}

/// Turn any rejection into the JSON error body. A rejection nobody mapped (a bug) becomes a
/// 500 with a generic message; its details go to the agent's log, never to the caller.
pub async fn handle_rejection(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    Ok(from_rejection(&r).into_response())
}

fn from_rejection(r: &Rejection) -> ApiError {
    if let Some(e) = r.find::<ApiError>() {
        e.clone()
    } else if r.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        payload_too_large()
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required",
        )
    } else if let Some(q) = r.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query: {q}"))
    } else if let Some(h) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(h.to_string())
    } else if let Some(h) = r.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request(h.to_string())
    } else if r.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON",
        )
    } else {
        tracing::warn!(rejection = ?r, "Unhandled rejection in the local API (a bug).");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request could not be handled; the agent's log has the details",
        )
    }
}

pub fn payload_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {MAX_BODY} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Unmapped;
    impl warp::reject::Reject for Unmapped {}

    #[tokio::test]
    async fn an_unmapped_rejection_is_documented_json_without_internals() {
        use warp::Filter;
        let route = warp::any()
            .and_then(|| async { Err::<String, _>(warp::reject::custom(Unmapped)) })
            .recover(handle_rejection);
        let resp = warp::test::request().reply(&route).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["code"], "internal");
        assert!(v["timestamp"].is_string());
        let text = String::from_utf8_lossy(resp.body());
        assert!(
            !text.contains("Unmapped") && !text.contains("Rejection"),
            "{text}"
        );
    }
}
