"""`kexue lm train --neural` and `kexue generate ... --lm neural|PATH`, end to end in-process."""

from __future__ import annotations

import pytest
from _cli import kexue, one_line

from kexue.text.data import pd1998_split
from kexue.text.neural import NeuralLM

TINY = ["--dim", "16", "--layers", "1", "--heads", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("neural") / "news.txt"
    path.write_text("\n".join(pd1998_split("train")[:150]) + "\n", encoding="utf-8")
    return path


def test_train_then_generate_with_the_neural_fluency(corpus, tmp_path, capsys, monkeypatch):
    model = tmp_path / "f.pt"
    code, out, err = kexue(capsys, monkeypatch, "lm", "train", "--neural", corpus, "--steps",
                           "12", *TINY, "-o", model)
    assert code == 0, err
    assert "written to" in out and model.is_file()
    assert not (tmp_path / "f.pt.ckpt").exists()  # a finished run leaves no checkpoint
    lm = NeuralLM.load(model)
    assert lm.config.dim == 16 and lm.config.layers == 1
    code, out, err = kexue(capsys, monkeypatch, "generate", "keywords", "经济", "--lm", model,
                           "--n", "2", "--steps", "5", "--method", "mh")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and all("经济" in r for r in rows)
    # the NLL/char column is the neural model's: −log p / (len + 1) of the printed sentence
    sentence, nll = rows[0].split("│")[2].strip(), float(rows[0].split("│")[5])
    assert nll == pytest.approx(-lm.log_prob(sentence) / (len(sentence) + 1), abs=0.01)
    code, out, err = kexue(capsys, monkeypatch, "generate", "correct", "我们要加快经齐发展。",
                           "--lm", model, "--steps", "3")
    assert code == 0, err


def test_a_finished_model_is_not_overwritten_silently(corpus, tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.pt"
    args = ["lm", "train", "--neural", corpus, "--steps", "3", *TINY, "-o", model]
    assert kexue(capsys, monkeypatch, *args)[0] == 0
    before = model.read_bytes()
    code, _, err = kexue(capsys, monkeypatch, *args)
    assert code == 2 and "--overwrite" in one_line(err)
    assert model.read_bytes() == before
    code, _, err = kexue(capsys, monkeypatch, *args, "--overwrite", "--seed", "1")
    assert code == 0, err
    assert model.read_bytes() != before


def test_interrupted_training_resumes(corpus, tmp_path, capsys, monkeypatch):
    model = tmp_path / "r.pt"
    args = ["lm", "train", "--neural", corpus, "--steps", "30", *TINY, "-o", model]
    code, out, err = kexue(capsys, monkeypatch, *args, "--minutes", "1e-6")  # one step
    assert code == 0, err
    assert "stopped at step 1 of 30" in out and (tmp_path / "r.pt.ckpt").is_file()
    code, out, err = kexue(capsys, monkeypatch, *args)
    assert code == 0, err
    assert "resuming from the checkpoint" in err and "written to" in out
    assert not (tmp_path / "r.pt.ckpt").exists()


def test_resume_with_another_config_is_one_line(corpus, tmp_path, capsys, monkeypatch):
    model = tmp_path / "c.pt"
    args = ["lm", "train", "--neural", corpus, "--steps", "400", "-o", model]
    assert kexue(capsys, monkeypatch, *args, *TINY, "--minutes", "1e-6")[0] == 0
    code, _, err = kexue(capsys, monkeypatch, *args, "--dim", "8", "--layers", "1",
                         "--heads", "2")
    assert code == 2 and err.count("kexue: error:") == 1
    assert "resuming" in err and "another run" in err.splitlines()[-1] and "dim" in err


def test_neural_without_a_cached_model_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path))
    code, _, err = kexue(capsys, monkeypatch, "generate", "keywords", "经济", "--lm", "neural",
                         "--steps", "2")
    assert code == 2 and "kexue lm train --neural" in one_line(err)


@pytest.mark.parametrize(("args", "word"), [
    (["--heads", "3"], "heads"),
    (["--attention", "global"], "--attention"),
    (["--minutes", "0"], "--minutes"),
    (["--steps", "0"], "--steps"),
])
def test_bad_neural_options_are_one_line(corpus, tmp_path, capsys, monkeypatch, args, word):
    code, _, err = kexue(capsys, monkeypatch, "lm", "train", "--neural", corpus, "-o",
                         tmp_path / "x.pt", *args)
    assert code == 2 and word in err


def test_a_missing_neural_file_is_one_line(capsys, monkeypatch, tmp_path):
    code, _, err = kexue(capsys, monkeypatch, "generate", "keywords", "经济", "--lm",
                         tmp_path / "absent.pt", "--steps", "2")
    assert code == 2 and "absent.pt" in one_line(err)
