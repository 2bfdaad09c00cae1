"""jdl.data sources: tfds (mocked and real), caches, offline behavior, IDX verification, errors."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import jdl.data as jd
from jdl.data import idx, mnist_sample, sources

tfds = pytest.importorskip("tensorflow_datasets")


def as_rows(images, labels):
    """Each example as one sortable byte string (image bytes, then label)."""
    images = np.asarray(images, np.uint8).reshape(len(images), -1)
    rows = np.concatenate([images, np.asarray(labels, np.uint8)[:, None]], axis=1)
    return np.sort(np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").ravel())


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# -- tfds.testing.mock_data ---------------------------------------------------------


@pytest.fixture
def mocked_tfds(monkeypatch):
    """tfds' mock data, with jdl told that the dataset is prepared (as array_record).

    mock_data replaces `as_data_source` and `download_and_prepare`, but
    `builder.is_prepared()` still looks at disk, so jdl would try to prepare;
    the one patch here makes jdl take its read path.
    """
    monkeypatch.setattr(sources._TfdsSource, "prepared_format", lambda self: "array_record")

    def mock(num_examples):
        return tfds.testing.mock_data(num_examples=num_examples)

    return mock


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mock_data_shapes_and_epoch(mocked_tfds, tmp_path, name, shape):
    with mocked_tfds(70):
        loader = jd.load(name, split="train", batch_size=16, seed=0, data_dir=tmp_path)
        source = tfds.data_source(name, split="train")
        raw = [source[i] for i in range(len(source))]
    assert loader.image_shape == shape and loader.num_classes == 10
    assert loader.num_examples == 70 and len(loader) == 4  # drop_remainder for train
    batches = list(loader)
    assert all(b["image"].shape == (16, *shape) and b["image"].dtype == np.float32
               for b in batches)
    assert all(b["label"].dtype == np.int32 and b["label"].max() < 10 for b in batches)
    # every example of the split, exactly once, against tfds' own data source
    with mocked_tfds(70):
        whole = jd.load(name, split="train", batch_size=16, drop_remainder=False, seed=1,
                        data_dir=tmp_path)
    epoch = list(whole)
    assert len(epoch) == 5 and len(epoch[-1]["label"]) == 6
    want = as_rows([r["image"] for r in raw], [r["label"] for r in raw])
    got_images = np.concatenate([b["image"] for b in epoch])
    got_labels = np.concatenate([b["label"] for b in epoch])
    assert np.array_equal(as_rows(np.round(got_images * 255), got_labels), want)
    arrays = loader.arrays()
    assert np.array_equal(as_rows(np.round(arrays["image"] * 255), arrays["label"]), want)


def test_load_reads_tfds_mock_data_as_tfds_does_and_caches_none_of_it(tmp_path):
    """No patch of jdl's: inside tfds.testing.mock_data, load gives tfds' fake examples."""
    with tfds.testing.mock_data(num_examples=20):
        loader = jd.load("mnist", split="train", batch_size=4, data_dir=tmp_path)
        source = tfds.data_source("mnist", split="train", data_dir=os.fspath(tmp_path))
        raw = [source[i] for i in range(len(source))]
    assert loader.num_examples == 20 and loader.image_shape == (28, 28, 1)
    arrays = loader.arrays()
    want = as_rows([r["image"] for r in raw], [r["label"] for r in raw])
    assert np.array_equal(as_rows(np.round(arrays["image"] * 255), arrays["label"]), want)
    assert files_under(tmp_path) == []  # fake examples are never cached beside real data


def test_load_reads_mock_data_given_its_own_data_source(tmp_path):
    examples = [{"image": np.full((28, 28, 1), i, np.uint8), "label": i % 10} for i in range(12)]

    def as_data_source(builder, split, **kwargs):
        return examples

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        loader = jd.load("mnist", split="test", batch_size=4, data_dir=tmp_path)
    arrays = loader.arrays()
    np.testing.assert_array_equal(arrays["label"], [i % 10 for i in range(12)])
    np.testing.assert_allclose(arrays["image"][:, 0, 0, 0], np.arange(12) / 255, rtol=1e-6)
    assert files_under(tmp_path) == []


def test_mock_data_test_split_keeps_every_example(mocked_tfds, tmp_path):
    with mocked_tfds(50):
        loader = jd.load("cifar10", split="test", batch_size=16, data_dir=tmp_path)
    assert not loader.shuffle and len(loader) == 4
    assert sum(len(b["label"]) for b in loader) == 50


# -- errors and offline behavior -------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist_sample:1.0.0", "MnistSample", "MNIST_Sample", "Mnist_Sample:1.0.0"])
def test_other_spellings_of_mnist_sample_read_the_shipped_digits(name, tmp_path):
    loader = jd.load(name, split="test", batch_size=100, shuffle=False, data_dir=tmp_path)
    images, labels = mnist_sample.read_split("test")
    arrays = loader.arrays()
    assert np.array_equal(as_rows(np.round(arrays["image"] * 255), arrays["label"]), as_rows(images, labels))
    assert files_under(tmp_path) == []  # nothing prepared: the archive is read
    only = r"mnist_sample ships with jdl at version 1.0.0 only, with no configs; got "
    with pytest.raises(ValueError, match=only + "'mnist_sample:2"):
        jd.load("mnist_sample:2.0.0", split="test", batch_size=100)
    with pytest.raises(ValueError, match=only + "'mnist_sample/foo'"):
        jd.load("MNIST_sample/foo", split="test", batch_size=100)


def test_fashion_mnist_spelled_otherwise_is_verified_as_idx_files(tmp_path, monkeypatch):
    class Verified(Exception):
        pass

    def verify(name, folder, work):
        raise Verified(name)

    monkeypatch.setattr(idx, "verify_idx_folder", verify)
    (tmp_path / "manual").mkdir()
    for base in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / "manual" / f"{base}.gz").write_bytes(b"")
    with pytest.raises(Verified, match="^fashion_mnist$"):
        jd.load("Fashion_MNIST", split="test", batch_size=8, data_dir=tmp_path / "data",
                manual_dir=tmp_path / "manual")


def test_a_reversed_slice_is_refused_as_selecting_nothing():
    with pytest.raises(ValueError, match=r"split 'train\[5:2\]' selects no examples: its slice of 'train' ends "
                                         r"\(at 2\) before it starts \(at 5\)"):
        jd.load("mnist_sample", split="train[5:2]", batch_size=1)


def test_unknown_dataset_names_close_tfds_builders():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar_10'.*'cifar10'"):
        jd.load("cifar_10", split="train", batch_size=8)
    with pytest.raises(ValueError, match=r"'mnist_sample'"):
        jd.load("mnist_sampel", split="train", batch_size=8)


def test_not_an_image_classification_dataset(tmp_path):
    with pytest.raises(ValueError, match="not an image-classification dataset"):
        jd.load("iris", split="train", batch_size=8, data_dir=tmp_path)


def test_images_of_varying_size_are_refused_before_any_work(tmp_path, monkeypatch):
    """tf_flowers declares its images (None, None, 3): refused from tfds' metadata, before a download."""
    monkeypatch.setattr(sources, "_any_reachable", lambda *args, **kwargs: pytest.fail("no download"))
    with pytest.raises(ValueError, match=r"tf_flowers's images are uint8 of shape \(None, None, 3\): jdl loads "
                                         r"datasets whose images are uint8 of one fixed"):
        jd.load("tf_flowers", split="train", batch_size=8, data_dir=tmp_path)
    assert files_under(tmp_path) == []


