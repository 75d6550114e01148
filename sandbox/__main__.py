"""`python -m sandbox PORT CONFIG_JSON`: the sandbox in the foreground, as SandboxProcess starts it."""

from sandbox.process import main

main()
