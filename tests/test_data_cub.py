"""CUB-200-2011 pipeline on synthetic archives built in the official layout."""
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from bgtutorial.data import (CUB200, CUBDataError, download_cub, fake_cub_url, make_fake_cub,
                             eval_transform, train_transform)
from bgtutorial.data.cub import CUB_FOLDER, METADATA_FILES


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


def test_checksum_mismatch(tmp_path, fake_archive):
    with pytest.raises(CUBDataError, match=r"checksum mismatch for .*CUB_200_2011.tgz.*delete it"):
        download_cub(tmp_path, url=fake_cub_url(fake_archive[0]), md5="0" * 32)


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


def _tgz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "CUB_200_2011/../../evil.txt", "/tmp/bgt_evil_abs.txt"])
def test_extraction_cannot_escape_root(tmp_path, member):
    root = tmp_path / "root"
    root.mkdir()
    _tgz(root / "CUB_200_2011.tgz", {"CUB_200_2011/images.txt": b"1 a/b.jpg\n", member: b"x"})
    with pytest.raises(CUBDataError, match="outside"):
        download_cub(root, md5=None)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/bgt_evil_abs.txt").exists()


def test_symlink_escaping_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _tgz(root / "CUB_200_2011.tgz", {"CUB_200_2011/images.txt": b""}, links={"CUB_200_2011/x": "../../etc"})
    with pytest.raises(CUBDataError, match="points outside"):
        download_cub(root, md5=None)


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
    files = list(base.glob(".cache-retrieval-test-32px.u8"))
    assert len(files) == 1 and files[0].stat().st_size == len(plain) * 32 * 32 * 3
    resize = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    for i in (0, 5, len(plain) - 1):
        torch.testing.assert_close(cached[i][0], resize(plain.load_image(i)))
        assert cached[i][1] == plain[i][1]
    stamp = files[0].stat().st_mtime_ns
    CUB200(tmp_path, "test", cache_size=32)            # reused, not rebuilt
    assert files[0].stat().st_mtime_ns == stamp


def test_folder_extracted_by_hand_is_reused(tmp_path, fake_cub_root):
    base = _copy_extracted(fake_cub_root, tmp_path)
    (base / ".bgtutorial_extracted").unlink(missing_ok=True)
    assert download_cub(tmp_path, url="file:///nonexistent.tgz") == base   # no archive: trust the folder
