"""``python -m parity {convert,report,bench,profile,train,memory}``."""

import sys


def main() -> int:
    if sys.argv[1:2] == ["convert"]:  # the attn-convert process (it ends the process itself)
        from parity.convert_cli import entry

        entry(sys.argv[2:])
    commands = {
        "report": "parity.verify.report",
        "bench": "parity.devtools.bench",
        "profile": "parity.devtools.profile",
        "train": "parity.devtools.training",
        "memory": "parity.devtools.memory",
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(f"usage: python -m parity {{{','.join(['convert', *commands])}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
