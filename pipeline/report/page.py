"""The report page: PageContent drawn as one HTML file with inline CSS, no script and no network address.

    html = render_page(content)        # build.py writes it to reports/index.html

Every image and file it shows is linked by a path relative to the page (thumbnails in thumbs/, the
CSVs beside it, the original images in the data folder), so the page opens offline wherever the
workdir and the data folder keep their places.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

import numpy as np

from .content import Example, PageContent

SECTIONS = (  # (id, title): the page's table of contents, in order
    ("summary", "Models"),
    ("classes", "Per class"),
    ("confusion", "Confusion matrix"),
    ("confused", "Most confused"),
    ("curves", "Training curves"),
    ("top-losses", "Top losses"),
    ("label-issues", "Likely label errors"),
    ("duplicates", "Near-duplicates and leaks"),
    ("cells", "Images by confusion cell"),  # mistakes first
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24; margin: 0 auto;
       max-width: 1280px; padding: 0 1.2em 3em; }
h1 { font-size: 1.6em; margin: .8em 0 .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #d0d7de; }
h3 { margin: 1.2em 0 .4em; } p.note { color: #57606a; } code { font-size: .92em; }
nav { position: sticky; top: 0; background: #fff; padding: .4em 0; border-bottom: 1px solid #d0d7de; z-index: 1; }
nav a { margin-right: 1em; white-space: nowrap; }
table { border-collapse: collapse; margin: .4em 0; } th, td { padding: .25em .6em; border: 1px solid #d0d7de; }
th { background: #f6f8fa; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.shown td { font-weight: 600; background: #fff8c5; }
.scroll { overflow-x: auto; }
table.matrix td { text-align: center; min-width: 2.6em; } table.matrix td a { display: block; color: inherit; }
.gallery { display: flex; flex-wrap: wrap; gap: .6em; }
figure { margin: 0; width: 132px; font-size: 11.5px; overflow-wrap: anywhere; }
figure img, .missing { width: 112px; height: 112px; object-fit: contain; background: #f6f8fa; display: block; }
.missing { display: flex; align-items: center; justify-content: center; color: #8c959f; }
.pair { display: flex; gap: .3em; align-items: flex-start; border: 1px solid #d0d7de; padding: .3em; }
.pair .sim { writing-mode: vertical-rl; font-weight: 600; }
img.curves { max-width: 100%; }
"""


def render_page(content: PageContent) -> str:
    parts = [_header(content), _summary(content), _classes(content), _confusion(content), _confused(content),
             _curves(content), _top_losses(content), _label_issues(content), _duplicates(content), _cells(content)]
    return "\n".join(["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>cnnfeat report: {escape(content.workdir)}</title>", f"<style>{CSS}</style></head><body>",
                      *parts, "</body></html>", ""])


def _href(path: str) -> str:
    return escape(quote(path), quote=True)


def _section(key: str, body: str) -> str:
    title = dict(SECTIONS)[key]
    return f'<section id="{key}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _link(content: PageContent, key: str, text: str) -> str:
    return f'<a href="{_href(content.links[key])}">{escape(text)}</a>' if key in content.links else escape(text)


