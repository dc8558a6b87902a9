"""Do no harm: the service's default answer is never worse than the plain network it wraps.

For every lol-pairs low, train and val, uploaded as PNG and as JPEG q90 (what phones and browsers
send), the answer of the bundled model at default settings (``training evaluate``'s served model,
which answers what ``POST /enhance`` answers: test_service_policy) scores at least the plain
network's PSNR on the same upload (the network on the decoded upload, whole, gain 1, one pass)
minus ``MARGIN_DB``. The policy's constants were fitted on a part of train only; val holds them to
account. The summary and the worst case are printed in every run. About 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.contract import BUNDLED_MODEL_PATH
from training.data import list_pairs, load_rgb
from training.evaluate import ServedModel, encode_upload
from training.inference import load_enhancer
from training.metrics import psnr

MARGIN_DB = 0.2
UPLOADS = {"PNG": None, "JPEG q90": 90}


@dataclass(frozen=True)
class Row:
    name: str
    upload: str
    default: float
    plain: float

    @property
    def difference(self) -> float:
        return self.default - self.plain


@pytest.mark.timeout(4 * 3600)
def test_the_default_answer_never_scores_below_the_plain_network(
    lol_pairs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = load_enhancer(BUNDLED_MODEL_PATH)
    rows: list[Row] = []
    with ServedModel(BUNDLED_MODEL_PATH) as served:
        for split in ("train", "val"):
            for pair in list_pairs(lol_pairs / split):
                high = load_rgb(pair.high)
                for upload, quality in UPLOADS.items():
                    data = encode_upload(load_rgb(pair.low), quality)
                    with Image.open(io.BytesIO(data)) as decoded:
                        sent = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
                    answer, _ = served.answer(data)
                    rows.append(Row(f"{split}/{pair.name}", upload, psnr(answer, high), psnr(plain(sent), high)))
    with capsys.disabled():  # the summary belongs in every log, passing or not
        for upload in UPLOADS:
            for split in ("train", "val", ""):
                mine = [row for row in rows if row.upload == upload and row.name.startswith(split)]
                worst = min(mine, key=lambda row: row.difference)
                print(
                    f"\n{upload} {split or 'all'}: {len(mine)} lows, default {np.mean([r.default for r in mine]):.3f} "
                    f"dB, plain {np.mean([r.plain for r in mine]):.3f} dB; worst {worst.name}: "
                    f"{worst.default:.3f} vs {worst.plain:.3f} ({worst.difference:+.3f} dB)"
                )
    harmed = [row for row in rows if row.difference < -MARGIN_DB]
    assert not harmed, [f"{r.name} {r.upload}: {r.default:.2f} < {r.plain:.2f} - {MARGIN_DB}" for r in harmed]
