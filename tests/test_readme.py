"""Every command in the README's bash blocks names things that exist and parses.

`python -m vdm.main ...` lines go through the CLI's own config check (config file,
variant and every --config.key=value; a line without --config, the config of the earlier
line that writes its workdir); `python -m vdm.import_official ...` through its argument
and config parsing; `gsutil` lines copy from the official VDM bucket; `python -m experiments.X` must be a module
whose --help works; `make X` a Makefile target; `pip install -e '.[extra]'` an
extra of pyproject.toml. (The commands that train are run end to end elsewhere:
`make demo` by hand before a release, the tiny config by tests/test_config_and_cli.py.)
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


COMMANDS = _commands()


def _config_of_workdir(command, args) -> str:
    """The config file of the earlier README line that writes this line's --workdir (a run, or an import)."""
    workdir = next(w for w in args if w.startswith("--workdir="))
    for earlier in reversed(COMMANDS[: COMMANDS.index(command)]):
        words = shlex.split(earlier)
        if workdir in words and words[:3] in (["python", "-m", "vdm.main"], ["python", "-m", "vdm.import_official"]):
            configs = [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
            if configs or words[2] == "vdm.import_official":
                return configs[0] if configs else "configs/cifar10.py"  # the importer's default
    raise AssertionError(f"{command!r} has no --config and no earlier README command writes its {workdir}")


def test_the_readme_has_commands():
    assert any(c.startswith("make demo") for c in COMMANDS) and any(c.startswith("python -m vdm.main") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_exists_and_parses(command):
    from vdm import main

    words = [w for w in shlex.split(command) if not (w.startswith("[") or w.endswith("]") or w == "...")]
    if words[:3] == ["python", "-m", "vdm.main"]:
        args = words[3:]
        if not any(w.startswith("--config=") for w in args):  # the workdir's config.json, which an earlier line writes
            args = [f"--config={_config_of_workdir(command, args)}", *args]
        main.precheck(["vdm.main", *args])  # ConfigError names what is wrong
    elif words[:3] == ["python", "-m", "vdm.import_official"]:
        from vdm.training import official

        args = official.parse_args(words[3:])
        official.load_import_config(args["config"], args["overrides"])
    elif words[:3] == ["python", "-m", "experiments.sweep"] or words[:2] == ["python", "-m"]:
        module = words[2]
        assert importlib.util.find_spec(module) is not None, module
        if module.startswith("experiments."):
            proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, proc.stderr[-2000:]
    elif words[0] == "make":
        makefile = open(os.path.join(ROOT, "Makefile")).read()
        assert re.search(rf"^{re.escape(words[1])}:", makefile, flags=re.M), words[1]
    elif words[:2] == ["pip", "install"]:
        extra = re.search(r"\[(.*)\]", command).group(1)
        assert f"\n{extra} = [" in open(os.path.join(ROOT, "pyproject.toml")).read(), extra
    elif words[0] == "gsutil":  # copying an official checkpoint named in google-research/vdm's README
        assert any(w.startswith("gs://gresearch/vdm/") for w in words), command
    elif words[:2] == ["tfds", "build"]:
        from vdm.data import datasets

        assert words[2] in {spec.tfds_name for spec in datasets.DATASETS.values()}, words[2]
        assert "--file_format=array_record" in words
    else:
        raise AssertionError(f"the README command {command!r} is not checked by this test: add a rule")
