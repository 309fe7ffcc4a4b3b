"""Datasets: the embedded default, `.npz`/`.csv` files from a local path or `s3://`, and sharding.

Everything here runs before any process group starts, so bad data fails fast with a message that
names the file, the row/column and what to change.

The builtin `mlp-binary` dataset: two Gaussian classes N(+mu, I) and N(-mu, I) in 1000 dims,
balanced, with mu spread over the first 50 features and |mu| = 2.0537. The Bayes-optimal rule is
sign(mu . x), so the best achievable accuracy is Phi(|mu|) = 98.0% (`BUILTIN_BEST_ACCURACY`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.common.s3 import download_to_temp
from runtime.train.config import BUILTIN_SOURCE, ConfigError, DataConfig

BUILTIN_INFORMATIVE = 50
BUILTIN_MEAN_NORM = 2.053748910631823  # Phi^-1(0.98)
BUILTIN_BEST_ACCURACY = 0.5 * (1.0 + math.erf(BUILTIN_MEAN_NORM / math.sqrt(2.0)))


class DataError(ValueError):
    """Bad user data: the message names the file, the row/column and what to change."""


@dataclass
class Dataset:
    """Features `x` (float32, [n, d]) and 0/1 labels `y` (float32, [n]) with a train/val split."""

    x: np.ndarray
    y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    source: str

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])


def make_builtin(num_samples: int, num_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic two-Gaussian dataset; see the module docstring for its best accuracy."""
    rng = np.random.default_rng(seed)
    k = min(BUILTIN_INFORMATIVE, num_features)
    mu = np.zeros(num_features, dtype=np.float64)
    mu[:k] = BUILTIN_MEAN_NORM / math.sqrt(k)
    y = (np.arange(num_samples) % 2).astype(np.float32)
    rng.shuffle(y)
    x = rng.standard_normal((num_samples, num_features)) + np.where(y[:, None] > 0, mu, -mu)
    return x.astype(np.float32), y


def _check_values(
    x: np.ndarray, y: np.ndarray, name: str, columns: list[str] | None, unit: str = "row", first: int = 1
) -> None:
    """Reject empty data, non-finite features and non-0/1 labels; rows are numbered from `first`."""
    if x.shape[0] == 0:
        raise DataError(f"{name}: no rows; add at least one sample")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        col_name = columns[col] if columns else f"column {col}"
        raise DataError(
            f"{name}: {unit} {row + first}, {col_name} is {x[row, col]} (NaN/inf); replace or drop non-finite values"
        )
    bad_y = ~np.isin(y, (0.0, 1.0))
    if bad_y.any():
        row = int(np.argmax(bad_y))
        raise DataError(
            f"{name}: {unit} {row + first} has label {float(y[row])!r}; labels must be 0 or 1 for binary classification"
        )


