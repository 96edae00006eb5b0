"""Atomic replacement: `final` holds a complete directory (old or new) at every moment."""

from __future__ import annotations

import pytest

from rlhf.core import files
from rlhf.core.files import replace_dir, write_text_atomic


def make_dir(path, version: str):
    path.mkdir()
    (path / "config.json").write_text(version)
    (path / "weights.bin").write_text(version * 3)
    return path


@pytest.mark.parametrize("swap", ["exchange", "move-aside"])
def test_replace_dir_puts_the_new_dir_in_place_and_removes_the_old(tmp_path, monkeypatch, swap):
    if swap == "move-aside":  # a platform or filesystem without RENAME_EXCHANGE
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    final = make_dir(tmp_path / "policy", "old")
    new = make_dir(tmp_path / "policy.tmp", "new")
    assert replace_dir(new, final) == final
    assert (final / "config.json").read_text() == "new" and (final / "weights.bin").read_text() == "newnewnew"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_replace_dir_into_an_empty_place(tmp_path):
    new = make_dir(tmp_path / "policy.tmp", "new")
    replace_dir(new, tmp_path / "policy")
    assert (tmp_path / "policy" / "config.json").read_text() == "new" and not new.exists()


def test_a_crash_right_after_the_swap_leaves_the_new_dir_in_place(tmp_path, monkeypatch):
    if not files._exchange(make_dir(tmp_path / "a", "a"), make_dir(tmp_path / "b", "b")):
        pytest.skip("this filesystem has no RENAME_EXCHANGE")

    def crash(path, *args, **kwargs):
        raise KeyboardInterrupt  # the process dies before it removes the old version

    final = make_dir(tmp_path / "policy", "old")
    new = make_dir(tmp_path / "policy.tmp", "new")
    monkeypatch.setattr(files.shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(new, final)
    assert (final / "config.json").read_text() == "new"  # never a moment without a complete `final`


def test_a_failed_save_leaves_the_previous_model_dir(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from rlhf.core.modeling import load_tokenizer, save_model_dir

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model_dir), load_tokenizer(tiny_model_dir)
    out = save_model_dir(model, tokenizer, tmp_path / "policy")
    before = (out / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokenizer, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_model_dir(model, tokenizer, out)
    assert (out / "model.safetensors").read_bytes() == before and (out / "tokenizer.json").exists()


def test_write_text_atomic_replaces_the_file(tmp_path):
    path = tmp_path / "latest"
    write_text_atomic(path, "step-000001")
    write_text_atomic(path, "step-000002")
    assert path.read_text() == "step-000002" and [p.name for p in tmp_path.iterdir()] == ["latest"]
