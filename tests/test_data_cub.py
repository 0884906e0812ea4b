"""CUB-200-2011 pipeline on synthetic archives built in the official layout."""
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bgtutorial.data import (CUB200, CUBDataError, download_cub, fake_cub_url, make_fake_cub,
                             eval_transform, train_transform)
from bgtutorial.data.cub_archive import CUB_FOLDER, METADATA_FILES


def test_fake_archive_has_official_layout(fake_archive):
    path, md5 = fake_archive
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    with tarfile.open(path) as tar:
        names = tar.getnames()
    for meta in METADATA_FILES:
        assert f"{CUB_FOLDER}/{meta}" in names
    images = [n for n in names if n.endswith(".jpg")]
    assert len(images) == 20 * 4
    assert all(n.startswith(f"{CUB_FOLDER}/images/") for n in images)
    assert any("/001.Black_footed_Albatross/" in n for n in images)
    folders = {n.split("/")[2] for n in images}
    assert len(folders) == 20 and all(f[:3].isdigit() and f[3] == "." for f in folders)


def test_fake_archive_is_deterministic(tmp_path, monkeypatch):
    # gzip stamps the current time into its header unless told otherwise: build the two
    # archives at clocks years apart, so a time-dependent header can't slip through by luck.
    import time as time_module
    monkeypatch.setattr(time_module, "time", lambda: 1_000_000_000.0)
    path_a, a = make_fake_cub(tmp_path / "a", num_classes=4, per_class=2, seed=3)
    monkeypatch.setattr(time_module, "time", lambda: 1_700_000_123.0)
    path_b, b = make_fake_cub(tmp_path / "b", num_classes=4, per_class=2, seed=3)
    _, c = make_fake_cub(tmp_path / "c", num_classes=4, per_class=2, seed=4)
    assert a == b != c
    assert path_a.read_bytes() == path_b.read_bytes()


def test_download_verify_extract_parse_retrieval(fake_cub_root):
    train = CUB200(fake_cub_root, "train")
    test = CUB200(fake_cub_root, "test")
    assert len(train) == len(test) == 10 * 4
    assert sorted(set(train.targets)) == list(range(10)) == sorted(set(test.targets))
    assert train.class_ids == list(range(1, 11)) and test.class_ids == list(range(11, 21))
    # test classes are unseen: no folder name in common
    assert not set(train.classes) & set(test.classes)
    # a label maps back to the image's class folder
    for path, label in train.samples + test.samples:
        ds = train if (path, label) in train.samples else test
        assert path.parent.name == ds.classes[label]


def test_classification_protocol_follows_split_file(fake_cub_root):
    base = Path(fake_cub_root) / CUB_FOLDER
    flags = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines())
    n_train = sum(v == "1" for v in flags.values())
    train = CUB200(fake_cub_root, "train", protocol="classification")
    test = CUB200(fake_cub_root, "test", protocol="classification")
    assert len(train) == n_train and len(test) == len(flags) - n_train
    assert max(train.targets) == len(train.classes) - 1
    assert sorted(set(test.targets)) == list(range(len(test.classes)))


def test_images_are_rgb_tensors_including_grayscale(fake_cub_root):
    ds = CUB200(fake_cub_root, "train")
    modes = []
    for path, _ in ds.samples:
        with Image.open(path) as im:
            modes.append(im.mode)
    assert "L" in modes, "the synthetic archive must hold grayscale JPEGs like the real one"
    gray_index = modes.index("L")
    img, label = ds[gray_index]
    assert img.shape[0] == 3 and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert isinstance(label, int)


def test_standard_transforms(fake_cub_root):
    ds = CUB200(fake_cub_root, "train", transform=train_transform(64))
    assert ds[0][0].shape == (3, 64, 64)
    ds = CUB200(fake_cub_root, "test", transform=eval_transform())
    x = ds[0][0]
    assert x.shape == (3, 224, 224) and x.min() < 0  # ImageNet-normalised


def test_download_is_idempotent(tmp_path, fake_archive):
    url = fake_cub_url(fake_archive[0])
    base = download_cub(tmp_path, url=url, md5=fake_archive[1])
    marker = next(base.glob(".bgtutorial_*"))
    stamp = marker.stat().st_mtime_ns
    (tmp_path / "CUB_200_2011.tgz").unlink()   # a second call must not need the archive again
    assert download_cub(tmp_path, url=url + ".gone", md5=fake_archive[1]) == base
    assert marker.stat().st_mtime_ns == stamp


