"""The report as a ledger: ``results.json`` and ``index.html`` rewritten (atomically) after
every experiment, so that a failure or Ctrl-C keeps every finished result.

Application code (used by the CLI); the library never imports it. A record is a plain dict::

    {"name", "title", "note", "claim", "threshold", "anchor": {...}, "timed",
     "status": "holds" | "fails" | "error", "summary", "metrics", "tables", "figures",
     "error": None | {"type", "message", "traceback"},
     "provenance": {"mode", "seed", "config", "torch", "python", "device", "precision",
                    "threads", "git_sha", "kexue_version", "date", "seconds"}}

Records are upserted by name: ``kexue run NAME`` into an existing report replaces that one row
and keeps the others; figures the replaced record had and the new one lacks are deleted, so
none is orphaned. Nothing is reused between runs: every record is measured afresh by the run
that writes it, and its provenance names the device and precision it ran on (shown in the
overview's "ran on" column), so rows from a CPU run and a CUDA run of the same report stay
told apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import traceback as tb
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kexue._io import atomic_save, atomic_write
from kexue.experiments.base import Experiment, Provenance, Result

__all__ = ["Ledger", "ledger_status"]

RESULTS = "results.json"
PAGE = "index.html"
FONTS = ('system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC", '
         '"Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", '
         '"WenQuanYi Micro Hei", sans-serif')


def _header(experiment: Experiment) -> dict[str, Any]:
    return {"name": experiment.name, "title": experiment.title, "note": experiment.note,
            "claim": experiment.claim, "threshold": experiment.threshold,
            "anchor": dataclasses.asdict(experiment.anchor), "timed": experiment.timed}


def _is_report_page(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "<title>kexue report</title>" in f.read(4096)
    except OSError:
        return False


def _figures(record: dict[str, Any] | None) -> set[str]:
    """The figure files a record (and the finished result it keeps) refers to."""
    if not record:
        return set()
    return set(record.get("figures") or []) | set(
        (record.get("previous") or {}).get("figures") or [])


def ledger_status(record: dict[str, Any]) -> str:
    """``"holds"``, ``"fails"`` or ``"error"``."""
    return str(record.get("status", "error"))


class Ledger:
    """The records of one report directory, kept on disk after every change.

    Args:
        out: the report directory (must exist).
        order: experiment names in report order; other names follow, sorted.

    Raises:
        ValueError: if an existing ``results.json`` is not a kexue ledger (it is left as it is).
    """

    def __init__(self, out: Path, order: Iterable[str] = ()) -> None:
        self.out = Path(out)
        self.order = list(order)
        self.records: dict[str, dict[str, Any]] = {}
        path = self.out / RESULTS
        if path.exists():
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path} is not readable JSON ({err}); move it away to start "
                                 "a new report there") from err
            if not isinstance(records, list) or not all(
                    isinstance(r, dict) and isinstance(r.get("name"), str)
                    and r.get("status") in _VERDICT and isinstance(r.get("provenance"), dict)
                    for r in records):
                raise ValueError(f"{path} is not a kexue report ledger of this version; move it "
                                 "away to start a new report there")
            self.records = {r["name"]: r for r in records}
        elif (self.out / PAGE).exists() and not _is_report_page(self.out / PAGE):
            raise ValueError(f"{self.out / PAGE} exists and is not a kexue report; refusing to "
                             "overwrite it")

    def _sorted(self) -> list[dict[str, Any]]:
        rank = {n: i for i, n in enumerate(self.order)}
        return sorted(self.records.values(),
                      key=lambda r: (rank.get(r["name"], len(rank)), r["name"]))

    def _upsert(self, record: dict[str, Any]) -> None:
        old = self.records.get(record["name"])
        self.records[record["name"]] = record
        self.write()
        # figures of the replaced record that no record refers to any more; only files named
        # like this experiment's figures are ever deleted
        referenced = set().union(*(_figures(r) for r in self.records.values()))
        for stale in _figures(old) - referenced:
            if (stale.startswith(f"{record['name']}_") and stale.endswith(".png")
                    and "/" not in stale and "\\" not in stale):
                with contextlib.suppress(OSError):
                    (self.out / stale).unlink()

    def add(self, experiment: Experiment, result: Result,
            provenance: Provenance) -> dict[str, Any]:
        """Save ``result``'s figures and record it; the ledger is on disk when this returns."""
        import matplotlib.pyplot as plt

        body = {"summary": result.summary, "metrics": dict(result.metrics),
                "tables": [t.to_dict() for t in result.tables]}
        json.dumps(body, allow_nan=False)  # a value JSON cannot hold fails before any write
        figures = []
        for fig_name, fig in result.figures.items():
            file = f"{experiment.name}_{fig_name}.png"
            atomic_save(self.out / file, lambda f, fig=fig: fig.savefig(f, format="png",
                                                                         dpi=110))
            plt.close(fig)
            figures.append(file)
        record = {**_header(experiment),
                  "status": "holds" if result.holds else "fails",
                  **body, "figures": figures,
                  "error": None, "provenance": dataclasses.asdict(provenance)}
        self._upsert(record)
        return record

    def add_error(self, experiment: Experiment, error: BaseException,
                  provenance: dict[str, Any]) -> dict[str, Any]:
        """Record an experiment that raised: its message and traceback go into the page. A
        finished result it replaces is kept beside it (``previous``), figures included."""
        old = self.records.get(experiment.name)
        if old and old.get("status") == "error":
            old = old.get("previous")
        record = {**_header(experiment), "status": "error",
                  "summary": f"{type(error).__name__}: {error}", "metrics": {}, "tables": [],
                  "figures": [],
                  "error": {"type": type(error).__name__, "message": str(error),
                            "traceback": "".join(tb.format_exception(error))},
                  "provenance": provenance,
                  "previous": {k: old[k] for k in ("status", "summary", "metrics", "tables",
                                                   "figures", "provenance") if k in old}
                  if old else None}
        self._upsert(record)
        return record

    def write(self) -> Path:
        """Write ``results.json`` and ``index.html`` atomically; return the page's path."""
        records = self._sorted()
        text = json.dumps(records, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        with atomic_write(self.out / RESULTS) as f:
            f.write(text)
        with atomic_write(self.out / PAGE) as f:
            f.write(render(records))
        return self.out / PAGE


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


META = ("mode", "seed", "config", "torch", "device", "precision", "threads", "git_sha",
        "kexue_version", "date")
_VERDICT = {"holds": "holds", "fails": "does not hold", "error": "error"}


def _ran_on(provenance: dict[str, Any]) -> str:
    """Device type and precision of a record (``cpu fp32``); records older than the precision
    field ran in fp32."""
    device = str(provenance.get("device", "")).split(":", 1)[0]
    return f"{device} {provenance.get('precision', 'fp32')}".strip()


def _anchor(anchor: dict[str, Any]) -> str:
    esc = html.escape
    if anchor.get("number") is None:
        return f"no published number <span class='meta'>({esc(anchor.get('source', ''))})</span>"
    text = (f"<b>{esc(anchor['number'])}</b> on {esc(anchor.get('data', ''))} "
            f"<span class='meta'>({_linked(anchor.get('source', ''))})</span>")
    if anchor.get("differs"):
        text += f"<br><i>kexue's data differ:</i> {esc(anchor['differs'])}"
    return text


def _anchor_short(anchor: dict[str, Any]) -> str:
    """The published number alone, for the overview (its source is in the section)."""
    if anchor.get("number") is None:
        return "<span class='meta'>no published number</span>"
    return html.escape(anchor["number"])


def _linked(text: str) -> str:
    """Escape ``text`` and turn its http(s) URLs into links."""
    import re

    parts = re.split(r"(https?://[^\s,;)]+)", text)
    return "".join(f"<a href='{html.escape(p)}'>{html.escape(p)}</a>" if i % 2 else
                   html.escape(p) for i, p in enumerate(parts))


def _table(t: dict[str, Any]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in t["columns"])
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in t["rows"])
    return f"<table><caption>{esc(t.get('caption', ''))}</caption><tr>{head}</tr>{body}</table>"


