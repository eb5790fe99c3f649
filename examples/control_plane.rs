//! The reference control plane: accepts `dtma` agents on `ws://ADDR/dtma/connect` and lets an
//! operator drive them with curl.
//!
//! ```text
//! cargo run --example control_plane -- --listen 127.0.0.1:8080 --token demo-token
//! DTMA_BEARER_TOKEN=demo-token DTMA_WS_URL=ws://127.0.0.1:8080/dtma/connect dtma
//! curl -N -X POST localhost:8080/agents/$(hostname)/exec -d '{"command":"ping -c 3 127.0.0.1"}'
//! ```
//! Tokens also come from `CP_TOKENS` (comma separated).

use std::net::SocketAddr;

use dtma_control_plane::{ControlPlane, Options};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut listen: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut tokens: Vec<String> = std::env::var("CP_TOKENS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen ADDR"))?
                    .parse()?
            }
            "--token" => tokens.push(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--token TOKEN"))?,
            ),
            other => anyhow::bail!("unknown argument `{other}`; use --listen ADDR --token TOKEN"),
        }
    }
    anyhow::ensure!(
        !tokens.is_empty(),
        "give at least one agent token (--token or CP_TOKENS)"
    );
    let stop = CancellationToken::new();
    let cp = ControlPlane::new(Options {
        tokens,
        ..Options::default()
    });
    let (addr, server) = cp.bind(listen, stop.clone()).await?;
    tracing::info!(%addr, "Control plane listening: agents connect to ws://{addr}/dtma/connect");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => stop.cancel(),
        _ = server => {}
    }
    Ok(())
}
