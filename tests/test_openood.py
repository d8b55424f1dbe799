"""OpenOOD v1.5: the image-list parser, TIN-597 and the OpenOOD test sets prepared from format-true stand-ins served
on 127.0.0.1, the overlap guard with a planted duplicate, the protocol's metrics (both FPR95 conventions) on hand-made
scores, the params keys, and the report table from a known results input."""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import yaml

from data_fixtures import md5, openood_standins
from greg_ood.run import config as C
from greg_ood import data as D
from greg_ood.data.openood_lists import (check_tin597_classes, class_list, match_members, parse_imglist, wnid_of)
from greg_ood.data.sources import SOURCES_ENV, Source
from greg_ood.data.openood import OPENOOD_V1_5_SETS, protocol_datasets
from greg_ood.run.openood_eval import group_means, openood_fpr95, protocol_result, set_metrics
from greg_ood.report.openood_table import write_openood_report

OPTS = {"retries": 1, "timeout": 5}


# ----------------------------------------------------------------------------------------------------- list parser
def test_parse_imglist_reads_paths_and_labels_in_order():
    text = "tin/test/a.JPEG -1\n\n  tin/test/b.JPEG 3  \ncifar10/x.png {'label': 2, 'soft': [0.5]}\n"
    assert parse_imglist(text, "l.txt") == [("tin/test/a.JPEG", -1), ("tin/test/b.JPEG", 3), ("cifar10/x.png", -1)]


@pytest.mark.parametrize("text, match", [
    ("a.png\n", r"l\.txt:1: expected '<path> <label>'"),
    ("a.png 1\n/abs/b.png 2\n", r"l\.txt:2: path '/abs/b\.png' must be relative"),
    ("a/../b.png 1\n", r"l\.txt:1: path"),
    ("a.png 1\na.png 2\n", r"l\.txt:2: path 'a\.png' is listed twice"),
    ("a.png cat\n", r"l\.txt:1: label 'cat' is neither"),
    ("a.png 1.5\n", r"l\.txt:1: label '1\.5' is neither"),
    ("\n\n", r"l\.txt: the list is empty"),
])
def test_parse_imglist_rejects_bad_lines_naming_file_and_line(text, match):
    with pytest.raises(ValueError, match=match):
        parse_imglist(text, "l.txt")


def test_match_members_accepts_both_archive_layouts_and_names_missing_images():
    assert match_members(["tin/test/a.J", "tin/test/b.J"], ["tin/test/a.J", "test/b.J"], "w") == \
        ["tin/test/a.J", "test/b.J"]
    with pytest.raises(ValueError, match=r"w: 1 of 2 listed images are not in the archive, e\.g\. \['tin/x\.J'\]"):
        match_members(["tin/test/a.J", "tin/x.J"], ["test/a.J"], "w")


def test_tin597_class_list_and_its_checks():
    paths = ["tin597/test/n02/x.J", "tin597/test/n01443537/a.J", "tin597/test/n01440764/b.J",
             "tin597/test/n01443537/c.J"]
    assert wnid_of(paths[1]) == "n01443537" and wnid_of("tin597/test/a.J") is None
    with pytest.raises(ValueError, match=r"1 paths carry no ImageNet class folder"):
        class_list(paths, "w")
    classes, idx = class_list(paths[1:], "w")
    assert classes == ["n01440764", "n01443537"] and idx.tolist() == [1, 0, 1]
    assert check_tin597_classes(classes, ["n01440764", "n01443537"]) == ["2 classes, 597 expected"]
    many = [f"n{i:08d}" for i in range(597)]
    assert check_tin597_classes(many, many) == []
    assert check_tin597_classes(many, many[1:]) == ["1 classes are not ImageNet-1K classes, e.g. ['n00000000']"]


# ----------------------------------------------------------------------------------------------------- preparation
def _serve(server, archives: dict, name: str) -> dict[str, Source]:
    return {fn: Source(fn, (server.add(f"/{name}/{fn}", blob),), md5=md5(blob), size=len(blob))
            for fn, blob in archives[name].items()}


@pytest.fixture
def standins():
    return openood_standins(n=6, seed=3, fmt="PNG")


