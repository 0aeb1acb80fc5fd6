//! The systemd notification protocol (`sd_notify`), spoken when `NOTIFY_SOCKET` is set:
//! `READY=1` once the plugins are scanned and the lanes are open, `STATUS=` lines, and
//! `STOPPING=1` when a shutdown begins. A unit with `Type=notify` then knows when the daemon
//! really serves (see `contrib/systemd/lanes.service`).

use std::os::unix::net::UnixDatagram;

use tracing::warn;

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The notifier of `NOTIFY_SOCKET`, if it is set; a socket that cannot be used is
    /// logged once and ignored.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux).
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
            }
            #[cfg(not(target_os = "linux"))]
            Some(_) => {
                warn!("NOTIFY_SOCKET: abstract sockets are not supported here");
                return None;
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path),
        };
        let notifier = addr
            .and_then(|addr| {
                Ok(Notifier {
                    socket: UnixDatagram::unbound()?,
                    addr,
                })
            })
            .map_err(|e| warn!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy()))
            .ok()?;
        Some(notifier)
    }

    /// Sends one notification, such as `READY=1\nSTATUS=serving 3 providers`.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            warn!("telling systemd `{}`: {e}", state.replace('\n', " "));
        }
    }
}
