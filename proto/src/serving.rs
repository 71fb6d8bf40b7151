//! What the agent's and the controller's gRPC servers share: logging set-up, the server
//! reflection service (NovaCron's protocols and `grpc.health.v1`), the accepted-connection
//! stream and the shutdown signal.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// gRPC server reflection over NovaCron's protocols and the health-checking protocol.
pub fn reflection_service(
) -> Result<ServerReflectionServer<impl ServerReflection>, tonic_reflection::server::Error> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// The connections `listener` accepts, with `TCP_NODELAY` set, for
/// `serve_with_incoming_shutdown` (which ignores the builder's `tcp_nodelay`): without it a
/// TLS handshake's small writes meet the peer's delayed ACK and a new connection's first
/// call waits ~40 ms.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY on an accepted connection: {e}");
            }
        })
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// Logs to stderr at `RUST_LOG`'s filter (default `info`), in colour on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