def test_tin597_prepared_from_the_list_with_classes_and_known_pixels(server, tmp_path, standins, caplog):
    with caplog.at_level(logging.WARNING, logger="greg_ood.data"):
        man = D.prepare("tin597", data_dir=tmp_path, options=OPTS, progress=False,
                        sources=_serve(server, standins, "tin597"))
    sp = D.load_split(tmp_path, "tin597", "train")
    want = standins["expected"][("tin597", "train")]
    assert sp.images.shape == (72, 32, 32, 3)  # 12·n images, 64×64 -> Resize(32) -> 32×32
    np.testing.assert_array_equal(sp.images, np.stack([np.broadcast_to(c, (32, 32, 3)) for c in want]))
    assert len(sp.class_names) == 3 and sp.labels.tolist()[:3] == [0, 1, 2]
    assert any("3 classes, 597 expected" in w for w in man["warnings"]) and "597 expected" in caplog.text
    assert man["splits"]["train"]["imglist"] == "benchmark_imglist/cifar10/train_tin597.txt"
    # no published checksum upstream: the file actually used is recorded, so it can be pinned
    assert all(len(s["sha256_measured"]) == 64 for s in man["sources"] if not s.get("md5"))
    assert (tmp_path / "raw" / "openood" / "tin597.zip").is_file()  # the OpenOOD downloads share raw/openood/


@pytest.mark.parametrize("name", ["openood_tin", "openood_mnist", "openood_places365"])
def test_openood_test_sets_have_one_split_per_benchmark_in_list_order(server, tmp_path, standins, name):
    D.prepare(name, data_dir=tmp_path, options=OPTS, progress=False, sources=_serve(server, standins, name))
    for bench, n in (("cifar10", 6), ("cifar100", 5)):
        sp = D.load_split(tmp_path, name, bench)
        want = standins["expected"][(name, bench)]
        assert sp.images.shape == (n, 32, 32, 3) and (sp.labels == -1).all()
        np.testing.assert_array_equal(sp.images, np.stack([np.broadcast_to(c, (32, 32, 3)) for c in want]))


def test_a_list_naming_images_the_archive_lacks_stops_with_the_count(server, tmp_path, standins):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(standins["openood_tin"]["tin.zip"])) as z_in, zipfile.ZipFile(buf, "w") as z_out:
        for info in z_in.infolist()[1:]:
            z_out.writestr(info, z_in.read(info))
    arch = copy.deepcopy(standins)
    arch["openood_tin"]["tin.zip"] = buf.getvalue()
    with pytest.raises(ValueError, match=r"test_tin\.txt: 1 of 6 listed images are not in the archive"):
        D.prepare("openood_tin", data_dir=tmp_path, options=OPTS, progress=False,
                  sources=_serve(server, arch, "openood_tin"))


@pytest.mark.parametrize("plant", [False, True])
def test_overlap_guard_finds_a_planted_duplicate_of_a_tin_test_image(server, tmp_path, plant):
    arch = openood_standins(n=6, seed=3, fmt="JPEG", plant_duplicate=plant)
    for name in ("tin597", "openood_tin"):
        D.prepare(name, data_dir=tmp_path, options=OPTS, progress=False, sources=_serve(server, arch, name))
    aux = D.load_split(tmp_path, "tin597", "train")
    tests = {f"tin_{b}": D.load_split(tmp_path, "openood_tin", b) for b in ("cifar10", "cifar100")}
    assert D.overlap_guard(aux, tests) == {"tin_cifar10": int(plant), "tin_cifar100": int(plant)}


def test_standins_come_through_the_mirror_file(server, tmp_path, monkeypatch):
    from data_fixtures import serve_standins

    names = ["tin597", "openood_tin"]
    (tmp_path / "m.json").write_text(json.dumps(serve_standins(server, names, n=4)))
    monkeypatch.setenv(SOURCES_ENV, str(tmp_path / "m.json"))
    for name in names:
        man = D.prepare(name, data_dir=tmp_path / "d", options=OPTS, progress=False)
        assert all(s["url_used"].startswith("http://127.0.0.1") for s in man["sources"])


# ----------------------------------------------------------------------------------------------------- metrics
ID = np.arange(1.0, 11.0)                       # 10 ID scores 1..10
OOD = np.r_[-np.arange(1.0, 20.0), 5.5]         # 19 OOD scores below every ID score, one inside the ID range


def test_both_fpr95_conventions_on_hand_computed_scores():
    # OpenOOD (OOD+): catching 19/20 = 95 % of OOD needs only the threshold s <= -1, which flags no ID image -> 0.
    # Paper (ID+, closest): ID recall 0.9 and 1.0 are equally close to 0.95, the larger wins -> threshold 1,
    # where the one OOD score 5.5 is accepted -> 1/20. AUROC: (19·10 + 5) / 200.
    m = set_metrics(ID, OOD)
    assert m == {"fpr95_ood_positive": 0.0, "fpr95_id_positive": 0.05, "auroc": 0.975}


def test_openood_fpr95_equals_openoods_own_formula_with_ties():
    from sklearn import metrics as skm

    rng = np.random.RandomState(0)
    for _ in range(20):
        sid = np.round(rng.normal(1.0, 1.0, 300), 1)   # rounded: many ties
        sood = np.round(rng.normal(0.0, 1.0, 200), 1)
        conf = np.r_[sid, sood]
        ood = np.r_[np.zeros(300), np.ones(200)]
        fpr, tpr, _ = skm.roc_curve(ood, -conf)           # OpenOOD's auc_and_fpr_recall
        assert openood_fpr95(sid, sood) == fpr[np.argmax(tpr >= 0.95)]


