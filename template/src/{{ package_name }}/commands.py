"""Your own subcommands: `<package> NAME ...` runs them, and `<package> --help` lists them.

Yours: `copier update` never touches this file. Each entry: name -> (a one-line summary,
"module:function"), the module relative to this package; the function takes the arguments after
NAME and returns an exit code. Import heavy libraries (torch, Lightning) inside the function, so
that `--help` stays fast. A name the template's command already uses is refused.

Example (a module `plots.py` beside this file with `def attention_main(argv) -> int`):

    SUBCOMMANDS = {"plot-attention": ("plot a run's attention maps", ".plots:attention_main")}
"""

SUBCOMMANDS: dict[str, tuple[str, str]] = {}
