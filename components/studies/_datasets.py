"""Classification data for the concept-shift study: a generated Gaussian-mixture set (offline default) or a
user's file: a folder of IDX files (MNIST / Fashion-MNIST layout), a Parquet or CSV table (numeric feature
columns + an integer label column). Returns plain numpy arrays; errors name the source and the problem."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.base import ParamError, check_range

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class ClassificationData:
    """Where the examples come from and how many to use (the first n after a seeded shuffle)."""

    source: str = "generated"
    label_column: str = "label"
    n_train: int = 10000
    n_val: int = 2000
    features: int = 32
    classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("dataset.n_train", self.n_train, 10, 10_000_000)
        check_range("dataset.n_val", self.n_val, 1, 10_000_000)
        check_range("dataset.features", self.features, 1, 100_000)
        check_range("dataset.classes", self.classes, 2, 1000)

    @property
    def generated(self) -> bool:
        return self.source == "generated"

    def path(self) -> Path:
        """The user's file or folder (raises ParamError when it does not exist or has an unknown format)."""
        path = Path(self.source).expanduser()
        if not path.exists():
            raise ParamError(f"dataset {self.source!r} does not exist (use 'generated', a folder of IDX files, "
                             "or a .parquet / .csv file)")
        if path.is_dir():
            missing = [n for pair in IDX_FILES.values() for n in pair if _idx_file(path, n) is None]
            if missing:
                raise ParamError(f"dataset folder {str(path)!r} lacks IDX file(s) {', '.join(missing)} (.gz or not)")
        elif path.suffix.lower() not in (".parquet", ".csv"):
            raise ParamError(f"dataset {str(path)!r}: expected a .parquet or .csv file or a folder of IDX files")
        return path

    def fingerprint(self) -> str:
        """sha256 of the request and of the files' bytes (a changed file is a different dataset)."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        if not self.generated:
            path = self.path()
            files = [_idx_file(path, n) for pair in IDX_FILES.values() for n in pair] if path.is_dir() else [path]
            for f in files:
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
        return h.hexdigest()[:16]

    def load(self) -> dict[str, np.ndarray]:
        """{"x": (n_train, f), "y": (n_train,), "x_val": (n_val, f), "y_val": (n_val,)}, labels 0..K−1."""
        if self.generated:
            return self._generate()
        path = self.path()
        if path.is_dir():
            (x, y), (xv, yv) = (_read_idx(path, *IDX_FILES[s]) for s in ("train", "val"))
        else:
            x, y = _read_table(path, self.label_column)
            xv, yv = x, y  # one table: split below
        rng = np.random.default_rng(self.seed)
        if xv is x:
            order = rng.permutation(len(y))
            if len(order) < self.n_train + self.n_val:
                raise ParamError(f"dataset {str(path)!r} has {len(order)} rows; n_train + n_val = "
                                 f"{self.n_train + self.n_val}")
            tr, va = order[: self.n_train], order[self.n_train: self.n_train + self.n_val]
            x, y, xv, yv = x[tr], y[tr], x[va], y[va]
        else:
            for name, have, want in (("train", len(y), self.n_train), ("validation", len(yv), self.n_val)):
                if have < want:
                    raise ParamError(f"dataset {str(path)!r}: {have} {name} examples, fewer than {want} requested")
            tr, va = rng.permutation(len(y))[: self.n_train], rng.permutation(len(yv))[: self.n_val]
            x, y, xv, yv = x[tr], y[tr], xv[va], yv[va]
        classes = np.unique(np.concatenate([y, yv]))
        if len(classes) < 2:
            raise ParamError(f"dataset {self.source!r}: labels take a single value {classes[0]}")
        remap = {c: i for i, c in enumerate(classes.tolist())}
        return {"x": x.astype(np.float64), "y": np.array([remap[c] for c in y.tolist()]),
                "x_val": xv.astype(np.float64), "y_val": np.array([remap[c] for c in yv.tolist()])}

    def _generate(self) -> dict[str, np.ndarray]:
        """A 10-class mixture of 3 Gaussian clusters per class in ``features`` dimensions (unit noise, centres
        N(0, I)): an MLP reaches ~90% on it, like Fashion-MNIST, in seconds."""
        rng = np.random.default_rng([self.seed, 11])
        centres = rng.normal(size=(self.classes, 3, self.features))  # (K, 3, f)

        def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
            c, s = rng.integers(0, self.classes, n), rng.integers(0, 3, n)
            return centres[c, s] + rng.normal(size=(n, self.features)), c

        (x, y), (xv, yv) = draw(self.n_train), draw(self.n_val)
        return {"x": x, "y": y, "x_val": xv, "y_val": yv}


def _idx_file(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (unsigned bytes, any rank), gzip or plain."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ParamError(f"{str(path)!r} is not an unsigned-byte IDX file")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims))
    if data.size != int(np.prod(dims)):
        raise ParamError(f"{str(path)!r}: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def _read_idx(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(_idx_file(folder, images))
    y = read_idx(_idx_file(folder, labels))
    if len(x) != len(y):
        raise ParamError(f"{str(folder)!r}: {len(x)} images but {len(y)} labels")
    return x.reshape(len(x), -1) / 255.0, y.astype(np.int64)


def _read_table(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pcsv.read_csv(path)
    if label not in table.column_names:
        raise ParamError(f"dataset {str(path)!r} has no label column {label!r}; columns: "
                         f"{', '.join(table.column_names[:20])}")
    feats = [c for c in table.column_names if c != label]
    bad = [c for c in feats if not _numeric(table.schema.field(c).type)]
    if bad or not feats:
        raise ParamError(f"dataset {str(path)!r}: feature columns must be numeric; not numeric: {', '.join(bad[:10])}"
                         if bad else f"dataset {str(path)!r} has no feature columns besides {label!r}")
    y = table.column(label).to_numpy()
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ParamError(f"dataset {str(path)!r}: label column {label!r} must hold integer class ids")
    x = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in feats], axis=1)
    if not np.isfinite(x).all():
        raise ParamError(f"dataset {str(path)!r}: feature columns contain missing or non-finite values")
    return x, y


def _numeric(tp: object) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(tp) or pt.is_floating(tp) or pt.is_boolean(tp)
