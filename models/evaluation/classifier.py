"""The project's own ECG classifier: the judge of conditioning and the feature space of FID.

A small 1-D CNN over one model window (12 leads x ``window`` samples), multi-label over the five
diagnostic superclasses and the statements the twin model conditions on. Trained on the
patient-wise training split; its held-out macro AUROC is reported with every evaluation so a
reader can tell how far to trust it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models.conditions import VOCAB
from models.data.ptbxl import PTBXL, SUPERCLASSES

LABELS: tuple[str, ...] = SUPERCLASSES + tuple(c for c in VOCAB if c != "NORM")


class ECGClassifier(nn.Module):
    def __init__(self, leads: int = 12, width: int = 64, n_labels: int = len(LABELS)) -> None:
        super().__init__()
        chans = [leads, width // 2, width, width * 2, width * 2]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv1d(a, b, 7, stride=2, padding=3), nn.BatchNorm1d(b), nn.ReLU(),
                       nn.Conv1d(b, b, 5, padding=2), nn.BatchNorm1d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], n_labels)
        self.width = width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, leads, T) -> (B, 2*width) pooled features: the space for FID and PRDC."""
        return self.features(x).mean(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) for (N, samples, leads) windows."""
        self.eval()
        probs, embs = [], []
        for i in range(0, len(x), batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i:i + batch].transpose(0, 2, 1))).float()
            e = self.embed(t)
            probs.append(torch.sigmoid(self.head(e)).numpy())
            embs.append(e.numpy())
        return np.concatenate(probs), np.concatenate(embs)


def code_labels(db: PTBXL, codes: dict[str, float]) -> np.ndarray:
    """The label vector of one set of SCP statements (a record's, or a requested state's)."""
    y = np.zeros(len(LABELS), np.float32)
    index = {c: i for i, c in enumerate(LABELS)}
    for sc in db.statements.superclasses(codes):
        y[index[sc]] = 1
    for c in codes:
        if c in index and c != "NORM":
            y[index[c]] = 1
    return y


def label_matrix(db: PTBXL, ids: list[int]) -> np.ndarray:
    return np.stack([code_labels(db, db.df.at[i, "scp_codes"]) for i in ids]) if ids else \
        np.zeros((0, len(LABELS)), np.float32)


def random_crops(signals, window: int, rng: np.random.Generator) -> np.ndarray:
    """One random ``window`` from each (samples, leads) signal (lengths may differ)."""
    starts = [int(rng.integers(0, len(s) - window + 1)) for s in signals]
    return np.stack([s[a:a + window] for s, a in zip(signals, starts, strict=True)])


def train_classifier(signals, labels: np.ndarray, window: int, steps: int = 1500,
                     batch: int = 64, width: int = 64, seed: int = 0) -> tuple[ECGClassifier, dict]:
    """``signals``: an (N, samples, leads) array or a list of (samples_i, leads) arrays."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clf = ECGClassifier(signals[0].shape[1], width, labels.shape[1])
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-3)
    pos = labels.mean(0).clip(1e-3, None)
    pos_weight = torch.from_numpy(np.clip((1 - pos) / pos, 1, 20)).float()
    t0 = time.time()
    clf.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = rng.integers(0, len(signals), batch)
        x = torch.from_numpy(random_crops([signals[i] for i in idx], window, rng).transpose(0, 2, 1).copy())
        x = x * torch.empty(batch, 1, 1).uniform_(0.9, 1.1)
        loss = F.binary_cross_entropy_with_logits(clf(x), torch.from_numpy(labels[idx]), pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    return clf, {"steps": steps, "batch": batch, "wall_s": round(time.time() - t0, 1), "final_loss": loss.item()}


def save_classifier(clf: ECGClassifier, folder: Path, info: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(folder / "evaluator.safetensors"))
    (folder / "evaluator.json").write_text(json.dumps({"labels": list(LABELS), "width": clf.width, **info}, indent=2))


def load_classifier(folder: Path) -> tuple[ECGClassifier, dict]:
    info = json.loads((folder / "evaluator.json").read_text())
    clf = ECGClassifier(12, info["width"], len(info["labels"]))
    clf.load_state_dict(load_file(str(folder / "evaluator.safetensors")))
    return clf.eval(), info
