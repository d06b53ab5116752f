//! `vsicctl serve`: runs the control-plane service on its socket.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use vsicctl::control::service::Service;
use vsicctl::control::socket;

use crate::authority::GuestAuthority;
use crate::failure::Failure;
use crate::functions::Functions;
use crate::report::Report;

pub fn serve(socket_path: &Path, max_dma: u64) -> Result<Report, Failure> {
    let context = format!("serving on {}", socket_path.display());
    let err = |e: String| Failure::local(&context, "serve", e);
    if let Some(dir) = socket_path.parent() {
        crate::functions::ensure_public_dir(dir)
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    }
    // A socket left by a previous run is replaced; anything else is not.
    if let Ok(meta) = std::fs::symlink_metadata(socket_path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err("the path exists and is not a socket".into()));
        }
        if socket::connect(socket_path).is_ok() {
            return Err(err("another service is listening there".into()));
        }
        std::fs::remove_file(socket_path)
            .map_err(|e| err(format!("removing the old socket: {e}")))?;
    }
    let listener =
        socket::listen(socket_path, 64).map_err(|e| Failure::local_error(&context, "serve", e))?;
    // Everyone may connect; every request is checked against its sender.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| err(format!("chmod: {e}")))?;
    eprintln!(
        "vsicctl: control-plane service listening on {}",
        socket_path.display()
    );
    let service = Arc::new(Service::new(
        GuestAuthority::new(Functions::system()),
        max_dma,
    ));
    service
        .run(listener)
        .map_err(|e| Failure::local_error(&context, "serve", e))?;
    Ok(Report::new("", json!({})))
}
