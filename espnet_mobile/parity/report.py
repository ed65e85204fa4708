"""Parity reports: ``parity.json`` for machines, ``report.md`` for pull requests, ``report.html`` for people.

The HTML page is a single static file with every image inline, laid out to fit
a 1280 px window: a matrix with one row per artifact and one column per compute
unit (CPU, GPU, NPU / ANE), each runtime a coloured cell (green pass, red fail,
grey "runs only on a device"); then each photo once, at its own aspect ratio,
with the reference mask over it, followed only by the artifacts whose masks
differ from the reference on it, the differing pixels marked. Photos on which
everything agrees are folded away.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from espnet_mobile.files import write_json_atomic, write_text_atomic
from espnet_mobile.parity.records import record_json
from espnet_mobile.preprocess import overlay, resize_mask_nearest

DISPLAY_WIDTH = 380  # three figures side by side fit a 1280 px window
DISPLAY_HEIGHT = 300
VISIBLE_DISAGREEMENTS = 2  # per photo, next to the reference; the rest folded
DISAGREE_RGB = (255, 0, 255)
MATRIX_COLUMNS = ("CPU", "GPU", "NPU / ANE")


def _png_data_uri(rgb: np.ndarray) -> str:
    img = Image.fromarray(rgb)
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


def _unit_column(unit: str) -> str:
    if unit == "GPU":
        return "GPU"
    return "NPU / ANE" if unit in ("NPU", "ANE") else "CPU"


def _short(artifact: str, model_id: str) -> str:
    return artifact.removeprefix(f"{model_id}_")  # the model id has underscores too


def _display(rgb: np.ndarray) -> np.ndarray:
    """The photo at display size, aspect ratio kept (never squashed to a square)."""
    scale = min(1.0, DISPLAY_WIDTH / rgb.shape[1], DISPLAY_HEIGHT / rgb.shape[0])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR)) if scale < 1 else rgb


def _figure(rgb: np.ndarray, caption: str) -> str:
    return (f"<figure><img src='{_png_data_uri(rgb)}' width='{rgb.shape[1]}' height='{rgb.shape[0]}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def reference_overlay(photo: np.ndarray, mask: np.ndarray, palette) -> np.ndarray:
    return overlay(photo, resize_mask_nearest(mask, *photo.shape[:2]), palette)


def disagreement_overlay(photo: np.ndarray, mask: np.ndarray, ref_mask: np.ndarray, palette) -> np.ndarray:
    """The artifact's mask over the photo, every pixel where it differs from the reference marked."""
    shown = resize_mask_nearest(mask, *photo.shape[:2])
    differs = shown != resize_mask_nearest(ref_mask, *photo.shape[:2])
    out = overlay(photo, shown, palette)
    out[differs] = DISAGREE_RGB
    return out


def _matrix(records, model_id: str) -> str:
    esc = html.escape
    by_artifact: dict[tuple[str, str], dict[str, list]] = {}
    for r in records:
        by_artifact.setdefault((r.artifact, r.precision), {}).setdefault(_unit_column(r.compute_unit), []).append(r)
    rows = []
    for (art, prec), units in sorted(by_artifact.items()):
        cells = []
        for column in MATRIX_COLUMNS:
            pills = []
            for rec in units.get(column, []):
                cls, text = _cell(rec)
                tip = esc("; ".join(rec.failures) or (rec.reason or rec.label))
                pills.append(f'<span class="cell {cls}" title="{tip}">{esc(rec.runtime)}<br>'
                             f"<small>{esc(text)}</small></span>")
            cells.append(f"<td>{''.join(pills)}</td>")
        rows.append(f"<tr><th class='art'>{esc(_short(art, model_id))}</th><td>{esc(prec)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{c}</th>" for c in MATRIX_COLUMNS)
    return f"<table class='matrix'><tr><th>artifact</th><th>precision</th>{head}</tr>{''.join(rows)}</table>"


