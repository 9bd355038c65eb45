"""The default method follows the measurement: supervised, and from 5 minutes SDCL when the
labeled slices include the structure's ends."""

import pytest

from src_models.method_choice import (
    AUTO,
    LONG_BUDGET_METHOD,
    SEMI_SUPERVISED_FROM_MINUTES,
    SHORT_BUDGET_METHOD,
    method_for_budget,
    resolve_method,
)
from src_models.methods.base import method_names
from src_models.recipe import DEFAULT_METHOD, RunRecipe


def test_both_methods_are_registered_and_differ():
    assert {SHORT_BUDGET_METHOD, LONG_BUDGET_METHOD} <= set(method_names())
    assert SHORT_BUDGET_METHOD != LONG_BUDGET_METHOD and AUTO not in method_names()


@pytest.mark.parametrize(
    ("minutes", "ends", "method"),
    [
        (None, True, SHORT_BUDGET_METHOD),  # an iteration budget
        (0.5, True, SHORT_BUDGET_METHOD),
        (2.0, True, SHORT_BUDGET_METHOD),
        (SEMI_SUPERVISED_FROM_MINUTES - 0.01, True, SHORT_BUDGET_METHOD),
        (SEMI_SUPERVISED_FROM_MINUTES, True, LONG_BUDGET_METHOD),
        (30.0, True, LONG_BUDGET_METHOD),
        # labeled slices strictly inside: SDCL measured no better there
        (SEMI_SUPERVISED_FROM_MINUTES, False, SHORT_BUDGET_METHOD),
        (30.0, False, SHORT_BUDGET_METHOD),
    ],
)
def test_auto_picks_by_the_budget_and_the_labeled_ends(minutes, ends, method):
    assert method_for_budget(minutes, ends) == method
    assert resolve_method(AUTO, minutes, ends) == method
    recipe = RunRecipe(minutes=minutes, ends_labeled=ends)
    assert DEFAULT_METHOD == AUTO and recipe.method == method
    # the recipe checks the parameters of the method it resolved to
    assert type(recipe.check()).__name__.lower().startswith(method)


def test_a_named_method_is_kept_whatever_the_budget():
    for minutes in (None, 1.0, 10.0):
        assert resolve_method("dfcps", minutes) == "dfcps"
        assert RunRecipe(method="supervised", minutes=minutes).method == "supervised"
