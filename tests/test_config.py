"""The typed config: demo and paper params load; every bad value is refused, naming its key path."""

import copy
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from image_density import cli
from image_density.config import ConfigError, json_schema, load_config, read_params, validate_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = read_params(ROOT / "params/demo.yaml")
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


FINITE = "Input should be a finite number"


@pytest.mark.parametrize(
    "where, value, shown",
    [
        (("datasets", "field16", "mean"), float("nan"), f"datasets.field16.mean = nan: {FINITE}"),
        (("datasets", "field16", "std"), float("inf"), f"datasets.field16.std = inf: {FINITE}"),
        (("energy", "train", "lr"), float("inf"), f"energy.train.lr = inf: {FINITE}"),
        (("energy", "train", "t_max"), float("inf"), f"energy.train.t_max = inf: {FINITE}"),
        (("studies", "denoising", "psnrs"), [float("nan"), float("inf")], "studies.denoising.psnrs.0 = nan"),
        (("energy", "train", "steps"), "10", "energy.train.steps = '10': Input should be a valid integer"),
        (("energy", "train", "batch"), True, "energy.train.batch = True: Input should be a valid integer"),
        (("energy", "train", "lr"), "0.001",
         "energy.train.lr = '0.001': Input should be a valid number (this is text: write the number without"),
        (("seed",), 10**23, "seed = 100000000000000000000000: Input should be less than 4294967296"),
        (("energy", "train", "seed"), -1, "energy.train.seed = -1: Input should be greater than or equal"),
        (("energy", "train", "lr_halve_every"), 2**63,
         "energy.train.lr_halve_every = 9223372036854775808: 9223372036854775808 is outside the 64-bit"),
        (("datasets", "dead_leaves", "n_train"), 1.0e12, "datasets.dead_leaves.n_train = 1000000000000.0"),
        (("energy", "unet", "widths"), [16, 2**64], "energy.unet.widths = [16, 18446744073709551616]: item"),
    ],
)  # fmt: skip
def test_bad_values_of_the_issue_are_refused(where, value, shown):
    bad = copy.deepcopy(DEMO)
    _set(bad, where, value)
    with pytest.raises(ConfigError) as err:
        validate_config(bad, "bad.yaml")
    assert shown in str(err.value)


def test_a_float_param_takes_ints_and_yaml_1_2_floats(tmp_path):
    text = (ROOT / "params/demo.yaml").read_text().replace("lr: 5.0e-3", "lr: 1")
    text = text.replace("std: 0.1", "std: 1e-1", 1).replace("k0: 2.0", "k0: 2.0E+0", 1)
    (tmp_path / "p.yaml").write_text(text)
    cfg = load_config(tmp_path / "p.yaml")  # 1e-1 is text to PyYAML (YAML 1.1), a number to YAML 1.2
    field = cfg.datasets["field16"]
    assert cfg.energy.train.lr == 1.0 and field.std == 0.1 and field.k0 == 2.0


def test_datasets_and_batches_beyond_memory_are_refused_with_their_size():
    bad = copy.deepcopy(DEMO)
    bad["datasets"]["field16"]["size"] = 1048576
    bad["datasets"]["field16"]["n_train"] = 10**12
    with pytest.raises(ConfigError) as err:
        validate_config(bad, "bad.yaml")
    msg = str(err.value)
    assert "datasets.field16: n_train + n_test = 1000000000512 images of 1x1048576x1048576 float32 = " in msg
    assert "EiB, more than this machine's memory (" in msg
    bad = copy.deepcopy(DEMO)
    bad["datasets"]["field16"]["size"] = 2**15
    bad["datasets"]["field16"]["n_train"] = bad["datasets"]["field16"]["n_test"] = 1
    bad["energy"]["train"]["batch"] = 10**6
    with pytest.raises(ConfigError) as err:
        validate_config(bad, "bad.yaml")
    assert ("energy.train.batch: 1000000 images of 1x32768x32768 float32 (dataset 'field16') = 3.8 PiB, more "
            "than this machine's memory") in str(err.value)  # fmt: skip


def test_missing_key_is_shown_as_missing():
    bad = copy.deepcopy(DEMO)
    del bad["energy"]["train"]["batch"]
    with pytest.raises(ConfigError) as err:
        validate_config(bad, "bad.yaml")
    assert "  energy.train.batch: missing (a required key)" in str(err.value).splitlines()