def _photo_sections(records, refs, manifest) -> str:
    """Each photo once with the reference over it, then only the artifacts that disagree on it."""
    palette, model_id = manifest["palette"], manifest["model_id"]
    executed = [r for r in records if r.executed and r.masks]
    shown, quiet = [], []
    scored = []
    for i, ref in enumerate(refs):
        diffs = sorted(((float(np.mean(r.masks[i] != ref.mask)), r) for r in executed),
                       key=lambda d: -d[0])
        scored.append((sum(d for d, _ in diffs), i, ref, [(d, r) for d, r in diffs if d > 0], len(diffs)))
    for _total, i, ref, disagreeing, checks in sorted(scored, key=lambda s: (-s[0], s[1])):
        photo = _display(ref.rgb)
        head = (f"{ref.name}: {len(disagreeing)} of {checks} executed checks disagree with the reference"
                if disagreeing else f"{ref.name}: every executed check matches the reference")
        figures = [_figure(reference_overlay(photo, ref.mask, palette), "reference (PyTorch fp32) over the photo")]
        extra = []
        for n, (d, r) in enumerate(disagreeing):
            fig = _figure(disagreement_overlay(photo, r.masks[i], ref.mask, palette),
                          f"{_short(r.artifact, model_id)} on {r.runtime}: {100 * d:.2f}% of pixels differ")
            (figures if n < VISIBLE_DISAGREEMENTS else extra).append(fig)
        more = (f"<details><summary>{len(extra)} more that disagree</summary><div class='row'>{''.join(extra)}"
                "</div></details>") if extra else ""
        section = f"<section><h3>{html.escape(head)}</h3><div class='row'>{''.join(figures)}</div>{more}</section>"
        (shown if disagreeing or len(shown) < 1 else quiet).append(section)
    folded = (f"<details><summary>{len(quiet)} more photos on which every executed check matches the reference"
              f"</summary>{''.join(quiet)}</details>") if quiet else ""
    return "".join(shown) + folded


def page(records, ctx: dict) -> str:
    summary, refs, manifest = ctx["summary"], ctx["refs"], ctx["manifest"]
    esc = html.escape
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
                     for n, c in zip(manifest["labels"], manifest["palette"], strict=True))
    mark = "rgb({},{},{})".format(*DISAGREE_RGB)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Parity: {esc(manifest['model_id'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:20px;color:#222;background:#fff;max-width:1240px}}
table.matrix{{border-collapse:collapse;margin:12px 0}} .matrix td,.matrix th{{border:1px solid #bbb;padding:4px 6px;
text-align:center;vertical-align:top}} .matrix th.art{{text-align:left;font-weight:normal;font-family:monospace}}
.cell{{display:inline-block;min-width:120px;margin:2px;padding:4px 6px;border-radius:4px;font-size:13px}}
.cell.pass{{background:#2e9d4a;color:#fff}} .cell.fail{{background:#c8322d;color:#fff}}
.cell.na{{background:#d9d9d9;color:#555}}
.row{{display:flex;flex-wrap:wrap;gap:10px}} figure{{margin:0}} figcaption{{font-size:13px;max-width:{DISPLAY_WIDTH}px}}
.sw{{display:inline-block;width:12px;height:12px;margin:0 3px 0 10px;border:1px solid #888}}
.mark{{display:inline-block;width:12px;height:12px;background:{mark}}}
</style></head><body>
<h1>Parity: {esc(manifest['model_id'])}</h1>
<p>{summary['samples']} photos ({esc(summary['data'])}); {summary['executed']} checks executed:
<b>{summary['passed']} passed, {summary['failed']} failed</b>; {summary['not_executed']} not executable here.
Each cell is one runtime; it shows pixel agreement with the PyTorch fp32 reference (grey: runs only on a device).</p>
{_matrix(records, manifest['model_id'])}
{failures_html}
<h2>Photos</h2>
<p>Each photo with the reference's mask over it, then the artifacts whose mask differs from it there;
<span class="mark"></span> marks the pixels that differ. Photos where nothing differs are folded away.</p>
{_photo_sections(records, refs, manifest)}
<details><summary>Colours of the classes</summary><p>{legend}</p></details>
</body></html>
"""


def write_reports(folder: Path, records, ctx: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "parity.json", {"summary": ctx["summary"],
                                               "records": [record_json(r) for r in records]})
    write_text_atomic(folder / "report.md", markdown(records, ctx["summary"], ctx["manifest"]["model_id"]))
    write_text_atomic(folder / "report.html", page(records, ctx))
