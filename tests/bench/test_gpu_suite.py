"""bench/gpu_suite.py --smoke: every section of the GPU suite runs on CPU with tiny sizes and writes its report.

No timing is asserted (CPU numbers mean nothing for the GPU goals); the point is that the one command owed on
an H100 runs unchanged there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("Against the goals", "raw DETR-R50", "raw CKDN", "raw FTCN+TT", "FTCN end to end",
            "decode + preprocess", "served (gateway + TorchServe)", "streams", "batch sweep (raw, served precision)")


def test_gpu_suite_smoke_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    report = out.read_text()
    for section in SECTIONS:
        assert f"## {section}\n" in report, section
    body = {name: part for name, part in (chunk.split("\n", 1) for chunk in report.split("\n## ")[1:])}
    for section in SECTIONS[1:]:  # each ran and produced rows (the end-to-end one needs the MTCNN weights)
        if section != "FTCN end to end" or "end-to-end FTCN not run" not in report:
            assert "| " in body[section] and "_(no rows)_" not in body[section], section
    assert "zoo (2 branches)" in body["raw CKDN"] and "official forward (4 branches)" in body["raw CKDN"]
    served = body["served (gateway + TorchServe)"]
    header = served.split("\n")[1]  # after the blank line under the title
    assert "| detr_resnet50 |" in served and "| ckdn_r50 |" in served
    # FTCN: a face video uploaded to the gateway's task route, counted in videos/s and seconds of video/s
    assert "| ftcn_tt |" in served and "videos/s" in header and "video s/s" in header
    ftcn_row = next(line for line in served.split("\n") if line.startswith("| ftcn_tt |"))
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in ftcn_row.strip("|").split("|")], strict=True))
    assert float(cells["videos/s"]) > 0 and float(cells["video s/s"]) > 0 and int(cells["clips/video"]) >= 1
    assert "served deepfake analysis, video s/s" in body["Against the goals"]
    sweep = body["batch sweep (raw, served precision)"]
    assert all(f"| {model} |" in sweep for model in ("detr_resnet50", "ckdn_r50", "ftcn_tt"))
    assert sweep.count("gpu.batch_size") == 2 and "ZOO_FTCN_CLIP_BATCH" in sweep
