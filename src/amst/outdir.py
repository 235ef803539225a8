"""Output folders amst owns: the ownership marker, overlap checks, and safe replacement.

The rule for every command: amst removes or replaces only what it can prove it wrote
itself. A folder amst writes holds a marker, ``.amst/owner.json``, that names the command
that made it and the entries (files and sub-folders) it writes there. Replacing an output
removes only those entries, and only after every file inside them has been checked to be
one amst writes (slice TIFFs by their recorded names, Zarr chunks and metadata by their
key grammar, report figures by theirs); anything else stops the replacement before a
single file is removed, with its name in the message. Files of the user's own beside the
entries are left where they are. Outputs never overlap inputs or transforms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from . import __version__

STATE_DIR = ".amst"
MARKER = "owner.json"
FORMAT = "amst-owned"

_ZARR_GROUP_META = {".zgroup", ".zattrs", "zarr.json", ".zmetadata"}
_ZARR_ARRAY_META = {".zarray", ".zattrs", "zarr.json"}
_DIGITS = re.compile(r"^\d+$")
# Every file a run's report holds (quality/report.py and ``amst evaluate --compare``).
REPORT_FILES = frozenset({"index.html", "evaluation.json", "residual.png", "transforms.png", "reslice_xz.png",
                          "reslice_yz.png", "ground_truth.png", "compare_xz.png", "compare_yz.png",
                          "z_spacing.png", "elastic_fields.png", "elastic_largest.png"})
STATE_FILES = frozenset({MARKER, "state.json", "prealign.json"})
_JOURNAL_DIR = re.compile(r"^journal(_pass\d+)?$")
_JOURNAL_FILE = re.compile(r"^\.?\d{7}\.json(\.partial)?$")


class OutputError(ValueError):
    """An output path that amst must not write to (or replace) as asked."""


@dataclass(frozen=True)
class OwnedEntry:
    """One thing amst writes in an owned folder.

    ``name`` is one path component inside the folder, or ``"."`` for the folder's own
    content (an ``amst apply`` stack). ``kind`` says how amst recognises the files it wrote
    inside it: ``file``, ``zarr``, ``tiff``, ``report``, ``state`` (the journal folder) or
    ``owned`` (a sub-folder with a marker of its own). ``names`` lists the slice files of a
    ``tiff`` entry and the level arrays of a ``zarr`` entry.
    """

    name: str
    kind: str
    names: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d: dict = {"name": self.name, "kind": self.kind}
        if self.names:
            d["names"] = list(self.names)
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> "OwnedEntry":
        return cls(str(d["name"]), str(d["kind"]), tuple(d.get("names", ())))


@dataclass
class Ownership:
    """What ``.amst/owner.json`` says: which command wrote the folder, and what."""

    kind: str
    entries: list[OwnedEntry] = field(default_factory=list)
    complete: bool = False

    def to_json(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "amst_version": __version__, "complete": self.complete,
                "entries": [e.to_json() for e in self.entries]}


# Folders of runs made before the marker existed: their ``.amst/state.json`` proves them.
_LEGACY_RUN_ENTRIES = [OwnedEntry(STATE_DIR, "state"), OwnedEntry("amst.log", "file"),
                       OwnedEntry("config.yaml", "file"), OwnedEntry("transforms.json", "file"),
                       OwnedEntry("aligned.zarr", "zarr"), OwnedEntry("report", "report")]


def marker_path(folder: Path) -> Path:
    return Path(folder) / STATE_DIR / MARKER


def read_ownership(folder: str | Path) -> Ownership | None:
    """The folder's marker, or None when amst cannot prove it wrote the folder."""
    folder = Path(folder)
    path = marker_path(folder)
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != FORMAT:
                return None
            return Ownership(str(doc["kind"]), [OwnedEntry.from_json(e) for e in doc.get("entries", [])],
                             bool(doc.get("complete", False)))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if (folder / STATE_DIR / "state.json").is_file():
        entries = list(_LEGACY_RUN_ENTRIES)
        names = _legacy_tiff_names(folder / "transforms.json")
        if names:
            entries.append(OwnedEntry("aligned", "tiff", names))
        return Ownership("run", entries, (folder / "transforms.json").is_file())
    return None


