//! `batchguard publish SRC DEST`: the fenced commit of a run's result. Inside
//! a run, rename SRC over DEST atomically only while the run's fencing token
//! is still the newest of its lock, so an older, slower run can never
//! overwrite the result of a newer one (G07).

use crate::error::{Error, Result};
use crate::store;
use std::path::Path;

pub fn publish(src: &Path, dest: &Path) -> Result<()> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            Error::Usage(format!(
                "publish must be called from inside a batchguard run ({name} is not set)"
            ))
        })
    };
    let lock = var("BATCHGUARD_LOCK")?;
    let fence: i64 = var("BATCHGUARD_FENCE")?
        .parse()
        .map_err(|_| Error::Usage("BATCHGUARD_FENCE is not a number".into()))?;
    let url = var("BATCHGUARD_STATE")?;
    if !src.exists() {
        return Err(Error::io(
            "publish",
            src,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let store = store::open(&url)?;
    let mut rename = || std::fs::rename(src, dest);
    match store.while_fence_current(&lock, fence, &mut rename)? {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Fenced {
            current: store
                .current_fence(&lock)?
                .map(|f| format!("newest is {f}"))
                .unwrap_or_else(|| "no token".into()),
            lock,
            fence,
            dest: dest.to_path_buf(),
        }),
        Err(e) => Err(Error::io("rename onto", dest, e)),
    }
}
