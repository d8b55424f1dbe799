"""dvc.yaml's deps are derived from the code and the config, and the committed files are what dvcgen writes.

Fast: reads the committed dvc.yaml files (no DVC, no pipeline run). The slow proof that an edit re-runs exactly the
stages whose closure holds the edited file is in test_pipeline_e2e.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from greg_ood.run import config as C
from greg_ood import registry
from greg_ood.run.codedeps import closure_relative
from greg_ood.run.dvcgen import dvc_files, render
from greg_ood.run.runinfo import dvc_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = re.compile(r"python (stages/\S+\.py)")
MINI_ID_AUX = {"fashion_mnist", "skimage_crops"}
MINI_ID_OOD = {"fashion_mnist", "digits", "textures", "faces", "gaussian_noise", "uniform_noise"}


def _stages(doc: dict) -> dict[str, dict]:
    """Stage definitions by group name (``foreach`` stages by their ``do`` body)."""
    return {name: body.get("do", body) for name, body in doc["stages"].items()}


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def _code_files(deps: list[str], root: Path) -> set[str]:
    """The Python files a stage's code deps cover (a package folder stands for every .py file under it but its
    ``__main__.py``, a ``python -m`` command no stage imports)."""
    out = set()
    for d in deps:
        if (root / d).is_dir():
            out |= {p.relative_to(root).as_posix() for p in (root / d).rglob("*.py")
                    if "__pycache__" not in p.parts and p.name != "__main__.py"}
        elif d.endswith(".py"):
            out.add(d)
    return out


def code_dep_drift(doc: dict, root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage group whose code deps differ from its script's import closure: (missing, extra)."""
    drift = {}
    for name, st in _stages(doc).items():
        script = SCRIPT.search(" ".join(str(st["cmd"]).split())).group(1)
        declared = _code_files([d for d in _paths(st["deps"]) if d.startswith(("src/", "stages/"))], root)
        want = set(closure_relative(root / script, root, src=root / "src"))
        if declared != want:
            drift[name] = (sorted(want - declared), sorted(declared - want))
    return drift


def _datasets(st: dict) -> set[str]:
    """The prepared datasets a stage depends on; the auxiliary pool's variable resolved from params.yaml."""
    prefix = "${project.data_dir}/prepared/"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    aux = re.compile(r"^\$\{suites\.(\w+)\.data\.aux\.dataset\}$")
    names = {d[len(prefix):] for d in _paths(st["deps"]) if d.startswith(prefix)}
    return {raw["suites"][m[1]]["data"]["aux"]["dataset"] if (m := aux.match(n)) else n for n in names}


def test_the_aux_pool_dep_is_a_dvc_variable_so_exp_run_can_swap_it(committed):
    """`dvc exp run -S suites.cifar10.data.aux.dataset=tin597` must change the train stage's data dep too."""
    st = _stages(committed)
    var = "${project.data_dir}/prepared/${suites.cifar10.data.aux.dataset}"
    for name in ("train_cifar10", "train_cifar10_ablation", "select_cifar10"):
        assert var in _paths(st[name]["deps"]), name
    assert "${project.data_dir}/prepared/imagenet" in _paths(st["train_imagenet"]["deps"])  # aux = ID set: literal


@pytest.fixture(scope="module")
def committed() -> dict:
    """The root dvc.yaml with the stage groups of every group file merged into its ``stages``."""
    files = dvc_files(ROOT)
    doc = yaml.safe_load(files[0].read_text())
    for f in files[1:]:
        doc["stages"].update(yaml.safe_load(f.read_text())["stages"])
    return doc


def test_committed_dvc_files_are_dvcgen_output():
    want = render(C.load(ROOT / "params.yaml"), ROOT)
    have = {f.relative_to(ROOT).as_posix(): f.read_text() for f in dvc_files(ROOT)}
    assert sorted(have) == sorted(want), "dvc.yaml files are stale: run `make dvc.yaml`"
    for rel, text in want.items():
        assert have[rel] == text, f"{rel} is stale: run `make dvc.yaml`"