def test_a_url_as_data_dir_is_refused_not_taken_as_a_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"data_dir must be a local folder; got the URL 'gs://bucket/tfds'"):
        jd.load("cifar10", split="train", batch_size=8, data_dir="gs://bucket/tfds")
    monkeypatch.setenv("TFDS_DATA_DIR", "gs://bucket/tfds")
    with pytest.raises(ValueError, match=r"TFDS_DATA_DIR must be a local folder; got the URL 'gs://bucket/tfds'"):
        jd.load("cifar10", split="train", batch_size=8)
    with pytest.raises(ValueError, match=r"manual_dir must be a local folder; got the URL 's3://b/x'"):
        jd.load("cifar10", split="train", batch_size=8, data_dir=tmp_path / "d", manual_dir="s3://b/x")
    assert jd.load("mnist_sample", split="test", batch_size=8).num_examples == 1000  # needs no data_dir
    assert files_under(tmp_path) == []


def test_tfds_shard_units_are_refused_with_the_forms_jdl_takes(tmp_path):
    with pytest.raises(ValueError, match=r"split 'train\[:1shard\]' is not supported: jdl takes splits by "
                                         r"example or percent"):
        jd.load("cifar10", split="train[:1shard]", batch_size=8, data_dir=tmp_path)


def test_unknown_split_of_a_tfds_dataset_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"no split 'valid'.*\['test', 'train'\]"):
        jd.load("cifar10", split="valid", batch_size=8, data_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size 60001 is larger"):
        jd.load("fashion_mnist", split="train", batch_size=60001, data_dir=tmp_path)
    assert files_under(tmp_path) == []


def test_missing_dataset_without_network_fails_fast_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_any_reachable", lambda hosts, timeout=3.0: False)
    data_dir = tmp_path / "data"
    start = time.monotonic()
    with pytest.raises(jd.DatasetUnavailableError) as info:
        jd.load("cifar10", split="train", batch_size=8, data_dir=data_dir)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "manual_dir=" in message and "data_dir=" in message
    assert "cifar-10-binary.tar.gz" in message and "could not download" in message
    assert not data_dir.exists()  # nothing half-written
    copy = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact, words and all
    assert type(copy) is jd.DatasetUnavailableError and str(copy) == message
    in_cli_words = message.replace("manual_dir=FOLDER", "--manual-dir FOLDER")
    assert copy.in_words(manual_dir="--manual-dir FOLDER") == in_cli_words


def test_download_false_refuses_without_trying(tmp_path, monkeypatch):
    def no_network_check(*args, **kwargs):
        raise AssertionError("download=False must not touch the network")

    monkeypatch.setattr(sources, "_any_reachable", no_network_check)
    with pytest.raises(jd.DatasetUnavailableError, match=r"download=False.*manual_dir=") as info:
        jd.load("fashion_mnist", split="train", batch_size=8, data_dir=tmp_path / "d",
                manual_dir=tmp_path, download=False)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert "dataset-fashion-mnist" in str(info.value)


def test_network_check_is_bounded():
    start = time.monotonic()
    assert sources._any_reachable(["jdl-test.invalid"], timeout=3.0) is False
    assert time.monotonic() - start < 4.0


def test_data_dir_not_writable(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        jd.load("mnist", split="train", batch_size=8, data_dir=a_file / "sub")
    real_access = os.access
    monkeypatch.setattr(sources.os, "access",
                        lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(PermissionError, match=r"data_dir .* is not writable"):
        jd.load("mnist", split="train", batch_size=8, data_dir=tmp_path / "new")
    assert files_under(tmp_path) == ["file"]


# -- IDX verification ---------------------------------------------------------------


def write_idx(folder: Path, *, images_fill=0, labels_fill=0, magic=2051, truncate=False):
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 60000), ("t10k", 10000)):
        header = np.array([magic, n, 28, 28], ">u4").tobytes()
        body = np.full(n * 28 * 28, images_fill, np.uint8).tobytes()
        data = header + (body[:-5] if truncate else body)
        (folder / f"{split}-images-idx3-ubyte").write_bytes(data)
        labels = np.array([2049, n], ">u4").tobytes() + np.full(n, labels_fill, np.uint8).tobytes()
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)
    return folder


