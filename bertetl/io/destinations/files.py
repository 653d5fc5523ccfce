"""What the two destinations of Parquet files share (a local folder, an object-store prefix):
one output file per input file at a deterministic path, a partition per folder with its
`_manifest.json`, outputs checked against their fingerprints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from bertetl.errors import InputError
from bertetl.io import partitions as partitions_io
from bertetl.io import paths
from bertetl.io.destinations.base import Destination, PlacedDestination
from bertetl.io.manifest import Manifest
from bertetl.io.partitions import SHOWN_FILES, Partition


class FileDestination(PlacedDestination):
    """The shared part of `LocalFolder` and `ObjectStorePrefix`; `place` is a `Path` or a
    `Location` on a store, which the `bertetl.io` functions below take either way."""

    def check(self) -> None:
        """Nothing to check before the run's path checks (`check_run_paths`)."""

    @property
    def given(self) -> Any:
        """`place` as the path functions of `bertetl.io.paths` take it."""
        return self.place

    def root_for(self, source: object) -> tuple[Destination, str | None]:
        root, only_file = paths.dest_root(_place(source), self.given)
        return type(self)(root), only_file

    def output_target(self, file: Any, source: object) -> Any:
        return paths.dest_path(file, _place(source), self.given)

    def foreign_outputs(self, targets: list[Any]) -> list[str]:
        """The targets holding a file bertetl did not write."""
        raise NotImplementedError

    def commit_partition(
        self,
        target: Any,
        staged: Path,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Path],
    ) -> Manifest:
        """Each kind commits its own way (a staged swap, uploads with the manifest last)."""
        raise NotImplementedError

    def check_outputs_replaceable(self, targets: list[Any]) -> None:
        """Refuse (`InputError`, one line naming them) files at this run's output paths that
        bertetl did not write (`is_output`): an output is replaced by a rerun, and a run
        deletes only what it wrote."""
        foreign = self.foreign_outputs(targets)
        if foreign:
            more = f" and {len(foreign) - SHOWN_FILES} more" if len(foreign) > SHOWN_FILES else ""
            raise InputError(
                f"{len(foreign)} file(s) bertetl did not write are where this run writes its "
                f"outputs: {', '.join(foreign[:SHOWN_FILES])}{more}; a run replaces only its own "
                "outputs, so move them (or pick another DEST)"
            )

    def partition_target(self, partition: Partition) -> Any:
        return partitions_io.dest_folder(self.place, partition)

    def check_foreign(self, partitions: list[Partition]) -> dict[str, frozenset[str]]:
        return partitions_io.check_foreign_files(self.place, partitions)

    def earlier_outputs(
        self,
        target: Any,
        partition: Partition,
        outputs: list[str],
        damaged: bool,
        fields: list[pa.Field],
        scratch: Path,
    ) -> list[Any]:
        """The outputs of the partition's last commit that verified, where they are."""
        return [target / name for name in outputs]

    def committed_outputs(self) -> tuple[list[Any], list[Any]]:
        raise NotImplementedError

    @property
    def shown_root(self) -> Any:
        return None  # each kind's own (a property: isinstance checks read it)

    def check_replace_all(self) -> None:
        raise NotImplementedError(f"{self.uri}: a folder's outputs are committed file by file")

    def replace_all(self, staged: Path, files: list[Path], rows: int, record: str) -> None:
        raise NotImplementedError(f"{self.uri}: a folder's outputs are committed file by file")

    def relative(self, folder: Any) -> str:
        """Each kind names its folders its own way (an OS path, a prefix of a bucket)."""
        raise NotImplementedError

    def file_path(self, relative: str) -> Any:
        return self.place / relative

    # A keyed run (`--key`) rewrites the outputs of changed input files one by one, through
    # `sink`, and records what it committed last (`bertetl.io.keys.KeyedRecord`).

    def existing_outputs(self) -> list[Any]:
        """bertetl's output files under DEST now (the files, not a manifest: the truth a
        keyed run's index is built from), as paths or locations; none when DEST is new."""
        from bertetl.errors import InputError
        from bertetl.io.partitions import is_output
        from bertetl.io.read import discover

        if not self.exists():
            return []
        try:
            files = discover(self.place)
        except InputError:  # no data file yet (only the lock)
            return []
        found = []
        for file in files:
            place = file.location if file.filesystem is not None else Path(file.path)
            if is_output(place):
                found.append(place)
        return found

    def exists(self) -> bool:
        """Whether DEST is there yet."""
        raise NotImplementedError

    def read_record(self, name: str) -> str | None:
        """The text of DEST's file `name` (a keyed run's record), None when it is absent."""
        raise NotImplementedError

    def write_record(self, name: str, text: str) -> None:
        """Write DEST's file `name` whole (a keyed run's record: its commit point)."""
        raise NotImplementedError

    def remove_outputs(self, targets: list[Any]) -> int:
        """Delete output files bertetl wrote (a keyed run's outputs of removed inputs)."""
        raise NotImplementedError


def _place(side: object) -> Any:
    """A SOURCE or DEST as the `bertetl.io` functions take it (a destination's own place; a
    local path as a string)."""
    side = getattr(side, "place", side)
    return os.fspath(side) if isinstance(side, Path) else side