def test_big_groups_have_their_own_file_and_run_in_the_repository_root():
    """train (one file per method), evaluate and their ablation groups each in a pipelines/ dvc.yaml of their own
    with params.yaml as variables and the root as working directory (so commands, paths and lock entries read as in
    the root file); the rest, the report stages that `dvc repro report_<S>` names included, in the root dvc.yaml."""
    root_groups = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert all(dvc_file(g) == "dvc.yaml" for g in root_groups)
    cfg = C.load(ROOT / "params.yaml")
    for s in cfg.params.suites:
        assert {f"report_{s}", f"certify_{s}", f"pretrain_{s}", f"evaluate_{s}_pretrained"} <= root_groups
        files = {f"evaluate_{s}": f"pipelines/evaluate_{s}/dvc.yaml"}
        files |= {f"{g}_{s}_ablation": f"pipelines/{g}_{s}_ablation/dvc.yaml" for g in ("train", "evaluate")}
        files |= {f"train_{s}@{m}-x-0": f"pipelines/train_{s}-{m}/dvc.yaml" for m in cfg.suite(s).methods}
        for name, path in files.items():
            group = name.split("@")[0]
            assert group not in root_groups and dvc_file(name) == path
            doc = yaml.safe_load((ROOT / path).read_text())
            assert list(doc["stages"]) == [group]
            assert doc["vars"] == ["../../params.yaml"] and doc["stages"][group]["wdir"] == "../.."
            if "@" in name:  # the matrix of the method's own file has that method alone: names stay <group>@<m>-...
                assert doc["stages"][group]["matrix"]["method"] == [name.split("@")[1].split("-")[0]]
    with pytest.raises(ValueError, match="one dvc.yaml per method"):
        dvc_file("train_mini")


def _covered(keys: list[str], dotted: str) -> bool:
    """Whether a DVC params list ``keys`` tracks the value at ``dotted`` (the key itself or one above it)."""
    return any(dotted == k or dotted.startswith(k + ".") for k in keys)


def _per_method_params() -> dict[tuple[str, str], list[str]]:
    """(suite, method) -> the params keys of its train stages; (suite, "ablation") -> the ablation's."""
    out = {}
    for s, suite in C.load(ROOT / "params.yaml").params.suites.items():
        for m in suite.methods:
            out[s, m] = yaml.safe_load((ROOT / f"pipelines/train_{s}-{m}/dvc.yaml").read_text()
                                       )["stages"][f"train_{s}"]["params"]
        out[s, "ablation"] = yaml.safe_load((ROOT / f"pipelines/train_{s}_ablation/dvc.yaml").read_text()
                                            )["stages"][f"train_{s}_ablation"]["params"]
    return out


def test_each_train_stage_lists_exactly_the_shared_keys_its_method_reads():
    """The shared lambda is a dep of the methods with the gradient term only, never of the ablation points (their
    lambda is their own); a key a method's definition or method_params replaces is no dep of that method; and for
    every suite, method and key of `train`, tracked == read (Config.train_reads)."""
    ps = _per_method_params()
    lg = "suites.mini.train.loss.lambda_grad"
    assert {m for (s, m), keys in ps.items() if s == "mini" and _covered(keys, lg)} == \
        {"oe_grad", "greg", "greg_plus", "poem_grad"}
    assert "suites.mini.train" in ps["mini", "greg"]  # nothing replaced: the whole section, so added keys count too
    assert "suites.mini.train.loss.m_in" in ps["mini", "energy"] and "suites.mini.train.optimizer" in ps["mini", "energy"]
    assert not _covered(ps["mini", "oe"], "suites.mini.train.loss.lambda_energy")  # OE: lambda_energy 0 by definition
    assert not _covered(ps["mini", "dos"], "suites.mini.train.sampling.two_way")  # DOS: one-way by definition
    assert _covered(ps["mini", "ablation"], "suites.mini.train.loss.lambda_energy")
    assert not _covered(ps["mini", "ablation"], "suites.mini.method_params.greg")  # {}: nothing but lambda to track
    gp = ps["cifar10", "greg_plus"]  # from scratch, its own epochs, optimizer and schedule (method_params)
    assert not any(_covered(gp, f"suites.cifar10.train.{k}") for k in ("init", "epochs", "optimizer.lr",
                                                                         "schedule.milestones"))
    assert _covered(gp, "suites.cifar10.train.optimizer.momentum") and "suites.cifar10.method_params.greg_plus" in gp
    cfg = C.load(ROOT / "params.yaml")
    for (s, m), keys in ps.items():
        method = cfg.suite(s).ablation.method if m == "ablation" else m
        reads = set(cfg.train_reads(s, method, ablation=m == "ablation"))
        for path in registry.leaf_paths(cfg.raw["suites"][s]["train"]):
            assert _covered(keys, ".".join((f"suites.{s}.train", *path))) == (path in reads), (s, m, path)


