"""Where a split's arrays come from: the shipped sample, jdl's cache, or tensorflow-datasets.

`read_split(name, split, ...)` returns a split as host arrays (uint8 images
NHWC, int32 labels). In order, it tries:

1. `mnist_sample`: the archive shipped inside jdl (no TensorFlow, no tfds).
2. jdl's cache of a decoded split, `DATA_DIR/NAME/[CONFIG/]VERSION/jdl-SPLIT.npz`,
   inside the folder where tfds prepared the dataset: plain NumPy, loads in
   well under a second, no TensorFlow.
3. A dataset tfds has prepared in `DATA_DIR`. Prepared as `array_record`
   (what jdl writes) it is read through `tfds.data_source` with no
   TensorFlow, images decoded with Pillow; prepared as TFRecord (what
   `tfds.load` writes) it is read with TensorFlow. Either way the decoded
   split is then cached (2.), written to a temporary file and renamed, so a
   reader never sees half a file.
4. Preparation with tfds (needs TensorFlow; GPUs hidden from it), as
   `array_record`, from source files in `manual_dir` or, when the network is
   reachable and `download=True`, downloaded by tfds. `mnist` and
   `fashion_mnist` from IDX files in `manual_dir` go through `jdl.data.idx`,
   which verifies them (Debian's recompressed Fashion-MNIST included) and
   feeds the verified files to tfds' own builder. tfds writes into a
   temporary folder and renames it when done; jdl removes the folders it
   created when preparation fails.

Without network, tfds retries each download for minutes (about 200 s for
mnist here). jdl does not go down that path: when the files are neither
prepared nor in `manual_dir`, it checks whether the download hosts answer
within 3 s and, if not (or if `download=False`), raises
`DatasetUnavailableError` saying how to provide the files.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import types
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jdl.data import idx, mnist_sample
from jdl.data._tfds_compat import ensure_importlib_resources, import_tensorflow

__all__ = [
    "DatasetUnavailableError",
    "SplitData",
    "default_data_dir",
    "read_split",
]

log = logging.getLogger(__name__)

# Splits and sizes of the datasets jdl is tested with, so that a wrong split
# or batch size is refused before anything is prepared. Other datasets are
# checked against tfds' metadata once it is known.
KNOWN_SPLITS: dict[str, dict[str, int]] = {
    "mnist": {"train": 60000, "test": 10000},
    "fashion_mnist": {"train": 60000, "test": 10000},
    "cifar10": {"train": 50000, "test": 10000},
    "cifar100": {"train": 50000, "test": 10000},
    mnist_sample.NAME: {"train": 4000, "test": 1000},
}
IDX_DATASETS = ("mnist", "fashion_mnist")
NETWORK_TIMEOUT_S = 3.0
_CACHE_FORMAT = 1


# How jdl.data.load's errors name the options that would fix them: an option
# with its value (``manual_dir``) and the option alone (``manual_dir_option``).
LIBRARY_OPTION_WORDS = {"manual_dir": "manual_dir=FOLDER", "data_dir": "data_dir=FOLDER",
                        "manual_dir_option": "manual_dir", "data_dir_option": "data_dir"}


def _literal(text) -> str:
    """``text`` for a ``str.format`` template, braces kept as they are."""
    return str(text).replace("{", "{{").replace("}", "}}")


class _NamesOptions:
    """An error whose message names the options that would fix it.

    Made with ``template=`` (a ``str.format`` template over
    ``LIBRARY_OPTION_WORDS``' keys): ``str(error)`` names the options as
    ``jdl.data.load`` takes them (``manual_dir=FOLDER``), and
    ``error.in_words(manual_dir="--manual-dir FOLDER", ...)`` gives the same
    message in a caller's own words (the command line's).  Otherwise as the
    base exception.  The template is kept in the instance's ``__dict__``, so
    the error pickles with it.
    """

    def __init__(self, *args, template: str | None = None, **kwargs):
        self.template = template
        super().__init__(*((template.format(**LIBRARY_OPTION_WORDS),) if template is not None else args), **kwargs)

    def in_words(self, **words: str) -> str:
        """The message with the options given in ``words`` named that way."""
        unknown = set(words) - set(LIBRARY_OPTION_WORDS)
        if unknown:
            raise TypeError(f"in_words names {sorted(LIBRARY_OPTION_WORDS)}; got {sorted(unknown)}")
        if self.template is None:
            return str(self)
        return self.template.format(**{**LIBRARY_OPTION_WORDS, **words})


class DatasetUnavailableError(_NamesOptions, FileNotFoundError):
    """The dataset is not prepared, its files are not on disk, and it cannot be downloaded."""


class TensorFlowNeededError(_NamesOptions, ImportError):
    """Reading a split that only TensorFlow reads, with TensorFlow not installed."""


@dataclass(frozen=True)
class SplitData:
    """One split (or a tfds split expression) as host arrays, with what the loader needs."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)
    num_classes: int
    class_names: tuple[str, ...] | None = None


