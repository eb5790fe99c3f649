//! JSON-RPC replies: the checks an answer must pass (shape, status, id), the era a refusal
//! points to, and the handshake results (`server/discover`, `initialize`) they carry.

use hyper::header::HeaderValue;
use serde_json::{Map, Value};

use super::http::{Answer, Payload};
use super::{Handshake, MODERN_REVISION, Method, NotReady, Step, excerpt};

/// JSON-RPC codes the 2026-07-28 revision reserves: a server answering with one of them is
/// modern, whatever else it refused.
const HEADER_MISMATCH: i64 = -32020;
const MISSING_CLIENT_CAPABILITY: i64 = -32021;
const UNSUPPORTED_VERSION: i64 = -32022;

/// A JSON-RPC error answer.
#[derive(Debug)]
pub(super) struct RpcError {
    pub(super) code: i64,
    pub(super) message: String,
    data: Option<Value>,
}

impl RpcError {
    pub(super) fn is_modern(&self) -> bool {
        matches!(
            self.code,
            HEADER_MISMATCH | MISSING_CLIENT_CAPABILITY | UNSUPPORTED_VERSION
        )
    }

    /// An `UnsupportedProtocolVersionError` whose `supported` list names a revision older
    /// than the modern one: a dual-era server that will answer `initialize`.
    pub(super) fn offers_legacy(&self) -> bool {
        self.code == UNSUPPORTED_VERSION
            && self
                .data
                .as_ref()
                .and_then(|d| d.get("supported"))
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .filter_map(Value::as_str)
                        .any(|v| v < MODERN_REVISION)
                })
    }

    pub(super) fn into_not_ready(self, step: Step) -> NotReady {
        NotReady::Rpc {
            step,
            code: self.code,
            message: self.message,
        }
    }
}

pub(super) enum Reply {
    Result(Map<String, Value>),
    Error(RpcError),
}

/// The JSON-RPC response to request `id` in `answer`, or why there is none. A JSON-RPC error
/// is a reply on 2xx and on 4xx (where servers put refusals); on any other status the status
/// is the failure, with the body as its excerpt.
pub(super) fn rpc_reply(step: Step, id: u64, answer: Answer) -> Result<Reply, NotReady> {
    let status = answer.status.as_u16();
    let value = match answer.payload {
        Payload::Json(v) => v,
        Payload::NotJson(excerpt) if !answer.status.is_success() => {
            return Err(NotReady::Status {
                step,
                status,
                excerpt,
            });
        }
        Payload::NotJson(excerpt) => {
            return Err(NotReady::NotJson {
                step,
                status,
                excerpt,
            });
        }
        Payload::NoResponse => return Err(NotReady::NoResponse { step }),
    };
    let decoded = decode_response(&value);
    let refusal = answer.status.is_client_error() && matches!(decoded, Some((_, Reply::Error(_))));
    if !answer.status.is_success() && !refusal {
        return Err(NotReady::Status {
            step,
            status,
            excerpt: excerpt(value.to_string().as_bytes()),
        });
    }
    let Some((got, reply)) = decoded else {
        return Err(NotReady::NotJsonRpc {
            step,
            excerpt: excerpt(value.to_string().as_bytes()),
        });
    };
    // An error may carry no id (or null) when the server could not read the request's.
    let id_ok = match (&reply, got) {
        (_, Some(v)) if v.as_u64() == Some(id) => true,
        (Reply::Error(_), None | Some(Value::Null)) => true,
        _ => false,
    };
    if !id_ok {
        return Err(NotReady::WrongId {
            step,
            expected: id,
            got: got.map_or_else(
                || "(none)".to_owned(),
                |v| excerpt(v.to_string().as_bytes()),
            ),
        });
    }
    Ok(reply)
}

/// A JSON-RPC 2.0 response (an object with `result`, or `error` with an integer `code`), with
/// its id; `None` for anything else.
fn decode_response(value: &Value) -> Option<(Option<&Value>, Reply)> {
    let obj = value.as_object()?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") || obj.contains_key("method") {
        return None;
    }
    let id = obj.get("id");
    match (obj.get("result"), obj.get("error")) {
        (Some(Value::Object(result)), None) => Some((id, Reply::Result(result.clone()))),
        (None, Some(Value::Object(error))) => {
            let code = error.get("code").and_then(Value::as_i64)?;
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(|m| excerpt(m.as_bytes()))
                .unwrap_or_default();
            Some((
                id,
                Reply::Error(RpcError {
                    code,
                    message,
                    data: error.get("data").cloned(),
                }),
            ))
        }
        _ => None,
    }
}

/// A `DiscoverResult`: `resultType` absent or `complete`, a non-empty `supportedVersions`.
pub(super) fn discover_handshake(result: &Map<String, Value>) -> Result<Handshake, NotReady> {
    let invalid = |reason: &str| NotReady::InvalidResult {
        step: Step::Discover,
        reason: reason.to_owned(),
    };
    match result.get("resultType") {
        None => {}
        Some(Value::String(t)) if t == "complete" => {}
        Some(_) => return Err(invalid("resultType is not \"complete\"")),
    }
    let versions: Vec<&str> = result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("supportedVersions is missing"))?
        .iter()
        .map(|v| v.as_str().filter(|s| revision_ok(s)))
        .collect::<Option<_>>()
        .ok_or_else(|| invalid("supportedVersions holds a value that is not a revision"))?;
    let revision = if versions.contains(&MODERN_REVISION) {
        MODERN_REVISION
    } else {
        // Revisions are dates: the greatest is the newest.
        versions
            .iter()
            .max()
            .copied()
            .ok_or_else(|| invalid("supportedVersions is empty"))?
    };
    Ok(Handshake {
        method: Method::Discover,
        revision: revision.to_owned(),
        server_name: server_name(result),
    })
}