def test_evaluate_stages_list_no_training_keys():
    """An evaluation reads its model (a dep) and the eval settings; the training keys reach it through the model, so
    a changed lambda re-runs the evaluations of the re-trained models only."""
    for g in ("evaluate_mini", "evaluate_mini_ablation"):
        keys = yaml.safe_load((ROOT / f"pipelines/{g}/dvc.yaml").read_text())["stages"][g]["params"]
        assert not [k for k in keys if k.startswith("suites.mini.train")], keys


def test_every_stage_code_deps_equal_its_import_closure(committed):
    stages = _stages(committed)
    suites = C.load(ROOT / "params.yaml").params.suites
    for s in suites:  # every suite and stage group is checked, none skipped
        groups = [f"{g}_{s}" for g in ("pretrain", "select", "train", "evaluate", "certify", "report")]
        assert set(groups + [f"train_{s}_ablation", f"evaluate_{s}_ablation"]) <= set(stages), s
    assert code_dep_drift(committed, ROOT) == {}


def test_non_python_code_deps_are_resources_the_closure_names(committed):
    st = _stages(committed)
    extra = {d for d in _paths(st["download"]["deps"]) if d.startswith("src/") and not d.endswith(".py")
             and not (ROOT / d).is_dir()}
    assert extra == {"src/greg_ood/resources/imagenet_classes.json", "src/greg_ood/resources/imagenet_wnids.json"}
    for name, body in st.items():
        deps = [d for d in _paths(body["deps"]) if d.startswith("src/")]
        assert all(d.endswith(".py") or (ROOT / d).is_dir() or d.startswith("src/greg_ood/resources/")
                   for d in deps), name
        assert "src/greg_ood" not in deps and "src/greg_ood/resources" not in deps, name  # never the whole package


def test_drift_check_catches_a_hand_written_dep_list(committed):
    """The check can fail: the old hand-written deps of select (sampling.py only) and a dropped module are caught."""
    doc = yaml.safe_load(yaml.safe_dump(committed))
    sel = doc["stages"]["select_mini"]
    sel["deps"] = ["stages/select_aux.py", "src/greg_ood/sampling.py"] + [
        d for d in sel["deps"] if not d.startswith(("src/", "stages/"))]
    doc["stages"]["evaluate_mini"]["deps"].remove("src/greg_ood/run/pipeline.py")
    drift = code_dep_drift(doc, ROOT)
    assert set(drift) == {"select_mini", "evaluate_mini"}
    assert "src/greg_ood/run/pipeline.py" in drift["select_mini"][0] and drift["select_mini"][1] == []
    assert drift["evaluate_mini"] == (["src/greg_ood/run/pipeline.py"], [])


def test_data_deps_are_what_each_stage_loads(committed):
    st = _stages(committed)
    assert _datasets(st["pretrain_mini"]) == {"fashion_mnist"}
    assert _datasets(st["train_mini"]) == _datasets(st["train_mini_ablation"]) == MINI_ID_AUX  # no OOD sets
    assert _datasets(st["evaluate_mini"]) == _datasets(st["evaluate_mini_ablation"]) == MINI_ID_OOD  # no aux pool
    assert _datasets(st["certify_mini"]) == MINI_ID_OOD
    assert _datasets(st["select_mini"]) == MINI_ID_AUX | MINI_ID_OOD  # scoring: aux; overlap guard: ID test + OOD
    # the noise finding reads the synthetic-noise sets and the auxiliary pool; the paper suites have no noise set
    assert _datasets(st["report_mini"]) == {"gaussian_noise", "uniform_noise", "skimage_crops"}
    assert _datasets(st["report_cifar10"]) == set()
    assert _datasets(st["train_cifar10"]) == {"cifar10", "tinyimages300k"}
    paper = {"cifar10", "dtd", "svhn", "places365", "lsun_crop", "lsun_resize", "isun"}
    openood = {"cifar100", "openood_tin", "openood_mnist", "openood_places365", "svhn", "dtd"}  # eval.protocols
    assert _datasets(st["evaluate_cifar10"]) == _datasets(st["evaluate_cifar10_ablation"]) == paper | openood
    assert _datasets(st["select_cifar10"]) == paper | openood | {"tinyimages300k"}  # overlap guard: every test set
    assert _datasets(st["certify_cifar10"]) == paper


