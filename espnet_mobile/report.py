"""Parity reports: ``parity.json`` for machines, ``report.md`` for pull requests, ``report.html`` for people.

The HTML page is a single static file with every image inline: a summary
matrix (backend x precision x compute unit, green pass, red fail, grey "not
executable here") and, per image, the input, the reference mask, each
executed backend's mask and a heat map of where it disagrees with the reference.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from espnet_mobile.bundle import write_json_atomic, write_text_atomic
from espnet_mobile.preprocess import colorize

MAX_IMAGES_IN_HTML = 4
THUMB = 192


def _png_data_uri(rgb: np.ndarray) -> str:
    img = Image.fromarray(rgb)
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(rec) -> tuple[str, str]:
    if not rec.executed:
        return "na", "not executable here"
    if rec.passed:
        return "pass", f"{rec.metrics['pixel_agreement']:.2%}"
    if rec.metrics:
        return "fail", f"{rec.metrics['pixel_agreement']:.2%}"
    return "fail", "error"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(records, summary: dict, model_id: str) -> str:
    lines = [f"## Parity: {model_id}", "",
             f"{summary['samples']} samples ({summary['data']}). {summary['executed']} checks executed: "
             f"**{summary['passed']} passed, {summary['failed']} failed**; {summary['not_executed']} not "
             "executable here.", "",
             "| artifact | precision | runtime | unit | result | agreement | mIoU vs ref | mIoU vs labels "
             "| max err | SQNR dB | ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        m = r.metrics or {}
        result = "not executable here" if not r.executed else ("pass" if r.passed else "**FAIL**")
        lines.append(
            f"| {r.artifact} | {r.precision} | {r.runtime} | {r.compute_unit} | {result} "
            f"| {_fmt(m.get('pixel_agreement'), '.4%')} | {_fmt(m.get('miou_vs_reference'), '.2f')} "
            f"| {_fmt(m.get('miou_vs_labels'), '.2f')} | {_fmt(m.get('max_abs_error'), '.3g')} "
            f"| {_fmt(m.get('sqnr_db'), '.1f')} | {_fmt(m.get('latency_ms'), '.1f')} |")
    notes = [r for r in records if r.failures or r.culprit or (not r.executed and r.reason)]
    if notes:
        lines += ["", "### Notes", ""]
        for r in notes:
            text = "; ".join(r.failures) if r.failures else r.reason
            if r.culprit and r.culprit.get("layer"):
                text += f" - first layer where the error jumps: `{r.culprit['layer']}` ({r.culprit.get('method')})"
            lines.append(f"- {r.artifact} on {r.runtime} ({r.compute_unit}): {text}")
    return "\n".join(lines) + "\n"


def page(records, ctx: dict) -> str:
    summary, refs, manifest = ctx["summary"], ctx["refs"], ctx["manifest"]
    palette = manifest["palette"]
    labels = manifest["labels"]
    esc = html.escape
    runtimes = sorted({(r.runtime, r.compute_unit) for r in records})
    artifacts = sorted({(r.artifact, r.precision) for r in records})
    by = {(r.artifact, r.runtime, r.compute_unit): r for r in records}
    head = "".join(f"<th>{esc(rt)}<br><small>{esc(u)}</small></th>" for rt, u in runtimes)
    rows = []
    for art, prec in artifacts:
        cells = []
        for rt, u in runtimes:
            rec = by.get((art, rt, u))
            if rec is None:
                cells.append('<td class="empty"></td>')
                continue
            cls, text = _cell(rec)
            tip = esc("; ".join(rec.failures) or (rec.reason or rec.label))
            cells.append(f'<td class="{cls}" title="{tip}">{esc(text)}</td>')
        rows.append(f"<tr><th class='art'>{esc(art)}<br><small>{esc(prec)}</small></th>{''.join(cells)}</tr>")
    executed = [r for r in records if r.executed and r.masks]
    figures = []
    for i, ref in enumerate(refs[:MAX_IMAGES_IN_HTML]):
        tiles = [("input", ref.rgb), ("reference", colorize(ref.mask, palette))]
        for r in executed:
            short = r.artifact.removeprefix(f"{manifest['model_id']}_")  # the model id has underscores too
            tiles.append((f"{short} / {r.runtime}", colorize(r.masks[i], palette)))
            diff = (r.masks[i] != ref.mask).astype(np.uint8)
            heat = np.stack([diff * 255, np.zeros_like(diff), np.zeros_like(diff)], -1)
            heat = np.where(diff[..., None] > 0, heat, (colorize(ref.mask, palette) * 0.25).astype(np.uint8))
            tiles.append((f"disagreement {100 * diff.mean():.2f}%", heat))
        imgs = "".join(f"<figure><img src='{_png_data_uri(t)}'><figcaption>{esc(c)}</figcaption></figure>"
                       for c, t in tiles)
        figures.append(f"<h3>{esc(ref.name)}</h3><div class='row'>{imgs}</div>")
    failed = [r for r in records if r.executed and r.passed is False]
    failure_items = []
    for r in failed:
        text = esc("; ".join(r.failures))
        if r.culprit and r.culprit.get("layer"):
            text += (f" &mdash; first layer where the error jumps: <code>{esc(str(r.culprit['layer']))}</code> "
                     f"({esc(str(r.culprit.get('method')))})")
        failure_items.append(f"<li><b>{esc(r.artifact)}</b> on {esc(r.runtime)} ({esc(r.compute_unit)}): {text}</li>")
    failures_html = f"<h2>Failed checks</h2><ul>{''.join(failure_items)}</ul>" if failure_items else ""
    legend = "".join(f"<span class='sw' style='background:rgb({c[0]},{c[1]},{c[2]})'></span>{esc(n)} "
                     for n, c in zip(labels, palette, strict=True))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Parity: {esc(manifest['model_id'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}}
table{{border-collapse:collapse;margin:12px 0}} td,th{{border:1px solid #bbb;padding:6px 10px;text-align:center}}
th.art{{text-align:left}} td.pass{{background:#2e9d4a;color:#fff}} td.fail{{background:#c8322d;color:#fff}}
td.na{{background:#d9d9d9;color:#555}} td.empty{{background:#fff}}
.row{{display:flex;flex-wrap:wrap;gap:8px}} figure{{margin:0}} figcaption{{font-size:12px;max-width:{THUMB}px}}
.sw{{display:inline-block;width:12px;height:12px;margin:0 3px 0 10px;border:1px solid #888}}
</style></head><body>
<h1>Parity: {esc(manifest['model_id'])}</h1>
<p>{summary['samples']} samples ({esc(summary['data'])}); {summary['executed']} checks executed:
<b>{summary['passed']} passed, {summary['failed']} failed</b>; {summary['not_executed']} not executable here.
Cells show pixel agreement with the PyTorch fp32 reference.</p>
<table><tr><th>artifact</th>{head}</tr>{''.join(rows)}</table>
{failures_html}
<p>{legend}</p>
{''.join(figures)}
</body></html>
"""


def write_reports(folder: Path, records, ctx: dict) -> None:
    from espnet_mobile.parity import record_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "parity.json", {"summary": ctx["summary"],
                                               "records": [record_json(r) for r in records]})
    write_text_atomic(folder / "report.md", markdown(records, ctx["summary"], ctx["manifest"]["model_id"]))
    write_text_atomic(folder / "report.html", page(records, ctx))
