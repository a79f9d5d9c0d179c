//! The Envoy sidecar's Unix sockets: PROXY_SOCKET (its way in to the API, the only one whose
//! X-Forwarded-For is believed by default) and the decision socket beside it (ext_authz, see
//! [`authz`](super::authz)). Both private to this user and bound before serving.

use std::os::unix::net::UnixListener as StdUnixListener;
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
        let listener = UnixListener::from_std(bind_private(path)?)?;
        Ok(Some(Self { listener, path: path.to_owned() }))
    }
}

/// The decision socket, bound but not yet registered with a runtime: the thread that serves it
/// registers it with its own, so its wake-ups never go through the API's workers.
pub struct AuthzSocket {
    pub(super) listener: StdUnixListener,
    pub path: PathBuf,
}

impl AuthzSocket {
    pub fn bind(path: PathBuf) -> anyhow::Result<Self> {
        Ok(Self { listener: bind_private(&path)?, path })
    }
}

/// Binds the socket, private to this user (0600, in a 0700 directory if it creates one). A
/// socket left by an earlier run is replaced; one that still answers belongs to a running
/// instance, and starting a second one on it is refused.
fn bind_private(path: &Path) -> anyhow::Result<StdUnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::config::create_private_dir(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(meta.file_type().is_socket(), "{} exists and is not a socket (PROXY_SOCKET)", path.display());
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "{} is served by another running instance (PROXY_SOCKET)",
            path.display()
        );
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let listener = StdUnixListener::bind(path).with_context(|| {
        format!("cannot bind {} (PROXY_SOCKET; a Unix socket path is at most 107 bytes)", path.display())
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The connections of the socket, as tonic takes them.
pub(super) fn incoming(listener: UnixListener) -> impl futures_util::Stream<Item = std::io::Result<UnixStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
