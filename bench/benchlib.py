"""What the benches share (imported from the bench/ directory they run in)."""
import os
import shutil


def installed(path, tmp):
    """A fresh copy of `path` in `tmp`, as install(1) or dpkg would write it.

    The file the linker has just written starts measurably slower than a
    copy of it (0.3-0.5 ms per `batchguard exec` here: its page-cache pages
    fault in in smaller pieces), and that is not what a host runs."""
    copy = os.path.join(tmp, os.path.basename(path))
    shutil.copy2(path, copy)
    return copy
