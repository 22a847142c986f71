//! Files replaced atomically, for everything batchguard writes that another
//! program reads while it may be changing: cron.d files (cron), the metrics
//! textfile (node_exporter) and spooled outcomes (the next invocation).
//!
//! The bytes go to a hidden temporary file beside the target (a dot name:
//! cron, node_exporter and the spool reader all pass over it), are synced,
//! get their mode whatever the umask, and the file is renamed over the
//! target: a reader sees the old file or the new one, never half of one.
//! Syncing the directory, when the caller needs the rename itself durable,
//! is the caller's (one sync after several files).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replace `path` with `bytes`, mode `mode`. On error the target is
/// untouched and no temporary file is left behind.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_with_the_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.prom");
        fs::write(&path, "old").unwrap();
        replace(&path, b"new", 0o640).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_replace_keeps_the_target() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails, the file is removed.
        let path = dir.path().join("sub");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "keep").unwrap();
        assert!(replace(&path, b"new", 0o644).is_err());
        assert_eq!(fs::read_to_string(path.join("x")).unwrap(), "keep");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
