"""Fuzz the loaders of users' files (issue 14): random CSV, text and IDX.gz contents give a documented result
or a ValueError naming the file — never another exception, never a silently odd dataset."""

from __future__ import annotations

import gzip
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers import fuzz_settings

from lowbit.data.fashion_mnist import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from lowbit.data.rotten_tomatoes import load_text_csv
from lowbit.data.text import load_text_file


def _settings(examples: int) -> settings:
    base = fuzz_settings(examples)
    return settings(
        base, suppress_health_check=[*base.suppress_health_check, HealthCheck.function_scoped_fixture]
    )


cells = st.one_of(
    st.integers(-3, 4).map(str),
    st.sampled_from(["text", "label", "Label", "pos", "neg", "", " ", "x y", '"a, b"', "a\nb", "\x00", "é"]),
    st.text(max_size=6),
)
rows = st.lists(st.lists(cells, min_size=1, max_size=3).map(",".join), max_size=25)


def _write(base: Path, name: str, data: bytes) -> Path:
    path = base / name
    path.write_bytes(data)
    return path


@_settings(200)
@given(lines=rows, header=st.sampled_from(["", "text,label\n", "label,text\n", "a,b\n"]))
def test_random_csv(lines, header, tmp_path_factory):
    path = _write(tmp_path_factory.mktemp("csv"), "d.csv", (header + "\n".join(lines)).encode("utf-8"))
    try:
        splits = load_text_csv(path)
    except ValueError as err:
        assert str(path) in str(err) or path.name in str(err), err
        assert len(str(err)) < 600
        return
    texts = splits.train_texts + splits.test_texts
    n = len(texts)
    assert n == splits.train_labels.numel() + splits.test_labels.numel()
    assert all(t == t.strip() and t for t in texts)  # no empty or padded snippet
    assert splits.n_classes >= 2
    if not all(name.isdigit() for name in splits.label_names):  # string labels: never one per row
        assert n < 10 or splits.n_classes <= n / 2
    labels = [*splits.train_labels.tolist(), *splits.test_labels.tolist()]
    assert set(labels) <= set(range(splits.n_classes))


@_settings(100)
@given(content=st.one_of(st.binary(max_size=400), st.text(max_size=2000).map(lambda t: t.encode("utf-8"))))
def test_random_text_file(content, tmp_path_factory):
    path = _write(tmp_path_factory.mktemp("txt"), "t.txt", content)
    try:
        splits = load_text_file(path)
    except ValueError as err:
        assert path.name in str(err)
        return
    assert splits.train and splits.val


@_settings(150)
@given(
    payload=st.binary(max_size=64),
    magic=st.sampled_from([IDX_LABELS_MAGIC, IDX_IMAGES_MAGIC, 0x0802, 0]),
    compress=st.sampled_from(["gzip", "raw", "cut"]),
    dims=st.lists(st.integers(0, 5), min_size=0, max_size=3),
)
def test_random_idx_gz(payload, magic, compress, dims, tmp_path_factory):
    body = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload
    data = gzip.compress(body) if compress != "raw" else body
    if compress == "cut":
        data = data[: len(data) // 2]
    path = _write(tmp_path_factory.mktemp("idx"), "x.gz", data)
    try:
        array = read_idx(path, IDX_LABELS_MAGIC)
    except ValueError as err:
        assert path.name in str(err)
        return
    assert array.ndim == 1
