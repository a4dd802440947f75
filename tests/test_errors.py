"""Errors name the Python parameter; the CLI renders the same error with its own flag names."""

from __future__ import annotations

import pickle
from pathlib import Path

import click
import pytest
import typer

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


def test_cli_names_its_own_options_and_never_one_it_lacks(capsys):
    @click.command()
    @click.argument("model")
    @click.option("--batch-size", "-b", type=int)
    @click.option("--json", "json_", is_flag=True)
    def cmd(model, batch_size, json_):
        assert option_name("batch_size") == "--batch-size"
        assert option_name("json") == "--json"
        assert option_name("model") == "MODEL"
        assert option_name("mean") is None
        with handle_errors():
            raise UsageError(
                "batch_size 0 is too small for model; set mean and std.", param=("batch_size", "model", "mean")
            )

    with pytest.raises(typer.Exit) as exit_info:
        cmd.main(["m.onnx", "-b", "0"], standalone_mode=False)
    assert exit_info.value.exit_code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--batch-size 0 is too small for MODEL; set mean and std." in " ".join(err.split())


def test_quoted_values_and_paths_are_never_taken_for_parameters():
    e = UsageError(
        "classifier 'classifier' is not a module (did you mean 'classifier.1'?); weights.pth and "
        "masks/a.png stay, masks and weights do not.",
        param=("classifier", "weights", "masks"),
    )
    assert e.render(lambda p: "--" + p) == (
        "--classifier 'classifier' is not a module (did you mean 'classifier.1'?); weights.pth and "
        "masks/a.png stay, --masks and --weights do not."
    )


def test_a_typer_command_names_its_options_and_the_aliased_ones(capsys):
    """typer commands run on typer's own copy of click (recent typer): their context is found too, and a
    library name the command spells otherwise (run_dir) is named by its option (--output)."""
    from typer.testing import CliRunner

    app = typer.Typer()

    @app.command()
    def run(
        data_dir: Path = typer.Argument(...),
        output: Path = typer.Option(..., "--output", "-o"),
        batch_size: int = typer.Option(1, "--batch-size"),
    ):
        with handle_errors():
            raise UsageError(
                "run_dir is a file and batch_size 0 is too small; see data_dir, not mean.",
                param=("run_dir", "batch_size", "data_dir", "mean"),
            )

    r = CliRunner().invoke(app, ["d", "-o", "x"])
    assert r.exit_code == EXIT_USAGE
    assert "--output is a file and --batch-size 0 is too small; see DATA_DIR, not mean." in " ".join(r.output.split())


def test_a_typer_command_names_its_own_options(capsys):
    """typer 0.2x runs commands on its own copy of click: option_name must find that context too."""
    app = typer.Typer()

    @app.command()
    def cmd(model: str, batch_size: int = typer.Option(1, "--batch-size", "-b")):
        assert option_name("batch_size") == "--batch-size" and option_name("mean") is None
        with handle_errors():
            raise UsageError("batch_size 0 is too small for model; set mean.", param=("batch_size", "model", "mean"))

    with pytest.raises(SystemExit) as exit_info:
        app(["m.onnx", "-b", "0"], prog_name="x")
    assert exit_info.value.code == EXIT_USAGE
    assert "--batch-size 0 is too small for MODEL; set mean." in " ".join(capsys.readouterr().err.split())


def test_typer_commands_name_their_own_options_and_arguments(capsys):
    """typer (0.2x) runs commands on its own copy of click: option_name finds that context too."""
    app = typer.Typer()

    @app.command()
    def cmd(data_dir: str = typer.Argument(...), batch_size: int = typer.Option(1, "--batch-size", "-b")):
        assert option_name("batch_size") == "--batch-size"
        assert option_name("data_dir") == "DATA_DIR"
        assert option_name("mean") is None
        with handle_errors():
            raise UsageError("data_dir and batch_size clash; mean stays.", param=("data_dir", "batch_size", "mean"))

    @app.command()
    def other() -> None:
        pass

    with pytest.raises(SystemExit) as exit_info:
        app(["cmd", "d", "-b", "2"], standalone_mode=True)
    assert exit_info.value.code == EXIT_USAGE
    assert "DATA_DIR and --batch-size clash; mean stays." in " ".join(capsys.readouterr().err.split())
