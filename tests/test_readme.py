"""The README's promises: every ```python snippet runs as written, on its own, in a fresh
namespace (one torch thread, a scratch directory); the quick start's test command is the one
CI runs; and the example up front reaches what it is there to show."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
NO_TEST = re.compile(r"<!--\s*no-test:\s*(\S.*?)\s*-->")


def python_snippets(text: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, reason it is not run or None) of each ```python block of ``text``.

    A block is not run only when the last non-blank line before its fence is a
    ``<!-- no-test: reason -->`` comment with a reason.
    """
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"README.md:{start + 1}: ```python block is never closed")
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = NO_TEST.fullmatch(lines[k].strip()) if k >= 0 else None
            out.append((start + 1, "\n".join(lines[start + 1:j]) + "\n",
                        marker[1] if marker else None))
            i = j
        i += 1
    return out


SNIPPETS = python_snippets(README)
_NAMESPACES: dict[int, dict] = {}  # line -> the namespace a snippet left (the example is run once)


def test_the_extractor_sees_blocks_and_markers():
    """Negative control for the extractor: a marked block carries its reason, an unmarked one
    none, and an unclosed fence is an error rather than a silently skipped snippet."""
    text = ("x\n\n<!-- no-test: needs a GPU -->\n```python\nraise SystemExit\n```\n\n"
            "```python\ny = 1\n```\n")
    assert python_snippets(text) == [(4, "raise SystemExit\n", "needs a GPU"),
                                     (8, "y = 1\n", None)]
    with pytest.raises(ValueError, match="never closed"):
        python_snippets("```python\ny = 1\n")


def test_readme_has_snippets_and_skips_few():
    assert len(SNIPPETS) >= 10
    skipped = [line for line, _, reason in SNIPPETS if reason is not None]
    assert len(skipped) <= 2, f"no-test used on README lines {skipped}: use it sparingly"


def _execute(line: int, code: str) -> dict:
    """Run one snippet in a fresh namespace, seeded, on one thread; return its namespace."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    namespace = {"__name__": "__readme__"}
    try:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace


@pytest.mark.parametrize(("line", "code", "reason"), SNIPPETS,
                         ids=[f"README.md:{line}" for line, _, _ in SNIPPETS])
def test_snippet_runs(line, code, reason, tmp_path, monkeypatch):
    if reason is not None:
        pytest.skip(f"README.md:{line}: {reason}")
    monkeypatch.chdir(tmp_path)  # snippets may write files (corpus.txt, checkpoint.pt)
    _NAMESPACES[line] = _execute(line, code)


def test_the_example_up_front_learns_and_captures():
    """The opening example is not only runnable: its EMA weights classify the task well and
    the capture holds one (B, H, T, T) map per block whose rows are distributions."""
    line, code, reason = SNIPPETS[0]
    assert reason is None and "param_groups" in code and "capture(" in code, (
        f"README.md:{line}: the first snippet should be the combined example")
    namespace = _NAMESPACES.get(line)
    if namespace is None:  # run alone (-k): execute it here
        namespace = _execute(line, code)
    assert namespace["accuracy"] >= 0.9, namespace["accuracy"]
    maps = namespace["maps"]
    assert maps.shape == (512, 4, 16, 16)
    torch.testing.assert_close(maps.sum(-1), torch.ones(512, 4, 16))


def _commands(line: str) -> list[list[str]]:
    return [shlex.split(part) for part in line.split("&&")]


def _pip_args(words: list[str]) -> list[str] | None:
    """The package arguments of a pip install command, without -q and -c/--constraint FILE."""
    if words[:2] == ["pip", "install"]:
        rest = words[2:]
    elif words[:4] == ["python", "-m", "pip", "install"]:
        rest = words[4:]
    else:
        return None
    out, skip = [], False
    for w in rest:
        if skip:
            skip = False
        elif w in ("-c", "--constraint"):
            skip = True
        elif w not in ("-q", "--quiet") and not w.startswith("--constraint="):
            out.append(w)
    return out


def test_ci_runs_the_readme_test_command():
    """Each step of the quick start's test command is a step of .ci/run's main run, in order."""
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", README, re.S)[1].strip().splitlines()
    test_line = next(line for line in quick if "pytest" in line)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    ci_pip = [a for a in (_pip_args(shlex.split(line, comments=True)) for line in ci_lines
                          if "pip install" in line) if a is not None]
    position = -1
    for words in _commands(test_line):
        args = _pip_args(words)
        if args is not None:
            matches = [i for i, a in enumerate(ci_pip) if a == args and i > position]
            assert matches, f"README's `{' '.join(words)}` is not in .ci/run after step {position}"
            position = matches[0]
        else:
            assert words[:3] == ["python", "-m", "pytest"], words
            assert any(line.startswith(" ".join(words)) for line in ci_lines), (
                f"README's `{' '.join(words)}` is not how .ci/run runs the tests")