def _legacy_tiff_names(transforms: Path) -> tuple[str, ...]:
    """The slice files of an older TIFF run: its slice names, as its TIFF writer named them."""
    from .stack.tiff import tiff_file_names

    try:
        doc = json.loads(transforms.read_text())
        names = [str(s["name"]) for s in doc["slices"]]
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    return tuple(tiff_file_names(names))


def write_ownership(folder: str | Path, ownership: Ownership) -> None:
    """Write the marker atomically (the folder's ``.amst`` is created if needed)."""
    path = marker_path(Path(folder))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(ownership.to_json()))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a resumed run) sees either the old file or the complete new one, never a torn one.
    The temporary file is ``.NAME.partial`` (:func:`remove_owned` knows the name).

    Parameters
    ----------
    path : path
        The file to write; its folder must exist.
    text : str
        Written in text mode (the locale's encoding, as ``open`` does).
    """
    _atomic_write(Path(path), "w", text)


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """:func:`atomic_write_text` for bytes (e.g. an encoded image).

    Parameters
    ----------
    path : path
        The file to write; its folder must exist.
    data : bytes
    sync : bool
        fsync before the rename. Output slices skip it: the journal entry that marks a slice
        done records its file sizes and a resumed run recomputes a slice whose file does not
        match them (:mod:`amst.pipeline.journal`), as it does for Zarr chunks.
    """
    _atomic_write(Path(path), "wb", data, sync)


def _partial_name(name: str) -> str:
    """The temporary file :func:`_atomic_write` writes beside ``name`` before the rename."""
    return f".{name}.partial"


def _with_partials(names) -> set[str]:
    """``names`` and the temporary files an interrupted atomic write of each leaves."""
    return set(names) | {_partial_name(n) for n in names}


def _atomic_write(path: Path, mode: str, content: str | bytes, sync: bool = True) -> None:
    """The one atomic write: temporary file beside ``path``, fsync, rename over ``path``."""
    tmp = path.with_name(_partial_name(path.name))
    with open(tmp, mode) as f:
        f.write(content)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def refuse_overlap(out: str | Path, protected: Mapping[str, str | Path | None]) -> None:
    """Refuse an output that is, lies inside, or contains any ``protected`` path.

    ``protected`` maps a description ("the input", "the transforms") to a path; symbolic
    links are resolved, so a link to the input is the input.
    """
    out_r = Path(out).resolve()
    for what, p in protected.items():
        if p is None:
            continue
        p_r = Path(p).resolve()
        if out_r == p_r:
            raise OutputError(f"the output {out} is {what} ({p}); choose another output path")
        if p_r in out_r.parents:
            raise OutputError(f"the output {out} lies inside {what} ({p}); choose an output outside it")
        if out_r in p_r.parents:
            raise OutputError(f"{what} ({p}) lies inside the output {out}; choose another output path")


def _unknown_in_entry(folder: Path, entry: OwnedEntry) -> list[Path]:
    """Files inside ``entry`` that amst does not write there (empty: safe to remove).

    Symbolic links are never amst's: a link in an entry is reported, not followed.
    """
    root = folder if entry.name == "." else folder / entry.name
    if root.is_symlink():
        return [root]
    if not root.exists():
        return []
    if entry.kind == "file":
        return [] if root.is_file() else [root]
    if not root.is_dir():
        return [root]
    skip = {STATE_DIR} if entry.name == "." else set()
    if entry.kind == "owned":
        inner = read_ownership(root)
        if inner is None:
            return [root]
        claimed = {e.name for e in inner.entries} | {STATE_DIR}
        beside = [p for p in sorted(root.iterdir()) if p.name not in claimed]  # the outer entry claims the folder
        return beside + unknown_files(root, inner)
    if entry.kind == "zarr":
        return _unknown_in_zarr(root, skip, set(entry.names))
    if entry.kind == "tiff":
        names = _with_partials(entry.names)
        return [p for p in sorted(root.iterdir()) if p.name not in skip
                and (p.is_symlink() or not p.is_file() or p.name not in names)]
    if entry.kind == "report":
        names = _with_partials(REPORT_FILES)
        return [p for p in sorted(root.iterdir()) if p.is_symlink() or not p.is_file() or p.name not in names]
    if entry.kind == "state":
        unknown = []
        for p in sorted(root.iterdir()):
            if p.is_symlink():
                unknown.append(p)
            elif p.is_dir() and _JOURNAL_DIR.match(p.name):
                unknown += [q for q in sorted(p.iterdir())
                            if q.is_symlink() or not q.is_file() or not _JOURNAL_FILE.match(q.name)]
            elif not (p.is_file() and (p.name in STATE_FILES or p.name.removeprefix(".").removesuffix(".partial")
                                       in STATE_FILES)):
                unknown.append(p)
        return unknown
    return [root]


def _unknown_in_zarr(root: Path, skip: set[str], arrays: set[str]) -> list[Path]:
    """Files of a Zarr group that are not the group's metadata, the metadata of the level
    arrays amst wrote (``arrays``; any level when empty, for markers that predate the list),
    or chunks of those arrays inside their chunk grid."""
    unknown: list[Path] = []
    for p in sorted(root.iterdir()):
        if p.name in skip:
            continue
        if p.is_symlink():
            unknown.append(p)
        elif p.is_file():
            if p.name not in _ZARR_GROUP_META:
                unknown.append(p)
        elif _is_index(p.name) and (not arrays or p.name in arrays):
            unknown += _unknown_in_zarr_array(p)
        else:
            unknown.append(p)
    return unknown


def _is_index(name: str) -> bool:
    """A chunk or level index as zarr spells it: digits without leading zeros."""
    return bool(_DIGITS.match(name)) and str(int(name)) == name


def _unknown_in_zarr_array(array: Path) -> list[Path]:
    grid = _chunk_grid(array)
    unknown: list[Path] = []
    for p in sorted(array.iterdir()):
        if p.is_symlink():
            unknown.append(p)
        elif p.is_file():
            if p.name not in _ZARR_ARRAY_META:
                unknown.append(p)
        elif p.name == "c" and (array / "zarr.json").is_file():  # v3 default chunk keys: c/z/y/x
            unknown += _unknown_chunks(p, grid, 0, [])
        elif _is_index(p.name):  # chunk keys with "/": z/y/x
            unknown += _unknown_chunks(p, grid, 1, [int(p.name)])
        else:
            unknown.append(p)
    return unknown


def _unknown_chunks(node: Path, grid: list[int] | None, depth: int, index: list[int]) -> list[Path]:
    """Below ``node`` (at chunk-key ``depth``), what is not a chunk inside ``grid``."""
    ndim = len(grid) if grid else 3
    if index and grid and index[-1] >= grid[len(index) - 1]:
        return [node]
    if depth == ndim:
        return [] if node.is_file() and not node.is_symlink() else [node]
    if node.is_symlink() or not node.is_dir():
        return [node]
    unknown: list[Path] = []
    for p in sorted(node.iterdir()):
        if not _is_index(p.name):
            unknown.append(p)
        else:
            unknown += _unknown_chunks(p, grid, depth + 1, [*index, int(p.name)])
    return unknown


def _chunk_grid(array: Path) -> list[int] | None:
    """Number of chunks along each axis, from the array's v2 or v3 metadata (None if unreadable)."""
    try:
        if (array / ".zarray").is_file():
            meta = json.loads((array / ".zarray").read_text())
            shape, chunks = meta["shape"], meta["chunks"]
        else:
            meta = json.loads((array / "zarr.json").read_text())
            shape, chunks = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        return [-(-int(s) // int(c)) for s, c in zip(shape, chunks)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unknown_files(folder: str | Path, ownership: Ownership) -> list[Path]:
    """Every path inside the entries of ``ownership`` that amst does not write there."""
    folder = Path(folder)
    entries = list(ownership.entries)
    if not any(e.name == STATE_DIR for e in entries):
        entries.append(OwnedEntry(STATE_DIR, "state"))  # the marker's own folder
    return [p for e in entries for p in _unknown_in_entry(folder, e)]


def _describe(paths: list[Path], folder: Path) -> str:
    shown = ", ".join(str(p.relative_to(folder)) if folder in p.parents else str(p) for p in paths[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return shown + more


def remove_owned(folder: str | Path, ownership: Ownership) -> None:
    """Remove the entries amst wrote in ``folder``, after proving every file in them is amst's.

    The user's own files beside the entries stay where they are.

    Raises
    ------
    OutputError
        Naming the files inside an entry that amst did not write; nothing is removed then.
    """
    folder = Path(folder)
    unknown = unknown_files(folder, ownership)
    if unknown:
        raise OutputError(
            f"{folder} holds an earlier amst {ownership.kind} output, but also files amst did not write inside it: "
            f"{_describe(unknown, folder)}. amst removes only what it wrote itself: move those files away "
            "(or choose another output path) and run again")
    _remove_checked(folder, ownership)


def remove_entry(folder: str | Path, entry: OwnedEntry) -> None:
    """Remove one entry amst wrote in ``folder`` (not the folder's marker or its other entries),
    after proving every file in it is amst's.

    Raises
    ------
    OutputError
        Naming the files inside the entry that amst did not write; nothing is removed then.
    """
    folder = Path(folder)
    if entry.kind in ("state", "owned") or entry.name == ".":
        raise ValueError(f"remove_entry removes a single output entry, not {entry.name!r} ({entry.kind})")
    unknown = _unknown_in_entry(folder, entry)
    if unknown:
        raise OutputError(f"{folder / entry.name} holds files amst did not write: {_describe(unknown, folder)}; "
                          "move them away and run again")
    root = folder / entry.name
    if root.is_dir():
        shutil.rmtree(root)
    elif root.exists():
        root.unlink()


def _remove_checked(folder: Path, ownership: Ownership) -> None:
    """Remove the entries of ``ownership`` and then its marker; :func:`unknown_files` found nothing else there."""
    for e in ownership.entries:
        root = folder / e.name
        if e.name == ".":
            for child in folder.iterdir():
                if child.name != STATE_DIR:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif e.kind == "owned":
            inner = read_ownership(root) if root.is_dir() else None
            if inner is not None:
                _remove_checked(root, inner)
                root.rmdir()  # empty: files beside its entries were refused as unknown
        elif e.kind != "state" and root.is_dir():
            shutil.rmtree(root)
        elif e.kind != "state" and root.exists():
            root.unlink()
    if (folder / STATE_DIR).is_dir():  # last: it holds the marker
        shutil.rmtree(folder / STATE_DIR)


def claim_output(out: str | Path, *, kind: str, entries: Iterable[OwnedEntry], overwrite: bool,
                 protected: Mapping[str, str | Path | None] | None = None,
                 replace_own: bool = False) -> Ownership:
    """Make ``out`` an empty amst-owned output folder of ``kind``, or refuse.

    Parameters
    ----------
    out : path
        The output folder (created when missing).
    kind : str
        The command writing it (``run``, ``apply``, ``synth``, ``demo``, ``prealign``).
    entries : iterable of OwnedEntry
        What the command writes there; recorded in the marker before anything is written.
    overwrite : bool
        Replace an earlier output of the same ``kind`` (only its own entries).
    protected : mapping, optional
        Paths the output must not overlap (see :func:`refuse_overlap`).
    replace_own : bool
        Replace an earlier output of the same kind even without ``overwrite`` (the demo).

    Returns
    -------
    Ownership
        The marker now written in ``out`` (``complete`` False).

    Raises
    ------
    OutputError
        When ``out`` overlaps a protected path, is a file, holds files amst did not write,
        holds another command's output, or holds an earlier output and ``overwrite`` is False.
    """
    out = Path(out)
    refuse_overlap(out, protected or {})
    entries = list(entries)
    if out.exists() and not out.is_dir():
        raise OutputError(f"the output {out} is a file, not a folder; choose another output path")
    _clear_interrupted_claim(out)
    if out.is_dir() and any(out.iterdir()):
        found = read_ownership(out)
        if found is None:
            listing = sorted(out.iterdir())
            raise OutputError(
                f"{out} already holds {len(listing)} file(s) or folder(s) that amst did not write "
                f"({_describe(listing, out)}); amst never removes files it did not write: choose a new or empty "
                "output folder")
        if found.kind != kind:
            raise OutputError(f"{out} holds the output of 'amst {found.kind}', not of 'amst {kind}'; "
                              "choose another output path")
        if not (overwrite or replace_own):
            state = "a complete" if found.complete else "an incomplete (interrupted?)"
            raise OutputError(f"{out} holds {state} earlier 'amst {kind}' output; pass --overwrite to replace it "
                              "(only the files amst wrote there are removed), or choose another output path")
        previous = {e.name for e in found.entries}
        in_the_way = [out / e.name for e in entries if e.name not in previous and e.name != "."
                      and ((out / e.name).exists() or (out / e.name).is_symlink())]
        if in_the_way:
            raise OutputError(
                f"{out} holds {_describe(in_the_way, out)}, which the earlier 'amst {kind}' output there did not "
                f"write and this one would: move it away (or choose another output path) and run again")
        remove_owned(out, found)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out} is not writable; choose another output path")
    ownership = Ownership(kind, entries, complete=False)
    write_ownership(out, ownership)
    return ownership


def _clear_interrupted_claim(out: Path) -> None:
    """Remove what a claim killed before its marker existed left behind: ``out`` holding only
    ``.amst``, and that holding nothing or only the marker's temporary file (its name is
    amst's own, see :func:`atomic_write_text`). A SIGKILL there otherwise blocked every retry."""
    state = out / STATE_DIR
    if not out.is_dir() or state.is_symlink() or not state.is_dir() or [p.name for p in out.iterdir()] != [STATE_DIR]:
        return
    inside = list(state.iterdir())
    partial = state / f".{MARKER}.partial"
    if all(p == partial and p.is_file() and not p.is_symlink() for p in inside):
        try:  # another amst claiming the same folder at once may be writing it: leave it to that one
            partial.unlink(missing_ok=True)
            state.rmdir()
        except OSError:
            return


def mark_complete(out: str | Path, ownership: Ownership) -> None:
    """Record in the marker that the command finished writing ``out``."""
    ownership.complete = True
    write_ownership(out, ownership)


def mark_incomplete(out: str | Path, result_file: str) -> None:
    """Record that a command writes into its finished output ``out`` again (a resumed run):
    the marker says incomplete, and ``result_file``, whose presence says the output is
    complete, is removed until the command writes it anew.

    Only a ``result_file`` the marker lists as one of its ``file`` entries is removed (amst
    wrote it); a link there is removed as a link, never followed.
    """
    out = Path(out)
    ownership = read_ownership(out)
    if ownership is None:
        return
    ownership.complete = False
    write_ownership(out, ownership)
    path = out / result_file
    owned = any(e.name == result_file and e.kind == "file" for e in ownership.entries)
    if owned and (path.is_symlink() or path.is_file()):
        path.unlink()


__all__ = ["OutputError", "OwnedEntry", "Ownership", "claim_output", "mark_complete", "mark_incomplete",
           "read_ownership",
           "refuse_overlap", "remove_entry", "remove_owned", "unknown_files", "write_ownership", "atomic_write_text",
           "atomic_write_bytes", "STATE_DIR",
           "REPORT_FILES"]
