"""The converter's command line (absl flags, the subcommand as the one argument): values,
defaults, --help, and the one-line refusals (exit status 2) of a command line it cannot run."""

from __future__ import annotations

import dataclasses

import pytest

from pulse_jax.checkpoints import convert


@pytest.fixture
def calls(monkeypatch):
    """The converters replaced by a recorder of the values they are given."""
    seen = []
    for name, source in convert.SOURCES.items():
        record = dataclasses.replace(source, convert=lambda args, n=name: seen.append((n, args)))
        monkeypatch.setitem(convert.SOURCES, name, record)
    return seen


def test_values_and_defaults_reach_the_converter(calls):
    argv = ["stylegan2", "--checkpoint", "ffhq.pkl", "--out", "o.npz", "--fit_seed=3"]
    assert convert.main(argv) == 0
    ((name, args),) = calls
    assert name == "stylegan2"
    assert vars(args) == {
        "checkpoint": "ffhq.pkl", "network": "G_ema", "sha256": None, "out": "o.npz",
        "gaussian_fit": None, "fit_seed": 3, "fit_samples": convert.FIT_SAMPLES,
        "max_expansion": convert.Limits.expansion,
    }  # fmt: skip


def test_flags_of_an_earlier_call_are_not_kept(calls):
    assert convert.main(["nvidia", "--pkl", "a.pkl", "--out", "o.npz", "--sha256", "ab"]) == 0
    assert convert.main(["nvidia", "--out", "o.npz", "--pkl", "b.pkl"]) == 0
    assert [(args.pkl, args.sha256) for _, args in calls] == [("a.pkl", "ab"), ("b.pkl", None)]


def test_flags_may_come_before_the_subcommand(calls):
    assert convert.main(["--out", "o.npz", "pulse", "--synthesis", "s.pt", "--mapping", "m"]) == 0
    ((name, args),) = calls
    assert (name, args.synthesis, args.mapping, args.out) == ("pulse", "s.pt", "m", "o.npz")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give the source as the one argument: pulse, nvidia, stylegan2"),
        (["tf", "--out", "o"], "give the source as the one argument: pulse, nvidia, stylegan2, "
                               "lpips (got: tf)"),
        (["lpips", "--out", "o"], "--out: not a flag of lpips"),
        (["nvidia", "pulse", "--pkl", "p", "--out", "o"], "(got: nvidia pulse)"),
        (["stylegan2", "--out", "o"], "stylegan2 needs --checkpoint"),
        (["nvidia"], "nvidia needs --pkl and --out"),
        (["stylegan2", "--checkpoint", "c", "--out", "o", "--pkl", "p"],
         "--pkl: not a flag of stylegan2"),
        (["pulse", "--synthesis", "s", "--out", "o", "--network", "G", "--sha256", "ab"],
         "--network, --sha256: not a flag of pulse"),
        (["pulse", "--synthesis", "s", "--out", "o"], "give --mapping, --gaussian_fit, or both"),
        (["stylegan2", "--checkpoint", "c", "--out", "o", "--network", "D"],
         "--network=D: value should be one of <G_ema|G>"),
        (["stylegan2", "--checkpoint", "c", "--out", "o", "--fit_seed", "x"], "--fit_seed=x"),
        (["stylegan2", "--checkpoint", "c", "--out", "o", "--bogus", "1"],
         "Unknown command line flag 'bogus'"),
    ],
)  # fmt: skip
def test_refused_command_lines(calls, capsys, argv, message):
    assert convert.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.endswith(" (see --help)\n")
    assert message in captured.err and captured.err.count("\n") == 1 and not captured.out
    assert not calls


def test_help_lists_every_subcommand_and_flag(calls, capsys):
    assert convert.main(["stylegan2", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {convert.PROG} {{pulse,nvidia,stylegan2,lpips}}")
    for name, source in convert.SOURCES.items():
        assert f"  {name}: {source.help}" in text
    for name in convert.FLAGS:
        assert f"--{name}: " in text
    assert "--fit_samples: samples in the fit (default: 1000000)" in text
    assert max(map(len, text.splitlines())) <= 100 and not calls
