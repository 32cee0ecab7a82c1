"""Configs: every key a run reads, and the checks that stop a wrong key or value with one line.

    schema.py       base_config(): every key, its type and the paper's default
    validation.py   loading config files by path ([:variant], --config.key=value) and validating them
    migrations.py   what keeps old workdirs, checkpoints and configs loading: network versions, moved and
                    removed keys, old config.json files; each with since when and until when
"""
