from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import h5py
import pytest
from click.testing import CliRunner
from sklearn.metrics import recall_score

from features import FeatureCache, cache_path
from pipeline.cli import main
from pipeline.heads import HeadConfig, class_probabilities, select_best, train_ensemble, train_linear_heads
from pipeline.report import DUPLICATES, LABEL_ISSUES, TRAINING_CURVES, build_reports, reports_dir
from pipeline.report.page import SECTIONS

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_workdir(digits10_cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    (workdir / "features.h5").symlink_to(cache_path(digits10_cache))
    cfg = HeadConfig(workdir=workdir, epochs=8, c_grid=(0.01, 1.0), flip=False)
    train_linear_heads(cfg, ["resnet34", "densenet121"])
    train_ensemble(cfg, ["resnet34", "densenet121"])
    select_best(cfg)
    return workdir


def test_reports_are_pictures_and_numbers_that_agree_with_training(trained_workdir):
    report = build_reports(trained_workdir)
    rows = report.models
    assert [r.model for r in rows] == ["densenet121", "resnet34", "ensemble@resnet34,densenet121", "best"]
    assert not report.skipped
    folder = reports_dir(trained_workdir)
    for name in [TRAINING_CURVES] + [f"confusion_{r.model}.png" for r in rows]:
        assert (folder / name).read_bytes().startswith(PNG), name
    for r in rows:
        metrics = json.loads((trained_workdir / "metrics" / f"{r.model}.json").read_text())
        assert r.accuracy == pytest.approx(metrics["val_accuracy"]) and r.split == "valid"
        assert r.log_loss == pytest.approx(metrics["val_log_loss"], rel=1e-6)
        probs = class_probabilities(trained_workdir, r.model, "valid")
        expected = recall_score(probs.labels, probs.proba.argmax(1), average=None)
        assert list(r.recall.values()) == pytest.approx(list(expected))
    assert rows[0].chosen.startswith("C=") and rows[2].chosen.startswith("epoch") and "densenet121" in rows[3].chosen
    with FeatureCache(cache_path(trained_workdir)) as cache:
        assert list(rows[0].recall) == list(cache.classes)
    assert not list(folder.glob("*.tmp"))


def test_reports_load_no_torch(trained_workdir):
    # torch is installed, so asked whether it was imported: blocking it (sys.modules['torch'] = None) breaks scipy,
    # which cleanlab and scikit-learn load, as it probes for torch arrays
    code = (f"import sys\nfrom pipeline.report import build_reports\nreport = build_reports({str(trained_workdir)!r})\n"
            "print(len(report.models), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "4 False", done.stderr


def test_report_command_prints_the_comparison(trained_workdir, tmp_path):
    result = CliRunner().invoke(main, ["report", "--workdir", str(trained_workdir)])
    assert result.exit_code == 0, result.output
    assert "recall per class" in result.output and "ensemble" in result.output
    empty = CliRunner().invoke(main, ["report", "--workdir", str(tmp_path)])
    assert empty.exit_code == 1 and "cnnfeat train-head" in empty.output


def test_a_stale_model_is_left_out_with_a_note(digits10_workdir):
    cfg = HeadConfig(workdir=digits10_workdir, epochs=3, c_grid=(0.01, 1.0), flip=False, select=False)
    train_linear_heads(cfg, ["resnet34", "densenet121"])
    train_ensemble(cfg, ["resnet34", "densenet121"])
    with h5py.File(cache_path(digits10_workdir), "r+") as f:  # as if resnet34 were extracted again with --pool max
        for split in ("train", "valid"):
            f[f"{split}/resnet34"].attrs["pool"] = "max"
    result = CliRunner().invoke(main, ["train-head", "--workdir", str(digits10_workdir), "--backbone", "resnet34",
                                       "--c-grid", "0.01,1", "--no-flip", "--no-select"])
    assert result.exit_code == 0, result.output  # its own work succeeded: the stale ensemble does not fail it
    assert "report leaves out ensemble@resnet34,densenet121: its features or the split files changed" in result.output
    report = build_reports(digits10_workdir)
    assert [r.model for r in report.models] == ["densenet121", "resnet34"]


class PageLinks(HTMLParser):
    """Every element id, and every (tag, href or src) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.add(tag)
        self.ids |= {found["id"]} if found.get("id") else set()
        self.refs += [(tag, found[key]) for key in ("href", "src") if found.get(key)]


def test_the_page_is_one_offline_file_with_every_section(trained_workdir):
    report = build_reports(trained_workdir)
    folder = reports_dir(trained_workdir)
    assert report.page == folder / "index.html" and report.shown == "best"
    html = report.page.read_text()
    page = PageLinks()
    page.feed(html)
    assert {key for key, _ in SECTIONS} <= page.ids
    assert not page.tags & {"script", "link", "iframe"} and "url(" not in html and "@import" not in html
    for tag, ref in page.refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc, f"{tag} points outside: {ref}"
        if ref.startswith("#"):
            assert ref[1:] in page.ids, ref
        else:
            assert (folder / unquote(parts.path)).is_file(), ref
    thumbs = {ref for tag, ref in page.refs if tag == "img" and ref.startswith("thumbs/")}
    originals = {ref for tag, ref in page.refs if tag == "a" and ref.endswith(".jpg") and not ref.startswith("thumbs/")}
    assert len(thumbs) >= 24 and len(originals) == len(thumbs)
    assert all((folder / t).stat().st_size < 8000 for t in thumbs)  # a few KB each
    assert {p.name for p in (folder / "thumbs").iterdir()} == {t.split("/")[-1] for t in thumbs}
    with open(folder / LABEL_ISSUES, newline="") as handle:
        issues = list(csv.DictReader(handle))
    assert report.label_issues == len(issues) and (not issues or list(issues[0]) == ["path", "given_label", "suggested_label", "score"])
    assert (folder / DUPLICATES).read_text().splitlines()[0] == "path_a,split_a,path_b,split_b,similarity"
    assert report.duplicates.backbone == "resnet34" and report.duplicates.images == 820
    matrix = html[html.index('<section id="confusion">'):].split("</section>")[0]
    counts = [int(n) for n in re.findall(r'<a href="#cell-\d+-\d+">(\d+)</a>', matrix)]
    assert len(counts) >= 10 and sum(counts) == 200  # every validation row is in a cell that links to its images


def test_a_rebuilt_page_reuses_its_thumbnails_and_drops_stale_ones(trained_workdir):
    build_reports(trained_workdir)
    thumbs = reports_dir(trained_workdir) / "thumbs"
    before = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    (thumbs / "0123456789abcdef0123.jpg").write_bytes(b"an image no longer shown")
    build_reports(trained_workdir)
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()} == before


def test_report_refuses_a_similarity_outside_0_1(trained_workdir):
    result = CliRunner().invoke(main, ["report", "--workdir", str(trained_workdir), "--similarity", "1.5"])
    assert result.exit_code == 2 and "--similarity" in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium) to open the page in")
def test_the_page_opens_in_headless_chromium(trained_workdir, tmp_path):
    page = build_reports(trained_workdir).page
    shot = tmp_path / "page.png"
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(browser + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run(browser + ["--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    rendered = PageLinks()
    rendered.feed(dom.stdout)
    assert {key for key, _ in SECTIONS} <= rendered.ids, dom.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG)
