"""``semiseg methods``: the zero-training methods, then every registered method with when it
pays off, its maps and its ``--set`` parameters (from the core's registry)."""

from __future__ import annotations

import argparse

from napari_semiseg.cli.train import ZERO_TRAINING
from src_models.method_choice import AUTO_HELP


def cmd_methods(args: argparse.Namespace) -> int:
    from src_models.methods.base import METHODS, config_params, method_names, param_words

    print(f"{AUTO_HELP}\n")
    for name, (_, text) in ZERO_TRAINING.items():
        print(f"{name}: {text}\n")
    for name in method_names():
        cls = METHODS[name]
        print(f"{name}: {cls.description}")
        if cls.budget_note:
            print(f"  when it pays off: {cls.budget_note}")
        print(f"  maps: {', '.join(cls.map_names)}")
        for p in config_params(cls.Config):
            choices = f" {{{'|'.join(map(str, p.choices))}}}" if p.choices else ""
            default = ",".join(map(str, p.default)) if isinstance(p.default, tuple) else p.default
            words = param_words(p.name)
            plain = words == p.name.replace("_", " ") or words.lower() in p.help.lower()
            said = "" if plain else f"{words}: "
            print(f"  --set {p.name}={default}{choices}  {said}{p.help}")
        print()
    return 0
