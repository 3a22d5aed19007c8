"""Writing experiment results to disk: PNG figures, ``results.json`` and ``index.html``.

Application code (used by the CLI); the library never imports it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def save_result(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Save a result's figures as ``out/<name>_<figure>.png``; return it JSON-ready."""
    out.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in result.items() if k != "figures"}
    record["figures"] = []
    for fig_name, fig in result.get("figures", {}).items():
        file = f"{result['name']}_{fig_name}.png"
        fig.savefig(out / file, dpi=110)
        plt.close(fig)
        record["figures"].append(file)
    return _jsonable(record)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _verdict(record: dict[str, Any]) -> str:
    return "holds" if record["claim_holds"] else "does not hold"


def write_report(records: Sequence[dict[str, Any]], out: Path) -> Path:
    """Write ``results.json`` and ``index.html`` for saved results; return the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(list(records), indent=2, ensure_ascii=False))
    esc = html.escape
    rows = "".join(
        f"<tr><td><a href='#{esc(r['name'])}'>{esc(r['name'])}</a></td>"
        f"<td class='{'ok' if r['claim_holds'] else 'no'}'>{_verdict(r)}</td>"
        f"<td>{esc(r['summary'])}</td><td>{r['seconds']:.1f}</td></tr>"
        for r in records
    )
    sections = []
    for r in records:
        metrics = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>"
                          for k, v in r["metrics"].items())
        figs = "".join(f"<img src='{esc(f)}' alt='{esc(f)}'>" for f in r["figures"])
        extra = ""
        if r.get("table"):  # optional {"caption", "columns", "rows"}: text a figure cannot hold
            t = r["table"]
            head = "".join(f"<th>{esc(str(c))}</th>" for c in t["columns"])
            body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>"
                           for row in t["rows"])
            extra = (f"<table><caption>{esc(t.get('caption', ''))}</caption>"
                     f"<tr>{head}</tr>{body}</table>")
        sections.append(
            f"<section id='{esc(r['name'])}'><h2>{esc(r['title'])}</h2>"
            f"<p>Note: <a href='{esc(r['note'])}'>{esc(r['note'])}</a></p>"
            f"<p><b>Claim:</b> {esc(r['claim'])} — <b>{_verdict(r)}</b>.</p>"
            f"<p>{esc(r['summary'])}</p><table>{metrics}</table>{extra}{figs}"
            f"<p class='meta'>mode {esc(r['mode'])} · seed {r['seed']} · config "
            f"{esc(json.dumps(r['config']))} · torch {esc(r['torch'])} · {esc(r['device'])} · "
            f"git {esc(r['git_sha'])} · {r['seconds']:.1f} s</p></section>"
        )
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>kexue report</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em}}
.ok{{color:#070}}.no{{color:#a00}}img{{max-width:100%;display:block;margin:1em 0}}
.meta{{color:#666;font-size:.85em}}</style></head><body>
<h1>kexue report</h1><p>Each experiment reruns a claim of a kexue.fm note on embedded real data.</p>
<table><tr><th>experiment</th><th>claim</th><th>result</th><th>seconds</th></tr>{rows}</table>
{''.join(sections)}</body></html>"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
