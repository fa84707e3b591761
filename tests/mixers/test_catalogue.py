"""mixers/README.md is generated from the registry, and every mixer's defaults live in conf/mixer/."""
from __future__ import annotations

import inspect

import pytest

import mixers
from mixers.catalogue import README, mixer_defaults, render


def test_committed_catalogue_equals_the_generated_one():
    assert README.read_text() == render(), "mixers/README.md is stale: run python -m mixers.catalogue"


@pytest.mark.parametrize("name", mixers.available())
def test_conf_holds_every_option_with_the_constructor_default(name):
    conf = mixer_defaults(name)
    options = mixers.options_of(name)
    assert set(conf) == set(options), f"conf/mixer/{name}.yaml and the constructor disagree on option names"
    for key, param in options.items():
        assert param.default is not inspect.Parameter.empty, f"{name}.{key} has no default"
        assert conf[key] == param.default, (name, key, conf[key], param.default)


@pytest.mark.parametrize("name", mixers.available())
def test_catalogue_fields_are_declared(name):
    cls = mixers.mixer_class(name)
    assert cls.paper != "?" and cls.state_complexity != "?" and cls.backends
    assert cls.state_exponent in (0.0, 1.0)
