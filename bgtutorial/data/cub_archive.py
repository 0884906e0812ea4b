"""Getting CUB-200-2011: download from the official URL, MD5 check, safe extraction.

Safety: the archive is downloaded to ``CUB_200_2011.tgz.part`` and renamed only once its
MD5 matches; extraction accepts only what the official archive holds (regular files and
folders under ``CUB_200_2011/``, plus ``attributes.txt`` beside it), runs through the
standard library's ``data`` extraction filter (no links, no devices, no set-uid bits, nothing
outside the folder) into a temporary folder, and moves the result into place at the end. The
extraction is bounded by the official archive's figures (:data:`MAX_MEMBERS` members,
:data:`MAX_EXPANDED_BYTES` in all, at most :data:`MAX_EXPANSION` times the archive's size), so a
small crafted archive cannot fill the disk. A ``CUB_200_2011/`` folder the code did not extract
(one extracted by hand) is used as it is, never deleted. Processes started together (torchrun's
ranks) download and extract once.

Reading the extracted files is :mod:`bgtutorial.data.cub`; ``python -m bgtutorial.data.cub``
runs :func:`download_cub` from the command line.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Sequence

from torchvision.datasets.utils import download_url

from ..utils import UserError, exclusive_lock

__all__ = ["CUB_URL", "CUB_MD5", "CUB_ARCHIVE", "CUB_FOLDER", "METADATA_FILES", "CUBDataError", "download_cub",
           "MAX_MEMBERS", "MAX_EXPANDED_BYTES", "MAX_EXPANSION"]

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
CUB_ARCHIVE = "CUB_200_2011.tgz"
CUB_FOLDER = "CUB_200_2011"
#: files the official archive holds beside ``CUB_200_2011/``
CUB_TOP_LEVEL_FILES = ("attributes.txt",)
#: the five metadata files of the official archive, with the number of fields per line
METADATA_FILES = {
    "images.txt": 2,               # image_id relative/path.jpg
    "image_class_labels.txt": 2,   # image_id class_id
    "classes.txt": 2,              # class_id 001.Black_footed_Albatross
    "train_test_split.txt": 2,     # image_id is_training_image
    "bounding_boxes.txt": 5,       # image_id x y width height
}
_DONE_MARKER = ".bgtutorial_extracted"
#: bounds on what an archive may expand to, from the official archive's figures: it holds about 12,000
#: members (11,788 images in 200 folders, a dozen metadata files) and expands to about 1.2 GB, little
#: more than its own 1.1 GB (JPEGs do not compress); the bounds leave room above each figure
MAX_MEMBERS = 15_000
MAX_EXPANDED_BYTES = 2 * 2**30
MAX_EXPANSION = 8.0
#: errors of a write that ran out of room (no space, a quota, a file-size limit)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CUBDataError(UserError, RuntimeError):
    """A problem with the CUB-200-2011 files; the message names the file and the fix."""


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` is not something the official archive holds, or ``None`` when it is.

    Accepted: regular files and folders under ``CUB_200_2011/``, and the regular file
    ``attributes.txt`` at the top level. Refused: absolute paths, ``..`` or ``.`` components,
    symbolic and hard links, devices, FIFOs, anything else.
    """
    name = member.name
    parts = name.rstrip("/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in parts:
        return "a '..' path component"
    if member.issym() or member.islnk():
        return f"a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "a device file"
    if not (member.isreg() or member.isdir()):
        return "neither a regular file nor a folder"
    if any(p in ("", ".") for p in parts):
        return "an irregular path (empty or '.' component)"
    if member.isreg() and name in CUB_TOP_LEVEL_FILES:
        return None
    if parts[0] != CUB_FOLDER:
        return f"outside {CUB_FOLDER}/"
    return None


def _cub_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """The standard library's ``data`` filter, then our whitelist of what the official archive holds.

    ``data_filter`` refuses absolute paths, ``..``, links leaving ``dest`` and device files, and
    clears set-uid/set-gid/sticky bits and group/other write permission.
    """
    member = tarfile.data_filter(member, dest)
    reason = _refusal(member)
    if reason is not None:
        raise tarfile.FilterError(f"{member.name!r} is {reason}")
    return member


def _refuse(archive: Path, name: str, reason: str) -> CUBDataError:
    return CUBDataError(
        f"{archive}: refusing member {name!r} ({reason}); the official archive holds only regular files and "
        f"folders under {CUB_FOLDER}/ and {', '.join(CUB_TOP_LEVEL_FILES)}. Delete {archive} and download it again.")


def _free(folder: Path) -> str:
    """The free space of the disk holding ``folder``, for messages ("812 MiB free")."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        return "free space unknown"


def _check_bounds(archive: Path, member: tarfile.TarInfo, count: int, expanded: int) -> None:
    """Refuse the archive once its members exceed the official archive's figures (a decompression bomb)."""
    size = archive.stat().st_size
    limit = min(MAX_EXPANDED_BYTES, MAX_EXPANSION * max(size, 1))
    if count > MAX_MEMBERS or expanded > limit:
        what = (f"more than {MAX_MEMBERS:,} members" if count > MAX_MEMBERS else
                f"more than {_size(limit)} (at {member.name!r})")
        raise CUBDataError(
            f"{archive} ({_size(size)}) expands to {what}; the official archive holds about 12,000 members and "
            "expands to about 1.2 GB, little more than its own size. It is not the official archive: delete it and "
            "download it again.")


def _size(nbytes: float) -> str:
    """A byte count for messages: "390 KiB", "1.2 GiB"."""
    for unit in ("bytes", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def _extract(archive: Path, root: Path) -> Path:
    """Extract the CUB archive into ``root`` safely; return ``root/CUB_200_2011``.

    Each member is checked (:func:`_refusal`, duplicates refused, the bounds of :func:`_check_bounds`)
    and extracted through :func:`_cub_filter` into a fresh temporary folder inside ``root``; only
    when the whole archive went through is ``CUB_200_2011/`` (with our marker) moved into place, so
    a refused or truncated archive, or a full disk, leaves nothing behind. ``root/CUB_200_2011``
    must not exist (:func:`download_cub` checks): nothing of the user's is replaced.
    """
    base = root / CUB_FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=f".{CUB_FOLDER}.extracting-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                seen: set[str] = set()
                expanded = 0
                for member in tar:   # one pass: headers are read as we go, a truncated file fails here
                    reason = _refusal(member)
                    if reason is None and member.name.rstrip("/") in seen:
                        reason = "a duplicate of an earlier member"
                    if reason is not None:
                        raise _refuse(archive, member.name, reason)
                    seen.add(member.name.rstrip("/"))
                    expanded += member.size
                    _check_bounds(archive, member, len(seen), expanded)
                    try:
                        tar.extract(member, tmp, filter=_cub_filter)
                    except tarfile.FilterError as err:     # the standard filter's own refusal
                        raise _refuse(archive, member.name, str(err)) from err
        except OSError as err:
            if err.errno not in _FULL:
                raise CUBDataError(
                    f"{archive} is truncated or corrupt ({type(err).__name__}: {err}). "
                    "Delete it and download again (download_cub(root) or CUB200(root, download=True)).") from err
            raise CUBDataError(
                f"no room to extract {archive} into {root} ({err.strerror}; {_free(root)} there, and CUB-200-2011 "
                "needs about 1.2 GB): free some space or choose a data folder on another disk (--root / "
                "--data_root), then run again; nothing was left behind.") from None
        except (tarfile.TarError, EOFError) as err:
            raise CUBDataError(
                f"{archive} is truncated or corrupt ({type(err).__name__}: {err}). "
                "Delete it and download again (download_cub(root) or CUB200(root, download=True)).") from err
        if not (tmp / CUB_FOLDER).is_dir():
            raise CUBDataError(f"{archive} did not contain the folder {CUB_FOLDER}/; it is not the official archive. "
                               "Delete it and download it again.")
        (tmp / CUB_FOLDER / _DONE_MARKER).write_text("ok\n")
        if base.exists() or base.is_symlink():    # appeared meanwhile: never replace what we did not write
            raise _not_ours(base, archive)
        for name in CUB_TOP_LEVEL_FILES:
            if (tmp / name).is_file() and not (root / name).exists():
                os.replace(tmp / name, root / name)
        os.replace(tmp / CUB_FOLDER, base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def _not_ours(base: Path, archive: Path, missing: Sequence[str] = ()) -> CUBDataError:
    """The error for a ``CUB_200_2011`` that the code did not extract and cannot use: say what to move."""
    what = ("a symbolic link" if base.is_symlink() else "a file" if base.is_file() else
            f"a folder without {', '.join(missing)}" if missing else "a folder")
    return CUBDataError(
        f"{base} is {what}, not extracted by bgtutorial; it is left as it is. Move it away (mv {base} "
        f"{base}.mine) so that {archive} can be extracted there, or complete it (the official archive's "
        f"{', '.join(METADATA_FILES)} and images/).")


def _writable_root(root: Path) -> Path:
    """Create ``root`` if needed and check that files can be written in it; clear errors otherwise."""
    if root.exists() and not root.is_dir():
        raise CUBDataError(f"the data folder {root} is a file, not a folder: choose another data folder "
                           "(--root / --data_root)")
    if root.is_symlink() and not root.exists():
        raise CUBDataError(f"the data folder {root} is a symbolic link to {os.readlink(root)}, which does not "
                           "exist: mount that disk or create the folder, or choose another data folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CUBDataError(f"cannot write into the data folder {root} ({err.strerror or err}); make it writable "
                           f"(chmod u+w {root}) or choose another one (--root / --data_root)") from err
    return root


def _fetch(url: str, archive: Path, md5: str | None) -> None:
    """Download ``url`` to ``archive.part``, check its MD5, then rename it to ``archive``.

    A download cut short (network error, Ctrl-C, a killed process) never reaches ``archive``:
    the ``.part`` file is removed (or overwritten by the next try), so a later call retries.
    """
    part = archive.with_name(archive.name + ".part")
    part.unlink(missing_ok=True)           # left over by a process that was killed mid-download
    try:
        try:
            if url.startswith("file://"):  # local mirror / tests: torchvision's downloader handles http(s) only
                shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path), part)
            else:
                download_url(url, str(archive.parent), filename=part.name, md5=None)
        except Exception as err:  # network errors, 404, ...
            raise CUBDataError(
                f"could not download {url} to {archive} ({type(err).__name__}: {err}). Try again, or download it "
                f"by hand (see data/README.md) and place it at {archive}.") from err
        if not part.is_file():
            raise CUBDataError(f"downloading {url} produced no file; download it by hand and place it at {archive}.")
        if md5 is not None and (got := _md5(part)) != md5:
            raise CUBDataError(
                f"checksum mismatch for the download of {url}: expected MD5 {md5}, got {got}; the file was removed. "
                "Try again (an interrupted transfer), or check the URL and --md5.")
        os.replace(part, archive)
    finally:
        part.unlink(missing_ok=True)


def download_cub(root: str | Path, url: str = CUB_URL, md5: str | None = CUB_MD5) -> Path:
    """Fetch, verify and extract ``CUB_200_2011.tgz`` into ``root``; return ``root/CUB_200_2011``.

    Idempotent: an extracted copy is reused, ours or one extracted by hand (with or without the
    archive beside it: a folder the code did not write is never deleted; one that lacks the
    metadata files raises :class:`CUBDataError` saying what to move), and an archive already in
    ``root`` with the right MD5 is not downloaded again.
    The download shows a tqdm progress bar (torchvision's ``download_url``), goes to a ``.part``
    file and is renamed only after its MD5 matches. ``md5=None`` skips the checksum (for
    archives you built yourself). Extraction is safe (see the module docstring). ``root`` may
    be a symbolic link (a data folder on another disk).
    """
    root = Path(root).expanduser()
    base = root / CUB_FOLDER
    archive = root / CUB_ARCHIVE
    if (base / _DONE_MARKER).exists():
        return base
    if base.exists() or base.is_symlink():       # extracted by hand (not by us): use it, never delete it
        return _hand_extracted(base, archive)
    _writable_root(root)
    # processes started together (torchrun's ranks) download and extract once: the others wait here
    with exclusive_lock(root / f".{CUB_FOLDER}.lock", wait=True):
        if (base / _DONE_MARKER).exists():    # another process finished while we waited for the lock
            return base
        if not archive.exists():
            _fetch(url, archive, md5)
        elif md5 is not None and _md5(archive) != md5:
            raise CUBDataError(
                f"checksum mismatch for {archive}: expected MD5 {md5}. The file is incomplete or not the "
                "official archive; delete it and download again.")
        return _extract(archive, root)


def _hand_extracted(base: Path, archive: Path) -> Path:
    """``base``, a ``CUB_200_2011`` the code did not extract, when it holds the metadata files (the
    images are checked by :class:`~bgtutorial.data.cub.CUB200`); otherwise :class:`CUBDataError` saying what to move."""
    missing = [name for name in METADATA_FILES if not (base / name).is_file()] if base.is_dir() else []
    if base.is_dir() and not missing:
        return base
    raise _not_ours(base, archive, missing)
