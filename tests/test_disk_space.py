"""Each long step checks the free disk first: it fails at once, says how much and where."""

import zipfile

import pytest
from test_data import BASE, write_dataset
from test_download import BODY, LocalServer, httpd, offline  # noqa: F401 - fixtures

from sat_helpers import download
from sat_helpers.data import prepare_dataset
from sat_helpers.download import NotEnoughDiskError, download_url, extract


@pytest.fixture
def local(httpd):  # noqa: F811 - test_download's server on 127.0.0.1
    return LocalServer(httpd)


@pytest.fixture
def full_disk(monkeypatch):
    """Every disk reports 1000 bytes free."""
    usage = download.shutil.disk_usage(".")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage._replace(free=1000))


def test_a_download_that_would_not_fit_is_not_started_nor_retried(local, tmp_path, full_disk):
    url = local.add("/big.bin", BODY)
    with pytest.raises(NotEnoughDiskError, match=r"downloading .*big.bin needs 5.0 kB free in "
                       r".*only 1.0 kB free.*SAT_DATA"):
        download_url(url, tmp_path / "big.bin")
    assert local.requests() == 1 and not list(tmp_path.iterdir())


def test_an_extraction_that_would_not_fit_writes_nothing(tmp_path, full_disk):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("images/x.jpg", BODY)
    with pytest.raises(NotEnoughDiskError, match=r"extracting a.zip needs 5.0 kB"):
        extract(tmp_path / "a.zip", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_a_preparation_that_would_not_fit_leaves_nothing(tmp_path, full_disk):
    json_path, image_dir = write_dataset(tmp_path / "raw", BASE)
    with pytest.raises(NotEnoughDiskError, match=r"prepared 32-px image arrays of dataset.json "
                                                 r"needs 21.5 kB"):
        prepare_dataset(json_path, image_dir, tmp_path / "prepared", 32, 1, 20, 2)
    assert not (tmp_path / "prepared").exists() and not list(tmp_path.glob(".prepared*"))