def _load_npz(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(
                    f"{name}: missing array(s) {', '.join(missing)} (found {', '.join(z.files) or 'none'}); "
                    "save features as `x` [rows, features] and labels as `y` [rows]"
                )
            x, y = z["x"], z["y"]
    except DataError:
        raise
    except (ValueError, OSError) as e:
        raise DataError(f"{name}: not a readable .npz file ({e}); write it with numpy.savez") from None
    if x.dtype == object or y.dtype == object:
        raise DataError(f"{name}: object arrays are not accepted; save numeric arrays")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{name}: `x` has non-numeric dtype {x.dtype}; save numbers")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise DataError(f"{name}: `y` has non-numeric dtype {y.dtype}; save 0/1 numbers")
    if x.ndim != 2:
        raise DataError(f"{name}: `x` has shape {x.shape}; it must be 2-D [rows, features]")
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{name}: `y` has shape {y.shape} but `x` has {x.shape[0]} rows; give one label per row")
    x, y = x.astype(np.float32), y.astype(np.float32)
    _check_values(x, y, name, None)
    return x, y


def _load_csv(text: str, name: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or not any(h.strip() for h in header):
        raise DataError(f"{name}: empty file; write a header row and at least one data row")
    header = [h.strip() for h in header]
    if label_column not in header:
        raise DataError(
            f"{name}: no column named {label_column!r} (columns: {', '.join(header[:10])}"
            f"{', ...' if len(header) > 10 else ''}); set data.label_column to the label's header"
        )
    label_at = header.index(label_column)
    features = [h for i, h in enumerate(header) if i != label_at]
    if not features:
        raise DataError(f"{name}: only the label column; add feature columns")
    values: list[list[float]] = []
    for line_no, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(
                f"{name}: line {line_no} has {len(row)} cells but the header has {len(header)}; "
                "every row needs one value per column"
            )
        parsed = []
        for col, cell in zip(header, row, strict=True):
            try:
                parsed.append(float(cell))
            except ValueError:
                raise DataError(
                    f"{name}: line {line_no}, column {col!r} holds {cell!r}, not a number; "
                    "encode features and labels as numbers"
                ) from None
        values.append(parsed)
    if not values:
        raise DataError(f"{name}: header but no data rows; add at least one sample")
    table = np.asarray(values, dtype=np.float64)
    y = table[:, label_at].astype(np.float32)
    x = np.delete(table, label_at, axis=1)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    _check_values(x32, y, name, features, unit="line", first=2)  # the header is line 1
    return x32, y


def _read_source(source: str) -> tuple[Path, bool]:
    """Local path, or download `s3://bucket/key` to a temp file (boto3's standard env applies)."""
    if not source.startswith("s3://"):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{source}: no such file; set data.source to an existing .npz/.csv path")
        return path, False
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return download_to_temp(source), True
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    except (ClientError, BotoCoreError) as e:
        raise DataError(f"{source}: cannot download ({e}); check the bucket, key and credentials") from None


def load_arrays(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if cfg.source == BUILTIN_SOURCE:
        return make_builtin(cfg.num_samples, cfg.num_features, seed)
    path, is_temp = _read_source(cfg.source)
    try:
        if cfg.source.lower().endswith(".npz"):
            return _load_npz(path, cfg.source)
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise DataError(f"{cfg.source}: not UTF-8 text; save the CSV as UTF-8") from None
        return _load_csv(text, cfg.source, cfg.label_column)
    finally:
        if is_temp:
            path.unlink(missing_ok=True)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load and validate the data, then split off `val_fraction` of rows (fixed by `seed`)."""
    x, y = load_arrays(cfg, seed)
    n = x.shape[0]
    num_val = max(1, round(n * cfg.val_fraction))
    if n - num_val < 1:
        raise DataError(f"{cfg.source}: {n} row(s) leave nothing to train on; add rows or lower data.val_fraction")
    perm = np.random.default_rng(seed + 1).permutation(n)
    return Dataset(x=x, y=y, train_idx=np.sort(perm[num_val:]), val_idx=np.sort(perm[:num_val]), source=cfg.source)


def steps_per_epoch(num_train: int, global_batch: int) -> int:
    """Optimizer steps in one epoch (the last partial global batch is dropped)."""
    return num_train // global_batch


def check_batch_fits(global_batch: int, num_train: int) -> int:
    """Optimizer steps per epoch; ConfigError when the global batch exceeds the training rows."""
    spe = steps_per_epoch(num_train, global_batch)
    if spe < 1:
        raise ConfigError(
            f"config `global_batch_size` = {global_batch} is invalid: the training split has only "
            f"{num_train} rows; use a batch of at most that many"
        )
    return spe


def epoch_order(train_idx: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The global sample order of an epoch: the same on every rank, fixed by seed and epoch."""
    return train_idx[np.random.default_rng([seed, epoch]).permutation(len(train_idx))]


def rank_batch(order: np.ndarray, step_in_epoch: int, global_batch: int, rank: int, world: int) -> np.ndarray:
    """Indices this rank trains on in one optimizer step: its contiguous slice of the global batch.

    The union over ranks is exactly the global batch, whatever the world size.
    """
    per_rank = global_batch // world
    start = step_in_epoch * global_batch + rank * per_rank
    return order[start : start + per_rank]
