//! The files a run writes at its end (`--summary-out`, `--report`): checked at start, so a
//! path that cannot be written fails before hours of load rather than after; written to a
//! temporary file beside the target and renamed over it, so a reader (or a full disk) never
//! sees half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Why an output file cannot be written; names the flag.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {flag} {}: {source}", path.display())]
pub struct OutputError {
    flag: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// One output file of a run: the flag that named it and where it goes.
#[derive(Debug, Clone)]
pub struct Output {
    flag: &'static str,
    path: PathBuf,
}

impl Output {
    pub fn new(flag: &'static str, path: &Path) -> Output {
        Output {
            flag,
            path: path.to_path_buf(),
        }
    }

    /// The error of this output failing with `source`.
    pub fn failed(&self, source: std::io::Error) -> OutputError {
        OutputError {
            flag: self.flag,
            path: self.path.clone(),
            source,
        }
    }

    /// Whether the file could be written now: its directory takes a new file, and the path
    /// is not a directory. Leaves nothing behind.
    pub fn check(&self) -> Result<(), OutputError> {
        if self.path.is_dir() {
            return Err(self.failed(std::io::Error::other("it is a directory")));
        }
        let probe = self.temporary();
        std::fs::File::create(&probe).map_err(|err| self.failed(err))?;
        std::fs::remove_file(&probe).map_err(|err| self.failed(err))
    }

    /// Writes `bytes` whole: to a temporary file in the same directory, synced, then renamed
    /// over the path. On failure the temporary file is removed and an earlier file at the
    /// path is left as it was.
    pub fn write(&self, bytes: &[u8]) -> Result<(), OutputError> {
        let temporary = self.temporary();
        let written = std::fs::File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        written.map_err(|err| {
            let _ = std::fs::remove_file(&temporary);
            self.failed(err)
        })
    }

    /// `.NAME.PID.tmp` beside the path.
    fn temporary(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
        dir.unwrap_or(Path::new("."))
            .join(format!(".{name}.{}.tmp", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwritable_place_is_found_before_the_run_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Output::new("--report", &dir.path().join("no/such/dir/report.html"));
        let err = missing.check().expect_err("no such directory").to_string();
        assert!(
            err.contains("--report") && err.contains("report.html"),
            "{err}"
        );
        let directory = Output::new("--summary-out", dir.path());
        assert!(directory.check().is_err());
        let fine = Output::new("--summary-out", &dir.path().join("summary.json"));
        fine.check().expect("writable");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "nothing left behind"
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("summary.json");
        let out = Output::new("--summary-out", &path);
        out.write(b"first").expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        // The new file cannot be made (as on a full disk): the old one stays whole.
        std::fs::create_dir(out.temporary()).expect("a directory in the way");
        assert!(out.write(b"second").is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
    }
}