def test_idx_structure_only_for_mnist_with_a_warning(tmp_path, caplog):
    folder = write_idx(tmp_path / "src")
    with caplog.at_level(logging.WARNING):
        verified = idx.verify_idx_folder("mnist", folder, tmp_path)
    assert set(verified.how.values()) == {"structure-only"}
    assert "no checksum" in caplog.text


def test_idx_fashion_mnist_with_other_content_is_refused(tmp_path):
    folder = write_idx(tmp_path / "src")
    with pytest.raises(idx.IdxVerificationError, match="pinned from Debian"):
        idx.verify_idx_folder("fashion_mnist", folder, tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(magic=1234), "magic number 1234"),
    (dict(truncate=True), "the header promises"),
    (dict(labels_fill=10), "label 10"),
])
def test_idx_broken_files_are_refused(tmp_path, kwargs, match):
    folder = write_idx(tmp_path / "src", **kwargs)
    with pytest.raises(idx.IdxVerificationError, match=match):
        idx.verify_idx_folder("mnist", folder, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "not_gzip"])
def test_read_idx_names_a_corrupt_gz_file(tmp_path, damage):
    """read_idx on a .gz cut short or not gzip at all: an IdxVerificationError
    naming the file, not a bare EOFError or BadGzipFile."""
    import gzip

    labels = np.array([2049, 3], ">u4").tobytes() + bytes([1, 2, 3])
    packed = gzip.compress(labels)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(packed[:-6] if damage == "truncated" else labels)
    with pytest.raises(idx.IdxVerificationError, match=r"t10k-labels-idx1-ubyte.gz: not a readable gzip file"):
        idx.read_idx(path)