def default_data_dir() -> Path:
    """tfds' default: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return local_folder(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets", "TFDS_DATA_DIR")


def local_folder(path, what: str) -> Path:
    """``path`` as a local folder (``~`` expanded); a URL such as ``gs://bucket/tfds`` is refused:
    jdl reads and writes its caches with local file operations (``Path('gs://b')`` would be ``gs:/b``,
    a relative folder)."""
    text = os.fspath(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", text):
        raise ValueError(f"{what} must be a local folder; got the URL {text!r} (jdl reads datasets from "
                         "local files: copy the prepared dataset to a local folder and pass that)")
    return Path(text).expanduser()


# ---------------------------------------------------------------------------
# Names and splits


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def known_names() -> list[str]:
    """Every dataset name `load` can be given: tfds' registered builders and mnist_sample."""
    try:
        names = _tfds().list_builders(with_community_datasets=False)
    except ImportError:
        names = []
    return sorted({mnist_sample.NAME, *names})


def check_name(name: str) -> str:
    """``name`` with its builder named as tfds registers it ('Fashion_MNIST:3.0.1'
    -> 'fashion_mnist:3.0.1'), so that jdl's own handling of a dataset (the
    shipped mnist_sample, IDX files, known split sizes) does not depend on how
    the name was spelled; a ValueError naming `name` and close names when no
    builder has that name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string; got {name!r}")
    base = _base(name)
    if base.lower() == mnist_sample.NAME:  # as tfds, whatever the case
        return mnist_sample.NAME + name[len(base):]
    try:
        tfds = _tfds()
    except ImportError as e:
        raise ImportError(
            f"loading {name!r} needs tensorflow-datasets (`pip install tensorflow-datasets`); "
            "only 'mnist_sample' works without it"
        ) from e
    try:
        return tfds.builder_cls(base).name + name[len(base):]
    except (tfds.core.registered.DatasetNotFoundError, ValueError):  # ValueError: bad syntax
        pass
    close = difflib.get_close_matches(base, known_names(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown dataset {name!r}: tensorflow-datasets has no builder of that name, "
        f"and it is not jdl's 'mnist_sample'.{hint}"
    )


def _base(name: str) -> str:
    """The builder's name in a dataset name: 'fashion_mnist:3.0.1' -> 'fashion_mnist'."""
    return name.split(":")[0].split("/")[0]


def _check_shipped_version(name: str) -> None:
    """A ValueError unless ``name`` (mnist_sample's) asks for the shipped version or none."""
    rest = name[len(mnist_sample.NAME):]
    if rest not in ("", f":{mnist_sample.VERSION}"):
        raise ValueError(f"{mnist_sample.NAME} ships with jdl at version {mnist_sample.VERSION} only, with no "
                         f"configs; got {name!r}")


_SPLIT_TERM = re.compile(r"^\s*([\w\-]+)\s*(\[[^\]]*\])?\s*$")


def base_splits(split: str) -> list[str]:
    """The split names in a tfds split expression: 'train[:90%]+test' -> ['train', 'test']."""
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must be a non-empty string such as 'train'; got {split!r}")
    names = []
    for term in split.split("+"):
        match = _SPLIT_TERM.match(term)
        if not match:
            raise ValueError(
                f"cannot parse split {split!r}: expected NAME, NAME[a:b] or NAME[a%:b%] "
                "terms joined by '+' (tfds' split syntax)"
            )
        names.append(match.group(1))
    return names


def check_splits(name: str, split: str, available: Sequence[str]) -> None:
    """Raises ValueError when a split named in `split` is not among `available`."""
    for base in base_splits(split):
        if base not in available:
            raise ValueError(
                f"{name} has no split {base!r}: expected one of {sorted(available)}, got {split!r}"
            )


