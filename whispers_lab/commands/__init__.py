"""One module per ``whispers-lab`` sub-command. Each defines ``register(subparsers)``, which adds
its parser and sets ``func`` to a callable taking the parsed args and returning an exit code."""
