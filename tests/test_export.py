"""pipeline.export: one file that runs a trained model without cnnfeat, agreeing with the cached pipeline's
`predict --split` on the same images (1e-4 in probability, the same labels)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from features import open_rgb
from pipeline.cli import main
from pipeline.config import ExportConfig
from pipeline.export import ExportError, export_model
from pipeline.heads import class_probabilities

# what the README's five lines do, in an interpreter that cannot import cnnfeat: -I ignores PYTHONPATH, the
# working folder and user site-packages, and an import of `features` or `pipeline` (cnnfeat's packages) fails
RUN_EXPORTED = """
import json, sys
class NoCnnfeat:  # the package may be installed (editable, as in CI): make it unimportable here
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("features", "pipeline"):
            raise ImportError(f"{name}: the exported model must not need cnnfeat")
sys.meta_path.insert(0, NoCnnfeat())
import numpy as np, torch
model_file, images_file = sys.argv[1:]
extra = {"cnnfeat.json": ""}
model = torch.export.load(model_file, extra_files=extra).module()  # once, as README shows: each call rebuilds it
images = np.load(images_file)
proba = [model(torch.from_numpy(images[name])[None])[0] for name in images.files]  # each at its own size
assert not any(p.requires_grad for p in proba)
batch = torch.stack([torch.from_numpy(images[name]) for name in images.files if images[name].shape[1:] == (80, 80)])
same = [p for name, p in zip(images.files, proba) if images[name].shape[1:] == (80, 80)]
assert torch.allclose(model(batch), torch.stack(same), atol=1e-6)  # a batch gives the same rows
proba = [p.tolist() for p in proba]
print(json.dumps({"meta": json.loads(extra["cnnfeat.json"]), "proba": dict(zip(images.files, proba))}))
"""


def _pictures(trained_digits: Path) -> dict[str, np.ndarray]:
    """The test split's decodable files as uint8 (3, H, W) arrays, each at its own size (the EXIF-rotated one
    upright, the grayscale one as RGB): what a user hands the exported model."""
    test = trained_digits.parent / "data" / "test"
    return {p.name: np.asarray(open_rgb(p)).transpose(2, 0, 1).copy() for p in sorted(test.iterdir())
            if p.name != "broken.jpg"}


def _reference(workdir: Path, model: str) -> dict[str, np.ndarray]:
    probs = class_probabilities(workdir, model, "test", "cpu")
    return {Path(p).name: row for p, row in zip(probs.paths, probs.proba) if p not in probs.fallback}


def _assert_parity(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=0, err_msg=name)
        assert np.argmax(got[name]) == np.argmax(expected[name]), name


def test_the_exported_best_runs_without_cnnfeat_and_agrees(trained_digits, tmp_path):
    result = CliRunner().invoke(main, ["export", "--workdir", str(trained_digits), "--model", "best",
                                       "--output", str(tmp_path / "best.pt2")])
    assert result.exit_code == 0, result.output
    np.savez(tmp_path / "images.npz", **_pictures(trained_digits))
    run = subprocess.run([sys.executable, "-I", "-c", RUN_EXPORTED, str(tmp_path / "best.pt2"), str(tmp_path / "images.npz")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["meta"]["classes"] == ["0", "1", "2"] and out["meta"]["model"] == "best"
    _assert_parity({k: np.array(v) for k, v in out["proba"].items()}, _reference(trained_digits, "best"))


def test_onnx_runs_in_onnxruntime_and_agrees(trained_digits, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the optional onnx extra")  # pip install "cnnfeat[onnx]"
    pytest.importorskip("onnxscript", reason="the optional onnx extra")
    path = export_model(ExportConfig(workdir=trained_digits, model="resnet34", format="onnx",
                                     output=tmp_path / "r.onnx"))
    session = ort.InferenceSession(str(path))
    assert json.loads(session.get_modelmeta().custom_metadata_map["cnnfeat.json"])["classes"] == ["0", "1", "2"]
    got = {name: session.run(None, {"images": image[None]})[0][0] for name, image in _pictures(trained_digits).items()}
    expected = _reference(trained_digits, "resnet34")
    same_size = {k for k, v in _pictures(trained_digits).items() if v.shape[1:] == (80, 80)}
    _assert_parity({k: got[k] for k in same_size}, {k: expected[k] for k in same_size})
    for name in set(got) - same_size:  # onnxruntime's antialiased resize rounds a few pixels otherwise than torch's
        np.testing.assert_allclose(got[name], expected[name], atol=1e-2, err_msg=name)
        assert got[name].argmax() == expected[name].argmax(), name


def test_a_model_that_does_not_trace_is_named(trained_digits, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("data-dependent control flow")

    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(ExportError, match=r"model 'resnet34' cannot be exported: its backbone resnet34 does not trace"):
        export_model(ExportConfig(workdir=trained_digits, model="resnet34", output=tmp_path / "r.pt2"))
    assert not (tmp_path / "r.pt2").exists()
