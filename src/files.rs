//! Reading the files a config names (the config itself, credentials, the API token, TLS
//! certificates): regular files only, opened without blocking and read up to a cap. A FIFO
//! or device put where a config file was would otherwise block the reading thread for good
//! (on the async runtime: every endpoint with it), and `/dev/zero` would fill memory.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Largest config, token or certificate file read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest credentials file read: a row per user, a million users of ~100 bytes, and room.
pub const MAX_CREDENTIALS_BYTES: u64 = 512 << 20;

/// The text of the regular file at `path`, at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    utf8(read_bytes(path, max)?)
}

/// The text at `path`, at most `max` bytes, whatever kind of file it is: for what a person
/// names on the command line at start (`-c <(envsubst < fleet.yaml)`, `-c /dev/stdin`), where
/// waiting for a writer blocks nothing else.
pub fn read_text_at_start(path: &Path, max: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64, max));
    }
    utf8(bytes)
}

fn utf8(bytes: Vec<u8>) -> std::io::Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_bytes(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. Regular
    // files ignore the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file (a directory, FIFO, socket or device)",
        ));
    }
    if meta.len() > max {
        return Err(too_big(meta.len(), max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64, max));
    }
    Ok(bytes)
}

fn too_big(size: u64, max: u64) -> std::io::Error {
    std::io::Error::other(format!("it is {size} bytes, over the limit of {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("fleet.yaml");
        std::fs::write(&file, "users: 3\n").expect("write");
        assert_eq!(read_text(&file, 100).expect("read"), "users: 3\n");
        let err = read_text(&file, 4).expect_err("too big").to_string();
        assert!(err.contains("over the limit of 4"), "{err}");
        // A FIFO: opening it would block until a writer came; now refused at once.
        let fifo = dir.path().join("fifo.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let err = read_text(&fifo, 100).expect_err("a FIFO").to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(read_text(dir.path(), 100).is_err(), "a directory");
        assert!(read_text(Path::new("/dev/zero"), 100).is_err(), "a device");
    }
}