def test_idx_refusal_through_load_leaves_nothing_behind(tmp_path):
    folder = write_idx(tmp_path / "src")
    data_dir = tmp_path / "data"
    with pytest.raises(jd.IdxVerificationError):
        jd.load("fashion_mnist", split="train", batch_size=8, data_dir=data_dir,
                manual_dir=folder)
    assert files_under(data_dir) == []
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(jd.DatasetUnavailableError, match="t10k-labels-idx1-ubyte.gz"):
        jd.load("fashion_mnist", split="train", batch_size=8, data_dir=data_dir,
                manual_dir=folder, download=False)


# -- preparing with tfds (TensorFlow) and reading back without it -----------------------


@pytest.fixture(scope="module")
def prepared_sample(tmp_path_factory):
    """mnist_sample prepared by jdl's own tfds path (array_record) in a fresh data_dir."""
    data_dir = tmp_path_factory.mktemp("tfds")
    data = sources._TfdsSource("mnist_sample", data_dir).read(
        "test", manual_dir=None, download=False)
    return data_dir, data


def test_mnist_sample_is_registered_with_tfds_and_prepares(prepared_sample):
    data_dir, data = prepared_sample
    assert "mnist_sample" in tfds.list_builders(with_community_datasets=False)
    images, labels = mnist_sample.read_split("test")
    assert np.array_equal(as_rows(data.images, data.labels), as_rows(images, labels))
    source = tfds.data_source("mnist_sample", split="train", data_dir=os.fspath(data_dir))
    assert len(source) == 4000
    version_dir = data_dir / "mnist_sample" / "1.0.0"
    assert (version_dir / "jdl-test.npz").is_file()
    umask = os.umask(0)
    os.umask(umask)
    info_mode = (version_dir / "dataset_info.json").stat().st_mode & 0o777  # tfds' file beside it
    assert (version_dir / "jdl-test.npz").stat().st_mode & 0o777 == 0o666 & ~umask == info_mode
    leftovers = [p for p in files_under(data_dir) if "jdl-downloads" in p or "incomplete" in p]
    assert leftovers == []


def test_tensorflow_gets_no_gpu(prepared_sample):
    import tensorflow as tf

    from jdl.data._tfds_compat import import_tensorflow

    assert import_tensorflow() is tf
    assert tf.config.get_visible_devices("GPU") == []


def test_import_tensorflow_hides_gpus_first(monkeypatch):
    from types import SimpleNamespace

    from jdl.data import _tfds_compat

    calls = []
    fake = SimpleNamespace(config=SimpleNamespace(
        set_visible_devices=lambda devices, kind: calls.append((devices, kind)),
        get_visible_devices=lambda kind: []))
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    assert _tfds_compat.import_tensorflow() is fake
    assert calls == [([], "GPU")]


