"""``lowbit ptq`` end to end on a tiny local BERT folder and a --texts file (no Rotten Tomatoes needed)."""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main


@pytest.fixture
def model_dir(tmp_path, tiny_bert):
    """A tiny BertModel saved with save_pretrained plus a small word-level tokenizer."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "film", "is", "good", "bad", "very", "a", "plot"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    folder = tmp_path / "tiny"
    tiny_bert.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_cli_with_texts_writes_table_json_and_plot(model_dir, tmp_path, capsys) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text(
        "the film is good\n\nthe plot is very bad\na film\nthe the film plot\n", encoding="utf-8"
    )
    out_json = tmp_path / "r.json"
    argv = [
        "ptq",
        "--model",
        str(model_dir),
        "--formats",
        "fp32,fp8-e4m3,int8,int8/channel/token@mse,int4",
        "--texts",
        str(texts),
    ]
    argv += ["--calib-batches", "1", "--json", str(out_json), "--out", str(tmp_path / "out")]
    code = main(argv)
    assert code == 0
    records = json.loads(out_json.read_text())
    assert [r["format"] for r in records] == ["fp32", "fp8-e4m3", "int8", "int8/channel/token@mse", "int4"]
    assert records[3]["recipe"] == "W int7/channel A int8/token" and records[3]["observer"] == "mse"
    for r in records:
        assert {"format", "embedding_cosine", "accuracy", "weight_bytes"} <= set(r)
        assert r["accuracy"] is None and 0.9 < r["embedding_cosine"] <= 1.0 + 1e-9
    assert records[0]["embedding_cosine"] == pytest.approx(1.0)
    assert records[1]["weight_bytes"] <= 0.27 * records[0]["weight_bytes"]
    assert (tmp_path / "out" / "sqnr.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "fp8-e4m3" in printed and "emb cosine" in printed


def test_cli_errors(model_dir, tmp_path) -> None:
    assert main(["ptq", "--model", str(model_dir), "--formats", "fp32,fp7"]) == 2
    assert main(["ptq", "--model", str(model_dir), "--formats", "int8/row"]) == 2
    assert main(["ptq", "--model", str(model_dir), "--formats", "int8@minmax"]) == 2
    assert main(["ptq", "--model", str(model_dir), "--formats", "int8+w7+a7"]) == 2
    assert main(["ptq", "--model", str(model_dir), "--formats", "fp8-e4m3+w7"]) == 2
    assert main(["ptq", "--model", str(tmp_path / "nowhere"), "--texts", str(tmp_path / "none.txt")]) == 2


def test_sqnr_curves_stay_distinct_beyond_ten_formats():
    """The SQNR plot gives every one of up to 40 formats its own colour/dash pair (12 rows shared colours)."""
    from lowbit.ptq.fidelity import line_style

    styles = {tuple(sorted(line_style(i).items())) for i in range(40)}
    assert len(styles) == 40