def test_existing_archive_is_not_downloaded_again(tmp_path, fake_archive):
    shutil.copy(fake_archive[0], tmp_path / "CUB_200_2011.tgz")
    base = download_cub(tmp_path, url="file:///nonexistent/CUB_200_2011.tgz", md5=fake_archive[1])
    assert (base / "images.txt").is_file()


def test_dataset_download_flag(tmp_path, fake_archive):
    ds = CUB200(tmp_path, "test", download=True, url=fake_cub_url(fake_archive[0]), md5=fake_archive[1])
    assert len(ds) == 40


# ---------------------------------------------------------------- errors, each one
def test_missing_dataset_says_what_to_do(tmp_path):
    with pytest.raises(CUBDataError, match="download=True"):
        CUB200(tmp_path, "train")


def test_archive_present_but_not_extracted(tmp_path, fake_archive):
    shutil.copy(fake_archive[0], tmp_path / "CUB_200_2011.tgz")
    with pytest.raises(CUBDataError, match="archive .* is there: pass download=True"):
        CUB200(tmp_path, "train")


def test_archive_missing_at_url(tmp_path):
    with pytest.raises(CUBDataError, match=r"could not download .*CUB_200_2011.tgz.*data/README.md"):
        download_cub(tmp_path, url=(tmp_path / "nowhere.tgz").as_uri())
    assert not (tmp_path / "CUB_200_2011.tgz").exists()


def _names(folder: Path) -> list[str]:
    """What a folder holds, but the lock file that serialises concurrent downloads."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".CUB_200_2011.lock")


def test_checksum_mismatch_removes_the_download_and_a_retry_works(tmp_path, fake_archive):
    url = fake_cub_url(fake_archive[0])
    with pytest.raises(CUBDataError, match=r"checksum mismatch for the download of .*CUB_200_2011.tgz.*removed"):
        download_cub(tmp_path, url=url, md5="0" * 32)
    assert _names(tmp_path) == []                      # no archive, no .part: nothing blocks a retry
    assert (download_cub(tmp_path, url=url, md5=fake_archive[1]) / "images.txt").is_file()


def test_download_cut_short_is_retried(tmp_path, fake_archive, monkeypatch):
    """A transfer that dies half-way leaves no archive behind; the next call downloads again."""
    url = fake_cub_url(fake_archive[0])
    real_copy = shutil.copyfile

    def dies_half_way(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(shutil, "copyfile", dies_half_way)
    with pytest.raises(CUBDataError, match="could not download .*connection reset"):
        download_cub(tmp_path, url=url, md5=fake_archive[1])
    assert _names(tmp_path) == []
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    (tmp_path / "CUB_200_2011.tgz.part").write_bytes(b"left over by a killed process")   # SIGKILL: no cleanup ran
    assert (download_cub(tmp_path, url=url, md5=fake_archive[1]) / "images.txt").is_file()
    assert not (tmp_path / "CUB_200_2011.tgz.part").exists()


def test_official_md5_is_checked_by_default(tmp_path, fake_archive):
    shutil.copy(fake_archive[0], tmp_path / "CUB_200_2011.tgz")
    with pytest.raises(CUBDataError, match="97eceeb196236b17998738112f37df78"):
        download_cub(tmp_path)


def test_truncated_archive(tmp_path, fake_archive):
    data = fake_archive[0].read_bytes()
    (tmp_path / "CUB_200_2011.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CUBDataError, match=r"CUB_200_2011.tgz is truncated or corrupt"):
        download_cub(tmp_path, md5=None)
    assert not (tmp_path / CUB_FOLDER / ".bgtutorial_extracted").exists()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
            mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), mode
    return info, data


def _archive(root: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    """``root/CUB_200_2011.tgz`` with a valid-looking start, then ``members`` in order."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "CUB_200_2011.tgz"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info, data in (_member("CUB_200_2011", tarfile.DIRTYPE, mode=0o755),
                           _member("CUB_200_2011/images.txt", data=b"1 a/b.jpg\n"), *members):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (links not followed) with the content of regular files, but the lock file."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in folder.rglob("*") if p.name != ".CUB_200_2011.lock"}


