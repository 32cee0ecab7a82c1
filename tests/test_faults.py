"""Fault injection: every kind of damage to every kind of file a run reads back, and config files that cannot load.

Each case damages one file of a copy of the suite's finished tiny run (or writes a broken config file), runs the
command that reads it in this process, and checks: the exit code; on an error, exactly one line on stderr, starting
with `vdm:`, naming the file; never a traceback; and every other file byte for byte as it was (a command that
succeeds may rewrite only what it rebuilds: the outputs listed in REBUILT). The cases are a table (FILES x DAMAGES,
plus CONFIG_FILES): a new kind of file adds a row. The final evaluation is replaced by a stub that writes nothing
(what is tested is what happens before it; tests/test_train.py and tests/test_config_and_cli.py test it).
"""

import glob
import hashlib
import os

import pytest

from conftest import ROOT, copy_of_tiny_run  # noqa: F401  (copy_of_tiny_run is a fixture)



def _truncate_to_zero(path):
    open(path, "wb").close()


def _truncate_to_half(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _garble(path):
    """XOR every byte of the second half with 0x5a (a half-written block of another file)."""
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, len(data)):
        data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


DAMAGES = {"empty": _truncate_to_zero, "half": _truncate_to_half, "garbled": _garble, "deleted": os.remove}

# file kind -> (path pattern in the workdir, command, {damage: (exit code, text of the one line)}).
# A command is "eval" (--mode=eval), "train" (training again: a finished run reports its results), "resume" (the
# same, with results.json removed first so that the run goes through its resume path; every mode of a workdir runs
# from --workdir alone, with its config.json) or "digits_quality".
CKPT = "checkpoints/8"
DAMAGED = (1, "is damaged")
FILES = {
    "config.json": ("config.json", "eval", {"empty": (1, "config.json is damaged: empty"),
                                            "half": (1, "config.json is damaged: not valid JSON"),
                                            "garbled": (1, "config.json is damaged"),
                                            "deleted": (2, "has no config.json")}),
    "results.json": ("results.json", "train", {"empty": (1, "results.json is damaged: empty"),
                                               "half": (1, "results.json is damaged: not valid JSON"),
                                               "garbled": (1, "results.json is damaged"),
                                               "deleted": (0, "")}),  # not finished: evaluated again
    "metrics.jsonl": ("metrics.jsonl", "resume", {"empty": (0, ""), "half": (0, ""),  # a torn last line
                                                  "garbled": (1, "metrics.jsonl is damaged at line"),
                                                  "deleted": (0, "")}),
    "samples.npz": ("samples.npz", "digits_quality", {"empty": (1, "samples.npz is damaged"),
                                                      "half": (1, "samples.npz is damaged"),
                                                      "garbled": (1, "samples.npz is damaged"),
                                                      "deleted": (2, "no samples at")}),
    "checkpoint array data": (f"{CKPT}/state/d/*", "eval", dict.fromkeys(DAMAGES, DAMAGED)),
    "checkpoint array index": (f"{CKPT}/state/manifest.ocdbt", "eval", dict.fromkeys(DAMAGES, DAMAGED)),
    "checkpoint array metadata": (f"{CKPT}/state/_METADATA", "eval", dict.fromkeys(DAMAGES, DAMAGED)),
    "checkpoint meta item": (f"{CKPT}/meta/metadata", "eval", dict.fromkeys(DAMAGES, DAMAGED)),
    # read by training only (test_training_resumes_past_a_damaged_checkpoint): --mode=eval does not need it
    "checkpoint data position": (f"{CKPT}/data/process_0-of-1.json", "eval", dict.fromkeys(DAMAGES, (0, ""))),
}
# what a command that succeeds may write (it rebuilds these)
REBUILT = ("results.json", "metrics.jsonl", "config.json", "samples.npz", "sample_check.json", "tensorboard/",
           "samples_", "log_snr_")

CASES = [(kind, damage) for kind in FILES for damage in DAMAGES]


