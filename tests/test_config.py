"""The typed config: demo and paper params load; every bad value is refused, naming its key path."""

import copy
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_density import cli
from image_density.config import ConfigError, json_schema, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "params/demo.yaml").read_text())
# keys whose values must be > 0 wherever they appear
POSITIVE = {
    "size",
    "n_train",
    "n_test",
    "std",
    "gamma",
    "k0",
    "r_min",
    "r_max",
    "steps",
    "batch",
    "lr",
    "t_min",
    "t_max",
    "channels",
    "levels",
    "logz_images",
    "logz_draws",
    "ckpt_every",
}


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_params_are_valid(name):
    cfg = load_config(ROOT / f"params/{name}.yaml")
    assert cfg.datasets


def test_schema_file_is_not_stale():
    on_disk = json.loads((ROOT / "workflow/schemas/params.schema.json").read_text())
    assert on_disk == json_schema(), "run `image-density schema` to regenerate the JSON schema"


def test_error_names_path_value_and_rule(tmp_path):
    bad = copy.deepcopy(DEMO)
    bad["datasets"]["field16"]["size"] = -16
    bad["datasets"]["field16"]["colour"] = 3
    with pytest.raises(ConfigError) as err:
        validate_config(bad, "bad.yaml")
    msg = str(err.value)
    assert "bad.yaml" in msg
    assert "datasets.field16.size = -16: Input should be greater than 0" in msg
    assert "datasets.field16.colour = 3: unknown key" in msg


def test_cross_checks_name_the_key():
    bad = copy.deepcopy(DEMO)
    bad["energy"] = {"datasets": ["nope"], "train": {"steps": 1, "batch": 1}}
    with pytest.raises(ConfigError, match=r"energy\.datasets\.0: unknown dataset 'nope'"):
        validate_config(bad)
    bad["energy"]["datasets"] = ["faces"]
    bad["datasets"]["faces"]["size"] = 20  # not divisible by 2^3 (three UNet downsamplings)
    with pytest.raises(ConfigError, match=r"energy\.datasets\.0: dataset 'faces' has size 20"):
        validate_config(bad)
    bad = copy.deepcopy(DEMO)
    bad["generalization"] = {"dataset": "dead_leaves", "n": [10, 3000], "train": {"steps": 1, "batch": 1}}
    with pytest.raises(ConfigError, match=r"generalization\.n: \[3000\] larger than half"):
        validate_config(bad)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def _leaves(node, path=()):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def _set(root, path, value):
    for p in path[:-1]:
        root = root[p]
    root[path[-1]] = value


MAPPINGS = [p for p, v in _leaves(DEMO) if isinstance(v, dict)]
NUMBERS = [p for p, v in _leaves(DEMO) if isinstance(v, int | float) and not isinstance(v, bool)]
POSITIVES = [p for p in NUMBERS if p[-1] in POSITIVE]


@st.composite
def invalid_params(draw):
    raw = copy.deepcopy(DEMO)
    kind = draw(st.sampled_from(["unknown_key", "wrong_type", "not_positive", "bad_kind"]))
    if kind == "unknown_key":
        where = draw(st.sampled_from(MAPPINGS))
        key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12))
        node = raw
        for p in where:
            node = node[p]
        if key in node or (where == ("datasets",)):
            key = "zz_" + key
        if where == ("datasets",):  # a new dataset with an unknown kind is the analogous mistake
            node[key] = {"kind": "zz_" + key}
            return raw, ("datasets", key)
        node[key] = draw(st.integers())
        return raw, (*where, key)
    if kind == "wrong_type":
        path = draw(st.sampled_from(NUMBERS))
        _set(raw, path, draw(st.sampled_from(["abc", [1, 2], {"a": 1}, None])))
        return raw, path
    if kind == "not_positive":
        path = draw(st.sampled_from(POSITIVES))
        _set(raw, path, draw(st.one_of(st.just(0), st.integers(max_value=-1), st.floats(max_value=-1e-9))))
        return raw, path
    path = draw(st.sampled_from([p for p in MAPPINGS if len(p) == 2 and p[0] == "datasets"]))
    _set(raw, (*path, "kind"), draw(st.sampled_from(["", "gaussian", "ImageNet64", 7])))
    return raw, path


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_params())
def test_hostile_params_are_refused_naming_the_key(case):
    raw, path = case
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "hostile.yaml")
    assert ".".join(str(p) for p in path) in str(err.value)


def test_cli_refuses_before_writing_anything(tmp_path, capsys):
    bad = copy.deepcopy(DEMO)
    bad["results"] = str(tmp_path / "results")
    bad["datasets"]["field16"]["std"] = -1
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    assert cli.main(["prepare", "--config", str(cfg), "--dataset", "field16"]) == 2
    assert "datasets.field16.std = -1" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    assert cli.main(["prepare", "--config", str(ROOT / "params/demo.yaml"), "--dataset", "nope"]) == 2
    assert "'nope' is not a key of datasets" in capsys.readouterr().err