def test_params_are_set_in_params_yaml_and_stage_specific(committed):
    """DVC refuses a params key that params.yaml lacks: absent optional keys are left out; stages do not list
    sections they never read (training does not read eval or the OOD list; the ablation stages not the ablation
    list, whose values are in their command)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    st = _stages(committed)
    for name, body in st.items():
        for key in body.get("params", []):
            if "${" in key:
                continue
            cur = raw
            for k in key.split("."):
                assert isinstance(cur, dict) and k in cur, (name, key)
                cur = cur[k]
    assert "suites.mini.data.mean" not in st["train_mini"]["params"]  # mini uses the ID training statistics
    assert "suites.cifar10.data.mean" in st["train_cifar10"]["params"]
    for name in ("train_mini", "train_mini_ablation", "pretrain_mini"):
        ps = st[name]["params"]
        assert "suites.mini.data.ood" not in ps and "suites.mini.eval" not in ps and "suites.mini.ablation" not in ps
    assert "suites.mini.data.aux" not in st["evaluate_mini"]["params"]


def test_checkpoints_are_not_dvc_outs_and_summary_is_the_suite_metric(committed):
    st = _stages(committed)
    for name, body in st.items():
        assert not [o for o in _paths(body.get("outs", [])) if o.startswith("checkpoints/")], name
        if not name.startswith("report_"):
            assert "metrics" not in body, name
    # the offline suites' summaries are DVC metrics; the paper suites' are plain outputs, so `dvc metrics show/diff`
    # on a fresh clone (no cifar/imagenet results) reads only files that exist: no "failed to load some metrics"
    for s in C.load(ROOT / "params.yaml").params.suites:
        summary = {f"metrics/{s}/summary": {"cache": False}}
        if s in ("mini", "fmnist"):
            assert st[f"report_{s}"]["metrics"] == [summary], s
        else:
            assert "metrics" not in st[f"report_{s}"] and summary in st[f"report_{s}"]["outs"], s


def test_top_level_plots_combine_methods(committed):
    plots = {next(iter(p)): next(iter(p.values())) for p in committed["plots"]}
    mini = {k: v for k, v in plots.items() if k.startswith("mini ")}
    assert len(mini) == 3
    methods = C.load(ROOT / "params.yaml").params.suites["mini"].methods
    for title, p in mini.items():
        assert len(p["y"]) == len(methods), title
        assert all(f"-{m}-small_cnn-s0." in " ".join(p["y"]) for m in methods), title
    assert {col for p in mini.values() for col in p["y"].values()} == {"total", "monitor_gradnorm_id", "tpr"}
    assert (ROOT / ".dvc" / "plots" / f"{next(iter(mini.values()))['template']}.json").is_file()


def test_a_package_folder_stands_for_its_files_only_when_all_are_imported(tmp_path):
    from greg_ood.run.dvcgen import _collapse_packages

    pkg = tmp_path / "src" / "greg_ood" / "sub"
    (pkg / "__pycache__").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "b.py", "__pycache__/a.cpython-311.pyc"):
        (pkg / f).write_text("")
    files = {"src/greg_ood/sub/__init__.py", "src/greg_ood/sub/a.py", "stages/x.py"}
    assert _collapse_packages(files, tmp_path) == files  # b.py is not imported: listed file by file
    files.add("src/greg_ood/sub/b.py")
    assert _collapse_packages(files, tmp_path) == {"src/greg_ood/sub", "stages/x.py"}
    (pkg / "table.csv").write_text("")  # a non-Python file would widen the folder dep: keep the files
    assert _collapse_packages(files, tmp_path) == files


def test_write_replaces_the_files_and_drops_a_stale_generated_group_file(tmp_path, monkeypatch):
    """`make dvc.yaml` after a suite or group is removed: its generated file goes, a hand-written one stays."""
    import greg_ood.run.dvcgen as G

    files = {"dvc.yaml": "stages: {}\n", "pipelines/train_s/dvc.yaml": "# GENERATED by test\nstages: {}\n"}
    monkeypatch.setattr(G, "render", lambda cfg, root: files)
    stale, by_hand = tmp_path / "pipelines/train_gone/dvc.yaml", tmp_path / "pipelines/by_hand/dvc.yaml"
    for f, text in ((stale, "# GENERATED by an older params.yaml\n"), (by_hand, "stages: {}\n")):
        f.parent.mkdir(parents=True)
        f.write_text(text)
    assert G.write(None, tmp_path) == list(files)
    assert {rel: (tmp_path / rel).read_text() for rel in files} == files
    assert not stale.exists() and by_hand.exists()
    assert not list(tmp_path.rglob("*.tmp"))