def test_reading_prepared_data_needs_no_tensorflow(prepared_sample, run_python):
    data_dir, data = prepared_sample
    cache = data_dir / "mnist_sample" / "1.0.0" / "jdl-test.npz"
    cache.unlink()  # first from the array_record files, then from the cache
    code = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from jdl.data import sources
        for what in ('array_record', 'cache'):
            start = time.perf_counter()
            src = sources._TfdsSource('mnist_sample', {str(data_dir)!r})
            read = src.read('test', manual_dir=None, download=False)
            print(what, time.perf_counter() - start)
            assert read.images.shape == (1000, 28, 28, 1), read.images.shape
        assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
        np.save(sys.argv[1], np.concatenate([read.images.reshape(1000, -1),
                                             read.labels[:, None].astype(np.uint8)], 1))
        print('ok')
    """)
    out_file = data_dir / "rows.npy"
    out = run_python(code, out_file, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
    assert cache.is_file()
    rows = np.load(out_file)
    assert np.array_equal(as_rows(rows[:, :-1], rows[:, -1]), as_rows(data.images, data.labels))


def test_tfrecord_prepared_dataset_is_read_with_tensorflow(tmp_path, prepared_sample, run_python):
    builder = tfds.builder("mnist_sample", data_dir=os.fspath(tmp_path))
    builder.download_and_prepare(file_format="tfrecord", download_config=tfds.download.
                                 DownloadConfig(try_download_gcs=False))
    loader = jd.load("mnist_sample", split="test", batch_size=100)
    data = sources._TfdsSource("mnist_sample", tmp_path).read(
        "test", manual_dir=None, download=False)
    arrays = loader.arrays()
    assert np.array_equal(as_rows(data.images, data.labels),
                          as_rows(np.round(arrays["image"] * 255), arrays["label"]))
    (tmp_path / "mnist_sample" / "1.0.0" / "jdl-test.npz").unlink()
    code = textwrap.dedent(f"""
        import sys
        from importlib.machinery import PathFinder

        class NoTensorFlow(PathFinder):  # TensorFlow looks uninstalled
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name == 'tensorflow' or name.startswith('tensorflow.'):
                    return None
                return PathFinder.find_spec(name, path, target)

        sys.meta_path[:] = [NoTensorFlow if f is PathFinder else f for f in sys.meta_path]
        from jdl.data import sources
        try:
            sources._TfdsSource('mnist_sample', {str(tmp_path)!r}).read('test', manual_dir=None, download=False)
        except ImportError as error:
            print(error)
            print(error.in_words(data_dir='--data-dir FOLDER'))  # as the command line says it
    """)
    out = run_python(code, timeout=120)
    assert "is prepared in" in out.stdout and "as tfrecord files, which only TensorFlow reads" in out.stdout, (
        out.stdout + out.stderr[-2000:])
    library, command = out.stdout.splitlines()[-2:]
    assert library.endswith("`pip install tensorflow-cpu`), or prepare it again in a fresh folder, data_dir=FOLDER")
    assert command == library.replace("data_dir=FOLDER", "--data-dir FOLDER")


def test_a_cache_of_another_size_is_ignored_and_rewritten(prepared_sample, caplog):
    data_dir, data = prepared_sample
    cache = data_dir / "mnist_sample" / "1.0.0" / "jdl-test.npz"
    np.savez(cache, images=data.images[:10], labels=data.labels[:10], format=np.int64(sources._CACHE_FORMAT))
    with caplog.at_level(logging.WARNING):
        again = sources._TfdsSource("mnist_sample", data_dir).read("test", manual_dir=None, download=False)
    assert "10 examples where mnist_sample 'test' has 1000" in caplog.text
    assert np.array_equal(as_rows(again.images, again.labels), as_rows(data.images, data.labels))
    with np.load(cache) as rewritten:
        assert len(rewritten["labels"]) == 1000


def test_an_unknown_version_is_a_value_error():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist:9.9.9'"):
        jd.load("mnist:9.9.9", split="test", batch_size=8)


def test_corrupt_cache_is_ignored_and_rewritten(prepared_sample, caplog):
    data_dir, data = prepared_sample
    cache = data_dir / "mnist_sample" / "1.0.0" / "jdl-test.npz"
    cache.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING):
        again = sources._TfdsSource("mnist_sample", data_dir).read(
            "test", manual_dir=None, download=False)
    assert "ignoring unreadable cache" in caplog.text
    assert np.array_equal(again.labels, data.labels)
    assert sources._read_cache(cache) is not None