ATTACKS = {
    "symlink chain": [_member("CUB_200_2011/a", tarfile.SYMTYPE, link=".."),
                      _member("CUB_200_2011/b", tarfile.SYMTYPE, link="a/.."),
                      _member("CUB_200_2011/b/x", data=b"pwned")],
    "hard link then file": [_member("CUB_200_2011/images/h", tarfile.LNKTYPE, link="../victim.txt"),
                            _member("CUB_200_2011/images/h", data=b"pwned")],
    "symlink out": [_member("CUB_200_2011/x", tarfile.SYMTYPE, link="../../etc")],
    "absolute path": [_member("/tmp/bgt_evil_abs.txt", data=b"pwned")],
    "dotdot": [_member("../victim.txt", data=b"pwned")],
    "dotdot inside": [_member("CUB_200_2011/../../victim.txt", data=b"pwned")],
    "char device": [_member("CUB_200_2011/null", tarfile.CHRTYPE)],
    "block device": [_member("CUB_200_2011/sda", tarfile.BLKTYPE)],
    "fifo": [_member("CUB_200_2011/pipe", tarfile.FIFOTYPE)],
    "top-level file": [_member("evil.sh", data=b"pwned")],
    "other folder": [_member("other/x.txt", data=b"pwned")],
    "duplicate": [_member("CUB_200_2011/images.txt", data=b"1 c/d.jpg\n")],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_crafted_archive_is_refused_and_writes_nothing(tmp_path, attack):
    root = tmp_path / "data"
    (tmp_path / "victim.txt").write_text("precious")
    _archive(root, *ATTACKS[attack])
    before = _snapshot(tmp_path)
    with pytest.raises(CUBDataError, match=r"refusing member .*Delete .*CUB_200_2011.tgz"):
        download_cub(root, md5=None)
    assert _snapshot(tmp_path) == before          # all or nothing: no folder, no temporary, no victim change
    assert (tmp_path / "victim.txt").read_text() == "precious"
    assert not Path("/tmp/bgt_evil_abs.txt").exists()


def test_extraction_runs_through_the_standard_data_filter(tmp_path):
    """Set-uid/set-gid/sticky bits and group/other write are dropped; attributes.txt lands beside the folder."""
    import stat

    root = tmp_path / "data"
    _archive(root, _member("CUB_200_2011/images", tarfile.DIRTYPE, mode=0o7777),
             _member("CUB_200_2011/images/run.sh", data=b"#!/bin/sh\n", mode=0o6777),
             _member("attributes.txt", data=b"1 has_bill_shape::curved\n"))
    base = download_cub(root, md5=None)
    mode = (base / "images" / "run.sh").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH)
    assert mode & stat.S_IRUSR and (root / "attributes.txt").read_text().startswith("1 has_bill")
    assert _names(root) == ["CUB_200_2011", "CUB_200_2011.tgz", "attributes.txt"]


def test_the_filter_alone_refuses_what_the_official_archive_lacks(tmp_path):
    from bgtutorial.data.cub_archive import _cub_filter

    for bad in ATTACKS.values():
        info = bad[0][0]                                  # the first member of each attack is the bad one
        if info.name == "CUB_200_2011/images.txt":      # the duplicate is refused by the member loop, not here
            continue
        with pytest.raises(tarfile.FilterError):
            _cub_filter(info, str(tmp_path))
    ok = _cub_filter(_member("CUB_200_2011/x.jpg", mode=0o4755)[0], str(tmp_path))
    assert ok.mode == 0o755


def _copy_extracted(src_root: Path, dst: Path) -> Path:
    shutil.copytree(Path(src_root) / CUB_FOLDER, dst / CUB_FOLDER)
    return dst / CUB_FOLDER


@pytest.mark.parametrize("name", list(METADATA_FILES))
def test_metadata_file_missing(tmp_path, fake_cub_root, name):
    base = _copy_extracted(fake_cub_root, tmp_path)
    (base / name).unlink()
    with pytest.raises(CUBDataError, match=f"{name} is missing.*extract the archive again"):
        CUB200(tmp_path, "train")


@pytest.mark.parametrize("name,line", [("images.txt", "1"), ("image_class_labels.txt", "x 3"),
                                       ("bounding_boxes.txt", "1 2 3"), ("classes.txt", "1 a b")])