def test_protocol_block_means_near_and_far_separately():
    sets = OPENOOD_V1_5_SETS["cifar10"]
    scores = {s.name: (OOD if s.group == "near" else OOD - 100.0) for s in sets}
    block = protocol_result(ID, scores, sets, score="energy", fpr_rule="closest", id_accuracy=0.9)
    assert block["near"] == {"fpr95_ood_positive": 0.0, "fpr95_id_positive": 0.05, "auroc": 0.975}
    assert block["far"] == {"fpr95_ood_positive": 0.0, "fpr95_id_positive": 0.0, "auroc": 1.0}
    assert [k for k, v in block["per_set"].items() if v["group"] == "near"] == ["cifar100", "tin"]
    assert block["per_set"]["mnist"]["count"] == 20
    per = {"a": {"auroc": 0.5}, "b": {"auroc": 1.0}}
    from greg_ood.data.openood import ProtocolSet

    two = (ProtocolSet("a", "near", "x", "y"), ProtocolSet("b", "far", "x", "y"))
    assert group_means(per, two) == {"near": {"auroc": 0.5}, "far": {"auroc": 1.0}}


# ----------------------------------------------------------------------------------------------------- params
@pytest.fixture(scope="module")
def raw():
    from pathlib import Path

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def test_params_yaml_cifar_suites_evaluate_both_protocols(raw):
    cfg = C.validate(copy.deepcopy(raw))
    for s in ("cifar10", "cifar100"):
        assert cfg.suite(s).eval.protocols == ["paper", "openood_v1_5"]
    assert protocol_datasets(cfg.suite("cifar10")) == ["cifar100", "dtd", "openood_mnist", "openood_places365",
                                                       "openood_tin", "svhn"]
    assert protocol_datasets(cfg.suite("mini")) == []
    assert "protocols" not in cfg.suite("mini").eval.model_dump()  # default: recorded settings unchanged
    r = copy.deepcopy(raw)
    r["suites"]["cifar10"]["data"]["aux"]["dataset"] = "tin597"
    assert C.validate(r).suite("cifar10").data.aux.dataset == "tin597"


@pytest.mark.parametrize("edit, match", [
    (lambda r: r["suites"]["cifar10"]["eval"].update(protocols=["openood_v1_5"]), r"must list 'paper'"),
    (lambda r: r["suites"]["cifar10"]["eval"].update(protocols=["paper", "openood"]),
     r"suites\.cifar10\.eval\.protocols\.1"),
    (lambda r: r["suites"]["mini"]["eval"].update(protocols=["paper", "openood_v1_5"]),
     r"eval\.protocols: the openood_v1_5 protocol is defined for the ID datasets \['cifar10', 'cifar100'\], "
     r"not 'fashion_mnist'"),
    (lambda r: r["suites"]["cifar10"]["data"]["aux"].update(dataset="tin596"),
     r"unknown auxiliary dataset 'tin596' — did you mean 'tin597'\?"),
    (lambda r: r["suites"]["cifar10"]["data"]["aux"].update(dataset="svhn"), r"unknown auxiliary dataset 'svhn'"),
    (lambda r: r["datasets"].pop("tin597") and r["suites"]["cifar10"]["data"]["aux"].update(dataset="tin597"),
     r"suites\.cifar10\.data\.aux\.dataset reads dataset 'tin597', which `datasets` does not declare: add "
     r"`tin597: \{\}`"),
    (lambda r: r["datasets"].pop("openood_mnist"), r"reads dataset 'openood_mnist'"),
])
def test_bad_protocol_and_aux_keys_are_named(raw, edit, match):
    r = copy.deepcopy(raw)
    edit(r)
    with pytest.raises(C.ConfigError, match=match):
        C.validate(r)


# ----------------------------------------------------------------------------------------------------- report
def _results(path, seed: int, near_auroc: float, far_fpr: float, group: str = "main", method: str = "greg"):
    sets = OPENOOD_V1_5_SETS["cifar10"]
    per = {s.name: {"group": s.group, "dataset": s.dataset, "split": s.split, "count": 10,
                    "fpr95_ood_positive": far_fpr, "fpr95_id_positive": 0.5, "auroc": near_auroc} for s in sets}
    block = {"score": "energy", "id_accuracy": 0.9 + seed / 100, "fpr_rule_id_positive": "closest", "per_set": per,
             "near": {"fpr95_ood_positive": 0.2, "fpr95_id_positive": 0.3, "auroc": near_auroc},
             "far": {"fpr95_ood_positive": far_fpr, "fpr95_id_positive": 0.1, "auroc": 0.99}}
    doc = {"experiment": f"cifar10-{method}-resnet18-s{seed}", "suite": "cifar10", "method": method,
           "arch": "resnet18", "seed": seed, "group": group, "protocols": {"openood_v1_5": block}}
    path.write_text(json.dumps(doc))
    return path


