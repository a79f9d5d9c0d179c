//! The Envoy sidecar's Unix socket (PROXY_SOCKET): private to this user, bound before serving,
//! and the only way in whose X-Forwarded-For is believed by default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::net::{UnixListener, UnixStream};

/// The bound socket and its path (removed again when serving ends).
pub struct ProxySocket {
    pub(super) listener: UnixListener,
    pub path: PathBuf,
}

impl ProxySocket {
    /// Binds at `path`, or does nothing when the socket is off.
    pub fn bind(path: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let Some(path) = path else { return Ok(None) };
        Ok(Some(Self { listener: bind_private(path)?, path: path.to_owned() }))
    }
}

/// Binds the socket, private to this user (0600, in a 0700 directory if it creates one). A
/// socket left by an earlier run is replaced; one that still answers belongs to a running
/// instance, and starting a second one on it is refused.
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::config::create_private_dir(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(meta.file_type().is_socket(), "PROXY_SOCKET {} exists and is not a socket", path.display());
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "PROXY_SOCKET {} is served by another running instance",
            path.display()
        );
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| {
        format!("cannot bind PROXY_SOCKET {} (a Unix socket path is at most 107 bytes)", path.display())
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The connections of the socket, as tonic takes them.
pub(super) fn incoming(listener: UnixListener) -> impl futures_util::Stream<Item = std::io::Result<UnixStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
