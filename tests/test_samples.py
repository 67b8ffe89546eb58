"""Iterables of samples (Hugging Face datasets, streaming or not, and any iterable of dicts holding images)
give the exact state of a folder of the same images: the shapes the ``datasets`` ``Image`` feature gives
(a PIL image when decoding, ``{"bytes": ..., "path": ...}`` when not), bytes and paths; with decode
workers; resumed from a checkpoint; bad samples listed by name.

The samples are plain Python objects in those shapes (installing ``datasets`` for the tests would cost
more than the whole test extra); the reference is the folder run of tests/test_archives.py's corpus.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gpustats import compute_stats
from gpustats.sources.engine import run_folder
from test_archives import OPTS, _corpus

ENGINE = {k: v for k, v in OPTS.items() if k != "device"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("samples")
    files = _corpus()
    for name, data in files:
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    return {"base": base, "files": files, "reference": run_folder([base], **OPTS)}


def _pil_or_bytes(data: bytes):
    """What a decoding Image feature holds: the PIL image Pillow opens (bad data stays bytes here)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception:
        return data


def _samples(corpus, shape: str):
    for n, (name, data) in enumerate(corpus["files"]):
        if shape == "pil":
            image = _pil_or_bytes(data)
        elif shape == "bytes-dict":
            image = {"bytes": data, "path": name}
        elif shape == "path-dict":
            image = {"bytes": None, "path": str(corpus["base"] / name)}
        elif shape == "path":
            image = corpus["base"] / name
        else:
            image = data
        yield {"image": image, "label": n % 3}


@pytest.mark.parametrize("shape", ["pil", "bytes-dict", "path-dict", "path", "bytes"])
def test_samples_give_the_folders_exact_state(corpus, shape):
    ref = corpus["reference"].stats
    got = compute_stats(_samples(corpus, shape), device="cpu", key="image", **ENGINE)
    assert got.state.to_dict() == ref.state.to_dict()  # bit for bit, per-image aggregates too
    assert (got.images, got.files) == (13, 16)
    assert [b["reason"] for b in got.bad_files] == [b["reason"] for b in ref.bad_files]
    assert [b["path"] for b in got.bad_files] == ["generator:6", "generator:7", "generator:12"]


def test_decode_workers_and_a_list_without_key(corpus):
    ref = corpus["reference"].stats
    samples = list(_samples(corpus, "pil"))
    two = compute_stats(samples, device="cpu", key="image", **{**ENGINE, "workers": 2, "batch_size": 3})
    assert two.state.to_dict() == ref.state.to_dict() and two.images == 13
    plain = compute_stats([s["image"] for s in samples], device="cpu", **ENGINE)  # PIL images and bytes, no key
    assert plain.state.to_dict() == ref.state.to_dict()


def test_samples_without_an_image_are_bad_with_the_reason(corpus):
    good = corpus["files"][0][1]
    samples = [{"image": good}, {"label": 1}, {"image": {"bytes": None, "path": None}}, {"image": None},
               {"image": [1, 2]}]
    got = compute_stats(samples, device="cpu", key="image", workers=0)
    assert got.images == 1
    assert [b["reason"] for b in got.bad_files] == [
        "no 'image' in the sample (it holds: label)", "no image in the sample (neither bytes nor a path)",
        "no image in the sample (None)",
        "the sample's image is a list, not a PIL image, bytes or a path (decoded arrays and tensors go to "
        "compute_stats as batches, without key= naming images)"]


def test_a_checkpoint_resumes_the_iteration_bitwise(monkeypatch, tmp_path, corpus):
    from gpustats.checkpoint import read_checkpoint
    from gpustats.sources import streamed

    ck = tmp_path / "run.ckpt"
    real, calls = streamed.reduce_records, {"n": 0}

    def third_interrupts(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(streamed, "reduce_records", third_interrupts)
    with pytest.raises(KeyboardInterrupt):
        compute_stats(_samples(corpus, "bytes-dict"), device="cpu", key="image", checkpoint=str(ck),
                      checkpoint_every=3600, **ENGINE)
    assert read_checkpoint(ck).next_index == 8
    monkeypatch.setattr(streamed, "reduce_records", real)
    resumed = compute_stats(_samples(corpus, "bytes-dict"), device="cpu", key="image", checkpoint=str(ck), **ENGINE)
    assert resumed.state.to_dict() == corpus["reference"].stats.state.to_dict() and resumed.images == 13


def test_a_datasets_image_feature_is_read_undecoded(corpus):
    """The shape of a ``datasets`` dataset (``features``, ``cast_column``, ``info``, ``split``): a decoding
    ``Image`` feature is cast to ``decode=False`` so that the workers decode the bytes."""
    class Image:  # noqa: D401 -- stands for datasets.Image (matched by its name, as the real one would be)
        def __init__(self, decode=True, mode=None):
            self.decode, self.mode = decode, mode

    class Info:
        dataset_name = "corpus"

    class Dataset:
        info, split = Info(), "train"

        def __init__(self, decode):
            self.features = {"image": Image(decode=decode), "label": object()}
            self.casts = []

        def cast_column(self, key, feature):
            self.casts.append((key, feature.decode))
            return Dataset(feature.decode)

        def __iter__(self):
            return _samples(corpus, "pil" if self.features["image"].decode else "bytes-dict")

    dataset = Dataset(decode=True)
    got = compute_stats(dataset, device="cpu", key="image", **ENGINE)
    assert dataset.casts == [("image", False)] and got.state.to_dict() == corpus["reference"].stats.state.to_dict()
    assert got.bad_files[0]["path"] == "corpus[train]:6"


def test_batches_of_arrays_still_take_the_batch_path():
    import numpy as np

    batches = ({"image": np.full((2, 3, 5, 5), 51, np.uint8)} for _ in range(2))
    got = compute_stats(batches, device="cpu", key="image")
    assert float(got.mean[0]) == pytest.approx(0.2) and not hasattr(got, "bad_files")
