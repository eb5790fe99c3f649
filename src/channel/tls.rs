//! Dialling the backend: TCP, TLS (rustls with the webpki roots plus an optional CA file) and
//! the WebSocket upgrade carrying the agent's bearer token, all under one connect timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::{ChannelConfig, Secret};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("CA file `{path}`: {reason}")]
    CaFile { path: String, reason: String },
    #[error("the backend refused the upgrade with HTTP {status}")]
    Refused { status: u16 },
    #[error("{0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// rustls client configuration: webpki roots plus the certificates of `ca_file`.
pub fn client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject;
        let err = |reason: String| Error::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err("no PEM certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::CaFile {
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Open the WebSocket to `url`, sending `token` as `Authorization: Bearer`.
pub async fn dial(
    url: &str,
    token: &Secret,
    chan: &ChannelConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Ws, Error> {
    let mut request = url.into_client_request().map_err(|e| Error::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let mut auth =
        HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| Error::Url {
            url: url.to_owned(),
            reason: "the bearer token is not a valid header value".into(),
        })?;
    auth.set_sensitive(true);
    request.headers_mut().insert("authorization", auth);
    // Our own frame limit is checked per message (with a typed error); tungstenite's limit is a
    // last line of defence against a peer that sends gigabytes.
    let hard_limit = (chan.max_frame_bytes * 4).max(16 << 20);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        true,
        Some(Connector::Rustls(tls)),
    );
    match tokio::time::timeout(chan.connect_timeout, connect).await {
        Err(_) => Err(Error::Timeout(chan.connect_timeout)),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(Error::Refused {
            status: resp.status().as_u16(),
        }),
        Ok(Err(e)) => Err(Error::WebSocket(e)),
        Ok(Ok((ws, _resp))) => Ok(ws),
    }
}