def split_size(name: str, split: str, sizes: dict[str, int]) -> int:
    """Number of examples that the split expression `split` selects."""
    return sum(stop - start for _, start, stop in _absolute(name, split, sizes))


def _absolute(name: str, split: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """[(base split, start, stop)] for a tfds split expression, via tfds' own parser."""
    if "[" not in split:
        return [(base, 0, sizes[base]) for base in base_splits(split)]
    tfds = _tfds()
    infos = {k: types.SimpleNamespace(num_examples=n) for k, n in sizes.items()}
    try:
        parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    except (ValueError, AssertionError) as e:
        raise ValueError(f"{name}: bad split {split!r}: {e}") from e
    except AttributeError as e:  # tfds' shard units ('train[:1shard]') need the prepared files' shard lengths
        raise ValueError(f"{name}: split {split!r} is not supported: jdl takes splits by example or percent, "
                         "e.g. 'train', 'train[:1000]', 'train[10%:]', 'train+test'") from e
    out = []
    for p in parts:
        n = sizes[p.splitname]
        start, stop = p.from_ or 0, n if p.to is None else p.to
        if stop < start:
            raise ValueError(f"{name}: split {split!r} selects no examples: its slice of {p.splitname!r} ends "
                             f"(at {stop}) before it starts (at {start})")
        out.append((p.splitname, start, stop))
    return out


# ---------------------------------------------------------------------------
# Reading


def read_split(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               manual_dir: str | os.PathLike | None = None, download: bool = True,
               check_size: Callable[[int], None] | None = None) -> SplitData:
    """Returns the split expression `split` of dataset `name` as host arrays.

    `check_size(num_examples)` is called as soon as the split's size is known,
    before anything is prepared or decoded where tfds' metadata or
    `KNOWN_SPLITS` gives the size; it raises to refuse the split.

    See the module docstring for where the arrays come from. Raises
    ValueError (unknown name or split), PermissionError (data_dir not
    writable when something must be written), DatasetUnavailableError (not
    prepared and cannot be obtained offline), IdxVerificationError (IDX files
    in manual_dir that fail verification).
    """
    name = check_name(name)
    if _base(name) == mnist_sample.NAME:
        _check_shipped_version(name)
        name = mnist_sample.NAME
        check_splits(name, split, mnist_sample.SPLITS)
        if check_size is not None:
            check_size(split_size(name, split, KNOWN_SPLITS[name]))
        parts = {s: mnist_sample.read_split(s) for s in base_splits(split)}
        return _assemble(name, split, parts, mnist_sample.NUM_CLASSES, None)
    source = _TfdsSource(name, data_dir)
    return source.read(split, manual_dir=manual_dir, download=download, check_size=check_size)


def _assemble(name, split, parts, num_classes, class_names) -> SplitData:
    sizes = {s: len(labels) for s, (_, labels) in parts.items()}
    images, labels = [], []
    for base, start, stop in _absolute(name, split, sizes):
        images.append(parts[base][0][start:stop])
        labels.append(parts[base][1][start:stop])
    if len(images) == 1:
        image_array, label_array = images[0], labels[0]
    else:
        image_array, label_array = np.concatenate(images), np.concatenate(labels)
    return SplitData(images=image_array, labels=label_array.astype(np.int32, copy=False),
                     num_classes=int(num_classes), class_names=class_names)


class _TfdsSource:
    """One tfds dataset in one data_dir: its builder, cache paths, and the ways to fill them."""

    def __init__(self, name: str, data_dir):
        self.name = name
        self.data_dir = local_folder(data_dir, "data_dir") if data_dir else default_data_dir()
        tfds = _tfds()
        try:
            self.builder = tfds.builder(name, data_dir=os.fspath(self.data_dir))
        except (tfds.core.registered.DatasetNotFoundError, AssertionError) as e:  # unknown config or version
            raise ValueError(f"unknown dataset {name!r}: {e}") from e
        features = self.builder.info.features
        keys = set(features.keys()) if hasattr(features, "keys") else set()
        label = features["label"] if "label" in keys else None
        if "image" not in keys or not isinstance(label, tfds.features.ClassLabel):
            raise ValueError(
                f"{name} is not an image-classification dataset: jdl needs an 'image' "
                f"feature and a ClassLabel 'label'; it has {dict(features)}"
            )
        image = features["image"]
        shape, dtype = tuple(getattr(image, "shape", ()) or ()), np.dtype(getattr(image, "np_dtype", np.uint8))
        if len(shape) != 3 or None in shape or dtype != np.uint8:
            raise ValueError(
                f"{name}'s images are {dtype.name} of shape {shape}: jdl loads datasets whose images are "
                "uint8 of one fixed (height, width, channels), as mnist, fashion_mnist, cifar10 and cifar100 "
                "are (images of varying size need resizing, which jdl.data.load does not do)"
            )
        self.num_classes = label.num_classes
        self.class_names = tuple(label.names) if label.names else None
        self.dataset_dir = self.data_dir / self.builder.info.full_name

    # -- metadata ------------------------------------------------------------
    def prepared_format(self) -> str | None:
        """'array_record', 'tfrecord', ... when tfds has prepared the dataset here, else None
        ('array_record' under ``tfds.testing.mock_data``: tfds' mock sources answer as those)."""
        if self.mocked:
            return "array_record"
        if not self.builder.is_prepared():
            return None
        return self.builder.info.file_format.value

    @property
    def mocked(self) -> bool:
        """Whether ``tfds.testing.mock_data`` is active: its fake examples are
        then what tfds reads, and jdl neither reads nor writes its caches."""
        # mock_data replaces download_and_prepare always (as_data_source only when not given one)
        prepare = type(self.builder).download_and_prepare
        return getattr(prepare, "__module__", "") == "tensorflow_datasets.testing.mocking"

    def split_sizes(self, prepared: bool) -> dict[str, int] | None:
        if prepared and self.builder.info.splits:
            return {k: v.num_examples for k, v in self.builder.info.splits.items()}
        return KNOWN_SPLITS.get(_base(self.name))

    def cache_path(self, base: str) -> Path:
        return self.dataset_dir / f"jdl-{base}.npz"

    # -- the main path -------------------------------------------------------
    def read(self, split: str, *, manual_dir, download: bool, check_size=None) -> SplitData:
        bases = base_splits(split)
        cached = {b: None if self.mocked else _read_cache(self.cache_path(b)) for b in bases}
        fmt = self.prepared_format()
        sizes = self.split_sizes(prepared=fmt is not None)
        if sizes is not None:
            check_splits(self.name, split, list(sizes))
            if check_size is not None:
                check_size(split_size(self.name, split, sizes))
            for base, found in cached.items():  # a cache of another version or dataset: decode afresh
                if found is not None and len(found[1]) != sizes[base]:
                    log.warning("ignoring cache %s: %d examples where %s %r has %d", self.cache_path(base),
                                len(found[1]), self.name, base, sizes[base])
                    cached[base] = None
        if any(v is None for v in cached.values()) and fmt is None:
            _check_writable(self.data_dir)
            self.prepare(manual_dir=manual_dir, download=download)
            fmt = self.prepared_format()
            if fmt is None:
                raise RuntimeError(f"tfds finished preparing {self.name} but finds no data "
                                   f"in {self.dataset_dir}")
            known_before, sizes = sizes, self.split_sizes(prepared=True)
            check_splits(self.name, split, list(sizes))
            if check_size is not None and known_before is None:
                check_size(split_size(self.name, split, sizes))
        parts = {}
        for base in bases:
            if cached[base] is None:
                cached[base] = self.decode(base, fmt)
                if not self.mocked:
                    _write_cache(self.cache_path(base), *cached[base])
            parts[base] = cached[base]
        return _assemble(self.name, split, parts, self.num_classes, self.class_names)

    def decode(self, base: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
        """Reads a prepared split into (uint8 images, int32 labels)."""
        if fmt == "array_record":
            return _decode_array_record(self.builder, base)
        try:
            import_tensorflow()  # GPUs hidden before tfds builds a tf.data pipeline
        except ImportError as error:
            raise TensorFlowNeededError(template=(
                f"{_literal(self.name)} is prepared in {_literal(self.dataset_dir)} as {_literal(fmt)} files, which "
                "only TensorFlow reads (jdl prepares datasets as array_record, which it reads without TensorFlow): "
                "install TensorFlow (`pip install tensorflow-cpu`), or prepare it again in a fresh folder, "
                "{data_dir}"
            )) from error
        data = _tfds().as_numpy(self.builder.as_dataset(split=base, batch_size=-1))
        return np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.int32)

    # -- preparation ---------------------------------------------------------
    def prepare(self, *, manual_dir, download: bool, file_format: str = "array_record") -> None:
        """Prepares the dataset with tfds (see the module docstring).

        `file_format` is what tfds writes: jdl reads 'array_record' without
        TensorFlow; 'tfrecord' serves tf.data (the benchmark's reference).
        """
        manual = local_folder(manual_dir, "manual_dir") if manual_dir else None
        if manual is not None and not manual.is_dir():
            raise DatasetUnavailableError(template="{manual_dir_option} " + _literal(manual) + " is not a folder")
        if manual is None and (self.data_dir / "downloads" / "manual").is_dir():
            manual = self.data_dir / "downloads" / "manual"  # tfds' default manual_dir
        base = _base(self.name)
        use_idx = manual is not None and base in IDX_DATASETS and idx.find_idx_files(manual)
        missing = {} if use_idx else self._missing_source_files(manual)
        if missing:
            if not download:
                raise DatasetUnavailableError(template=self._unavailable(
                    "the source files are not on disk (download=False)", missing))
            hosts = sorted({urllib.parse.urlparse(u).hostname for u in missing.values()} - {None})
            if not _any_reachable(hosts or ["storage.googleapis.com"]):
                raise DatasetUnavailableError(template=self._unavailable(
                    f"tfds could not download it: no answer from {', '.join(hosts)} within "
                    f"{NETWORK_TIMEOUT_S:.0f} s (no network?)", missing))
        created = _missing_parents(self.dataset_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if use_idx:
                self._prepare_from_idx(manual, file_format)
            else:
                self._download_and_prepare(manual_dir=manual, downloading=bool(missing),
                                           file_format=file_format)
        except BaseException:
            for path in created:  # only folders jdl created, and only if tfds left them empty
                _remove_if_empty(path)
            raise

    def _missing_source_files(self, manual: Path | None) -> dict[str, str]:
        """file name -> URL of the registered downloads that are not in `manual`."""
        if getattr(self.builder, "SHIPPED_WITH_JDL", False):
            return {}
        ensure_importlib_resources()
        try:
            infos = type(self.builder).url_infos or {}
        except Exception:  # noqa: BLE001 - builders without a checksums file
            infos = {}
        if not infos:  # unknown downloads: assume all are missing unless manual has files
            if manual is not None and any(manual.iterdir()):
                return {}
            return {"(the dataset's source files)": getattr(self.builder, "URL", "") or ""}
        out = {}
        for url, info in infos.items():
            fname = info.filename or url.rsplit("/", 1)[-1]
            if manual is None or not (manual / fname).exists():
                out[fname] = url
        return out

    def _unavailable(self, reason: str, missing: dict[str, str]) -> str:
        """The template of a DatasetUnavailableError's message (``_NamesOptions``)."""
        files = ", ".join(sorted(missing))
        idx_hint = ""
        if _base(self.name) in IDX_DATASETS:
            idx_hint = (" (for mnist and fashion_mnist the four IDX files, .gz or not, also "
                        "recompressed ones; on Debian `apt-get install dataset-fashion-mnist` "
                        "puts Fashion-MNIST in /usr/share/datasets/fashion-mnist)")
        return (
            f"{_literal(self.name)} is not prepared in {_literal(self.dataset_dir)}, and {_literal(reason)}. Either "
            f"pass {{manual_dir}} holding its source files{idx_hint}: {_literal(files)}; or pass {{data_dir}} where "
            f"it is already prepared (FOLDER/{_literal(self.builder.info.full_name)}/dataset_info.json), or set "
            "TFDS_DATA_DIR. 'mnist_sample' ships with jdl and needs neither."
        )

    def _download_and_prepare(self, manual_dir: Path | None, split_generators=None,
                              downloading: bool = False,
                              file_format: str = "array_record") -> None:
        """tfds' download_and_prepare, GPUs hidden from TensorFlow.

        Downloads go to tfds' usual `DATA_DIR/downloads` (kept, as tfds does);
        with nothing to download, tfds' scratch folders go to a temporary
        folder removed afterwards.
        """
        tfds = _tfds()
        ensure_importlib_resources()
        import_tensorflow()
        tmp = Path(tempfile.mkdtemp(prefix="jdl-downloads-", dir=self.data_dir))
        if split_generators is not None:  # an instance attribute shadows the class's method
            self.builder._split_generators = types.MethodType(split_generators, self.builder)
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None,
            try_download_gcs=False,
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        )
        download_dir = None if downloading else os.fspath(tmp)
        try:
            self.builder.download_and_prepare(
                download_dir=download_dir, download_config=config, file_format=file_format)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self.builder.__dict__.pop("_split_generators", None)

    def _prepare_from_idx(self, manual: Path, file_format: str) -> None:
        tfds = _tfds()
        work = Path(tempfile.mkdtemp(prefix="jdl-idx-", dir=self.data_dir))
        try:
            verified = idx.verify_idx_folder(_base(self.name), manual, work)
            log.info("%s: IDX files in %s verified: %s", self.name, manual, verified.how)
            paths = {k: os.fspath(v) for k, v in verified.paths.items()}

            def split_generators(builder, dl_manager):
                del builder, dl_manager  # tfds' _generate_examples reads the verified files
                return [
                    tfds.core.SplitGenerator(name=split, gen_kwargs=dict(
                        num_examples=idx._COUNTS[split],  # noqa: SLF001
                        data_path=paths[f"{split}_data"], label_path=paths[f"{split}_labels"]))
                    for split in ("train", "test")
                ]

            self._download_and_prepare(manual_dir=None, split_generators=split_generators,
                                       file_format=file_format)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _decode_array_record(builder, base: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads an array_record split through `tfds.data_source`: no TensorFlow.

    tfds parses each record and decodes its image with Pillow (or OpenCV when
    installed); chunks of records are read on two threads.
    """
    source = builder.as_data_source(split=base)
    n = len(source)
    if n == 0:
        raise DatasetUnavailableError(f"{builder.name} split {base!r} is empty")

    def read(start: int):
        keys = list(range(start, min(start + 1024, n)))
        try:
            examples = source.__getitems__(keys)
        except (AttributeError, TypeError):  # sources that only answer source[i] (tfds.testing.mock_data's)
            examples = [source[i] for i in keys]
        return ([np.asarray(e["image"], np.uint8) for e in examples],
                [int(e["label"]) for e in examples])

    images, labels = [], []
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for chunk_images, chunk_labels in pool.map(read, range(0, n, 1024)):
            images.extend(chunk_images)
            labels.extend(chunk_labels)
    stacked = np.stack(images)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return stacked, np.asarray(labels, np.int32)


# ---------------------------------------------------------------------------
# Cache files and folders


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            if int(f["format"]) != _CACHE_FORMAT:
                return None
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        log.warning("ignoring unreadable cache %s: %s", path, e)
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        log.warning("ignoring cache %s with unexpected arrays", path)
        return None
    return images, labels.astype(np.int32, copy=False)


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes the cache atomically (temporary file, then rename); skips read-only folders."""
    tmp = path.parent / f".jdl-{uuid.uuid4().hex}.npz.tmp"
    try:  # mode 0o666 less the umask, as tfds' files beside it (mkstemp's would be 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        log.warning("not caching %s (%s): the next load decodes it again", path, e)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels, format=np.int64(_CACHE_FORMAT))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_writable(data_dir: Path) -> None:
    """Raises PermissionError unless data_dir exists writable or can be created."""
    probe = data_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(
            f"data_dir {data_dir} is not writable ({probe} "
            f"{'is not a folder' if not probe.is_dir() else 'denies writing'}): the dataset "
            "must be prepared there. Pass data_dir= a writable folder, or one where it is "
            "already prepared."
        )


def _missing_parents(path: Path) -> list[Path]:
    """The folders on the way to `path` that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path.parent != path:
        out.append(path)
        path = path.parent
    return out


def _remove_if_empty(path: Path) -> None:
    try:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    except OSError:
        pass


def _any_reachable(hosts: Sequence[str], timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """True when any host accepts a TCP connection on port 443 within `timeout` seconds.

    Name resolution has no timeout of its own, so each try runs in a daemon
    thread, and the answer is whatever arrived by the deadline.
    """
    found = threading.Event()

    def attempt(host: str) -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                found.set()
        except OSError:
            pass

    threads = [threading.Thread(target=attempt, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not found.is_set():
        if not any(t.is_alive() for t in threads):
            break
        found.wait(0.05)
    return found.is_set()
