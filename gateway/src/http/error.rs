//! `ApiError`: every failure of the operator API, mapped once to an HTTP status and a stable
//! `code`, answered as `{"error": {"code": "...", "message": "..."}}`.

use hyper::StatusCode;

use crate::streams::{AttachError, OpenError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown operator token")]
    Unauthorized,
    #[error("no route {0}")]
    NoRoute(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Open(e) => match e {
                OpenError::UnknownAgent(_) => StatusCode::NOT_FOUND,
                OpenError::AgentOffline(_)
                | OpenError::ShuttingDown
                | OpenError::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                OpenError::IdConflict(_) => StatusCode::CONFLICT,
                OpenError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            },
            ApiError::Attach(e) => match e {
                AttachError::UnknownRequest(..) => StatusCode::NOT_FOUND,
                AttachError::Evicted { .. } => StatusCode::GONE,
            },
        }
    }

    /// The stable machine-readable code (listed in openapi.json's `ErrorCode`).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NoRoute(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::Open(e) => match e {
                OpenError::UnknownAgent(_) => "unknown_agent",
                OpenError::AgentOffline(_) => "agent_offline",
                OpenError::IdConflict(_) => "request_id_conflict",
                OpenError::TooManyStreams(_) => "too_many_streams",
                OpenError::ShuttingDown => "shutting_down",
                OpenError::ClusterUnavailable(_) => "cluster_unavailable",
            },
            ApiError::Attach(e) => match e {
                AttachError::UnknownRequest(..) => "unknown_request",
                AttachError::Evicted { .. } => "events_evicted",
            },
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }
}