def _snapshot(workdir):
    out = {}
    for path in glob.glob(os.path.join(workdir, "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
    return out


def run_vdm(args, capsys):
    """`python -m vdm.main ARGS` in this process, as `vdm.main.cli` runs it: (exit code, stdout, stderr)."""
    from absl import flags

    from vdm import main as cli

    argv = ["vdm.main", *args]
    capsys.readouterr()
    code = cli.guarded(lambda: cli.precheck(argv), argv)
    if code == 0:
        flag_argv = argv if any(a.startswith("--config=") for a in argv) else [a for a in argv if not a.startswith("--config.")]
        flags.FLAGS.unparse_flags()
        flags.FLAGS(flag_argv)
        code = cli.guarded(lambda: cli.main(flag_argv), argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def stub_final_evaluation(monkeypatch):
    from vdm.training import evaluation, loop

    def stub(run, state, test, train_seconds=None):
        return {"test_bpd": 1.0, "test_bpd_stderr": 0.1}, os.path.join(run.workdir, "results.json")

    monkeypatch.setattr(evaluation, "final_evaluation", stub)
    monkeypatch.setattr(loop, "final_evaluation", stub)


def _check_one_line(code, err, expected_code, text):
    assert "Traceback" not in err, err
    assert code == expected_code, (code, err)
    if expected_code:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("vdm: ") and text in lines[0], err


@pytest.mark.parametrize("kind,damage", CASES, ids=[f"{k.replace(' ', '_')}-{d}" for k, d in CASES])
def test_damaged_file_gives_one_line_and_changes_nothing_else(kind, damage, finished_tiny_run, tmp_path, capsys,
                                                               stub_final_evaluation):
    pattern, command, outcomes = FILES[kind]
    expected_code, text = outcomes[damage]
    workdir = copy_of_tiny_run(finished_tiny_run, tmp_path)
    if command == "resume":
        os.remove(workdir / "results.json")  # the run is not finished: the same command resumes it
    (target,) = glob.glob(os.path.join(workdir, pattern))
    DAMAGES[damage](target)
    before = _snapshot(workdir)
    if command == "digits_quality":
        from vdm.metrics import digits_quality

        capsys.readouterr()
        code = digits_quality.main([str(workdir)])
        err = capsys.readouterr().err
    elif command == "eval":
        code, _, err = run_vdm([f"--workdir={workdir}", "--mode=eval"], capsys)
    else:
        code, _, err = run_vdm([f"--workdir={workdir}"], capsys)
    _check_one_line(code, err, expected_code, text)
    if expected_code:
        assert os.path.basename(target) in err or kind.startswith("checkpoint"), err
    after = _snapshot(workdir)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    if expected_code == 0:
        changed = {p for p in changed if not p.startswith(REBUILT) and not p.startswith("damaged_checkpoints/")}
    assert not changed, sorted(changed)
    assert not os.path.exists(workdir / "error.log")


def test_training_resumes_past_a_damaged_checkpoint_and_moves_it_aside(finished_tiny_run, tmp_path, capsys,
                                                                         stub_final_evaluation):
    """The tiny run's only checkpoint, with its data position cut in half: training names it, moves it to
    damaged_checkpoints/ byte for byte, and starts again (there is no older one)."""
    workdir = copy_of_tiny_run(finished_tiny_run, tmp_path)
    os.remove(workdir / "results.json")
    target = workdir / CKPT / "data" / "process_0-of-1.json"
    _truncate_to_half(target)
    damaged = target.read_bytes()
    code, out, err = run_vdm([f"--workdir={workdir}"], capsys)
    assert code == 0 and "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("vdm:")]
    assert len(lines) == 1 and f"{workdir}/{CKPT} is damaged" in lines[0], err
    assert lines[0].endswith(f"moved to {workdir}/damaged_checkpoints/8; no older checkpoint: training starts again")
    assert (workdir / "damaged_checkpoints" / "8" / "data" / "process_0-of-1.json").read_bytes() == damaged
    assert os.path.isdir(workdir / CKPT) and "test_bpd=1.0000" in out  # trained again to step 8


def test_an_array_whose_bytes_differ_from_its_recorded_crc_is_damaged(finished_tiny_run, tmp_path, capsys):
    """orbax reads some garbled array bytes without an error (zstd frames of an OCDBT file that still decode): the
    CRC-32 recorded at save time is what catches them. Here the record is changed instead of the bytes."""
    import json

    workdir = copy_of_tiny_run(finished_tiny_run, tmp_path)
    meta_file = workdir / CKPT / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    name = sorted(n for n in meta["crc32"] if n.startswith("ema_params/"))[0]
    meta["crc32"][name] = f"{(int(meta['crc32'][name], 16) + 1) % 2**32:08x}"
    meta_file.write_text(json.dumps(meta))
    code, _, err = run_vdm([f"--workdir={workdir}", "--mode=eval"], capsys)
    _check_one_line(code, err, 1, f"is damaged (array {name} does not match the CRC-32 recorded when it was saved); "
                                  "no other intact checkpoint")


# config files that cannot load: (file content or None for a missing file, file name, variant, text of the line)
CONFIG_FILES = {
    "syntax error": ("def get_config(:\n    pass\n", "bad.py", "", "bad.py:1: syntax error"),
    "no get_config": ("import ml_collections\nX = 1\n", "bad.py", "", "defines no get_config()"),
    "get_config raises": ("def get_config():\n    return {}['missing']\n", "bad.py", "", "bad.py:2: get_config() raised KeyError"),
    "import error": ("import not_a_module_anywhere\n", "bad.py", "", "bad.py:1: ModuleNotFoundError"),
    "returns no ConfigDict": ("def get_config():\n    return 3\n", "bad.py", "", "not an ml_collections.ConfigDict"),
    "unknown variant": (None, os.path.join(ROOT, "configs", "digits.py"), "huge", "its variants: 'long', 'conditional'"),
    "missing file": (None, "nowhere.py", "", "config file not found"),
    "not Python": ('{"config": 1}\n', "config.json", "", "is not a Python file"),
    "binary file": ("\x00\x01\x02garbage", "bad.py", "", "is not Python source"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_config_file_that_cannot_load_gives_one_line_and_exit_2(case, tmp_path, capsys):
    content, name, variant, text = CONFIG_FILES[case]
    path = name if os.path.isabs(name) else str(tmp_path / name)
    if content is not None:
        with open(path, "w") as f:
            f.write(content)
    code, _, err = run_vdm([f"--config={path}{':' + variant if variant else ''}", f"--workdir={tmp_path / 'run'}"],
                           capsys)
    _check_one_line(code, err, 2, text)
    assert not os.path.exists(tmp_path / "run")


def test_an_unexpected_error_is_one_line_with_the_traceback_in_error_log(finished_tiny_run, tmp_path, capsys,
                                                                          monkeypatch):
    from vdm.training import evaluation

    def broken(*args, **kwargs):
        raise KeyError("a bug deep inside")

    monkeypatch.setattr(evaluation, "final_evaluation", broken)
    workdir = copy_of_tiny_run(finished_tiny_run, tmp_path)
    code, _, err = run_vdm([f"--workdir={workdir}", "--mode=eval"], capsys)
    log = workdir / "error.log"
    _check_one_line(code, err, 1, f"vdm: internal error: KeyError: 'a bug deep inside' (traceback in {log})")
    assert "Traceback" in log.read_text() and "def broken" not in err and "raise KeyError" in log.read_text()
    code, _, err = run_vdm([f"--workdir={workdir}", "--mode=eval", "--verbose"], capsys)
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("vdm: internal error: KeyError")


def test_quiet_console_drops_only_the_closed_event_loop_error(monkeypatch):
    """After a failed checkpoint read, tensorstore's late callbacks raise RuntimeError('Event loop is closed') through
    sys.unraisablehook; the quiet console drops exactly that and hands every other unraisable error on."""
    import sys
    import types

    from vdm import console

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    console.quiet()
    hook = sys.unraisablehook
    report = lambda error: types.SimpleNamespace(exc_value=error, exc_type=type(error), exc_traceback=None,  # noqa: E731
                                                 err_msg=None, object=None)
    hook(report(RuntimeError("Event loop is closed")))
    assert seen == []
    other = report(RuntimeError("something else"))
    hook(other)
    hook(report(ValueError("Event loop is closed")))
    assert len(seen) == 2 and seen[0] is other
