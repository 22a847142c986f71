//! Which cron daemon fires the jobs (SPEC §9): cronie (Fedora, RHEL, Arch,
//! SUSE), the Vixie-derived `cron` of Debian and Ubuntu (which ignores
//! `CRON_TZ`: it only exports it to the job) or busybox `crond` (Alpine,
//! small images; no `CRON_TZ`, no user field, fires strictly by the clock).
//!
//! Detection looks at files only, never runs the daemon: `/usr/sbin/crond`
//! is cronie's binary unless it resolves to busybox; `/usr/sbin/cron` (or
//! dpkg's record of the `cron` package, or `/etc/debian_version`) is
//! Debian's. `cron install --cron-flavor` and `BATCHGUARD_CRON_FLAVOR`
//! override it (the latter for `cron next`, `status` and the watchdog after
//! an overridden install).

use std::path::Path;

/// The environment variable that overrides detection for every command.
pub const ENV: &str = "BATCHGUARD_CRON_FLAVOR";

/// A cron daemon family, as far as batchguard's cron.d files and fire
/// times depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// cronie: honours `CRON_TZ`, cron.d with a user field, the 3-hour rule
    /// for local clock changes.
    Cronie,
    /// Debian's and Ubuntu's `cron` (Vixie cron 3.0 with Debian's patches):
    /// cron.d with a user field, the same 3-hour rule, `CRON_TZ` ignored.
    Vixie,
    /// busybox `crond`: per-user crontabs only (no user field), no
    /// `CRON_TZ`, every job fires by the wall clock (none in a skipped
    /// hour, twice in a repeated one).
    Busybox,
}

impl Flavor {
    pub const ALL: [Flavor; 3] = [Flavor::Cronie, Flavor::Vixie, Flavor::Busybox];

    /// `cronie`, `vixie`, `busybox` (the `--cron-flavor` values).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Cronie => "cronie",
            Flavor::Vixie => "vixie",
            Flavor::Busybox => "busybox",
        }
    }

    /// For people (G13, `cron install`).
    pub fn describe(self) -> &'static str {
        match self {
            Flavor::Cronie => "cronie (honours CRON_TZ)",
            Flavor::Vixie => {
                "Debian/Ubuntu cron (Vixie-derived; ignores CRON_TZ, so jobs with a timezone are installed as per-minute `run --if-due` lines)"
            }
            Flavor::Busybox => {
                "busybox crond (no CRON_TZ and no user field: jobs with a timezone are installed as per-minute `run --if-due` lines)"
            }
        }
    }

    /// Whether the daemon fires a `CRON_TZ=` job at that zone's wall time.
    pub fn honours_cron_tz(self) -> bool {
        self == Flavor::Cronie
    }

    /// Whether cron.d lines carry a user field.
    pub fn has_user_field(self) -> bool {
        self != Flavor::Busybox
    }

    pub fn parse(s: &str) -> Option<Flavor> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cronie" => Some(Flavor::Cronie),
            "vixie" | "debian" | "cron" => Some(Flavor::Vixie),
            "busybox" => Some(Flavor::Busybox),
            _ => None,
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Flavor, String> {
        Flavor::parse(s)
            .ok_or_else(|| format!("unknown cron flavor `{s}`: cronie, vixie or busybox"))
    }
}

/// The flavour of the cron installed under `root` (`/` on a real host),
/// from its files; `None` when no known cron is installed.
pub fn detect_in(root: &Path) -> Option<Flavor> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    for crond in ["/usr/sbin/crond", "/sbin/crond", "/usr/bin/crond"] {
        let path = at(crond);
        if std::fs::symlink_metadata(&path).is_ok() {
            let target = std::fs::canonicalize(&path).unwrap_or(path);
            let busybox = target
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("busybox"));
            return Some(if busybox {
                Flavor::Busybox
            } else {
                Flavor::Cronie
            });
        }
    }
    if at("/usr/sbin/cron").exists()
        || at("/var/lib/dpkg/info/cron.list").exists()
        || at("/var/lib/dpkg/info/systemd-cron.list").exists()
    {
        return Some(Flavor::Vixie);
    }
    if at("/etc/debian_version").exists() {
        return Some(Flavor::Vixie);
    }
    None
}

/// This host's flavour: `BATCHGUARD_CRON_FLAVOR` when set and valid, else
/// [`detect_in`]`("/")`, else cronie (the SPEC's reference daemon).
pub fn host() -> Flavor {
    if let Some(f) = std::env::var(ENV).ok().as_deref().and_then(Flavor::parse) {
        return f;
    }
    detect_in(Path::new("/")).unwrap_or(Flavor::Cronie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(root: &Path, p: &str) {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }

    #[test]
    fn detects_each_daemon_from_its_files() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(detect_in(t.path()), None);

        let debian = tempfile::tempdir().unwrap();
        touch(debian.path(), "etc/debian_version");
        assert_eq!(detect_in(debian.path()), Some(Flavor::Vixie));
        touch(debian.path(), "usr/sbin/cron");
        assert_eq!(detect_in(debian.path()), Some(Flavor::Vixie));

        let fedora = tempfile::tempdir().unwrap();
        touch(fedora.path(), "usr/sbin/crond");
        assert_eq!(detect_in(fedora.path()), Some(Flavor::Cronie));

        let alpine = tempfile::tempdir().unwrap();
        touch(alpine.path(), "bin/busybox");
        fs::create_dir_all(alpine.path().join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink(
            alpine.path().join("bin/busybox"),
            alpine.path().join("usr/sbin/crond"),
        )
        .unwrap();
        assert_eq!(detect_in(alpine.path()), Some(Flavor::Busybox));
    }

    #[test]
    fn parses_names() {
        for f in Flavor::ALL {
            assert_eq!(f.name().parse::<Flavor>().unwrap(), f);
        }
        assert_eq!(Flavor::parse("Debian"), Some(Flavor::Vixie));
        assert!("fcron".parse::<Flavor>().unwrap_err().contains("cronie"));
        assert!(Flavor::Cronie.honours_cron_tz());
        assert!(!Flavor::Vixie.honours_cron_tz() && !Flavor::Busybox.honours_cron_tz());
    }
}
