"""The `openaim` command: fast help without torch, one-line errors with exit 2 on bad config."""

import json
import subprocess
import sys

import pytest

from openaim.cli import COMMANDS


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "openaim", *args], capture_output=True, text=True,
                          check=False, timeout=120, **kw)


def test_help_imports_no_torch():
    code = ("import sys; from openaim.cli import cli\n"
            "try:\n    cli(['--help'], prog_name='openaim')\nexcept SystemExit:\n    pass\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'open_clip', 'pandas', 'faiss', 'curation', 'training', 'evaluation'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_imports_no_torch(name):
    code = ("import sys; from openaim.cli import cli\n"
            f"try:\n    cli([{name!r}, '--help'], prog_name='openaim')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH"


def test_bad_set_value_exits_2_with_one_line(tmp_path):
    out = _run("status", "--set", "training.optim.lr=-1", "--set", f"workdir={tmp_path / 'w'}")
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "training.optim.lr" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line(tmp_path):
    out = _run("status", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2
    assert "config file not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_command():
    out = _run("frobnicate")
    assert out.returncode != 0


def test_report_on_a_missing_workdir_is_one_line_and_creates_nothing(tmp_path):
    typo = tmp_path / "typo"
    out = _run("report", "--set", f"workdir={typo}")
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(typo) in lines[0] and "does not exist" in lines[0], out.stderr
    assert not typo.exists()


def test_debug_shows_the_cause_a_one_line_error_hides(tmp_path):
    """`raise ConfigError(...) from None` keeps the message to one line; --debug shows the YAML error
    underneath it too."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n")
    plain = _run("status", "--config", str(bad))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len([ln for ln in plain.stderr.splitlines() if ln.strip()]) == 1
    debug = _run("status", "--config", str(bad), "--debug")
    assert debug.returncode != 0
    assert "ConfigError" in debug.stderr and "not valid YAML" in debug.stderr
    assert any(f"yaml.{kind}" in debug.stderr for kind in ("parser.ParserError", "scanner.ScannerError")), \
        debug.stderr


def test_error_line_prints_square_brackets_as_text(tmp_path):
    """A message is printed as it is, never read as rich markup: gloo's errors hold
    `[/__w/pytorch/.../pair.cc:561]`, which rich took for a closing tag (MarkupError, a traceback of the
    printer instead of the error)."""
    typo = tmp_path / "[bold]run[/x]" / "gloo [/__w/pytorch/pair.cc:561]"
    out = _run("report", "--set", f"workdir={typo}")
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "MarkupError" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(typo) in lines[0], out.stderr


def test_fail_prints_the_message_verbatim(capsys):
    from shared.cli_common import fail

    message = "Connection closed by peer [/__w/pytorch/third_party/gloo/pair.cc:561] [bold]x[/] [/x]"
    with pytest.raises(SystemExit) as exit_info:
        fail(message, 7)
    assert exit_info.value.code == 7
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
