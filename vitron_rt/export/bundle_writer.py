"""Write a bundle folder atomically: all or nothing.

Files go into a hidden sibling of the target (`.NAME.partial-XXXX`, same filesystem, so
the final step is a rename); `commit(manifest)` writes `manifest.json` last and renames
the folder into place. Leaving the `with` block without committing, by an exception or
otherwise, removes the partial folder, so a failed export never leaves half a bundle.

    with BundleWriter(out, overwrite=False) as w:
        exported = export_component(module, spec, w.staging)
        tok = w.write_file("tokenizer.json", tokenizer.to_str())
        w.commit(Manifest(components={spec.name: exported.entry}, ...))

An existing target is refused unless `overwrite=True`, and even then only when it is a
bundle (has a manifest.json) or empty: `--out ~` must not replace a home folder. A
process killed outright (SIGKILL, power loss) can leave a `.NAME.partial-*` folder
behind; it is never mistaken for a bundle because it is not at the target path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from vitron_rt.bundle import MANIFEST_NAME, Bundle, BundleError, FileRef, Manifest, write_manifest


class BundleWriter:
    """Context manager that stages a bundle and commits it with one rename. Constructing
    it touches no files; entering creates the staging folder."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self._staging: Path | None = None
        self._committed = False

    @property
    def staging(self) -> Path:
        """The folder to write files into (the bundle root while it is being built)."""
        if self._staging is None:
            raise BundleError("BundleWriter.staging is only available inside its `with` block")
        return self._staging

    def __enter__(self) -> "BundleWriter":
        self._refuse_existing()
        for parent in self.out.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise BundleError(f"cannot write a bundle to {self.out}: {parent} is a file, not a folder")
                break
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
            # mkdtemp makes the folder private (0700); a bundle is an ordinary folder.
            umask = os.umask(0)
            os.umask(umask)
            self._staging.chmod(0o777 & ~umask)
        except OSError as e:
            raise BundleError(f"cannot write a bundle to {self.out}: {_reason(e)}") from None
        return self

    def _refuse_existing(self) -> None:
        out = self.out
        if not out.exists():
            return
        if not self.overwrite:
            raise BundleError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
        if not out.is_dir():
            raise BundleError(f"{out} exists and is not a folder; refusing to replace it with a bundle")
        if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
            raise BundleError(f"{out} is a non-empty folder that is not a bundle; refusing to replace it")

    def write_file(self, relpath: str, data: str | bytes) -> FileRef:
        """Write a small file (tokenizer, chat template) into the bundle; its FileRef."""
        path = self.staging / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
        return FileRef.of(self.staging, relpath)

    def commit(self, manifest: Manifest) -> Path:
        """Check that every file the manifest names is staged with its recorded size,
        write the manifest, and move the folder to the target. Returns the target."""
        staging = self.staging
        if self._committed:
            raise BundleError(f"{self.out}: bundle already committed")
        Bundle(root=staging, manifest=manifest).verify(hashes=False)
        write_manifest(manifest, staging)
        self._refuse_existing()  # the target may have appeared while we exported
        old: Path | None = None
        try:
            if self.out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
                os.replace(self.out, old)
            os.replace(staging, self.out)
        except OSError as e:
            if old is not None and not self.out.exists():
                os.replace(old, self.out)  # put the previous bundle back
                old = None
            raise BundleError(f"cannot move the bundle into {self.out}: {_reason(e)}") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self._committed = True
        self._staging = None
        return self.out

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if exc_type is None and not self._committed:
            raise BundleError(f"{self.out}: BundleWriter closed without commit(); nothing was written")


def _reason(e: OSError) -> str:
    """`Permission denied (/path)`: the OS's words and the path they are about."""
    return f"{e.strerror or e} ({e.filename})" if e.filename else str(e.strerror or e)
