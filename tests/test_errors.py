"""Errors name the Python parameter; the CLI renders the same error with its own flag names."""

from __future__ import annotations

import pickle

import typer
from typer.testing import CliRunner

from softcamify.cli._common import handle_errors, option_name
from softcamify.errors import EXIT_USAGE, InputError, UsageError


def test_message_names_the_python_parameter_and_render_swaps_whole_words_only():
    e = UsageError("batch_size must be at least 1, not 0 (batch_sizes and cfg.batch_size stay).", param="batch_size")
    assert str(e) == "batch_size must be at least 1, not 0 (batch_sizes and cfg.batch_size stay)."
    assert e.param == "batch_size" and e.params == ("batch_size",)
    assert e.render({"batch_size": "--batch-size"}) == (
        "--batch-size must be at least 1, not 0 (batch_sizes and cfg.batch_size stay)."
    )
    assert e.render({}) == str(e)  # a front end without that name keeps the Python one


def test_several_parameters_and_no_parameter():
    e = InputError("weights and num_classes do not apply to an .onnx model.", param=("weights", "num_classes"))
    assert e.render(lambda p: {"weights": "--weights", "num_classes": "--num-classes"}.get(p)) == (
        "--weights and --num-classes do not apply to an .onnx model."
    )
    plain = UsageError("Nothing to rename here: batch_size.")
    assert plain.param is None and plain.render({"batch_size": "--x"}) == str(plain)


def test_params_survive_pickling_like_in_a_worker_process():
    e = pickle.loads(pickle.dumps(UsageError("top_k must be at least 1.", param="top_k")))
    assert isinstance(e, UsageError) and e.params == ("top_k",) and e.exit_code == EXIT_USAGE


def test_cli_names_its_own_options_and_never_one_it_lacks():
    seen = {}
    app = typer.Typer()

    @app.command()
    def cmd(model: str, batch_size: int = typer.Option(1, "--batch-size", "-b"),
            json_: bool = typer.Option(False, "--json")) -> None:
        seen.update(batch_size=option_name("batch_size"), json=option_name("json"), model=option_name("model"),
                    mean=option_name("mean"))
        with handle_errors():
            raise UsageError("batch_size 0 is too small for model; set mean and std.",
                             param=("batch_size", "model", "mean"))

    @app.command()
    def other() -> None:  # a second command, so typer keeps subcommands
        pass

    result = CliRunner().invoke(app, ["cmd", "m.onnx", "-b", "0"])
    assert seen == {"batch_size": "--batch-size", "json": "--json", "model": "MODEL", "mean": None}
    assert result.exit_code == EXIT_USAGE
    assert "--batch-size 0 is too small for MODEL; set mean and std." in " ".join(result.output.split())