def test_duplicate_keys_and_non_utf8_files_are_refused_naming_the_file(tmp_path):
    text = (ROOT / "params/demo.yaml").read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace("    batch: 32\n", "    batch: 32\n    batch: 64\n", 1))
    with pytest.raises(ConfigError) as err:
        load_config(dup)
    line = text.splitlines().index("    batch: 32") + 1
    assert f"params file {dup} is not valid YAML" in str(err.value)
    assert f"found the key 'batch' twice (first on line {line})" in str(err.value)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(("# r\u00e9sum\u00e9\n" + text).encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(latin1)
    assert f"params file {latin1} is not UTF-8 text (byte 0xe9 at offset 3)" in str(err.value)


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


LEAVES = [p for p, v in _leaves(DEMO) if not isinstance(v, dict | list) and v is not None]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
# beyond int64 and float32 (an int is a valid float): refused whatever the key's type
HUGE = st.one_of(
    st.integers(min_value=10**39, max_value=10**400), st.integers(min_value=-(10**400), max_value=-(10**39)),
    st.floats(min_value=3.5e38, allow_infinity=False), st.floats(max_value=-3.5e38, allow_infinity=False),
)  # fmt: skip


def wrong_types(value) -> list:
    """Values of another type than `value` that a lax parser would coerce or that are plainly wrong."""
    if isinstance(value, str):
        return [7, 1.5, True, [value], {"a": value}]
    if isinstance(value, bool):  # a switch (e.g. multiscale.sampler.rescale_lowpass): no 1/0, no text
        return ["true", 1, 0, 1.5, [value], {"a": value}, "abc"]
    # "0.000010", not "1e-05": that is a YAML 1.2 float, taken as a number
    text = f"{value:f}" if isinstance(value, float) else str(value)
    return [text, True, False, [value], {"a": value}, "abc"]


def names_the_key(path, message: str) -> bool:
    """Whether an error message names the key path: the dataset for its `kind` (pydantic's
    discriminator); a list's key and "item i" for a number of a list checked as a whole."""
    if path[-1] == "kind":
        path = path[:-1]
    dotted = ".".join(str(p) for p in path)
    if isinstance(path[-1], int):
        listed = ".".join(str(p) for p in path[:-1]) + " = ["
        return dotted in message or any(listed in line and f"item {path[-1]}: " in line
                                        for line in message.splitlines())  # fmt: skip
    return dotted in message


@st.composite
def invalid_params(draw):
    raw = copy.deepcopy(DEMO)
    kinds = ["unknown_key", "wrong_type", "not_positive", "bad_kind", "non_finite", "huge", "any_wrong_type"]
    kind = draw(st.sampled_from(kinds))
    if kind == "non_finite":
        path = draw(st.sampled_from(LEAVES))
        _set(raw, path, draw(st.sampled_from(NON_FINITE)))
        return raw, path
    if kind == "huge":
        path = draw(st.sampled_from(LEAVES))
        _set(raw, path, draw(HUGE))
        return raw, path
    if kind == "any_wrong_type":
        path = draw(st.sampled_from(LEAVES))
        node = raw
        for p in path:
            node = node[p]
        _set(raw, path, draw(st.sampled_from(wrong_types(node))))
        return raw, path
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
    assert names_the_key(path, str(err.value)), (path, str(err.value))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(invalid_params(), st.sampled_from(["prepare", "train"]))
def test_hostile_params_are_refused_by_the_cli_before_any_output(capsys, case, command):
    raw, path = case
    assume(path != ("results",))  # replaced below, to keep every output inside tmp
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        cfg = Path(tmp) / "hostile.yaml"
        cfg.write_text(yaml.safe_dump({**raw, "results": str(results)}, allow_unicode=True))
        args = {
            "prepare": ["--dataset", "dead_leaves"],
            "train": ["--model", "energy", "--dataset", "dead_leaves", "--out", str(results / "m")],
        }[command]
        assert cli.main([command, "--config", str(cfg), *args]) == 2
        err = capsys.readouterr().err
        assert f"invalid params in {cfg}" in err and names_the_key(path, err), (path, err)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["hostile.yaml"]  # nothing written


def test_every_key_refuses_non_finite_huge_and_wrongly_typed_values(capsys):
    """Exhaustive: at every key of the demo params, NaN, +-inf, numbers beyond int64/float32 and
    values of another type are each refused by validation, naming the key."""
    tried, accepted = 0, []
    for path in LEAVES:
        node = DEMO
        for p in path:
            node = node[p]
        for value in [*NON_FINITE, 10**40, -(10**40), 1e300, -1e300, *wrong_types(node)]:
            raw = copy.deepcopy(DEMO)
            _set(raw, path, value)
            tried += 1
            try:
                validate_config(raw, "hostile.yaml")
            except ConfigError as err:
                if not names_the_key(path, str(err)):
                    accepted.append((path, value, str(err)))
            else:
                accepted.append((path, value, "accepted"))
    assert not accepted, accepted[:10]
    with capsys.disabled():
        print(f"\n{tried} hostile values at {len(LEAVES)} keys, all refused naming the key")


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