def test_openood_table_from_known_results(tmp_path):
    files = [_results(tmp_path / "a.json", 0, 0.90, 0.10), _results(tmp_path / "b.json", 1, 0.80, 0.30),
             _results(tmp_path / "c.json", 0, 0.5, 0.5, group="ablation")]  # ablation runs are not in the table
    written = write_openood_report(files, "cifar10", tmp_path / "rep")
    assert {"openood_v1_5.md", "openood_v1_5.csv", "openood_v1_5_per_set.csv", "openood_v1_5_long.csv"} <= \
        set(written)
    import pandas as pd

    t = pd.read_csv(written["openood_v1_5.csv"])
    row = t.iloc[0].to_dict()
    assert row["Architecture"] == "ResNet-18" and row["n"] == 2
    assert row["Near-OOD AUROC ↑"] == "85.00 ± 7.07"          # mean and sample std of 90 and 80
    assert row["Far-OOD FPR95 (OOD+, OpenOOD) ↓"] == "20.00 ± 14.14"
    assert row["Near-OOD FPR95 (ID+, paper) ↓"] == "30.00 ± 0.00"
    assert row["ID acc. ↑"] == "90.50 ± 0.71"
    md = (tmp_path / "rep" / "openood_v1_5.md").read_text()
    assert "OOD positive" in md and "95 % ID recall" in md
    per = pd.read_csv(written["openood_v1_5_per_set.csv"])
    assert "TIN (near) AUROC ↑" in per.columns and "Places365 (far) FPR95 (OOD+, OpenOOD) ↓" in per.columns
    assert write_openood_report([tmp_path / "c.json"], "cifar10", tmp_path / "none") == {}


# ----------------------------------------------------------------------------------------------------- stage hook
def test_run_protocols_on_prepared_standins_and_nothing_without_the_protocol(server, tmp_path, raw, monkeypatch):
    """The evaluate stage's hook on every prepared set of the cifar10 protocol (stand-ins, a small CNN on CPU): the
    block has OpenOOD's sets in order, counts from the cifar10 lists, near/far means of its per-set values; with
    ``protocols: [paper]`` it returns {} and loads nothing."""
    import torch

    from data_fixtures import serve_standins
    from greg_ood import models
    from greg_ood.run import pipeline
    from greg_ood.run.openood_eval import run_protocols

    r = copy.deepcopy(raw)
    r["project"]["data_dir"] = str(tmp_path / "d")
    cfg = C.validate(r)
    names = ["cifar10", *protocol_datasets(cfg.suite("cifar10"))]
    (tmp_path / "m.json").write_text(json.dumps(serve_standins(server, names, n=4)))
    monkeypatch.setenv(SOURCES_ENV, str(tmp_path / "m.json"))
    for name in names:
        D.prepare(name, data_dir=tmp_path / "d", options=OPTS, progress=False)
    sd = pipeline.suite_data(cfg, "cifar10", aux=False, ood=False)
    torch.manual_seed(0)
    model = models.build("small_cnn", 10, in_channels=3)
    out = run_protocols(cfg, "cifar10", model, sd, device=torch.device("cpu"), primary="energy")
    block = out["protocols"]["openood_v1_5"]
    assert list(block["per_set"]) == ["cifar100", "tin", "mnist", "svhn", "texture", "places365"]
    assert block["per_set"]["tin"]["count"] == 4 and block["per_set"]["tin"]["split"] == "cifar10"
    for g in ("near", "far"):
        vals = [v["auroc"] for v in block["per_set"].values() if v["group"] == g]
        assert block[g]["auroc"] == pytest.approx(sum(vals) / len(vals))
    assert 0.0 <= block["id_accuracy"] <= 1.0 and block["score"] == "energy"
    from greg_ood.run.openood_eval import mlflow_metrics

    assert mlflow_metrics(out)["openood_v1_5/far/fpr95_ood_positive"] == block["far"]["fpr95_ood_positive"]
    assert len(mlflow_metrics(out)) == 6 and mlflow_metrics({"experiment": "x"}) == {}
    r["suites"]["cifar10"]["eval"]["protocols"] = ["paper"]
    r["project"]["data_dir"] = str(tmp_path / "empty")  # nothing prepared there: nothing may be loaded
    assert run_protocols(C.validate(r), "cifar10", model, sd, device=torch.device("cpu"), primary="energy") == {}
