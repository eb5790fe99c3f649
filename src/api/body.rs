//! Request bodies: JSON under [`MAX_BODY`], decoded with errors that name the field.
//!
//! An oversized body is read and discarded (up to [`DRAIN_LIMIT`]) before the 413 goes out.
//! Answering while the client is still sending would close a socket with unread data, which the
//! kernel turns into a reset: a client that writes its whole body before reading (Python's
//! urllib, for one) would then see a connection error instead of the 413.

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::MAX_BODY;
use super::error::{ApiError, payload_too_large};

/// How much of an oversized body is read (and thrown away) so that the 413 reaches the client.
/// Beyond this the connection is closed without reading further.
pub const DRAIN_LIMIT: u64 = 64 << 20;

/// A JSON body under [`MAX_BODY`] with a `Content-Length`, decoded into `T`.
pub fn json<T: DeserializeOwned + Send>() -> impl Filter<Extract = (T,), Error = Rejection> + Clone
{
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(|len: Option<u64>, body| async move {
            let bytes = read(len, body).await?;
            decode(&bytes).map_err(Rejection::from)
        })
}

async fn read<S, B>(len: Option<u64>, body: S) -> Result<BytesMut, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let Some(len) = len else {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required",
        ));
    };
    let mut body = std::pin::pin!(body);
    if len > MAX_BODY {
        let mut seen = 0u64;
        while seen < len.min(DRAIN_LIMIT) {
            match body.next().await {
                Some(Ok(chunk)) => seen += chunk.remaining() as u64,
                _ => break,
            }
        }
        return Err(payload_too_large());
    }
    let mut out = BytesMut::with_capacity(len as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
        if out.len() as u64 + chunk.remaining() as u64 > MAX_BODY {
            return Err(payload_too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out)
}

/// Decode an already parsed JSON value, naming the field that is wrong.
pub fn decode_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })
}

/// Decode with serde, naming the field that is wrong.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })
}
