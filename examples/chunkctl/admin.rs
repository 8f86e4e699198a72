//! `admin`: commands to a server's admin socket.

use std::time::Duration;

/// `chunkctl admin`: one command to the admin socket; the answer goes to standard output.
pub(super) fn admin(
    socket: &std::path::Path,
    wait_s: u64,
    command: &[String],
) -> Result<(), String> {
    let mut words = command.to_vec();
    // The server resolves nothing against our directory: send the capture file absolute.
    if words.len() >= 3 && words[0] == "capture" && words[1] == "start" {
        let p = std::path::Path::new(&words[2]);
        if p.is_relative() {
            let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
            words[2] = cwd.join(p).display().to_string();
        }
    }
    let line = words.join(" ");
    if line.contains('\n') {
        return Err("the command must be one line".into());
    }
    let body = ustack::metrics::admin_request(socket, &line, Duration::from_secs(wait_s.max(1)))
        .map_err(|e| e.to_string())?;
    print!("{body}");
    Ok(())
}
