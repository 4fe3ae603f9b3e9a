//! Test support (feature `testing`): a service's routes over plain gRPC on
//! loopback, without mTLS or the policy layer (tested on their own), and a
//! channel to a port nothing listens on.

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server};

/// Serves `routes` over plain gRPC on a free loopback port until the
/// runtime ends; a lazy channel to it.
pub async fn serve_plain(routes: Routes) -> std::io::Result<Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = Server::builder()
            .add_routes(routes)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "the loopback test server stopped");
        }
    });
    lazy_channel(addr)
}

/// A lazy channel to a loopback port nothing listens on: every call fails
/// with `UNAVAILABLE`.
pub async fn unreachable_channel() -> std::io::Result<Channel> {
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    lazy_channel(addr)
}

fn lazy_channel(addr: std::net::SocketAddr) -> std::io::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(std::io::Error::other)?
        .connect_lazy())
}