def render(records: list[dict[str, Any]]) -> str:
    """The HTML page of ``records``: an overview (claim, threshold, anchor, verdict), then one
    section per experiment."""
    esc = html.escape
    rows = "".join(
        f"<tr><td><a href='#{esc(r['name'])}'>{esc(r['name'])}</a></td>"
        f"<td class='{esc(ledger_status(r))}'>{_VERDICT.get(ledger_status(r), 'error')}"
        f"{' (timed)' if r.get('timed') else ''}</td>"
        f"<td>{esc(r.get('claim', ''))}</td><td>{esc(r.get('threshold') or '—')}</td>"
        f"<td>{_anchor_short(r.get('anchor') or {})}</td><td>{esc(r.get('summary', ''))}</td>"
        f"<td class='meta'>{esc(_ran_on(r.get('provenance') or {}))}</td></tr>"
        for r in records)
    sections = []
    for r in records:
        prov = r.get("provenance") or {}
        metrics = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>"
                          for k, v in (r.get("metrics") or {}).items())
        tables = "".join(_table(t) for t in r.get("tables") or [])
        figs = "".join(f"<img src='{esc(f)}' alt='{esc(f)}'>" for f in r.get("figures") or [])
        error = ""
        if r.get("error"):
            error = (f"<p class='error'><b>Error:</b> {esc(r['error']['message'])}</p>"
                     f"<pre>{esc(r['error']['traceback'])}</pre>")
            previous = r.get("previous")
            if previous:
                when = (previous.get("provenance") or {}).get("date", "an earlier run")
                error += (f"<p><b>The last finished run</b> ({esc(str(when))}): "
                          f"{_VERDICT.get(previous.get('status', ''), '')} — "
                          f"{esc(previous.get('summary', ''))}</p>" + "".join(
                              f"<img src='{esc(f)}' alt='{esc(f)}'>"
                              for f in previous.get("figures") or []))
        meta = " · ".join(
            f"{k} {esc(json.dumps(v, ensure_ascii=False) if k == 'config' else _fmt(v))}"
            for k, v in prov.items() if k in META)
        seconds = f" · {prov['seconds']:.1f} s" if isinstance(prov.get("seconds"), float) else ""
        sections.append(
            f"<section id='{esc(r['name'])}'><h2>{esc(r.get('title', r['name']))}</h2>"
            f"<p>Note: <a href='{esc(r.get('note', ''))}'>{esc(r.get('note', ''))}</a></p>"
            f"<p><b>Claim:</b> {esc(r.get('claim', ''))} — "
            f"<b class='{esc(ledger_status(r))}'>{_VERDICT.get(ledger_status(r), 'error')}</b>"
            f".</p><p><b>Threshold:</b> {esc(r.get('threshold') or '—')}</p>"
            f"<p><b>Published:</b> {_anchor(r.get('anchor') or {})}</p>"
            f"<p>{esc(r.get('summary', ''))}</p>{error}<table>{metrics}</table>{tables}{figs}"
            f"<p class='meta'>{meta}{seconds}</p></section>")
    return f"""<!doctype html><html lang='en'><head><meta charset='utf-8'>
<meta name='viewport' content='width=device-width, initial-scale=1'><title>kexue report</title>
<style>body{{font-family:{FONTS};max-width:1280px;margin:2em auto;padding:0 1em}}
.wide{{overflow-x:auto}}.wide td{{min-width:6em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;
vertical-align:top}}.holds{{color:#070}}.fails,.error{{color:#a00}}
img{{max-width:100%;display:block;margin:1em 0}}pre{{overflow-x:auto;background:#f6f6f6;
padding:.5em}}.meta{{color:#666;font-size:.85em}}</style></head><body>
<h1>kexue report</h1><p>Each experiment reruns a claim of a kexue.fm note on embedded real data,
beside the published number it should be read against.</p>
<div class='wide'><table><tr><th>experiment</th><th>verdict</th><th>claim</th>
<th>threshold</th><th>published</th><th>kexue</th><th>ran on</th></tr>{rows}</table></div>
{''.join(sections)}</body></html>
"""