def _table(head: list[str], rows: list[list[str]], row_classes: list[str] | None = None, css: str = "") -> str:
    """Cells are HTML already; a cell starting with '#' is a number, right-aligned (the '#' dropped)."""
    def cell(value: str) -> str:
        return f'<td class="n">{value[1:]}</td>' if value.startswith("#") else f"<td>{value}</td>"

    lines = [f'<div class="scroll"><table class="{css}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        style = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        lines.append(f"<tr{style}>" + "".join(cell(v) for v in row) + "</tr>")
    return "\n".join(lines + ["</tbody></table></div>"])


def _number(value: float | None, digits: int = 4) -> str:
    return "#" + ("" if value is None or not np.isfinite(value) else f"{value:.{digits}f}")


def _header(content: PageContent) -> str:
    shown = content.shown
    lines = ["<header><h1>cnnfeat report</h1>",
             f"<p>workdir <code>{escape(content.workdir)}</code>"
             + (f"; mistakes shown for <b>{escape(shown.model)}</b> on the validation rows ({escape(shown.split)})"
                if shown else "") + "</p>"]
    lines += [_note(text) for key, text in content.notes.items() if key == "pictures"]
    lines.append("<nav>" + "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in SECTIONS) + "</nav></header>")
    return "\n".join(lines)


def _summary(content: PageContent) -> str:
    head = ["model", "kind", "val accuracy", "val log loss", "calibration error", "T", "oof log loss", "chosen",
            "weight in best", "confusion"]
    rows = [[escape(m.model), escape(m.kind), _number(m.accuracy), _number(m.log_loss), _number(m.calibration_error),
             _number(m.temperature, 2), _number(m.oof_log_loss), escape(m.chosen), _number(m.weight, 2),
             _link(content, f"confusion {m.model}", "png")] for m in content.models]
    body = [_table(head, rows, ["shown" if m is content.shown else "" for m in content.models]),
            _note("val: the validation rows, which chose nothing; oof log loss: the training rows' out-of-fold "
                  "predictions, on which C, epochs, temperatures (T) and the weights in best were chosen; calibration "
                  "error: expected calibration error (15 bins of the top probability) on the validation rows.")]
    body += [_note(f"left out: {name}: {why}") for name, why in content.skipped]
    return _section("summary", "\n".join(body))


def _classes(content: PageContent) -> str:
    if not content.scores:
        return _section("classes", _note("no model to show"))
    rows = [[escape(s.name), _number(s.precision, 3), _number(s.recall, 3), _number(s.f1, 3), f"#{s.support}"]
            for s in content.scores]
    return _section("classes", f"<p>{escape(content.shown.model)} on the validation rows</p>"
                    + _table(["class", "precision", "recall", "F1", "rows"], rows))


def _cell_id(i: int, j: int) -> str:
    return f"cell-{i}-{j}"


def _confusion(content: PageContent) -> str:
    if content.matrix is None:
        return _section("confusion", _note("no model to show"))
    matrix, classes = content.matrix, content.classes
    totals = np.maximum(matrix.sum(1, keepdims=True), 1)
    rows = []
    for i, name in enumerate(classes):
        cells = [f"<th>{escape(name)}</th>"]
        for j in range(len(classes)):
            count = int(matrix[i, j])
            shade = f' style="background: rgba({"33,102,172" if i == j else "214,39,40"},{count / totals[i, 0]:.2f})"'
            text = f'<a href="#{_cell_id(i, j)}">{count}</a>' if count else ""
            cells.append(f"<td{shade}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{escape(c)}</th>" for c in classes) + "</tr>"
    table = f'<div class="scroll"><table class="matrix"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
    note = ('<p class="note">Rows: the true class; columns: the predicted one. Each count links to its images, the '
            "worst first; every row is in the validation predictions (" + _link(content, "valid csv", "CSV") + ").</p>")
    return _section("confusion", table + note)


def _confused(content: PageContent) -> str:
    if not content.confused:
        return _section("confused", _note("no confusion on the validation rows" if content.matrix is not None
                                          else "no model to show"))
    items = [f'<li><a href="#{_cell_id(i, j)}">{escape(content.classes[i])} taken for {escape(content.classes[j])}'
             f"</a>: {count}</li>" for i, j, count in content.confused]
    return _section("confused", "<ol>" + "".join(items) + "</ol>")


def _curves(content: PageContent) -> str:
    return _section("curves", f'<img class="curves" src="{_href(content.links["curves"])}" '
                              f'alt="loss and accuracy of every model over C or epochs">')


def _figure(content: PageContent, example: Example) -> str:
    thumb = content.thumbs.get(example.path)
    picture = (f'<img src="{_href(thumb)}" alt="{escape(example.path)}" loading="lazy">' if thumb
               else '<div class="missing">no image</div>')
    if example.path in content.originals:
        picture = f'<a href="{_href(content.originals[example.path])}">{picture}</a>'
    caption = "<br>".join([f"<code>{escape(example.path)}</code>", *map(escape, example.lines)])
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _gallery(content: PageContent, examples: list[Example]) -> str:
    return '<div class="gallery">' + "".join(_figure(content, e) for e in examples) + "</div>"


def _top_losses(content: PageContent) -> str:
    body = ["<h3>Validation rows</h3>", _gallery(content, content.valid_losses) if content.valid_losses
            else _note("no model to show"), "<h3>Training rows, out of fold</h3>",
            _note(f"{content.shown.model if content.shown else 'The model'}'s out-of-fold predictions: each row "
                  f"predicted by the fold's model that did not see it.")]
    body.append(_gallery(content, content.oof_losses) if content.oof_losses else _note(content.notes.get("oof-losses", "")))
    return _section("top-losses", "\n".join(body))


def _label_issues(content: PageContent) -> str:
    if content.issues is None:
        return _section("label-issues", _note(content.notes.get("label-issues", "no model to show")))
    shown = len(content.issue_examples)
    intro = (f"<p>{len(content.issues)} training images whose label is likely wrong, by confident learning (cleanlab) "
             f"on {escape(content.shown.model)}'s out-of-fold probabilities; lowest label quality first"
             + (f", {shown} shown" if shown < len(content.issues) else "") + ". All of them: "
             + _link(content, "label issues", "label_issues.csv") + ".</p>")
    return _section("label-issues", intro + _gallery(content, content.issue_examples))


def _duplicates(content: PageContent) -> str:
    found = content.duplicates
    if found is None:
        return _section("duplicates", _note(content.notes.get("duplicates", "")))
    counts = found.counts()
    kept = f", the {len(found.pairs)} most similar kept" if len(found.pairs) < found.found else ""
    intro = (f"<p>{found.found} pairs of images with a cosine similarity of at least {found.similarity:g} between "
             f"their whitened <b>{escape(found.backbone)}</b> features, among {found.images} images{kept}. Every pair: "
             + _link(content, "duplicates", "duplicates.csv") + ". A pair across splits (train and test) is a leak.</p>")
    table = _table(["splits", "pairs"], [[escape(f"{a} / {b}"), f"#{n}"] for (a, b), n in sorted(counts.items())]) if counts else ""
    pairs = "".join(f'<div class="pair">{_figure(content, a)}{_figure(content, b)}<span class="sim">{similarity:.3f}</span></div>'
                    for a, b, similarity in content.duplicate_examples)
    return _section("duplicates", intro + table + f'<div class="gallery">{pairs}</div>')


def _cells(content: PageContent) -> str:
    parts = []
    for (i, j), examples in sorted(content.cells.items(), key=lambda cell: (cell[0][0] == cell[0][1], cell[0])):
        count = int(content.matrix[i, j])
        title = f"true {content.classes[i]}, predicted {content.classes[j]}: {count} image{'s' if count != 1 else ''}"
        more = f" ({len(examples)} with the highest loss shown)" if len(examples) < count else ""
        parts.append(f'<div id="{_cell_id(i, j)}"><h3>{escape(title + more)}</h3>{_gallery(content, examples)}</div>')
    return _section("cells", "\n".join(parts) or _note("no model to show"))
