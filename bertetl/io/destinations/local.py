"""A local folder as DEST: partitions staged beside it and swapped in with one rename
(`bertetl.io.commit.swap_in`), the lock a `flock` on `DEST/.bertetl.lock`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bertetl.io import commit as commits
from bertetl.io import manifest as manifests
from bertetl.io.destinations.base import Capabilities
from bertetl.io.destinations.files import FileDestination
from bertetl.io.manifest import Manifest
from bertetl.io.partitions import is_output
from bertetl.io.stores.locations import Location


class LocalFolder(FileDestination):
    """A folder on this machine's filesystem (`place`: a `Path`)."""

    kind = "folder"
    capabilities = Capabilities(commit="swap", files=True, object_storage=False, every_node=False)

    def __init__(self, place: str | os.PathLike[str] | Location) -> None:
        super().__init__(Path(place.path if isinstance(place, Location) else place))

    @property
    def uri(self) -> str:
        return os.fspath(self.place)

    @property
    def given(self) -> str:
        return os.fspath(self.place)

    @classmethod
    def accepts(cls, place: object) -> bool:
        if isinstance(place, Location):  # a `Location` is a PathLike, local or not
            return place.local
        return isinstance(place, (str, os.PathLike))

    @property
    def shown_root(self) -> Path:
        """What paths in reports are shown relative to."""
        return self.place

    def committed_outputs(self) -> tuple[list[Any], list[Any]]:
        """The data files to read and the damaged ones (`bertetl.io.verify`)."""
        from bertetl.io.verify import local_outputs

        return local_outputs(self.place)

    def relative(self, folder: Any) -> str:
        """A folder's path below DEST, as a POSIX path."""
        return Path(folder).relative_to(self.place).as_posix()

    def check(self) -> None:
        """Refuse a DEST inside another run's DEST, or holding one (`nesting`)."""
        from bertetl.io.destinations.nesting import local_nesting

        local_nesting(self.place)

    def foreign_outputs(self, targets: list[Any]) -> list[str]:
        """The targets holding a file bertetl did not write (`is_output`)."""
        return [str(t) for t in targets if os.path.lexists(t) and not is_output(t)]

    def exists(self) -> bool:
        return self.place.is_dir()

    def read_record(self, name: str) -> str | None:
        try:
            return (self.place / name).read_text()
        except FileNotFoundError:
            return None

    def write_record(self, name: str, text: str) -> None:
        """Written to a hidden temp file, fsynced, then renamed over `name`."""
        from bertetl.io.write import fsync_dir

        path = self.place / name
        temp = self.place / f".{name}.{os.getpid()}.bertetl-tmp"
        with open(temp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_dir(self.place)

    def remove_outputs(self, targets: list[Any]) -> int:
        removed = 0
        for target in targets:
            try:
                os.unlink(target)
                removed += 1
            except FileNotFoundError:
                continue
        return removed

    def commit_partition(
        self,
        target: Any,
        staged: Path,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Path],
    ) -> Manifest:
        """The manifest written last into the staged folder, then swapped in whole: readers
        see the old partition or the new one."""
        manifests.write_manifest(staged, manifest)  # the module's: fault tests wrap it
        commits.swap_in(staged, target, owned=owned | set(manifest.outputs))
        return manifest
