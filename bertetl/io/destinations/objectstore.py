"""An object-store prefix as DEST (`s3://`, `gs://`, `abfs://`): each output uploaded whole,
a partition committed manifest last, the lock a conditional create with a lease
(`bertetl.io.stores.objects`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from bertetl.io import manifest as manifests
from bertetl.io.destinations.base import Capabilities
from bertetl.io.destinations.files import FileDestination
from bertetl.io.manifest import MANIFEST_NAME, Manifest
from bertetl.io.partitions import COMMIT_INTENT, is_output, remote_files
from bertetl.io.stores.locations import Location


class ObjectStorePrefix(FileDestination):
    """A prefix of a bucket (`place`: a `Location` whose `local` is false)."""

    kind = "object-store"
    capabilities = Capabilities(
        commit="manifest-last", files=True, object_storage=True, every_node=True
    )
    place: Location

    @classmethod
    def accepts(cls, place: object) -> bool:
        return isinstance(place, Location) and not place.local

    @property
    def shown_root(self) -> PurePosixPath:
        """What paths in reports are shown relative to: DEST's path on the store."""
        return PurePosixPath(self.place.path)

    def committed_outputs(self) -> tuple[list[Any], list[Any]]:
        """The data files to read and the damaged ones (`bertetl.io.verify`)."""
        from bertetl.io.verify import remote_outputs

        return remote_outputs(self.place)

    def relative(self, folder: Any) -> str:
        """A prefix's path below DEST."""
        return str(folder.relative_to(self.place))

    def check(self) -> None:
        """Refuse a DEST inside another run's DEST, or holding one (`nesting`)."""
        from bertetl.io.destinations.nesting import remote_nesting

        remote_nesting(self.place)

    def foreign_outputs(self, targets: list[Any]) -> list[str]:
        """The targets holding an object bertetl did not write; DEST is listed once, not
        asked per output (a HEAD per file on a big run)."""
        below = [_strictly_below(t, self.place) for t in targets]
        listed = set(remote_files(self.place)) if any(below) else set()
        foreign = []
        for target, inside in zip(targets, below, strict=True):
            if inside:
                exists = target.relative_to(self.place) in listed
            else:
                exists = target.exists()
            if exists and not is_output(target):
                foreign.append(str(target))
        return foreign

    def exists(self) -> bool:
        return bool(remote_files(self.place))

    def read_record(self, name: str) -> str | None:
        target = self.place / name
        if not target.exists():
            return None
        return target.read_bytes().decode()

    def write_record(self, name: str, text: str) -> None:
        """One PUT: the object is the old record or the whole new one."""
        from bertetl.io.stores.objects import check_held, put_bytes

        check_held(self.place)
        put_bytes(self.place / name, text.encode())

    def remove_outputs(self, targets: list[Any]) -> int:
        from bertetl.io.stores.objects import delete_objects

        return delete_objects(targets)

    def node_staging(self) -> contextlib.AbstractContextManager[Location]:
        """A fresh prefix under `DEST/.bertetl-staging/`, deleted on exit."""
        from bertetl.io.stores.node_staging import node_staged_prefix

        return node_staged_prefix(self.place)

    def clean_leftovers(self, only_file: str | None = None) -> int:
        """This machine's staging of DEST, and what killed runs staged on the store."""
        from bertetl.io.stores.node_staging import clean_node_staging

        return super().clean_leftovers(only_file) + clean_node_staging(self.place)

    def commit_partition(
        self,
        target: Any,
        staged: Path | Location,
        manifest: Manifest,
        owned: frozenset[str],
        files: list[Any],
    ) -> Manifest:
        """Commit the staged partition to its object-store folder, where nothing renames:

        1. the lock must still be ours (`check_held`), and what this commit owns there is
           written into `COMMIT_INTENT` (so a rerun after a kill below still owns it);
        2. the old `_manifest.json` is deleted: from here on the partition is uncommitted,
           so a reader following manifests sees it missing, never a mix of old and new;
        3. bertetl's own objects there that the new manifest does not list (outputs of
           files gone from the source, of a killed attempt) are deleted;
        4. each staged output is uploaded whole to its deterministic name (replacing an
           earlier version of the same file; see `upload_file`), or copied there on the store
           when it was staged on it (`node_staging`: `copy_object`);
        5. the new manifest is written (one PUT), fingerprints taken from the store: the
           commit point; then the intent is deleted.
        A kill anywhere leaves no manifest or the old one over outputs it no longer
        matches; the next run redoes the partition and duplicates nothing."""
        from bertetl.io.stores.objects import (
            check_held,
            copy_object,
            delete_objects,
            put_bytes,
            upload_file,
        )

        check_held(target)
        present = set(remote_files(target))
        intent = {"owned": sorted((owned & present) | set(manifest.outputs))}
        put_bytes(target / COMMIT_INTENT, json.dumps(intent).encode())
        if MANIFEST_NAME in present:
            delete_objects([target / MANIFEST_NAME])
        stale = sorted((owned & present) - set(manifest.outputs) - {MANIFEST_NAME, COMMIT_INTENT})
        delete_objects(target / name for name in stale)
        for name in manifest.outputs:
            if isinstance(staged, Location) and not staged.local:
                copy_object(staged / name, target / name)
            else:
                upload_file(Path(staged) / name, target / name)
        listed = _listing(target)
        manifest.output_files = [
            output.model_copy(update={"mtime_ns": listed[output.relative]})
            for output in manifest.output_files
        ]
        check_held(target)
        manifests.write_manifest(target, manifest)  # the module's: fault tests wrap it
        delete_objects([target / COMMIT_INTENT])
        return manifest


def _strictly_below(target: object, dest: Location) -> bool:
    """Whether `target` is an object-store location inside `dest`."""
    return (
        isinstance(target, Location)
        and not target.local
        and target.is_relative_to(dest)
        and target.path.rstrip("/") != dest.path.rstrip("/")
    )


def _listing(folder: Location) -> dict[str, int]:
    """Last-modified times (ns) of the objects under `folder`, from one listing (the call
    `verify_outputs` compares against)."""
    import pyarrow.fs as pafs

    listed = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return {
        i.path[len(folder.path) + 1 :]: int(i.mtime_ns or 0)
        for i in listed
        if i.type == pafs.FileType.File
    }
