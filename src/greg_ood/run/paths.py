"""Where every stage reads and writes, relative to the repository root (the same names appear in dvc.yaml)."""
from __future__ import annotations

from pathlib import Path


class Paths:
    def __init__(self, root: Path | str = ".", data_dir: str = "data"):
        self.root = Path(root)
        self.data = self.root / data_dir

    # download
    def prepared(self, dataset: str) -> Path:
        return self.data / "prepared" / dataset

    # pretrain
    def pretrained(self, suite: str, arch: str) -> Path:
        return self.root / "models" / "pretrained" / f"{suite}-{arch}.pt"

    def pretrain_checkpoint(self, suite: str, arch: str) -> Path:
        return self.root / "checkpoints" / "pretrain" / f"{suite}-{arch}.pt"

    def pretrain_csv(self, suite: str, arch: str) -> Path:
        return self.root / "metrics" / suite / "pretrain" / f"{arch}.train.csv"

    # select
    def selection(self, suite: str, arch: str) -> Path:
        return self.root / "selection" / f"{suite}-{arch}"

    # train
    def checkpoint(self, suite: str, exp: str) -> Path:
        return self.root / "checkpoints" / suite / f"{exp}.pt"

    def model(self, suite: str, exp: str) -> Path:
        return self.root / "models" / suite / f"{exp}.pt"

    def train_csv(self, suite: str, exp: str) -> Path:
        return self.root / "metrics" / suite / "train" / f"{exp}.train.csv"

    # evaluate
    def metrics(self, suite: str, exp: str) -> Path:
        """Small summary for `dvc metrics show` (mean FPR95 / AUROC / ID accuracy)."""
        return self.root / "metrics" / suite / "eval" / f"{exp}.json"

    def results(self, suite: str, exp: str) -> Path:
        """Full per-set, per-score results (docs/CONTRACTS.md)."""
        return self.root / "results" / suite / f"{exp}.json"

    def scores(self, suite: str, exp: str) -> Path:
        return self.root / "results" / suite / "scores" / f"{exp}.npz"

    def roc(self, suite: str, exp: str) -> Path:
        """Headline-set ROC points as a flat list, for `dvc plots`."""
        return self.root / "plots" / suite / "roc" / f"{exp}.json"

    def roc_all(self, suite: str, exp: str) -> Path:
        """ROC points of every OOD set ({set: [{fpr, tpr}]}), for the report's figures."""
        return self.root / "results" / suite / "roc" / exp / "roc.json"

    # certify / report
    def certify(self, suite: str) -> Path:
        return self.root / "certify" / suite

    def certify_npz(self, suite: str, exp: str) -> Path:
        return self.certify(suite) / f"{exp}.npz"

    def report(self, suite: str) -> Path:
        return self.root / "reports" / suite