def test_metadata_file_malformed(tmp_path, fake_cub_root, name, line):
    base = _copy_extracted(fake_cub_root, tmp_path)
    lines = (base / name).read_text().splitlines()
    lines[1] = line
    (base / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(CUBDataError, match=rf"{name}, line 2: expected"):
        CUB200(tmp_path, "train")


def test_metadata_inconsistent_ids(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    (base / "image_class_labels.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(CUBDataError, match="same image ids"):
        CUB200(tmp_path, "train")


def test_image_listed_but_absent(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    first = (base / "images.txt").read_text().split()[1]
    (base / "images" / first).unlink()
    with pytest.raises(CUBDataError, match=rf"1 image\(s\) listed in .*images.txt are absent, e.g. .*{first}"):
        CUB200(tmp_path, "train")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        CUB200("/nonexistent", "val")
    with pytest.raises(ValueError, match="protocol"):
        CUB200("/nonexistent", "train", protocol="zero-shot")


def test_image_cache_matches_resized_decode(tmp_path, fake_cub_root):
    from torchvision import transforms as T

    base = _copy_extracted(fake_cub_root, tmp_path)
    plain = CUB200(tmp_path, "test")
    cached = CUB200(tmp_path, "test", cache_size=32)
    files = list(base.glob(".cache-retrieval-test-32px-aspect.u8*"))
    assert sorted(f.name for f in files) == [".cache-retrieval-test-32px-aspect.u8",
                                             ".cache-retrieval-test-32px-aspect.u8.idx.npy"]
    sizes = [plain.load_image(i).size for i in range(len(plain))]           # (w, h)
    expected = sum(32 * int(32 * max(w, h) / min(w, h)) * 3 for w, h in sizes)
    assert (base / ".cache-retrieval-test-32px-aspect.u8").stat().st_size == expected
    resize = T.Compose([T.Resize(32), T.ToTensor()])
    for i in (0, 5, len(plain) - 1):
        torch.testing.assert_close(cached[i][0], resize(plain.load_image(i)))
        assert cached[i][1] == plain[i][1]
    stamp = files[0].stat().st_mtime_ns
    CUB200(tmp_path, "test", cache_size=32)            # reused, not rebuilt
    assert files[0].stat().st_mtime_ns == stamp


def test_image_cache_keeps_the_aspect_ratio_of_a_non_square_image(tmp_path, fake_cub_root):
    """A wide image keeps its sides in the cache (shorter side to cache_size, nothing cropped), so a
    training crop can come from anywhere in it, as from the JPEG."""
    from torchvision import transforms as T

    base = _copy_extracted(fake_cub_root, tmp_path)
    plain = CUB200(tmp_path, "test")
    wide = np.zeros((40, 120, 3), dtype=np.uint8)                  # 3:1, a red left edge, a blue right edge
    wide[:, :10, 0] = wide[:, -10:, 2] = 255
    Image.fromarray(wide).save(plain.samples[0][0], format="JPEG", quality=95)
    cached = CUB200(tmp_path, "test", cache_size=20)
    img = cached.load_image(0)
    assert img.size == (60, 20)                                    # (w, h): the aspect kept
    assert np.array_equal(np.asarray(img), np.asarray(T.Resize(20)(plain.load_image(0))))
    pixels = np.asarray(img).astype(int)
    assert pixels[:, :3, 0].mean() > 200 and pixels[:, -3:, 2].mean() > 200   # both sides are there
    tall = CUB200(tmp_path, "test", cache_size=20).load_image(1)
    assert min(tall.size) == 20 and tall.size == T.Resize(20)(plain.load_image(1)).size


def test_folder_extracted_by_hand_is_reused(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    (base / ".bgtutorial_extracted").unlink(missing_ok=True)
    assert download_cub(tmp_path, url="file:///nonexistent.tgz") == base   # no archive: trust the folder


# ---------------------------------------------------------------- folders: symlinked, read-only
def test_data_folder_may_be_a_symlink_to_another_disk(tmp_path, fake_archive):
    disk = tmp_path / "other-disk" / "cub"
    disk.mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(disk, target_is_directory=True)
    base = download_cub(link, url=fake_cub_url(fake_archive[0]), md5=fake_archive[1])
    assert (disk / CUB_FOLDER / "images.txt").is_file() and base == link / CUB_FOLDER
    ds = CUB200(link, "test", cache_size=16)
    assert len(ds) == 40 and ds[0][0].shape[0] == 3 and min(ds[0][0].shape[1:]) == 16
    assert _names(disk) == ["CUB_200_2011", "CUB_200_2011.tgz", "attributes.txt"]   # no temporary folder left


def test_dangling_data_symlink_says_what_to_do(tmp_path, fake_archive):
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "unmounted-disk", target_is_directory=True)
    with pytest.raises(CUBDataError, match=r"symbolic link to .*unmounted-disk, which does not exist: mount"):
        download_cub(link, url=fake_cub_url(fake_archive[0]), md5=fake_archive[1])


def _without_dac_override() -> None:
    """In the child process (root only): drop CAP_DAC_OVERRIDE, which lets root write into read-only folders."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 1, 0, 0, 0) != 0:          # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE (gone after exec)
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``python args`` in a child that may not write into ``folder`` (made read-only, recursively)."""
    dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(0o555)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    kw = dict(env=env, capture_output=True, text=True, timeout=300,
              preexec_fn=_without_dac_override if os.geteuid() == 0 else None)
    try:
        try:
            probe = subprocess.run([sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"], **kw)
        except (subprocess.SubprocessError, OSError) as err:
            pytest.skip(f"cannot start a process without write access here: {err}")
        if probe.returncode == 0:
            pytest.skip("cannot make a folder read-only for this user here")
        return subprocess.run([sys.executable, *args], **kw)
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_read_only_data_folder_cli_says_what_to_do(tmp_path, fake_archive):
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(fake_archive[0], ro / "CUB_200_2011.tgz")       # present, but it cannot be extracted here
    done = _run_read_only(ro, ["-m", "bgtutorial.data.cub", "--root", str(ro), "--md5", fake_archive[1]])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: cannot write into the data folder")
    assert f"chmod u+w {ro}" in done.stderr and "--root" in done.stderr


def test_read_only_folder_with_extracted_data_loads_but_cannot_cache(tmp_path, fake_cub_root):
    ro = tmp_path / "ro"
    _copy_extracted(fake_cub_root, ro)
    code = ("from bgtutorial.data import CUB200, CUBDataError\n"
            f"print(len(CUB200({str(ro)!r}, 'test')))\n"
            "try:\n"
            f"    CUB200({str(ro)!r}, 'test', cache_size=16)\n"
            "except CUBDataError as err:\n"
            "    print(err)\n")
    done = _run_read_only(ro, ["-c", code])
    assert done.returncode == 0, done.stderr
    n, message = done.stdout.splitlines()
    assert n == "40" and "cannot write the image cache" in message and "cache_size=0" in message
    assert not list((ro / CUB_FOLDER).glob(".cache*"))


# ---------------------------------------------------------------- the data CLI
def test_data_cli_takes_md5_and_refuses_abbreviations(tmp_path, fake_archive, capsys):
    from bgtutorial.data.cub import main

    url = fake_cub_url(fake_archive[0])
    assert main(["--root", str(tmp_path / "a"), "--url", url, "--md5", "0" * 32]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: checksum mismatch") and "--md5" in err
    assert main(["--root", str(tmp_path / "a"), "--url", url, "--md5", fake_archive[1]]) == 0
    assert "CUB200(split='test'" in capsys.readouterr().out
    assert main(["--root", str(tmp_path / "b"), "--url", url, "--md5", "none"]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["--ro", str(tmp_path / "c"), "--url", url])
    assert exit_.value.code == 2 and "unrecognized arguments: --ro" in capsys.readouterr().err


# ---------------------------------------------------------------- cache build and metadata
def test_failed_cache_build_leaves_no_temporary_file(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    ds = CUB200(tmp_path, "test")
    ds.samples[3][0].write_bytes(b"not a jpeg")
    with pytest.raises(CUBDataError, match=r"cannot read image .*corrupt"):
        CUB200(tmp_path, "test", cache_size=16)
    assert sorted(p.name for p in base.iterdir() if p.name.startswith(".cache")) == []


def _drop_class(base: Path, class_id: int) -> None:
    """Remove every image of ``class_id`` from the metadata (the class stays in classes.txt)."""
    labels = dict(line.split() for line in (base / "image_class_labels.txt").read_text().splitlines())
    gone = {i for i, c in labels.items() if int(c) == class_id}
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
        lines = [ln for ln in (base / name).read_text().splitlines() if ln.split()[0] not in gone]
        (base / name).write_text("\n".join(lines) + "\n")


def test_class_without_images_is_left_out_of_the_labels(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    _drop_class(base, 3)
    train = CUB200(tmp_path, "train")
    assert train.class_ids == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert sorted(set(train.targets)) == list(range(9)) and len(train) == 9 * 4    # contiguous: 9 proxies
    for path, label in train.samples:
        assert path.parent.name == train.classes[label]
    assert CUB200(tmp_path, "test").class_ids == list(range(11, 21))


def test_split_without_any_image_says_what_to_do(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    for c in range(11, 21):
        _drop_class(base, c)
    with pytest.raises(CUBDataError, match=r"images.txt lists no image of the test split .*extract"):
        CUB200(tmp_path, "test")


def test_processes_started_together_extract_once(tmp_path, fake_archive):
    """torchrun starts every rank at once: the lock lets one download and extract, the others reuse it."""
    code = ("import sys\nfrom bgtutorial.data import download_cub\n"
            "print(download_cub(sys.argv[1], url=sys.argv[2], md5=sys.argv[3]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-c", code, str(tmp_path), fake_cub_url(fake_archive[0]), fake_archive[1]]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert len(CUB200(tmp_path, "train")) == 40 and _names(tmp_path) == ["CUB_200_2011", "CUB_200_2011.tgz",
                                                                    "attributes.txt"]


# ---------------------------------------------------------------- issue 23: never delete the user's data
def test_hand_extracted_folder_beside_the_archive_is_used_not_deleted(tmp_path, fake_cub_root, fake_archive, capsys):
    """The probe: CUB_200_2011/ extracted by hand (with the user's own files) and the .tgz beside it; the
    data CLI removed the folder with rmtree, the user's files included."""
    from bgtutorial.data.cub import main

    base = _copy_extracted(fake_cub_root, tmp_path)
    (base / ".bgtutorial_extracted").unlink(missing_ok=True)
    (base / "my_notes.txt").write_text("mine")
    shutil.copy(fake_archive[0], tmp_path / "CUB_200_2011.tgz")
    before = _snapshot(tmp_path)
    assert download_cub(tmp_path, md5=fake_archive[1]) == base
    assert main(["--root", str(tmp_path), "--md5", fake_archive[1]]) == 0
    assert "CUB200(split='test', protocol='retrieval', images=40" in capsys.readouterr().out
    assert _snapshot(tmp_path) == before                         # nothing deleted, nothing added


@pytest.mark.parametrize("kind", ["incomplete folder", "file", "dangling link"])
def test_something_else_in_the_way_is_left_alone_with_what_to_move(tmp_path, fake_archive, capsys, kind):
    from bgtutorial.data.cub import main

    base = tmp_path / CUB_FOLDER
    if kind == "incomplete folder":
        base.mkdir()
        (base / "images.txt").write_text("1 a/b.jpg\n")
        (base / "my_notes.txt").write_text("mine")
    elif kind == "file":
        base.write_text("mine")
    else:
        base.symlink_to(tmp_path / "elsewhere")
    shutil.copy(fake_archive[0], tmp_path / "CUB_200_2011.tgz")
    before = _snapshot(tmp_path)
    assert main(["--root", str(tmp_path), "--md5", fake_archive[1]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not extracted by bgtutorial; it is left as it is" in err
    assert f"mv {base} {base}.mine" in err and "CUB_200_2011.tgz can be extracted there" in err
    assert _snapshot(tmp_path) == before and (base.is_symlink() or base.exists())


@pytest.mark.parametrize("name", ["../../../outside/x.jpg", "/etc/hostname", "001.A/../../../x.jpg", "C:/x.jpg",
                                  "001.A\\..\\..\\x.jpg"])
def test_images_txt_may_not_leave_the_images_folder(tmp_path, fake_cub_root, name):
    base = _copy_extracted(fake_cub_root, tmp_path)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.jpg").write_bytes((base / "images.txt").read_bytes())
    lines = (base / "images.txt").read_text().splitlines()
    lines[0] = f"1 {name}"
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CUBDataError, match=r"images.txt, image 1: the path .* leaves .*images/"):
        CUB200(tmp_path, "train")


@pytest.mark.parametrize("line,expect", [
    (b"\xff\xfe 2", r"line 2: bytes that are not UTF-8 text"),
    ("\u00b2 001.A/x.jpg".encode(), r"line 2: expected 2 fields starting with an integer id"),
    (b"1 001.A/again.jpg", r"line 2: id 1 again \(first on line 1\)"),
])
def test_images_txt_bytes_ids_and_duplicates(tmp_path, fake_cub_root, line, expect):
    base = _copy_extracted(fake_cub_root, tmp_path)
    lines = (base / "images.txt").read_bytes().splitlines()
    lines[1] = line
    (base / "images.txt").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CUBDataError, match=r"images.txt, " + expect):
        CUB200(tmp_path, "train")


def test_labels_that_are_not_integers(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    lines[0] = "1 three"
    (base / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CUBDataError, match=r"image_class_labels.txt, line 1: expected 2 integers"):
        CUB200(tmp_path, "train")


# ---------------------------------------------------------------- issue 23: bounded extraction, a full disk
def test_an_archive_that_expands_far_beyond_its_size_is_refused(tmp_path):
    """The probe: a 392 KB archive expanded to 300 MB. The official one expands to little more than its size."""
    root = tmp_path / "data"
    _archive(root, _member("CUB_200_2011/images/zeros.jpg", data=bytes(20_000_000)))
    assert (root / "CUB_200_2011.tgz").stat().st_size < 100_000
    before = _snapshot(tmp_path)
    with pytest.raises(CUBDataError, match=r"CUB_200_2011.tgz \(\d+ KiB\) expands to more than \d+ KiB \(at "
                                           r"'CUB_200_2011/images/zeros.jpg'\); the official archive .*delete it"):
        download_cub(root, md5=None)
    assert _snapshot(tmp_path) == before


def test_an_archive_with_too_many_members_is_refused(tmp_path, monkeypatch):
    from bgtutorial.data import cub_archive

    monkeypatch.setattr(cub_archive, "MAX_MEMBERS", 5)
    root = tmp_path / "data"
    _archive(root, *(_member(f"CUB_200_2011/images/{i}.jpg", data=b"x") for i in range(10)))
    with pytest.raises(CUBDataError, match="expands to more than 5 members"):
        download_cub(root, md5=None)
    assert _names(root) == ["CUB_200_2011.tgz"]


def test_a_full_disk_during_extraction_is_not_called_a_truncated_archive(tmp_path, fake_archive):
    """A real write failure: the child may write files of at most 2 kB (RLIMIT_FSIZE); the JPEGs are larger."""
    shutil.copy(fake_archive[0], tmp_path / "CUB_200_2011.tgz")
    code = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))\n"
            "from bgtutorial.data.cub import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, "--root", str(tmp_path), "--md5", fake_archive[1]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: no room to extract {tmp_path / 'CUB_200_2011.tgz'} into {tmp_path} (")
    assert "truncated" not in done.stderr and "nothing was left behind" in done.stderr
    assert _names(tmp_path) == ["CUB_200_2011.tgz"]


# ---------------------------------------------------------------- issue 23: images that are not what they say
def _png_bomb() -> bytes:
    """A valid 1x1 PNG whose header claims 100,000 x 100,000 pixels (CRC fixed): PIL refuses it on open."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8                                         # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def test_a_png_bomb_named_jpg_is_refused_in_one_line(tmp_path, fake_cub_root):
    _copy_extracted(fake_cub_root, tmp_path)
    ds = CUB200(tmp_path, "test")
    ds.samples[0][0].write_bytes(_png_bomb())
    with pytest.raises(CUBDataError, match=r"is refused as a decompression bomb \(Image size \(10000000000 pixels\)"):
        ds[0]


def test_a_bad_jpeg_in_a_loader_worker_gives_one_line(tmp_path, capsys):
    """num_workers > 0: the worker's error came back with its 30-line traceback inside the message."""
    from bgtutorial.cli import main
    from bgtutorial.config import load_config
    from bgtutorial.data.splits import build_splits

    args = dict(out=str(tmp_path / "run"), data_root=str(tmp_path / "data"), epochs=1, num_workers=1,
                eval_nmi=False, progress=False)
    train_ds, _, _ = build_splits(load_config("smoke", **args))      # builds the synthetic archive once
    for path, _ in train_ds.samples:                                  # every training image: the first batch fails
        path.write_bytes(b"not a jpeg")
    argv = ["--preset", "smoke"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot read image {train_ds.base / 'images'}/")
    assert "the file is corrupt: extract again" in err
    assert "Traceback" not in err and "worker" not in err