# ------------------------------------------------------------------ impossible combinations, CLI


def _t_sections(raw) -> list[tuple[str, ...]]:
    """Every t range of the params: the train sections and the dimensionality study."""
    found = [p for p, v in _leaves(raw) if isinstance(v, dict) and p[-1:] == ("train",)]
    return [*found, ("studies", "dimensionality")]


@st.composite
def impossible_params(draw):
    """Params each of whose values is fine alone but that cannot run together -> (raw, texts the
    error must contain: the key path and the setting)."""
    raw = copy.deepcopy(DEMO)
    kind = draw(st.sampled_from(["generalization_n", "size", "downsamplings", "levels", "t", "radii", "rf"]))
    g, m = raw["generalization"], raw["multiscale"]
    if kind == "generalization_n":  # A and B (first / last N images) would overlap
        n_train = raw["datasets"][g["dataset"]]["n_train"]
        too_many = draw(st.integers(n_train // 2 + 1, 4 * n_train))
        g["n"] = [*g["n"][: draw(st.integers(0, len(g["n"])))], too_many]
        return raw, ["generalization.n", "larger than half"]
    if kind == "size":  # the UNet halves the image len(widths) times
        section = draw(st.sampled_from(["energy", "generalization"]))
        names = raw[section]["datasets"] if section == "energy" else [g["dataset"]]
        i = draw(st.integers(0, len(names) - 1))
        levels = len(raw[section]["unet"]["widths"])
        raw["datasets"][names[i]]["size"] = draw(st.integers(1, 200).filter(lambda s: s % 2**levels))
        return raw, [f"energy.datasets.{i}" if section == "energy" else "generalization.dataset", "divisible"]
    if kind == "downsamplings":  # more UNet levels than the 16-pixel images allow
        section = draw(st.sampled_from(["energy", "generalization"]))
        raw[section]["unet"]["widths"] = [4] * draw(st.integers(5, 9))
        return raw, ["energy.datasets.0" if section == "energy" else "generalization.dataset", "divisible"]
    if kind == "levels":  # the wavelet transform halves the image `levels` times
        name = m["datasets"][0]
        levels = m.get("levels", 2)
        levels = levels[name] if isinstance(levels, dict) else levels
        raw["datasets"][name]["size"] = draw(st.integers(1, 64).filter(lambda s: s % 2**levels))
        return raw, ["multiscale.datasets.0", f"divisible by 2^{levels}"]
    if kind == "t":
        path = draw(st.sampled_from(_t_sections(raw)))
        node = raw
        for p in path:
            node = node.setdefault(p, {})
        node["t_max"] = draw(st.floats(1e-6, 1e3))
        node["t_min"] = node["t_max"] * draw(st.floats(1.0, 1e3))
        return raw, [".".join(path), "t_min", "must be smaller than t_max"]
    if kind == "radii":
        node = raw["datasets"]["dead_leaves"]
        node["r_max"] = draw(st.floats(0.5, 64))
        node["r_min"] = node["r_max"] * draw(st.floats(1.0, 8.0))
        return raw, ["datasets.dead_leaves", "r_min", "must be smaller than r_max"]
    even = 2 * draw(st.integers(1, m["cnn"]["layers_conditional"]))  # centred filters need odd widths
    m["rf"] = draw(st.permutations([*m["rf"], even]))
    return raw, ["multiscale", "rf", "must be odd"]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(impossible_params(), st.sampled_from(["validate", "prepare", "train", "nll"]))
def test_impossible_combinations_are_refused_by_the_cli_before_any_output(capsys, case, command):
    raw, texts = case
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        cfg = Path(tmp) / "hostile.yaml"
        cfg.write_text(yaml.safe_dump({**raw, "results": str(results)}))
        args = {
            "validate": [],
            "prepare": ["--dataset", "dead_leaves"],
            "train": ["--model", "energy", "--dataset", "dead_leaves", "--out", str(results / "m")],
            "nll": ["--model-path", str(results / "m/model.pt"), "--dataset", "dead_leaves",
                    "--table", str(results / "nll.csv")],
        }[command]  # fmt: skip
        assert cli.main([command, "--config", str(cfg), *args]) == 2
        err = capsys.readouterr().err
        assert f"invalid params in {cfg}" in err and all(t in err for t in texts), (texts, err)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["hostile.yaml"]  # nothing written


@pytest.mark.parametrize(
    "toy, rule",
    [
        ({"sigmas": [1.0, 4.0], "weights": [0.5, 0.4]}, "weights sum 1"),
        ({"sigmas": [1.0], "weights": [0.5, 0.5]}, "equal lengths"),
        ({"t_min": 10.0, "t_max": 1.0}, "must be smaller"),
    ],
)
def test_toy_study_mixture_is_checked(toy, rule):
    bad = copy.deepcopy(DEMO)
    bad["studies"]["toy"] = toy
    with pytest.raises(ConfigError, match=rule) as err:
        validate_config(bad, "bad.yaml")
    assert "studies.toy" in str(err.value)
