"""Fashion-MNIST (``fmnist``): the four IDX files (gzipped or not), 10 classes of 28 x 28 grey,
padded to 32 x 32 and repeated to 3 channels (the KB's 32 px geometry).

Found under the data directory (torchvision's ``FashionMNIST/raw`` among other layouts) or
where Debian's ``dataset-fashion-mnist`` puts them; ``--download`` fetches it with torchvision.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from marktune.data.base import Source, grey_to_rgb
from marktune.data.files import DataProblem, obtain, torchvision_fetch
from marktune.data.registry import FACTS

# Where Debian's dataset-fashion-mnist puts the four gzipped IDX files (a constant so tests
# can point it elsewhere).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: str | Path, *, expect_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or plain, told apart by content), e.g. MNIST's ``*-ubyte``."""
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    raw = gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{path}: IDX magic {magic}, expected {expect_magic}")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    dtype, ndim = np.dtype(dtypes[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:  # a truncated download, typically
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


HOW_TO_GET = (
    "Get it with `sudo apt-get install dataset-fashion-mnist` (offline, Debian/Ubuntu), or "
    "`python -m marktune.run --benchmark fmnist --download` (needs internet), or put torchvision's "
    "FashionMNIST/raw folder under --data-dir / $MARKTUNE_DATA.")


def load(root: Path, *, download: bool) -> Source:
    return obtain(lambda: read(root), title=FACTS["fmnist"].title, name="fmnist", directory=root,
                  download=download, fetch=lambda: _fetch(root), how_to_get=HOW_TO_GET)


def _places(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_MNIST_DIR]


def _file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate(root: Path) -> tuple[Path, dict[str, Path]]:
    places = _places(root)
    for folder in places:  # data_dir first, then Debian's
        files = {key: _file(folder, stem) for key, stem in FMNIST_FILES.items()}
        if all(files.values()):
            return folder, files  # type: ignore[return-value]
    raise DataProblem(places)


def read(root: Path) -> Source:
    folder, files = locate(root)
    arrays = {}
    for key, path in files.items():
        magic = IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC
        try:
            arrays[key] = read_idx(path, expect_magic=magic)
        except (OSError, ValueError, EOFError, gzip.BadGzipFile) as err:
            raise DataProblem([folder], f"{path.name}: {err}") from None
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise DataProblem([folder], f"{part}: {len(arrays[f'{part}_images'])} images but "
                                        f"{len(arrays[f'{part}_labels'])} labels")
    return Source(_pad_to_32(arrays["train_images"]), arrays["train_labels"].astype(np.int64),
                  _pad_to_32(arrays["test_images"]), arrays["test_labels"].astype(np.int64))


def _pad_to_32(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> [N, 3, 32, 32], zero border of 2 (the 32 px geometry of the KB)."""
    return grey_to_rgb(np.pad(images, ((0, 0), (2, 2), (2, 2))))


def _fetch(root: Path) -> None:
    # torchvision skips the download when the unpacked files merely exist; remove any that
    # do not parse (a torn unpack) so it unpacks them again from its md5-checked archives.
    raw = root / "FashionMNIST" / "raw"
    for stem in FMNIST_FILES.values():
        path = raw / stem
        if path.is_file():
            try:
                read_idx(path)
            except (OSError, ValueError):
                path.unlink()
    torchvision_fetch("FashionMNIST", root)
