//! Whether the HTTP client of a request is still connected.
//!
//! actix-web keeps a handler running after its client disconnects when the
//! request has no body to read, so a long poll from a module that crashed
//! would otherwise still be waiting, and be handed the next command, which
//! would then be lost. [`on_connect`] records each TCP connection's socket;
//! [`client_connected`] peeks at it.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;

/// The raw socket of the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
struct ConnSocket(RawFd);

/// `HttpServer::on_connect` callback: remembers the connection's socket.
pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(ConnSocket(stream.as_raw_fd()));
    }
}

/// False once the client of `req` has closed or reset its connection; true
/// while it is open, and when it cannot be told (no socket recorded).
///
/// Only call it while the request is being handled: the socket belongs to
/// actix's connection, which outlives the handler.
pub fn client_connected(req: &HttpRequest) -> bool {
    let Some(ConnSocket(fd)) = req.conn_data::<ConnSocket>().copied() else {
        return true;
    };
    let mut byte = 0u8;
    // SAFETY: `fd` is the socket of the connection serving `req`, open for as
    // long as the handler runs; MSG_PEEK | MSG_DONTWAIT neither consumes data
    // nor blocks, and the buffer is one valid byte.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => false, // orderly shutdown by the peer
        n if n > 0 => true,
        _ => {
            let err = std::io::Error::last_os_error();
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            )
        }
    }
}