/// An `InitializeResult`: a `protocolVersion` (also sent back as a header value).
pub(super) fn initialize_handshake(
    result: &Map<String, Value>,
) -> Result<(HeaderValue, Handshake), NotReady> {
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| revision_ok(v))
        .ok_or_else(|| NotReady::InvalidResult {
            step: Step::Initialize,
            reason: "protocolVersion is missing or not a revision".to_owned(),
        })?;
    let header = HeaderValue::from_str(version).map_err(|_| NotReady::InvalidResult {
        step: Step::Initialize,
        reason: "protocolVersion is not a valid header value".to_owned(),
    })?;
    Ok((
        header,
        Handshake {
            method: Method::Initialize,
            revision: version.to_owned(),
            server_name: server_name(result),
        },
    ))
}

/// Revisions are dates (`2025-11-25`); anything short and printable is accepted, so a
/// future naming scheme is reported rather than refused.
fn revision_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic())
}

fn server_name(result: &Map<String, Value>) -> Option<String> {
    result
        .get("serverInfo")
        .and_then(|i| i.get("name"))
        .and_then(Value::as_str)
        .map(|n| excerpt(n.as_bytes()))
        .filter(|n| !n.is_empty())
}

/// The answer to a notification: 2xx (202 by the spec); anything else is the refusal.
pub(super) fn accepted(step: Step, answer: Answer) -> Result<(), NotReady> {
    if answer.status.is_success() {
        return Ok(());
    }
    let status = answer.status.as_u16();
    match answer.payload {
        Payload::Json(v) => match decode_response(&v) {
            Some((_, Reply::Error(e))) => Err(e.into_not_ready(step)),
            _ => Err(NotReady::Status {
                step,
                status,
                excerpt: excerpt(v.to_string().as_bytes()),
            }),
        },
        Payload::NotJson(excerpt) => Err(NotReady::Status {
            step,
            status,
            excerpt,
        }),
        Payload::NoResponse => Err(NotReady::Status {
            step,
            status,
            excerpt: "(an event stream)".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::StatusCode;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            session: None,
            payload: Payload::Json(body),
        }
    }

    #[test]
    fn replies_are_checked_for_shape_status_and_id() {
        let ok = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(200, ok.clone())),
            Ok(Reply::Result(_))
        ));
        assert!(matches!(
            rpc_reply(Step::Discover, 2, answer(200, ok.clone())),
            Err(NotReady::WrongId { expected: 2, .. })
        ));
        // A result on a 4xx, and anything on a 5xx, is the status's failure.
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(404, ok)),
            Err(NotReady::Status { status: 404, .. })
        ));
        let err =
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "bad"}});
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(400, err.clone())),
            Ok(Reply::Error(RpcError { code: -32600, .. }))
        ));
        assert!(matches!(
            rpc_reply(Step::Discover, 1, answer(500, err)),
            Err(NotReady::Status { status: 500, .. })
        ));
        for not_rpc in [
            json!({"status": "ok"}),
            json!({"jsonrpc": "1.0", "id": 1, "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": "yes"}),
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": "x"}}),
            json!([{"jsonrpc": "2.0", "id": 1, "result": {}}]),
        ] {
            assert!(
                matches!(
                    rpc_reply(Step::Discover, 1, answer(200, not_rpc.clone())),
                    Err(NotReady::NotJsonRpc { .. })
                ),
                "{not_rpc}"
            );
        }
    }

    #[test]
    fn modern_errors_end_the_probe_unless_legacy_is_offered() {
        let error = |code, data: Value| RpcError {
            code,
            message: String::new(),
            data: Some(data),
        };
        assert!(!error(-32601, json!(null)).is_modern());
        assert!(error(-32020, json!(null)).is_modern());
        let modern_only = error(-32022, json!({"supported": ["2026-07-28"]}));
        assert!(modern_only.is_modern() && !modern_only.offers_legacy());
        let dual = error(-32022, json!({"supported": ["2025-11-25"]}));
        assert!(dual.offers_legacy());
    }

    #[test]
    fn discover_results_name_the_revision() {
        let result = |v: Value| v.as_object().unwrap().clone();
        let h = discover_handshake(&result(json!({
            "supportedVersions": ["2025-11-25", "2026-07-28", "2027-01-01"],
            "serverInfo": {"name": "x\ny"},
        })))
        .unwrap();
        assert_eq!(h.revision, "2026-07-28");
        assert_eq!(h.server_name.as_deref(), Some("x y"));
        let h = discover_handshake(&result(
            json!({"supportedVersions": ["2027-01-01", "2026-12-01"]}),
        ))
        .unwrap();
        assert_eq!(h.revision, "2027-01-01");
        for bad in [
            json!({}),
            json!({"supportedVersions": []}),
            json!({"supportedVersions": [1]}),
            json!({"supportedVersions": ["2026-07-28"], "resultType": "input_required"}),
        ] {
            assert!(
                matches!(
                    discover_handshake(&result(bad.clone())),
                    Err(NotReady::InvalidResult { .. })
                ),
                "{bad}"
            );
        }
    }
}
